/** The learnt roster's pure rules: learning, successors under a new PeerId, forgetting, the file format. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MemberRecord, MemberStatus } from '../membership/messages.ts';
import { memberRecord } from '../membership/fixtures/member-record.ts';
import { decodeRosterFile, encodeRosterFile, forgetRosterPeers, learnRoster, rosterAtStart, rosterMajorityLack, votersLeftByRosterChange, type RosterPeers } from './roster.ts';

const forgetAfterMs = 24 * 3600_000;
const site = (peerId: string, siteName: string, dicom: string, status: MemberStatus = 'alive'): MemberRecord =>
  memberRecord(peerId, { siteName, status, addresses: { dicom, http: `${dicom}-http`, aeTitle: 'PACSMESH' } });

test('learns alive members with their site and DICOM address; suspect and dead members are not learnt', () => {
  const members = [site('peer-a', 'site-a', '10.0.0.1:104'), site('peer-b', 'site-b', '10.0.0.2:104', 'suspect'), site('peer-c', 'site-c', '10.0.0.3:104', 'dead')];
  const u = learnRoster(new Map(), members, 'peer-a', 1000, forgetAfterMs);
  assert.deepEqual([...u.peers.keys()], ['peer-a']);
  assert.deepEqual(u.peers.get('peer-a'), { seenAtMs: 1000, site: 'site-a', dicom: '10.0.0.1:104' });
  assert.deepEqual(u.learnt.map((m) => m.peerId), []);
  const v = learnRoster(u.peers, [...members.slice(0, 2), site('peer-c', 'site-c', '10.0.0.3:104')], 'peer-a', 2000, forgetAfterMs);
  assert.deepEqual(v.learnt.map((m) => m.peerId), ['peer-c']);
  assert.equal(v.peers.size, 2);
});

test('a site restored under a new PeerId at the same DICOM address replaces its old PeerId: three restores leave three voters', () => {
  let peers: RosterPeers = new Map();
  const a = site('peer-a', 'site-a', '10.0.0.1:104');
  const c = site('peer-c', 'site-c', '10.0.0.3:104');
  peers = learnRoster(peers, [a, site('peer-b0', 'site-b', '10.0.0.2:104'), c], 'peer-a', 0, forgetAfterMs).peers;
  for (let restore = 1; restore <= 3; restore++) {
    const old = `peer-b${restore - 1}`;
    // The old identity is dead (or already gone from the view); the new one is alive on the same address.
    const u = learnRoster(peers, [a, site(old, 'site-b', '10.0.0.2:104', 'dead'), site(`peer-b${restore}`, 'site-b', '10.0.0.2:104'), c], 'peer-a', restore * 1000, forgetAfterMs);
    assert.deepEqual(u.replaced, [{ peer: old, by: `peer-b${restore}`, site: 'site-b', dicom: '10.0.0.2:104' }]);
    peers = u.peers;
    assert.deepEqual([...peers.keys()].sort(), ['peer-a', `peer-b${restore}`, 'peer-c']);
  }
  const absent = learnRoster(peers, [a, c], 'peer-a', 5000, forgetAfterMs);
  assert.equal(absent.peers.size, 3, 'a peer merely absent is kept until forgotten');
});

test('no replacement while the old PeerId may be up, at another address or site, for self, or without a recorded address', () => {
  const base: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 0, site: 'site-a', dicom: '10.0.0.1:104' }],
    ['peer-old', { seenAtMs: 0, site: 'site-b', dicom: '10.0.0.2:104' }],
    ['peer-v1', { seenAtMs: 0, site: null, dicom: null }],
  ]);
  const newB = site('peer-new', 'site-b', '10.0.0.2:104');
  for (const status of ['alive', 'suspect'] as const) {
    const u = learnRoster(base, [newB, site('peer-old', 'site-b', '10.0.0.2:104', status)], 'peer-a', 10, forgetAfterMs);
    assert.deepEqual(u.replaced, [], `old PeerId ${status}`);
  }
  assert.deepEqual(learnRoster(base, [site('peer-new', 'site-b', '10.0.0.9:104')], 'peer-a', 10, forgetAfterMs).replaced, [], 'another address');
  assert.deepEqual(learnRoster(base, [site('peer-new', 'site-x', '10.0.0.2:104')], 'peer-a', 10, forgetAfterMs).replaced, [], 'another site');
  assert.deepEqual(learnRoster(base, [site('peer-x', 'site-a', '10.0.0.1:104')], 'peer-a', 10, forgetAfterMs).replaced, [], 'self is never replaced');
  // An entry of a version-1 file has no whereabouts: only forgetting (or the operator) takes it out.
  assert.ok(learnRoster(base, [newB], 'peer-a', 10, forgetAfterMs).peers.has('peer-v1'));
});

test('a known peer seen at a new address is recorded there; peers absent for forgetAfterMs are forgotten, self never', () => {
  const base: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 0, site: 'site-a', dicom: '10.0.0.1:104' }],
    ['peer-b', { seenAtMs: 0, site: 'site-b', dicom: '10.0.0.2:104' }],
    ['peer-c', { seenAtMs: 0, site: null, dicom: null }],
  ]);
  const moved = learnRoster(base, [site('peer-b', 'site-b', '10.0.0.7:104')], 'peer-a', 10, forgetAfterMs);
  assert.equal(moved.detailsChanged, true);
  assert.deepEqual(moved.peers.get('peer-b'), { seenAtMs: 10, site: 'site-b', dicom: '10.0.0.7:104' });
  const later = learnRoster(moved.peers, [site('peer-b', 'site-b', '10.0.0.7:104')], 'peer-a', forgetAfterMs + 5, forgetAfterMs);
  assert.deepEqual(later.forgotten, [{ peer: 'peer-c', absentMs: forgetAfterMs + 5 }]);
  assert.deepEqual([...later.peers.keys()].sort(), ['peer-a', 'peer-b']);
});

test('at a start, the time this peer was away (or its clock jumped ahead) is no absence of the others; entries in the future count as now', () => {
  const dayMs = 24 * 3600_000;
  // The last run refreshed its own entry at 5000; peer-b was seen then too, peer-c an hour before.
  const saved: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 5000, site: 'site-a', dicom: '10.0.0.1:104' }],
    ['peer-b', { seenAtMs: 5000, site: 'site-b', dicom: '10.0.0.2:104' }],
    ['peer-c', { seenAtMs: 5000 - 3_600_000, site: 'site-c', dicom: '10.0.0.3:104' }],
  ]);
  const a = site('peer-a', 'site-a', '10.0.0.1:104');
  const b = site('peer-b', 'site-b', '10.0.0.2:104');
  // Two days later (down, or the clock set two days ahead), nobody heard yet: before, both were forgotten.
  const startMs = 5000 + 2 * dayMs;
  const ahead = rosterAtStart(saved, 'peer-a', startMs);
  assert.deepEqual([...ahead.values()].map((p) => p.seenAtMs), [startMs, startMs, startMs - 3_600_000]);
  assert.deepEqual([...ahead.values()].map((p) => p.absentMs), [undefined, 0, 3_600_000], 'the absence counted before the stop, nothing of the time away');
  const first = learnRoster(ahead, [a], 'peer-a', startMs, forgetAfterMs);
  assert.deepEqual(first.forgotten, []);
  // Alone for three days after the restart (the others down, or cut off): no absence counts.
  const alone = learnRoster(first.peers, [a], 'peer-a', startMs + 3 * dayMs, forgetAfterMs);
  assert.deepEqual([alone.forgotten, alone.peers.get('peer-c')?.absentMs], [[], 3_600_000]);
  // With peer-b back (a majority of three), peer-c's absence counts again: it goes after the hour it lacked.
  const withB = learnRoster(alone.peers, [a, b], 'peer-a', startMs + 3 * dayMs + 1, forgetAfterMs);
  assert.deepEqual(withB.forgotten, [], 'the time alone, ended by a view with the majority, is not counted');
  const cGoes = learnRoster(withB.peers, [a, b], 'peer-a', startMs + 3 * dayMs + 1 + forgetAfterMs - 3_600_000, forgetAfterMs);
  assert.deepEqual(cGoes.forgotten, [{ peer: 'peer-c', absentMs: forgetAfterMs }]);
  // The clock set back a day: the entries "in the future" are put at now, their absences kept.
  const behind = rosterAtStart(saved, 'peer-a', 5000 - dayMs);
  assert.deepEqual([...behind.values()].map((p) => p.seenAtMs), [5000 - dayMs, 5000 - dayMs, 5000 - dayMs]);
  assert.deepEqual([...behind.values()].map((p) => p.absentMs), [undefined, 0, 3_600_000]);
  const withBBehind = learnRoster(behind, [a, b], 'peer-a', 5000 - dayMs, forgetAfterMs);
  assert.deepEqual(learnRoster(withBBehind.peers, [a, b], 'peer-a', 5000 - dayMs + forgetAfterMs - 3_600_000, forgetAfterMs).forgotten.map((f) => f.peer), ['peer-c']);
});

/** The roster of each peer in `views` learnt at `atMs` from the peers it sees alive (self included). */
function learntAt(rosters: Map<string, RosterPeers>, views: Record<string, readonly string[]>, atMs: number): Map<string, string[]> {
  const forgotten = new Map<string, string[]>();
  for (const [self, alive] of Object.entries(views)) {
    const u = learnRoster(rosters.get(self) ?? new Map(), alive.map((p) => site(p, `site-${p.slice(5)}`, `${p}:104`)), self, atMs, forgetAfterMs);
    rosters.set(self, u.peers);
    forgotten.set(self, u.forgotten.map((f) => f.peer));
  }
  return forgotten;
}

test('a partition of three days forgets nobody on a side without a majority; the majority side forgets the minority after 24 h, and learns it again at the heal', () => {
  const hourMs = 3600_000;
  const all = ['peer-a', 'peer-b', 'peer-c', 'peer-d'];
  const rosters = new Map<string, RosterPeers>();
  learntAt(rosters, Object.fromEntries(all.map((p) => [p, all])), 0);
  // Two against two: neither side sees a strict majority of its roster (before: each forgot the other at 24 h).
  const split = { 'peer-a': ['peer-a', 'peer-b'], 'peer-b': ['peer-a', 'peer-b'], 'peer-c': ['peer-c', 'peer-d'], 'peer-d': ['peer-c', 'peer-d'] };
  for (let h = 1; h <= 72; h++) assert.deepEqual([...learntAt(rosters, split, h * hourMs).values()].flat(), [], `hour ${h}`);
  learntAt(rosters, Object.fromEntries(all.map((p) => [p, all])), 72 * hourMs + 1);
  for (const p of all) assert.deepEqual([...(rosters.get(p) ?? new Map()).keys()].sort(), all, `${p} after the heal`);
  assert.deepEqual([...(rosters.get('peer-a') ?? new Map()).values()].map((e) => e.absentMs), [undefined, undefined, undefined, undefined], 'nothing absent after the heal');

  // Three peers, a and b against c: c, alone, keeps a and b for the three days, so it can never elect alone.
  const three = ['peer-a', 'peer-b', 'peer-c'];
  const r3 = new Map<string, RosterPeers>();
  learntAt(r3, Object.fromEntries(three.map((p) => [p, three])), 0);
  const cut = { 'peer-a': ['peer-a', 'peer-b'], 'peer-b': ['peer-a', 'peer-b'], 'peer-c': ['peer-c'] };
  const forgottenAt = new Map<string, number>();
  for (let h = 1; h <= 72; h++) for (const [p, gone] of learntAt(r3, cut, h * hourMs)) if (gone.length > 0) forgottenAt.set(p, h);
  assert.deepEqual([...forgottenAt], [['peer-a', 24], ['peer-b', 24]], 'only the majority side forgets, c, after 24 h');
  assert.deepEqual([...(r3.get('peer-c') ?? new Map()).keys()].sort(), three);
  learntAt(r3, Object.fromEntries(three.map((p) => [p, three])), 72 * hourMs + 1);
  for (const p of three) assert.deepEqual([...(r3.get(p) ?? new Map()).keys()].sort(), three, `${p} after the heal`);
});

test('peers gone for good are forgotten after 24 h during which this peer saw a majority of its roster alive, not 24 h of clock', () => {
  const hourMs = 3600_000;
  const all = ['peer-a', 'peer-b', 'peer-c', 'peer-d', 'peer-e'];
  const rosters = new Map<string, RosterPeers>();
  learntAt(rosters, { 'peer-a': all }, 0);
  // The updates between not adopted (a disk refusing writes): the next one, without the majority, counts nothing.
  const a = rosters.get('peer-a') ?? new Map();
  const hidden = learnRoster(a, ['peer-a', 'peer-b'].map((p) => site(p, `site-${p.slice(5)}`, `${p}:104`)), 'peer-a', 30 * hourMs, forgetAfterMs);
  assert.deepEqual([hidden.forgotten, hidden.peers.get('peer-d')?.absentMs], [[], 0]);
  // d and e are gone for good at hour 0; a sees b and c for 10 h, then only b for 30 h (2 of 5), then b and c.
  for (let h = 1; h <= 10; h++) assert.deepEqual(learntAt(rosters, { 'peer-a': ['peer-a', 'peer-b', 'peer-c'] }, h * hourMs).get('peer-a'), []);
  for (let h = 11; h <= 40; h++) assert.deepEqual(learntAt(rosters, { 'peer-a': ['peer-a', 'peer-b'] }, h * hourMs).get('peer-a'), [], `hour ${h}: no majority`);
  // The view that shows the majority again ends 30 h that did not count: d and e are not forgotten at once.
  const when: number[] = [];
  for (let h = 41; h <= 60; h++) if ((learntAt(rosters, { 'peer-a': ['peer-a', 'peer-b', 'peer-c'] }, h * hourMs).get('peer-a') ?? []).length > 0) when.push(h);
  // 10 h counted before the view of hour 11 (which showed the majority lost), then 14 more from the view of hour 41 on.
  assert.deepEqual(when, [55]);
  assert.deepEqual([...(rosters.get('peer-a') ?? new Map()).keys()].sort(), ['peer-a', 'peer-b', 'peer-c']);
});

test('a gap between two updates counts at most countedGapMaxMs: a stall of this process (SIGSTOP, a paused VM) is no absence seen', () => {
  const dayMs = 24 * 3600_000;
  const [a, b, c] = ['peer-a', 'peer-b', 'peer-c'].map((p) => site(p, `site-${p.slice(5)}`, `${p}:104`)) as [MemberRecord, MemberRecord, MemberRecord];
  const before = learnRoster(learnRoster(new Map(), [a, b, c], 'peer-a', 0, forgetAfterMs).peers, [a, b], 'peer-a', 1000, forgetAfterMs).peers;
  // Two days stopped: membership moves the others' last heartbeats on, so the view after it still shows b alive.
  const after = learnRoster(before, [a, b], 'peer-a', 1000 + 2 * dayMs, forgetAfterMs, new Set(), undefined, 60_000);
  assert.deepEqual([after.forgotten, after.peers.get('peer-c')?.absentMs], [[], 1000 + 60_000], 'the second before it, and a minute');
  assert.deepEqual(learnRoster(before, [a, b], 'peer-a', 1000 + 2 * dayMs, forgetAfterMs).forgotten.map((f) => f.peer), ['peer-c'], 'without a bound: all of it');
});

test('five sites lose three for good: nobody is forgotten by time, the lack is reported, and forgetting two of them at a survivor lets the last go after 24 h', () => {
  const hourMs = 3600_000;
  const all = ['peer-a', 'peer-b', 'peer-c', 'peer-d', 'peer-e'];
  const rosters = new Map<string, RosterPeers>();
  learntAt(rosters, { 'peer-a': all }, 0);
  for (let h = 1; h <= 72; h++) assert.deepEqual(learntAt(rosters, { 'peer-a': ['peer-a', 'peer-b'] }, h * hourMs).get('peer-a'), [], `hour ${h}`);
  const ids = (): string[] => [...(rosters.get('peer-a') ?? new Map()).keys()];
  const alive = new Set(['peer-a', 'peer-b']);
  assert.deepEqual(rosterMajorityLack(ids(), alive, 'peer-a'), { alive: 2, voters: 5, absent: ['peer-c', 'peer-d', 'peer-e'] });
  // The operator's way out (POST /api/forget-peer or forget-site), for two of the three: 2 of 3 is a majority again.
  rosters.set('peer-a', forgetRosterPeers(rosters.get('peer-a') ?? new Map(), ['peer-c', 'peer-d'], alive, 'peer-a').peers);
  assert.equal(rosterMajorityLack(ids(), alive, 'peer-a'), null);
  const when: number[] = [];
  for (let h = 73; h <= 100; h++) if ((learntAt(rosters, { 'peer-a': ['peer-a', 'peer-b'] }, h * hourMs).get('peer-a') ?? []).length > 0) when.push(h);
  // Counted from the view before the forget (hour 72 here; a heartbeat before it in a mesh, where views come every 500 ms).
  assert.deepEqual(when, [96], 'e, absent 24 h of majority from the forget on');
  // A three-site mesh that lost one site (decommissioned without forget-site) keeps its majority: no lack, forgotten as before.
  assert.equal(rosterMajorityLack(['peer-a', 'peer-b', 'peer-c'], alive, 'peer-a'), null);
  assert.deepEqual(rosterMajorityLack(['peer-a', 'peer-b', 'peer-c', 'peer-d'], alive, 'peer-a')?.alive, 2, 'half is no majority');
  assert.deepEqual(rosterMajorityLack(['peer-b', 'peer-c'], new Set(), 'peer-a'), { alive: 1, voters: 3, absent: ['peer-b', 'peer-c'] }, 'self counts, listed or not');
});

test('the peers of forgotten sites leave the roster at every update once they are not up (a suspect one later, when dead)', () => {
  const peers: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 0, site: 'site-a', dicom: 'a' }],
    ['peer-x1', { seenAtMs: 0, site: 'site-x', dicom: 'x1' }],
    ['peer-x2', { seenAtMs: 0, site: 'site-x', dicom: 'x2' }],
    ['peer-old', { seenAtMs: 0, site: null, dicom: null }],
  ]);
  const forgotten = new Set(['site-x', 'site-a']);
  const suspect = learnRoster(peers, [site('peer-x2', 'site-x', 'x2', 'suspect')], 'peer-a', 10, forgetAfterMs, forgotten);
  assert.deepEqual(suspect.ofForgottenSites, [{ peer: 'peer-x1', site: 'site-x' }]);
  assert.deepEqual([...suspect.peers.keys()], ['peer-a', 'peer-x2', 'peer-old'], 'self and a suspect peer stay');
  const dead = learnRoster(suspect.peers, [site('peer-x2', 'site-x', 'x2', 'dead')], 'peer-a', 20, forgetAfterMs, forgotten);
  assert.deepEqual(dead.ofForgottenSites, [{ peer: 'peer-x2', site: 'site-x' }]);
  assert.deepEqual([...dead.peers.keys()], ['peer-a', 'peer-old']);
  // Alive again (its site known again at custody soon): learnt, not taken out.
  const back = learnRoster(dead.peers, [site('peer-x2', 'site-x', 'x2')], 'peer-a', 30, forgetAfterMs, forgotten);
  assert.deepEqual([back.ofForgottenSites, back.learnt.map((m) => m.peerId)], [[], ['peer-x2']]);
});

test('a peer that lost its site name to a peer started first leaves every roster that saw it lose, once it has stopped (hunt 109: no leader after a kill -9)', () => {
  const confirmMs = 6000;
  // X1 and X2 run; a copy of X2's --site starts at another address later (incarnation 200 > 100), and stops with exit 2 about 9 s after it hears X2.
  const x1 = memberRecord('peer-x1', { siteName: 'site-1', incarnation: 100, addresses: { dicom: 'h:1', http: 'h:1h', aeTitle: 'A' } });
  const x2 = memberRecord('peer-x2', { siteName: 'site-2', incarnation: 100, addresses: { dicom: 'h:2', http: 'h:2h', aeTitle: 'A' } });
  const twin = (status: MemberStatus, statusSinceMs = 1000): MemberRecord =>
    memberRecord('peer-twin', { siteName: 'site-2', incarnation: 200, status, statusSinceMs, addresses: { dicom: 'h:3', http: 'h:3h', aeTitle: 'A' } });
  // At X1 (X2 heard alive since 1000 ms) and at X2 itself (self counts at once, statusSinceMs 0).
  for (const [self, x2Since] of [['peer-x1', 1000], ['peer-x2', 0]] as const) {
    const view = (twinStatus: MemberStatus): MemberRecord[] => [{ ...x1, statusSinceMs: self === 'peer-x1' ? 0 : 1000 }, { ...x2, statusSinceMs: x2Since }, twin(twinStatus)];
    let peers: RosterPeers = learnRoster(new Map(), view('alive'), self, 2000, forgetAfterMs, new Set(), confirmMs).peers;
    if (self === 'peer-x1') assert.equal(peers.get('peer-twin')?.siteLostTo, undefined, "X2's claim is not confirmed yet");
    const seen = learnRoster(peers, view('alive'), self, 7000, forgetAfterMs, new Set(), confirmMs);
    assert.equal(seen.peers.get('peer-twin')?.siteLostTo, 'peer-x2', self);
    assert.equal(seen.detailsChanged, true, `${self}: the mark is persisted at once`);
    assert.equal(seen.peers.get('peer-x2')?.siteLostTo, undefined, `${self}: the keeper is not marked`);
    peers = seen.peers;
    // Suspect: it may still be up, kept. Dead (it stopped): out, though seen 3 s ago, not after 24 h.
    peers = learnRoster(peers, view('suspect'), self, 9000, forgetAfterMs, new Set(), confirmMs).peers;
    assert.ok(peers.has('peer-twin'), `${self}: kept while suspect`);
    const gone = learnRoster(peers, view('dead'), self, 10_000, forgetAfterMs, new Set(), confirmMs);
    assert.deepEqual(gone.ofLostSiteClaims, [{ peer: 'peer-twin', site: 'site-2', to: 'peer-x2' }], self);
    assert.deepEqual([...gone.peers.keys()].sort(), ['peer-x1', 'peer-x2'], `${self}: the twin no longer counts against the majority`);
    // Started again (the same copied --site): learnt again while it runs, as any alive peer.
    assert.deepEqual(learnRoster(gone.peers, view('alive'), self, 11_000, forgetAfterMs, new Set(), confirmMs).learnt.map((m) => m.peerId), ['peer-twin']);
  }
});

test('a stopped twin learnt late (its last heartbeats relayed after its stop, before the keeper was confirmed here) leaves once the keeper is', () => {
  const confirmMs = 6000;
  const self = memberRecord('peer-c', { siteName: 'site-c' });
  const keeper = (statusSinceMs: number): MemberRecord => memberRecord('peer-b', { siteName: 'site-b', incarnation: 100, statusSinceMs, addresses: { dicom: 'b:1', http: 'b:1h', aeTitle: 'A' } });
  const twin = (status: MemberStatus): MemberRecord => memberRecord('peer-b2', { siteName: 'site-b', incarnation: 200, status, addresses: { dicom: 'b:2', http: 'b:2h', aeTitle: 'A' } });
  // peer-c started at 10 000 and heard both at once; the twin is dead again a few seconds later.
  let u = learnRoster(new Map(), [self, keeper(10_000), twin('alive')], 'peer-c', 10_500, forgetAfterMs, new Set(), confirmMs);
  assert.equal(u.peers.get('peer-b2')?.siteLostTo, undefined);
  u = learnRoster(u.peers, [self, keeper(10_000), twin('dead')], 'peer-c', 14_000, forgetAfterMs, new Set(), confirmMs);
  assert.ok(u.peers.has('peer-b2'), 'the keeper is not confirmed yet: kept');
  u = learnRoster(u.peers, [self, keeper(10_000), twin('dead')], 'peer-c', 16_000, forgetAfterMs, new Set(), confirmMs);
  assert.deepEqual(u.ofLostSiteClaims, [{ peer: 'peer-b2', site: 'site-b', to: 'peer-b' }]);
  assert.deepEqual([...u.peers.keys()].sort(), ['peer-b', 'peer-c']);
  // A dead peer of a moved site (started first, at its old address) is no twin of its successor: kept.
  const moved = learnRoster(new Map(), [self, keeper(0)], 'peer-c', 20_000, forgetAfterMs, new Set(), confirmMs);
  const later = learnRoster(moved.peers, [self, twin('alive'), { ...keeper(0), status: 'dead' }], 'peer-c', 30_000, forgetAfterMs, new Set(), confirmMs);
  assert.deepEqual(later.ofLostSiteClaims, []);
  assert.ok(later.peers.has('peer-b'));
});

test('no peer is marked as having lost its site name where membership would not stop it', () => {
  const confirmMs = 6000;
  const at = (peerId: string, dicom: string, incarnation: number, extra: Partial<MemberRecord> = {}): MemberRecord =>
    memberRecord(peerId, { siteName: 'site-b', incarnation, addresses: { dicom, http: `${dicom}h`, aeTitle: 'A' }, ...extra });
  const self = memberRecord('peer-a', { siteName: 'site-a' });
  const marked = (members: MemberRecord[], nowMs = 10_000): string[] =>
    [...learnRoster(new Map(), [self, ...members], 'peer-a', nowMs, forgetAfterMs, new Set(), confirmMs).peers].filter(([, e]) => e.siteLostTo !== undefined).map(([peerId]) => peerId);
  const keeper = at('peer-b', 'b:1', 100);
  assert.deepEqual(marked([keeper, at('peer-b2', 'b:2', 200)]), ['peer-b2'], 'the control: a later twin at another address');
  assert.deepEqual(marked([keeper, at('peer-b2', 'b:2', 200)], 5999), [], 'the keeper alive for less than confirmMs (a dead predecessor\'s late heartbeats)');
  assert.deepEqual(marked([{ ...keeper, status: 'suspect' }, at('peer-b2', 'b:2', 200)]), [], 'the keeper suspect');
  assert.deepEqual(marked([keeper, at('peer-b2', 'b:1', 200)]), [], 'the same DICOM address: a restart, not a conflict');
  assert.deepEqual(marked([keeper, at('peer-b2', 'b:2', 200, { siteShared: true })]), [], 'a peer told --site-peers several never stops');
  assert.deepEqual(marked([{ ...keeper, siteShared: true }, at('peer-b2', 'b:2', 200, { siteShared: true })]), [], 'both told the site has several peers');
  assert.deepEqual(marked([keeper, at('peer-b2', 'b:2', 100)]), ['peer-b2'], 'one start date: the higher PeerId stops');
  // The keeper gone while the twin runs on: the twin keeps the site, and its mark goes.
  const first = learnRoster(new Map(), [self, keeper, at('peer-b2', 'b:2', 200)], 'peer-a', 10_000, forgetAfterMs, new Set(), confirmMs);
  const after = learnRoster(first.peers, [self, { ...keeper, status: 'dead' }, at('peer-b2', 'b:2', 200)], 'peer-a', 11_000, forgetAfterMs, new Set(), confirmMs);
  assert.equal(after.peers.get('peer-b2')?.siteLostTo, undefined);
  assert.equal(after.detailsChanged, true);
  assert.deepEqual(after.ofLostSiteClaims, []);
  assert.ok(after.peers.has('peer-b'), 'the keeper, dead, stays a voter as any dead peer');
});

test('forgetRosterPeers takes out only peers that are not up and not self', () => {
  const peers: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 0, site: 'site-a', dicom: 'a' }],
    ['peer-b1', { seenAtMs: 0, site: 'site-b', dicom: 'b' }],
    ['peer-b2', { seenAtMs: 0, site: 'site-b', dicom: 'b2' }],
    ['peer-c', { seenAtMs: 0, site: 'site-c', dicom: 'c' }],
  ]);
  const { peers: left, gone } = forgetRosterPeers(peers, ['peer-a', 'peer-b1', 'peer-b2', 'peer-x', 'peer-b1'], new Set(['peer-b2']), 'peer-a');
  assert.deepEqual(gone, ['peer-b1']);
  assert.deepEqual([...left.keys()], ['peer-a', 'peer-b2', 'peer-c']);
  assert.equal(forgetRosterPeers(peers, ['peer-x'], new Set(), 'peer-a').peers, peers, 'unchanged when nothing goes');
});

test('the voters leaving after a roster change: those it dropped, and for forget-peer a voter the roster had dropped already, unless up or self', () => {
  const before: RosterPeers = new Map([
    ['peer-a', { seenAtMs: 0, site: 'site-a', dicom: 'a' }],
    ['peer-b', { seenAtMs: 0, site: 'site-b', dicom: 'b' }],
  ]);
  const after: RosterPeers = new Map([['peer-a', { seenAtMs: 0, site: 'site-a', dicom: 'a' }]]);
  const voters = ['peer-a', 'peer-b', 'peer-x', 'peer-y'];
  assert.deepEqual(votersLeftByRosterChange(before, after, voters, [], new Set(), 'peer-a'), ['peer-b']);
  // peer-x: out of the roster by absence, still a voter; peer-y: up again; peer-z: no voter; peer-a: self.
  assert.deepEqual(votersLeftByRosterChange(before, before, voters, ['peer-x', 'peer-y', 'peer-z', 'peer-a'], new Set(['peer-y']), 'peer-a'), ['peer-x']);
  assert.deepEqual(votersLeftByRosterChange(before, after, voters, ['peer-b', 'peer-x'], new Set(), 'peer-a'), ['peer-b', 'peer-x']);
});

test('the file: version 2 round trip, version 1 read without whereabouts, damage and newer versions refused', () => {
  const peers: RosterPeers = new Map([['peer-a', { seenAtMs: 5, site: 'site-a', dicom: '10.0.0.1:104' }]]);
  assert.deepEqual(decodeRosterFile(JSON.parse(encodeRosterFile(peers))), peers);
  const marked: RosterPeers = new Map([['peer-t', { seenAtMs: 5, site: 'site-a', dicom: '10.0.0.2:104', siteLostTo: 'peer-a' }]]);
  assert.deepEqual(decodeRosterFile(JSON.parse(encodeRosterFile(marked))), marked, 'the lost site claim, kept across a restart');
  const absent: RosterPeers = new Map([['peer-b', { seenAtMs: 5, site: 'site-b', dicom: '10.0.0.2:104', absentMs: 7200 }]]);
  assert.deepEqual(decodeRosterFile(JSON.parse(encodeRosterFile(absent))), absent, 'the absence counted, kept across a restart');
  assert.deepEqual(decodeRosterFile({ version: 2, peers: { 'peer-b': { seenAtMs: 5, site: 'site-b', dicom: 'b', absentMs: -1 } } }), new Map([['peer-b', { seenAtMs: 5, site: 'site-b', dicom: 'b' }]]), 'a bad absence is counted from seenAtMs, as before');
  assert.deepEqual(decodeRosterFile({ version: 1, peers: { 'peer-a': 5, 'peer-b': 7 } }), new Map([
    ['peer-a', { seenAtMs: 5, site: null, dicom: null }],
    ['peer-b', { seenAtMs: 7, site: null, dicom: null }],
  ]));
  assert.throws(() => decodeRosterFile([]), /not a roster/);
  assert.throws(() => decodeRosterFile({ peers: [] }), /not a roster/);
  assert.throws(() => decodeRosterFile({ version: 1, peers: { 'peer-a': 'yesterday' } }), /peer peer-a has no last-seen time/);
  assert.throws(() => decodeRosterFile({ version: 2, peers: { 'peer-a': { site: 'site-a' } } }), /peer peer-a has no last-seen time/);
  assert.throws(() => decodeRosterFile({ version: 3, peers: {} }), /roster version 3 is newer than this pacs-mesh/);
});
