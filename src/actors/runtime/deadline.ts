/**
 * A deadline whose timer ends with the work it bounds. AbortSignal.timeout cannot be cleared: its timer
 * (and ~0.4 KB with it) lives the whole timeout, so a 10-minute deadline per push kept tens of thousands
 * alive at a steady ingest for nothing.
 */

export interface Deadline {
  /** Aborts with a TimeoutError when the time is up, or with `parent`'s reason. */
  readonly signal: AbortSignal;
  /** Ends the timer; call it once the work is done, whatever its outcome. */
  clear(): void;
}

export function startDeadline(timeoutMs: number, parent?: AbortSignal, message = `timed out after ${timeoutMs} ms`): Deadline {
  const controller = new AbortController();
  // The same reason AbortSignal.timeout gives, so callers telling a timeout apart keep working.
  const timer = setTimeout(() => controller.abort(new DOMException(message, 'TimeoutError')), timeoutMs);
  timer.unref();
  return {
    signal: parent === undefined ? controller.signal : AbortSignal.any([parent, controller.signal]),
    clear: () => clearTimeout(timer),
  };
}

/** Runs `work` under a deadline of `timeoutMs` (and `parent`), its timer cleared when `work` settles. */
export async function withDeadline<T>(timeoutMs: number, parent: AbortSignal | undefined, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const deadline = startDeadline(timeoutMs, parent);
  try {
    return await work(deadline.signal);
  } finally {
    deadline.clear();
  }
}
