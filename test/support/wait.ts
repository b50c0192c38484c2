import { trackLoopLag } from './loop-lag.ts';

/**
 * How many times timeoutMs a wait may be stretched by this process's loop running late: the wait is a safety
 * net, and on a loaded machine the awaited event comes as late as the loop; a loop stalled for good still ends it.
 */
const lateStretchMax = 4;

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
  const start = performance.now();
  const lag = trackLoopLag(Math.min(pollMs, 10));
  try {
    while (!(await cond())) {
      const elapsedMs = performance.now() - start;
      if (elapsedMs > timeoutMs + Math.min(lag.lateMs(), lateStretchMax * timeoutMs)) {
        throw new Error(`timed out waiting for ${what} (${Math.round(elapsedMs)} ms, of which the loop ran ${lag.lateMs()} ms late)`);
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  } finally {
    lag.stop();
  }
  return Math.round(performance.now() - start);
}
