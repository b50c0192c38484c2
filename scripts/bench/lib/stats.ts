/** Small helpers shared by the benchmarks: medians, formatting, tables, CLI args, result files. */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_OUT_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'out');

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The value below which `p` percent of `values` lie (nearest rank). */
export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

/** What an ingest run reports, and its medians over the successful runs of one server. */
export interface IngestFigures {
  wallMs: number;
  imagesPerSec: number;
  mbPerSec: number;
  peakRssBytes: number;
}

export function medianFigures(runs: readonly IngestFigures[]): IngestFigures {
  return {
    wallMs: median(runs.map((x) => x.wallMs)),
    imagesPerSec: median(runs.map((x) => x.imagesPerSec)),
    mbPerSec: median(runs.map((x) => x.mbPerSec)),
    peakRssBytes: median(runs.map((x) => x.peakRssBytes)),
  };
}

/** images/s and MB/s of `count` instances of `totalBytes` in all, stored in `wallMs`. */
export function ingestRates(count: number, totalBytes: number, wallMs: number): Pick<IngestFigures, 'imagesPerSec' | 'mbPerSec'> {
  return { imagesPerSec: count / (wallMs / 1000), mbPerSec: totalBytes / MB / (wallMs / 1000) };
}

/** images/s of server `a` over server `b` (their medians), undefined when either has none. */
export function imagesPerSecRatio<Id>(results: ReadonlyArray<{ id: Id; median?: IngestFigures }>, a: Id, b: Id): number | undefined {
  const x = results.find((r) => r.id === a)?.median;
  const y = results.find((r) => r.id === b)?.median;
  return x && y ? x.imagesPerSec / y.imagesPerSec : undefined;
}

/** 1 MB = 10^6 bytes (throughput); memory is printed in MiB. */
export const MB = 1_000_000;
export const MiB = 1024 * 1024;

export function fmt(n: number | undefined, digits = 0): string {
  return n === undefined || Number.isNaN(n) ? '-' : n.toFixed(digits);
}

/** A plain-text table; columns listed in `leftAligned` (default: the first and the last) are left-aligned. */
export function table(headers: string[], rows: string[][], leftAligned: number[] = [0, headers.length - 1]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (leftAligned.includes(i) ? c.padEnd(i === headers.length - 1 ? 0 : widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** Parses `--name value` and `--flag` arguments. */
export function parseArgs(argv: string[]): Map<string, string | true> {
  const m = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) {
      m.set(a.slice(2, eq), a.slice(eq + 1));
    } else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) {
      m.set(a.slice(2), argv[++i]!);
    } else {
      m.set(a.slice(2), true);
    }
  }
  return m;
}

export function intArg(args: Map<string, string | true>, name: string, def: number, min = 1): number {
  const v = args.get(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} needs an integer of at least ${min}`);
  return n;
}

/** `--name a,b,c` as a list (`defaults` when absent), each one of `known`. */
export function choicesArg(args: Map<string, string | true>, name: string, known: readonly string[], defaults: readonly string[] = known): string[] {
  const chosen = String(args.get(name) ?? defaults.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  for (const choice of chosen) if (!known.includes(choice)) throw new Error(`--${name}: unknown ${JSON.stringify(choice)}; known: ${known.join(', ')}`);
  return chosen;
}

export function hostInfo(): Record<string, unknown> {
  return { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryBytes: totalmem(), kernel: release(), loadavg: loadavg() };
}

/** Writes `scripts/bench/out/<name>-<timestamp>.json` and returns its path. */
export async function writeResult(name: string, data: unknown): Promise<string> {
  await mkdir(BENCH_OUT_DIR, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const file = join(BENCH_OUT_DIR, `${name}-${stamp}.json`);
  await writeFile(file, `${JSON.stringify(data, null, 2)}\n`);
  return file;
}

/** A warning line when the machine is already busy (1-minute load average above half the cores). */
export function loadWarning(): string | undefined {
  const l = loadavg()[0]!;
  return l > cpus().length / 2 ? `warning: load average ${l.toFixed(2)} on ${cpus().length} cores: other work is running, figures will be low and noisy` : undefined;
}
