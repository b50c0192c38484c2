/**
 * A damaged table in the blob database (the instance bytes) failed every start, and the line said to start on
 * an empty data directory (hunt 172's gap). Now the start has LevelDB repair it, takes out of the catalog the
 * instances whose bytes it lost and lists them; a mesh site's repair refills them from the others (hunt 183).
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { runTool } from '../support/dicom-tools.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { eventually, newCluster, type MeshCluster, type MeshStatus, type PeerProcess } from './support.ts';

type StatusWithRepair = MeshStatus & { blobRepair?: { instancesChecked: number; instancesLost: number; lostListFile?: string } };

async function storeStudy(cluster: MeshCluster, peer: PeerProcess, count: number): Promise<void> {
  const dir = join(cluster.root, `files-${peer.site}`);
  mkdirSync(dir);
  const study = `2.25.183${Date.now()}`;
  for (let i = 0; i < count; i++) writeFileSync(join(dir, `f${i}.dcm`), makeInstanceWithInfo({ rows: 8, columns: 8, study: { uid: study } }).bytes);
  const stored = await runTool('storescu', ['-aec', 'PACSMESH', '+sd', '127.0.0.1', String(peer.dicomPort), dir], { env: { TCP_NODELAY: '1' }, timeoutMs: 60_000 });
  assert.equal(stored.code, 0, stored.stderr);
}

/** Stops the peer and cuts every table of its blob database in half, once its log has become a table. */
async function damageBlobTables(peer: PeerProcess): Promise<void> {
  await peer.stop();
  const storePath = join(peer.dataDir, 'store');
  const store = createReplicaStore({ path: storePath });
  await store.open();
  await store.close();
  const blobsDir = join(storePath, 'blobs');
  const tables = readdirSync(blobsDir).filter((name) => name.endsWith('.ldb'));
  assert.ok(tables.length > 0, 'the instances are in tables');
  for (const table of tables) truncateSync(join(blobsDir, table), Math.floor(statSync(join(blobsDir, table)).size / 2));
}

async function restart(cluster: MeshCluster, peer: PeerProcess, swarmKeyFile?: null): Promise<PeerProcess> {
  cluster.release(peer);
  const bootstrap = cluster.peers.some((p) => !p.process.hasExited) ? undefined : [];
  return cluster.start(peer.site, { dataDir: peer.dataDir, ports: { dicom: peer.dicomPort, http: peer.httpPort, p2p: peer.p2pPort }, bootstrap, ...(swarmKeyFile === null ? { swarmKeyFile } : {}) });
}

test('a mesh site whose blob tables are damaged starts, says what it lost, and gets it back from the other site through repair', { timeout: 180_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const b = await cluster.start('site-b');
  await eventually(async () => (await a.status()).members?.filter((m) => m.alive).length === 2, 20_000, async () => JSON.stringify((await a.status()).members));
  const count = 12;
  await storeStudy(cluster, a, count);
  await eventually(async () => (await b.status()).instances === count, 30_000, async () => `B holds ${(await b.status()).instances}`);

  await damageBlobTables(a);
  const repaired = await restart(cluster, a);
  assert.match(repaired.output(), /the instance database \(blobs\/\) is damaged: LevelDB repairs it now/);
  assert.match(repaired.output(), new RegExp(`the instance database was repaired: ${count} of ${count} instances were lost and left the catalog`));
  const report = ((await repaired.status()) as StatusWithRepair).blobRepair;
  assert.equal(report?.instancesLost, count, JSON.stringify(report));
  await eventually(async () => (await repaired.status()).instances === count, 60_000, async () => `A holds ${(await repaired.status()).instances} of ${count} again`);
});

test('a single site whose blob tables are damaged starts and lists the instances lost, in its log, in a file and in /api/mesh', { timeout: 120_000 }, async (t) => {
  const cluster = await newCluster(t);
  const alone = await cluster.start('alone', { swarmKeyFile: null });
  const count = 5;
  await storeStudy(cluster, alone, count);
  assert.equal((await alone.status()).instances, count);

  await damageBlobTables(alone);
  const repaired = await restart(cluster, alone, null);
  const status = (await repaired.status()) as StatusWithRepair;
  assert.equal(status.instances, 0, 'what was lost is no longer listed as held');
  assert.deepEqual({ ...status.blobRepair, lostListFile: undefined, atMs: undefined }, { instancesChecked: count, instancesLost: count, lostListFile: undefined, atMs: undefined, commitRecordsRestored: 0 });
  const listed = readFileSync(status.blobRepair!.lostListFile!, 'utf8').trim().split('\n');
  assert.equal(listed.length, 1 + count, 'a header, then one line per instance lost');
  assert.match(repaired.output(), new RegExp(`${count} of ${count} instances were lost and left the catalog \\(listed in ${status.blobRepair!.lostListFile}\\)`));
});
