/**
 * Election-record write benchmark: how long one durable write of the balancer's election record takes, the
 * way earlier builds wrote it (writeFileDurably: temporary file, write, fsync, close, rename, open and
 * fsync of the directory) and the way it is written now (openTwoSlotFile: pwrite + fdatasync on a file
 * kept open), interleaved write by write so that both meet the same disk and the same load.
 *
 *   node --import tsx scripts/bench/election-write.ts [--writes 200] [--load 0] [--loop-busy-ms 0] [--tmp <dir>] [--keep]
 *
 * `--load N` runs N busy loops (`node -e "for(;;){}"`) and kills them at the end. `--loop-busy-ms M` keeps
 * this process's own event loop busy (M ms of work at every turn), as a peer's loop is with its mesh work:
 * each file-system call of a write waits for a turn, so its cost grows with the number of calls.
 */
import { join } from 'node:path';
import { writeFileDurably, createTwoSlotFile } from '../../src/durable-file.ts';
import { fmt, hostInfo, intArg, median, parseArgs, percentile, table, writeResult } from './lib/stats.ts';
import { runBench, startBench, startLoad } from './lib/run.ts';

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const writes = intArg(args, 'writes', 200);
  const loadLoops = args.has('load') ? intArg(args, 'load', 1) : 0;
  const loopBusyMs = args.has('loop-busy-ms') ? intArg(args, 'loop-busy-ms', 1) : 0;
  const bench = await startBench('election-write', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const load = startLoad('election-write', loadLoops, loopBusyMs);
  const renamePath = join(workDir, 'balancer-election.json');
  const slots = await createTwoSlotFile(join(workDir, 'balancer-election.rec'), new Uint8Array(0));
  const record = (term: number): string => JSON.stringify({ currentTerm: term, votedFor: '12D3KooWJoxZPh3dAX44YDbgATyAcuuyWpy9M5aneE5rNPnc7yJ9' });
  const renameMs: number[] = [];
  const slotsMs: number[] = [];
  try {
    // Let the busy loops take their share first.
    await new Promise((r) => setTimeout(r, loadLoops > 0 ? 3000 : 0));
    for (let term = 1; term <= writes; term++) {
      // Alternating which goes first, so neither always follows the other's sync.
      const order = term % 2 === 0 ? (['rename', 'slots'] as const) : (['slots', 'rename'] as const);
      for (const kind of order) {
        const t0 = performance.now();
        if (kind === 'rename') await writeFileDurably(renamePath, `${record(term)}\n`);
        else await slots.write(new Uint8Array(Buffer.from(record(term))));
        (kind === 'rename' ? renameMs : slotsMs).push(performance.now() - t0);
      }
    }
  } finally {
    await load.stop();
    await slots.close();
  }
  const loadEnd = hostInfo().loadavg as number[];
  const summary = (ms: number[]) => ({ medianMs: median(ms), p90Ms: percentile(ms, 90), maxMs: Math.max(...ms), meanMs: ms.reduce((a, b) => a + b, 0) / ms.length });
  const rows = { rename: summary(renameMs), slots: summary(slotsMs) };
  console.log(`\nElection record writes: ${writes} each, interleaved; ${loadLoops} busy loops, own loop busy ${loopBusyMs} ms per turn\n`);
  console.log(
    table(
      ['way', 'median ms', 'p90 ms', 'max ms', 'mean ms', 'calls'],
      [
        ['temporary file + rename (before)', fmt(rows.rename.medianMs, 2), fmt(rows.rename.p90Ms, 2), fmt(rows.rename.maxMs, 1), fmt(rows.rename.meanMs, 2), '9'],
        ['two slots in place (now)', fmt(rows.slots.medianMs, 2), fmt(rows.slots.p90Ms, 2), fmt(rows.slots.maxMs, 1), fmt(rows.slots.meanMs, 2), '2'],
      ],
      [0],
    ),
  );
  console.log(`\nload average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);
  const file = await writeResult('election-write', { benchmark: 'election-write', startedAt, finishedAt: new Date().toISOString(), host: { ...hostAtStart, loadavgAtEnd: loadEnd }, params: { writes, loadLoops, loopBusyMs }, results: rows });
  console.log(`results: ${file}`);
  return 0;
}

runBench(main);
