import { trackLoopLag } from './loop-lag.ts';

/**
 * How many times timeoutMs a wait may be stretched by this process's loop running late: the wait is a safety
 * net, and on a loaded machine the awaited event comes as late as the loop; a loop stalled for good still ends it.
 */
const lateStretchMax = 4;

/** A deadline of timeoutMs counting the time this process could run (see waitFor). */
export interface RunTimeDeadline {
  passed(): boolean;
  elapsedMs(): number;
  lateMs(): number;
  /** Milliseconds of the wall clock until it passes if the loop runs on time from now (at least 1). */
  remainingMs(): number;
  stop(): void;
}

export function runTimeDeadline(timeoutMs: number, sampleMs = 10): RunTimeDeadline {
  const start = performance.now();
  const lag = trackLoopLag(sampleMs);
  const dueMs = () => start + timeoutMs + Math.min(lag.lateMs(), lateStretchMax * timeoutMs);
  return {
    passed: () => performance.now() > dueMs(),
    elapsedMs: () => Math.round(performance.now() - start),
    lateMs: () => lag.lateMs(),
    remainingMs: () => Math.max(1, dueMs() - performance.now()),
    stop: () => lag.stop(),
  };
}

/**
 * Calls `onPassed` (with what it took) once timeoutMs of this process's run time has passed; the returned
 * function cancels it. Its timer does not keep the process alive.
 */
function afterRunTime(timeoutMs: number, onPassed: (took: string) => void): () => void {
  const deadline = runTimeDeadline(timeoutMs);
  let timer: ReturnType<typeof setTimeout>;
  const check = (): void => {
    if (!deadline.passed()) {
      timer = setTimeout(check, deadline.remainingMs()).unref();
      return;
    }
    deadline.stop();
    onPassed(`${deadline.elapsedMs()} ms, of which the loop ran ${deadline.lateMs()} ms late`);
  };
  timer = setTimeout(check, timeoutMs).unref();
  return () => {
    clearTimeout(timer);
    deadline.stop();
  };
}

/**
 * An AbortSignal for an operation given timeoutMs of this process's run time (a dial whose other end runs
 * in this process): on a loaded machine AbortSignal.timeout fired while the loop had run a fraction of it.
 */
export function runTimeSignal(timeoutMs: number): AbortSignal {
  const controller = new AbortController();
  afterRunTime(timeoutMs, (took) => controller.abort(new DOMException(`timed out (${took})`, 'TimeoutError')));
  return controller.signal;
}

/** `work`, or a rejection naming `what` once it has had timeoutMs of this process's run time (see runTimeSignal). */
export async function within<T>(what: string, timeoutMs: number, work: Promise<T>): Promise<T> {
  let cancel = (): void => undefined;
  const expired = new Promise<never>((_, reject) => {
    cancel = afterRunTime(timeoutMs, (took) => reject(new Error(`timed out waiting for ${what} (${took})`)));
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    cancel();
  }
}

/**
 * Polls `cond` until it holds; resolves with the milliseconds it took, or fails naming what it waited for.
 * The timeout counts the time this process could run: time its loop ran late (see loop-lag.ts), up to
 * lateStretchMax times timeoutMs, is added to it.
 */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  pollMs = 20,
): Promise<number> {
  const deadline = runTimeDeadline(timeoutMs, Math.min(pollMs, 10));
  try {
    while (!(await cond())) {
      if (deadline.passed()) {
        throw new Error(`timed out waiting for ${what} (${deadline.elapsedMs()} ms, of which the loop ran ${deadline.lateMs()} ms late)`);
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  } finally {
    deadline.stop();
  }
  return deadline.elapsedMs();
}
