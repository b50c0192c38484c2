import { test } from 'node:test';
import assert from 'node:assert/strict';
import { meshStateOf, meshStateText, startedWithoutSwarmKeyError, wasMeshSite } from './mesh-state.ts';

test('a data directory that knows no other site (never a mesh, or a lone site started with a key) is no mesh site', () => {
  const state = meshStateOf([], [], 'site-a');
  assert.deepEqual(state, { otherSites: [], debtEntries: 0 });
  assert.equal(wasMeshSite(state), false);
  assert.equal(wasMeshSite(meshStateOf([{ siteName: 'site-a' }], [{ siteName: 'site-a' }], 'site-a')), false, 'its own site name is no other site');
});

test('known sites and sites owed copies make a mesh site; the line names them and the two ways out', () => {
  const state = meshStateOf([{ siteName: 'site-c' }, { siteName: 'site-b' }], [{ siteName: 'site-b' }, { siteName: 'site-d' }, { siteName: 'site-b' }], 'site-a');
  assert.deepEqual(state, { otherSites: ['site-b', 'site-c', 'site-d'], debtEntries: 3 });
  assert.equal(wasMeshSite(state), true);
  assert.equal(meshStateText(state), 'its store knows 3 sites site-b, site-c, site-d and owes them 3 copies');
  assert.equal(meshStateText(meshStateOf([{ siteName: 'site-b' }], [], 'site-a')), 'its store knows site site-b');
  const error = startedWithoutSwarmKeyError('/srv/pacs', meshStateOf([{ siteName: 'site-b' }], [{ siteName: 'site-b' }], 'site-a'));
  assert.equal(error.code, 'ERR_CONFIG');
  assert.match(error.message, /^--data \/srv\/pacs was a mesh site \(its store knows site site-b and owes it 1 copy\).*add --swarm-key FILE to rejoin the mesh, or --standalone yes to run it alone on purpose$/);
  const many = meshStateOf(Array.from({ length: 11 }, (_, i) => ({ siteName: `s${String(i).padStart(2, '0')}` })), [], 'site-a');
  assert.match(meshStateText(many), /knows 11 sites s00, s01, s02, s03, s04, s05, s06, s07 and 3 more$/);
});
