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

test('weighted: works run while their weights fit the bound, in order, and one heavier than the bound runs alone', async () => {
  const limit = createConcurrencyLimit(100, 10);
  const log: string[] = [];
  const gates = new Map<string, () => void>();
  const task = (name: string, weight: number) =>
    limit.run(async () => {
      log.push(`start ${name}`);
      await new Promise<void>((resolve) => gates.set(name, resolve));
      log.push(`end ${name}`);
    }, weight);
  const tick = () => new Promise((resolve) => setImmediate(resolve));
  const a = task('a', 60);
  const b = task('b', 50); // 110 > 100: waits for a
  const c = task('c', 10); // would fit, but waits behind b (first come, first served)
  await tick();
  assert.deepEqual(log, ['start a']);
  gates.get('a')!();
  await tick();
  await tick();
  assert.deepEqual(log, ['start a', 'end a', 'start b', 'start c']);
  const huge = task('huge', 500);
  await tick();
  assert.equal(log.includes('start huge'), false, 'waits until nothing runs');
  gates.get('b')!();
  gates.get('c')!();
  await tick();
  await tick();
  assert.ok(log.includes('start huge'));
  gates.get('huge')!();
  await Promise.all([a, b, c, huge]);
  assert.deepEqual(limit.stats(), { running: 0, queued: 0 });
});

test('a wait aborted by its signal leaves the queue: the ones behind it go on', async () => {
  const limit = createConcurrencyLimit(1, 10);
  let release!: () => void;
  const first = limit.run(() => new Promise<void>((resolve) => (release = resolve)));
  const abort = new AbortController();
  const abandoned = limit.run(async () => 'never', 1, abort.signal);
  const next = limit.run(async () => 'next');
  assert.deepEqual(limit.stats(), { running: 1, queued: 2 });
  abort.abort(new Error('the client left'));
  await assert.rejects(abandoned, /the client left/);
  assert.deepEqual(limit.stats(), { running: 1, queued: 1 });
  release();
  assert.equal(await next, 'next');
  await first;
  assert.deepEqual(limit.stats(), { running: 0, queued: 0 });
});

test('an admitted work waits beyond a full queue, in its turn, where a new one is refused', async () => {
  const limit = createConcurrencyLimit(1, 1);
  const order: string[] = [];
  let release = (): void => {};
  const first = limit.run(() => new Promise<void>((resolve) => (release = resolve)).then(() => void order.push('first')));
  const queued = limit.run(async () => void order.push('queued'));
  await assert.rejects(limit.run(async () => void order.push('new')), ConcurrencyLimitError);
  const admitted = limit.run(async () => void order.push('admitted'), 1, undefined, true);
  assert.deepEqual(limit.stats(), { running: 1, queued: 2 });
  release();
  await Promise.all([first, queued, admitted]);
  assert.deepEqual(order, ['first', 'queued', 'admitted']);
});
