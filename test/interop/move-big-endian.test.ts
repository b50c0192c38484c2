/**
 * Interop: a C-MOVE of a CT study holding a big endian instance and an implicit VR one to DCMTK's storescp
 * (bit-preserving, so each file holds the data set as it came), accepting every syntax, little endian only,
 * or big endian and explicit VR LE but not implicit VR. Each copy must be the original: byte for byte where
 * its syntax was accepted, converted losslessly (into little endian, whenever accepted) where it was not.
 * Skipped when DCMTK is not installed.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Status } from '../../src/codec/dimse.ts';
import { getFreePort, hasDcmtk, startStorescp } from '../support/dicom-tools.ts';
import { moveStudyFrom, storeManyClassStudy } from '../support/many-class-study.ts';
import { startTestPeer } from '../support/peer-fixture.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { copyDifferences, readPart10 } from './compare.ts';
import { readReceived } from './harness.ts';

const ctImage = '1.2.840.10008.5.1.4.1.1.2';

/** A storescp configuration whose profile `Only` accepts CT (and Verification) in `syntaxes` (DCMTK's names) only. */
async function storescpProfile(path: string, syntaxes: readonly string[]): Promise<string[]> {
  const lines = ['[[TransferSyntaxes]]', '[Accepted]', ...syntaxes.map((ts, i) => `TransferSyntax${i + 1} = ${ts}`)];
  lines.push('[[PresentationContexts]]', '[Only]', 'PresentationContext1 = VerificationSOPClass\\Accepted', 'PresentationContext2 = CTImageStorage\\Accepted');
  lines.push('[[Profiles]]', '[Only]', 'PresentationContexts = Only', '');
  await writeFile(path, lines.join('\n'));
  return ['-xf', path, 'Only'];
}

test('C-MOVE of big endian and implicit VR instances to storescp accepting all, little endian only, or big endian and explicit VR only: as stored where accepted, else converted losslessly into little endian', { skip: !hasDcmtk(['storescp']) && 'DCMTK storescp is not installed', timeout: 120_000 }, async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'pacs-mesh-move-big-endian-'));
  const destinations = {
    ALL: ['+xa'],
    LITTLE: await storescpProfile(join(work, 'little.cfg'), ['LittleEndianExplicit', 'LittleEndianImplicit']),
    NOIMPLICIT: await storescpProfile(join(work, 'no-implicit.cfg'), ['BigEndianExplicit', 'LittleEndianExplicit']),
  };
  const receivers = await Promise.all(
    Object.entries(destinations).map(async ([aeTitle, args]) => startStorescp({ port: await getFreePort(), outDir: join(work, aeTitle), aeTitle, extraArgs: ['+B', ...args] })),
  );
  const peer = await startTestPeer(receivers.flatMap((r) => ['--move-dest', `${r.aeTitle}=127.0.0.1:${r.port}`]), 'move-big-endian');
  t.after(async () => {
    await peer.dispose();
    await Promise.all(receivers.map((r) => r.stop()));
    await rm(work, { recursive: true, force: true });
  });
  const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.170.3';
  const stored = await storeManyClassStudy(peer.dicomPort, studyInstanceUid, [ctImage], [TransferSyntax.ExplicitVrBigEndian, TransferSyntax.ImplicitVrLittleEndian]);
  const [bigEndian, implicit] = stored;

  // The syntax each destination should get each instance in: the stored one when it accepts it.
  const expected: Record<string, [string, string]> = {
    ALL: [TransferSyntax.ExplicitVrBigEndian, TransferSyntax.ImplicitVrLittleEndian],
    LITTLE: [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian],
    // Before: the implicit VR instance went converted into big endian, its context proposed first.
    NOIMPLICIT: [TransferSyntax.ExplicitVrBigEndian, TransferSyntax.ExplicitVrLittleEndian],
  };
  for (const receiver of receivers) {
    const final = await moveStudyFrom(peer.dicomPort, studyInstanceUid, receiver.aeTitle);
    assert.equal(final.command.status, Status.Success, `${receiver.aeTitle}: 0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}`);
    const received = await readReceived(receiver.outDir);
    for (const [index, instance] of [bigEndian!, implicit!].entries()) {
      const copy = received.get(instance.sopInstanceUid)!.bytes;
      const what = `${receiver.aeTitle}, stored as ${instance.transferSyntaxUid}`;
      assert.equal(readPart10(copy).transferSyntaxUid, expected[receiver.aeTitle]![index], what);
      if (instance.transferSyntaxUid === expected[receiver.aeTitle]![index]) assert.ok(Buffer.from(readPart10(copy).dataset).equals(readPart10(instance.part10).dataset), `${what}: byte for byte`);
      else assert.deepEqual(copyDifferences(instance.part10, copy), [], `${what}: the same elements and pixel values`);
    }
  }
});
