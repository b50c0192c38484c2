import '../../polyfill.ts';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, type MeshNode } from '../../net/node.ts';
import { generateSwarmKey, type SwarmKey } from '../../net/swarm-key.ts';
import type { MeshStream } from '../../net/stream.ts';
import { silentLogger } from '../runtime/logger.ts';
import { loopbackAddress } from '../../../test/support/mesh-nodes.ts';
import { suiteTeardown } from '../../../test/support/teardown.ts';
import { waitFor } from '../../../test/support/wait.ts';
import {
  ELECTION_MAX_BYTES,
  ELECTION_PROTOCOL,
  ELECTION_STREAM_PROTOCOL,
  startElectionStreams,
  type ElectionPeerView,
  type ElectionStreamLimits,
  type ElectionStreams,
} from './election-streams.ts';

/** Frame n: its number in the first 4 bytes, then `size - 4` bytes of padding. */
function frame(n: number, size = 8): Uint8Array {
  const bytes = new Uint8Array(size);
  new DataView(bytes.buffer).setUint32(0, n);
  return bytes;
}
const numberOf = (bytes: Uint8Array): number => new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0);

interface Endpoint {
  node: MeshNode;
  streams: ElectionStreams;
  /** Frame numbers received, in order, with their sender. */
  received: { from: string; n: number }[];
}

describe('election streams between two real nodes (127.0.0.1)', { timeout: 120_000 }, () => {
  const dirs: string[] = [];
  const teardown = suiteTeardown(async () => {
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  async function node(key: SwarmKey, bootstrap: string[], dataDir?: string, readHighWaterMark?: number): Promise<MeshNode> {
    const dir = dataDir ?? (await mkdtemp(join(tmpdir(), 'pacs-mesh-election-streams-')));
    if (!dirs.includes(dir)) dirs.push(dir);
    const n = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey: key, dataDir: dir, bootstrap, tuning: { reconnectMinDelayMs: 100, ...(readHighWaterMark !== undefined ? { readHighWaterMark } : {}) } });
    await teardown.add(() => n.stop());
    return n;
  }

  async function endpoint(n: MeshNode, limits: Partial<ElectionStreamLimits> = {}): Promise<Endpoint> {
    const received: { from: string; n: number }[] = [];
    const streams = await startElectionStreams({
      node: n,
      selfPeerId: n.peerId,
      log: silentLogger,
      deliver: (from, bytes) => {
        received.push({ from, n: numberOf(bytes) });
        return 'accepted';
      },
      limits,
    });
    await teardown.add(() => streams.stop());
    return { node: n, streams, received };
  }

  /** Two connected nodes; b's data directory is kept, so `restartB` starts it again under the same PeerId. */
  async function twoNodes(bReadHighWaterMark?: number): Promise<{ na: MeshNode; nb: MeshNode; restartB(): Promise<MeshNode> }> {
    const key = generateSwarmKey();
    const na = await node(key, []);
    const dirB = await mkdtemp(join(tmpdir(), 'pacs-mesh-election-streams-'));
    dirs.push(dirB);
    const nb = await node(key, [loopbackAddress(na)], dirB, bReadHighWaterMark);
    await waitFor('connected', () => na.connectedPeers().includes(nb.peerId));
    const restartB = async (): Promise<MeshNode> => {
      await nb.stop();
      const again = await node(key, [loopbackAddress(na)], dirB);
      assert.equal(again.peerId, nb.peerId, 'same identity');
      await waitFor('reconnected', () => na.connectedPeers().includes(again.peerId), 10_000);
      return again;
    };
    return { na, nb, restartB };
  }

  async function pair(limits: Partial<ElectionStreamLimits> = {}): Promise<{ a: Endpoint; b: Endpoint }> {
    const { na, nb } = await twoNodes();
    return { a: await endpoint(na, limits), b: await endpoint(nb, limits) };
  }

  const alive = (peerId: string, incarnation = 1): ElectionPeerView => ({ peerId, incarnation, status: 'alive' });

  it('50 messages to one peer go on one stream, in order; stopping closes it at both ends', async () => {
    // A queue for all 50 (on a loaded machine the stream's opening can take longer than sending them): the point is the streams, not the drops.
    const { a, b } = await pair({ queuedPerPeerMax: 64 });
    for (let n = 0; n < 50; n++) a.streams.send(b.node.peerId, frame(n));
    await waitFor('50 frames at b', () => b.received.length === 50);
    assert.deepEqual(b.received.map((r) => r.n), Array.from({ length: 50 }, (_, n) => n));
    assert.ok(b.received.every((r) => r.from === a.node.peerId));
    const sent = a.streams.stats();
    assert.equal(sent.keptOpened, 1, 'one stream for all 50 (a stream per message before)');
    assert.equal(sent.legacyOpened, 0);
    assert.equal(sent.dropped, 0);
    assert.equal(sent.keptOut, 1);
    assert.equal(b.streams.stats().keptIn, 1);

    await a.streams.stop();
    assert.deepEqual({ lanes: a.streams.stats().lanes, keptOut: a.streams.stats().keptOut }, { lanes: 0, keptOut: 0 });
    await waitFor('b sees the stream end', () => b.streams.stats().keptIn === 0, 5000);
    a.streams.send(b.node.peerId, frame(99));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(b.received.length, 50, 'nothing sent after stop');
  });

  it('frames waiting for a peer are bounded: past the bound the oldest is dropped, the newest go', async () => {
    const { a, b } = await pair({ queuedPerPeerMax: 4 });
    // Sent at once: the first is on its way (its stream opening), the others wait.
    for (let n = 0; n < 20; n++) a.streams.send(b.node.peerId, frame(n));
    await waitFor('five frames at b', () => b.received.length === 5);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(b.received.map((r) => r.n), [0, 16, 17, 18, 19]);
    assert.equal(a.streams.stats().dropped, 15);
  });

  it('a kept stream reset by the far end is reopened for the next message; so is one lost with its connection', async () => {
    const { a, b } = await pair();
    a.streams.send(b.node.peerId, frame(1));
    await waitFor('first frame', () => b.received.length === 1);
    // The receiver's side of the balancer stops and starts again on the same node: its kept streams are reset.
    await b.streams.stop();
    const b2 = await endpoint(b.node);
    await waitFor('a sees the reset', () => a.streams.stats().keptOut === 0, 5000);
    for (let n = 2; n <= 4; n++) a.streams.send(b.node.peerId, frame(n));
    await waitFor('three frames on the new stream', () => b2.received.length === 3);
    assert.deepEqual(b2.received.map((r) => r.n), [2, 3, 4]);
    assert.equal(a.streams.stats().keptOpened, 2);

    b.node.dropPeer(a.node.peerId, 'test: the connection is lost');
    await waitFor('a sees its stream gone with the connection', () => a.streams.stats().keptOut === 0, 5000);
    await waitFor('reconnected', () => a.node.connectedPeers().includes(b.node.peerId), 10_000);
    a.streams.send(b.node.peerId, frame(5));
    await waitFor('the frame after the reconnection', () => b2.received.some((r) => r.n === 5));
    assert.equal(a.streams.stats().keptOpened, 3);
    assert.equal(b2.streams.stats().keptIn, 1, 'the receiver holds the new stream only');
  });

  it('a write that does not complete (the far end reads nothing) fails over to a fresh stream within the write deadline', async () => {
    // A small read queue at b: its first stream stops taking bytes after ~16 KiB plus one yamux window (256 KiB).
    const { na, nb } = await twoNodes(16 * 1024);
    // No frame is dropped for its age: a loop stalled for seconds at load 20-29 is not what this test is about.
    const a = await endpoint(na, { writeDeadlineMs: 300, queuedPerPeerMax: 512, messageDeadlineMs: 600_000 });
    const received: number[] = [];
    const held: MeshStream[] = [];
    await nb.handle(ELECTION_STREAM_PROTOCOL, async (stream) => {
      if (held.length === 0) {
        // A receiver stuck on its first kept stream: never reads it.
        held.push(stream);
        await new Promise<void>((resolve) => stream.raw.addEventListener('close', () => resolve()));
        return;
      }
      for (let f = await stream.reader.readFrameOrEnd(ELECTION_MAX_BYTES); f !== null; f = await stream.reader.readFrameOrEnd(ELECTION_MAX_BYTES)) received.push(numberOf(f));
    });
    // Enough to fill the stuck stream (~63 frames: its read queue and window), and few enough that what goes on the
    // fresh one (~37 frames, 150 KiB) fits in its first yamux window: no write there waits for the receiver, so
    // no deadline can run out on it. With 200, a loop stalled past 300 ms at load 20-29 timed out a write on the
    // fresh stream too, waiting for a window update the stalled receiver had not sent: a third stream (hunt 145).
    const count = 100;
    for (let n = 0; n < count; n++) a.streams.send(nb.peerId, frame(n, ELECTION_MAX_BYTES));
    const tookMs = await waitFor('the last frame at b, on a second stream', () => received.includes(count - 1), 10_000);
    const stats = a.streams.stats();
    console.log(`election streams: stuck stream failed over, last of ${count} frames in ${tookMs} ms; ${received.length} on the fresh stream`);
    assert.equal(stats.keptOpened, 2, 'the stuck stream, then one fresh one');
    assert.equal(stats.failovers, 1);
    assert.equal(held[0]?.raw.status === 'open', false, 'the stuck stream was reset');
    // The frame whose write timed out went again on the fresh stream, first.
    assert.equal(received[0], count - received.length);
  });

  it('a peer that restarts (a new incarnation, a new connection) gets a fresh stream', async () => {
    const { na, nb, restartB } = await twoNodes();
    const a = await endpoint(na);
    await endpoint(nb);
    a.streams.viewChanged([alive(na.peerId), alive(nb.peerId, 1)]);
    a.streams.send(nb.peerId, frame(1));
    await waitFor('first stream', () => a.streams.stats().keptOpened === 1 && a.streams.stats().keptOut === 1);

    const nb2 = await restartB();
    const b2 = await endpoint(nb2);
    a.streams.viewChanged([alive(na.peerId), alive(nb2.peerId, 2)]);
    a.streams.send(nb2.peerId, frame(2));
    await waitFor('the frame at the restarted peer', () => b2.received.some((r) => r.n === 2));
    assert.equal(a.streams.stats().keptOpened, 2);
    assert.equal(b2.streams.stats().keptIn, 1);
  });

  it('a peer alive in the view gets its stream before the first message; one dead in it loses it', async () => {
    const { a, b } = await pair({ warmAfterMs: 100 });
    a.streams.viewChanged([alive(a.node.peerId), alive(b.node.peerId)]);
    await waitFor('a stream opened ahead of any message', () => a.streams.stats().keptOut === 1 && b.streams.stats().keptIn === 1, 5000);
    a.streams.send(b.node.peerId, frame(7));
    await waitFor('the frame', () => b.received.length === 1);
    assert.equal(a.streams.stats().keptOpened, 1);
    a.streams.viewChanged([alive(a.node.peerId), { peerId: b.node.peerId, incarnation: 1, status: 'dead' }]);
    await waitFor('closed at both ends', () => a.streams.stats().lanes === 0 && b.streams.stats().keptIn === 0, 5000);
  });

  it('a peer of an earlier version (no kept streams) gets each message on a stream of its own, until it restarts upgraded', async () => {
    const { na, nb, restartB } = await twoNodes();
    const a = await endpoint(na);
    // The earlier versions' receiver: /1 only, one frame per stream.
    const received: number[] = [];
    await nb.handle(ELECTION_PROTOCOL, async (stream) => {
      received.push(numberOf(await stream.reader.readFrame(ELECTION_MAX_BYTES)));
    });
    a.streams.viewChanged([alive(na.peerId), alive(nb.peerId, 1)]);
    for (let n = 0; n < 3; n++) a.streams.send(nb.peerId, frame(n));
    await waitFor('three frames at the old peer', () => received.length === 3);
    assert.deepEqual([...received].sort(), [0, 1, 2]);
    const stats = a.streams.stats();
    assert.deepEqual({ keptOpened: stats.keptOpened, legacyOpened: stats.legacyOpened, dropped: stats.dropped }, { keptOpened: 0, legacyOpened: 3, dropped: 0 });

    // Upgraded: stopped, started again (a new incarnation) with this build.
    const nb2 = await restartB();
    const b2 = await endpoint(nb2);
    a.streams.viewChanged([alive(na.peerId), alive(nb2.peerId, 2)]);
    a.streams.send(nb2.peerId, frame(3));
    a.streams.send(nb2.peerId, frame(4));
    await waitFor('two frames at the upgraded peer', () => b2.received.length === 2);
    assert.deepEqual({ keptOpened: a.streams.stats().keptOpened, legacyOpened: a.streams.stats().legacyOpened }, { keptOpened: 1, legacyOpened: 3 }, 'asked for the kept stream again');
  });

  it('a peer flapping alive/dead 1000 times, a frame each time, leaves no lane or kept stream behind at either end, and the next frame still arrives', async () => {
    const { na, nb } = await twoNodes();
    const a = await endpoint(na, { warmAfterMs: 0 });
    const b = await endpoint(nb);
    for (let i = 0; i < 1000; i++) {
      a.streams.viewChanged([alive(na.peerId), alive(nb.peerId, 1)]);
      a.streams.send(nb.peerId, frame(i));
      if (i % 50 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      a.streams.viewChanged([alive(na.peerId), { peerId: nb.peerId, incarnation: 1, status: 'dead' }]);
    }
    await waitFor('every lane and stream gone at both ends', () => a.streams.stats().lanes === 0 && a.streams.stats().keptOut === 0 && b.streams.stats().keptIn === 0, 15_000);
    // Still working afterwards.
    a.streams.viewChanged([alive(na.peerId), alive(nb.peerId, 1)]);
    const before = b.received.length;
    a.streams.send(nb.peerId, frame(5000));
    await waitFor('a frame after the flapping', () => b.received.some((r, i) => i >= before && r.n === 5000));
  });

  it('a peer that refused /2 while starting (same incarnation) is asked for it again after legacyRecheckAfterMs', async () => {
    const { na, nb } = await twoNodes();
    const a = await endpoint(na, { legacyRecheckAfterMs: 300 });
    // b's membership is up, its election handlers not yet: /2 is refused, the first frame goes on /1.
    const early: number[] = [];
    await nb.handle(ELECTION_PROTOCOL, async (stream) => {
      early.push(numberOf(await stream.reader.readFrame(ELECTION_MAX_BYTES)));
    });
    a.streams.viewChanged([alive(na.peerId), alive(nb.peerId, 1)]);
    a.streams.send(nb.peerId, frame(0));
    await waitFor('the first frame on /1', () => early.length === 1);
    await nb.unhandle(ELECTION_PROTOCOL);
    // Now b's balancer serves both, under the same incarnation: nothing in the view changes.
    const received: number[] = [];
    const b = await startElectionStreams({ node: nb, selfPeerId: nb.peerId, log: silentLogger, deliver: (_from, bytes) => (received.push(numberOf(bytes)), 'accepted') });
    await teardown.add(() => b.stop());
    await new Promise((resolve) => setTimeout(resolve, 400));
    a.streams.send(nb.peerId, frame(1));
    await waitFor('the frame after the recheck', () => received.length === 1);
    assert.equal(a.streams.stats().keptOpened, 1, 'on a kept stream');
    assert.equal(b.stats().keptIn, 1);
  });
});
