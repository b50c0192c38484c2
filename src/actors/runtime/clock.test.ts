import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { systemClock } from './clock.ts';
import { stepWallClock } from '../../../test/support/wall-clock.ts';

describe('system clock', () => {
  it('nowMs neither steps back nor jumps when the wall clock is stepped; dateMs follows the date', async () => {
    const hourMs = 3_600_000;
    // A step shows as an hour; a minute leaves room for a loop stalled at load (a 20 ms wait took seconds).
    const slackMs = 60_000;
    const before = systemClock.nowMs();
    assert.ok(Math.abs(before - Date.now()) < slackMs, 'nowMs reads like the date at start');
    for (const stepMs of [-hourMs, hourMs]) {
      const undo = stepWallClock(stepMs);
      try {
        const t0 = systemClock.nowMs();
        await new Promise((r) => setTimeout(r, 20));
        const elapsedMs = systemClock.nowMs() - t0;
        assert.ok(elapsedMs >= 15 && elapsedMs < slackMs, `nowMs advanced ${elapsedMs} ms in a 20 ms wait after a ${stepMs} ms step`);
        assert.ok(Math.abs(systemClock.nowMs() - before) < slackMs, 'nowMs did not take the step');
        assert.ok(Math.abs(systemClock.dateMs() - (before + stepMs)) < slackMs, 'dateMs took the step');
      } finally {
        undo();
      }
    }
  });

  it('a pending timer keeps no process alive (the association layer\'s close and shutdown timers rely on it)', () => {
    const clockUrl = new URL('./clock.ts', import.meta.url).href;
    const startedMs = performance.now();
    const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import { systemClock } from ${JSON.stringify(clockUrl)}; systemClock.setTimeout(() => process.exit(3), 60_000);`], { timeout: 30_000 });
    assert.equal(result.status, 0, String(result.stderr));
    assert.ok(performance.now() - startedMs < 30_000);
  });
});
