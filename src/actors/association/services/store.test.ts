import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { CommandField } from '../../../codec/dimse.ts';
import { splitPart10 } from '../../../codec/dataset/part10.ts';
import { createReplicaStore, type ReplicaStore } from '../../storage/replica-store.ts';
import { isNewerInstance } from '../../storage/catalog.ts';
import type { CatalogEntry } from '../../storage/catalog-types.ts';
import { makeInstance } from '../../../../test/support/synthetic-dicom.ts';
import { localIngest, type IngestPort } from './deps.ts';
import { IncomingStore } from './store.ts';

const ct = '1.2.840.10008.5.1.4.1.1.2';

/** A C-STORE of a CT instance on context 1, as the association starts one. */
function cStoreOf(sopInstanceUid: string, transferSyntaxUid: string, ingest: IngestPort, dateMs: number): IncomingStore {
  return new IncomingStore(
    { commandField: CommandField.CStoreRq, messageId: 1, affectedSopClassUid: ct, affectedSopInstanceUid: sopInstanceUid, priority: 0, hasDataSet: true },
    { id: 1, abstractSyntaxUid: ct, transferSyntaxUid, service: 'storage', requestorIsScp: false },
    ingest,
    () => dateMs,
  );
}

/** Runs `body` with a fresh replica store, then closes and deletes it. */
async function withStore(prefix: string, body: (store: ReplicaStore) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const store = createReplicaStore({ path: dir });
  await store.open();
  try {
    await body(store);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** One instance through the C-STORE code into `store`, at a site whose clock reads `dateMs`. */
async function storeAt(store: ReplicaStore, dateMs: number, sopInstanceUid: string, patientName: string): Promise<CatalogEntry> {
  const bytes = makeInstance({ sopClassUid: ct, sopInstanceUid, patient: { id: 'SKEW-1', name: patientName }, study: { uid: '1.2.826.0.1.3680043.10.1453.72.1' }, rows: 4, columns: 4 });
  const split = splitPart10(bytes);
  const incoming = cStoreOf(sopInstanceUid, split.transferSyntaxUid, localIngest(store), dateMs);
  await incoming.push(bytes.slice(split.datasetOffset));
  assert.equal((await incoming.finish()).status, 0);
  return incoming.storedEntry!;
}

test('a store comes after every instance of its patient held here, whatever clock stored them (a hybrid logical clock)', async () => {
  await withStore('pacs-mesh-stored-at-', async (store) => {
    const nowMs = 1_800_000_000_000;
    // The original, stored at a site whose clock ran a day ahead (replicated here with its date).
    const original = await storeAt(store, nowMs + 24 * 3600_000, '1.2.826.0.1.3680043.10.1453.72.1.1.1', 'OLD^NAME');
    // The correction, stored here an hour later by the right clock: before, it stayed the older one, and
    // every site answered the old name.
    const correction = await storeAt(store, nowMs + 3600_000, '1.2.826.0.1.3680043.10.1453.72.1.1.2', 'NEW^NAME');
    assert.equal(correction.storedAtMs, original.storedAtMs + 1);
    assert.ok(isNewerInstance(correction, original));
    assert.equal(await store.newestStoredAtOfPatient('SKEW-1'), correction.storedAtMs);
    // With no later instance, the date is the date.
    const later = await storeAt(store, nowMs + 48 * 3600_000, '1.2.826.0.1.3680043.10.1453.72.1.1.3', 'NEW^NAME');
    assert.equal(later.storedAtMs, nowMs + 48 * 3600_000);
    assert.equal(await store.newestStoredAtOfPatient('NOBODY'), undefined);
  });
});

test("the patient's newest-instance read starts once the data set's Patient ID is read, not after its last fragment, and still orders the store after it", async () => {
  await withStore('pacs-mesh-early-newest-', async (store) => {
    const nowMs = 1_800_000_000_000;
    const original = await storeAt(store, nowMs + 24 * 3600_000, '1.2.826.0.1.3680043.10.1453.72.2.1.1', 'OLD^NAME');
    const sopInstanceUid = '1.2.826.0.1.3680043.10.1453.72.2.1.2';
    const bytes = makeInstance({ sopClassUid: ct, sopInstanceUid, patient: { id: 'SKEW-1', name: 'NEW^NAME' }, study: { uid: '1.2.826.0.1.3680043.10.1453.72.1' }, rows: 64, columns: 64 });
    const split = splitPart10(bytes);
    const dataSet = bytes.slice(split.datasetOffset);
    let fragmentsPushed = 0;
    const reads: Array<{ patientId: string; fragmentsPushed: number }> = [];
    const ingest = {
      ...localIngest(store),
      newestStoredAtOfPatient: (patientId: string) => {
        reads.push({ patientId, fragmentsPushed });
        return store.newestStoredAtOfPatient(patientId);
      },
    };
    const incoming = cStoreOf(sopInstanceUid, split.transferSyntaxUid, ingest, nowMs + 3600_000);
    const fragmentBytes = 512;
    const fragments = Math.ceil(dataSet.length / fragmentBytes);
    for (let at = 0; at < dataSet.length; at += fragmentBytes) {
      fragmentsPushed++;
      await incoming.push(dataSet.slice(at, at + fragmentBytes));
    }
    assert.equal((await incoming.finish()).status, 0);
    assert.equal(reads.length, 1, 'read once');
    assert.equal(reads[0]!.patientId, 'SKEW-1');
    assert.ok(reads[0]!.fragmentsPushed < fragments / 2, `read with fragment ${reads[0]!.fragmentsPushed} of ${fragments}`);
    assert.equal(incoming.storedEntry!.storedAtMs, original.storedAtMs + 1, 'after the newest instance of the patient, as before');
  });
});

test('tiny and empty fragments keep none of the PDUs they came in alive, and the instance is stored byte for byte (hunt 79: a view kept per PDV took the heap)', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  await withStore('pacs-mesh-tiny-fragments-', async (store) => {
    const sopInstanceUid = '1.2.826.0.1.3680043.10.1453.79.1.1';
    const bytes = makeInstance({ sopClassUid: ct, sopInstanceUid, rows: 128, columns: 128 });
    const split = splitPart10(bytes);
    const dataSet = bytes.slice(split.datasetOffset);
    const incoming = cStoreOf(sopInstanceUid, split.transferSyntaxUid, localIngest(store), 1_800_000_000_000);
    // A requestor's 2-byte PDVs, each followed by an empty one, each pair in a PDU of its own (8 KiB here);
    // then 4 KiB PDVs, each in a PDU of 256 KiB padded with empty PDVs.
    const pdus: Array<WeakRef<ArrayBuffer>> = [];
    const tinyEnd = dataSet.length - 4 * 4096;
    for (let at = 0; at < tinyEnd; at += 2) {
      const pdu = Buffer.alloc(8192);
      pdu.set(dataSet.subarray(at, at + 2), 100);
      pdus.push(new WeakRef(pdu.buffer));
      await incoming.push(pdu.subarray(100, 102));
      await incoming.push(pdu.subarray(102, 102));
    }
    for (let at = tinyEnd; at < dataSet.length; at += 4096) {
      const pdu = Buffer.alloc(256 * 1024);
      pdu.set(dataSet.subarray(at, at + 4096), 100);
      pdus.push(new WeakRef(pdu.buffer));
      await incoming.push(pdu.subarray(100, 4196));
    }
    // WeakRef targets stay alive until the current job ends (the loop above may be one): a macrotask first.
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    const alive = pdus.filter((ref) => ref.deref() !== undefined).length;
    assert.ok(alive < 4, `${alive} of ${pdus.length} PDUs still alive before the commit: views of them are kept`);
    const result = await incoming.finish();
    assert.equal(result.status, 0, `stored: ${result.errorComment ?? ''}`);
    const stored: Uint8Array[] = [];
    for await (const chunk of store.readInstance(incoming.storedEntry!)) stored.push(chunk);
    assert.ok(Buffer.concat(stored).equals(dataSet), 'the stored instance is the data set, byte for byte');
  });
});
