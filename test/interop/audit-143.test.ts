/**
 * Hunt 143's findings in the Q/R services, with DCMTK as the viewer and the peer as a process: a C-FIND
 * whose key the archive does not support as asked answers its matches 0xFF01, and a Patient Root retrieve
 * whose PatientID key is in another character set than the instances' retrieves what the C-FIND listed.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hasDcmtk } from '../support/dicom-tools.ts';
import { uidFromSeed, writeSeriesToDir, type WrittenSeries } from '../support/synthetic-dicom.ts';
import { MeshCluster, type PeerProcess } from '../mesh/support.ts';
import { dcmtk, readReceived, retrieveSummary } from './harness.ts';

const AE = 'PACSMESH';
const studyUid = uidFromSeed('hunt-143 audit study');
const instanceCount = 3;

describe('hunt 143: Q/R answers checked with DCMTK', { timeout: 170_000 }, () => {
  let work: string;
  let cluster: MeshCluster;
  let peer: PeerProcess;
  let series: WrittenSeries;

  before(async () => {
    assert.ok(hasDcmtk(['storescu', 'findscu', 'getscu']), 'DCMTK is not on PATH: apt-get install dcmtk');
    work = await mkdtemp(join(tmpdir(), 'pacs-mesh-audit-143-'));
    // A UTF-8 instance whose PatientID goes beyond ASCII.
    series = await writeSeriesToDir(join(work, 'study'), {
      count: instanceCount, rows: 16, columns: 16, specificCharacterSet: 'ISO_IR 192',
      study: { uid: studyUid }, patient: { id: 'Müller1', name: 'Müller^Hans' },
    });
    cluster = new MeshCluster();
    peer = await cluster.start('audit', { swarmKeyFile: null });
    const stored = await dcmtk('storescu', ['-aec', AE, '127.0.0.1', String(peer.dicomPort), ...series.files], 60_000);
    assert.equal(stored.code, 0, stored.output);
  });

  after(async () => {
    await cluster?.dispose();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('findscu with a sequence key holding a code to match: every match is Pending 0xFF01 (the code was not matched), not 0xFF00', async () => {
    const keys = ['QueryRetrieveLevel=STUDY', `StudyInstanceUID=${studyUid}`, 'ProcedureCodeSequence[0].CodeValue=NO-SUCH-CODE'];
    const run = await dcmtk('findscu', ['-d', '-S', '-aec', AE, ...keys.flatMap((k) => ['-k', k]), '127.0.0.1', String(peer.dicomPort)]);
    assert.match(run.output, /DIMSE Status\s*:\s*0xff01/i, run.output.slice(-2000));
    assert.doesNotMatch(run.output, /DIMSE Status\s*:\s*0xff00/i);
    const plain = await dcmtk('findscu', ['-d', '-S', '-aec', AE, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(peer.dicomPort)]);
    assert.match(plain.output, /DIMSE Status\s*:\s*0xff00/i, plain.output.slice(-2000));
  });

  it('getscu -P with a Latin-1 PatientID key (ISO_IR 100) gets the study filed under the UTF-8 PatientID, at PATIENT and STUDY level', async () => {
    // DCMTK's -k takes the shell's bytes; a query file holds Latin-1 bytes whatever the locale.
    const queryOf = async (name: string, level: string, extra: string): Promise<string> => {
      const dump = join(work, `${name}.txt`);
      await writeFile(dump, Buffer.from(`(0008,0005) CS [ISO_IR 100]\n(0008,0052) CS [${level}]\n(0010,0020) LO [M\xfcller1]\n${extra}`, 'latin1'));
      const file = join(work, `${name}.dcm`);
      const made = await dcmtk('dump2dcm', [dump, file]);
      assert.equal(made.code, 0, made.output);
      return file;
    };
    const queries = [await queryOf('patient', 'PATIENT', ''), await queryOf('study', 'STUDY', `(0020,000d) UI [${studyUid}]\n`)];
    for (const [i, query] of queries.entries()) {
      const find = await dcmtk('findscu', ['-v', '-P', '-aec', AE, '127.0.0.1', String(peer.dicomPort), query]);
      assert.match(find.output, /Find Response: 1 \(Pending\)/, `the C-FIND lists it: ${find.output.slice(-1500)}`);
      const dir = join(work, `got-${i}`);
      await mkdir(dir);
      const get = await dcmtk('getscu', ['-v', '-P', '-aec', AE, '-od', dir, '127.0.0.1', String(peer.dicomPort), query], 60_000);
      assert.equal(retrieveSummary(get.output, 'get').finalStatus, 'Success', get.output.slice(-2000));
      assert.deepEqual([...(await readReceived(dir)).keys()].sort(), [...series.sopInstanceUids].sort(), get.output.slice(-2000));
    }
  });
});
