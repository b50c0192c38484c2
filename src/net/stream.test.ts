import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Stream } from '@libp2p/interface';
import { STAGED_BYTES_MAX, StreamWriter } from './stream.ts';

/** Just what StreamWriter touches of a libp2p stream: every send is recorded. */
function recordingStream() {
  const sends: Uint8Array[] = [];
  const stream = {
    status: 'open',
    writeStatus: 'writable',
    writableNeedsDrain: false,
    send: (data: Uint8Array) => sends.push(data.slice()) > 0,
    close: async () => {
      stream.writeStatus = 'closed';
    },
    addEventListener: () => undefined,
    removeEventListener: () => undefined,
  };
  return { sends, writer: new StreamWriter(stream as unknown as Stream, { chunkSize: 100 * 1024 }) };
}

const concat = (parts: Uint8Array[]) => Buffer.concat(parts);

test('staged frame and length go out with the first piece of the next write, in one send', async () => {
  const { sends, writer } = recordingStream();
  await writer.stageFrame(new Uint8Array([7, 7]));
  await writer.stageUint64(300_000);
  assert.equal(sends.length, 0, 'nothing sent while staged');
  const body = Buffer.alloc(300_000, 1);
  await writer.write(body);
  assert.equal(sends[0]!.byteLength, 60 * 1024, 'staged bytes plus the head of the body, sized for one yamux frame');
  assert.deepEqual([...sends[0]!.subarray(0, 6)], [0, 0, 0, 2, 7, 7]);
  assert.equal(new DataView(sends[0]!.buffer, sends[0]!.byteOffset + 6, 8).getBigUint64(0), 300_000n);
  assert.deepEqual(concat(sends).subarray(14), body, 'the body follows whole and in order');
  assert.ok(sends.slice(1).every((s) => s.byteLength <= 100 * 1024), 'the rest in chunkSize pieces');
  assert.equal(writer.totalWritten, 14 + 300_000);
});

test('flush sends what is staged alone; end flushes; staging past the bound sends the held bytes first', async () => {
  const { sends, writer } = recordingStream();
  await writer.stageUint64(0);
  await writer.flush();
  assert.deepEqual(sends.map((s) => s.byteLength), [8]);
  await writer.flush();
  assert.equal(sends.length, 1, 'nothing staged, nothing sent');
  await writer.stage(new Uint8Array(STAGED_BYTES_MAX - 4));
  await writer.stage(new Uint8Array(8));
  assert.deepEqual(sends.map((s) => s.byteLength), [8, STAGED_BYTES_MAX - 4], 'the bound is kept');
  await writer.stage(new Uint8Array(STAGED_BYTES_MAX + 1));
  assert.deepEqual(sends.map((s) => s.byteLength), [8, STAGED_BYTES_MAX - 4, 8, STAGED_BYTES_MAX + 1], 'too large to hold: goes out now, after what was held');
  await writer.stageFrame(new Uint8Array([1]));
  await writer.end();
  assert.deepEqual([...sends.at(-1)!], [0, 0, 0, 1, 1]);
});
