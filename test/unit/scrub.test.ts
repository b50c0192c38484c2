/**
 * The scrub in a single-site peer (in process, real store, real HTTP port): a damaged copy is found and
 * reported; with no other site it is kept as it is. The mesh repair is in test/mesh/scrub.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startTestPeer } from '../support/peer-fixture.ts';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer } from '../../src/peer.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { testCatalogEntry } from '../../src/actors/storage/fixtures/test-entry.ts';
import { damageChunk } from '../../src/actors/storage/fixtures/store-keys.ts';
import { waitFor } from '../support/wait.ts';

async function scrubStats(httpPort: number): Promise<Record<string, number> & { busy?: boolean }> {
  const status = (await (await fetch(`http://127.0.0.1:${httpPort}/api/mesh`)).json()) as { scrub?: Record<string, number> & { busy?: boolean } };
  assert.ok(status.scrub, 'GET /api/mesh reports the scrub');
  return status.scrub;
}

test('POST /api/scrub starts a pass that finds a damaged copy; a single site reports it and keeps it', async (t) => {
  const peer = await startTestPeer(['--scrub-mb-per-s', '50']);
  t.after(() => peer.dispose());
  const uids = ['1.2.826.0.1.3680043.10.1453.77.1', '1.2.826.0.1.3680043.10.1453.77.2', '1.2.826.0.1.3680043.10.1453.77.3'];
  for (const uid of uids) {
    const writer = peer.store.beginWrite();
    for (let i = 0; i < 4; i++) await writer.write(Buffer.alloc(64 * 1024, uid.length + i));
    await writer.commit(uid, testCatalogEntry(uid));
  }
  const damaged = (await peer.store.getEntry(uids[1]!))!;
  await damageChunk(peer.store, damaged.blobId, 2, 'flip');

  assert.equal((await scrubStats(peer.httpPort)).passesCompleted, 0, 'no pass before the start delay');
  const wrongMethod = await fetch(`http://127.0.0.1:${peer.httpPort}/api/scrub`);
  assert.equal(wrongMethod.status, 405);
  const started = await fetch(`http://127.0.0.1:${peer.httpPort}/api/scrub`, { method: 'POST' });
  assert.equal(started.status, 202);
  await waitFor('a completed pass', async () => (await scrubStats(peer.httpPort)).passesCompleted >= 1, 10_000, 50);
  const stats = await scrubStats(peer.httpPort);
  assert.equal(stats.instancesVerified, 3);
  assert.equal(stats.bytesVerified, 3 * 4 * 64 * 1024);
  assert.equal(stats.badCopiesFound, 1);
  await waitFor('the repair attempt', async () => (await scrubStats(peer.httpPort)).copiesUnrepaired === 1, 5_000, 50);
  assert.deepEqual(await peer.store.getEntry(uids[1]!), damaged, 'kept as it is: no other site to take a good copy from');
  assert.equal(Buffer.from((await peer.store.db.get('m!scrub-cursor'))!).toString(), '', 'a finished pass clears the saved cursor');
});

test('a restarted peer resumes the scrub pass after the last page it read back', async (t) => {
  const first = await startTestPeer(['--scrub-mb-per-s', '50']);
  const uids = ['1.2.826.0.1.3680043.10.1453.78.1', '1.2.826.0.1.3680043.10.1453.78.2', '1.2.826.0.1.3680043.10.1453.78.3'];
  for (const uid of uids) {
    const writer = first.store.beginWrite();
    await writer.write(Buffer.alloc(1000, 7));
    await writer.commit(uid, testCatalogEntry(uid));
  }
  // What a run stopped after reading back the page that ended with the first instance leaves behind.
  await first.store.db.put('m!scrub-cursor', Buffer.from(uids[0]!));
  await first.stop();
  const args = ['--site', 'test', '--data', first.dataDir, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent', '--scrub-mb-per-s', '50'];
  const second = await startPeer(parseStartArgs(args), { log: silentLogger, shutdownGraceMs: 1000 });
  t.after(async () => {
    await second.stop();
    rmSync(first.dataDir, { recursive: true, force: true });
  });
  assert.equal((await fetch(`http://127.0.0.1:${second.httpPort}/api/scrub`, { method: 'POST' })).status, 202);
  await waitFor('the resumed pass', async () => (await scrubStats(second.httpPort)).passesCompleted >= 1, 10_000, 50);
  assert.equal((await scrubStats(second.httpPort)).instancesVerified, 2, 'the two instances after the saved cursor, not all three');
});

test('a read that finds a copy damaged (as a C-GET does) has the scrub check it at once, without waiting for a pass', async (t) => {
  const peer = await startTestPeer(['--scrub-mb-per-s', '50']);
  t.after(() => peer.dispose());
  const uid = '1.2.826.0.1.3680043.10.1453.79.1';
  const writer = peer.store.beginWrite();
  for (let i = 0; i < 3; i++) await writer.write(Buffer.alloc(64 * 1024, i));
  await writer.commit(uid, testCatalogEntry(uid));
  const entry = (await peer.store.getEntry(uid))!;
  await damageChunk(peer.store, entry.blobId, 1, 'lose');
  // What the C-GET and C-MOVE senders and the replication sender call to read a stored copy.
  await assert.rejects(async () => {
    for await (const _ of peer.store.readInstance(entry)) {
      // read on
    }
  }, (error: unknown) => (error as { code?: string }).code === 'ERR_STORE_CORRUPT');
  await waitFor('the suspect read back', async () => (await scrubStats(peer.httpPort)).suspectsVerified === 1, 10_000, 50);
  const stats = await scrubStats(peer.httpPort);
  assert.equal(stats.badCopiesFound, 1);
  assert.equal(stats.passesCompleted, 0, 'long before the first pass');
});

test('an instance stored without an association here (a copy from another site, STOW-RS) slows the scrub to its busy share for a while', async (t) => {
  const peer = await startTestPeer(['--scrub-mb-per-s', '50']);
  t.after(() => peer.dispose());
  await waitFor('a tick of the idle archive', async () => (await scrubStats(peer.httpPort)).busy === false, 5_000, 50);
  const uid = '1.2.826.0.1.3680043.10.1453.80.1';
  // What a pushed or batched copy's receiver does: a writer and its commit, no association anywhere.
  const writer = peer.store.beginWrite();
  await writer.write(Buffer.alloc(64 * 1024, 1));
  await writer.commit(uid, testCatalogEntry(uid));
  await waitFor('the scrub busy after the store', async () => (await scrubStats(peer.httpPort)).busy === true, 2_000, 20);
  await waitFor('the scrub idle again once stores stop', async () => (await scrubStats(peer.httpPort)).busy === false, 5_000, 50);
});

test('with --scrub-mb-per-s 0 the scrub is off and POST /api/scrub says so', async (t) => {
  const peer = await startTestPeer(['--scrub-mb-per-s', '0']);
  t.after(() => peer.dispose());
  const response = await fetch(`http://127.0.0.1:${peer.httpPort}/api/scrub`, { method: 'POST' });
  assert.equal(response.status, 409);
  assert.equal(((await response.json()) as { code: string }).code, 'ERR_SCRUB_OFF');
});
