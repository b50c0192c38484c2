/**
 * Leader-return benchmark: the best-ranked peer of three sites comes back (a restart after kill -9, or a
 * SIGCONT after SIGSTOP) and takes the lead back; how many terms that costs and how long the other two
 * sites are without a leader, optionally on a machine loaded by busy loops.
 *
 *   node --import tsx scripts/bench/leader-return.ts [--rounds 5] [--mode restart|stall] [--stall-s 15]
 *        [--down-s 3] [--load 0] [--observe-s 12] [--tmp <dir>] [--keep]
 *
 * Sites A, B, C with --priority 1, 2, 3 (A is the best-ranked). Each round: wait until A leads with every
 * peer alive, take A away (kill -9, or SIGSTOP for --stall-s), bring it back (restart with its data
 * directory, or SIGCONT), and read B's and C's "leader changed" log lines (with their times) for
 * --observe-s after the return (after its readiness, for a restart): the terms it took A to lead again, and
 * each one's time without a leader in that window.
 * `--load N` runs N busy loops (`node -e "for(;;){}"`) for the whole run and kills them at the end. The
 * peers run dist/ only while it is newer than src/ (bin/pacs-mesh.js): build first, and edit no source
 * while it runs, or restarted peers come up through tsx, far slower (seen: a minute at load 30).
 * Timings come from the peers' own log times (one clock: one machine).
 */
import { join } from 'node:path';
import { sleep, spawnManaged, type ManagedProcess } from '../../test/support/dicom-tools.ts';
import { MeshCluster, firstLines, isRunning, pollUntil, threeSites, tryStatus, type MeshPeer } from './lib/mesh-cluster.ts';
import { fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench } from './lib/run.ts';

interface LeaderEvent {
  atMs: number;
  term: number;
  leader: string | null;
}

interface Round {
  round: number;
  ok: boolean;
  error?: string;
  termBefore?: number;
  termAfter?: number;
  /** Terms A's return cost (termAfter - termBefore). */
  terms?: number;
  /** Per observer (B, C): time without a leader after the return. */
  leaderlessMs?: Record<string, number>;
  /** Return -> A leads again in every observer's view. */
  backMs?: number;
  loadavg1?: number;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const rounds = intArg(args, 'rounds', 5);
  const mode = String(args.get('mode') ?? 'restart');
  if (mode !== 'restart' && mode !== 'stall') throw new Error('--mode must be restart or stall');
  const stallS = intArg(args, 'stall-s', 15);
  const downS = intArg(args, 'down-s', 3);
  const loadLoops = intArg(args, 'load', 0);
  const observeMs = intArg(args, 'observe-s', 12) * 1000;
  const bench = await startBench('leader-return', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const specs = threeSites(3).map((sp, i) => ({ ...sp, priority: i + 1 }));
  const cluster = await MeshCluster.create({ rootDir: join(workDir, 'mesh'), peers: specs, logLevel: 'info' });
  const events = new Map<string, LeaderEvent[]>();
  const watch = (p: MeshPeer): void => {
    const list = events.get(p.name) ?? [];
    events.set(p.name, list);
    let rest = '';
    p.server?.process.child.stderr?.on('data', (b: Buffer) => {
      const lines = (rest + b.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.includes('"leader changed"')) continue;
        try {
          const j = JSON.parse(line) as { time: string; term: number; leader: string | null };
          list.push({ atMs: Date.parse(j.time), term: j.term, leader: j.leader });
        } catch {
          // not a log line of ours
        }
      }
    });
  };
  const loops: ManagedProcess[] = [];
  const roundsOut: Round[] = [];
  let fatal: string | undefined;
  try {
    await cluster.startAll();
    for (const p of cluster.peers) watch(p);
    for (let i = 0; i < loadLoops; i++) loops.push(spawnManaged(process.execPath, ['-e', '/*leader-return-load*/for(;;){}']));
    const [a, b, c] = cluster.peers as [MeshPeer, MeshPeer, MeshPeer];
    for (let round = 1; round <= rounds; round++) {
      const rd: Round = { round, ok: false };
      roundsOut.push(rd);
      try {
        // A takes the lead back once it has been alive a hand-over grace (6 s) at the latest.
        let before = await cluster.waitWhole(120_000, { requireLeader: true });
        for (let i = 0; i < 60 && before.ok && before.leader?.peerId !== a.peerId; i++) {
          await sleep(1000);
          before = await cluster.waitWhole(120_000, { requireLeader: true });
        }
        if (!before.ok || before.leader?.peerId !== a.peerId) throw new Error(`A does not lead with every peer alive: ${before.detail || cluster.nameOf(before.leader?.peerId)}`);
        await sleep(2000);
        let returnedAtMs: number;
        if (mode === 'restart') {
          await cluster.kill9(a);
          await sleep(downS * 1000);
          const led = await cluster.waitWhole(60_000, { requireLeader: true });
          if (!led.ok) throw new Error(`B and C elected nobody: ${led.detail}`);
          rd.termBefore = led.leader?.term;
          returnedAtMs = Date.now();
          await cluster.start(a);
          watch(a);
        } else {
          const pid = a.server!.process.child.pid!;
          process.kill(pid, 'SIGSTOP');
          try {
            await sleep(stallS * 1000);
            // A is still a running process: ask B and C alone.
            const led = await pollUntil(async () => {
              const [sb, sc] = await Promise.all([tryStatus(b, 1000), tryStatus(c, 1000)]);
              const lb = sb?.leader;
              return lb && lb.peerId !== a.peerId && sc?.leader?.peerId === lb.peerId ? lb : undefined;
            }, 60_000);
            if (led === undefined) throw new Error('B and C elected nobody while A stood still');
            rd.termBefore = led.term;
          } finally {
            returnedAtMs = Date.now();
            process.kill(pid, 'SIGCONT');
          }
        }
        await sleep(observeMs);
        // A restart's readiness counts in the window (its balancer runs before /healthz answers).
        const observedUntilMs = Date.now();
        rd.loadavg1 = (hostInfo().loadavg as number[])[0];
        rd.leaderlessMs = {};
        let backAtMs = returnedAtMs;
        for (const obs of [b, c]) {
          const list = (events.get(obs.name) ?? []).filter((e) => e.atMs >= returnedAtMs && e.atMs <= observedUntilMs);
          let nullSince: number | undefined;
          let total = 0;
          for (const e of list) {
            if (e.leader === null && nullSince === undefined) nullSince = e.atMs;
            if (e.leader !== null && nullSince !== undefined) {
              total += e.atMs - nullSince;
              nullSince = undefined;
            }
            rd.termAfter = Math.max(rd.termAfter ?? 0, e.term);
          }
          if (nullSince !== undefined) total += observedUntilMs - nullSince;
          rd.leaderlessMs[obs.name] = total;
          const last = list[list.length - 1];
          if (last?.leader === a.peerId) backAtMs = Math.max(backAtMs, last.atMs);
        }
        rd.terms = rd.termAfter !== undefined && rd.termBefore !== undefined ? rd.termAfter - rd.termBefore : undefined;
        rd.backMs = backAtMs - returnedAtMs;
        rd.ok = true;
      } catch (e) {
        rd.error = firstLines(e, 3);
      }
      console.log(`round ${round}/${rounds}: ${rd.ok ? `terms ${rd.termBefore} -> ${rd.termAfter} (${rd.terms}), leaderless B ${fmt(rd.leaderlessMs?.B)} ms, C ${fmt(rd.leaderlessMs?.C)} ms, A back after ${fmt(rd.backMs)} ms, load ${fmt(rd.loadavg1, 1)}` : `FAILED: ${rd.error}`}`);
      for (const p of cluster.peers) if (!isRunning(p)) await cluster.start(p).then(() => watch(p), () => undefined);
    }
  } catch (e) {
    fatal = firstLines(e, 8);
    console.log(`\n!! ${fatal}`);
  } finally {
    for (const l of loops) await l.stop(1000).catch(() => undefined);
    for (const p of cluster.peers) {
      const pid = p.server?.process.child.pid;
      if (pid !== undefined && isRunning(p)) process.kill(pid, 'SIGCONT');
    }
    await cluster.stopAll();
  }
  const done = roundsOut.filter((r) => r.ok);
  const worst = done.map((r) => Math.max(...Object.values(r.leaderlessMs ?? {})));
  console.log(`\nLeader return (${mode}${mode === 'stall' ? ` ${stallS} s` : ''}), ${loadLoops} busy loops\n`);
  console.log(table(['round', 'terms', 'leaderless B ms', 'leaderless C ms', 'A back ms', 'load', 'note'], roundsOut.map((r) => [String(r.round), fmt(r.terms), fmt(r.leaderlessMs?.B), fmt(r.leaderlessMs?.C), fmt(r.backMs), fmt(r.loadavg1, 1), r.error ?? ''])));
  console.log(`\nrounds with more than one new term: ${done.filter((r) => (r.terms ?? 0) > 1).length}/${done.length}; leaderless (worse observer) median ${fmt(median(worst))} ms, worst ${fmt(worst.length > 0 ? Math.max(...worst) : undefined)} ms`);
  const loadEnd = hostInfo().loadavg as number[];
  console.log(`load average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);
  const file = await writeResult('leader-return', { benchmark: 'leader-return', startedAt, finishedAt: new Date().toISOString(), host: { ...hostAtStart, loadavgAtEnd: loadEnd }, params: { rounds, mode, stallS, downS, loadLoops, observeMs }, error: fatal ?? null, rounds: roundsOut });
  console.log(`\nresults: ${file}`);
  return fatal === undefined && done.length === rounds ? 0 : 1;
}

runBench(main);
