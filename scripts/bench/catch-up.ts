/**
 * Catch-up benchmark (issue 3, acceptance 5b): how long a site that was down takes to catch up on the
 * instances it missed, compared with copying the same bytes over one libp2p stream between two peers.
 *
 *   node --import tsx scripts/bench/catch-up.ts [--count 1000] [--rows 128] [--columns 128] [--runs 3]
 *        [--sites 3] [--write-quorum 2] [--timeout-s 180] [--no-orthanc] [--no-floor] [--tmp <dir>] [--keep]
 *        [--log-level info|warn|error]
 *
 * Per run (a fresh three-site cluster each time):
 *   1. start sites A, B, C and wait until all see each other alive;
 *   2. stop C (SIGTERM) and wait until A and B no longer see it alive;
 *   3. store `--count` small instances at A over one storescu association; wait until A and B hold them;
 *   4. restart C with its data directory (same ports, same PeerId) and poll its /api/mesh `instances`
 *      every 20 ms: catch-up time = from the restart (spawn) until C holds all of them; also reported
 *      from the moment C was ready (GET /healthz 200, also polled every 20 ms), which leaves out the
 *      process start-up.
 * Then, with the cluster stopped, the same number of bytes is sent over one libp2p stream between two
 * mesh nodes in two processes (test/net/transfer-harness.ts: pnet + noise + yamux, 1 MiB chunks, SHA-256
 * checked; timed from stream open to the receiver's acknowledgement).
 * The store floor (skip with --no-floor): the same instances put as replicas into a fresh store from
 * memory, 256 at a time, without the network (lib/replica-floor.ts, a child with a peer's node flags):
 * what the restarted site spends storing alone; the target leaves the network what is left of 1.5x.
 * Orthanc has no equivalent (a single node has nothing to catch up from); for context only, the time
 * Orthanc takes to receive the same instances from storescu is printed (skip with --no-orthanc).
 * With --keep, each run's data directories stay in the work directory (LevelDB's LOG files are in each
 * site's store/blobs and store/catalog) with what each peer wrote (the last 32 KB, at --log-level, warn
 * by default) in <run dir>/<peer>.log.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureTransfer, type TransferResult } from '../../test/net/transfer-harness.ts';
import { runBenchChild } from './lib/store-path-run.ts';
import { sleep } from '../../test/support/dicom-tools.ts';
import { TransferSyntax } from '../../test/support/synthetic-dicom.ts';
import { startOrthanc, orthancVersion, type OrthancServer } from './lib/orthanc.ts';
import { pacsMeshVersion } from './lib/pacs-mesh.ts';
import { MeshCluster, aliveSet, firstLines, pollUntil as waitFor, sitesCpu, storescu, threeSites, tryStatus, type MeshPeer } from './lib/mesh-cluster.ts';
import { MB, fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench, writeBenchSeries } from './lib/run.ts';

const TARGET_RATIO = 1.5;
const replicaFloorScript = fileURLToPath(new URL('./lib/replica-floor.ts', import.meta.url));
/** How often C's /api/mesh is read while it catches up (cheap: the count is kept, not scanned). */
const statusPollMs = 20;

interface CatchUpRun {
  run: number;
  ok: boolean;
  error?: string;
  /** storescu of all instances into A (one association). */
  ingestMs?: number;
  /** After storescu, until B also held all of them. */
  replicatedToBMs?: number;
  /** C's count when it was stopped, and just after it came back. */
  cBeforeStop?: number;
  cAtReady?: number;
  /** From C's restart (spawn) until GET /healthz answered 200. */
  startupMs?: number;
  /** From C's restart until C held all instances. */
  catchUpFromRestartMs?: number;
  /** From C's readiness until C held all instances. */
  catchUpFromReadyMs?: number;
  /** C's instance count over time (ms since restart, count), one point per change. */
  progress?: Array<[number, number]>;
  /**
   * CPU time (ms, from /proc: Linux only) each site spent from C's readiness until C held all: its main
   * thread, and all its threads (V8's compiler and GC helpers, LevelDB's and libuv's threads). Less moved by
   * other work on the machine than the wall time, which on 2 cores is bound by the sum.
   */
  cpuFromReadyMs?: Record<string, { main: number; all: number }>;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 1000);
  const rows = intArg(args, 'rows', 128);
  const columns = intArg(args, 'columns', 128);
  const runs = intArg(args, 'runs', 3);
  const sites = intArg(args, 'sites', 3);
  const writeQuorum = intArg(args, 'write-quorum', 2);
  const timeoutMs = intArg(args, 'timeout-s', 180) * 1000;
  const withOrthanc = !args.has('no-orthanc');
  const withFloor = !args.has('no-floor');
  const keep = args.has('keep');
  const logLevel = args.get('log-level');
  if (logLevel !== undefined && logLevel !== 'info' && logLevel !== 'warn' && logLevel !== 'error') throw new Error('--log-level must be info, warn or error');
  if (sites < 2) throw new Error('--sites must be at least 2');
  const bench = await startBench('catch-up', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const inputDir = join(workDir, 'input');
  const series = await writeBenchSeries(inputDir, { count, rows, columns, label: 'catch-up', patientId: 'BENCH003', startedAt });

  // ------------------------------------------------------------------ catch-up runs
  const catchUps: CatchUpRun[] = [];
  let meshMessage: string | undefined;
  for (let run = 1; run <= runs; run++) {
    const rr: CatchUpRun = { run, ok: false };
    const rootDir = await mkdtemp(join(workDir, `mesh-run${run}-`));
    let cluster: MeshCluster | undefined;
    try {
      cluster = await MeshCluster.create({ rootDir, peers: threeSites(sites), writeQuorum, ...(logLevel !== undefined && { logLevel }) });
      await cluster.startAll();
      const whole = await cluster.waitWhole(30_000);
      if (!whole.ok) throw new Error(`the sites did not all see each other alive within 30 s: ${whole.detail}`);
      const a = cluster.peers[0]!;
      const b = cluster.peers[1]!;
      const c = cluster.peers[cluster.peers.length - 1]!;
      rr.cBeforeStop = (await tryStatus(c))?.instances;

      await cluster.terminate(c);
      const cGone = await waitFor(async () => {
        for (const p of cluster!.running()) {
          const s = await tryStatus(p, 1000);
          if (s === undefined || (c.peerId !== undefined && aliveSet(s).has(c.peerId))) return undefined;
        }
        return true;
      }, 20_000, 100);
      if (cGone === undefined) throw new Error(`A and B still see C alive 20 s after it stopped`);

      const ing = await storescu(a.dicomPort, [inputDir], { timeoutMs: timeoutMs });
      rr.ingestMs = Math.round(ing.elapsedMs);
      if (!ing.ok) throw new Error(`storescu into A: ${ing.timedOut ? 'timed out' : `exit ${ing.code}`}: ${ing.stderr.split('\n').filter(Boolean).slice(-4).join(' | ')}`);
      const settled = await waitFor(async () => {
        const [sa, sb] = await Promise.all([tryStatus(a, 2000), tryStatus(b, 2000)]);
        return sa !== undefined && sb !== undefined && sa.instances >= count && sb.instances >= count ? true : undefined;
      }, 60_000, 100);
      rr.replicatedToBMs = Math.round(performance.now() - ing.endedAt);
      if (settled === undefined) throw new Error(`A and B do not both hold ${count} instances 60 s after the store: A ${(await tryStatus(a))?.instances}, B ${(await tryStatus(b))?.instances}`);

      // Restart C and watch its count from the spawn on.
      const progress: Array<[number, number]> = [];
      const t0 = performance.now();
      let readyAt: number | undefined;
      let cpuAtReady = new Map<string, { main: number; all: number }>();
      let doneAt: number | undefined;
      let startError: unknown;
      const starting = cluster.start(c).then(
        () => {
          readyAt = performance.now();
          cpuAtReady = sitesCpu(cluster!.peers);
        },
        (e: unknown) => {
          startError = e;
        },
      );
      for (let i = 0; i < 1_000_000 && performance.now() - t0 < timeoutMs && startError === undefined; i++) {
        const s = await tryStatus(c, 1000);
        if (s !== undefined) {
          if (progress.length === 0 || progress[progress.length - 1]![1] !== s.instances) progress.push([Math.round(performance.now() - t0), s.instances]);
          if (readyAt !== undefined && rr.cAtReady === undefined) rr.cAtReady = s.instances;
          if (s.instances >= count) {
            doneAt = performance.now();
            const cpuAtDone = sitesCpu(cluster.peers);
            rr.cpuFromReadyMs = {};
            for (const [name, at] of cpuAtDone) {
              const before = cpuAtReady.get(name);
              if (before !== undefined) rr.cpuFromReadyMs[name] = { main: Math.round(at.main - before.main), all: Math.round(at.all - before.all) };
            }
            break;
          }
        }
        await sleep(statusPollMs);
      }
      await starting;
      if (startError !== undefined) throw new Error(`C did not restart: ${firstLines(startError, 8)}`);
      rr.progress = progress;
      rr.startupMs = readyAt === undefined ? undefined : Math.round(readyAt - t0);
      if (doneAt === undefined) throw new Error(`C holds ${progress[progress.length - 1]?.[1] ?? '?'} of ${count} instances ${timeoutMs / 1000} s after its restart`);
      rr.catchUpFromRestartMs = Math.round(doneAt - t0);
      rr.catchUpFromReadyMs = readyAt === undefined ? undefined : Math.max(0, Math.round(doneAt - readyAt));
      rr.ok = true;
    } catch (e) {
      rr.error = firstLines(e, 3);
      if (run === 1) meshMessage = rr.error;
      if (cluster !== undefined) {
        const c = cluster.peers[cluster.peers.length - 1] as MeshPeer | undefined;
        if (c !== undefined) rr.error += `\n   C output: ${cluster.output(c).split('\n').filter(Boolean).slice(-3).join(' | ')}`;
      }
    } finally {
      if (cluster !== undefined) await cluster.stopAll();
      if (!keep) await rm(rootDir, { recursive: true, force: true });
      else if (cluster !== undefined) for (const p of cluster.peers) await writeFile(join(rootDir, `${p.name}.log`), p.pastOutput);
    }
    catchUps.push(rr);
    console.log(
      rr.ok
        ? `catch-up run ${run}/${runs}: ingest at A ${fmt(rr.ingestMs! / 1000, 2)} s; C restarted, ready after ${fmt((rr.startupMs ?? NaN) / 1000, 2)} s ` +
            `(holding ${rr.cAtReady ?? '?'}), all ${count} after ${fmt(rr.catchUpFromRestartMs! / 1000, 2)} s from restart / ${fmt((rr.catchUpFromReadyMs ?? NaN) / 1000, 2)} s from ready`
        : `catch-up run ${run}/${runs}: FAILED: ${rr.error}`,
    );
    if (rr.cpuFromReadyMs !== undefined) {
      const cpu = Object.entries(rr.cpuFromReadyMs).map(([name, c]) => `${name} ${c.main} ms main thread / ${c.all} ms all threads`);
      console.log(`   CPU from C ready to C holding all: ${cpu.join('; ')}`);
    }
    if (!rr.ok && run === 1) {
      console.log('   (the mesh does not work here yet: the remaining catch-up runs are skipped)');
      break;
    }
  }

  // ------------------------------------------------------------------ one libp2p stream, same bytes
  const streams: Array<TransferResult & { ok: boolean }> = [];
  let streamError: string | undefined;
  for (let run = 1; run <= runs; run++) {
    try {
      const r = await measureTransfer(series.totalBytes, { timeoutMs: Math.max(60_000, timeoutMs) });
      const ok = r.senderSha256 === r.receiverSha256 && r.ackSha256 === r.senderSha256;
      streams.push({ ...r, ok });
      console.log(`stream copy run ${run}/${runs}: ${series.totalBytes} bytes in ${fmt(r.seconds, 3)} s (${fmt(r.mibps, 1)} MiB/s), hashes ${ok ? 'match' : 'DIFFER'}`);
    } catch (e) {
      streamError = firstLines(e, 3);
      console.log(`stream copy run ${run}/${runs}: FAILED: ${streamError}`);
      break;
    }
  }

  // ------------------------------------------------------------------ the store floor: C's store work alone
  const floors: number[] = [];
  let floorError: string | undefined;
  for (let run = 1; run <= runs && withFloor; run++) {
    const floorDir = await mkdtemp(join(workDir, `replica-floor-run${run}-`));
    try {
      const r = await runBenchChild<{ wallMs: number; stored: number }>(replicaFloorScript, [floorDir, inputDir], timeoutMs);
      const out = r.out;
      if (r.code !== 0 || out.stored !== count || out.wallMs === undefined) throw new Error(`exit ${r.code}, stored ${out.stored}/${count}: ${r.stderr.split('\n').slice(-3).join(' | ')}`);
      floors.push(out.wallMs);
      console.log(`store floor run ${run}/${runs}: ${count} replicas put in ${fmt(out.wallMs / 1000, 3)} s (no network)`);
    } catch (e) {
      floorError = firstLines(e, 3);
      console.log(`store floor run ${run}/${runs}: FAILED: ${floorError}`);
      break;
    } finally {
      await rm(floorDir, { recursive: true, force: true });
    }
  }

  // ------------------------------------------------------------------ Orthanc, for context
  let orthanc: { version?: string; ingestMs?: number; stored?: number; error?: string } | undefined;
  if (withOrthanc) {
    orthanc = { version: await orthancVersion().catch(() => undefined) };
    const dataDir = await mkdtemp(join(workDir, 'orthanc-'));
    let server: OrthancServer | undefined;
    try {
      server = await startOrthanc({ dataDir });
      const r = await storescu(server.dicomPort, [inputDir], { aeTitle: server.aeTitle, timeoutMs });
      orthanc.ingestMs = Math.round(r.elapsedMs);
      orthanc.stored = await server.countStored().catch(() => -1);
      if (!r.ok || orthanc.stored !== count) orthanc.error = `storescu exit ${r.code}, stored ${orthanc.stored}/${count}`;
    } catch (e) {
      orthanc.error = firstLines(e, 1);
    } finally {
      if (server !== undefined) await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  }

  // ------------------------------------------------------------------ report
  const good = catchUps.filter((r) => r.ok);
  const okStreams = streams.filter((s) => s.ok);
  const medRestart = good.length > 0 ? median(good.map((r) => r.catchUpFromRestartMs!)) : undefined;
  const readyVals = good.map((r) => r.catchUpFromReadyMs).filter((x): x is number => x !== undefined);
  const medReady = readyVals.length > 0 ? median(readyVals) : undefined;
  const medStartup = good.length > 0 ? median(good.map((r) => r.startupMs ?? NaN)) : undefined;
  const medStreamMs = okStreams.length > 0 ? median(okStreams.map((s) => s.seconds * 1000)) : undefined;
  const ratioRestart = medRestart !== undefined && medStreamMs !== undefined ? medRestart / medStreamMs : undefined;
  const ratioReady = medReady !== undefined && medStreamMs !== undefined ? medReady / medStreamMs : undefined;
  const medFloorMs = floors.length > 0 ? median(floors) : undefined;
  const ratioFloor = medFloorMs !== undefined && medStreamMs !== undefined ? medFloorMs / medStreamMs : undefined;
  const mbps = (ms: number | undefined) => (ms === undefined ? undefined : series.totalBytes / MB / (ms / 1000));
  const loadEnd = hostInfo().loadavg as number[];
  const pacsMesh = (await pacsMeshVersion()) ?? 'pacs-mesh';

  console.log(
    `\nCatch-up: ${count} missed instances (${rows}x${columns}x16, ${series.totalBytes} bytes = ${fmt(series.totalBytes / MB, 1)} MB), ` +
      `${sites} sites, --write-quorum ${writeQuorum}, stored at A while C was down; medians of ${good.length}/${runs} run(s); ${pacsMesh}\n`,
  );
  console.log(
    table(
      ['measure', 'seconds', 'MB/s', 'note'],
      [
        ['C restart -> C holds all (catch-up)', fmt(medRestart && medRestart / 1000, 2), fmt(mbps(medRestart), 1), good.length > 0 ? `spawn of C to its /api/mesh showing every instance (poll ${statusPollMs} ms)` : `FAILED: ${(meshMessage ?? '').split('\n')[0]!.slice(0, 100)}`],
        ['  of which C start-up (-> /healthz 200)', fmt(medStartup && medStartup / 1000, 2), '', 'node + store open + mesh join (from the dist/ bundle)'],
        ['C ready -> C holds all', fmt(medReady && medReady / 1000, 2), fmt(mbps(medReady), 1), 'catch-up without the process start-up'],
        ['one libp2p stream, same bytes', fmt(medStreamMs && medStreamMs / 1000, 3), fmt(mbps(medStreamMs), 1), okStreams.length > 0 ? 'test/net/transfer-harness.ts, stream open -> ack, pnet+noise+yamux' : `FAILED: ${streamError ?? ''}`],
        ...(withFloor
          ? [['store floor: the same replicas put, no network', fmt(medFloorMs && medFloorMs / 1000, 3), fmt(mbps(medFloorMs), 1), floors.length > 0 ? 'lib/replica-floor.ts: putReplica from memory, 256 at a time' : `FAILED: ${floorError ?? ''}`]]
          : []),
        ['Orthanc', '-', '', 'no equivalent: a single node has no peer to catch up from'],
        ...(orthanc !== undefined
          ? [['  (context) Orthanc ingest of the same', fmt(orthanc.ingestMs && orthanc.ingestMs / 1000, 2), fmt(mbps(orthanc.ingestMs), 1), orthanc.error ?? `one storescu association, ${orthanc.version ?? ''}`]]
          : []),
      ],
      [0, 3],
    ),
  );
  console.log('');
  const verdict = (r: number | undefined) => (r === undefined ? 'n/a' : `${r.toFixed(2)}x  (target <= ${TARGET_RATIO}x: ${r <= TARGET_RATIO ? 'MET' : 'NOT MET'})`);
  console.log(`catch-up from restart / stream copy: ${verdict(ratioRestart)}`);
  console.log(`catch-up from ready   / stream copy: ${verdict(ratioReady)}`);
  if (ratioFloor !== undefined) console.log(`store floor           / stream copy: ${ratioFloor.toFixed(2)}x  (storing alone, before any network: the target leaves the network ${(TARGET_RATIO - ratioFloor).toFixed(2)}x)`);
  console.log(`load average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);

  const file = await writeResult('catch-up', {
    benchmark: 'catch-up',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: loadEnd },
    params: { count, rows, columns, bitsAllocated: 16, transferSyntax: TransferSyntax.ExplicitVrLittleEndian, totalBytes: series.totalBytes, runs, sites, writeQuorum, units: { times: 'ms', mb: '10^6 bytes' } },
    pacsMesh,
    catchUp: catchUps,
    streamCopy: streams.map(({ bytes, seconds, mibps, senderPeakRssMiB, receiverPeakRssMiB, ok }) => ({ bytes, seconds, mibps, senderPeakRssMiB, receiverPeakRssMiB, ok })),
    streamError: streamError ?? null,
    orthanc: orthanc ?? null,
    orthancNote: 'Orthanc has no equivalent of a site catching up from its peers; its ingest of the same instances is given for context only',
    storeFloorMs: floors,
    storeFloorError: floorError ?? null,
    medians: { catchUpFromRestartMs: medRestart ?? null, catchUpFromReadyMs: medReady ?? null, startupMs: medStartup ?? null, streamCopyMs: medStreamMs ?? null, storeFloorMs: medFloorMs ?? null },
    ratios: { fromRestartVsStream: ratioRestart ?? null, fromReadyVsStream: ratioReady ?? null, storeFloorVsStream: ratioFloor ?? null },
    target: { maxRatio: TARGET_RATIO, metFromRestart: ratioRestart === undefined ? null : ratioRestart <= TARGET_RATIO, metFromReady: ratioReady === undefined ? null : ratioReady <= TARGET_RATIO },
  });
  console.log(`\nresults: ${file}`);
  return good.length === runs && okStreams.length === runs && floorError === undefined ? 0 : 1;
}

runBench(main);
