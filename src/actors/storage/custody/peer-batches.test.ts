import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerBatches } from './peer-batches.ts';

test('one batch per peer at a time; items queued meanwhile form the next batch, at most batchMax each', async () => {
  const runs: Array<{ peer: string; items: number[] }> = [];
  let release!: () => void;
  const firstRunBlocks = new Promise<void>((resolve) => (release = resolve));
  const batches = new PeerBatches<number>(3, async (peer, items) => {
    runs.push({ peer, items });
    if (runs.length === 1) await firstRunBlocks;
  });
  const done = [batches.enqueue('p1', 1)];
  for (const n of [2, 3, 4, 5]) done.push(batches.enqueue('p1', n));
  done.push(batches.enqueue('p2', 9));
  release();
  await Promise.all(done);
  assert.deepEqual(runs, [
    { peer: 'p1', items: [1] },
    { peer: 'p2', items: [9] },
    { peer: 'p1', items: [2, 3, 4] },
    { peer: 'p1', items: [5] },
  ]);
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
