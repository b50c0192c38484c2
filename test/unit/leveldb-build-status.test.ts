/**
 * `node scripts/build-leveldb.js --status` names the addon node-gyp-build loads, run against a copy of the
 * script beside a fake classic-level (the real node_modules is never touched).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

// @ts-expect-error a plain JS build script without types
import { patchedSourceHash } from '../../scripts/build-leveldb.js';

const script = fileURLToPath(new URL('../../scripts/build-leveldb.js', import.meta.url));
const sourceHash = (patchedSourceHash as () => string)();

function statusWith(marker: object | undefined, addon: boolean): string {
  const root = mkdtempSync(join(tmpdir(), 'pacs-leveldb-status-'));
  try {
    const packageDir = join(root, 'node_modules', 'classic-level');
    mkdirSync(join(root, 'scripts'));
    mkdirSync(join(packageDir, 'build', 'Release'), { recursive: true });
    copyFileSync(script, join(root, 'scripts', 'build-leveldb.js'));
    writeFileSync(join(packageDir, 'package.json'), JSON.stringify({ version: '3.0.0' }));
    if (addon) writeFileSync(join(packageDir, 'build', 'Release', 'classic_level.node'), '');
    if (marker !== undefined) writeFileSync(join(packageDir, 'build', 'pacs-mesh-leveldb.json'), JSON.stringify(marker));
    return execFileSync(process.execPath, [join(root, 'scripts', 'build-leveldb.js'), '--status'], { encoding: 'utf8' }).trim();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('--status tells an earlier build (loaded, without the log sync) from the prebuilt addon (hunt 102)', () => {
  const allPatches = ['sync-log-at-switch', 'table-writeback-per-mib-errors-kept', 'table-writeback-per-mib-append', 'log-write-back-thread', 'log-write-back-as-written', 'obsolete-files-listed', 'obsolete-files-deleted-unlocked', 'value-bytes-in-place', 'batch-value-copied-once', 'put-value-copied-once-worker', 'put-value-copied-once-call', 'manual-flush-trims-malloc-include', 'manual-flush-trims-malloc', 'store-compactions-verify-checksums', 'repair-verifies-checksums'];
  assert.match(statusWith({ classicLevelVersion: '3.0.0', flags: '-msse4.2', patches: allPatches, sourceHash }, true), /^built here with SSE4\.2 CRC32C, full logs synced, logs and tables written back as written, files deleted outside the lock, store compactions and repairs checking checksums and memory trimmed after a manual flush \(classic-level 3\.0\.0\)$/);
  // Every patch's name but not its current text (a patch edited under its name; a marker from before sourceHash): npm install rebuilds it, and --status says so.
  for (const staleHash of [undefined, 'f'.repeat(64)]) {
    assert.match(statusWith({ classicLevelVersion: '3.0.0', flags: '-msse4.2', patches: allPatches, sourceHash: staleHash }, true), /^built here with SSE4\.2 CRC32C from an earlier version of its patches or flags: `node scripts\/build-leveldb\.js` rebuilds it$/);
  }
  // Hunt 135's build before its table write-back: still syncs logs, says what a rebuild adds.
  assert.match(statusWith({ classicLevelVersion: '3.0.0', flags: '-msse4.2', patches: ['sync-log-at-switch'] }, true), /^built here with SSE4\.2 CRC32C and full logs synced, without table-writeback-per-mib-errors-kept, table-writeback-per-mib-append, log-write-back-thread, log-write-back-as-written, obsolete-files-listed, obsolete-files-deleted-unlocked, value-bytes-in-place, batch-value-copied-once, put-value-copied-once-worker, put-value-copied-once-call, manual-flush-trims-malloc-include, manual-flush-trims-malloc, store-compactions-verify-checksums, repair-verifies-checksums: `node scripts\/build-leveldb\.js` rebuilds it$/);
  assert.match(statusWith({ classicLevelVersion: '3.0.0', flags: '-msse4.2' }, true), /^built here before the log sync/);
  assert.match(statusWith(undefined, false), /^prebuilt/);
});
