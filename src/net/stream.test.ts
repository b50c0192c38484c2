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

test('gathered pieces go out together, up to the write chunk size a send; a write, flush or end sends what is held first', async () => {
  const { sends, writer } = recordingStream();
  // Ten small instances of a batch, each its length and its bytes (100 KiB sends here).
  const bodies = Array.from({ length: 10 }, (_, i) => Buffer.alloc(30_000, i + 1));
  for (const body of bodies) {
    await writer.gatherUint64(body.byteLength);
    await writer.gather(body);
  }
  assert.deepEqual(sends.map((s) => s.byteLength), [90_032, 90_024, 90_024], 'three sends so far (each up to 100 KiB), not one or two per instance');
  await writer.write(Buffer.alloc(10, 0xee));
  assert.deepEqual(sends.slice(3).map((s) => s.byteLength), [30_000 + 10], 'the held bytes go out with the next write');
  const expected = concat([...bodies.flatMap((b) => [Buffer.from([0, 0, 0, 0, 0, 0, 0x75, 0x30]), b]), Buffer.alloc(10, 0xee)]);
  assert.deepEqual(concat(sends), expected, 'every byte, in order');
  await writer.gather(Buffer.alloc(5, 1));
  await writer.gather(Buffer.alloc(200 * 1024, 2));
  assert.deepEqual(sends.slice(4).map((s) => s.byteLength), [5, 100 * 1024, 100 * 1024], 'a piece larger than a send: what is held first, then the piece as a write');
  await writer.gather(Buffer.alloc(3, 3));
  await writer.end();
  assert.deepEqual([...sends.at(-1)!], [3, 3, 3], 'end sends what is held');
});

test('a write after its signal is aborted fails with the stream error code ERR_ABORTED, as a wait for drain does', async () => {
  const { sends, writer } = recordingStream();
  const signal = AbortSignal.abort(new Error('deadline'));
  await assert.rejects(writer.write(new Uint8Array(10), { signal }), (error: Error & { code?: string }) => error.name === 'MeshStreamError' && error.code === 'ERR_ABORTED');
  assert.equal(sends.length, 0, 'nothing sent');
});
