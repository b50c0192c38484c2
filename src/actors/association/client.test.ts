/**
 * The requestor side (C-MOVE and C-GET sub-operations, tests) against a raw TCP acceptor that misbehaves.
 */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { test } from 'node:test';
import { CommandField } from '../../codec/dimse.ts';
import { DicomApplicationContext, PduFramer, encodePdu } from '../../codec/pdu.ts';
import { TransferSyntax } from '../../codec/dicom-types.ts';
import { AssociationClosedError, DicomClientAssociation, type ClientInit } from './client.ts';
import { acceptorAnsweringWithEmptyPdvs, acceptorThatHangsUpMidRequest } from '../../../test/support/raw-acceptor.ts';
import { startReportReceiver } from '../../../test/support/report-receiver.ts';
import { manualClock } from '../../../test/support/manual-clock.ts';
import { waitFor, within } from '../../../test/support/wait.ts';

const ctImage = '1.2.840.10008.5.1.4.1.1.2';

/** Our requestor to an acceptor on loopback `port` (called AE DEST), proposing CT Image Storage in explicit VR little endian. */
function openCtRequestor(port: number, more: Partial<ClientInit>): Promise<DicomClientAssociation> {
  return DicomClientAssociation.open({
    host: '127.0.0.1',
    port,
    callingAeTitle: 'PACSMESH',
    calledAeTitle: 'DEST',
    presentationContexts: [{ abstractSyntaxUid: ctImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }],
    ...more,
  });
}

test('the acceptor hangs up while a request is being sent: the request fails with ERR_ASSOCIATION_ABORTED, nothing is left unhandled', async (t) => {
  const acceptor = await acceptorThatHangsUpMidRequest();
  t.after(() => acceptor.close());
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));

  const client = await openCtRequestor(acceptor.port, { timeoutMs: 5000 });
  // Read as from the store, chunk by chunk across event-loop turns, so the connection closes while it is
  // still being sent; once it has, the rest is not read.
  let chunksRead = 0;
  async function* dataSet(): AsyncIterable<Uint8Array> {
    for (let i = 0; i < 512; i++) {
      await new Promise((r) => setImmediate(r));
      chunksRead++;
      yield new Uint8Array(64 * 1024);
    }
  }
  await assert.rejects(
    client.request(
      client.contexts[0]!.id,
      { commandField: CommandField.CStoreRq, affectedSopClassUid: ctImage, affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true },
      dataSet(),
    ),
    (e: unknown) => e instanceof AssociationClosedError && e.code === 'ERR_ASSOCIATION_ABORTED',
  );
  assert.ok(chunksRead < 512, `read ${chunksRead} of 512 chunks for a closed association`);
  // Whatever rejected while the request was still being sent must have had a handler.
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(unhandled.map((e) => (e instanceof AssociationClosedError ? e.code : String(e))), []);
  client.abort();
});

test('an owner\'s AbortSignal ends a negotiation under way at once, and keeps no listener from associations that ended', async (t) => {
  const receiver = await startReportReceiver('DEST');
  const silent = createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    await receiver.close();
    silent.close();
  });
  const owner = new AbortController();
  const open = (port: number) => openCtRequestor(port, { timeoutMs: 30_000, signal: owner.signal });
  for (let i = 0; i < 12; i++) await (await open(receiver.port)).release();
  // Each listener goes at its socket's close event, which a loaded machine can deliver after any fixed sleep.
  await waitFor('no abort listener left: one per association would pile up on a long-lived signal', () => getEventListeners(owner.signal, 'abort').length === 0);
  // A peer that accepts the connection and never answers the A-ASSOCIATE-RQ.
  const pending = open((silent.address() as AddressInfo).port);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const startedMs = Date.now();
  owner.abort();
  await assert.rejects(pending, (error: unknown) => error instanceof AssociationClosedError && error.code === 'ERR_ASSOCIATION_ABORTED');
  assert.ok(Date.now() - startedMs < 15_000, 'not the 30 s negotiation timeout');
});

test('a response data set of endless empty PDVs: the request fails at the reply bound, not gathering fragments until it times out (hunt 79)', async (t) => {
  // 300,000 fragments of no bytes: under any byte limit, over the bound once each counts what it holds.
  const acceptor = await acceptorAnsweringWithEmptyPdvs(300_000);
  t.after(() => acceptor.close());
  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port: acceptor.port,
    callingAeTitle: 'PACSMESH',
    calledAeTitle: 'DEST',
    presentationContexts: [{ abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: [TransferSyntax.ImplicitVrLittleEndian] }],
    timeoutMs: 20_000,
  });
  t.after(() => client.abort());
  await assert.rejects(
    client.request(client.contexts[0]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: '1.2.840.10008.1.1', hasDataSet: false }),
    (e: unknown) => e instanceof AssociationClosedError && e.code === 'ERR_REPLY_TOO_LARGE' && /reply data set over/.test(e.message),
    'refused at the bound on what the reply holds',
  );
});

test('an acceptor that stops reading in the middle of a data set: the request fails with ERR_ASSOCIATION_TIMEOUT once nothing was read for the timeout (hunt 96: a C-MOVE held for good)', async (t) => {
  // Accepts, then reads nothing once the request's first P-DATA has come (a hung process, a full disk).
  const port = await scriptedAcceptor(t, (socket) => socket.pause());
  const client = await openCtRequestor(port, { timeoutMs: 1000 });
  t.after(() => client.abort());
  // Far more than loopback's socket buffers hold.
  const request = client.request(
    client.contexts[0]!.id,
    { commandField: CommandField.CStoreRq, affectedSopClassUid: ctImage, affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true },
    new Uint8Array(48 * 1024 * 1024),
  );
  // within() clears its timer: a bare setTimeout here kept the file's process alive 10 s after its last test.
  const outcome = await within(
    'the request to fail (still sending after 10 s)',
    10_000,
    request.then(
      () => 'answered',
      (e: unknown) => (e instanceof AssociationClosedError ? e.code : String(e)),
    ),
  );
  assert.equal(outcome, 'ERR_ASSOCIATION_TIMEOUT');
});

test('connecting to a host that never completes the connection fails with ERR_CONNECT after timeoutMs of the client\'s clock, not before', async (t) => {
  // A listener whose process is stopped: once its accept queue is full (backlog 1: two connections), SYNs go unanswered.
  const child = spawn(process.execPath, ['-e', "const s = require('net').createServer().listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => { console.log(s.address().port); process.kill(process.pid, 'SIGSTOP'); });"], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => {
    child.kill('SIGKILL');
  });
  const port = Number(await new Promise<string>((resolve) => child.stdout!.once('data', (data: Buffer) => resolve(data.toString().trim()))));
  await waitFor('the listener stopped', () => readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(' ')[2] === 'T');
  let connected = 0;
  const fillers = [0, 1, 2].map(() => connect(port, '127.0.0.1').on('error', () => undefined).on('connect', () => connected++));
  t.after(() => fillers.forEach((socket) => socket.destroy()));
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok(connected < 3, 'the accept queue is full: a connection hangs');
  const clock = manualClock(1_000_000);
  let outcome = undefined as unknown;
  const opening = openCtRequestor(port, { timeoutMs: 30_000, clock }).then(
    (association) => {
      association.abort();
      return 'connected';
    },
    (error: unknown) => (outcome = error),
  );
  clock.advance(29_999);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(outcome, undefined, 'still connecting within the timeout');
  clock.advance(1);
  await opening;
  const failure = outcome as unknown as Error;
  assert.ok(failure instanceof AssociationClosedError && failure.code === 'ERR_CONNECT' && /timed out/.test(failure.message), String(failure));
  assert.equal(clock.pending(), 0, 'no timer left behind');
});

/** An acceptor that accepts every context, then answers each P-DATA as `onPData` says (nothing: hangs). */
async function scriptedAcceptor(
  t: { after(fn: () => unknown): void },
  onPData: (socket: Socket) => void,
  opts: { acceptedTransferSyntax?: (proposed: readonly string[]) => string } = {},
): Promise<number> {
  const sockets: Socket[] = [];
  const server = createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    const framer = new PduFramer();
    socket.on('data', (chunk) => {
      for (const pdu of framer.push(chunk)) {
        if (pdu.type === 'associateRq') {
          socket.write(encodePdu({ type: 'associateAc', protocolVersion: 1, calledAeTitle: pdu.calledAeTitle, callingAeTitle: pdu.callingAeTitle, applicationContextName: DicomApplicationContext, presentationContexts: pdu.presentationContexts.map((pc) => ({ id: pc.id, result: 0, transferSyntaxUid: opts.acceptedTransferSyntax?.(pc.transferSyntaxUids) ?? pc.transferSyntaxUids[0]! })), userInformation: { maxPduLength: 16384, implementationClassUid: '1.2.3', roleSelections: [] } }));
        } else if (pdu.type === 'pData') {
          onPData(socket);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    // Paused, they would never see the client's close, and server.close() would wait for them.
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

const storeCommand = { commandField: CommandField.CStoreRq, affectedSopClassUid: ctImage, affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true };

test('after a response timeout, later requests on the association fail saying so, not "connection closed" (a C-MOVE\'s Error Comment named the symptom: hunt 136)', async (t) => {
  const port = await scriptedAcceptor(t, () => undefined);
  const client = await openCtRequestor(port, { timeoutMs: 300 });
  t.after(() => client.abort());
  await assert.rejects(client.request(client.contexts[0]!.id, storeCommand, new Uint8Array(16)), /response to message \d+ timed out after 300 ms/);
  await assert.rejects(client.request(client.contexts[0]!.id, storeCommand, new Uint8Array(16)), /response to message \d+ timed out after 300 ms/);
});

test('an acceptor\'s A-ABORT is named as such, with its source and reason, not as a JSON dump (hunt 136)', async (t) => {
  // Source 0 (service user), reason 0: what DCMTK's storescp --abort-after sends.
  const port = await scriptedAcceptor(t, (socket) => socket.write(encodePdu({ type: 'abort', source: 0, reason: 0 })));
  const client = await openCtRequestor(port, { timeoutMs: 5000 });
  t.after(() => client.abort());
  await assert.rejects(client.request(client.contexts[0]!.id, storeCommand, new Uint8Array(16)), (e: unknown) => {
    assert.ok(e instanceof AssociationClosedError && e.code === 'ERR_ASSOCIATION_ABORTED', String(e));
    assert.equal(e.message, 'A-ABORT by the acceptor (source 0: service user)');
    return true;
  });
});

test('a context accepted with a transfer syntax that was not proposed for it is not used (PS3.8 9.3.3.2: the acceptor picks one of those proposed; hunt 143)', async (t) => {
  const jpegBaseline = '1.2.840.10008.1.2.4.50';
  const port = await scriptedAcceptor(t, () => undefined, { acceptedTransferSyntax: () => jpegBaseline });
  const client = await openCtRequestor(port, {});
  t.after(() => client.abort());
  assert.deepEqual(client.contexts, [], 'explicit VR bytes must not go out labelled as JPEG');
});
