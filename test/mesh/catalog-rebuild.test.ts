/**
 * A catalog rebuilt from the instances' commit records (custody's load met a damaged table: hunt 169) knows
 * no other site and owes nothing: the copies it owed must still reach the other sites, through repair.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { runTool } from '../support/dicom-tools.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { eventually, newCluster, type PeerProcess } from './support.ts';

test('instances a site alone held when its catalog was rebuilt (the debt to the other site gone with it) reach the other site through repair', { timeout: 180_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const b = await cluster.start('site-b');
  const aliveAt = async (peer: PeerProcess) => (await peer.status()).members?.filter((m) => m.alive).length ?? 0;
  await eventually(async () => (await aliveAt(a)) === 2, 20_000, async () => JSON.stringify((await a.status()).members));
  const restart = async (peer: PeerProcess): Promise<PeerProcess> => {
    cluster.release(peer);
    // The first back has no running site to bootstrap from; the second bootstraps from it.
    const bootstrap = cluster.peers.some((p) => !p.process.hasExited) ? undefined : [];
    return cluster.start(peer.site, { dataDir: peer.dataDir, ports: { dicom: peer.dicomPort, http: peer.httpPort, p2p: peer.p2pPort }, bootstrap });
  };

  // B down: A acknowledges each store on its one copy and owes it to B.
  await b.stop();
  await eventually(async () => (await aliveAt(a)) === 1, 30_000, async () => JSON.stringify((await a.status()).members));
  const dir = join(cluster.root, 'files');
  mkdirSync(dir);
  const study = `2.25.172${Date.now()}`;
  const count = 20;
  for (let i = 0; i < count; i++) writeFileSync(join(dir, `f${i}.dcm`), makeInstanceWithInfo({ rows: 8, columns: 8, study: { uid: study } }).bytes);
  const stored = await runTool('storescu', ['-aec', 'PACSMESH', '+sd', '127.0.0.1', String(a.dicomPort), dir], { env: { TCP_NODELAY: '1' }, timeoutMs: 60_000 });
  assert.equal(stored.code, 0, stored.stderr);
  await eventually(async () => (await a.status()).custody?.debtEntries === count, 20_000, async () => JSON.stringify((await a.status()).custody));

  // A stopped with its catalog marked, as custody's load leaves it on a damaged table (the unit tests damage real ones).
  await a.stop();
  const store = createReplicaStore({ path: join(a.dataDir, 'store') });
  await store.open();
  store.reportCatalogDamage('custody load: Corruption: corrupted compressed block contents');
  await store.close();
  const rebuilt = await restart(a);
  const after = await rebuilt.status();
  assert.equal(after.instances, count, 'every instance is in the rebuilt catalog');
  assert.deepEqual(after.custody, { ...after.custody, debtEntries: 0, knownSites: [] }, 'the debt and the sites known went with the damaged catalog');
  assert.match(rebuilt.output(), /the catalog was found damaged: set aside, rebuilt/);

  const returned = await restart(b);
  await eventually(async () => (await returned.status()).instances === count, 60_000, async () => `B holds ${(await returned.status()).instances} of ${count}; A: ${JSON.stringify((await rebuilt.status()).custody)}`);
});
