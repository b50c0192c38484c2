/**
 * Transcoding for C-GET / C-MOVE off the peer's event loop, in one worker thread (transcode-worker.ts). In
 * the main thread a 27 MB frame held every association and the heartbeats for 0.4-1.1 s, near the 1.5 s
 * after which the other sites suspect a peer. One thread on these 2 cores leaves the other to the peer.
 *
 * Up to `runningJobsMax` jobs run at once, what they hold together within `runningBytesMax` (a larger one
 * runs alone), each weighed by what its conversion holds at its peak (TranscodeOptions.estimatedBytes, from
 * transcode-estimate.ts: a 17 MB JPEG cine decodes to 553 MB and holds ~1.7 GB; weighed by its stored size,
 * three ran at once, 5 GB: hunt 85); a job estimated over `jobBytesMax` is refused (ERR_TRANSCODE_TOO_LARGE)
 * before its instance is read. A finished job's output stays counted, by its size, until the caller releases
 * it (TranscodeResult.release, once sent): converted instances held while a slow receiver reads them were
 * outside every bound. The thread takes their frames in turn, so each requestor sees progress, as when the codecs
 * ran here frame by frame. An instance is read from the store only when its job starts: waiting jobs
 * hold no bytes, and the reading never outruns the thread (reading and hashing the instances of many
 * retrieves at once held this thread for seconds: helper 54). More jobs wait in a bounded queue. A job
 * whose requestor is gone (its signal aborted: the association ended, a C-CANCEL) leaves the queue, or
 * stops at the thread's next frame.
 *
 * The worker starts on the first job (~0.2 s to load, plus ~0.1-0.2 s for the codecs' WebAssembly on the
 * first compressed job). After `codecIdleMs` without a job it drops the codecs, whose WebAssembly memory
 * never shrinks otherwise (up to 512 MB after large frames); after `workerIdleMs` the thread ends. A job
 * that runs past `jobTimeoutMs` fails with ERR_TRANSCODE_FAILED and is cancelled; a thread that does not
 * answer the cancel within `stuckGraceMs` (stuck inside one codec call) is ended, as is one that crashes:
 * the jobs it held fail, and the next job starts a new thread.
 */
import { Worker } from 'node:worker_threads';
import type { Clock, TimerHandle } from '../actors/runtime/clock.ts';
import type { Logger } from '../actors/runtime/logger.ts';
import { TranscodeError, transcodeCancelled, type TranscodeErrorCode } from './transcode-error.ts';
import { transcodeJobBytesMax, transcodeTooLarge } from './transcode-estimate.ts';

/** Main thread to worker: a job, a job's cancellation, or (with no job running) drop the codecs' memory. */
export type TranscodeRequest = TranscodeJob | { type: 'cancel'; jobId: number } | { type: 'releaseCodecs' };

export interface TranscodeJob {
  type: 'transcode';
  jobId: number;
  bytes: Uint8Array;
  fromTransferSyntaxUid: string;
  acceptableTransferSyntaxUids: string[];
  renderedJpegQuality?: number;
}

/** Worker to main thread. */
export type TranscodeReply =
  | { type: 'transcoded'; jobId: number; bytes: Uint8Array; transferSyntaxUid: string }
  | { type: 'failed'; jobId: number; code: TranscodeErrorCode; message: string };

export interface TranscodeResult {
  bytes: Uint8Array;
  transferSyntaxUid: string;
  /**
   * The caller is done with `bytes` (sent, or dropped): from the pool, the output stays counted in its
   * bytes budget until this is called (or heldOutputMaxMs has passed). Idempotent; absent from
   * transcoders without a budget.
   */
  release?(): void;
}

/**
 * The instance to transcode: bytes (copied for the thread: the caller keeps them), or how to read them
 * when the job starts (the bytes read are the job's own and move to the thread without a copy).
 */
export type TranscodeSource = Uint8Array | { byteLength: number; read(): Promise<Uint8Array> };

export interface TranscodeOptions {
  /** Aborted when the requestor is gone: the job is dropped or stopped, and fails ERR_TRANSCODE_CANCELLED. */
  signal?: AbortSignal;
  /** The source is a rendered image (8-bit, one frame, explicit VR LE): made lossy JPEG Baseline at this quality. */
  renderedJpegQuality?: number;
  /**
   * Peak bytes the conversion holds (estimateTranscodeBytes): its weight in runningBytesMax, refused over
   * jobBytesMax. Default: 3x the source's size, a native -> native conversion's.
   */
  estimatedBytes?: number;
  /**
   * A job not started this long after it was asked fails ERR_TRANSCODE_UNAVAILABLE: an HTTP request's wait
   * is bounded (a DIMSE retrieve, whose sub-operations go one at a time, waits its turn).
   */
  startWithinMs?: number;
}

/** What the retrieve services need: `transcodeDataset`'s contract (transcode.ts), wherever it runs. */
export interface Transcoder {
  /** Rejects with a TranscodeError, or with the reader's own error when `source.read()` fails. */
  transcode(source: TranscodeSource, fromTransferSyntaxUid: string, acceptableTransferSyntaxUids: readonly string[], options?: TranscodeOptions): Promise<TranscodeResult>;
}

/** True when `bytes` is its whole buffer: moving the buffer to another thread moves these bytes alone. */
export function fillsItsBuffer(bytes: Uint8Array): boolean {
  return bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
}

export interface TranscoderPoolInit {
  clock: Clock;
  log: Logger;
  /** The worker's script; tests give one that hangs or dies. Default: transcode-worker beside this module. */
  workerUrl?: URL;
  /** Jobs at the thread (or reading their instance) at once. */
  runningJobsMax?: number;
  /** What the running jobs hold together, by their estimates; one larger job runs alone. */
  runningBytesMax?: number;
  /** A job estimated to hold more is refused (ERR_TRANSCODE_TOO_LARGE), never run. */
  jobBytesMax?: number;
  /** Jobs waiting to start (they hold no bytes); more are refused. */
  queuedJobsMax?: number;
  /** A job running longer fails and is cancelled: a codec stuck on malformed data must not hold retrieves for ever. */
  jobTimeoutMs?: number;
  /** A thread that has not answered a cancelled job this long after is stuck in a codec call, and ended. */
  stuckGraceMs?: number;
  /** An output not released this long after its job finished no longer counts (a caller that never releases must not block the pool for good). */
  heldOutputMaxMs?: number;
  /** An idle worker drops its codecs after this long (their memory goes; reloading them takes ~0.1-0.2 s). */
  codecIdleMs?: number;
  /** An idle worker ends after this long (its ~20-30 MB go; restarting it takes ~0.2 s more). */
  workerIdleMs?: number;
}

export interface TranscoderStats {
  workerRunning: boolean;
  workersStarted: number;
  jobsQueued: number;
  jobsRunning: number;
  /** The running jobs' estimated bytes together. */
  bytesRunning: number;
  /** Finished jobs' outputs not yet released by their callers, and their bytes together (also within runningBytesMax). */
  outputsHeld: number;
  bytesHeld: number;
  jobsDone: number;
  jobsFailed: number;
  jobsCancelled: number;
}

export interface TranscoderPool extends Transcoder {
  stats(): TranscoderStats;
  /** Fails the queued and running jobs (ERR_TRANSCODE_UNAVAILABLE) and ends the worker. */
  stop(): Promise<void>;
}

export const transcoderPoolDefaults = {
  runningJobsMax: 4,
  // Estimated bytes (what the conversions hold, not their instances' stored size): a 340 MB native instance
  // or pixels decoding to 340 MB fill it; one larger, up to jobBytesMax, runs alone.
  runningBytesMax: 1024 * 1024 * 1024,
  jobBytesMax: transcodeJobBytesMax,
  queuedJobsMax: 64,
  // A 300 MB multi-frame instance in JPEG-LS takes ~15 s here alone: ample room for sharing and slower machines.
  jobTimeoutMs: 300_000,
  stuckGraceMs: 30_000,
  // Sending 680 MB (the largest output jobBytesMax admits) at 10 Mbit/s takes ~9 minutes.
  heldOutputMaxMs: 600_000,
  codecIdleMs: 30_000,
  workerIdleMs: 600_000,
};

interface Job {
  jobId: number;
  source: TranscodeSource | undefined;
  /** Its estimated peak bytes: its weight in runningBytesMax. */
  weight: number;
  fromTransferSyntaxUid: string;
  acceptableTransferSyntaxUids: string[];
  renderedJpegQuality: number | undefined;
  /** queued: waiting to start; reading: its instance being read; atThread: posted to the worker. */
  phase: 'queued' | 'reading' | 'atThread';
  /** Its promise is settled (done, failed, cancelled, timed out); an atThread job keeps its slot until the thread answers. */
  settled: boolean;
  resolve(result: TranscodeResult): void;
  reject(error: unknown): void;
  detachSignal(): void;
  timers: TimerHandle[];
}

export function startTranscoderPool(init: TranscoderPoolInit): TranscoderPool {
  const { clock, log } = init;
  const d = transcoderPoolDefaults;
  const workerUrl = init.workerUrl ?? defaultWorkerUrl();
  const runningJobsMax = init.runningJobsMax ?? d.runningJobsMax;
  const runningBytesMax = init.runningBytesMax ?? d.runningBytesMax;
  const jobBytesMax = init.jobBytesMax ?? d.jobBytesMax;
  const queuedJobsMax = init.queuedJobsMax ?? d.queuedJobsMax;
  const jobTimeoutMs = init.jobTimeoutMs ?? d.jobTimeoutMs;
  const stuckGraceMs = init.stuckGraceMs ?? d.stuckGraceMs;
  const heldOutputMaxMs = init.heldOutputMaxMs ?? d.heldOutputMaxMs;
  const codecIdleMs = init.codecIdleMs ?? d.codecIdleMs;
  const workerIdleMs = init.workerIdleMs ?? d.workerIdleMs;
  const smallJobBytesMax = runningBytesMax / 16;

  const queue: Job[] = [];
  const running = new Map<number, Job>();
  let bytesRunning = 0;
  /** Outputs given to callers and not yet released: their bytes, and the timers that stop counting them. */
  const held = new Map<number, { byteLength: number; timer: TimerHandle }>();
  let bytesHeld = 0;
  let worker: Worker | undefined;
  let idleTimers: TimerHandle[] = [];
  let nextJobId = 1;
  let stopped = false;
  const counts = { workersStarted: 0, jobsDone: 0, jobsFailed: 0, jobsCancelled: 0 };

  function settle(job: Job, outcome: { result: TranscodeResult } | { error: unknown }): void {
    if (job.settled) return;
    job.settled = true;
    job.detachSignal();
    // A queued job's only timer is its start deadline (a running one's are cleared when it leaves its slot).
    if (job.phase === 'queued') clearJobTimers(job);
    if ('result' in outcome) {
      counts.jobsDone += 1;
      job.resolve(outcome.result);
    } else {
      if ((outcome.error as { code?: unknown })?.code === 'ERR_TRANSCODE_CANCELLED') counts.jobsCancelled += 1;
      else counts.jobsFailed += 1;
      job.reject(outcome.error);
    }
  }

  function spawn(): Worker {
    const started = startWorker(workerUrl);
    counts.workersStarted += 1;
    started.on('message', (reply: TranscodeReply) => {
      if (started === worker) onReply(reply);
    });
    // 'error' (an uncaught exception, a failed load) is followed by 'exit'; both end this worker once.
    started.on('error', (error) => workerGone(started, `the transcoder thread failed: ${error.message}`));
    started.on('messageerror', (error) => workerGone(started, `the transcoder thread sent an unreadable reply: ${error.message}`));
    started.on('exit', (code) => workerGone(started, `the transcoder thread ended (exit code ${code})`));
    return started;
  }

  /**
   * Starts queued jobs in order while the running ones and the outputs held leave room (always one alone,
   * whatever its size). A small job (a sixteenth of the budget at most) that fits starts although larger
   * ones wait before it: outputs held for clients that do not read (up to heldOutputMaxMs) kept a large
   * job from fitting, and every conversion behind it waited, a 0.5 MB one and the C-GETs' too (hunt 191).
   */
  function pump(): void {
    let at = 0;
    while (!stopped && at < queue.length) {
      const next = queue[at]!;
      const alone = running.size === 0 && held.size === 0;
      if (!alone && running.size >= runningJobsMax) return;
      const fits = alone || bytesRunning + bytesHeld + next.weight <= runningBytesMax;
      if (fits && (at === 0 || next.weight <= smallJobBytesMax)) {
        queue.splice(at, 1);
        start(next);
        continue;
      }
      at++;
    }
  }

  function start(job: Job): void {
    clearIdleTimers();
    clearJobTimers(job);
    job.phase = 'reading';
    running.set(job.jobId, job);
    bytesRunning += job.weight;
    void (async () => {
      let bytes: Uint8Array;
      try {
        bytes = await ownBytes(job.source!);
      } catch (error) {
        // The reader's own error, as it is: the caller tells an unreadable local copy from a failed transcode.
        settle(job, { error });
        finish(job);
        return;
      }
      job.source = undefined;
      // Cancelled or stopped while its instance was read: the thread never sees it.
      if (job.settled || stopped) return finish(job);
      try {
        worker ??= spawn();
      } catch (error) {
        // Refused at once (no thread to be had, an unusable script).
        const reason = `the transcoder thread could not start: ${error instanceof Error ? error.message : String(error)}`;
        log.warn('a transcoder thread could not start', { reason });
        settle(job, { error: new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', reason) });
        return finish(job);
      }
      job.phase = 'atThread';
      // Only jobs at the thread keep the process alive; an idle worker must not hold up a peer's exit.
      worker.ref();
      job.timers.push(clock.setTimeout(() => timedOut(job), jobTimeoutMs));
      const message: TranscodeJob = {
        type: 'transcode',
        jobId: job.jobId,
        bytes,
        fromTransferSyntaxUid: job.fromTransferSyntaxUid,
        acceptableTransferSyntaxUids: job.acceptableTransferSyntaxUids,
        ...(job.renderedJpegQuality === undefined ? {} : { renderedJpegQuality: job.renderedJpegQuality }),
      };
      worker.postMessage(message satisfies TranscodeRequest, [bytes.buffer as ArrayBuffer]);
    })();
  }

  /** The job leaves its slot: the next ones may start, or the idle timers run. */
  function finish(job: Job): void {
    if (!running.delete(job.jobId)) return;
    bytesRunning -= job.weight;
    clearJobTimers(job);
    if (worker && ![...running.values()].some((j) => j.phase === 'atThread')) worker.unref();
    pump();
    if (running.size === 0 && queue.length === 0 && worker && !stopped) {
      const idle = worker;
      idleTimers = [clock.setTimeout(() => idle.postMessage({ type: 'releaseCodecs' } satisfies TranscodeRequest), codecIdleMs), clock.setTimeout(endIdleWorker, workerIdleMs)];
    }
  }

  function clearJobTimers(job: Job): void {
    for (const timer of job.timers) clock.clearTimeout(timer);
    job.timers = [];
  }

  function clearIdleTimers(): void {
    for (const timer of idleTimers) clock.clearTimeout(timer);
    idleTimers = [];
  }

  function onReply(reply: TranscodeReply): void {
    const job = running.get(reply?.jobId);
    if (job?.phase !== 'atThread') {
      log.warn('the transcoder thread answered a job that is not running: ignored', { jobId: reply?.jobId });
      return;
    }
    // A cancelled or timed-out job's answer only frees its slot.
    switch (reply.type) {
      case 'transcoded':
        if (!job.settled) settle(job, { result: { bytes: reply.bytes, transferSyntaxUid: reply.transferSyntaxUid, release: holdOutput(job.jobId, reply.bytes.byteLength) } });
        break;
      case 'failed':
        settle(job, { error: new TranscodeError(reply.code, reply.message) });
        break;
      default: {
        const unknown: never = reply;
        settle(job, { error: new TranscodeError('ERR_TRANSCODE_FAILED', `the transcoder thread sent an unknown reply: ${String((unknown as { type?: unknown }).type)}`) });
      }
    }
    finish(job);
  }

  /** Counts an output handed to its caller until it is released (or heldOutputMaxMs has passed): its release. */
  function holdOutput(jobId: number, byteLength: number): () => void {
    const release = () => {
      const output = held.get(jobId);
      if (output === undefined) return;
      held.delete(jobId);
      bytesHeld -= output.byteLength;
      clock.clearTimeout(output.timer);
      pump();
    };
    const timer = clock.setTimeout(() => {
      log.warn('a converted output was not released in time: no longer counted', { byteLength, heldOutputMaxMs });
      release();
    }, heldOutputMaxMs);
    held.set(jobId, { byteLength, timer });
    bytesHeld += byteLength;
    return release;
  }

  /** The thread ended or failed: every job it held fails; reading and queued ones go to the next thread. */
  function workerGone(gone: Worker, reason: string): void {
    if (gone !== worker) return;
    worker = undefined;
    clearIdleTimers();
    const lost = [...running.values()].filter((job) => job.phase === 'atThread');
    if (lost.some((job) => !job.settled)) log.warn('transcodes failed: their thread ended', { reason, jobs: lost.length });
    for (const job of lost) {
      settle(job, { error: new TranscodeError('ERR_TRANSCODE_FAILED', reason) });
      finish(job);
    }
  }

  function cancel(job: Job): void {
    if (job.settled) return;
    settle(job, { error: transcodeCancelled() });
    if (job.phase === 'queued') queue.splice(queue.indexOf(job), 1);
    else if (job.phase === 'atThread') worker?.postMessage({ type: 'cancel', jobId: job.jobId } satisfies TranscodeRequest);
    // A reading job leaves its slot once its read ends (start()); one at the thread once the thread answers.
  }

  function timedOut(job: Job): void {
    if (job.settled) return;
    log.warn('a transcode ran too long: cancelled', { jobTimeoutMs });
    settle(job, { error: new TranscodeError('ERR_TRANSCODE_FAILED', `transcoding took longer than ${jobTimeoutMs} ms`) });
    worker?.postMessage({ type: 'cancel', jobId: job.jobId } satisfies TranscodeRequest);
    const thread = worker;
    job.timers.push(
      clock.setTimeout(() => {
        if (!running.has(job.jobId) || thread !== worker || thread === undefined) return;
        // Still no answer: the thread is inside one codec call that does not return.
        log.warn('the transcoder thread is stuck in a codec call: ended', { stuckGraceMs });
        void thread.terminate();
        workerGone(thread, `the transcoder thread was stuck in a codec call for ${jobTimeoutMs + stuckGraceMs} ms and was ended`);
      }, stuckGraceMs),
    );
  }

  function endIdleWorker(): void {
    idleTimers = [];
    if (running.size > 0 || queue.length > 0 || !worker) return;
    const ending = worker;
    worker = undefined;
    void ending.terminate();
  }

  return {
    transcode(source, fromTransferSyntaxUid, acceptableTransferSyntaxUids, options = {}) {
      if (stopped) return Promise.reject(new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', 'the transcoder is stopped: the peer is stopping'));
      const { signal } = options;
      if (signal?.aborted) return Promise.reject(transcodeCancelled());
      if (queue.length >= queuedJobsMax) {
        return Promise.reject(new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', `the transcoder is busy: ${queue.length} transcodes waiting`));
      }
      const byteLength = source instanceof Uint8Array ? source.byteLength : Number(source?.byteLength);
      if (!(source instanceof Uint8Array) && (typeof source?.read !== 'function' || !Number.isSafeInteger(byteLength) || byteLength < 0)) {
        return Promise.reject(new TranscodeError('ERR_TRANSCODE_FAILED', 'the source must be bytes or { byteLength, read() }'));
      }
      const estimated = Number(options.estimatedBytes);
      const weight = Number.isFinite(estimated) && estimated >= 0 ? estimated : 3 * byteLength;
      const tooLarge = transcodeTooLarge(weight, jobBytesMax);
      if (tooLarge !== undefined) {
        log.warn('a transcode was refused: it would hold too much memory', { estimatedBytes: weight, jobBytesMax, sourceBytes: byteLength, from: fromTransferSyntaxUid, to: acceptableTransferSyntaxUids.join(',') });
        return Promise.reject(new TranscodeError('ERR_TRANSCODE_TOO_LARGE', tooLarge));
      }
      return new Promise<TranscodeResult>((resolve, reject) => {
        const job: Job = {
          jobId: nextJobId++,
          source,
          weight,
          fromTransferSyntaxUid: String(fromTransferSyntaxUid),
          acceptableTransferSyntaxUids: Array.from(acceptableTransferSyntaxUids, String),
          renderedJpegQuality: options.renderedJpegQuality,
          phase: 'queued',
          settled: false,
          resolve,
          reject,
          detachSignal: () => signal?.removeEventListener('abort', onAbort),
          timers: [],
        };
        const onAbort = () => cancel(job);
        signal?.addEventListener('abort', onAbort, { once: true });
        const startWithinMs = options.startWithinMs;
        if (startWithinMs !== undefined) {
          job.timers.push(
            clock.setTimeout(() => {
              if (job.settled || job.phase !== 'queued') return;
              queue.splice(queue.indexOf(job), 1);
              settle(job, { error: new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', `the transcoder is busy: this conversion waited ${startWithinMs / 1000} s to start`) });
            }, startWithinMs),
          );
        }
        queue.push(job);
        pump();
      });
    },
    stats: () => ({ workerRunning: worker !== undefined, jobsQueued: queue.length, jobsRunning: running.size, bytesRunning, outputsHeld: held.size, bytesHeld, ...counts }),
    async stop() {
      stopped = true;
      clearIdleTimers();
      for (const output of held.values()) clock.clearTimeout(output.timer);
      const unavailable = () => new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', 'the transcoder is stopped: the peer is stopping');
      for (const job of [...queue.splice(0), ...running.values()]) {
        settle(job, { error: unavailable() });
        finish(job);
      }
      const ending = worker;
      worker = undefined;
      await ending?.terminate();
    },
  };
}

/** The source's bytes as the job's own buffer: read ones move to the thread as they are when they fill it. */
async function ownBytes(source: TranscodeSource): Promise<Uint8Array> {
  if (source instanceof Uint8Array) return new Uint8Array(source);
  const bytes = await source.read();
  if (!(bytes instanceof Uint8Array)) throw new TranscodeError('ERR_TRANSCODE_FAILED', 'the source read no bytes');
  return fillsItsBuffer(bytes) ? bytes : new Uint8Array(bytes);
}

/** From the sources (tsx) the worker is the .ts file beside this one; from the bundle, dist/transcode-worker.js. */
function defaultWorkerUrl(): URL {
  return new URL(import.meta.url.endsWith('.ts') ? './transcode-worker.ts' : './transcode-worker.js', import.meta.url);
}

function startWorker(url: URL): Worker {
  const options = { name: 'pacs-mesh transcoder', stdout: false, stderr: false };
  if (!url.pathname.endsWith('.ts')) return new Worker(url, { ...options, execArgv: [] });
  // A worker's --import runs after its main module loads on Node 20, too late for tsx: the worker first
  // registers tsx's hooks, then imports the TypeScript file.
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const source = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(url.href)}); })`;
  return new Worker(source, { ...options, eval: true, execArgv: [] });
}
