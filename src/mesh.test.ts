import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createConcurrencyLimit } from './actors/runtime/concurrency-limit.ts';
import type { CatalogEntry } from './actors/storage/catalog-types.ts';
import { sitesHoldingOf } from './mesh.ts';

const entry = (n: number): CatalogEntry => ({
  sopInstanceUid: `1.2.94.${n}`,
  sopClassUid: '1.2.840.10008.5.1.4.1.1.7',
  studyInstanceUid: '1.2.94',
  seriesInstanceUid: '1.2.94.1',
  patientId: 'P',
  transferSyntaxUid: '1.2.840.10008.1.2.1',
  byteLength: 10,
  sha256: `sha-${n}`,
  storedAtMs: 1,
  blobId: `b${n}`,
  attributes: [],
});

test('sitesHolding: every commitment check at once opens a bounded number of query streams to a peer (libp2p refuses the 65th: helper 94)', async () => {
  const entries = Array.from({ length: 10 }, (_, n) => entry(n));
  let inFlight = 0;
  let inFlightMax = 0;
  const query = async () => {
    inFlight++;
    inFlightMax = Math.max(inFlightMax, inFlight);
    await new Promise((resolve) => setTimeout(resolve, 5));
    inFlight--;
    return { entries };
  };
  const deps = { site: 'a', quorum: 2, others: [{ peerId: 'peer-b', siteName: 'b' }, { peerId: 'peer-b2', siteName: 'b' }], query, limit: createConcurrencyLimit(4, 0) };
  // 100 transactions checked at once (records loaded at a start).
  const results = await Promise.all(Array.from({ length: 100 }, () => sitesHoldingOf(deps, entries)));
  assert.ok(inFlightMax <= 4 * 2, `${inFlightMax} queries in flight`);
  for (const { quorum, sitesHolding } of results) {
    assert.equal(quorum, 2);
    // Two peers of one other site count once; the same bytes only.
    assert.deepEqual([...sitesHolding.values()], entries.map(() => 2));
  }
});

test('sitesHolding: other bytes at a peer, or a peer that does not answer, do not count', async () => {
  const entries = [entry(1), entry(2)];
  const deps = {
    site: 'a',
    quorum: 2,
    others: [{ peerId: 'b', siteName: 'b' }, { peerId: 'c', siteName: 'c' }],
    query: async (peerId: string) => (peerId === 'c' ? Promise.reject(new Error('timeout')) : { entries: [entry(1), { ...entry(2), sha256: 'other' }] }),
    limit: createConcurrencyLimit(4, 0),
  };
  const { quorum, sitesHolding } = await sitesHoldingOf(deps, entries);
  assert.equal(quorum, 2);
  assert.deepEqual([...sitesHolding], [['1.2.94.1', 2], ['1.2.94.2', 1]]);
});
