/**
 * Interop: every corpus file, stored in its own syntax, moved (C-MOVE) to DCMTK storescp receivers that take
 * fewer syntaxes than all: each copy goes as stored, byte for byte, where its syntax was accepted, and
 * converted only where it was not: decoded into explicit VR LE (implicit VR LE where that is all a receiver
 * takes) before any compressed syntax, with the same elements, the same pixel values where both are native,
 * and a lossy original still flagged lossy. Skipped when DCMTK or the corpus is not installed.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Status } from '../../src/codec/dimse.ts';
import { getFreePort, hasDcmtk, startStorescp } from '../support/dicom-tools.ts';
import { moveStudyFrom } from '../support/many-class-study.ts';
import { startTestPeer } from '../support/peer-fixture.ts';
import { TransferSyntax } from '../support/synthetic-dicom.ts';
import { copyDifferences, datasetText, flattenFile, readPart10 } from './compare.ts';
import { corpusDir, groupBy, loadCorpus, readReceived, storeWithStorescu } from './harness.ts';

const uncompressed = [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian, TransferSyntax.ImplicitVrLittleEndian];
const jpegBaseline = '1.2.840.10008.1.2.4.50';

/** storescp's options, and the syntaxes it then accepts (DCMTK 3.6.7); ALL's copies are what the peer stored. */
const receivers = {
  ALL: { args: ['+xa'], accepts: undefined },
  UNCOMPRESSED: { args: [], accepts: uncompressed },
  IMPLICIT: { args: ['+xi'], accepts: [TransferSyntax.ImplicitVrLittleEndian] },
  BIG: { args: ['+xb'], accepts: uncompressed },
  DEFLATED: { args: ['+xd'], accepts: [TransferSyntax.DeflatedExplicitVrLittleEndian, ...uncompressed] },
  LOSSLESS: { args: ['+xs'], accepts: ['1.2.840.10008.1.2.4.70', ...uncompressed] },
  JPEG8: { args: ['+xy'], accepts: [jpegBaseline, ...uncompressed] },
} as const;

test('C-MOVE of every corpus file to storescp receivers taking fewer syntaxes: as stored where accepted, else converted into explicit VR LE first, the same elements and pixel values, lossy ones still flagged', { skip: (!hasDcmtk(['storescp', 'storescu']) && 'DCMTK is not installed') || (!existsSync(corpusDir) && 'the DICOM corpus is not installed'), timeout: 180_000 }, async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'pacs-mesh-move-receivers-'));
  const started = await Promise.all(
    Object.entries(receivers).map(async ([aeTitle, { args }]) => startStorescp({ port: await getFreePort(), outDir: join(work, aeTitle), aeTitle, extraArgs: ['+B', ...args] })),
  );
  const peer = await startTestPeer(started.flatMap((r) => ['--move-dest', `${r.aeTitle}=127.0.0.1:${r.port}`]), 'move-receivers');
  t.after(async () => {
    await peer.dispose();
    await Promise.all(started.map((r) => r.stop()));
    await rm(work, { recursive: true, force: true });
  });
  const corpus = loadCorpus();
  await storeWithStorescu(peer.dicomPort, corpus);
  for (const receiver of started) {
    for (const studyUid of groupBy(corpus, (i) => i.studyUid).keys()) {
      const final = await moveStudyFrom(peer.dicomPort, studyUid, receiver.aeTitle);
      assert.equal(final.command.status, Status.Success, `${receiver.aeTitle}, study ${studyUid}: 0x${final.command.status?.toString(16)} ${final.command.errorComment ?? ''}`);
    }
  }

  const stored = await readReceived(join(work, 'ALL'));
  const problems: string[] = [];
  for (const [aeTitle, { accepts }] of Object.entries(receivers)) {
    const received = await readReceived(join(work, aeTitle));
    for (const instance of corpus) {
      const what = `${instance.name} to ${aeTitle}`;
      const original = stored.get(instance.sopInstanceUid)?.bytes;
      const copy = received.get(instance.sopInstanceUid)?.bytes;
      if (original === undefined || copy === undefined) {
        problems.push(`${what}: not received`);
        continue;
      }
      const storedTs = readPart10(original).transferSyntaxUid;
      if (storedTs !== instance.transferSyntaxUid) problems.push(`${instance.name}: stored as ${storedTs}, not in its own syntax`);
      const expectedTs = accepts === undefined || (accepts as readonly string[]).includes(storedTs) ? storedTs : (accepts as readonly string[]).includes(TransferSyntax.ExplicitVrLittleEndian) ? TransferSyntax.ExplicitVrLittleEndian : TransferSyntax.ImplicitVrLittleEndian;
      const copyTs = readPart10(copy).transferSyntaxUid;
      if (copyTs !== expectedTs) problems.push(`${what}: came as ${copyTs}, not ${expectedTs}`);
      else if (copyTs === storedTs && !Buffer.from(readPart10(copy).dataset).equals(readPart10(original).dataset)) problems.push(`${what}: not byte for byte as stored`);
      else if (copyTs !== storedTs) {
        problems.push(...copyDifferences(original, copy).map((d) => `${what}: ${d}`));
        if (storedTs === jpegBaseline && datasetText(flattenFile(copy).flat, 0x00282110) !== '01') problems.push(`${what}: Lossy Image Compression is not 01`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
