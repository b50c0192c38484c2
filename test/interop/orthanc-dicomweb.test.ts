/**
 * Interop: Orthanc's DICOMweb plugin (Debian `orthanc-dicomweb`) as the client of a pacs-mesh peer's
 * DICOMweb service. The corpus goes into the peer with DCMTK's storescu; Orthanc then searches it with
 * QIDO-RS and retrieves every study with WADO-RS, and each instance it receives must be the one storescu
 * sent, element by element; and it sends a study of its own with STOW-RS. Skipped when Orthanc or its DICOMweb plugin is not installed (`.ci/run`
 * installs both).
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { orthancBin, startOrthanc, type OrthancServer } from '../../scripts/bench/lib/orthanc.ts';
import { startTestPeer, type TestPeer } from '../support/peer-fixture.ts';
import { compareInstances } from './compare.ts';
import { parseMultipart } from '../support/multipart.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { groupBy, loadCorpus, storeWithStorescu, type Instance } from './harness.ts';

const dicomWebPlugin = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';
const skip = orthancBin() === undefined ? 'Orthanc is not installed' : !existsSync(dicomWebPlugin) ? 'orthanc-dicomweb is not installed' : false;

let peer: TestPeer;
let orthanc: OrthancServer;
let orthancDir: string;
let corpus: Instance[];

/** A result as Orthanc's DICOMweb client gives it back. */
type OrthancTags = Record<string, { Name: string; vr: string; Value?: string }>;

/** Orthanc's DICOMweb client call `path` (under /dicom-web/servers/pacsmesh) with a JSON body. */
async function viaOrthanc(path: string, body: unknown): Promise<{ status: number; json: unknown }> {
  const response = await fetch(`${orthanc.url}/dicom-web/servers/pacsmesh/${path}`, { method: 'POST', body: JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
}

describe('Orthanc as a DICOMweb client of pacs-mesh', { skip }, () => {
  before(async () => {
    corpus = loadCorpus();
    peer = await startTestPeer([], 'dicomweb-orthanc');
    await storeWithStorescu(peer.dicomPort, corpus);
    orthancDir = mkdtempSync(join(tmpdir(), 'pacs-orthanc-dicomweb-'));
    orthanc = await startOrthanc({
      dataDir: orthancDir,
      config: { Plugins: [dicomWebPlugin], DicomWeb: { Enable: true, Servers: { pacsmesh: [`http://127.0.0.1:${peer.httpPort}/dicom-web/`] } } },
    });
  });

  after(async () => {
    await orthanc?.stop();
    await peer?.dispose();
    if (orthancDir) rmSync(orthancDir, { recursive: true, force: true });
  });

  it('QIDO-RS: Orthanc finds every study, and each study\'s series and instances', async () => {
    const studies = groupBy(corpus, (instance) => instance.studyUid);
    const found = await viaOrthanc('qido', { Uri: '/studies' });
    assert.equal(found.status, 200, JSON.stringify(found.json));
    // Orthanc parses the DICOM JSON and answers in its own model: each tag's Value as one string.
    const studyUids = (found.json as OrthancTags[]).map((study) => study['0020000D']!.Value).sort();
    assert.deepEqual(studyUids, [...studies.keys()].sort());
    for (const study of found.json as OrthancTags[]) {
      const instances = studies.get(study['0020000D']!.Value!)!;
      assert.equal(study['00201208']!.Value, String(instances.length), 'NumberOfStudyRelatedInstances');
      // A study filed under several PatientIDs shows its newest instance's.
      assert.ok(instances.some((instance) => instance.patientId === (study['00100020']!.Value ?? '')), 'PatientID');
    }
    for (const [studyUid, instances] of studies) {
      const series = await viaOrthanc('qido', { Uri: `/studies/${studyUid}/series` });
      assert.equal((series.json as unknown[]).length, groupBy(instances, (instance) => instance.seriesUid).size, studyUid);
      const listed = await viaOrthanc('qido', { Uri: `/studies/${studyUid}/instances` });
      assert.deepEqual(
        (listed.json as OrthancTags[]).map((instance) => instance['00080018']!.Value).sort(),
        instances.map((instance) => instance.sopInstanceUid).sort(),
      );
    }
  });

  it('STOW-RS: Orthanc sends a study it holds, and each instance is stored as Orthanc sent it', async () => {
    const study = '1.2.826.0.1.3680043.10.1453.203.1';
    const sent = new Map<string, Uint8Array>();
    let orthancStudyId = '';
    for (const n of [1, 2, 3]) {
      const { bytes, resolved } = makeInstanceWithInfo({ study: { uid: study }, series: { uid: `${study}.1` }, sopInstanceUid: `${study}.1.${n}`, instanceNumber: n, rows: 32, columns: 32 });
      const uploaded = (await (await fetch(`${orthanc.url}/instances`, { method: 'POST', body: Buffer.from(bytes) })).json()) as { ParentStudy: string };
      orthancStudyId = uploaded.ParentStudy;
      sent.set(resolved.sopInstanceUid, bytes);
    }
    const stow = await viaOrthanc('stow', { Resources: [orthancStudyId] });
    assert.equal(stow.status, 200, `${JSON.stringify(stow.json)}\n${orthanc.output().slice(-3000)}`);
    for (const [uid, bytes] of sent) {
      const response = await fetch(`http://127.0.0.1:${peer.httpPort}/dicom-web/studies/${study}/series/${study}.1/instances/${uid}`, { headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' } });
      assert.equal(response.status, 200, uid);
      const [part] = parseMultipart(Buffer.from(await response.arrayBuffer()), response.headers.get('content-type')!);
      const comparison = compareInstances(bytes, part!.body);
      assert.notEqual(comparison.identity, 'different', `${uid}: ${JSON.stringify(comparison).slice(0, 600)}`);
    }
  });

  it('WADO-RS: Orthanc retrieves every study, and holds each instance as storescu sent it', async () => {
    const studyUids = [...new Set(corpus.map((instance) => instance.studyUid))];
    // The study Orthanc itself sent over STOW-RS is dropped first: Orthanc then holds the corpus alone.
    for (const study of (await (await fetch(`${orthanc.url}/studies`)).json()) as string[]) await fetch(`${orthanc.url}/studies/${study}`, { method: 'DELETE' });
    const retrieved = await viaOrthanc('retrieve', { Resources: studyUids.map((studyUid) => ({ Study: studyUid })) });
    assert.equal(retrieved.status, 200, JSON.stringify(retrieved.json));
    const held = (await (await fetch(`${orthanc.url}/instances?expand`)).json()) as Array<{ ID: string; MainDicomTags: { SOPInstanceUID: string } }>;
    assert.equal(held.length, corpus.length, 'every instance reached Orthanc');
    for (const instance of corpus) {
      const id = held.find((h) => h.MainDicomTags.SOPInstanceUID === instance.sopInstanceUid)?.ID;
      assert.ok(id, `${instance.name} reached Orthanc`);
      const copy = new Uint8Array(await (await fetch(`${orthanc.url}/instances/${id}/file`)).arrayBuffer());
      const comparison = compareInstances(instance.bytes, copy);
      assert.notEqual(comparison.identity, 'different', `${instance.name}: ${JSON.stringify(comparison).slice(0, 600)}`);
    }
  });
});
