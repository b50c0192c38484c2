/**
 * C-CANCEL (PS3.4 C.4.1.3.2, C.4.2.3.1, C.4.3.3.1; PS3.7 9.3.2.3): a query cancelled while its matches
 * go out stops with a final Cancel response, and the association serves the next request.
 * (A C-MOVE cancelled by DCMTK's movescu is in the interop suite.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestPeer } from '../support/peer-fixture.ts';
import { makeInstanceWithInfo, TransferSyntax } from '../support/synthetic-dicom.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { SopClass } from '../../src/actors/association/negotiation.ts';
import { DicomClientAssociation } from '../../src/actors/association/client.ts';

const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.77.1';
const instanceCount = 300;

test('a C-FIND cancelled after its first match ends with status Cancel; the association goes on', async (t) => {
  const peer = await startTestPeer();
  t.after(() => peer.dispose());
  const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port: peer.dicomPort,
    callingAeTitle: 'CANCELLER',
    calledAeTitle: 'PACSMESH',
    presentationContexts: [
      { abstractSyntaxUid: ct, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: SopClass.StudyRootFind, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
    ],
  });
  t.after(() => client.release());
  const [storeContext, findContext] = [client.contexts[0]!.id, client.contexts[1]!.id];
  for (let i = 1; i <= instanceCount; i++) {
    const { bytes, resolved } = makeInstanceWithInfo({ rows: 8, columns: 8, study: { uid: studyInstanceUid }, sopInstanceUid: `${studyInstanceUid}.${i}`, instanceNumber: i });
    const reply = await client.request(storeContext, { commandField: CommandField.CStoreRq, affectedSopClassUid: resolved.sopClassUid, affectedSopInstanceUid: resolved.sopInstanceUid, priority: 0, hasDataSet: true }, bytes.subarray(splitPart10(bytes).datasetOffset));
    assert.equal(reply.command.status, Status.Success);
  }
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'IMAGE' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
      { tag: Tags.SOPInstanceUID, vr: 'UI', value: '' },
    ],
    TransferSyntax.ExplicitVrLittleEndian,
  );
  const find = (onPending?: () => void) => {
    let pending = 0;
    const final = client.request(findContext, { commandField: CommandField.CFindRq, affectedSopClassUid: SopClass.StudyRootFind, priority: 0, hasDataSet: true }, identifier, () => {
      pending++;
      if (pending === 1) onPending?.();
    });
    return final.then((reply) => ({ status: reply.command.status, pending }));
  };

  const cancelled = await find(() => void client.cancel(findContext));
  assert.equal(cancelled.status, Status.Cancel, `final status 0x${cancelled.status?.toString(16)} after ${cancelled.pending} matches`);
  assert.ok(cancelled.pending < instanceCount, `${cancelled.pending} of ${instanceCount} matches were sent after the cancel`);

  const whole = await find();
  assert.deepEqual(whole, { status: Status.Success, pending: instanceCount });
});
