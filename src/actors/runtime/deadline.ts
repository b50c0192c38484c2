/**
 * A deadline whose timer ends with the work it bounds. AbortSignal.timeout cannot be cleared: its timer
 * (and ~0.4 KB with it) lives the whole timeout, so a 10-minute deadline per push kept tens of thousands
 * alive at a steady ingest for nothing.
 */
import { systemClock, type Clock } from './clock.ts';

export interface Deadline {
  /** Aborts with a TimeoutError when the time is up, or with `parent`'s reason. */
  readonly signal: AbortSignal;
  /** Ends the timer; call it once the work is done, whatever its outcome. */
  clear(): void;
}

/** `clock`: the one whose time the deadline counts (a test's, say); its timers keep no process alive. */
export function startDeadline(timeoutMs: number, parent?: AbortSignal, message = `timed out after ${timeoutMs} ms`, clock: Pick<Clock, 'setTimeout' | 'clearTimeout'> = systemClock): Deadline {
  const controller = new AbortController();
  // The same reason AbortSignal.timeout gives, so callers telling a timeout apart keep working.
  const timer = clock.setTimeout(() => controller.abort(new DOMException(message, 'TimeoutError')), timeoutMs);
  return {
    signal: parent === undefined ? controller.signal : AbortSignal.any([parent, controller.signal]),
    clear: () => clock.clearTimeout(timer),
  };
}

/** Runs `work` under a deadline of `timeoutMs` (and `parent`) on `clock`, its timer cleared when `work` settles. */
export async function withDeadline<T>(
  timeoutMs: number,
  parent: AbortSignal | undefined,
  work: (signal: AbortSignal) => Promise<T>,
  clock: Pick<Clock, 'setTimeout' | 'clearTimeout'> = systemClock,
): Promise<T> {
  const deadline = startDeadline(timeoutMs, parent, undefined, clock);
  try {
    return await work(deadline.signal);
  } finally {
    deadline.clear();
  }
}

/** `promise`, or undefined as soon as `signal` aborts (the promise runs on for its other waiters). */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T | undefined> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.resolve(undefined);
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = (): void => resolve(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
