import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { systemClock } from '../actors/runtime/clock.ts';
import { manualClock } from '../../test/support/manual-clock.ts';
import { silentLogger } from '../actors/runtime/logger.ts';
import { TranscodeError } from './transcode-error.ts';
import { startTranscoderPool, type TranscoderPool, type TranscoderPoolInit } from './transcode-pool.ts';
import { transcodeDataset } from './transcode.ts';

const EXPLICIT = '1.2.840.10008.1.2.1';
const IMPLICIT = '1.2.840.10008.1.2';
const JPEG_LS = '1.2.840.10008.1.2.4.80';
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';

/** One explicit VR LE element (short-length VRs only, plus OW). */
function element(tag: number, vr: string, value: Uint8Array): Buffer {
  const long = vr === 'OW';
  const head = Buffer.alloc(long ? 12 : 8);
  head.writeUInt16LE(tag >>> 16, 0);
  head.writeUInt16LE(tag & 0xffff, 2);
  head.write(vr, 4, 'latin1');
  if (long) head.writeUInt32LE(value.length, 8);
  else head.writeUInt16LE(value.length, 6);
  return Buffer.concat([head, value]);
}
const text = (s: string) => Buffer.from(s.length % 2 ? `${s} ` : s, 'latin1');
const uid = (s: string) => Buffer.from(s.length % 2 ? `${s}\0` : s, 'latin1');
const us = (n: number) => Buffer.from([n & 0xff, n >> 8]);

/** A 16-bit MONOCHROME2 image in explicit VR LE, with a gradient the encoder must keep exactly. */
function monochromeImage(rows: number, columns: number, frames = 1): Uint8Array {
  const pixels = Buffer.alloc(rows * columns * 2 * frames);
  for (let i = 0; i < rows * columns * frames; i++) pixels.writeUInt16LE((i * 7 + (i >> 9)) & 0x0fff, i * 2);
  return new Uint8Array(
    Buffer.concat([
      element(0x00080016, 'UI', uid('1.2.840.10008.5.1.4.1.1.7')),
      element(0x00080018, 'UI', uid('1.2.826.0.1.3680043.10.1453.77.1')),
      element(0x00280002, 'US', us(1)),
      element(0x00280004, 'CS', text('MONOCHROME2')),
      ...(frames > 1 ? [element(0x00280008, 'IS', text(String(frames)))] : []),
      element(0x00280010, 'US', us(rows)),
      element(0x00280011, 'US', us(columns)),
      element(0x00280100, 'US', us(16)),
      element(0x00280101, 'US', us(12)),
      element(0x00280102, 'US', us(11)),
      element(0x00280103, 'US', us(0)),
      element(0x7fe00010, 'OW', pixels),
    ]),
  );
}

/** A pool for one test, stopped after it: the real worker, the system clock and no logs unless `init` says otherwise. */
function startPool(t: TestContext, init: Partial<TranscoderPoolInit> = {}): TranscoderPool {
  const pool = startTranscoderPool({ clock: systemClock, log: silentLogger, ...init });
  t.after(() => pool.stop());
  return pool;
}

/** A worker script given as a data: URL: `onMessage` is the body of its message handler (job `m`). */
function scriptedWorker(onMessage: string): URL {
  const source = `import { parentPort } from 'node:worker_threads'; parentPort.on('message', (m) => { ${onMessage} });`;
  return new URL(`data:text/javascript,${encodeURIComponent(source)}`);
}

const isTranscodeError = (code: string, pattern?: RegExp) => (error: unknown) => {
  assert.ok(error instanceof TranscodeError, `expected a TranscodeError, got ${String(error)}`);
  assert.equal(error.name, 'TranscodeError');
  assert.equal(error.code, code);
  if (pattern) assert.match(error.message, pattern);
  return true;
};

test('the worker thread gives the bytes transcodeDataset gives in this thread, compressing and decompressing', async (t) => {
  const pool = startPool(t);
  const image = monochromeImage(64, 48);
  const here = await transcodeDataset(image, EXPLICIT, [JPEG_LS]);
  const there = await pool.transcode(image, EXPLICIT, [JPEG_LS]);
  assert.equal(there.transferSyntaxUid, JPEG_LS);
  assert.deepEqual(Buffer.from(there.bytes), Buffer.from(here.bytes));
  // And back: the pixels come out as they went in, with the implicit VR LE the receiver asked for.
  const back = await pool.transcode(there.bytes, JPEG_LS, [IMPLICIT]);
  assert.equal(back.transferSyntaxUid, IMPLICIT);
  assert.deepEqual(Buffer.from(back.bytes), Buffer.from((await transcodeDataset(image, EXPLICIT, [IMPLICIT])).bytes));
  // The caller's bytes stay usable: the pool moved a copy, not them.
  assert.equal(image.length, monochromeImage(64, 48).length);
  assert.deepEqual([pool.stats().outputsHeld, pool.stats().bytesHeld], [2, there.bytes.byteLength + back.bytes.byteLength], 'counted until the caller is done with them');
  there.release!();
  back.release!();
  back.release!();
  assert.deepEqual(pool.stats(), { workerRunning: true, workersStarted: 1, jobsQueued: 0, jobsRunning: 0, bytesRunning: 0, outputsHeld: 0, bytesHeld: 0, jobsDone: 2, jobsFailed: 0, jobsCancelled: 0 });
});

test('a view into a larger buffer is transcoded alone, not with the rest of its buffer', async (t) => {
  const pool = startPool(t);
  const image = monochromeImage(8, 8);
  const larger = Buffer.concat([Buffer.from('garbage before'), image, Buffer.from('garbage after!')]);
  const view = new Uint8Array(larger.buffer, larger.byteOffset + 14, image.length);
  const result = await pool.transcode(view, EXPLICIT, [IMPLICIT]);
  assert.deepEqual(Buffer.from(result.bytes), Buffer.from((await transcodeDataset(image, EXPLICIT, [IMPLICIT])).bytes));
});

test('a source read when its job starts moves its own buffer to the thread, and a view into a larger one is copied', async (t) => {
  const pool = startPool(t);
  const expected = Buffer.from((await transcodeDataset(monochromeImage(8, 8), EXPLICIT, [IMPLICIT])).bytes);
  const whole = monochromeImage(8, 8);
  assert.deepEqual(Buffer.from((await pool.transcode({ byteLength: whole.length, read: async () => whole }, EXPLICIT, [IMPLICIT])).bytes), expected);
  assert.equal(whole.byteLength, 0, 'moved: the view read is empty now');
  const larger = Buffer.concat([Buffer.from('before'), monochromeImage(8, 8)]);
  const view = larger.subarray(6);
  assert.deepEqual(Buffer.from((await pool.transcode({ byteLength: view.length, read: async () => view }, EXPLICIT, [IMPLICIT])).bytes), expected);
  assert.equal(larger.subarray(6).equals(monochromeImage(8, 8)), true, 'a view into a larger buffer is copied, its buffer stays');
  // Bytes given as they are stay the caller's.
  const kept = monochromeImage(8, 8);
  await pool.transcode(kept, EXPLICIT, [IMPLICIT]);
  assert.equal(kept.byteLength, monochromeImage(8, 8).byteLength);
});

test('errors keep their code across the thread, and the worker goes on serving', async (t) => {
  const pool = startPool(t);
  const image = monochromeImage(8, 8);
  await assert.rejects(pool.transcode(image, EXPLICIT, [JPEG_BASELINE]), isTranscodeError('ERR_TRANSCODE_UNSUPPORTED', /cannot transcode/));
  await assert.rejects(pool.transcode(new Uint8Array([1, 2, 3, 4, 5]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_FAILED'));
  const ok = await pool.transcode(image, EXPLICIT, [IMPLICIT]);
  assert.equal(ok.transferSyntaxUid, IMPLICIT);
  ok.release!();
  assert.deepEqual(pool.stats(), { workerRunning: true, workersStarted: 1, jobsQueued: 0, jobsRunning: 0, bytesRunning: 0, outputsHeld: 0, bytesHeld: 0, jobsDone: 1, jobsFailed: 2, jobsCancelled: 0 });
});

test('the event loop keeps turning while a large frame is compressed (in this thread it waited for the whole frame)', async (t) => {
  const pool = startPool(t);
  // Load the worker and its codecs first, so that only the frame's own work is counted.
  await pool.transcode(monochromeImage(8, 8), EXPLICIT, [JPEG_LS]);
  const image = monochromeImage(1024, 1024);
  let turns = 0;
  let done = false;
  const spin = () => {
    turns += 1;
    if (!done) setImmediate(spin);
  };
  setImmediate(spin);
  const result = await pool.transcode(image, EXPLICIT, [JPEG_LS]);
  done = true;
  assert.equal(result.transferSyntaxUid, JPEG_LS);
  // One frame is one uninterrupted codec call: in this thread the loop would turn a handful of times.
  assert.ok(turns >= 100, `the event loop turned only ${turns} times during the transcode`);
});

test('a job past its time fails and is cancelled; a thread that does not answer the cancel is ended', async (t) => {
  const clock = manualClock();
  // Hangs on a job whose first byte is 1 (and ignores its cancel), answers the others.
  const workerUrl = scriptedWorker(
    `if (m.type !== 'transcode' || m.bytes[0] === 1) return; parentPort.postMessage({ type: 'transcoded', jobId: m.jobId, bytes: m.bytes, transferSyntaxUid: '${IMPLICIT}' });`,
  );
  const pool = startPool(t, { clock, workerUrl, jobTimeoutMs: 1000, stuckGraceMs: 500 });
  const hanging = pool.transcode(new Uint8Array([1]), EXPLICIT, [IMPLICIT]);
  await new Promise((resolve) => setTimeout(resolve, 50));
  clock.advance(1000);
  await assert.rejects(hanging, isTranscodeError('ERR_TRANSCODE_FAILED', /took longer than 1000 ms/));
  // The thread still serves the others meanwhile.
  assert.deepEqual([...(await pool.transcode(new Uint8Array([2]), EXPLICIT, [IMPLICIT])).bytes], [2]);
  assert.equal(pool.stats().jobsRunning, 1, 'the timed-out job keeps its place until its thread answers');
  clock.advance(500);
  assert.deepEqual([pool.stats().workerRunning, pool.stats().jobsRunning], [false, 0], 'no answer to the cancel: the thread is ended');
  assert.deepEqual([...(await pool.transcode(new Uint8Array([3]), EXPLICIT, [IMPLICIT])).bytes], [3]);
  assert.equal(pool.stats().workersStarted, 2);
});

test('a worker that dies fails the jobs it held; waiting jobs go to a new worker', async (t) => {
  const workerUrl = scriptedWorker(
    `if (m.bytes[0] === 9) process.exit(3); parentPort.postMessage({ type: 'transcoded', jobId: m.jobId, bytes: m.bytes, transferSyntaxUid: '${IMPLICIT}' });`,
  );
  const pool = startPool(t, { workerUrl, runningJobsMax: 1 });
  const dying = pool.transcode(new Uint8Array([9]), EXPLICIT, [IMPLICIT]);
  const queued = pool.transcode(new Uint8Array([4]), EXPLICIT, [IMPLICIT]);
  await assert.rejects(dying, isTranscodeError('ERR_TRANSCODE_FAILED', /exit code 3/));
  assert.deepEqual([...(await queued).bytes], [4]);
  assert.equal(pool.stats().workersStarted, 2);
});

test('a thread that cannot start fails the waiting jobs at once', async (t) => {
  const pool = startPool(t, { workerUrl: new URL('https://example.invalid/transcode-worker.js') });
  await assert.rejects(pool.transcode(new Uint8Array([1]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /could not start/));
  assert.deepEqual(pool.stats(), { workerRunning: false, workersStarted: 0, jobsQueued: 0, jobsRunning: 0, bytesRunning: 0, outputsHeld: 0, bytesHeld: 0, jobsDone: 0, jobsFailed: 1, jobsCancelled: 0 });
});

test('a reply that is no known message fails its job, not the peer', async (t) => {
  const workerUrl = scriptedWorker(`parentPort.postMessage({ type: 'surprise', jobId: m.jobId });`);
  const pool = startPool(t, { workerUrl });
  await assert.rejects(pool.transcode(new Uint8Array([1]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_FAILED', /unknown reply: surprise/));
});

test('the queue is bounded, and stopping fails what waits and what runs', async (t) => {
  const workerUrl = scriptedWorker('/* never answers */');
  const pool = startPool(t, { workerUrl, runningJobsMax: 1, queuedJobsMax: 1 });
  const running = assert.rejects(pool.transcode(new Uint8Array([1]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /stopping/));
  const queued = assert.rejects(pool.transcode(new Uint8Array([2]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /stopping/));
  await assert.rejects(pool.transcode(new Uint8Array([3]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /busy: 1 transcodes waiting/));
  assert.equal(pool.stats().jobsQueued, 1);
  await pool.stop();
  await running;
  await queued;
  await assert.rejects(pool.transcode(new Uint8Array([4]), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /stopping/));
  assert.equal(pool.stats().workerRunning, false);
});

/** A source whose read the test completes: `started` says whether the pool began reading it. */
function deferredSource(byteLength: number, first: number) {
  let release!: () => void;
  const readable = new Promise<void>((resolve) => (release = resolve));
  const source = {
    started: false,
    byteLength,
    async read() {
      source.started = true;
      await readable;
      return new Uint8Array([first]);
    },
    release,
  };
  return source;
}

/** The caller is done with these outputs: their bytes leave the pool's budget. */
const releaseAll = (results: ReadonlyArray<{ release?(): void }>) => results.forEach((result) => result.release!());

const echoWorker = () => scriptedWorker(`if (m.type === 'transcode') parentPort.postMessage({ type: 'transcoded', jobId: m.jobId, bytes: m.bytes, transferSyntaxUid: '${IMPLICIT}' });`);
const settledSoon = () => new Promise((resolve) => setTimeout(resolve, 30));

test('jobs start while they fit in the running jobs and estimated bytes, one alone whatever its size; waiting ones are not read', async (t) => {
  const pool = startPool(t, { workerUrl: echoWorker(), runningJobsMax: 2, runningBytesMax: 100 });
  // Weighed by the estimates given (what the conversions hold), whatever the sources' sizes.
  const [a, b, c] = [deferredSource(1, 1), deferredSource(1, 2), deferredSource(1, 3)];
  const done = [a, b, c].map((source, i) => pool.transcode(source, EXPLICIT, [IMPLICIT], { estimatedBytes: [60, 30, 20][i]! }));
  await settledSoon();
  assert.deepEqual([a.started, b.started, c.started], [true, true, false], 'two jobs at most');
  a.release();
  assert.deepEqual([...(await done[0]!).bytes], [1]);
  await settledSoon();
  assert.equal(c.started, true, 'a slot freed: the next job starts');
  b.release();
  c.release();
  releaseAll(await Promise.all(done));
  const [big, small] = [deferredSource(150, 4), deferredSource(10, 5)];
  const bigDone = pool.transcode(big, EXPLICIT, [IMPLICIT], { estimatedBytes: 150 });
  const smallDone = pool.transcode(small, EXPLICIT, [IMPLICIT], { estimatedBytes: 10 });
  await settledSoon();
  assert.deepEqual([big.started, small.started, pool.stats().bytesRunning], [true, false, 150], 'larger than the budget: it runs alone');
  big.release();
  releaseAll([await bigDone]);
  await settledSoon();
  small.release();
  assert.deepEqual([...(await smallDone).bytes], [5]);
});

test('a small source estimated to hold much waits for room, one estimated over jobBytesMax is refused unread, none given weighs 3x its size (hunt 85)', async (t) => {
  const pool = startPool(t, { workerUrl: echoWorker(), runningJobsMax: 4, runningBytesMax: 100, jobBytesMax: 400 });
  // A 17 MB JPEG cine decoding to 553 MB was weighed 17 MB: three ran at once, 5 GB.
  const [cine1, cine2] = [deferredSource(5, 1), deferredSource(5, 2)];
  const done = [cine1, cine2].map((source) => pool.transcode(source, EXPLICIT, [IMPLICIT], { estimatedBytes: 80 }));
  await settledSoon();
  assert.deepEqual([cine1.started, cine2.started, pool.stats().bytesRunning, pool.stats().jobsQueued], [true, false, 80, 1], 'the second waits: together they would hold 160');
  const huge = deferredSource(5, 3);
  await assert.rejects(pool.transcode(huge, EXPLICIT, [IMPLICIT], { estimatedBytes: 401 }), isTranscodeError('ERR_TRANSCODE_TOO_LARGE', /^conversion needs ~1 MiB, over 1 MiB: refused/));
  assert.equal(huge.started, false, 'never read');
  cine1.release();
  cine2.release();
  releaseAll(await Promise.all(done));
  // Without an estimate: 3x the source (a native conversion's), so 40 bytes weigh 120 and run alone.
  const [plain, other] = [deferredSource(40, 4), deferredSource(1, 5)];
  const plainDone = pool.transcode(plain, EXPLICIT, [IMPLICIT]);
  const otherDone = pool.transcode(other, EXPLICIT, [IMPLICIT], { estimatedBytes: 1 });
  await settledSoon();
  assert.deepEqual([plain.started, other.started, pool.stats().bytesRunning], [true, false, 120]);
  plain.release();
  other.release();
  releaseAll(await Promise.all([plainDone, otherDone]));
  await assert.rejects(pool.transcode(new Uint8Array(200), EXPLICIT, [IMPLICIT]), isTranscodeError('ERR_TRANSCODE_TOO_LARGE'), '600 estimated: over 400');
});

test('an output counts in the budget until its caller releases it (sent); one never released stops counting after heldOutputMaxMs', async (t) => {
  // Converted instances held while a slow receiver read them were outside every bound: the pool admitted
  // more conversions as soon as the thread had made them.
  const clock = manualClock();
  const pool = startPool(t, { clock, workerUrl: echoWorker(), runningBytesMax: 100, heldOutputMaxMs: 60_000 });
  const first = await pool.transcode(new Uint8Array(60), EXPLICIT, [IMPLICIT], { estimatedBytes: 90 });
  assert.deepEqual([pool.stats().outputsHeld, pool.stats().bytesHeld, pool.stats().bytesRunning], [1, 60, 0]);
  const next = deferredSource(1, 2);
  const nextDone = pool.transcode(next, EXPLICIT, [IMPLICIT], { estimatedBytes: 50 });
  await settledSoon();
  assert.equal(next.started, false, 'it would hold 50 beside the 60 not yet sent');
  first.release!();
  await settledSoon();
  assert.equal(next.started, true, 'released: the next one starts');
  next.release();
  const unreleased = await nextDone;
  // A caller that never releases (a bug) holds its place for heldOutputMaxMs, not for good.
  const last = deferredSource(1, 3);
  const lastDone = pool.transcode(last, EXPLICIT, [IMPLICIT], { estimatedBytes: 100 });
  await settledSoon();
  assert.equal(last.started, false, '100 beside the 1 byte held');
  clock.advance(60_000);
  await settledSoon();
  assert.deepEqual([last.started, pool.stats().outputsHeld], [true, 0]);
  last.release();
  releaseAll([await lastDone]);
  unreleased.release!();
  assert.deepEqual([pool.stats().outputsHeld, pool.stats().bytesHeld], [0, 0], 'a late release changes nothing');
});

test('a small job that fits starts past a larger one waiting for outputs held to be released; a wait bounded by startWithinMs fails busy (hunt 191)', async (t) => {
  // Outputs held for clients that did not read kept a large conversion from fitting, and every conversion
  // behind it waited, a 0.5 MB rendering and the C-GETs' too, until its client gave up.
  const clock = manualClock();
  const pool = startPool(t, { clock, workerUrl: echoWorker(), runningBytesMax: 160, heldOutputMaxMs: 600_000 });
  const heldForSlowClient = await pool.transcode(new Uint8Array(100), EXPLICIT, [IMPLICIT], { estimatedBytes: 100 });
  const [large, small, medium] = [deferredSource(1, 1), deferredSource(1, 2), deferredSource(1, 3)];
  const largeDone = pool.transcode(large, EXPLICIT, [IMPLICIT], { estimatedBytes: 100 });
  const smallDone = pool.transcode(small, EXPLICIT, [IMPLICIT], { estimatedBytes: 10 });
  const mediumDone = pool.transcode(medium, EXPLICIT, [IMPLICIT], { estimatedBytes: 20 });
  const bounded = pool.transcode(deferredSource(1, 4), EXPLICIT, [IMPLICIT], { estimatedBytes: 30, startWithinMs: 60_000 });
  await settledSoon();
  assert.deepEqual([large.started, small.started, medium.started], [false, true, false], 'the small one (a sixteenth of the budget at most) passes; a larger one keeps its turn');
  small.release();
  releaseAll([await smallDone]);
  clock.advance(60_000);
  await assert.rejects(bounded, isTranscodeError('ERR_TRANSCODE_UNAVAILABLE', /waited 60 s to start/));
  assert.equal(pool.stats().jobsQueued, 2);
  heldForSlowClient.release!();
  await settledSoon();
  assert.deepEqual([large.started, medium.started], [true, true], 'in order once there is room (120 of 160)');
  large.release();
  medium.release();
  releaseAll(await Promise.all([largeDone, mediumDone]));
});

test("a reader's error comes out as it is, and frees the job's place", async (t) => {
  class Unreadable extends Error {}
  const pool = startPool(t, { workerUrl: echoWorker(), runningJobsMax: 1 });
  const unreadable = new Unreadable('the local copy does not match its SHA-256');
  await assert.rejects(pool.transcode({ byteLength: 10, read: () => Promise.reject(unreadable) }, EXPLICIT, [IMPLICIT]), (error) => error === unreadable);
  assert.deepEqual([...(await pool.transcode(new Uint8Array([7]), EXPLICIT, [IMPLICIT])).bytes], [7]);
  assert.equal(pool.stats().jobsFailed, 1);
});

test('a cancelled job leaves the queue unread, or stops at the thread, which frees its place when it answers', async (t) => {
  // Holds every job until it is cancelled, then answers as the real thread does.
  const workerUrl = scriptedWorker(
    `globalThis.held ??= new Set(); if (m.type === 'transcode') { globalThis.held.add(m.jobId); return; } if (m.type === 'cancel' && globalThis.held.delete(m.jobId)) parentPort.postMessage({ type: 'failed', jobId: m.jobId, code: 'ERR_TRANSCODE_CANCELLED', message: 'cancelled' });`,
  );
  const pool = startPool(t, { workerUrl, runningJobsMax: 1 });
  const [first, second] = [new AbortController(), new AbortController()];
  const waiting = deferredSource(10, 2);
  const atThread = pool.transcode(new Uint8Array([1]), EXPLICIT, [IMPLICIT], { signal: first.signal });
  const queued = pool.transcode(waiting, EXPLICIT, [IMPLICIT], { signal: second.signal });
  await settledSoon();
  second.abort();
  await assert.rejects(queued, isTranscodeError('ERR_TRANSCODE_CANCELLED'));
  assert.deepEqual([waiting.started, pool.stats().jobsQueued], [false, 0], 'never read');
  first.abort();
  await assert.rejects(atThread, isTranscodeError('ERR_TRANSCODE_CANCELLED'));
  // Its place stays taken until the thread (which may still be loading) has answered the cancel.
  while (pool.stats().jobsRunning > 0) await settledSoon();
  assert.equal(pool.stats().jobsCancelled, 2);
  await assert.rejects(pool.transcode(new Uint8Array([3]), EXPLICIT, [IMPLICIT], { signal: AbortSignal.abort() }), isTranscodeError('ERR_TRANSCODE_CANCELLED'));
});

test('transcodeDataset stops at the next frame once its signal is aborted', async () => {
  const controller = new AbortController();
  const work = transcodeDataset(monochromeImage(256, 256, 16), EXPLICIT, [JPEG_LS], { signal: controller.signal });
  setImmediate(() => controller.abort());
  await assert.rejects(work, isTranscodeError('ERR_TRANSCODE_CANCELLED'));
});

test('an idle worker first drops its codecs, later ends; the next job starts another', async (t) => {
  const clock = manualClock();
  // Answers each job with the number of releases it was asked for so far.
  const workerUrl = scriptedWorker(
    `globalThis.released ??= 0; if (m.type === 'releaseCodecs') { globalThis.released += 1; return; } parentPort.postMessage({ type: 'transcoded', jobId: m.jobId, bytes: new Uint8Array([globalThis.released]), transferSyntaxUid: '${IMPLICIT}' });`,
  );
  const pool = startPool(t, { clock, workerUrl, codecIdleMs: 1000, workerIdleMs: 5000 });
  // Each output released at once, as a caller does once it has sent it.
  const transcoded = async (byte: number) => {
    const result = await pool.transcode(new Uint8Array([byte]), EXPLICIT, [IMPLICIT]);
    result.release!();
    return [...result.bytes];
  };
  assert.deepEqual(await transcoded(1), [0]);
  // Only the two idle timers are left once the job is done.
  assert.equal(clock.pending(), 2);
  clock.advance(1000);
  assert.deepEqual(await transcoded(2), [1], 'the codecs were dropped, the thread kept');
  clock.advance(999);
  assert.deepEqual(await transcoded(3), [1], 'a job in time restarts the idle timers');
  clock.advance(5000);
  assert.equal(pool.stats().workerRunning, false);
  await transcoded(4);
  assert.equal(pool.stats().workersStarted, 2);
});

test('the real worker compresses as before after dropping its codecs', async (t) => {
  const pool = startPool(t, { codecIdleMs: 1 });
  const image = monochromeImage(16, 16);
  const first = await pool.transcode(image, EXPLICIT, [JPEG_LS]);
  await new Promise((resolve) => setTimeout(resolve, 50));
  const second = await pool.transcode(image, EXPLICIT, [JPEG_LS]);
  assert.deepEqual(Buffer.from(second.bytes), Buffer.from(first.bytes));
  assert.equal(pool.stats().workersStarted, 1);
});

test('the bundled worker (dist/transcode-worker.js, built by npm install) transcodes as the source does', async (t) => {
  const bundled = new URL('../../dist/transcode-worker.js', import.meta.url);
  const sources = ['transcode.ts', 'transcode-targets.ts', 'transcode-error.ts', 'transcode-worker.ts', 'transcode-pool.ts'].map((name) => new URL(name, import.meta.url));
  if (!existsSync(bundled) || sources.some((source) => statSync(source).mtimeMs > statSync(bundled).mtimeMs)) {
    t.skip('dist/ is missing or older than the transcoder: `npm run build` first');
    return;
  }
  const pool = startPool(t, { workerUrl: bundled });
  const image = monochromeImage(32, 32);
  const there = await pool.transcode(image, EXPLICIT, [JPEG_LS]);
  assert.deepEqual(Buffer.from(there.bytes), Buffer.from((await transcodeDataset(image, EXPLICIT, [JPEG_LS])).bytes));
  await assert.rejects(pool.transcode(image, EXPLICIT, [JPEG_BASELINE]), isTranscodeError('ERR_TRANSCODE_UNSUPPORTED'));
});
