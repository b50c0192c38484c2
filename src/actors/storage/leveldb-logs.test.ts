import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { createOlderLogSync } from './leveldb-logs.ts';

test('the log files older than the newest are synced once each; a table file, the newest log and one deleted meanwhile are not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-logs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const synced: string[] = [];
  const file = (name: string) => writeFileSync(join(dir, name), '');
  const syncOlder = createOlderLogSync(dir, async (path) => {
    // A log LevelDB deleted between the listing and the sync (its memtable reached a table file).
    if (basename(path) === '000011.log') throw Object.assign(new Error('gone'), { code: 'ENOENT' });
    synced.push(basename(path));
  });
  file('000003.log');
  file('000004.ldb');
  await syncOlder();
  assert.deepEqual(synced, [], 'one log: the synced write synced it');
  // LevelDB switched to a new log (numbers sort as numbers: 9 before 10).
  file('000009.log');
  file('000010.log');
  await syncOlder();
  assert.deepEqual(synced, ['000003.log', '000009.log']);
  await syncOlder();
  assert.deepEqual(synced, ['000003.log', '000009.log'], 'each once');
  unlinkSync(join(dir, '000003.log'));
  unlinkSync(join(dir, '000009.log'));
  file('000011.log');
  file('000012.log');
  await syncOlder();
  assert.deepEqual(synced, ['000003.log', '000009.log', '000010.log'], 'the former newest, once older');
});

test('a sync that fails for another reason than a deleted file is the caller\'s error (the store faults on it)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-logs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, '000005.log'), '');
  writeFileSync(join(dir, '000007.log'), '');
  const syncOlder = createOlderLogSync(dir, async () => {
    throw Object.assign(new Error('Input/output error'), { code: 'EIO' });
  });
  await assert.rejects(syncOlder(), (error: Error & { code?: string }) => error.code === 'LEVEL_IO_ERROR' && /000005\.log: Input\/output error/.test(error.message));
});
