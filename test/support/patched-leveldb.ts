/**
 * The classic-level package built from scripts/build-leveldb.js's patches, for the tests of those patches: the
 * installed one when npm install built it from the current patches (what peers load), else one built in a copy
 * under `scratch` (~1.5 min; the installed package is not touched).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// @ts-expect-error a plain JS build script without types
import { buildPatchedCopy, cannotBuild, installedPatchedBuild } from '../../scripts/build-leveldb.js';

/** Why this machine cannot build the patched addon (the tests skip), or null. */
export const cannotBuildPatchedLevelDb = (cannotBuild as () => string | null)();

/** The patched package's directory, for `require` in a child process. */
export function patchedLevelDbPackage(scratch: string): string {
  return (installedPatchedBuild as () => string | null)() ?? (buildPatchedCopy as (dir: string) => string)(scratch);
}

/**
 * Runs `script` (CommonJS, `ClassicLevel` in scope from the patched package) in a child process, with the C
 * shim `shim` preloaded (compiled here with gcc) and `env` added to its environment when given, and returns
 * the JSON object it printed last.
 */
export function runPatchedLevelDb<T>(scratch: string, script: string, o: { shim?: string; env?: Record<string, string> } = {}): T {
  const copy = patchedLevelDbPackage(scratch);
  const preload: Record<string, string> = {};
  if (o.shim !== undefined) {
    writeFileSync(join(scratch, 'shim.c'), o.shim);
    preload.LD_PRELOAD = join(scratch, 'shim.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', preload.LD_PRELOAD, join(scratch, 'shim.c'), '-ldl']);
  }
  const program = `const { ClassicLevel } = require(${JSON.stringify(copy)});\n(async () => {\n${script}\n})().catch((e) => { console.error(e.message); process.exit(1); });`;
  const run = spawnSync(process.execPath, ['-e', program], { env: { ...process.env, ...o.env, ...preload }, encoding: 'utf8', timeout: 120_000 });
  if (run.status !== 0) throw new Error(`the script failed (${run.status}): ${run.stderr}`);
  return JSON.parse(run.stdout.trim().split('\n').at(-1)!) as T;
}

/** Runs `body` with a scratch directory of its own (`pacs-leveldb-<name>-...`), deleted after it. */
export function withScratch(name: string, body: (scratch: string) => void): void {
  const scratch = mkdtempSync(join(tmpdir(), `pacs-leveldb-${name}-`));
  try {
    body(scratch);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
