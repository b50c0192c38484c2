/**
 * WADO-RS instances sent as stored (read whole up to 4 MiB) count in the budget of bytes held at once until
 * their part is written: clients that do not read their responses hold no more than it.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { createConcurrencyLimit, type ConcurrencyLimit } from '../../src/actors/runtime/concurrency-limit.ts';
import { Status } from '../../src/codec/dimse.ts';
import { openStoreClient, startTestPeer } from '../support/peer-fixture.ts';
import { waitFor } from '../support/wait.ts';

/** Stores `count` instances of random 16-bit pixels (rows x columns) in one series of `study`. */
async function storeStudy(dicomPort: number, study: string, count: number, rows: number, columns: number): Promise<void> {
  const store = await openStoreClient(dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  for (let n = 1; n <= count; n++) {
    const reply = await store.storeInstance({ study: { uid: study }, series: { uid: `${study}.1` }, sopInstanceUid: `${study}.1.${n}`, rows, columns, bitsAllocated: 16, pixelPattern: 'random' });
    assert.equal(reply.command.status, Status.Success);
  }
  await store.client.release();
}

test('instances sent as stored to clients that do not read are held within the budget of bytes held at once (helper 98: 40 such clients held 136 MiB beside a budget of 16 MiB)', async (t) => {
  const budget = createConcurrencyLimit(16 * 1024 * 1024, 256);
  const peer = await startTestPeer([], 'retrieve-held', undefined, { heldInstanceBytes: budget });
  t.after(() => peer.dispose());
  const study = '1.2.826.0.1.3680043.10.1453.98.21';
  // Six instances of 3 MB each: each read whole (up to 4 MiB) when sent as stored.
  await storeStudy(peer.dicomPort, study, 6, 1200, 1250);
  const clients = Array.from({ length: 40 }, () => {
    const client = connect({ host: '127.0.0.1', port: peer.httpPort });
    client.on('error', () => undefined);
    client.pause();
    client.write(`GET /dicom-web/studies/${study} HTTP/1.1\r\nHost: x\r\nAccept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n\r\n`);
    return client;
  });
  try {
    // The parts written to the first clients (and those prepared ahead) fill the budget; the others wait their turn.
    await waitFor('the budget full of unread parts, other retrieves waiting', async () => budget.stats().queued >= 30, 30_000);
    assert.ok(budget.stats().running <= 16 * 1024 * 1024, `${budget.stats().running} bytes held`);
  } finally {
    for (const client of clients) client.destroy();
  }
  // Once those clients are gone, every hold is given back.
  await waitFor('every hold given back', async () => budget.stats().running === 0 && budget.stats().queued === 0, 30_000);
});

test('a later instance of a WADO-RS response under way waits its turn in the budget of bytes held at once, not refused for a full queue (which could only cut the response)', async (t) => {
  const inner = createConcurrencyLimit(16 * 1024 * 1024, 1);
  let calls = 0;
  let releaseBlocker!: () => void;
  const blocker = new Promise<void>((resolve) => (releaseBlocker = resolve));
  // Another request comes in just as the response's second instance asks for its place: it fills the queue (of 1).
  const budget: ConcurrencyLimit = {
    run(work, weight, signal, admitted) {
      if (++calls === 2) {
        void inner.run(() => blocker, 16 * 1024 * 1024);
        setTimeout(releaseBlocker, 300);
      }
      return inner.run(work, weight, signal, admitted);
    },
    stats: () => inner.stats(),
  };
  const peer = await startTestPeer([], 'retrieve-held-admitted', undefined, { heldInstanceBytes: budget });
  t.after(() => peer.dispose());
  const study = '1.2.826.0.1.3680043.10.1453.99.31';
  await storeStudy(peer.dicomPort, study, 3, 512, 512);
  const response = await fetch(`http://127.0.0.1:${peer.httpPort}/dicom-web/studies/${study}`, { headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' } });
  assert.equal(response.status, 200);
  const body = Buffer.from(await response.arrayBuffer()).toString('latin1');
  assert.equal(body.match(/content-type: application\/dicom/gi)?.length, 3, 'every instance of the study in the response');
});
