import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventEmitter } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { AssociationCore, DicomConnection, halfCloseGraceMs } from './connection.ts';
import { PduFramer, PduType, defaultPduLimits, type Pdu } from '../../codec/pdu.ts';
import { CommandField } from '../../codec/dimse.ts';
import { systemClock } from '../runtime/clock.ts';
import { manualClock } from '../../../test/support/manual-clock.ts';
import { waitFor } from '../../../test/support/wait.ts';

/** The socket surface DicomConnection uses, recording whether reading is paused. */
function fakeSocket(): Socket & { isPaused(): boolean; written: Uint8Array[] } {
  let paused = false;
  const socket = Object.assign(new EventEmitter(), {
    remoteAddress: '127.0.0.1',
    remotePort: 104,
    destroyed: false,
    setNoDelay: () => socket,
    pause: () => {
      paused = true;
      return socket;
    },
    resume: () => {
      paused = false;
      return socket;
    },
    isPaused: () => paused,
    destroy: () => socket,
    /** A reader that keeps up: every write is taken at once. */
    written: [] as Uint8Array[],
    write: (bytes: Uint8Array) => {
      socket.written.push(bytes);
      return true;
    },
  });
  return socket as unknown as Socket & { isPaused(): boolean; written: Uint8Array[] };
}

/** An association established on `socket` (Sta6, as the acceptor), the peer announcing `peerMaxPduLength`. */
function establishedOn(socket: Socket, peerMaxPduLength: number): AssociationCore {
  const connection = new DicomConnection(
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, clock: systemClock },
    { onPdus: () => undefined, onInvalidPdu: () => undefined, onClosed: () => undefined },
  );
  const core = new AssociationCore({ connection, clock: systemClock, artimTimeoutMs: 30_000, isRequestor: false }, { onIndication: () => undefined, onDimse: () => undefined });
  core.machine = { state: 'Sta6', isRequestor: false };
  core.peerMaxPduLength = peerMaxPduLength;
  return core;
}

/** One P-DATA-TF PDU of `count` empty PDVs (6 bytes each: length 2, context ID, control header). */
function emptyPdvs(count: number): Buffer {
  const pdu = Buffer.alloc(6 + count * 6);
  pdu[0] = PduType.PData;
  pdu.writeUInt32BE(count * 6, 2);
  for (let i = 0; i < count; i++) {
    pdu.writeUInt32BE(2, 6 + i * 6);
    pdu[6 + i * 6 + 4] = 1;
  }
  return pdu;
}

test('received PDVs count towards the read bound by what they hold, not only by their bytes (hunt 79: 6-byte PDVs queued 27 times the bound)', () => {
  const socket = fakeSocket();
  const given: number[] = [];
  const connection = new DicomConnection(
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, clock: systemClock },
    { onPdus: (_pdus, bytes) => given.push(bytes), onInvalidPdu: () => assert.fail('the PDUs are valid'), onClosed: () => undefined },
  );
  // 48 KiB on the wire, 8,192 PDVs: over 2 MB of objects until they are handled.
  const chunk = emptyPdvs(8192);
  socket.emit('data', chunk);
  assert.equal(given.length, 1, 'one chunk, handed on once');
  assert.ok(given[0]! >= chunk.length + 8192 * 200, `counted ${given[0]} bytes held for ${chunk.length} bytes of 8,192 PDVs`);
  assert.equal(socket.isPaused(), true, 'reading pauses: what the PDVs hold is over the bound');
  connection.consumed(given[0]!);
  assert.equal(socket.isPaused(), false, 'reading resumes once they are handled');
});

test('a requestor announcing a maximum PDU length of 8 bytes: a 1 MiB data set goes out as valid 2-byte fragments in few writes, and the event loop serves others meanwhile (hunt 96: a million 14-byte buffers, ~400 MB, and a peer deaf for 30 s)', async () => {
  const socket = fakeSocket();
  const core = establishedOn(socket, 8);
  const dataSet = new Uint8Array(1024 * 1024).map((_, i) => i & 0xff);
  let servedMeanwhile = false;
  setImmediate(() => (servedMeanwhile = true));
  let sent = false;
  const sending = core.sendMessage(1, { commandField: CommandField.CStoreRq, messageId: 1, affectedSopClassUid: '1.2.3', affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true }, dataSet).then(() => (sent = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(servedMeanwhile, true);
  assert.equal(sent, false, 'the event loop turned while the data set was still going out');
  await sending;
  // 1 MiB in 2-byte fragments is ~7.3 MB of PDUs: written in batches, not a write (a system call) each.
  assert.ok(socket.written.length < 64, `${socket.written.length} writes`);
  const framer = new PduFramer();
  const pdus: Pdu[] = [];
  for (const bytes of socket.written) pdus.push(...framer.push(bytes));
  const data: Uint8Array[] = [];
  let lastFlags = 0;
  for (const pdu of pdus) {
    assert.equal(pdu.type, 'pData');
    if (pdu.type !== 'pData') continue;
    assert.equal(pdu.values.length, 1);
    const pdv = pdu.values[0]!;
    assert.ok(pdv.data.length + 6 <= 8, 'within the announced maximum length');
    if (!pdv.isCommand) data.push(pdv.data);
    if (pdv.isLast) lastFlags++;
  }
  assert.equal(lastFlags, 2, 'one last fragment for the command, one for the data set');
  const last = pdus[pdus.length - 1]!;
  assert.ok(last.type === 'pData' && last.values[0]!.isLast && !last.values[0]!.isCommand);
  assert.deepEqual(Buffer.concat(data), Buffer.from(dataSet));
});

test('a C-FIND match and a small C-STORE sub-operation go out in one write each, their command and data set in PDUs of their own; a final response with its data set in one PDU (hunt 155, hunt 157: two writes a match cost its send ~45% more CPU)', async () => {
  const socket = fakeSocket();
  const core = establishedOn(socket, 16384);
  const dataSet = new Uint8Array(300).map((_, i) => i & 0xff);
  /** Each write's PDUs, each PDU's PDVs as command/data and last or not. */
  const writes = () => socket.written.splice(0).map((bytes) => new PduFramer().push(bytes).map((pdu) => (pdu.type === 'pData' ? pdu.values.map((v) => `${v.isCommand ? 'command' : 'data'}${v.isLast ? '' : '+'}`) : [pdu.type])));
  await core.sendMessage(1, { commandField: CommandField.CFindRsp, messageIdBeingRespondedTo: 1, affectedSopClassUid: '1.2.3', status: 0xff00, hasDataSet: true }, dataSet);
  assert.deepEqual(writes(), [[['command'], ['data']]], 'a match: one write, two PDUs');
  await core.sendMessage(1, { commandField: CommandField.CStoreRq, messageId: 2, affectedSopClassUid: '1.2.3', affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true }, dataSet);
  assert.deepEqual(writes(), [[['command'], ['data']]], 'a sub-operation: one write, two PDUs');
  await core.sendMessage(1, { commandField: CommandField.CMoveRsp, messageIdBeingRespondedTo: 1, affectedSopClassUid: '1.2.3', status: 0xa702, hasDataSet: true }, dataSet);
  assert.deepEqual(writes(), [[['command', 'data']]], 'a final response: one PDU (PixelMed reads its identifier only from there)');
  // A final response whose data set does not fit in one PDU with its command: one write still.
  core.peerMaxPduLength = 256;
  await core.sendMessage(1, { commandField: CommandField.CMoveRsp, messageIdBeingRespondedTo: 1, affectedSopClassUid: '1.2.3', status: 0xa702, hasDataSet: true }, dataSet);
  assert.deepEqual(writes(), [[['command'], ['data+'], ['data']]]);
  // Over a PDU of the peer's: still each part in PDUs of its own, the command's first.
  core.peerMaxPduLength = 128;
  await core.sendMessage(1, { commandField: CommandField.CFindRsp, messageIdBeingRespondedTo: 1, affectedSopClassUid: '1.2.3', status: 0xff00, hasDataSet: true }, dataSet);
  const small = writes();
  assert.equal(small.length, 1, 'still one write');
  assert.deepEqual(small[0]!.slice(-3), [['data+'], ['data+'], ['data']]);
  assert.ok(small[0]!.every((pdu) => pdu.length === 1));
  assert.deepEqual(small[0]!.filter((pdu) => pdu[0]!.startsWith('command')).at(-1), ['command']);
});

test('close() half-closes, and destroys the socket once the peer has not closed its side for halfCloseGraceMs of the association clock', async (t) => {
  const clock = manualClock(1_000_000);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  // The remote end reads (it sees the end) but never closes its side.
  const remote = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  remote.on('error', () => undefined);
  remote.on('end', () => undefined);
  t.after(() => {
    remote.destroy();
    server.close();
  });
  const socket = await accepted;
  let closed = false;
  const connection = new DicomConnection(
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, clock },
    { onPdus: () => undefined, onInvalidPdu: () => undefined, onClosed: () => (closed = true) },
  );
  const remoteEnded = new Promise((resolve) => remote.once('end', resolve));
  connection.close();
  connection.close(); // twice, as an abort and its closeTransport effect do: one timer
  await remoteEnded;
  assert.equal(clock.pending(), 1, 'one timer bounds the wait');
  clock.advance(halfCloseGraceMs - 1);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(closed, false, 'still waiting for the peer to close its side');
  clock.advance(1);
  await waitFor('the socket destroyed', () => closed, 2000);
  assert.equal(clock.pending(), 0);
});

test('close() on a peer that closes its side: closed at once, and no timer left behind', async (t) => {
  const clock = manualClock(1_000_000);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const remote = connect((server.address() as AddressInfo).port, '127.0.0.1');
  remote.on('error', () => undefined);
  t.after(() => server.close());
  const socket = await accepted;
  let closed = false;
  const connection = new DicomConnection(
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, clock },
    { onPdus: () => undefined, onInvalidPdu: () => undefined, onClosed: () => (closed = true) },
  );
  connection.close(); // the remote's allowHalfOpen is false: it ends its side on our end
  await waitFor('the socket closed', () => closed, 2000);
  assert.equal(clock.pending(), 0, 'the half-close timer cleared when the socket closed');
});

test('a framing error behind PDUs that filled the read bound: reading stays paused once they are handled, and the error is reported once', () => {
  const socket = fakeSocket();
  const given: number[] = [];
  const invalid: string[] = [];
  const connection = new DicomConnection(
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, clock: systemClock },
    { onPdus: (_pdus, bytes) => given.push(bytes), onInvalidPdu: (error) => invalid.push(error.code), onClosed: () => undefined },
  );
  // Over the bound (see the test above), then a PDU of an unknown type in the same chunk.
  const garbage = Buffer.from([0xee, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
  socket.emit('data', Buffer.concat([emptyPdvs(8192), garbage]));
  assert.equal(given.length, 1, 'the valid PDUs are handed on');
  assert.equal(invalid.length, 1, 'then the framing error');
  connection.consumed(given[0]!);
  assert.equal(socket.isPaused(), true, 'nothing after a framing error is read: the back-pressure resume must not undo its pause');
  // Had it resumed, each later chunk reported the error again (an A-ABORT handled per chunk while the close waits).
  socket.emit('data', garbage);
  socket.emit('data', garbage);
  assert.equal(invalid.length, 1, `reported ${invalid.length} times`);
});
