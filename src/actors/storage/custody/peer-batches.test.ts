import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerBatches } from './peer-batches.ts';

test('one batch per peer at a time (the default); items queued meanwhile form the next batch, at most batchMax each', async () => {
  const runs: Array<{ peer: string; items: number[] }> = [];
  let release!: () => void;
  const firstRunBlocks = new Promise<void>((resolve) => (release = resolve));
  const batches = new PeerBatches<number>(3, async (peer, items) => {
    runs.push({ peer, items });
    if (runs.length === 1) await firstRunBlocks;
  });
  const done = [batches.enqueue('p1', 1)];
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(runs.length, 1, 'the first batch is out');
  for (const n of [2, 3, 4, 5]) done.push(batches.enqueue('p1', n));
  done.push(batches.enqueue('p2', 9));
  release();
  await Promise.all(done);
  assert.deepEqual(
    runs.filter((r) => r.peer === 'p1').map((r) => r.items),
    [[1], [2, 3, 4], [5]],
  );
  assert.deepEqual(
    runs.filter((r) => r.peer === 'p2').map((r) => r.items),
    [[9]],
  );
});

test('items enqueued in the same turn travel in the same batch, not the first one alone', async () => {
  const runs: number[][] = [];
  const batches = new PeerBatches<number>(64, async (_peer, items) => {
    runs.push(items);
  }, 2);
  await Promise.all([1, 2, 3, 4, 5].map((n) => batches.enqueue('p', n)));
  assert.deepEqual(runs, [[1, 2, 3, 4, 5]]);
});

test('an item resolves even when its batch throws, and the peer keeps being served', async () => {
  let calls = 0;
  const batches = new PeerBatches<number>(2, async () => {
    calls++;
    if (calls === 1) throw new Error('boom');
  });
  await assert.doesNotReject(batches.enqueue('p', 1).then(() => batches.enqueue('p', 2)));
  assert.equal(calls, 2);
});

test('with batchesPerPeerMax 2, a second batch to the same peer runs while the first is still out, never a third', async () => {
  let running = 0;
  let runningMax = 0;
  const releases: Array<() => void> = [];
  const runs: number[][] = [];
  const batches = new PeerBatches<number>(
    2,
    async (_peer, items) => {
      runs.push(items);
      running += 1;
      runningMax = Math.max(runningMax, running);
      await new Promise<void>((resolve) => releases.push(resolve));
      running -= 1;
    },
    2,
  );
  const done = [1, 2, 3, 4, 5, 6].map((n) => batches.enqueue('p', n));
  await new Promise((r) => setImmediate(r));
  assert.equal(running, 2, 'two batches out at once');
  while (releases.length > 0 || running > 0) {
    releases.shift()?.();
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(done);
  assert.equal(runningMax, 2);
  assert.deepEqual(runs.flat().sort((x, y) => x - y), [1, 2, 3, 4, 5, 6], 'every item ran exactly once');
});
