/**
 * A full disk: C-STOREs are refused with 0xA700 (the association goes on), and once space is freed the
 * store reopens itself and takes stores again, without a restart; every acknowledged instance is whole.
 * LevelDB refuses every write after a failed sync until it is reopened, so without the reopening a site
 * that filled its disk once refused all stores until an operator restarted it.
 *
 * Runs on a small tmpfs of its own, so it needs root (mount); skipped otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import '../../src/polyfill.ts';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer } from '../../src/peer.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { SopClass } from '../../src/actors/association/negotiation.ts';
import { createReplicaStore, type StoreFaultEvent } from '../../src/actors/storage/replica-store.ts';
import { testCatalogEntry } from '../../src/actors/storage/fixtures/test-entry.ts';
import { CATALOG_ENTRY_PREFIX, getCatalogEntries, keyBatches } from '../../src/actors/storage/catalog.ts';
import { openStoreClient } from '../support/peer-fixture.ts';
import { tmpfsOrSkip } from '../support/tmpfs.ts';
import { waitFor } from '../support/wait.ts';

/** On a 64 MB tmpfs, leaves ~18 MB for the store; freed, room for LevelDB to turn its log into a table at reopening. */
const ballastBytes = 46 * 1024 * 1024;

test('a full disk: C-STORE answers 0xA700, and the store writes again once space is freed, without a restart', async (t) => {
  const tmpfs = tmpfsOrSkip(t, 64 * 1024 * 1024);
  if (tmpfs === undefined) return;
  const { mountPoint } = tmpfs;
  // One hook, in this order: the peer must be gone before the filesystem can be unmounted.
  const cleanups: Array<() => unknown> = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    tmpfs.unmount();
  });
  const ballast = join(mountPoint, 'ballast');
  writeFileSync(ballast, Buffer.alloc(ballastBytes));
  const peer = await startPeer(
    parseStartArgs(['--site', 'full', '--data', join(mountPoint, 'data'), '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent', '--scrub-mb-per-s', '0']),
    { log: silentLogger, shutdownGraceMs: 1000 },
  );
  cleanups.push(() => peer.stop());
  const events: StoreFaultEvent[] = [];
  peer.store.onWriteFault((event) => events.push(event));

  const { client, otherContextId: echoContext, storeInstance } = await openStoreClient(peer.dicomPort, 'FILLER', SopClass.Verification);
  cleanups.push(() => client.release());
  const store = (n: number) => storeInstance({ rows: 256, columns: 256, sopInstanceUid: `1.2.826.0.1.3680043.10.1453.66.${n}`, instanceNumber: n });

  const acknowledged: string[] = [];
  let refused: { n: number; status: number | undefined; comment: string | undefined } | undefined;
  for (let n = 1; n <= 400 && refused === undefined; n++) {
    const reply = await store(n);
    if (reply.command.status === Status.Success) acknowledged.push(`1.2.826.0.1.3680043.10.1453.66.${n}`);
    else refused = { n, status: reply.command.status, comment: reply.command.errorComment };
  }
  assert.ok(refused, 'the filesystem never filled up');
  assert.equal(refused.status, Status.OutOfResources);
  assert.equal(refused.comment, 'storage failed: No space left on device');
  assert.ok(acknowledged.length > 50, `only ${acknowledged.length} instances fitted`);
  // The association was not aborted: it still answers.
  const echo = await client.request(echoContext, { commandField: CommandField.CEchoRq, affectedSopClassUid: SopClass.Verification, hasDataSet: false });
  assert.equal(echo.command.status, Status.Success);
  assert.equal(events[0]?.type, 'faulted');
  assert.ok(peer.store.writeFault);
  const status = (await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { storeFault?: string };
  assert.match(status.storeFault ?? '', /No space left/);
  // Reads go on while writes are refused: the store stays open until there is room to reopen it.
  await waitFor('a reopening attempt', () => events.some((e) => e.type === 'reopenFailed'), 10_000);
  const attempt = events.find((e) => e.type === 'reopenFailed');
  assert.match(attempt?.type === 'reopenFailed' ? attempt.error : '', /more free space needed/);
  const first = await peer.store.getEntry(acknowledged[0]!);
  assert.ok(first);
  assert.deepEqual(await peer.store.verifyInstance(first), { ok: true });
  // Still full: refused again, at once.
  const again = await store(refused.n);
  assert.equal(again.command.status, Status.OutOfResources);
  assert.match(again.command.errorComment ?? '', /^storage failed: "No space left on device": writes refused/);

  rmSync(ballast);
  await waitFor('the store to reopen after space was freed', () => events.some((e) => e.type === 'reopened'), 60_000);
  assert.equal(peer.store.writeFault, undefined);
  const retried = await store(refused.n);
  assert.equal(retried.command.status, Status.Success, retried.command.errorComment);
  acknowledged.push(`1.2.826.0.1.3680043.10.1453.66.${refused.n}`);
  assert.equal(await peer.store.countInstances(), acknowledged.length);
  for (const uid of acknowledged) {
    const entry = await peer.store.getEntry(uid);
    assert.ok(entry, `${uid} was acknowledged and is gone`);
    assert.deepEqual(await peer.store.verifyInstance(entry), { ok: true }, uid);
  }
});

test('an upload begun before a write fault never commits, even once the store has reopened; reads and scans go on throughout', async (t) => {
  const tmpfs = tmpfsOrSkip(t, 64 * 1024 * 1024);
  if (tmpfs === undefined) return;
  const { mountPoint } = tmpfs;
  const store = createReplicaStore({ path: join(mountPoint, 'store'), reopenAfterFaultMs: 50 });
  t.after(async () => {
    await store.close();
    tmpfs.unmount();
  });
  await store.open();
  const events: StoreFaultEvent[] = [];
  store.onWriteFault((event) => events.push(event));
  const ballast = join(mountPoint, 'ballast');
  writeFileSync(ballast, Buffer.alloc(ballastBytes));
  const piece = new Uint8Array(256 * 1024).fill(7);
  // Cut off by the fault: two chunks written before it, the commit tried after the reopening.
  const cutOff = store.beginWrite();
  await cutOff.write(piece);
  await cutOff.write(piece);
  // Fill the disk until a write fails.
  for (let n = 0; n < 400 && store.writeFault === undefined; n++) {
    const filler = store.beginWrite();
    try {
      for (let i = 0; i < 4; i++) await filler.write(piece);
      await filler.commit(`1.2.3.${n}`, testCatalogEntry(`1.2.3.${n}`));
    } catch {
      await filler.abort();
    }
  }
  assert.ok(store.writeFault, 'the filesystem never filled up');
  await assert.rejects(store.beginWrite().write(piece), { code: 'ERR_STORE_FAULTED' });
  // Reads go on throughout, also in the moment the reopening closes and opens the databases.
  const readFailures: string[] = [];
  let reads = 0;
  let reading = true;
  const reader = (async () => {
    while (reading) {
      try {
        const entry = await store.getEntry('1.2.3.0');
        assert.ok(entry, 'the first filler instance is stored');
        for await (const chunk of store.readInstance(entry)) assert.ok(chunk.byteLength > 0);
        // What a C-FIND does: scan an index by key batches, read the entries it names.
        let scanned = 0;
        for await (const keys of keyBatches(store.db, CATALOG_ENTRY_PREFIX, 8)) {
          const uids = keys.map((k) => k.slice(CATALOG_ENTRY_PREFIX.length));
          scanned += (await getCatalogEntries(store.db, uids)).filter((e) => e !== undefined).length;
        }
        assert.ok(scanned >= 1, 'the scan found the stored instances');
        reads++;
      } catch (error) {
        readFailures.push(String(error));
      }
      // A turn of the event loop per read, as a served client would give it.
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  rmSync(ballast);
  await waitFor('the store to reopen', () => events.some((e) => e.type === 'reopened'), 60_000);
  reading = false;
  await reader;
  assert.deepEqual(readFailures.slice(0, 3), []);
  assert.ok(reads > 0, 'the reads ran while the store reopened');
  await assert.rejects(cutOff.commit('1.2.3.999999', testCatalogEntry('1.2.3.999999')), { code: 'ERR_STORE_FAULTED' });
  assert.equal(await store.getEntry('1.2.3.999999'), undefined);
  const fresh = store.beginWrite();
  await fresh.write(piece);
  assert.equal((await fresh.commit('1.2.3.1000000', testCatalogEntry('1.2.3.1000000'))).outcome, 'stored');
});
