/** Retrieve anywhere between two real nodes: merged resolution, pulls into the local store, bounds. */
import '../../polyfill.ts';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { createMeshNode } from '../../net/node.ts';
import { generateSwarmKey } from '../../net/swarm-key.ts';
import { silentLogger } from '../runtime/logger.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { createRemoteRetrieve } from './remote-retrieve.ts';
import { createReplicaStore, type ReplicaStore } from './replica-store.ts';
import { FETCH_PROTOCOL, serveReplication } from './replication.ts';
import { loopbackAddress } from '../../../test/support/mesh-nodes.ts';

async function put(store: ReplicaStore, uid: string, bytes: Uint8Array): Promise<void> {
  const writer = store.beginWrite();
  await writer.write(bytes);
  await writer.commit(uid, (info): CatalogEntry => ({
    sopInstanceUid: uid, sopClassUid: '1.2.840.10008.5.1.4.1.1.7', studyInstanceUid: '1.2.9', seriesInstanceUid: '1.2.9.1',
    patientId: 'P', transferSyntaxUid: '1.2.840.10008.1.2.1', byteLength: info.byteLength, sha256: info.sha256,
    storedAtMs: 1, blobId: info.blobId, attributes: [],
  }));
}

/** Peer a (serving replication from its store) and peer b, connected, each with its store; all stopped after the test. */
async function connectedPeers(t: TestContext) {
  const swarmKey = generateSwarmKey();
  const dirs = [await mkdtemp(join(tmpdir(), 'pacs-rr-')), await mkdtemp(join(tmpdir(), 'pacs-rr-'))];
  const a = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[0]! });
  const b = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[1]!, bootstrap: [loopbackAddress(a)] });
  const storeA = createReplicaStore({ path: join(dirs[0]!, 'store') });
  const storeB = createReplicaStore({ path: join(dirs[1]!, 'store') });
  await storeA.open();
  await storeB.open();
  const server = await serveReplication({ node: a, store: storeA, siteName: 'site-a', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
  t.after(async () => {
    await server.stop();
    await Promise.allSettled([a.stop(), b.stop()]);
    await Promise.allSettled([storeA.close(), storeB.close()]);
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });
  for (let deadline = Date.now() + 10_000; !b.connectedPeers().includes(a.peerId); await new Promise((r) => setTimeout(r, 50))) {
    if (Date.now() > deadline) throw new Error('no connection');
  }
  return { a, b, storeA, storeB };
}

test('resolveRetrieveEverywhere merges local and remote matches; ensureLocal pulls once; limits and failures reported', { timeout: 30_000 }, async (t) => {
  const { a, b, storeA, storeB } = await connectedPeers(t);
  const remoteBytes = randomBytes(80_000);
  await put(storeA, '1.2.9.1.1', remoteBytes);
  await put(storeA, '1.2.9.1.2', randomBytes(10));
  await put(storeB, '1.2.9.1.2', randomBytes(10)); // held on both sides: listed once, the local entry
  const fetched: string[] = [];
  const unreachable = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo';
  // Unreachable too, but its last digest root was ours: it cannot hold a match that is not here.
  const unreachableInSync = '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq';
  const retrieve = createRemoteRetrieve({
    node: b, store: storeB, log: silentLogger,
    peers: () => [a.peerId, unreachable, unreachableInSync],
    holdsNothingMore: (peerId) => peerId === unreachableInSync,
    onFetched: (entry, from) => fetched.push(`${entry.sopInstanceUid}@${from}`),
    limits: { exchangeTimeoutMs: 2000 },
  });
  const request = { root: 'STUDY' as const, level: 'STUDY' as const, keys: [{ tag: 0x0020000d, vr: 'UI', value: '1.2.9' }] };
  const all = await retrieve.resolveRetrieveEverywhere(request);
  assert.deepEqual(all.entries.map((e) => e.sopInstanceUid).sort(), ['1.2.9.1.1', '1.2.9.1.2']);
  assert.equal(all.truncated, false);
  assert.deepEqual(all.peersFailed, [unreachable, unreachableInSync], 'unreachable peers are reported, not fatal');
  assert.deepEqual(all.peersMissed, [unreachable], 'only one that may hold what is not here can make the result incomplete');
  // A suspect peer, or a known site not heard since the start, cannot be asked: missed, unless in sync.
  const unsettled = createRemoteRetrieve({
    node: b, store: storeB, log: silentLogger,
    peers: () => [a.peerId],
    peersUnreachable: () => [unreachable, unreachableInSync, 'site:c'],
    holdsNothingMore: (peerId) => peerId === unreachableInSync,
  });
  const partial = await unsettled.resolveRetrieveEverywhere(request);
  assert.deepEqual(partial.peersFailed, []);
  assert.deepEqual(partial.peersMissed, [unreachable, 'site:c'], 'a retrieve then answers 0xA701, not Success with what it found');
  // A suspect peer soon settles: back alive (asked, not missed) within the wait, or the wait ends and it is missed.
  let settlingUntil = performance.now() + 300;
  const settling = () => performance.now() < settlingUntil;
  const settles = createRemoteRetrieve({
    node: b, store: storeB, log: silentLogger,
    peers: () => (settling() ? [] : [a.peerId]),
    peersUnreachable: () => (settling() ? [a.peerId] : []),
    peersSettling: settling,
    settleWaitMaxMs: 2000,
  });
  const t0 = performance.now();
  const settled = await settles.resolveRetrieveEverywhere(request);
  assert.ok(performance.now() - t0 >= 250, 'it waited for the suspect peer');
  assert.deepEqual(settled.peersMissed, [], 'back alive: asked, and the retrieve is whole');
  assert.deepEqual(settled.entries.map((e) => e.sopInstanceUid).sort(), ['1.2.9.1.1', '1.2.9.1.2']);
  settlingUntil = Number.POSITIVE_INFINITY;
  const stuck = await createRemoteRetrieve({
    node: b, store: storeB, log: silentLogger,
    peers: () => [],
    peersUnreachable: () => [a.peerId],
    peersSettling: () => true,
    settleWaitMaxMs: 200,
  }).resolveRetrieveEverywhere(request);
  assert.deepEqual(stuck.peersMissed, [a.peerId], 'the wait is bounded');
  // An IMAGE-level retrieve of instances all held here: a silent or paused peer cannot add a match.
  const silent = createRemoteRetrieve({
    node: b, store: storeB, log: silentLogger,
    peers: () => [unreachable],
    peersUnreachable: () => [unreachable, 'site:c'],
    peersSettling: () => true,
    settleWaitMaxMs: 2000,
  });
  const imageKeys = (uids: string) => [{ tag: 0x0020000d, vr: 'UI', value: '1.2.9' }, { tag: 0x0020000e, vr: 'UI', value: '1.2.9.1' }, { tag: 0x00080018, vr: 'UI', value: uids }];
  const t1 = performance.now();
  const held = await silent.resolveRetrieveEverywhere({ root: 'STUDY', level: 'IMAGE', keys: imageKeys('1.2.9.1.2') });
  assert.deepEqual(held.entries.map((e) => e.sopInstanceUid), ['1.2.9.1.2']);
  assert.deepEqual(held.peersMissed, [], 'whole here: Success, not 0xA701');
  assert.ok(performance.now() - t1 < 1000, 'no wait for a peer that cannot add anything');
  const notHeld = await silent.resolveRetrieveEverywhere({ root: 'STUDY', level: 'IMAGE', keys: imageKeys('1.2.9.1.2\\1.2.9.1.9') });
  assert.ok(notHeld.peersMissed.includes('site:c'), 'one named UID not here: the silent peers may hold it');
  const one = await retrieve.resolveRetrieveEverywhere(request, { limit: 1 });
  assert.equal(one.entries.length, 1);
  assert.equal(one.truncated, true);
  const [x, y] = await Promise.all([retrieve.ensureLocal('1.2.9.1.1'), retrieve.ensureLocal('1.2.9.1.1')]);
  assert.ok(x && y);
  assert.deepEqual(fetched, [`1.2.9.1.1@${a.peerId}`], 'concurrent callers share one pull');
  const chunks: Uint8Array[] = [];
  for await (const c of storeB.readInstance(x)) chunks.push(c);
  assert.deepEqual(Buffer.concat(chunks), remoteBytes);
});

test('a pull shared by two retrieves is not given up because the first one was cancelled', { timeout: 30_000 }, async (t) => {
  const { a, b, storeA, storeB } = await connectedPeers(t);
  await put(storeA, '1.2.9.2.1', randomBytes(16 * 1024 * 1024));
  const retrieve = createRemoteRetrieve({ node: b, store: storeB, log: silentLogger, peers: () => [a.peerId] });
  // A viewer's C-GET that is cancelled (its association aborted) while the instance is pulled, and another
  // requestor's retrieve of the same instance, which is not.
  const cancelled = new AbortController();
  const first = retrieve.ensureLocal('1.2.9.2.1', { signal: cancelled.signal });
  const second = retrieve.ensureLocal('1.2.9.2.1');
  setTimeout(() => cancelled.abort(new Error('association aborted')), 20);
  await first.catch(() => undefined);
  assert.ok(await second, 'the retrieve that was not cancelled gets the instance');
});

test('a pull does not ask the peer that reported the instance once that peer is no longer alive', { timeout: 30_000 }, async (t) => {
  const { a, b, storeA, storeB } = await connectedPeers(t);
  await put(storeA, '1.2.9.3.1', randomBytes(1000));
  let aAlive = true;
  const retrieve = createRemoteRetrieve({ node: b, store: storeB, log: silentLogger, peers: () => (aAlive ? [a.peerId] : []), limits: { transferTimeoutMs: 3000 } });
  const request = { root: 'STUDY' as const, level: 'STUDY' as const, keys: [{ tag: 0x0020000d, vr: 'UI', value: '1.2.9' }] };
  assert.deepEqual((await retrieve.resolveRetrieveEverywhere(request)).entries.map((e) => e.sopInstanceUid), ['1.2.9.3.1'], 'a reported it: the hint names a');
  // a hangs (SIGSTOP at a site): its fetch streams are never answered, and the view no longer lists it alive.
  let fetchesAsked = 0;
  await a.unhandle(FETCH_PROTOCOL);
  await a.handle(FETCH_PROTOCOL, () => {
    fetchesAsked++;
  });
  aAlive = false;
  assert.equal(await retrieve.ensureLocal('1.2.9.3.1'), undefined, 'no alive peer holds it');
  assert.equal(fetchesAsked, 0, 'the hinted peer, dead in the view, was not asked (each missing instance waited for its deadline)');
});
