/**
 * Interop: Orthanc (Debian `orthanc`) as a C-MOVE requestor (its REST `/modalities/{id}/move`), moving a
 * study from a pacs-mesh peer to Orthanc itself. The peer sends a Pending response after every
 * sub-operation, its last one too (Number of Remaining Sub-operations 0, as DCMTK's dcmqrscp: hunt 155);
 * Orthanc's move (DCMTK's DIMSE_moveUser underneath) must take it and report the move done. Skipped when
 * Orthanc is not installed (`.ci/run` installs it).
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { orthancBin } from '../../scripts/bench/lib/orthanc.ts';
import { Status } from '../../src/codec/dimse.ts';
import { openStoreClient } from '../support/peer-fixture.ts';
import { peerWithOrthanc } from '../support/peer-with-orthanc.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';

const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
const studyUid = (n: number) => `1.2.826.0.1.3680043.10.1453.157.${n}`;
const uid = (study: number, n: number) => `${studyUid(study)}.${n}`;

test('Orthanc as C-MOVE requestor: studies of one and of three instances arrive whole, and Orthanc reports each move done', { skip: orthancBin() === undefined && 'Orthanc is not installed' }, async (t) => {
  const { peer, orthanc } = await peerWithOrthanc(t, 'move-orthanc');

  const store = await openStoreClient(peer.dicomPort, 'STORESCU', ct);
  for (const [study, count] of [[1, 1], [2, 3]] as const) {
    for (let n = 1; n <= count; n++) {
      const reply = await store.storeInstance({ sopInstanceUid: uid(study, n), instanceNumber: n, rows: 8, columns: 8, study: { uid: studyUid(study) } });
      assert.equal(reply.command.status, Status.Success);
    }
  }
  await store.client.release();

  for (const [study, count] of [[1, 1], [2, 3]] as const) {
    const response = await fetch(`${orthanc.url}/modalities/pacs/move`, {
      method: 'POST',
      body: JSON.stringify({ Level: 'Study', Resources: [{ StudyInstanceUID: studyUid(study) }], TargetAet: 'ORTHANC', Timeout: 20 }),
    });
    assert.equal(response.status, 200, `study ${study}: ${await response.clone().text()}\n${orthanc.output().slice(-2000)}`);
    const found = (await (await fetch(`${orthanc.url}/tools/find`, { method: 'POST', body: JSON.stringify({ Level: 'Instance', Query: { StudyInstanceUID: studyUid(study) } }) })).json()) as string[];
    assert.equal(found.length, count, `study ${study}: the instances Orthanc holds`);
  }
});
