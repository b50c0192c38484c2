/**
 * A site restored on an empty disk without --bootstrap (the operator forgot it, or it was the site the
 * others bootstrap from): the others dial its old address again and accept its new PeerId, so it refills;
 * meanwhile its C-FIND answers are refusals (0xA700, "retry") or the whole answer, never Success with
 * part of the matches (black-box helpers 40 and 41 saw Success with nothing, for good before the redial).
 */
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { runTool } from '../support/dicom-tools.ts';
import { eventually, startThreeSites, type PeerProcess } from './support.ts';

const env = { TCP_NODELAY: '1' };

test('a site restored on an empty disk without --bootstrap rejoins, and answers searches whole or not at all', { timeout: 120_000 }, async (t) => {
  const { cluster, a, c } = await startThreeSites(t);
  const count = 40;
  const study = await storeStudyHeldAtC(cluster.root, a, c, count);

  const ports = { dicom: c.dicomPort, http: c.httpPort, p2p: c.p2pPort };
  const oldPeerId = (await c.status()).self.peerId;
  await c.kill9();
  rmSync(c.dataDir, { recursive: true, force: true });
  const restarting = cluster.start('site-c', { dataDir: c.dataDir, bootstrap: [], ports });
  const answers: string[] = [];
  let whole = 0;
  // 100 tries once the site is up, however long its start takes: at load 20-29 a start took over 30 s, as
  // long as 100 tries of a port nobody listens on yet.
  let restarted = false;
  void restarting.then(() => (restarted = true), () => (restarted = true));
  for (let triesSinceUp = 0; triesSinceUp < 100 && whole < 5; triesSinceUp += restarted ? 1 : 0) {
    const r = await runTool('findscu', ['-v', '-S', '-aec', 'PACSMESH', '-k', 'QueryRetrieveLevel=IMAGE', '-k', `StudyInstanceUID=${study}`, '-k', 'SOPInstanceUID', '127.0.0.1', String(ports.dicom)], { env, timeoutMs: 20_000 });
    const out = r.stdout + r.stderr;
    // findscu -v: "Find Response: 1 (Pending)" per match, then "Received Final Find Response (Success)" or "(Refused: ...)".
    const status = /Received Final Find Response \(([^)]*)\)/.exec(out)?.[1];
    const matches = (out.match(/Find Response: \d+ \(Pending/g) ?? []).length;
    answers.push(status === undefined ? 'no answer (not listening yet?)' : `${status}, ${matches} matches`);
    if (status === 'Success') {
      assert.equal(matches, count, `a Success with part of the matches: ${answers.join('; ')}`);
      whole++;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await restarting;
  assert.ok(whole >= 5, `never answered whole: ${answers.join('; ')}`);
  const restored = cluster.peers.at(-1)!;
  const status = await restored.status();
  assert.notEqual(status.self.peerId, oldPeerId, 'a new identity');
  assert.equal(status.instances, count);
  assert.equal(status.members?.filter((m) => m.alive).length, 3, JSON.stringify(status.members));
});

test('a site refilling a small archive for longer than its first 5 s answers searches whole or not at all, all through the refill (hunt 187)', { timeout: 240_000 }, async (t) => {
  const { cluster, a, c } = await startThreeSites(t);
  // Under the balancer's refilling threshold (200 behind): the leader's table never marks the site.
  const count = 48;
  const study = await storeStudyHeldAtC(cluster.root, a, c, count);

  const ports = { dicom: c.dicomPort, http: c.httpPort, p2p: c.p2pPort };
  await c.kill9();
  rmSync(c.dataDir, { recursive: true, force: true });
  // 4 keys per repair exchange, one exchange every 2 s: the refill of 48 lasts well past the first 5 s, as a
  // larger small archive's (or a slower link's) would.
  const restored = await cluster.start('site-c', { dataDir: c.dataDir, ports, repairKeysMax: 4 });
  const answers: string[] = [];
  let whole = 0;
  let refused = 0;
  for (let tries = 0; tries < 400 && whole < 3; tries++) {
    const r = await runTool('findscu', ['-v', '-S', '-aec', 'PACSMESH', '-k', 'QueryRetrieveLevel=IMAGE', '-k', `StudyInstanceUID=${study}`, '-k', 'SOPInstanceUID', '127.0.0.1', String(ports.dicom)], { env, timeoutMs: 20_000 });
    const out = r.stdout + r.stderr;
    const status = /Received Final Find Response \(([^)]*)\)/.exec(out)?.[1];
    const matches = (out.match(/Find Response: \d+ \(Pending/g) ?? []).length;
    const held = (await restored.status()).instances;
    answers.push(`${status ?? 'no answer'}, ${matches} matches (${held} held)`);
    if (status === 'Success') {
      assert.equal(matches, count, `a Success with part of the matches: ${answers.join('; ')}`);
      whole++;
    } else refused++;
    // QIDO-RS too: refused (503, retry) or whole, never part of the study.
    const qido = await fetch(`http://127.0.0.1:${ports.http}/dicom-web/studies/${study}/instances`, { headers: { accept: 'application/dicom+json' }, redirect: 'manual' });
    const body = await qido.text();
    if (qido.status === 200) assert.equal((JSON.parse(body) as unknown[]).length, count, `QIDO-RS answered part of the study: ${answers.join('; ')}`);
    else assert.ok(qido.status === 503 || qido.status === 307, `QIDO-RS ${qido.status}: ${body}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.ok(whole >= 3, `never answered whole: ${answers.join('; ')}`);
  assert.ok(refused > 0, `never refused: ${answers.join('; ')}`);
  assert.equal((await restored.status()).instances, count);
});

test('a site forgotten at one peer is forgotten at every peer, one restored from a backup taken before the forgetting included', { timeout: 180_000 }, async (t) => {
  const { cluster, a, b, c } = await startThreeSites(t);
  const knows = async (peer: PeerProcess, site: string) => ((await peer.status()).custody?.knownSites ?? []).some((k) => k.site === site);
  const votersOf = async (peer: PeerProcess, site: string) => ((await peer.status()).balancer?.rosterMembers ?? []).filter((m) => m.site === site).length;
  const describe = (peer: PeerProcess) => async () => {
    const s = await peer.status();
    const members = s.members?.map((m) => `${m.site} ${m.alive ? 'alive' : 'down'}`);
    return `${peer.site} knows ${JSON.stringify(s.custody?.knownSites)}, voters ${JSON.stringify(s.balancer?.rosterMembers?.map((m) => m.site))}, members ${JSON.stringify(members)}\n${peer.output().slice(-3000)}`;
  };
  await eventually(async () => (await knows(b, 'site-c')) && (await votersOf(b, 'site-c')) === 1, 20_000, describe(b));
  // A backup of site-b, taken with the peer stopped, while site-c is still part of the mesh.
  const ports = { dicom: b.dicomPort, http: b.httpPort, p2p: b.p2pPort };
  const backup = join(cluster.root, 'site-b-backup');
  await b.stop();
  cpSync(b.dataDir, backup, { recursive: true });
  const b2 = await cluster.start('site-b', { dataDir: b.dataDir, ports });
  // site-b hears site-c in this run before site-c goes. /healthz answers before the peer has joined the
  // mesh: killed at once, site-c's heartbeats could all be gone before site-b joined, so site-b never listed
  // it at all, nor dead, and the wait below failed after 20 s with site-b still knowing site-c (from its
  // disk, as it should: a loaded machine, helper 92).
  await eventually(async () => (await b2.status()).members?.some((m) => m.site === 'site-c' && m.alive) === true, 20_000, describe(b2));
  // site-c is decommissioned: the operator forgets it at one peer.
  const cPeerId = (await c.status()).self.peerId!;
  await c.kill9();
  // Down everywhere first: forget-site is refused where a peer of the site is alive. (A heartbeat of it
  // relayed late, after the forgetting, only delays the tombstone there: helper 92, see custody.)
  for (const peer of [a, b2]) await eventually(async () => (await peer.status()).members?.find((m) => m.site === 'site-c')?.alive === false, 20_000, describe(peer));
  const forgot = await fetch(`http://127.0.0.1:${a.httpPort}/api/forget-site?site=site-c`, { method: 'POST' });
  assert.equal(forgot.status, 200, await forgot.text());
  // site-b forgets it from site-a's heartbeats, copies and voters alike.
  await eventually(async () => !(await knows(b2, 'site-c')) && (await votersOf(b2, 'site-c')) === 0, 20_000, describe(b2));
  // Nor is it listed among the members any more (helper 64: listed dead until a restart).
  for (const peer of [a, b2]) await eventually(async () => !(await peer.status()).members?.some((m) => m.site === 'site-c'), 10_000, describe(peer));
  // site-b restored from the backup, which knows site-c: forgotten again there, from the others' heartbeats.
  await b2.stop();
  // Nor is its address kept, to be dialled at every start (written at the stop).
  assert.equal(savedAt(b2, cPeerId), false, 'site-c is still among the peers site-b saved');
  rmSync(b.dataDir, { recursive: true, force: true });
  cpSync(backup, b.dataDir, { recursive: true });
  const restored = await cluster.start('site-b', { dataDir: b.dataDir, ports });
  await eventually(async () => !(await knows(restored, 'site-c')) && (await votersOf(restored, 'site-c')) === 0, 20_000, describe(restored));
  assert.match(restored.output(), /site forgotten: no copies are owed to it any more.*site-c/);
  assert.ok(await knows(restored, 'site-a'), 'the sites still there stay known');
  await Promise.all([restored.stop(), a.stop()]);
  assert.equal(savedAt(restored, cPeerId), false, 'site-c is still among the peers the restored site-b saved');
  assert.equal(savedAt(a, cPeerId), false, 'site-c is still among the peers site-a (where it was forgotten) saved');
});

/** A study of `count` small instances stored at `a`, once `c` holds them all; returns its UID. */
async function storeStudyHeldAtC(root: string, a: PeerProcess, c: PeerProcess, count: number): Promise<string> {
  const dir = join(root, 'files');
  mkdirSync(dir);
  const study = `1.2.826.0.1.3680043.10.1453.98.${Date.now()}`;
  for (let i = 0; i < count; i++) writeFileSync(join(dir, `f${i}.dcm`), makeInstanceWithInfo({ rows: 8, columns: 8, study: { uid: study } }).bytes);
  const stored = await runTool('storescu', ['-aec', 'PACSMESH', '+sd', '127.0.0.1', String(a.dicomPort), dir], { env, timeoutMs: 60_000 });
  assert.equal(stored.code, 0, stored.stderr);
  await eventually(async () => (await c.status()).instances === count, 30_000, async () => `C holds ${(await c.status()).instances}`);
  return study;
}

/** Whether `peer`'s saved peer addresses (DIR/known-peers.json) name `peerId`. */
function savedAt(peer: PeerProcess, peerId: string): boolean {
  const saved = JSON.parse(readFileSync(join(peer.dataDir, 'known-peers.json'), 'utf8')) as { peers: Array<{ peerId: string }> };
  return saved.peers.some((p) => p.peerId === peerId);
}
