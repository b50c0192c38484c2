import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchCombiner } from './batch-combiner.ts';

/** A combiner whose calls are recorded and finish only when the test releases them. */
function gatedCombiner(itemsMax: number, failWhen: (items: number[]) => boolean = () => false) {
  const calls: number[][] = [];
  const releases: Array<() => void> = [];
  const combiner = new BatchCombiner<number, number>(async (items) => {
    calls.push(items);
    await new Promise<void>((resolve) => releases.push(resolve));
    if (failWhen(items)) throw new Error(`failed ${items.join(',')}`);
    return items.map((item) => item * 10);
  }, itemsMax);
  const releaseNext = async (): Promise<void> => {
    while (releases.length === 0) await new Promise((resolve) => setImmediate(resolve));
    releases.shift()!();
  };
  return { combiner, calls, releaseNext };
}

test('a lone request is called at once; requests made meanwhile share the next call', async () => {
  const { combiner, calls, releaseNext } = gatedCombiner(64);
  const first = combiner.submit(1);
  assert.deepEqual(calls, [[1]], 'no waiting for company');
  const later = [combiner.submit(2), combiner.submit(3), combiner.submit(4)];
  await releaseNext();
  assert.equal(await first, 10);
  await releaseNext();
  assert.deepEqual(await Promise.all(later), [20, 30, 40]);
  assert.deepEqual(calls, [[1], [2, 3, 4]]);
});

test('a call takes at most itemsMax requests, in order', async () => {
  const { combiner, calls, releaseNext } = gatedCombiner(2);
  const all = [1, 2, 3, 4, 5].map((n) => combiner.submit(n));
  for (let i = 0; i < 3; i++) await releaseNext();
  assert.deepEqual(await Promise.all(all), [10, 20, 30, 40, 50]);
  assert.deepEqual(calls, [[1], [2, 3], [4, 5]]);
});

test('a failed call rejects its own requests only, and the next call still runs', async () => {
  const { combiner, calls, releaseNext } = gatedCombiner(8, (items) => items.includes(2));
  const first = combiner.submit(1);
  const failing = [combiner.submit(2), combiner.submit(3)];
  await releaseNext();
  const settled = Promise.allSettled(failing);
  await releaseNext();
  const last = combiner.submit(4);
  await releaseNext();
  assert.equal(await first, 10);
  assert.deepEqual((await settled).map((s) => s.status), ['rejected', 'rejected']);
  assert.equal(await last, 40);
  assert.deepEqual(calls, [[1], [2, 3], [4]]);
});

test('itemsMax must be a positive integer', () => {
  assert.throws(() => new BatchCombiner<number, number>(async (items) => items, 0), RangeError);
});
