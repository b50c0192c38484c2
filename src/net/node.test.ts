import '../polyfill.ts';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createServer } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { fileURLToPath } from 'node:url';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { bootstrapFailureCause, createMeshNode, dialCauseCounts, handledStreamCloseMs, peerActivityNoticeMs, savedRedialRestMs } from './node.ts';
import { generateSwarmKey } from './swarm-key.ts';
import { readRequest, sendRequest, writeResponse } from '../../test/support/stream-request.ts';
import type { BootstrapFailure, BootstrapIdentityChange, IdentityConflict, IdentityConflictNotice, IdentityTwinAddress, MeshNode, MeshNodeInit } from './node.ts';
import type { KnownPeersProblem } from './known-peers.ts';
import { encodeEnvelope } from '../codec/envelope.ts';
import { runTimeSignal, waitFor as waitForCondition } from '../../test/support/wait.ts';
import { suiteTeardown } from '../../test/support/teardown.ts';
import { trackLoopLag } from '../../test/support/loop-lag.ts';
import { getFreePort } from '../../test/support/dicom-tools.ts';
import { loopbackAddress } from '../../test/support/mesh-nodes.ts';
import { stepWallClock } from '../../test/support/wall-clock.ts';

const TOPIC = 'pacs-mesh/test/1';
const TRANSFER_PEER = fileURLToPath(new URL('../../test/net/fixtures/transfer-peer.ts', import.meta.url));
const WINDOW = 256 * 1024;
const HWM = 256 * 1024;

const waitFor = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10000) => waitForCondition(what, cond, timeoutMs, 50);

/** Whether `<dir>/known-peers.json` names `peerId`. */
async function savedIn(dir: string, peerId: string): Promise<boolean> {
  return (await readFile(join(dir, 'known-peers.json'), 'utf8').catch(() => '')).includes(peerId);
}

function portOf(addr: string): number {
  return Number(/\/tcp\/(\d+)/.exec(addr)?.[1]);
}

/** Publish until `received` holds something (gossip needs a moment to exchange subscriptions), for timeoutMs of run time. */
async function publishUntil(node: MeshNode, data: Uint8Array, received: () => boolean, timeoutMs = 10_000): Promise<void> {
  await waitFor('gossip message delivered', async () => {
    if (received()) return true;
    await node.publish(TOPIC, data);
    await new Promise((r) => setTimeout(r, 200));
    return received();
  }, timeoutMs);
}

/**
 * Each test's safety net (the slowest takes ~10 s quiet; its waits stretch with the loop's lateness). Not one
 * for the suite: at load 27 the file took 250 s, and the suite's 180 s cancelled every test still to come.
 */
const perTestTimeoutMs = 120_000;

describe('mesh node (in process, 127.0.0.1)', () => {
  const swarmKey = generateSwarmKey();
  // A test's nodes stop when it ends, passed, failed or timed out: one cancelled at the suite's timeout ran
  // on, started nodes after the suite's stops, and kept the file's process alive (12 min, until killed).
  const teardown = suiteTeardown();
  const nodes: MeshNode[] = [];
  const dirs: string[] = [];
  let a: MeshNode;
  let b: MeshNode;
  let c: MeshNode;

  /** A node for the test running (stopped when it ends), or with `forTheSuite` one of a, b, c. */
  async function start(init: Partial<MeshNodeInit> & { dataDir?: string }, forTheSuite = false): Promise<MeshNode> {
    const dataDir = init.dataDir ?? (await mkdtemp(join(tmpdir(), 'pacs-mesh-net-')));
    if (!dirs.includes(dataDir)) dirs.push(dataDir);
    const node = await createMeshNode({
      host: '127.0.0.1',
      p2pPort: 0,
      swarmKey,
      ...init,
      dataDir,
      tuning: { maxStreamWindowSize: WINDOW, readHighWaterMark: HWM, reconnectMinDelayMs: 100, reconnectMaxDelayMs: 1000, ...init.tuning },
    });
    nodes.push(node);
    if (!forTheSuite) await teardown.add(() => node.stop());
    return node;
  }

  /**
   * A TCP listener that accepts and never answers (a host across a cut): a dial there hangs until libp2p's
   * handshake timeout (~5 s). Closed, its sockets dropped, when the test ends, before the nodes it started
   * stop (a stop waits for its dials in flight).
   */
  async function hungListener(): Promise<{ hungPort: number; held: Socket[] }> {
    const held: Socket[] = [];
    const hung = createTcpServer((s) => held.push(s.on('error', () => undefined)));
    await new Promise<void>((resolve) => hung.listen(0, '127.0.0.1', resolve));
    // Registered before the test's nodes: the stops run in reverse.
    await teardown.add(() => {
      for (const s of held) s.destroy();
      hung.close();
    });
    return { hungPort: (hung.address() as AddressInfo).port, held };
  }

  /** `n` saved peers of sites gone, each at `port` on loopback. */
  async function stalePeers(n: number, port: number): Promise<Array<{ peerId: string; addrs: string[]; site: string }>> {
    const ids = await Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()));
    return ids.map((peerId, i) => ({ peerId, addrs: [`/ip4/127.0.0.1/tcp/${port}/p2p/${peerId}`], site: `gone-${i}` }));
  }

  /** `<dir>/known-peers.json` naming `peers`, the most recently connected last, none absent. */
  async function writeSavedPeers(dir: string, peers: ReadonlyArray<{ peerId: string; addrs: string[]; site: string }>): Promise<void> {
    const nowMs = Date.now();
    await writeFile(join(dir, 'known-peers.json'), JSON.stringify({ version: 1, writtenAtMs: nowMs, peers: peers.map((p) => ({ ...p, seenAtMs: nowMs })) }));
  }

  before(async () => {
    a = await start({}, true);
    const boot = [loopbackAddress(a)];
    b = await start({ bootstrap: boot }, true);
    c = await start({ bootstrap: boot }, true);
  });

  after(async () => {
    await Promise.allSettled(nodes.map((n) => n.stop()));
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('joins through a bootstrap address, completes the mesh, exposes dialable /p2p/ addresses', { timeout: perTestTimeoutMs }, async () => {
    for (const addr of a.multiaddrs()) assert.ok(addr.endsWith(`/p2p/${a.peerId}`), addr);
    await waitFor('b and c connected to a', () => a.connectedPeers().includes(b.peerId) && a.connectedPeers().includes(c.peerId));
    // b and c only know a; the address announcements complete the mesh
    await waitFor('b and c connected to each other', () => b.connectedPeers().includes(c.peerId));
    const s = await stat(join(dirs[0] as string, 'peer-key'));
    assert.equal(s.mode & 0o777, 0o600);
  });

  it('completes the mesh on the announcements a join sets off, without waiting for the periodic ones (a site killed just after a join)', { timeout: perTestTimeoutMs }, async () => {
    // With the periodic announcement an hour away, only the answers to a new subscription and to a
    // newcomer's announcement can tell q and r of each other: p is their only common peer.
    const hourly = { peerAnnounceIntervalMs: 3_600_000 };
    const p = await start({ tuning: hourly });
    const q = await start({ bootstrap: [loopbackAddress(p)], tuning: hourly });
    await waitFor('q connected to p', () => p.connectedPeers().includes(q.peerId));
    const r = await start({ bootstrap: [loopbackAddress(p)], tuning: hourly });
    await waitFor('q and r connected to each other', () => q.connectedPeers().includes(r.peerId) && r.connectedPeers().includes(q.peerId), 20_000);
    await Promise.all([p, q, r].map((n) => n.stop()));
  });

  it('delivers gossip to every subscriber', { timeout: perTestTimeoutMs }, async () => {
    const got = new Map<string, string>();
    for (const n of [a, c]) n.subscribe(TOPIC, (m) => got.set(n.peerId, `${m.from}:${Buffer.from(m.data).toString()}`));
    const unsubB = b.subscribe(TOPIC, () => {});
    await publishUntil(b, Buffer.from('hello mesh'), () => got.size === 2);
    assert.equal(got.get(a.peerId), `${b.peerId}:hello mesh`);
    assert.equal(got.get(c.peerId), `${b.peerId}:hello mesh`);
    unsubB();
  });

  it('tells when a connected peer subscribes to a topic, and a message published then reaches it at once', { timeout: perTestTimeoutMs }, async () => {
    const topic = 'pacs-mesh/test-joined/1';
    const joined: string[] = [];
    const heard = Promise.withResolvers<string>();
    const off = a.onTopicJoined(topic, (peerId) => {
      joined.push(peerId);
      // One publish, no retry: the subscription was exchanged, so it is delivered.
      void a.publish(topic, Buffer.from('welcome'));
    });
    a.subscribe(topic, () => {});
    const unsubB = b.subscribe(topic, (m) => heard.resolve(Buffer.from(m.data).toString()));
    try {
      assert.equal(await Promise.race([heard.promise, new Promise((r) => setTimeout(() => r('nothing in 5 s'), 5000))]), 'welcome');
      assert.ok(joined.includes(b.peerId));
    } finally {
      off();
      unsubB();
    }
  });

  it('keeps gossiping after many short-lived PeerIds came and went from the same address (no colocation penalty)', { timeout: perTestTimeoutMs }, async () => {
    // Fourteen identities at 127.0.0.1 beside a, b and c: gossipsub's default scoring had graylisted every
    // peer at that address from about thirteen on, and a and b, still connected, no longer heard each other.
    for (let i = 0; i < 14; i++) {
      const transient = await start({ bootstrap: [loopbackAddress(a)] });
      await waitFor('transient peer connected', () => a.connectedPeers().includes(transient.peerId));
      transient.subscribe(TOPIC, () => {});
      await new Promise((r) => setTimeout(r, 150));
      await transient.stop();
    }
    const heard = new Set<string>();
    const unsubscribe = a.subscribe(TOPIC, (m) => heard.add(Buffer.from(m.data).toString()));
    const unsubB = b.subscribe(TOPIC, () => {});
    await publishUntil(b, Buffer.from('after churn'), () => heard.has('after churn'));
    unsubscribe();
    unsubB();
  });

  it('round-trips a request with a body and an ack over a custom protocol; the data tells each side the other is alive, a few times a second at most', { timeout: perTestTimeoutMs }, async () => {
    const heardByA: number[] = [];
    const heardByB: number[] = [];
    const offA = a.onPeerActivity((peerId) => peerId === b.peerId && heardByA.push(performance.now()));
    const offB = b.onPeerActivity((peerId) => peerId === a.peerId && heardByB.push(performance.now()));
    await a.handle('/pacs-mesh/test-replicate/1', async (stream) => {
      const req = await readRequest<{ type: 'offer'; sha256: string }>(stream, { maxBodyBytes: 10 * 1024 * 1024 });
      const hash = createHash('sha256');
      for await (const chunk of req.body) hash.update(chunk);
      const ok = hash.digest('hex') === req.header.sha256;
      await writeResponse(stream, { type: 'ack', ok, from: stream.remotePeer });
    });
    const body = randomBytes(3 * 1024 * 1024 + 17);
    const sha256 = createHash('sha256').update(body).digest('hex');
    const stream = await b.openStream(a.peerId, '/pacs-mesh/test-replicate/1', { signal: runTimeSignal(5000) });
    const pieces = (function* () {
      for (let off = 0; off < body.byteLength; off += 100_000) yield body.subarray(off, off + 100_000);
    })();
    const ack = await sendRequest<{ type: 'offer'; sha256: string }, { type: 'ack'; ok: boolean; from: string }>(stream, { type: 'offer', sha256 }, pieces, body.byteLength, { signal: runTimeSignal(15_000) });
    offA();
    offB();
    assert.deepEqual(ack, { type: 'ack', ok: true, from: b.peerId });
    assert.ok(heardByA.length >= 1 && heardByB.length >= 1, `activity heard: a ${heardByA.length}, b ${heardByB.length}`);
    for (const heard of [heardByA, heardByB]) for (let i = 1; i < heard.length; i++) assert.ok(heard[i]! - heard[i - 1]! >= peerActivityNoticeMs - 1, 'throttled');
  });

  /**
   * `node` connected to a peer in its own process (so that only it stands still), which is stopped
   * (SIGSTOP) for stopMs after settleMs and resumed; asserts that `node` kept its connection 2 s later.
   */
  async function keepsConnectionToAPeerStoppedFor(node: MeshNode, stopMs: number, settleMs: number, peerEnv: Record<string, string> = {}): Promise<void> {
    const dataDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    dirs.push(dataDir);
    const child = spawn(process.execPath, ['--import', 'tsx', TRANSFER_PEER], {
      env: { ...process.env, ROLE: 'receiver', SWARM_KEY: swarmKey.text, DATA_DIR: dataDir, ...peerEnv },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    try {
      const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
      const ready = JSON.parse(line) as { event: string; addr: string; peerId: string };
      assert.equal(ready.event, 'ready', line);
      await node.dial(ready.addr, { signal: runTimeSignal(5000) });
      await new Promise((r) => setTimeout(r, settleMs));
      const dropped: string[] = [];
      const off = node.onPeerDisconnected((peerId) => dropped.push(peerId));
      try {
        child.kill('SIGSTOP');
        await new Promise((r) => setTimeout(r, stopMs));
        child.kill('SIGCONT');
        await new Promise((r) => setTimeout(r, 2000));
        assert.deepEqual(dropped, [], 'the connection was dropped');
        assert.ok(node.connectedPeers().includes(ready.peerId));
      } finally {
        off();
      }
    } finally {
      child.kill('SIGCONT');
      child.stdin!.end();
      await once(child, 'exit');
    }
  }

  it('keeps its connection to a peer that stands still for 2.5 s (a loaded machine, a long pause): no ping drops it', { timeout: perTestTimeoutMs }, async () => {
    // Past the first pings before the stop, so that the monitor's timeout has adapted to this connection.
    await keepsConnectionToAPeerStoppedFor(a, 2500, 2500);
  });

  it('a peer stopped for longer than its own silence limit keeps its connection once resumed, the other side having talked meanwhile (hunt 119)', { timeout: perTestTimeoutMs }, async () => {
    // The stopped peer judges silence after 0.8 s of its run time; this side pings every 0.2 s and waits 10 s.
    const talker = await start({ tuning: { pingIntervalMs: 200, pingTimeoutMs: 5000 } });
    await keepsConnectionToAPeerStoppedFor(talker, 3000, 1000, { PING_INTERVAL_MS: '200', PING_TIMEOUT_MS: '400' });
  });

  it('a stream its handler is done with ends, also when the remote keeps its end open and sends on (hunt 100)', { timeout: perTestTimeoutMs }, async () => {
    // The handler answers and returns, as a refusal of a malformed request does; the remote neither
    // closes nor reads, and keeps sending: left open, each such stream held a reader queue and a window.
    let handled = false;
    await b.handle('/pacs-mesh/test-half-open/1', async (stream) => {
      await stream.reader.readFrame(1024, { signal: runTimeSignal(5000) });
      await stream.writer.writeFrame(encodeEnvelope({ type: 'refused' }));
      await stream.closeWrite();
      handled = true;
    });
    const stream = await a.openStream(b.peerId, '/pacs-mesh/test-half-open/1', { signal: runTimeSignal(5000) });
    await stream.writer.writeFrame(encodeEnvelope({ type: 'x' }));
    await waitFor('the handler to return', () => handled);
    const junk = new Uint8Array(16 * 1024);
    const startedMs = performance.now();
    let sent = 0;
    const outcome = await (async () => {
      try {
        while (performance.now() - startedMs < handledStreamCloseMs + 5000) {
          await stream.writer.write(junk, { signal: AbortSignal.timeout(handledStreamCloseMs + 5000) });
          sent += junk.byteLength;
          await new Promise((r) => setTimeout(r, 5));
        }
        return 'still open';
      } catch (err) {
        return (err as { code?: string }).code ?? String(err);
      }
    })();
    assert.equal(outcome, 'ERR_STREAM_RESET', `after ${sent} bytes sent in ${Math.round(performance.now() - startedMs)} ms`);
    assert.ok(performance.now() - startedMs < handledStreamCloseMs + 2000, `reset after ${Math.round(performance.now() - startedMs)} ms`);
    await b.unhandle('/pacs-mesh/test-half-open/1');
  });

  it('gossip to a connected peer that reads nothing is not queued without bound (hunt 100)', { timeout: perTestTimeoutMs }, async () => {
    // The peer keeps the connection alive (its pings arrive: no silence here) but reads nothing of what
    // this one sends: a proxy that stops forwarding this node's direction. Gossipsub writes without
    // back-pressure, so every message published was queued for it, for as long as it stayed connected.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    let frozen = false;
    const victimSides: Socket[] = [];
    const proxy = createTcpServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: portOf(a.multiaddrs()[0]!) });
      victimSides.push(upstream);
      client.on('error', () => undefined);
      upstream.on('error', () => undefined);
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => {
        if (!frozen) client.write(d);
      });
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
    const liar = await start({ tuning: { peerAnnounceIntervalMs: 0, pingTimeoutMs: 3_600_000 } });
    const topic = 'pacs-mesh/test-never-reads/1';
    let heard = 0;
    const offLiar = liar.subscribe(topic, () => heard++);
    const offA = a.subscribe(topic, () => undefined);
    try {
      await liar.dial(`/ip4/127.0.0.1/tcp/${(proxy.address() as AddressInfo).port}`, { signal: runTimeSignal(5000) });
      const payload = new Uint8Array(64 * 1024).fill(1);
      await waitFor('the liar to hear gossip', async () => {
        await a.publish(topic, payload);
        await new Promise((r) => setTimeout(r, 200));
        return heard > 0;
      });
      // only the liar reads this topic: what a publishes goes to it alone
      frozen = true;
      for (const socket of victimSides) socket.pause();
      gc();
      const before = process.memoryUsage().arrayBuffers;
      let published = 0;
      for (let i = 0; i < 800; i++) {
        await a.publish(topic, payload).catch(() => undefined);
        published += payload.byteLength;
        if (i % 50 === 49) await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 500));
      gc();
      const grown = process.memoryUsage().arrayBuffers - before;
      assert.ok(grown < 24 * 1024 * 1024, `${Math.round(grown / 1048576)} MiB held after ${Math.round(published / 1048576)} MiB published to a peer that reads nothing`);
    } finally {
      offLiar();
      offA();
      for (const socket of victimSides) socket.destroy();
      proxy.close();
      await liar.stop();
    }
  });

  it('applies back-pressure: a slow reader does not make the writer buffer without bound', { timeout: perTestTimeoutMs }, async () => {
    const total = 12 * 1024 * 1024;
    let maxReceiverBuffered = 0;
    let receivedHash = '';
    const done = Promise.withResolvers<void>();
    await c.handle('/pacs-mesh/test-slow/1', async (stream) => {
      const hash = createHash('sha256');
      let n = 0;
      while (true) {
        const chunk = await stream.reader.read(64 * 1024);
        if (chunk == null) break;
        hash.update(chunk);
        n += chunk.byteLength;
        maxReceiverBuffered = Math.max(maxReceiverBuffered, stream.reader.bufferedBytes + stream.raw.readBufferLength);
        if (n < total / 2) await new Promise((r) => setTimeout(r, 2)); // slow for the first half
      }
      receivedHash = hash.digest('hex');
      await stream.closeWrite();
      done.resolve();
    });
    const stream = await b.openStream(c.peerId, '/pacs-mesh/test-slow/1', { signal: runTimeSignal(5000) });
    const sent = createHash('sha256');
    let maxWriteBuffered = 0;
    const chunk = 128 * 1024;
    for (let off = 0; off < total; off += chunk) {
      const piece = randomBytes(chunk);
      sent.update(piece);
      await stream.writer.write(piece);
      maxWriteBuffered = Math.max(maxWriteBuffered, stream.raw.writeBufferLength);
    }
    await stream.close({ signal: runTimeSignal(20_000) });
    await done.promise;
    assert.equal(receivedHash, sent.digest('hex'));
    // one piece may wait in the write buffer, never the whole transfer
    assert.ok(maxWriteBuffered <= chunk, `writer buffered ${maxWriteBuffered} bytes`);
    // reader queue (high-water mark) + one yamux window + one dispatch, far below the 12 MiB sent
    assert.ok(maxReceiverBuffered <= HWM + 2 * WINDOW + chunk, `receiver buffered ${maxReceiverBuffered} bytes`);
  });

  it('tells the operator about a bootstrap address it cannot reach: at the 1st, 2nd, 4th failure, not at every retry', { timeout: perTestTimeoutMs }, async () => {
    const closed = await start({});
    const closedAddress = loopbackAddress(closed);
    await closed.stop();
    const failures: BootstrapFailure[] = [];
    const lonely = await start({ bootstrap: [closedAddress], onBootstrapUnreachable: (f) => failures.push(f) });
    await waitFor('the 5th failure (reported: 1, 2, 4)', () => failures.some((f) => f.attempts === 4), 15_000);
    await lonely.stop();
    assert.deepEqual(failures.map((f) => f.attempts), [1, 2, 4]);
    assert.equal(failures[0]!.address, closedAddress);
    assert.match(failures[0]!.error, /ECONNREFUSED/);
    assert.match(failures[0]!.likelyCause, /nothing listens there/);
    assert.equal(failures[0]!.connectedPeers, 0, 'alone: not in the mesh through others');
  });

  it('a dial that times out or is reset at a bootstrap peer reached before is named as paused or cut off, not as another swarm key (helper 75)', { timeout: perTestTimeoutMs }, () => {
    for (const error of ['The operation was aborted due to timeout', 'read ECONNRESET']) {
      assert.match(bootstrapFailureCause(error, true), /paused, overloaded or restarting/, error);
      assert.match(bootstrapFailureCause(error, false), /most likely another swarm key/, error);
    }
    assert.match(bootstrapFailureCause('connect ECONNREFUSED 127.0.0.1:1', true), /nothing listens there/);
  });

  it('the saved peers\' dial causes an isolated peer logs quote an error no rule names, instead of "see the error" with no error in the line', { timeout: perTestTimeoutMs }, () => {
    const causes = dialCauseCounts(['connect ECONNREFUSED 127.0.0.1:1', 'connect ECONNREFUSED 127.0.0.1:2', 'connect EMFILE 127.0.0.1:3 - Local (undefined:undefined)']);
    assert.deepEqual(causes.map((c) => c.peers), [2, 1]);
    assert.match(causes[0]!.cause, /nothing listens there/);
    assert.match(causes[1]!.cause, /EMFILE/);
    assert.doesNotMatch(causes.map((c) => c.cause).join('; '), /see the error/);
  });

  it('a bootstrap address where an HTTP server answers is named as not a pacs-mesh libp2p port (helper 64: "see the error")', { timeout: perTestTimeoutMs }, async () => {
    const http = createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const { port } = http.address() as AddressInfo;
    const failures: BootstrapFailure[] = [];
    const lonely = await start({ bootstrap: [`/ip4/127.0.0.1/tcp/${port}/p2p/12D3KooWRM9K8Yu2EAXDbRBFgDAKE4Ck6T3dJc3nSK8i4tDDHHH1`], onBootstrapUnreachable: (f) => failures.push(f) });
    try {
      await waitFor('a failure reported', () => failures.length > 0, 15_000);
    } finally {
      await lonely.stop();
      http.close();
    }
    assert.match(failures[0]!.likelyCause, /not a pacs-mesh peer's --p2p-port|another swarm key/, failures[0]!.error);
    assert.doesNotMatch(failures[0]!.likelyCause, /see the error/);
  });

  it('a peer learnt from the mesh that came back under a new PeerId at its address is dialled there again (a site restored without --bootstrap)', { timeout: perTestTimeoutMs }, async () => {
    const old = await start({});
    const oldAddress = loopbackAddress(old);
    const port = Number(oldAddress.split('/')[4]);
    const changes: BootstrapIdentityChange[] = [];
    const other = await start({ onBootstrapIdentityChanged: (c) => changes.push(c) });
    await other.addKnownPeer(old.peerId, [oldAddress]);
    await waitFor('connected to the peer learnt', () => other.connectedPeers().includes(old.peerId), 10_000);
    await old.stop();
    const restored = await start({ p2pPort: port });
    assert.notEqual(restored.peerId, old.peerId);
    await waitFor('connected to the restored peer through the learnt address', () => other.connectedPeers().includes(restored.peerId), 15_000);
    assert.deepEqual(changes, [], 'no bootstrap address changed');
    await Promise.all([other.stop(), restored.stop()]);
  });

  it('a peer forgotten (POST /api/forget-peer, /api/forget-site) leaves the saved addresses: not dialled at the next start', { timeout: perTestTimeoutMs }, async () => {
    const other = await start({ tuning: { knownPeersWriteDelayMs: 50 } });
    const otherDir = dirs[dirs.length - 1]!;
    const gone = await start({});
    await gone.dial(loopbackAddress(other), { signal: runTimeSignal(5000) });
    await waitFor('the peer gone later saved', () => savedIn(otherDir, gone.peerId), 10_000);
    await gone.stop();
    other.forgetPeers([gone.peerId]);
    await other.stop();
    assert.equal(await savedIn(otherDir, gone.peerId), false, 'its address was kept, to be dialled at every start');
  });

  it('a peer learnt only from its own connection (no address given) that came back under a new PeerId at its address is dialled there again', { timeout: perTestTimeoutMs }, async () => {
    const other = await start({ tuning: { knownPeersWriteDelayMs: 50 } });
    const otherDir = dirs[dirs.length - 1]!;
    const old = await start({});
    const oldAddress = loopbackAddress(old);
    const port = Number(oldAddress.split('/')[4]);
    // The old peer dials: `other` knows it only from that connection, its address from identify.
    await old.dial(loopbackAddress(other), { signal: runTimeSignal(5000) });
    await waitFor('connected to the peer that dialled', () => other.connectedPeers().includes(old.peerId), 10_000);
    // Stopped before `other` had its identify, it left no address to dial (hunt 119: the test's failures at load 11-27).
    await waitFor('the peer that dialled identified (its addresses saved)', () => savedIn(otherDir, old.peerId), 10_000);
    await old.stop();
    const restored = await start({ p2pPort: port });
    assert.notEqual(restored.peerId, old.peerId);
    // Up to two reconnect backoffs (5 s at most each) plus a dial; the bound is for a loaded machine (it failed at 15 s under load 6).
    await waitFor('connected to the restored peer through the address its old self announced', () => other.connectedPeers().includes(restored.peerId), 30_000);
    await Promise.all([other.stop(), restored.stop()]);
  });

  /**
   * `old` (started with `oldInit`) dials `other`, stops once identified, and comes back at its port with its
   * identity but not its saved peers, the wall clock two hours on: only other's redial at the addresses of
   * old's identify can bring them together (no announcements; libp2p's peer store keeps an address for an
   * hour after it first saw it, by Date.now(), connected or not, and dials nothing after that).
   */
  async function redialsPeerKnownFromItsConnection(oldInit: Partial<MeshNodeInit>): Promise<void> {
    const tuning = { peerAnnounceIntervalMs: 0, knownPeersWriteDelayMs: 50 };
    const other = await start({ tuning });
    const otherDir = dirs[dirs.length - 1]!;
    const old = await start({ ...oldInit, tuning });
    const oldDir = dirs[dirs.length - 1]!;
    const port = portOf(loopbackAddress(old));
    await old.dial(loopbackAddress(other), { signal: runTimeSignal(5000) });
    await waitFor('the peer that dialled identified (its addresses saved)', () => savedIn(otherDir, old.peerId), 10_000);
    const undo = stepWallClock(2 * 3_600_000);
    try {
      await old.stop();
      await waitFor('other to notice the peer is gone', () => !other.connectedPeers().includes(old.peerId));
      await rm(join(oldDir, 'known-peers.json'), { force: true });
      const restarted = await start({ ...oldInit, dataDir: oldDir, p2pPort: port, tuning });
      assert.equal(restarted.peerId, old.peerId);
      await waitFor('other redials the restarted peer', () => other.connectedPeers().includes(restarted.peerId), 15_000);
      await Promise.all([other.stop(), restarted.stop()]);
    } finally {
      undo();
    }
  }

  it("redials a peer known only from its own connection once libp2p's peer store has let its addresses expire (an hour, or the wall clock stepped forward) (hunt 119)", { timeout: perTestTimeoutMs }, async () => {
    await redialsPeerKnownFromItsConnection({});
  });

  it('redials a peer known only from its own connection at the address its identify listed first, when it listed more than the 8 kept', { timeout: perTestTimeoutMs }, async () => {
    // Targets kept the last 8 addresses, and savedAddressesOf puts first those on the address the peer
    // connected from: a host listing 9 or more (0.0.0.0 on a machine with many interfaces) was redialled
    // only at the others. Here the 8 after the real one lead nowhere.
    const port = await getFreePort();
    const nowhere = await Promise.all(Array.from({ length: 8 }, () => getFreePort()));
    await redialsPeerKnownFromItsConnection({ p2pPort: port, announce: [port, ...nowhere].map((p) => `/ip4/127.0.0.1/tcp/${p}`) });
  });

  it("a stream to a known peer that is not connected dials it where the mesh knows it listens, not through libp2p's peer store once its addresses expired (hunt 124)", { timeout: perTestTimeoutMs }, async () => {
    // No redials within the test: the stream's own dial is the only one that can connect the two.
    const tuning = { peerAnnounceIntervalMs: 0, knownPeersWriteDelayMs: 50, reconnectMinDelayMs: 60_000, reconnectMaxDelayMs: 60_000 };
    const other = await start({ tuning });
    const otherDir = dirs[dirs.length - 1]!;
    const peer = await start({ tuning });
    await peer.handle('/pacs-mesh/test-echo/1', async (stream) => {
      await stream.writer.writeFrame(await stream.reader.readFrame(1024));
    });
    // `other` knows `peer` only from the connection `peer` opened, its address from identify.
    await peer.dial(loopbackAddress(other), { signal: runTimeSignal(5000) });
    await waitFor('the peer that dialled identified (its addresses saved)', () => savedIn(otherDir, peer.peerId), 10_000);
    const undo = stepWallClock(2 * 3_600_000);
    try {
      other.dropPeer(peer.peerId, 'test: the connection ends');
      await waitFor('disconnected', () => !other.connectedPeers().includes(peer.peerId) && !peer.connectedPeers().includes(other.peerId));
      const stream = await other.openStream(peer.peerId, '/pacs-mesh/test-echo/1', { signal: runTimeSignal(5000) });
      await stream.writer.writeFrame(Buffer.from('hello'));
      assert.equal(Buffer.from(await stream.reader.readFrame(1024, { signal: runTimeSignal(5000) })).toString(), 'hello');
      await stream.close({ signal: runTimeSignal(5000) });
    } finally {
      undo();
    }
  });

  it('a bootstrap address whose site came back under a new PeerId is dialled without its /p2p/ part; its own address is skipped', { timeout: perTestTimeoutMs }, async () => {
    const old = await start({});
    const oldAddress = loopbackAddress(old);
    const port = Number(oldAddress.split('/')[4]);
    await old.stop();
    // Restored on an empty disk: a new identity on the same port.
    const restored = await start({ p2pPort: port });
    assert.notEqual(restored.peerId, old.peerId);
    const changes: BootstrapIdentityChange[] = [];
    const failures: BootstrapFailure[] = [];
    const joining = await start({ bootstrap: [oldAddress], onBootstrapIdentityChanged: (c) => changes.push(c), onBootstrapUnreachable: (f) => failures.push(f) });
    await waitFor('connected to the restored peer through the stale address', () => joining.connectedPeers().includes(restored.peerId), 10_000);
    assert.equal(changes.length, 1);
    assert.equal(changes[0]!.expectedPeerId, old.peerId);
    assert.match(changes[0]!.error, /does not match expected remote identity key/);
    assert.equal(failures.length, 0, 'not reported as unreachable');
    await Promise.all([joining.stop(), restored.stop()]);
    // The same list at every site names each site itself (by address): dropped, not retried and reported.
    const ownPort = await getFreePort();
    const twins: string[] = [];
    const selfListed = await start({ p2pPort: ownPort, bootstrap: [`/ip4/127.0.0.1/tcp/${ownPort}`], onBootstrapUnreachable: (f) => failures.push(f), onIdentityTwinAddress: (t) => twins.push(t.address) });
    await new Promise((r) => setTimeout(r, 1500));
    await selfListed.stop();
    // Named with its PeerId as well (a restart of the same site, the list copied to every site).
    const selfNamed = await start({ dataDir: dirs[dirs.length - 1]!, p2pPort: ownPort, bootstrap: [`/ip4/127.0.0.1/tcp/${ownPort}/p2p/${selfListed.peerId}`], onIdentityTwinAddress: (t) => twins.push(t.address) });
    assert.equal(selfNamed.peerId, selfListed.peerId);
    await new Promise((r) => setTimeout(r, 1000));
    await selfNamed.stop();
    assert.deepEqual(failures, [], 'its own address is no unreachable bootstrap peer');
    assert.deepEqual(twins, [], 'nor another process with its identity');
    // Its own port named with another peer's PeerId (a wrong port in --bootstrap): said so, not taken for
    // a site restored on an empty disk there (helper 91).
    const ownChanges: BootstrapIdentityChange[] = [];
    const ownFailures: BootstrapFailure[] = [];
    const wrongPort = await start({ dataDir: dirs[dirs.length - 1]!, p2pPort: ownPort, bootstrap: [`/ip4/127.0.0.1/tcp/${ownPort}/p2p/${joining.peerId}`], onBootstrapIdentityChanged: (c) => ownChanges.push(c), onBootstrapUnreachable: (f) => ownFailures.push(f) });
    await waitFor('the identity change reported', () => ownChanges.length > 0, 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    await wrongPort.stop();
    assert.deepEqual(ownChanges.map((c) => c.ownAddress), [true]);
    assert.deepEqual(ownFailures, [], 'nor an unreachable bootstrap peer');
  });

  it('a copy of a peer bootstrapped at its original (by address, or by address and PeerId) says another process runs with its identity there', { timeout: perTestTimeoutMs }, async () => {
    const original = await start({});
    const originalDir = dirs[dirs.length - 1]!;
    const withPeerId = loopbackAddress(original);
    const bare = withPeerId.replace(/\/p2p\/.*$/, '');
    for (const bootstrapAddress of [bare, withPeerId]) {
      const copyDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
      dirs.push(copyDir);
      await cp(join(originalDir, 'peer-key'), join(copyDir, 'peer-key'));
      const twins: string[] = [];
      const copy = await start({ dataDir: copyDir, bootstrap: [bootstrapAddress], onIdentityTwinAddress: (t) => twins.push(t.bootstrap ? t.address : `learnt ${t.address}`) });
      assert.equal(copy.peerId, original.peerId);
      await waitFor(`the twin at ${bootstrapAddress} reported`, () => twins.length > 0, 10_000);
      assert.equal(portOf(twins[0]!), portOf(bare));
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(twins.length, 1, 'once per address');
      await copy.stop();
    }
    await original.stop();
  });

  it('redials an unreachable bootstrap address on its backoff, not on the 5 s maximum', { timeout: perTestTimeoutMs }, async () => {
    const closed = await start({});
    const closedAddress = loopbackAddress(closed);
    await closed.stop();
    const failures: Array<BootstrapFailure & { atMs: number }> = [];
    const t0 = performance.now();
    // Run time (the wall clock less the loop's lateness): at load the backoff's timers fire as late as the loop runs.
    const lag = trackLoopLag();
    const lonely = await start({
      bootstrap: [closedAddress],
      tuning: { reconnectMinDelayMs: 100, reconnectMaxDelayMs: 5000 },
      onBootstrapUnreachable: (f) => failures.push({ ...f, atMs: performance.now() - t0 - lag.lateMs() }),
    });
    await waitFor('the 4th failure', () => failures.some((f) => f.attempts === 4), 10_000);
    lag.stop();
    await lonely.stop();
    // 200, 400, 800 ms (+-25 %) between tries: the 4th well before the ~15 s that 5 s ticks took.
    assert.ok(failures.at(-1)!.atMs < 4000, `4th failure after ${Math.round(failures.at(-1)!.atMs)} ms of run time`);
  });

  it('notices two processes with one identity (a copied data directory): their connections report disjoint listen addresses', { timeout: perTestTimeoutMs }, async () => {
    const conflicts: IdentityConflict[] = [];
    const observer = await start({ onIdentityConflict: (c) => conflicts.push(c) });
    const boot = [loopbackAddress(observer)];
    const first = await start({ bootstrap: boot });
    const dataDir = dirs[dirs.length - 1]!;
    await waitFor('observer connected', () => observer.connectedPeers().includes(first.peerId));
    // A restart (the old process gone, a new port) is not a conflict.
    await first.stop();
    const notices: Array<IdentityConflictNotice & { to: string }> = [];
    const original = await start({ dataDir, bootstrap: boot, onIdentityConflictNotice: (n) => notices.push({ to: 'original', ...n }) });
    await waitFor('observer connected to the restarted peer', () => observer.connectedPeers().includes(original.peerId));
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(conflicts.length, 0);
    assert.equal(notices.length, 0);
    const copyDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    dirs.push(copyDir);
    await cp(join(dataDir, 'peer-key'), join(copyDir, 'peer-key'));
    const twin = await start({ dataDir: copyDir, bootstrap: boot, onIdentityConflictNotice: (n) => notices.push({ to: 'twin', ...n }) });
    assert.equal(twin.peerId, original.peerId);
    await waitFor('the identity conflict reported', () => conflicts.length > 0, 15_000);
    // The twins themselves are told, each over its own connection (they never see each other).
    await waitFor('both twins told', () => new Set(notices.map((n) => n.to)).size === 2, 10_000);
    assert.ok(notices.every((n) => n.reportedBy === observer.peerId && n.addresses.flat().length > 0));
    assert.equal(conflicts[0]!.peerId, original.peerId);
    const ports = conflicts[0]!.addresses.map((addrs) => new Set(addrs.map(portOf)));
    assert.deepEqual(ports.map((p) => [...p]).flat().sort(), [portOf(loopbackAddress(original)), portOf(loopbackAddress(twin))].sort());
    // Once a minute at most, however often the twins reconnect.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(conflicts.length, 1);
    assert.equal(notices.length, 2);
    await Promise.all([twin.stop(), original.stop(), observer.stop()]);
  });

  it('tells a copy started again within the minute of the last report (helper 91: it heard nothing and served alone)', { timeout: perTestTimeoutMs }, async () => {
    const conflicts: IdentityConflict[] = [];
    const observer = await start({ onIdentityConflict: (c) => conflicts.push(c) });
    const boot = [loopbackAddress(observer)];
    const original = await start({ bootstrap: boot });
    const dataDir = dirs[dirs.length - 1]!;
    const copy = async (): Promise<{ node: MeshNode; notices: IdentityConflictNotice[] }> => {
      const copyDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
      dirs.push(copyDir);
      await cp(join(dataDir, 'peer-key'), join(copyDir, 'peer-key'));
      const notices: IdentityConflictNotice[] = [];
      return { node: await start({ dataDir: copyDir, bootstrap: boot, onIdentityConflictNotice: (n) => notices.push(n) }), notices };
    };
    const first = await copy();
    await waitFor('the first copy told', () => first.notices.length > 0, 15_000);
    await first.node.stop();
    const second = await copy();
    await waitFor('the second copy told, within the minute of the first report', () => second.notices.length > 0, 15_000);
    assert.equal(second.notices[0]!.reportedBy, observer.peerId);
    assert.equal(conflicts.length, 1, "the observer's own report stays once a minute");
    await Promise.all([second.node.stop(), original.stop(), observer.stop()]);
  });

  it("the original of a copy met at an address learnt from the mesh does not call it a --bootstrap address (helper 91)", { timeout: perTestTimeoutMs }, async () => {
    // The original knew a peer at a port; that peer stopped and a copy of the original took the port.
    const twinAddresses: IdentityTwinAddress[] = [];
    const original = await start({ onIdentityTwinAddress: (t) => twinAddresses.push(t) });
    const dataDir = dirs[dirs.length - 1]!;
    const gone = await start({});
    const goneAddress = loopbackAddress(gone);
    await original.addKnownPeer(gone.peerId, [goneAddress]);
    await waitFor('connected to the peer learnt', () => original.connectedPeers().includes(gone.peerId), 10_000);
    await gone.stop();
    const copyDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    dirs.push(copyDir);
    await cp(join(dataDir, 'peer-key'), join(copyDir, 'peer-key'));
    const copy = await start({ dataDir: copyDir, p2pPort: Number(goneAddress.split('/')[4]) });
    await waitFor('the twin met at the learnt address', () => twinAddresses.length > 0, 15_000);
    assert.deepEqual(twinAddresses.map((t) => t.bootstrap), [false]);
    await Promise.all([copy.stop(), original.stop()]);
  });

  it('an identity conflict notice that is not one (junk, a malformed address list) is dropped', { timeout: perTestTimeoutMs }, async () => {
    const notices: IdentityConflictNotice[] = [];
    const told = await start({ bootstrap: [loopbackAddress(a)], onIdentityConflictNotice: (n) => notices.push(n) });
    await waitFor('connected', () => a.connectedPeers().includes(told.peerId));
    const send = async (frame: Uint8Array): Promise<void> => {
      const stream = await a.openStream(told.peerId, '/pacs-mesh/identity-conflict/1', { signal: runTimeSignal(5000) });
      await stream.writer.writeFrame(frame);
      await stream.close().catch(() => undefined);
    };
    await send(new Uint8Array([0xc1, 0xc1, 0xc1]));
    await send(encodeEnvelope({ type: 'identity-conflict', addresses: [['x'.repeat(600)], []] }));
    await send(encodeEnvelope({ type: 'identity-conflict', addresses: [[1, 2], ['/ip4/127.0.0.1/tcp/1']] }));
    await send(encodeEnvelope({ type: 'identity-conflict', addresses: [['/ip4/127.0.0.1/tcp/1'], ['/ip4/127.0.0.1/tcp/2']] }));
    await waitFor('the well-formed notice', () => notices.length === 1);
    assert.deepEqual(notices[0], { reportedBy: a.peerId, addresses: [['/ip4/127.0.0.1/tcp/1'], ['/ip4/127.0.0.1/tcp/2']] });
    await told.stop();
  });

  it('keeps out a peer with another swarm key, or with none: no connection, no gossip', { timeout: perTestTimeoutMs }, async () => {
    const boot = [loopbackAddress(a)];
    const got: string[] = [];
    const outsiders = [
      await start({ swarmKey: generateSwarmKey(), bootstrap: boot }),
      await start({ swarmKey: null, bootstrap: boot }),
    ];
    for (const o of outsiders) {
      o.subscribe(TOPIC, (m) => got.push(Buffer.from(m.data).toString()));
      await assert.rejects(o.dial(boot[0] as string, { signal: AbortSignal.timeout(3000) }));
    }
    // the mesh keeps gossiping while the outsiders keep trying to join through the bootstrap loop
    const meshGot: string[] = [];
    const unsub = c.subscribe(TOPIC, (m) => meshGot.push(Buffer.from(m.data).toString()));
    await publishUntil(a, Buffer.from('secret'), () => meshGot.includes('secret'));
    await new Promise((r) => setTimeout(r, 1500));
    unsub();
    for (const o of outsiders) {
      assert.deepEqual(o.connectedPeers(), []);
      assert.ok(!a.connectedPeers().includes(o.peerId));
    }
    assert.deepEqual(got, []);
    await Promise.all(outsiders.map((o) => o.stop()));
  });

  it('keeps its PeerId across a restart with the same data dir, and the mesh reconnects, even with the wall clock stepped back meanwhile', { timeout: perTestTimeoutMs }, async () => {
    const dataDir = dirs[0] as string;
    const port = portOf(loopbackAddress(a));
    const oldId = a.peerId;
    assert.equal(a.identityCreated, true, 'a first start creates the identity');
    await a.stop();
    await waitFor('b to notice a is gone', () => !b.connectedPeers().includes(oldId));
    // Redials scheduled on the wall clock would then wait an hour.
    const undo = stepWallClock(-3_600_000);
    try {
      a = await start({ dataDir, p2pPort: port }, true); // the suite's a again, not stopped at this test's end
      assert.equal(a.peerId, oldId);
      assert.equal(a.identityCreated, false, 'a restart keeps it (custody expects no other sites for that alone)');
      // nobody bootstraps *to* b or c from a: they come back through their reconnect loops
      await waitFor('b and c reconnect to the restarted a', () => a.connectedPeers().includes(b.peerId) && a.connectedPeers().includes(c.peerId), 15_000);
    } finally {
      undo();
    }
  });

  it('joined through an address without /p2p/, reconnects after that peer restarts', { timeout: perTestTimeoutMs }, async () => {
    // A mesh of two, apart from the others (its own swarm key): only q's reconnect loop can bring them together again.
    const apart = { swarmKey: generateSwarmKey() };
    const pDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    let p = await start({ ...apart, dataDir: pDir });
    const port = portOf(loopbackAddress(p));
    const q = await start({ ...apart, bootstrap: [`/ip4/127.0.0.1/tcp/${port}`] });
    await waitFor('q to join through the bare address', () => q.connectedPeers().includes(p.peerId));
    // p announces its addresses (with /p2p/) 1 s after a connection: a dial must not mix them with the bare one.
    await new Promise((r) => setTimeout(r, 2500));
    const oldId = p.peerId;
    await p.stop();
    await waitFor('q to notice p is gone', () => !q.connectedPeers().includes(oldId));
    p = await start({ ...apart, dataDir: pDir, p2pPort: port });
    await waitFor('q reconnects to the restarted p', () => q.connectedPeers().includes(p.peerId), 15_000);
  });

  it('a site restarted on another port without --bootstrap dials the addresses it saved, quietly; the peer it finds does too (helper 93)', { timeout: perTestTimeoutMs }, async () => {
    // A mesh of two, apart from the others: only the saved addresses can bring them together again. Its own
    // swarm key keeps the suite's other nodes out (one of them, reaching q's port, was saved beside p once).
    const apart = { swarmKey: generateSwarmKey() };
    const failures: BootstrapFailure[] = [];
    const changes: BootstrapIdentityChange[] = [];
    const isolated = { ...apart, onBootstrapUnreachable: (f: BootstrapFailure) => failures.push(f), onBootstrapIdentityChanged: (c: BootstrapIdentityChange) => changes.push(c) };
    const tuning = { knownPeersWriteDelayMs: 100 };
    let p = await start({ ...isolated, tuning });
    const pDir = dirs[dirs.length - 1]!;
    const pPort = portOf(loopbackAddress(p));
    let q = await start({ bootstrap: [loopbackAddress(p)], ...isolated, tuning });
    const qDir = dirs[dirs.length - 1]!;
    const qOldPort = portOf(loopbackAddress(q));
    await waitFor('q joined p', () => p.connectedPeers().includes(q.peerId) && q.connectedPeers().includes(p.peerId));
    assert.equal(p.savedPeers, 0);
    // Addresses are saved once the peer has said where it listens (identify, right after connecting).
    await waitFor('each saved the other', async () => (await savedIn(pDir, q.peerId)) && (await savedIn(qDir, p.peerId)));
    const pId = p.peerId;
    const qId = q.peerId;
    // stop() writes what changed since the last write
    await Promise.all([q.stop(), p.stop()]);
    const savedAtQ = JSON.parse(await readFile(join(qDir, 'known-peers.json'), 'utf8')) as { version: number; peers: Array<{ peerId: string; addrs: string[] }> };
    assert.deepEqual(savedAtQ.peers.map((x) => x.peerId), [pId], 'q saved p, and not itself');
    assert.ok(savedAtQ.peers[0]!.addrs.includes(`/ip4/127.0.0.1/tcp/${pPort}/p2p/${pId}`), JSON.stringify(savedAtQ));
    const savedAtP = JSON.parse(await readFile(join(pDir, 'known-peers.json'), 'utf8')) as typeof savedAtQ;
    assert.deepEqual(savedAtP.peers.map((x) => x.peerId), [qId]);
    // q moves to another port; p comes back where it was: q knows where p is, p only q's old address.
    q = await start({ dataDir: qDir, ...isolated });
    const qNewPort = portOf(loopbackAddress(q));
    assert.notEqual(qNewPort, qOldPort);
    p = await start({ dataDir: pDir, p2pPort: pPort, ...isolated });
    assert.equal(q.peerId, qId);
    assert.equal(q.savedPeers, 1);
    assert.equal(p.savedPeers, 1);
    await waitFor('q found p at the address it saved', () => q.connectedPeers().includes(pId) && p.connectedPeers().includes(qId), 15_000);
    // p's dials of q's old address failed meanwhile: none of that is a bootstrap warning.
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(failures, []);
    assert.deepEqual(changes, []);
    assert.equal(p.connectionCount(qId), 1, 'one connection per pair');
    // p learns q's new address (identify) and saves it at stop.
    await Promise.all([q.stop(), p.stop()]);
    const resaved = JSON.parse(await readFile(join(pDir, 'known-peers.json'), 'utf8')) as typeof savedAtQ;
    assert.deepEqual(resaved.peers[0]!.addrs, [`/ip4/127.0.0.1/tcp/${qNewPort}/p2p/${qId}`]);
  });

  it('a saved peer not heard of is dialled now and then while the node is in the mesh: groups of sites cut apart and restarted meanwhile find each other when the cut heals (hunt 171)', { timeout: perTestTimeoutMs }, async () => {
    const tuning = { knownPeersWriteDelayMs: 100 };
    const p = await start({ tuning });
    const pDir = dirs[dirs.length - 1]!;
    const r = await start({ bootstrap: [loopbackAddress(p)], tuning });
    const rDir = dirs[dirs.length - 1]!;
    const [rId, rPort] = [r.peerId, portOf(loopbackAddress(r))];
    await waitFor('p saved r', () => savedIn(pDir, rId));
    await Promise.all([r.stop(), p.stop()]);
    // Cut apart, p restarts and joins q on its side of the cut: in the mesh, r's saved address not dialled
    // at the loop's back-off.
    const q = await start({});
    const pAgain = await start({ dataDir: pDir, bootstrap: [loopbackAddress(q)], tuning: { savedPeerInMeshRedialMs: 300 } });
    assert.equal(pAgain.savedPeers, 1);
    await waitFor('p joined q', () => pAgain.connectedPeers().includes(q.peerId));
    // The cut heals: r is back where it was, knowing no one (its other side's peers would dial r's saved
    // addresses as little): only p's dial of the address it saved brings them together.
    await rm(join(rDir, 'known-peers.json'));
    const rAgain = await start({ dataDir: rDir, p2pPort: rPort });
    assert.equal(rAgain.peerId, rId);
    await waitFor('p dialled r at its saved address', () => pAgain.connectedPeers().includes(rId), 15_000);
  });

  it('a saved peer rests from half to one and a half savedPeerInMeshRedialMs between dials in the mesh, a minute on average: sites started together do not dial in step (hunt 173)', () => {
    assert.deepEqual([0, 0.5, 0.999].map((r) => savedRedialRestMs(60_000, r)), [30_000, 60_000, 89_940]);
  });

  it('a restarted site dials the peers it saved most recently first, not after the stale ones whose addresses hang (hunt 173)', { timeout: perTestTimeoutMs }, async () => {
    const { hungPort } = await hungListener();
    const q = await start({});
    const pDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    // Twenty older entries (sites gone, their hosts across a cut), then q, connected last.
    await writeSavedPeers(pDir, [...(await stalePeers(20, hungPort)), { peerId: q.peerId, addrs: [loopbackAddress(q)], site: 'site-q' }]);
    const p = await start({ dataDir: pDir });
    assert.equal(p.savedPeers, 21);
    // Before, q came after five rounds of four hung dials (~25 s).
    await waitFor('p dialled q', () => p.connectedPeers().includes(q.peerId), 10_000);
  });

  it('saved peers whose addresses hang take at most half the dial slots: the peers of this run are redialled meanwhile (hunt 173)', { timeout: perTestTimeoutMs }, async () => {
    // Twenty saved peers of sites gone, at an address that accepts and never answers (a host across a cut):
    // before, they took every slot at each round, and q was never redialled.
    const { hungPort, held } = await hungListener();
    const pDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    await writeSavedPeers(pDir, await stalePeers(20, hungPort));
    // q never redials p within the test, nor does libp2p (it keeps --bootstrap peers, which q is not to p):
    // only p's reconnect loop can bring them together again.
    const q = await start({ tuning: { reconnectMinDelayMs: 600_000, reconnectMaxDelayMs: 600_000 } });
    const p = await start({ dataDir: pDir, tuning: { savedPeerInMeshRedialMs: 100 } });
    assert.equal(p.savedPeers, 20);
    await p.dial(loopbackAddress(q));
    await waitFor('p dials the saved peers, which hang', () => held.length >= 4);
    // Every saved peer is due by now (savedPeerInMeshRedialMs); each hangs ~5 s (libp2p's handshake timeout).
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(p.reconnectDialsInFlight() <= 4, `${p.reconnectDialsInFlight()} dials in flight, of 8`);
    q.dropPeer(p.peerId, 'test');
    await waitFor('p lost q', () => !p.connectedPeers().includes(q.peerId));
    await waitFor('p redialled q past the hung dials', () => p.connectedPeers().includes(q.peerId), 20_000);
  });

  it('idle TCP connections without the swarm key, held open as the handshake timeout closes them, do not keep a key holder out (hunt 100)', { timeout: perTestTimeoutMs }, async () => {
    const victim = await start({});
    const port = portOf(loopbackAddress(victim));
    const idle = new Set<Socket>();
    let holding = true;
    // Ten at a time, reopened as they close, at most 5 a second (libp2p refuses more from one host).
    const hold = (): void => {
      if (!holding) return;
      const socket = connect({ host: '127.0.0.1', port });
      idle.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        idle.delete(socket);
        setTimeout(hold, 10);
      });
    };
    for (let i = 0; i < 10; i++) setTimeout(hold, i * 220);
    try {
      await new Promise((r) => setTimeout(r, 2600));
      const honest = await start({ tuning: { peerAnnounceIntervalMs: 0 } });
      await honest.dial(loopbackAddress(victim), { signal: runTimeSignal(5000) });
      assert.ok(honest.connectedPeers().includes(victim.peerId));
    } finally {
      holding = false;
      for (const socket of idle) socket.destroy();
    }
  });

  it('a damaged known-peers file is a warning and ignored; it is replaced at the next connection (helper 93)', { timeout: perTestTimeoutMs }, async () => {
    const problems: KnownPeersProblem[] = [];
    const dataDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    dirs.push(dataDir);
    await writeFile(join(dataDir, 'known-peers.json'), '{"version":1,"peers":[{"peerId":"12D3Koo');
    const damaged = await start({ dataDir, bootstrap: [loopbackAddress(a)], tuning: { knownPeersWriteDelayMs: 100 }, onKnownPeersProblem: (problem) => problems.push(problem) });
    assert.equal(problems.length, 1);
    assert.equal(problems[0]!.operation, 'read');
    assert.equal(problems[0]!.path, join(dataDir, 'known-peers.json'));
    assert.match(problems[0]!.error, /not JSON/);
    assert.equal(damaged.savedPeers, 0);
    await waitFor('joined through its bootstrap address all the same', () => damaged.connectedPeers().includes(a.peerId));
    // Saved once a has said where it listens (identify, right after connecting).
    await waitFor('a saved', () => savedIn(dataDir, a.peerId));
    await damaged.stop();
    const text = await readFile(join(dataDir, 'known-peers.json'), 'utf8');
    assert.ok((JSON.parse(text) as { peers: Array<{ peerId: string }> }).peers.some((x) => x.peerId === a.peerId), text);
    // A directory in its place cannot be read either: a warning, and the node runs.
    const blockedDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-net-'));
    dirs.push(blockedDir);
    await mkdir(join(blockedDir, 'known-peers.json'));
    const blocked = await start({ dataDir: blockedDir, onKnownPeersProblem: (problem) => problems.push(problem) });
    assert.equal(problems.length, 2);
    assert.equal(problems[1]!.operation, 'read');
    await blocked.stop();
  });
});
