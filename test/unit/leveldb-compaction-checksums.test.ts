/**
 * The compaction patch (scripts/build-leveldb.js): a compaction of a database named catalog or blobs (the store's)
 * reads its input blocks with their checksums checked. A byte flipped in a table of one must fail the compaction
 * with a Corruption, which the store marks for the catalog's rebuild or the blob database's repair; unchecked, the
 * damaged block was decoded and rewritten under fresh checksums, or keys that decoded out of order aborted the
 * process in TableBuilder::Add (hunts 172, 183). And the repair patch: LevelDB's RepairDB drops the damaged block
 * and keeps the table's others. The installed addon when npm install built it from the current patches (what
 * peers load), else one built in a scratch copy (~1.5 min; the installed addon is not touched).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { cannotBuildPatchedLevelDb as why, patchedLevelDbPackage, withScratch } from '../support/patched-leveldb.ts';

for (const database of ['catalog', 'blobs']) {
test(`a compaction of the store's ${database} database meeting a damaged table block fails with a Corruption: the block is neither rewritten as good nor the process aborted; RepairDB keeps the table's other blocks`, { skip: why ?? false, timeout: 600_000 }, () => {
  withScratch('compaction', (scratch) => {
    const copy = patchedLevelDbPackage(scratch);
    const dbPath = join(scratch, database);
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
    const repaired = run(`(async () => {
      await ClassicLevel.repair(${JSON.stringify(dbPath)});
      const db = new ClassicLevel(${JSON.stringify(dbPath)}, { valueEncoding: 'utf8' });
      await db.open();
      let kept = 0;
      for await (const [key, value] of db.iterator({ gte: 'd!', lt: 'd~' })) {
        if (!/^d!1\\.2\\.3\\.\\d{6}!site-[01]$/.test(key) || !/^owed since \\d{13}$/.test(value)) throw new Error('a damaged record was kept: ' + JSON.stringify(key).slice(0, 80));
        kept++;
      }
      await db.close();
      console.log(JSON.stringify({ kept }));
    })().catch((e) => { console.error(e.message); process.exit(1); });`);
    assert.equal(repaired.status, 0, `the repair failed or ended the process (status ${repaired.status}, signal ${repaired.signal}): ${repaired.stderr.slice(-500)}`);
    const { kept } = JSON.parse(repaired.stdout.trim().split('\n').at(-1)!) as { kept: number };
    // The other table's copy of every key, and the damaged table's other blocks.
    assert.ok(kept >= 20000 && kept < 40000, `records kept by the repair: ${kept}`);
  });
});
}
