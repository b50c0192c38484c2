/**
 * Two mesh nodes in this process, the sender connected to the receiver through a throttled TCP link, and a
 * copy protocol between them: the setup the slow-link tests and the new-streams benchmark share.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, type MeshNode } from '../../src/net/node.ts';
import { generateSwarmKey } from '../../src/net/swarm-key.ts';
import { loopbackAddress } from './mesh-nodes.ts';
import { readRequest, sendRequest, writeResponse } from './stream-request.ts';
import { startThrottleProxy, type ThrottleProxy } from './throttle-proxy.ts';
import { trackLoopLag, type LoopLag } from './loop-lag.ts';

export interface SlowLinkPair {
  sender: MeshNode;
  receiver: MeshNode;
  link: ThrottleProxy;
  /**
   * Sends `bodyBytes` random bytes from the sender to the receiver on a new stream; resolves once acknowledged
   * whole, within `timeoutMs` (by default 20 s and twice the link's time for the bytes).
   */
  copy(bodyBytes: number, timeoutMs?: number): Promise<void>;
  /** Subscribes both ends to `topic` and waits until the sender sees the receiver in it. */
  gossip(topic: string): Promise<GossipProbe>;
}

/** Small messages from the sender, each stamped with its send time, and how late each arrived. */
export interface GossipProbe {
  /** lateMs: how late this process's loop ran meanwhile (the link and both nodes run on it), part of delayMs. */
  delays: Array<{ sentAtMs: number; delayMs: number; lateMs: number }>;
  /** Publishes one message stamped now. */
  publish(): Promise<void>;
}

export interface SlowLinkInit {
  bytesPerSecond: number;
  /** One way. */
  latencyMs?: number;
  /** Period of yamux's keep-alive ping on both nodes (MeshNodeTuning.muxerKeepAliveIntervalMs); default the library's 30 s. */
  muxerKeepAliveIntervalMs?: number;
}

const copyProtocol = '/pacs-mesh/test-slow-copy/1';
const copyBodyBytesMax = 64 * 1024 * 1024;

/**
 * Runs `body` with the pair, then takes it down. Default stream windows: their size is what the slow-link
 * tests are about. Redials are a minute away, so a connection the link loses stays lost.
 */
export async function throughSlowLink<T>(init: SlowLinkInit, body: (pair: SlowLinkPair) => Promise<T>): Promise<T> {
  const swarmKey = generateSwarmKey();
  const dirs: string[] = [];
  const nodes: MeshNode[] = [];
  const start = async (): Promise<MeshNode> => {
    const dataDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-slow-link-'));
    dirs.push(dataDir);
    const node = await createMeshNode({ dataDir, host: '127.0.0.1', p2pPort: 0, swarmKey, tuning: { peerAnnounceIntervalMs: 0, reconnectMinDelayMs: 60_000, reconnectMaxDelayMs: 60_000, muxerKeepAliveIntervalMs: init.muxerKeepAliveIntervalMs } });
    nodes.push(node);
    return node;
  };
  let link: ThrottleProxy | undefined;
  const lags: LoopLag[] = [];
  try {
    const receiver = await start();
    const sender = await start();
    link = await startThrottleProxy({ targetPort: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(receiver))![1]), bytesPerSecond: init.bytesPerSecond, latencyMs: init.latencyMs ?? 25 });
    await sender.dial(`/ip4/127.0.0.1/tcp/${link.port}/p2p/${receiver.peerId}`);
    await receiver.handle(copyProtocol, async (stream) => {
      const request = await readRequest<{ type: 'offer' }>(stream, { maxBodyBytes: copyBodyBytesMax });
      let bytes = 0;
      for await (const chunk of request.body) bytes += chunk.byteLength;
      await writeResponse(stream, { type: 'ack', bytes });
    }, { maxInboundStreams: 256 });
    const copy = async (bodyBytes: number, timeoutMs = 20_000 + Math.round((bodyBytes / init.bytesPerSecond) * 1000 * 2)): Promise<void> => {
      const bytes = randomBytes(bodyBytes);
      const stream = await sender.openStream(receiver.peerId, copyProtocol);
      const ack = await sendRequest<{ type: 'offer' }, { type: 'ack'; bytes: number }>(stream, { type: 'offer' }, [bytes], bytes.byteLength, { signal: AbortSignal.timeout(timeoutMs) });
      if (ack.type !== 'ack' || ack.bytes !== bodyBytes) throw new Error(`the copy of ${bodyBytes} bytes was answered ${JSON.stringify(ack)}`);
    };
    const gossip = async (topic: string): Promise<GossipProbe> => {
      const delays: GossipProbe['delays'] = [];
      const lag = trackLoopLag();
      lags.push(lag);
      receiver.subscribe(topic, (message) => {
        const [, sentAtMs, lateAtSendMs] = Buffer.from(message.data).toString().split(' ').map(Number);
        delays.push({ sentAtMs: sentAtMs!, delayMs: performance.now() - sentAtMs!, lateMs: lag.lateMs() - lateAtSendMs! });
      });
      const joined = Promise.withResolvers<void>();
      const offJoined = sender.onTopicJoined(topic, (peerId) => peerId === receiver.peerId && joined.resolve());
      sender.subscribe(topic, () => {});
      await joined.promise;
      offJoined();
      let sent = 0;
      return {
        delays,
        publish: async () => {
          await sender.publish(topic, Buffer.from(`${sent++} ${performance.now()} ${lag.lateMs()}`));
        },
      };
    };
    return await body({ sender, receiver, link, copy, gossip });
  } finally {
    for (const lag of lags) lag.stop();
    await Promise.allSettled(nodes.map((node) => node.stop()));
    await link?.close();
    await Promise.allSettled(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  }
}
