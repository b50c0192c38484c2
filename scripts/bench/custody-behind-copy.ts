/**
 * How long custody messages take to a site while a copy to it fills a slow link (hunt 121): two nodes,
 * the receiver behind test/support/throttle-proxy.ts; `--copies` stored instances go over replicate-batch/1 while
 * a custody message is sent every second. Prints one JSON line per message, then a summary.
 *
 *   node --import tsx scripts/bench/custody-behind-copy.ts [--copies 1] [--size-mb 4] [--bytes-per-second 100000] [--messages 20] [--message ack|digest|leaves]
 */
import '../../src/polyfill.ts';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { replicateBatchTo, sendCustodyMessage } from '../../src/actors/storage/replication.ts';
import { startReplicationOverLink } from '../../test/support/replication-over-link.ts';

const { values } = parseArgs({ options: { 'size-mb': { type: 'string', default: '4' }, 'bytes-per-second': { type: 'string', default: '100000' }, messages: { type: 'string', default: '20' }, copies: { type: 'string', default: '1' }, message: { type: 'string', default: 'ack' } } });
const copies = Number(values.copies);
const kind = values.message as 'ack' | 'digest' | 'leaves';
const sizeBytes = Math.round(Number(values['size-mb']) * 1_000_000);
const bytesPerSecond = Number(values['bytes-per-second']);
const messageCount = Number(values.messages);

const { sender, receiver, senderStore, messages, bulkInFlight, storeAtSender, stop } = await startReplicationOverLink({ bytesPerSecond });
// When each message arrived, by the UID it carries (afterUid for the repair messages).
const arrivedAtMs = {
  has: (uid: string) => messages.some(({ message }) => ('sopInstanceUid' in message ? message.sopInstanceUid : 'afterUid' in message ? message.afterUid : undefined) === uid),
  get: (uid: string) => messages.find(({ message }) => ('sopInstanceUid' in message ? message.sopInstanceUid : 'afterUid' in message ? message.afterUid : undefined) === uid)?.atMs,
};
try {
  const entries = [];
  for (let c = 0; c < copies; c++) entries.push(await storeAtSender(`1.2.3.121.200.${c}`, randomBytes(sizeBytes)));
  const startMs = performance.now();
  const copy = Promise.all(entries.map((entry) => replicateBatchTo(sender, receiver.peerId, senderStore, [entry], { bulkInFlight }))).then(() => performance.now() - startMs);
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
        { bulkInFlight },
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
  await stop();
}
