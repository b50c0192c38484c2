/**
 * Retrieves that cannot deliver: a C-MOVE destination that dies mid-transfer (its connection closes
 * without an A-ABORT), and C-GETs of copies whose bytes are lost. Each ends as DIMSE allows (a final
 * response counting the failures, PS3.4 C.4.2.1.4, or an A-ABORT when a data set is cut off), never a
 * C-STORE-RQ whose data set does not follow; the peer keeps serving.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openPeerClient, openStoreClient, startTestPeer } from '../support/peer-fixture.ts';
import { acceptorThatHangsUpMidRequest } from '../support/raw-acceptor.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { AssociationClosedError, type DicomClientAssociation } from '../../src/actors/association/client.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { damageChunk } from '../../src/actors/storage/fixtures/store-keys.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';

const studyRootMove = '1.2.840.10008.5.1.4.1.2.2.2';
const studyRootGet = '1.2.840.10008.5.1.4.1.2.2.3';
const ctImage = '1.2.840.10008.5.1.4.1.1.2';
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

  const client = await openPeerClient(peer.dicomPort, 'VIEWER', [
    { abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
    { abstractSyntaxUid: verification, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
  ]);
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

test('C-GET of copies whose bytes are lost: none at all, a failed sub-operation and no C-STORE-RQ; part of them, an A-ABORT', async (t) => {
  const peer = await startTestPeer([], 'getter');
  t.after(() => peer.dispose());
  const studies = ['1.2.826.0.1.3680043.10.1453.78.1', '1.2.826.0.1.3680043.10.1453.78.2'];
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', verification);
  const uids: string[] = [];
  for (const study of studies) {
    // 2 MB: several chunks, so one in the middle can be lost.
    const reply = await store.storeInstance({ study: { uid: study }, rows: 1024, columns: 1024 });
    assert.equal(reply.command.status, 0);
    uids.push(reply.command.affectedSopInstanceUid!);
  }
  await store.client.release();
  const [lostWhole, lostMiddle] = await Promise.all(uids.map(async (uid) => (await peer.store.getEntry(uid))!));
  for (let i = 0; ; i++) {
    try {
      await damageChunk(peer.store, lostWhole!.blobId, 0, 'lose');
    } catch {
      break; // no chunk left
    }
    assert.ok(i < 1000);
  }
  let chunkCount = 0;
  for await (const _ of peer.store.blobDb.keys({ gte: `b!${lostMiddle!.blobId}!`, lt: `b!${lostMiddle!.blobId}!~` })) chunkCount++;
  assert.ok(chunkCount >= 3, `${chunkCount} chunks`);
  await damageChunk(peer.store, lostMiddle!.blobId, chunkCount >> 1, 'lose');

  let received = 0;
  const open = () =>
    openPeerClient(
      peer.dicomPort,
      'GETTER',
      [
        { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
        { abstractSyntaxUid: ctImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      ],
      {
        roleSelections: [{ sopClassUid: ctImage, scuRole: false, scpRole: true }],
        onIncomingStore: () => {
          received++;
          return Status.Success;
        },
      },
    );
  const get = (client: DicomClientAssociation, study: string) =>
    client.request(
      client.contexts[0]!.id,
      { commandField: CommandField.CGetRq, affectedSopClassUid: studyRootGet, priority: 0, hasDataSet: true },
      encodeDataset(
        [
          { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
          { tag: Tags.StudyInstanceUID, vr: 'UI', value: study },
        ],
        TransferSyntax.ExplicitVrLittleEndian,
      ),
    );

  const client = await open();
  const whole = await get(client, studies[0]!);
  assert.equal(whole.command.status, Status.SubOpsCompleteWithFailures);
  assert.equal(whole.command.failedSubOperations, 1);
  assert.equal(received, 0, 'no C-STORE-RQ for a copy that cannot be read');
  // The association is still in step, so the next C-GET on it is served: its copy is cut off part-way,
  // and the association carrying it is aborted.
  await assert.rejects(get(client, studies[1]!), (e: unknown) => e instanceof AssociationClosedError && e.code === 'ERR_ASSOCIATION_ABORTED');
  assert.equal(received, 0, 'the cut-off data set was never delivered as an instance');
  client.abort();

  // The peer goes on.
  const again = await open();
  const echoClient = await openStoreClient(peer.dicomPort, 'CHECK', verification);
  const echo = await echoClient.client.request(echoClient.otherContextId, { commandField: CommandField.CEchoRq, affectedSopClassUid: verification, hasDataSet: false });
  assert.equal(echo.command.status, 0);
  await echoClient.client.release();
  again.abort();
});
