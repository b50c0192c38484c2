/**
 * Interop: a C-MOVE of one study of 42 SOP classes stored in three syntaxes each (implicit, explicit and big
 * endian VR: 168 presentation contexts to propose, over the 128 one association has) to DCMTK's storescp
 * and to Orthanc. The peer proposes every class with its fallback and as many stored syntaxes as fit, on one
 * association; before hunt 160 it proposed the first 128 contexts only and failed the last ten classes'
 * instances ("receiver accepted no context"). gdcmscu: gdcm.test.ts. Skipped when DCMTK or Orthanc is not
 * installed.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { orthancBin } from '../../scripts/bench/lib/orthanc.ts';
import { Status } from '../../src/codec/dimse.ts';
import { getFreePort, hasDcmtk, startStorescp } from '../support/dicom-tools.ts';
import { manyStorageClasses, moveStudyFrom, storeManyClassStudy } from '../support/many-class-study.ts';
import { startTestPeer } from '../support/peer-fixture.ts';
import { peerWithOrthanc } from '../support/peer-with-orthanc.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { copyDifferences } from './compare.ts';
import { readReceived } from './harness.ts';

const syntaxes = [TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian] as const;

test('C-MOVE of 42 SOP classes in 3 syntaxes each to DCMTK storescp: every instance arrives, each the original', { skip: !hasDcmtk(['storescp']) && 'DCMTK storescp is not installed', timeout: 180_000 }, async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'pacs-mesh-many-classes-'));
  const storescp = await startStorescp({ port: await getFreePort(), outDir: join(work, 'received'), aeTitle: 'STORESCP', extraArgs: ['-v'] });
  const peer = await startTestPeer(['--move-dest', `STORESCP=127.0.0.1:${storescp.port}`], 'move-many-dcmtk');
  t.after(async () => {
    await peer.dispose();
    await storescp.stop();
    await rm(work, { recursive: true, force: true });
  });
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.2';
  const stored = await storeManyClassStudy(peer.dicomPort, studyInstanceUid, manyStorageClasses, syntaxes);

  const final = await moveStudyFrom(peer.dicomPort, studyInstanceUid, 'STORESCP');
  assert.equal(final.command.status, Status.Success, `0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}`);
  assert.deepEqual([final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [stored.length, 0, 0]);
  const received = await readReceived(storescp.outDir);
  assert.deepEqual([...received.keys()].sort(), stored.map((i) => i.sopInstanceUid).sort());
  // Each the original: as stored where its syntax was proposed, converted (losslessly) into the fallback's where it was not.
  for (const instance of stored) assert.deepEqual(copyDifferences(instance.part10, received.get(instance.sopInstanceUid)!.bytes), [], `${instance.sopInstanceUid} (${instance.transferSyntaxUid})`);
  // One association: storescp (-v) logs each one it accepts (and the readiness probe's connection as received only).
  assert.equal(storescp.output().match(/Association Acknowledged/g)?.length, 1, storescp.output().slice(-2000));
});

test('C-MOVE of 42 SOP classes in 3 syntaxes each to Orthanc: every instance arrives', { skip: orthancBin() === undefined && 'Orthanc is not installed', timeout: 180_000 }, async (t) => {
  const { peer, orthanc } = await peerWithOrthanc(t, 'move-many-orthanc');
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.3';
  const stored = await storeManyClassStudy(peer.dicomPort, studyInstanceUid, manyStorageClasses, syntaxes);

  const final = await moveStudyFrom(peer.dicomPort, studyInstanceUid, 'ORTHANC');
  assert.equal(final.command.status, Status.Success, `0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}\n${orthanc.output().slice(-2000)}`);
  assert.deepEqual([final.command.completedSubOperations, final.command.failedSubOperations, final.command.warningSubOperations], [stored.length, 0, 0]);
  const found = (await (await fetch(`${orthanc.url}/tools/find`, { method: 'POST', body: JSON.stringify({ Level: 'Instance', Query: { StudyInstanceUID: studyInstanceUid }, Expand: true }) })).json()) as Array<{ MainDicomTags: { SOPInstanceUID: string } }>;
  assert.deepEqual(found.map((i) => i.MainDicomTags.SOPInstanceUID).sort(), stored.map((i) => i.sopInstanceUid).sort());
});
