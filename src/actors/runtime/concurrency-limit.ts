/**
 * A bound on how many of some work run at once, with a bounded queue of the rest: what keeps a flood of
 * HTTP requests from opening more mesh streams than a protocol allows (libp2p refuses the 65th).
 */

export class ConcurrencyLimitError extends Error {
  override readonly name = 'ConcurrencyLimitError';
  readonly code = 'ERR_CONCURRENCY_QUEUE_FULL';
  constructor(queuedMax: number) {
    super(`more than ${queuedMax} waiting`);
  }
}

export interface ConcurrencyLimit {
  /** Runs `work` once fewer than `runningMax` run; rejects with ConcurrencyLimitError when `queuedMax` already wait. */
  run<T>(work: () => Promise<T>): Promise<T>;
  /** Running and waiting now. */
  stats(): { running: number; queued: number };
}

export function createConcurrencyLimit(runningMax: number, queuedMax: number): ConcurrencyLimit {
  let running = 0;
  const queue: Array<() => void> = [];
  const release = (): void => {
    const next = queue.shift();
    if (next !== undefined) next();
    else running--;
  };
  return {
    async run<T>(work: () => Promise<T>): Promise<T> {
      if (running < runningMax) running++;
      else {
        if (queue.length >= queuedMax) throw new ConcurrencyLimitError(queuedMax);
        // The slot is handed over by release: `running` stays the same.
        await new Promise<void>((resolve) => queue.push(resolve));
      }
      try {
        return await work();
      } finally {
        release();
      }
    },
    stats: () => ({ running, queued: queue.length }),
  };
}
