/**
 * A single site (no mesh) whose held index LevelDB cannot read (a damaged table): nothing but the count of
 * instances reads that index whole there, and GET /api/mesh answered 500 for it (hunt 183).
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Level } from 'level';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer } from '../../src/peer.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { testCatalogEntry } from '../../src/actors/storage/fixtures/test-entry.ts';

test('a single site whose held index is in a damaged table answers GET /api/mesh with the count unknown and why, not 500, and marks its catalog for a rebuild', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'pacs-held-index-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const storePath = join(dataDir, 'store');
  const store = createReplicaStore({ path: storePath });
  await store.open();
  const writer = store.beginWrite();
  await writer.write(Buffer.alloc(100, 1));
  await writer.commit('1.2.183.1', testCatalogEntry('1.2.183.1'));
  await store.close();
  // Held-index records in a table of their own (the newest), which only a read of the whole index meets:
  // the open reads none of it.
  const catalogDir = join(storePath, 'catalog');
  const tablesBefore = new Set(readdirSync(catalogDir));
  const catalog = new Level<string, string>(catalogDir);
  await catalog.open();
  await catalog.close();
  await catalog.open();
  await catalog.batch(Array.from({ length: 3000 }, (_, i) => ({ type: 'put' as const, key: `h!1.2.183.2.${i}`, value: `${i}`.padStart(64, 'a') })));
  await catalog.close();
  await catalog.open();
  await catalog.close();
  const heldTable = readdirSync(catalogDir).filter((name) => name.endsWith('.ldb') && !tablesBefore.has(name)).sort().at(-1);
  assert.ok(heldTable, 'a table of held-index records');
  const bytes = readFileSync(join(catalogDir, heldTable));
  for (let i = 1000; i < bytes.length / 2; i += 97) bytes[i]! ^= 0xff;
  writeFileSync(join(catalogDir, heldTable), bytes);

  const config = parseStartArgs(['--site', 'alone', '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent']);
  const peer = await startPeer(config, { log: silentLogger, shutdownGraceMs: 1000 });
  t.after(() => peer.stop());
  const response = await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`);
  const body = (await response.json()) as Record<string, unknown>;
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.equal(body.instances, null);
  assert.match(String(body.instancesUnknown), /Corruption/);
  assert.ok(existsSync(join(storePath, 'catalog-damaged')), 'the next start rebuilds the catalog');
});
