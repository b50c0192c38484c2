/**
 * How long gossip (a leader's announcements, heartbeats) waits behind copies that start on new streams over
 * a slow link (hunt 124): two mesh nodes, the sender connected to the receiver through
 * test/support/throttle-proxy.ts (`--bytes-per-second`, 25 ms one way); the sender publishes a small message
 * every `--gossip-ms` throughout, and after 2 s of quiet starts `--copies` copies of `--copy-kb` at once,
 * each on a new stream, `--rounds` times one round after the other.
 *
 *   node --import tsx scripts/bench/new-streams-slow-link.ts [--bytes-per-second 100000] [--copies 3] [--copy-kb 400] [--rounds 2] [--gossip-ms 250]
 *
 * Prints one JSON line: the gossip delays (ms) before the copies, in each round's first 3 s (its new
 * streams' first windows) and after, the longest and the median, and how many waited over 2 s (the time
 * a follower forgets a silent leader).
 */
import '../../src/polyfill.ts';
import { parseArgs } from 'node:util';
import { throughSlowLink } from '../../test/support/slow-link-pair.ts';

const { values } = parseArgs({
  options: {
    'bytes-per-second': { type: 'string', default: '100000' },
    copies: { type: 'string', default: '3' },
    'copy-kb': { type: 'string', default: '400' },
    rounds: { type: 'string', default: '2' },
    'gossip-ms': { type: 'string', default: '250' },
  },
});
const bytesPerSecond = Number(values['bytes-per-second']);
const copies = Number(values.copies);
const copyBytes = Number(values['copy-kb']) * 1024;
const rounds = Number(values.rounds);
const gossipMs = Number(values['gossip-ms']);
/** A round's new streams are in their first window this long at most (256 KiB at 100 KB/s: 2.6 s). */
const startPhaseMs = 3000;
const leaderForgottenMs = 2000;
const topic = 'pacs-mesh/bench-new-streams/1';

await throughSlowLink({ bytesPerSecond }, async ({ link, copy, gossip }) => {
  const { delays, publish } = await gossip(topic);
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      await publish();
      await new Promise((resolve) => setTimeout(resolve, gossipMs));
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const roundStartsMs: number[] = [];
  const benchStartMs = performance.now();
  for (let round = 0; round < rounds; round++) {
    roundStartsMs.push(performance.now());
    await Promise.all(Array.from({ length: copies }, () => copy(copyBytes, 600_000)));
  }
  const endMs = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  publishing = false;
  await publisher;
  const inStart = (atMs: number): boolean => roundStartsMs.some((s) => atMs >= s && atMs < s + startPhaseMs);
  const summary = (list: number[]): { n: number; medianMs: number; maxMs: number; over2s: number } => {
    const sorted = [...list].sort((x, y) => x - y);
    return { n: sorted.length, medianMs: Math.round(sorted[Math.floor(sorted.length / 2)] ?? 0), maxMs: Math.round(sorted.at(-1) ?? 0), over2s: sorted.filter((d) => d > leaderForgottenMs).length };
  };
  const during = delays.filter(({ sentAtMs }) => sentAtMs >= benchStartMs && sentAtMs < endMs);
  console.log(JSON.stringify({
    bytesPerSecond,
    copies,
    copyBytes,
    rounds,
    copiesMs: Math.round(endMs - benchStartMs),
    linkBytes: link.stats.forwardBytes,
    quiet: summary(delays.filter(({ sentAtMs }) => sentAtMs < benchStartMs).map((d) => d.delayMs)),
    streamsStarting: summary(during.filter(({ sentAtMs }) => inStart(sentAtMs)).map((d) => d.delayMs)),
    afterwards: summary(during.filter(({ sentAtMs }) => !inStart(sentAtMs)).map((d) => d.delayMs)),
    lost: Math.round((endMs - benchStartMs) / gossipMs) - during.length,
    closed: link.stats.connectionsClosed,
    // Each message's send time from the first copy's start (s) and its delay (ms).
    series: during.map(({ sentAtMs, delayMs }) => `${((sentAtMs - benchStartMs) / 1000).toFixed(1)}:${Math.round(delayMs)}`).join(' '),
  }));
});
