/** A modality's Storage Commitment request, as tests send it (their own or mutated). */
import { CommandField, type DimseCommand } from '../../src/codec/dimse.ts';
import { TransferSyntax } from '../../src/codec/dicom-types.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { StorageCommitment } from '../../src/actors/commitment/messages.ts';

/** An N-ACTION-RQ asking for storage commitment (its Message ID is the client's to give). */
export function nActionCommand(overrides: Partial<DimseCommand> = {}): DimseCommand {
  return {
    commandField: CommandField.NActionRq,
    requestedSopClassUid: StorageCommitment.sopClassUid,
    requestedSopInstanceUid: StorageCommitment.sopInstanceUid,
    actionTypeId: StorageCommitment.actionTypeRequest,
    hasDataSet: true,
    ...overrides,
  };
}

/** Its data set: the Transaction UID and one Referenced SOP Sequence item per instance. */
export function commitmentRequestDataSet(
  transactionUid: string,
  references: ReadonlyArray<{ sopClassUid: string; sopInstanceUid: string }>,
  transferSyntaxUid: string = TransferSyntax.ExplicitVrLittleEndian,
): Uint8Array {
  return encodeDataset(
    [
      { tag: Tags.TransactionUID, vr: 'UI', value: transactionUid },
      {
        tag: Tags.ReferencedSOPSequence,
        vr: 'SQ',
        value: undefined,
        items: references.map((r) => [
          { tag: Tags.ReferencedSOPClassUID, vr: 'UI', value: r.sopClassUid },
          { tag: Tags.ReferencedSOPInstanceUID, vr: 'UI', value: r.sopInstanceUid },
        ]),
      },
    ],
    transferSyntaxUid,
  );
}
