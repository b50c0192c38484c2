/**
 * Transcoding for C-GET / C-MOVE off the peer's event loop: one worker thread (transcode-worker.ts) runs
 * `transcodeDataset` for one job at a time. In the main thread a 27 MB frame held every association and
 * the heartbeats for 0.4-1.1 s, near the 1.5 s after which the other sites suspect a peer. One thread on
 * these 2 cores leaves the other to the peer; jobs beyond it wait in a bounded queue.
 *
 * The worker starts on the first job (~0.2 s to load, plus ~0.1-0.2 s for the codecs' WebAssembly on the
 * first compressed job). After `codecIdleMs` without a job it drops the codecs, whose WebAssembly memory
 * never shrinks otherwise (up to 512 MB after large frames); after `workerIdleMs` the thread ends. A job
 * that runs past `jobTimeoutMs` ends the worker, as does a crash; the job fails with
 * ERR_TRANSCODE_FAILED and the next job starts a new worker.
 */
import { Worker } from 'node:worker_threads';
import type { Clock, TimerHandle } from '../actors/runtime/clock.ts';
import type { Logger } from '../actors/runtime/logger.ts';
import { TranscodeError, type TranscodeErrorCode } from './transcode-error.ts';

/** Main thread to worker: a job, or (between jobs) drop the codecs' memory. */
export type TranscodeRequest = TranscodeJob | { type: 'releaseCodecs' };

export interface TranscodeJob {
  type: 'transcode';
  jobId: number;
  bytes: Uint8Array;
  fromTransferSyntaxUid: string;
  acceptableTransferSyntaxUids: string[];
}

/** Worker to main thread. */
export type TranscodeReply =
  | { type: 'transcoded'; jobId: number; bytes: Uint8Array; transferSyntaxUid: string }
  | { type: 'failed'; jobId: number; code: TranscodeErrorCode; message: string };

export interface TranscodeResult {
  bytes: Uint8Array;
  transferSyntaxUid: string;
}

export interface TranscodeOptions {
  /**
   * The caller is done with `bytes`: when they fill their own buffer, that buffer moves to the thread
   * instead of a copy (a copy of a 300 MB instance is 300 MB more, and ~0.1 s of this thread), and the
   * caller's view is left empty.
   */
  handOver?: boolean;
}

/** What the retrieve services need: `transcodeDataset`'s contract (transcode.ts), wherever it runs. */
export interface Transcoder {
  transcode(bytes: Uint8Array, fromTransferSyntaxUid: string, acceptableTransferSyntaxUids: readonly string[], options?: TranscodeOptions): Promise<TranscodeResult>;
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
  /** Jobs waiting for the worker (each holds its instance in memory); more are refused. */
  queuedJobsMax?: number;
  /** A job running longer ends the worker: a codec stuck on malformed data must not hold retrieves for ever. */
  jobTimeoutMs?: number;
  /** An idle worker drops its codecs after this long (their memory goes; reloading them takes ~0.1-0.2 s). */
  codecIdleMs?: number;
  /** An idle worker ends after this long (its ~20-30 MB go; restarting it takes ~0.2 s more). */
  workerIdleMs?: number;
}

export interface TranscoderStats {
  workerRunning: boolean;
  workersStarted: number;
  jobsQueued: number;
  jobsDone: number;
  jobsFailed: number;
}

export interface TranscoderPool extends Transcoder {
  stats(): TranscoderStats;
  /** Fails the queued and running jobs (ERR_TRANSCODE_UNAVAILABLE) and ends the worker. */
  stop(): Promise<void>;
}

export const transcoderPoolDefaults = {
  queuedJobsMax: 64,
  // A 300 MB multi-frame instance in JPEG-LS takes ~15 s here: ample room for slower machines.
  jobTimeoutMs: 300_000,
  codecIdleMs: 30_000,
  workerIdleMs: 600_000,
};

interface Job {
  message: TranscodeJob;
  resolve(result: TranscodeResult): void;
  reject(error: TranscodeError): void;
}

export function startTranscoderPool(init: TranscoderPoolInit): TranscoderPool {
  const { clock, log } = init;
  const workerUrl = init.workerUrl ?? defaultWorkerUrl();
  const queuedJobsMax = init.queuedJobsMax ?? transcoderPoolDefaults.queuedJobsMax;
  const jobTimeoutMs = init.jobTimeoutMs ?? transcoderPoolDefaults.jobTimeoutMs;
  const codecIdleMs = init.codecIdleMs ?? transcoderPoolDefaults.codecIdleMs;
  const workerIdleMs = init.workerIdleMs ?? transcoderPoolDefaults.workerIdleMs;

  const queue: Job[] = [];
  let worker: Worker | undefined;
  let running: { job: Job; timer: TimerHandle } | undefined;
  let idleTimers: TimerHandle[] = [];
  let nextJobId = 1;
  let stopped = false;
  const counts = { workersStarted: 0, jobsDone: 0, jobsFailed: 0 };

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

  function pump(): void {
    if (stopped || running !== undefined || queue.length === 0) return;
    clearIdleTimers();
    try {
      worker ??= spawn();
    } catch (error) {
      // Refused at once (no thread to be had, an unusable script): what waits fails now, not never.
      const reason = `the transcoder thread could not start: ${error instanceof Error ? error.message : String(error)}`;
      log.warn('a transcoder thread could not start', { reason });
      const failed = queue.splice(0);
      counts.jobsFailed += failed.length;
      for (const job of failed) job.reject(new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', reason));
      return;
    }
    const job = queue.shift()!;
    // Only running jobs keep the process alive; an idle worker must not hold up a peer's exit.
    worker.ref();
    const timer = clock.setTimeout(() => timedOut(job), jobTimeoutMs);
    running = { job, timer };
    const bytes = job.message.bytes;
    job.message.bytes = new Uint8Array(0);
    worker.postMessage({ ...job.message, bytes } satisfies TranscodeRequest, [bytes.buffer as ArrayBuffer]);
  }

  function finishRunning(): Job | undefined {
    if (!running) return undefined;
    const { job, timer } = running;
    clock.clearTimeout(timer);
    running = undefined;
    return job;
  }

  function afterJob(): void {
    if (worker && queue.length === 0) {
      worker.unref();
      const idle = worker;
      idleTimers = [clock.setTimeout(() => idle.postMessage({ type: 'releaseCodecs' } satisfies TranscodeRequest), codecIdleMs), clock.setTimeout(endIdleWorker, workerIdleMs)];
    }
    pump();
  }

  function clearIdleTimers(): void {
    for (const timer of idleTimers) clock.clearTimeout(timer);
    idleTimers = [];
  }

  function onReply(reply: TranscodeReply): void {
    if (reply?.jobId !== running?.job.message.jobId) {
      log.warn('the transcoder thread answered a job that is not running: ignored', { jobId: reply?.jobId });
      return;
    }
    const job = finishRunning()!;
    switch (reply.type) {
      case 'transcoded':
        counts.jobsDone += 1;
        job.resolve({ bytes: reply.bytes, transferSyntaxUid: reply.transferSyntaxUid });
        break;
      case 'failed':
        counts.jobsFailed += 1;
        job.reject(new TranscodeError(reply.code, reply.message));
        break;
      default: {
        const unknown: never = reply;
        counts.jobsFailed += 1;
        job.reject(new TranscodeError('ERR_TRANSCODE_FAILED', `the transcoder thread sent an unknown reply: ${String((unknown as { type?: unknown }).type)}`));
      }
    }
    afterJob();
  }

  function workerGone(gone: Worker, reason: string): void {
    if (gone !== worker) return;
    worker = undefined;
    clearIdleTimers();
    const job = finishRunning();
    if (job) {
      counts.jobsFailed += 1;
      log.warn('a transcode failed: its thread ended', { reason });
      job.reject(new TranscodeError('ERR_TRANSCODE_FAILED', reason));
    }
    pump();
  }

  function timedOut(job: Job): void {
    if (running?.job !== job) return;
    const ending = worker;
    finishRunning();
    counts.jobsFailed += 1;
    log.warn('a transcode ran too long: its thread is ended', { jobTimeoutMs });
    job.reject(new TranscodeError('ERR_TRANSCODE_FAILED', `transcoding took longer than ${jobTimeoutMs} ms`));
    worker = undefined;
    void ending?.terminate();
    pump();
  }

  function endIdleWorker(): void {
    idleTimers = [];
    if (running || queue.length > 0 || !worker) return;
    const ending = worker;
    worker = undefined;
    void ending.terminate();
  }

  return {
    transcode(bytes, fromTransferSyntaxUid, acceptableTransferSyntaxUids, options) {
      if (stopped) return Promise.reject(new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', 'the transcoder is stopped: the peer is stopping'));
      if (queue.length >= queuedJobsMax) {
        return Promise.reject(new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', `the transcoder is busy: ${queue.length} transcodes waiting`));
      }
      if (!(bytes instanceof Uint8Array)) return Promise.reject(new TranscodeError('ERR_TRANSCODE_FAILED', 'datasetBytes must be a Uint8Array'));
      return new Promise<TranscodeResult>((resolve, reject) => {
        queue.push({
          // Moved to the worker: the caller's own buffer when handed over, else a copy (the bytes may be a
          // view into a larger buffer, which would go along whole, or ones the caller still uses).
          message: {
            type: 'transcode',
            jobId: nextJobId++,
            bytes: options?.handOver === true && fillsItsBuffer(bytes) ? bytes : new Uint8Array(bytes),
            fromTransferSyntaxUid: String(fromTransferSyntaxUid),
            acceptableTransferSyntaxUids: Array.from(acceptableTransferSyntaxUids, String),
          },
          resolve,
          reject,
        });
        pump();
      });
    },
    stats: () => ({ workerRunning: worker !== undefined, jobsQueued: queue.length, ...counts }),
    async stop() {
      stopped = true;
      clearIdleTimers();
      const unavailable = () => new TranscodeError('ERR_TRANSCODE_UNAVAILABLE', 'the transcoder is stopped: the peer is stopping');
      finishRunning()?.reject(unavailable());
      for (const job of queue.splice(0)) job.reject(unavailable());
      const ending = worker;
      worker = undefined;
      await ending?.terminate();
    },
  };
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
