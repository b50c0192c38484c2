/**
 * QIDO-RS paging at archive scale (20,000 instances written straight into a peer's catalog): pages asked one
 * after the other resume where the page before ended, and hold exactly what the walk from the first match
 * gives at the same offset, in the same order, at every level and through each index.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Tags } from '../../src/codec/dictionary.ts';
import type { CatalogEntry } from '../../src/actors/storage/catalog-types.ts';
import { catalogDeleteOps, catalogWriteOps } from '../../src/actors/storage/catalog.ts';
import { startTestPeer, type TestPeer } from '../support/peer-fixture.ts';

const CT = '1.2.840.10008.5.1.4.1.1.2';
const MR = '1.2.840.10008.5.1.4.1.1.4';
const studyCount = 4000;
const uidRoot = '1.2.826.0.1.3680043.10.1453.125';
/** Study n (1-based): patient ceil(n/4), 3 CT instances in series 1 and 2 MR in series 2, a day of 2020. */
function studyEntries(n: number): CatalogEntry[] {
  const studyUid = `${uidRoot}.${n}`;
  const patient = Math.ceil(n / 4);
  const day = new Date(Date.UTC(2020, 0, 1) + (n % 366) * 86_400_000).toISOString().slice(0, 10).replaceAll('-', '');
  const entries: CatalogEntry[] = [];
  for (const [series, modality, sopClassUid, count] of [[1, 'CT', CT, 3], [2, 'MR', MR, 2]] as const) {
    for (let instance = 1; instance <= count; instance++) {
      const seriesUid = `${studyUid}.${series}`;
      const sopInstanceUid = `${seriesUid}.${instance}`;
      entries.push({
        sopInstanceUid, sopClassUid, studyInstanceUid: studyUid, seriesInstanceUid: seriesUid, patientId: `PAGE${patient}`,
        transferSyntaxUid: '1.2.840.10008.1.2.1', byteLength: 100, sha256: '00'.repeat(32), storedAtMs: n * 10 + instance, blobId: `b-${sopInstanceUid}`,
        attributes: [
          { tag: Tags.SOPClassUID, vr: 'UI', value: sopClassUid },
          { tag: Tags.SOPInstanceUID, vr: 'UI', value: sopInstanceUid },
          { tag: Tags.StudyDate, vr: 'DA', value: day },
          { tag: Tags.Modality, vr: 'CS', value: modality },
          { tag: Tags.StudyDescription, vr: 'LO', value: `PAGING STUDY ${n}` },
          { tag: Tags.PatientName, vr: 'PN', value: `PAGE^P${patient}` },
          { tag: Tags.PatientID, vr: 'LO', value: `PAGE${patient}` },
          { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyUid },
          { tag: Tags.SeriesInstanceUID, vr: 'UI', value: seriesUid },
          { tag: Tags.SeriesNumber, vr: 'IS', value: String(series) },
          { tag: Tags.InstanceNumber, vr: 'IS', value: String(instance) },
        ],
      });
    }
  }
  return entries;
}

type Json = Record<string, { vr: string; Value?: unknown[] }>;

let peer: TestPeer;
let base: string;

async function page(path: string, offset: number, limit: number): Promise<Json[]> {
  const response = await fetch(`${base}${path}${path.includes('?') ? '&' : '?'}offset=${offset}&limit=${limit}`);
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return JSON.parse(text) as Json[];
}

/** Every match, page by page from the first one: each page resumes after the one before. */
async function pagedInOrder(path: string, limit: number): Promise<Json[]> {
  const all: Json[] = [];
  for (;;) {
    const results = await page(path, all.length, limit);
    all.push(...results);
    if (results.length < limit) return all;
  }
}


const studiesWhere = (test: (n: number) => boolean): number => Array.from({ length: studyCount }, (_, i) => i + 1).filter(test).length;
const uidsOf = (results: Json[], tag: string): unknown[] => results.map((result) => result[tag]?.Value?.[0]);

before(async () => {
  peer = await startTestPeer([], 'qido-paging');
  base = `http://127.0.0.1:${peer.httpPort}/dicom-web`;
  for (let first = 1; first <= studyCount; first += 200) {
    const entries = Array.from({ length: 200 }, (_, i) => studyEntries(first + i)).flat();
    await peer.store.db.batch(entries.flatMap(catalogWriteOps));
  }
});
after(async () => peer?.dispose());

describe('QIDO-RS pages of a 20,000-instance catalog', () => {
  const cases: Array<[string, string, number, number, string]> = [
    // [what, path, expected matches, page size, unique key of the level]
    ['every study (a full scan of the study index)', '/studies', studyCount, 250, '0020000D'],
    // Days 60-181 of 2020 (March to June): 122 of the 366 a study n has by n % 366.
    ['studies of four months (the date index)', '/studies?StudyDate=20200301-20200630', studiesWhere((n) => n % 366 >= 60 && n % 366 <= 181), 37, '0020000D'],
    // Patients 1, 10-19, 100-199 and 1000, of four studies each.
    ['studies by a name start (the name index)', '/studies?PatientName=PAGE^P1*', 112 * 4, 20, '0020000D'],
    ['studies by a description (the newest index)', '/studies?StudyDescription=*STUDY 1*', 1111, 50, '0020000D'],
    // Patients 2, 20-29, 200-299 (the patient index range of PAGE2): 111 patients, 444 studies.
    ['series by a PatientID start (a patient index range)', '/series?PatientID=PAGE2*', 444 * 2, 50, '0020000E'],
    ['MR instances by a PatientID start', '/instances?PatientID=PAGE2*&Modality=MR', 444 * 2, 50, '00080018'],
    ['MR series of the patients of a name start (the name index is for studies: the modality index)', '/series?Modality=MR&PatientName=PAGE^P3*', 444, 50, '0020000E'],
  ];
  for (const [what, path, expected, limit, uniqueTag] of cases) {
    it(`${what}: pages in order hold what the walk gives at each offset`, async () => {
      const paged = await pagedInOrder(path, limit);
      assert.equal(paged.length, expected);
      assert.equal(new Set(uidsOf(paged, uniqueTag)).size, expected, 'each match once');
      // Pages at offsets where no page ended walk from the first match (a walk at offset N reads the N before it).
      for (const offset of [Math.floor(expected / 2) + 7, expected - limit + 3]) {
        assert.deepEqual(await page(path, offset, limit), paged.slice(offset, offset + limit), `the page at offset ${offset}`);
      }
    });
  }

  it('a study deleted from an earlier page between two requests does not shift the next page (it resumes after the last study it returned)', async () => {
    const path = '/studies?StudyDate=20200101-20200131';
    const first = await page(path, 0, 20);
    const second = await page(path, 20, 20);
    assert.equal(second.length, 20);
    const third = await page(path, 40, 20);
    // The first page's first study is deleted: a walk to offset 40 would now begin with `third`'s second study.
    const deletedUid = uidsOf(first, '0020000D')[0] as string;
    const deletedStudy = Number(deletedUid.slice(uidRoot.length + 1));
    await peer.store.db.batch(studyEntries(deletedStudy).flatMap(catalogDeleteOps));
    try {
      const secondAgain = await page(path, 20, 20);
      assert.deepEqual(uidsOf(secondAgain, '0020000D'), uidsOf(second, '0020000D'), 'the page asked again resumes from the same place');
      assert.deepEqual(uidsOf(await page(path, 40, 20), '0020000D'), uidsOf(third, '0020000D'));
    } finally {
      await peer.store.db.batch(studyEntries(deletedStudy).flatMap(catalogWriteOps));
    }
  });
});
