import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AdaptiveTimeout } from '@libp2p/utils';
import { stepWallClock } from '../../test/support/wall-clock.ts';
import './adaptive-timeout-clock.ts';

/** A ping as the connection monitor times one: a signal, the round trip, cleanUp. */
async function timedPing(timeout: AdaptiveTimeout, rttMs: number, during?: () => void): Promise<void> {
  const signal = timeout.getTimeoutSignal();
  if (rttMs > 0) await new Promise((r) => setTimeout(r, rttMs));
  during?.();
  timeout.cleanUp(signal);
}

describe('AdaptiveTimeout on the monotonic clock (libp2p connection monitor)', () => {
  it('a wall clock stepped back 1 h during a ping leaves the next deadline finite and within bounds', async () => {
    const timeout = new AdaptiveTimeout({ minTimeout: 5000, maxTimeout: 10_000 });
    // Sub-millisecond round trips on a LAN, as on 127.0.0.1: the average starts at 0 (then NaN after the
    // step; from a non-zero average it became Infinity, and every deadline the maximum).
    await timedPing(timeout, 0);
    await timedPing(timeout, 0);
    let undo: (() => void) | undefined;
    try {
      await timedPing(timeout, 5, () => {
        undo = stepWallClock(-3_600_000);
      });
      await timedPing(timeout, 1);
      // Unpatched: the moving average became NaN and this threw ERR_OUT_OF_RANGE from AbortSignal.timeout,
      // which the connection monitor answers by aborting the connection, every ping interval from then on.
      const signal = timeout.getTimeoutSignal();
      assert.ok(Number.isFinite(signal.timeout), `timeout ${signal.timeout}`);
      assert.equal(signal.timeout, 5000, 'the deadline stays at its floor: no round trip took long');
      assert.equal(signal.aborted, false);
      timeout.cleanUp(signal);
    } finally {
      undo?.();
    }
  });

  it('a wall clock stepped forward 1 h during a ping does not count as an hour-long round trip', async () => {
    const timeout = new AdaptiveTimeout({ minTimeout: 5000, maxTimeout: 60_000 });
    await timedPing(timeout, 2);
    let undo: (() => void) | undefined;
    try {
      await timedPing(timeout, 2, () => {
        undo = stepWallClock(3_600_000);
      });
      const signal = timeout.getTimeoutSignal();
      assert.equal(signal.timeout, 5000, 'the deadline stays at its floor: no round trip took long');
      timeout.cleanUp(signal);
    } finally {
      undo?.();
    }
  });
});
