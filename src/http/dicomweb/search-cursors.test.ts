import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { QueryCursor } from '../../actors/storage/query/query.ts';
import { SearchCursors, searchKeyOf } from './search-cursors.ts';

const cursor = (index: number): QueryCursor => ({ type: 'listed', plan: 'direct c!i! (SOPInstanceUID)', index });

it('keeps the most recently used page ends, at most entriesMax, each for ageMaxMs', () => {
  const cursors = new SearchCursors(2, 1000);
  cursors.put('a', 100, cursor(1), 0);
  cursors.put('a', 200, cursor(2), 0);
  assert.deepEqual(cursors.take('a', 100, 10), cursor(1), 'taken, it becomes the most recently used');
  cursors.put('b', 100, cursor(3), 20);
  assert.equal(cursors.size, 2);
  assert.equal(cursors.take('a', 200, 30), undefined, 'the least recently used went first');
  assert.deepEqual(cursors.take('a', 100, 30), cursor(1), 'a page asked again resumes from the same place');
  assert.equal(cursors.take('a', 300, 30), undefined, 'no page ended there');
  assert.equal(cursors.take('b', 100, 1021), undefined, 'too old');
  assert.equal(cursors.take('b', 100, 30), undefined, 'an outdated one is forgotten');
});

it('tells searches apart by their keys and level, not by their page', () => {
  const request = { root: 'STUDY' as const, level: 'STUDY' as const, keys: [{ tag: 0x00100010, vr: 'PN', value: 'DOE*' }] };
  assert.equal(searchKeyOf(request), searchKeyOf(structuredClone(request)));
  assert.notEqual(searchKeyOf(request), searchKeyOf({ ...request, level: 'SERIES' }));
  assert.notEqual(searchKeyOf(request), searchKeyOf({ ...request, keys: [{ tag: 0x00100010, vr: 'PN', value: 'DOE' }] }));
  assert.equal(searchKeyOf(request).length, 64);
});
