import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Level } from 'level';
import { pack } from 'msgpackr';
import { NEWEST_OF_PATIENT_PREFIX, NEWEST_OF_STUDY_PATIENT_PREFIX, catalogDeleteOps, catalogWriteOps, heldInstanceBatches, newestInstances } from './catalog.ts';
import { STORE_FORMAT, createReplicaStore, type ReplicaStore } from './replica-store.ts';
import { createQueryStats, findMatches } from './query/query.ts';
import { blobDbProperty, countKeys, damageChunk, uncommittedChunks } from './fixtures/store-keys.ts';
import { cutPower, recordBlobWrites } from './fixtures/power-cut.ts';
import { testCatalogEntry } from './fixtures/test-entry.ts';

const entryFor = testCatalogEntry;

async function readAll(store: ReplicaStore, uid: string): Promise<Buffer> {
  const entry = await store.getEntry(uid);
  assert.ok(entry, `${uid} is stored`);
  const chunks: Uint8Array[] = [];
  for await (const chunk of store.readInstance(entry)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** The same bytes through readInstances (many per call), in the order asked. */
async function readAllMany(store: ReplicaStore, uids: readonly string[]): Promise<Buffer[]> {
  const entries = await store.getEntries(uids);
  const bodies: Buffer[] = [];
  for await (const { entry, chunks } of store.readInstances(entries.map((e) => e!))) {
    assert.equal(entry.sopInstanceUid, uids[bodies.length]);
    const parts: Uint8Array[] = [];
    for await (const chunk of chunks) parts.push(chunk);
    bodies.push(Buffer.concat(parts));
  }
  return bodies;
}

test('bytes come back exactly as written, across chunk boundaries, with their SHA-256', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 1000 });
  await store.open();
  const payload = Buffer.alloc(10_123).map((_, i) => (i * 7) & 0xff);
  const writer = store.beginWrite();
  for (let offset = 0; offset < payload.length; offset += 333) await writer.write(payload.subarray(offset, offset + 333));
  const result = await writer.commit('1.2.3.4', entryFor('1.2.3.4'));
  assert.equal(result.outcome, 'stored');
  assert.equal(result.entry.sha256, createHash('sha256').update(payload).digest('hex'));
  assert.deepEqual(await readAll(store, '1.2.3.4'), payload);
  assert.equal(await store.countInstances(), 1);
  await store.close();
});

test("the store's format marker stays in a table of its own: no table of blob keys spans later blobs, so flushed tables move down the levels without being rewritten", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 1000 });
  await store.open();
  for (const uid of ['1.2.3.81', '1.2.3.82']) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(2500, 3));
    await writer.commit(uid, entryFor(uid));
  }
  await store.close();
  // The reopening writes what the log held (the blobs above) into a table: it must not take the marker in.
  const reopened = createReplicaStore({ path: dir, chunkBytes: 1000 });
  await reopened.open();
  t.after(() => reopened.close());
  const tables = blobDbProperty(reopened, 'leveldb.sstables');
  // One line per table: " <number>:<size>['<smallest key>' @ <seq> : <type> .. '<largest key>' @ <seq> : <type>]".
  const ranges = [...tables.matchAll(/\['(.*?)' @ \d+ : \d+ \.\. '(.*?)' @ \d+ : \d+\]/g)].map(([, smallest, largest]) => ({ smallest: smallest!, largest: largest! }));
  assert.ok(ranges.some((range) => range.smallest.startsWith('b!')), `a table of blob keys was written at the reopening: ${tables}`);
  assert.deepEqual(
    ranges.filter((range) => range.smallest < 'm!store-format' && range.largest >= 'm!store-format'),
    [],
    `no table spans from blob keys to the marker: ${tables}`,
  );
  assert.deepEqual(await readAll(reopened, '1.2.3.82'), Buffer.alloc(2500, 3));
});

test('a pause in the ingest writes the blob memtable to its table and frees its memory; one holding less than 16 MiB stays', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, blobWriteBufferBytes: 64 * 1024 * 1024, blobIdleFlushAfterMs: 200 });
  await store.open();
  t.after(() => store.close());
  const property = (name: string): string => blobDbProperty(store, name);
  const blobTables = (): number => [...property('leveldb.sstables').matchAll(/\['b!/g)].length;
  const memtableBytes = (): number => Number(property('leveldb.approximate-memory-usage'));
  const storeMiB = async (uid: string, fill: number): Promise<void> => {
    const writer = store.beginWrite();
    for (let i = 0; i < 16; i++) await writer.write(Buffer.alloc(64 * 1024, fill));
    assert.equal((await writer.commit(uid, entryFor(uid))).outcome, 'stored');
  };
  await storeMiB('1.2.3.90', 1);
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(blobTables(), 0, `1 MiB stays in the memtable: ${property('leveldb.sstables')}`);
  // Each instance restarts the wait: none of the 24 stored one after another is flushed while they come.
  for (let i = 0; i < 24; i++) await storeMiB(`1.2.3.${100 + i}`, i);
  assert.equal(blobTables(), 0);
  assert.ok(memtableBytes() > 16 * 1024 * 1024, `the burst is in the memtable: ${memtableBytes()}`);
  const deadline = Date.now() + 10_000;
  while (blobTables() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(blobTables(), 1, `the pause wrote one table: ${property('leveldb.sstables')}`);
  assert.ok(memtableBytes() < 4 * 1024 * 1024, `its memory went back: ${memtableBytes()}`);
  assert.deepEqual(await readAll(store, '1.2.3.90'), Buffer.alloc(1024 * 1024, 1));
  assert.deepEqual(await readAll(store, '1.2.3.123'), Buffer.alloc(1024 * 1024, 23));
});

test('a second copy of a stored UID is not kept: duplicate, original bytes untouched', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const first = store.beginWrite();
  await first.write(Buffer.alloc(500, 1));
  await first.commit('1.2.3.5', entryFor('1.2.3.5'));
  // Two concurrent uploads of the same UID: one commit stores, the other sees a duplicate.
  const [a, b] = [store.beginWrite(), store.beginWrite()];
  await a.write(Buffer.alloc(500, 2));
  await b.write(Buffer.alloc(500, 3));
  const outcomes = await Promise.all([a.commit('1.2.3.5', entryFor('1.2.3.5')), b.commit('1.2.3.5', entryFor('1.2.3.5'))]);
  assert.deepEqual(outcomes.map((o) => o.outcome), ['duplicate', 'duplicate']);
  assert.deepEqual(await readAll(store, '1.2.3.5'), Buffer.alloc(500, 1));
  assert.equal(await countKeys(store, 'b!'), 1, 'only the first copy\'s chunk remains');
  // Several entries in one read, in the order asked, undefined where none is stored or the UID is invalid.
  const many = await store.getEntries(['9.9', '1.2.3.5', 'not a uid', '1.2.3.5']);
  assert.deepEqual(many.map((e) => e?.sopInstanceUid), [undefined, '1.2.3.5', undefined, '1.2.3.5']);
  assert.deepEqual(many[1], await store.getEntry('1.2.3.5'));
  await store.close();
});

test('commits running at once share batches: each new UID is stored once, a repeated one is a duplicate', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  // 150 commits (more than one combined batch holds), two of them for the same UID.
  const uids = Array.from({ length: 149 }, (_, i) => `1.2.8.${i}`).concat('1.2.8.7');
  const writers = uids.map(() => store.beginWrite());
  for (const [i, writer] of writers.entries()) await writer.write(Buffer.alloc(250, i & 0xff));
  const outcomes = await Promise.all(writers.map((writer, i) => writer.commit(uids[i]!, entryFor(uids[i]!))));
  assert.equal(outcomes.filter((o) => o.outcome === 'stored').length, 149);
  assert.equal(outcomes[149]!.outcome, 'duplicate');
  assert.equal(await store.countInstances(), 149);
  assert.deepEqual(await readAll(store, '1.2.8.7'), Buffer.alloc(250, 7), 'the first copy of the repeated UID is kept');
  assert.deepEqual(await readAll(store, '1.2.8.148'), Buffer.alloc(250, 148));
  assert.equal(await uncommittedChunks(store), 0, 'the duplicate left nothing behind');
  await store.close();
});

test('reads come back whole whatever chunk size wrote them, and a missing or surplus chunk is reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const payload = Buffer.alloc(5_000).map((_, i) => (i * 13) & 0xff);
  const small = createReplicaStore({ path: dir, chunkBytes: 100 });
  await small.open();
  for (const uid of ['1.2.9.1', '1.2.9.2', '1.2.9.3']) {
    const writer = small.beginWrite();
    for (let offset = 0; offset < payload.length; offset += 70) await writer.write(payload.subarray(offset, offset + 70));
    await writer.commit(uid, entryFor(uid));
  }
  assert.deepEqual(await readAll(small, '1.2.9.1'), payload, 'read with the chunk size that wrote it');
  assert.deepEqual(await readAllMany(small, ['1.2.9.1', '1.2.9.2']), [payload, payload]);
  await small.close();
  // Larger chunks now: the first keys are read directly, the rest with an iterator.
  const large = createReplicaStore({ path: dir, chunkBytes: 1_000 });
  await large.open();
  assert.deepEqual(await readAll(large, '1.2.9.1'), payload);
  assert.deepEqual(await readAllMany(large, ['1.2.9.1', '1.2.9.2']), [payload, payload]);
  const tamper = async (uid: string, op: (keys: string[]) => Promise<void>): Promise<void> => {
    const entry = (await large.getEntry(uid))!;
    const keys: string[] = [];
    for await (const key of large.blobDb.keys({ gte: `b!${entry.blobId}!`, lt: `b!${entry.blobId}!~` })) keys.push(key);
    await op(keys);
  };
  await tamper('1.2.9.2', (keys) => large.blobDb.del(keys[2]!));
  await assert.rejects(readAll(large, '1.2.9.2'), (error: Error & { code?: string }) => error.code === 'ERR_STORE_CORRUPT' && /misses chunk 2/.test(error.message));
  await assert.rejects(readAllMany(large, ['1.2.9.1', '1.2.9.2']), (error: Error & { code?: string }) => error.code === 'ERR_STORE_CORRUPT' && /misses chunk 2/.test(error.message));
  await tamper('1.2.9.3', (keys) => large.blobDb.put(keys[0]!, Buffer.alloc(170)));
  await assert.rejects(readAll(large, '1.2.9.3'), (error: Error & { code?: string }) => error.code === 'ERR_STORE_CORRUPT');
  await assert.rejects(readAllMany(large, ['1.2.9.3']), (error: Error & { code?: string }) => error.code === 'ERR_STORE_CORRUPT');
  await large.close();
  // Smaller chunks than the blob's: the direct reads find the end before their last key.
  const tiny = createReplicaStore({ path: dir, chunkBytes: 10 });
  await tiny.open();
  assert.deepEqual(await readAll(tiny, '1.2.9.1'), payload);
  assert.deepEqual(await readAllMany(tiny, ['1.2.9.1']), [payload]);
  await tiny.close();
});

test('readInstances gives many instances whole and in order: empty, small, multi-chunk, and one too large to read ahead', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 64 * 1024 });
  await store.open();
  // 3 MiB is above one read group (1 MiB): it streams; the 40 KB ones fill groups of many.
  const sizes = [0, 40_000, 200_000, 3 * 1024 * 1024, ...Array.from({ length: 80 }, () => 40_000), 1];
  const uids = sizes.map((_, i) => `1.2.77.${i + 1}`);
  const payloads = sizes.map((size, i) => Buffer.alloc(size).map((_, j) => (i * 31 + j * 7) & 0xff));
  for (const [i, uid] of uids.entries()) {
    const writer = store.beginWrite();
    for (let offset = 0; offset < payloads[i]!.length; offset += 50_000) await writer.write(payloads[i]!.subarray(offset, offset + 50_000));
    await writer.commit(uid, entryFor(uid));
  }
  const bodies = await readAllMany(store, uids);
  assert.equal(bodies.length, uids.length);
  for (const [i, body] of bodies.entries()) assert.ok(body.equals(payloads[i]!), `${uids[i]} (${sizes[i]} bytes) comes back whole`);
  await store.close();
});

test('debt updates made at once land in call order: the last op on an (instance, site) wins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir });
  await store.open();
  const owed = (sopInstanceUid: string, siteName: string) => ({ sopInstanceUid, siteName, sinceMs: 1 });
  const paid = (sopInstanceUid: string, siteName: string) => ({ sopInstanceUid, siteName });
  await store.updateDebt([owed('0.9', 'c')], []);
  const order: string[] = [];
  const steps = [
    store.updateDebt([owed('1.1', 'b'), owed('1.1', 'c')], []).then(() => order.push('first')),
    store.updateDebt([], [paid('1.1', 'b')]).then(() => order.push('second')),
    store.updateDebt([owed('1.2', 'b')], [paid('1.2', 'b')]).then(() => order.push('third')),
    store.updateDebt([owed('1.1', 'b')], [paid('0.9', 'c')]).then(() => order.push('fourth')),
  ];
  await Promise.all(steps);
  assert.deepEqual(order, ['first', 'second', 'third', 'fourth'], 'each call settles after the ones before it');
  assert.deepEqual((await store.listDebt()).map((d) => `${d.sopInstanceUid}/${d.siteName}`), ['1.1/b', '1.1/c']);
  // Damaged records (not MessagePack, or not a debt entry) are skipped and named, never thrown.
  await store.db.put('d!1.0!x', new Uint8Array([0xc1]));
  await store.db.put('d!1.05!y', new Uint8Array([0x80]));
  // A whole entry under a damaged key (hunt 169): loaded, it was owed again at every start, its payment deleting only its own key.
  await store.db.put('d!1.0\u00ff!b', (await store.db.get('d!1.1!b'))!);
  const damaged: string[] = [];
  assert.deepEqual((await store.listDebt((key) => damaged.push(key))).map((d) => `${d.sopInstanceUid}/${d.siteName}`), ['1.1/b', '1.1/c']);
  assert.deepEqual(damaged, ['d!1.0!x', 'd!1.05!y', 'd!1.0\u00ff!b']);
  await store.close();
});

test('known sites and tombstones persist across a reopen; a forgotten site turns into a tombstone, one heard again back into a known site; damaged records are skipped', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  let store = createReplicaStore({ path: dir });
  await store.open();
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 5 }, { siteName: 'site-c', lastHeardMs: 6 }, { siteName: 'site-d', lastHeardMs: 7 }], []);
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 70_000 }], [{ siteName: 'site-c', forgottenAtMs: 80_000 }, { siteName: 'site-d', forgottenAtMs: 80_001 }, { siteName: 'site-e', forgottenAtMs: 80_002 }, { siteName: 'site-f', forgottenAtMs: 80_003, byOperator: true }]);
  // site-d heard again (from a peer not settled yet), site-e's tombstone too old to pass on.
  await store.updateKnownSites([{ siteName: 'site-d', lastHeardMs: 90_000, unsettled: true }], [], ['site-d', 'site-e']);
  await store.db.put('k!site-x', new Uint8Array([0xc1]));
  await store.db.put('f!site-y', new Uint8Array(pack({ siteName: 'site-z', forgottenAtMs: 1 })));
  await store.close();
  store = createReplicaStore({ path: dir });
  await store.open();
  const damaged: string[] = [];
  assert.deepEqual(await store.listKnownSites((key) => damaged.push(key)), [{ siteName: 'site-b', lastHeardMs: 70_000 }, { siteName: 'site-d', lastHeardMs: 90_000, unsettled: true }]);
  // The operator's forgetting stays the operator's (only it takes the site's peers out of the rosters at once).
  assert.deepEqual(await store.listForgottenSites((key) => damaged.push(key)), [{ siteName: 'site-c', forgottenAtMs: 80_000 }, { siteName: 'site-f', forgottenAtMs: 80_003, byOperator: true }]);
  assert.deepEqual(damaged, ['k!site-x', 'f!site-y']);
  await store.close();
});

test('abort leaves nothing behind', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(1000, 9));
  await writer.abort();
  assert.equal(await countKeys(store, 'b!'), 0);
  assert.equal(await uncommittedChunks(store), 0);
  assert.equal(await store.countInstances(), 0);
  await store.close();
});

test('durability: every instance acknowledged before kill -9 is there after restart; the half-written upload is gone', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = fileURLToPath(new URL('./fixtures/store-and-die.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, dir, '20'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const acked: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('child did not finish writing in time')), 30_000);
    let buffered = '';
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        if (line.startsWith('acked ')) acked.push(line.slice(6));
        if (line === 'orphan written') {
          clearTimeout(timer);
          child.kill('SIGKILL');
          resolve();
        }
      }
    });
  });
  await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(acked.length, 20);
  const store = createReplicaStore({ path: dir });
  await store.open();
  for (const [i, uid] of acked.entries()) {
    const bytes = await readAll(store, uid);
    assert.equal(bytes.length, 250_000);
    assert.equal(bytes[0], i & 0xff);
  }
  assert.equal(await store.countInstances(), 20);
  assert.equal(await uncommittedChunks(store), 0, 'the half-written upload\'s chunks are gone after the open');
  assert.equal(await countKeys(store, 'b!'), 20 * 3, 'only committed chunks remain (5 writes of 50 kB cut at 64 KiB: 3 chunks each)');
  await store.close();
});

test('power cut after the synced blob commit: open() restores the catalog entry from the commit record', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  for (const uid of ['1.2.3.7', '1.2.3.8']) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(250, uid.length));
    await writer.commit(uid, entryFor(uid));
  }
  const lost = (await store.getEntry('1.2.3.8'))!;
  await store.close();
  // What a power cut can leave: the unsynced catalog write of the last commit gone, and the checkpoint
  // still from before it.
  const catalog = new Level<string, Uint8Array>(join(dir, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  await catalog.batch([...catalogDeleteOps(lost), { type: 'del', key: 'm!recovery-from' }]);
  await catalog.close();

  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  assert.deepEqual(await reopened.getEntry('1.2.3.8'), lost);
  assert.deepEqual(await readAll(reopened, '1.2.3.8'), Buffer.alloc(250, 7));
  assert.equal(await reopened.countInstances(), 2);
});

test('power cut after a LevelDB log switch: a commit found without all of its chunks is deleted unless the catalog lists it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  for (const uid of ['1.2.95.1', '1.2.95.2', '1.2.95.3']) {
    const writer = store.beginWrite();
    for (let i = 0; i < 5; i++) await writer.write(Buffer.alloc(100, 3));
    await writer.commit(uid, entryFor(uid));
  }
  const unlisted = (await store.getEntry('1.2.95.2'))!;
  const listed = (await store.getEntry('1.2.95.3'))!;
  // What the power cut leaves: a middle chunk of each gone (written before the switch, in the log LevelDB
  // closed unsynced), the commit records kept (synced in the new log), 1.2.95.2's unsynced catalog entry lost.
  await damageChunk(store, unlisted.blobId, 1, 'lose');
  await damageChunk(store, listed.blobId, 1, 'lose');
  await store.close();
  const catalog = new Level<string, Uint8Array>(join(dir, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  await catalog.batch([...catalogDeleteOps(unlisted), { type: 'del', key: 'm!recovery-from' }]);
  await catalog.close();

  const notices: string[] = [];
  const reopened = createReplicaStore({ path: dir, onOpenNotice: (message) => notices.push(message) });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.getEntry('1.2.95.2'), undefined, 'not listed with a hole in its bytes: it was never acknowledged');
  assert.equal(await countKeys(reopened, `b!${unlisted.blobId}`), 0, 'its chunks deleted');
  assert.deepEqual(await reopened.getEntry('1.2.95.3'), listed, 'a listed one stays for the scrub to replace');
  assert.deepEqual(await readAll(reopened, '1.2.95.1'), Buffer.alloc(500, 3));
  assert.match(notices.join('\n'), /a commit found without all of its chunks \(a power cut\): deleted/);
  assert.match(notices.join('\n'), /a listed instance is missing chunks: the scrub replaces it/);
});

test('power cut after an abort: chunks made durable by a later commit do not outlive the unsynced delete below the checkpoint', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100, checkpointIntervalMs: 10 });
  await store.open();
  const record = recordBlobWrites(store);
  const aborted = store.beginWrite();
  await aborted.write(Buffer.alloc(1000, 5));
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(150, 6));
  // Its synced batch makes the aborted upload's ten chunks durable (one log, in order).
  await writer.commit('1.2.96.1', entryFor('1.2.96.1'));
  await aborted.abort();
  assert.equal(await uncommittedChunks(store), 0);
  // The commit's checkpoint timer, then the close's checkpoint: neither may pass the upload whose delete is not durable.
  await new Promise((resolve) => setTimeout(resolve, 50));
  await store.close();
  assert.ok((await cutPower(dir, record)) > 0, 'the delete was not synced: the power cut undoes it');

  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await uncommittedChunks(reopened), 0, "the aborted upload's chunks are deleted at open, not kept below the checkpoint for good");
  assert.equal(await countKeys(reopened, 'b!'), 1, "the committed instance's one chunk");
  assert.deepEqual(await readAll(reopened, '1.2.96.1'), Buffer.alloc(150, 6));
});

test('a later commit makes an abort durable: the checkpoint passes it again, and a power cut leaves nothing of it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const record = recordBlobWrites(store);
  const aborted = store.beginWrite();
  await aborted.write(Buffer.alloc(1000, 5));
  await aborted.abort();
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(150, 6));
  await writer.commit('1.2.96.2', entryFor('1.2.96.2'));
  await store.close();
  assert.equal(await cutPower(dir, record), 0);
  const recoveryFrom = async () => {
    const catalog = new Level<string, Uint8Array>(join(dir, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    try {
      return Buffer.from((await catalog.get('m!recovery-from'))!).toString('utf8');
    } finally {
      await catalog.close();
    }
  };
  const committedBlobId = async () => {
    const reopened = createReplicaStore({ path: dir });
    await reopened.open();
    try {
      assert.equal(await uncommittedChunks(reopened), 0);
      return (await reopened.getEntry('1.2.96.2'))!.blobId;
    } finally {
      await reopened.close();
    }
  };
  assert.ok((await recoveryFrom()) > (await committedBlobId()), 'the checkpoint is past every blob: recovery reads nothing at the next open');
});

test('power cut after a repair: the bad copy it replaced is deleted for good (it lies below the checkpoint)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const writer = store.beginWrite();
  for (let i = 0; i < 4; i++) await writer.write(Buffer.alloc(100, 4));
  await writer.commit('1.2.96.3', entryFor('1.2.96.3'));
  const bad = (await store.getEntry('1.2.96.3'))!;
  await damageChunk(store, bad.blobId, 1, 'flip');
  await store.close();
  const reopenedOnce = createReplicaStore({ path: dir, chunkBytes: 100 });
  await reopenedOnce.open();
  const record = recordBlobWrites(reopenedOnce);
  assert.equal(await reopenedOnce.repairCopy(bad, [Buffer.alloc(400, 4)]), 'repaired');
  await reopenedOnce.close();
  await cutPower(dir, record);

  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  assert.notEqual((await reopened.getEntry('1.2.96.3'))!.blobId, bad.blobId);
  assert.equal(await countKeys(reopened, `b!${bad.blobId}`), 0, "the bad copy's chunks are gone");
  assert.equal(await reopened.blobDb.get(`b!${bad.blobId}!~`), undefined, 'and its commit record');
});

/** A fresh store in a temp directory (removed after the test) holding `uids`, each 150 bytes of `fill`. */
async function storeHolding(t: TestContext, uids: readonly string[], fill = 1): Promise<{ dir: string; store: ReplicaStore }> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  for (const uid of uids) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(150, fill));
    await writer.commit(uid, entryFor(uid));
  }
  return { dir, store };
}

/** Reopens the store in `dir`: its catalog must be set aside and rebuilt, holding `count` instances. */
async function assertCatalogRebuiltAtOpen(t: TestContext, dir: string, count: number): Promise<void> {
  const notices: string[] = [];
  const reopened = createReplicaStore({ path: dir, onOpenNotice: (message) => notices.push(message) });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.countInstances(), count);
  assert.match(notices.join('\n'), /found damaged: set aside, rebuilt/);
}

test('a catalog that lost its CURRENT file is set aside and rebuilt from the commit records, not opened empty', async (t) => {
  const uids = ['1.2.3.21', '1.2.3.22', '1.2.3.23'];
  const { dir, store: first } = await storeHolding(t, uids, 8);
  await first.close();
  // A second open moves the entries from the log into a table and checkpoints into the new log: the
  // state in which a lost CURRENT left only the checkpoint, so recovery skipped every commit record.
  const second = createReplicaStore({ path: dir });
  await second.open();
  await second.close();
  rmSync(join(dir, 'catalog', 'CURRENT'));

  const notices: Array<{ message: string; fields: Record<string, unknown> }> = [];
  const reopened = createReplicaStore({ path: dir, onOpenNotice: (message, fields) => notices.push({ message, fields }) });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.countInstances(), 3);
  for (const uid of uids) assert.deepEqual(await readAll(reopened, uid), Buffer.alloc(150, 8));
  assert.equal(notices.length, 1);
  assert.match(notices[0]!.message, /lost its CURRENT file/);
  assert.ok(readdirSync(dir).some((name) => name.startsWith('catalog.damaged-')), 'the damaged catalog is kept aside');
});

test('a catalog reported damaged while serving is set aside and rebuilt at the next open', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.31', '1.2.3.32']);
  const reasons: string[] = [];
  store.onCatalogDamage((reason) => reasons.push(reason));
  store.reportCatalogDamage('C-FIND: Corruption: corrupted compressed block contents');
  store.reportCatalogDamage('said once');
  assert.deepEqual(reasons, ['C-FIND: Corruption: corrupted compressed block contents']);
  await store.close();

  await assertCatalogRebuiltAtOpen(t, dir, 2);
  assert.ok(!readdirSync(dir).includes('catalog-damaged'), 'the mark is gone once rebuilt');
});

test('a catalog write LevelDB refuses with "Corruption" (a compaction met a damaged table: every later write fails so until a reopen) marks the catalog, which the next open rebuilds (hunt 172)', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.33']);
  const reasons: string[] = [];
  store.onCatalogDamage((reason) => reasons.push(reason));
  // classic-level's answer to every write once a compaction failed on a damaged block (seen with a table damaged on disk).
  const corruption = Object.assign(new Error('Corruption: corrupted compressed block contents'), { code: 'LEVEL_CORRUPTION' });
  const batch = store.db.batch.bind(store.db);
  store.db.batch = (() => Promise.reject(corruption)) as unknown as typeof store.db.batch;
  await assert.rejects(store.updateDebt([{ sopInstanceUid: '1.2.3.33', siteName: 'site-b', sinceMs: 1 }], []), /Corruption/);
  // Unmarked, every store and debt write was refused until a restart, and the restarted peer's compaction met the same table.
  assert.deepEqual(reasons, ['catalog write: Corruption: corrupted compressed block contents']);
  store.db.batch = batch;
  await store.close();
  await assertCatalogRebuiltAtOpen(t, dir, 1);
});

test('a catalog write refused as corrupt while the store opens: the catalog is rebuilt at once, and damage to the rebuilt one is reported again (hunt 172)', async (t) => {
  const { dir, store: first } = await storeHolding(t, ['1.2.3.34']);
  await first.close();
  const store = createReplicaStore({ path: dir });
  // The open's checkpoint write refused once, as a compaction that met a damaged table makes LevelDB do.
  const put = store.db.put.bind(store.db);
  let refusals = 1;
  store.db.put = ((...args: Parameters<typeof put>) => (refusals-- > 0 ? Promise.reject(Object.assign(new Error('Corruption: bad block'), { code: 'LEVEL_CORRUPTION' })) : put(...args))) as typeof store.db.put;
  await store.open();
  t.after(() => store.close());
  assert.equal(await store.countInstances(), 1);
  assert.ok(readdirSync(dir).some((name) => name.startsWith('catalog.damaged-')), 'set aside and rebuilt');
  const reasons: string[] = [];
  store.onCatalogDamage((reason) => reasons.push(reason));
  store.reportCatalogDamage('C-FIND: Corruption: later');
  assert.deepEqual(reasons, ['C-FIND: Corruption: later'], 'the report made before the rebuild does not silence those about the new catalog');
});

test('a blob database LevelDB finds corrupt while the open recovers (its blobs newer than the checkpoint) fails the open and leaves the catalog, which cannot mend it, in place (hunt 172)', async (t) => {
  const { dir, store: first } = await storeHolding(t, ['1.2.3.35']);
  await first.updateDebt([{ sopInstanceUid: '1.2.3.35', siteName: 'site-b', sinceMs: 1 }], []);
  await first.close();
  const store = createReplicaStore({ path: dir });
  const corruption = Object.assign(new Error('Corruption: corrupted internal key in DBIter'), { code: 'LEVEL_CORRUPTION' });
  const keys = store.blobDb.keys.bind(store.blobDb);
  store.blobDb.keys = (() => ({ [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(corruption) }) })) as unknown as typeof store.blobDb.keys;
  await assert.rejects(store.open(), /Corruption: corrupted internal key in DBIter/);
  // It was set aside (its debt, known sites and owed reports with it) and the retry failed the same way.
  assert.deepEqual(readdirSync(dir).filter((name) => name.startsWith('catalog')), ['catalog']);
  store.blobDb.keys = keys;
  await store.open();
  t.after(() => store.close());
  assert.equal((await store.listDebt()).length, 1);
});

test('a catalog directory gone altogether is rebuilt from the commit records, and said so', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.55', '1.2.3.56'], 4);
  await store.close();
  rmSync(join(dir, 'catalog'), { recursive: true });
  const notices: string[] = [];
  const reopened = createReplicaStore({ path: dir, onOpenNotice: (message) => notices.push(message) });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.countInstances(), 2);
  assert.match(notices.join('\n'), /the catalog was missing: rebuilt/);
});

test('a file where the catalog directory belongs is set aside and the catalog rebuilt (not a raw EEXIST at start)', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.58', '1.2.3.59'], 4);
  await store.close();
  rmSync(join(dir, 'catalog'), { recursive: true });
  writeFileSync(join(dir, 'catalog'), 'not a database');
  const notices: string[] = [];
  const reopened = createReplicaStore({ path: dir, onOpenNotice: (message) => notices.push(message) });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.countInstances(), 2);
  assert.match(notices.join('\n'), /the catalog was a file, not a directory: set aside, rebuilt/);
  assert.ok(readdirSync(dir).some((name) => name.startsWith('catalog.damaged-')));
});

test('a data directory deleted under the running store: the next commit is refused and the store faults, not acknowledged', async (t) => {
  const parent = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(parent, { recursive: true, force: true }));
  const dir = join(parent, 'store');
  const store = createReplicaStore({ path: dir, chunkBytes: 100, reopenAfterFaultMs: 60_000 });
  await store.open();
  t.after(() => store.close());
  const first = store.beginWrite();
  await first.write(Buffer.alloc(150, 1));
  await first.commit('1.2.3.41', entryFor('1.2.3.41'));
  rmSync(dir, { recursive: true, force: true });
  const second = store.beginWrite();
  await second.write(Buffer.alloc(150, 2));
  await assert.rejects(second.commit('1.2.3.42', entryFor('1.2.3.42')), /deleted or moved/);
  assert.match(store.writeFault ?? '', /deleted or moved/);
});

test('a catalog LevelDB finds corrupt at open (a damaged MANIFEST) is set aside and rebuilt, not a start that fails forever', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.51', '1.2.3.52'], 3);
  await store.close();
  const manifest = join(dir, 'catalog', readdirSync(join(dir, 'catalog')).find((name) => name.startsWith('MANIFEST-'))!);
  const bytes = readFileSync(manifest);
  for (let at = 8; at < bytes.length; at += 16) bytes[at]! ^= 0x5a;
  writeFileSync(manifest, bytes);

  await assertCatalogRebuiltAtOpen(t, dir, 2);
});

test('a catalog whose MANIFEST file is gone (a copy taken while the peer ran), or whose CURRENT names another file, is set aside and rebuilt too', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.53', '1.2.3.54'], 3);
  await store.close();
  const manifest = join(dir, 'catalog', readdirSync(join(dir, 'catalog')).find((name) => name.startsWith('MANIFEST-'))!);
  rmSync(manifest);
  await assertCatalogRebuiltAtOpen(t, dir, 2);

  const again = await storeHolding(t, ['1.2.3.57'], 3);
  await again.store.close();
  writeFileSync(join(again.dir, 'catalog', 'CURRENT'), 'garbage\n');
  await assertCatalogRebuiltAtOpen(t, again.dir, 1);
});

test('a catalog whose table file is cut short (helper 64: "IO error: ...ldb: Invalid argument" refused the start) is set aside and rebuilt; blobs so damaged are repaired, and what they lost is listed (hunt 183)', async (t) => {
  const { dir, store } = await storeHolding(t, ['1.2.3.58', '1.2.3.59'], 3);
  await store.close();
  // A reopen turns the log into a table file.
  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  await reopened.close();
  const tables = (sub: string) => readdirSync(join(dir, sub)).filter((name) => name.endsWith('.ldb'));
  assert.ok(tables('catalog').length > 0 && tables('blobs').length > 0, 'table files written');
  for (const table of tables('catalog')) truncateSync(join(dir, 'catalog', table), Math.floor(statSync(join(dir, 'catalog', table)).size / 2));
  await assertCatalogRebuiltAtOpen(t, dir, 2);

  const again = await storeHolding(t, ['1.2.3.60'], 3);
  await again.store.close();
  const blobsReopened = createReplicaStore({ path: again.dir });
  await blobsReopened.open();
  await blobsReopened.close();
  for (const table of readdirSync(join(again.dir, 'blobs')).filter((name) => name.endsWith('.ldb'))) truncateSync(join(again.dir, 'blobs', table), 100);
  const notices: string[] = [];
  const damaged = createReplicaStore({ path: again.dir, onOpenNotice: (message) => notices.push(message) });
  await damaged.open();
  t.after(() => damaged.close());
  assert.match(notices.join('\n'), /the instance database was repaired: 1 of 1 instances were lost/);
  assert.equal(await damaged.countInstances(), 0);
});

test('a store written before the held and search indexes gets them at open: custody load and count read the held index alone', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const expected: Array<{ sopInstanceUid: string; sha256: string }> = [];
  for (const uid of ['1.2.5.1', '1.2.5.2', '1.2.5.3']) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(150, uid.length));
    const { entry } = await writer.commit(uid, (info) => ({ ...entryFor(uid)(info), attributes: [{ tag: 0x00080020, vr: 'DA', value: '20240101' }, { tag: 0x00100010, vr: 'PN', value: 'Doe^John' }] }));
    expected.push({ sopInstanceUid: uid, sha256: entry.sha256 });
  }
  await store.close();
  // What an older version left: entries and indexes, no h!, x!newest!, x!name! or x!da! keys and no record that they were built.
  const catalog = new Level<string, Uint8Array>(join(dir, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  const ops: Array<{ type: 'del'; key: string }> = [{ type: 'del', key: 'm!held-index' }, { type: 'del', key: 'm!search-indexes!4' }];
  for await (const key of catalog.keys({ gte: 'h!', lt: 'h"' })) ops.push({ type: 'del', key });
  for await (const key of catalog.keys({ gte: 'x!newest!', lt: 'x!newest"' })) ops.push({ type: 'del', key });
  for await (const key of catalog.keys({ gte: 'x!name!', lt: 'x!name"' })) ops.push({ type: 'del', key });
  for await (const key of catalog.keys({ gte: 'x!da!', lt: 'x!da"' })) ops.push({ type: 'del', key });
  assert.equal(ops.length, 2 + 3 + 6 + 3 + 3);
  await catalog.batch(ops);
  await catalog.close();

  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.countInstances(), 3);
  const held = [];
  for await (const batch of heldInstanceBatches(reopened.db)) held.push(...batch);
  assert.deepEqual(held, expected);
  assert.notEqual(await reopened.db.get('m!held-index'), undefined, 'built once: the next open does not read every entry again');
  for (const prefix of [NEWEST_OF_STUDY_PATIENT_PREFIX, NEWEST_OF_PATIENT_PREFIX]) {
    const newest = [];
    for await (const instance of newestInstances(reopened.db, prefix)) newest.push(instance.sopInstanceUid);
    assert.deepEqual(newest, ['1.2.5.1'], `${prefix}: one study and one patient, all stored at 0: the smallest UID`);
  }
  assert.equal((await reopened.db.keys({ gte: 'x!name!', lt: 'x!name"' }).all()).length, 3, 'each instance under its name');
  assert.equal((await reopened.db.keys({ gte: 'x!da!', lt: 'x!da"' }).all()).length, 3, 'and its date');
  assert.notEqual(await reopened.db.get('m!search-indexes!4'), undefined);
});

test('entries an earlier build stored after this one had indexed (a rollback, then forward again) get their search-index keys at open', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const withName = (uid: string) => (info: { byteLength: number; sha256: string; blobId: string }) => ({
    ...entryFor(uid)(info),
    studyInstanceUid: `${uid}.0`,
    attributes: [{ tag: 0x00100010, vr: 'PN', value: `Name^${uid}` }],
  });
  const commit = async (store: ReplicaStore, uid: string) => {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(150, 7));
    await writer.commit(uid, withName(uid));
  };
  const openStore = async () => {
    const store = createReplicaStore({ path: dir, chunkBytes: 100 });
    await store.open();
    return store;
  };
  let store = await openStore();
  await commit(store, '1.2.6.1');
  await store.close();
  const catalogPath = join(dir, 'catalog');
  const rawCatalog = () => new Level<string, Uint8Array>(catalogPath, { keyEncoding: 'utf8', valueEncoding: 'view' });
  let catalog = rawCatalog();
  const checkpointAtClose = await catalog.get('m!search-indexes!4');
  assert.ok(checkpointAtClose !== undefined && checkpointAtClose.length > 0);
  await catalog.close();
  // The earlier build: it stores 1.2.6.2 without search-index keys and leaves the checkpoint as it found it.
  store = await openStore();
  await commit(store, '1.2.6.2');
  await store.close();
  catalog = rawCatalog();
  const searchKeysOf = async (uid: string) => (await catalog.keys({ gte: 'x!', lt: 'x"' }).all()).filter((key) => key.endsWith(`!${uid}`) && /^x!(newest|name|da|acc|mod)!/.test(key));
  const written = await searchKeysOf('1.2.6.2');
  assert.equal(written.length, 6, 'newest of study and patient, name, unknown StudyDate, AccessionNumber and Modality');
  await catalog.batch([...written.map((key) => ({ type: 'del' as const, key })), { type: 'put', key: 'm!search-indexes!4', value: checkpointAtClose }]);
  await catalog.close();

  store = await openStore();
  await store.close();
  catalog = rawCatalog();
  assert.deepEqual(await searchKeysOf('1.2.6.2'), written);
  await catalog.close();
});

test('a store whose search indexes an earlier build wrote (ASCII folding, x!pn!; x!newest!study!) gets this build\'s at open, and a rollback finds its own marker gone', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const uid = '1.2.8.1';
  let store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(150, 3));
  const utf8Name = Buffer.from('MÜLLER^JÜRGEN', 'utf8').toString('latin1');
  await writer.commit(uid, (info) => ({
    ...entryFor(uid)(info),
    attributes: [{ tag: 0x00080005, vr: 'CS', value: 'ISO_IR 192' }, { tag: 0x00100010, vr: 'PN', value: utf8Name }],
  }));
  await store.close();
  // As the earlier build left it: ASCII-folded forms under x!pn!, its own marker, none of this build's.
  const catalog = new Level<string, Uint8Array>(join(dir, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  const nameKeys = await catalog.keys({ gte: 'x!name!', lt: 'x!name"' }).all();
  assert.equal(nameKeys.length, 1);
  const checkpoint = (await catalog.get('m!search-indexes!4'))!;
  const legacyKey = `x!pn!${Buffer.from('mÜller^jÜrgen', 'utf8').toString('hex')}!${nameKeys[0]!.split('!').slice(3).join('!')}`;
  await catalog.batch([
    ...nameKeys.map((key) => ({ type: 'del' as const, key })),
    { type: 'del', key: 'm!search-indexes!4' },
    { type: 'put', key: 'm!search-indexes', value: checkpoint },
    { type: 'put', key: legacyKey, value: new Uint8Array(0) },
    { type: 'put', key: `x!newest!study!1.2.3!9005499254740991!${uid}`, value: new Uint8Array(0) },
  ]);
  await catalog.close();

  store = createReplicaStore({ path: dir });
  await store.open();
  const found = async (name: string): Promise<number> => {
    const stats = createQueryStats();
    let count = 0;
    for await (const _ of findMatches(store.db, { root: 'STUDY', level: 'STUDY', keys: [{ tag: 0x00100010, vr: 'PN', value: name }, { tag: 0x0020000d, vr: 'UI', value: '' }] }, { stats })) count++;
    assert.equal(stats.plan, 'index x!name! (PatientName)');
    return count;
  };
  assert.equal(await found('müller*'), 1, 'the folded form is indexed');
  assert.equal(await found('MÜLLER^JÜRGEN'), 1);
  assert.deepEqual(await store.db.keys({ gte: 'x!pn!', lt: 'x!pn"' }).all(), [], 'the earlier name index is gone');
  assert.deepEqual(await store.db.keys({ gte: 'x!newest!study!', lt: 'x!newest!study"' }).all(), [], 'and its newest index per study');
  assert.equal((await store.db.keys({ gte: 'x!newest!studypid!', lt: 'x!newest!studypid"' }).all()).length, 1, 'this one written');
  assert.equal(await store.db.get('m!search-indexes'), undefined, 'so that the earlier build, run again, indexes every entry itself');
  assert.notEqual(await store.db.get('m!search-indexes!4'), undefined);
  await store.close();
});

test('the count at open runs in the background from a snapshot: commits meanwhile are counted once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const first = createReplicaStore({ path: dir, chunkBytes: 100 });
  await first.open();
  // 5,000 catalog records (no bytes: the count reads the held index only), so the scan takes a while;
  // one instance with bytes, since a catalog without any blob is refused at open.
  for (let start = 0; start < 4999; start += 1000) {
    await first.db.batch(Array.from({ length: Math.min(1000, 4999 - start) }, (_, i) => catalogWriteOps(entryFor(`1.2.7.${start + i}`)({ byteLength: 0, sha256: 'ab'.repeat(32), blobId: 'none' }))).flat());
  }
  const writer = first.beginWrite();
  await writer.write(Buffer.alloc(10, 2));
  await writer.commit('1.2.7.80000', entryFor('1.2.7.80000'));
  await first.close();
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  t.after(() => store.close());
  // Committed while the count of the 5,000 may still run.
  for (const uid of ['1.2.7.90001', '1.2.7.90002']) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(10, 1));
    await writer.commit(uid, entryFor(uid));
  }
  assert.equal(await store.countInstances(), 5002);
});

test('a duplicate commit leaves no second blob, and a store in the old single-database layout is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  for (let i = 0; i < 2; i++) {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(300, i));
    assert.equal((await writer.commit('1.2.3.9', entryFor('1.2.3.9'))).outcome, i === 0 ? 'stored' : 'duplicate');
  }
  let blobs = 0;
  for await (const key of store.blobDb.keys()) if (key.endsWith('!~')) blobs++;
  assert.equal(blobs, 1, 'one commit record');
  assert.equal(await countKeys(store, 'b!'), 1, 'the first copy\'s one chunk only');
  await store.close();

  const old = new Level<string, Uint8Array>(join(dir, 'old'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  await old.open();
  await old.close();
  await assert.rejects(createReplicaStore({ path: join(dir, 'old') }).open(), { name: 'StoreError', code: 'ERR_STORE_LAYOUT' });
});

test('store format: a store without the marker (written before it) opens whole and gets it; one of a newer format is refused, left as it was', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // A store as the builds before the marker left it (6500cbf, 68a3ccb): the same records, no m!store-format.
  const notices: string[] = [];
  const store = createReplicaStore({ path: dir, chunkBytes: 100, onOpenNotice: (message) => notices.push(message) });
  await store.open();
  assert.deepEqual(notices, [], 'a new store opens without a word (the format is checked before the catalog is looked at)');
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(250, 7));
  await writer.commit('1.2.3.77', entryFor('1.2.3.77'));
  await store.blobDb.del('m!store-format');
  await store.close();

  const reopened = createReplicaStore({ path: dir, chunkBytes: 100 });
  await reopened.open();
  assert.deepEqual(await readAll(reopened, '1.2.3.77'), Buffer.alloc(250, 7));
  assert.equal(Buffer.from((await reopened.blobDb.get('m!store-format'))!).toString('utf8'), String(STORE_FORMAT), 'marked with this build\'s format');
  // What a later build of an incompatible format would leave behind.
  await reopened.blobDb.put('m!store-format', Buffer.from(String(STORE_FORMAT + 1), 'utf8'));
  await reopened.close();

  const catalogFiles = readdirSync(join(dir, 'catalog')).sort();
  await assert.rejects(createReplicaStore({ path: dir }).open(), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_STORE_FORMAT');
    assert.match(error.message, new RegExp(`store of format "${STORE_FORMAT + 1}", written by a newer pacs-mesh; this build reads format ${STORE_FORMAT} and earlier`));
    return true;
  });
  await assert.rejects(createReplicaStore({ path: dir }).open(), { code: 'ERR_STORE_FORMAT' }, 'and again: nothing was changed to make it open');
  assert.deepEqual(readdirSync(join(dir, 'catalog')).sort(), catalogFiles, 'the catalog is not set aside, opened or rewritten');
  const blobs = new Level<string, Uint8Array>(join(dir, 'blobs'), { keyEncoding: 'utf8', valueEncoding: 'view' });
  await blobs.open();
  assert.equal(Buffer.from((await blobs.get('m!store-format'))!).toString('utf8'), String(STORE_FORMAT + 1), 'the newer marker is kept');
  await blobs.close();
});

test('verifyInstance finds a flipped byte and a lost chunk; repairCopy puts good bytes back under the same entry', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  const payloads = new Map<string, Buffer>();
  for (const uid of ['1.2.6.1', '1.2.6.2', '1.2.6.3']) {
    const payload = Buffer.from(Buffer.alloc(350).map((_, i) => (i * uid.length + Number(uid.slice(-1))) & 0xff));
    payloads.set(uid, payload);
    const writer = store.beginWrite();
    for (let offset = 0; offset < payload.length; offset += 100) await writer.write(payload.subarray(offset, offset + 100));
    await writer.commit(uid, entryFor(uid));
  }
  const [flipped, lost, good] = (await store.getEntries(['1.2.6.1', '1.2.6.2', '1.2.6.3'])) as NonNullable<Awaited<ReturnType<ReplicaStore['getEntry']>>>[];
  await damageChunk(store, flipped!.blobId, 1, 'flip');
  await damageChunk(store, lost!.blobId, 2, 'lose');
  const suspects: string[] = [];
  store.onSuspectCopy((uid, reason) => suspects.push(`${uid}: ${reason}`));
  assert.deepEqual(await store.verifyInstance(good!), { ok: true });
  const flippedResult = await store.verifyInstance(flipped!);
  assert.equal(flippedResult.ok, false);
  assert.match((flippedResult as { reason: string }).reason, /SHA-256/);
  const lostResult = await store.verifyInstance(lost!);
  assert.equal(lostResult.ok, false);
  assert.match((lostResult as { reason: string }).reason, /misses chunk 2/);
  assert.deepEqual(suspects, [], 'verifying reports nothing: the scrub is the one asking');
  await assert.rejects(readAll(store, '1.2.6.2'), (error: unknown) => (error as { code?: string }).code === 'ERR_STORE_CORRUPT');
  assert.deepEqual(suspects, ['1.2.6.2: instance 1.2.6.2 misses chunk 2'], 'a read that finds a copy damaged reports it suspect');

  // Wrong bytes are refused and change nothing.
  await assert.rejects(
    store.repairCopy(flipped!, [Buffer.alloc(350, 9)]),
    (error: unknown) => (error as { code?: string }).code === 'ERR_STORE_REPLICA_MISMATCH',
  );
  assert.deepEqual(await store.getEntry('1.2.6.1'), flipped);
  assert.equal(await uncommittedChunks(store), 0, 'the refused copy left no chunks');

  // Good bytes replace the bad copy: same entry fields, a new blob, the bad one's chunks gone.
  const pieces = (uid: string) => [0, 100, 200, 300].map((offset) => payloads.get(uid)!.subarray(offset, offset + 100));
  assert.equal(await store.repairCopy(flipped!, pieces('1.2.6.1')), 'repaired');
  assert.equal(await store.repairCopy(lost!, pieces('1.2.6.2')), 'repaired');
  assert.equal(await store.repairCopy(lost!, pieces('1.2.6.2')), 'changed', 'the entry no longer names the bad copy');
  assert.equal(await countKeys(store, 'b!'), 3 * 4, 'three copies of four chunks: the bad copies and the refused and unneeded ones are gone');
  assert.equal(await store.countInstances(), 3, 'a repair is not a new instance');
  await store.close();

  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  for (const [uid, payload] of payloads) {
    const entry = (await reopened.getEntry(uid))!;
    assert.deepEqual(await reopened.verifyInstance(entry), { ok: true }, uid);
    assert.deepEqual(await readAll(reopened, uid), payload);
    const { blobId: _blobId, ...fields } = entry;
    const before = uid === '1.2.6.1' ? flipped! : uid === '1.2.6.2' ? lost! : good!;
    const { blobId: _beforeBlobId, ...fieldsBefore } = before;
    assert.deepEqual(fields, fieldsBefore);
  }
  assert.equal(await reopened.countInstances(), 3);
});

test('after a write fault and reopening, an upload begun before the fault is refused alone: commits batched with it still store', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100, reopenAfterFaultMs: 20 });
  await store.open();
  t.after(() => store.close());
  // An upload whose bytes were written before the fault (the reopening deletes its chunks).
  const stale = store.beginWrite();
  await stale.write(Buffer.alloc(150, 1));
  const reopened = new Promise<void>((resolve) => store.onWriteFault((event) => event.type === 'reopened' && resolve()));
  // A write fails with an I/O error (a full disk): the store faults, then reopens itself.
  const ioError = Object.assign(new Error('IO error: test: No space left on device'), { code: 'LEVEL_IO_ERROR' });
  await assert.rejects((store as unknown as { written(p: Promise<unknown>): Promise<unknown> }).written(Promise.reject(ioError)));
  const keepAlive = setInterval(() => undefined, 1000); // the reopening's timer is unref'd
  await reopened;
  clearInterval(keepAlive);
  const fresh = async (uid: string, fill: number) => {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(150, fill));
    return writer;
  };
  const writers = [];
  for (let i = 0; i < 6; i++) writers.push(await fresh(`1.2.3.6${i + 1}`, i + 2));
  await new Promise((resolve) => setTimeout(resolve, 100)); // every chunk written: the commits start in call order
  // The first goes alone; the stale upload and the others wait for it and share the next synced batch.
  const outcomes = await Promise.allSettled([
    writers[0]!.commit('1.2.3.61', entryFor('1.2.3.61')),
    stale.commit('1.2.3.60', entryFor('1.2.3.60')),
    ...writers.slice(1).map((writer, i) => writer.commit(`1.2.3.6${i + 2}`, entryFor(`1.2.3.6${i + 2}`))),
  ]);
  const text = outcomes.map((o) => (o.status === 'rejected' ? (o.reason as Error).message : o.value.outcome));
  assert.equal(outcomes[1]!.status, 'rejected', 'the upload cut off by the fault never commits');
  assert.deepEqual(text.filter((_, i) => i !== 1), Array(6).fill('stored'), 'stores begun after the reopening are refused because of another one');
  assert.ok(await store.getEntry('1.2.3.62'));
});

test('a damaged catalog record fails only the commit of its own UID, not the commits batched with it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir, chunkBytes: 100 });
  await store.open();
  t.after(() => store.close());
  const put = async (uid: string, fill: number) => {
    const writer = store.beginWrite();
    await writer.write(Buffer.alloc(150, fill));
    return writer;
  };
  await (await put('1.2.3.70', 1)).commit('1.2.3.70', entryFor('1.2.3.70'));
  // Its catalog record damaged on disk (a checked record whose CRC no longer matches).
  const record = Buffer.from((await store.db.get('c!i!1.2.3.70'))!);
  record[record.length - 1]! ^= 0xff;
  await store.db.put('c!i!1.2.3.70', record);
  const writers = [await put('1.2.3.71', 2), await put('1.2.3.70', 3), await put('1.2.3.72', 4), await put('1.2.3.73', 5)];
  await new Promise((resolve) => setTimeout(resolve, 100)); // every chunk written: the commits start in call order
  // The first goes alone; the others share the next synced batch (and its duplicate read).
  const outcomes = await Promise.allSettled(writers.map((writer, i) => writer.commit(['1.2.3.71', '1.2.3.70', '1.2.3.72', '1.2.3.73'][i]!, entryFor(['1.2.3.71', '1.2.3.70', '1.2.3.72', '1.2.3.73'][i]!))));
  const text = outcomes.map((o) => (o.status === 'rejected' ? (o.reason as Error).message : o.value.outcome));
  assert.equal(outcomes[1]!.status, 'rejected', 'the UID whose stored entry cannot be read is not stored again');
  assert.deepEqual([text[0], text[2], text[3]], ['stored', 'stored', 'stored'], 'other UIDs are refused for a record they do not touch');
});

test("a patient's newest storedAtMs follows the commits, an older replica's included, and the catalog after a reopening", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir });
  await store.open();
  const commitAt = async (uid: string, storedAtMs: number) => {
    const writer = store.beginWrite();
    await writer.write(Buffer.from(uid));
    await writer.commit(uid, (info) => ({ ...entryFor(uid)(info), storedAtMs }));
  };
  assert.equal(await store.newestStoredAtOfPatient('P'), undefined);
  await commitAt('1.2.3.1', 1_000);
  assert.equal(await store.newestStoredAtOfPatient('P'), 1_000);
  await commitAt('1.2.3.2', 5_000);
  // A replica dated before the newest (another site's clock): the newest stays.
  await commitAt('1.2.3.3', 2_000);
  assert.equal(await store.newestStoredAtOfPatient('P'), 5_000);
  await store.close();
  const reopened = createReplicaStore({ path: dir });
  await reopened.open();
  t.after(() => reopened.close());
  assert.equal(await reopened.newestStoredAtOfPatient('P'), 5_000);
});

test("a patient's newest storedAtMs read while a commit's catalog write is under way is not remembered (it may miss that commit)", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: dir });
  await store.open();
  t.after(() => store.close());
  // The catalog write of the commit below is held until the read has been answered without it.
  const catalogWrites = (store as unknown as { catalogWrites: { submit: (ops: unknown) => Promise<void> } }).catalogWrites;
  const submit = catalogWrites.submit.bind(catalogWrites);
  let release: () => void = () => undefined;
  let held: () => void = () => undefined;
  const writeHeld = new Promise<void>((resolve) => (held = resolve));
  catalogWrites.submit = async (ops) => {
    held();
    await new Promise<void>((resolve) => (release = resolve));
    return submit(ops);
  };
  const writer = store.beginWrite();
  await writer.write(Buffer.from('x'));
  const committed = writer.commit('1.2.3.9', (info) => ({ ...entryFor('1.2.3.9')(info), storedAtMs: 5_000 }));
  await writeHeld;
  assert.equal(await store.newestStoredAtOfPatient('P'), undefined, 'the catalog does not hold it yet');
  release();
  await committed;
  catalogWrites.submit = submit;
  assert.equal(await store.newestStoredAtOfPatient('P'), 5_000);
});
