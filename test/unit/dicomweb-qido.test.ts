/**
 * QIDO-RS against a real peer over HTTP: the default attributes of each level, matching through the
 * C-FIND engine (PS3.18 8.3.4 parameters), paging, character sets, and every malformed request a 4xx.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Status } from '../../src/codec/dimse.ts';
import { openStoreClient, startTestPeer, type TestPeer } from '../support/peer-fixture.ts';
import type { InstanceOptions } from '../support/synthetic-dicom.ts';

const studyA = '1.2.826.0.1.3680043.10.1453.200.1';
const studyB = '1.2.826.0.1.3680043.10.1453.200.2';
const seriesA1 = `${studyA}.1`;
const seriesA2 = `${studyA}.2`;
const seriesB1 = `${studyB}.1`;

type Json = Record<string, { vr: string; Value?: unknown[] }>;

let peer: TestPeer;
let base: string;

async function search(path: string, init: RequestInit = {}): Promise<{ status: number; body: unknown; headers: Headers }> {
  const response = await fetch(`${base}${path}`, init);
  const text = await response.text();
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text), headers: response.headers };
}

async function results(path: string): Promise<Json[]> {
  const { status, body } = await search(path);
  assert.equal(status, 200, JSON.stringify(body));
  return body as Json[];
}

const valueOf = (result: Json, tag: string): unknown => result[tag]?.Value?.[0];

before(async () => {
  peer = await startTestPeer([], 'qido');
  base = `http://127.0.0.1:${peer.httpPort}/dicom-web`;
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  const instances: InstanceOptions[] = [
    ...[1, 2, 3].map((n) => ({
      patient: { id: 'QIDO-1', name: 'Müller^Anna', birthDate: '19700102', sex: 'F' as const },
      study: { uid: studyA, date: '20240105', time: '101500', accession: 'ACC-1', description: 'CT chest', id: 'S1' },
      series: { uid: n < 3 ? seriesA1 : seriesA2, modality: n < 3 ? 'CT' : 'SR', number: n < 3 ? 1 : 2, description: 'axial' },
      sopInstanceUid: `${n < 3 ? seriesA1 : seriesA2}.${n}`,
      instanceNumber: n,
      specificCharacterSet: 'ISO_IR 192' as const,
      // 07:00Z and 20:00Z, each written in its own zone (hunt 85: DT offsets were ignored).
      ...(n < 3 ? { extraElements: [{ tag: 0x0008002a, vr: 'DT', value: n === 1 ? '20200101120000+0500' : '20200101120000-0800' }] } : {}),
    })),
    {
      patient: { id: 'QIDO-2', name: 'Smith^John' },
      study: { uid: studyB, date: '20240320', accession: 'ACC-2' },
      series: { uid: seriesB1, modality: 'MR', number: 1 },
      sopInstanceUid: `${seriesB1}.1`,
      instanceNumber: 1,
    },
  ];
  for (const options of instances) assert.equal((await store.storeInstance({ rows: 4, columns: 4, ...options })).command.status, Status.Success);
  await store.client.release();
});

after(() => peer.dispose());

describe('QIDO-RS', () => {
  it('lists studies with the default attributes, computed counts, Unicode names and where to retrieve them', async () => {
    const { status, headers, body } = await search('/studies?PatientID=QIDO-1');
    assert.equal(status, 200);
    assert.equal(headers.get('content-type'), 'application/dicom+json');
    const [study] = body as Json[];
    assert.equal((body as Json[]).length, 1);
    assert.equal(valueOf(study!, '0020000D'), studyA);
    assert.deepEqual(valueOf(study!, '00100010'), { Alphabetic: 'Müller^Anna' });
    assert.equal(valueOf(study!, '00080020'), '20240105');
    assert.equal(valueOf(study!, '00080050'), 'ACC-1');
    assert.deepEqual(study!['00080061']!.Value, ['CT', 'SR']);
    assert.equal(valueOf(study!, '00201206'), '2', 'NumberOfStudyRelatedSeries (IS) as a string: CP-1861');
    assert.equal(valueOf(study!, '00201208'), '3');
    assert.equal(valueOf(study!, '00080056'), 'ONLINE');
    assert.equal(valueOf(study!, '00081190'), `${base}/studies/${studyA}`);
    assert.equal(study!['00100030']!.vr, 'DA');
    assert.equal(study!['00080005'], undefined, 'no Specific Character Set: JSON is Unicode');
    const keys = Object.keys(study!);
    assert.deepEqual(keys, [...keys].sort(), 'attributes in tag order');
  });

  it('matches as C-FIND does: wildcards and case in names, date ranges, UID lists, modalities', async () => {
    const uids = async (path: string) => (await results(path)).map((study) => valueOf(study, '0020000D')).sort();
    assert.deepEqual(await uids('/studies'), [studyA, studyB]);
    assert.deepEqual(await uids('/studies?PatientName=m%C3%BCller*'), [studyA]);
    assert.deepEqual(await uids('/studies?PatientName=*ITH*'), [studyB]);
    assert.deepEqual(await uids('/studies?StudyDate=20240301-'), [studyB]);
    assert.deepEqual(await uids('/studies?StudyDate=20240101-20240131'), [studyA]);
    assert.deepEqual(await uids(`/studies?StudyInstanceUID=${studyA},${studyB}`), [studyA, studyB]);
    assert.deepEqual(await uids(`/studies?0020000D=${studyB}`), [studyB]);
    assert.deepEqual(await uids('/studies?ModalitiesInStudy=MR'), [studyB]);
    // A list of code strings with commas, as with backslashes (helper 63: `CT,MR` found nothing).
    assert.deepEqual(await uids('/studies?ModalitiesInStudy=SR,MR'), [studyA, studyB]);
    assert.deepEqual(await uids('/studies?ModalitiesInStudy=SR%5CMR'), [studyA, studyB]);
    assert.deepEqual(await uids('/studies?AccessionNumber=NONE'), []);
    // The URL's values are Unicode whatever SpecificCharacterSet a client adds (helper 98: ISO_IR 100 made
    // the UTF-8 bytes of `müller*` Latin-1 text, which matched nothing); the Warning says it was ignored.
    const named = await search('/studies?PatientName=m%C3%BCller*&SpecificCharacterSet=ISO_IR%20100');
    assert.deepEqual((named.body as Json[]).map((study) => valueOf(study, '0020000D')), [studyA]);
    assert.match(named.headers.get('warning') ?? '', /ignored: SpecificCharacterSet/);
  });

  it('matches DT values as instants, taking their UTC offsets into account (PS3.4 C.2.2.2.5.1; hunt 85)', async () => {
    const sops = async (path: string) => (await results(path)).map((instance) => valueOf(instance, '00080018')).sort();
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101070000%2B0000'), [`${seriesA1}.1`]);
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101120000%2B0500'), [`${seriesA1}.1`]);
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101000000%2B0000-20200101100000%2B0000'), [`${seriesA1}.1`]);
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101000000-20200101100000&TimezoneOffsetFromUTC=%2B0000'), [`${seriesA1}.1`]);
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101200000-0000'), [`${seriesA1}.2`]);
    // A `+` left unencoded reads as a space in a query string: taken as the offset's sign.
    assert.deepEqual(await sops('/instances?AcquisitionDateTime=20200101200000+0000'), [`${seriesA1}.2`]);
  });

  it('ignores parameters it does not support, and an empty one, and says so in a Warning (PS3.18 8.3)', async () => {
    const uids = async (path: string) => (await results(path)).map((study) => valueOf(study, '0020000D')).sort();
    // A cache-buster, a vendor's parameter, a misspelt keyword: ignored, named in the Warning.
    const ignored = await search('/studies?_=1700000000000&PatientID=QIDO-1&vendorFlag=on&patientid=X');
    assert.equal(ignored.status, 200);
    assert.deepEqual((ignored.body as unknown[]).length, 1);
    assert.match(ignored.headers.get('warning') ?? '', /299 pacs-mesh "Unsupported query parameters have been ignored: _, vendorFlag, patientid"/);
    // Weasis sends `?&includefield=...`.
    // A cache-buster given twice, or with a control character in its value, is still only ignored.
    const repeated = await search('/studies?_=1&_=2%00');
    assert.equal(repeated.status, 200);
    assert.match(repeated.headers.get('warning') ?? '', /ignored: _"/);
    const weasis = await search('/studies?&includefield=00081030');
    assert.equal(weasis.status, 200);
    assert.equal(weasis.headers.get('warning'), null);
    assert.deepEqual(await uids('/studies?&limit=10'), [studyA, studyB]);
    // Empty and multiple value matching (PS3.18 Table 8.3.4-1): not performed, and the Warning says so.
    const empty = await search('/studies?emptyvaluematching=true&multiplevaluematching=true');
    assert.equal(empty.status, 200);
    assert.equal((empty.body as unknown[]).length, 2);
    assert.match(empty.headers.get('warning') ?? '', /emptyvaluematching parameter is not supported/);
    assert.match(empty.headers.get('warning') ?? '', /multiplevaluematching parameter is not supported/);
    assert.equal((await search('/studies?emptyvaluematching=false')).headers.get('warning'), null);
    assert.equal((await search('/studies?multiplevaluematching=maybe')).status, 400);
  });

  it('lists series and instances, under a study or across all, with the upper levels\' keys', async () => {
    const series = await results(`/studies/${studyA}/series`);
    assert.deepEqual(series.map((s) => valueOf(s, '0020000E')).sort(), [seriesA1, seriesA2]);
    const ct = series.find((s) => valueOf(s, '00080060') === 'CT')!;
    assert.equal(valueOf(ct, '00201209'), '2');
    assert.equal(valueOf(ct, '0020000D'), studyA);
    assert.equal(valueOf(ct, '00081190'), `${base}/studies/${studyA}/series/${seriesA1}`);

    const allSeries = await results('/series?Modality=MR');
    assert.equal(allSeries.length, 1);
    assert.deepEqual(valueOf(allSeries[0]!, '00100010'), { Alphabetic: 'Smith^John' }, '/series carries the study attributes');

    const instances = await results(`/studies/${studyA}/series/${seriesA1}/instances`);
    assert.deepEqual(instances.map((i) => valueOf(i, '00200013')).sort(), ['1', '2']);
    assert.equal(valueOf(instances[0]!, '00280010'), 4, 'Rows (US) as a number');
    assert.match(String(valueOf(instances[0]!, '00081190')), new RegExp(`/studies/${studyA}/series/${seriesA1}/instances/${seriesA1}\\.[12]$`));
    assert.equal((await results(`/studies/${studyA}/instances`)).length, 3);
    assert.equal((await results('/instances?SOPInstanceUID=' + `${seriesB1}.1`)).length, 1);
  });

  it('pages with limit and offset, and adds fields asked with includefield', async () => {
    const first = await results('/studies?limit=1');
    const second = await results('/studies?limit=1&offset=1');
    assert.equal(first.length, 1);
    assert.equal(second.length, 1);
    assert.notEqual(valueOf(first[0]!, '0020000D'), valueOf(second[0]!, '0020000D'));
    assert.deepEqual(await results('/studies?offset=2'), []);
    const [withDescription] = await results(`/studies?StudyInstanceUID=${studyA}&includefield=StudyDescription,00081030`);
    assert.equal(valueOf(withDescription!, '00081030'), 'CT chest');
    const [all] = await results(`/studies?StudyInstanceUID=${studyA}&includefield=all`);
    assert.equal(valueOf(all!, '00081030'), 'CT chest');
    // What the catalog does not keep (sequences, binary values) is left out: `{"vr":"SQ"}` says "no items" (hunt 196).
    const [withSequence] = await results(`/studies?StudyInstanceUID=${studyA}&includefield=ProcedureCodeSequence,00400275,00880200`);
    assert.deepEqual(['00081032', '00400275', '00880200'].filter((tag) => withSequence![tag] !== undefined), []);
    const fuzzy = await search('/studies?fuzzymatching=true');
    assert.equal(fuzzy.status, 200);
    assert.match(fuzzy.headers.get('warning') ?? '', /fuzzymatching parameter is not supported/);
  });

  it('labels its JSON as asked: application/json when the client takes that and not application/dicom+json (hunt 196: labelled with the type refused)', async () => {
    for (const [accept, contentType] of [
      [undefined, 'application/dicom+json'],
      ['application/dicom+json, application/json', 'application/dicom+json'],
      ['application/json', 'application/json'],
      ['application/dicom+json;q=0, application/json', 'application/json'],
    ] as const) {
      const answer = await search('/studies', accept === undefined ? {} : { headers: { accept } });
      assert.equal(answer.status, 200);
      assert.equal(answer.headers.get('content-type'), contentType, accept);
    }
  });

  it('takes a request target in absolute form, as sent to a proxy, and names resources by its authority (RFC 9112 3.2.2)', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(peer.httpPort, '127.0.0.1', () => socket.write(`GET http://viewer.example:8080/dicom-web/studies?PatientID=QIDO-2 HTTP/1.1\r\nhost: 127.0.0.1:${peer.httpPort}\r\nconnection: close\r\n\r\n`));
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 200 /, answer.slice(0, 300));
    const found = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Json[];
    assert.deepEqual(found.map((study) => valueOf(study, '00081190')), [`http://viewer.example:8080/dicom-web/studies/${studyB}`]);
  });

  it('refuses malformed searches with 400, 405, 406 or 404 and a message', async () => {
    const refusals: Array<[string, number, RegExp, RequestInit?]> = [
      ['/studies?PatientName=%00', 400, /control character/],
      ['/studies?StudyDate=2024-01', 400, /malformed DA/],
      ['/studies?limit=-1', 400, /limit must be a whole number/],
      ['/studies?PatientID=A&PatientID=B', 400, /given twice/],
      ['/studies?includefield=Bogus', 400, /includefield/],
      // What can be no UID (hunt 196: 200 with no match), as in the path.
      ['/studies?StudyInstanceUID=abc', 400, /not a UID/],
      ['/series?SeriesInstanceUID=1..2', 400, /not a UID/],
      ['/studies?StudyInstanceUID=,', 400, /not a UID/],
      [`/studies?StudyInstanceUID=1.${'2'.repeat(64)}`, 400, /not a UID/],
      ['/studies?ReferencedStudySequence=1', 400, /sequence/],
      ['/studies?00400275.00321060=X', 400, /inside sequences/],
      [`/studies/${studyA}/series?StudyInstanceUID=${studyA}`, 400, /already given by the path/],
      ['/studies?SOPInstanceUID=1.2.3', 400, /IMAGE-level attribute/],
      ['/studies/1.2.x/series', 400, /not a valid UID/],
      ['/studies/1.2.3/bogus', 404, /no DICOMweb resource/],
      ['/series', 406, /application\/dicom\+json only/, { headers: { accept: 'multipart/related; type="application/dicom+xml"' } }],
      ['/series', 405, /not allowed/, { method: 'DELETE' }],
    ];
    for (const [path, status, message, init] of refusals) {
      const response = await search(path, init);
      assert.equal(response.status, status, `${path}: ${JSON.stringify(response.body)}`);
      assert.match((response.body as { error: string }).error, message, path);
      assert.match((response.body as { code: string }).code, /^ERR_/);
    }
    assert.equal((await fetch(`http://127.0.0.1:${peer.httpPort}/healthz`)).status, 200);
    // The operator sees the requests and the refusals.
    const { dicomweb } = (await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { dicomweb: Record<string, number> };
    assert.ok(dicomweb.searches! >= 20, JSON.stringify(dicomweb));
    assert.ok(dicomweb.refused! >= refusals.length, JSON.stringify(dicomweb));
    assert.equal(dicomweb.failed, 0);
  });
});
