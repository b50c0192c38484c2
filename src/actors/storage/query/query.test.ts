import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { Level } from 'level';
import type { DicomElement } from '../../../codec/dicom-types.ts';
import { Tags as T } from '../../../codec/dictionary.ts';
import type { CatalogEntry } from '../catalog-types.ts';
import { catalogEntryKey, catalogWriteOps, encodeCatalogEntry, type CatalogDb } from '../catalog.ts';
import { Prng } from '../../../sim/prng.ts';
import {
  QueryError,
  QueryStatus,
  createQueryStats,
  findMatches,
  findMatchesWithCursors,
  resolveRetrieve,
  validateQuery,
  validateRetrieve,
  type FindOptions,
  type QueryCursor,
  type QueryRequest,
} from './query.ts';

// Tags used by the tests (defined locally, no dictionary dependency).

const CT_IMAGE = '1.2.840.10008.5.1.4.1.1.2';
const MR_IMAGE = '1.2.840.10008.5.1.4.1.1.4';
const BASIC_TEXT_SR = '1.2.840.10008.5.1.4.1.1.88.11';

interface InstanceSpec {
  patientId: string;
  patientName: string;
  birthDate?: string;
  characterSet?: string;
  studyUid: string;
  studyDate: string;
  studyTime: string;
  accession: string;
  studyDescription: string;
  seriesUid: string;
  modality: string;
  seriesNumber: string;
  sopUid: string;
  sopClassUid: string;
  instanceNumber: string;
  storedAtMs: number;
}

function makeEntry(spec: InstanceSpec): CatalogEntry {
  const attributes: DicomElement[] = [
    ...(spec.characterSet ? [{ tag: T.SpecificCharacterSet, vr: 'CS', value: spec.characterSet }] : []),
    { tag: T.SOPClassUID, vr: 'UI', value: spec.sopClassUid },
    { tag: T.SOPInstanceUID, vr: 'UI', value: spec.sopUid },
    { tag: T.StudyDate, vr: 'DA', value: spec.studyDate },
    { tag: T.StudyTime, vr: 'TM', value: spec.studyTime },
    { tag: T.AccessionNumber, vr: 'SH', value: spec.accession },
    { tag: T.Modality, vr: 'CS', value: spec.modality },
    { tag: T.StudyDescription, vr: 'LO', value: spec.studyDescription },
    { tag: T.PatientName, vr: 'PN', value: spec.patientName },
    { tag: T.PatientID, vr: 'LO', value: spec.patientId },
    ...(spec.birthDate ? [{ tag: T.PatientBirthDate, vr: 'DA', value: spec.birthDate }] : []),
    { tag: T.StudyInstanceUID, vr: 'UI', value: spec.studyUid },
    { tag: T.SeriesInstanceUID, vr: 'UI', value: spec.seriesUid },
    { tag: T.SeriesNumber, vr: 'IS', value: spec.seriesNumber },
    { tag: T.InstanceNumber, vr: 'IS', value: spec.instanceNumber },
  ];
  return {
    sopInstanceUid: spec.sopUid,
    sopClassUid: spec.sopClassUid,
    studyInstanceUid: spec.studyUid,
    seriesInstanceUid: spec.seriesUid,
    patientId: spec.patientId,
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    byteLength: 1000,
    sha256: '00'.repeat(32),
    storedAtMs: spec.storedAtMs,
    blobId: `blob-${spec.sopUid}`,
    attributes,
  };
}

// ---------------------------------------------------------------------------------------------------
// Fixture: 4 patients, 5 studies, 7 series, 11 instances.

const P1 = 'PAT!1';
const P2 = 'ID\xfc!\xff 2'; // non-ASCII bytes and `!`
const P3 = ''; // no PatientID
const P4 = 'PAT!10'; // P1 is a string prefix of it
const S1 = '1.2.826.0.1.1';
const S2 = '1.2.826.0.1.2';
const S3 = '1.2.826.0.2.1';
const S4 = '1.2.826.0.3.1';
const S5 = '1.2.826.0.4.1';

function fixture(): CatalogEntry[] {
  const entries: CatalogEntry[] = [];
  let storedAtMs = 1_000;
  const add = (
    patient: Pick<InstanceSpec, 'patientId' | 'patientName' | 'birthDate' | 'characterSet'>,
    study: Pick<InstanceSpec, 'studyUid' | 'studyDate' | 'studyTime' | 'accession' | 'studyDescription'>,
    series: { number: number; modality: string; sopClassUid: string; count: number; lastDescription?: string },
  ): void => {
    for (let index = 1; index <= series.count; index++) {
      const seriesUid = `${study.studyUid}.${series.number}`;
      const isLast = index === series.count;
      entries.push(
        makeEntry({
          ...patient,
          ...study,
          studyDescription: isLast && series.lastDescription ? series.lastDescription : study.studyDescription,
          seriesUid,
          modality: series.modality,
          seriesNumber: String(series.number),
          sopUid: `${seriesUid}.${index}`,
          sopClassUid: series.sopClassUid,
          instanceNumber: String(index),
          storedAtMs: storedAtMs++,
        }),
      );
    }
  };
  const john = { patientId: P1, patientName: 'Doe^John', birthDate: '19700101' };
  const study1 = { studyUid: S1, studyDate: '20200115', studyTime: '101500', accession: 'ACC-001', studyDescription: 'CT CHEST' };
  add(john, study1, { number: 1, modality: 'CT', sopClassUid: CT_IMAGE, count: 3 });
  // The most recently stored instance of S1 carries a corrected description: it wins.
  add(john, study1, { number: 2, modality: 'CT', sopClassUid: CT_IMAGE, count: 2, lastDescription: 'CT CHEST W/O' });
  const study2 = { studyUid: S2, studyDate: '20210610', studyTime: '143000', accession: 'ACC-002', studyDescription: 'MR HEAD' };
  add(john, study2, { number: 1, modality: 'MR', sopClassUid: MR_IMAGE, count: 2 });
  add(john, study2, { number: 2, modality: 'SR', sopClassUid: BASIC_TEXT_SR, count: 1 });
  add(
    { patientId: P2, patientName: 'SMITH^jane^^', birthDate: '19851224', characterSet: 'ISO_IR 100' },
    { studyUid: S3, studyDate: '20201231', studyTime: '2359', accession: 'ACC-001', studyDescription: 'MR KNEE' },
    { number: 1, modality: 'MR', sopClassUid: MR_IMAGE, count: 1 },
  );
  add(
    { patientId: P3, patientName: 'Anon' },
    { studyUid: S4, studyDate: '1993.04.30', studyTime: '', accession: '', studyDescription: 'OLD CT' },
    { number: 1, modality: 'CT', sopClassUid: CT_IMAGE, count: 1 },
  );
  add(
    { patientId: P4, patientName: 'doe^johnny', birthDate: '19900101' },
    { studyUid: S5, studyDate: '20220301', studyTime: '080000', accession: 'ACC-003', studyDescription: 'CT ABDOMEN' },
    { number: 1, modality: 'CT', sopClassUid: CT_IMAGE, count: 1 },
  );
  return entries;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

const k = (tag: number, vr: string, value: string | undefined = ''): DicomElement => ({ tag, vr, value });

function openTempDb(): { db: CatalogDb; close: () => Promise<void> } {
  const directory = fs.mkdtempSync(os.tmpdir() + '/pacs-catalog-');
  const db = new Level<string, Uint8Array>(directory, { keyEncoding: 'utf8', valueEncoding: 'view' });
  return {
    db,
    close: async () => {
      await db.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

async function store(db: CatalogDb, entries: CatalogEntry[]): Promise<void> {
  const batchSize = 1000;
  for (let start = 0; start < entries.length; start += batchSize) {
    await db.batch(entries.slice(start, start + batchSize).flatMap(catalogWriteOps));
  }
}

async function find(db: CatalogDb, request: QueryRequest, options?: FindOptions): Promise<DicomElement[][]> {
  const responses: DicomElement[][] = [];
  for await (const response of findMatches(db, request, options)) responses.push(response);
  return responses;
}

function valueOf(response: DicomElement[], tag: number): string | undefined {
  return response.find((element) => element.tag === tag)?.value;
}

function column(responses: DicomElement[][], tag: number): string[] {
  return responses.map((response) => valueOf(response, tag) ?? '<absent>').sort();
}

async function retrieveUids(db: CatalogDb, request: QueryRequest): Promise<string[]> {
  const uids: string[] = [];
  for await (const entry of resolveRetrieve(db, request)) uids.push(entry.sopInstanceUid);
  return uids.sort();
}

function assertInvalid(result: ReturnType<typeof validateQuery>, status: number, comment: RegExp): void {
  assert.equal(result.ok, false);
  if (!result.ok) {
    assert.equal(result.status, status);
    assert.match(result.comment, comment);
  }
}

// ---------------------------------------------------------------------------------------------------

describe('validateQuery', () => {
  it('refuses a level the root does not have, or a missing level, with 0xA900', () => {
    assertInvalid(validateQuery({ root: 'STUDY', level: 'PATIENT', keys: [] }), 0xa900, /not valid for the Study Root/);
    assertInvalid(validateQuery({ root: 'PATIENT', level: '' as never, keys: [] }), 0xa900, /missing or invalid/);
    assertInvalid(validateQuery({ root: 'PATIENT', level: undefined as never, keys: [] }), 0xa900, /missing/);
    assert.deepEqual(validateQuery({ root: 'PATIENT', level: 'PATIENT', keys: [] }), { ok: true });
  });

  it('refuses keys of lower levels with a value, and lower unique keys, with 0xA900 and names the key', () => {
    assertInvalid(
      validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.Modality, 'CS', 'CT')] }),
      0xa900,
      /\(0008,0060\) is a SERIES-level attribute, not allowed with a value/,
    );
    assertInvalid(
      validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.NumberOfSeriesRelatedInstances, 'IS', '3')] }),
      0xa900,
      /\(0020,1209\)/,
    );
    assertInvalid(
      validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.SeriesInstanceUID, 'UI')] }),
      0xa900,
      /SERIES-level/,
    );
    assertInvalid(
      validateQuery({ root: 'PATIENT', level: 'PATIENT', keys: [k(T.StudyInstanceUID, 'UI')] }),
      0xa900,
      /STUDY-level/,
    );
    assertInvalid(
      validateQuery({ root: 'STUDY', level: 'SERIES', keys: [k(T.SOPInstanceUID, 'UI', '1.2')] }),
      0xa900,
      /IMAGE-level/,
    );
  });

  it('accepts upper-level keys, patient keys in Study Root, and keys allowed at any level', () => {
    const ok = { ok: true };
    assert.deepEqual(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', 'DOE*'), k(T.NumberOfPatientRelatedStudies, 'IS')] }), ok);
    assert.deepEqual(validateQuery({ root: 'PATIENT', level: 'IMAGE', keys: [k(T.PatientName, 'PN', 'DOE*'), k(T.StudyDate, 'DA', '20200101-')] }), ok);
    assert.deepEqual(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.SpecificCharacterSet, 'CS', 'ISO_IR 100'), k(T.QueryRetrieveLevel, 'CS', 'STUDY')] }), ok);
  });

  it('takes the attributes of the series modules (General Series, General Equipment, Frame of Reference) at SERIES level, and of the study modules at STUDY level (helper 98: PatientPosition was an IMAGE attribute, refused with 0xA900)', () => {
    const ok = { ok: true };
    const seriesKeys: Array<[number, string, string]> = [
      [0x00185100, 'CS', 'HFS'], // Patient Position
      [0x00181020, 'LO', '05'], // Software Versions
      [0x00181000, 'LO', 'SN1'], // Device Serial Number
      [0x00080081, 'ST', 'X'], // Institution Address
      [0x00201040, 'LO', 'XY'], // Position Reference Indicator
      [0x00280108, 'US', '0'], // Smallest Pixel Value in Series
      [0x00400250, 'DA', '20200101'], // Performed Procedure Step End Date
    ];
    for (const [tag, vr, value] of seriesKeys) {
      assert.deepEqual(validateQuery({ root: 'STUDY', level: 'SERIES', keys: [k(tag, vr, value)] }), ok, `(${tag.toString(16)}) at SERIES level`);
      assertInvalid(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(tag, vr, value)] }), 0xa900, /SERIES-level/);
    }
    const studyKeys: Array<[number, string, string]> = [
      [0x00380010, 'LO', 'ADM1'], // Admission ID
      [0x0008009c, 'PN', 'DOE'], // Consulting Physician's Name
      [0x00321033, 'LO', 'RAD'], // Requesting Service
      [0x001021c0, 'US', '4'], // Pregnancy Status (Patient Study module)
    ];
    for (const [tag, vr, value] of studyKeys) {
      assert.deepEqual(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(tag, vr, value)] }), ok, `(${tag.toString(16)}) at STUDY level`);
    }
    assertInvalid(validateQuery({ root: 'PATIENT', level: 'PATIENT', keys: [k(0x001021c0, 'US', '4')] }), 0xa900, /STUDY-level/);
  });

  it('refuses malformed ranges with 0xC001 and a comment', () => {
    assertInvalid(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyDate, 'DA', '2020-01-01')] }), 0xc001, /\(0008,0020\).*malformed DA/);
    assertInvalid(validateQuery({ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyTime, 'TM', 'noon-')] }), 0xc001, /malformed TM/);
    assert.equal(QueryStatus.MalformedMatchingKey, 0xc001);
  });
});

describe('findMatches and resolveRetrieve over a fixture archive', () => {
  let db: CatalogDb;
  let close: () => Promise<void>;

  before(async () => {
    ({ db, close } = openTempDb());
    await db.open();
    await store(db, fixture());
  });
  after(async () => close());

  describe('PATIENT level (Patient Root)', () => {
    it('returns each patient once with exactly the requested keys, QueryRetrieveLevel and the counts', async () => {
      const responses = await find(db, {
        root: 'PATIENT',
        level: 'PATIENT',
        keys: [
          k(T.PatientName, 'PN'),
          k(T.PatientID, 'LO'),
          k(T.NumberOfPatientRelatedStudies, 'IS'),
          k(T.NumberOfPatientRelatedSeries, 'IS'),
          k(T.NumberOfPatientRelatedInstances, 'IS'),
        ],
      });
      assert.equal(responses.length, 4);
      assert.deepEqual(column(responses, T.PatientID), [P3, P2, P1, P4].sort());
      const john = responses.find((response) => valueOf(response, T.PatientID) === P1)!;
      assert.deepEqual(john, [
        { tag: T.QueryRetrieveLevel, vr: 'CS', value: 'PATIENT' },
        { tag: T.PatientName, vr: 'PN', value: 'Doe^John' },
        { tag: T.PatientID, vr: 'LO', value: P1 },
        { tag: T.NumberOfPatientRelatedStudies, vr: 'IS', value: '2' },
        { tag: T.NumberOfPatientRelatedSeries, vr: 'IS', value: '4' },
        { tag: T.NumberOfPatientRelatedInstances, vr: 'IS', value: '8' },
      ]);
      const anonymous = responses.find((response) => valueOf(response, T.PatientID) === '')!;
      assert.equal(valueOf(anonymous, T.PatientName), 'Anon');
    });

    it('looks up a PatientID through the index, without matching a longer ID', async () => {
      const stats = createQueryStats();
      const responses = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] }, { stats });
      assert.deepEqual(column(responses, T.PatientID), [P1]);
      assert.equal(stats.plan, 'index x!pid! (PatientID)');
      assert.equal(stats.entriesRead, 8);
    });

    it('finds a PatientID with non-ASCII bytes and returns the stored SpecificCharacterSet', async () => {
      const responses = await find(db, {
        root: 'PATIENT',
        level: 'PATIENT',
        keys: [k(T.SpecificCharacterSet, 'CS'), k(T.PatientID, 'LO', P2), k(T.PatientName, 'PN')],
      });
      assert.equal(responses.length, 1);
      assert.equal(valueOf(responses[0]!, T.SpecificCharacterSet), 'ISO_IR 100');
      assert.equal(valueOf(responses[0]!, T.PatientName), 'SMITH^jane^^');
    });

    it('finds a non-ASCII PatientID sent in another character set: matched as characters over a scan, not by bytes', async () => {
      const utf8 = (text: string) => Buffer.from(text, 'utf8').toString('latin1');
      const stats = createQueryStats();
      const keys = [k(T.SpecificCharacterSet, 'CS', 'ISO_IR 192'), k(T.PatientID, 'LO', utf8('ID\u00fc!\u00ff 2'))];
      const responses = await find(db, { root: 'PATIENT', level: 'PATIENT', keys }, { stats });
      assert.deepEqual(column(responses, T.PatientID), [P2]);
      assert.equal(stats.plan, 'full scan x!pid!');
      const studies = await find(db, { root: 'STUDY', level: 'STUDY', keys: [...keys, k(T.StudyInstanceUID, 'UI')] });
      assert.deepEqual(column(studies, T.StudyInstanceUID), [S3]);
    });

    it('adds the stored SpecificCharacterSet, unasked, to a response whose values go beyond ASCII (PS3.4 C.4.1.1.3.2)', async () => {
      const nonAscii = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P2), k(T.PatientName, 'PN')] });
      assert.equal(valueOf(nonAscii[0]!, T.SpecificCharacterSet), 'ISO_IR 100');
      assert.deepEqual(nonAscii[0]!.map((element) => element.tag), [T.SpecificCharacterSet, T.QueryRetrieveLevel, T.PatientName, T.PatientID]);
      const ascii = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientName, 'PN', 'SMITH*'), k(T.PatientBirthDate, 'DA')] });
      assert.equal(ascii.length, 1);
      assert.equal(valueOf(ascii[0]!, T.SpecificCharacterSet), undefined, 'only ASCII values: not added');
    });

    it('answers an asked SpecificCharacterSet empty when every returned value is ASCII (Orthanc 1.10 fails a query over a multi-valued one)', async () => {
      const asked = (more: ReturnType<typeof k>[]) =>
        find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.SpecificCharacterSet, 'CS'), k(T.PatientName, 'PN', 'SMITH*'), ...more] });
      const [ascii] = await asked([k(T.PatientBirthDate, 'DA')]);
      assert.equal(valueOf(ascii!, T.SpecificCharacterSet), '');
      const [nonAscii] = await asked([k(T.PatientID, 'LO')]);
      assert.equal(valueOf(nonAscii!, T.SpecificCharacterSet), 'ISO_IR 100');
    });

    it('ignores File Meta and command elements in an identifier: neither matched nor returned', async () => {
      const plain = await find(db, { root: 'STUDY', level: 'IMAGE', keys: [k(T.StudyInstanceUID, 'UI', S3), k(T.SOPInstanceUID, 'UI')] });
      assert.ok(plain.length > 0);
      const withMeta = await find(db, {
        root: 'STUDY',
        level: 'IMAGE',
        keys: [k(0x00000900, 'US', ''), k(0x00020002, 'UI', CT_IMAGE), k(0x00020003, 'UI'), k(T.StudyInstanceUID, 'UI', S3), k(T.SOPInstanceUID, 'UI')],
      });
      assert.deepEqual(withMeta, plain);
    });

    it('never matches a private key, whatever its value, nor refuses one above IMAGE level (returned empty there)', async () => {
      const studies = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(0x00090010, 'LO', 'FOO'), k(0x00091001, 'LO', 'BAR')] });
      assert.equal(studies.length, 5);
      assert.deepEqual(column(studies, 0x00090010), ['', '', '', '', '']);
      const images = await find(db, { root: 'STUDY', level: 'IMAGE', keys: [k(T.StudyInstanceUID, 'UI', S3), k(T.SOPInstanceUID, 'UI'), k(0x00090010, 'LO', 'FOO')] });
      assert.equal(images.length, 1);
    });

    it('matches PN case-insensitively, ignoring trailing empty components', async () => {
      const responses = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.PatientName, 'PN', 'smith^JANE')] });
      assert.deepEqual(column(responses, T.PatientID), [P2]);
      const wildcard = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.PatientName, 'PN', 'DOE^JOHN*')] });
      assert.deepEqual(column(wildcard, T.PatientID), [P1, P4].sort());
    });

    it('range-matches PatientBirthDate; patients without one do not match', async () => {
      const responses = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.PatientBirthDate, 'DA', '-19891231')] });
      assert.deepEqual(column(responses, T.PatientID), [P2, P1].sort());
    });

    it('wildcard on PatientID reads the range of its literal start and matches both IDs starting with PAT!1', async () => {
      const stats = createQueryStats();
      const responses = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'PAT!1*')] }, { stats });
      assert.deepEqual(column(responses, T.PatientID), [P1, P4].sort());
      assert.equal(stats.plan, 'range x!pid! (PatientID literal start)');
      const scanned = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', '*!1*')] }, { stats: createQueryStats() });
      assert.deepEqual(column(scanned, T.PatientID), [P1, P4].sort(), 'and the same without a literal start (a scan)');
    });
  });

  describe('keys sent with another VR than the attribute\'s (hunt 85: a UI key sent as LO was wildcard-matched)', () => {
    it('are matched by the attribute\'s dictionary VR and answered in it', async () => {
      for (const searchIndexes of [true, false]) {
        const studies = async (key: DicomElement) => column(await find(db, { root: 'STUDY', level: 'STUDY', keys: key.tag === T.StudyInstanceUID ? [key] : [k(T.StudyInstanceUID, 'UI'), key] }, { searchIndexes }), T.StudyInstanceUID);
        // UI takes no wildcards (PS3.4 C.2.2.2.4), whatever VR the requestor wrote.
        assert.deepEqual(await studies(k(T.StudyInstanceUID, 'LO', '1.2.826*')), []);
        assert.deepEqual(await studies(k(T.StudyInstanceUID, 'SH', '1.2.826.0.?.1')), []);
        assert.deepEqual(await studies(k(T.StudyInstanceUID, 'LO', S3)), [S3]);
        // A DA key sent as LO is still a date range; a PN key sent as LO still ignores case.
        assert.deepEqual(await studies(k(T.StudyDate, 'LO', '20200101-20201231')), [S1, S3].sort());
        assert.deepEqual(await studies(k(T.PatientName, 'LO', 'doe^john')), [S1, S2].sort());
      }
      const [response] = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'LO', S3), k(T.StudyDate, 'LO')] });
      assert.deepEqual(response?.find((e) => e.tag === T.StudyInstanceUID), { tag: T.StudyInstanceUID, vr: 'UI', value: S3 });
      assert.deepEqual(response?.find((e) => e.tag === T.StudyDate), { tag: T.StudyDate, vr: 'DA', value: '20201231' });
    });
  });

  describe('STUDY level', () => {
    const studyKeys = (): DicomElement[] => [
      k(T.StudyInstanceUID, 'UI'),
      k(T.StudyDate, 'DA'),
      k(T.StudyDescription, 'LO'),
      k(T.ModalitiesInStudy, 'CS'),
      k(T.SOPClassesInStudy, 'UI'),
      k(T.NumberOfStudyRelatedSeries, 'IS'),
      k(T.NumberOfStudyRelatedInstances, 'IS'),
    ];

    it('Patient Root: the studies of one patient, with computed attributes and the latest description', async () => {
      const responses = await find(db, { root: 'PATIENT', level: 'STUDY', keys: [k(T.PatientID, 'LO', P1), ...studyKeys()] });
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S1, S2]);
      const study1 = responses.find((response) => valueOf(response, T.StudyInstanceUID) === S1)!;
      assert.equal(valueOf(study1, T.StudyDescription), 'CT CHEST W/O', 'attributes of the most recently stored instance');
      assert.equal(valueOf(study1, T.ModalitiesInStudy), 'CT');
      assert.equal(valueOf(study1, T.SOPClassesInStudy), CT_IMAGE);
      assert.equal(valueOf(study1, T.NumberOfStudyRelatedSeries), '2');
      assert.equal(valueOf(study1, T.NumberOfStudyRelatedInstances), '5');
      assert.equal(valueOf(study1, T.QueryRetrieveLevel), 'STUDY');
      const study2 = responses.find((response) => valueOf(response, T.StudyInstanceUID) === S2)!;
      assert.equal(valueOf(study2, T.ModalitiesInStudy), 'MR\\SR');
      assert.equal(valueOf(study2, T.SOPClassesInStudy), [MR_IMAGE, BASIC_TEXT_SR].sort().join('\\'));
      assert.equal(valueOf(study2, T.NumberOfStudyRelatedInstances), '3');
    });

    it('empty keys of lower levels are returned zero-length, not taken from one instance, and do not fail the query', async () => {
      const referencedStudySequence = 0x00081110; // not in our level tables: an IMAGE-level attribute
      const responses = await find(db, {
        root: 'PATIENT',
        level: 'STUDY',
        keys: [k(T.PatientID, 'LO', P1), k(T.StudyInstanceUID, 'UI'), k(T.Modality, 'CS'), k(T.NumberOfSeriesRelatedInstances, 'IS'), k(referencedStudySequence, 'SQ', undefined)],
      });
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S1, S2]);
      for (const response of responses) {
        assert.equal(valueOf(response, T.Modality), '');
        assert.equal(valueOf(response, T.NumberOfSeriesRelatedInstances), '');
        assert.deepEqual(response.find((e) => e.tag === referencedStudySequence), { tag: referencedStudySequence, vr: 'SQ', value: undefined });
      }
    });

    it('Study Root: wildcard PatientName (a patient attribute) is case-insensitive; through the name index', async () => {
      const stats = createQueryStats();
      const responses = await find(
        db,
        { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', 'doe*'), k(T.StudyInstanceUID, 'UI')] },
        { stats },
      );
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S1, S2, S5]);
      assert.equal(stats.plan, 'index x!name! (PatientName)');
    });

    it('Study Root: StudyDate ranges (closed, open, legacy stored format) and single values, through the date index', async () => {
      const byDate = async (value: string): Promise<string[]> => {
        const stats = createQueryStats();
        const found = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.StudyDate, 'DA', value)] }, { stats });
        assert.equal(stats.plan, 'index x!da! (StudyDate)');
        return column(found, T.StudyInstanceUID);
      };
      assert.deepEqual(await byDate('20200101-20201231'), [S1, S3]);
      assert.deepEqual(await byDate('20210101-'), [S2, S5]);
      assert.deepEqual(await byDate('-19991231'), [S4]);
      assert.deepEqual(await byDate('19930430'), [S4], 'stored as 1993.04.30');
      assert.deepEqual(await byDate('20200115'), [S1]);
      assert.deepEqual(await byDate('20200115\\20220301'), [S1, S5]);
    });

    it('Study Root: StudyTime range', async () => {
      const responses = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.StudyTime, 'TM', '1400-2359')] });
      // S4's StudyTime is unknown (zero length): a Required Key, it matches (PS3.4 C.2.2.1.2).
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S2, S3, S4]);
    });

    it('Study Root: ModalitiesInStudy matches any modality of the study (OR for several values)', async () => {
      const byModality = async (value: string): Promise<string[]> =>
        column(
          await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.ModalitiesInStudy, 'CS', value)] }),
          T.StudyInstanceUID,
        );
      assert.deepEqual(await byModality('MR'), [S2, S3]);
      assert.deepEqual(await byModality('CT\\SR'), [S1, S2, S4, S5]);
      assert.deepEqual(await byModality('US'), []);
    });

    it('Study Root: AccessionNumber lookup uses its index and finds every study with it', async () => {
      const stats = createQueryStats();
      const responses = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.AccessionNumber, 'SH', 'ACC-001')] }, { stats });
      // S4's AccessionNumber is unknown: it matches too (C.2.2.1.2), found under the index's empty value.
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S1, S3, S4]);
      assert.equal(stats.plan, 'index x!acc! (AccessionNumber)');
      assert.equal(stats.entriesRead, 7);
      const wildcard = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.AccessionNumber, 'SH', 'ACC-00?')] });
      assert.deepEqual(column(wildcard, T.StudyInstanceUID), [S1, S2, S3, S4, S5]);
    });

    it('Study Root: list of StudyInstanceUIDs uses the study index; an unknown or invalid UID matches nothing', async () => {
      const stats = createQueryStats();
      const responses = await find(
        db,
        { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', `${S1}\\${S3}\\9.9.9\\not!a!uid`)] },
        { stats },
      );
      assert.deepEqual(column(responses, T.StudyInstanceUID), [S1, S3]);
      assert.equal(stats.plan, 'index x!study! (StudyInstanceUID)');
      assert.equal(stats.entriesRead, 6);
      assert.deepEqual(await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', 'not!a!uid')] }), []);
    });

    it('Study Root: patient attributes and patient counts at STUDY level; unknown keys come back empty', async () => {
      const responses = await find(db, {
        root: 'STUDY',
        level: 'STUDY',
        keys: [
          k(T.StudyInstanceUID, 'UI', S1),
          k(T.PatientID, 'LO'),
          k(T.PatientName, 'PN'),
          k(T.NumberOfPatientRelatedStudies, 'IS'),
          k(T.ReferringPhysicianName, 'PN'),
          k(T.InstanceAvailability, 'CS'),
        ],
      });
      assert.equal(responses.length, 1);
      const [study] = responses;
      assert.equal(valueOf(study!, T.PatientID), P1);
      assert.equal(valueOf(study!, T.PatientName), 'Doe^John');
      assert.equal(valueOf(study!, T.NumberOfPatientRelatedStudies), '2');
      assert.deepEqual(study!.find((element) => element.tag === T.ReferringPhysicianName), { tag: T.ReferringPhysicianName, vr: 'PN', value: '' });
      assert.equal(valueOf(study!, T.InstanceAvailability), 'ONLINE');
      assert.deepEqual(study!.map((element) => element.tag), [...study!.map((element) => element.tag)].sort((a, b) => a - b));
    });

    it('stops after the limit', async () => {
      const responses = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI')] }, { limit: 2 });
      assert.equal(responses.length, 2);
    });

    it('throws a QueryError carrying the status for an invalid request', async () => {
      await assert.rejects(find(db, { root: 'STUDY', level: 'PATIENT', keys: [] }), (error: unknown) => {
        assert.ok(error instanceof QueryError);
        assert.equal(error.name, 'QueryError');
        assert.equal(error.code, 'INVALID_QUERY');
        assert.equal(error.status, 0xa900);
        return true;
      });
    });
  });

  describe('SERIES level', () => {
    it('Study Root: the series of a study with their instance counts', async () => {
      const responses = await find(db, {
        root: 'STUDY',
        level: 'SERIES',
        keys: [k(T.StudyInstanceUID, 'UI', S1), k(T.SeriesInstanceUID, 'UI'), k(T.Modality, 'CS'), k(T.SeriesNumber, 'IS'), k(T.NumberOfSeriesRelatedInstances, 'IS')],
      });
      assert.equal(responses.length, 2);
      const bySeries = new Map(responses.map((response) => [valueOf(response, T.SeriesInstanceUID), response]));
      assert.equal(valueOf(bySeries.get(`${S1}.1`)!, T.NumberOfSeriesRelatedInstances), '3');
      assert.equal(valueOf(bySeries.get(`${S1}.2`)!, T.NumberOfSeriesRelatedInstances), '2');
      assert.equal(valueOf(bySeries.get(`${S1}.2`)!, T.Modality), 'CT');
      assert.equal(valueOf(bySeries.get(`${S1}.2`)!, T.QueryRetrieveLevel), 'SERIES');
    });

    it('Patient Root: PatientID + StudyInstanceUID narrow, Modality matches', async () => {
      const responses = await find(db, {
        root: 'PATIENT',
        level: 'SERIES',
        keys: [k(T.PatientID, 'LO', P1), k(T.StudyInstanceUID, 'UI', S2), k(T.SeriesInstanceUID, 'UI'), k(T.Modality, 'CS', 'SR')],
      });
      assert.deepEqual(column(responses, T.SeriesInstanceUID), [`${S2}.2`]);
      const wrongPatient = await find(db, {
        root: 'PATIENT',
        level: 'SERIES',
        keys: [k(T.PatientID, 'LO', P2), k(T.StudyInstanceUID, 'UI', S2), k(T.SeriesInstanceUID, 'UI')],
      });
      assert.deepEqual(wrongPatient, []);
    });

    it('SeriesInstanceUID list uses the series index; upper-level counts are computed too', async () => {
      const stats = createQueryStats();
      const responses = await find(
        db,
        {
          root: 'STUDY',
          level: 'SERIES',
          keys: [k(T.SeriesInstanceUID, 'UI', `${S1}.1\\${S3}.1`), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.ModalitiesInStudy, 'CS')],
        },
        { stats },
      );
      assert.equal(stats.plan, 'index x!series! (SeriesInstanceUID)');
      const bySeries = new Map(responses.map((response) => [valueOf(response, T.SeriesInstanceUID), response]));
      assert.equal(valueOf(bySeries.get(`${S1}.1`)!, T.NumberOfStudyRelatedInstances), '5');
      assert.equal(valueOf(bySeries.get(`${S3}.1`)!, T.NumberOfStudyRelatedInstances), '1');
      assert.equal(valueOf(bySeries.get(`${S3}.1`)!, T.ModalitiesInStudy), 'MR');
    });

    it('universal SERIES query scans the series index and returns every series', async () => {
      const stats = createQueryStats();
      const responses = await find(db, { root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI')] }, { stats });
      assert.equal(responses.length, 7);
      assert.equal(stats.plan, 'full scan x!series!');
    });
  });

  describe('IMAGE level', () => {
    it('Study Root: the instances of a series', async () => {
      const responses = await find(db, {
        root: 'STUDY',
        level: 'IMAGE',
        keys: [k(T.StudyInstanceUID, 'UI', S1), k(T.SeriesInstanceUID, 'UI', `${S1}.1`), k(T.SOPInstanceUID, 'UI'), k(T.SOPClassUID, 'UI'), k(T.InstanceNumber, 'IS')],
      });
      assert.deepEqual(column(responses, T.InstanceNumber), ['1', '2', '3']);
      assert.ok(responses.every((response) => valueOf(response, T.SOPClassUID) === CT_IMAGE));
      assert.ok(responses.every((response) => valueOf(response, T.QueryRetrieveLevel) === 'IMAGE'));
    });

    it('Patient Root: a list of SOPInstanceUIDs is read directly', async () => {
      const stats = createQueryStats();
      const responses = await find(
        db,
        { root: 'PATIENT', level: 'IMAGE', keys: [k(T.PatientID, 'LO', P1), k(T.SOPInstanceUID, 'UI', `${S1}.1.2\\${S2}.2.1\\${S3}.1.1`)] },
        { stats },
      );
      assert.deepEqual(column(responses, T.SOPInstanceUID), [`${S1}.1.2`, `${S2}.2.1`], 'the instance of another patient is filtered out');
      assert.equal(stats.plan, 'direct c!i! (SOPInstanceUID)');
      assert.equal(stats.entriesRead, 3);
    });

    it('InstanceNumber numeric matching and a full scan on SOPClassUID', async () => {
      const second = await find(db, { root: 'STUDY', level: 'IMAGE', keys: [k(T.SeriesInstanceUID, 'UI', `${S1}.1`), k(T.SOPInstanceUID, 'UI'), k(T.InstanceNumber, 'IS', '02')] });
      assert.deepEqual(column(second, T.SOPInstanceUID), [`${S1}.1.2`]);
      const stats = createQueryStats();
      const mr = await find(db, { root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI'), k(T.SOPClassUID, 'UI', MR_IMAGE)] }, { stats });
      assert.equal(mr.length, 3);
      assert.equal(stats.plan, 'full scan c!i!');
    });
  });

  describe('resolveRetrieve', () => {
    it('PATIENT level: every instance of the patient (not of PAT!10)', async () => {
      const uids = await retrieveUids(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] });
      assert.equal(uids.length, 8);
      assert.ok(uids.every((uid) => uid.startsWith(S1) || uid.startsWith(S2)));
      assert.deepEqual(await retrieveUids(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P2)] }), [`${S3}.1.1`]);
    });

    it('PATIENT level: a GB18030 PatientID whose character holds a 0x5C byte is one value, not two', async () => {
      const gbId = 'MRN-\x9c\\1'; // 淺 is 9C 5C in GB18030
      const gbDb = openTempDb();
      await gbDb.db.open();
      try {
        const entry = makeEntry({
          patientId: gbId, patientName: 'Li^Qian', characterSet: 'GB18030', studyUid: '1.2.826.0.9', studyDate: '20200101',
          studyTime: '', accession: '', studyDescription: '', seriesUid: '1.2.826.0.9.1', modality: 'CT', seriesNumber: '1',
          sopUid: '1.2.826.0.9.1.1', sopClassUid: CT_IMAGE, instanceNumber: '1', storedAtMs: 1,
        });
        await store(gbDb.db, [entry]);
        const keys = [k(T.SpecificCharacterSet, 'CS', 'GB18030'), k(T.PatientID, 'LO', gbId)];
        assert.deepEqual(await retrieveUids(gbDb.db, { root: 'PATIENT', level: 'PATIENT', keys }), [entry.sopInstanceUid]);
      } finally {
        await gbDb.close();
      }
    });

    it('Patient Root: a PatientID key is matched as characters, as C-FIND matches it (a Latin-1 key, a UTF-8 PatientID: nothing was sent, with Success)', async () => {
      const utf8Db = openTempDb();
      await utf8Db.db.open();
      try {
        const entry = makeEntry({
          patientId: 'M\xc3\xbcller1', patientName: 'M\xc3\xbcller^Hans', characterSet: 'ISO_IR 192', studyUid: '1.2.826.0.143.1', studyDate: '20200101',
          studyTime: '', accession: '', studyDescription: '', seriesUid: '1.2.826.0.143.1.1', modality: 'CT', seriesNumber: '1',
          sopUid: '1.2.826.0.143.1.1.1', sopClassUid: CT_IMAGE, instanceNumber: '1', storedAtMs: 1,
        });
        await store(utf8Db.db, [entry]);
        const latin1Key = [k(T.SpecificCharacterSet, 'CS', 'ISO_IR 100'), k(T.PatientID, 'LO', 'M\xfcller1')];
        // The C-FIND a viewer makes first lists the patient and its study with that key...
        assert.equal((await find(utf8Db.db, { root: 'PATIENT', level: 'PATIENT', keys: latin1Key })).length, 1);
        assert.equal((await find(utf8Db.db, { root: 'PATIENT', level: 'STUDY', keys: [...latin1Key, k(T.StudyInstanceUID, 'UI', '')] })).length, 1);
        // ...and its retrieve with the same key sends them.
        assert.deepEqual(await retrieveUids(utf8Db.db, { root: 'PATIENT', level: 'PATIENT', keys: latin1Key }), [entry.sopInstanceUid]);
        assert.deepEqual(await retrieveUids(utf8Db.db, { root: 'PATIENT', level: 'STUDY', keys: [...latin1Key, k(T.StudyInstanceUID, 'UI', entry.studyInstanceUid)] }), [entry.sopInstanceUid]);
        assert.deepEqual(await retrieveUids(utf8Db.db, { root: 'PATIENT', level: 'IMAGE', keys: [...latin1Key, k(T.SOPInstanceUID, 'UI', entry.sopInstanceUid)] }), [entry.sopInstanceUid]);
        // Another patient's ID still excludes, in any character set.
        const other = [k(T.SpecificCharacterSet, 'CS', 'ISO_IR 100'), k(T.PatientID, 'LO', 'M\xfcller2')];
        assert.deepEqual(await retrieveUids(utf8Db.db, { root: 'PATIENT', level: 'PATIENT', keys: other }), []);
        assert.deepEqual(await retrieveUids(utf8Db.db, { root: 'PATIENT', level: 'STUDY', keys: [...other, k(T.StudyInstanceUID, 'UI', entry.studyInstanceUid)] }), []);
      } finally {
        await utf8Db.close();
      }
    });

    it('STUDY level: a UID list, duplicates yielded once', async () => {
      const uids = await retrieveUids(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', `${S1}\\${S3}\\${S1}`)] });
      assert.equal(uids.length, 6);
      assert.equal(new Set(uids).size, 6);
    });

    it('SERIES level: a UID list; a disagreeing upper-level unique key excludes', async () => {
      assert.equal((await retrieveUids(db, { root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI', `${S1}.1\\${S2}.2`)] })).length, 4);
      assert.deepEqual(
        await retrieveUids(db, { root: 'STUDY', level: 'SERIES', keys: [k(T.StudyInstanceUID, 'UI', S3), k(T.SeriesInstanceUID, 'UI', `${S1}.1`)] }),
        [],
      );
    });

    it('IMAGE level: a UID list, unknown UIDs skipped', async () => {
      const uids = await retrieveUids(db, {
        root: 'PATIENT',
        level: 'IMAGE',
        keys: [k(T.PatientID, 'LO', P1), k(T.StudyInstanceUID, 'UI', S1), k(T.SeriesInstanceUID, 'UI', `${S1}.1`), k(T.SOPInstanceUID, 'UI', `${S1}.1.1\\${S1}.1.3\\9.9.9`)],
      });
      assert.deepEqual(uids, [`${S1}.1.1`, `${S1}.1.3`]);
    });

    it('serves a PATIENT-level retrieve on Study Root as Patient Root (how Orthanc 1.10 retrieves a patient)', async () => {
      const patientRoot = await retrieveUids(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] });
      assert.equal(patientRoot.length, 8);
      assert.deepEqual(validateRetrieve({ root: 'STUDY', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] }), { ok: true });
      assert.deepEqual(await retrieveUids(db, { root: 'STUDY', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] }), patientRoot);
    });

    it('refuses identifiers without the unique key, with wildcards, or with a wrong level', async () => {
      const cases: Array<[QueryRequest, number]> = [
        [{ root: 'STUDY', level: 'STUDY', keys: [] }, 0xa900],
        [{ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', '')] }, 0xa900],
        [{ root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', '')] }, 0xa900],
        [{ root: 'STUDY', level: 'PATIENT', keys: [] }, 0xa900],
        [{ root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'PAT*')] }, 0xc002],
        [{ root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI', '1.2.*')] }, 0xc002],
      ];
      for (const [request, status] of cases) {
        const validation = validateRetrieve(request);
        assert.equal(validation.ok, false, JSON.stringify(request));
        if (!validation.ok) assert.equal(validation.status, status);
        await assert.rejects(retrieveUids(db, request), (error: unknown) => {
          assert.ok(error instanceof QueryError);
          assert.equal(error.code, 'INVALID_RETRIEVE');
          assert.equal(error.status, status);
          return true;
        });
      }
    });
  });
});

describe('DT keys and UTC offsets (PS3.4 C.2.2.2.5.1; hunt 85 compared them as written)', () => {
  it('compare instants: the value\'s own offset, else its instance\'s or the query\'s Timezone Offset From UTC', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const instance = (n: number, acquired: string, timezone?: string): CatalogEntry => {
        const entry = makeEntry({
          patientId: 'TZ', patientName: 'Zone^Time', studyUid: '1.2.8.1', studyDate: '20200101', studyTime: '', accession: '', studyDescription: '',
          seriesUid: '1.2.8.1.1', modality: 'CT', seriesNumber: '1', sopUid: `1.2.8.1.1.${n}`, sopClassUid: CT_IMAGE, instanceNumber: String(n), storedAtMs: 1000 + n,
        });
        const extra = [k(0x0008002a, 'DT', acquired), ...(timezone === undefined ? [] : [k(T.TimezoneOffsetFromUTC, 'SH', timezone)])];
        return { ...entry, attributes: [...entry.attributes, ...extra].sort((a, b) => a.tag - b.tag) };
      };
      await store(db, [
        instance(1, '20200101120000+0500'), // 07:00Z
        instance(2, '20200101120000-0800'), // 20:00Z
        instance(3, '20200101120000', '+0500'), // 07:00Z by its instance's offset
        instance(4, '20200101120000'), // offset unknown
      ]);
      const images = async (acquired: string, queryTimezone?: string) =>
        (
          await find(db, {
            root: 'STUDY',
            level: 'IMAGE',
            keys: [k(T.StudyInstanceUID, 'UI', '1.2.8.1'), k(T.SOPInstanceUID, 'UI'), k(0x0008002a, 'DT', acquired), ...(queryTimezone === undefined ? [] : [k(T.TimezoneOffsetFromUTC, 'SH', queryTimezone)])],
          })
        )
          .map((response) => valueOf(response, T.SOPInstanceUID)!.split('.').pop())
          .sort();
      assert.deepEqual(await images('20200101070000+0000'), ['1', '3']);
      // 4's offset is unknown: compared as written (12:00 is 12:00).
      assert.deepEqual(await images('20200101120000+0500'), ['1', '3', '4']);
      assert.deepEqual(await images('20200101000000+0000-20200101100000+0000'), ['1', '3']);
      assert.deepEqual(await images('20200101200000+0000'), ['2']);
      // A key without an offset is in the query's Timezone Offset From UTC; without one, as written.
      assert.deepEqual(await images('20200101070000', '+0000'), ['1', '3']);
      assert.deepEqual(await images('20200101120000'), ['1', '2', '3', '4']);
    } finally {
      await close();
    }
  });
});

describe('an unknown (zero-length) Required Key matches every key (PS3.4 C.2.2.1.2: black-box helper 51)', () => {
  it('StudyDate, StudyTime, AccessionNumber, StudyID, Modality, SeriesNumber and InstanceNumber: by index, by newest scan and by full scan alike; the patient\'s name and ID not', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const spec = (n: number, known: boolean): InstanceSpec => ({
        patientId: known ? 'PK' : '',
        patientName: known ? 'Known^Date' : '',
        studyUid: `1.2.9.${n}`,
        studyDate: known ? '20240101' : '',
        studyTime: known ? '101010' : '',
        accession: known ? 'ACC1' : '',
        studyDescription: '',
        seriesUid: `1.2.9.${n}.1`,
        modality: known ? 'CT' : '',
        seriesNumber: known ? '1' : '',
        sopUid: `1.2.9.${n}.1.1`,
        sopClassUid: CT_IMAGE,
        instanceNumber: known ? '1' : '',
        storedAtMs: 1000 + n,
      });
      const known = makeEntry(spec(1, true));
      // StudyID is not in the fixture's attributes: absent is unknown too.
      const unknown = makeEntry(spec(2, false));
      await store(db, [{ ...known, attributes: [...known.attributes, k(T.StudyID, 'SH', '7')] }, unknown]);
      const levelUid = { STUDY: T.StudyInstanceUID, SERIES: T.SeriesInstanceUID, IMAGE: T.SOPInstanceUID } as const;
      const found = async (level: 'STUDY' | 'SERIES' | 'IMAGE', key: DicomElement, options?: FindOptions) =>
        column(await find(db, { root: 'STUDY', level, keys: [k(levelUid[level], 'UI'), key] }, options), levelUid[level]);
      const both = (level: 'STUDY' | 'SERIES' | 'IMAGE') => [`1.2.9.1${level === 'STUDY' ? '' : level === 'SERIES' ? '.1' : '.1.1'}`, `1.2.9.2${level === 'STUDY' ? '' : level === 'SERIES' ? '.1' : '.1.1'}`];
      for (const searchIndexes of [true, false]) {
        for (const [level, key] of [
          ['STUDY', k(T.StudyDate, 'DA', '20240101')],
          ['STUDY', k(T.StudyDate, 'DA', '20240101-20240131')],
          ['STUDY', k(T.StudyTime, 'TM', '1000-1100')],
          ['STUDY', k(T.AccessionNumber, 'SH', 'ACC1')],
          ['STUDY', k(T.AccessionNumber, 'SH', 'ACC*')],
          ['STUDY', k(T.StudyID, 'SH', '7')],
          ['SERIES', k(T.Modality, 'CS', 'CT')],
          ['SERIES', k(T.SeriesNumber, 'IS', '1')],
          ['IMAGE', k(T.InstanceNumber, 'IS', '1')],
          ['IMAGE', k(T.StudyDate, 'DA', '20240101')],
        ] as const) {
          assert.deepEqual(await found(level, key, { searchIndexes }), both(level), `${level} ${key.tag.toString(16)}=${key.value} (indexes ${searchIndexes})`);
        }
        // A search for one patient does not list the studies of unknown patients.
        assert.deepEqual(await found('STUDY', k(T.PatientName, 'PN', 'Known^Date'), { searchIndexes }), ['1.2.9.1']);
        assert.deepEqual(await found('STUDY', k(T.PatientID, 'LO', 'PK'), { searchIndexes }), ['1.2.9.1']);
        // Nor does a key that is not a Required Key (StudyDescription is optional).
        assert.deepEqual(await found('STUDY', k(T.StudyDescription, 'LO', 'X*'), { searchIndexes }), []);
      }
    } finally {
      await close();
    }
  });
});

describe('an attribute a later instance leaves out is not blanked (helper 63: a key object without the birth date)', () => {
  it('PATIENT and STUDY level take it from the newest instance that has it, by every plan; a later value still wins', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const spec = (n: number, more: Partial<InstanceSpec>): InstanceSpec => ({
        patientId: 'HX20',
        patientName: 'Birth^Date',
        studyUid: `1.2.20.${n}`,
        studyDate: '20240101',
        studyTime: '101010',
        accession: `A${n}`,
        studyDescription: 'first',
        seriesUid: `1.2.20.${n}.1`,
        modality: 'CT',
        seriesNumber: '1',
        sopUid: `1.2.20.${n}.1.1`,
        sopClassUid: CT_IMAGE,
        instanceNumber: '1',
        storedAtMs: 1000 + n,
        ...more,
      });
      // The first study knows the birth date; a later key object of another study leaves it and the description out.
      const withBirthDate = makeEntry(spec(1, { birthDate: '19800505' }));
      const later = makeEntry(spec(2, { sopClassUid: BASIC_TEXT_SR, studyDescription: '' }));
      // Within the first study too: its own later instance without the birth date or description.
      const laterInFirst = makeEntry(spec(1, { sopUid: '1.2.20.1.1.2', studyDescription: '', storedAtMs: 1005 }));
      await store(db, [withBirthDate, later, laterInFirst]);
      for (const searchIndexes of [true, false]) {
        const patients = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.PatientName, 'PN', '*ate'), k(T.PatientBirthDate, 'DA', '19800505')] }, { searchIndexes });
        assert.deepEqual(column(patients, T.PatientBirthDate), ['19800505'], `indexes ${searchIndexes}`);
        const byName = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.PatientName, 'PN', 'Birth*'), k(T.PatientBirthDate, 'DA')] }, { searchIndexes });
        assert.deepEqual(column(byName, T.PatientBirthDate), ['19800505']);
        const studies = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', '1.2.20.1'), k(T.StudyDescription, 'LO'), k(T.PatientBirthDate, 'DA')] }, { searchIndexes });
        assert.deepEqual(column(studies, T.StudyDescription), ['first']);
        assert.deepEqual(column(studies, T.PatientBirthDate), ['19800505']);
      }
      // A later instance with another value still wins (a corrected birth date).
      await store(db, [makeEntry(spec(3, { birthDate: '19800506', storedAtMs: 2000 }))]);
      const corrected = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'HX20'), k(T.PatientBirthDate, 'DA')] });
      assert.deepEqual(column(corrected, T.PatientBirthDate), ['19800506']);
    } finally {
      await close();
    }
  });
});

describe('stale index keys (instance re-stored under another PatientID without deleting)', () => {
  it('are ignored: the entry, not the index, decides', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const [first] = fixture();
      await store(db, [first!]);
      await store(db, [{ ...first!, patientId: 'NEW', storedAtMs: first!.storedAtMs + 1 }]);
      assert.deepEqual(await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] }), []);
      const renamed = await find(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'NEW')] });
      assert.equal(renamed.length, 1);
      assert.deepEqual(await retrieveUids(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', P1)] }), []);
    } finally {
      await close();
    }
  });
});

describe('a stale newest-index key (the newest instance re-stored as an older one, without deleting)', () => {
  it('has its entity read whole: the entry, not the index, decides which instance is newest', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const entries = fixture();
      await store(db, entries);
      const newestOfS1 = entries.filter((entry) => entry.studyInstanceUid === S1).at(-1)!;
      const renamed = { ...newestOfS1, storedAtMs: 1, attributes: newestOfS1.attributes.map((e) => (e.tag === T.PatientName ? { ...e, value: 'Renamed^X' } : e)) };
      await store(db, [renamed]);
      const stats = createQueryStats();
      // A leading wildcard: no name-index range, the newest index.
      const found = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', '*oe^John'), k(T.StudyInstanceUID, 'UI')] }, { stats });
      assert.equal(stats.plan, 'newest x!newest!studypid!');
      assert.deepEqual(column(found, T.StudyInstanceUID), [S1, S2]);
      assert.deepEqual(await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', '*enamed^X')] }), []);
    } finally {
      await close();
    }
  });
});

describe('a series whose SeriesInstanceUID is found under two studies (hunt 192)', () => {
  it('is listed under each study with that study\'s part, counted as a retrieve with the same keys delivers', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const seriesUid = '1.2.3.70.9';
      const instance = (n: number, studyUid: string, studyDate: string): CatalogEntry =>
        makeEntry({ patientId: 'P70', patientName: 'Reused^Series', studyUid, studyDate, studyTime: '120000', accession: `A${studyUid}`, studyDescription: 'REUSED', seriesUid, modality: 'CT', seriesNumber: '1', sopUid: `1.2.3.70.9.${n}`, sopClassUid: CT_IMAGE, instanceNumber: String(n), storedAtMs: 1000 + n });
      // Study A holds instances 1 and 2; study B instance 3, stored last: the series' newest instance is B's.
      await store(db, [instance(1, '1.2.3.70.1', '20240101'), instance(2, '1.2.3.70.1', '20240101'), instance(3, '1.2.3.70.2', '20240202')]);
      for (const [studyUid, count] of [['1.2.3.70.1', '2'], ['1.2.3.70.2', '1']] as const) {
        for (const root of ['STUDY', 'PATIENT'] as const) {
          for (const searchIndexes of [true, false]) {
            const where = `${root} root, study ${studyUid}, indexes ${searchIndexes}`;
            const keys = [...(root === 'PATIENT' ? [k(T.PatientID, 'LO', 'P70')] : []), k(T.StudyInstanceUID, 'UI', studyUid), k(T.StudyDate, 'DA'), k(T.SeriesInstanceUID, 'UI'), k(T.NumberOfSeriesRelatedInstances, 'IS'), k(T.NumberOfStudyRelatedInstances, 'IS')];
            const found = await find(db, { root, level: 'SERIES', keys }, { searchIndexes });
            assert.deepEqual(found.map((r) => [valueOf(r, T.StudyInstanceUID), valueOf(r, T.SeriesInstanceUID), valueOf(r, T.NumberOfSeriesRelatedInstances), valueOf(r, T.NumberOfStudyRelatedInstances)]), [[studyUid, seriesUid, count, count]], where);
            assert.equal(valueOf(found[0]!, T.StudyDate), studyUid === '1.2.3.70.1' ? '20240101' : '20240202', where);
            const retrieved = await retrieveUids(db, { root, level: 'SERIES', keys: [...(root === 'PATIENT' ? [k(T.PatientID, 'LO', 'P70')] : []), k(T.StudyInstanceUID, 'UI', studyUid), k(T.SeriesInstanceUID, 'UI', seriesUid)] });
            assert.equal(String(retrieved.length), count, `${where}: what a retrieve with the same keys delivers`);
          }
        }
      }
      // Both studies asked (a UID list): the whole series, its newest instance's study.
      const both = await find(db, { root: 'STUDY', level: 'SERIES', keys: [k(T.StudyInstanceUID, 'UI', '1.2.3.70.1\\1.2.3.70.2'), k(T.SeriesInstanceUID, 'UI'), k(T.NumberOfSeriesRelatedInstances, 'IS')] });
      assert.deepEqual(both.map((r) => [valueOf(r, T.StudyInstanceUID), valueOf(r, T.NumberOfSeriesRelatedInstances)]), [['1.2.3.70.2', '3']]);
      assert.deepEqual(await find(db, { root: 'STUDY', level: 'SERIES', keys: [k(T.StudyInstanceUID, 'UI', '1.2.3.70.3'), k(T.SeriesInstanceUID, 'UI', seriesUid)] }), []);
    } finally {
      await close();
    }
  });
});

describe('a study filed under two PatientIDs', () => {
  it('each patient sees its own name; Patient Root counts its own part (what a C-GET with the same keys retrieves), Study Root the whole study', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const study = { studyUid: '1.2.3.60', studyDate: '20240101', studyTime: '120000', accession: 'A60', studyDescription: 'SPLIT' };
      const instance = (n: number, patientId: string, patientName: string): CatalogEntry =>
        makeEntry({ patientId, patientName, ...study, seriesUid: '1.2.3.60.1', modality: 'CT', seriesNumber: '1', sopUid: `1.2.3.60.1.${n}`, sopClassUid: CT_IMAGE, instanceNumber: String(n), storedAtMs: 1000 + n });
      // P61's instance is the later one: the whole study's attributes are its.
      await store(db, [instance(1, 'P60', 'Split^One'), instance(2, 'P61', 'Split^Two')]);
      const keys = (patientId: string, level: 'STUDY' | 'SERIES') => [
        k(T.PatientID, 'LO', patientId),
        k(T.PatientName, 'PN'),
        k(T.StudyInstanceUID, 'UI', level === 'SERIES' ? study.studyUid : ''),
        ...(level === 'SERIES' ? [k(T.SeriesInstanceUID, 'UI'), k(T.NumberOfSeriesRelatedInstances, 'IS')] : []),
        k(T.NumberOfStudyRelatedInstances, 'IS'),
      ];
      for (const [patientId, name] of [['P60', 'Split^One'], ['P61', 'Split^Two']] as const) {
        for (const level of ['STUDY', 'SERIES'] as const) {
          const [patientRoot, ...more] = await find(db, { root: 'PATIENT', level, keys: keys(patientId, level) });
          assert.equal(more.length, 0);
          assert.equal(valueOf(patientRoot!, T.PatientID), patientId);
          assert.equal(valueOf(patientRoot!, T.PatientName), name, `Patient Root ${level} under ${patientId}`);
          assert.equal(valueOf(patientRoot!, T.NumberOfStudyRelatedInstances), '1');
          if (level === 'SERIES') assert.equal(valueOf(patientRoot!, T.NumberOfSeriesRelatedInstances), '1');
          const retrieved = await retrieveUids(db, { root: 'PATIENT', level: 'STUDY', keys: [k(T.PatientID, 'LO', patientId), k(T.StudyInstanceUID, 'UI', study.studyUid)] });
          assert.equal(retrieved.length, 1, 'the count is what a retrieve with the same keys delivers');
        }
        const [studyRoot] = await find(db, { root: 'STUDY', level: 'STUDY', keys: keys(patientId, 'STUDY') });
        assert.equal(valueOf(studyRoot!, T.PatientName), name, `Study Root under ${patientId}`);
        assert.equal(valueOf(studyRoot!, T.NumberOfStudyRelatedInstances), '2', 'Study Root: the whole study, as a Study Root C-GET retrieves');
        // A Study Root retrieve with a PatientID key as well (movescu -S ... PatientID=...): the whole study,
        // as counted; PatientID is not a Study Root key (helper 47: 1 of 3 sent, with Success).
        for (const level of ['STUDY', 'SERIES'] as const) {
          const studyRootKeys = [k(T.PatientID, 'LO', patientId), k(T.StudyInstanceUID, 'UI', study.studyUid), ...(level === 'SERIES' ? [k(T.SeriesInstanceUID, 'UI', '1.2.3.60.1')] : [])];
          assert.equal((await retrieveUids(db, { root: 'STUDY', level, keys: studyRootKeys })).length, 2, `Study Root ${level} retrieve with PatientID ${patientId}`);
        }
        // Not even a wildcard there is refused (0xC002 for a Patient Root unique key).
        assert.equal((await retrieveUids(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientID, 'LO', 'P6*'), k(T.StudyInstanceUID, 'UI', study.studyUid)] })).length, 2);
      }
      // Both patients matched (a wildcard), or no PatientID key: the whole study, the latest instance's attributes.
      for (const patientKey of [[k(T.PatientID, 'LO', 'P6*')], []]) {
        const [whole] = await find(db, { root: 'PATIENT', level: 'STUDY', keys: [...patientKey, k(T.PatientName, 'PN'), k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS')] });
        assert.equal(valueOf(whole!, T.PatientName), 'Split^Two');
        assert.equal(valueOf(whole!, T.NumberOfStudyRelatedInstances), '2');
      }
      assert.deepEqual(await find(db, { root: 'PATIENT', level: 'STUDY', keys: keys('P62', 'STUDY') }), []);
      // By the earlier patient's name, with no PatientID key, through every plan (name index, newest, scan):
      // that patient's part answers, with its own attributes (black-box helper 39 found nothing here).
      for (const name of ['Split^One', 'split*', '*One']) {
        for (const [root, level] of [['STUDY', 'STUDY'], ['PATIENT', 'STUDY'], ['STUDY', 'SERIES']] as const) {
          for (const searchIndexes of [true, false]) {
            const found = await find(
              db,
              { root, level, keys: [k(T.PatientName, 'PN', name), k(T.PatientID, 'LO'), k(T.StudyInstanceUID, 'UI', level === 'SERIES' ? study.studyUid : ''), k(T.NumberOfStudyRelatedInstances, 'IS')] },
              { searchIndexes },
            );
            const where = `${root} root, ${level}, PatientName=${name}, indexes ${searchIndexes}`;
            if (name === 'split*') {
              // Both parts match: the whole study's (newest) attributes.
              assert.deepEqual(found.map((r) => valueOf(r, T.PatientID)), ['P61'], where);
              continue;
            }
            assert.deepEqual(found.map((r) => [valueOf(r, T.PatientID), valueOf(r, T.PatientName)]), [['P60', 'Split^One']], where);
            assert.equal(valueOf(found[0]!, T.NumberOfStudyRelatedInstances), '2', `${where}: the whole study, as a retrieve with these keys (no PatientID) delivers`);
          }
        }
      }
      // The matching part sorting after another in the newest index (Q2 after Q1): every part is examined.
      const other = { ...study, studyUid: '1.2.3.61' };
      await store(db, [
        makeEntry({ patientId: 'Q2', patientName: 'Alpha^Old', ...other, seriesUid: '1.2.3.61.1', modality: 'CT', seriesNumber: '1', sopUid: '1.2.3.61.1.1', sopClassUid: CT_IMAGE, instanceNumber: '1', storedAtMs: 1 }),
        makeEntry({ patientId: 'Q1', patientName: 'Beta^New', ...other, seriesUid: '1.2.3.61.1', modality: 'CT', seriesNumber: '1', sopUid: '1.2.3.61.1.2', sopClassUid: CT_IMAGE, instanceNumber: '2', storedAtMs: 2 }),
      ]);
      const stats = createQueryStats();
      const old = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', '*Old'), k(T.PatientID, 'LO'), k(T.StudyInstanceUID, 'UI')] }, { stats });
      assert.equal(stats.plan, 'newest x!newest!studypid!');
      assert.deepEqual(old.map((r) => valueOf(r, T.PatientID)), ['Q2']);
    } finally {
      await close();
    }
  });
});

describe('the name, date, newest and identifier-range indexes answer as a scan of every instance does (seeded archives)', () => {
  const names = ['Doe^John', 'DOE^JOHN', 'Smith^Jane', 'doe^johnny', 'M\xfcller^Eva', 'M\xdcLLER^EVA', 'Doe^John=Smith^J', ' Doe^John^^', 'Doe^Jo\\Smith', '', '=Smith^J', 'Smith^Jane=Doe^J=Doe^John'];
  const patientIds = ['P1', 'P2', 'P1 ', ''];

  /** Studies whose instances disagree (renamed patients, a study under two IDs, stores in one millisecond). */
  function randomArchive(prng: Prng, studyCount: number): CatalogEntry[] {
    const entries: CatalogEntry[] = [];
    for (let study = 1; study <= studyCount; study++) {
      const studyUid = `1.2.77.${study}`;
      const patientId = prng.pick(patientIds);
      const instanceCount = prng.between(1, 5);
      for (let n = 1; n <= instanceCount; n++) {
        const series = prng.between(1, 2);
        entries.push(
          makeEntry({
            patientId: prng.chance(0.2) ? prng.pick(patientIds) : patientId,
            patientName: prng.pick(names),
            characterSet: prng.chance(0.5) ? 'ISO_IR 100' : undefined,
            studyUid,
            studyDate: prng.pick(['20200115', '20211231', '20230704', '2021.12.31', '20200115\\20230704', 'garbage', '']),
            studyTime: '120000',
            accession: `A${study}`,
            studyDescription: prng.pick(['CT CHEST', 'CT HEAD', 'MR KNEE']),
            seriesUid: `${studyUid}.${series}`,
            modality: series === 1 ? prng.pick(['CT', 'CT', 'CT', '']) : prng.pick(['MR', 'MR\\SR']),
            seriesNumber: String(series),
            // Numbers 1-12 as text: "10" sorts before "9", which the newest index's tie-break must agree on.
            sopUid: `${studyUid}.${series}.${n + prng.nextInt(2) * 7}`,
            sopClassUid: series === 1 ? CT_IMAGE : MR_IMAGE,
            instanceNumber: String(n),
            storedAtMs: prng.chance(0.1) ? prng.pick([-1, 1.5, Number.NaN]) : prng.between(1, 4),
          }),
        );
      }
    }
    return entries;
  }

  function randomRequest(prng: Prng): QueryRequest {
    const name = k(T.PatientName, 'PN', prng.pick(['doe*', 'DOE^JOHN', 'smith^jane', 'Doe^John^^', 'D*n', '*e*', '?oe^John', 'm\xfcller*', 'M\xfc*', 'm\xdcller^e*', 'smith\\doe^j*', 'smith*', 'doe^john=*', '=smith^j', 'doe*=smith*', '*=smith^j', '==doe*', 'smith^jane=doe^j=doe^john', '']));
    const [root, level] = prng.pick([['STUDY', 'STUDY'], ['PATIENT', 'STUDY'], ['PATIENT', 'PATIENT']] as const);
    // Sometimes a PatientID pattern (the patient index range of its literal start, or a scan without one).
    const patientId = k(T.PatientID, 'LO', prng.chance(0.3) ? prng.pick(['P1*', 'P?', 'P*', '*1', 'P1 *', 'P1\\P2*', '?1']) : '');
    if (level === 'PATIENT') {
      return { root, level, keys: [name, patientId, k(T.NumberOfPatientRelatedStudies, 'IS'), k(T.NumberOfPatientRelatedInstances, 'IS')] };
    }
    const keys = [name, patientId, k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.ModalitiesInStudy, 'CS')];
    if (prng.chance(0.2)) keys.push(k(T.AccessionNumber, 'SH', prng.pick(['A1*', 'A?', 'A1?'])));
    if (prng.chance(0.5)) keys.push(k(T.StudyDate, 'DA', prng.pick(['20200101-20211231', '20230704', '-20201231', '20211231-', '2020.01.15', '20200115\\20230704'])));
    // Some searches by date alone (a day's worklist): the date index; some by modality alone: the modality index.
    if (prng.chance(0.3)) return { root, level, keys: keys.filter((key) => key.tag !== T.PatientName) };
    if (prng.chance(0.2)) {
      const modalities = k(T.ModalitiesInStudy, 'CS', prng.pick(['CT', 'MR', 'CT\\SR', 'US', 'SR']));
      return { root, level, keys: [...keys.filter((key) => key.tag !== T.PatientName && key.tag !== T.PatientID && key.tag !== T.ModalitiesInStudy && key.tag !== T.StudyDate && key.tag !== T.AccessionNumber), modalities] };
    }
    if (prng.chance(0.5)) keys.push(k(T.StudyDescription, 'LO', prng.pick(['CT*', 'MR KNEE'])));
    return { root, level, keys };
  }

  it('the same responses at STUDY and PATIENT level, in both roots (QUERY_SEEDS seeds, 40 by default)', async () => {
    const seeds = Number(process.env.QUERY_SEEDS ?? 40);
    const { db, close } = openTempDb();
    const plans = new Map<string, number>();
    try {
      await db.open();
      for (let seed = 1; seed <= seeds; seed++) {
        const prng = new Prng(seed);
        await db.clear();
        await store(db, randomArchive(prng, 12));
        for (let query = 0; query < 10; query++) {
          const request = randomRequest(prng);
          const stats = createQueryStats();
          const sorted = (responses: DicomElement[][]): string[] => responses.map((response) => JSON.stringify(response)).sort();
          const inOrder = await find(db, request, { stats });
          const indexed = sorted(inOrder);
          const scanned = sorted(await find(db, request, { searchIndexes: false }));
          assert.deepEqual(indexed, scanned, `seed ${seed} (QUERY_SEEDS), query ${query}: ${JSON.stringify(request)}`);
          plans.set(stats.plan.split(' ')[1]!, (plans.get(stats.plan.split(' ')[1]!) ?? 0) + 1);
          await assertSameWithFewIdsRemembered(db, request, inOrder, `seed ${seed} (QUERY_SEEDS), query ${query}`);
          await assertSamePagedFromCursors(db, request, inOrder, `seed ${seed} (QUERY_SEEDS), query ${query}`);
        }
        // SERIES and IMAGE level by Modality (a series under 'MR\\SR' is in two ranges) and by PatientID start.
        for (const [level, keys] of [
          ['SERIES', [k(T.SeriesInstanceUID, 'UI'), k(T.Modality, 'CS', prng.pick(['MR\\SR', 'SR\\CT', 'CT']))]],
          ['IMAGE', [k(T.SOPInstanceUID, 'UI'), k(T.Modality, 'CS', prng.pick(['MR\\SR', 'SR\\MR\\CT']))]],
          ['IMAGE', [k(T.SOPInstanceUID, 'UI'), k(T.PatientID, 'LO', prng.pick(['P1*', 'P*', 'P1\\P1*']))]],
        ] as const) {
          const request: QueryRequest = { root: 'STUDY', level, keys: [...keys] };
          const inOrder = await find(db, request);
          assert.deepEqual(inOrder.map((r) => JSON.stringify(r)).sort(), (await find(db, request, { searchIndexes: false })).map((r) => JSON.stringify(r)).sort(), `seed ${seed}: ${JSON.stringify(request)}`);
          await assertSameWithFewIdsRemembered(db, request, inOrder, `seed ${seed}`);
          await assertSamePagedFromCursors(db, request, inOrder, `seed ${seed}`);
        }
      }
    } finally {
      await close();
    }
    for (const index of ['x!name!', 'x!da!', 'x!newest!studypid!', 'x!newest!pid!', 'x!pid!', 'x!acc!', 'x!mod!']) assert.ok((plans.get(index) ?? 0) > 0, `queries by plan: ${JSON.stringify([...plans])}`);
    assert.ok(repeatsMetPastMemory > 0, 'some entities were met again past the remembered ids');
  });

  /**
   * The same responses, in the same order, when each page of one or two matches resumes from the cursor of
   * the page before (QIDO-RS paging), with the ids remembered or not.
   */
  async function assertSamePagedFromCursors(db: CatalogDb, request: QueryRequest, expected: DicomElement[][], what: string): Promise<void> {
    for (const [pageSize, rememberedMax] of [[1, undefined], [2, undefined], [2, 0]] as const) {
      const paged: DicomElement[][] = [];
      let after: QueryCursor | undefined;
      for (let page = 0; page <= expected.length; page++) {
        let count = 0;
        for await (const { identifier, cursor } of findMatchesWithCursors(db, request, { limit: pageSize, after, candidateIdsRememberedMax: rememberedMax })) {
          paged.push(identifier);
          after = cursor;
          count++;
        }
        if (count < pageSize) break;
      }
      assert.deepEqual(paged, expected, `${what}, pages of ${pageSize} from cursors, ${rememberedMax ?? 'default'} ids remembered: ${JSON.stringify(request)}`);
    }
  }

  let repeatsMetPastMemory = 0;
  /** The same responses, in the same order, when the scan remembers no candidate ids, or one (bounded memory: hunt 113). */
  async function assertSameWithFewIdsRemembered(db: CatalogDb, request: QueryRequest, expected: DicomElement[][], what: string): Promise<void> {
    for (const rememberedMax of [0, 1]) {
      const stats = createQueryStats();
      assert.deepEqual(await find(db, request, { candidateIdsRememberedMax: rememberedMax, stats }), expected, `${what}, ${rememberedMax} ids remembered: ${JSON.stringify(request)}`);
      assert.ok(stats.candidateIdsRemembered <= rememberedMax, `${stats.candidateIdsRemembered} ids remembered`);
      const examinedWithMemory = createQueryStats();
      await find(db, request, { stats: examinedWithMemory });
      if (stats.entitiesExamined > examinedWithMemory.entitiesExamined || stats.entriesRead > examinedWithMemory.entriesRead) repeatsMetPastMemory++;
    }
  }
});

describe('a search by modality reads the modality index (black-box helper 51: it read every study or series)', () => {
  it('ModalitiesInStudy at STUDY level, Modality at SERIES and IMAGE level: only the matching studies, series, images are read', async () => {
    const { db, close } = openTempDb();
    try {
      await db.open();
      const entries: CatalogEntry[] = [];
      for (let n = 1; n <= 40; n++) {
        for (let series = 1; series <= 2; series++) {
          for (let instance = 1; instance <= 3; instance++) {
            entries.push(
              makeEntry({
                patientId: `M${n}`, patientName: `M^${n}`, studyUid: `1.2.55.${n}`, studyDate: '20240101', studyTime: '120000', accession: `M${n}`,
                studyDescription: '', seriesUid: `1.2.55.${n}.${series}`, modality: series === 2 && n === 7 ? 'SR' : 'CT', seriesNumber: String(series),
                sopUid: `1.2.55.${n}.${series}.${instance}`, sopClassUid: CT_IMAGE, instanceNumber: String(instance), storedAtMs: instance,
              }),
            );
          }
        }
      }
      await store(db, entries);
      const measure = async (request: QueryRequest) => {
        const stats = createQueryStats();
        const responses = await find(db, request, { stats });
        return { responses, stats };
      };
      const studies = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.ModalitiesInStudy, 'CS', 'SR')] });
      assert.deepEqual(column(studies.responses, T.StudyInstanceUID), ['1.2.55.7']);
      assert.equal(studies.stats.plan, 'index x!mod! (Modality)');
      assert.equal(studies.stats.entriesRead, 6, 'the one study, whole (its modalities)');
      const series = await measure({ root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI'), k(T.Modality, 'CS', 'SR')] });
      assert.deepEqual(column(series.responses, T.SeriesInstanceUID), ['1.2.55.7.2']);
      assert.equal(series.stats.plan, 'index x!mod! (Modality)');
      assert.equal(series.stats.entriesRead, 3);
      const images = await measure({ root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI'), k(T.Modality, 'CS', 'SR\\US')] });
      assert.equal(images.responses.length, 3);
      assert.equal(images.stats.entriesRead, 3);
      // A wildcard is matched over a scan, as before.
      const wildcard = await measure({ root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI'), k(T.Modality, 'CS', 'S*')] });
      assert.deepEqual(column(wildcard.responses, T.SeriesInstanceUID), ['1.2.55.7.2']);
      assert.match(wildcard.stats.plan, /full scan/);
    } finally {
      await close();
    }
  });
});

describe('index lookups read only the entity they target (20,000 instances)', () => {
  const patientCount = 200;
  const seriesPerStudy = 2;
  const instancesPerSeries = 50;
  let db: CatalogDb;
  let close: () => Promise<void>;

  const study = (patient: number): string => `1.2.999.${patient}`;

  before(async () => {
    ({ db, close } = openTempDb());
    await db.open();
    const entries: CatalogEntry[] = [];
    for (let patient = 0; patient < patientCount; patient++) {
      for (let series = 1; series <= seriesPerStudy; series++) {
        for (let instance = 1; instance <= instancesPerSeries; instance++) {
          entries.push(
            makeEntry({
              patientId: `PID!${patient}`,
              patientName: `NAME^${patient}`,
              studyUid: study(patient),
              studyDate: '20240101',
              studyTime: '120000',
              accession: `A${patient}`,
              studyDescription: 'BULK',
              seriesUid: `${study(patient)}.${series}`,
              modality: series === 1 ? 'CT' : 'MR',
              seriesNumber: String(series),
              sopUid: `${study(patient)}.${series}.${instance}`,
              sopClassUid: series === 1 ? CT_IMAGE : MR_IMAGE,
              instanceNumber: String(instance),
              storedAtMs: instance,
            }),
          );
        }
      }
    }
    assert.equal(entries.length, 20_000);
    await store(db, entries);
  });
  after(async () => close());

  const perPatient = seriesPerStudy * instancesPerSeries;

  async function measure(request: QueryRequest): Promise<{ responses: DicomElement[][]; stats: ReturnType<typeof createQueryStats> }> {
    const stats = createQueryStats();
    const responses = await find(db, request, { stats });
    return { responses, stats };
  }

  it('PatientID at PATIENT and STUDY level reads only that patient', async () => {
    const patientLevel = await measure({
      root: 'PATIENT',
      level: 'PATIENT',
      keys: [k(T.PatientID, 'LO', 'PID!42'), k(T.NumberOfPatientRelatedInstances, 'IS')],
    });
    assert.equal(patientLevel.responses.length, 1);
    assert.equal(valueOf(patientLevel.responses[0]!, T.NumberOfPatientRelatedInstances), String(perPatient));
    assert.equal(patientLevel.stats.plan, 'index x!pid! (PatientID)');
    assert.equal(patientLevel.stats.entriesRead, perPatient);
    assert.ok(patientLevel.stats.indexKeysRead <= 2 * perPatient, `index keys read: ${patientLevel.stats.indexKeysRead}`);

    const studyLevel = await measure({ root: 'PATIENT', level: 'STUDY', keys: [k(T.PatientID, 'LO', 'PID!42'), k(T.StudyInstanceUID, 'UI')] });
    assert.deepEqual(column(studyLevel.responses, T.StudyInstanceUID), [study(42)]);
    assert.equal(studyLevel.stats.entriesRead, perPatient);
  });

  it('StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and AccessionNumber are index reads too', async () => {
    const byStudy = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI', study(7)), k(T.ModalitiesInStudy, 'CS')] });
    assert.equal(valueOf(byStudy.responses[0]!, T.ModalitiesInStudy), 'CT\\MR');
    assert.equal(byStudy.stats.entriesRead, perPatient);

    const bySeries = await measure({ root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI', `${study(7)}.2`)] });
    assert.equal(bySeries.responses.length, 1);
    assert.equal(bySeries.stats.entriesRead, instancesPerSeries);

    const byInstance = await measure({ root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI', `${study(7)}.2.9`)] });
    assert.equal(byInstance.responses.length, 1);
    assert.equal(byInstance.stats.entriesRead, 1);
    assert.equal(byInstance.stats.indexKeysRead, 0);

    const byAccession = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.AccessionNumber, 'SH', 'A199'), k(T.StudyInstanceUID, 'UI')] });
    assert.deepEqual(column(byAccession.responses, T.StudyInstanceUID), [study(199)]);
    assert.equal(byAccession.stats.entriesRead, perPatient);
  });

  it('PatientName with a literal start, or StudyDate, reads only the studies or patients under that name or date', async () => {
    const byName = await measure({
      root: 'STUDY',
      level: 'STUDY',
      keys: [k(T.PatientName, 'PN', 'name^42'), k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.ModalitiesInStudy, 'CS')],
    });
    assert.deepEqual(column(byName.responses, T.StudyInstanceUID), [study(42)]);
    assert.equal(valueOf(byName.responses[0]!, T.NumberOfStudyRelatedInstances), String(perPatient));
    assert.equal(valueOf(byName.responses[0]!, T.ModalitiesInStudy), 'CT\\MR');
    assert.equal(byName.stats.plan, 'index x!name! (PatientName)');
    assert.equal(byName.stats.entriesRead, perPatient);

    const patients = await measure({ root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientName, 'PN', 'NAME^4*'), k(T.PatientID, 'LO'), k(T.NumberOfPatientRelatedInstances, 'IS')] });
    assert.deepEqual(column(patients.responses, T.PatientID), ['PID!4', ...Array.from({ length: 10 }, (_, i) => `PID!4${i}`)].sort());
    assert.equal(patients.stats.plan, 'index x!name! (PatientName)');
    assert.equal(patients.stats.entriesRead, 11 * perPatient);

    // A day's worklist reads that day's studies: none here.
    const tomorrow = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.StudyDate, 'DA', '20240102-'), k(T.StudyInstanceUID, 'UI')] });
    assert.deepEqual(tomorrow.responses, []);
    assert.equal(tomorrow.stats.plan, 'index x!da! (StudyDate)');
    assert.equal(tomorrow.stats.indexKeysRead + tomorrow.stats.entriesRead, 0);
  });

  it('any other key no index serves (a leading wildcard, a description) reads the newest entry of each study or patient, and the matching ones whole', async () => {
    const byName = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', '*ame^42'), k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS')] });
    assert.deepEqual(column(byName.responses, T.StudyInstanceUID), [study(42)]);
    assert.equal(valueOf(byName.responses[0]!, T.NumberOfStudyRelatedInstances), String(perPatient));
    assert.equal(byName.stats.plan, 'newest x!newest!studypid!');
    assert.equal(byName.stats.entriesRead, patientCount + perPatient, 'one entry per study, then the matching study whole');
    assert.ok(byName.stats.indexKeysRead <= patientCount + perPatient, `index keys read: ${byName.stats.indexKeysRead}`);

    const patients = await measure({ root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientName, 'PN', '?AME^4*'), k(T.PatientID, 'LO')] });
    assert.equal(patients.responses.length, 11);
    assert.equal(patients.stats.plan, 'newest x!newest!pid!');
    assert.equal(patients.stats.entriesRead, patientCount + 11 * perPatient);

    // A PatientID key to match may name another patient than the newest instance's: without a literal
    // start to read the patient index from, every instance.
    const byIdSuffix = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.PatientID, 'LO', '*!42'), k(T.StudyDescription, 'LO', 'BULK*'), k(T.StudyInstanceUID, 'UI')] });
    assert.deepEqual(column(byIdSuffix.responses, T.StudyInstanceUID), [study(42)]);
    assert.equal(byIdSuffix.stats.plan, 'full scan x!study!');
    assert.equal(byIdSuffix.stats.entriesRead, 20_000);
  });

  it('a PatientID or AccessionNumber pattern with a literal start reads the index range of that start', async () => {
    const byIdPattern = await measure({ root: 'STUDY', level: 'STUDY', keys: [k(T.PatientID, 'LO', 'PID!42*'), k(T.StudyDescription, 'LO', 'BULK*'), k(T.StudyInstanceUID, 'UI')] });
    assert.deepEqual(column(byIdPattern.responses, T.StudyInstanceUID), [study(42)]);
    assert.equal(byIdPattern.stats.plan, 'range x!pid! (PatientID literal start)');
    assert.equal(byIdPattern.stats.entriesRead, perPatient);

    const patients = await measure({ root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'PID!19?\\PID!7'), k(T.NumberOfPatientRelatedInstances, 'IS')] });
    assert.deepEqual(column(patients.responses, T.PatientID), [...Array.from({ length: 10 }, (_, i) => `PID!19${i}`), 'PID!7'].sort());
    assert.equal(patients.stats.plan, 'range x!pid! (PatientID literal start)');
    assert.equal(patients.stats.entriesRead, 22 * perPatient, 'the IDs starting PID!19 (PID!19, PID!190-199) and PID!7 (PID!7, PID!70-79)');

    const images = await measure({ root: 'STUDY', level: 'IMAGE', keys: [k(T.AccessionNumber, 'SH', 'A19?'), k(T.SOPInstanceUID, 'UI')] });
    assert.equal(images.responses.length, 10 * perPatient);
    assert.equal(images.stats.plan, 'range x!acc! (AccessionNumber literal start)');
    assert.equal(images.stats.entriesRead, 11 * perPatient, 'A19 and A190-A199');
  });

  it('a page resumed from the cursor of the page before reads that page, not every match before it (QIDO-RS offset)', async () => {
    const pageSize = 10;
    const plans: Array<[string, QueryRequest, number]> = [
      ['full scan x!study!', { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS')] }, perPatient],
      ['full scan c!i!', { root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI')] }, 1],
      ['index x!name! (PatientName)', { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', 'NAME*'), k(T.StudyInstanceUID, 'UI')] }, perPatient],
      ['newest x!newest!studypid!', { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyDescription, 'LO', '*ULK'), k(T.StudyInstanceUID, 'UI')] }, perPatient],
      ['direct c!i! (SOPInstanceUID)', { root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI', Array.from({ length: 40 }, (_, i) => `${study(i)}.1.${i + 1}`).join('\\'))] }, 1],
    ];
    for (const [plan, request, entriesPerMatch] of plans) {
      const all = await find(db, request);
      const offset = all.length - 2 * pageSize;
      let cursor: QueryCursor | undefined;
      for await (const match of findMatchesWithCursors(db, request, { limit: offset })) cursor = match.cursor;
      const walked = createQueryStats();
      const walkedPage = (await find(db, request, { limit: offset + pageSize, stats: walked })).slice(offset);
      const resumed = createQueryStats();
      const resumedPage: DicomElement[][] = [];
      for await (const { identifier } of findMatchesWithCursors(db, request, { limit: pageSize, after: cursor, stats: resumed })) resumedPage.push(identifier);
      assert.equal(resumed.plan, plan);
      assert.deepEqual(resumedPage, walkedPage, plan);
      assert.deepEqual(resumedPage, all.slice(offset, offset + pageSize), plan);
      // Without the cursor a page at offset N read the N matches before it too.
      assert.ok(walked.entriesRead >= (offset + pageSize) * entriesPerMatch, `${plan}: the walk read ${walked.entriesRead} entries`);
      // The newest plan reads each candidate's newest entry before the entity whole: one more a match.
      assert.ok(resumed.entriesRead <= pageSize * (entriesPerMatch + 1), `${plan}: resumed, ${resumed.entriesRead} entries read for a page of ${pageSize}`);
      // Each matching study read whole, and the newest index from the cursor on, not passed over from its first key (hunt 128).
      if (plan.startsWith('newest')) assert.ok(resumed.indexKeysRead <= pageSize * (entriesPerMatch + 2), `${plan}: resumed, ${resumed.indexKeysRead} index keys read for a page of ${pageSize}`);
    }
  });

  it('a page asked cold at an offset (skip) passes the matches before it on their index keys when no key is matched (hunt 128)', async () => {
    const pageSize = 10;
    const plans: Array<[string, QueryRequest, number, boolean]> = [
      ['full scan x!study!', { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.ModalitiesInStudy, 'CS')] }, perPatient, true],
      ['full scan x!pid!', { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.NumberOfPatientRelatedInstances, 'IS')] }, perPatient, true],
      // QIDO-RS /instances: each instance with its study's and series' counts.
      ['full scan c!i!', { root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI'), k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.ModalitiesInStudy, 'CS'), k(T.NumberOfSeriesRelatedInstances, 'IS')] }, 1, true],
      // A key to match: each match before the offset is decided as before.
      ['index x!name! (PatientName)', { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientName, 'PN', 'NAME*'), k(T.StudyInstanceUID, 'UI')] }, perPatient, false],
    ];
    for (const [plan, request, entriesPerMatch, unmatched] of plans) {
      const all = await find(db, request);
      const offset = all.length - 2 * pageSize;
      const stats = createQueryStats();
      const page = await find(db, request, { skip: offset, limit: pageSize, stats });
      assert.equal(stats.plan, plan);
      assert.deepEqual(page, all.slice(offset, offset + pageSize), plan);
      assert.equal(stats.matchesPassedUnread, unmatched ? offset : 0, plan);
      if (!unmatched) continue;
      // No entry decoded for a match passed: one field of one entry per entity (none for an instance), hunt 133; then the page's entities and their upper entities.
      assert.equal(stats.entryFieldsRead, entriesPerMatch === 1 ? 0 : offset, plan);
      assert.ok(stats.entriesRead <= pageSize * (entriesPerMatch + perPatient), `${plan}: ${stats.entriesRead} entries read for a page at ${offset}`);
    }
  });

  it("an instance's study is scanned once for its modalities and its counts (QIDO-RS /instances, hunt 128)", async () => {
    const sop = `${study(7)}.2.3`;
    const { responses, stats } = await measure({
      root: 'STUDY',
      level: 'IMAGE',
      keys: [k(T.SOPInstanceUID, 'UI', sop), k(T.ModalitiesInStudy, 'CS'), k(T.NumberOfStudyRelatedSeries, 'IS'), k(T.NumberOfStudyRelatedInstances, 'IS'), k(T.NumberOfSeriesRelatedInstances, 'IS')],
    });
    assert.deepEqual([T.ModalitiesInStudy, T.NumberOfStudyRelatedSeries, T.NumberOfStudyRelatedInstances, T.NumberOfSeriesRelatedInstances].map((tag) => valueOf(responses[0]!, tag)), ['CT\\MR', '2', String(perPatient), String(instancesPerSeries)]);
    // The study's keys once (with its entries), the series' keys once: not the study's keys a second time for its counts.
    assert.equal(stats.indexKeysRead, perPatient + instancesPerSeries);
    assert.equal(stats.entriesRead, 1 + perPatient);
  });

  it('resolveRetrieve by PatientID reads only that patient', async () => {
    const stats = createQueryStats();
    let count = 0;
    for await (const _entry of resolveRetrieve(db, { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO', 'PID!3')] }, { stats })) count++;
    assert.equal(count, perPatient);
    assert.equal(stats.entriesRead, perPatient);
  });
});

describe('a search by PatientID and AccessionNumber in an archive of studies without an AccessionNumber (helper 98)', () => {
  it('reads only that patient, not every study whose AccessionNumber is unknown (they match the accession, not the patient)', async () => {
    const { db, close } = openTempDb();
    await db.open();
    try {
      const entries: CatalogEntry[] = [];
      for (let patient = 0; patient < 300; patient++) {
        for (let instance = 1; instance <= 5; instance++) {
          entries.push(
            makeEntry({
              patientId: `P${patient}`, patientName: `NAME^${patient}`, studyUid: `1.2.998.${patient}`, studyDate: '20240101', studyTime: '120000',
              // Only patient 7's study has an accession number (a RIS order); the others came from a modality without one.
              accession: patient === 7 ? 'ACC7' : '', studyDescription: 'X', seriesUid: `1.2.998.${patient}.1`, modality: 'CT', seriesNumber: '1',
              sopUid: `1.2.998.${patient}.1.${instance}`, sopClassUid: CT_IMAGE, instanceNumber: String(instance), storedAtMs: instance,
            }),
          );
        }
      }
      await store(db, entries);
      const stats = createQueryStats();
      const responses = await find(db, { root: 'STUDY', level: 'STUDY', keys: [k(T.PatientID, 'LO', 'P7'), k(T.AccessionNumber, 'SH', 'ACC7'), k(T.StudyInstanceUID, 'UI')] }, { stats });
      assert.deepEqual(column(responses, T.StudyInstanceUID), ['1.2.998.7']);
      assert.equal(stats.entriesRead, 5, `plan ${stats.plan}: ${stats.entriesRead} entries read`);
    } finally {
      await close();
    }
  });
});

describe('QIDO-RS offsets passed unread (skip) over index keys whose entries are gone or moved (hunt 130 review)', () => {
  it('every page at every offset is the walk\'s, through each level\'s full scan', async () => {
    const { db, close } = openTempDb();
    await db.open();
    try {
      const entry = (studyNumber: number, instance: number, sopUid = `1.2.777.${studyNumber}.1.${instance}`): CatalogEntry =>
        makeEntry({
          patientId: `P${studyNumber}`, patientName: `NAME^${studyNumber}`, studyUid: `1.2.777.${studyNumber}`, studyDate: '20240101', studyTime: '120000',
          accession: '', studyDescription: 'X', seriesUid: `1.2.777.${studyNumber}.1`, modality: 'CT', seriesNumber: '1',
          sopUid, sopClassUid: CT_IMAGE, instanceNumber: String(instance), storedAtMs: instance,
        });
      await store(db, Array.from({ length: 7 }, (_, s) => [entry(s, 1), entry(s, 2)]).flat());
      // Study 6 larger than a pass's read (passed by a seek past its keys), and keys of another shape (damaged).
      await store(db, Array.from({ length: 300 }, (_, n) => entry(6, 3 + n)));
      await db.batch(['x!study!1.2.777.5!x', 'x!study!1.2.777.6', 'x!pid!', 'x!series!1.2.777.0.1'].map((key) => ({ type: 'put' as const, key, value: new Uint8Array(0) })));
      // Study 1: its first key's entry deleted (a deletion between key and entry). Study 2: both (keys only).
      await db.del(catalogEntryKey('1.2.777.1.1.1'));
      await db.batch([{ type: 'del', key: catalogEntryKey('1.2.777.2.1.1') }, { type: 'del', key: catalogEntryKey('1.2.777.2.1.2') }]);
      // Study 3: its first key's instance now an entry of study 5. Study 4: of a study with no keys, its other entry gone.
      await db.put(catalogEntryKey('1.2.777.3.1.1'), encodeCatalogEntry(entry(5, 3, '1.2.777.3.1.1')));
      await db.put(catalogEntryKey('1.2.777.4.1.1'), encodeCatalogEntry(entry(9, 1, '1.2.777.4.1.1')));
      await db.del(catalogEntryKey('1.2.777.4.1.2'));
      const requests: QueryRequest[] = [
        { root: 'STUDY', level: 'STUDY', keys: [k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS')] },
        { root: 'STUDY', level: 'SERIES', keys: [k(T.SeriesInstanceUID, 'UI'), k(T.NumberOfSeriesRelatedInstances, 'IS')] },
        { root: 'PATIENT', level: 'PATIENT', keys: [k(T.PatientID, 'LO'), k(T.NumberOfPatientRelatedInstances, 'IS')] },
        { root: 'STUDY', level: 'IMAGE', keys: [k(T.SOPInstanceUID, 'UI'), k(T.StudyInstanceUID, 'UI'), k(T.NumberOfStudyRelatedInstances, 'IS')] },
      ];
      // Studies 2 and 4 (and their series and patients) have no instance left; instances: 14 - 4 deleted.
      const expectedMatches = { STUDY: 5, SERIES: 5, PATIENT: 5, IMAGE: 310 };
      for (const request of requests) {
        const all = await find(db, request);
        assert.equal(all.length, expectedMatches[request.level as keyof typeof expectedMatches], request.level);
        let passedUnread = 0;
        for (let offset = 0; offset <= all.length; offset += offset < 12 || offset > all.length - 12 ? 1 : 37) {
          const stats = createQueryStats();
          assert.deepEqual(await find(db, request, { skip: offset, limit: 2, stats }), all.slice(offset, offset + 2), `${request.level} at offset ${offset} (${stats.plan})`);
          passedUnread += stats.matchesPassedUnread;
        }
        assert.ok(passedUnread > 0, `${request.level}: the skip path was taken`);
      }
    } finally {
      await close();
    }
  });
});
