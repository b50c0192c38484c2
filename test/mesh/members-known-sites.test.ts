/**
 * A site restarted while another site was down never hears that site, yet knows it (copies are owed to
 * it): /api/mesh listed 2 members beside 3 known sites, with no word on the third (hunt 187). Every known
 * site is now among the members, the unheard one marked so.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventually, startThreeSites } from './support.ts';

test('a site restarted while another is down lists that site among its members, not heard since its start', { timeout: 180_000 }, async (t) => {
  const { cluster, a, b, c } = await startThreeSites(t);
  const cPeerId = (await c.status()).self.peerId!;
  await eventually(async () => ((await b.status()).custody?.knownSites ?? []).some((k) => k.site === 'site-c') && ((await b.status()).balancer?.rosterMembers ?? []).some((m) => m.peerId === cPeerId), 20_000, async () => JSON.stringify(await b.status()));
  await c.kill9();
  await eventually(async () => (await a.status()).members?.find((m) => m.site === 'site-c')?.alive === false, 20_000, async () => JSON.stringify((await a.status()).members));
  const ports = { dicom: b.dicomPort, http: b.httpPort, p2p: b.p2pPort };
  await b.stop();
  const restarted = await cluster.start('site-b', { dataDir: b.dataDir, ports });
  await eventually(async () => (await restarted.status()).members?.some((m) => m.site === 'site-a' && m.alive) === true, 20_000, async () => JSON.stringify((await restarted.status()).members));
  // Another site's gossip may still carry site-c as alive for a moment (its record only ages out by time), so
  // wait until the restarted site no longer counts it alive, as a failure detector would.
  await eventually(async () => (await restarted.status()).members?.find((m) => m.site === 'site-c')?.alive !== true, 30_000, async () => JSON.stringify((await restarted.status()).members));
  const status = await restarted.status();
  const knownSites = (status.custody?.knownSites ?? []).map((k) => k.site).sort();
  assert.deepEqual(knownSites, ['site-a', 'site-c']);
  const memberSites = [...new Set((status.members ?? []).map((m) => m.site))].sort();
  assert.deepEqual(memberSites, ['site-a', 'site-b', 'site-c'], JSON.stringify(status.members));
  const siteC = status.members?.find((m) => m.site === 'site-c');
  // Not heard since this start, unless the others' gossip brought its dead record (then listed as dead).
  if (siteC?.heardSinceStart === false) {
    assert.deepEqual({ peerId: siteC.peerId, alive: siteC.alive, status: siteC.status, instances: siteC.instances }, { peerId: cPeerId, alive: false, status: 'not heard', instances: null }, JSON.stringify({ balancer: status.balancer, members: status.members }));
    assert.equal(typeof siteC.lastSeenAt, 'string', 'when the roster last saw it');
  } else assert.equal(siteC?.alive, false, JSON.stringify(siteC));
  for (const m of status.members ?? []) if (m.site !== 'site-c') assert.equal(m.heardSinceStart, true, JSON.stringify(m));
});
