/**
 * A seeded fuzz of DICOMweb searches and retrieves: random paths, query parameters, Accept headers and
 * methods at a peer holding a study. Every answer is a success or a 4xx/503 with a JSON error and a
 * stable code, never a 500 or a dropped connection, and the peer serves normally afterwards.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Prng } from '../../src/sim/prng.ts';
import { Status } from '../../src/codec/dimse.ts';
import { openStoreClient, startTestPeer, type TestPeer } from '../support/peer-fixture.ts';

const study = '1.2.826.0.1.3680043.10.1453.202.1';
const series = `${study}.1`;
const instance = `${series}.1`;

let peer: TestPeer;

before(async () => {
  peer = await startTestPeer([], 'dicomweb-fuzz');
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  assert.equal((await store.storeInstance({ study: { uid: study }, series: { uid: series }, sopInstanceUid: instance, rows: 8, columns: 8 })).command.status, Status.Success);
  await store.client.release();
});

after(() => peer.dispose());

const segments = ['studies', 'series', 'instances', 'metadata', 'frames', study, series, instance, '1', '1,2', '0', '', '..', '%00', '%ZZ', '1.2.x', 'x'.repeat(300), `${'9'.repeat(70)}`, '%2F', 'rendered', 'bulkdata'];
const names = ['PatientName', 'PatientID', 'StudyDate', 'StudyTime', 'StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID', 'Modality', 'ModalitiesInStudy', 'AccessionNumber', '00100010', '0020000D', '7FE00010', 'includefield', 'limit', 'offset', 'fuzzymatching', 'Bogus', 'ReferencedStudySequence', '00400275.00321060', 'NumberOfStudyRelatedInstances', 'Rows', ''];
const values = ['', '*', '?', 'A*B?', '20240101-', '-20240101', '20240101-20231231', '2024', 'abc', '1', '-1', '99999999999', 'all', 'true', 'maybe', study, `${study},${series}`, '\\', '%', 'é', '\u0000', 'x'.repeat(2000), '1.2.3\\4.5'];
const accepts = [undefined, '*/*', 'application/dicom+json', 'application/json', 'multipart/related; type="application/dicom"', 'multipart/related; type="application/dicom"; transfer-syntax=*', 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2', 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50', 'multipart/related; type="application/octet-stream"', 'text/html', 'garbage;;;', 'a/b;q=0', ',,,'];
const methods = ['GET', 'GET', 'GET', 'GET', 'GET', 'HEAD', 'DELETE', 'PUT', 'OPTIONS', 'PATCH'];
/** The resources' shapes, `S`, `E` and `I` standing for a study, series and instance UID (valid or not). */
const templates = ['studies', 'series', 'instances', 'studies/S', 'studies/S/metadata', 'studies/S/series', 'studies/S/instances', 'studies/S/series/E', 'studies/S/series/E/metadata', 'studies/S/series/E/instances', 'studies/S/series/E/instances/I', 'studies/S/series/E/instances/I/metadata', 'studies/S/series/E/instances/I/frames/1', 'studies/S/series/E/instances/I/bulkdata/00091003', 'studies/S/series/E/instances/I/bulkdata/7FE00010'];
const uidsOrNot = [study, series, instance, '1.2.3', '1.2.x', '', '01.2'];
const uriParameters = [['requestType', 'WADO'], ['studyUID', study], ['seriesUID', series], ['objectUID', instance], ['contentType', 'application/dicom'], ['transferSyntax', '*']] as const;

test('seeded fuzz: a thousand malformed DICOMweb requests each get a clear answer, and the peer keeps serving', async () => {
  const seed = Number(process.env.FUZZ_SEED ?? 5151);
  const prng = new Prng(seed);
  const statuses = new Map<number, number>();
  const uriStatuses = new Set<number>();
  for (let round = 0; round < 1000; round++) {
    const path = prng.chance(0.75)
      ? prng.pick(templates).replace('S', prng.chance(0.7) ? study : prng.pick(uidsOrNot)).replace('E', prng.chance(0.7) ? series : prng.pick(uidsOrNot)).replace('I', prng.chance(0.7) ? instance : prng.pick(uidsOrNot))
      : Array.from({ length: prng.between(0, 8) }, () => prng.pick(segments)).join('/');
    // WADO-URI (at /dicom-web/wado): its parameters, mostly right, sometimes wrong, missing or repeated.
    const wado = prng.chance(0.1);
    const uriParameter = ([name, right]: readonly [string, string]): string[] => (prng.chance(0.85) ? [`${name}=${encodeURIComponent(prng.chance(0.8) ? right : prng.pick(values))}`] : []);
    const query = wado
      ? [...uriParameters.flatMap(uriParameter), ...(prng.chance(0.2) ? [`${prng.pick(['rows', 'anonymize', 'transferSyntax', 'objectUID', 'charset'])}=${encodeURIComponent(prng.pick(values))}`] : [])].join('&')
      : Array.from({ length: prng.between(0, 3) }, () => `${encodeURIComponent(prng.pick(names))}=${encodeURIComponent(prng.pick(values))}`).join('&');
    const accept = prng.pick(accepts);
    const method = prng.pick(methods);
    const url = `http://127.0.0.1:${peer.httpPort}/dicom-web/${wado ? 'wado' : path}${query === '' ? '' : `?${query}`}`;
    const response = await fetch(url, { method, headers: accept === undefined ? {} : { accept } });
    const body = await response.text();
    statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
    if (wado) uriStatuses.add(response.status);
    const context = `${method} ${url.slice(0, 300)} accept=${accept} -> ${response.status} ${body.slice(0, 200)} (FUZZ_SEED=${seed}, round ${round})`;
    assert.ok(response.status < 500 || response.status === 503, context);
    if (response.status >= 400 && method !== 'HEAD') {
      const error = JSON.parse(body) as { error: string; code: string };
      assert.match(error.code, /^ERR_[A-Z_]+$/, context);
      assert.ok(error.error.length > 0, context);
    }
  }
  // Every kind of answer came up, so the fuzz reached the services and not only the router.
  for (const status of [200, 400, 404, 405, 406]) assert.ok((statuses.get(status) ?? 0) > 0, `no ${status} among ${JSON.stringify([...statuses])}`);
  for (const status of [200, 400, 406]) assert.ok(uriStatuses.has(status), `WADO-URI: no ${status} among ${JSON.stringify([...uriStatuses])}`);
  assert.equal((await fetch(`http://127.0.0.1:${peer.httpPort}/healthz`)).status, 200);
  const found = (await (await fetch(`http://127.0.0.1:${peer.httpPort}/dicom-web/studies`)).json()) as unknown[];
  assert.equal(found.length, 1);
});
