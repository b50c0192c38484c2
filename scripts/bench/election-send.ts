/**
 * Election message benchmark: from the send of one election frame to its delivery at the other peer, the
 * way earlier builds sent it (a stream of its own over /pacs-mesh/election/1: open, frame, close) and the
 * way it goes now (the stream kept per peer, /pacs-mesh/election/2, election-streams.ts), interleaved
 * message by message between two nodes in this process (loopback, private network, noise, yamux).
 *
 *   node --import tsx scripts/bench/election-send.ts [--messages 300] [--load 0] [--loop-busy-ms 0] [--tmp <dir>] [--keep]
 *
 * `--load N` runs N busy loops and kills them at the end; `--loop-busy-ms M` keeps this process's event loop
 * busy M ms at every turn, as a peer's is with its mesh work (see election-write.ts).
 */
import '../../src/polyfill.ts';
import { join } from 'node:path';
import { createMeshNode } from '../../src/net/node.ts';
import { generateSwarmKey } from '../../src/net/swarm-key.ts';
import { ELECTION_PROTOCOL, startElectionStreams } from '../../src/actors/balancer/election-streams.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { loopbackAddress } from '../../test/support/mesh-nodes.ts';
import { fmt, hostInfo, intArg, median, parseArgs, percentile, table, writeResult } from './lib/stats.ts';
import { runBench, startBench, startLoad } from './lib/run.ts';

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const messages = intArg(args, 'messages', 300);
  const loadLoops = args.has('load') ? intArg(args, 'load', 1) : 0;
  const loopBusyMs = args.has('loop-busy-ms') ? intArg(args, 'loop-busy-ms', 1) : 0;
  const bench = await startBench('election-send', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const key = generateSwarmKey();
  const a = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey: key, dataDir: join(workDir, 'a'), bootstrap: [] });
  const b = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey: key, dataDir: join(workDir, 'b'), bootstrap: [loopbackAddress(a)] });
  let arrived: ((n: number) => void) | undefined;
  const sender = await startElectionStreams({ node: a, selfPeerId: a.peerId, log: silentLogger, deliver: () => 'accepted' });
  const receiver = await startElectionStreams({
    node: b,
    selfPeerId: b.peerId,
    log: silentLogger,
    deliver: (_from, frame) => {
      arrived?.(new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0));
      return 'accepted';
    },
  });
  const load = startLoad('election-send', loadLoops, loopBusyMs);
  const ownStreamMs: number[] = [];
  const keptMs: number[] = [];
  try {
    while (!a.connectedPeers().includes(b.peerId)) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, loadLoops > 0 ? 3000 : 500));
    for (let n = 1; n <= messages; n++) {
      const order = n % 2 === 0 ? (['own', 'kept'] as const) : (['kept', 'own'] as const);
      for (const way of order) {
        const frame = new Uint8Array(64);
        new DataView(frame.buffer).setUint32(0, n);
        const delivered = new Promise<void>((resolve) => {
          arrived = (m) => {
            if (m === n) resolve();
          };
        });
        const t0 = performance.now();
        if (way === 'kept') {
          sender.send(b.peerId, frame);
        } else {
          // The earlier builds' send (actor.ts before hunt 131).
          const stream = await a.openStream(b.peerId, ELECTION_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
          await stream.writer.writeFrame(frame);
          void stream.close({ signal: AbortSignal.timeout(10_000) }).catch((err: Error) => stream.abort(err));
        }
        await delivered;
        (way === 'kept' ? keptMs : ownStreamMs).push(performance.now() - t0);
      }
    }
  } finally {
    await load.stop();
    await sender.stop();
    await receiver.stop();
    await b.stop();
    await a.stop();
  }
  const loadEnd = hostInfo().loadavg as number[];
  const summary = (ms: number[]) => ({ medianMs: median(ms), p90Ms: percentile(ms, 90), p99Ms: percentile(ms, 99), maxMs: Math.max(...ms) });
  const rows = { ownStream: summary(ownStreamMs), kept: summary(keptMs), keptOpened: sender.stats().keptOpened };
  console.log(`\nElection messages, send to delivery: ${messages} each, interleaved; ${loadLoops} busy loops, own loop busy ${loopBusyMs} ms per turn\n`);
  console.log(
    table(
      ['way', 'median ms', 'p90 ms', 'p99 ms', 'max ms'],
      [
        ['a stream per message, /1 (before)', fmt(rows.ownStream.medianMs, 2), fmt(rows.ownStream.p90Ms, 2), fmt(rows.ownStream.p99Ms, 1), fmt(rows.ownStream.maxMs, 1)],
        [`kept stream, /2 (now; ${rows.keptOpened} opened)`, fmt(rows.kept.medianMs, 2), fmt(rows.kept.p90Ms, 2), fmt(rows.kept.p99Ms, 1), fmt(rows.kept.maxMs, 1)],
      ],
      [0],
    ),
  );
  console.log(`\nload average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);
  const file = await writeResult('election-send', { benchmark: 'election-send', startedAt, finishedAt: new Date().toISOString(), host: { ...hostAtStart, loadavgAtEnd: loadEnd }, params: { messages, loadLoops, loopBusyMs }, results: rows });
  console.log(`results: ${file}`);
  return 0;
}

runBench(main);
