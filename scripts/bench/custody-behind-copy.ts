/**
 * How long custody messages take to a site while a copy to it fills a slow link (hunt 121): two nodes,
 * the receiver behind test/support/throttle-proxy.ts; a stored instance goes over replicate-batch/1 while
 * a custody message is sent every second. Prints one JSON line per message, then a summary.
 *
 *   node --import tsx scripts/bench/custody-behind-copy.ts [--size-mb 4] [--bytes-per-second 100000] [--messages 20]
 */
import '../../src/polyfill.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createMeshNode } from '../../src/net/node.ts';
import { generateSwarmKey } from '../../src/net/swarm-key.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { replicateBatchTo, sendCustodyMessage, serveReplication } from '../../src/actors/storage/replication.ts';
import { loopbackAddress } from '../../test/support/mesh-nodes.ts';
import { startThrottleProxy } from '../../test/support/throttle-proxy.ts';

const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '4' }, 'bytes-per-second': { type: 'string', default: '100000' }, messages: { type: 'string', default: '20' }, copies: { type: 'string', default: '1' }, message: { type: 'string', default: 'ack' } } });
const copies = Number(values.copies);
const kind = values.message as 'ack' | 'digest' | 'leaves';
const sizeBytes = Math.round(Number(values['size-mb']) * 1_000_000);
const bytesPerSecond = Number(values['bytes-per-second']);
const messageCount = Number(values.messages);

const swarmKey = generateSwarmKey();
const dirs = [await mkdtemp(join(tmpdir(), 'pacs-custody-')), await mkdtemp(join(tmpdir(), 'pacs-custody-'))];
const arrivedAtMs = new Map<string, number>();
const receiver = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[0]!, tuning: { peerAnnounceIntervalMs: 0 } });
const receiverStore = createReplicaStore({ path: join(dirs[0]!, 'store') });
await receiverStore.open();
const serving = await serveReplication({
  node: receiver, store: receiverStore, siteName: 'site-b', log: silentLogger, onReplicaStored: () => undefined,
  onCustodyMessage: (_from, message) => {
    if (message.type === 'replicaAck') arrivedAtMs.set(message.sopInstanceUid, performance.now());
    else if (message.type !== 'repairKeys') arrivedAtMs.set(String(message.afterUid), performance.now());
  },
});
const link = await startThrottleProxy({ targetPort: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(receiver))![1]), bytesPerSecond, latencyMs: 25 });
const sender = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[1]!, tuning: { peerAnnounceIntervalMs: 0 } });
const senderStore = createReplicaStore({ path: join(dirs[1]!, 'store') });
await senderStore.open();
try {
  await sender.dial(`/ip4/127.0.0.1/tcp/${link.port}/p2p/${receiver.peerId}`);
  const entries = [];
  for (let c = 0; c < copies; c++) {
    const uid = `1.2.3.121.200.${c}`;
    const writer = senderStore.beginWrite();
    await writer.write(randomBytes(sizeBytes));
    entries.push((await writer.commit(uid, (info) => ({
      sopInstanceUid: uid, sopClassUid: '1.2.840.10008.5.1.4.1.1.7', studyInstanceUid: '1.2.3', seriesInstanceUid: '1.2.3.1', patientId: 'P1',
      transferSyntaxUid: '1.2.840.10008.1.2.1', byteLength: info.byteLength, sha256: info.sha256, storedAtMs: Date.now(), blobId: info.blobId, attributes: [],
    }))).entry);
  }
  const startMs = performance.now();
  const copy = Promise.all(entries.map((entry) => replicateBatchTo(sender, receiver.peerId, senderStore, [entry]))).then(() => performance.now() - startMs);
  const sends: Array<Promise<{ i: number; sentAtS: number; sendMs: number; arrivedMs: number | null; error?: string }>> = [];
  for (let i = 0; i < messageCount; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    const messageUid = `1.2.3.121.300.${i}`;
    const at = performance.now();
    sends.push(
      sendCustodyMessage(
        sender,
        receiver.peerId,
        kind === 'ack'
          ? { type: 'replicaAck', sopInstanceUid: messageUid, siteName: 'site-a' }
          : kind === 'digest'
            ? { type: 'repairDigest', buckets: Array.from({ length: 256 }, () => randomBytes(32).toString('hex')), afterUid: messageUid }
            : { type: 'repairLeaves', buckets: Array.from({ length: 32 }, (_, b) => b), leafHashes: randomBytes(32 * 256 * 32), afterUid: messageUid },
      ).then(
        () => ({ i, sentAtS: Math.round((at - startMs) / 100) / 10, sendMs: Math.round(performance.now() - at), arrivedMs: arrivedAtMs.has(messageUid) ? Math.round(arrivedAtMs.get(messageUid)! - at) : null }),
        (error: unknown) => ({ i, sentAtS: Math.round((at - startMs) / 100) / 10, sendMs: Math.round(performance.now() - at), arrivedMs: arrivedAtMs.has(messageUid) ? Math.round(arrivedAtMs.get(messageUid)! - at) : null, error: String(error).slice(0, 120) }),
      ),
    );
  }
  const results = await Promise.all(sends);
  for (const r of results) console.log(JSON.stringify(r));
  const copyMs = await copy;
  console.log(JSON.stringify({ sizeBytes, copies, kind, bytesPerSecond, copyS: Math.round(copyMs / 100) / 10, failed: results.filter((r) => r.error).length, sendMsMax: Math.max(...results.map((r) => r.sendMs)), arrivedMsMax: Math.max(...results.map((r) => r.arrivedMs ?? -1)) }));
} finally {
  await serving.stop();
  await Promise.allSettled([receiver.stop(), sender.stop()]);
  await link.close();
  await Promise.allSettled([receiverStore.close(), senderStore.close()]);
  await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
}
