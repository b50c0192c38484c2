/**
 * Ingest benchmark: one storescu association sends a synthetic CT series to each server.
 *
 *   node --import tsx scripts/bench/ingest.ts [--count 300] [--runs 3] [--servers storescp,orthanc,pacs-mesh]
 *                                            [--rows 512] [--columns 512] [--no-store-path] [--tmp <dir>] [--keep]
 *                                            [--ingest-buffer-mib N]
 *
 * For every run and server (interleaved: run 1 of each server, then run 2, ...): a fresh data dir and
 * a fresh server; storescu (TCP_NODELAY=1) sends all files over one association; the wall time of the storescu process is timed; the server's peak RSS is
 * sampled; the number of stored instances is checked with the server's own count. Medians are printed
 * with the ratios pacs-mesh/Orthanc and pacs-mesh/storescp, and everything is written to
 * scripts/bench/out/ingest-<timestamp>.json. A server that fails to start is skipped with a message.
 * Each run also times pacs-mesh's C-STORE path without the network (lib/store-path.ts): the ceiling
 * of its ingest with this store on this disk, printed beside the servers. `--ingest-buffer-mib N` runs
 * pacs-mesh and the store path with that ingest buffer (the peer's option) instead of the default.
 */
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool, startRssSampler } from '../../test/support/dicom-tools.ts';
import { TransferSyntax } from '../../test/support/synthetic-dicom.ts';
import { SERVER_FACTORIES, type BenchServer } from './lib/index.ts';
import { timeStorePath } from './lib/store-path-run.ts';
import { MB, MiB, choicesArg, fmt, hostInfo, imagesPerSecRatio, ingestRates, intArg, medianFigures, parseArgs, table, writeResult, type IngestFigures } from './lib/stats.ts';
import { removeAndSettle, runBench, startBench, storescuVersion, writeBenchSeries } from './lib/run.ts';

const TARGET_VS_ORTHANC = 1.5;
const CLIENT_AE = 'BENCH';

interface RunResult {
  run: number;
  wallMs: number;
  imagesPerSec: number;
  mbPerSec: number;
  peakRssBytes: number;
  peakRssPid: number;
  stored: number;
  expected: number;
  ok: boolean;
  storescuCode: number | null;
  error?: string;
}

interface ServerResult {
  id: string;
  name: string;
  version?: string;
  aeTitle?: string;
  status: 'ok' | 'skipped' | 'failed';
  message?: string;
  runs: RunResult[];
  median?: IngestFigures;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 300);
  const runs = intArg(args, 'runs', 3);
  const rows = intArg(args, 'rows', 512);
  const columns = intArg(args, 'columns', 512);
  const storescuTimeoutMs = intArg(args, 'timeout-s', 600) * 1000;
  const ingestBufferMiB = args.has('ingest-buffer-mib') ? intArg(args, 'ingest-buffer-mib', 32, 4) : undefined;
  const bufferNote = ingestBufferMiB !== undefined ? `, --ingest-buffer-mib ${ingestBufferMiB}` : '';
  const serverIds = choicesArg(args, 'servers', Object.keys(SERVER_FACTORIES), ['storescp', 'orthanc', 'pacs-mesh']);
  const bench = await startBench('ingest', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const inputDir = join(workDir, 'input');
  const series = await writeBenchSeries(inputDir, { count, rows, columns, label: 'ingest', patientId: 'BENCH001', startedAt });
  const instanceBytes = series.totalBytes / count;
  const storescuVersionLine = await storescuVersion();

  const results: ServerResult[] = [];
  for (const id of serverIds) {
    const factory = SERVER_FACTORIES[id]!;
    const version = await factory.version().catch(() => undefined);
    results.push({ id, name: factory.name, version: version !== undefined && id === 'pacs-mesh' ? `${version}${bufferNote}` : version, status: 'ok', runs: [] });
  }
  // Runs are interleaved (run 1 of every server, then run 2, ...) so that a change of machine load
  // affects every server alike.
  const didNotStart = new Set<string>();
  const storePath: ServerResult | undefined = args.has('no-store-path') ? undefined : { id: 'store-path', name: 'store path', version: `no network: lib/store-path.ts${bufferNote}`, status: 'ok', runs: [] };
  for (let run = 1; run <= runs; run++) {
    for (const sr of results) {
      if (didNotStart.has(sr.id)) continue;
      const factory = SERVER_FACTORIES[sr.id]!;
      const dataDir = await mkdtemp(join(workDir, `${sr.id}-run${run}-`));
      let server: BenchServer | undefined;
      try {
        try {
          server = await factory.start({ dataDir, ...(sr.id === 'pacs-mesh' && ingestBufferMiB !== undefined ? { extraArgs: ['--ingest-buffer-mib', String(ingestBufferMiB)] } : {}) });
        } catch (e) {
          sr.status = run === 1 ? 'skipped' : 'failed';
          sr.message = `${factory.name} failed to start: ${(e as Error).message}`;
          console.log(`\n!! ${sr.status.toUpperCase()} ${factory.name}: ${(e as Error).message.split('\n').slice(0, 12).join('\n   ')}`);
          didNotStart.add(sr.id);
          continue;
        }
        sr.aeTitle = server.aeTitle;
        const sampler = startRssSampler(server.pid, { intervalMs: 50 });
        const r = await runTool(
          'storescu',
          ['-aet', CLIENT_AE, '-aec', server.aeTitle, '+sd', server.host, String(server.dicomPort), inputDir],
          { timeoutMs: storescuTimeoutMs, env: { TCP_NODELAY: '1' } },
        );
        // Give a server that acknowledges before committing a short, bounded chance to finish.
        let stored = await server.countStored().catch(() => -1);
        for (let i = 0; i < 20 && stored < count && stored >= 0; i++) {
          await new Promise((res) => setTimeout(res, 100));
          stored = await server.countStored().catch(() => -1);
        }
        const rss = sampler.stop();
        const ok = r.code === 0 && !r.timedOut && stored === count;
        const rr: RunResult = {
          run,
          wallMs: Math.round(r.elapsedMs),
          ...ingestRates(count, series.totalBytes, r.elapsedMs),
          peakRssBytes: rss.peakProcessBytes,
          peakRssPid: rss.peakPid,
          stored,
          expected: count,
          ok,
          storescuCode: r.code,
        };
        if (!ok) {
          rr.error = r.timedOut ? 'storescu timed out' : `storescu exit ${r.code}, stored ${stored}/${count}: ${r.stderr.split('\n').slice(-5).join(' | ')}`;
          sr.status = 'failed';
          sr.message = rr.error;
        }
        sr.runs.push(rr);
        logRun(factory.name, rr, runs);
      } finally {
        if (server !== undefined) await server.stop();
        await removeAndSettle(dataDir);
      }
    }
    if (storePath !== undefined) {
      const sp = await timeStorePath({ workDir, inputDir, run, count, copies: 1, timeoutMs: storescuTimeoutMs, ...(ingestBufferMiB !== undefined ? { ingestBufferMiB } : {}) });
      const rr: RunResult = {
        run,
        wallMs: sp.wallMs,
        ...ingestRates(count, series.totalBytes, sp.wallMs),
        peakRssBytes: sp.peakRssBytes,
        peakRssPid: sp.peakRssPid,
        stored: sp.stored,
        expected: count,
        ok: sp.ok,
        storescuCode: null,
        ...(sp.error !== undefined ? { error: sp.error } : {}),
      };
      storePath.runs.push(rr);
      if (!rr.ok) {
        storePath.status = 'failed';
        storePath.message = rr.error;
      }
      logRun(storePath.name, rr, runs);
    }
  }
  if (storePath !== undefined) results.push(storePath);
  for (const sr of results) {
    const good = sr.runs.filter((x) => x.ok);
    if (good.length > 0) sr.median = medianFigures(good);
  }

  // ------------------------------------------------------------------ report
  const vsOrthanc = imagesPerSecRatio(results, 'pacs-mesh', 'orthanc');
  const vsStorescp = imagesPerSecRatio(results, 'pacs-mesh', 'storescp');
  const storePathVsOrthanc = imagesPerSecRatio(results, 'store-path', 'orthanc');
  const vsStorePath = imagesPerSecRatio(results, 'pacs-mesh', 'store-path');

  console.log(`\nIngest: ${count} x ${(instanceBytes / MB).toFixed(3)} MB CT, one storescu association (${storescuVersionLine ?? 'storescu'}), TCP_NODELAY=1, medians of ${runs} run(s), fresh server per run\n`);
  console.log(
    table(
      ['server', 'ok runs', 'wall s', 'images/s', 'MB/s', 'peak RSS MiB', 'version / note'],
      results.map((r) => [
        r.name,
        `${r.runs.filter((x) => x.ok).length}/${runs}`,
        fmt(r.median && r.median.wallMs / 1000, 2),
        fmt(r.median?.imagesPerSec),
        fmt(r.median?.mbPerSec),
        fmt(r.median && r.median.peakRssBytes / MiB),
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${(r.message ?? '').split('\n')[0]!.slice(0, 80)}`,
      ]),
    ),
  );
  console.log('');
  console.log(`pacs-mesh / Orthanc : ${vsOrthanc === undefined ? 'n/a' : `${vsOrthanc.toFixed(2)}x`}   (target >= ${TARGET_VS_ORTHANC}x: ${vsOrthanc === undefined ? 'n/a' : vsOrthanc >= TARGET_VS_ORTHANC ? 'MET' : 'NOT MET'})`);
  console.log(`pacs-mesh / storescp: ${vsStorescp === undefined ? 'n/a' : `${vsStorescp.toFixed(2)}x`}   (storescp = practical limit)`);
  if (storePathVsOrthanc !== undefined) console.log(`store path / Orthanc: ${storePathVsOrthanc.toFixed(2)}x   (pacs-mesh's C-STORE path without the network: the ceiling with this store)`);
  if (vsStorePath !== undefined) console.log(`pacs-mesh / store path: ${vsStorePath.toFixed(2)}x`);

  const file = await writeResult('ingest', {
    benchmark: 'ingest',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: {
      count,
      runs,
      rows,
      columns,
      bitsAllocated: 16,
      transferSyntax: TransferSyntax.ExplicitVrLittleEndian,
      instanceBytes,
      totalBytes: series.totalBytes,
      client: { tool: 'storescu', version: storescuVersionLine, callingAe: CLIENT_AE, associations: 1, env: { TCP_NODELAY: '1' } },
      units: { mb: '10^6 bytes', rss: 'bytes (VmHWM/VmRSS max of the server process)' },
    },
    servers: results,
    ratios: { pacsMeshVsOrthanc: vsOrthanc ?? null, pacsMeshVsStorescp: vsStorescp ?? null, storePathVsOrthanc: storePathVsOrthanc ?? null, pacsMeshVsStorePath: vsStorePath ?? null },
    target: { pacsMeshVsOrthanc: TARGET_VS_ORTHANC, met: vsOrthanc === undefined ? null : vsOrthanc >= TARGET_VS_ORTHANC },
  });
  console.log(`\nresults: ${file}`);
  // Non-zero when a server that started then failed its verification; a skipped server is not an error.
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

function logRun(name: string, rr: RunResult, runs: number): void {
  console.log(
    `${name.padEnd(10)} run ${rr.run}/${runs}: ${fmt(rr.wallMs / 1000, 2)} s, ${fmt(rr.imagesPerSec)} img/s, ` +
      `${fmt(rr.mbPerSec)} MB/s, peak RSS ${fmt(rr.peakRssBytes / MiB)} MiB, stored ${rr.stored}/${rr.expected}${rr.ok ? '' : `  FAILED: ${rr.error}`}`,
  );
}


runBench(main);
