/**
 * Restart benchmark: how soon an archive that already holds instances is back at work after a restart,
 * pacs-mesh side by side with Orthanc in the same run.
 *
 *   node --import tsx scripts/bench/restart.ts [--count 3000] [--rows 64] [--columns 64] [--runs 3]
 *        [--synthetic-catalog N] [--no-orthanc] [--tmp <dir>] [--keep]
 *
 * 1. Each server gets a fresh data directory and `--count` small CT instances over one storescu
 *    association (timed, for context). pacs-mesh runs as a mesh peer (`--swarm-key`, one site), so its
 *    start-up includes what a mesh site does: custody loads its digest of every held instance.
 * 2. `--synthetic-catalog N` (pacs-mesh only) then adds N catalog entries straight into its catalog
 *    database (entries and indexes as a commit writes them, no instance bytes: a restart reads no bytes),
 *    to show how start-up grows with the archive. Orthanc has no equivalent short of storing N instances.
 * 3. `--runs` restarts of each server, interleaved: timed from the spawn until it is ready (pacs-mesh:
 *    GET /healthz 200, which a mesh peer answers once custody is loaded; Orthanc: GET /system) and until
 *    one new instance sent with storescu is acknowledged. Peak RSS of the server until then.
 * Ratios pacs-mesh / Orthanc of both times are printed (no target: a figure for operators).
 */
import { mkdtemp, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { getFreePort, runTool, startRssSampler } from '../../test/support/dicom-tools.ts';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';
import { catalogWriteOps, type CatalogPut } from '../../src/actors/storage/catalog.ts';
import type { CatalogEntry } from '../../src/actors/storage/catalog-types.ts';
import { startOrthanc, orthancVersion } from './lib/orthanc.ts';
import { pacsMeshVersion, startPacsMesh } from './lib/pacs-mesh.ts';
import type { BenchServer } from './lib/server.ts';
import { MiB, fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench, writeBenchSeries } from './lib/run.ts';

interface RestartRun {
  run: number;
  ok: boolean;
  error?: string;
  readyMs?: number;
  firstStoreMs?: number;
  peakRssBytes?: number;
}

interface ServerSide {
  id: 'pacs-mesh' | 'orthanc';
  name: string;
  version?: string;
  dataDir: string;
  held: number;
  ingestMs?: number;
  runs: RestartRun[];
  start(): Promise<BenchServer>;
}

/** N catalog entries of a synthetic archive (300 instances a study, 3,000 a patient), in batches. */
async function addSyntheticCatalog(catalogDir: string, count: number): Promise<number> {
  const db = new Level<string, Uint8Array>(catalogDir, { keyEncoding: 'utf8', valueEncoding: 'view' });
  await db.open();
  const started = performance.now();
  // About the attributes a CT header leaves in the catalog.
  const attributes = Array.from({ length: 40 }, (_, i) => ({ tag: 0x00080020 + i * 2, vr: 'LO', value: `synthetic value ${i}` }));
  let ops: CatalogPut[] = [];
  for (let i = 0; i < count; i++) {
    const study = `2.25.4242${Math.floor(i / 300)}`;
    const entry: CatalogEntry = {
      sopInstanceUid: `${study}.1.${i}`,
      sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
      studyInstanceUid: study,
      seriesInstanceUid: `${study}.1`,
      patientId: `SYN${Math.floor(i / 3000)}`,
      transferSyntaxUid: '1.2.840.10008.1.2.1',
      byteLength: 525_000,
      sha256: (i.toString(16).padStart(8, '0')).repeat(8),
      storedAtMs: Date.now(),
      blobId: `synthetic-${i}`,
      attributes,
    };
    ops.push(...catalogWriteOps(entry));
    if (ops.length >= 6000) {
      await db.batch(ops);
      ops = [];
    }
  }
  await db.batch(ops);
  await db.close();
  return performance.now() - started;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 3000);
  const rows = intArg(args, 'rows', 64);
  const columns = intArg(args, 'columns', 64);
  const runs = intArg(args, 'runs', 3);
  const synthetic = intArg(args, 'synthetic-catalog', 0);
  const withOrthanc = !args.has('no-orthanc');
  const bench = await startBench('restart', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;
  const inputDir = join(workDir, 'input');
  const series = await writeBenchSeries(inputDir, { count, rows, columns, label: 'restart', patientId: 'BENCH004', startedAt });
  const probeDir = join(workDir, 'probes');
  await writeBenchSeries(probeDir, { count: runs * 2, rows, columns, label: 'restart-probe', patientId: 'BENCH005', startedAt });
  const probes = (await readdir(probeDir)).sort().map((name) => join(probeDir, name));

  const swarmKeyFile = join(workDir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyFile);
  const meshDir = await mkdtemp(join(workDir, 'pacs-mesh-'));
  const sides: ServerSide[] = [
    {
      id: 'pacs-mesh',
      name: 'pacs-mesh',
      version: await pacsMeshVersion(),
      dataDir: meshDir,
      held: count,
      runs: [],
      start: async () => startPacsMesh({ dataDir: meshDir, extraArgs: ['--swarm-key', swarmKeyFile, '--p2p-port', String(await getFreePort()), '--log-level', 'warn'] }),
    },
  ];
  if (withOrthanc) {
    const orthancDir = await mkdtemp(join(workDir, 'orthanc-'));
    sides.push({ id: 'orthanc', name: 'Orthanc', version: await orthancVersion(), dataDir: orthancDir, held: count, runs: [], start: () => startOrthanc({ dataDir: orthancDir }) });
  }

  // ------------------------------------------------------------------ fill each archive once
  for (const side of sides) {
    const server = await side.start();
    try {
      const r = await runTool('storescu', ['-aet', 'BENCH', '-aec', server.aeTitle, '+sd', server.host, String(server.dicomPort), inputDir], { timeoutMs: 900_000, env: { TCP_NODELAY: '1' } });
      const stored = await server.countStored();
      if (r.code !== 0 || stored !== count) throw new Error(`${side.name}: storescu exit ${r.code}, ${stored}/${count} stored: ${r.stderr.slice(-500)}`);
      side.ingestMs = r.elapsedMs;
      console.log(`${side.name.padEnd(9)} filled with ${count} instances in ${fmt(r.elapsedMs / 1000, 1)} s`);
    } finally {
      await server.stop();
    }
  }
  if (synthetic > 0) {
    const ms = await addSyntheticCatalog(join(meshDir, 'store', 'catalog'), synthetic);
    sides[0]!.held += synthetic;
    console.log(`pacs-mesh catalog: ${synthetic} synthetic entries added in ${fmt(ms / 1000, 1)} s (now ${sides[0]!.held})`);
  }

  // ------------------------------------------------------------------ restarts, interleaved
  let probe = 0;
  for (let run = 1; run <= runs; run++) {
    for (const side of sides) {
      const rr: RestartRun = { run, ok: false };
      const spawnedAt = performance.now();
      let server: BenchServer | undefined;
      try {
        server = await side.start();
        rr.readyMs = performance.now() - spawnedAt;
        const sampler = startRssSampler(server.pid, { intervalMs: 50 });
        const r = await runTool('storescu', ['-aet', 'BENCH', '-aec', server.aeTitle, server.host, String(server.dicomPort), probes[probe++]!], { timeoutMs: 60_000, env: { TCP_NODELAY: '1' } });
        rr.firstStoreMs = performance.now() - spawnedAt;
        rr.peakRssBytes = sampler.stop().peakProcessBytes;
        if (r.code !== 0) throw new Error(`storescu exit ${r.code}: ${r.stderr.slice(-300)}`);
        const stored = await server.countStored();
        if (stored !== side.held + run) throw new Error(`${stored} instances after the restart, expected ${side.held + run}`);
        rr.ok = true;
      } catch (error) {
        rr.error = (error as Error).message;
      } finally {
        await server?.stop();
      }
      side.runs.push(rr);
      console.log(`${side.name.padEnd(9)} restart ${run}/${runs}: ready ${fmt(rr.readyMs, 0)} ms, first store acknowledged ${fmt(rr.firstStoreMs, 0)} ms, peak RSS ${fmt((rr.peakRssBytes ?? 0) / MiB)} MiB${rr.ok ? '' : `  FAILED: ${rr.error}`}`);
    }
  }

  // ------------------------------------------------------------------ report
  const medianOf = (side: ServerSide, pick: (r: RestartRun) => number | undefined) => {
    const values = side.runs.filter((r) => r.ok).map(pick).filter((v): v is number => v !== undefined);
    return values.length > 0 ? median(values) : undefined;
  };
  const figures = sides.map((side) => ({
    id: side.id,
    name: side.name,
    version: side.version,
    held: side.held,
    ingestSeconds: side.ingestMs === undefined ? undefined : side.ingestMs / 1000,
    readyMs: medianOf(side, (r) => r.readyMs),
    firstStoreMs: medianOf(side, (r) => r.firstStoreMs),
    peakRssBytes: medianOf(side, (r) => r.peakRssBytes),
    runs: side.runs,
  }));
  console.log(`\nRestart of an archive holding instances (${count} stored with storescu${synthetic > 0 ? ` + ${synthetic} synthetic catalog entries at pacs-mesh` : ''}), medians of ${runs}\n`);
  console.log(
    table(
      ['server', 'instances', 'ready ms', 'first store ms', 'peak RSS MiB', 'version'],
      figures.map((f) => [f.name, String(f.held), fmt(f.readyMs), fmt(f.firstStoreMs), fmt(f.peakRssBytes === undefined ? undefined : f.peakRssBytes / MiB), f.version ?? '']),
    ),
  );
  const [mesh, orthanc] = [figures.find((f) => f.id === 'pacs-mesh'), figures.find((f) => f.id === 'orthanc')];
  const ratio = (a?: number, b?: number) => (a === undefined || b === undefined || b === 0 ? undefined : a / b);
  const readyRatio = ratio(mesh?.readyMs, orthanc?.readyMs);
  const storeRatio = ratio(mesh?.firstStoreMs, orthanc?.firstStoreMs);
  if (orthanc) {
    console.log(`\npacs-mesh / Orthanc: ready ${readyRatio === undefined ? 'n/a' : `${readyRatio.toFixed(2)}x`}, first store ${storeRatio === undefined ? 'n/a' : `${storeRatio.toFixed(2)}x`} (time: lower is better)`);
  }
  const file = await writeResult('restart', {
    benchmark: 'restart',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: { count, rows, columns, runs, syntheticCatalog: synthetic, instanceBytes: series.totalBytes / count },
    servers: figures,
    ratios: { readyVsOrthanc: readyRatio ?? null, firstStoreVsOrthanc: storeRatio ?? null },
  });
  console.log(`\nresults: ${file}`);
  return figures.every((f) => f.runs.every((r) => r.ok)) ? 0 : 1;
}

runBench(main);
