/**
 * The custody stream protocols between two real mesh nodes: verified pushes, refusal of corrupted
 * transfers (nothing stored), malformed requests answered without a crash, putReplica and debt storage.
 */
import '../../polyfill.ts';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { after, before, describe, it, test } from 'node:test';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import { createMeshNode, type MeshNode } from '../../net/node.ts';
import { generateSwarmKey } from '../../net/swarm-key.ts';
import { silentLogger } from '../runtime/logger.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { createReplicaStore, type ReplicaStore } from './replica-store.ts';
import { uncommittedChunks } from './fixtures/store-keys.ts';
import { loopbackAddress } from '../../../test/support/mesh-nodes.ts';
import { startReplicationOverLink } from '../../../test/support/replication-over-link.ts';
import { runTimeSignal, waitFor } from '../../../test/support/wait.ts';
import { PartialCopies, defaultPartialCopyLimits, type PartialCopyLimits } from './partial-copies.ts';
import { systemClock } from '../runtime/clock.ts';
import type { CustodyMessage } from './custody/messages.ts';
import { createMeshIngest, type CustodyGate } from './mesh-ingest.ts';
import { PUSH_PROTOCOL, PushStreams, ReplicaPush, defaultPushLimits, receivePushes, type PushOutcome } from './push.ts';
import {
  CUSTODY_PROTOCOL,
  FETCH_BATCH_PROTOCOL,
  FETCH_PROTOCOL,
  QUERY_PROTOCOL,
  REPLICATE_BATCH_PROTOCOL,
  ReplicationError,
  fetchBatchFrom,
  fetchFrom,
  queryPeer,
  replicateBatchTo,
  sendCustodyMessage,
  sendCustodyMessages,
  serveReplication,
  validateCatalogEntry,
  type FetchBatchOutcome,
  type ReplicationServer,
} from './replication.ts';

const swarmKey = generateSwarmKey();

function buildEntry(uid: string) {
  return (info: { byteLength: number; sha256: string; blobId: string }): CatalogEntry => ({
    sopInstanceUid: uid,
    sopClassUid: '1.2.840.10008.5.1.4.1.1.7',
    studyInstanceUid: '1.2.3',
    seriesInstanceUid: '1.2.3.1',
    patientId: 'P1',
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    byteLength: info.byteLength,
    sha256: info.sha256,
    storedAtMs: 1,
    blobId: info.blobId,
    attributes: [{ tag: 0x00100010, vr: 'PN', value: 'Doe^John' }],
  });
}

async function storeLocally(store: ReplicaStore, uid: string, bytes: Uint8Array): Promise<CatalogEntry> {
  const writer = store.beginWrite();
  await writer.write(bytes);
  return (await writer.commit(uid, buildEntry(uid))).entry;
}


/** One stored instance over replicate-batch/1: its outcome, or its error thrown. */
async function replicateOne(from: MeshNode, to: string, store: ReplicaStore, entry: CatalogEntry): Promise<{ outcome: 'stored' | 'have'; siteName: string }> {
  const [result] = await replicateBatchTo(from, to, store, [entry]);
  if (result === undefined) throw new Error('no outcome');
  if ('error' in result) throw result.error;
  return { outcome: result.outcome, siteName: result.siteName };
}

async function* pieces(bytes: Uint8Array, size = 10_000): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < bytes.length; off += size) yield bytes.subarray(off, off + size);
}

describe('replication protocols (two nodes on 127.0.0.1)', { timeout: 60_000 }, () => {
  const dirs: string[] = [];
  let a: MeshNode;
  let b: MeshNode;
  let storeA: ReplicaStore;
  let storeB: ReplicaStore;
  const servers: ReplicationServer[] = [];
  const storedAtB: Array<{ uid: string; from: string }> = [];
  const messagesAtB: Array<{ from: string; message: CustodyMessage }> = [];
  let pushStreams: PushStreams;

  before(async () => {
    const start = async (bootstrap: string[]): Promise<{ node: MeshNode; store: ReplicaStore }> => {
      const dir = await mkdtemp(join(tmpdir(), 'pacs-repl-'));
      dirs.push(dir);
      const node = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dir, bootstrap });
      const store = createReplicaStore({ path: join(dir, 'store'), chunkBytes: 32 * 1024 });
      await store.open();
      return { node, store };
    };
    ({ node: a, store: storeA } = await start([]));
    ({ node: b, store: storeB } = await start([loopbackAddress(a)]));
    // a learns b's address when b dials it: wait for the connection before a opens streams to b.
    for (const deadline = Date.now() + 10_000; !a.connectedPeers().includes(b.peerId); ) {
      if (Date.now() > deadline) throw new Error('nodes did not connect');
      await new Promise((r) => setTimeout(r, 50));
    }
    servers.push(
      await serveReplication({ node: a, store: storeA, siteName: 'site-a', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined }),
      await serveReplication({
        node: b,
        store: storeB,
        siteName: 'site-b',
        log: silentLogger,
        onReplicaStored: (entry, from) => storedAtB.push({ uid: entry.sopInstanceUid, from }),
        onCustodyMessage: (from, message) => messagesAtB.push({ from, message }),
      }),
    );
    pushStreams = new PushStreams(a);
  });

  after(async () => {
    pushStreams.stop();
    await Promise.allSettled(servers.map((s) => s.stop()));
    await Promise.allSettled([a.stop(), b.stop()]);
    await Promise.allSettled([storeA.close(), storeB.close()]);
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('replicates an instance with its catalog entry; a second offer is answered "have" without bytes', async () => {
    const bytes = randomBytes(200_000);
    const entry = await storeLocally(storeA, '1.2.3.1.1', bytes);
    assert.deepEqual(await replicateOne(a, b.peerId, storeA, entry), { outcome: 'stored', siteName: 'site-b' });
    const atB = await storeB.getEntry('1.2.3.1.1');
    assert.ok(atB);
    assert.notEqual(atB.blobId, entry.blobId, 'the blob id is local');
    assert.deepEqual({ ...atB, blobId: '' }, { ...entry, blobId: '' });
    assert.deepEqual(storedAtB, [{ uid: '1.2.3.1.1', from: a.peerId }]);
    assert.deepEqual(await replicateOne(a, b.peerId, storeA, entry), { outcome: 'have', siteName: 'site-b' });
    assert.equal(storedAtB.length, 1);
  });

  it('a corrupted transfer (SHA-256 mismatch) is refused and nothing is stored', async () => {
    const bytes = randomBytes(150_000);
    const entry = await storeLocally(storeA, '1.2.3.1.2', bytes);
    const lying: CatalogEntry = { ...entry, sha256: 'ab'.repeat(32) };
    await assert.rejects(replicateOne(a, b.peerId, storeA, lying), (error: unknown) => {
      assert.ok(error instanceof ReplicationError);
      assert.equal(error.code, 'ERR_REPLICATION_MISMATCH');
      return true;
    });
    assert.equal(await storeB.getEntry('1.2.3.1.2'), undefined);
    assert.equal(await uncommittedChunks(storeB), 0, 'no upload left behind');
    assert.equal(await storeB.countInstances(), 1);
    // A wrong length is refused the same way, and the real instance still goes through afterwards.
    await assert.rejects(replicateOne(a, b.peerId, storeA, { ...entry, byteLength: entry.byteLength - 1 }));
    assert.equal((await replicateOne(a, b.peerId, storeA, entry)).outcome, 'stored');
  });

  it('putReplica verifies locally too: mismatch stores nothing; catalog kept; duplicate detected', async () => {
    const bytes = randomBytes(50_000);
    const entry = await storeLocally(storeA, '1.2.3.1.3', bytes);
    const tampered = Buffer.from(bytes);
    tampered[100] ^= 1;
    await assert.rejects(storeB.putReplica(entry, pieces(tampered)), { name: 'StoreError', code: 'ERR_STORE_REPLICA_MISMATCH' });
    await assert.rejects(storeB.putReplica(entry, pieces(Buffer.concat([bytes, Buffer.alloc(1)]))), { code: 'ERR_STORE_REPLICA_MISMATCH' });
    assert.equal(await storeB.getEntry('1.2.3.1.3'), undefined);
    assert.equal(await uncommittedChunks(storeB), 0, 'the refused uploads left no chunks');
    assert.equal(await storeB.putReplica(entry, pieces(bytes)), 'stored');
    assert.equal(await storeB.putReplica(entry, pieces(bytes)), 'duplicate');
  });

  it('fetch pulls an instance (verified, durable) and answers missing for an unknown one', async () => {
    const bytes = randomBytes(120_000);
    await storeLocally(storeA, '1.2.3.1.4', bytes);
    const pulled = await fetchFrom(b, a.peerId, storeB, '1.2.3.1.4');
    assert.ok(pulled);
    assert.equal(pulled.outcome, 'stored');
    assert.equal(pulled.entry.sopInstanceUid, '1.2.3.1.4');
    assert.equal(await fetchFrom(b, a.peerId, storeB, '1.2.3.9.9.9'), undefined);
  });

  it('custody messages arrive validated; malformed requests get a refusal, not a crash', async () => {
    await sendCustodyMessage(a, b.peerId, { type: 'replicaAck', sopInstanceUid: '1.2.3.1.1', siteName: 'site-a' });
    assert.deepEqual(messagesAtB, [{ from: a.peerId, message: { type: 'replicaAck', sopInstanceUid: '1.2.3.1.1', siteName: 'site-a' } }]);

    const raw = async (protocol: string, payload: Uint8Array): Promise<unknown> => {
      const stream = await a.openStream(b.peerId, protocol);
      await stream.writer.writeFrame(payload);
      await stream.closeWrite();
      const frame = await stream.reader.readFrameOrEnd(64 * 1024);
      await stream.close().catch(() => undefined);
      return frame === null ? null : decodeEnvelope(frame, { maxBytes: 64 * 1024 });
    };
    const garbage = await raw(REPLICATE_BATCH_PROTOCOL, new Uint8Array([1, 2, 3, 4, 5]));
    assert.equal((garbage as { type: string }).type, 'refused');
    const badEntry = await raw(REPLICATE_BATCH_PROTOCOL, encodeEnvelope({ type: 'offerBatch', entries: [{ sopInstanceUid: 'x!y' }] }));
    assert.deepEqual((badEntry as { code: string }).code, 'ERR_REPLICATION_MALFORMED');
    const badMessage = await raw(CUSTODY_PROTOCOL, encodeEnvelope({ type: 'repairKeys', buckets: [999], keys: [], replyWanted: true }));
    assert.equal((badMessage as { type: string }).type, 'refused');
    const badWindow = await raw(CUSTODY_PROTOCOL, encodeEnvelope({ type: 'repairKeys', buckets: [1], keys: [], replyWanted: true, afterUid: 7 }));
    assert.equal((badWindow as { type: string }).type, 'refused');
    assert.equal(messagesAtB.length, 1, 'the malformed messages never reached custody');
    // A repair window's start travels when set; absent, it is absent (also for peers that predate it).
    const buckets = Array.from({ length: 256 }, () => '00');
    await sendCustodyMessage(a, b.peerId, { type: 'repairDigest', buckets, afterUid: '1.2.3.1.2' });
    await sendCustodyMessage(a, b.peerId, { type: 'repairDigest', buckets, afterUid: undefined });
    await sendCustodyMessage(a, b.peerId, { type: 'repairDigest', buckets });
    assert.deepEqual(messagesAtB.slice(1).map((m) => (m.message.type === 'repairDigest' ? m.message.afterUid : 'other')), ['1.2.3.1.2', undefined, undefined]);
    messagesAtB.length = 1;
    // Leaf exchanges: the hashes travel as bytes, their length must match the buckets named, leaves are bounded.
    const leafHashes = new Uint8Array(2 * 256 * 32).fill(7);
    await sendCustodyMessage(a, b.peerId, { type: 'repairDigest', buckets, leaves: true });
    await sendCustodyMessage(a, b.peerId, { type: 'repairLeaves', buckets: [3, 200], leafHashes, afterUid: '1.2.3' });
    await sendCustodyMessage(a, b.peerId, { type: 'repairKeys', buckets: [], leaves: [770, 51_200], keys: [], replyWanted: true });
    const [leavesAsked, leavesSent, keysByLeaf] = messagesAtB.slice(1).map((m) => m.message);
    assert.ok(leavesAsked?.type === 'repairDigest' && leavesAsked.leaves === true);
    assert.ok(leavesSent?.type === 'repairLeaves' && Buffer.from(leavesSent.leafHashes).equals(Buffer.from(leafHashes)) && leavesSent.afterUid === '1.2.3');
    assert.ok(keysByLeaf?.type === 'repairKeys' && keysByLeaf.leaves?.join() === '770,51200');
    messagesAtB.length = 1;
    for (const malformed of [
      { type: 'repairLeaves', buckets: [3, 200], leafHashes: new Uint8Array(100) },
      { type: 'repairLeaves', buckets: [256], leafHashes: new Uint8Array(256 * 32) },
      { type: 'repairLeaves', buckets: Array.from({ length: 33 }, (_, i) => i), leafHashes: new Uint8Array(33 * 256 * 32) },
      { type: 'repairKeys', buckets: [], leaves: [65_536], keys: [], replyWanted: true },
      { type: 'repairDigest', buckets, leaves: 'yes' },
    ]) {
      assert.equal(((await raw(CUSTODY_PROTOCOL, encodeEnvelope(malformed))) as { type: string }).type, 'refused', JSON.stringify(malformed).slice(0, 80));
    }
    assert.equal(messagesAtB.length, 1, 'the malformed leaf messages never reached custody');
    // Still serving.
    assert.equal((await replicateOne(a, b.peerId, storeA, (await storeA.getEntry('1.2.3.1.4'))!)).outcome, 'have');
  });

  it('cut-through push: pieces stream while they arrive, the entry follows; verified, durable, "have" the second time', async () => {
    const bytes = randomBytes(300_000);
    const uid = '1.2.3.2.1';
    const entry = buildEntry(uid)({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: 'sender-side' });
    const push = new ReplicaPush(pushStreams, b.peerId, uid, defaultPushLimits);
    for (let off = 0; off < bytes.length; off += 70_000) await push.write(bytes.subarray(off, off + 70_000));
    push.end(entry);
    assert.deepEqual(await push.result, { outcome: 'stored', siteName: 'site-b' });
    const atB = (await storeB.getEntry(uid))!;
    assert.deepEqual({ ...atB, blobId: entry.blobId }, entry, 'catalog data as sent; only the blob id is local');
    const chunks: Uint8Array[] = [];
    for await (const chunk of storeB.readInstance(atB)) chunks.push(chunk);
    assert.deepEqual(Buffer.concat(chunks), bytes);
    assert.deepEqual(storedAtB.at(-1), { uid, from: a.peerId });

    const again = new ReplicaPush(pushStreams, b.peerId, uid, defaultPushLimits);
    await again.write(bytes);
    again.end(entry);
    assert.deepEqual(await again.result, { outcome: 'have', siteName: 'site-b' });
  });

  it('pushes to one site take turns on one stream, also after an aborted push; an idle stream is closed', async () => {
    let opened = 0;
    const counting = new PushStreams({ ...a, openStream: (peerId, protocol, options) => ((opened += 1), a.openStream(peerId, protocol, options)) });
    const pushOne = async (uid: string, how: 'end' | 'abort'): Promise<PushOutcome> => {
      const bytes = randomBytes(50_000);
      const push = new ReplicaPush(counting, b.peerId, uid, defaultPushLimits);
      await push.write(bytes);
      if (how === 'abort') push.abort();
      else push.end(buildEntry(uid)({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
      return push.result;
    };
    assert.equal((await pushOne('1.2.3.2.10', 'end')).outcome, 'stored');
    await assert.rejects(pushOne('1.2.3.2.11', 'abort'), { code: 'ERR_PUSH_ABORTED' });
    assert.equal((await pushOne('1.2.3.2.12', 'end')).outcome, 'stored');
    assert.equal(opened, 1, 'three pushes, one stream');
    assert.equal(await storeB.getEntry('1.2.3.2.11'), undefined);
    counting.stop();

    // A stream that was closed while idle (by the sender's pool here) is replaced, not reused.
    const shortLived = new PushStreams(a, { idleStreamsPerPeerMax: 1, idleStreamMs: 50 });
    const first = await shortLived.take(b.peerId, runTimeSignal(5_000));
    shortLived.give(b.peerId, first);
    assert.equal(shortLived.peersWithIdleStreams, 1);
    // Its close is asynchronous (retire): waited for, where 300 ms was enough only on a quiet machine.
    await waitFor('the idle stream closed after idleStreamMs', () => !first.reusable, 5000);
    assert.equal(shortLived.peersWithIdleStreams, 0, 'a site whose idle streams all closed is forgotten');
    const second = await shortLived.take(b.peerId, runTimeSignal(5_000));
    assert.notEqual(second, first);
    shortLived.give(b.peerId, second);
    assert.equal(await shortLived.take(b.peerId, runTimeSignal(5_000)), second, 'an idle stream is reused');
    assert.equal(shortLived.peersWithIdleStreams, 0, 'a site whose last idle stream was taken is forgotten');
    shortLived.give(b.peerId, second);
    shortLived.stop();
    assert.equal(shortLived.peersWithIdleStreams, 0);
  });

  it('the receiver resets a push stream left idle for receiverIdleMs, and answers the pushes before it', async () => {
    const protocol = '/pacs-mesh/test/push-idle/1';
    const ended: string[] = [];
    await b.handle(protocol, async (stream) => {
      const init = { store: storeB, siteName: 'site-b', limits: { ...defaultPushLimits, receiverIdleMs: 150 }, validateEntry: validateCatalogEntry, onReplicaStored: () => undefined };
      await receivePushes(stream, new AbortController().signal, init).then(() => ended.push('returned'), (error: Error) => ended.push(`threw ${error.message}`));
    });
    try {
      const streams = new PushStreams({ ...a, openStream: (peerId, _protocol, options) => a.openStream(peerId, protocol, options) });
      const bytes = randomBytes(20_000);
      const push = new ReplicaPush(streams, b.peerId, '1.2.3.2.20', defaultPushLimits);
      await push.write(bytes);
      push.end(buildEntry('1.2.3.2.20')({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
      assert.equal((await push.result).outcome, 'stored');
      const idleStream = await streams.take(b.peerId, runTimeSignal(5_000));
      for (const deadline = Date.now() + 5_000; idleStream.reusable && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 25));
      assert.equal(idleStream.reusable, false, 'reset after 150 ms idle');
      assert.deepEqual(ended, ['returned'], 'an idle stream ends the receiver quietly');
      streams.stop();
    } finally {
      await b.unhandle(protocol);
    }
  });

  it('custody hears of a pushed copy while its bytes flow, and of none it holds already', async () => {
    const protocol = '/pacs-mesh/test/push-offered/1';
    const offered: Array<{ uids: string[]; from: string }> = [];
    await b.handle(protocol, async (stream) => {
      const init = {
        store: storeB,
        siteName: 'site-b',
        limits: defaultPushLimits,
        validateEntry: validateCatalogEntry,
        onReplicaStored: () => undefined,
        onCopiesOffered: (uids: string[], from: string) => offered.push({ uids, from }),
      };
      await receivePushes(stream, new AbortController().signal, init).catch(() => undefined);
    });
    try {
      const streams = new PushStreams({ ...a, openStream: (peerId, _protocol, options) => a.openStream(peerId, protocol, options) });
      const bytes = randomBytes(20_000);
      const push = new ReplicaPush(streams, b.peerId, '1.2.3.2.30', defaultPushLimits);
      await push.write(bytes.subarray(0, 10_000));
      for (const deadline = Date.now() + 5_000; offered.length === 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(offered[0], { uids: ['1.2.3.2.30'], from: a.peerId.toString() }, 'said when the push starts');
      // The rest comes after more than a repeat interval: the receiver says it again meanwhile.
      await new Promise((r) => setTimeout(r, 1_200));
      assert.ok(offered.length >= 2, `said again while the bytes flow (${offered.length} times)`);
      await push.write(bytes.subarray(10_000));
      push.end(buildEntry('1.2.3.2.30')({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
      assert.equal((await push.result).outcome, 'stored');
      const saidWhileFlowing = offered.length;
      await new Promise((r) => setTimeout(r, 700));
      assert.equal(offered.length, saidWhileFlowing, 'no longer said once stored');
      const again = new ReplicaPush(streams, b.peerId, '1.2.3.2.30', defaultPushLimits);
      await again.write(bytes);
      again.end(buildEntry('1.2.3.2.30')({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
      assert.equal((await again.result).outcome, 'have');
      assert.equal(offered.length, saidWhileFlowing, 'a copy held already is not said to be coming');
      streams.stop();
    } finally {
      await b.unhandle(protocol);
    }
  });

  it('a push whose bytes do not match its entry, or that is aborted, stores nothing at the receiver', async () => {
    const bytes = randomBytes(100_000);
    const lying = new ReplicaPush(pushStreams, b.peerId, '1.2.3.2.2', defaultPushLimits);
    await lying.write(bytes);
    lying.end(buildEntry('1.2.3.2.2')({ byteLength: bytes.length, sha256: 'ab'.repeat(32), blobId: '' }));
    await assert.rejects(lying.result);
    const aborted = new ReplicaPush(pushStreams, b.peerId, '1.2.3.2.3', defaultPushLimits);
    await aborted.write(bytes);
    aborted.abort();
    await assert.rejects(aborted.result, { name: 'PushError', code: 'ERR_PUSH_ABORTED' });
    const wrongUid = new ReplicaPush(pushStreams, b.peerId, '1.2.3.2.4', defaultPushLimits);
    await wrongUid.write(bytes);
    wrongUid.end(buildEntry('1.2.3.2.5')({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
    await assert.rejects(wrongUid.result);
    for (const uid of ['1.2.3.2.2', '1.2.3.2.3', '1.2.3.2.4', '1.2.3.2.5']) assert.equal(await storeB.getEntry(uid), undefined);
    await noChunksLeftSoon(storeB, 'the refused pushes left no chunks');
  });

  it('a malformed push is reset, not answered, and the receiver keeps serving', async () => {
    const send = async (payload: Uint8Array): Promise<unknown> => {
      const stream = await a.openStream(b.peerId, PUSH_PROTOCOL);
      try {
        await stream.writer.write(payload);
        await stream.closeWrite();
        return await stream.reader.readFrameOrEnd(64 * 1024);
      } catch (error) {
        return error;
      }
    };
    const header = encodeEnvelope({ type: 'push', sopInstanceUid: '1.2.3.2.6' });
    const framed = (payload: Uint8Array): Uint8Array => Buffer.concat([Buffer.from([0, 0, 0, payload.length]), payload]);
    const oversizedPiece = Buffer.alloc(8);
    oversizedPiece.writeBigUInt64BE(BigInt(1) << BigInt(40));
    for (const payload of [new Uint8Array([1, 2, 3, 4, 5]), framed(encodeEnvelope({ type: 'push', sopInstanceUid: 'not a uid' })), Buffer.concat([framed(header), oversizedPiece]), framed(header)]) {
      const outcome = await send(payload);
      assert.ok(outcome === null || outcome instanceof Error, `no answer frame for a malformed push (got ${String(outcome)})`);
    }
    assert.equal(await storeB.getEntry('1.2.3.2.6'), undefined);
    const bytes = randomBytes(10_000);
    const good = new ReplicaPush(pushStreams, b.peerId, '1.2.3.2.7', defaultPushLimits);
    await good.write(bytes);
    good.end(buildEntry('1.2.3.2.7')({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: '' }));
    assert.equal((await good.result).outcome, 'stored');
  });

  /** What a batch transfer reports of its phases (custody pipelines the next batch on them). */
  const recordedPhases = () => {
    const reported: string[] = [];
    return { reported, phases: { flowing: () => reported.push('flowing'), flowed: () => reported.push('flowed') } };
  };

  it('replicate-batch: one stream, only what the site lacks travels, a corrupted entry fails alone', async () => {
    const entries: CatalogEntry[] = [];
    for (let i = 1; i <= 5; i++) entries.push(await storeLocally(storeA, `1.2.3.3.${i}`, randomBytes(20_000 + i)));
    assert.equal((await replicateOne(a, b.peerId, storeA, entries[0]!)).outcome, 'stored');
    const corrupted = { ...entries[3]!, sha256: 'cd'.repeat(32) };
    const { reported, phases } = recordedPhases();
    const outcomes = await replicateBatchTo(a, b.peerId, storeA, [entries[0]!, entries[1]!, entries[2]!, corrupted, entries[4]!], { phases });
    assert.deepEqual(reported, ['flowing', 'flowed'], 'its bytes flowed once the offer was answered, and were all sent before the outcome');
    assert.deepEqual(
      outcomes.map((o) => ('error' in o ? `error ${o.error.code}` : o.outcome)),
      ['have', 'stored', 'stored', 'error ERR_REPLICATION_MISMATCH', 'stored'],
    );
    for (const i of [2, 3, 5]) assert.ok(await storeB.getEntry(`1.2.3.3.${i}`), `1.2.3.3.${i} stored at B`);
    assert.equal(await storeB.getEntry('1.2.3.3.4'), undefined, 'the corrupted one is not stored');
    assert.equal(await uncommittedChunks(storeB), 0);
  });

  it('replicate-batch: an offer too large for one frame is split, and every entry still travels', async () => {
    const entries: CatalogEntry[] = [];
    for (let i = 1; i <= 6; i++) entries.push(await storeLocally(storeA, `1.2.3.5.${i}`, randomBytes(5_000 + i)));
    // Each offered entry is ~3 KB here (rich headers): six do not fit an 8 KiB frame, two do.
    const rich = entries.map((e) => ({ ...e, attributes: [{ tag: 0x00081030, vr: 'LO', value: 'x'.repeat(3_000) }] }));
    const { reported, phases } = recordedPhases();
    const outcomes = await replicateBatchTo(a, b.peerId, storeA, rich, { limits: { frameBytesMax: 8 * 1024 }, phases });
    assert.deepEqual(reported, ['flowing', 'flowed'], 'the split batch reports its phases once');
    assert.deepEqual(
      outcomes.map((o) => ('error' in o ? `error ${o.error.code}` : o.outcome)),
      ['stored', 'stored', 'stored', 'stored', 'stored', 'stored'],
    );
    const huge = { ...entries[0]!, sopInstanceUid: '1.2.3.5.99', attributes: [{ tag: 0x00081030, vr: 'LO', value: 'x'.repeat(9_000) }] };
    const [alone] = await replicateBatchTo(a, b.peerId, storeA, [huge], { limits: { frameBytesMax: 8 * 1024 } });
    assert.ok(alone !== undefined && 'error' in alone && alone.error.code === 'ERR_REPLICATION_REFUSED', 'an entry larger than a frame fails alone');
  });

  it('replicate-batch: a local copy that cannot be read fails alone (sent padded), and the copies after it still travel', async () => {
    const uids = ['1.2.3.6.1', '1.2.3.6.2', '1.2.3.6.3', '1.2.3.6.4', '1.2.3.6.5'];
    const bytes = uids.map((_, i) => randomBytes(150_000 + i));
    const entries: CatalogEntry[] = [];
    for (const [i, uid] of uids.entries()) {
      // In 40 KB pieces: chunks of 80 KB, two per instance.
      const writer = storeA.beginWrite();
      for (let offset = 0; offset < bytes[i]!.length; offset += 40_000) await writer.write(bytes[i]!.subarray(offset, offset + 40_000));
      entries.push((await writer.commit(uid, buildEntry(uid))).entry);
    }
    const chunkKeys = async (entry: CatalogEntry): Promise<string[]> => {
      const keys: string[] = [];
      for await (const key of storeA.blobDb.keys({ gte: `b!${entry.blobId}!`, lt: `b!${entry.blobId}!~` })) keys.push(key);
      return keys;
    };
    // 2: a chunk lost (short); 4: a chunk longer than the catalog says (surplus): neither may desynchronise the stream.
    await storeA.blobDb.del((await chunkKeys(entries[1]!))[1]!);
    const surplusKeys = await chunkKeys(entries[3]!);
    await storeA.blobDb.put(surplusKeys[surplusKeys.length - 1]!, randomBytes(200_000));
    const outcomes = await replicateBatchTo(a, b.peerId, storeA, entries);
    assert.deepEqual(
      outcomes.map((o) => ('error' in o ? `error ${o.error.code}` : o.outcome)),
      ['stored', 'error ERR_REPLICATION_SOURCE_UNREADABLE', 'stored', 'error ERR_REPLICATION_SOURCE_UNREADABLE', 'stored'],
    );
    for (const i of [0, 2, 4]) {
      const atB = await storeB.getEntry(uids[i]!);
      assert.ok(atB, `${uids[i]} stored at B`);
      const chunks: Uint8Array[] = [];
      for await (const chunk of storeB.readInstance(atB)) chunks.push(chunk);
      assert.deepEqual(Buffer.concat(chunks), bytes[i]);
    }
    for (const i of [1, 3]) assert.equal(await storeB.getEntry(uids[i]!), undefined, `${uids[i]} is not stored at B`);
    assert.equal(await uncommittedChunks(storeB), 0);
  });

  it('fetch-batch: pulls many over one stream, reports missing ones, skips what is held', async () => {
    const uids = ['1.2.3.4.1', '1.2.3.4.2', '1.2.3.4.3'];
    const bytes = uids.map((_, i) => randomBytes(15_000 + i));
    for (const [i, uid] of uids.entries()) await storeLocally(storeB, uid, bytes[i]!);
    await storeLocally(storeA, uids[0]!, bytes[0]!);
    const { reported, phases } = recordedPhases();
    const outcomes = await fetchBatchFrom(a, b.peerId, storeA, [...uids, '1.2.3.4.99'], { phases });
    assert.deepEqual(reported, ['flowing', 'flowed']);
    assert.deepEqual(
      outcomes.map((o) => ('missing' in o ? 'missing' : 'error' in o ? 'error' : o.outcome)),
      ['duplicate', 'stored', 'stored', 'missing'],
    );
    for (const [i, uid] of uids.entries()) {
      const chunks: Uint8Array[] = [];
      for await (const chunk of storeA.readInstance((await storeA.getEntry(uid))!)) chunks.push(chunk);
      assert.deepEqual(Buffer.concat(chunks), bytes[i]);
    }
  });

  it('malformed batch requests are refused, not crashed on', async () => {
    const raw = async (protocol: string, payload: Uint8Array): Promise<{ type?: string; code?: string }> => {
      const stream = await a.openStream(b.peerId, protocol);
      await stream.writer.writeFrame(payload);
      await stream.closeWrite();
      const frame = await stream.reader.readFrameOrEnd(64 * 1024);
      await stream.close().catch(() => undefined);
      return frame === null ? {} : decodeEnvelope(frame, { maxBytes: 64 * 1024 });
    };
    const tooMany = await raw(REPLICATE_BATCH_PROTOCOL, encodeEnvelope({ type: 'offerBatch', entries: new Array(65).fill({}) }));
    assert.equal(tooMany.code, 'ERR_REPLICATION_MALFORMED');
    const badEntry = await raw(REPLICATE_BATCH_PROTOCOL, encodeEnvelope({ type: 'offerBatch', entries: [{ sopInstanceUid: '1..2' }] }));
    assert.equal(badEntry.code, 'ERR_REPLICATION_MALFORMED');
    const badUid = await raw(FETCH_BATCH_PROTOCOL, encodeEnvelope({ type: 'fetchBatch', uids: ['1.2', 'x'] }));
    assert.equal(badUid.code, 'ERR_REPLICATION_MALFORMED');
    // Still serving.
    assert.ok('missing' in (await fetchBatchFrom(a, b.peerId, storeA, ['1.2.3.4.77']))[0]!);
  });

  it('several custody messages share one stream, in order; more than the bound is refused', async () => {
    const before = messagesAtB.length;
    const acks = [1, 2, 3].map((i): CustodyMessage => ({ type: 'replicaAck', sopInstanceUid: `1.2.3.5.${i}`, siteName: 'site-a' }));
    await sendCustodyMessages(a, b.peerId, acks);
    assert.deepEqual(messagesAtB.slice(before).map((m) => m.message), acks);
    await assert.rejects(sendCustodyMessages(a, b.peerId, new Array(65).fill(acks[0])), RangeError);
    const stream = await a.openStream(b.peerId, CUSTODY_PROTOCOL);
    for (let i = 0; i < 65; i++) await stream.writer.writeFrame(encodeEnvelope(acks[0]));
    await stream.closeWrite();
    const answer = await stream.reader.readFrameOrEnd(64 * 1024);
    await stream.close().catch(() => undefined);
    assert.equal(decodeEnvelope<{ type: string; code: string }>(answer!, { maxBytes: 64 * 1024 }).code, 'ERR_REPLICATION_MALFORMED');
  });

  it('replicate-batch: a receiver whose store stalls mid-batch is given up after stallTimeoutMs, not the transfer deadline', async () => {
    const entries = [await storeLocally(storeA, '1.2.3.9.1', randomBytes(20_000)), await storeLocally(storeA, '1.2.3.9.2', randomBytes(20_000))];
    // What a faulted store did: its commits waited on the reopening database, so the batch got no answer.
    const release = Promise.withResolvers<void>();
    const beginWrite = storeB.beginWrite.bind(storeB);
    storeB.beginWrite = () => {
      const writer = beginWrite();
      const commit = writer.commit.bind(writer);
      writer.commit = async (...args) => {
        await release.promise;
        return commit(...args);
      };
      return writer;
    };
    try {
      await assert.rejects(
        replicateBatchTo(a, b.peerId, storeA, entries, { limits: { stallTimeoutMs: 400 } }),
        (error: unknown) => error instanceof ReplicationError && error.code === 'ERR_REPLICATION_STALLED',
      );
    } finally {
      storeB.beginWrite = beginWrite;
      release.resolve();
    }
  });

  it('an ingest of a UID held here with other bytes pushes none of them: the other sites get the stored copy, not the dropped one', async () => {
    const uid = '1.2.3.9.1';
    const first = randomBytes(40_000);
    const stored = await storeLocally(storeA, uid, first);
    const pushes: ReplicaPush[] = [];
    const gate: CustodyGate = {
      submitStore: (_uid, _sha256, writeLocal) => {
        const written = writeLocal();
        return { written, answer: written.then(() => ({ status: 0 })) };
      },
      startPushes: (sopInstanceUid) => {
        const push = new ReplicaPush(pushStreams, b.peerId, sopInstanceUid, defaultPushLimits);
        pushes.push(push);
        return [push];
      },
    };
    const ingest = createMeshIngest(storeA, gate);
    // The same UID again, other bytes (a corrected re-send, or the same file in another transfer syntax).
    const second = randomBytes(40_000);
    const writer = ingest.beginWrite(uid);
    await writer.write(second);
    const result = await writer.commit(uid, buildEntry(uid));
    assert.equal(result.outcome, 'duplicate', 'site a keeps its copy');
    assert.equal(result.entry.sha256, stored.sha256);
    await Promise.allSettled(pushes.map((push) => push.result));
    const atB = await storeB.getEntry(uid);
    assert.ok(atB === undefined || atB.sha256 === stored.sha256, `site b holds ${uid} with the bytes site a dropped (${atB?.sha256.slice(0, 12)}), site a with ${stored.sha256.slice(0, 12)}`);
  });

  it('query: entries with long header values are answered in frames that fit, whatever their attributes weigh (hunt 100)', async () => {
    // Values up to 1,024 bytes are kept in the catalog (store.ts); frames were sized at 64 bytes an
    // attribute, so 200 such entries made a frame of ~8 MiB, over the 1 MiB limit: the query was refused.
    const studyUid = '1.2.3.100';
    const longValue = 'X'.repeat(1000);
    for (let i = 0; i < 200; i++) {
      const uid = `1.2.3.100.${i + 1}`;
      const writer = storeB.beginWrite();
      await writer.write(randomBytes(64));
      await writer.commit(uid, (info) => ({
        ...buildEntry(uid)(info),
        studyInstanceUid: studyUid,
        seriesInstanceUid: `${studyUid}.1`,
        attributes: Array.from({ length: 40 }, (_, n) => ({ tag: 0x00091000 + n, vr: 'LT', value: longValue })),
      }));
    }
    const answer = await queryPeer(a, b.peerId, { root: 'STUDY', level: 'STUDY', keys: [{ tag: 0x0020000d, vr: 'UI', value: studyUid }] }, 1000);
    assert.equal(answer.entries.length, 200);
    assert.equal(answer.truncated, false);
  });

  it('debt entries persist, list and delete', async () => {
    await storeB.updateDebt(
      [
        { sopInstanceUid: '1.2.5', siteName: 'site-x', sinceMs: 5 },
        { sopInstanceUid: '1.2.5', siteName: 'site-y', sinceMs: 6 },
      ],
      [],
    );
    assert.deepEqual(await storeB.listDebt(), [
      { sopInstanceUid: '1.2.5', siteName: 'site-x', sinceMs: 5 },
      { sopInstanceUid: '1.2.5', siteName: 'site-y', sinceMs: 6 },
    ]);
    await storeB.updateDebt([], [{ sopInstanceUid: '1.2.5', siteName: 'site-x' }]);
    assert.deepEqual(await storeB.listDebt(), [{ sopInstanceUid: '1.2.5', siteName: 'site-y', sinceMs: 6 }]);
  });
});

test('a start that fails registering a handler leaves nothing registered: no protocol, no store listener', { timeout: 30_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-repl-'));
  const node = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dir });
  const store = createReplicaStore({ path: join(dir, 'store') });
  await store.open();
  t.after(async () => {
    await node.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  // The store as the server sees it, counting the stored-instance listeners it holds.
  let listening = 0;
  const counted: ReplicaStore = Object.assign(Object.create(store) as ReplicaStore, {
    onInstanceStored(listener: (uid: string) => void) {
      listening += 1;
      const stopListening = store.onInstanceStored(listener);
      return () => {
        listening -= 1;
        stopListening();
      };
    },
  });
  // Handled already: the server's third registration throws, after two went through.
  await node.handle(FETCH_PROTOCOL, async () => undefined);
  const start = () => serveReplication({ node, store: counted, siteName: 'site-a', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
  await assert.rejects(start());
  assert.equal(listening, 0, 'the partial copies stopped listening to the store');
  await node.unhandle(FETCH_PROTOCOL);
  const serving = await start();
  await serving.stop();
  assert.equal(listening, 0);
});

test("a stop whose protocol unregistration does not answer ends by its deadline (hunt 154)", { timeout: 30_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-repl-'));
  const node = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dir });
  const store = createReplicaStore({ path: join(dir, 'store') });
  await store.open();
  const serving = await serveReplication({ node, store, siteName: 'site-a', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
  // The node's own peer record update after a handler is dropped (libp2p's unhandle) never settles.
  const unhandled = Promise.withResolvers<void>();
  const { unhandle } = node;
  node.unhandle = async (protocol) => {
    await unhandle.call(node, protocol);
    await unhandled.promise;
  };
  t.after(async () => {
    unhandled.resolve();
    await node.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  let stopped = false;
  const stopping = serving.stop(AbortSignal.abort()).then(() => (stopped = true));
  // Past its deadline already: nothing is waited for but microtasks and the store (no kept part to mark).
  await waitFor('the stop to end', () => stopped, 5000).catch(() => undefined);
  assert.ok(stopped, 'the stop waited for the unregistration past its deadline');
  unhandled.resolve();
  await stopping;
});

test('a peer that opens query streams and sends nothing holds their slots for exchangeTimeoutMs, not the transfer deadline (hunt 100)', { timeout: 30_000 }, async (t) => {
  const dirs = [await mkdtemp(join(tmpdir(), 'pacs-repl-')), await mkdtemp(join(tmpdir(), 'pacs-repl-'))];
  const server = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[0]! });
  const client = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[1]!, bootstrap: [loopbackAddress(server)] });
  const store = createReplicaStore({ path: join(dirs[0]!, 'store') });
  await store.open();
  const serving = await serveReplication({ node: server, store, siteName: 'site-a', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined, limits: { exchangeTimeoutMs: 600, inboundQueriesMax: 2 } });
  t.after(async () => {
    await serving.stop();
    await Promise.allSettled([server.stop(), client.stop()]);
    await store.close();
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });
  for (const deadline = Date.now() + 10_000; !client.connectedPeers().includes(server.peerId); await new Promise((r) => setTimeout(r, 50))) {
    if (Date.now() > deadline) throw new Error('nodes did not connect');
  }
  // Every query slot taken by a stream that never says what it wants.
  const silent = [await client.openStream(server.peerId, QUERY_PROTOCOL), await client.openStream(server.peerId, QUERY_PROTOCOL)];
  t.after(() => silent.forEach((stream) => stream.abort(new Error('test over'))));
  await new Promise((r) => setTimeout(r, 1200));
  const answer = await queryPeer(client, server.peerId, { root: 'STUDY', level: 'IMAGE', keys: [{ tag: 0x00080018, vr: 'UI', value: '1.2.3.4.5' }] }, 10);
  assert.deepEqual(answer.entries, [], 'served once the silent streams lost their slots');
});

test('a batch offer that arrives slowly but steadily (a slow WAN link) is not refused for taking longer than exchangeTimeoutMs (hunt 102)', { timeout: 60_000 }, async (t) => {
  const dirs = [await mkdtemp(join(tmpdir(), 'pacs-repl-')), await mkdtemp(join(tmpdir(), 'pacs-repl-'))];
  const limits = { exchangeTimeoutMs: 1_000 };
  const server = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[0]!, tuning: { peerAnnounceIntervalMs: 0 } });
  const serverStore = createReplicaStore({ path: join(dirs[0]!, 'store') });
  await serverStore.open();
  const serving = await serveReplication({ node: server, store: serverStore, siteName: 'site-b', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined, limits });
  // The client reaches the server through a link of ~128 KB/s in its direction.
  const bytesPerSecond = 128 * 1024;
  const sockets: Socket[] = [];
  const link = createServer((near) => {
    const far = connect({ host: '127.0.0.1', port: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(server))![1]) });
    sockets.push(near, far);
    near.on('error', () => undefined);
    far.on('error', () => undefined);
    far.on('data', (d) => near.write(d));
    let freeAtMs = performance.now();
    near.on('data', (d) => {
      far.write(d);
      freeAtMs = Math.max(freeAtMs, performance.now()) + (d.byteLength / bytesPerSecond) * 1000;
      const waitMs = freeAtMs - performance.now();
      if (waitMs > 1) {
        near.pause();
        setTimeout(() => near.resume(), waitMs);
      }
    });
    near.on('close', () => far.destroy());
    far.on('close', () => near.destroy());
  });
  await new Promise<void>((resolve) => link.listen(0, '127.0.0.1', () => resolve()));
  const client = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[1]!, tuning: { peerAnnounceIntervalMs: 0 } });
  const clientStore = createReplicaStore({ path: join(dirs[1]!, 'store') });
  await clientStore.open();
  t.after(async () => {
    await serving.stop();
    for (const socket of sockets) socket.destroy();
    link.close();
    await Promise.allSettled([server.stop(), client.stop()]);
    await Promise.allSettled([serverStore.close(), clientStore.close()]);
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });
  await client.dial(`/ip4/127.0.0.1/tcp/${(link.address() as AddressInfo).port}/p2p/${server.peerId}`);
  // 128 entries with a CT-like header (~60 attributes): an offer of ~400 KB, ~3 s on this link.
  const entries: CatalogEntry[] = [];
  for (let i = 0; i < 128; i++) {
    const uid = `1.2.3.102.${i + 1}`;
    const writer = clientStore.beginWrite();
    await writer.write(randomBytes(16));
    entries.push((await writer.commit(uid, (info) => ({ ...buildEntry(uid)(info), attributes: Array.from({ length: 60 }, (_, n) => ({ tag: 0x00181000 + n, vr: 'LO', value: `value ${n} `.padEnd(40, 'x') })) }))).entry);
  }
  const outcomes = await replicateBatchTo(client, server.peerId, clientStore, entries, { limits });
  const failed = outcomes.filter((outcome) => 'error' in outcome);
  assert.equal(failed.length, 0, `${failed.length} of 128 refused: ${'error' in (failed[0] ?? {}) ? (failed[0] as { error: Error }).error.message : ''}`);
});

/** Two nodes, the receiver's address behind a throttled link (1 MB/s: a 2 MB push can be cut half-way), for resumed copies. */
async function nodesOverLink(t: { after(fn: () => Promise<void>): void }, partialCopyLimits?: Partial<PartialCopyLimits>, bytesPerSecond = 1_000_000) {
  const pair = await startReplicationOverLink({ bytesPerSecond, latencyMs: 0, chunkBytes: 64 * 1024, ...(partialCopyLimits && { receiver: { partialCopyLimits } }) });
  t.after(() => pair.stop());
  const { receiver, streams, link, serving } = pair;
  /** Pushes `bytes` as `uid` and cuts the push (a stream reset) once `cutAfterBytes` went through the link; resolves with the bytes the receiver keeps then. */
  const pushCut = async (uid: string, bytes: Uint8Array, cutAfterBytes: number): Promise<number> => {
    const keptBefore = serving.partialCopies.keptSinceStart;
    const cut = new AbortController();
    const startBytes = link.stats.forwardBytes;
    const push = new ReplicaPush(streams, receiver.peerId, uid, defaultPushLimits, cut.signal);
    const writing = (async () => {
      for (let off = 0; off < bytes.length && !cut.signal.aborted; off += 64 * 1024) await push.write(bytes.subarray(off, off + 64 * 1024));
    })();
    while (link.stats.forwardBytes - startBytes < cutAfterBytes) await new Promise((r) => setTimeout(r, 10));
    cut.abort(new Error('cut by the test'));
    await assert.rejects(push.result);
    await writing;
    for (const deadline = Date.now() + 10_000; serving.partialCopies.keptSinceStart === keptBefore; await new Promise((r) => setTimeout(r, 20))) {
      if (Date.now() > deadline) throw new Error('the receiver kept nothing of the cut push');
    }
    return serving.partialCopies.stats.bytes;
  };
  return { ...pair, pushCut };
}

test('a cut-through push cut half-way is resumed: the stored copy that follows carries only the rest, verified whole (hunt 121)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore, link, serving, pushCut } = await nodesOverLink(t);
  const bytes = randomBytes(2 * 1024 * 1024);
  const uid = '1.2.3.121.1';
  const entry = await storeLocally(senderStore, uid, bytes);
  const kept = await pushCut(uid, bytes, 1024 * 1024);
  assert.ok(kept > 0 && kept < bytes.length, `kept ${kept} bytes`);
  const before = link.stats.forwardBytes;
  const [outcome] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  assert.deepEqual(outcome, { sopInstanceUid: uid, outcome: 'stored', siteName: 'site-b' });
  const carried = link.stats.forwardBytes - before;
  // The rest, plus the offer (its entry), frames and the encryption's overhead.
  assert.ok(carried < bytes.length - kept + 32 * 1024, `the follow-up carried ${carried} bytes for the ${bytes.length - kept} the receiver lacked (it kept ${kept})`);
  const atReceiver = (await receiverStore.getEntry(uid))!;
  const chunks: Uint8Array[] = [];
  for await (const chunk of receiverStore.readInstance(atReceiver)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(bytes), 'the stored copy is the instance, byte for byte');
  assert.deepEqual(serving.partialCopies.stats, { bytes: 0, copies: 0 });
  assert.equal(await uncommittedChunks(receiverStore), 0);
});

test('a kept part that does not match the instance never becomes a stored copy: dropped, and the next copy goes whole (hunt 121)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore, link, serving, pushCut } = await nodesOverLink(t);
  const bytes = randomBytes(2 * 1024 * 1024);
  const uid = '1.2.3.121.2';
  const entry = await storeLocally(senderStore, uid, bytes);
  // Other bytes under the same UID (a damaged or different data set) arrive first, and are cut.
  const kept = await pushCut(uid, randomBytes(bytes.length), 512 * 1024);
  assert.ok(kept > 0);
  const [resumed] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  assert.ok(resumed !== undefined && 'error' in resumed, 'the resumed copy failed its SHA-256 check');
  assert.equal((resumed.error as ReplicationError).code, 'ERR_REPLICATION_RESUME_MISMATCH', 'the sender does not take its own copy for damaged');
  assert.equal(await receiverStore.getEntry(uid), undefined, 'nothing stored');
  assert.deepEqual(serving.partialCopies.stats, { bytes: 0, copies: 0 }, 'the kept part was dropped');
  await noChunksLeftSoon(receiverStore, 'its chunks deleted');
  const before = link.stats.forwardBytes;
  const [whole] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  assert.deepEqual(whole, { sopInstanceUid: uid, outcome: 'stored', siteName: 'site-b' });
  assert.ok(link.stats.forwardBytes - before >= bytes.length, 'sent whole');
  const chunks: Uint8Array[] = [];
  for await (const chunk of receiverStore.readInstance((await receiverStore.getEntry(uid))!)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(bytes));
});

test('a sender that predates resumes (no resumable in its offer) gets no offsets and sends whole, even with a part kept (hunt 121)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore, serving, pushCut } = await nodesOverLink(t);
  const bytes = randomBytes(1_500_000);
  const uid = '1.2.3.121.7';
  const entry = await storeLocally(senderStore, uid, bytes);
  assert.ok((await pushCut(uid, bytes, 500_000)) > 0);
  // The offer as the build before this one wrote it, and its body whole.
  const stream = await sender.openStream(receiver.peerId, REPLICATE_BATCH_PROTOCOL);
  await stream.writer.writeFrame(encodeEnvelope({ type: 'offerBatch', entries: [entry] }));
  const want = decodeEnvelope<{ type: string; indices?: number[]; offsets?: number[] }>((await stream.reader.readFrameOrEnd(64 * 1024))!, { maxBytes: 64 * 1024 });
  assert.deepEqual(want, { type: 'want', indices: [0] }, 'no offsets for a sender that did not say it can resume');
  await stream.writer.stageUint64(bytes.length);
  await stream.writer.write(bytes);
  await stream.closeWrite();
  const result = decodeEnvelope<{ type: string; stored?: number[] }>((await stream.reader.readFrameOrEnd(64 * 1024))!, { maxBytes: 64 * 1024 });
  await stream.close().catch(() => undefined);
  assert.deepEqual([result.type, result.stored], ['batchResult', [0]]);
  const chunks: Uint8Array[] = [];
  for await (const chunk of receiverStore.readInstance((await receiverStore.getEntry(uid))!)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(bytes));
  assert.deepEqual(serving.partialCopies.stats, { bytes: 0, copies: 0 }, 'the kept part dropped: the copy came whole');
});

test('a kept part is dropped once its instance is stored here another way (here a local ingest), not kept until keptMs', { timeout: 60_000 }, async (t) => {
  const { receiverStore, serving, pushCut } = await nodesOverLink(t);
  const bytes = randomBytes(1_500_000);
  const uid = '1.2.3.123.1';
  assert.ok((await pushCut(uid, bytes, 500_000)) > 0);
  await storeLocally(receiverStore, uid, bytes);
  for (const deadline = Date.now() + 5000; (serving.partialCopies.stats.copies > 0 || (await uncommittedChunks(receiverStore)) > 0) && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(serving.partialCopies.stats, { bytes: 0, copies: 0 }, 'the kept part was dropped');
  assert.equal(await uncommittedChunks(receiverStore), 0, 'its chunks deleted');
});

test('kept parts are bounded per peer and dropped after keptMs (hunt 121)', { timeout: 60_000 }, async (t) => {
  // Each part kept is 0.8-1.4 MB (cut after 0.8 MB went through); two are over the bound.
  const { serving, pushCut } = await nodesOverLink(t, { bytesPerPeerMax: 1_500_000, keptMs: 6_000 });
  const bytes = randomBytes(1_400_000);
  const first = await pushCut('1.2.3.121.3', bytes, 800_000);
  assert.deepEqual(serving.partialCopies.stats, { bytes: first, copies: 1 });
  // A second cut part from the same peer: together over the bound, so the older one makes room.
  const second = await pushCut('1.2.3.121.4', bytes, 800_000);
  assert.deepEqual(serving.partialCopies.stats, { bytes: second, copies: 1 }, `the older part (${first} bytes) was dropped`);
  for (const deadline = Date.now() + 10_000; serving.partialCopies.stats.copies > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(serving.partialCopies.stats, { bytes: 0, copies: 0 }, 'dropped after keptMs');
});

test('a batch whose stored copy is one large chunk is not given up as stalled while its bytes cross a slow link (hunt 123)', { timeout: 60_000 }, async (t) => {
  // Progress was counted per stored chunk, and a chunk can be a whole instance: this one takes ~8 s of
  // the link, twice the stall limit, so the batch was given up half-way with its bytes flowing.
  const { sender, receiver, senderStore, receiverStore } = await nodesOverLink(t);
  const bytes = randomBytes(8_000_000);
  const entry = await storeLocally(senderStore, '1.2.3.123.2', bytes);
  let chunks = 0;
  for await (const _ of senderStore.readInstance(entry)) chunks += 1;
  assert.equal(chunks, 1, 'written in one piece, stored as one chunk');
  const [outcome] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry], { limits: { stallTimeoutMs: 4_000 } });
  assert.deepEqual(outcome, { sopInstanceUid: '1.2.3.123.2', outcome: 'stored', siteName: 'site-b' });
  assert.equal((await receiverStore.getEntry('1.2.3.123.2'))?.sha256, entry.sha256);
});

test('custody messages behind a copy on a slow link are not given up while the copy drains: their deadline counts from its last progress (hunt 121)', { timeout: 90_000 }, async (t) => {
  const { sender, receiver, senderStore, messages, bulkInFlight } = await nodesOverLink(t, undefined, 200_000);
  // A copy of 3 MB: ~15 s at 200 KB/s, its writes paced by the receiver's window updates; what the kernel
  // holds in front of anything sent after it (~0.5 MB) is ~2.5 s, past a 1.5 s deadline counted from the send.
  const entry = await storeLocally(senderStore, '1.2.3.121.5', randomBytes(3_000_000));
  const copy = replicateBatchTo(sender, receiver.peerId, senderStore, [entry], { bulkInFlight });
  const sends: Array<Promise<unknown>> = [];
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 1_000));
    const message: CustodyMessage = { type: 'replicaAck', sopInstanceUid: `1.2.3.121.6.${i}`, siteName: 'site-a' };
    sends.push(sendCustodyMessage(sender, receiver.peerId, message, { limits: { exchangeTimeoutMs: 1_500 }, bulkInFlight }).then(() => 'sent', (error: unknown) => String(error)));
  }
  const outcomes = await Promise.all(sends);
  const [copied] = await copy;
  assert.ok(copied !== undefined && 'outcome' in copied);
  assert.deepEqual(outcomes, ['sent', 'sent', 'sent', 'sent', 'sent']);
  assert.equal(messages.length, 5, 'each delivered once');
});

/** The puller's own table of kept parts (custody passes its replication server's), stopped with the test. */
function pullerPartials(t: { after(fn: () => void): void }, store: ReplicaStore): PartialCopies {
  const partials = new PartialCopies(defaultPartialCopyLimits, systemClock, store);
  t.after(() => partials.stop());
  return partials;
}

/** Asserts that `store` holds no uncommitted chunk within 5 s: an abort deletes its chunks after it returns. */
async function noChunksLeftSoon(store: ReplicaStore, message?: string): Promise<void> {
  for (const deadline = Date.now() + 5000; (await uncommittedChunks(store)) > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await uncommittedChunks(store), 0, message);
}

/**
 * A pair over a 1 MB/s link with a 3 MB instance `uid` at its receiver, which the sender pulls back with a
 * 2 s deadline: every pull that starts from byte 0 is cut, and the puller keeps its part in `partials`.
 */
async function cutPullFixture(t: { after(fn: () => Promise<void> | void): void }, uid: string) {
  const { sender, receiver, senderStore, receiverStore, link } = await nodesOverLink(t);
  const partials = pullerPartials(t, senderStore);
  const bytes = randomBytes(3_000_000);
  await storeLocally(receiverStore, uid, bytes);
  return { sender, receiver, senderStore, link, partials, bytes, options: { limits: { transferTimeoutMs: 2_000 }, partials } };
}

/** Resolves once nothing crossed the link for 300 ms: the bytes a cut stream had in flight are through. */
async function linkQuiet(link: { stats: { backwardBytes: number; forwardBytes: number } }): Promise<void> {
  for (let last = -1; last !== link.stats.backwardBytes + link.stats.forwardBytes; ) {
    last = link.stats.backwardBytes + link.stats.forwardBytes;
    await new Promise((r) => setTimeout(r, 300));
  }
}

/**
 * Pulls again over `link` until a pull stores the instance (`pull` says whether it did), at most 19 more: each goes on
 * from what the last one kept (5-7 pulls measured at load 26: each pull's setup and what was in flight at its cut
 * cost link time); the one that arrives carries only what was still missing. Then the copy is the instance and
 * nothing is left kept or uncommitted.
 */
async function resumeUntilStored(
  link: { stats: { backwardBytes: number; forwardBytes: number } },
  partials: PartialCopies,
  store: ReplicaStore,
  uid: string,
  bytes: Buffer,
  pull: () => Promise<boolean>,
): Promise<void> {
  for (let pulls = 2; ; pulls++) {
    await linkQuiet(link);
    const [keptBefore, carriedBefore] = [partials.stats.bytes, link.stats.backwardBytes];
    if (await pull()) {
      const carried = link.stats.backwardBytes - carriedBefore;
      assert.ok(keptBefore > 0 && carried < bytes.length - keptBefore + 32 * 1024, `the last pull carried ${carried} bytes for the ${bytes.length - keptBefore} missing`);
      break;
    }
    assert.ok(pulls < 20, `not arrived in ${pulls} pulls of 2 s`);
  }
  assert.ok((await storedBytes(store, uid)).equals(bytes), 'the stored copy is the instance, byte for byte');
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 });
  assert.equal(await uncommittedChunks(store), 0);
}

/** The stored bytes of `uid` at `store`, whole. */
async function storedBytes(store: ReplicaStore, uid: string): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of store.readInstance((await store.getEntry(uid))!)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

test('fetch-batch: an instance whose transfer is longer than the pull deadline arrives: the cut pull keeps its part, the next resumes (hunt 132)', { timeout: 60_000 }, async (t) => {
  // ~3 s of link for a deadline of 2 s (cutPullFixture).
  const uid = '1.2.3.132.1';
  const { sender, receiver, senderStore, link, partials, bytes, options } = await cutPullFixture(t, uid);
  const pull = async (): Promise<FetchBatchOutcome | undefined> => (await fetchBatchFrom(sender, receiver.peerId, senderStore, [uid], options).catch((error: unknown) => [{ sopInstanceUid: uid, error }]))[0];
  const first = await pull();
  assert.ok(first !== undefined && 'error' in first, 'the first pull is cut by its deadline');
  const kept = partials.stats.bytes;
  assert.ok(kept > 0 && kept < bytes.length, `the puller kept ${kept} bytes of the cut pull`);
  assert.equal(await senderStore.getEntry(uid), undefined, 'a kept part is not an instance');
  await resumeUntilStored(link, partials, senderStore, uid, bytes, async () => {
    const outcome = await pull();
    if (outcome === undefined || !('outcome' in outcome)) return false;
    assert.equal(outcome.outcome, 'stored');
    return true;
  });
});

test('fetch/1 (retrieve anywhere): a pull cut by its deadline keeps its part, the next resumes from it (hunt 132)', { timeout: 60_000 }, async (t) => {
  const uid = '1.2.3.132.2';
  const { sender, receiver, senderStore, link, partials, bytes, options } = await cutPullFixture(t, uid);
  await assert.rejects(fetchFrom(sender, receiver.peerId, senderStore, uid, options));
  const kept = partials.stats.bytes;
  assert.ok(kept > 0 && kept < bytes.length, `kept ${kept} bytes`);
  await resumeUntilStored(link, partials, senderStore, uid, bytes, async () => {
    const fetched = await fetchFrom(sender, receiver.peerId, senderStore, uid, options).catch(() => undefined);
    if (fetched === undefined) return false;
    assert.equal(fetched.outcome, 'stored');
    return true;
  });
});

test('a resumed pull whose kept part does not match fails that copy alone and drops the part; the next pull goes whole (hunt 132)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore } = await nodesOverLink(t);
  const partials = pullerPartials(t, senderStore);
  const bytes = randomBytes(1_000_000);
  const uid = '1.2.3.132.3';
  await storeLocally(receiverStore, uid, bytes);
  // A part of other bytes under that UID, as kept from a cut transfer from that peer.
  const writer = senderStore.beginWrite();
  await writer.write(randomBytes(300_000));
  partials.keep(uid, receiver.peerId, writer);
  const [resumed] = await fetchBatchFrom(sender, receiver.peerId, senderStore, [uid], { partials });
  assert.ok(resumed !== undefined && 'error' in resumed, 'the resumed copy failed its SHA-256 check');
  assert.equal((resumed.error as ReplicationError).code, 'ERR_REPLICATION_RESUME_MISMATCH');
  assert.equal(await senderStore.getEntry(uid), undefined, 'nothing stored');
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 });
  const [whole] = await fetchBatchFrom(sender, receiver.peerId, senderStore, [uid], { partials });
  assert.ok(whole !== undefined && 'outcome' in whole && whole.outcome === 'stored');
  assert.ok((await storedBytes(senderStore, uid)).equals(bytes));
  await noChunksLeftSoon(senderStore);
});

test('a server before resumable pulls ignores offsets and sends whole: the puller drops its part and stores the whole (hunt 132)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore } = await nodesOverLink(t);
  const partials = pullerPartials(t, senderStore);
  const bytes = randomBytes(500_000);
  const uid = '1.2.3.132.4';
  const entry = buildEntry(uid)({ byteLength: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), blobId: 'x' });
  const writer = senderStore.beginWrite();
  await writer.write(bytes.subarray(0, 200_000));
  partials.keep(uid, receiver.peerId, writer);
  // A server as the build before this one answered: whole, without fromByte, whatever offsets said.
  let asked: unknown;
  await receiver.unhandle(FETCH_BATCH_PROTOCOL);
  await receiver.handle(FETCH_BATCH_PROTOCOL, async (stream) => {
    asked = decodeEnvelope((await stream.reader.readFrame(64 * 1024))!, { maxBytes: 64 * 1024 });
    await stream.writer.writeFrame(encodeEnvelope({ type: 'instance', entry }));
    await stream.writer.stageUint64(bytes.length);
    await stream.writer.write(bytes);
    await stream.writer.writeFrame(encodeEnvelope({ type: 'end' }));
    await stream.closeWrite();
  });
  const [outcome] = await fetchBatchFrom(sender, receiver.peerId, senderStore, [uid], { partials });
  assert.deepEqual(asked, { type: 'fetchBatch', uids: [uid], offsets: [200_000] });
  assert.ok(outcome !== undefined && 'outcome' in outcome && outcome.outcome === 'stored');
  assert.ok((await storedBytes(senderStore, uid)).equals(bytes));
  assert.deepEqual(partials.stats, { bytes: 0, copies: 0 });
  await noChunksLeftSoon(senderStore, 'the dropped part left no chunks');
});

test('a copy cut at the receiver, which then restarts, resumes where it was cut: the kept part survives the restart (hunt 132)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore, receiverStorePath, link, serving, pushCut } = await nodesOverLink(t);
  const bytes = randomBytes(2 * 1024 * 1024);
  const uid = '1.2.3.132.5';
  const entry = await storeLocally(senderStore, uid, bytes);
  const kept = await pushCut(uid, bytes, 1024 * 1024);
  assert.ok(kept > 0 && kept < bytes.length, `kept ${kept} bytes`);
  // The receiver restarts: its server and store stop, a new store opens on the same directory.
  await serving.stop();
  await receiverStore.close();
  const reopened = createReplicaStore({ path: receiverStorePath, chunkBytes: 64 * 1024 });
  await reopened.open();
  const restarted = await serveReplication({ node: receiver, store: reopened, siteName: 'site-b', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
  t.after(async () => {
    await restarted.stop();
    await reopened.close();
  });
  assert.equal(await reopened.getEntry(uid), undefined, 'a kept part is not an instance');
  assert.equal(await reopened.countInstances(), 0, 'nor counted as one');
  for (const deadline = Date.now() + 10_000; restarted.partialCopies.stats.copies === 0; await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > deadline) throw new Error('the kept part did not come back after the restart');
  }
  assert.deepEqual(restarted.partialCopies.stats, { bytes: kept, copies: 1 });
  await linkQuiet(link);
  const before = link.stats.forwardBytes;
  const [outcome] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  assert.deepEqual(outcome, { sopInstanceUid: uid, outcome: 'stored', siteName: 'site-b' });
  const carried = link.stats.forwardBytes - before;
  assert.ok(carried < bytes.length - kept + 32 * 1024, `after the restart the copy carried ${carried} bytes for the ${bytes.length - kept} the receiver lacked`);
  assert.ok((await storedBytes(reopened, uid)).equals(bytes), 'the stored copy is the instance, byte for byte');
  assert.deepEqual(restarted.partialCopies.stats, { bytes: 0, copies: 0 });
  assert.equal(await uncommittedChunks(reopened), 0);
  assert.deepEqual(await reopened.db.keys({ gte: 'p!', lt: 'p!~' }).all(), [], 'no marker left');
});

test('a copy cut by the receiver stopping (a restart) keeps what arrived for after the restart (hunt 132)', { timeout: 60_000 }, async (t) => {
  const { sender, receiver, senderStore, receiverStore, receiverStorePath, link, serving } = await nodesOverLink(t);
  const bytes = randomBytes(2 * 1024 * 1024);
  const uid = '1.2.3.132.6';
  const entry = await storeLocally(senderStore, uid, bytes);
  const startBytes = link.stats.forwardBytes;
  const copy = replicateBatchTo(sender, receiver.peerId, senderStore, [entry]).catch((error: unknown) => error);
  while (link.stats.forwardBytes - startBytes < 1024 * 1024) await new Promise((r) => setTimeout(r, 10));
  // The receiver stops (its peer shuts down) while the copy arrives, and starts again on the same store.
  await serving.stop();
  await receiverStore.close();
  assert.ok((await copy) instanceof Error, 'the copy was cut by the stop');
  const reopened = createReplicaStore({ path: receiverStorePath, chunkBytes: 64 * 1024 });
  await reopened.open();
  const restarted = await serveReplication({ node: receiver, store: reopened, siteName: 'site-b', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
  t.after(async () => {
    await restarted.stop();
    await reopened.close();
  });
  for (const deadline = Date.now() + 10_000; restarted.partialCopies.stats.copies === 0; await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > deadline) throw new Error('nothing of the copy cut by the stop came back after the restart');
  }
  const kept = restarted.partialCopies.stats.bytes;
  assert.ok(kept > 0 && kept < bytes.length, `kept ${kept} bytes`);
  await linkQuiet(link);
  const before = link.stats.forwardBytes;
  const [outcome] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  assert.deepEqual(outcome, { sopInstanceUid: uid, outcome: 'stored', siteName: 'site-b' });
  assert.ok(link.stats.forwardBytes - before < bytes.length - kept + 32 * 1024, 'only the rest travelled');
  assert.ok((await storedBytes(reopened, uid)).equals(bytes));
  assert.equal(await uncommittedChunks(reopened), 0);
});

test("a pull of this site's own in flight when it stops (a restart) keeps what arrived for after the restart (hunt 140)", { timeout: 60_000 }, async (t) => {
  // The sender of the pair pulls from the receiver over the 1 MB/s link, keeping cut parts in its table.
  const { sender, receiver, senderStore, senderStorePath, receiverStore, link } = await nodesOverLink(t);
  const bytes = randomBytes(3_000_000);
  const uid = '1.2.3.140.1';
  await storeLocally(receiverStore, uid, bytes);
  const partials = new PartialCopies(defaultPartialCopyLimits, systemClock, senderStore);
  // Custody's shutdown signal, which it aborted only after the table had stopped (hunt 132's order).
  const shutdown = new AbortController();
  const startBytes = link.stats.backwardBytes;
  const pull = fetchBatchFrom(sender, receiver.peerId, senderStore, [uid], { partials, signal: shutdown.signal }).catch((error: unknown) => [{ sopInstanceUid: uid, error }]);
  while (link.stats.backwardBytes - startBytes < 1024 * 1024) await new Promise((r) => setTimeout(r, 10));
  // The site stops: its table stops, then custody's pulls are aborted, then its store closes.
  await partials.stop();
  shutdown.abort(new Error('custody stopped'));
  const [cut] = await pull;
  assert.ok(cut !== undefined && 'error' in cut, 'the pull was cut by the stop');
  await senderStore.close();
  const reopened = createReplicaStore({ path: senderStorePath, chunkBytes: 64 * 1024 });
  await reopened.open();
  const restarted = new PartialCopies(defaultPartialCopyLimits, systemClock, reopened);
  t.after(async () => {
    await restarted.stop();
    await reopened.close();
  });
  await restarted.restore();
  const kept = restarted.stats.bytes;
  assert.ok(restarted.stats.copies === 1 && kept > 0 && kept < bytes.length, `the pull's part came back after the restart: ${JSON.stringify(restarted.stats)}`);
  await linkQuiet(link);
  const before = link.stats.backwardBytes;
  const [outcome] = await fetchBatchFrom(sender, receiver.peerId, reopened, [uid], { partials: restarted });
  assert.ok(outcome !== undefined && 'outcome' in outcome && outcome.outcome === 'stored', JSON.stringify(outcome));
  assert.ok(link.stats.backwardBytes - before < bytes.length - kept + 32 * 1024, 'only the rest travelled');
  assert.ok((await storedBytes(reopened, uid)).equals(bytes), 'the stored copy is the instance, byte for byte');
  assert.equal(await uncommittedChunks(reopened), 0);
});
