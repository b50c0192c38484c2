/**
 * Mesh ingest benchmark (issue 3, acceptance 5a): one storescu association sends a synthetic CT series
 * to site A of a three-site pacs-mesh with --write-quorum 2, side by side in the same run with Orthanc
 * (single node) and DCMTK storescp (the practical limit).
 *
 *   node --import tsx scripts/bench/mesh-ingest.ts [--count 300] [--runs 3] [--rows 512] [--columns 512]
 *        [--sites 3] [--write-quorum 2] [--servers storescp,orthanc,mesh] [--replication-timeout-s 120]
 *        [--timeout-s 600] [--no-floor] [--tmp <dir>] [--keep]
 *
 * Runs are interleaved (run 1 of every server, then run 2, ...) so that a change of machine load
 * affects every server alike. Every run gets fresh data directories and freshly started servers (for
 * the mesh: a fresh cluster whose members all see each other alive before the clock starts).
 * Timed: the storescu process, spawn to exit. For the mesh, /api/mesh `instances` of every site is also
 * polled every 100 ms from the start of storescu, giving the time at which each site held the whole
 * series (the last one is the replication figure). Peak RSS is sampled every 50 ms for every peer.
 *
 * The floor (skip with --no-floor): each run also times two and three copies of pacs-mesh's C-STORE path
 * without the network (lib/store-path-run.ts), each into a store of its own, at once: the durable copies
 * the sites must make, competing for this machine's cores and disk as the sites do. A copy a site receives
 * costs somewhat less (no file read, no header parsing), so these are close to a mesh's floor, a little
 * below it: two copies for write quorum 2, three with every site storing during the ingest.
 */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { sleep, startRssSampler, type RssSampler } from '../../test/support/dicom-tools.ts';
import { TransferSyntax } from '../../test/support/synthetic-dicom.ts';
import { orthancFactory, storescpFactory, type BenchServer, type BenchServerFactory } from './lib/index.ts';
import { pacsMeshVersion } from './lib/pacs-mesh.ts';
import { MeshCluster, firstLines, sitesCpu, storescu, threeSites, tryStatus, type MeshPeer } from './lib/mesh-cluster.ts';
import { MB, MiB, choicesArg, fmt, hostInfo, imagesPerSecRatio, ingestRates, intArg, median, medianFigures, parseArgs, table, writeResult, type IngestFigures } from './lib/stats.ts';
import { removeAndSettle, runBench, startBench, storescuVersion, writeBenchSeries } from './lib/run.ts';
import { timeStorePath } from './lib/store-path-run.ts';

const TARGET_VS_ORTHANC = 1.0;
const SERVER_IDS = ['storescp', 'orthanc', 'mesh'] as const;
type ServerId = (typeof SERVER_IDS)[number];
/** Rows of lib/store-path-run.ts: N copies of the C-STORE path at once, without the network. */
type FloorId = 'store-path-x2' | 'store-path-x3';

interface RunResult {
  run: number;
  ok: boolean;
  wallMs: number;
  imagesPerSec: number;
  mbPerSec: number;
  /** The server (for the mesh: the receiving peer, site A). */
  peakRssBytes: number;
  stored: number;
  error?: string;
  mesh?: {
    /** Peak RSS of every peer, by name. */
    peakRssBytes: Record<string, number>;
    /** Time from storescu start until each site held all instances (ms), null when it never did. */
    completeAtMs: Record<string, number | null>;
    /** The last of those: every site holds the whole series. */
    allSitesAtMs: number | null;
    /** allSitesAtMs minus the storescu wall time: how long replication lagged behind the acknowledgements. */
    lagAfterStorescuMs: number | null;
    finalCounts: Record<string, number | null>;
    clusterStartMs: number;
    /**
     * CPU per instance (ms, from /proc: Linux only) of each site, main thread and all threads: from storescu's
     * start to its end (the ingest), and to every site whole (the ingest and the copies that lagged).
     * Less moved by other work on the machine than the wall time.
     */
    cpuPerInstanceMs?: Record<string, { ingestMain: number; ingestAll: number; wholeMain: number | null; wholeAll: number | null }>;
  };
}

interface ServerResult<Id = ServerId> {
  id: Id;
  name: string;
  version?: string;
  status: 'ok' | 'skipped' | 'failed';
  message?: string;
  runs: RunResult[];
  median?: IngestFigures & {
    otherPeersPeakRssBytes?: number;
    allSitesAtMs?: number;
    lagAfterStorescuMs?: number;
  };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 300);
  const runs = intArg(args, 'runs', 3);
  const rows = intArg(args, 'rows', 512);
  const columns = intArg(args, 'columns', 512);
  const sites = intArg(args, 'sites', 3);
  const writeQuorum = intArg(args, 'write-quorum', 2);
  const replicationTimeoutMs = intArg(args, 'replication-timeout-s', 120) * 1000;
  const storescuTimeoutMs = intArg(args, 'timeout-s', 600) * 1000;
  const serverIds = choicesArg(args, 'servers', SERVER_IDS);
  const bench = await startBench('mesh-ingest', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const inputDir = join(workDir, 'input');
  const series = await writeBenchSeries(inputDir, { count, rows, columns, label: 'mesh-ingest', patientId: 'BENCH002', startedAt });
  const instanceBytes = series.totalBytes / count;
  const storescuVersionLine = await storescuVersion();

  const factories: Record<'storescp' | 'orthanc', BenchServerFactory> = { storescp: storescpFactory, orthanc: orthancFactory };
  const results: ServerResult[] = [];
  for (const id of serverIds as ServerId[]) {
    const name = id === 'mesh' ? `pacs-mesh ${sites} sites wq${writeQuorum}` : factories[id].name;
    const version = id === 'mesh' ? await pacsMeshVersion() : await factories[id].version().catch(() => undefined);
    results.push({ id, name, version, status: 'ok', runs: [] });
  }
  const floors: Array<ServerResult<FloorId> & { copies: number }> = args.has('no-floor')
    ? []
    : ([2, 3] as const)
        .filter((copies) => copies <= sites)
        .map((copies) => ({ id: `store-path-x${copies}` as const, copies, name: `store path x${copies} at once`, version: 'floor, no network: lib/store-path-run.ts', status: 'ok' as const, runs: [] }));

  const measure = (sr: ServerResult<ServerId | FloorId>, rr: RunResult) => {
    sr.runs.push(rr);
    if (!rr.ok) {
      sr.status = 'failed';
      sr.message = rr.error;
    }
    const m = rr.mesh;
    console.log(
      `${sr.name.padEnd(24)} run ${rr.run}/${runs}: ${fmt(rr.wallMs / 1000, 2)} s, ${fmt(rr.imagesPerSec)} img/s, ${fmt(rr.mbPerSec)} MB/s, ` +
        `peak RSS ${fmt(rr.peakRssBytes / MiB)} MiB, stored ${rr.stored}/${count}` +
        (m ? `, all sites at ${m.allSitesAtMs === null ? 'never' : `${fmt(m.allSitesAtMs / 1000, 2)} s`} (per site: ${Object.entries(m.completeAtMs).map(([k, v]) => `${k} ${v === null ? '-' : fmt(v / 1000, 2)}`).join(', ')}), other peers' RSS ${Object.entries(m.peakRssBytes).slice(1).map(([k, v]) => `${k} ${fmt(v / MiB)}`).join(', ')} MiB` : '') +
        (rr.ok ? '' : `  FAILED: ${rr.error}`),
    );
    if (m?.cpuPerInstanceMs !== undefined) {
      const sites = Object.entries(m.cpuPerInstanceMs);
      const total = (pick: (c: (typeof sites)[number][1]) => number | null): string => {
        const values = sites.map(([, c]) => pick(c));
        return values.some((v) => v === null) ? '-' : fmt(values.reduce<number>((a, v) => a + v!, 0), 1);
      };
      console.log(
        `   CPU ms per instance, main thread / all threads: during the ingest ${sites.map(([k, c]) => `${k} ${fmt(c.ingestMain, 1)}/${fmt(c.ingestAll, 1)}`).join(', ')} (all ${total((c) => c.ingestAll)}); ` +
          `until every site whole ${sites.map(([k, c]) => `${k} ${c.wholeMain === null ? '-' : fmt(c.wholeMain, 1)}/${c.wholeAll === null ? '-' : fmt(c.wholeAll, 1)}`).join(', ')} (all ${total((c) => c.wholeAll)})`,
      );
    }
  };

  for (let run = 1; run <= runs; run++) {
    for (const sr of results) {
      if (sr.status === 'skipped') continue;
      if (sr.id === 'mesh') {
        const rr = await runMesh(sr, run);
        if (rr !== undefined) measure(sr, rr);
        continue;
      }
      const factory = factories[sr.id];
      const dataDir = await mkdtemp(join(workDir, `${sr.id}-run${run}-`));
      let server: BenchServer | undefined;
      try {
        try {
          server = await factory.start({ dataDir });
        } catch (e) {
          sr.status = run === 1 ? 'skipped' : 'failed';
          sr.message = `${factory.name} failed to start: ${firstLines(e, 1)}`;
          console.log(`\n!! ${sr.status.toUpperCase()} ${factory.name}: ${firstLines(e, 12)}`);
          continue;
        }
        const sampler = startRssSampler(server.pid, { intervalMs: 50 });
        const r = await storescu(server.dicomPort, [inputDir], { aeTitle: server.aeTitle, timeoutMs: storescuTimeoutMs });
        let stored = await server.countStored().catch(() => -1);
        for (let i = 0; i < 20 && stored < count && stored >= 0; i++) {
          await sleep(100);
          stored = await server.countStored().catch(() => -1);
        }
        const rss = sampler.stop();
        const ok = r.ok && stored === count;
        measure(sr, {
          run,
          ok,
          wallMs: Math.round(r.elapsedMs),
          ...ingestRates(count, series.totalBytes, r.elapsedMs),
          peakRssBytes: rss.peakProcessBytes,
          stored,
          ...(ok ? {} : { error: r.timedOut ? 'storescu timed out' : `storescu exit ${r.code}, stored ${stored}/${count}: ${r.stderr.split('\n').slice(-4).join(' | ')}` }),
        });
      } finally {
        if (server !== undefined) await server.stop();
        await removeAndSettle(dataDir);
      }
    }
    for (const floor of floors) {
      const sp = await timeStorePath({ workDir, inputDir, run, count, copies: floor.copies, timeoutMs: storescuTimeoutMs });
      measure(floor, {
        run,
        ok: sp.ok,
        wallMs: sp.wallMs,
        ...ingestRates(count, series.totalBytes, sp.wallMs),
        peakRssBytes: sp.peakRssBytes,
        stored: sp.stored,
        ...(sp.error !== undefined ? { error: sp.error } : {}),
      });
    }
  }
  const reported: Array<ServerResult<ServerId | FloorId>> = [...results, ...floors];

  /** One mesh run: fresh cluster, storescu into A, replication watched at every site. */
  async function runMesh(sr: ServerResult, run: number): Promise<RunResult | undefined> {
    const rootDir = await mkdtemp(join(workDir, `mesh-run${run}-`));
    let cluster: MeshCluster | undefined;
    const samplers: Array<[MeshPeer, RssSampler]> = [];
    try {
      const tc = performance.now();
      try {
        cluster = await MeshCluster.create({ rootDir, peers: threeSites(sites), writeQuorum });
        await cluster.startAll();
        const whole = await cluster.waitWhole(30_000);
        if (!whole.ok) throw new Error(`the ${sites} sites did not all see each other alive within 30 s: ${whole.detail}`);
      } catch (e) {
        sr.status = run === 1 ? 'skipped' : 'failed';
        sr.message = `mesh did not start: ${firstLines(e, 1)}`;
        console.log(`\n!! ${sr.status.toUpperCase()} ${sr.name}: ${firstLines(e, 12)}`);
        return undefined;
      }
      const clusterStartMs = performance.now() - tc;
      const peers = cluster.peers;
      const a = peers[0]!;
      for (const p of peers) samplers.push([p, startRssSampler(p.server!.pid, { intervalMs: 50 })]);

      // Replication watch: from the start of storescu, every 100 ms, until every site holds `count`.
      const completeAt: Record<string, number | null> = Object.fromEntries(peers.map((p) => [p.name, null]));
      const lastCount: Record<string, number | null> = Object.fromEntries(peers.map((p) => [p.name, null]));
      let storescuEnd: number | undefined;
      let cpuAtWhole: ReturnType<typeof sitesCpu> | undefined;
      const cpuAtStart = sitesCpu(peers);
      const tStart = performance.now();
      const watch = (async () => {
        for (let i = 0; i < 1_000_000; i++) {
          const now = performance.now();
          if (storescuEnd !== undefined && now > storescuEnd + replicationTimeoutMs) return;
          if (now - tStart > storescuTimeoutMs + replicationTimeoutMs) return;
          await Promise.all(
            peers.map(async (p) => {
              if (completeAt[p.name] !== null) return;
              const s = await tryStatus(p, 2000);
              if (s === undefined) return;
              lastCount[p.name] = s.instances;
              if (s.instances >= count) completeAt[p.name] = performance.now() - tStart;
            }),
          );
          if (peers.every((p) => completeAt[p.name] !== null)) {
            cpuAtWhole = sitesCpu(peers);
            return;
          }
          await sleep(100);
        }
      })();
      const r = await storescu(a.dicomPort, [inputDir], { timeoutMs: storescuTimeoutMs });
      storescuEnd = performance.now();
      const cpuAtStorescuEnd = sitesCpu(peers);
      await watch;
      const cpuPerInstanceMs: NonNullable<NonNullable<RunResult['mesh']>['cpuPerInstanceMs']> = {};
      for (const [name, end] of cpuAtStorescuEnd) {
        const start = cpuAtStart.get(name);
        const whole = cpuAtWhole?.get(name);
        if (start === undefined) continue;
        const per = (ms: number): number => Math.round((ms / count) * 10) / 10;
        cpuPerInstanceMs[name] = {
          ingestMain: per(end.main - start.main),
          ingestAll: per(end.all - start.all),
          wholeMain: whole === undefined ? null : per(whole.main - start.main),
          wholeAll: whole === undefined ? null : per(whole.all - start.all),
        };
      }
      const rss = Object.fromEntries(samplers.map(([p, s]) => [p.name, s.stop().peakProcessBytes]));
      samplers.length = 0;
      const final = Object.fromEntries(await Promise.all(peers.map(async (p) => [p.name, (await tryStatus(p, 3000))?.instances ?? null] as const)));
      const allAt = peers.every((p) => completeAt[p.name] !== null) ? Math.max(...peers.map((p) => completeAt[p.name]!)) : null;
      const storedA = final[a.name] ?? -1;
      const ok = r.ok && storedA === count && allAt !== null;
      const error = ok
        ? undefined
        : !r.ok
          ? `storescu ${r.timedOut ? 'timed out' : `exit ${r.code}`}: ${r.stderr.split('\n').filter(Boolean).slice(-4).join(' | ')}`
          : `instances per site after ${replicationTimeoutMs / 1000} s: ${JSON.stringify(final)} (expected ${count} everywhere)`;
      return {
        run,
        ok,
        wallMs: Math.round(r.elapsedMs),
        ...ingestRates(count, series.totalBytes, r.elapsedMs),
        peakRssBytes: rss[a.name] ?? 0,
        stored: storedA,
        ...(error !== undefined ? { error } : {}),
        mesh: {
          peakRssBytes: rss,
          completeAtMs: completeAt,
          allSitesAtMs: allAt,
          lagAfterStorescuMs: allAt === null ? null : allAt - r.elapsedMs,
          finalCounts: final,
          clusterStartMs: Math.round(clusterStartMs),
          cpuPerInstanceMs,
        },
      };
    } finally {
      for (const [, s] of samplers) s.stop();
      if (cluster !== undefined) await cluster.stopAll();
      await removeAndSettle(rootDir);
    }
  }

  for (const sr of reported) {
    const good = sr.runs.filter((x) => x.ok);
    if (good.length === 0) continue;
    const others = good.map((x) => (x.mesh ? Math.max(...Object.values(x.mesh.peakRssBytes).slice(1)) : Number.NaN));
    sr.median = {
      ...medianFigures(good),
      ...(sr.id === 'mesh'
        ? {
            otherPeersPeakRssBytes: median(others),
            allSitesAtMs: median(good.map((x) => x.mesh!.allSitesAtMs!)),
            lagAfterStorescuMs: median(good.map((x) => x.mesh!.lagAfterStorescuMs!)),
          }
        : {}),
    };
  }

  // ------------------------------------------------------------------ report
  const vsOrthanc = imagesPerSecRatio(reported, 'mesh', 'orthanc');
  const vsStorescp = imagesPerSecRatio(reported, 'mesh', 'storescp');
  const floor2VsOrthanc = imagesPerSecRatio(reported, 'store-path-x2', 'orthanc');
  const floor3VsOrthanc = imagesPerSecRatio(reported, 'store-path-x3', 'orthanc');
  const vsFloor3 = imagesPerSecRatio(reported, 'mesh', 'store-path-x3');
  const loadEnd = hostInfo().loadavg as number[];

  console.log(
    `\nMesh ingest: ${count} x ${(instanceBytes / MB).toFixed(3)} MB CT (${(series.totalBytes / MB).toFixed(1)} MB), one storescu association ` +
      `(${storescuVersionLine ?? 'storescu'}), TCP_NODELAY=1, medians of ${runs} interleaved run(s), fresh servers per run`,
  );
  console.log(`mesh: ${sites} sites of one peer each, --write-quorum ${writeQuorum}, storescu -> site A; "all sites" = time from storescu start until every site's /api/mesh shows ${count} instances\n`);
  console.log(
    table(
      ['server', 'ok runs', 'wall s', 'images/s', 'MB/s', 'peak RSS MiB', 'other peers MiB', 'all sites s', 'version / note'],
      reported.map((r) => [
        r.name,
        `${r.runs.filter((x) => x.ok).length}/${runs}`,
        fmt(r.median && r.median.wallMs / 1000, 2),
        fmt(r.median?.imagesPerSec),
        fmt(r.median?.mbPerSec),
        fmt(r.median && r.median.peakRssBytes / MiB),
        r.median?.otherPeersPeakRssBytes !== undefined ? fmt(r.median.otherPeersPeakRssBytes / MiB) : '',
        r.median?.allSitesAtMs !== undefined ? fmt(r.median.allSitesAtMs / 1000, 2) : '',
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${(r.message ?? '').split('\n')[0]!.slice(0, 90)}`,
      ]),
    ),
  );
  console.log('');
  console.log(`mesh / Orthanc : ${vsOrthanc === undefined ? 'n/a' : `${vsOrthanc.toFixed(2)}x`}   (target >= ${TARGET_VS_ORTHANC}x: ${vsOrthanc === undefined ? 'n/a' : vsOrthanc >= TARGET_VS_ORTHANC ? 'MET' : 'NOT MET'})`);
  console.log(`mesh / storescp: ${vsStorescp === undefined ? 'n/a' : `${vsStorescp.toFixed(2)}x`}   (storescp = practical limit)`);
  const ratio = (x: number | undefined) => (x === undefined ? 'n/a' : `${x.toFixed(2)}x`);
  if (floors.length > 0) {
    console.log(`store path x2 / Orthanc: ${ratio(floor2VsOrthanc)}   (two durable copies at once, no network: near the floor of a write-quorum-2 mesh here)`);
    console.log(`store path x3 / Orthanc: ${ratio(floor3VsOrthanc)}   (three at once: near the floor when every site stores during the ingest)`);
    console.log(`mesh / store path x3   : ${ratio(vsFloor3)}   (what the network path leaves of that floor)`);
  }
  console.log(`load average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);

  const file = await writeResult('mesh-ingest', {
    benchmark: 'mesh-ingest',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: loadEnd },
    params: {
      count,
      runs,
      rows,
      columns,
      bitsAllocated: 16,
      transferSyntax: TransferSyntax.ExplicitVrLittleEndian,
      instanceBytes,
      totalBytes: series.totalBytes,
      mesh: { sites, writeQuorum, ingestSite: 'A' },
      client: { tool: 'storescu', version: storescuVersionLine, associations: 1, env: { TCP_NODELAY: '1' } },
      units: { mb: '10^6 bytes', rss: 'bytes (VmHWM/VmRSS max of the process)', times: 'ms' },
    },
    servers: reported,
    ratios: {
      meshVsOrthanc: vsOrthanc ?? null,
      meshVsStorescp: vsStorescp ?? null,
      storePathX2VsOrthanc: floor2VsOrthanc ?? null,
      storePathX3VsOrthanc: floor3VsOrthanc ?? null,
      meshVsStorePathX3: vsFloor3 ?? null,
    },
    target: { meshVsOrthanc: TARGET_VS_ORTHANC, met: vsOrthanc === undefined ? null : vsOrthanc >= TARGET_VS_ORTHANC },
  });
  console.log(`\nresults: ${file}`);
  return reported.some((r) => r.status === 'failed') ? 1 : 0;
}

runBench(main);
