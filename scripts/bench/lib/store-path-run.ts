/**
 * Runs lib/store-path.ts (pacs-mesh's C-STORE path without the network) in `copies` processes at once,
 * each into a fresh store of its own, with the node flags and environment a peer gets. One copy is the
 * ceiling of one site's ingest; two or three at once are close to the floor of a mesh on this machine,
 * whose sites must each make the instance durable (a received copy costs somewhat less: no file read, no
 * header parsing).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runTool } from '../../../test/support/dicom-tools.ts';
import { peerNodeFlags, peerProcessEnv } from '../../../src/peer-process.ts';
import { REPO_ROOT } from './index.ts';

const storePathScript = fileURLToPath(new URL('./store-path.ts', import.meta.url));

/**
 * Runs a child program of lib/ with the node flags and environment a peer gets, and reads the JSON line it
 * prints last (an empty object when there is none).
 */
export async function runBenchChild<T extends object>(script: string, args: readonly string[], timeoutMs: number): Promise<{ code: number | null; pid: number; stderr: string; out: Partial<T> }> {
  const r = await runTool(process.execPath, [...peerNodeFlags, '--import', 'tsx', script, ...args], { timeoutMs, env: peerProcessEnv(), cwd: REPO_ROOT });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return { code: r.code, pid: r.pid, stderr: r.stderr, out: (line.startsWith('{') ? JSON.parse(line) : {}) as Partial<T> };
}

export interface StorePathRun {
  /** The slowest copy's time from its first file read to its last commit. */
  wallMs: number;
  /** The fewest instances any copy stored. */
  stored: number;
  peakRssBytes: number;
  /** The process with the largest peak RSS. */
  peakRssPid: number;
  ok: boolean;
  error?: string;
}

/** `ingestBufferMiB`: the store's blob memtable, as a peer's `--ingest-buffer-mib` (its default when absent). */
export async function timeStorePath(o: { workDir: string; inputDir: string; run: number; count: number; copies: number; timeoutMs: number; ingestBufferMiB?: number }): Promise<StorePathRun> {
  const dataDirs = await Promise.all(Array.from({ length: o.copies }, (_, i) => mkdtemp(join(o.workDir, `store-path-run${o.run}-copy${i + 1}-`))));
  try {
    const outcomes = await Promise.all(
      dataDirs.map(async (dataDir) => {
        const r = await runBenchChild<{ wallMs: number; stored: number; peakRssBytes: number }>(storePathScript, [dataDir, o.inputDir, ...(o.ingestBufferMiB !== undefined ? [String(o.ingestBufferMiB)] : [])], o.timeoutMs);
        const out = r.out;
        const stored = out.stored ?? 0;
        const ok = r.code === 0 && stored === o.count;
        return { wallMs: out.wallMs ?? Number.NaN, stored, peakRssBytes: out.peakRssBytes ?? 0, pid: r.pid, ok, error: ok ? undefined : `exit ${r.code}, stored ${stored}/${o.count}: ${r.stderr.split('\n').slice(-5).join(' | ')}` };
      }),
    );
    const peak = outcomes.reduce((a, b) => (b.peakRssBytes > a.peakRssBytes ? b : a));
    const failed = outcomes.find((x) => !x.ok);
    return {
      wallMs: Math.round(Math.max(...outcomes.map((x) => x.wallMs))),
      stored: Math.min(...outcomes.map((x) => x.stored)),
      peakRssBytes: peak.peakRssBytes,
      peakRssPid: peak.pid,
      ok: failed === undefined,
      ...(failed?.error !== undefined ? { error: failed.error } : {}),
    };
  } finally {
    await Promise.all(dataDirs.map((d) => rm(d, { recursive: true, force: true })));
  }
}
