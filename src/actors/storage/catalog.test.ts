import { after, before, describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { Level } from 'level';
import { pack } from 'msgpackr';
import type { CatalogEntry } from './catalog-types.ts';
import {
  CatalogKeyError,
  STUDY_INDEX_PREFIX,
  catalogRecordText,
  entityFirstKeys,
  catalogDeleteOps,
  catalogWriteOps,
  countInstances,
  decodeCatalogEntry,
  encodeCatalogEntry,
  decodeKeyText,
  encodeKeyText,
  getCatalogEntry,
  buildHeldIndex,
  buildSearchIndexes,
  hasInstance,
  isNewerInstance,
  isValidUid,
  NEWEST_OF_PATIENT_PREFIX,
  NEWEST_OF_STUDY_PATIENT_PREFIX,
  newestInstances,
  heldInstanceBatches,
  iterateCatalog,
  patientIndexPrefix,
  prefixRange,
  type CatalogDb,
} from './catalog.ts';
import { cpuStopwatch } from '../../../test/support/cpu-time.ts';

function makeEntry(overrides: Partial<CatalogEntry> & { accessionNumber?: string } = {}): CatalogEntry {
  const { accessionNumber = 'ACC 1', ...fields } = overrides;
  return {
    sopInstanceUid: '1.2.3.4.5',
    sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
    studyInstanceUid: '1.2.3',
    seriesInstanceUid: '1.2.3.4',
    patientId: 'P!1',
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    byteLength: 1234,
    sha256: 'ab'.repeat(32),
    storedAtMs: 1_700_000_000_000,
    blobId: 'blob-1',
    attributes: [
      { tag: 0x00080050, vr: 'SH', value: accessionNumber },
      { tag: 0x00100010, vr: 'PN', value: 'Doe^John' },
    ],
    ...fields,
  };
}

describe('catalogWriteOps (pure)', () => {
  it('writes the entry, the held index and the indexes, with escaped PatientID and AccessionNumber, and an unknown StudyDate and Modality under the empty value', () => {
    const entry = makeEntry();
    const ops = catalogWriteOps(entry);
    assert.deepEqual(catalogWriteOps(entry), ops, 'same input, same output');
    assert.deepEqual(
      ops.map((op) => op.key),
      [
        'c!i!1.2.3.4.5',
        'h!1.2.3.4.5',
        `x!pid!${Buffer.from('P!1', 'latin1').toString('hex')}!1.2.3!1.2.3.4!1.2.3.4.5`,
        'x!study!1.2.3!1.2.3.4!1.2.3.4.5',
        'x!series!1.2.3.4!1.2.3.4.5',
        `x!newest!studypid!1.2.3:${Buffer.from('P!1', 'latin1').toString('hex')}!9005499254740991!1.2.3.4.5`,
        `x!newest!pid!${Buffer.from('P!1', 'latin1').toString('hex')}!9005499254740991!1.2.3.4.5`,
        `x!name!${Buffer.from('doe^john').toString('hex')}!${Buffer.from('P!1', 'latin1').toString('hex')}!1.2.3!1.2.3.4.5`,
        `x!da!!${Buffer.from('P!1', 'latin1').toString('hex')}!1.2.3!1.2.3.4.5`,
        'x!mod!!1.2.3!1.2.3.4!1.2.3.4.5',
        `x!acc!${Buffer.from('ACC 1').toString('hex')}!1.2.3!1.2.3.4!1.2.3.4.5`,
      ],
    );
    assert.ok(ops.every((op) => op.type === 'put' && /^[chx]!/.test(op.key)));
    assert.deepEqual(decodeCatalogEntry(ops[0]!.value), entry);
    assert.equal(Buffer.from(ops[1]!.value).toString('latin1'), entry.sha256, 'the held index keeps the SHA-256');
    assert.ok(ops.slice(2).every((op) => op.value.length === 0));
  });

  it('escapes every byte of PatientID (no ! can leak into the key structure)', () => {
    const patientId = 'a!b\xff\x00\xfc';
    const encoded = encodeKeyText(patientId);
    assert.match(encoded, /^[0-9a-f]+$/);
    assert.equal(decodeKeyText(encoded), patientId.replace(/\0$/, ''));
    assert.equal(encodeKeyText('  PAT 1  '), encodeKeyText('PAT 1'), 'padding is not significant');
    const key = catalogWriteOps(makeEntry({ patientId }))[2]!.key;
    assert.equal(key.split('!').length, 6);
  });

  it('indexes an empty AccessionNumber under the empty value (unknown: it matches every search by it), and accepts an empty PatientID', () => {
    const keys = catalogWriteOps(makeEntry({ accessionNumber: '', patientId: '' })).map((op) => op.key);
    assert.equal(keys.length, 11);
    assert.ok(keys.includes('x!acc!!1.2.3!1.2.3.4!1.2.3.4.5'));
    assert.ok(keys.includes('x!pid!!1.2.3!1.2.3.4!1.2.3.4.5'));
    assert.ok(keys.includes('x!newest!pid!!9005499254740991!1.2.3.4.5'));
  });

  it('refuses UIDs that could break the key structure', () => {
    for (const bad of ['1.2!3', '', '1.2.3 ', 'abc']) {
      assert.throws(
        () => catalogWriteOps(makeEntry({ studyInstanceUid: bad })),
        (error: unknown) => error instanceof CatalogKeyError && error.code === 'CATALOG_INVALID_UID' && error.name === 'CatalogKeyError',
      );
    }
  });

  it('catalogDeleteOps deletes exactly the keys that were written', () => {
    const entry = makeEntry();
    assert.deepEqual(
      catalogDeleteOps(entry),
      catalogWriteOps(entry).map((op) => ({ type: 'del', key: op.key })),
    );
  });

  it('the newest index sorts the newest instance of an entity first, as isNewerInstance decides (ties: smallest SOPInstanceUID)', () => {
    const storedAt = [5, 1_700_000_000_000, 1_700_000_000_000, 0, -3, 1.5, Number.NaN, 1_699_999_999_999, 1e16];
    const entries = storedAt.map((storedAtMs, i) => makeEntry({ sopInstanceUid: `1.2.3.4.${[3, 12, 2, 7, 1, 9, 4, 5, 6][i]}`, storedAtMs }));
    const studyKeyOf = (entry: CatalogEntry): string => catalogWriteOps(entry).find((op) => op.key.startsWith(NEWEST_OF_STUDY_PATIENT_PREFIX))!.key;
    const byKey = [...entries].sort((a, b) => (studyKeyOf(a) < studyKeyOf(b) ? -1 : 1));
    const byRule = [...entries].sort((a, b) => (isNewerInstance(a, b) ? -1 : isNewerInstance(b, a) ? 1 : 0));
    assert.deepEqual(byKey.map((entry) => entry.sopInstanceUid), byRule.map((entry) => entry.sopInstanceUid));
    assert.equal(byKey[0]!.sopInstanceUid, '1.2.3.4.12', 'of two stored in the newest millisecond, the smaller UID as text');
    // Values no peer writes (negative, fractional, NaN, beyond safe integers) count as 0: they sort last, by UID.
    assert.deepEqual(byKey.slice(-5).map((entry) => entry.sopInstanceUid), ['1.2.3.4.1', '1.2.3.4.4', '1.2.3.4.6', '1.2.3.4.7', '1.2.3.4.9']);
  });

  it('prefixRange selects exactly the keys under a prefix', () => {
    assert.deepEqual(prefixRange('x!pid!41!'), { gte: 'x!pid!41!', lt: 'x!pid!41"' });
    assert.notEqual(patientIndexPrefix('A'), patientIndexPrefix('AB').slice(0, patientIndexPrefix('A').length));
  });
});

describe('catalog records (pure)', () => {
  it('carry a CRC-32: a flipped byte anywhere is refused, not decoded into a wrong entry', () => {
    const entry = makeEntry();
    const record = encodeCatalogEntry(entry);
    assert.deepEqual(decodeCatalogEntry(record), entry);
    for (let at = 0; at < record.length; at += 7) {
      const damaged = Uint8Array.from(record);
      damaged[at]! ^= 0x10;
      assert.throws(() => decodeCatalogEntry(damaged), (error: Error) => error.name === 'CatalogRecordError' || at === 0, `byte ${at}`);
    }
    assert.throws(() => decodeCatalogEntry(record.subarray(0, 3)), { name: 'CatalogRecordError' });
  });

  it('records written before the checksum (plain msgpack) are read as they are', () => {
    const entry = makeEntry();
    assert.deepEqual(decodeCatalogEntry(new Uint8Array(pack(entry))), entry);
  });
});

describe('catalog in LevelDB', () => {
  let directory: string;
  let db: CatalogDb;

  before(async () => {
    directory = fs.mkdtempSync(os.tmpdir() + '/pacs-catalog-');
    db = new Level<string, Uint8Array>(directory, { keyEncoding: 'utf8', valueEncoding: 'view' });
    await db.open();
  });

  after(async () => {
    await db.close();
    fs.rmSync(directory, { recursive: true, force: true });
  });

  it('heldInstanceBatches skips a damaged held record (a bad hash would look like a UID conflict) and names it', async () => {
    const entry = makeEntry({ sopInstanceUid: '1.2.3.77' });
    await db.batch(catalogWriteOps(entry));
    await db.put('h!1.2.3.78', Buffer.from('d87\xc8427b', 'latin1'));
    const damaged: string[] = [];
    const held: string[] = [];
    for await (const batch of heldInstanceBatches(db, (key) => damaged.push(key))) held.push(...batch.map((h) => h.sopInstanceUid));
    assert.ok(held.includes('1.2.3.77'));
    assert.ok(!held.includes('1.2.3.78'));
    assert.deepEqual(damaged, ['h!1.2.3.78']);
    await db.batch([...catalogDeleteOps(entry), { type: 'del', key: 'h!1.2.3.78' }]);
  });

  it('reads back what a batch wrote; counts and iterates', async () => {
    const entries = [
      makeEntry({ sopInstanceUid: '1.2.3.4.1' }),
      makeEntry({ sopInstanceUid: '1.2.3.4.2', patientId: 'A' }),
      makeEntry({ sopInstanceUid: '1.2.3.4.3', patientId: 'AB' }),
    ];
    // Other owners' keys in the same db must not be counted.
    await db.batch(
      [
        ...entries.flatMap(catalogWriteOps),
        { type: 'put', key: 'b!blob-1!0', value: new Uint8Array([1, 2, 3]) },
        { type: 'put', key: 'd!something', value: new Uint8Array([4]) },
      ],
      { sync: true },
    );
    assert.deepEqual(await getCatalogEntry(db, '1.2.3.4.2'), entries[1]);
    assert.equal(await getCatalogEntry(db, '1.2.3.4.9'), undefined);
    assert.equal(await getCatalogEntry(db, 'not!a!uid'), undefined);
    assert.equal(await hasInstance(db, '1.2.3.4.3'), true);
    assert.equal(await hasInstance(db, '1.2.3.4.30'), false);
    assert.equal(await countInstances(db), 3);
    const iterated = [];
    for await (const entry of iterateCatalog(db)) iterated.push(entry.sopInstanceUid);
    assert.deepEqual(iterated, ['1.2.3.4.1', '1.2.3.4.2', '1.2.3.4.3']);
    const held = [];
    for await (const batch of heldInstanceBatches(db)) held.push(...batch);
    assert.deepEqual(held, entries.map(({ sopInstanceUid, sha256 }) => ({ sopInstanceUid, sha256 })));

    // Patient 'A' is a prefix scan that does not see patient 'AB'.
    const patientA: string[] = [];
    for await (const key of db.keys(prefixRange(patientIndexPrefix('A')))) patientA.push(key);
    assert.equal(patientA.length, 1);
    assert.ok(patientA[0]!.endsWith('!1.2.3.4.2'));

    await db.batch(catalogDeleteOps(entries[1]!), { sync: true });
    assert.equal(await hasInstance(db, '1.2.3.4.2'), false);
    assert.equal(await countInstances(db), 2);
    let remainingIndexKeys = 0;
    for await (const key of db.keys(prefixRange('x!'))) {
      remainingIndexKeys++;
      assert.ok(!key.endsWith('!1.2.3.4.2'));
    }
    assert.equal(remainingIndexKeys, 18);
  });

  it('buildHeldIndex gives a catalog written before the held index its held keys', async () => {
    const entries = [makeEntry({ sopInstanceUid: '1.8.1', sha256: 'cd'.repeat(32) }), makeEntry({ sopInstanceUid: '1.8.2' })];
    // A store written before the held index existed: its entries without their h! keys.
    await db.batch(entries.flatMap(catalogWriteOps).filter((op) => !op.key.startsWith('h!')));
    const countBefore = await countInstances(db);
    assert.equal(await buildHeldIndex(db), countBefore + 2, 'every entry gets its held key (existing ones rewritten)');
    assert.equal(await countInstances(db), countBefore + 2);
    const held = new Map<string, string>();
    for await (const batch of heldInstanceBatches(db)) for (const key of batch) held.set(key.sopInstanceUid, key.sha256);
    assert.equal(held.get('1.8.1'), 'cd'.repeat(32));
    assert.equal(held.get('1.8.2'), 'ab'.repeat(32));
    await db.batch(entries.flatMap(catalogDeleteOps));
  });

  it('newestInstances names the newest instance of each entity once, whatever its size; buildSearchIndexes writes the index of an older catalog', async () => {
    // Study 1.9.1 is a key prefix of 1.9.10, patient '' sorts before every other: the seek must land on the next entity.
    const entries = [
      ...[1, 2, 3, 4, 5].map((n) => makeEntry({ sopInstanceUid: `1.9.1.1.${n}`, studyInstanceUid: '1.9.1', patientId: '', storedAtMs: 100 + (n % 3) })),
      makeEntry({ sopInstanceUid: '1.9.10.1.1', studyInstanceUid: '1.9.10', patientId: 'Q', storedAtMs: 50 }),
      makeEntry({ sopInstanceUid: '1.9.10.1.2', studyInstanceUid: '1.9.10', patientId: 'Q', storedAtMs: 90 }),
    ];
    // Written as an older version did: no x!newest! keys.
    await db.batch(entries.flatMap(catalogWriteOps).filter((op) => !op.key.startsWith('x!newest!')));
    const newestOf = async (prefix: string, keysPerRead?: number) => {
      const found = [];
      for await (const newest of newestInstances(db, prefix, undefined, keysPerRead)) if (newest.sopInstanceUid.startsWith('1.9.')) found.push([newest.entityId, newest.sopInstanceUid]);
      return found;
    };
    assert.deepEqual(await newestOf(NEWEST_OF_STUDY_PATIENT_PREFIX), []);
    assert.ok((await buildSearchIndexes(db)) >= entries.length);
    // Keys of another shape (damaged on disk) are passed over, the newest of their entity still named.
    const part = (study: string, patientId: string): string => `${study}:${encodeKeyText(patientId)}`;
    const damaged = [`${NEWEST_OF_STUDY_PATIENT_PREFIX}${part('1.9.1', '')}!0`, `${NEWEST_OF_STUDY_PATIENT_PREFIX}${part('1.9.1', '')}!1!2!3`, `${NEWEST_OF_STUDY_PATIENT_PREFIX}${part('1.9.10', 'Q')}`];
    await db.batch(damaged.map((key) => ({ type: 'put', key, value: new Uint8Array(0) })));
    for (const keysPerRead of [1, 2, 3, 16]) {
      assert.deepEqual(await newestOf(NEWEST_OF_STUDY_PATIENT_PREFIX, keysPerRead), [[part('1.9.10', 'Q'), '1.9.10.1.2'], [part('1.9.1', ''), '1.9.1.1.2']], `${keysPerRead} keys per read ('0' sorts before ':')`);
      assert.deepEqual(await newestOf(NEWEST_OF_PATIENT_PREFIX, keysPerRead), [['', '1.9.1.1.2'], [encodeKeyText('Q'), '1.9.10.1.2']]);
    }
    // From the entity after a given one (a resumed search): neither it nor any before it, and its key a prefix of the next's.
    const after = async (prefix: string, afterEntityId: string) => {
      const found = [];
      for await (const newest of newestInstances(db, prefix, afterEntityId, 2)) if (newest.sopInstanceUid.startsWith('1.9.')) found.push(newest.entityId);
      return found;
    };
    assert.deepEqual(await after(NEWEST_OF_STUDY_PATIENT_PREFIX, part('1.9.10', 'Q')), [part('1.9.1', '')]);
    assert.deepEqual(await after(NEWEST_OF_STUDY_PATIENT_PREFIX, part('1.9.1', '')), []);
    assert.deepEqual(await after(NEWEST_OF_PATIENT_PREFIX, ''), [encodeKeyText('Q')]);
    await db.batch([...entries.flatMap(catalogDeleteOps), ...damaged.map((key) => ({ type: 'del' as const, key }))]);
  });

  it('entityFirstKeys names the first well-formed key of each entity, seeking after every read or only past entities that fill one', async () => {
    // Study 1.7.1 (40 instances) is larger than a read, 1.7.10 (one) a key prefix of it, 1.7.2 (three) small.
    const entries = [
      ...Array.from({ length: 40 }, (_, n) => makeEntry({ sopInstanceUid: `1.7.1.1.${100 + n}`, studyInstanceUid: '1.7.1', seriesInstanceUid: '1.7.1.1' })),
      makeEntry({ sopInstanceUid: '1.7.10.1.1', studyInstanceUid: '1.7.10', seriesInstanceUid: '1.7.10.1' }),
      ...[1, 2, 3].map((n) => makeEntry({ sopInstanceUid: `1.7.2.1.${n}`, studyInstanceUid: '1.7.2', seriesInstanceUid: '1.7.2.1' })),
    ];
    const damaged = [`${STUDY_INDEX_PREFIX}1.7.10!x`, `${STUDY_INDEX_PREFIX}1.7.2`];
    await db.batch([...entries.flatMap(catalogWriteOps), ...damaged.map((key) => ({ type: 'put' as const, key, value: new Uint8Array(0) }))]);
    const isStudyKey = (rest: string): boolean => rest.split('!').length === 2;
    const firstKeys = async (afterEntityId: string | undefined, keysPerRead: number, seekAfter: 'every-read' | 'entity-filled-read') => {
      const found = [];
      for await (const { entityId, key } of entityFirstKeys(db, STUDY_INDEX_PREFIX, isStudyKey, afterEntityId, keysPerRead, seekAfter)) if (entityId.startsWith('1.7.')) found.push([entityId, key.split('!').at(-1)]);
      return found;
    };
    for (const seekAfter of ['every-read', 'entity-filled-read'] as const) {
      for (const keysPerRead of [1, 2, 3, 8, 100]) {
        const what = `${seekAfter}, ${keysPerRead} keys per read`;
        assert.deepEqual(await firstKeys(undefined, keysPerRead, seekAfter), [['1.7.1', '1.7.1.1.100'], ['1.7.10', '1.7.10.1.1'], ['1.7.2', '1.7.2.1.1']], what);
        assert.deepEqual(await firstKeys('1.7.1', keysPerRead, seekAfter), [['1.7.10', '1.7.10.1.1'], ['1.7.2', '1.7.2.1.1']], what);
      }
    }
    await db.batch([...entries.flatMap(catalogDeleteOps), ...damaged.map((key) => ({ type: 'del' as const, key }))]);
  });

  it('catalogRecordText reads one field of a record as decoding it whole does, and checks the record as decoding does', () => {
    const entry = makeEntry({ patientId: 'P\xfc!1', studyInstanceUid: '1.2.'.padEnd(64, '7') });
    const fields = ['sopInstanceUid', 'studyInstanceUid', 'seriesInstanceUid', 'patientId'] as const;
    // Checked records, a plain one of an older build, and one whose fields come in another order (another writer).
    const { attributes, byteLength: _byteLength, storedAtMs: _storedAtMs, ...rest } = entry;
    const reordered = { attributes: [...attributes, { tag: 0x00291010, vr: 'OB', value: undefined }], byteLength: 2 ** 40, storedAtMs: -1.5, ...rest };
    for (const record of [encodeCatalogEntry(entry), pack(entry), encodeCatalogEntry(reordered)]) {
      for (const field of fields) assert.equal(catalogRecordText(record, field), decodeCatalogEntry(record)[field], field);
    }
    const damaged = encodeCatalogEntry(entry);
    damaged[damaged.length - 1] ^= 1;
    assert.throws(() => catalogRecordText(damaged, 'studyInstanceUid'), { code: 'ERR_CATALOG_RECORD_DAMAGED' });
    // Not a map holding the field as text: the caller decodes the entry instead.
    assert.equal(catalogRecordText(pack(['1.2.3']), 'studyInstanceUid'), undefined);
    assert.equal(catalogRecordText(pack({ sopInstanceUid: '1', studyInstanceUid: 7 }), 'studyInstanceUid'), undefined);
    assert.equal(catalogRecordText(pack({ sopInstanceUid: '1' }), 'studyInstanceUid'), undefined);
    assert.equal(catalogRecordText(pack({ sopInstanceUid: '1', studyInstanceUid: '1.2' }).subarray(0, 8), 'studyInstanceUid'), undefined, 'cut short');
  });

  it('counts 20,000 instances quickly with a keys-only scan', async () => {
    const batchSize = 2000;
    for (let start = 0; start < 20_000; start += batchSize) {
      const ops = [];
      for (let index = start; index < start + batchSize; index++) {
        ops.push(...catalogWriteOps(makeEntry({ sopInstanceUid: `1.9.${index}`, seriesInstanceUid: '1.9' })));
      }
      await db.batch(ops);
    }
    // CPU of all threads (LevelDB reads on libuv's), not wall time, which a loaded machine stretches.
    const cpuMs = cpuStopwatch();
    const count = await countInstances(db);
    const elapsedMs = cpuMs();
    assert.equal(count, 20_002);
    assert.ok(elapsedMs < 1000, `countInstances took ${elapsedMs.toFixed(1)} ms of CPU`);
    // A reader that stops after the first batch (its read-ahead still running) closes cleanly.
    for await (const batch of heldInstanceBatches(db)) {
      assert.ok(batch.length > 0);
      break;
    }
    let held = 0;
    for await (const batch of heldInstanceBatches(db)) held += batch.length;
    assert.equal(held, 20_002);
  });
});

test('a UID used as a key part is the C-STORE\'s: 1-64 digits and single dots', () => {
  for (const uid of ['1.2.3', '1.2.246.352.91.0000217', '1'.repeat(64)]) assert.ok(isValidUid(uid), uid);
  for (const uid of ['', '1..2', '.1', '1.', '1'.repeat(65), '1.2a']) assert.equal(isValidUid(uid), false, JSON.stringify(uid));
});
