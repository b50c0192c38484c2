import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NewestOfPatientCache } from './newest-of-patient.ts';

/** A catalog read that answers `value` and counts how often it was asked. */
function catalogAnswering(value: number | undefined): { read: () => Promise<number | undefined>; reads: () => number } {
  let reads = 0;
  return {
    read: async () => {
      reads++;
      return value;
    },
    reads: () => reads,
  };
}

test('a patient is read from the catalog once, then answered from memory, a patient with no instance too', async () => {
  const cache = new NewestOfPatientCache();
  const held = catalogAnswering(1_000);
  assert.equal(await cache.newestStoredAtMs('P1', held.read), 1_000);
  assert.equal(await cache.newestStoredAtMs('P1', held.read), 1_000);
  assert.equal(held.reads(), 1);
  const none = catalogAnswering(undefined);
  assert.equal(await cache.newestStoredAtMs('P2', none.read), undefined);
  assert.equal(await cache.newestStoredAtMs('P2', none.read), undefined);
  assert.equal(none.reads(), 1);
});

test('a commit raises a remembered date, never lowers it, and leaves a patient not remembered to the catalog', async () => {
  const cache = new NewestOfPatientCache();
  await cache.newestStoredAtMs('P1', catalogAnswering(1_000).read);
  await cache.newestStoredAtMs('P2', catalogAnswering(undefined).read);
  cache.committed('P1', 2_000);
  cache.committed('P1', 1_500);
  cache.committed('P2', 700);
  assert.equal(await cache.newestStoredAtMs('P1', catalogAnswering(0).read), 2_000);
  assert.equal(await cache.newestStoredAtMs('P2', catalogAnswering(0).read), 700);
  // A replica dated before what the catalog holds for P3: the catalog's date is the one to answer.
  cache.committed('P3', 10);
  const p3 = catalogAnswering(5_000);
  assert.equal(await cache.newestStoredAtMs('P3', p3.read), 5_000);
  assert.equal(p3.reads(), 1);
});

test('a read during which a commit came is answered but not kept (it may predate the commit)', async () => {
  const cache = new NewestOfPatientCache();
  let answer: ((value: number) => void) | undefined;
  const pending = cache.newestStoredAtMs('P1', () => new Promise<number>((resolve) => (answer = resolve)));
  cache.committed('P1', 3_000);
  answer!(1_000);
  assert.equal(await pending, 1_000);
  const again = catalogAnswering(3_000);
  assert.equal(await cache.newestStoredAtMs('P1', again.read), 3_000);
  assert.equal(again.reads(), 1);
});

test('a reload forgets every patient; a read begun before it is not kept', async () => {
  const cache = new NewestOfPatientCache();
  await cache.newestStoredAtMs('P1', catalogAnswering(1_000).read);
  let answer: ((value: number) => void) | undefined;
  const pending = cache.newestStoredAtMs('P2', () => new Promise<number>((resolve) => (answer = resolve)));
  cache.forget();
  answer!(50);
  await pending;
  const p1 = catalogAnswering(9_000);
  assert.equal(await cache.newestStoredAtMs('P1', p1.read), 9_000);
  const p2 = catalogAnswering(60);
  assert.equal(await cache.newestStoredAtMs('P2', p2.read), 60);
  assert.equal(p1.reads() + p2.reads(), 2);
});

test('at most patientsMax patients are remembered, the least recently asked for forgotten first', async () => {
  const cache = new NewestOfPatientCache(2);
  await cache.newestStoredAtMs('P1', catalogAnswering(1).read);
  await cache.newestStoredAtMs('P2', catalogAnswering(2).read);
  await cache.newestStoredAtMs('P1', catalogAnswering(0).read);
  await cache.newestStoredAtMs('P3', catalogAnswering(3).read);
  const p1 = catalogAnswering(0);
  const p2 = catalogAnswering(20);
  assert.equal(await cache.newestStoredAtMs('P1', p1.read), 1);
  assert.equal(await cache.newestStoredAtMs('P2', p2.read), 20);
  assert.equal(p1.reads(), 0);
  assert.equal(p2.reads(), 1);
});
