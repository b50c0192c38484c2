/**
 * What a receiving site keeps of cut copies (partial-copies.ts), with writers of a real store: bounds per
 * peer, in all and in number (the oldest dropped, their chunks deleted), expiry, and who may resume.
 */
import '../../polyfill.ts';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { manualClock } from '../../../test/support/manual-clock.ts';
import { tmpfsOrSkip } from '../../../test/support/tmpfs.ts';
import { uncommittedChunks } from './fixtures/store-keys.ts';
import { testCatalogEntry } from './fixtures/test-entry.ts';
import { PartialCopies, defaultPartialCopyLimits } from './partial-copies.ts';
import { createReplicaStore, type InstanceWriter, type ReplicaStore } from './replica-store.ts';

/** A real store in a temporary directory, closed and removed after the test. */
async function openStore(t: TestContext): Promise<ReplicaStore> {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-partials-'));
  const store = createReplicaStore({ path: join(dir, 'store'), chunkBytes: 16 * 1024 });
  await store.open();
  t.after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return store;
}

test('partial copies: bounded per peer, in all and in number, dropped after keptMs; only the sending peer resumes', async (t) => {
  const store = await openStore(t);
  const writerOf = async (bytes: number): Promise<InstanceWriter> => {
    const writer = store.beginWrite();
    await writer.write(randomBytes(bytes));
    return writer;
  };
  const clock = manualClock();
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, bytesPerPeerMax: 250_000, bytesMax: 400_000, copiesMax: 3, keptMs: 60_000 }, clock);

  partials.keep('1.1', 'peer-a', await writerOf(100_000));
  partials.keep('1.2', 'peer-a', await writerOf(100_000));
  // Over peer-a's bound: its oldest goes, not peer-b's.
  partials.keep('1.3', 'peer-b', await writerOf(100_000));
  partials.keep('1.4', 'peer-a', await writerOf(100_000));
  assert.deepEqual(partials.stats, { bytes: 300_000, copies: 3 });
  assert.equal(partials.take('1.1', 'peer-a'), undefined, 'the oldest of peer-a was dropped');
  // Over the count: the oldest of all goes (peer-a's 1.2).
  partials.keep('1.5', 'peer-c', await writerOf(50_000));
  assert.deepEqual(partials.stats, { bytes: 250_000, copies: 3 });
  assert.equal(partials.take('1.2', 'peer-a'), undefined);
  // Only the peer that sent it resumes it.
  assert.equal(partials.take('1.3', 'peer-a'), undefined);
  const resumed = partials.take('1.3', 'peer-b');
  assert.equal(resumed?.offset, 100_000);
  await resumed!.writer.abort();
  // Empty, or larger than a bound alone: not kept.
  partials.keep('1.6', 'peer-a', await writerOf(0));
  partials.keep('1.7', 'peer-d', await writerOf(300_000));
  assert.deepEqual(partials.stats, { bytes: 150_000, copies: 2 });
  assert.equal(partials.keptSinceStart, 5);
  clock.advance(60_000);
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 }, 'dropped after keptMs');
  for (const deadline = Date.now() + 5000; (await uncommittedChunks(store)) > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await uncommittedChunks(store), 0, 'every dropped part deleted its chunks');
  partials.stop();
  partials.keep('1.8', 'peer-a', await writerOf(10_000));
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 }, 'nothing kept once stopped');
});

test('partial copies: a part resumed and cut again is dropped keptMs after its first cut, not kept again for another keptMs', async (t) => {
  // Its open upload holds the store's recovery checkpoint back (replica-store.ts openUploads): a part
  // resumed and cut over and over (a sender that sends a byte a resume) must not hold it back for ever.
  const store = await openStore(t);
  const clock = manualClock();
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, clock);
  const writer = store.beginWrite();
  await writer.write(randomBytes(10_000));
  partials.keep('2.1', 'peer-a', writer);
  for (let round = 0; round < 3; round += 1) {
    clock.advance(25_000);
    const resumed = partials.take('2.1', 'peer-a');
    if (resumed === undefined) break;
    await resumed.writer.write(randomBytes(1));
    partials.keep('2.1', 'peer-a', resumed.writer);
  }
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 }, 'dropped 60 s after its first cut, however often resumed');
  for (const deadline = Date.now() + 5000; (await uncommittedChunks(store)) > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await uncommittedChunks(store), 0, 'its chunks deleted');
  partials.stop();
});

test('partial copies: a writer whose write failed (a full disk) is not kept, nor one kept before the store faulted handed out', async (t) => {
  // Either would fail its resume at the first write, with the batch stream it came on (a write failure
  // that is not a StoreError was kept again, and resumed and failed again, until it expired).
  const tmpfs = tmpfsOrSkip(t, 24 * 1024 * 1024);
  if (tmpfs === undefined) return;
  const store = createReplicaStore({ path: join(tmpfs.mountPoint, 'store'), chunkBytes: 16 * 1024 });
  await store.open();
  t.after(async () => {
    await store.close().catch(() => undefined);
    tmpfs.unmount();
  });
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, manualClock());
  const before = store.beginWrite();
  await before.write(randomBytes(20_000));
  partials.keep('3.1', 'peer-a', before);
  assert.deepEqual(partials.stats, { bytes: 20_000, copies: 1 });
  await writeFile(join(tmpfs.mountPoint, 'ballast'), Buffer.alloc(22 * 1024 * 1024));
  const failing = store.beginWrite();
  let writeError: unknown;
  for (let i = 0; i < 1024 && writeError === undefined; i += 1) await failing.write(randomBytes(64 * 1024)).catch((error: unknown) => (writeError = error));
  assert.ok(writeError !== undefined, 'the filesystem never filled up');
  partials.keep('3.2', 'peer-a', failing);
  assert.equal(partials.take('3.2', 'peer-a'), undefined, 'a writer whose write failed is not kept');
  assert.equal(partials.take('3.1', 'peer-a'), undefined, 'a part kept before the store faulted can never commit');
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 });
  partials.stop();
});

test('partial copies: a part is dropped once its instance is stored by any path, also by a commit that came before the part was kept', async (t) => {
  // Before, a part outlived a whole copy of its instance stored through another stream (a push or batch
  // that came whole, a pull, a local ingest) until its keptMs or the next offer of that instance.
  const store = await openStore(t);
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, manualClock(), store);
  const bytes = randomBytes(100_000);
  const storeWhole = async (uid: string): Promise<void> => {
    const writer = store.beginWrite();
    await writer.write(bytes);
    await writer.commit(uid, testCatalogEntry(uid));
  };
  const keptPart = async (uid: string): Promise<void> => {
    const writer = store.beginWrite();
    await writer.write(bytes.subarray(0, 40_000));
    partials.keep(uid, 'peer-a', writer);
  };
  const droppedWithItsChunks = async (what: string): Promise<void> => {
    for (const deadline = Date.now() + 5000; (partials.stats.copies > 0 || (await uncommittedChunks(store)) > 0) && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(partials.stats, { bytes: 0, copies: 0 }, what);
    assert.equal(await uncommittedChunks(store), 0, `${what}: its chunks deleted`);
  };

  await keptPart('4.1');
  assert.deepEqual(partials.stats, { bytes: 40_000, copies: 1 });
  await storeWhole('4.1');
  await droppedWithItsChunks('stored whole through another writer');

  // A cut stream whose writer is kept only after another stream's copy of the instance committed.
  await storeWhole('4.2');
  await keptPart('4.2');
  await droppedWithItsChunks('kept after its instance was stored');

  // Another instance stored leaves the part alone.
  await keptPart('4.3');
  await storeWhole('4.4');
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(partials.stats, { bytes: 40_000, copies: 1 });
  partials.stop();
  await droppedWithItsChunks('dropped when stopped');
});
