import assert from 'node:assert/strict';
import { test } from 'node:test';
import { heartbeatForgottenSitesMax, type MemberRecord, type MemberStatus } from '../../membership/messages.ts';
import { memberRecord } from '../../membership/fixtures/member-record.ts';
import { bucketOf, createDigest, digestBuckets, digestOf } from './digest.ts';
import { aliveReplicaTargets, custodyStats, effectiveWriteQuorum, holdsNothingMore, incomingCopyForgetMs, initCustody, knownSiteRefreshMs, repairQuietOverrideFactor, stepCustody, writeQuorumAboveSitesKnown, writeQuorumNow, type CustodyState } from './logic.ts';
import { StoreStatus, type CustodyConfig, type CustodyEffect, type CustodyInput, type KnownSite } from './messages.ts';
import { runSteps } from '../../runtime/run-steps.ts';

const config: CustodyConfig = {
  selfPeerId: 'peer-a',
  selfSiteName: 'site-a',
  writeQuorum: 'auto',
  quorumTimeoutMs: 1000,
  debtEntriesMax: 4,
  pendingStoresMax: 8,
  replicationsInFlightMax: 8,
  replicationRetryMs: 500,
  repairIntervalMs: 10_000,
  repairKeysMax: 100,
  fetchesInFlightMax: 4,
  repairQuietMs: 0,
  knownSiteForgetAfterMs: 3_600_000,
  knownSitesMax: 4,
  forgottenSiteReturnAliveMs: 0,
  // The steady state: a start's wait for the known sites has its own test.
  storeSettleAfterStartMs: 0,
};

function member(peerId: string, status: MemberStatus = 'alive'): MemberRecord {
  return memberRecord(peerId, { status, addresses: { dicom: '', http: '', aeTitle: 'PACSMESH' }, load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 0 } });
}

const run = (state: CustodyState, ...inputs: CustodyInput[]) => runSteps(stepCustody, state, inputs);

/** Store uid through admission and a successful local write. */
function store(state: CustodyState, requestId: string, uid: string, nowMs: number) {
  return run(
    state,
    { type: 'storeRequested', requestId, sopInstanceUid: uid, sha256: `sha-${uid}`, nowMs },
    { type: 'localWriteDone', requestId, ok: true, nowMs },
  );
}

const acks = (effects: CustodyEffect[]) => effects.filter((e) => e.type === 'ackStore');
const ack = (uid: string, site: string, nowMs: number): CustodyInput => ({
  type: 'messageReceived',
  from: `peer-${site.slice(-1)}`,
  message: { type: 'replicaAck', sopInstanceUid: uid, siteName: site },
  nowMs,
});

test('an acknowledgement counts toward the quorum though its transfer was given up (its stream failed, or it outlived replicationRetryMs)', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = store(s, 'r1', 'u1', 0).state;
  // The copy arrived at site-b, but the stream broke before its answer: the slot is freed...
  s = run(s, { type: 'replicationFailed', sopInstanceUid: 'u1', toSiteName: 'site-b', nowMs: 10 }).state;
  assert.equal(s.replicationsInFlight.size, 0);
  // ...and site-b's acknowledgement (a later transfer's "have", or a push's result) still completes the store.
  const acked = run(s, ack('u1', 'site-b', 20));
  assert.deepEqual(acks(acked.effects).map((e) => e.type === 'ackStore' && [e.status, e.sitesHolding]), [[StoreStatus.Success, ['site-a', 'site-b']]]);
  // Likewise once a transfer outlived replicationRetryMs (its slot freed at a tick), without the repeat it started.
  s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = store(s, 'r2', 'u2', 0).state;
  s.replicationsInFlight.clear();
  const late = run(s, ack('u2', 'site-b', config.replicationRetryMs + 1));
  assert.equal(acks(late.effects).length, 1);
});

test('write quorum default: 2 with another site alive, 1 when alone; a number is used as given', () => {
  assert.equal(effectiveWriteQuorum(config, 1), 1);
  assert.equal(effectiveWriteQuorum(config, 2), 2);
  assert.equal(effectiveWriteQuorum(config, 5), 2);
  assert.equal(effectiveWriteQuorum({ ...config, writeQuorum: 3 }, 1), 3);
});

test('a store is written locally, offered to every live site, and acknowledged once the quorum holds', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  const requested = run(s, { type: 'storeRequested', requestId: 'r1', sopInstanceUid: '1.2.3', sha256: 'x', nowMs: 0 });
  assert.deepEqual(requested.effects, [{ type: 'writeLocal', requestId: 'r1', sopInstanceUid: '1.2.3' }]);
  const written = run(requested.state, { type: 'localWriteDone', requestId: 'r1', ok: true, nowMs: 1 });
  assert.equal(acks(written.effects).length, 0, 'one site is not a quorum of 2');
  assert.deepEqual(
    written.effects.filter((e) => e.type === 'persistDebt').map((e) => (e.type === 'persistDebt' ? e.entry.siteName : '')),
    ['site-b', 'site-c'],
  );
  assert.deepEqual(
    written.effects.filter((e) => e.type === 'replicate').map((e) => (e.type === 'replicate' ? e.toPeerId : '')),
    ['peer-b', 'peer-c'],
  );
  const acked = run(written.state, ack('1.2.3', 'site-c', 50));
  assert.deepEqual(acks(acked.effects), [
    { type: 'ackStore', requestId: 'r1', sopInstanceUid: '1.2.3', status: StoreStatus.Success, quorum: 2, sitesHolding: ['site-a', 'site-c'] },
  ]);
  assert.ok(acked.effects.some((e) => e.type === 'removeDebt' && e.siteName === 'site-c'));
  assert.equal(acked.state.debt.size, 1, 'site-b is still owed its copy');
});

test('no quorum within quorumTimeoutMs: 0xA700, and the copies stay owed', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = store(s, 'r1', '1.2.4', 0).state;
  assert.equal(acks(run(s, { type: 'tick', nowMs: 999 }).effects).length, 0);
  const timedOut = run(s, { type: 'tick', nowMs: 1000 });
  const [a] = acks(timedOut.effects);
  assert.ok(a && a.type === 'ackStore');
  assert.equal(a.status, StoreStatus.OutOfResources);
  assert.equal(timedOut.state.debt.size, 1);
});

test('alone with writeQuorum auto: acknowledged after the local write, debt persisted for absent sites', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead')], nowMs: 0 }).state;
  const stored = store(s, 'r1', '1.2.5', 0);
  const [a] = acks(stored.effects);
  assert.ok(a && a.type === 'ackStore');
  assert.equal(a.status, StoreStatus.Success);
  assert.equal(a.quorum, 1);
  assert.ok(stored.effects.some((e) => e.type === 'persistDebt' && e.entry.siteName === 'site-b'));
  assert.ok(!stored.effects.some((e) => e.type === 'replicate'), 'nothing is sent to a dead site');
});

test('debt survives a restart and drains when the site comes back', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead')], nowMs: 0 }).state;
  s = store(s, 'r1', '1.2.6', 0).state;
  // Crash: rebuild from what was durable.
  const restarted = initCustody(config, {
    digest: digestOf([{ sopInstanceUid: '1.2.6', sha256: 'sha-1.2.6' }]),
    debt: [...s.debt.values()],
  });
  const back = run(restarted, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 100 });
  assert.deepEqual(
    back.effects.filter((e) => e.type === 'replicate'),
    [{ type: 'replicate', toPeerId: 'peer-b', toSiteName: 'site-b', sopInstanceUid: '1.2.6' }],
  );
  const drained = run(back.state, ack('1.2.6', 'site-b', 150));
  assert.deepEqual(drained.effects, [{ type: 'removeDebt', sopInstanceUid: '1.2.6', siteName: 'site-b' }]);
  assert.equal(drained.state.debt.size, 0);
});

test('a restarted peer owes copies to the sites it knew before it hears from them again', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  const learnt = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 10 });
  const persisted = learnt.effects.filter((e) => e.type === 'persistKnownSites');
  assert.deepEqual(persisted, [
    {
      type: 'persistKnownSites',
      seen: [{ siteName: 'site-b', lastHeardMs: 10 }, { siteName: 'site-c', lastHeardMs: 10 }],
      learnt: ['site-b', 'site-c'],
      forgotten: [],
      tombstonesAdopted: [],
      tombstonesDropped: [],
      sitesKnown: 3,
    },
  ]);
  s = learnt.state;
  assert.deepEqual(run(s, { type: 'tick', nowMs: 20 }).effects.filter((e) => e.type === 'persistKnownSites'), [], 'not rewritten at every step');
  // Restart: the view is empty (nobody heard yet), the known sites come from disk.
  const restarted = initCustody(config, { digest: createDigest(), debt: [], knownSites: persisted[0]?.type === 'persistKnownSites' ? persisted[0].seen : [] });
  const stored = store(restarted, 'r1', '1.2.7', 30);
  assert.deepEqual(acks(stored.effects).map((e) => (e.type === 'ackStore' ? [e.status, e.quorum] : [])), [[StoreStatus.Success, 1]], 'alone: quorum 1');
  assert.deepEqual(
    stored.effects.filter((e) => e.type === 'persistDebt').map((e) => (e.type === 'persistDebt' ? e.entry.siteName : '')),
    ['site-b', 'site-c'],
  );
  // An alive site's last-heard time is rewritten once a minute (at a view: one comes with every heartbeat),
  // so it is recent after a restart.
  const later = run(learnt.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 10 + knownSiteRefreshMs });
  assert.deepEqual(later.effects.filter((e) => e.type === 'persistKnownSites').map((e) => (e.type === 'persistKnownSites' ? e.seen.length : 0)), [2]);
  assert.deepEqual(later.effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.learnt : [])), [], 'refreshed, not learnt');
});

test('a site silent for knownSiteForgetAfterMs is forgotten with the copies owed to it, and learnt again when it returns', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  const bDead = member('peer-b', 'dead'); // last heard at 0
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), bDead, member('peer-c')], nowMs: 10 }).state;
  s = store(s, 'r1', '1.2.8', 20).state;
  s = run(s, ack('1.2.8', 'site-c', 30)).state;
  assert.deepEqual([...s.debt.values()].map((d) => d.siteName), ['site-b']);
  const forgetting = (effects: CustodyEffect[]) =>
    effects.flatMap((e) => (e.type === 'removeDebt' ? [`owed ${e.sopInstanceUid} to ${e.siteName}`] : e.type === 'persistKnownSites' ? e.forgotten.map((f) => f.siteName) : []));
  assert.deepEqual(forgetting(run(s, { type: 'tick', nowMs: config.knownSiteForgetAfterMs - 1 }).effects), []);
  const forgot = run(s, { type: 'tick', nowMs: config.knownSiteForgetAfterMs });
  assert.deepEqual(forgetting(forgot.effects), ['owed 1.2.8 to site-b', 'site-b']);
  s = forgot.state;
  assert.equal(s.debt.size, 0);
  // Its dead record still in the view does not bring it back; a store owes it nothing.
  const nowMs = 10 + config.knownSiteForgetAfterMs;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), bDead, member('peer-c')], nowMs }).state;
  const stored = store(s, 'r2', '1.2.9', nowMs);
  assert.deepEqual(stored.effects.filter((e) => e.type === 'persistDebt').map((e) => (e.type === 'persistDebt' ? e.entry.siteName : '')), ['site-c']);
  // Heard again: known again.
  const back = run(stored.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: nowMs + 1 });
  assert.ok(back.effects.some((e) => e.type === 'persistKnownSites' && e.seen.some((k) => k.siteName === 'site-b')));
  assert.ok(back.state.knownSites.has('site-b'));
});

test('queued work counts copies owed to alive sites (and pulls), not those waiting for an absent site', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c', 'dead')], nowMs: 0 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 1 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c', 'dead')], nowMs: 2 }).state;
  s = store(s, 'r1', 'u1', 3).state;
  const owedPerSite = (state: CustodyState) => Object.fromEntries([...state.debtBySite].map(([site, owed]) => [site, owed.size]));
  assert.deepEqual(owedPerSite(s), { 'site-b': 1, 'site-c': 1 });
  assert.equal(custodyStats(s).queuedWork, 1, 'only the copy owed to site-b, which is alive');
  s = run(s, ack('u1', 'site-b', 4)).state;
  assert.deepEqual(owedPerSite(s), { 'site-c': 1 });
  assert.equal(custodyStats(s).queuedWork, 0);
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 5 }).state;
  assert.equal(custodyStats(s).queuedWork, 1, 'site-c is back: its copy is work now');
});

/** Counts the entries handed out by a map's iterators (for-of, entries, keys, values). */
function countWalks<K, V>(map: Map<K, V>, counter: { entries: number }): void {
  for (const method of [Symbol.iterator, 'entries', 'keys', 'values'] as const) {
    const original = Map.prototype[method] as (this: Map<K, V>) => IterableIterator<unknown>;
    Object.defineProperty(map, method, {
      value: function* (this: Map<K, V>) {
        for (const item of original.call(this)) {
          counter.entries++;
          yield item;
        }
      },
    });
  }
}

test('copies owed to a site that is down cost no work per store: the drain walks only the sites it can send to', () => {
  const owedToAbsentSite = 10_000;
  const debt = Array.from({ length: owedToAbsentSite }, (_, i) => ({ sopInstanceUid: `5.${i}`, siteName: 'site-c', sinceMs: 0 }));
  let s = initCustody({ ...config, debtEntriesMax: 100_000 }, { digest: createDigest(), debt, knownSites: [{ siteName: 'site-b', lastHeardMs: 0 }, { siteName: 'site-c', lastHeardMs: 0 }] });
  const view = [member('peer-a'), member('peer-b'), member('peer-c', 'dead')];
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const walked = { entries: 0 };
  countWalks(s.debt, walked);
  for (const owed of s.debtBySite.values()) countWalks(owed, walked);
  const stores = 50;
  for (let i = 0; i < stores; i++) {
    const step = run(store(s, `r${i}`, `6.${i}`, 1 + i).state, ack(`6.${i}`, 'site-b', 1 + i), { type: 'viewChanged', members: view, nowMs: 1 + i }, { type: 'tick', nowMs: 1 + i });
    s = step.state;
    assert.deepEqual(acks(step.effects).map((e) => (e.type === 'ackStore' ? e.status : -1)), [StoreStatus.Success], 'Success once site-b holds it');
  }
  assert.equal(s.debtBySite.get('site-c')?.size, owedToAbsentSite + stores, 'every copy for site-c stays owed');
  assert.ok(!s.debtBySite.has('site-b'), 'site-b acknowledged each copy');
  assert.ok(walked.entries <= stores * config.replicationsInFlightMax, `${walked.entries} debt entries walked for ${stores} stores with ${owedToAbsentSite} owed to a site that is down`);
});

test('after a start the known sites not heard yet count for the quorum: a store waits for them, then gets what the sites up can give', () => {
  const settling = { ...config, storeSettleAfterStartMs: 5000, quorumTimeoutMs: 10_000 };
  const restart = (c: CustodyConfig) => initCustody(c, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 0 }, { siteName: 'site-c', lastHeardMs: 0 }] });
  // Restarted, nobody heard yet: 'auto' does not acknowledge on the one copy here while site-b may be alive.
  let s = run(restart(settling), { type: 'viewChanged', members: [member('peer-a')], nowMs: 1000 }).state;
  // Storage Commitment counts copies against the same quorum.
  assert.deepEqual([writeQuorumNow(s, 1100), writeQuorumNow(s, 6000)], [2, 1]);
  const early = store(s, 'r1', 'u1', 1100);
  assert.deepEqual(acks(early.effects), [], 'waits for the known sites');
  // site-b heard: the copy goes to it, and its acknowledgement makes the quorum of 2.
  const heard = run(early.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 1500 });
  assert.ok(heard.effects.some((e) => e.type === 'replicate' && e.toPeerId === 'peer-b'));
  const acked = run(heard.state, ack('u1', 'site-b', 1600));
  assert.deepEqual(acks(acked.effects), [{ type: 'ackStore', requestId: 'r1', sopInstanceUid: 'u1', status: StoreStatus.Success, quorum: 2, sitesHolding: ['site-a', 'site-b'] }]);
  // Nobody comes: at the end of the wait the store gets Success on its local copy ('auto' alone).
  s = run(restart(settling), { type: 'viewChanged', members: [member('peer-a')], nowMs: 1000 }).state;
  s = store(s, 'r2', 'u2', 1100).state;
  assert.deepEqual(acks(run(s, { type: 'tick', nowMs: 5999 }).effects), [], 'still waiting');
  assert.deepEqual(acks(run(s, { type: 'tick', nowMs: 6000 }).effects), [{ type: 'ackStore', requestId: 'r2', sopInstanceUid: 'u2', status: StoreStatus.Success, quorum: 1, sitesHolding: ['site-a'] }]);
  // An explicit quorum is not refused 0xA700 before the known sites could be heard; at the end of the wait it is.
  s = run(restart({ ...settling, writeQuorum: 2 }), { type: 'viewChanged', members: [member('peer-a')], nowMs: 1000 }).state;
  const explicit = store(s, 'r3', 'u3', 1100);
  assert.deepEqual(acks(explicit.effects), []);
  assert.deepEqual(acks(run(explicit.state, { type: 'tick', nowMs: 6000 }).effects).map((e) => (e.type === 'ackStore' ? e.status : 0)), [StoreStatus.OutOfResources]);
  // A known site already seen dead in this run is not awaited: answered at once, as before.
  s = run(restart(settling), { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')], nowMs: 1000 }).state;
  assert.deepEqual(acks(store(s, 'r5', 'u5', 1100).effects).map((e) => (e.type === 'ackStore' ? e.quorum : 0)), [1]);
  // A store after the wait is not held: the wait is a start's only.
  s = run(restart(settling), { type: 'viewChanged', members: [member('peer-a')], nowMs: 1000 }, { type: 'tick', nowMs: 6000 }).state;
  assert.deepEqual(acks(store(s, 'r4', 'u4', 6100).effects).map((e) => (e.type === 'ackStore' ? e.quorum : 0)), [1]);
});

test('an explicit write quorum that the sites up cannot reach is refused at once, not at the deadline; a suspect site still counts', () => {
  const quorum2 = { ...config, writeQuorum: 2 } as const;
  let s = initCustody(quorum2, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  // Cut off: both other sites dead. Refused as soon as the local copy is durable; the copies stay owed.
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')], nowMs: 1 }).state;
  const alone = store(s, 'r1', 'u1', 2);
  assert.deepEqual(acks(alone.effects), [{ type: 'ackStore', requestId: 'r1', sopInstanceUid: 'u1', status: StoreStatus.OutOfResources, quorum: 2, sitesHolding: ['site-a'], sitesUp: 1 }]);
  assert.equal(alone.state.pending.size, 0);
  assert.equal(alone.state.debt.size, 2, 'owed to site-b and site-c');
  // A suspect site may be back within the quorum timeout: the store waits for it...
  s = run(alone.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'suspect'), member('peer-c', 'dead')], nowMs: 3 }).state;
  const waiting = store(s, 'r2', 'u2', 4);
  assert.deepEqual(acks(waiting.effects), []);
  // ...and is answered the moment that site is found dead.
  const died = run(waiting.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')], nowMs: 5 });
  assert.deepEqual(acks(died.effects).map((e) => (e.type === 'ackStore' ? [e.requestId, e.status, e.sitesUp] : [])), [['r2', StoreStatus.OutOfResources, 1]]);
  assert.equal(died.state.pending.size, 0);
});

test('writeQuorum auto: a store in flight when this site is left alone is acknowledged on its local copy once the others are dead, not refused (helper 65)', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  const inFlight = store(s, 'r1', 'u1', 1);
  assert.deepEqual(acks(inFlight.effects), [], 'waits for a second site');
  // Suspect: may be back, the store waits.
  s = run(inFlight.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'suspect'), member('peer-c', 'suspect')], nowMs: 2 }).state;
  assert.equal(s.pending.size, 1);
  const alone = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')], nowMs: 3 });
  assert.deepEqual(acks(alone.effects), [{ type: 'ackStore', requestId: 'r1', sopInstanceUid: 'u1', status: StoreStatus.Success, quorum: 1, sitesHolding: ['site-a'] }]);
  assert.equal(alone.state.pending.size, 0);
  assert.equal(alone.state.debt.size, 2, 'owed to site-b and site-c');
});

test('a site the operator forgets is dropped with its debt, unless one of its peers is alive', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c')], nowMs: 1 }).state;
  s = store(s, 'r1', 'u1', 2).state;
  s = run(s, ack('u1', 'site-c', 3)).state;
  const alive = run(s, { type: 'forgetSiteRequested', siteName: 'site-c', nowMs: 4 });
  assert.deepEqual(alive.effects, [], 'site-c is alive: nothing happens');
  const forgot = run(alive.state, { type: 'forgetSiteRequested', siteName: 'site-b', nowMs: 5 });
  assert.deepEqual(forgot.effects, [
    { type: 'removeDebt', sopInstanceUid: 'u1', siteName: 'site-b' },
    { type: 'persistKnownSites', seen: [], learnt: [], forgotten: [{ siteName: 'site-b', forgottenAtMs: 5, byOperator: true }], tombstonesAdopted: [], tombstonesDropped: [], sitesKnown: 2 },
  ]);
  assert.deepEqual(custodyStats(forgot.state).forgottenSites, [{ siteName: 'site-b', forgottenAtMs: 5, byOperator: true }], 'passed on in the heartbeat, as the operator\'s');
  assert.equal(forgot.state.debt.size, 0);
  assert.deepEqual([...forgot.state.knownSites.keys()], ['site-c']);
  // Its dead record, still in the view, does not bring it back (it was heard before it was forgotten).
  s = run(forgot.state, { type: 'viewChanged', members: [member('peer-a'), { ...member('peer-b', 'dead'), lastHeardAtMs: 1 }, member('peer-c')], nowMs: 6 }, { type: 'tick', nowMs: 7 }).state;
  assert.deepEqual([...s.knownSites.keys()], ['site-c']);
  const stored = store(s, 'r2', 'u2', 8);
  assert.deepEqual(stored.effects.filter((e) => e.type === 'persistDebt').map((e) => (e.type === 'persistDebt' ? e.entry.siteName : '')), ['site-c']);
  // Heard from again: known again.
  s = run(stored.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 9 }).state;
  assert.deepEqual([...s.knownSites.keys()].sort(), ['site-b', 'site-c']);
});

/** A member whose heartbeat carries tombstones. */
function forgetting(peerId: string, ...tombstones: Array<[siteName: string, forgottenAtMs: number]>): MemberRecord {
  return { ...member(peerId), forgottenSites: tombstones.map(([siteName, forgottenAtMs]) => ({ siteName, forgottenAtMs })) };
}

test('a site forgotten at another peer is forgotten here, with its debt (a peer restored from a backup taken before the forgetting)', () => {
  // Restored: it knew site-x (heard at 100) and owes it a copy; site-b forgot site-x at 500.
  let s = initCustody(config, {
    digest: createDigest(),
    debt: [{ sopInstanceUid: 'u1', siteName: 'site-x', sinceMs: 90 }],
    knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }, { siteName: 'site-x', lastHeardMs: 100 }],
  });
  const heard = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 500])], nowMs: 1000 });
  assert.deepEqual(heard.effects.filter((e) => e.type === 'removeDebt' || e.type === 'persistKnownSites'), [
    { type: 'removeDebt', sopInstanceUid: 'u1', siteName: 'site-x' },
    {
      type: 'persistKnownSites',
      seen: [],
      learnt: [],
      forgotten: [{ siteName: 'site-x', forgottenAtMs: 500 }],
      tombstonesAdopted: [],
      tombstonesDropped: [],
      sitesKnown: 2,
    },
  ]);
  s = heard.state;
  assert.deepEqual([...s.knownSites.keys()], ['site-b']);
  assert.equal(s.debt.size, 0);
  // Passed on with the forgetting peer's time, and not taken in again from the next heartbeat.
  assert.deepEqual(custodyStats(s).forgottenSites, [{ siteName: 'site-x', forgottenAtMs: 500 }]);
  assert.deepEqual(run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 500])], nowMs: 1100 }).effects.filter((e) => e.type === 'persistKnownSites'), []);
  // A store owes site-x nothing now.
  const stored = store(s, 'r1', 'u2', 1200);
  assert.deepEqual(stored.effects.filter((e) => e.type === 'persistDebt').map((e) => (e.type === 'persistDebt' ? e.entry.siteName : '')), ['site-b']);
});

test('a tombstone from another peer is not taken while the site is up here, or when this peer heard it after it was forgotten there', () => {
  const known = { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }, { siteName: 'site-x', lastHeardMs: 600 }] };
  const forgottenHere = (members: MemberRecord[], nowMs: number) =>
    run(initCustody(config, known), { type: 'viewChanged', members, nowMs }).effects.flatMap((e) => (e.type === 'persistKnownSites' ? [...e.forgotten, ...e.tombstonesAdopted].map((f) => f.siteName) : []));
  // Heard here at 600, after site-b forgot it at 500: news site-b lacks.
  assert.deepEqual(forgottenHere([member('peer-a'), forgetting('peer-b', ['site-x', 500])], 1000), []);
  // Up here (alive, or suspect: a pause is not a death).
  for (const status of ['alive', 'suspect'] as const) {
    assert.deepEqual(forgottenHere([member('peer-a'), forgetting('peer-b', ['site-x', 700]), { ...member('peer-x', status), siteName: 'site-x' }], 1000), [], status);
  }
  // From a peer not alive here (its record dates from before its silence), or a tombstone too old to pass on.
  assert.deepEqual(forgottenHere([member('peer-a'), { ...forgetting('peer-b', ['site-x', 700]), status: 'dead' }], 1000), []);
  assert.ok(!forgottenHere([member('peer-a'), forgetting('peer-b', ['site-y', 700])], 700 + config.knownSiteForgetAfterMs).includes('site-y'));
  // This site itself is never forgotten.
  assert.deepEqual(forgottenHere([member('peer-a'), forgetting('peer-b', ['site-a', 700])], 1000), []);
  // Otherwise it is.
  assert.deepEqual(forgottenHere([member('peer-a'), forgetting('peer-b', ['site-x', 700])], 1000), ['site-x']);
});

test('a tombstone says whether the operator forgot the site (only then do the rosters drop its peers at once): kept through the heartbeats\' relay and a restart', () => {
  const threePeers = () => run(initCustody(config, { digest: createDigest(), debt: [] }), { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  const down = [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')];
  let s = run(threePeers(), { type: 'viewChanged', members: down, nowMs: 10 }).state;
  s = run(s, { type: 'forgetSiteRequested', siteName: 'site-b', nowMs: config.knownSiteForgetAfterMs - 1 }).state;
  const silent = run(s, { type: 'tick', nowMs: config.knownSiteForgetAfterMs });
  const persisted = silent.effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.forgotten : []));
  assert.deepEqual(persisted, [{ siteName: 'site-c', forgottenAtMs: config.knownSiteForgetAfterMs }], 'by silence: no flag');
  const passedOn = custodyStats(silent.state).forgottenSites;
  assert.deepEqual(passedOn, [{ siteName: 'site-c', forgottenAtMs: config.knownSiteForgetAfterMs }, { siteName: 'site-b', forgottenAtMs: config.knownSiteForgetAfterMs - 1, byOperator: true }]);
  // Restarted from what it persisted: the same tombstones, flags and all.
  assert.deepEqual(custodyStats(initCustody(config, { digest: createDigest(), debt: [], forgottenSites: [...passedOn] })).forgottenSites, passedOn);
  // Another peer takes both in from the heartbeat, each as it came, and passes them on so.
  const relayed: MemberRecord = { ...member('peer-a'), forgottenSites: passedOn };
  const other = run(initCustody({ ...config, selfPeerId: 'peer-d', selfSiteName: 'site-d' }, { digest: createDigest(), debt: [] }), { type: 'viewChanged', members: [relayed], nowMs: config.knownSiteForgetAfterMs + 100 });
  assert.deepEqual(other.effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.tombstonesAdopted : [])), passedOn);
  assert.deepEqual(custodyStats(other.state).forgottenSites, passedOn);
  // A peer that forgot site-b by silence meanwhile takes the operator's word (even just as recent); one that
  // holds it keeps it when a later forgetting by silence comes from a peer that missed it.
  const bySilence = run(threePeers(), { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c')], nowMs: 10 }, { type: 'tick', nowMs: 10 + config.knownSiteForgetAfterMs }).state;
  assert.deepEqual(custodyStats(bySilence).forgottenSites, [{ siteName: 'site-b', forgottenAtMs: 10 + config.knownSiteForgetAfterMs }]);
  const operators = { ...member('peer-c'), forgottenSites: [{ siteName: 'site-b', forgottenAtMs: config.knownSiteForgetAfterMs, byOperator: true as const }] };
  const upgraded = run(bySilence, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), operators], nowMs: 20 + config.knownSiteForgetAfterMs }).state;
  assert.deepEqual(custodyStats(upgraded).forgottenSites, [{ siteName: 'site-b', forgottenAtMs: 10 + config.knownSiteForgetAfterMs, byOperator: true }]);
  const laterSilence = { ...member('peer-c'), forgottenSites: [{ siteName: 'site-b', forgottenAtMs: 10 * knownSiteRefreshMs + config.knownSiteForgetAfterMs }] };
  const kept = run(upgraded, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), laterSilence], nowMs: 11 * knownSiteRefreshMs + config.knownSiteForgetAfterMs }).state;
  assert.deepEqual(custodyStats(kept).forgottenSites, [{ siteName: 'site-b', forgottenAtMs: 10 * knownSiteRefreshMs + config.knownSiteForgetAfterMs, byOperator: true }]);
});

test('tombstones: one of a site unknown here is passed on; the newest go in the heartbeat; dropped after knownSiteForgetAfterMs, or when the site is heard again', () => {
  let s = initCustody({ ...config, knownSitesMax: 64 }, { digest: createDigest(), debt: [] });
  const many = Array.from({ length: heartbeatForgottenSitesMax + 2 }, (_, i): [string, number] => [`site-t${i}`, 100 + i]);
  const adopted = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ...many)], nowMs: 1000 });
  assert.deepEqual(adopted.effects.flatMap((e) => (e.type === 'persistKnownSites' ? [e.forgotten.length, e.tombstonesAdopted.length] : [])), [0, many.length]);
  s = adopted.state;
  const passedOn = custodyStats(s).forgottenSites;
  assert.equal(passedOn.length, many.length, 'all of them (the heartbeats carry a page each)');
  assert.deepEqual(passedOn[0], { siteName: `site-t${many.length - 1}`, forgottenAtMs: 100 + many.length - 1 }, 'newest first');
  // Computed once per change, not after every step (stats follow each store): the same array until then.
  s = store(s, 'r1', 'u1', 1500).state;
  assert.equal(custodyStats(s).forgottenSites, passedOn);
  // One of them returns: known again, its tombstone dropped with the write that records it.
  const back = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), { ...member('peer-t'), siteName: 'site-t0' }], nowMs: 2000 });
  assert.deepEqual(back.effects.flatMap((e) => (e.type === 'persistKnownSites' ? [...e.learnt, ...e.tombstonesDropped] : [])), ['site-t0', 'site-t0']);
  s = back.state;
  assert.ok(!s.forgottenSites.has('site-t0'));
  // An old heartbeat's tombstone does not forget it again: heard here after.
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ...many), { ...member('peer-t', 'dead'), siteName: 'site-t0', lastHeardAtMs: 2000 }], nowMs: 3000 }).state;
  assert.ok(s.knownSites.has('site-t0'));
  // Too old to pass on: dropped (a backup older than that forgets such a site by itself).
  const expired = run(s, { type: 'tick', nowMs: 101 + config.knownSiteForgetAfterMs });
  assert.deepEqual(expired.effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.tombstonesDropped : [])), ['site-t1']);
  assert.equal(custodyStats(expired.state).forgottenSites.length, many.length - 2);
});

test('a dead record does not bring a forgotten site back, even with a time after the forgetting (this peer paused: membership moves its records on)', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }, { siteName: 'site-x', lastHeardMs: 600 }] });
  s = run(s, { type: 'forgetSiteRequested', siteName: 'site-x', nowMs: 700 }).state;
  const movedOn = { ...member('peer-x', 'dead'), siteName: 'site-x', lastHeardAtMs: 900 };
  const paused = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), movedOn], nowMs: 1000 });
  assert.deepEqual(paused.effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.learnt : [])), []);
  assert.ok(!paused.state.knownSites.has('site-x') && paused.state.forgottenSites.has('site-x'));
  // A tombstone from another peer is taken in likewise: the known site's time decides, not the dead record's.
  const elsewhere = initCustody(config, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-x', lastHeardMs: 600 }] });
  const adopted = run(elsewhere, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 700]), movedOn], nowMs: 1000 });
  assert.ok(!adopted.state.knownSites.has('site-x'));
  assert.ok(!adopted.effects.some((e) => e.type === 'persistKnownSites' && e.learnt.includes('site-x')), 'nor learnt again in the same step');
  // Heard alive: known again.
  const back = run(adopted.state, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), { ...member('peer-x'), siteName: 'site-x' }], nowMs: 1100 });
  assert.ok(back.state.knownSites.has('site-x'));
});

test('a forgotten site is known again only once alive for forgottenSiteReturnAliveMs: a late heartbeat of a site that is gone does not undo the forgetting', () => {
  const patient = { ...config, forgottenSiteReturnAliveMs: 1000 };
  let s = initCustody(patient, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-x', lastHeardMs: 100 }] });
  s = run(s, { type: 'forgetSiteRequested', siteName: 'site-x', nowMs: 200 }).state;
  const aliveSince = (statusSinceMs: number) => ({ ...member('peer-x'), siteName: 'site-x', statusSinceMs });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), aliveSince(5000)], nowMs: 5500 }).state;
  assert.ok(!s.knownSites.has('site-x') && s.forgottenSites.has('site-x'), 'alive for 500 ms: a moment');
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), aliveSince(5000)], nowMs: 6000 }).state;
  assert.ok(s.knownSites.has('site-x') && !s.forgottenSites.has('site-x'), 'alive for 1 s: back');
});

test('a site forgotten elsewhere just after it went down is forgotten here too: a late heartbeat, or this peer\'s pause, is not news of it after the forgetting', () => {
  // Known here since 100, its time last written then; down at 60_000; site-b forgets it at 62_000 and its
  // tombstone arrives here at 64_000. Meanwhile (after the forgetting, before its tombstone came) one more
  // heartbeat of site-x was relayed here late (alive for a moment), or this peer stood still and membership
  // moved the dead record's time on: either moved the known time past the forgetting, a minute after the
  // last write, and the tombstone was refused for good (a 3-site mesh test, under load: helper 92).
  const patient = { ...config, forgottenSiteReturnAliveMs: 1000 };
  const knownSince = { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }, { siteName: 'site-x', lastHeardMs: 100 }] };
  const down = { ...member('peer-x', 'dead'), siteName: 'site-x', lastHeardAtMs: 60_000, statusSinceMs: 60_000 };
  const tombstone = forgetting('peer-b', ['site-x', 62_000]);
  const stale = {
    'a late heartbeat': { ...member('peer-x'), siteName: 'site-x', lastHeardAtMs: 63_000, statusSinceMs: 63_000 },
    'a dead record moved on by a pause': { ...down, lastHeardAtMs: 63_000 },
  };
  for (const [what, record] of Object.entries(stale)) {
    let s = initCustody(patient, knownSince);
    s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), record], nowMs: 63_000 }).state;
    assert.equal(s.knownSites.get('site-x'), 100, `${what}: not heard since`);
    s = run(s, { type: 'viewChanged', members: [member('peer-a'), tombstone, down], nowMs: 64_000 }).state;
    assert.ok(!s.knownSites.has('site-x') && s.forgottenSites.has('site-x'), what);
  }
  // A peer of the site alive for forgottenSiteReturnAliveMs is news: it was heard after the forgetting.
  let s = initCustody(patient, knownSince);
  const back = { ...member('peer-x'), siteName: 'site-x', statusSinceMs: 62_500 };
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), back], nowMs: 63_500 }).state;
  assert.equal(s.knownSites.get('site-x'), 63_500);
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), tombstone, { ...down, lastHeardAtMs: 63_500, statusSinceMs: 64_000 }], nowMs: 64_000 }).state;
  assert.ok(s.knownSites.has('site-x') && !s.forgottenSites.has('site-x'));
  // A site not known here is still learnt at its first heartbeat: copies are owed to it at once.
  s = initCustody(patient, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), { ...member('peer-y'), statusSinceMs: 63_000 }], nowMs: 63_000 }).state;
  assert.ok(s.knownSites.has('site-y'));
});

test('a site first heard of in a heartbeat read late is forgotten when a forgetting made before that comes: learnt at once, its time is no news until it settles', () => {
  // This peer stood still (SIGSTOP) from 3_000 to 6_300; meanwhile site-x started, died at 4_900 and was
  // forgotten at site-b at 5_300. On resuming, this peer read site-x's last heartbeat (sent before it died)
  // from its socket and learnt the site "now"; the tombstone came at 9_700, older than that, and was
  // refused for good: the site stayed known and owed copies (simulation, harsh sweep, seed 6854).
  const patient = { ...config, forgottenSiteReturnAliveMs: 1000 };
  let s = initCustody(patient, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }] });
  const late = { ...member('peer-x'), siteName: 'site-x', lastHeardAtMs: 6_300, statusSinceMs: 6_300 };
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), late], nowMs: 6_300 }).state;
  assert.ok(s.knownSites.has('site-x'), 'copies are owed to a site at its first heartbeat');
  const down = { ...late, status: 'dead' as const, statusSinceMs: 7_700 };
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 5_300]), down], nowMs: 9_700 }).state;
  assert.ok(!s.knownSites.has('site-x') && s.forgottenSites.has('site-x'), 'the forgetting is taken in');
  // Across a restart too: the site's record on disk says its time is no news yet.
  const persisted = new Map<string, KnownSite>();
  s = initCustody(patient, { digest: createDigest(), debt: [] });
  const step = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), late], nowMs: 6_300 });
  for (const e of step.effects) if (e.type === 'persistKnownSites') for (const k of e.seen) persisted.set(k.siteName, k);
  s = initCustody(patient, { digest: createDigest(), debt: [], knownSites: [...persisted.values()] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 5_300]), down], nowMs: 9_700 }).state;
  assert.ok(!s.knownSites.has('site-x') && s.forgottenSites.has('site-x'), 'after a restart');
  // Once a peer of it has been alive for forgottenSiteReturnAliveMs it is news: an older forgetting is refused.
  s = initCustody(patient, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), late], nowMs: 6_300 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), late], nowMs: 7_300 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 7_000]), { ...down, lastHeardAtMs: 7_300 }], nowMs: 9_700 }).state;
  assert.ok(s.knownSites.has('site-x') && !s.forgottenSites.has('site-x'), 'settled: heard after the forgetting');
});

test('a tick after this peer stood still reads its last view as of when it came: a site that died meanwhile is not heard "now", and its forgetting is taken in', () => {
  // site-x first heard here at 2_950 (alive since then), last view at 3_300; this peer stood still until
  // 5_850, and its first tick came before membership's next view: site-x counted as alive for 2.9 s and
  // heard at 5_850, after it died (4_150) and was forgotten at site-b (4_950); the tombstone was refused
  // for good (simulation, six sites, seed 40251).
  const patient = { ...config, forgottenSiteReturnAliveMs: 1000 };
  let s = initCustody(patient, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 100 }] });
  const x = { ...member('peer-x'), siteName: 'site-x', lastHeardAtMs: 2_950, statusSinceMs: 2_950 };
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), x], nowMs: 2_950 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), { ...x, lastHeardAtMs: 3_300 }], nowMs: 3_300 }).state;
  s = run(s, { type: 'tick', nowMs: 5_850 }).state;
  assert.equal(s.knownSites.get('site-x'), 2_950, 'not heard since');
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), forgetting('peer-b', ['site-x', 4_950]), { ...x, status: 'dead', statusSinceMs: 5_900 }], nowMs: 5_900 }).state;
  assert.ok(!s.knownSites.has('site-x') && s.forgottenSites.has('site-x'));
});

test('tombstones are restored from disk, so a restarted peer passes them on and ignores dead records of those sites', () => {
  const s = initCustody(config, { digest: createDigest(), debt: [], forgottenSites: [{ siteName: 'site-x', forgottenAtMs: 50 }, { siteName: 'site-w', forgottenAtMs: 60 }] });
  assert.deepEqual(custodyStats(s).forgottenSites, [{ siteName: 'site-w', forgottenAtMs: 60 }, { siteName: 'site-x', forgottenAtMs: 50 }]);
  const step = run(s, { type: 'viewChanged', members: [member('peer-a'), { ...member('peer-x', 'dead'), siteName: 'site-x', lastHeardAtMs: 40 }], nowMs: 100 });
  assert.ok(!step.state.knownSites.has('site-x'));
});

test('copies owed to a forgotten site that a crash left on disk are dropped at the first view after the start', () => {
  // The tombstone was written, then the process died before the same step's debt removals landed.
  let s = initCustody(config, {
    digest: createDigest(),
    debt: [
      { sopInstanceUid: 'u1', siteName: 'site-x', sinceMs: 10 },
      { sopInstanceUid: 'u1', siteName: 'site-b', sinceMs: 10 },
    ],
    knownSites: [{ siteName: 'site-b', lastHeardMs: 40 }],
    forgottenSites: [{ siteName: 'site-x', forgottenAtMs: 50 }],
  });
  const step = run(s, { type: 'viewChanged', members: [member('peer-a')], nowMs: 100 });
  assert.deepEqual(step.effects.filter((e) => e.type === 'removeDebt'), [{ type: 'removeDebt', sopInstanceUid: 'u1', siteName: 'site-x' }]);
  s = step.state;
  assert.deepEqual([...s.debt.values()].map((d) => d.siteName), ['site-b'], 'the copy owed to a known site stays');
  assert.ok(!s.debtBySite.has('site-x'));
});

test('an explicit write quorum above the sites known is flagged; auto never is', () => {
  assert.equal(writeQuorumAboveSitesKnown({ ...config, writeQuorum: 3 }, 2), true);
  assert.equal(writeQuorumAboveSitesKnown({ ...config, writeQuorum: 3 }, 3), false);
  assert.equal(writeQuorumAboveSitesKnown({ ...config, writeQuorum: 1 }, 1), false);
  assert.equal(writeQuorumAboveSitesKnown({ ...config, writeQuorum: 'auto' }, 1), false);
});

test('beyond knownSitesMax the site silent for longest is forgotten', () => {
  let s = initCustody(config, {
    digest: createDigest(),
    debt: [],
    knownSites: ['b', 'c', 'd', 'e'].map((x, i) => ({ siteName: `site-${x}`, lastHeardMs: 100 + i })),
  });
  const learnt = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-f')], nowMs: 200 });
  assert.deepEqual(learnt.effects.filter((e) => e.type === 'persistKnownSites'), [
    { type: 'persistKnownSites', seen: [{ siteName: 'site-f', lastHeardMs: 200 }], learnt: ['site-f'], forgotten: [{ siteName: 'site-b', forgottenAtMs: 200 }], tombstonesAdopted: [], tombstonesDropped: [], sitesKnown: 5 },
  ]);
  s = learnt.state;
  assert.deepEqual([...s.knownSites.keys()].sort(), ['site-c', 'site-d', 'site-e', 'site-f']);
});

test('at the debt bound, new stores are refused with 0xA700 instead of growing the debt', () => {
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c', 'dead')], nowMs: 0 }).state;
  s = store(s, 'r1', 'u1', 0).state;
  s = store(s, 'r2', 'u2', 0).state;
  assert.equal(s.debt.size, 4);
  const refused = run(s, { type: 'storeRequested', requestId: 'r3', sopInstanceUid: 'u3', sha256: 'x', nowMs: 1 });
  assert.deepEqual(acks(refused.effects).map((e) => (e.type === 'ackStore' ? e.status : -1)), [StoreStatus.OutOfResources]);
  assert.ok(!refused.effects.some((e) => e.type === 'writeLocal'));
  assert.equal(refused.state.debt.size, 4);
});

test('a replica received is acknowledged to its sender, even when already held', () => {
  const s = initCustody(config, { digest: digestOf([{ sopInstanceUid: 'u9', sha256: 'h' }]), debt: [] });
  const { effects } = run(s, { type: 'replicaStored', sopInstanceUid: 'u9', sha256: 'h', fromPeerId: 'peer-b', nowMs: 0 });
  assert.deepEqual(effects, [{ type: 'send', to: 'peer-b', message: { type: 'replicaAck', sopInstanceUid: 'u9', siteName: 'site-a' } }]);
});

test('repair starts at the first tick with a partner to compare with, though an earlier tick found none', () => {
  let a = initCustody(config, { digest: digestOf([{ sopInstanceUid: '1.2.1', sha256: 'h1' }]), debt: [] });
  // Just started: nobody heard yet, so no exchange, and none is due an interval later either.
  a = run(a, { type: 'tick', nowMs: 0 }).state;
  a = run(a, { type: 'viewChanged', members: [member('peer-a'), { ...member('peer-b'), digestRoot: 'other' }], nowMs: 300 }).state;
  const heard = run(a, { type: 'tick', nowMs: 500 });
  assert.deepEqual(heard.effects.filter((e) => e.type === 'send' && e.message.type === 'repairDigest').map((e) => e.type === 'send' && e.to), ['peer-b']);
  // From there, one exchange per interval.
  assert.ok(!run(heard.state, { type: 'tick', nowMs: 750 }).effects.some((e) => e.type === 'send'));
});

test('repair exchange: digests, then keys of differing buckets, then pulls of exactly the missing keys', () => {
  const shared = Array.from({ length: 300 }, (_, i) => ({ sopInstanceUid: `1.2.840.${i}`, sha256: `h${i}` }));
  const onlyB = [{ sopInstanceUid: '9.9.1', sha256: 'b1' }, { sopInstanceUid: '9.9.2', sha256: 'b2' }];
  const onlyA = [{ sopInstanceUid: '8.8.1', sha256: 'a1' }];
  let a = initCustody(config, { digest: digestOf([...shared, ...onlyA]), debt: [] });
  let b = initCustody({ ...config, selfPeerId: 'peer-b', selfSiteName: 'site-b' }, { digest: digestOf([...shared, ...onlyB]), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  a = run(a, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  b = run(b, { type: 'viewChanged', members: view, nowMs: 0 }).state;

  const start = run(a, { type: 'tick', nowMs: 0 });
  a = start.state;
  const digestMsg = start.effects.find((e) => e.type === 'send');
  assert.ok(digestMsg && digestMsg.type === 'send' && digestMsg.message.type === 'repairDigest');
  const keysStep = run(b, { type: 'messageReceived', from: 'peer-a', message: digestMsg.message, nowMs: 1 });
  b = keysStep.state;
  const keysMsg = keysStep.effects.find((e) => e.type === 'send');
  assert.ok(keysMsg && keysMsg.type === 'send' && keysMsg.message.type === 'repairKeys');
  // Work proportional to the difference: at most 3 buckets, not the 300 shared keys.
  assert.ok(keysMsg.message.buckets.length <= 3);
  assert.ok(keysMsg.message.keys.length < 20);

  const pullStep = run(a, { type: 'messageReceived', from: 'peer-b', message: keysMsg.message, nowMs: 2 });
  a = pullStep.state;
  const pulls = pullStep.effects.filter((e) => e.type === 'fetch').map((e) => (e.type === 'fetch' ? e.sopInstanceUid : ''));
  assert.deepEqual(pulls.sort(), ['9.9.1', '9.9.2']);
  const reply = pullStep.effects.find((e) => e.type === 'send');
  assert.ok(reply && reply.type === 'send' && reply.message.type === 'repairKeys' && !reply.message.replyWanted);
  const bPulls = run(b, { type: 'messageReceived', from: 'peer-a', message: reply.message, nowMs: 3 });
  assert.deepEqual(
    bPulls.effects.filter((e) => e.type === 'fetch'),
    [{ type: 'fetch', fromPeerId: 'peer-a', sopInstanceUid: '8.8.1' }],
  );
  assert.ok(!bPulls.effects.some((e) => e.type === 'send'), 'the exchange ends after step 3');
});

test('repair in a large archive compares leaves of the differing buckets, then lists only the keys of the differing leaves; a peer that predates leaves gets keys by bucket', () => {
  // 20,000 shared: a bucket holds ~78 keys, a leaf ~0.3. A holds 3 more; each differing bucket listed whole
  // cost ~230 keys (about 30 KB) per exchange, and kept costing it for as long as a difference stayed.
  const shared = Array.from({ length: 20_000 }, (_, i) => ({ sopInstanceUid: `1.2.840.${i}`, sha256: `h${i}` }));
  const onlyA = [{ sopInstanceUid: '8.8.1', sha256: 'a1' }, { sopInstanceUid: '8.8.2', sha256: 'a2' }, { sopInstanceUid: '8.8.3', sha256: 'a3' }];
  const onlyB = [{ sopInstanceUid: '9.9.1', sha256: 'b1' }];
  let a = initCustody(config, { digest: digestOf([...shared, ...onlyA]), debt: [] });
  let b = initCustody({ ...config, repairKeysMax: 2000, selfPeerId: 'peer-b', selfSiteName: 'site-b' }, { digest: digestOf([...shared, ...onlyB]), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  a = run(a, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  b = run(b, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const sent = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'send' ? [e.message] : []));
  const fetched = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'fetch' ? [e.sopInstanceUid] : [])).sort();

  const start = run(b, { type: 'tick', nowMs: 0 });
  b = start.state;
  const [digestMessage] = sent(start.effects);
  assert.ok(digestMessage?.type === 'repairDigest' && digestMessage.leaves === true);
  const leavesStep = run(a, { type: 'messageReceived', from: 'peer-b', message: digestMessage, nowMs: 1 });
  a = leavesStep.state;
  const [leavesMessage] = sent(leavesStep.effects);
  assert.ok(leavesMessage?.type === 'repairLeaves', `answered ${leavesMessage?.type}`);
  assert.ok(leavesMessage.buckets.length <= 4 && leavesMessage.leafHashes.length === leavesMessage.buckets.length * 256 * 32);
  const keysStep = run(b, { type: 'messageReceived', from: 'peer-a', message: leavesMessage, nowMs: 2 });
  b = keysStep.state;
  const [bKeys] = sent(keysStep.effects);
  assert.ok(bKeys?.type === 'repairKeys' && bKeys.replyWanted && bKeys.leaves !== undefined && bKeys.leaves.length <= 4);
  assert.deepEqual(bKeys.keys.map((k) => k.sopInstanceUid).filter((u) => u.startsWith('9.')), ['9.9.1']);
  const replyStep = run(a, { type: 'messageReceived', from: 'peer-b', message: bKeys, nowMs: 3 });
  a = replyStep.state;
  assert.deepEqual(fetched(replyStep.effects), ['9.9.1']);
  const [aKeys] = sent(replyStep.effects);
  assert.ok(aKeys?.type === 'repairKeys' && !aKeys.replyWanted);
  const lastStep = run(b, { type: 'messageReceived', from: 'peer-a', message: aKeys, nowMs: 4 });
  assert.deepEqual(fetched(lastStep.effects), ['8.8.1', '8.8.2', '8.8.3']);
  // Work proportional to the difference: a handful of keys, not the ~300 of the differing buckets.
  const listed = bKeys.keys.length + aKeys.keys.length;
  assert.ok(listed <= 12, `${listed} keys listed`);

  // A peer of an earlier version asks without `leaves`: keys of the differing buckets, as before.
  const { leaves: _leaves, ...oldDigest } = digestMessage;
  const [oldAnswer] = sent(run(a, { type: 'messageReceived', from: 'peer-b', message: oldDigest, nowMs: 5 }).effects);
  assert.ok(oldAnswer?.type === 'repairKeys' && oldAnswer.leaves === undefined && oldAnswer.keys.length === config.repairKeysMax, 'the differing buckets listed (a full window)');
});

test('repair works through a difference larger than one message, window by window', () => {
  // B lacks the 100 highest UIDs; the buckets that differ hold ~650 keys, more than repairKeysMax (100) in
  // one message. Listing the first 100 of them every round never named a missing one (found at 2,000 of 12,700).
  const all = Array.from({ length: 2000 }, (_, i) => ({ sopInstanceUid: `1.2.3.${1000 + i}`, sha256: `h${i}` }));
  let a = initCustody(config, { digest: digestOf(all), debt: [] });
  let b = initCustody({ ...config, selfPeerId: 'peer-b', selfSiteName: 'site-b' }, { digest: digestOf(all.slice(0, 1900)), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  a = run(a, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  b = run(b, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const sent = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'send' ? [e.message] : []));
  const windows: string[] = [];
  let rounds = 0;
  for (let nowMs = 0; b.digest.size < all.length && rounds < 30; nowMs += config.repairIntervalMs, rounds++) {
    const start = run(b, { type: 'tick', nowMs });
    b = start.state;
    const [digestMessage] = sent(start.effects);
    assert.ok(digestMessage?.type === 'repairDigest');
    windows.push(digestMessage.afterUid ?? '');
    const answer = run(a, { type: 'messageReceived', from: 'peer-b', message: digestMessage, nowMs });
    a = answer.state;
    let step = run(b, { type: 'messageReceived', from: 'peer-a', message: sent(answer.effects)[0]!, nowMs });
    b = step.state;
    // Every pull succeeds at once; each finished one starts the next queued.
    const fetched = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'fetch' ? [e.sopInstanceUid] : []));
    for (let uids = fetched(step.effects); uids.length > 0;) {
      const more: string[] = [];
      for (const uid of uids) {
        step = run(b, { type: 'replicaStored', sopInstanceUid: uid, sha256: `h${Number(uid.split('.')[3]) - 1000}`, fromPeerId: 'peer-a', nowMs });
        b = step.state;
        more.push(...fetched(step.effects));
      }
      uids = more;
    }
  }
  assert.equal(b.digest.size, all.length, `converged in ${rounds} rounds; windows started after ${windows.join(', ')}`);
  assert.ok(windows.length > 2 && windows[0] === '' && windows.slice(1).every((w, i) => w > windows[i]!), `windows move forward: ${windows.join(', ')}`);
});

test('a finished pull starts the next queued one; an ack frees a slot for the next owed copy at once', () => {
  const small = { ...config, fetchesInFlightMax: 1, replicationsInFlightMax: 1, debtEntriesMax: 100 };
  let s = initCustody(small, { digest: createDigest(), debt: [] });
  const keys = [{ sopInstanceUid: '7.1', sha256: 'a' }, { sopInstanceUid: '7.2', sha256: 'b' }, { sopInstanceUid: '7.3', sha256: 'c' }];
  const first = run(s, { type: 'messageReceived', from: 'peer-b', message: { type: 'repairKeys', buckets: keys.map((k) => bucketOf(k.sopInstanceUid)), keys, replyWanted: false }, nowMs: 0 });
  assert.equal(first.effects.filter((e) => e.type === 'fetch').length, 1);
  const next = run(first.state, { type: 'replicaStored', sopInstanceUid: '7.1', sha256: 'a', fromPeerId: 'peer-b', nowMs: 1 });
  assert.deepEqual(next.effects.filter((e) => e.type === 'fetch').map((e) => (e.type === 'fetch' ? e.sopInstanceUid : '')), ['7.2']);

  s = initCustody(small, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = store(s, 'r1', 'u1', 0).state;
  const second = store(s, 'r2', 'u2', 0);
  assert.ok(!second.effects.some((e) => e.type === 'replicate'), 'one transfer in flight at most');
  const acked = run(second.state, ack('u1', 'site-b', 5));
  assert.deepEqual(acked.effects.filter((e) => e.type === 'replicate'), [{ type: 'replicate', toPeerId: 'peer-b', toSiteName: 'site-b', sopInstanceUid: 'u2' }]);
});

test('a site that refuses every copy (a full disk) holds at most its share of the transfer slots: new stores still reach the quorum at a healthy site', () => {
  let s = initCustody({ ...config, debtEntriesMax: 100, pendingStoresMax: 100 }, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  const offered = (effects: CustodyEffect[], site: string) => effects.filter((e) => e.type === 'replicate' && e.toSiteName === site).length;
  // B refuses each copy (retry later: held until replicationRetryMs); C takes each one.
  let nowMs = 1;
  for (let i = 0; i < 20; i++, nowMs++) {
    const step = store(s, `r${i}`, `u${i}`, nowMs);
    s = step.state;
    const toC = step.effects.find((e) => e.type === 'replicate' && e.toSiteName === 'site-c');
    assert.ok(toC, `store ${i}: no copy offered to the healthy site (slots held by the full one)`);
    assert.ok(offered(step.effects, 'site-b') <= 1);
    for (const e of step.effects) {
      if (e.type === 'replicate' && e.toSiteName === 'site-b') s = run(s, { type: 'replicationFailed', sopInstanceUid: e.sopInstanceUid, toSiteName: 'site-b', retryLater: true, nowMs }).state;
    }
    const acked = run(s, ack(`u${i}`, 'site-c', nowMs));
    s = acked.state;
    assert.deepEqual(acks(acked.effects).map((e) => (e.type === 'ackStore' ? e.status : -1)), [StoreStatus.Success], `store ${i}`);
  }
  // B's copies stay owed, within their share of the slots: all but the quarter left to C.
  assert.equal([...s.replicationsInFlight.keys()].length, config.replicationsInFlightMax * 0.75);
});

test('a copy whose local bytes are unreadable waits replicationRetryMs before it is offered again; another failure is offered at once', () => {
  let s = initCustody({ ...config, debtEntriesMax: 100 }, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead')], nowMs: 0 }).state;
  s = store(s, 'r1', 'u1', 0).state;
  s = store(s, 'r2', 'u2', 0).state;
  const back = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 10 });
  const offered = (effects: CustodyEffect[]) => effects.filter((e) => e.type === 'replicate').map((e) => (e.type === 'replicate' ? e.sopInstanceUid : ''));
  assert.deepEqual(offered(back.effects), ['u1', 'u2']);
  s = run(
    back.state,
    { type: 'replicationFailed', sopInstanceUid: 'u1', toSiteName: 'site-b', retryLater: true, nowMs: 20 },
    { type: 'replicationFailed', sopInstanceUid: 'u2', toSiteName: 'site-b', nowMs: 20 },
  ).state;
  assert.deepEqual(offered(run(s, { type: 'tick', nowMs: 30 }).effects), ['u2'], 'the unreadable one is held back');
  s = run(s, { type: 'tick', nowMs: 30 }).state;
  // u2 is in flight again since 30; u1 comes back once replicationRetryMs has passed since its failure.
  assert.deepEqual(offered(run(s, { type: 'tick', nowMs: 20 + config.replicationRetryMs }).effects), ['u1']);
});

test('a repair round asks every differing peer; keys several hold are pulled from all of them in turn', () => {
  let s = initCustody({ ...config, fetchesInFlightMax: 4 }, { digest: createDigest(), debt: [] });
  const view = [member('peer-a'), { ...member('peer-b'), digestRoot: 'x' }, { ...member('peer-c'), digestRoot: 'y' }];
  const round = run(s, { type: 'viewChanged', members: view, nowMs: 0 }, { type: 'tick', nowMs: 0 });
  s = round.state;
  assert.deepEqual(
    round.effects.filter((e) => e.type === 'send' && e.message.type === 'repairDigest').map((e) => (e.type === 'send' ? e.to : '')),
    ['peer-b', 'peer-c'],
  );
  const keys = Array.from({ length: 6 }, (_, i) => ({ sopInstanceUid: `7.${i}`, sha256: `h${i}` }));
  const keysOf = (list: typeof keys) => ({ type: 'repairKeys', buckets: list.map((k) => bucketOf(k.sopInstanceUid)), keys: list, replyWanted: false }) as const;
  const fetches = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'fetch' ? [`${e.sopInstanceUid}<${e.fromPeerId}`] : []));
  // C holds 7.0-7.4, B holds all six; C answers first and its keys queue, then B's join them as a second source.
  const fromC = run(s, { type: 'messageReceived', from: 'peer-c', message: keysOf(keys.slice(0, 5)), nowMs: 1 });
  assert.deepEqual(fetches(fromC.effects), ['7.0<peer-c', '7.1<peer-c', '7.2<peer-c', '7.3<peer-c']);
  const fromB = run(fromC.state, { type: 'messageReceived', from: 'peer-b', message: keysOf(keys), nowMs: 2 });
  assert.deepEqual(fetches(fromB.effects), [], 'no room: four pulls in flight');
  // Each finished pull starts the next from the holder with the fewest pulls in flight.
  const next = run(
    fromB.state,
    { type: 'replicaStored', sopInstanceUid: '7.0', sha256: 'h0', fromPeerId: 'peer-c', nowMs: 3 },
    { type: 'replicaStored', sopInstanceUid: '7.1', sha256: 'h1', fromPeerId: 'peer-c', nowMs: 4 },
  );
  assert.deepEqual(fetches(next.effects), ['7.4<peer-b', '7.5<peer-b']);
});

test('replica targets: one peer per other alive site, the one with precedence (started first; here all at once, so the lowest peerId); never our own site', () => {
  const view = [
    { ...member('p1-a'), siteName: 'site-a' },
    { ...member('p2-b', 'suspect'), siteName: 'site-b' },
    { ...member('p3-b'), siteName: 'site-b' },
    { ...member('p4-b'), siteName: 'site-b' },
    { ...member('p5-a'), siteName: 'site-a' },
    { ...member('p6-c', 'dead'), siteName: 'site-c' },
  ];
  assert.deepEqual(aliveReplicaTargets(view, 'site-a'), [{ siteName: 'site-b', peerId: 'p3-b' }]);
  assert.deepEqual(aliveReplicaTargets(view, 'site-b'), [{ siteName: 'site-a', peerId: 'p1-a' }]);
});

test('a copied --site: copies go to the peer that keeps the site (started first), and a twin started later does not count as the site (review 83)', () => {
  const at = (peerId: string, incarnation: number, dicom: string, extra: Partial<MemberRecord> = {}) =>
    memberRecord(peerId, { siteName: 'site-b', incarnation, addresses: { dicom, http: '', aeTitle: 'PACSMESH' }, ...extra });
  // The twin has the lower peerId: by peerId alone the site's copies went to it.
  const holder = at('peer-b9', 1_000, 'hospital-b:104');
  const twin = at('peer-b1', 2_000, 'laptop:104');
  const view = [member('peer-a'), twin, holder];
  assert.deepEqual(aliveReplicaTargets(view, 'site-a'), [{ siteName: 'site-b', peerId: 'peer-b9' }]);

  let s = initCustody({ ...config, writeQuorum: 2 }, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const written = store(s, 'r1', '1.2.9', 0);
  assert.deepEqual(written.effects.filter((e) => e.type === 'replicate').map((e) => (e.type === 'replicate' ? e.toPeerId : '')), ['peer-b9']);
  // Acknowledgements come 10 s on: the holder's claim has lasted (a claim counts against another's once alive 6 s).
  const ackFrom = (from: string): CustodyInput => ({ type: 'messageReceived', from, message: { type: 'replicaAck', sopInstanceUid: '1.2.9', siteName: 'site-b' }, nowMs: 10_000 });
  const fromTwin = run(written.state, ackFrom('peer-b1'));
  assert.equal(acks(fromTwin.effects).length, 0, "the twin's copy is not the site's: no quorum on it");
  assert.ok(!fromTwin.effects.some((e) => e.type === 'removeDebt'), 'the site is still owed its copy');
  assert.ok(!fromTwin.effects.some((e) => e.type === 'replicate'), 'the transfer to the holder keeps its slot: not sent again');
  assert.equal(fromTwin.state.replicationsInFlight.size, 1);
  const fromHolder = run(fromTwin.state, ackFrom('peer-b9'));
  assert.deepEqual(acks(fromHolder.effects).map((e) => e.type === 'ackStore' && e.status), [StoreStatus.Success]);
  assert.ok(fromHolder.effects.some((e) => e.type === 'removeDebt' && e.siteName === 'site-b'));

  // A site with several peers on purpose (each says so): any of them holds the site's copy.
  const shared = [member('peer-a'), { ...twin, siteShared: true }, { ...holder, siteShared: true }];
  let t = initCustody({ ...config, writeQuorum: 2 }, { digest: createDigest(), debt: [] });
  t = run(t, { type: 'viewChanged', members: shared, nowMs: 0 }).state;
  t = store(t, 'r2', '1.2.9', 0).state;
  assert.deepEqual(acks(run(t, ackFrom('peer-b1')).effects).map((e) => e.type === 'ackStore' && e.status), [StoreStatus.Success]);
  // A dead predecessor's late heartbeat (earlier start, another address, alive for a moment): it outranks no one.
  const lateHeartbeat = [member('peer-a'), at('peer-b1', 2_000, 'new-host:104'), { ...holder, statusSinceMs: 9_900 }];
  let v = initCustody({ ...config, writeQuorum: 2 }, { digest: createDigest(), debt: [] });
  v = run(v, { type: 'viewChanged', members: lateHeartbeat, nowMs: 0 }).state;
  v = store(v, 'r4', '1.2.9', 0).state;
  assert.equal(acks(run(v, ackFrom('peer-b1')).effects).length, 1, 'the site as it runs now still counts');
  // Once the twin is gone nothing of this applies; nor to a restart at the same address under a new PeerId.
  const sameAddress = [member('peer-a'), at('peer-b1', 2_000, 'hospital-b:104'), holder];
  let u = initCustody({ ...config, writeQuorum: 2 }, { digest: createDigest(), debt: [] });
  u = run(u, { type: 'viewChanged', members: sameAddress, nowMs: 0 }).state;
  u = store(u, 'r3', '1.2.9', 0).state;
  assert.equal(acks(run(u, ackFrom('peer-b1')).effects).length, 1);
});

test('while copies are pushed to us, repair neither starts an exchange nor pulls; it resumes once they stop', () => {
  const quiet = { ...config, repairQuietMs: 1000, repairIntervalMs: 100 };
  let s = initCustody(quiet, { digest: createDigest(), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  // A copy pushed by peer-b (not one of our pulls) arrives at t=500.
  s = run(s, { type: 'replicaStored', sopInstanceUid: '6.1', sha256: 'p', fromPeerId: 'peer-b', nowMs: 500 }).state;
  const keys = [{ sopInstanceUid: '6.2', sha256: 'q' }];
  const repairKeys = { type: 'repairKeys', buckets: keys.map((k) => bucketOf(k.sopInstanceUid)), keys, replyWanted: false } as const;
  const during = run(s, { type: 'tick', nowMs: 900 }, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 950 });
  s = during.state;
  assert.ok(!during.effects.some((e) => e.type === 'fetch'), 'no pull while copies arrive');
  assert.ok(!during.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'no exchange started');
  const after = run(s, { type: 'tick', nowMs: 1600 });
  assert.ok(after.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'the exchange starts once quiet');
  const pulls = run(after.state, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 1650 });
  assert.deepEqual(pulls.effects.filter((e) => e.type === 'fetch'), [{ type: 'fetch', fromPeerId: 'peer-b', sopInstanceUid: '6.2' }]);
});

test('while the store refuses writes, repair neither starts an exchange nor pulls; queued pulls start once it writes again', () => {
  let s = initCustody({ ...config, repairIntervalMs: 100 }, { digest: createDigest(), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const keys = [
    { sopInstanceUid: '7.1', sha256: 'p' },
    { sopInstanceUid: '7.2', sha256: 'q' },
  ];
  const repairKeys = { type: 'repairKeys', buckets: keys.map((k) => bucketOf(k.sopInstanceUid)), keys, replyWanted: false } as const;
  // One pull in flight when the disk fills up; it fails, and nothing takes its place.
  const first = run(s, { type: 'messageReceived', from: 'peer-b', message: { ...repairKeys, keys: keys.slice(0, 1) }, nowMs: 10 });
  assert.deepEqual(first.effects.filter((e) => e.type === 'fetch').length, 1);
  const faulted = run(
    first.state,
    { type: 'storeWritableChanged', writable: false, nowMs: 20 },
    { type: 'fetchFailed', sopInstanceUid: '7.1', nowMs: 30 },
    { type: 'tick', nowMs: 200 },
    { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 210 },
    { type: 'tick', nowMs: 400 },
  );
  assert.deepEqual(faulted.effects.filter((e) => e.type === 'fetch'), [], 'no pull while the store refuses writes');
  assert.ok(!faulted.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'no exchange started');
  // A partner's exchange is still answered: our copies can be read and pulled.
  const asked = run(faulted.state, { type: 'messageReceived', from: 'peer-b', message: { type: 'repairDigest', buckets: new Array(256).fill(''), afterUid: undefined }, nowMs: 410 });
  assert.ok(asked.effects.some((e) => e.type === 'send' && e.message.type === 'repairKeys'), 'a partner asking for our keys gets them');
  const writable = run(asked.state, { type: 'storeWritableChanged', writable: true, nowMs: 500 }, { type: 'tick', nowMs: 600 });
  assert.ok(writable.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'the exchange starts once the store writes again');
  const pulls = run(writable.state, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 650 });
  assert.deepEqual(
    pulls.effects.filter((e) => e.type === 'fetch').map((e) => (e.type === 'fetch' ? e.sopInstanceUid : '')),
    ['7.1', '7.2'],
  );
});

test('under pushes that never pause, a due repair waits repairQuietOverrideFactor x repairQuietMs for them, then runs and pulls', () => {
  const quiet = { ...config, repairQuietMs: 1000, repairIntervalMs: 100 };
  let s = initCustody(quiet, { digest: createDigest(), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const keys = [{ sopInstanceUid: '8.0', sha256: 'old' }];
  const repairKeys = { type: 'repairKeys', buckets: keys.map((k) => bucketOf(k.sopInstanceUid)), keys, replyWanted: false } as const;
  // A new instance pushed by peer-b every 50 ms (an ingest that never stops), a tick every 50 ms.
  let exchangeAtMs: number | undefined;
  for (let nowMs = 50; nowMs <= 20_000 && exchangeAtMs === undefined; nowMs += 50) {
    const step = run(s, { type: 'replicaStored', sopInstanceUid: `8.${nowMs}`, sha256: 'new', fromPeerId: 'peer-b', nowMs }, { type: 'tick', nowMs });
    s = step.state;
    if (step.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest')) exchangeAtMs = nowMs;
  }
  assert.ok(exchangeAtMs !== undefined, 'no repair exchange in 20 s of pushes');
  assert.ok(exchangeAtMs >= repairQuietOverrideFactor * quiet.repairQuietMs, `the exchange waited ${exchangeAtMs} ms for the pushes to pause`);
  // The pushes go on: the keys the partner answers with are pulled all the same.
  const pulls = run(s, { type: 'replicaStored', sopInstanceUid: '8.x', sha256: 'new', fromPeerId: 'peer-b', nowMs: exchangeAtMs + 10 }, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: exchangeAtMs + 20 });
  assert.deepEqual(pulls.effects.filter((e) => e.type === 'fetch'), [{ type: 'fetch', fromPeerId: 'peer-b', sopInstanceUid: '8.0' }]);
  // Once the pushes pause, the quiet rule holds again for the next ones.
  s = run(pulls.state, { type: 'tick', nowMs: exchangeAtMs + 2_000 }).state;
  const next = run(s, { type: 'replicaStored', sopInstanceUid: '8.y', sha256: 'new', fromPeerId: 'peer-b', nowMs: exchangeAtMs + 2_100 }, { type: 'tick', nowMs: exchangeAtMs + 2_500 });
  assert.ok(!next.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'pushes arriving again defer repair again');
});

test('a UID holding other bytes at another peer is reported once, and neither pulled nor replaced', () => {
  let s = initCustody(config, { digest: digestOf([{ sopInstanceUid: '9.1', sha256: 'ours' }, { sopInstanceUid: '9.2', sha256: 'same' }]), debt: [] });
  const keys = [
    { sopInstanceUid: '9.1', sha256: 'theirs' },
    { sopInstanceUid: '9.2', sha256: 'same' },
    { sopInstanceUid: '9.3', sha256: 'new' },
  ];
  const repairKeys = { type: 'repairKeys', buckets: keys.map((k) => bucketOf(k.sopInstanceUid)), keys, replyWanted: false } as const;
  const first = run(s, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 0 });
  assert.deepEqual(first.effects.filter((e) => e.type === 'uidConflict'), [
    { type: 'uidConflict', sopInstanceUid: '9.1', localSha256: 'ours', peerSha256: 'theirs', peerId: 'peer-b' },
  ]);
  // Only the key we lack is pulled.
  assert.deepEqual(first.effects.filter((e) => e.type === 'fetch').map((e) => (e.type === 'fetch' ? e.sopInstanceUid : '')), ['9.3']);
  s = first.state;
  const again = run(s, { type: 'messageReceived', from: 'peer-c', message: repairKeys, nowMs: 1 });
  assert.equal(again.effects.filter((e) => e.type === 'uidConflict').length, 0, 'reported once per UID');
  assert.equal(again.state.uidConflicts.size, 1);
});

test('holdsNothingMore trusts only an alive member\'s digest root: a suspect one\'s is from before its silence', () => {
  const withRoot = (peerId: string, status: MemberStatus, digestRoot: string): MemberRecord => ({ ...member(peerId, status), digestRoot });
  const members = [withRoot('peer-b', 'alive', 'r1'), withRoot('peer-c', 'suspect', 'r1'), withRoot('peer-d', 'alive', 'r2')];
  assert.equal(holdsNothingMore(members, 'peer-b', 'r1'), true);
  assert.equal(holdsNothingMore(members, 'peer-c', 'r1'), false, 'a paused peer resuming still holds the roots of before its pause');
  assert.equal(holdsNothingMore(members, 'peer-d', 'r1'), false);
  assert.equal(holdsNothingMore(members, 'peer-b', ''), false, 'an empty store knows nothing');
  assert.equal(holdsNothingMore(members, 'peer-x', 'r1'), false);
});

test('repair lists to a peer none of the keys this peer owes its site (the debt drain brings them): it does not pull them a second time', () => {
  let s = initCustody({ ...config, debtEntriesMax: 100 }, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  // site-b away: 8.1 and 8.2 are owed to it; 8.3 reached it.
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b', 'dead'), member('peer-c')], nowMs: 10 }).state;
  for (const uid of ['8.1', '8.2', '8.3']) s = store(s, `r-${uid}`, uid, 20).state;
  s = run(s, ack('8.3', 'site-b', 30), ack('8.1', 'site-c', 30), ack('8.2', 'site-c', 30), ack('8.3', 'site-c', 30)).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 40 }).state;
  const listed = (effects: CustodyEffect[], to: string) =>
    effects.flatMap((e) => (e.type === 'send' && e.to === to && e.message.type === 'repairKeys' ? e.message.keys.map((k) => k.sopInstanceUid) : [])).sort();
  const empty = digestBuckets(createDigest());
  // Asked by site-b (its digest lacks all three): only 8.3, which it is not owed by us, is listed...
  const toB = run(s, { type: 'messageReceived', from: 'peer-b', message: { type: 'repairDigest', buckets: [...empty] }, nowMs: 50 });
  assert.deepEqual(listed(toB.effects, 'peer-b'), ['8.3']);
  // ...and in the reply of an exchange it started; site-c, owed nothing, hears of all three.
  const buckets = [...new Set(['8.1', '8.2', '8.3'].map(bucketOf))];
  const theirKeys = { type: 'repairKeys', buckets, keys: [], replyWanted: true } as const;
  assert.deepEqual(listed(run(s, { type: 'messageReceived', from: 'peer-b', message: theirKeys, nowMs: 50 }).effects, 'peer-b'), ['8.3']);
  assert.deepEqual(listed(run(s, { type: 'messageReceived', from: 'peer-c', message: { type: 'repairDigest', buckets: [...empty] }, nowMs: 50 }).effects, 'peer-c'), ['8.1', '8.2', '8.3']);
  // Once site-b has acknowledged 8.1, it is listed again (should the copy be lost there, repair finds it).
  s = run(s, ack('8.1', 'site-b', 60)).state;
  assert.deepEqual(listed(run(s, { type: 'messageReceived', from: 'peer-b', message: { type: 'repairDigest', buckets: [...empty] }, nowMs: 70 }).effects, 'peer-b'), ['8.1', '8.3']);
});

test('copies another peer offered us leave the pull queue and pause repair as copies arriving do', () => {
  const quiet = { ...config, repairQuietMs: 1000, repairIntervalMs: 100, fetchesInFlightMax: 1 };
  let s = initCustody(quiet, { digest: createDigest(), debt: [] });
  const view = [{ ...member('peer-a'), digestRoot: 'x' }, { ...member('peer-b'), digestRoot: 'y' }];
  s = run(s, { type: 'viewChanged', members: view, nowMs: 0 }).state;
  const keys = ['9.1', '9.2', '9.3'].map((sopInstanceUid) => ({ sopInstanceUid, sha256: `h${sopInstanceUid}` }));
  const repairKeys = { type: 'repairKeys', buckets: [...new Set(keys.map((k) => bucketOf(k.sopInstanceUid)))], keys, replyWanted: false } as const;
  const first = run(s, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 10 });
  assert.equal(first.effects.filter((e) => e.type === 'fetch').length, 1, 'one pull in flight, two queued');
  const pulled = first.effects.find((e) => e.type === 'fetch')!;
  assert.ok(pulled.type === 'fetch');
  // peer-b offers the other two: they are not pulled once the first pull is done, and no exchange starts meanwhile.
  const offered = keys.map((k) => k.sopInstanceUid).filter((uid) => uid !== pulled.sopInstanceUid);
  s = run(first.state, { type: 'copiesOffered', sopInstanceUids: offered, nowMs: 20 }).state;
  const during = run(s, { type: 'fetchFailed', sopInstanceUid: pulled.sopInstanceUid, nowMs: 30 }, { type: 'tick', nowMs: 900 });
  assert.ok(!during.effects.some((e) => e.type === 'fetch'), 'the offered copies are not pulled');
  assert.ok(!during.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'no exchange while they arrive');
  const after = run(during.state, { type: 'tick', nowMs: 1100 });
  assert.ok(after.effects.some((e) => e.type === 'send' && e.message.type === 'repairDigest'), 'repair resumes once they stop');
  // Still said to be coming (an exchange runs: a due repair stops waiting after a while), they are not pulled...
  s = run(after.state, { type: 'copiesOffered', sopInstanceUids: offered, nowMs: 1150 }, { type: 'tick', nowMs: 2200 }).state;
  const listedAgain = run(s, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 2210 });
  assert.deepEqual(listedAgain.effects.filter((e) => e.type === 'fetch').map((e) => e.type === 'fetch' && e.sopInstanceUid), [pulled.sopInstanceUid]);
  // ...until the offer is no longer repeated (a batch that failed): then repair pulls them.
  s = run(listedAgain.state, { type: 'fetchFailed', sopInstanceUid: pulled.sopInstanceUid, nowMs: 2220 }, { type: 'tick', nowMs: 1150 + incomingCopyForgetMs }).state;
  const forgotten = run(s, { type: 'messageReceived', from: 'peer-b', message: repairKeys, nowMs: 1160 + incomingCopyForgetMs });
  const fetchedNow = forgotten.effects.flatMap((e) => (e.type === 'fetch' ? [e.sopInstanceUid] : []));
  for (const uid of offered) assert.ok(fetchedNow.includes(uid) || forgotten.state.pullQueue.has(uid), `${uid} pulled or queued to be (one pull in flight at most)`);
});

test('a restart is not the other sites\' silence: a clock a year ahead forgets nobody at once, one a year behind does not keep dead sites for a year', () => {
  const yearMs = 365 * 24 * 3600_000;
  const forgotten = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.forgotten.map((f) => f.siteName) : []));
  const restarted = () =>
    initCustody(config, {
      digest: createDigest(),
      debt: [{ sopInstanceUid: 'u1', siteName: 'site-c', sinceMs: 900 }],
      // Written by the last run: site-b heard until it stopped (1000), site-c silent since 500.
      knownSites: [{ siteName: 'site-b', lastHeardMs: 1000 }, { siteName: 'site-c', lastHeardMs: 500 }],
    });
  for (const startMs of [1000 + yearMs, 1000 - yearMs]) {
    // Nobody heard yet at the start.
    const first = run(restarted(), { type: 'viewChanged', members: [member('peer-a')], nowMs: startMs });
    assert.deepEqual(forgotten(first.effects), [], `start at ${startMs}: before, every site not yet heard was forgotten with its debt`);
    assert.equal(first.state.debt.size, 1);
    // Silent while this peer runs: site-c (silent 500 ms more in the last run) goes first, then site-b.
    const cGoes = startMs + config.knownSiteForgetAfterMs - (startMs > 1000 ? 500 : 0);
    assert.deepEqual(forgotten(run(first.state, { type: 'tick', nowMs: cGoes - 1 }).effects), []);
    const later = run(first.state, { type: 'tick', nowMs: cGoes });
    assert.deepEqual(forgotten(later.effects), startMs > 1000 ? ['site-c'] : ['site-b', 'site-c']);
    assert.equal(later.state.debt.size, 0);
  }
});

test('the time away is credited only to what was heard before the start: a site heard in this run, then silent, is forgotten on time', () => {
  const yearMs = 365 * 24 * 3600_000;
  const startMs = 1000 + yearMs;
  let s = initCustody(config, { digest: createDigest(), debt: [], knownSites: [{ siteName: 'site-b', lastHeardMs: 1000 }] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-c')], nowMs: startMs }).state;
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-c', 'dead')], nowMs: startMs + 10 }).state;
  const forgotten = (nowMs: number) => run(s, { type: 'tick', nowMs }).effects.flatMap((e) => (e.type === 'persistKnownSites' ? e.forgotten.map((f) => f.siteName) : []));
  // site-c was heard at the start, in this run: a week of silence (not a year and a week). site-b's time away is credited.
  assert.deepEqual(forgotten(startMs + config.knownSiteForgetAfterMs - 1), []);
  assert.deepEqual(forgotten(startMs + config.knownSiteForgetAfterMs), ['site-b', 'site-c']);
});

test('copies stored together are one step: held and acknowledged each (the heartbeat figures are worked out after each step)', () => {
  const start = () => {
    const s = initCustody(config, { digest: createDigest(), debt: [] });
    return run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b'), member('peer-c')], nowMs: 0 }).state;
  };
  const copies = [
    { sopInstanceUid: '8.1', sha256: 'h1', fromPeerId: 'peer-b' },
    { sopInstanceUid: '8.2', sha256: 'h2', fromPeerId: 'peer-c' },
    { sopInstanceUid: '8.3', sha256: 'h3', fromPeerId: 'peer-b' },
  ];
  const together = run(start(), { type: 'replicasStored', copies, nowMs: 5 });
  assert.equal(custodyStats(together.state).instanceCount, 3);
  const sent = together.effects.flatMap((e) => (e.type === 'send' && e.message.type === 'replicaAck' ? [`${e.message.sopInstanceUid}>${e.to}`] : []));
  assert.deepEqual(sent, ['8.1>peer-b', '8.2>peer-c', '8.3>peer-b'], 'each copy acknowledged to its sender');
  // The same state as one step per copy.
  const oneByOne = run(start(), ...copies.map((c): CustodyInput => ({ type: 'replicaStored', ...c, nowMs: 5 })));
  assert.equal(custodyStats(together.state).digestRoot, custodyStats(oneByOne.state).digestRoot);
  assert.equal(together.state.lastPushedCopyAtMs, oneByOne.state.lastPushedCopyAtMs);
  // A copy held already changes no figure.
  const again = run(together.state, { type: 'replicasStored', copies: copies.slice(0, 1), nowMs: 6 });
  assert.equal(custodyStats(again.state).digestRoot, custodyStats(together.state).digestRoot);
  assert.equal(again.effects.filter((e) => e.type === 'send').length, 1, 'acknowledged again all the same');
});

test("a batch's acknowledgements are one step: each forgiven, the slots they free refilled together with the oldest debt", () => {
  const c = { ...config, debtEntriesMax: 100, replicationsInFlightMax: 4 };
  const owed = Array.from({ length: 10 }, (_, i) => ({ sopInstanceUid: `9.${i}`, siteName: 'site-b', sinceMs: i }));
  const start = () => {
    const s = initCustody(c, { digest: digestOf(owed.map((d) => ({ sopInstanceUid: d.sopInstanceUid, sha256: `h${d.sopInstanceUid}` }))), debt: owed });
    return run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 });
  };
  const replicated = (effects: CustodyEffect[]) => effects.flatMap((e) => (e.type === 'replicate' ? [e.sopInstanceUid] : []));
  const first = start();
  assert.deepEqual(replicated(first.effects), ['9.0', '9.1', '9.2', '9.3'], 'the in-flight bound');
  const batch = ['9.0', '9.1', '9.2', '9.3'].map((sopInstanceUid) => ({ sopInstanceUid, siteName: 'site-b' }));
  const together = run(first.state, { type: 'replicasAcknowledged', fromPeerId: 'peer-b', acks: batch, nowMs: 10 });
  assert.deepEqual(
    together.effects.map((e) => (e.type === 'removeDebt' ? `-${e.sopInstanceUid}` : e.type === 'replicate' ? `>${e.sopInstanceUid}` : e.type)),
    ['-9.0', '-9.1', '-9.2', '-9.3', '>9.4', '>9.5', '>9.6', '>9.7'],
    'forgiven each, then the four freed slots refilled at once',
  );
  // The same outcome as one step per acknowledgement.
  const oneByOne = run(start().state, ...batch.map((a) => ack(a.sopInstanceUid, a.siteName, 10)));
  assert.deepEqual(replicated(oneByOne.effects), ['9.4', '9.5', '9.6', '9.7']);
  assert.deepEqual([...together.state.debt.keys()], [...oneByOne.state.debt.keys()]);
  assert.deepEqual([...together.state.replicationsInFlight.keys()].sort(), [...oneByOne.state.replicationsInFlight.keys()].sort());
  // A store waiting for its quorum is answered by an acknowledgement in a batch as by one alone.
  let s = initCustody(config, { digest: createDigest(), debt: [] });
  s = run(s, { type: 'viewChanged', members: [member('peer-a'), member('peer-b')], nowMs: 0 }).state;
  s = store(s, 'r9', '9.99', 0).state;
  const answered = run(s, { type: 'replicasAcknowledged', fromPeerId: 'peer-b', acks: [{ sopInstanceUid: '9.99', siteName: 'site-b' }], nowMs: 1 });
  assert.deepEqual(acks(answered.effects).map((e) => e.type === 'ackStore' && e.status), [StoreStatus.Success]);
});

test('a peer that does not speak the replication protocol (another version) is retried after a back-off doubling to a minute, and at once when it restarts', () => {
  let s = initCustody({ ...config, debtEntriesMax: 100 }, { digest: createDigest(), debt: [] });
  const view = (incarnation: number) => [member('peer-a'), { ...member('peer-b'), incarnation }];
  s = run(s, { type: 'viewChanged', members: view(1), nowMs: 0 }).state;
  s = store(s, 'r1', 'u1', 0).state;
  // Every attempt fails at once as the actor reports it: the protocol refused, then each copy failed.
  const attempts: number[] = [];
  for (let nowMs = 0; nowMs <= 240_000; nowMs += 250) {
    const step = run(s, { type: 'tick', nowMs });
    s = step.state;
    const sent = step.effects.filter((e) => e.type === 'replicate');
    if (sent.length === 0) continue;
    attempts.push(nowMs);
    s = run(s, { type: 'peerLacksProtocol', peerId: 'peer-b', nowMs }, ...sent.map((e): CustodyInput => ({ type: 'replicationFailed', sopInstanceUid: e.type === 'replicate' ? e.sopInstanceUid : '', toSiteName: 'site-b', nowMs }))).state;
  }
  const gaps = attempts.slice(1).map((t, i) => t - attempts[i]!);
  // The store's copy was left unanswered (re-offered after replicationRetryMs); from its refusal on, 1 s, 2 s, ... 60 s apart.
  assert.deepEqual(gaps, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000], `retries at ${attempts.join(', ')}`);
  assert.ok(attempts.length <= 12, `${attempts.length} attempts in 4 minutes (every tick before: 960)`);
  // The peer restarts (with a build that speaks it): its copies go at the view that shows the new incarnation.
  const restarted = run(s, { type: 'viewChanged', members: view(2), nowMs: 240_100 });
  assert.deepEqual(restarted.effects.filter((e) => e.type === 'replicate').map((e) => e.type === 'replicate' && e.sopInstanceUid), ['u1']);
  // A copy acknowledged by the peer ends its back-off too (it speaks the protocol again).
  s = run(s, { type: 'peerLacksProtocol', peerId: 'peer-b', nowMs: 240_200 }).state;
  assert.ok(s.replicationBackOff.has('peer-b'));
  s = run(s, { type: 'replicasAcknowledged', fromPeerId: 'peer-b', acks: [{ sopInstanceUid: 'u9', siteName: 'site-b' }], nowMs: 240_300 }).state;
  assert.equal(s.replicationBackOff.size, 0);
  // Ordinary failures (a dropped connection) are not backed off: the copy is offered again at the next tick.
  let t = initCustody({ ...config, debtEntriesMax: 100 }, { digest: createDigest(), debt: [] });
  t = run(t, { type: 'viewChanged', members: view(1), nowMs: 0 }).state;
  t = run(store(t, 'r1', 'u1', 0).state, { type: 'replicationFailed', sopInstanceUid: 'u1', toSiteName: 'site-b', nowMs: 10 }).state;
  assert.equal(run(t, { type: 'tick', nowMs: 250 }).effects.filter((e) => e.type === 'replicate').length, 1);
});

test('a partner is caught up with once everything its whole exchange named is held here, not before; a list cut at repairKeysMax is no whole exchange (hunt 187)', () => {
  const small = { ...config, repairKeysMax: 3 };
  let a = initCustody(small, { digest: digestOf([{ sopInstanceUid: '1.1', sha256: 's1' }]), debt: [] });
  a = run(a, { type: 'viewChanged', members: [member('peer-a'), { ...member('peer-b'), digestRoot: 'y' }], nowMs: 0 }).state;
  const keys = (uids: string[]) => uids.map((uid) => ({ sopInstanceUid: uid, sha256: `s${uid}` }));
  const listed = (uids: string[], afterUid: string) => ({
    type: 'messageReceived' as const,
    from: 'peer-b',
    message: { type: 'repairKeys' as const, buckets: [...new Set(uids.map(bucketOf))], keys: keys(uids), replyWanted: false, afterUid },
    nowMs: 1,
  });
  // Cut (3 keys, repairKeysMax): more may follow, nothing is concluded.
  a = run(a, listed(['1.1', '2.2', '3.3'], '')).state;
  assert.equal(a.reconciledPeers.has('peer-b'), false);
  assert.equal(a.reconciliationAwaited.has('peer-b'), false);
  // Whole, but from a cursor on: the keys before it were not in this list.
  a = run(a, listed(['4.4'], '3.3')).state;
  assert.equal(a.reconciliationAwaited.has('peer-b'), false);
  // Whole from the first key: the two lacked here are awaited, whether pulled or pushed.
  a = run(a, listed(['1.1', '2.2'], '')).state;
  assert.deepEqual([...a.reconciliationAwaited.get('peer-b')!], ['2.2']);
  // A later whole exchange replaces it.
  a = run(a, listed(['2.2', '5.5'], '')).state;
  assert.deepEqual([...a.reconciliationAwaited.get('peer-b')!].sort(), ['2.2', '5.5']);
  a = run(a, { type: 'replicaStored', sopInstanceUid: '2.2', sha256: 's2.2', fromPeerId: 'peer-b', nowMs: 2 }).state;
  assert.equal(a.reconciledPeers.has('peer-b'), false, 'one key still awaited');
  a = run(a, { type: 'replicaStored', sopInstanceUid: '5.5', sha256: 's5.5', fromPeerId: 'peer-c', nowMs: 3 }).state;
  assert.equal(a.reconciledPeers.has('peer-b'), true);
  // A partner gone from the view is forgotten.
  a = run(a, { type: 'viewChanged', members: [member('peer-a')], nowMs: 4 }).state;
  assert.equal(a.reconciledPeers.has('peer-b'), false);
});
