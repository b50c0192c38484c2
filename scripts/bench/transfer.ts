/**
 * Prints throughput and peak RSS of one transfer between two mesh nodes in two processes.
 *   node --import tsx scripts/bench/transfer.ts [MiB=1024] [runs=1]
 */
import { measureTransfer } from '../../test/net/transfer-harness.ts';

const mib = Number(process.argv[2] ?? 1024);
const runs = Number(process.argv[3] ?? 1);
for (let i = 0; i < runs; i++) {
  const r = await measureTransfer(mib * 1024 * 1024, { timeoutMs: 600_000 });
  const ok = r.senderSha256 === r.receiverSha256 && r.ackSha256 === r.senderSha256;
  console.log(`${mib} MiB: ${r.mibps.toFixed(1)} MiB/s (${r.seconds.toFixed(1)} s), peak RSS sender ${r.senderPeakRssMiB.toFixed(0)} MiB, receiver ${r.receiverPeakRssMiB.toFixed(0)} MiB, hashes ${ok ? 'match' : 'DIFFER'}, disconnects ${r.disconnects}, CPU per MiB sender ${(r.senderCpuMs / mib).toFixed(2)} ms, receiver ${(r.receiverCpuMs / mib).toFixed(2)} ms`);
}
