/**
 * Retrieves that cannot deliver: a C-MOVE destination that dies mid-transfer (its connection closes
 * without an A-ABORT), and C-GETs of copies whose bytes are lost. Each ends as DIMSE allows (a final
 * response counting the failures, PS3.4 C.4.2.1.4, or an A-ABORT when a data set is cut off), never a
 * C-STORE-RQ whose data set does not follow; the peer keeps serving.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { associateRqBytes, openPeerClient, openStoreClient, startTestPeer, storeDataset, type TestPeer } from '../support/peer-fixture.ts';
import { recordingLogger, type RecordedLine } from '../support/recording-logger.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { acceptorAnsweringSlowly, acceptorAnsweringWrongMessageId, acceptorLikeGdcm, acceptorNeverAnswering, acceptorNeverReleasing, acceptorThatHangsUpMidRequest, silentTcpAcceptor } from '../support/raw-acceptor.ts';
import { makeInstanceWithInfo, TransferSyntax, type SyntheticTransferSyntax } from '../support/synthetic-dicom.ts';
import { manyStorageClasses, storeManyClassStudy } from '../support/many-class-study.ts';
import { AssociationClosedError, type DicomClientAssociation } from '../../src/actors/association/client.ts';
import { CommandField, Status, decodeCommand, encodeCommand } from '../../src/codec/dimse.ts';
import { PduFramer, encodePDataFragments, type Pdu } from '../../src/codec/pdu.ts';
import { damageChunk } from '../../src/actors/storage/fixtures/store-keys.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { parseDataset } from '../../src/codec/dataset/reader.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { getFreePort } from '../support/dicom-tools.ts';
import { oversizedJpegInstance } from '../support/oversized-jpeg.ts';
import { corpusSkip } from '../../src/codec/dataset/test-fixtures.ts';
import { waitFor } from '../support/wait.ts';

const studyRootMove = '1.2.840.10008.5.1.4.1.2.2.2';
const studyRootGet = '1.2.840.10008.5.1.4.1.2.2.3';
const studyRootFind = '1.2.840.10008.5.1.4.1.2.2.1';
const ctImage = '1.2.840.10008.5.1.4.1.1.2';
const verification = '1.2.840.10008.1.1';

/** A Study Root C-MOVE of one study over the association's first context (Study Root MOVE). */
async function moveStudy(client: DicomClientAssociation, studyInstanceUid: string, moveDestination: string) {
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  return client.request(client.contexts[0]!.id, { commandField: CommandField.CMoveRq, affectedSopClassUid: studyRootMove, priority: 0, moveDestination, hasDataSet: true }, identifier);
}

/** A Study Root C-GET of one study over the association's first context (Study Root GET), its identifier in explicit VR LE. */
async function getStudy(client: DicomClientAssociation, studyInstanceUid: string) {
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
    ],
    TransferSyntax.ExplicitVrLittleEndian,
  );
  return client.request(client.contexts[0]!.id, { commandField: CommandField.CGetRq, affectedSopClassUid: studyRootGet, priority: 0, hasDataSet: true }, identifier);
}

/** Stores `count` instances of one study (rows x columns each) at the peer, each acknowledged: their SOP Instance UIDs. */
async function storeStudy(peer: TestPeer, studyInstanceUid: string, count: number, rows: number, columns = rows): Promise<string[]> {
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', verification);
  const stored: string[] = [];
  for (let i = 0; i < count; i++) {
    const reply = await store.storeInstance({ study: { uid: studyInstanceUid }, rows, columns });
    assert.equal(reply.command.status, 0);
    stored.push(reply.command.affectedSopInstanceUid!);
  }
  await store.client.release();
  return stored;
}

/** A peer whose move destination `aeTitle` is a raw acceptor, its log lines kept in `lines`; both end with the test. */
async function peerMovingTo(t: TestContext, destination: { port: number; close(): Promise<void> }, aeTitle: string, site: string, lines: RecordedLine[]): Promise<TestPeer> {
  const peer = await startTestPeer(['--move-dest', `${aeTitle}=127.0.0.1:${destination.port}`], site, recordingLogger([], {}, lines));
  t.after(async () => {
    await peer.dispose();
    await destination.close();
  });
  return peer;
}

/** A viewer's association for C-MOVE (its first context) and C-ECHO (its second, for echoThenRelease). */
function moveClient(peer: TestPeer): Promise<DicomClientAssociation> {
  return openPeerClient(peer.dicomPort, 'VIEWER', [
    { abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
    { abstractSyntaxUid: verification, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] },
  ]);
}

/** The failed C-GET or C-MOVE sub-operations by reason, as the peer logged them (the response has no room for them). */
function failureReasons(lines: readonly RecordedLine[], service: 'C-GET' | 'C-MOVE' = 'C-MOVE'): Record<string, number> | undefined {
  return lines.find((l) => l.message === `${service} sub-operations failed`)?.fields?.reasons as Record<string, number> | undefined;
}

test('C-MOVE to a destination whose connection closes mid-transfer: failures counted in the final response, the peer keeps serving', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await peerMovingTo(t, await acceptorThatHangsUpMidRequest(), 'HANGUP', 'mover', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.77.1';
  // 2 MB each: read from the store in several reads, so the connection closes while one is being sent.
  await storeStudy(peer, studyInstanceUid, 3, 1024);

  const client = await moveClient(peer);
  const final = await moveStudy(client, studyInstanceUid, 'HANGUP');
  const { status, completedSubOperations = 0, failedSubOperations = 0, warningSubOperations = 0 } = final.command;
  assert.ok(status === 0xa702 || status === 0xb000, `final status 0x${status?.toString(16)}`);
  assert.equal(completedSubOperations, 0);
  assert.equal(failedSubOperations + warningSubOperations, 3, 'every instance is accounted for as failed');
  // The operator sees why: each failure under its reason.
  const reasons = failureReasons(lines);
  assert.ok(reasons, lines.map((l) => l.message).join('\n'));
  assert.equal(Object.values(reasons).reduce((a, b) => a + b, 0), failedSubOperations);
  // The same association, and the peer, go on.
  await echoThenRelease(client);
});

test('C-MOVE to a GDCM receiver, which reads every data set in the syntax of the last context it accepted: each instance goes out in that syntax (hunt 155: gdcmscu aborted on the first explicit VR one)', async (t) => {
  const lines: RecordedLine[] = [];
  const gdcm = await acceptorLikeGdcm();
  const peer = await peerMovingTo(t, gdcm, 'GDCMSCP', 'mover-gdcm', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.155.1';
  // Explicit VR LE instances (their own context, which GDCM accepts in explicit VR) and an implicit VR one.
  const explicitUids = await storeStudy(peer, studyInstanceUid, 2, 16);
  const implicit = makeInstanceWithInfo({ rows: 16, columns: 16, study: { uid: studyInstanceUid }, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
  const implicitBytes = implicit.bytes.subarray(splitPart10(implicit.bytes).datasetOffset);
  await storeDataset(peer.dicomPort, implicit.resolved.sopClassUid, implicit.resolved.sopInstanceUid, implicitBytes, TransferSyntax.ImplicitVrLittleEndian);

  const client = await moveClient(peer);
  const final = await moveStudy(client, studyInstanceUid, 'GDCMSCP');
  assert.equal(final.command.status, 0, `final status 0x${final.command.status?.toString(16)}, ${JSON.stringify(failureReasons(lines))}`);
  assert.equal(final.command.completedSubOperations, 3);
  // Every data set went on a context of the one syntax GDCM reads (implicit VR LE: it takes it whenever
  // offered), the explicit VR instances converted, each still the instance it was.
  assert.deepEqual(gdcm.deliveries.map((d) => d.contextTransferSyntaxUid), Array(3).fill(TransferSyntax.ImplicitVrLittleEndian));
  const received = gdcm.deliveries.map((d) => parseDataset(d.dataSet, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === Tags.SOPInstanceUID)?.value);
  assert.deepEqual([...received].sort(), [...explicitUids, implicit.resolved.sopInstanceUid].sort());
  assert.deepEqual(gdcm.deliveries[received.indexOf(implicit.resolved.sopInstanceUid)]?.dataSet, Buffer.from(implicitBytes), 'the implicit VR instance goes as stored');
  await echoThenRelease(client);
});

/** A study of one instance per class and syntax moved to `destination`: the final response, with what was stored. */
async function moveManyClassStudy(t: TestContext, destination: { port: number; close(): Promise<void> }, site: string, classes: readonly string[], syntaxes: readonly SyntheticTransferSyntax[]) {
  const lines: RecordedLine[] = [];
  const peer = await peerMovingTo(t, destination, 'GDCMSCP', site, lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.1';
  const stored = (await storeManyClassStudy(peer.dicomPort, studyInstanceUid, classes, syntaxes)).map((i) => i.sopInstanceUid);
  const client = await moveClient(peer);
  const final = await moveStudy(client, studyInstanceUid, 'GDCMSCP');
  await echoThenRelease(client);
  return { final, stored, lines };
}

test('C-MOVE of 42 SOP classes stored in 3 syntaxes each (168 contexts to propose) to a GDCM receiver: every instance arrives, on one association of 128 contexts (the contexts past 128 were dropped: "receiver accepted no context"; gdcmscu takes one association per move)', { timeout: 120_000 }, async (t) => {
  // One association, as gdcmscu's receiver takes per C-MOVE (it refused the connection of a second one).
  const gdcm = await acceptorLikeGdcm({ associationsAccepted: 1 });
  const syntaxes = [TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian] as const;
  const { final, stored, lines } = await moveManyClassStudy(t, gdcm, 'mover-gdcm-many', manyStorageClasses, syntaxes);
  assert.equal(final.command.status, 0, `final status 0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}, ${JSON.stringify(failureReasons(lines))}`);
  assert.deepEqual([final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [stored.length, 0, 0]);
  // Each in the one syntax GDCM reads, and each the instance it was.
  assert.deepEqual(new Set(gdcm.deliveries.map((d) => d.contextTransferSyntaxUid)), new Set([TransferSyntax.ImplicitVrLittleEndian]));
  const received = gdcm.deliveries.map((d) => parseDataset(d.dataSet, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === Tags.SOPInstanceUID)?.value);
  assert.deepEqual(received.sort(), [...stored].sort());
  assert.equal(gdcm.associations.length, 1);
  assert.equal(gdcm.associations[0]!.length, 128);
  assert.equal(new Set(gdcm.associations[0]!.map((pc) => pc.abstractSyntaxUid)).size, manyStorageClasses.length);
});

/** Storage classes as the peer takes them (any UID under the storage root): no receiver here checks them. */
const classes129 = Array.from({ length: 129 }, (_, i) => `1.2.840.10008.5.1.4.1.1.9999.${i + 1}`);

test('C-MOVE of 129 SOP classes: two associations, the second one rejected or its connection refused: the first one\'s instances completed, the other failed and listed, the comment says why (0xB000, as dcmqrscp answers a move partly done; PS3.4 C.4.2.3.1)', { timeout: 120_000 }, async (t) => {
  for (const [refusal, why] of [['reject', 'local limit exceeded'], ['stop listening', 'ECONNREFUSED']] as const) {
    const gdcm = await acceptorLikeGdcm({ associationsAccepted: 1, refusal });
    const { final, stored, lines } = await moveManyClassStudy(t, gdcm, `mover-gdcm-refuses-second-${refusal.replace(' ', '-')}`, classes129, [TransferSyntax.ExplicitVrLittleEndian]);
    assert.equal(final.command.status, Status.SubOpsCompleteWithFailures, `${refusal}: final status 0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}`);
    assert.equal(gdcm.associations.length, refusal === 'reject' ? 2 : 1);
    assert.deepEqual(gdcm.associations.map((a) => new Set(a.map((pc) => pc.abstractSyntaxUid)).size), refusal === 'reject' ? [128, 1] : [128]);
    assert.deepEqual([final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [128, 1, 0]);
    assert.equal(final.command.errorComment, '1 failed: cannot reach the destination again');
    const list = parseDataset(final.dataSet!, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === 0x00080058)?.value;
    const delivered = new Set(gdcm.deliveries.map((d) => parseDataset(d.dataSet, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === Tags.SOPInstanceUID)?.value));
    assert.deepEqual([list], stored.filter((uid) => !delivered.has(uid)));
    const reasons = failureReasons(lines);
    assert.ok(reasons && Object.keys(reasons).some((r) => r.includes('association 2 of 2') && r.includes(why)), JSON.stringify(reasons));
  }
});

test('C-MOVE of 129 SOP classes cancelled while its second association is being opened: Cancel with 128 completed and 1 remaining, that opening aborted, no association left open to the destination, no third one (PS3.4 C.4.2.3.1)', { timeout: 120_000 }, async (t) => {
  let secondAsked!: () => void;
  const asked = new Promise<void>((resolve) => (secondAsked = resolve));
  // The second A-ASSOCIATE-RQ is never answered: the cancel comes while the peer waits for it.
  const gdcm = await acceptorLikeGdcm({ holdsAssociation: (index) => index === 2 && (secondAsked(), true) });
  const lines: RecordedLine[] = [];
  const peer = await peerMovingTo(t, gdcm, 'GDCMSCP', 'mover-cancel-between', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.170.1';
  await storeManyClassStudy(peer.dicomPort, studyInstanceUid, classes129, [TransferSyntax.ExplicitVrLittleEndian]);
  const client = await moveClient(peer);
  const moving = moveStudy(client, studyInstanceUid, 'GDCMSCP');
  await asked;
  await client.cancel(client.contexts[0]!.id);
  const final = await moving;
  const { status, remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations } = final.command;
  assert.equal(status, Status.Cancel, `final status 0x${status?.toString(16)} (${final.command.errorComment ?? ''})`);
  assert.deepEqual([remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations], [1, 128, 0, 0]);
  assert.equal(final.dataSet, undefined, 'nothing failed: no Failed SOP Instance UID List');
  assert.equal(gdcm.deliveries.length, 128);
  // The opening under way was aborted (A-ABORT), the first association released: the destination holds none.
  await gdcm.allClosed();
  assert.deepEqual(gdcm.aborts, [2]);
  assert.equal(gdcm.associations.length, 2);
  assert.ok(!lines.some((l) => l.message === 'C-MOVE destination unreachable'), 'a cancel is not the destination\'s fault');
  await echoThenRelease(client);
});

test('C-MOVE to a destination whose answers match no request: the sub-association is aborted at once and every instance counted failed, not one response timeout each (helper 69)', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await peerMovingTo(t, await acceptorAnsweringWrongMessageId(), 'WRONGID', 'mover-wrong-id', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.78.1';
  await storeStudy(peer, studyInstanceUid, 3, 16);
  const client = await openPeerClient(peer.dicomPort, 'VIEWER', [{ abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }]);
  const final = await moveStudy(client, studyInstanceUid, 'WRONGID');
  assert.equal(final.command.status, 0xa702);
  assert.equal(final.command.completedSubOperations ?? 0, 0);
  assert.equal(final.command.failedSubOperations, 3);
  const reasons = failureReasons(lines);
  assert.ok(reasons && Object.keys(reasons).some((r) => r.includes('answered message')), JSON.stringify(reasons));
  await client.release();
});

test('C-MOVE to a destination that never answers the A-RELEASE-RQ: the final response follows the last sub-operation within seconds, not the release timeout (30 s)', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await peerMovingTo(t, await acceptorNeverReleasing(), 'STICKY', 'mover-sticky', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.89.1';
  await storeStudy(peer, studyInstanceUid, 3, 16);
  const client = await moveClient(peer);
  const started = Date.now();
  const final = await moveStudy(client, studyInstanceUid, 'STICKY');
  const elapsedMs = Date.now() - started;
  assert.equal(final.command.status, Status.Success, `0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}`);
  assert.deepEqual([final.command.remainingSubOperations ?? 0, final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [0, 3, 0, 0]);
  assert.ok(elapsedMs < 10_000, `the final response took ${elapsedMs} ms`);
  await echoThenRelease(client);
});

test('C-MOVE to a destination nobody answers: 0xA702 with every instance counted failed and listed (PS3.4 C.4.2.1.5)', async (t) => {
  const closedPort = await getFreePort();
  const logged: string[] = [];
  const peer = await startTestPeer(['--move-dest', `GONE=127.0.0.1:${closedPort}`], 'mover-gone', recordingLogger(logged));
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.79.1';
  const stored = await storeStudy(peer, studyInstanceUid, 2, 16);
  const client = await openPeerClient(peer.dicomPort, 'VIEWER', [{ abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }]);
  t.after(() => client.release().catch(() => undefined));
  const final = await moveStudy(client, studyInstanceUid, 'GONE');
  assert.equal(final.command.status, 0xa702);
  assert.match(final.command.errorComment ?? '', /^cannot reach the destination/);
  assert.deepEqual([final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [0, 2, 0]);
  assert.ok(final.dataSet, 'a Failed SOP Instance UID List data set');
  const list = parseDataset(final.dataSet!, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === 0x00080058)?.value;
  assert.deepEqual(list?.split('\\').sort(), stored.sort());
  // The operator learns of it too, with the whole reason (the comment holds 64 characters).
  assert.ok(logged.includes('C-MOVE destination unreachable'), logged.join('\n'));
  assert.ok(logged.includes('C-MOVE answered with a failure or warning'));
});

test('a stop with a C-MOVE under way whose requestor has asked to release (Sta8): the final response lists what was not sent, then the release is answered (hunt 146)', async (t) => {
  const lines: RecordedLine[] = [];
  // Its drain (1 s in tests) is all for ending: the shutdown message goes out at once.
  const peer = await peerMovingTo(t, await acceptorAnsweringSlowly(200), 'SLOW', 'mover-stopping', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.146.1';
  const instanceCount = 30;
  await storeStudy(peer, studyInstanceUid, instanceCount, 16);
  const client = await moveClient(peer);
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  let released: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let pending = 0;
  const final = await client.request(client.contexts[0]!.id, { commandField: CommandField.CMoveRq, affectedSopClassUid: studyRootMove, priority: 0, moveDestination: 'SLOW', hasDataSet: true }, identifier, () => {
    // At the first sub-operation answered the requestor asks to release (the C-MOVE goes on, PS3.8 Sta8); two
    // sub-operations later, its A-RELEASE-RQ handled well before, the peer stops.
    pending++;
    if (pending === 1) released = client.release();
    if (pending === 3) stopped = peer.stop();
  });
  // Before: the A-RELEASE-RQ's handler held the association's mailbox until the C-MOVE ended, so the stop
  // reached it only then: the listener gave up on it, and the C-MOVE went on while the peer closed its store.
  const { status, completedSubOperations = 0, failedSubOperations = 0 } = final.command;
  assert.equal(status, Status.SubOpsCompleteWithFailures, `final status 0x${status?.toString(16)} (${final.command.errorComment ?? ''})`);
  assert.match(final.command.errorComment ?? '', /the archive is stopping/);
  assert.ok(failedSubOperations > 0 && completedSubOperations + failedSubOperations === instanceCount, `${completedSubOperations} completed, ${failedSubOperations} failed`);
  await released;
  await stopped;
  assert.ok(!lines.some((l) => l.message === 'aborting association' && l.fields?.why !== undefined && String(l.fields.why).includes('VIEWER')));
});

/**
 * A C-MOVE of the study to `moveDestination`, with a C-CANCEL-RQ once `cancelWhen` holds: the final response
 * and how long after the cancel it came. A point of the exchange, not a time after the request: at load the
 * peer had not reached the destination 300 ms in, and the cancel met another state than the test's.
 */
async function cancelledMove(client: DicomClientAssociation, studyInstanceUid: string, moveDestination: string, what: string, cancelWhen: () => boolean) {
  let answered = false;
  const moved = moveStudy(client, studyInstanceUid, moveDestination);
  void moved.then(() => (answered = true), () => (answered = true));
  await waitFor(what, () => answered || cancelWhen());
  const cancelledAtMs = Date.now();
  if (!answered) await client.cancel(client.contexts[0]!.id);
  const final = await moved;
  return { final, elapsedMs: Date.now() - cancelledAtMs };
}

test('C-MOVE cancelled while the destination has not answered its A-ASSOCIATE-RQ: Cancel at once, every sub-operation remaining (PS3.4 C.4.2.3.1; hunt 85 waited out 30 s and failed them all)', async (t) => {
  const lines: RecordedLine[] = [];
  const destination = await silentTcpAcceptor();
  const peer = await peerMovingTo(t, destination, 'SILENT', 'mover-silent', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.87.1';
  await storeStudy(peer, studyInstanceUid, 3, 16);
  const client = await moveClient(peer);
  const { final, elapsedMs } = await cancelledMove(client, studyInstanceUid, 'SILENT', 'the connection to the destination', () => destination.seen.connections > 0);
  const { status, remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations } = final.command;
  assert.equal(status, Status.Cancel, `final status 0x${status?.toString(16)} (${final.command.errorComment ?? ''}) after ${elapsedMs} ms`);
  // Far from the 30 s a destination is waited for, and far above a cancel's time at load.
  assert.ok(elapsedMs < 15_000, `the cancel took ${elapsedMs} ms`);
  assert.deepEqual([remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations], [3, 0, 0, 0]);
  assert.equal(final.dataSet, undefined, 'nothing failed: no Failed SOP Instance UID List');
  assert.ok(!lines.some((l) => l.message === 'C-MOVE destination unreachable'), 'a cancel is not the destination\'s fault');
  // The association goes on.
  await echoThenRelease(client);
});

test('C-MOVE cancelled while the destination sits on a C-STORE: the destination association is aborted after a short grace, that sub-operation failed, the rest remaining', async (t) => {
  const lines: RecordedLine[] = [];
  const destination = await acceptorNeverAnswering();
  const peer = await peerMovingTo(t, destination, 'MUTE', 'mover-mute', lines);
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.87.2';
  const stored = await storeStudy(peer, studyInstanceUid, 3, 16);
  const client = await openPeerClient(peer.dicomPort, 'VIEWER', [{ abstractSyntaxUid: studyRootMove, transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }]);
  t.after(() => client.release().catch(() => undefined));
  const { final, elapsedMs } = await cancelledMove(client, studyInstanceUid, 'MUTE', 'a C-STORE at the destination', () => destination.seen.pDataPdus > 0);
  const { status, remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations } = final.command;
  assert.equal(status, Status.Cancel, `final status 0x${status?.toString(16)} (${final.command.errorComment ?? ''}) after ${elapsedMs} ms`);
  // Far from the 30 s a destination is waited for, and far above a cancel's time at load.
  assert.ok(elapsedMs < 15_000, `the cancel took ${elapsedMs} ms`);
  // The one sent and never answered was initiated: failed, not remaining (remaining counts those not initiated).
  assert.deepEqual([remainingSubOperations, completedSubOperations, failedSubOperations, warningSubOperations], [2, 0, 1, 0]);
  const list = parseDataset(final.dataSet!, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === 0x00080058)?.value;
  assert.ok(list !== undefined && stored.includes(list), `failed list ${list}`);
  const reasons = failureReasons(lines);
  assert.ok(reasons && Object.keys(reasons).some((r) => r.includes('C-CANCEL')), JSON.stringify(reasons));
});

test('C-GET of damaged copies: lost or flipped, a failed sub-operation without its C-STORE-RQ; flipped in a large one, an A-ABORT before its end', async (t) => {
  const peer = await startTestPeer([], 'getter');
  t.after(() => peer.dispose());
  const studies = ['1.2.826.0.1.3680043.10.1453.78.1', '1.2.826.0.1.3680043.10.1453.78.2', '1.2.826.0.1.3680043.10.1453.78.3'];
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', verification);
  const entries = [];
  // 2 MB, 2 MB, and 8 MB: the last is above the size read and checked whole before sending.
  for (const [i, study] of studies.entries()) {
    const side = i === 2 ? 2048 : 1024;
    const reply = await store.storeInstance({ study: { uid: study }, rows: side, columns: side });
    assert.equal(reply.command.status, 0);
    entries.push((await peer.store.getEntry(reply.command.affectedSopInstanceUid!))!);
  }
  await store.client.release();
  const [lost, flipped, flippedLarge] = entries;
  const chunkCount = async (blobId: string) => {
    let n = 0;
    for await (const _ of peer.store.blobDb.keys({ gte: `b!${blobId}!`, lt: `b!${blobId}!~` })) n++;
    return n;
  };
  for (let n = await chunkCount(lost!.blobId); n > 0; n--) await damageChunk(peer.store, lost!.blobId, 0, 'lose');
  await damageChunk(peer.store, flipped!.blobId, (await chunkCount(flipped!.blobId)) >> 1, 'flip');
  await damageChunk(peer.store, flippedLarge!.blobId, (await chunkCount(flippedLarge!.blobId)) >> 1, 'flip');

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

  const suspects: string[] = [];
  peer.store.onSuspectCopy((uid) => suspects.push(uid));
  const client = await open();
  for (const study of studies.slice(0, 2)) {
    const final = await get(client, study);
    assert.equal(final.command.status, Status.OutOfResourcesSubOps, `${study}: its only sub-operation failed, so the C-GET failed (PS3.4 C.4.3.3.1)`);
    assert.equal(final.command.failedSubOperations, 1);
  }
  assert.equal(received, 0, 'no C-STORE-RQ for a copy that cannot be read, or does not match its SHA-256');
  // The association is still in step, so the next C-GET on it is served: the large copy's damage is
  // found once it has been read through, before its last fragment, and the association is aborted.
  await assert.rejects(get(client, studies[2]!), (e: unknown) => e instanceof AssociationClosedError && e.code === 'ERR_ASSOCIATION_ABORTED');
  assert.equal(received, 0, 'the damaged data set was never delivered whole');
  client.abort();
  assert.ok(suspects.includes(flipped!.sopInstanceUid) && suspects.includes(flippedLarge!.sopInstanceUid), 'flipped copies are reported for the scrub');

  // The peer goes on.
  const echoClient = await openStoreClient(peer.dicomPort, 'CHECK', verification);
  const echo = await echoClient.client.request(echoClient.otherContextId, { commandField: CommandField.CEchoRq, affectedSopClassUid: verification, hasDataSet: false });
  assert.equal(echo.command.status, 0);
  await echoClient.client.release();
});

test('a C-GET context accepted in JPEG Lossless (listed first, as getscu +xs does) carries instances stored uncompressed, compressed losslessly', async (t) => {
  const { transcodeDataset } = await import('../../src/codec/transcode.ts');
  const jpegLossless = '1.2.840.10008.1.2.4.70';
  const peer = await startTestPeer([], 'getter-jpeg');
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.79.1';
  const stored: Uint8Array[] = [];
  for (const uid of await storeStudy(peer, studyInstanceUid, 2, 64, 48)) {
    const entry = (await peer.store.getEntry(uid))!;
    const chunks: Uint8Array[] = [];
    for await (const chunk of peer.store.readInstance(entry)) chunks.push(chunk);
    stored.push(Buffer.concat(chunks));
  }

  const received: Uint8Array[] = [];
  const client = await openPeerClient(
    peer.dicomPort,
    'GETTER',
    [
      { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: ctImage, transferSyntaxUids: [jpegLossless, TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian] },
    ],
    {
      roleSelections: [{ sopClassUid: ctImage, scuRole: false, scpRole: true }],
      onIncomingStore: (_command, dataSet) => {
        received.push(dataSet!);
        return Status.Success;
      },
    },
  );
  t.after(() => client.abort());
  assert.equal(client.contexts[1]!.transferSyntaxUid, jpegLossless, 'the requestor\'s first choice is kept: instances stored in it go as they are');
  const final = await getStudy(client, studyInstanceUid);
  assert.equal(final.command.status, Status.Success, 'before, every sub-operation failed: "no accepted presentation context" (helper 47)');
  assert.equal(final.command.completedSubOperations, 2);
  assert.equal(received.length, 2);
  // Each copy decodes back to the stored data set, byte for byte.
  const decoded = await Promise.all(received.map(async (d) => Buffer.from((await transcodeDataset(d, jpegLossless, [TransferSyntax.ExplicitVrLittleEndian])).bytes)));
  assert.deepEqual(decoded.map((d) => d.toString('hex')).sort(), stored.map((s) => Buffer.from(s).toString('hex')).sort());
  // Compressed in the transcoder's thread, not the peer's.
  const { transcoder } = (await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { transcoder: { jobsDone: number; workersStarted: number } };
  assert.deepEqual([transcoder.jobsDone, transcoder.workersStarted], [2, 1]);
});

test('a C-GET whose only context for the class takes a syntax the instances cannot be converted into: 0xA702, the comment names their stored syntax', async (t) => {
  const jpegBaseline = '1.2.840.10008.1.2.4.50'; // lossy: never encoded into
  const peer = await startTestPeer([], 'getter-baseline');
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.79.2';
  const [uid] = await storeStudy(peer, studyInstanceUid, 1, 8, 8);
  const storedAs = (await peer.store.getEntry(uid!))!.transferSyntaxUid;
  const client = await openPeerClient(
    peer.dicomPort,
    'GETTER',
    [
      { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: ctImage, transferSyntaxUids: [jpegBaseline, TransferSyntax.ExplicitVrLittleEndian] },
    ],
    { roleSelections: [{ sopClassUid: ctImage, scuRole: false, scpRole: true }], onIncomingStore: () => Status.Success },
  );
  t.after(() => client.abort());
  assert.equal(client.contexts[1]!.transferSyntaxUid, jpegBaseline);
  const final = await getStudy(client, studyInstanceUid);
  assert.equal(final.command.status, 0xa702);
  assert.equal(final.command.failedSubOperations, 1);
  // Before: "all 1 failed: no accepted presentation context for 1.2.840.10..." (cut at 64), which hid why.
  assert.ok((final.command.errorComment ?? '').startsWith(`all 1 failed: stored as ${storedAs}: not convertible`), final.command.errorComment);
});

test('a C-GET whose requestor accepted no context for the SOP class: the comment says so (not a conversion failure), the log names the class (hunt 85)', async (t) => {
  const mrImage = '1.2.840.10008.5.1.4.1.1.4';
  const lines: RecordedLine[] = [];
  const peer = await startTestPeer([], 'getter-no-context', recordingLogger([], {}, lines));
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.87.3';
  await storeStudy(peer, studyInstanceUid, 2, 8, 8);
  const client = await openPeerClient(
    peer.dicomPort,
    'GETTER',
    [
      { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: mrImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
    ],
    { roleSelections: [{ sopClassUid: mrImage, scuRole: false, scpRole: true }], onIncomingStore: () => Status.Success },
  );
  t.after(() => client.abort());
  const final = await getStudy(client, studyInstanceUid);
  assert.equal(final.command.status, 0xa702);
  assert.equal(final.command.failedSubOperations, 2);
  const comment = final.command.errorComment ?? '';
  // Before: "all 2 failed: stored as 1.2.840.10008.1.2.1: not convertible ...", which reads as a transcoding failure.
  assert.equal(comment, 'all 2 failed: receiver accepted no context for SOP class');
  assert.ok(comment.length <= 64);
  const reasons = failureReasons(lines, 'C-GET');
  assert.ok(reasons && Object.keys(reasons).some((r) => r.includes(ctImage) && r.includes('no presentation context')), JSON.stringify(reasons));
});

test('a retrieve failing instances of ten classes for one cause: the comment names the cause, not "other reasons" (each class is a reason of its own in the log; hunt 160)', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await startTestPeer([], 'getter-no-context-10', recordingLogger([], {}, lines));
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.4';
  await storeManyClassStudy(peer.dicomPort, studyInstanceUid, manyStorageClasses.slice(0, 10), [TransferSyntax.ExplicitVrLittleEndian]);
  // A requestor that proposed no storage class at all.
  const client = await openPeerClient(peer.dicomPort, 'GETTER', [{ abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }], { onIncomingStore: () => Status.Success });
  t.after(() => client.abort());
  const final = await getStudy(client, studyInstanceUid);
  assert.equal(final.command.status, 0xa702);
  assert.equal(final.command.failedSubOperations, 10);
  assert.equal(final.command.errorComment, 'all 10 failed: receiver accepted no context for SOP class');
  // The log keeps eight reasons, the rest counted together.
  const reasons = failureReasons(lines, 'C-GET');
  assert.equal(Object.keys(reasons ?? {}).length, 9, JSON.stringify(reasons));
  assert.equal(reasons?.['other reasons'], 2);
});

test('a C-GET whose requestor proposed the SOP class but took no SCP role for it: the comment says so, not "no context" (hunt 89)', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await startTestPeer([], 'getter-no-role', recordingLogger([], {}, lines));
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.89.3';
  await storeStudy(peer, studyInstanceUid, 2, 8, 8);
  for (const roleSelections of [[], [{ sopClassUid: ctImage, scuRole: true, scpRole: false }]]) {
    const client = await openPeerClient(
      peer.dicomPort,
      'GETTER',
      [
        { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
        { abstractSyntaxUid: ctImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      ],
      { roleSelections, onIncomingStore: () => Status.Success },
    );
    t.after(() => client.abort());
    assert.ok(client.contexts.some((c) => c.abstractSyntaxUid === ctImage), 'the CT context is accepted');
    const final = await getStudy(client, studyInstanceUid);
    assert.equal(final.command.status, 0xa702);
    assert.equal(final.command.failedSubOperations, 2);
    // Before: "all 2 failed: receiver accepted no context for SOP class", while the context was accepted.
    assert.equal(final.command.errorComment, 'all 2 failed: requestor took no SCP role for SOP class');
    assert.ok(final.command.errorComment!.length <= 64);
    await client.release();
  }
  const reasons = failureReasons(lines, 'C-GET');
  assert.ok(reasons && Object.keys(reasons).some((r) => r.includes(ctImage) && r.includes('SCP role')), JSON.stringify(reasons));
});

test('a C-GET of an instance whose conversion would hold too much: a failed sub-operation saying why, logged whole, never decoded (hunt 85)', { skip: corpusSkip }, async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await startTestPeer([], 'getter-too-large', recordingLogger([], {}, lines));
  t.after(() => peer.dispose());
  // Stored as JPEG Baseline, its header claiming 65535 x 65535 RGB: ~38 GB to decode. Weighed by its stored
  // size it went to the codec (a 17 MB cine decoding to 553 MB took 1.7 GB, three at once 5 GB).
  const big = oversizedJpegInstance('86401');
  const body = Buffer.concat([Buffer.from('--b\r\nContent-Type: application/dicom\r\n\r\n'), big.file, Buffer.from('\r\n--b--\r\n')]);
  const stored = await fetch(`http://127.0.0.1:${peer.httpPort}/dicom-web/studies`, { method: 'POST', body, headers: { 'content-type': 'multipart/related; type="application/dicom"; boundary=b' } });
  assert.equal(stored.status, 200, await stored.text());
  const client = await openPeerClient(
    peer.dicomPort,
    'GETTER',
    [
      { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: big.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
    ],
    { roleSelections: [{ sopClassUid: big.sopClassUid, scuRole: false, scpRole: true }], onIncomingStore: () => Status.Success },
  );
  t.after(() => client.abort());
  const final = await client.request(
    client.contexts[0]!.id,
    { commandField: CommandField.CGetRq, affectedSopClassUid: studyRootGet, priority: 0, hasDataSet: true },
    encodeDataset([{ tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' }, { tag: Tags.StudyInstanceUID, vr: 'UI', value: big.studyUid }], TransferSyntax.ExplicitVrLittleEndian),
  );
  assert.equal(final.command.status, Status.OutOfResourcesSubOps);
  assert.equal(final.command.failedSubOperations, 1);
  assert.match(final.command.errorComment ?? '', /^all 1 failed: conversion needs ~\d+ MiB, over 2048 MiB/);
  assert.ok((final.command.errorComment ?? '').length <= 64);
  const reasons = failureReasons(lines, 'C-GET');
  assert.match(Object.keys(reasons ?? {})[0] ?? '', /over 2048 MiB: refused; the instance is sent as stored to a receiver that accepts its transfer syntax$/);
  assert.ok(lines.some((l) => l.message === 'a transcode was refused: it would hold too much memory'));
});

test('a C-GET whose association is aborted while its instance waits at the transcoder: the transcode is cancelled, its place freed', { timeout: 60_000 }, async (t) => {
  // A transcoder thread that holds every job until it is cancelled, as the real one stops at its next frame.
  const holdingWorker = new URL(
    `data:text/javascript,${encodeURIComponent(
      "import { parentPort } from 'node:worker_threads'; const held = new Set(); parentPort.on('message', (m) => { if (m.type === 'transcode') held.add(m.jobId); else if (m.type === 'cancel' && held.delete(m.jobId)) parentPort.postMessage({ type: 'failed', jobId: m.jobId, code: 'ERR_TRANSCODE_CANCELLED', message: 'cancelled' }); });",
    )}`,
  );
  const peer = await startTestPeer([], 'getter-abort', silentLogger, { transcoderWorkerUrl: holdingWorker });
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.79.2';
  await storeStudy(peer, studyInstanceUid, 1, 16);
  const transcoderStats = async () => ((await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { transcoder: { jobsRunning: number; jobsCancelled: number } }).transcoder;

  const client = await openPeerClient(
    peer.dicomPort,
    'GETTER',
    [
      { abstractSyntaxUid: studyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      // JPEG Lossless only: the instance, stored uncompressed, must be compressed for it.
      { abstractSyntaxUid: ctImage, transferSyntaxUids: ['1.2.840.10008.1.2.4.70'] },
    ],
    { roleSelections: [{ sopClassUid: ctImage, scuRole: false, scpRole: true }], onIncomingStore: () => Status.Success },
  );
  const get = client
    .request(
      client.contexts[0]!.id,
      { commandField: CommandField.CGetRq, affectedSopClassUid: studyRootGet, priority: 0, hasDataSet: true },
      encodeDataset([{ tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' }, { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid }], TransferSyntax.ExplicitVrLittleEndian),
    )
    .catch(() => undefined);
  while ((await transcoderStats()).jobsRunning === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  client.abort();
  await get;
  // Before, the job stayed to the end of its transcode (minutes, behind others), for nobody (helper 54).
  let stats = await transcoderStats();
  while (stats.jobsRunning > 0) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    stats = await transcoderStats();
  }
  assert.equal(stats.jobsCancelled, 1);
});

test('a final C-MOVE response and its Failed SOP Instance UID List travel in one P-DATA-TF PDU (PixelMed and getscu 3.6.7 read it only so)', async (t) => {
  // PixelMed 20220618 stops reading a final C-GET/C-MOVE response after the PDU holding its command unless
  // that PDU ends with the last data fragment; DCMTK getscu 3.6.7 leaves the identifier unread. Sent in a
  // second PDU, the list then arrived after their A-RELEASE-RQ: "unexpected PDU" / "DUL P-Data PDU arrived",
  // and both aborted (black-box helper 70). PS3.8 9.3.5 lets one P-DATA-TF carry both PDVs.
  const closedPort = await getFreePort();
  const peer = await startTestPeer(['--move-dest', `GONE=127.0.0.1:${closedPort}`], 'mover-one-pdu', silentLogger);
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.79.2';
  await storeStudy(peer, studyInstanceUid, 2, 16);
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  const command = encodeCommand({ commandField: CommandField.CMoveRq, messageId: 1, affectedSopClassUid: studyRootMove, priority: 0, moveDestination: 'GONE', hasDataSet: true });
  const rq = associateRqBytes('PACSMESH', studyRootMove, TransferSyntax.ImplicitVrLittleEndian, 'VIEWER');
  const pdus = await exchangeUntilFinal(peer.dicomPort, rq, [...encodePDataFragments(1, true, command, 16384), ...encodePDataFragments(1, false, identifier, 16384)]);
  const last = pdus[pdus.length - 1]!;
  assert.equal(last.type, 'pData');
  if (last.type !== 'pData') return;
  assert.deepEqual(last.values.map((v) => [v.isCommand, v.isLast]), [[true, true], [false, true]], 'the command and its identifier in one PDU');
  assert.equal(decodeCommand(last.values[0]!.data).status, 0xa702);
  assert.equal(parseDataset(last.values[1]!.data, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === 0x00080058)?.value?.split('\\').length, 2);
});

/**
 * Over a raw connection: sends the A-ASSOCIATE-RQ `rq`, then `request` once accepted; every PDU received
 * until the first response that is not Pending (the connection is then dropped).
 */
function exchangeUntilFinal(port: number, rq: Uint8Array, request: readonly Uint8Array[]): Promise<Pdu[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const framer = new PduFramer();
    const got: Pdu[] = [];
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no final response: ${JSON.stringify(got.map((p) => p.type))}`)); }, 20_000);
    socket.on('data', (data) => {
      for (const pdu of framer.push(data)) {
        got.push(pdu);
        if (pdu.type === 'associateAc') for (const chunk of request) socket.write(chunk);
        const finalCommand = pdu.type === 'pData' && pdu.values.some((v) => v.isCommand && v.isLast && decodeCommand(v.data).status !== 0xff00);
        if (finalCommand) {
          clearTimeout(timer);
          socket.destroy();
          resolve(got);
        }
      }
    });
    socket.on('error', reject);
    socket.on('connect', () => socket.write(rq));
  });
}

test('C-FIND matches: each identifier in PDUs after its command\'s, as DCMTK sends them (hunt 155: GDCM reads it only from there, and took every other match for one)', async (t) => {
  const peer = await startTestPeer([], 'finder-pdus', silentLogger);
  t.after(() => peer.dispose());
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.155.2';
  await storeStudy(peer, studyInstanceUid, 2, 16);
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'IMAGE' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
      { tag: Tags.SOPInstanceUID, vr: 'UI', value: '' },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  const command = encodeCommand({ commandField: CommandField.CFindRq, messageId: 1, affectedSopClassUid: studyRootFind, priority: 0, hasDataSet: true });
  const rq = associateRqBytes('PACSMESH', studyRootFind, TransferSyntax.ImplicitVrLittleEndian, 'VIEWER');
  const pdus = await exchangeUntilFinal(peer.dicomPort, rq, [...encodePDataFragments(1, true, command, 16384), ...encodePDataFragments(1, false, identifier, 16384)]);
  const pData = pdus.flatMap((p) => (p.type === 'pData' ? [p.values.map((v) => (v.isCommand ? 'command' : 'data'))] : []));
  assert.deepEqual(pData, [['command'], ['data'], ['command'], ['data'], ['command']], 'two matches, then the final response, each part in PDUs of its own');
});

/** The requestor's association still answers a C-ECHO (its second context, Verification), then is released. */
async function echoThenRelease(client: DicomClientAssociation): Promise<void> {
  const echo = await client.request(client.contexts[1]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: verification, hasDataSet: false });
  assert.equal(echo.command.status, 0);
  await client.release();
}
