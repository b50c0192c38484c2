/**
 * What a receiving site keeps of cut copies (partial-copies.ts), with writers of a real store: bounds per
 * peer, in all and in number (the oldest dropped, their chunks deleted), expiry, and who may resume.
 */
import '../../polyfill.ts';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { pack, unpack } from 'msgpackr';
import { manualClock } from '../../../test/support/manual-clock.ts';
import { systemClock } from '../runtime/clock.ts';
import { tmpfsOrSkip } from '../../../test/support/tmpfs.ts';
import { blobDbProperty, uncommittedChunks } from './fixtures/store-keys.ts';
import { testCatalogEntry } from './fixtures/test-entry.ts';
import { PartialCopies, defaultPartialCopyLimits, progressMarkBytes } from './partial-copies.ts';
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

/**
 * Every abort of a writer `store` hands out from now on, to await: a drop aborts without waiting, and a poll
 * for no uncommitted chunk could pass before the chunks were even written (then find them, not yet deleted).
 */
function abortsOf(store: ReplicaStore): () => Promise<void> {
  const aborts: Promise<void>[] = [];
  const beginWrite = store.beginWrite.bind(store);
  store.beginWrite = () => {
    const writer = beginWrite();
    const abort = writer.abort.bind(writer);
    writer.abort = () => {
      const aborted = abort();
      aborts.push(aborted);
      return aborted;
    };
    return writer;
  };
  return async () => {
    await Promise.all(aborts);
  };
}

test('partial copies: bounded per peer, in all and in number, dropped after keptMs; only the sending peer resumes', async (t) => {
  const store = await openStore(t);
  const abortsDone = abortsOf(store);
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
  await abortsDone();
  assert.equal(await uncommittedChunks(store), 0, 'every dropped part deleted its chunks');
  partials.stop();
  partials.keep('1.8', 'peer-a', await writerOf(10_000));
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 }, 'nothing kept once stopped');
});

test('partial copies: a part resumed and cut again is dropped keptMs after its first cut, not kept again for another keptMs', async (t) => {
  // Its open upload holds the store's recovery checkpoint back (replica-store.ts openUploads): a part
  // resumed and cut over and over (a sender that sends a byte a resume) must not hold it back for ever.
  const store = await openStore(t);
  const abortsDone = abortsOf(store);
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
  await abortsDone();
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
  // Stopped (the peer shuts down, its store closes next): a part whose marker is durable stays for the next open.
  await partials.stop();
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 });
  assert.ok((await uncommittedChunks(store)) > 0, 'left in the store for its next open');
  assert.equal((await store.db.keys({ gte: 'p!', lt: 'p!~' }).all()).length, 1, 'with its marker');
});

/** The store at `path` closed and opened again (a restart), closed after the test. */
async function reopenStore(t: TestContext, store: ReplicaStore, path: string): Promise<ReplicaStore> {
  await store.close();
  const reopened = createReplicaStore({ path, chunkBytes: 16 * 1024 });
  await reopened.open();
  t.after(() => reopened.close());
  return reopened;
}

/** A store in a temporary directory whose path a test reopens (see reopenStore). */
async function storeToRestart(t: TestContext): Promise<{ store: ReplicaStore; path: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-partials-'));
  const path = join(dir, 'store');
  const store = createReplicaStore({ path, chunkBytes: 16 * 1024 });
  await store.open();
  t.after(() => rm(dir, { recursive: true, force: true }));
  return { store, path };
}

const markers = async (store: ReplicaStore): Promise<string[]> => store.db.keys({ gte: 'p!', lt: 'p!~' }).all();

test('partial copies: a kept part survives a restart (hunt 132): restored with its offset, resumed, and whole only when the SHA-256 over the whole matches', async (t) => {
  const { store, path } = await storeToRestart(t);
  const bytes = randomBytes(200_000);
  const limits = { ...defaultPartialCopyLimits, keptMs: 60_000 };
  const before = new PartialCopies(limits, systemClock, store);
  const writer = store.beginWrite();
  // Pieces that leave a tail short of a chunk in the writer's memory when it is cut.
  for (let at = 0; at < 70_000; at += 7_000) await writer.write(bytes.subarray(at, at + 7_000));
  before.keep('5.1', 'peer-a', writer);
  await before.stop();
  const reopened = await reopenStore(t, store, path);
  assert.equal(await reopened.getEntry('5.1'), undefined, 'a kept part is never an instance');
  assert.equal(await reopened.countInstances(), 0);
  const after = new PartialCopies(limits, systemClock, reopened);
  t.after(() => after.stop());
  await after.restore();
  assert.deepEqual(after.stats, { bytes: 70_000, copies: 1 }, 'every byte kept, also the tail the writer held in memory');
  assert.equal(after.take('5.1', 'peer-b'), undefined, 'only the peer it came from resumes it');
  const resumed = after.take('5.1', 'peer-a')!;
  assert.equal(resumed.offset, 70_000);
  await resumed.writer.write(bytes.subarray(70_000));
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const committed = await resumed.writer.commit('5.1', (info) => {
    assert.equal(info.sha256, sha256, 'the hash covers the kept bytes, read back after the restart');
    return testCatalogEntry('5.1')(info);
  });
  assert.equal(committed.outcome, 'stored');
  const chunks: Uint8Array[] = [];
  for await (const chunk of reopened.readInstance(committed.entry)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(bytes));
  assert.deepEqual(await markers(reopened), [], 'the marker went with the commit');
  assert.equal(await uncommittedChunks(reopened), 0);
});

test('partial copies: at open, a part out of its time, or missing a chunk, is deleted; chunks a cut resume wrote after the marker are dropped (hunt 132)', async (t) => {
  const { store, path } = await storeToRestart(t);
  const before = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, systemClock, store);
  const keptPart = async (uid: string, bytes: number): Promise<InstanceWriter> => {
    const writer = store.beginWrite();
    await writer.write(randomBytes(bytes));
    before.keep(uid, 'peer-a', writer);
    return writer;
  };
  // Kept, then resumed and written on when the restart came: only what its marker names comes back.
  await keptPart('6.1', 40_000);
  // Expires 300 ms from now: out of time at the open below.
  const shortLived = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 300 }, systemClock, store);
  const stale = store.beginWrite();
  await stale.write(randomBytes(40_000));
  shortLived.keep('6.2', 'peer-a', stale);
  // One of its chunks lost (the marker names three).
  await keptPart('6.3', 40_000);
  await before.stop();
  await shortLived.stop();
  // An upload open at the restart, never kept: no marker.
  const unmarked = store.beginWrite();
  await unmarked.write(randomBytes(30_000));
  const chunkKeys = await store.blobDb.keys({ gte: 'b!', lt: 'b!~' }).all();
  const blobOf = async (uid: string): Promise<string> => {
    for (const key of await markers(store)) {
      const record = unpack((await store.db.get(key))!) as { sopInstanceUid: string };
      if (record.sopInstanceUid === uid) return key.slice(2);
    }
    throw new Error(`no marker of ${uid}`);
  };
  const resumedBlob = await blobOf('6.1');
  // The resume's writes after the marker, as a restart would leave them.
  await store.blobDb.put(`b!${resumedBlob}!00000010`, randomBytes(1_000));
  const lostBlob = await blobOf('6.3');
  await store.blobDb.del(chunkKeys.find((key) => key.startsWith(`b!${lostBlob}!`))!);
  await new Promise((r) => setTimeout(r, 400));
  const reopened = await reopenStore(t, store, path);
  const after = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, systemClock, reopened);
  t.after(() => after.stop());
  await after.restore();
  assert.deepEqual(after.stats, { bytes: 40_000, copies: 1 }, 'only the part in time and whole');
  assert.equal(after.take('6.1', 'peer-a')?.offset, 40_000);
  assert.equal((await markers(reopened)).length, 1, 'the others lost their markers');
  // 6.1's chunk (its 40,000 bytes came in one write: one chunk) is all that is left uncommitted: the other
  // parts, the surplus chunk and the writer open at the restart (no marker) are gone.
  assert.equal(await uncommittedChunks(reopened), 1);
});

test('partial copies: a marker of an instance that was committed is dropped at open, its copy untouched (hunt 132)', async (t) => {
  const { store, path } = await storeToRestart(t);
  const bytes = randomBytes(100_000);
  const writer = store.beginWrite();
  await writer.write(bytes);
  const committed = await writer.commit('7.1', testCatalogEntry('7.1'));
  const blobId = committed.entry.blobId;
  // A marker written after the commit that deleted it (the two raced), naming the instance's chunks.
  await store.db.put(`p!${blobId}`, new Uint8Array(pack({ v: 1, sopInstanceUid: '7.1', fromPeerId: 'peer-a', chunks: 2, bytes: 32_768, keptUntilDateMs: Date.now() + 60_000 })));
  const reopened = await reopenStore(t, store, path);
  assert.deepEqual(reopened.restoredPartials?.(), []);
  assert.deepEqual(await markers(reopened), []);
  const chunks: Uint8Array[] = [];
  for await (const chunk of reopened.readInstance((await reopened.getEntry('7.1'))!)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(bytes), 'the instance is whole');
});

/** Runs a fixture of ./fixtures in a child process until it prints `line`, then `killAfterMs` later kills it with SIGKILL. */
async function runFixtureUntilThenKill(fixtureName: string, args: string[], line: string, killAfterMs: number): Promise<void> {
  const fixture = fileURLToPath(new URL(`./fixtures/${fixtureName}`, import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${fixtureName} did not say "${line}" in time`)), 45_000);
    child.stdout.on('data', (chunk: Buffer) => {
      if (!chunk.toString().includes(line)) return;
      clearTimeout(timer);
      setTimeout(() => {
        child.kill('SIGKILL');
        resolve();
      }, killAfterMs);
    });
  });
  await new Promise((resolve) => child.once('exit', resolve));
}

/**
 * Opens the store at `path` after a kill, takes back its kept parts, and resumes the one of `uid` (from
 * 'peer-a') into `whole`, checking the SHA-256 over the whole at the commit. `stats`: the table before the resume.
 */
async function reopenAndResume(t: TestContext, path: string, uid: string, whole: Uint8Array) {
  const store = createReplicaStore({ path, chunkBytes: 64 * 1024 });
  await store.open();
  t.after(() => store.close());
  const partials = new PartialCopies(defaultPartialCopyLimits, systemClock, store);
  t.after(() => partials.stop());
  await partials.restore();
  const stats = partials.stats;
  const resumed = partials.take(uid, 'peer-a')!;
  assert.equal(resumed.offset, stats.bytes);
  await resumed.writer.write(whole.slice(resumed.offset));
  const committed = await resumed.writer.commit(uid, (info) => {
    assert.equal(info.sha256, createHash('sha256').update(whole).digest('hex'));
    return testCatalogEntry(uid)(info);
  });
  return { store, stats, committed };
}

test('partial copies: a part kept before a kill -9 comes back at the next open, and resumes into the whole instance (hunt 132)', { timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-partials-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'store');
  const keptBytes = 205_000;
  const whole = Uint8Array.from({ length: 400_000 }, (_, i) => (i * 7) & 0xff);
  // Killed while it writes another upload, never kept.
  await runFixtureUntilThenKill('keep-part-and-die.ts', [path, String(keptBytes)], 'kept', 200);
  const { store, stats, committed } = await reopenAndResume(t, path, '1.2.3.132.9', whole);
  assert.deepEqual(stats, { bytes: keptBytes, copies: 1 }, 'the part, its tail included');
  const chunks: Uint8Array[] = [];
  for await (const chunk of store.readInstance(committed.entry)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(whole));
  assert.equal(await uncommittedChunks(store), 0, 'the upload that was never kept is gone');
});

test('partial copies: a large copy arriving at a kill -9 (never cut) keeps what it marked, and resumes into the whole instance; a small one writes no marker (hunt 140)', { timeout: 60_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-partials-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const whole = Uint8Array.from({ length: 20_000_000 }, (_, i) => (i * 7) & 0xff);
  const arriveAndDie = (path: string, arrivedBytes: number) => runFixtureUntilThenKill('arrive-and-die.ts', [path, String(arrivedBytes)], 'arrived', 0);
  const path = join(dir, 'store');
  await arriveAndDie(path, 12_000_000);
  const { store, stats, committed } = await reopenAndResume(t, path, '1.2.3.140.9', whole);
  // Marked once, at 8 MiB: the chunks flushed by then (the writer's pending tail is not in them).
  assert.equal(stats.copies, 1, 'the copy cut by the kill comes back');
  assert.ok(stats.bytes >= 8 * 1024 * 1024 - 64 * 1024 && stats.bytes <= 8 * 1024 * 1024 + 100_000, `kept ${stats.bytes} bytes`);
  assert.equal(committed.outcome, 'stored');
  assert.equal(await uncommittedChunks(store), 0, 'the chunks after the marker were deleted at the open');
  assert.deepEqual(await markers(store), [], 'the commit deleted the marker');

  // Below progressMarkBytes nothing is marked: nothing kept, nothing left.
  const smallPath = join(dir, 'small');
  await arriveAndDie(smallPath, 8_000_000);
  const small = createReplicaStore({ path: smallPath, chunkBytes: 64 * 1024 });
  await small.open();
  t.after(() => small.close());
  assert.deepEqual(small.restoredPartials?.(), []);
  assert.equal(await uncommittedChunks(small), 0);
});

test("partial copies: a copy arriving's write function hands back the writer's own promise between marks, and writes the marker before settling at one (hunt 146, hunt 154)", async (t) => {
  const store = await openStore(t);
  const partials = new PartialCopies(defaultPartialCopyLimits, systemClock, store);
  t.after(() => partials.stop());
  const writer = store.beginWrite();
  // The promise of each write the writer makes: between marks the caller must await that one and no other.
  let lastWrite: Promise<void> | undefined;
  const write = writer.write.bind(writer);
  writer.write = (data) => (lastWrite = write(data));
  const writePiece = partials.progressWriter('7.2', 'peer-a', writer);
  const piece = new Uint8Array(1024 * 1024);
  for (let i = 0; i < progressMarkBytes / piece.byteLength - 1; i++) {
    const written = writePiece(piece);
    assert.equal(written, lastWrite, `no promise of its own after ${i + 1} MiB`);
    await written;
  }
  assert.deepEqual(await markers(store), [], 'no marker short of progressMarkBytes');
  const marking = writePiece(piece);
  assert.notEqual(marking, lastWrite, 'at progressMarkBytes the marker is written too');
  await marking;
  assert.equal((await markers(store)).length, 1, 'the marker is there once the write settles');
  // The next mark is progressMarkBytes further on.
  for (let i = 0; i < progressMarkBytes / piece.byteLength - 1; i++) {
    const written = writePiece(piece);
    assert.equal(written, lastWrite);
    await written;
  }
  assert.equal((await markers(store)).length, 1);
  await writer.abort();
});

test('partial copies: a resumed copy marks its progress every progressMarkBytes from where it resumed, as before progressWriter (hunt 154, hunt 157)', async (t) => {
  const store = await openStore(t);
  const partials = new PartialCopies(defaultPartialCopyLimits, systemClock, store);
  t.after(() => partials.stop());
  const piece = new Uint8Array(1024 * 1024);
  const cut = store.beginWrite();
  for (let i = 0; i < 3; i++) await cut.write(piece);
  // Cut after 3 MiB and kept; the same peer's next offer resumes it.
  partials.keep('7.3', 'peer-a', cut);
  const resumed = partials.take('7.3', 'peer-a');
  assert.equal(resumed?.offset, 3 * piece.byteLength);
  const writer = resumed!.writer;
  const markedAt: number[] = [];
  const markProgress = writer.markProgress!.bind(writer);
  writer.markProgress = (record) => (markedAt.push(writer.bytesWritten), markProgress(record));
  const write = partials.progressWriter('7.3', 'peer-a', writer);
  for (let i = 0; i < (2 * progressMarkBytes) / piece.byteLength + 1; i++) await write(piece);
  assert.deepEqual(markedAt, [3 * piece.byteLength + progressMarkBytes, 3 * piece.byteLength + 2 * progressMarkBytes]);
  await writer.abort();
});

test("partial copies: a kept part's marker puts no key beyond the blobs in the blob database, so its tables still move down LevelDB's levels without being rewritten (hunt 135)", async (t) => {
  const { store, path } = await storeToRestart(t);
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, keptMs: 60_000 }, systemClock, store);
  const writer = store.beginWrite();
  await writer.write(randomBytes(40_000));
  partials.keep('6.1', 'peer-a', writer);
  for (let deadline = Date.now() + 5_000; (await markers(store)).length === 0; await new Promise((r) => setTimeout(r, 10))) {
    assert.ok(Date.now() < deadline, 'the marker is written');
  }
  // Blobs written after the cut: the reopening writes them, with whatever the log holds, into a table.
  for (const uid of ['6.2', '6.3']) {
    const other = store.beginWrite();
    await other.write(randomBytes(20_000));
    await other.commit(uid, testCatalogEntry(uid));
  }
  await partials.stop();
  const reopened = await reopenStore(t, store, path);
  const tables = blobDbProperty(reopened, 'leveldb.sstables');
  // One line per table: " <number>:<size>['<smallest key>' @ <seq> : <type> .. '<largest key>' @ <seq> : <type>]".
  const ranges = [...tables.matchAll(/\['(.*?)' @ \d+ : \d+ \.\. '(.*?)' @ \d+ : \d+\]/g)].map(([, smallest, largest]) => ({ smallest: smallest!, largest: largest! }));
  assert.ok(ranges.some((range) => range.smallest.startsWith('b!')), `a table of blob keys was written at the reopening: ${tables}`);
  assert.deepEqual(ranges.filter((range) => range.smallest.startsWith('b!') && !range.largest.startsWith('b!')), [], `no table spans from blob keys to a key after them: ${tables}`);
  assert.deepEqual(reopened.restoredPartials?.().map((part) => [part.sopInstanceUid, part.bytes]), [['6.1', 40_000]], 'the part is still kept');
});

test('partial copies: a stop while kept parts are taken back at start leaves the rest in the store for the next open, neither read back nor dropped (hunt 137)', async (t) => {
  const { store, path } = await storeToRestart(t);
  const limits = { ...defaultPartialCopyLimits, keptMs: 60_000 };
  const before = new PartialCopies(limits, systemClock, store);
  for (const uid of ['8.1', '8.2', '8.3']) {
    const writer = store.beginWrite();
    await writer.write(randomBytes(50_000));
    before.keep(uid, 'peer-a', writer);
  }
  await before.stop();
  const reopened = await reopenStore(t, store, path);
  // Stopped (a SIGTERM) just after the start began taking the parts back.
  const stopping = new PartialCopies(limits, systemClock, reopened);
  const restoring = stopping.restore();
  await stopping.stop();
  await restoring;
  assert.equal((await markers(reopened)).length, 3, 'every part keeps its marker');
  const again = await reopenStore(t, reopened, path);
  const after = new PartialCopies(limits, systemClock, again);
  t.after(() => after.stop());
  await after.restore();
  assert.deepEqual(after.stats, { bytes: 150_000, copies: 3 }, 'all three come back at the next start');
});
