/**
 * Interop: Orthanc (Debian `orthanc`, its storage commitment SCU) asks a pacs-mesh peer to commit
 * instances, and takes the report on an association of the peer's own (Orthanc expects it asynchronous,
 * IHE RAD-10). DCMTK has no storage commitment tool; Orthanc is the independent implementation here.
 * Orthanc 1.10 has no DICOM bind address: its port listens on every interface, and is only used on
 * 127.0.0.1. Skipped when Orthanc is not installed (`.ci/run` installs it).
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { orthancBin } from '../../scripts/bench/lib/orthanc.ts';
import { Status } from '../../src/codec/dimse.ts';
import { openStoreClient } from '../support/peer-fixture.ts';
import { peerWithOrthanc } from '../support/peer-with-orthanc.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { waitFor } from '../support/wait.ts';

const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
const uid = (n: number) => `1.2.826.0.1.3680043.10.1453.78.${n}`;

interface OrthancReport {
  Status: 'Pending' | 'Success' | 'Failure';
  Success: Array<{ SOPClassUID: string; SOPInstanceUID: string }>;
  Failures: Array<{ SOPClassUID: string; SOPInstanceUID: string; FailureReason: number }>;
}

test('Orthanc as storage commitment SCU: committed and missing instances come back in its report', { skip: orthancBin() === undefined && 'Orthanc is not installed' }, async (t) => {
  const { peer, orthanc } = await peerWithOrthanc(t, 'commit-orthanc', { commitment: { checkWaitMs: 500, checkIntervalMs: 100 } });

  const store = await openStoreClient(peer.dicomPort, 'ORTHANC', ct);
  for (const n of [1, 2]) assert.equal((await store.storeInstance({ sopInstanceUid: uid(n), instanceNumber: n, rows: 8, columns: 8 })).command.status, Status.Success);
  await store.client.release();

  const ask = async (uids: string[]): Promise<OrthancReport> => {
    const response = await fetch(`${orthanc.url}/modalities/pacs/storage-commitment`, {
      method: 'POST',
      body: JSON.stringify({ DicomInstances: uids.map((sopInstanceUid) => ({ SOPClassUID: ct, SOPInstanceUID: sopInstanceUid })) }),
    });
    assert.equal(response.status, 200, await response.clone().text());
    const { ID } = (await response.json()) as { ID: string };
    let report: OrthancReport | undefined;
    await waitFor('Orthanc to receive the report', async () => {
      report = (await (await fetch(`${orthanc.url}/storage-commitment/${ID}`)).json()) as OrthancReport;
      return report.Status !== 'Pending';
    }, 20_000, 100);
    return report!;
  };

  const allHeld = await ask([uid(1), uid(2)]);
  assert.equal(allHeld.Status, 'Success');
  assert.deepEqual(allHeld.Success.map((s) => s.SOPInstanceUID).sort(), [uid(1), uid(2)]);
  assert.deepEqual(allHeld.Failures, []);

  const oneMissing = await ask([uid(1), uid(3)]);
  assert.equal(oneMissing.Status, 'Failure');
  assert.deepEqual(oneMissing.Success.map((s) => s.SOPInstanceUID), [uid(1)]);
  assert.deepEqual(oneMissing.Failures.map((f) => [f.SOPInstanceUID, f.FailureReason]), [[uid(3), 0x0112]]);
});
