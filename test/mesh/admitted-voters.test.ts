/**
 * Admitted voters, the command's default (hunt 184, default since 2026-12-04; docs/mesh-algorithms.md, "Admitted
 * voters"): three real peers on the defaults, site-a founding the mesh (`--found-mesh auto`: its first start without
 * --bootstrap), site-b and site-c joining through it. The founder leads alone, admits the two others one at a time
 * (each peer's /api/mesh `balancer.voters`), and after a kill -9 of the leader the two survivors, both admitted, elect
 * a new leader among themselves in a higher term. Restarted with `--election-voters learnt`, the killed peer keeps the
 * mode (its election record holds the list), says so, and follows. And the founding `auto` cannot do: the same
 * --bootstrap list at every site (each names the others), where nobody founds until one site is restarted with
 * `--found-mesh yes`, which founds over its joiner's empty list. And a mesh of two sites, one restored on an empty disk:
 * the other has no majority of its two voters, and the operator's way out, a forget-peer of the lost identity, works
 * though the roster has already replaced it by its successor; or one decommissioned: `forget-site` of it at the other
 * takes its voter out at once, as forget-peer does. With three sites a restore needs no operator: the leader replaces
 * the lost identity by its successor. A site joining a mesh of two while one is down learns the mesh's voters from
 * the other (no leader to admit it, but it knows the mesh was founded), and is admitted once the down site is back.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import { agreedStatuses, describeElection, eventually, newCluster, untilAllAdmitted, type MeshCluster, type PeerProcess } from './support.ts';
import { getFreePort } from '../support/dicom-tools.ts';

/** Two sites on the defaults, site-a founding, both admitted. */
async function twoSitesAdmitted(t: Parameters<typeof newCluster>[0]): Promise<{ cluster: MeshCluster; a: PeerProcess; b: PeerProcess }> {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const b = await cluster.start('site-b');
  await untilAllAdmitted([a, b]);
  return { cluster, a, b };
}

/** `peer` killed (kill -9) and out of the cluster's peers, so that its disposal leaves it alone. */
async function killed(cluster: MeshCluster, peer: PeerProcess): Promise<void> {
  await peer.kill9();
  cluster.release(peer);
}

/** `peer` stopped (SIGTERM) and out of the cluster's peers, to be started again on its data directory. */
async function stopped(cluster: MeshCluster, peer: PeerProcess): Promise<void> {
  await peer.stop();
  cluster.release(peer);
}

/** `peer`'s site killed and restored on an empty disk (a new PeerId) at its old addresses, joining through `via`. */
async function restoredOnEmptyDisk(cluster: MeshCluster, peer: PeerProcess, via: PeerProcess): Promise<PeerProcess> {
  await killed(cluster, peer);
  rmSync(peer.dataDir, { recursive: true, force: true });
  return cluster.start(peer.site, { ports: samePorts(peer), bootstrap: (await via.status()).self.multiaddrs!.slice(0, 1) });
}

function samePorts(peer: PeerProcess): { dicom: number; http: number; p2p: number } {
  return { dicom: peer.dicomPort, http: peer.httpPort, p2p: peer.p2pPort };
}

test('admitted voters (the defaults): the first site founds and leads alone, admits the two others, and after a kill -9 of the leader the survivors elect one of them', { timeout: 180_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const aId = (await a.status()).self.peerId!;
  await eventually(async () => (await a.status()).leader?.peerId === aId, 30_000, async () => JSON.stringify((await a.status()).balancer));
  assert.deepEqual((await a.status()).balancer?.voters?.peers, [aId], 'the founder alone');
  const [b, c] = await Promise.all([cluster.start('site-b'), cluster.start('site-c')]);
  const peers = [a, b, c];
  const ids = (await Promise.all(peers.map(async (p) => (await p.status()).self.peerId!))).sort();
  // Every peer holds the same list of all three (two admissions, each committed before the next), and follows one leader.
  await untilAllAdmitted(peers);
  const before = (await a.status()).leader!;
  const voters = (await a.status()).balancer!.voters!;
  assert.ok(voters.seq >= 2, `two admissions at least: ${JSON.stringify(voters)}`);
  const leader = peers.find((p) => p.site === before.site)!;
  await leader.kill9();
  const survivors = peers.filter((p) => p !== leader);
  await eventually(async () => {
    const now = (await agreedStatuses(survivors))?.[0]?.leader;
    return now != null && now.term > before.term && now.peerId !== before.peerId && ids.includes(now.peerId);
  }, 60_000, () => describeElection(survivors));
  const after = (await survivors[0]!.status()).balancer?.voters;
  t.diagnostic(`voters ${JSON.stringify(voters)}; leader ${before.site} term ${before.term} killed; then ${JSON.stringify((await survivors[0]!.status()).leader)}`);
  assert.deepEqual(after?.peers, ids, 'the killed leader is still a voter (not forgotten): two of three elect');
  // The mode is kept in the election record: the killed peer, restarted with learnt rosters asked, still holds the
  // list (the newest, from the new leader) and follows that leader; it says why in its log.
  const back = await cluster.start(leader.site, { dataDir: leader.dataDir, bootstrap: (await survivors[0]!.status()).self.multiaddrs!.slice(0, 1), extraArgs: ['--election-voters', 'learnt'] });
  const all = [...survivors, back];
  await untilAllAdmitted(all);
  assert.match(back.output(), /the election record holds admitted voters: this peer keeps them/);
});

test('the same --bootstrap list at every site founds nothing (each waits to be admitted, no leader); one site restarted with --found-mesh yes founds over its empty list, leads and admits the others', { timeout: 180_000 }, async (t) => {
  const cluster = await newCluster(t);
  const sites = ['site-a', 'site-b', 'site-c'];
  const ports = await Promise.all(sites.map(async () => ({ dicom: await getFreePort(), http: await getFreePort(), p2p: await getFreePort() })));
  // Addresses without their PeerId, as an operator writes them before any site has run: each names the site itself too.
  const bootstrap = ports.map((p) => `/ip4/127.0.0.1/tcp/${p.p2p}`);
  const peers = await Promise.all(sites.map((site, i) => cluster.start(site, { ports: ports[i]!, bootstrap })));
  await eventually(async () => (await Promise.all(peers.map((p) => p.status()))).every((s) => s.members?.filter((m) => m.alive).length === 3), 30_000, async () => JSON.stringify((await peers[0]!.status()).members));
  // Past the settle times (2 s) and a few vote timeouts: nobody founded, so nobody runs.
  await new Promise((r) => setTimeout(r, 5000));
  for (const s of await Promise.all(peers.map((p) => p.status()))) {
    assert.equal(s.leader ?? null, null, `${s.self.site} follows no leader`);
    assert.deepEqual(s.balancer?.voters?.peers, [], `${s.self.site} waits to be admitted`);
  }
  const [a] = peers;
  await stopped(cluster, a!);
  const founder = await cluster.start('site-a', { dataDir: a!.dataDir, ports: ports[0]!, bootstrap, extraArgs: ['--found-mesh', 'yes'] });
  const all = [founder, peers[1]!, peers[2]!];
  // Only site-a may found, so a list naming all three was founded there; the lead may pass on from it, as under load
  // (a 4-core busy loop beside the suite: site-c led term 3 with the founder's list), so any one leader will do.
  await untilAllAdmitted(all);
  assert.doesNotMatch(founder.output(), /--found-mesh yes ignored/);
});

test('two sites, one restored on an empty disk: the other lacks a majority of its voters until the operator forgets the lost identity, which the roster had replaced by its successor already; then it leads and admits the restored site', { timeout: 180_000 }, async (t) => {
  const { cluster, a, b } = await twoSitesAdmitted(t);
  const lostId = (await a.status()).self.peerId!;
  // Restored on an empty disk (a new PeerId) at its old addresses, joining through b, as the README says to.
  const restored = await restoredOnEmptyDisk(cluster, a, b);
  const restoredId = (await restored.status()).self.peerId!;
  // b replaces the lost identity by its successor in its roster, but its voters are still the two it admitted:
  // one of two alive is no majority, and nobody can admit the successor.
  await eventually(async () => (await b.status()).balancer?.rosterMembers?.some((m) => m.peerId === restoredId) === true, 30_000, async () => JSON.stringify((await b.status()).balancer));
  assert.ok((await b.status()).balancer?.voters?.peers.includes(lostId), 'the lost identity is still a voter');
  assert.equal((await b.status()).leader ?? null, null, 'no leader: one voter of two');
  // The way out b's warning names: forget the voter lost with its disk.
  const forget = await fetch(`http://127.0.0.1:${b.httpPort}/api/forget-peer?peer=${lostId}`, { method: 'POST' });
  assert.equal(forget.status, 200, await forget.text());
  await untilAllAdmitted([restored, b]);
  assert.deepEqual((await b.status()).balancer?.voters?.peers, [restoredId, (await b.status()).self.peerId!].sort());
});

test('two sites, one decommissioned: forget-site of it at the other takes its voter out at once (no leader could), and the other leads alone; the site back after all is admitted again', { timeout: 180_000 }, async (t) => {
  const { cluster, a, b } = await twoSitesAdmitted(t);
  const bId = (await b.status()).self.peerId!;
  await killed(cluster, a);
  await eventually(async () => (await b.status()).members?.find((m) => m.site === 'site-a')?.alive === false, 30_000, async () => JSON.stringify((await b.status()).members));
  const forget = await fetch(`http://127.0.0.1:${b.httpPort}/api/forget-site?site=site-a`, { method: 'POST' });
  assert.equal(forget.status, 200, await forget.text());
  await eventually(async () => (await b.status()).leader?.peerId === bId, 30_000, async () => JSON.stringify((await b.status()).balancer));
  assert.deepEqual((await b.status()).balancer?.voters?.peers, [bId], "site-a's voter is out");
  // Forgotten by mistake: site-a back on its data directory (its older list naming both) is admitted again.
  const back = await cluster.start('site-a', { dataDir: a.dataDir, ports: samePorts(a), bootstrap: (await b.status()).self.multiaddrs!.slice(0, 1) });
  await untilAllAdmitted([back, b], 90_000);
});

test('three sites, one restored on an empty disk: the leader replaces its lost identity in the voters by its successor, with no operator', { timeout: 180_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const [b, c] = await Promise.all([cluster.start('site-b'), cluster.start('site-c')]);
  await untilAllAdmitted([a, b, c]);
  const restored = await restoredOnEmptyDisk(cluster, c, a);
  // The two others are a majority of the three voters: the leader takes the lost identity out and admits its successor.
  await untilAllAdmitted([a, b, restored], 90_000);
});

test('a site joining a mesh of two while one of them is down learns its voters from the other (founded: never to be founded again), and is admitted once the down site is back', { timeout: 180_000 }, async (t) => {
  const { cluster, a, b } = await twoSitesAdmitted(t);
  const list = (await a.status()).balancer!.voters!.peers;
  const viaA = (await a.status()).self.multiaddrs!.slice(0, 1);
  await stopped(cluster, b);
  const c = await cluster.start('site-c', { bootstrap: viaA });
  // Before, c held the empty list of a joiner and advised founding the mesh again (a second mesh).
  await eventually(async () => JSON.stringify((await c.status()).balancer?.voters?.peers) === JSON.stringify(list), 30_000, async () => JSON.stringify((await c.status()).balancer));
  assert.equal((await c.status()).leader ?? null, null, 'no leader: one voter of two is alive');
  // Told to found now (its warning advised it before), it keeps the mesh's list rather than found a second mesh.
  await stopped(cluster, c);
  const again = await cluster.start('site-c', { dataDir: c.dataDir, ports: samePorts(c), bootstrap: viaA, extraArgs: ['--found-mesh', 'yes'] });
  assert.match(again.output(), /--found-mesh yes ignored/);
  assert.deepEqual((await again.status()).balancer?.voters?.peers, list);
  const back = await cluster.start('site-b', { dataDir: b.dataDir, ports: samePorts(b), bootstrap: viaA });
  await untilAllAdmitted([a, back, again], 90_000);
});
