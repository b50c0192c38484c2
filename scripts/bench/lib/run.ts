/** The frame every benchmark script shares: its work directory, the load check, and the exit code. */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runTool, spawnManaged, which, type ManagedProcess } from '../../../test/support/dicom-tools.ts';
import { TransferSyntax, writeSeriesToDir, type WrittenSeries } from '../../../test/support/synthetic-dicom.ts';
import { hostInfo, loadWarning } from './stats.ts';

export interface BenchStart {
  workDir: string;
  startedAt: string;
  hostAtStart: Record<string, unknown>;
}

/**
 * Removes a finished server's data directory and waits for the disk to settle (`sync`) before the next
 * server starts: the blocks it frees are discarded at the next journal commit (the file system is mounted
 * with `discard` here) and the last server's unsynced writes go to the disk meanwhile, which the next
 * server's first fsyncs otherwise paid for. Measured (2026-12-04, 4 runs each): Orthanc after storescp
 * 177-184 img/s with it against 158-171 without; pacs-mesh after Orthanc within the noise (215-230 against
 * 209-229).
 */
export async function removeAndSettle(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await runTool('sync', [], { timeoutMs: 120_000 });
}

/**
 * Checks storescu is installed (undefined when not, after saying so), makes a fresh work directory under
 * `--tmp` (or the system temp dir) removed at exit unless `--keep`, and warns when the machine is busy.
 */
export async function startBench(name: string, args: Map<string, string | true>): Promise<BenchStart | undefined> {
  if (which('storescu') === undefined) {
    console.error('storescu (DCMTK) is not installed: apt-get install dcmtk');
    return undefined;
  }
  const tmpBase = typeof args.get('tmp') === 'string' ? resolve(String(args.get('tmp'))) : tmpdir();
  const workDir = await mkdtemp(join(tmpBase, `pacs-mesh-bench-${name}-`));
  const keep = args.has('keep');
  process.on('exit', () => {
    if (!keep) rmSync(workDir, { recursive: true, force: true });
  });
  const hostAtStart = hostInfo();
  const busy = loadWarning();
  if (busy !== undefined) console.log(busy);
  return { workDir, startedAt: new Date().toISOString(), hostAtStart };
}

/** Runs a benchmark's main and exits with its code (1 on an unexpected error). */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}

export interface BenchSeriesOptions {
  count: number;
  rows: number;
  columns: number;
  /** Names the benchmark in the UIDs and descriptive attributes ("ingest", "mesh-ingest", ...). */
  label: string;
  patientId: string;
  startedAt: string;
}

/** The synthetic CT series every benchmark sends: explicit VR little endian, 16 bits, reproducible UIDs per run. */
export async function writeBenchSeries(dir: string, o: BenchSeriesOptions): Promise<WrittenSeries> {
  const started = performance.now();
  const series = await writeSeriesToDir(dir, {
    count: o.count,
    rows: o.rows,
    columns: o.columns,
    bitsAllocated: 16,
    transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
    uidSeed: `${o.label}-bench-${o.startedAt}`,
    patient: { id: o.patientId, name: `BENCH^${o.label.toUpperCase().replace(/-/g, '')}` },
    study: { description: `${o.label.toUpperCase()} BENCHMARK`, accession: o.patientId.replace('BENCH00', 'BENCH') },
    series: { modality: 'CT', description: 'SYNTHETIC CT', number: 1 },
  });
  const each = series.totalBytes / o.count;
  console.log(
    `generated ${o.count} CT instances ${o.rows}x${o.columns}x16 explicit VR LE, ${(each / 1e6).toFixed(3)} MB (${Math.round(each)} bytes) each, ` +
      `${(series.totalBytes / 1e6).toFixed(1)} MB (${series.totalBytes} bytes) total, in ${((performance.now() - started) / 1000).toFixed(1)} s (${dir})`,
  );
  return series;
}

/** storescu's version line, for the results. */
export async function storescuVersion(): Promise<string | undefined> {
  return (await runTool('storescu', ['--version'], { timeoutMs: 10_000 })).stdout.match(/\$dcmtk: (.*?) \$/)?.[1];
}

/**
 * Load for a benchmark: `loops` busy processes (`node -e "for(;;){}"`, named by `label` in ps) and this
 * process's own event loop kept busy `loopBusyMs` at every turn (as a peer's is with its mesh work). `stop` ends both.
 */
export function startLoad(label: string, loops: number, loopBusyMs: number): { stop(): Promise<void> } {
  const processes: ManagedProcess[] = [];
  for (let i = 0; i < loops; i++) processes.push(spawnManaged(process.execPath, ['-e', `/*${label}-load*/for(;;){}`]));
  let busy = loopBusyMs > 0;
  const spin = (): void => {
    if (!busy) return;
    const until = performance.now() + loopBusyMs;
    while (performance.now() < until);
    setImmediate(spin);
  };
  spin();
  return {
    async stop() {
      busy = false;
      for (const p of processes) await p.stop(1000).catch(() => undefined);
    },
  };
}
