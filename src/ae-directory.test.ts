import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadAeDirectory } from './ae-directory.ts';

async function withDataDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-ae-directory-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('AE titles that name members of every JavaScript object are unknown destinations, not addresses (hunt 136)', async (t) => {
  const directory = await loadAeDirectory(await withDataDir(t), { DEST: { host: '127.0.0.1', port: 104 } });
  // A C-MOVE to "constructor" got 0xA702 "cannot reach the destination: The "options" or "port" ... argument
  // must be specified" rather than 0xA801, and a commitment report for a modality so named was queued for a
  // host that does not exist.
  for (const aeTitle of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
    assert.equal(directory.resolve(aeTitle), undefined, aeTitle);
  }
  assert.deepEqual(directory.resolve(' DEST '), { host: '127.0.0.1', port: 104 });
});

test('any AE title the command line or the file names is a destination, "__proto__" too, and survives a restart', async (t) => {
  const dataDir = await withDataDir(t);
  await writeFile(join(dataDir, 'ae-directory.json'), '{"__proto__": {"host": "10.0.0.1", "port": 11112}, "OLD": {"host": "10.0.0.2", "port": 104}}');
  const directory = await loadAeDirectory(dataDir, { constructor: { host: '127.0.0.1', port: 105 } });
  assert.deepEqual(directory.resolve('__proto__'), { host: '10.0.0.1', port: 11112 });
  assert.deepEqual(directory.resolve('constructor'), { host: '127.0.0.1', port: 105 });
  assert.deepEqual(Object.keys(directory.entries()).sort(), ['OLD', '__proto__', 'constructor']);
  await directory.persist();
  const reloaded = await loadAeDirectory(dataDir, {});
  assert.deepEqual(reloaded.resolve('__proto__'), { host: '10.0.0.1', port: 11112 });
  assert.deepEqual(reloaded.resolve('constructor'), { host: '127.0.0.1', port: 105 });
  assert.match(await readFile(join(dataDir, 'ae-directory.json'), 'utf8'), /"__proto__"/);
});
