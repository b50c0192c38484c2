import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { DicomConnection } from './connection.ts';
import { PduType, defaultPduLimits } from '../../codec/pdu.ts';

/** The socket surface DicomConnection uses, recording whether reading is paused. */
function fakeSocket(): Socket & { isPaused(): boolean } {
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
  });
  return socket as unknown as Socket & { isPaused(): boolean };
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
    { socket, limits: defaultPduLimits, maxUnprocessedBytes: 1024 * 1024, nowMs: () => 0 },
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
