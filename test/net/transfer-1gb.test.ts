/**
 * 1 GiB over one stream between two mesh nodes in two processes (pnet + noise + yamux on 127.0.0.1).
 * Run on its own: node --import tsx --test test/net/transfer-1gb.test.ts   (TRANSFER_MIB=... to change the size)
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { measureTransfer } from './transfer-harness.ts';

const MIB = Number(process.env.TRANSFER_MIB ?? 1024);
const RSS_LIMIT_MIB = 300;

it(`transfers ${MIB} MiB across processes with a flat memory profile`, { timeout: 360_000 }, async () => {
  const r = await measureTransfer(MIB * 1024 * 1024, { timeoutMs: 300_000 });
  console.log(`# transfer ${MIB} MiB in ${r.seconds.toFixed(1)} s = ${r.mibps.toFixed(1)} MiB/s; peak RSS sender ${r.senderPeakRssMiB.toFixed(0)} MiB, receiver ${r.receiverPeakRssMiB.toFixed(0)} MiB; disconnects ${r.disconnects}`);
  assert.equal(r.receiverSha256, r.senderSha256, 'receiver hash');
  assert.equal(r.ackSha256, r.senderSha256, 'ack hash');
  assert.equal(r.disconnects, 0, 'the connection must survive the transfer (ping monitor under load)');
  assert.ok(r.senderPeakRssMiB < RSS_LIMIT_MIB, `sender peak RSS ${r.senderPeakRssMiB} MiB`);
  assert.ok(r.receiverPeakRssMiB < RSS_LIMIT_MIB, `receiver peak RSS ${r.receiverPeakRssMiB} MiB`);
});
