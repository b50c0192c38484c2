/**
 * A site restarted while the others are alive: the membership view starts empty, so a C-STORE in its first
 * moments was answered Success on its one local copy (the 'auto' quorum of a site alone) although the other
 * site was alive. It now waits for the sites it knew (at most 5 s after the start).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { runTool } from '../support/dicom-tools.ts';
import { eventually, newCluster } from './support.ts';

test('a C-STORE at a site just restarted is acknowledged once a second site holds it, as the write quorum asks', { timeout: 120_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const b = await cluster.start('site-b');
  await eventually(async () => (await a.status()).members?.filter((m) => m.alive).length === 2, 20_000, async () => JSON.stringify((await a.status()).members));
  const env = { TCP_NODELAY: '1' };
  // A store acknowledged before the kill: site-a has written that it knows site-b (unsynced, in LevelDB's
  // log before this synced store), so the restarted site-a waits for it. Killed a moment after it first met
  // site-b, it could restart knowing no other site and rightly answer on its one copy (a CI run failed so).
  const before = join(cluster.root, 'before.dcm');
  writeFileSync(before, makeInstanceWithInfo({ rows: 8, columns: 8 }).bytes);
  const storedBefore = await runTool('storescu', ['-aec', 'PACSMESH', '127.0.0.1', String(a.dicomPort), before], { env, timeoutMs: 30_000 });
  assert.equal(storedBefore.code, 0, storedBefore.stderr);
  await eventually(async () => (await b.status()).instances === 1, 20_000, async () => JSON.stringify(await b.status()));
  const ports = { dicom: a.dicomPort, http: a.httpPort, p2p: a.p2pPort };
  await a.kill9();
  const restarting = cluster.start('site-a', { dataDir: a.dataDir, bootstrap: [], ports });
  // The first association the restarted peer accepts.
  for (let i = 0; i < 300; i++) {
    if ((await runTool('echoscu', ['-aec', 'PACSMESH', '127.0.0.1', String(ports.dicom)], { env, timeoutMs: 20_000 })).code === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const file = join(cluster.root, 'early.dcm');
  const { bytes, resolved } = makeInstanceWithInfo({ rows: 8, columns: 8 });
  writeFileSync(file, bytes);
  const stored = await runTool('storescu', ['-v', '-aec', 'PACSMESH', '127.0.0.1', String(ports.dicom), file], { env, timeoutMs: 30_000 });
  assert.equal(stored.code, 0, `${stored.stdout.slice(-1500)}${stored.stderr.slice(-1500)}`);
  // Success means two sites hold it: site-b has it already, not only once the debt drains. Its count, not a
  // search: site-b may refuse searches for a moment while the restarted site-a rejoins (503, retry).
  const atB = await b.status();
  assert.equal(atB.instances, 2, `site-b does not hold the instance ${resolved.sopInstanceUid} acknowledged by the restarted site-a: ${JSON.stringify(atB.members)}\nstorescu: ${stored.stdout.slice(-1500)}${stored.stderr.slice(-1500)}\nsite-a: ${(await restarting).output().slice(-3000)}`);
  await restarting;
});
