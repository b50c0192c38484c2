/**
 * The compaction patch (scripts/build-leveldb.js): a compaction of a database named catalog (the store's) reads
 * its input blocks with their checksums checked. A byte flipped in a table of the catalog's (Snappy-compressed) must
 * fail the compaction with a Corruption, which the store marks for a rebuild; unchecked, the damaged block
 * was decoded and rewritten under fresh checksums, or keys that decoded out of order aborted the process in
 * TableBuilder::Add (hunt 172). The installed addon when npm install built it from the current patches (what
 * peers load), else one built in a scratch copy (~1.5 min; the installed addon is not touched).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cannotBuildPatchedLevelDb as why, patchedLevelDbPackage } from '../support/patched-leveldb.ts';

test('a compaction meeting a damaged table block fails with a Corruption: the block is neither rewritten as good nor the process aborted', { skip: why ?? false, timeout: 600_000 }, () => {
  const scratch = mkdtempSync(join(tmpdir(), 'pacs-leveldb-compaction-'));
  try {
    const copy = patchedLevelDbPackage(scratch);
    const dbPath = join(scratch, 'catalog');
    const run = (script: string) => spawnSync(process.execPath, ['-e', `const { ClassicLevel } = require(${JSON.stringify(copy)});\n${script}`], { encoding: 'utf8', timeout: 120_000 });
    // Two overlapping tables (the same keys written twice, a flush between), so a compaction must read both.
    const filled = run(`(async () => {
      const db = new ClassicLevel(${JSON.stringify(dbPath)}, { valueEncoding: 'utf8' });
      await db.open();
      for (const round of [0, 1]) {
        const batch = db.batch();
        for (let i = 0; i < 20000; i++) batch.put('d!1.2.3.' + String(i).padStart(6, '0') + '!site-' + round, 'owed since ' + (1700000000000 + i));
        await batch.write();
        await db.close();
        await db.open();
      }
      await db.close();
    })().catch((e) => { console.error(e.message); process.exit(1); });`);
    assert.equal(filled.status, 0, filled.stderr);
    const tables = readdirSync(dbPath).filter((name) => name.endsWith('.ldb')).map((name) => join(dbPath, name));
    assert.ok(tables.length >= 1, `tables written: ${readdirSync(dbPath).join(', ')}`);
    const largest = tables.sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
    const bytes = readFileSync(largest);
    // A third of the way in: inside a data block (the index and footer are at the end).
    const at = Math.floor(bytes.length / 3);
    bytes[at] = bytes[at]! ^ 0x5a;
    writeFileSync(largest, bytes);
    const compacted = run(`(async () => {
      const db = new ClassicLevel(${JSON.stringify(dbPath)}, { valueEncoding: 'utf8' });
      await db.open();
      try {
        // LevelDB's CompactRange returns nothing: a failed compaction is its background error, which every
        // write after it answers with.
        await db.compactRange('d!', 'd~');
        await db.put('z', 'a write after the compaction');
        console.log(JSON.stringify({ outcome: 'compacted' }));
      } catch (e) {
        console.log(JSON.stringify({ outcome: 'failed', code: e.code, message: e.message }));
      }
      await db.close().catch(() => undefined);
    })().catch((e) => { console.error(e.message); process.exit(1); });`);
    assert.equal(compacted.status, 0, `the compaction ended the process (status ${compacted.status}, signal ${compacted.signal}): ${compacted.stderr.slice(-500)}`);
    const result = JSON.parse(compacted.stdout.trim().split('\n').at(-1)!) as { outcome: string; code?: string; message?: string };
    assert.equal(result.outcome, 'failed', 'the compaction rewrote a damaged block as good: a write after it succeeded');
    assert.match(`${result.code} ${result.message}`, /corrupt/i);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
