/**
 * Damage in the blob database (the instance bytes), hunt 183: the open has LevelDB repair it and reconciles
 * the catalog with what the repair kept; a Corruption met while running marks it for that repair.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createReplicaStore, type ReplicaStore } from './replica-store.ts';
import { testCatalogEntry } from './fixtures/test-entry.ts';

const corruption = () => Object.assign(new Error('Corruption: bad entry in block'), { code: 'LEVEL_CORRUPTION' });

async function commit(store: ReplicaStore, uid: string): Promise<void> {
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(3000, uid.length));
  await writer.commit(uid, testCatalogEntry(uid));
}

async function openStore(dir: string, notices: string[] = []): Promise<ReplicaStore> {
  const store = createReplicaStore({ path: dir, chunkBytes: 1000, onOpenNotice: (message) => notices.push(message) });
  await store.open();
  return store;
}

/** The blob tables of `dir` (numbered files: the higher, the newer). */
function blobTables(dir: string): string[] {
  return readdirSync(join(dir, 'blobs')).filter((name) => name.endsWith('.ldb')).sort();
}

function newStoreDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-blob-repair-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a blob table cut short no longer fails every start: the open repairs the blob database, keeps the instances of the tables left whole, and lists those lost, which leave the catalog with their debt', async (t) => {
  const dir = newStoreDir(t);
  const older = ['1.2.183.1', '1.2.183.2', '1.2.183.3'];
  const newer = ['1.2.183.11', '1.2.183.12'];
  // Each group in a table of its own: a reopen turns the log into a table.
  let store = await openStore(dir);
  for (const uid of older) await commit(store, uid);
  await store.close();
  store = await openStore(dir);
  await store.close();
  const tablesOfOlder = blobTables(dir);
  store = await openStore(dir);
  for (const uid of newer) await commit(store, uid);
  await store.updateDebt([{ sopInstanceUid: newer[0]!, siteName: 'site-b', sinceMs: 1 }, { sopInstanceUid: older[0]!, siteName: 'site-b', sinceMs: 1 }], []);
  await store.close();
  store = await openStore(dir);
  await store.close();
  const newerTable = blobTables(dir).filter((name) => !tablesOfOlder.includes(name)).at(-1)!;
  assert.ok(newerTable, `a table of the newer instances: ${blobTables(dir).join(', ')}`);
  truncateSync(join(dir, 'blobs', newerTable), Math.floor(statSync(join(dir, 'blobs', newerTable)).size / 2));

  const notices: string[] = [];
  const repaired = await openStore(dir, notices);
  t.after(() => repaired.close());
  assert.match(notices.join('\n'), /the instance database \(blobs\/\) is damaged: LevelDB repairs it now/);
  assert.match(notices.join('\n'), /2 of 5 instances were lost and left the catalog \(listed in .*lost-instances-.*\.tsv\)/);
  assert.equal(await repaired.countInstances(), 3, 'the instances of the tables left whole');
  for (const uid of older) assert.ok(await repaired.getEntry(uid), `${uid} kept`);
  for (const uid of newer) assert.equal(await repaired.getEntry(uid), undefined, `${uid} left the catalog`);
  const report = repaired.blobRepair!;
  assert.deepEqual({ ...report, atMs: 0, lostListFile: undefined }, { atMs: 0, instancesChecked: 5, instancesLost: 2, lostListFile: undefined, commitRecordsRestored: 0 });
  const list = readFileSync(report.lostListFile!, 'utf8').trim().split('\n');
  assert.equal(list[0], 'sopInstanceUid\tstudyInstanceUid\tseriesInstanceUid\tpatientId\tstoredAt\treason');
  assert.deepEqual(list.slice(1).map((line) => line.split('\t')[0]).sort(), [...newer].sort());
  assert.deepEqual((await repaired.listDebt()).map((d) => d.sopInstanceUid), [older[0]], 'the debt of an instance no longer held goes with it');
  await repaired.close();

  const again: string[] = [];
  const next = await openStore(dir, again);
  t.after(() => next.close());
  assert.equal(await next.countInstances(), 3);
  assert.deepEqual(again, [], 'repaired once: the next start opens as usual');
  assert.equal(next.blobRepair, undefined);
});

test('a whole instance whose commit record the repair lost is kept and gets its record back; one that also lost a chunk leaves the catalog', async (t) => {
  const dir = newStoreDir(t);
  const uids = ['1.2.189.1', '1.2.189.2', '1.2.189.3'];
  const store = await openStore(dir);
  for (const uid of uids) await commit(store, uid);
  const [whole, cut] = [(await store.getEntry(uids[0]!))!, (await store.getEntry(uids[1]!))!];
  // What a repair that lost these records (and one of cut's chunks) leaves: the mark says repair at the next open.
  await store.blobDb.batch([{ type: 'del', key: `b!${whole.blobId}!~` }, { type: 'del', key: `b!${cut.blobId}!~` }, { type: 'del', key: `b!${cut.blobId}!00000000` }], { sync: true });
  store.reportBlobDamage('a test: records lost');
  await store.close();

  const notices: string[] = [];
  const repaired = await openStore(dir, notices);
  t.after(() => repaired.close());
  assert.match(notices.join('\n'), /1 of 3 instances were lost/);
  const report = repaired.blobRepair!;
  assert.deepEqual({ checked: report.instancesChecked, lost: report.instancesLost, restored: report.commitRecordsRestored }, { checked: 3, lost: 1, restored: 1 });
  assert.ok(await repaired.getEntry(uids[0]!), 'the whole one is kept');
  assert.equal(await repaired.getEntry(uids[1]!), undefined, 'the cut one left the catalog');
  assert.equal((await repaired.blobDb.keys({ gte: `b!${cut.blobId}!`, lt: `b!${cut.blobId}!~~` }).all()).length, 0, 'and its chunks went');
  let bytes = 0;
  for await (const chunk of repaired.readInstance((await repaired.getEntry(uids[0]!))!)) bytes += chunk.length;
  assert.equal(bytes, 3000);
  await repaired.close();
  const next = await openStore(dir);
  t.after(() => next.close());
  assert.equal(await next.countInstances(), 2, 'its commit record written again: a later open keeps it');
});

test('a repair the disk has no room for is refused before it starts, the mark kept: the next start with room repairs', async (t) => {
  const dir = newStoreDir(t);
  const store = await openStore(dir);
  await commit(store, '1.2.189.11');
  store.reportBlobDamage('a test: damage');
  await store.close();
  const full = createReplicaStore({ path: dir, chunkBytes: 1000, freeDiskBytesOf: async () => 1024 ** 2 });
  await assert.rejects(full.open(), { code: 'ERR_STORE_OPEN', message: /cannot repair the instance database in .*blobs: 1[5-9] MiB more free space needed \(its logs and its largest table, plus 16 MiB\)/ });
  await full.close().catch(() => undefined);
  assert.ok(existsSync(join(dir, 'blobs-damaged')), 'still marked');
  const notices: string[] = [];
  const repaired = await openStore(dir, notices);
  t.after(() => repaired.close());
  assert.match(notices.join('\n'), /repaired: all 1 instances are whole/);
});

test('a blob write LevelDB refuses as corrupt (a compaction met a damaged table) marks the blob database, refuses stores with a short reason, and the next open repairs it', async (t) => {
  const dir = newStoreDir(t);
  const store = await openStore(dir);
  await commit(store, '1.2.183.21');
  const reasons: string[] = [];
  store.onBlobDamage((reason) => reasons.push(reason));
  const batch = store.blobDb.batch;
  store.blobDb.batch = (() => Promise.reject(corruption())) as unknown as typeof store.blobDb.batch;
  await assert.rejects(commit(store, '1.2.183.22'), { code: 'ERR_STORE_DAMAGED', message: 'instance store damaged: restart the peer' });
  store.blobDb.batch = batch;
  // Refused from its first write on, as LevelDB would refuse it.
  const writer = store.beginWrite();
  await assert.rejects(writer.write(Buffer.alloc(10)), { code: 'ERR_STORE_DAMAGED' });
  await writer.abort().catch(() => undefined);
  assert.deepEqual(reasons, ['instance write: Corruption: bad entry in block'], 'reported once');
  assert.ok(existsSync(join(dir, 'blobs-damaged')), 'marked for the next start');
  await store.close();

  const notices: string[] = [];
  const repaired = await openStore(dir, notices);
  t.after(() => repaired.close());
  assert.match(notices.join('\n'), /LevelDB repairs it now[\s\S]*repaired: all 1 instances are whole/);
  assert.equal(await repaired.countInstances(), 1);
  assert.ok(!existsSync(join(dir, 'blobs-damaged')), 'the mark is gone once the catalog is reconciled');
  await commit(repaired, '1.2.183.23');
  assert.equal(await repaired.countInstances(), 2, 'stores again');
});

test('a blob read LevelDB answers with a Corruption marks the blob database for a repair at the next start', async (t) => {
  const dir = newStoreDir(t);
  const store = await openStore(dir);
  t.after(() => store.close());
  await commit(store, '1.2.183.31');
  const reasons: string[] = [];
  store.onBlobDamage((reason) => reasons.push(reason));
  store.blobDb.getMany = (() => Promise.reject(corruption())) as unknown as typeof store.blobDb.getMany;
  const entry = (await store.getEntry('1.2.183.31'))!;
  await assert.rejects(async () => {
    for await (const _ of store.readInstance(entry)) void _;
  }, /Corruption/);
  assert.deepEqual(reasons, ['read of 1.2.183.31: Corruption: bad entry in block']);
  assert.ok(existsSync(join(dir, 'blobs-damaged')));
});

test('catalogs set aside are kept to the newest 3, and the log says so', async (t) => {
  const dir = newStoreDir(t);
  let store = await openStore(dir);
  await commit(store, '1.2.183.41');
  const notices: string[] = [];
  for (let round = 0; round < 5; round++) {
    store.reportCatalogDamage(`round ${round}`);
    await store.close();
    // Names carry the time to the millisecond.
    await new Promise((resolve) => setTimeout(resolve, 5));
    store = await openStore(dir, notices);
  }
  t.after(() => store.close());
  assert.equal(readdirSync(dir).filter((name) => name.startsWith('catalog.damaged-')).length, 3);
  assert.equal(notices.filter((notice) => /deleted the oldest catalogs set aside: the newest 3 are kept/.test(notice)).length, 2);
  assert.equal(await store.countInstances(), 1);
});
