/**
 * The table write-back patch (scripts/build-leveldb.js) must not hide a failed write-back: sync_file_range's
 * wait takes the error from the file, so a closing fdatasync would answer OK for a table the disk refused.
 * The installed addon when npm install built it from the current patches (what peers load), else one built
 * in a scratch copy (~1.5 min; the installed addon is not touched); sync_file_range made to fail with EIO by
 * an LD_PRELOAD shim: a memtable flush must fail and the database's writes with it.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cannotBuildPatchedLevelDb as why, patchedLevelDbPackage } from '../support/patched-leveldb.ts';

test('a table write-back that fails with EIO fails the flush: the writes stop instead of a table the disk refused being kept', { skip: why ?? false, timeout: 600_000 }, () => {
  const scratch = mkdtempSync(join(tmpdir(), 'pacs-leveldb-writeback-'));
  try {
    const copy = patchedLevelDbPackage(scratch);
    const shimSource = join(scratch, 'eio.c');
    writeFileSync(shimSource, '#define _GNU_SOURCE\n#include <errno.h>\n#include <fcntl.h>\nint sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) { (void)fd; (void)offset; (void)nbytes; (void)flags; errno = EIO; return -1; }\n');
    const shim = join(scratch, 'eio.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', shim, shimSource]);
    const script = `
      const { ClassicLevel } = require(${JSON.stringify(copy)});
      (async () => {
        const db = new ClassicLevel(${JSON.stringify(join(scratch, 'db'))}, { valueEncoding: 'view', writeBufferSize: 2 << 20 });
        const value = require('node:crypto').randomBytes(64 * 1024); // incompressible: tables as large as their memtables
        let failed = null;
        // 64 MiB: many 2 MiB memtables flushed to tables of more than the patch's 1 MiB write-back.
        for (let i = 0; i < 1024 && failed === null; i++) {
          try { await db.put('k' + String(i).padStart(5, '0'), value); } catch (e) { failed = e.message; }
        }
        console.log(JSON.stringify({ failed }));
        await db.close().catch(() => undefined);
      })().catch((e) => { console.error(e.message); process.exit(1); });`;
    const run = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, LD_PRELOAD: shim }, encoding: 'utf8', timeout: 120_000 });
    assert.equal(run.status, 0, run.stderr);
    const { failed } = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as { failed: string | null };
    assert.ok(failed !== null, 'every write succeeded although every table write-back failed');
    assert.match(failed, /Input\/output error|IO error/i);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
