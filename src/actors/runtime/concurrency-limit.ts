/**
 * A bound on how much of some work runs at once, with a bounded queue of the rest: what keeps a flood of
 * HTTP requests from opening more mesh streams than a protocol allows (libp2p refuses the 65th), or from
 * holding more instance bytes in memory than a budget. Each work weighs 1 unless told (bytes, say).
 */

export class ConcurrencyLimitError extends Error {
  override readonly name = 'ConcurrencyLimitError';
  readonly code = 'ERR_CONCURRENCY_QUEUE_FULL';
  constructor(queuedMax: number) {
    super(`more than ${queuedMax} waiting`);
  }
}

export interface ConcurrencyLimit {
  /**
   * Runs `work` once the weight running plus `weight` is at most `weightMax` (or nothing runs: a work
   * heavier than the whole bound runs alone), in the order asked; rejects with ConcurrencyLimitError when
   * `queuedMax` already wait. A wait aborted by `signal` leaves the queue and rejects with its reason.
   * `admitted`: a later step of a request that already got in (its response under way) waits its turn
   * even beyond `queuedMax`, rather than be refused halfway; such waits are bounded by the requests admitted.
   */
  run<T>(work: () => Promise<T>, weight?: number, signal?: AbortSignal, admitted?: boolean): Promise<T>;
  /** Running (their weight) and waiting now. */
  stats(): { running: number; queued: number };
}

export function createConcurrencyLimit(weightMax: number, queuedMax: number): ConcurrencyLimit {
  let running = 0;
  const queue: Array<{ weight: number; start: () => void }> = [];
  const fits = (weight: number): boolean => running === 0 || running + weight <= weightMax;
  const startWaiting = (): void => {
    // First come, first served: a heavy work at the head is not overtaken by lighter ones behind it.
    while (queue.length > 0 && fits(queue[0]!.weight)) {
      const next = queue.shift()!;
      running += next.weight;
      next.start();
    }
  };
  return {
    async run<T>(work: () => Promise<T>, weight = 1, signal?: AbortSignal, admitted = false): Promise<T> {
      signal?.throwIfAborted();
      if (queue.length === 0 && fits(weight)) running += weight;
      else {
        if (queue.length >= queuedMax && !admitted) throw new ConcurrencyLimitError(queuedMax);
        // Its weight is counted by startWaiting when its turn comes; an aborted wait gives its place up.
        await new Promise<void>((resolve, reject) => {
          const waiting = { weight, start: () => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
          } };
          const onAbort = () => {
            queue.splice(queue.indexOf(waiting), 1);
            startWaiting();
            reject(signal!.reason);
          };
          signal?.addEventListener('abort', onAbort, { once: true });
          queue.push(waiting);
        });
      }
      try {
        return await work();
      } finally {
        running -= weight;
        startWaiting();
      }
    },
    stats: () => ({ running, queued: queue.length }),
  };
}
