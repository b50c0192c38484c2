/**
 * C-CANCEL (PS3.4 C.4.1.3.2, C.4.2.3.1, C.4.3.3.1; PS3.7 9.3.2.3): a query cancelled while its matches
 * go out stops with a final Cancel response, and the association serves the next request.
 * (A C-MOVE cancelled by DCMTK's movescu is in the interop suite.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openStoreClient, startTestPeer } from '../support/peer-fixture.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { SopClass } from '../../src/actors/association/negotiation.ts';

const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.77.1';
const instanceCount = 300;

test('a C-FIND cancelled after its first match ends with status Cancel; the association goes on', async (t) => {
  const peer = await startTestPeer();
  t.after(() => peer.dispose());
  const { client, otherContextId: findContext, storeInstance } = await openStoreClient(peer.dicomPort, 'CANCELLER', SopClass.StudyRootFind);
  t.after(() => client.release());
  for (let i = 1; i <= instanceCount; i++) {
    const reply = await storeInstance({ rows: 8, columns: 8, study: { uid: studyInstanceUid }, sopInstanceUid: `${studyInstanceUid}.${i}`, instanceNumber: i });
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
