/**
 * Storage Commitment Push Model as an SCP, end to end against a real peer: a dcmjs-dimse modality that
 * waits on its own association for the report; a modality in the AE directory that gets it over a new
 * association, also after the peer restarts; and the N-ACTIONs that are refused, each with its status.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import dimse from 'dcmjs-dimse';
import { CommandField, Status, type DimseCommand } from '../../src/codec/dimse.ts';
import { TransferSyntax } from '../../src/codec/dicom-types.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer } from '../../src/peer.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { StorageCommitment } from '../../src/actors/commitment/messages.ts';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { commitmentRequestDataSet, nActionCommand } from '../support/commitment.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { openPeerClient, openStoreClient, startTestPeer } from '../support/peer-fixture.ts';
import { startReportReceiver } from '../support/report-receiver.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { waitFor } from '../support/wait.ts';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';

const { Client, Dataset } = dimse;
const { NActionRequest } = dimse.requests;
const { NEventReportResponse } = dimse.responses;

const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
const uid = (n: number) => `1.2.826.0.1.3680043.10.1453.77.${n}`;
const fastChecks = { checkWaitMs: 400, checkIntervalMs: 100 };

async function storeInstances(port: number, callingAeTitle: string, uids: string[]): Promise<void> {
  const store = await openStoreClient(port, callingAeTitle, StorageCommitment.sopClassUid);
  for (const [index, sopInstanceUid] of uids.entries()) {
    const reply = await store.storeInstance({ sopInstanceUid, instanceNumber: index + 1, rows: 8, columns: 8 });
    assert.equal(reply.command.status, Status.Success);
  }
  await store.client.release();
}

const apiMesh = async (httpPort: number) => (await (await fetch(`http://127.0.0.1:${httpPort}/api/mesh`)).json()) as { commitment: Record<string, number> };

/** A request for the CT instances `uids`. */
const requestDataSet = (transactionUid: string, uids: string[], transferSyntaxUid?: string) =>
  commitmentRequestDataSet(transactionUid, uids.map((sopInstanceUid) => ({ sopClassUid: ct, sopInstanceUid })), transferSyntaxUid);

/**
 * dcmjs-dimse as a modality not in the AE directory: sends `request` as MODALITY and stays on the association
 * after the N-ACTION-RSP (up to `lingerMs`), waiting for the report, which it answers Success.
 */
function reportOnOwnAssociation(port: number, request: InstanceType<typeof NActionRequest>, lingerMs: number): Promise<{ eventTypeId: number; dataset: Record<string, any> }> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    client.addRequest(request);
    client.on('nEventReportRequest', (incoming: any, callback: (r: unknown) => void) => {
      resolve({ eventTypeId: incoming.getEventTypeId(), dataset: incoming.getDataset().getElements() });
      const response = NEventReportResponse.fromRequest(incoming);
      response.setStatus(Status.Success);
      callback(response);
    });
    client.on('networkError', reject);
    client.on('closed', () => reject(new Error('association closed before the report')));
    client.send('127.0.0.1', port, 'MODALITY', 'PACSMESH', { associationLingerTimeout: lingerMs });
  });
}

test('a modality not in the AE directory gets its report on its own association: held instances committed, an unknown one failed 0x0112', async (t) => {
  const peer = await startTestPeer([], 'commit', silentLogger, { commitment: fastChecks });
  t.after(() => peer.dispose());
  await storeInstances(peer.dicomPort, 'MODALITY', [uid(1), uid(2)]);

  // dcmjs-dimse as the modality: an independent implementation of the SCU side.
  const request = new NActionRequest(StorageCommitment.sopClassUid, StorageCommitment.sopInstanceUid, 1);
  request.setDataset(
    new Dataset({
      TransactionUID: uid(100),
      ReferencedSOPSequence: [uid(1), uid(2), uid(3)].map((sopInstanceUid) => ({ ReferencedSOPClassUID: ct, ReferencedSOPInstanceUID: sopInstanceUid })),
    }),
  );
  let actionStatus: number | undefined;
  request.on('response', (response: { getStatus(): number }) => (actionStatus = response.getStatus()));
  const report = await reportOnOwnAssociation(peer.dicomPort, request, 5_000);
  assert.equal(actionStatus, Status.Success);
  assert.equal(report.eventTypeId, StorageCommitment.eventTypeFailuresExist);
  assert.equal(report.dataset.TransactionUID, uid(100));
  assert.deepEqual(report.dataset.ReferencedSOPSequence.map((i: any) => i.ReferencedSOPInstanceUID).sort(), [uid(1), uid(2)]);
  assert.deepEqual(report.dataset.FailedSOPSequence.map((i: any) => [i.ReferencedSOPInstanceUID, i.FailureReason]), [[uid(3), 0x0112]]);
  await waitFor('the delivery counted in /api/mesh', async () => (await apiMesh(peer.httpPort)).commitment.reportsDelivered === 1, 5_000);
});

test('a report owed on the N-ACTION\'s association holds off the idle abort until it is sent (hunt 194: --idle-timeout 3 aborted it first)', async (t) => {
  // An unknown instance is looked for 2.5 s before the report; the association is idle after 1 s.
  const peer = await startTestPeer(['--idle-timeout', '1'], 'commit-idle', silentLogger, { commitment: { checkWaitMs: 2_500, checkIntervalMs: 100 } });
  t.after(() => peer.dispose());
  await storeInstances(peer.dicomPort, 'MODALITY', [uid(201)]);
  const request = new NActionRequest(StorageCommitment.sopClassUid, StorageCommitment.sopInstanceUid, 1);
  request.setDataset(new Dataset({ TransactionUID: uid(300), ReferencedSOPSequence: [uid(201), uid(202)].map((sopInstanceUid) => ({ ReferencedSOPClassUID: ct, ReferencedSOPInstanceUID: sopInstanceUid })) }));
  const startedAt = Date.now();
  const report = await reportOnOwnAssociation(peer.dicomPort, request, 10_000);
  assert.ok(Date.now() - startedAt >= 2_000, 'the report came after the look-up, past the idle timeout');
  assert.equal(report.eventTypeId, StorageCommitment.eventTypeFailuresExist);
  assert.deepEqual(report.dataset.FailedSOPSequence.map((i: any) => [i.ReferencedSOPInstanceUID, i.FailureReason]), [[uid(202), 0x0112]]);
});

test('a modality in the AE directory gets its report over a new association, also when it listens only after the peer restarted', async (t) => {
  const receiver = await startReportReceiver('MODALITY');
  const receiverPort = receiver.port;
  await receiver.close(); // the modality is down when the report is first due
  const peer = await startTestPeer(['--move-dest', `MODALITY=127.0.0.1:${receiverPort}`], 'commit-dir', silentLogger, { commitment: { ...fastChecks, retryDelaysMs: [200] } });
  let restarted: Awaited<ReturnType<typeof startPeer>> | undefined;
  let back: Awaited<ReturnType<typeof startReportReceiver>> | undefined;
  t.after(async () => {
    await restarted?.stop();
    await back?.close();
    await peer.dispose();
  });
  await storeInstances(peer.dicomPort, 'MODALITY', [uid(11)]);

  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }]);
  const reply = await client.request(client.contexts[0]!.id, nActionCommand(), requestDataSet(uid(200), [uid(11)], TransferSyntax.ImplicitVrLittleEndian));
  assert.equal(reply.command.status, Status.Success);
  assert.equal(reply.command.affectedSopInstanceUid, StorageCommitment.sopInstanceUid);
  await client.release(); // asynchronous mode: the modality does not wait on this association
  await waitFor('the report is owed', async () => (await apiMesh(peer.httpPort)).commitment.pending === 1, 5_000);
  await new Promise((resolve) => setTimeout(resolve, 600)); // a few attempts against the closed port

  // A restart: the owed report was kept on disk (its N-ACTION-RSP promised it).
  await peer.stop();
  restarted = await startPeer(
    parseStartArgs(['--site', 'commit-dir', '--data', peer.dataDir, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent', '--move-dest', `MODALITY=127.0.0.1:${receiverPort}`]),
    { log: silentLogger, shutdownGraceMs: 1000, commitment: { ...fastChecks, retryDelaysMs: [200] } },
  );
  back = await startReportReceiver('MODALITY', receiverPort);
  await back.waitFor(1);
  const [received] = back.reports;
  assert.equal(received!.callingAeTitle, 'PACSMESH');
  assert.deepEqual(received!.roleSelections, [{ sopClassUid: StorageCommitment.sopClassUid, scuRole: false, scpRole: true }], 'the archive proposes the SCP role');
  assert.equal(received!.command.commandField, CommandField.NEventReportRq);
  assert.equal(received!.command.eventTypeId, StorageCommitment.eventTypeAllCommitted);
  assert.equal(received!.command.affectedSopInstanceUid, StorageCommitment.sopInstanceUid);
  const byTag = new Map(received!.elements.map((e) => [e.tag, e]));
  assert.equal(byTag.get(Tags.TransactionUID)?.value, uid(200));
  assert.equal(byTag.get(Tags.RetrieveAETitle)?.value, 'PACSMESH');
  assert.deepEqual(byTag.get(Tags.ReferencedSOPSequence)?.items?.map((item) => item.map((e) => e.value)), [[ct, uid(11)]]);
  assert.equal(byTag.has(Tags.FailedSOPSequence), false);
  await waitFor('nothing owed once delivered', async () => (await apiMesh(restarted!.httpPort)).commitment.pending === 0, 5_000);
  assert.equal(back.reports.length, 1, 'delivered once');
});

test('an instance held at fewer sites than the write quorum is not reported committed: failed 0x0213 (helper 90: committed after its C-STORE was refused 0xA700)', { timeout: 60_000 }, async (t) => {
  const keyDir = mkdtempSync(join(tmpdir(), 'pacs-commitment-key-'));
  const keyFile = join(keyDir, 'swarm.key');
  await writeSwarmKeyFile(keyFile);
  const receiver = await startReportReceiver('MODALITY');
  // A lone site whose operator asked for two sites' copies before anything is acknowledged.
  const peer = await startTestPeer(['--swarm-key', keyFile, '--p2p-port', '0', '--write-quorum', '2', '--move-dest', `MODALITY=127.0.0.1:${receiver.port}`], 'commitment-quorum', silentLogger, { commitment: fastChecks });
  t.after(async () => {
    await peer.dispose();
    await receiver.close();
    rmSync(keyDir, { recursive: true, force: true });
  });
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', StorageCommitment.sopClassUid);
  const stored = await store.storeInstance({ sopInstanceUid: uid(901), rows: 8, columns: 8 });
  await store.client.release();
  assert.equal(stored.command.status, 0xa700, 'the C-STORE is not acknowledged without its quorum');
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }]);
  const reply = await client.request(client.contexts[0]!.id, nActionCommand(), commitmentRequestDataSet(uid(902), [{ sopClassUid: ct, sopInstanceUid: uid(901) }]));
  assert.equal(reply.command.status, Status.Success);
  await client.release();
  await receiver.waitFor(1, 10_000);
  const report = receiver.reports[0]!;
  assert.equal(report.command.eventTypeId, StorageCommitment.eventTypeFailuresExist);
  const failed = report.elements.find((e) => e.tag === Tags.FailedSOPSequence)?.items ?? [];
  assert.equal(failed.length, 1);
  assert.equal(failed[0]!.find((e) => e.tag === Tags.FailureReason)?.value, String(0x0213));
});

test('N-ACTIONs that cannot be taken are answered with their DIMSE status, and the association goes on', async (t) => {
  const peer = await startTestPeer([], 'commit-bad', silentLogger, { commitment: fastChecks });
  t.after(() => peer.dispose());
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [
    { abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
    { abstractSyntaxUid: ct, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
    { abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
  ]);
  t.after(() => client.abort());
  const [commitment, storage, verification] = client.contexts;
  const statusOf = async (contextId: number, command: Partial<DimseCommand>, dataSet: Uint8Array) => {
    const reply = await client.request(contextId, nActionCommand(command), dataSet);
    return [reply.command.status, reply.command.errorComment];
  };
  const good = requestDataSet(uid(300), [uid(1)]);
  assert.deepEqual(await statusOf(commitment!.id, { requestedSopInstanceUid: '1.2.3' }, good), [Status.NoSuchSopInstance, `Requested SOP Instance must be ${StorageCommitment.sopInstanceUid}`]);
  assert.deepEqual(await statusOf(commitment!.id, { actionTypeId: 2 }, good), [Status.NoSuchAction, 'N-ACTION type 2: only 1 (Request Storage Commitment)']);
  assert.deepEqual(await statusOf(storage!.id, { requestedSopClassUid: ct }, good), [Status.NoSuchSopClass, `N-ACTION is for ${StorageCommitment.sopClassUid}, on its own context`]);
  assert.deepEqual(await statusOf(commitment!.id, {}, requestDataSet('', [uid(1)])), [Status.InvalidArgumentValue, 'no Transaction UID']);
  assert.deepEqual(await statusOf(commitment!.id, {}, requestDataSet(uid(301), ['1..2'])), [Status.InvalidArgumentValue, 'Referenced SOP item 1: missing or invalid UID']);
  const [status, comment] = await statusOf(commitment!.id, {}, Buffer.from('\x08\x00\x95\x11UI\xff\x00garbage'));
  assert.equal(status, Status.InvalidArgumentValue);
  assert.match(String(comment), /^data set cannot be read/);
  const echo = await client.request(verification!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: '1.2.840.10008.1.1', hasDataSet: false });
  assert.equal(echo.command.status, Status.Success, 'the association is still usable');
  assert.equal((await apiMesh(peer.httpPort)).commitment.pending, 0, 'nothing was taken on');
});

test('an N-ACTION just under its 4 MiB bound in the smallest PDUs is taken: fragments are bounded apart from bytes', async (t) => {
  // 4 MiB less 64 KiB in PDUs of 4 KiB: ~1,000 fragments, whose 256 bytes each used to count towards the 4 MiB.
  const peer = await startTestPeer(['--max-pdu', '4096'], 'commit-small-pdus', silentLogger, { commitment: fastChecks });
  t.after(() => peer.dispose());
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }]);
  t.after(() => client.abort());
  const request = requestDataSet(uid(500), [uid(51)]);
  const padding = encodeDataset([{ tag: 0x00091010, vr: 'UT', value: 'x'.repeat(4 * 1024 * 1024 - 64 * 1024 - request.length) }], TransferSyntax.ExplicitVrLittleEndian);
  const reply = await client.request(client.contexts[0]!.id, nActionCommand(), Buffer.concat([request, padding]));
  assert.deepEqual([reply.command.status, reply.command.errorComment], [Status.Success, undefined], 'taken, not refused for its fragments');
  const over = await client.request(client.contexts[0]!.id, nActionCommand(), Buffer.concat([request, padding, new Uint8Array(128 * 1024)]));
  assert.equal(over.command.status, Status.ResourceLimitation, 'over 4 MiB of bytes is still refused');
});

test('a stop does not wait for a report association the modality never answers; the report stays owed', async (t) => {
  // A modality that accepts the TCP connection and then says nothing (no A-ASSOCIATE-AC).
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => sockets.add(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    silent.close();
  });
  const silentPort = (silent.address() as AddressInfo).port;
  const peer = await startTestPeer(['--move-dest', `MODALITY=127.0.0.1:${silentPort}`], 'commit-stop', silentLogger, { commitment: fastChecks });
  t.after(() => rmSync(peer.dataDir, { recursive: true, force: true }));
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }]);
  assert.equal((await client.request(client.contexts[0]!.id, nActionCommand(), requestDataSet(uid(400), [uid(41)]))).command.status, Status.Success);
  await client.release();
  await waitFor('the report association to be under way', () => sockets.size > 0, 10_000);
  const stopStartedMs = Date.now();
  await peer.stop();
  const stopMs = Date.now() - stopStartedMs;
  // Half the 30 s: a stop at load 20-30 can take several seconds with nothing held.
  assert.ok(stopMs < 15_000, `the stop took ${stopMs} ms (the report association's own timeout is 30 s)`);
  const store = createReplicaStore({ path: join(peer.dataDir, 'store') });
  await store.open();
  t.after(() => store.close());
  assert.deepEqual((await store.listCommitments()).map((r) => r.transactionUid), [uid(400)], 'still owed at the next start');
});

test('a modality that withholds the SCP role from the archive gets no report on that association; the report stays owed', async (t) => {
  const receiver = await startReportReceiver('MODALITY', 0, { refuseScpRole: true });
  const peer = await startTestPeer(['--move-dest', `MODALITY=127.0.0.1:${receiver.port}`], 'commit-role', silentLogger, { commitment: { ...fastChecks, retryDelaysMs: [200] } });
  t.after(async () => {
    await peer.dispose();
    await receiver.close();
  });
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }]);
  assert.equal((await client.request(client.contexts[0]!.id, nActionCommand(), requestDataSet(uid(500), [uid(51)]))).command.status, Status.Success);
  await client.release();
  await waitFor('two delivery attempts', () => receiver.associations() >= 2, 10_000);
  assert.equal(receiver.reports.length, 0, 'no N-EVENT-REPORT without the SCP role');
  assert.equal((await apiMesh(peer.httpPort)).commitment.pending, 1);
});
