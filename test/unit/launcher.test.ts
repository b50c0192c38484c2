/**
 * bin/pacs-mesh.js runs dist/ only while its build is newer than every source file, else src/ via tsx.
 * Checked on a scratch copy of the launcher whose src/ and dist/ only print which one ran.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { report } from 'node:process';
import { test } from 'node:test';
import { pacsMeshBin, peerMallocTunables, peerNodeFlags, peerProcessEnv } from '../../src/peer-process.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

function scratchInstall(): { root: string; run: (env?: Record<string, string>) => string } {
  const root = mkdtempSync(join(tmpdir(), 'pacs-launcher-'));
  for (const dir of ['bin', 'src/actors', 'dist']) mkdirSync(join(root, dir), { recursive: true });
  for (const file of ['pacs-mesh.js', 'build-current.js']) copyFileSync(join(repoRoot, 'bin', file), join(root, 'bin', file));
  writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
  symlinkSync(join(repoRoot, 'node_modules'), join(root, 'node_modules'));
  writeFileSync(join(root, 'src/cli.ts'), "const from: string = 'src';\nconsole.log(from);\n");
  writeFileSync(join(root, 'src/actors/x.ts'), 'export {};\n');
  writeFileSync(join(root, 'dist/pacs-mesh.js'), "console.log('dist');\n");
  const run = (env: Record<string, string> = {}) => {
    const r = spawnSync(process.execPath, [join(root, 'bin/pacs-mesh.js')], { encoding: 'utf8', env: { ...process.env, PACS_MESH_FROM_SOURCE: '', ...env }, timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  return { root, run };
}

function setMtime(path: string, ms: number): void {
  utimesSync(path, ms / 1000, ms / 1000);
}

test('the launcher runs dist/ while it is current and src/ when it is missing, stale or overridden', (t) => {
  const { root, run } = scratchInstall();
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const builtAtMs = Date.now();
  for (const file of ['src/cli.ts', 'src/actors/x.ts']) setMtime(join(root, file), builtAtMs - 60_000);

  assert.equal(run(), 'src', 'no build-info.json: never built');

  writeFileSync(join(root, 'dist/build-info.json'), JSON.stringify({ startedAtMs: builtAtMs }));
  assert.equal(run(), 'dist');
  assert.equal(run({ PACS_MESH_FROM_SOURCE: '1' }), 'src');

  setMtime(join(root, 'src/actors/x.ts'), builtAtMs + 1000);
  assert.equal(run(), 'src', 'a source file in a subfolder changed after the build');

  writeFileSync(join(root, 'dist/build-info.json'), 'not json');
  assert.equal(run(), 'src');
});

test("the command's #! line runs node with the peer flags and malloc settings that scripts and tests pass", () => {
  const shebang = readFileSync(pacsMeshBin, 'utf8').split('\n', 1)[0]!;
  assert.equal(shebang, `#!/usr/bin/env -S GLIBC_TUNABLES=${peerMallocTunables} node ${peerNodeFlags.join(' ')}`);
  assert.ok(shebang.length < 256, 'Linux reads at most 256 bytes of a #! line');
  assert.equal(peerProcessEnv({ A: '1' }).GLIBC_TUNABLES, peerMallocTunables);
  assert.equal(peerProcessEnv({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }).GLIBC_TUNABLES, `${peerMallocTunables}:glibc.malloc.arena_max=2`, "an operator's own settings are kept, after ours");
});

// 800 LevelDB puts of 64 KiB, 16 at once (the blob store's chunk writes), then the number of thread arenas:
// a glibc arena's heap is a 64 MiB-aligned reservation, its used part read-write and the rest inaccessible.
const arenaProbe = String.raw`
import { Level } from 'level';
import { readFileSync } from 'node:fs';
const db = new Level(process.argv[1], { valueEncoding: 'view', compression: false, writeBufferSize: 32 * 1024 * 1024 });
await db.open();
const value = new Uint8Array(64 * 1024).fill(7);
let next = 0;
await Promise.all(Array.from({ length: 16 }, async () => { while (next < 800) await db.put('k' + next++, value); }));
await db.close();
const arenaBytes = 64n << 20n;
const maps = readFileSync('/proc/self/maps', 'utf8').trim().split('\n').map((line) => {
  const [range, perms, , , , path = ''] = line.split(/\s+/);
  const [start, end] = range.split('-').map((hex) => BigInt('0x' + hex));
  return { start, end, perms, path };
});
let heaps = 0;
for (const [i, m] of maps.entries()) {
  const next = maps[i + 1];
  const end = next !== undefined && next.start === m.end && next.path === '' && next.perms === '---p' ? next.end : m.end;
  if (m.path === '' && m.perms === 'rw-p' && m.start % arenaBytes === 0n && end - m.start === arenaBytes) heaps++;
}
console.log(heaps);`;

/** Runs a probe (a module given a scratch directory) with these malloc settings: the number it prints. */
function levelDbProbe(probe: string, glibcTunables: string): number {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-malloc-probe-'));
  try {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', probe, dir], { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, GLIBC_TUNABLES: glibcTunables }, timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    return Number(r.stdout.trim());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const threadArenasAfterLevelDbWrites = (glibcTunables: string) => levelDbProbe(arenaProbe, glibcTunables);

/** The running glibc's version (e.g. "2.36"), undefined under another C library. */
const glibcVersion = (report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime;
const isGlibc = glibcVersion !== undefined;

/** The peer's malloc settings without one of them (`glibc.malloc.<name>`). */
function peerTunablesWithout(name: string): string {
  return peerMallocTunables.split(':').filter((t) => !t.startsWith(`glibc.malloc.${name}=`)).join(':');
}

test('LevelDB writes on the thread pool share one malloc arena besides the main one in a peer process', { skip: !isGlibc && 'not glibc' }, () => {
  // Each thread pool thread inserting into a memtable would otherwise keep an arena of its own, holding its
  // share of freed memtables for good (docs/performance.md, "Memory at scale").
  assert.ok(threadArenasAfterLevelDbWrites(peerProcessEnv({}).GLIBC_TUNABLES!) <= 1);
  assert.ok(threadArenasAfterLevelDbWrites(peerTunablesWithout('arena_max')) >= 2, 'the probe sees the arenas glibc makes without the limit');
});

// 800 LevelDB puts of 64 KiB, 16 at once, then the page faults they took.
const faultProbe = String.raw`
import { Level } from 'level';
const db = new Level(process.argv[1], { valueEncoding: 'view', compression: false, writeBufferSize: 32 * 1024 * 1024 });
await db.open();
const value = new Uint8Array(64 * 1024).fill(7);
let next = 0;
const before = process.resourceUsage().minorPageFault;
await Promise.all(Array.from({ length: 16 }, async () => { while (next < 800) await db.put('k' + next++, value); }));
console.log(process.resourceUsage().minorPageFault - before);
await db.close();`;

const pageFaultsOfLevelDbWrites = (glibcTunables: string) => levelDbProbe(faultProbe, glibcTunables);

/** Why the huge-page comparison cannot run here, if it cannot: glibc before 2.35, or THP not in "madvise" mode. */
function hugePagesSkipReason(): string | false {
  if (glibcVersion === undefined) return 'not glibc';
  const [major = 0, minor = 0] = glibcVersion.split('.').map(Number);
  if (major < 2 || (major === 2 && minor < 35)) return `glibc ${glibcVersion} has no glibc.malloc.hugetlb`;
  let mode = '';
  try {
    mode = /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? '';
  } catch {
    return 'no transparent huge pages';
  }
  // "always" gives every process huge pages, "never" none: only "madvise" tells the setting from its absence.
  return mode === 'madvise' ? false : `transparent huge pages "${mode}"`;
}

test("a peer process's malloc heap takes huge pages: LevelDB's writes fault far less", { skip: hugePagesSkipReason() }, () => {
  const withHugePages = pageFaultsOfLevelDbWrites(peerProcessEnv({}).GLIBC_TUNABLES!);
  const without = pageFaultsOfLevelDbWrites(peerTunablesWithout('hugetlb'));
  assert.ok(withHugePages * 2 < without, `page faults ${withHugePages} with the peer settings, ${without} without glibc.malloc.hugetlb`);
});
