import assert from 'node:assert/strict';
import { test } from 'node:test';
import { initMembership, liveView, selfRecord, siteConflictConfirmAfterDeadTimes, siteNameTakenAfterDeadTimes, stepMembership, supersededMembers, type MembershipState } from './logic.ts';
import { memberRecord } from './fixtures/member-record.ts';
import { heartbeatForgottenSitesMax, type Heartbeat, type MembershipConfig, type MembershipEffect, type MembershipInput } from './messages.ts';
import { runSteps } from '../runtime/run-steps.ts';

const config: MembershipConfig = {
  peerId: 'peer-a',
  siteName: 'site-a',
  incarnation: 1,
  priority: 0,
  addresses: { dicom: 'a:104', http: 'a:8080', aeTitle: 'PACSMESH' },
  heartbeatIntervalMs: 1000,
  suspectAfterMs: 3000,
  deadAfterMs: 6000,
  membersMax: 8,
};

function heartbeat(peerId: string, incarnation: number, sequence: number, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    type: 'heartbeat',
    peerId,
    siteName: `site-${peerId.slice(-1)}`,
    incarnation,
    sequence,
    priority: 0,
    electable: true,
    addresses: { dicom: `${peerId}:104`, http: `${peerId}:8080`, aeTitle: 'PACSMESH' },
    load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 1e12 },
    instanceCount: 0,
    digestRoot: '',
    ...extra,
  };
}

const run = (state: MembershipState, ...inputs: MembershipInput[]) => runSteps(stepMembership, state, inputs);

const statusOf = (s: MembershipState, peerId: string) => s.members.get(peerId)?.status;

test('first tick publishes a heartbeat at once, then every heartbeatIntervalMs', () => {
  let s = initMembership(config);
  const first = run(s, { type: 'tick', nowMs: 0 });
  assert.equal(first.effects.filter((e) => e.type === 'publish').length, 1);
  s = first.state;
  assert.equal(run(s, { type: 'tick', nowMs: 999 }).effects.length, 0);
  const second = run(s, { type: 'tick', nowMs: 1000 });
  const published = second.effects.find((e) => e.type === 'publish');
  assert.ok(published && published.type === 'publish');
  assert.equal(published.message.sequence, 2);
  assert.equal(published.message.incarnation, 1);
});

test('a peer subscribing to the topic gets a heartbeat at the next tick, not an interval later', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }).state;
  s = run(s, { type: 'peerSubscribed' }, { type: 'peerSubscribed' }).state;
  const next = run(s, { type: 'tick', nowMs: 100 });
  assert.deepEqual(next.effects.filter((e) => e.type === 'publish').map((e) => e.type === 'publish' && e.message.sequence), [2]);
  // The interval runs from that heartbeat on.
  assert.equal(run(next.state, { type: 'tick', nowMs: 1000 }).effects.length, 0);
  assert.equal(run(next.state, { type: 'tick', nowMs: 1100 }).effects.filter((e) => e.type === 'publish').length, 1);
});

test('whether this peer can be elected travels in its heartbeat and its own record', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }).state;
  assert.equal(selfRecord(s, 0).electable, true);
  s = run(s, { type: 'electabilityChanged', electable: false }).state;
  assert.equal(selfRecord(s, 0).electable, false);
  // Published at the next tick, not a heartbeat interval later.
  const published = run(s, { type: 'tick', nowMs: 1 }).effects.find((e) => e.type === 'publish');
  assert.ok(published && published.type === 'publish');
  assert.equal(published.message.electable, false);
  const seen = run(initMembership({ ...config, peerId: 'peer-b', siteName: 'site-b' }), { type: 'heartbeatReceived', heartbeat: published.message, nowMs: 2 }).state;
  assert.equal(seen.members.get('peer-a')?.electable, false);
});

test('the sites custody forgot travel in the heartbeat and reach the member record; none, no field', () => {
  const forgottenSites = [{ siteName: 'site-x', forgottenAtMs: 500 }];
  const stats = { load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 1 }, instanceCount: 0, digestRoot: '' };
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }).state;
  const publishedAt = (state: MembershipState, nowMs: number) => {
    const published = run(state, { type: 'tick', nowMs }).effects.find((e) => e.type === 'publish');
    assert.ok(published && published.type === 'publish');
    return published.message;
  };
  assert.equal('forgottenSites' in publishedAt(s, 1000), false);
  s = run(s, { type: 'localStatsChanged', ...stats, forgottenSites }).state;
  const heartbeatWith = publishedAt(s, 1000);
  assert.deepEqual(heartbeatWith.forgottenSites, forgottenSites);
  assert.equal(heartbeatWith.sentAtMs, 1000);
  const seen = run(initMembership({ ...config, peerId: 'peer-b', siteName: 'site-b' }), { type: 'heartbeatReceived', heartbeat: heartbeatWith, nowMs: 1001 }).state;
  // On the receiver's clock: forgotten 500 ms before the heartbeat left, which took 1 ms.
  assert.deepEqual(seen.members.get('peer-a')?.forgottenSites, [{ siteName: 'site-x', forgottenAtMs: 501 }]);
  s = run(s, { type: 'localStatsChanged', ...stats, forgottenSites: [] }).state;
  assert.equal('forgottenSites' in publishedAt(s, 2000), false);
  // More than a heartbeat carries: a page each, every one within a few heartbeats.
  const many = Array.from({ length: 2 * heartbeatForgottenSitesMax + 1 }, (_, i) => ({ siteName: `site-t${i}`, forgottenAtMs: i }));
  s = run(s, { type: 'localStatsChanged', ...stats, forgottenSites: many }).state;
  const carried = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const page = publishedAt(s, 3000 + i * 1000).forgottenSites ?? [];
    assert.ok(page.length > 0 && page.length <= heartbeatForgottenSitesMax);
    for (const f of page) carried.add(f.siteName);
    s = run(s, { type: 'tick', nowMs: 3000 + i * 1000 }).state;
  }
  assert.equal(carried.size, many.length);
});

test('tombstones of a peer whose wall clock is a day ahead or behind are read on this peer\'s clock', () => {
  const dayMs = 24 * 3600_000;
  const nowMs = 1_800_000_000_000;
  const receiver = () => initMembership({ ...config, peerId: 'peer-b', siteName: 'site-b' });
  for (const skewMs of [dayMs, -dayMs, 5 * 60_000, -5 * 60_000]) {
    // The other peer forgot site-x 30 s ago by its own clock, and its heartbeat takes 20 ms to arrive.
    const senderNow = nowMs + skewMs;
    const hb = heartbeat('peer-c', 1, 1, { forgottenSites: [{ siteName: 'site-x', forgottenAtMs: senderNow - 30_000 }, { siteName: 'site-o', forgottenAtMs: senderNow - 40_000, byOperator: true }], sentAtMs: senderNow });
    const seen = run(receiver(), { type: 'heartbeatReceived', heartbeat: hb, nowMs: nowMs + 20 }).state;
    // Before: the sender's time as it was, a day in this peer's future (the site stayed forgotten here for a
    // day after it came back) or a day in its past (older than this peer's last heartbeat from the site, so
    // the forgetting was ignored here).
    // The operator's flag goes along (custody passes it on; only such tombstones take peers out of the rosters).
    assert.deepEqual(seen.members.get('peer-c')?.forgottenSites, [{ siteName: 'site-x', forgottenAtMs: nowMs + 20 - 30_000 }, { siteName: 'site-o', forgottenAtMs: nowMs + 20 - 40_000, byOperator: true }], `skew ${skewMs}`);
  }
  // An older peer sends no time of its own: its tombstones are at least never in this peer's future.
  const legacy = heartbeat('peer-c', 1, 1, { forgottenSites: [{ siteName: 'site-x', forgottenAtMs: nowMs + dayMs }, { siteName: 'site-y', forgottenAtMs: nowMs - 5000 }] });
  const seen = run(receiver(), { type: 'heartbeatReceived', heartbeat: legacy, nowMs }).state;
  assert.deepEqual(seen.members.get('peer-c')?.forgottenSites, [
    { siteName: 'site-x', forgottenAtMs: nowMs },
    { siteName: 'site-y', forgottenAtMs: nowMs - 5000 },
  ]);
});

test('a heartbeat of our predecessor (this site and DICOM address, another PeerId) relayed late is not a member', () => {
  const predecessor = heartbeat('peer-old', 1, 7, { siteName: config.siteName, addresses: config.addresses });
  const { state, effects } = run(initMembership(config), { type: 'heartbeatReceived', heartbeat: predecessor, nowMs: 10 });
  assert.equal(state.members.size, 0);
  assert.deepEqual(effects, []);
  // Another peer of this site (another DICOM address) is one.
  const sibling = heartbeat('peer-sib', 1, 1, { siteName: config.siteName, addresses: { ...config.addresses, dicom: 'a:105' } });
  assert.equal(run(initMembership(config), { type: 'heartbeatReceived', heartbeat: sibling, nowMs: 10 }).state.members.size, 1);
});

test('heartbeat makes a member alive and part of the sorted live view', () => {
  const { state, effects } = run(
    initMembership(config),
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-c', 1, 1), nowMs: 10 },
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 20 },
  );
  assert.equal(statusOf(state, 'peer-b'), 'alive');
  assert.deepEqual(liveView(state, 20).map((m) => m.peerId), ['peer-a', 'peer-b', 'peer-c']);
  assert.ok(effects.some((e) => e.type === 'memberStatusChanged' && e.peerId === 'peer-b' && e.to === 'alive'));
});

/** Ticks every 100 ms (as the actor does) after `fromMs`, up to and including `toMs`. */
function ticks(fromMs: number, toMs: number): MembershipInput[] {
  const inputs: MembershipInput[] = [];
  for (let nowMs = fromMs + 100; nowMs < toMs; nowMs += 100) inputs.push({ type: 'tick', nowMs });
  inputs.push({ type: 'tick', nowMs: toMs });
  return inputs;
}

test('silence makes a member suspect, then dead; a newer heartbeat brings it back', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 2999)).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive');
  let step = run(s, { type: 'tick', nowMs: 3000 });
  s = step.state;
  assert.equal(statusOf(s, 'peer-b'), 'suspect');
  assert.deepEqual(liveView(s, 3000).map((m) => m.peerId), ['peer-a']);
  // Suspect is not enough to drop its connections (a peer on a loaded machine comes back).
  assert.ok(!step.effects.some((e) => e.type === 'dropConnections'));
  step = run(s, ...ticks(3000, 6000));
  s = step.state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  // Dead by silence: connections still up (a hung process, a half-open connection) are dropped, once.
  assert.deepEqual(step.effects.filter((e) => e.type === 'dropConnections'), [{ type: 'dropConnections', peerId: 'peer-b' }]);
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 2), nowMs: 6500 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive');
});

test('data from a peer keeps it alive while its heartbeats are delayed (a slow link: helper 65); it never revives a dead or suspect one', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  // No heartbeat for 10 s, but copies keep arriving from peer-b.
  for (let nowMs = 250; nowMs <= 10_000; nowMs += 250) s = run(s, { type: 'peerActive', peerId: 'peer-b', nowMs }, { type: 'tick', nowMs }).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive');
  // The data stops too: silence as usual.
  s = run(s, ...ticks(10_000, 13_000)).state;
  assert.equal(statusOf(s, 'peer-b'), 'suspect');
  s = run(s, { type: 'peerActive', peerId: 'peer-b', nowMs: 13_100 }, { type: 'tick', nowMs: 13_100 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'suspect', 'back to alive only by a heartbeat');
  s = run(s, ...ticks(13_100, 20_000)).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  const afterDeath = run(s, { type: 'peerActive', peerId: 'peer-b', nowMs: 20_100 }, { type: 'peerActive', peerId: 'peer-x', nowMs: 20_100 });
  assert.equal(statusOf(afterDeath.state, 'peer-b'), 'dead');
  // Nor moves a dead record's last-heard time: custody reads it as when that site was last heard.
  assert.equal(afterDeath.state.members.get('peer-b')?.lastHeardAtMs, s.members.get('peer-b')?.lastHeardAtMs);
  assert.equal(afterDeath.state.members.has('peer-x'), false, 'an unknown peer is not made a member');
  assert.deepEqual(afterDeath.effects, []);
});

test('time this process stood still (ticks far apart) is not the others\' silence', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 500)).state;
  // SIGSTOP for 20 s: the next tick comes 20 s late, before the heartbeats waiting in the socket are read.
  const resumed = run(s, { type: 'tick', nowMs: 20_500 });
  assert.equal(statusOf(resumed.state, 'peer-b'), 'alive', 'not dead on resuming');
  assert.ok(!resumed.effects.some((e) => e.type === 'memberStatusChanged'));
  // Only silence while running counts (500 ms before the pause, plus one heartbeat interval of slack for a
  // late tick): dead once that reaches deadAfterMs, at 19,000 + 6,000.
  s = run(resumed.state, ...ticks(20_500, 24_900)).state;
  assert.equal(statusOf(s, 'peer-b'), 'suspect');
  s = run(s, { type: 'tick', nowMs: 25_000 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
});

test('a stall the others noticed is reported once, saying how they saw this peer; a short one is not', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 500)).state;
  const stalls = (effects: readonly MembershipEffect[]) => effects.filter((e) => e.type === 'selfStalled');
  // A tick 2 s late (1 s past the heartbeat interval's slack): below suspectAfterMs, the others saw nothing.
  const short = run(s, { type: 'tick', nowMs: 2_500 });
  assert.deepEqual(stalls(short.effects), []);
  // 4.5 s past the slack: the others took it for suspect; once past deadAfterMs, for dead (SIGSTOP for 30 s).
  const suspect = run(short.state, { type: 'tick', nowMs: 8_000 });
  assert.deepEqual(stalls(suspect.effects), [{ type: 'selfStalled', stalledMs: 4_500, seenAs: 'suspect' }]);
  const dead = run(suspect.state, { type: 'tick', nowMs: 39_000 });
  assert.deepEqual(stalls(dead.effects), [{ type: 'selfStalled', stalledMs: 30_000, seenAs: 'dead' }]);
  assert.deepEqual(stalls(run(dead.state, { type: 'tick', nowMs: 39_100 }).effects), [], 'once per stall');
});

test('time this process stood still is not time a member was alive either: alive without a break counts from the end of the stall', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 500)).state;
  assert.equal(s.members.get('peer-b')?.statusSinceMs, 0);
  // Stood still for 20 s: peer-b may have died at any moment of it (its last heartbeats, read now, say
  // nothing of after), so it has been alive without a break only from now on. Counting the 500 ms heard
  // before the stall, a site heard 2.1 s before a 2.3 s stall was alive "for" forgottenSiteReturnAliveMs
  // right after it, and custody refused the forgetting of that site, which had died in the stall
  // (simulation, harsh sweep, seed 8391).
  s = run(s, { type: 'tick', nowMs: 20_500 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive');
  assert.equal(s.members.get('peer-b')?.statusSinceMs, 20_500);
});

/** A view where peer-b and peer-c were both heard at 0 ms. */
function peersBAndCHeardAtZero(): ReturnType<typeof run>['state'] {
  return run(
    initMembership(config),
    { type: 'tick', nowMs: 0 },
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 },
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-c', 1, 1), nowMs: 0 },
  ).state;
}

test('a stall is found by the first input after it: a heartbeat read before the first tick', () => {
  let s = peersBAndCHeardAtZero();
  s = run(s, ...ticks(0, 500)).state;
  // Stood still for 20 s; peer-c's heartbeat, waiting in the socket, is read before the first tick.
  const read = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-c', 1, 2), nowMs: 20_500 });
  const view = read.effects.filter((e) => e.type === 'viewChanged').at(-1);
  const b = view?.type === 'viewChanged' ? view.members.find((m) => m.peerId === 'peer-b') : undefined;
  assert.equal(b?.status, 'alive', 'not dead: the stall is not its silence');
  assert.equal(b?.statusSinceMs, 20_500, 'nor its life');
});

test('a disconnect right after this process stood still makes a member suspect, not dead; later ones dead', () => {
  let s = peersBAndCHeardAtZero();
  s = run(s, ...ticks(0, 500), { type: 'tick', nowMs: 20_500 }).state; // stood still for 20 s
  s = run(s, { type: 'peerDisconnected', peerId: 'peer-b', nowMs: 20_510 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'suspect', 'the others closed the connection to a process that did not answer');
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 2), nowMs: 21_000 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive', 'back once it reconnects');
  s = run(s, ...ticks(20_500, 27_000), { type: 'heartbeatReceived', heartbeat: heartbeat('peer-c', 1, 2), nowMs: 27_000 }).state;
  s = run(s, { type: 'peerDisconnected', peerId: 'peer-c', nowMs: 27_010 }).state;
  assert.equal(statusOf(s, 'peer-c'), 'dead', 'long after the stall a disconnect is a death again');
});

test('a disconnect handled before the first tick after a stall also makes the member suspect', () => {
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 500)).state;
  s = run(s, { type: 'peerDisconnected', peerId: 'peer-b', nowMs: 10_500 }).state; // resumed: the close event runs first
  assert.equal(statusOf(s, 'peer-b'), 'suspect');
});

test('a known peer heartbeating under another site name is reported (copies owed to the old site wait)', () => {
  const s = run(initMembership(config), { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  const renamed = run(s, { type: 'heartbeatReceived', heartbeat: { ...heartbeat('peer-b', 2, 1), siteName: 'site-x' }, nowMs: 100 });
  const fromSite = s.members.get('peer-b')!.siteName;
  assert.deepEqual(renamed.effects.filter((e) => e.type === 'memberSiteRenamed'), [{ type: 'memberSiteRenamed', peerId: 'peer-b', fromSite, toSite: 'site-x' }]);
  const again = run(renamed.state, { type: 'heartbeatReceived', heartbeat: { ...heartbeat('peer-b', 2, 2), siteName: 'site-x' }, nowMs: 200 });
  assert.equal(again.effects.filter((e) => e.type === 'memberSiteRenamed').length, 0, 'said once');
});

test('a transport disconnect makes a member dead at once; an old heartbeat does not revive it', () => {
  let s = run(initMembership(config), { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 5), nowMs: 0 }).state;
  const { state, effects } = run(s, { type: 'peerDisconnected', peerId: 'peer-b', nowMs: 10 });
  s = state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  assert.ok(effects.some((e) => e.type === 'viewChanged'));
  assert.ok(!effects.some((e) => e.type === 'dropConnections'), 'nothing left to drop');
  // A delayed duplicate of the last heartbeat is not news.
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 5), nowMs: 20 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 6), nowMs: 30 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'alive');
});

test('a stale incarnation neither resurrects nor overwrites the restarted peer', () => {
  let s = run(
    initMembership(config),
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 90, { digestRoot: 'old' }), nowMs: 0 },
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 2, 1, { digestRoot: 'new' }), nowMs: 100 },
  ).state;
  assert.equal(s.members.get('peer-b')?.incarnation, 2);
  // The old incarnation's late heartbeat, even with a higher sequence, changes nothing.
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 91, { digestRoot: 'old' }), nowMs: 200 }).state;
  assert.equal(s.members.get('peer-b')?.incarnation, 2);
  assert.equal(s.members.get('peer-b')?.digestRoot, 'new');
  // And after the new incarnation dies, an old heartbeat does not resurrect it.
  s = run(s, { type: 'peerDisconnected', peerId: 'peer-b', nowMs: 300 }).state;
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 92), nowMs: 400 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
});

test('a peer restarted below the incarnation remembered here (it once ran with its clock ahead) is taken back once dead for long', () => {
  const dayMs = 24 * 3600_000;
  const t0 = 1_800_000_000_000;
  // Its run with the wall clock a day ahead: the incarnation is that date.
  let s = run(initMembership(config), { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', t0 + dayMs, 5), nowMs: 0 }).state;
  s = run(s, { type: 'peerDisconnected', peerId: 'peer-b', nowMs: 1000 }).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  // Restored from a backup taken before, clock right: incarnation max(backup's + 1, date) = the date, a day lower.
  const restarted = (sequence: number, nowMs: number): MembershipInput => ({ type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', t0 + 60_000, sequence), nowMs });
  // Moments after its death it may still be a late heartbeat of an older process: ignored.
  s = run(s, restarted(1, 2000)).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  // Dead here for 10 x deadAfterMs: it is this peer, restarted. Before, ignored until the date caught up (a day).
  const back = run(s, restarted(2, 1000 + 10 * config.deadAfterMs));
  assert.equal(statusOf(back.state, 'peer-b'), 'alive');
  assert.equal(back.state.members.get('peer-b')?.incarnation, t0 + 60_000);
  assert.ok(back.effects.some((e) => e.type === 'memberStatusChanged' && e.peerId === 'peer-b' && e.to === 'alive'));
  // From then on it is ordered by its new incarnation as usual.
  s = run(back.state, restarted(1, 1000 + 10 * config.deadAfterMs + 100)).state;
  assert.equal(s.members.get('peer-b')?.sequence, 2);
});

test('our own heartbeat echoed by gossip is ignored, and the member table is bounded', () => {
  let s = run(initMembership(config), { type: 'heartbeatReceived', heartbeat: heartbeat('peer-a', 9, 9), nowMs: 0 }).state;
  assert.equal(s.members.size, 0);
  for (let i = 0; i < 20; i += 1) {
    s = run(
      s,
      { type: 'heartbeatReceived', heartbeat: heartbeat(`peer-x${i}`, 1, 1), nowMs: i },
      { type: 'peerDisconnected', peerId: `peer-x${i}`, nowMs: i },
    ).state;
  }
  assert.ok(s.members.size <= config.membersMax);
});

test('dead records of a site that answers at the same DICOM address under a new PeerId are superseded (hidden from operators)', () => {
  const at = (peerId: string, siteName: string, dicom: string, status: 'alive' | 'suspect' | 'dead') =>
    memberRecord(peerId, { siteName, status, addresses: { dicom, http: 'h', aeTitle: 'PACSMESH' } });
  const members = [
    at('b-1', 'site-b', '10.0.0.2:104', 'dead'),
    at('b-2', 'site-b', '10.0.0.2:104', 'dead'),
    at('b-3', 'site-b', '10.0.0.2:104', 'alive'),
    at('c-1', 'site-c', '10.0.0.3:104', 'dead'),
    at('c-2', 'site-c', '10.0.0.3:104', 'suspect'),
    at('d-1', 'site-d', '10.0.0.4:104', 'dead'),
    at('d-2', 'site-d', '10.0.0.9:104', 'alive'),
  ];
  // Only an alive successor at the same site and address supersedes; a suspect one or another address does not.
  assert.deepEqual([...supersededMembers(members)].sort(), ['b-1', 'b-2']);
  // None alive there (restored twice, then down): the record heard last stays, the older ones go.
  const heardAt = (peerId: string, lastHeardAtMs: number) => ({ ...at(peerId, 'site-e', '10.0.0.5:104', 'dead'), lastHeardAtMs });
  assert.deepEqual([...supersededMembers([heardAt('e-1', 100), heardAt('e-3', 300), heardAt('e-2', 200)])].sort(), ['e-1', 'e-2']);
});

/** Site-name conflicts: a peer claiming this peer's site (or another's) at another DICOM address. */
const confirmMs = siteConflictConfirmAfterDeadTimes * config.deadAfterMs;
const takenAfterMs = siteNameTakenAfterDeadTimes * config.deadAfterMs;
/** A heartbeat of `peerId` claiming site-a at `dicom`. */
const claimant = (peerId: string, incarnation: number, sequence: number, dicom: string, extra: Partial<Heartbeat> = {}): Heartbeat =>
  heartbeat(peerId, incarnation, sequence, { siteName: 'site-a', addresses: { dicom, http: `${peerId}:8080`, aeTitle: 'PACSMESH' }, ...extra });

/** Ticks every 100 ms from `fromMs` to `toMs`, with a heartbeat of each source every interval (sequence = nowMs / 1000 + 1). */
function runHeard(state: MembershipState, fromMs: number, toMs: number, sources: readonly ((sequence: number) => Heartbeat)[]) {
  const inputs: MembershipInput[] = [];
  for (let nowMs = fromMs; nowMs <= toMs; nowMs += 100) {
    if (nowMs % config.heartbeatIntervalMs === 0) for (const source of sources) inputs.push({ type: 'heartbeatReceived', heartbeat: source(nowMs / 1000 + 1), nowMs });
    inputs.push({ type: 'tick', nowMs });
  }
  return run(state, ...inputs);
}

const ofType = <T extends MembershipEffect['type']>(effects: readonly MembershipEffect[], type: T) =>
  effects.filter((e): e is Extract<MembershipEffect, { type: T }> => e.type === type);

test('a live peer started before this one claiming its site at another DICOM address, once confirmed, takes the site: siteNameTaken once', () => {
  // peer-a started at incarnation 5; peer-twin at 3, so it holds the site.
  const self = initMembership({ ...config, incarnation: 5 });
  const twin = (sequence: number) => claimant('peer-twin', 3, sequence, 'twin:104');
  const early = runHeard(self, 0, confirmMs - 1000, [twin]);
  assert.deepEqual(ofType(early.effects, 'siteNameTaken'), [], 'not before the claim is confirmed (it could be a dead predecessor relayed late)');
  assert.deepEqual(ofType(early.effects, 'siteConflictsChanged'), [], 'nor reported');
  const reported = runHeard(early.state, confirmMs, takenAfterMs - 1000, [twin]);
  assert.deepEqual(ofType(reported.effects, 'siteNameTaken'), [], 'not while the others are only showing the conflict');
  const later = runHeard(reported.state, takenAfterMs, takenAfterMs + 5000, [twin]);
  assert.deepEqual(ofType(later.effects, 'siteNameTaken'), [{ type: 'siteNameTaken', siteName: 'site-a', byPeerId: 'peer-twin', byDicom: 'twin:104' }], 'once, naming the peer and its address');
  assert.deepEqual(ofType(reported.effects, 'siteConflictsChanged'), [
    { type: 'siteConflictsChanged', conflicts: [{ siteName: 'site-a', peers: [{ peerId: 'peer-twin', dicom: 'twin:104', incarnation: 3 }, { peerId: 'peer-a', dicom: 'a:104', incarnation: 5 }] }] },
  ], 'the conflict reported once, the holder first');
});

test('the peer started first keeps its site and reports the later twin while it lives; the report ends when the twin dies', () => {
  const self = initMembership({ ...config, incarnation: 3 });
  const twin = (sequence: number) => claimant('peer-twin', 5, sequence, 'twin:104');
  const seen = runHeard(self, 0, confirmMs + 2000, [twin]);
  assert.deepEqual(ofType(seen.effects, 'siteNameTaken'), [], 'the holder never stops');
  assert.deepEqual(seen.state.siteConflicts.map((c) => c.peers.map((p) => p.peerId)), [['peer-a', 'peer-twin']], 'the conflict is shown, the holder first');
  const gone = run(seen.state, { type: 'peerDisconnected', peerId: 'peer-twin', nowMs: confirmMs + 2050 }, { type: 'tick', nowMs: confirmMs + 2100 });
  assert.deepEqual(ofType(gone.effects, 'siteConflictsChanged'), [{ type: 'siteConflictsChanged', conflicts: [] }], 'the end of the conflict is reported');
});

test('twins started at once agree which one stops: the same incarnation goes by PeerId, and exactly one is told', () => {
  const atA = { ...config, peerId: 'peer-a', incarnation: 7 };
  const atB = { ...config, peerId: 'peer-b', incarnation: 7, addresses: { dicom: 'b:104', http: 'b:8080', aeTitle: 'PACSMESH' } };
  const hbOf = (c: MembershipConfig) => (sequence: number) => claimant(c.peerId, c.incarnation, sequence, c.addresses.dicom);
  const a = runHeard(initMembership(atA), 0, takenAfterMs + 2000, [hbOf(atB)]);
  const b = runHeard(initMembership(atB), 0, takenAfterMs + 2000, [hbOf(atA)]);
  assert.deepEqual(ofType(a.effects, 'siteNameTaken'), [], 'peer-a (lower PeerId) keeps the site');
  assert.deepEqual(ofType(b.effects, 'siteNameTaken').map((e) => e.byPeerId), ['peer-a'], 'peer-b stops');
});

test('a dead predecessor at another address, its last heartbeats relayed late from gossip caches, never makes the restarted site stop', () => {
  // The site moved to a new address and was restored on an empty disk (new PeerId, higher incarnation);
  // its predecessor (lower incarnation: it would hold the site if alive) died before, and its last
  // heartbeats arrive together, then nothing more.
  let s = run(initMembership({ ...config, incarnation: 9 }), { type: 'tick', nowMs: 0 }).state;
  const lingering: MembershipInput[] = [];
  for (let sequence = 40; sequence < 50; sequence += 1) lingering.push({ type: 'heartbeatReceived', heartbeat: claimant('peer-old', 2, sequence, 'old-host:104'), nowMs: 100 + sequence });
  const effects: MembershipEffect[] = [];
  for (const step of [run(s, ...lingering), runHeard(run(s, ...lingering).state, 200, 10 * confirmMs, [])]) {
    effects.push(...step.effects);
    s = step.state;
  }
  assert.deepEqual(ofType(effects, 'siteNameTaken'), [], 'never told to stop');
  assert.deepEqual(ofType(effects, 'siteConflictsChanged'), [], 'never a conflict');
  assert.equal(statusOf(s, 'peer-old'), 'dead', 'the predecessor is dead');
});

test('peers of one site on purpose (--site-peers several at each) are no conflict; one claiming the site alone makes it one, reported, and the peer told several stops for nothing (an earlier version\'s heartbeat says nothing of it)', () => {
  const self = initMembership({ ...config, incarnation: 5, siteShared: true });
  const shared = runHeard(self, 0, confirmMs + 2000, [(sequence) => claimant('peer-a2', 3, sequence, 'a2:104', { siteShared: true })]);
  assert.deepEqual(ofType(shared.effects, 'siteNameTaken'), [], 'both said several');
  assert.deepEqual(shared.state.siteConflicts, [], 'no conflict shown');
  const alone = runHeard(self, 0, takenAfterMs + 2000, [(sequence) => claimant('peer-a2', 3, sequence, 'a2:104')]);
  assert.deepEqual(ofType(alone.effects, 'siteNameTaken'), [], 'told several, it does not stop, though it started later');
  assert.deepEqual(alone.state.siteConflicts.map((conflict) => conflict.siteName), ['site-a'], 'the other claims site-a alone: a conflict, reported');
  const published = run(self, { type: 'tick', nowMs: 0 }).effects.find((e) => e.type === 'publish');
  assert.ok(published?.type === 'publish' && published.message.siteShared === true, 'the heartbeat says several');
});

test("a peer's build goes out in its heartbeats and is kept in the record of it; a heartbeat without one (an earlier build) leaves none", () => {
  const published = run(initMembership({ ...config, build: '0.1.0' }), { type: 'tick', nowMs: 0 }).effects.find((e) => e.type === 'publish');
  assert.ok(published?.type === 'publish' && published.message.build === '0.1.0', 'the heartbeat names the build');
  const unnamed = run(initMembership(config), { type: 'tick', nowMs: 0 }).effects.find((e) => e.type === 'publish');
  assert.ok(unnamed?.type === 'publish' && !('build' in unnamed.message), 'none configured, none sent');
  const heard = run(
    initMembership(config),
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 2, 1, { build: '0.2.0' }), nowMs: 10 },
    { type: 'heartbeatReceived', heartbeat: heartbeat('peer-c', 2, 1), nowMs: 10 },
  ).state;
  assert.equal(heard.members.get('peer-b')?.build, '0.2.0');
  assert.equal(heard.members.get('peer-c')?.build, undefined);
});

test('another site claimed at two addresses is reported by a third peer, which stops for nothing', () => {
  const site = (peerId: string, incarnation: number, dicom: string) => (sequence: number) => heartbeat(peerId, incarnation, sequence, { siteName: 'site-b', addresses: { dicom, http: 'h', aeTitle: 'PACSMESH' } });
  const seen = runHeard(initMembership(config), 0, confirmMs + 2000, [site('peer-b', 2, 'b:104'), site('peer-b2', 4, 'b2:104')]);
  assert.deepEqual(ofType(seen.effects, 'siteNameTaken'), [], 'not its own site');
  assert.deepEqual(seen.state.siteConflicts, [{ siteName: 'site-b', peers: [{ peerId: 'peer-b', dicom: 'b:104', incarnation: 2 }, { peerId: 'peer-b2', dicom: 'b2:104', incarnation: 4 }] }], 'reported, the holder first');
  // A restore at the same address (same site, new PeerId) is the site's successor, no conflict.
  const successor = runHeard(initMembership(config), 0, confirmMs + 2000, [site('peer-b', 2, 'b:104'), site('peer-b3', 4, 'b:104')]);
  assert.deepEqual(successor.state.siteConflicts, [], 'one address, one place');
});

test('the member table stays within membersMax when every peer in it is alive: a new peer waits for a place (helper 97)', () => {
  // Heartbeats from many identities (each signed by its own key: one insider can make any number of them).
  let s = initMembership(config);
  for (let i = 0; i < 40; i += 1) s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat(`peer-x${String(i).padStart(2, '0')}`, 1, 1), nowMs: i }).state;
  assert.ok(s.members.size <= config.membersMax, `${s.members.size} members, membersMax ${config.membersMax}`);
  // The members admitted are kept up to date, and one that dies makes room for the next.
  const admitted = [...s.members.keys()];
  s = run(s, { type: 'heartbeatReceived', heartbeat: heartbeat(admitted[0]!, 1, 2), nowMs: 100 }).state;
  assert.equal(s.members.get(admitted[0]!)?.sequence, 2);
  s = run(s, { type: 'peerDisconnected', peerId: admitted[1]!, nowMs: 101 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-late', 1, 1), nowMs: 102 }).state;
  assert.equal(statusOf(s, 'peer-late'), 'alive');
  assert.ok(s.members.size <= config.membersMax);
});

test('a stall is not reported as the others\' view of this peer when no other member was alive or suspect (a site serving alone)', () => {
  const stalls = (effects: readonly MembershipEffect[]) => effects.filter((e) => e.type === 'selfStalled');
  // Nobody ever heard: a lone peer's 30 s stall was noticed by no one.
  const alone = run(initMembership(config), ...ticks(0, 500)).state;
  assert.deepEqual(stalls(run(alone, { type: 'tick', nowMs: 31_000 }).effects), []);
  // Its only member dead before the stall: nobody listening either.
  let s = run(initMembership(config), { type: 'tick', nowMs: 0 }, { type: 'heartbeatReceived', heartbeat: heartbeat('peer-b', 1, 1), nowMs: 0 }).state;
  s = run(s, ...ticks(0, 10_000)).state;
  assert.equal(statusOf(s, 'peer-b'), 'dead');
  assert.deepEqual(stalls(run(s, { type: 'tick', nowMs: 41_000 }).effects), []);
});
