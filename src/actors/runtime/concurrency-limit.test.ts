import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConcurrencyLimitError, createConcurrencyLimit } from './concurrency-limit.ts';

test('at most runningMax run at once, the rest wait in order, and a full queue refuses at once', async () => {
  const limit = createConcurrencyLimit(2, 2);
  let active = 0;
  let activeMax = 0;
  const order: number[] = [];
  const releases: Array<() => void> = [];
  const task = (n: number) =>
    limit.run(async () => {
      active++;
      activeMax = Math.max(activeMax, active);
      order.push(n);
      await new Promise<void>((resolve) => releases.push(resolve));
      active--;
      return n;
    });
  const running = [task(1), task(2), task(3), task(4)];
  await assert.rejects(task(5), ConcurrencyLimitError);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(limit.stats(), { running: 2, queued: 2 });
  while (releases.length > 0 || order.length < 4) {
    releases.shift()?.();
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.deepEqual(await Promise.all(running), [1, 2, 3, 4]);
  assert.deepEqual(order, [1, 2, 3, 4]);
  assert.equal(activeMax, 2);
  assert.deepEqual(limit.stats(), { running: 0, queued: 0 });
  // A failing task frees its slot too.
  await assert.rejects(limit.run(async () => Promise.reject(new Error('boom'))), /boom/);
  assert.equal(await limit.run(async () => 7), 7);
  assert.deepEqual(limit.stats(), { running: 0, queued: 0 });
});
