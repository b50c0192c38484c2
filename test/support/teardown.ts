/** Stops for what a suite's tests start (peers, meshes), run when each test ends and when the suite does. */
import { after, afterEach } from 'node:test';

export interface SuiteTeardown {
  /** Registers stops for the end of the test running; once the suite is over, runs them at once and throws. */
  add(...stop: (() => Promise<void> | void)[]): Promise<void>;
  /** Whether the suite is over (a test that timed out runs on: what it starts then has no test to end with). */
  readonly closed: boolean;
}

/**
 * Call inside a describe(). Each test's stops run when it ends, passed, failed or timed out: left running,
 * its peers loaded every later test of the file. `atClose` runs last, once the suite is over.
 */
export function suiteTeardown(atClose?: () => Promise<void> | void): SuiteTeardown {
  const stops: (() => Promise<void> | void)[] = [];
  let closed = false;
  const runStops = async (): Promise<void> => {
    for (const stop of stops.splice(0).reverse()) await Promise.resolve().then(stop).catch(() => undefined);
  };
  afterEach(runStops);
  after(async () => {
    closed = true;
    await runStops();
    await atClose?.();
  });
  return {
    async add(...stop) {
      stops.push(...stop);
      if (closed) {
        // A timed-out test still running: its peer would keep the file's process from ever exiting.
        await runStops();
        throw new Error('the suite is over: nothing new starts');
      }
    },
    get closed() {
      return closed;
    },
  };
}
