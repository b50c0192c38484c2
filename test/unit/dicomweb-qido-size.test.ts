/**
 * QIDO-RS responses are made whole (their Warning says whether matches were left out): their size is
 * bounded, and they count in the peer's budget of bytes held at once until the client has read them.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { localIngest } from '../../src/actors/association/services/deps.ts';
import { IncomingStore } from '../../src/actors/association/services/store.ts';
import { CommandField } from '../../src/codec/dimse.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { searchResponseBytesMax } from '../../src/http/dicomweb/qido.ts';
import { createConcurrencyLimit } from '../../src/actors/runtime/concurrency-limit.ts';
import { catalogWriteOps } from '../../src/actors/storage/catalog.ts';
import { oneInstanceStudies } from '../../src/actors/storage/fixtures/test-entry.ts';
import { startTestPeer } from '../support/peer-fixture.ts';
import { waitFor } from '../support/wait.ts';
import { makeInstance } from '../support/synthetic-dicom.ts';

const ct = '1.2.840.10008.5.1.4.1.1.2';
const study = '1.2.826.0.1.3680043.10.1453.79.10';
/** Three text attributes of 1,000 characters each, as a catalog keeps them (values up to 1 KiB). */
const longTextTags = [0x00204000, 0x00324000, 0x001021b0];
const longFields = longTextTags.map((tag) => `includefield=${tag.toString(16).padStart(8, '0').toUpperCase()}`).join('&');

test('a search whose results would be over the size bound is cut there, with a Warning to page on (hunt 79: 35 MB responses, 4 GB held by 30 clients)', async (t) => {
  const peer = await startTestPeer([], 'qido-size');
  t.after(() => peer.dispose());
  // Through the C-STORE's code straight into the store: 2,600 instances of ~3.7 KB of JSON each, over 9 MB.
  const ingest = localIngest(peer.store);
  const count = 2600;
  for (let n = 1; n <= count; n++) {
    const sopInstanceUid = `${study}.1.${n}`;
    const bytes = makeInstance({ sopClassUid: ct, sopInstanceUid, instanceNumber: n, study: { uid: study }, series: { uid: `${study}.1` }, rows: 2, columns: 2, extraElements: longTextTags.map((tag) => ({ tag, vr: 'LT', value: `${n} `.padEnd(1000, 'x') })) });
    const split = splitPart10(bytes);
    const incoming = new IncomingStore(
      { commandField: CommandField.CStoreRq, messageId: 1, affectedSopClassUid: ct, affectedSopInstanceUid: sopInstanceUid, priority: 0, hasDataSet: true },
      { id: 1, abstractSyntaxUid: ct, transferSyntaxUid: split.transferSyntaxUid, service: 'storage', requestorIsScp: false },
      ingest,
      () => Date.now(),
    );
    await incoming.push(bytes.slice(split.datasetOffset));
    assert.equal((await incoming.finish()).status, 0, `instance ${n} stored`);
  }
  const base = `http://127.0.0.1:${peer.httpPort}/dicom-web`;
  const response = await fetch(`${base}/instances?${longFields}`);
  const text = await response.text();
  assert.equal(response.status, 200, text.slice(0, 200));
  const results = JSON.parse(text) as unknown[];
  assert.ok(Buffer.byteLength(text) <= searchResponseBytesMax, `a response of ${Buffer.byteLength(text)} bytes, over the bound of ${searchResponseBytesMax}`);
  assert.ok(results.length > 1000 && results.length < count, `${results.length} of ${count} results: cut at the size bound`);
  assert.match(response.headers.get('warning') ?? '', /size of the results exceeded the maximum supported by the server .* requested with offset/, 'the Warning says why and how to go on');
  // The next page goes on where the first stopped.
  const next = await fetch(`${base}/instances?${longFields}&offset=${results.length}`);
  const rest = JSON.parse(await next.text()) as unknown[];
  assert.equal(results.length + rest.length, count, 'the second page holds the rest');
  assert.equal(next.headers.get('warning'), null, 'the second page is whole');

  // A client that does not read its response holds it in the budget of bytes held at once, until it is gone;
  // the searches of others still run meanwhile, within that budget.
  const idle = connect({ host: '127.0.0.1', port: peer.httpPort });
  idle.on('error', () => undefined);
  idle.write(`GET /dicom-web/instances?${longFields} HTTP/1.1\r\nHost: x\r\n\r\n`);
  idle.pause();
  const small = await fetch(`${base}/studies?StudyInstanceUID=${study}`);
  assert.equal(small.status, 200, 'another search is answered while the idle client holds its response');
  idle.destroy();
});

test('a search whose client leaves stops, though nothing has matched yet (helper 98: it read on to the end of the level)', async (t) => {
  const peer = await startTestPeer([], 'qido-gone');
  t.after(() => peer.dispose());
  // Catalog entries alone are enough to search: 3,000 instances, none of which the search matches.
  const count = 3000;
  const studies = oneInstanceStudies(count, '1.2.826.0.1.3680043.10.1453.98', { sopClassUid: ct, attributes: () => [{ tag: 0x00204000, vr: 'LT', value: 'nothing to see' }] });
  await peer.store.db.batch(studies.flatMap((entry) => catalogWriteOps(entry)));
  const client = connect({ host: '127.0.0.1', port: peer.httpPort });
  client.on('error', () => undefined);
  let entriesRead = 0;
  let lastReadAt = Date.now();
  const getMany = peer.store.db.getMany.bind(peer.store.db);
  peer.store.db.getMany = ((keys: string[], ...rest: unknown[]) => {
    // The client leaves once the search has started reading.
    if (entriesRead === 0) client.destroy();
    entriesRead += keys.length;
    lastReadAt = Date.now();
    return (getMany as (...args: unknown[]) => unknown)(keys, ...rest);
  }) as typeof peer.store.db.getMany;
  client.write('GET /dicom-web/instances?ImageComments=*zzz* HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor('the search has read nothing for 500 ms', async () => entriesRead > 0 && Date.now() - lastReadAt > 500, 20_000);
  assert.ok(entriesRead < count / 2, `${entriesRead} of ${count} entries read after the client left`);
});

test('a large search takes its place in the budget of bytes held at once before it gathers more than 256 KiB: those waiting their turn hold no more (helper 98: 20 idle clients held 168 MiB for a budget of 12 MiB)', async (t) => {
  const budget = createConcurrencyLimit(12 * 1024 * 1024, 256);
  const peer = await startTestPeer([], 'qido-held', undefined, { heldInstanceBytes: budget });
  t.after(() => peer.dispose());
  // 2,600 instances of ~3.3 KB of JSON each: every search below is over 8 MiB, cut at the bound.
  const count = 2600;
  // Each in its own study and series: a result reads its own entry, and the one of its study for its counts.
  const studies = oneInstanceStudies(count, '1.2.826.0.1.3680043.10.1453.98.8', {
    sopClassUid: ct,
    patientId: () => 'P',
    attributes: (n) => longTextTags.map((tag) => ({ tag, vr: 'LT', value: `${n} `.padEnd(1000, 'x') })),
  });
  await peer.store.db.batch(studies.flatMap((entry) => catalogWriteOps(entry)));
  let entriesRead = 0;
  const getMany = peer.store.db.getMany.bind(peer.store.db);
  peer.store.db.getMany = ((keys: string[], ...rest: unknown[]) => {
    entriesRead += keys.length;
    return (getMany as (...args: unknown[]) => unknown)(keys, ...rest);
  }) as typeof peer.store.db.getMany;
  const clients = Array.from({ length: 20 }, () => {
    const client = connect({ host: '127.0.0.1', port: peer.httpPort });
    client.on('error', () => undefined);
    client.pause();
    client.write(`GET /dicom-web/instances?${longFields} HTTP/1.1\r\nHost: x\r\n\r\n`);
    return client;
  });
  try {
    // One response is held (its client does not read it); the 19 others wait their turn.
    await waitFor('one search holding its response, 19 waiting', async () => budget.stats().queued === 19, 60_000);
    // The one held read its 8 MiB of matches (~2,500, twice: each result's entry and its study's); the waiting
    // ones about 256 KiB each (~80 results, in a first batch of 256 entries), not their 8 MiB.
    assert.ok(entriesRead < 2 * count + 19 * 500, `${entriesRead} entries read: the searches waiting their turn gathered their whole results`);
  } finally {
    for (const client of clients) client.destroy();
  }
});
