/**
 * Two mesh nodes serving the replication protocols, the receiver's address behind a throttled link
 * (test/support/throttle-proxy.ts), each with its own store: for tests and benchmarks of copies and
 * custody messages over a slow link. `stop()` ends everything it started.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, type MeshNode } from '../../src/net/node.ts';
import { generateSwarmKey } from '../../src/net/swarm-key.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import type { CatalogEntry } from '../../src/actors/storage/catalog-types.ts';
import type { CustodyMessage } from '../../src/actors/storage/custody/messages.ts';
import { BulkInFlight } from '../../src/actors/storage/bulk-in-flight.ts';
import { PushStreams, defaultPushLimits } from '../../src/actors/storage/push.ts';
import { testCatalogEntry } from '../../src/actors/storage/fixtures/test-entry.ts';
import { createReplicaStore, type ReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { serveReplication, type ReplicationServer, type ReplicationServerInit } from '../../src/actors/storage/replication.ts';
import { loopbackAddress } from './mesh-nodes.ts';
import { startThrottleProxy, type ThrottleProxy } from './throttle-proxy.ts';

export interface ReplicationOverLink {
  sender: MeshNode;
  receiver: MeshNode;
  senderStore: ReplicaStore;
  receiverStore: ReplicaStore;
  /** Where the receiver's store lives (a test restarting the receiver opens a new store there). */
  receiverStorePath: string;
  /** Where the sender's store lives, to reopen it after a restart. */
  senderStorePath: string;
  /** The sender's push streams to the receiver. */
  streams: PushStreams;
  /** The sender's copies in flight (its pushes count there): pass it to replicateBatchTo and sendCustodyMessages as custody does. */
  bulkInFlight: BulkInFlight;
  link: ThrottleProxy;
  serving: ReplicationServer;
  /** Custody messages the receiver got, in order, with when (performance.now()). */
  messages: Array<{ message: CustodyMessage; atMs: number }>;
  /** Stores `bytes` as `uid` at the sender (a minimal catalog entry). */
  storeAtSender(uid: string, bytes: Uint8Array): Promise<CatalogEntry>;
  stop(): Promise<void>;
}

export async function startReplicationOverLink(init: {
  bytesPerSecond: number;
  latencyMs?: number;
  chunkBytes?: number;
  receiver?: Pick<ReplicationServerInit, 'partialCopyLimits'>;
}): Promise<ReplicationOverLink> {
  const swarmKey = generateSwarmKey();
  const dirs = [await mkdtemp(join(tmpdir(), 'pacs-link-')), await mkdtemp(join(tmpdir(), 'pacs-link-'))];
  const stoppers: Array<() => Promise<unknown>> = [() => Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })))];
  const stop = async (): Promise<void> => {
    for (const stopper of stoppers.splice(0).reverse()) await stopper().catch(() => undefined);
  };
  try {
    const start = async (dir: string): Promise<{ node: MeshNode; store: ReplicaStore }> => {
      const node = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dir, tuning: { peerAnnounceIntervalMs: 0 } });
      stoppers.push(() => node.stop());
      const store = createReplicaStore({ path: join(dir, 'store'), ...(init.chunkBytes !== undefined && { chunkBytes: init.chunkBytes }) });
      await store.open();
      stoppers.push(() => store.close());
      return { node, store };
    };
    const { node: receiver, store: receiverStore } = await start(dirs[0]!);
    const messages: ReplicationOverLink['messages'] = [];
    const serving = await serveReplication({
      node: receiver,
      store: receiverStore,
      siteName: 'site-b',
      log: silentLogger,
      onReplicaStored: () => undefined,
      onCustodyMessage: (_from, message) => messages.push({ message, atMs: performance.now() }),
      ...init.receiver,
    });
    stoppers.push(() => serving.stop());
    const link = await startThrottleProxy({ targetPort: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(receiver))![1]), bytesPerSecond: init.bytesPerSecond, latencyMs: init.latencyMs ?? 25 });
    stoppers.push(() => link.close());
    const { node: sender, store: senderStore } = await start(dirs[1]!);
    const bulkInFlight = new BulkInFlight();
    const streams = new PushStreams(sender, defaultPushLimits, bulkInFlight);
    stoppers.push(async () => {
      streams.stop();
      bulkInFlight.stop();
    });
    await sender.dial(`/ip4/127.0.0.1/tcp/${link.port}/p2p/${receiver.peerId}`);
    const storeAtSender = async (uid: string, bytes: Uint8Array): Promise<CatalogEntry> => {
      const writer = senderStore.beginWrite();
      await writer.write(bytes);
      const committed = await writer.commit(uid, testCatalogEntry(uid));
      return committed.entry;
    };
    return { sender, receiver, senderStore, receiverStore, receiverStorePath: join(dirs[0]!, 'store'), senderStorePath: join(dirs[1]!, 'store'), streams, bulkInFlight, link, serving, messages, storeAtSender, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
