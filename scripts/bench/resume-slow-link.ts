/**
 * Bytes a copy costs over a slow link when its cut-through push is cut half-way (hunt 121): two mesh nodes
 * with the replication protocols, the receiver behind test/support/throttle-proxy.ts; a stored instance is
 * pushed, the push reset once `--cut-at` of it went through the link, or sooner if it stalled (the link
 * took nothing of it for the push's stallTimeoutMs: the sender gives it up), and the stored copy then
 * replicated over replicate-batch/1 at once, as custody does.
 *
 *   node --import tsx scripts/bench/resume-slow-link.ts [--size-mb 10] [--bytes-per-second 100000] [--cut-at 0.5]
 *
 * Prints one JSON line: bytes through the link towards the receiver during the push and the follow-up,
 * and their sum over the instance's size. Runs against any build of the protocols (it uses no new API).
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
import { PushStreams, ReplicaPush, defaultPushLimits } from '../../src/actors/storage/push.ts';
import { replicateBatchTo, serveReplication } from '../../src/actors/storage/replication.ts';
import { loopbackAddress } from '../../test/support/mesh-nodes.ts';
import { startThrottleProxy } from '../../test/support/throttle-proxy.ts';

const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '10' }, 'bytes-per-second': { type: 'string', default: '100000' }, 'cut-at': { type: 'string', default: '0.5' } } });
const sizeBytes = Math.round(Number(values['size-mb']) * 1_000_000);
const bytesPerSecond = Number(values['bytes-per-second']);
const cutAt = Number(values['cut-at']);

const swarmKey = generateSwarmKey();
const dirs = [await mkdtemp(join(tmpdir(), 'pacs-resume-')), await mkdtemp(join(tmpdir(), 'pacs-resume-'))];
const receiver = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[0]!, tuning: { peerAnnounceIntervalMs: 0 } });
const receiverStore = createReplicaStore({ path: join(dirs[0]!, 'store') });
await receiverStore.open();
const serving = await serveReplication({ node: receiver, store: receiverStore, siteName: 'site-b', log: silentLogger, onReplicaStored: () => undefined, onCustodyMessage: () => undefined });
const link = await startThrottleProxy({ targetPort: Number(/\/tcp\/(\d+)/.exec(loopbackAddress(receiver))![1]), bytesPerSecond, latencyMs: 25 });
const sender = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey, dataDir: dirs[1]!, tuning: { peerAnnounceIntervalMs: 0 } });
const senderStore = createReplicaStore({ path: join(dirs[1]!, 'store') });
await senderStore.open();
const streams = new PushStreams(sender);
try {
  await sender.dial(`/ip4/127.0.0.1/tcp/${link.port}/p2p/${receiver.peerId}`);
  const uid = '1.2.3.121.100';
  const bytes = randomBytes(sizeBytes);
  const writer = senderStore.beginWrite();
  await writer.write(bytes);
  const { entry } = await writer.commit(uid, (info) => ({
    sopInstanceUid: uid, sopClassUid: '1.2.840.10008.5.1.4.1.1.7', studyInstanceUid: '1.2.3', seriesInstanceUid: '1.2.3.1', patientId: 'P1',
    transferSyntaxUid: '1.2.840.10008.1.2.1', byteLength: info.byteLength, sha256: info.sha256, storedAtMs: Date.now(), blobId: info.blobId, attributes: [],
  }));
  const startMs = performance.now();
  const cut = new AbortController();
  const push = new ReplicaPush(streams, receiver.peerId, uid, defaultPushLimits, cut.signal);
  const writing = (async () => {
    for (let off = 0; off < bytes.length && !cut.signal.aborted; off += 64 * 1024) await push.write(bytes.subarray(off, off + 64 * 1024));
  })();
  // A push the link holds back for the sender's stallTimeoutMs fails by itself first (ERR_PUSH_STALLED).
  let pushError = '';
  void push.result.catch((error: unknown) => (pushError ||= String(error).slice(0, 120)));
  while (link.stats.forwardBytes < cutAt * sizeBytes && pushError === '') await new Promise((r) => setTimeout(r, 20));
  cut.abort(new Error('push cut'));
  await push.result.catch(() => undefined);
  await writing;
  const pushBytes = link.stats.forwardBytes;
  const cutMs = performance.now();
  const [outcome] = await replicateBatchTo(sender, receiver.peerId, senderStore, [entry]);
  const doneMs = performance.now();
  const followUpBytes = link.stats.forwardBytes - pushBytes;
  const kept = (serving as { partialCopies?: unknown }).partialCopies !== undefined;
  console.log(
    JSON.stringify({
      sizeBytes,
      bytesPerSecond,
      cutAt,
      outcome: outcome !== undefined && 'outcome' in outcome ? outcome.outcome : String(outcome !== undefined && 'error' in outcome ? outcome.error : 'none'),
      resumable: kept,
      pushError,
      pushBytes,
      followUpBytes,
      linkBytes: link.stats.forwardBytes,
      linkOverInstance: Number((link.stats.forwardBytes / sizeBytes).toFixed(3)),
      pushS: Number(((cutMs - startMs) / 1000).toFixed(1)),
      followUpS: Number(((doneMs - cutMs) / 1000).toFixed(1)),
      backwardBytes: link.stats.backwardBytes,
      connectionsClosed: link.stats.connectionsClosed,
    }),
  );
} finally {
  streams.stop();
  await serving.stop();
  await Promise.allSettled([receiver.stop(), sender.stop()]);
  await link.close();
  await Promise.allSettled([receiverStore.close(), senderStore.close()]);
  await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
}
