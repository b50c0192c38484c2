import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { debtKeysReadMax, meshStateOf, meshStateText, readMeshState, startedWithoutSwarmKeyError, wasMeshSite, withSitesOfSavedPeers } from './mesh-state.ts';
import { createReplicaStore, type ReplicaStore } from './actors/storage/replica-store.ts';

test('a data directory that knows no other site (never a mesh, or a lone site started with a key) is no mesh site', () => {
  const state = meshStateOf([], new Map(), 'site-a');
  assert.deepEqual(state, { otherSites: [], debtEntries: 0 });
  assert.equal(wasMeshSite(state), false);
  assert.equal(wasMeshSite(meshStateOf([{ siteName: 'site-a' }], new Map([['site-a', 1]]), 'site-a')), false, 'its own site name is no other site');
});

test('known sites and sites owed copies make a mesh site; the line names them and the two ways out', () => {
  const state = meshStateOf([{ siteName: 'site-c' }, { siteName: 'site-b' }], new Map([['site-b', 2], ['site-d', 1]]), 'site-a');
  assert.deepEqual(state, { otherSites: ['site-b', 'site-c', 'site-d'], debtEntries: 3 });
  assert.equal(wasMeshSite(state), true);
  assert.equal(meshStateText(state), 'its store knows 3 sites site-b, site-c, site-d and owes them 3 copies');
  assert.equal(meshStateText(meshStateOf([{ siteName: 'site-b' }], new Map(), 'site-a')), 'its store knows site site-b');
  const error = startedWithoutSwarmKeyError('/srv/pacs', 'site-a', meshStateOf([{ siteName: 'site-b' }], new Map([['site-b', 1]]), 'site-a'));
  assert.equal(error.code, 'ERR_CONFIG');
  assert.match(error.message, /^--data \/srv\/pacs was a mesh site \(its store knows site site-b and owes it 1 copy\).*add --swarm-key FILE to rejoin the mesh, --standalone yes to run it alone on purpose$/);
  // The default data directory (npm start's for that site) is named as such, with a third way out.
  const byDefault = startedWithoutSwarmKeyError('.data/site-a', 'site-a', meshStateOf([{ siteName: 'site-b' }], new Map(), 'site-a'));
  assert.match(byDefault.message, /^--data \.data\/site-a \(the default for --site site-a\) was a mesh site .*, or --data DIR for an archive of its own$/);
  const many = meshStateOf(Array.from({ length: 11 }, (_, i) => ({ siteName: `s${String(i).padStart(2, '0')}` })), new Map(), 'site-a');
  assert.match(meshStateText(many), /knows 11 sites s00, s01, s02, s03, s04, s05, s06, s07 and 3 more$/);
});

/** An empty store in a directory of its own, closed and removed when the test ends. */
async function openStore(t: TestContext): Promise<{ store: ReplicaStore; storePath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-mesh-state-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const storePath = join(dir, 'store');
  const store = createReplicaStore({ path: storePath });
  await store.open();
  t.after(() => store.close());
  return { store, storePath };
}

test('the start check counts the debt of a store without loading its entries (hunt 167): a site owing millions of copies is counted, not held in memory', async (t) => {
  const { store, storePath } = await openStore(t);
  const uids = Array.from({ length: 300 }, (_, i) => `1.2.3.${i + 1}`);
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 1 }], []);
  await store.updateDebt([...uids.map((sopInstanceUid) => ({ sopInstanceUid, siteName: 'site-b', sinceMs: 1 })), { sopInstanceUid: '1.2.3.1', siteName: 'site-c', sinceMs: 1 }, { sopInstanceUid: '1.2.3.2', siteName: 'site-a', sinceMs: 1 }], []);
  const sitesOf = async (limit: number): Promise<string[]> => {
    const sites: string[] = [];
    for await (const siteName of store.debtSiteNames(limit)) sites.push(siteName);
    return sites;
  };
  assert.deepEqual(await sitesOf(3), ['site-b', 'site-c', 'site-b'], 'the first keys in key order (1.2.3.1, 1.2.3.1, 1.2.3.10), no more');
  assert.equal((await sitesOf(1000)).length, 302);
  // listDebt builds every entry: the check must not call it.
  const keysOnly = { listKnownSites: () => store.listKnownSites(), listForgottenSites: () => store.listForgottenSites(), debtSiteNames: (limit: number) => store.debtSiteNames(limit), listDebt: () => Promise.reject(new Error('the start check loaded every debt entry')) };
  assert.deepEqual(await readMeshState(keysOnly, 'site-a', storePath), { otherSites: ['site-b', 'site-c'], debtEntries: 301 });
});

test('the start check reads a bounded number of debt keys whatever the table holds (hunt 169: a full key scan took ~30 s at ten million owed), and says "at least" past them', async () => {
  let keysRead = 0;
  let limitAsked = 0;
  // A store owing ten times the bound, which yields past the limit it is given: the check must stop by itself.
  async function* largeDebt(limit: number): AsyncIterable<string> {
    limitAsked = limit;
    while (keysRead < debtKeysReadMax * 10) {
      keysRead++;
      yield keysRead % 2 === 0 ? 'site-c' : 'site-b';
    }
  }
  const large = { listKnownSites: async () => [], listForgottenSites: async () => [{ siteName: 'site-c', forgottenAtMs: 1 }], debtSiteNames: largeDebt };
  const state = await readMeshState(large, 'site-a', '/srv/pacs/store');
  assert.ok(keysRead <= debtKeysReadMax + 1, `read ${keysRead} debt keys`);
  assert.ok(limitAsked <= debtKeysReadMax + 1, `asked the store for ${limitAsked}`);
  // Half of the keys read are owed to the forgotten site-c: they count for nothing, as custody drops them.
  assert.deepEqual(state, { otherSites: ['site-b'], debtEntries: debtKeysReadMax / 2, debtEntriesMore: true });
  assert.equal(meshStateText(state), `its store knows site site-b and owes it at least ${debtKeysReadMax / 2} copies`);
  // Exactly the bound: all counted, none more.
  const exactly = { ...large, debtSiteNames: async function* (): AsyncIterable<string> { for (let i = 0; i < debtKeysReadMax; i++) yield 'site-b'; } };
  assert.deepEqual(await readMeshState(exactly, 'site-a', '/srv/pacs/store'), { otherSites: ['site-b'], debtEntries: debtKeysReadMax });
});

test("copies still owed to a forgotten site (a crash between its tombstone and the debt removals) make no mesh site: custody drops them at its first view (hunt 167)", async (t) => {
  const { store, storePath } = await openStore(t);
  // The last site of a mesh taken apart: site-b forgotten with POST /api/forget-site, its debt not yet removed.
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 1 }], []);
  await store.updateDebt([{ sopInstanceUid: '1.2.3.1', siteName: 'site-b', sinceMs: 1 }, { sopInstanceUid: '1.2.3.2', siteName: 'site-b', sinceMs: 1 }], []);
  await store.updateKnownSites([], [{ siteName: 'site-b', forgottenAtMs: 2 }]);
  assert.deepEqual(await readMeshState(store, 'site-a', storePath), { otherSites: [], debtEntries: 0 });
  // Known again after its forgetting (heard since): the copies owed count.
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 3 }], []);
  assert.deepEqual(await readMeshState(store, 'site-a', storePath), { otherSites: ['site-b'], debtEntries: 2 });
});

test("saved peers' sites count (a catalog rebuilt at the open knows none): the line says where they come from; its own site and those the store knows add nothing (hunt 181)", () => {
  const none = meshStateOf([], new Map(), 'site-a');
  assert.equal(withSitesOfSavedPeers(none, ['site-a'], 'site-a'), none);
  const saved = withSitesOfSavedPeers(none, ['site-c', 'site-b', 'site-c'], 'site-a');
  assert.ok(wasMeshSite(saved));
  assert.deepEqual(saved.otherSites, ['site-b', 'site-c']);
  assert.equal(meshStateText(saved), 'its store and known-peers.json know 2 sites site-b, site-c');
  const known = meshStateOf([{ siteName: 'site-b' }], new Map(), 'site-a');
  assert.equal(withSitesOfSavedPeers(known, ['site-b'], 'site-a'), known);
});
