import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PeerBatches, type BatchPhases, type PeerBatchLimits } from './peer-batches.ts';

/** Batches that record each run; the first run holds until `release` is called. */
function batchesWhoseFirstRunBlocks<T>(batchMax: number, limits?: Partial<PeerBatchLimits>, keyOf?: (item: T) => string) {
  const runs: Array<{ peer: string; items: T[] }> = [];
  let release!: () => void;
  const firstRunBlocks = new Promise<void>((resolve) => (release = resolve));
  const batches = new PeerBatches<T>(batchMax, async (peer, items) => {
    runs.push({ peer, items });
    if (runs.length === 1) await firstRunBlocks;
  }, limits, keyOf);
  return { runs, release, batches };
}

test('one batch per peer at a time by default (a run that reports no phases counts as opening until it ends); items queued meanwhile form the next batch, at most batchMax each', async () => {
  const { runs, release, batches } = batchesWhoseFirstRunBlocks<number>(3);
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
  }, { flowingMax: 2, runningMax: 4 });
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

/** Batches whose phases and end the test drives. */
function drivenBatches(limits: { flowingMax: number; runningMax: number }) {
  const runs: Array<{ items: number[]; phases: BatchPhases; end: () => void }> = [];
  const batches = new PeerBatches<number>(
    2,
    (_peer, items, phases) => new Promise<void>((end) => runs.push({ items, phases, end })),
    limits,
  );
  return { runs, batches };
}

const turn = () => new Promise((r) => setImmediate(r));

test('pipelined: the next batch opens while the previous one flows, never two open at once', async () => {
  const { runs, batches } = drivenBatches({ flowingMax: 2, runningMax: 4 });
  const done = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((n) => batches.enqueue('p', n));
  await turn();
  assert.equal(runs.length, 1, 'one batch opens');
  await turn();
  assert.equal(runs.length, 1, 'and the next waits while it is opening');
  runs[0]!.phases.flowing();
  await turn();
  assert.equal(runs.length, 2, 'the next opens once the first flows');
  runs[1]!.phases.flowing();
  await turn();
  assert.equal(runs.length, 2, 'two flowing: no third opens');
  runs[0]!.phases.flowed();
  await turn();
  assert.equal(runs.length, 3, 'the first waits for its outcome: a third opens');
  runs[2]!.phases.flowing();
  runs[1]!.phases.flowed();
  await turn();
  assert.equal(runs.length, 4, 'a fourth opens');
  runs[3]!.phases.flowing();
  runs[2]!.phases.flowed();
  runs[3]!.phases.flowed();
  await turn();
  assert.equal(runs.length, 4, 'four running in all (two waiting, two flowed): no fifth');
  runs[0]!.end();
  await turn();
  await turn();
  assert.equal(runs.length, 5, 'one ends: the fifth opens');
  assert.deepEqual(runs.map((r) => r.items), [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]);
  for (const r of runs) r.end();
  await Promise.all(done);
});

test('pipelined: a batch that ends while opening or flowing gives its place back', async () => {
  const { runs, batches } = drivenBatches({ flowingMax: 2, runningMax: 2 });
  const done = [1, 2, 3, 4, 5, 6].map((n) => batches.enqueue('p', n));
  await turn();
  runs[0]!.end();
  await turn();
  await turn();
  assert.equal(runs.length, 2, 'ended while opening: the next opens');
  runs[1]!.phases.flowing();
  await turn();
  assert.equal(runs.length, 3, 'flowing: the next opens');
  runs[1]!.end();
  runs[2]!.phases.flowing();
  runs[2]!.phases.flowing();
  runs[2]!.phases.flowed();
  runs[2]!.phases.flowed();
  await turn();
  await turn();
  assert.deepEqual(runs.map((r) => r.items), [[1, 2], [3, 4], [5, 6]], 'phases reported twice count once');
  runs[2]!.end();
  await Promise.all(done);
});

test('with keyOf, an item already queued or in a running batch of that peer is not queued again (a copy the reducer offers again while its batch still flows)', async () => {
  const { runs, release, batches } = batchesWhoseFirstRunBlocks<string>(8, { flowingMax: 2, runningMax: 4 }, (uid) => uid);
  const first = [batches.enqueue('p1', 'a'), batches.enqueue('p1', 'b')];
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(runs, [{ peer: 'p1', items: ['a', 'b'] }], 'the first batch runs');
  assert.equal(batches.pendingCount('p1'), 2);
  // Offered again while the first batch runs: 'a' rides with it, 'c' is new; another peer is separate.
  const again = batches.enqueue('p1', 'a');
  const later = [batches.enqueue('p1', 'c'), batches.enqueue('p1', 'c'), batches.enqueue('p2', 'a')];
  assert.equal(again, first[0], 'the same promise as the queued one');
  release();
  await Promise.all([...first, again, ...later]);
  assert.deepEqual(runs.filter((r) => r.peer === 'p1').map((r) => r.items), [['a', 'b'], ['c']]);
  assert.deepEqual(runs.filter((r) => r.peer === 'p2').map((r) => r.items), [['a']]);
  assert.equal(batches.pendingCount('p1'), 0);
  // Once its batch has run, an item may be queued again (a copy that failed is offered again).
  await batches.enqueue('p1', 'a');
  assert.deepEqual(runs.at(-1), { peer: 'p1', items: ['a'] });
});
