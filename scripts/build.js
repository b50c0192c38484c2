#!/usr/bin/env node
/**
 * Compiles src/ to dist/ with tsc (tsconfig.build.json). A peer started from dist/ is ready about a second
 * sooner than one run through tsx's loader, which matters when a killed site restarts and catches up.
 * bin/pacs-mesh.js uses dist/ only while no source file is newer than this build, and runs src/ through
 * tsx otherwise, so a stale or missing build never runs old code.
 *
 *   node scripts/build.js               exit code of tsc
 *   node scripts/build.js --if-possible always 0 (npm's `prepare`): a failed build only means tsx start-up
 */
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const ifPossible = process.argv.includes('--if-possible');

// Taken before tsc reads anything: a source saved during the build counts as newer than it.
const startedAtMs = Date.now();
// From scratch, so a source that was deleted or renamed leaves no compiled file behind.
rmSync(dist, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const result = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });
if (result.status === 0 && existsSync(join(dist, 'cli.js'))) {
  writeFileSync(join(dist, 'build-info.json'), `${JSON.stringify({ startedAtMs })}\n`);
  process.exit(0);
}
process.stderr.write('pacs-mesh: the build failed; pacs-mesh runs src/ through tsx instead (slower start-up)\n');
process.exit(ifPossible ? 0 : (result.status ?? 1));
