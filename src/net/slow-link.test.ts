/**
 * Two mesh nodes joined through a slow WAN link (test/support/throttle-proxy.ts: 100 KB/s each way, 25 ms
 * one way, a 64 KiB router queue): what a copy in flight does to the receiver's view of its sender.
 */
import '../polyfill.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, peerActivityNoticeMs, type MeshNode } from './node.ts';
import { generateSwarmKey } from './swarm-key.ts';
import { membershipTimings } from '../actors/membership/actor.ts';
import { readRequest, sendRequest, writeResponse } from '../../test/support/stream-request.ts';
import { loopbackAddress } from '../../test/support/mesh-nodes.ts';
import { startThrottleProxy } from '../../test/support/throttle-proxy.ts';

const linkBytesPerSecond = 100_000;

test('the throttle proxy passes bytes intact, in order, no faster than its rate', { timeout: 20_000 }, async () => {
  let received = Buffer.alloc(0);
  const done = Promise.withResolvers<void>();
  const sent = Buffer.alloc(300_000);
  for (let i = 0; i < sent.length; i++) sent[i] = i % 251;
  const target = createServer((socket) => {
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= sent.length) done.resolve();
    });
  });
  target.listen(0, '127.0.0.1');
  await once(target, 'listening');
  const proxy = await startThrottleProxy({ targetPort: (target.address() as AddressInfo).port, bytesPerSecond: 200_000, latencyMs: 20 });
  const client = connect(proxy.port, '127.0.0.1');
  try {
    await once(client, 'connect');
    const startedMs = performance.now();
    client.write(sent);
    await done.promise;
    const tookMs = performance.now() - startedMs;
    // 300 KB at 200 KB/s: 1.5 s, less the first piece (it leaves at once).
    assert.ok(tookMs >= 1400, `took ${Math.round(tookMs)} ms`);
    assert.ok(received.equals(sent), 'bytes intact and in order');
    assert.equal(proxy.stats.forwardBytes, sent.length);
    assert.deepEqual([proxy.stats.connectionsOpened, proxy.stats.connectionsClosed], [1, 0]);
  } finally {
    client.destroy();
    await proxy.close();
    target.close();
  }
});

test('a copy through a 100 KB/s link keeps its receiver hearing the sender: no gap near the suspect time (hunt 116)', { timeout: 60_000 }, async () => {
  const swarmKey = generateSwarmKey();
  const dirs: string[] = [];
  const nodes: MeshNode[] = [];
  // The default stream window (4 MiB): yamux sized data frames by it, and a frame is heard only once whole.
  const start = async (): Promise<MeshNode> => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-slow-link-'));
    dirs.push(dataDir);
    const node = await createMeshNode({ dataDir, host: '127.0.0.1', p2pPort: 0, swarmKey, tuning: { peerAnnounceIntervalMs: 0, reconnectMinDelayMs: 60_000, reconnectMaxDelayMs: 60_000 } });
    nodes.push(node);
    return node;
  };
  const receiver = await start();
  const sender = await start();
  const link = await startThrottleProxy({ targetPort: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(receiver))![1]), bytesPerSecond: linkBytesPerSecond, latencyMs: 25 });
  try {
    await sender.dial(`/ip4/127.0.0.1/tcp/${link.port}/p2p/${receiver.peerId}`);
    const heardAtMs: number[] = [];
    receiver.onPeerActivity((peerId) => {
      if (peerId === sender.peerId) heardAtMs.push(performance.now());
    });
    await receiver.handle('/pacs-mesh/test-slow-copy/1', async (stream) => {
      const request = await readRequest<{ type: 'offer' }>(stream, { maxBodyBytes: 4 * 1024 * 1024 });
      let bytes = 0;
      for await (const chunk of request.body) bytes += chunk.byteLength;
      await writeResponse(stream, { type: 'ack', bytes });
    });
    const body = randomBytes(640 * 1024);
    const stream = await sender.openStream(receiver.peerId, '/pacs-mesh/test-slow-copy/1');
    const ack = await sendRequest<{ type: 'offer' }, { type: 'ack'; bytes: number }>(stream, { type: 'offer' }, [body], body.byteLength, { signal: AbortSignal.timeout(40_000) });
    assert.deepEqual(ack, { type: 'ack', bytes: body.byteLength });
    const gapsMs = heardAtMs.slice(1).map((atMs, i) => atMs - heardAtMs[i]!);
    const longestGapMs = Math.max(...gapsMs);
    // At 100 KB/s a 64 KiB frame takes ~0.65 s; a window-sized one (256 KiB and up) 2.6 s or more.
    assert.ok(heardAtMs.length >= (body.byteLength / linkBytesPerSecond) * 1000 / (4 * peerActivityNoticeMs), `heard ${heardAtMs.length} times`);
    assert.ok(longestGapMs < membershipTimings.suspectAfterMs * 0.75, `the receiver heard nothing from its sender for ${Math.round(longestGapMs)} ms while the copy arrived (gaps ${gapsMs.map(Math.round).join(', ')} ms)`);
    assert.equal(link.stats.connectionsClosed, 0, 'the connection held');
  } finally {
    await Promise.allSettled(nodes.map((node) => node.stop()));
    await link.close();
    await Promise.allSettled(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  }
});
