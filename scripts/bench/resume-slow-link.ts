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
 * and their sum over the instance's size. Runs against older builds of the protocols too (with this
 * script's test/support/replication-over-link.ts copied there).
 */
import '../../src/polyfill.ts';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ReplicaPush, defaultPushLimits } from '../../src/actors/storage/push.ts';
import { replicateBatchTo } from '../../src/actors/storage/replication.ts';
import { startReplicationOverLink } from '../../test/support/replication-over-link.ts';

const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '10' }, 'bytes-per-second': { type: 'string', default: '100000' }, 'cut-at': { type: 'string', default: '0.5' } } });
const sizeBytes = Math.round(Number(values['size-mb']) * 1_000_000);
const bytesPerSecond = Number(values['bytes-per-second']);
const cutAt = Number(values['cut-at']);

const { sender, receiver, senderStore, streams, link, serving, storeAtSender, stop } = await startReplicationOverLink({ bytesPerSecond });
try {
  const uid = '1.2.3.121.100';
  const bytes = randomBytes(sizeBytes);
  const entry = await storeAtSender(uid, bytes);
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
  await stop();
}
