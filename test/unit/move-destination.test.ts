/**
 * C-MOVE to a destination that dies mid-transfer (its connection closes without an A-ABORT): the move
 * ends with a final response counting the failures (PS3.4 C.4.2.1.4), and the peer keeps serving.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openStoreClient, startTestPeer } from '../support/peer-fixture.ts';
import { acceptorThatHangsUpMidRequest } from '../support/raw-acceptor.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { DicomClientAssociation } from '../../src/actors/association/client.ts';
import { CommandField } from '../../src/codec/dimse.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';

const studyRootMove = '1.2.840.10008.5.1.4.1.2.2.2';
const verification = '1.2.840.10008.1.1';

test('C-MOVE to a destination whose connection closes mid-transfer: failures counted in the final response, the peer keeps serving', async (t) => {
  const destination = await acceptorThatHangsUpMidRequest();
  const peer = await startTestPeer(['--move-dest', `HANGUP=127.0.0.1:${destination.port}`], 'mover');
  t.after(async () => {
    await peer.dispose();
    await destination.close();
  });
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.77.1';
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', verification);
  for (let i = 0; i < 3; i++) {
    // 2 MB each: read from the store in several reads, so the connection closes while one is being sent.
    const reply = await store.storeInstance({ study: { uid: studyInstanceUid }, rows: 1024, columns: 1024 });
    assert.equal(reply.command.status, 0);
  }
  await store.client.release();

  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port: peer.dicomPort,
    callingAeTitle: 'VIEWER',
    calledAeTitle: 'PACSMESH',
    presentationContexts: [
      { abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
      { abstractSyntaxUid: verification, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
    ],
  });
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  const final = await client.request(
    client.contexts[0]!.id,
    { commandField: CommandField.CMoveRq, affectedSopClassUid: studyRootMove, priority: 0, moveDestination: 'HANGUP', hasDataSet: true },
    identifier,
  );
  const { status, completedSubOperations = 0, failedSubOperations = 0, warningSubOperations = 0 } = final.command;
  assert.ok(status === 0xa702 || status === 0xb000, `final status 0x${status?.toString(16)}`);
  assert.equal(completedSubOperations, 0);
  assert.equal(failedSubOperations + warningSubOperations, 3, 'every instance is accounted for as failed');
  // The same association, and the peer, go on.
  const echo = await client.request(client.contexts[1]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: verification, hasDataSet: false });
  assert.equal(echo.command.status, 0);
  await client.release();
});
