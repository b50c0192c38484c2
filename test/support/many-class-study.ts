/**
 * A study of many SOP classes, each instance stored at a peer in its own syntax: a C-MOVE of it needs more
 * presentation contexts than one association has (128) when the classes come in several syntaxes each.
 */
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { CommandField } from '../../src/codec/dimse.ts';
import type { DimseReply } from '../../src/actors/association/client.ts';
import { openPeerClient, storeDataset } from './peer-fixture.ts';
import { makeInstanceWithInfo, TransferSyntax, type SyntheticTransferSyntax } from './synthetic-dicom.ts';

/** Real image storage SOP classes (PS3.4 B.5), enough for a move of more classes than 128 contexts hold in several syntaxes each. */
export const manyStorageClasses = [
  '1.2.840.10008.5.1.4.1.1.1', '1.2.840.10008.5.1.4.1.1.1.1', '1.2.840.10008.5.1.4.1.1.1.1.1', '1.2.840.10008.5.1.4.1.1.1.2', '1.2.840.10008.5.1.4.1.1.1.2.1',
  '1.2.840.10008.5.1.4.1.1.1.3', '1.2.840.10008.5.1.4.1.1.1.3.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.5.1.4.1.1.2.1', '1.2.840.10008.5.1.4.1.1.2.2',
  '1.2.840.10008.5.1.4.1.1.3.1', '1.2.840.10008.5.1.4.1.1.4', '1.2.840.10008.5.1.4.1.1.4.1', '1.2.840.10008.5.1.4.1.1.4.3', '1.2.840.10008.5.1.4.1.1.4.4',
  '1.2.840.10008.5.1.4.1.1.6.1', '1.2.840.10008.5.1.4.1.1.6.2', '1.2.840.10008.5.1.4.1.1.7', '1.2.840.10008.5.1.4.1.1.7.1', '1.2.840.10008.5.1.4.1.1.7.2',
  '1.2.840.10008.5.1.4.1.1.7.3', '1.2.840.10008.5.1.4.1.1.7.4', '1.2.840.10008.5.1.4.1.1.12.1', '1.2.840.10008.5.1.4.1.1.12.1.1', '1.2.840.10008.5.1.4.1.1.12.2',
  '1.2.840.10008.5.1.4.1.1.12.2.1', '1.2.840.10008.5.1.4.1.1.13.1.1', '1.2.840.10008.5.1.4.1.1.13.1.2', '1.2.840.10008.5.1.4.1.1.13.1.3', '1.2.840.10008.5.1.4.1.1.20',
  '1.2.840.10008.5.1.4.1.1.128', '1.2.840.10008.5.1.4.1.1.128.1', '1.2.840.10008.5.1.4.1.1.130', '1.2.840.10008.5.1.4.1.1.481.1', '1.2.840.10008.5.1.4.1.1.481.2',
  '1.2.840.10008.5.1.4.1.1.77.1.1', '1.2.840.10008.5.1.4.1.1.77.1.2', '1.2.840.10008.5.1.4.1.1.77.1.3', '1.2.840.10008.5.1.4.1.1.77.1.4', '1.2.840.10008.5.1.4.1.1.77.1.5.1',
  '1.2.840.10008.5.1.4.1.1.77.1.5.2', '1.2.840.10008.5.1.4.1.1.77.1.6',
];

/** An instance of the study as stored: its UID and its Part 10 file. */
export interface StoredInstance {
  sopInstanceUid: string;
  transferSyntaxUid: SyntheticTransferSyntax;
  part10: Uint8Array;
}

/**
 * One study of an instance per SOP class and syntax (tiny images under each class's UID: the peer and a
 * receiver take the data set as the class says), each stored in its syntax.
 */
export async function storeManyClassStudy(dicomPort: number, studyInstanceUid: string, classes: readonly string[], syntaxes: readonly SyntheticTransferSyntax[]): Promise<StoredInstance[]> {
  const stored: StoredInstance[] = [];
  for (const sopClassUid of classes) {
    for (const transferSyntaxUid of syntaxes) {
      const { bytes, resolved } = makeInstanceWithInfo({ rows: 4, columns: 4, sopClassUid, study: { uid: studyInstanceUid }, transferSyntaxUid });
      await storeDataset(dicomPort, sopClassUid, resolved.sopInstanceUid, bytes.subarray(splitPart10(bytes).datasetOffset), transferSyntaxUid);
      stored.push({ sopInstanceUid: resolved.sopInstanceUid, transferSyntaxUid, part10: bytes });
    }
  }
  return stored;
}

const studyRootMove = '1.2.840.10008.5.1.4.1.2.2.2';

/** A Study Root C-MOVE of the study to `destination`, from our own client on its own association: its final response. */
export async function moveStudyFrom(dicomPort: number, studyInstanceUid: string, destination: string): Promise<DimseReply> {
  const client = await openPeerClient(dicomPort, 'VIEWER', [{ abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }]);
  try {
    const identifier = encodeDataset(
      [
        { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
        { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
      ],
      TransferSyntax.ImplicitVrLittleEndian,
    );
    return await client.request(client.contexts[0]!.id, { commandField: CommandField.CMoveRq, affectedSopClassUid: studyRootMove, priority: 0, moveDestination: destination, hasDataSet: true }, identifier);
  } finally {
    await client.release();
  }
}
