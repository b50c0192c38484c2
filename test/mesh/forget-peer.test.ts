/**
 * POST /api/forget-peer at one peer: the other peers, which take the forgetting from gossip, drop the peer's
 * saved address too (known-peers.json). Before, they kept it, and dialled it at every start.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { eventually, startThreeSites, type PeerProcess } from './support.ts';

/** The PeerIds `peer` saved in DIR/known-peers.json. */
function savedAt(peer: PeerProcess): string[] {
  const saved = JSON.parse(readFileSync(join(peer.dataDir, 'known-peers.json'), 'utf8')) as { peers: Array<{ peerId: string }> };
  return saved.peers.map((p) => p.peerId);
}

test('a peer forgotten at one peer leaves the saved addresses of the others, which take the forgetting from gossip', { timeout: 120_000 }, async (t) => {
  const { a, b, c } = await startThreeSites(t);
  const cPeerId = (await c.status()).self.peerId!;
  const describe = (peer: PeerProcess) => async () => `${peer.site}: voters ${JSON.stringify((await peer.status()).balancer?.rosterMembers)}, saved ${JSON.stringify(savedAt(peer))}\n${peer.output().slice(-2000)}`;
  // known-peers.json is written 1 s after a first change, then at most every 30 s: site-c connecting after b's first
  // write (a loaded machine) waits for the next one.
  await eventually(async () => savedAt(b).includes(cPeerId), 40_000, describe(b));
  await c.kill9();
  // Refused where it is still up: down at both first.
  for (const peer of [a, b]) await eventually(async () => (await peer.status()).members?.find((m) => m.site === 'site-c')?.alive === false, 20_000, describe(peer));
  const forgot = await fetch(`http://127.0.0.1:${a.httpPort}/api/forget-peer?peer=${cPeerId}`, { method: 'POST' });
  assert.equal(forgot.status, 200, await forgot.text());
  // b takes it out of its roster from a's gossip, and out of its saved addresses as well (written then).
  await eventually(async () => !((await b.status()).balancer?.rosterMembers ?? []).some((m) => m.peerId === cPeerId), 20_000, describe(b));
  await eventually(async () => !savedAt(b).includes(cPeerId), 10_000, describe(b));
  await Promise.all([a.stop(), b.stop()]);
  assert.deepEqual([savedAt(a).includes(cPeerId), savedAt(b).includes(cPeerId)], [false, false], 'c saved at a stop');
});

test('a peer down when forget-peer was asked takes it after its restart, from the republished forget (hunt 180)', { timeout: 300_000 }, async (t) => {
  // Forgets go out again every 2 s instead of every minute (PACS_MESH_FORGET_REPUBLISH_MS): the wait is for the republication, not its interval.
  const { cluster, a, b, c } = await startThreeSites(t, { forgetRepublishIntervalMs: 2_000 });
  const cPeerId = (await c.status()).self.peerId!;
  const voters = async (peer: PeerProcess) => ((await peer.status()).balancer?.rosterMembers ?? []).map((m) => m.peerId);
  const describe = (peer: PeerProcess) => async () => `${peer.site}: voters ${JSON.stringify(await voters(peer))}\n${peer.output().slice(-2000)}`;
  await eventually(async () => (await voters(b)).includes(cPeerId), 20_000, describe(b));
  await b.stop();
  await c.kill9();
  await eventually(async () => (await a.status()).members?.find((m) => m.site === 'site-c')?.alive === false, 20_000, describe(a));
  const forgot = await fetch(`http://127.0.0.1:${a.httpPort}/api/forget-peer?peer=${cPeerId}`, { method: 'POST' });
  assert.equal(forgot.status, 200, await forgot.text());
  // b, back on its data directory, still counts c until a republishes the forget (every 2 s here).
  const aPeerId = (await a.status()).self.peerId!;
  const b2 = await cluster.start('site-b', { dataDir: b.dataDir });
  // Its roster read (a balancer not started yet lists no voter), then c out of it.
  await eventually(async () => (await voters(b2)).includes(aPeerId), 30_000, describe(b2));
  await eventually(async () => !(await voters(b2)).includes(cPeerId), 150_000, describe(b2));
});
