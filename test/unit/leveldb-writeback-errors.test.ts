/**
 * The table write-back patch (scripts/build-leveldb.js) must not hide a failed write-back: sync_file_range's
 * wait takes the error from the file, so a closing fdatasync would answer OK for a table the disk refused.
 * The installed addon when npm install built it from the current patches (what peers load), else one built
 * in a scratch copy (~1.5 min; the installed addon is not touched); sync_file_range made to fail with EIO by
 * an LD_PRELOAD shim: a memtable flush must fail and the database's writes with it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { cannotBuildPatchedLevelDb as why, runPatchedLevelDb, withScratch } from '../support/patched-leveldb.ts';

test('a table write-back that fails with EIO fails the flush: the writes stop instead of a table the disk refused being kept', { skip: why ?? false, timeout: 600_000 }, () => {
  withScratch('writeback', (scratch) => {
    const shim = '#define _GNU_SOURCE\n#include <errno.h>\n#include <fcntl.h>\nint sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) { (void)fd; (void)offset; (void)nbytes; (void)flags; errno = EIO; return -1; }\n';
    const { failed } = runPatchedLevelDb<{ failed: string | null }>(scratch, `
      const db = new ClassicLevel(${JSON.stringify(join(scratch, 'db'))}, { valueEncoding: 'view', writeBufferSize: 2 << 20 });
      const value = require('node:crypto').randomBytes(64 * 1024); // incompressible: tables as large as their memtables
      let failed = null;
      // 64 MiB: many 2 MiB memtables flushed to tables of more than the patch's 1 MiB write-back.
      for (let i = 0; i < 1024 && failed === null; i++) {
        try { await db.put('k' + String(i).padStart(5, '0'), value); } catch (e) { failed = e.message; }
      }
      console.log(JSON.stringify({ failed }));
      await db.close().catch(() => undefined);`, { shim });
    assert.ok(failed !== null, 'every write succeeded although every table write-back failed');
    assert.match(failed, /Input\/output error|IO error/i);
  });
});
