/**
 * Memory stays bounded by design, not by instance size: a 300 MB multi-frame instance streams through a
 * peer running in its own process (C-STORE in, C-GET out) while the peer's peak RSS stays far below it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DicomClientAssociation } from '../../src/actors/association/client.ts';
import { CommandField } from '../../src/codec/dimse.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { TransferSyntax } from '../../src/codec/dicom-types.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { MeshCluster } from '../mesh/support.ts';
import { hasDcmtk, peakRssBytes, runTool } from '../support/dicom-tools.ts';

const frameBytes = 512 * 512 * 2;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);

function anonymousBytes(pid: number): number {
  const match = /RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : 0;
}
const frameCount = 572; // 572 frames of 512x512x16 bits: 300 MB of pixel data
const sopClassUid = '1.2.840.10008.5.1.4.1.1.2.1'; // Enhanced CT Image Storage
const sopInstanceUid = '2.25.300000000000000000000000000000000001';

function header(): Uint8Array {
  const text = (tag: number, vr: string, value: string) => ({ tag, vr, value });
  return encodeDataset(
    [
      text(0x00080016, 'UI', sopClassUid),
      text(0x00080018, 'UI', sopInstanceUid),
      text(0x00080060, 'CS', 'CT'),
      text(0x00100010, 'PN', 'Large^Instance'),
      text(0x00100020, 'LO', 'LARGE1'),
      text(0x0020000d, 'UI', '2.25.300000000000000000000000000000000002'),
      text(0x0020000e, 'UI', '2.25.300000000000000000000000000000000003'),
      text(0x00280002, 'US', '1'),
      text(0x00280004, 'CS', 'MONOCHROME2'),
      text(0x00280008, 'IS', String(frameCount)),
      text(0x00280010, 'US', '512'),
      text(0x00280011, 'US', '512'),
      text(0x00280100, 'US', '16'),
      text(0x00280101, 'US', '12'),
      text(0x00280102, 'US', '11'),
      text(0x00280103, 'US', '0'),
    ],
    TransferSyntax.ExplicitVrLittleEndian,
  );
}

/** The data set as a stream: header, Pixel Data header, then frames made on the fly (never all in memory). */
async function* dataSet(hash: ReturnType<typeof createHash>): AsyncGenerator<Uint8Array> {
  const pixelHeader = Buffer.alloc(12);
  pixelHeader.writeUInt16LE(0x7fe0, 0);
  pixelHeader.writeUInt16LE(0x0010, 2);
  pixelHeader.write('OW', 4, 'latin1');
  pixelHeader.writeUInt32LE(frameBytes * frameCount, 8);
  const first = Buffer.concat([header(), pixelHeader]);
  hash.update(first);
  yield first;
  for (let frame = 0; frame < frameCount; frame++) {
    const bytes = Buffer.alloc(frameBytes, frame & 0xff);
    hash.update(bytes);
    yield bytes;
  }
}

test('a 300 MB instance is stored and retrieved with the peer far below 300 MB of memory', { timeout: 180_000 }, async (t) => {
  const cluster = new MeshCluster();
  t.after(() => cluster.dispose());
  const peer = await cluster.start('large', { swarmKeyFile: null, bootstrap: [] });
  // Anonymous memory (heap and native allocations) is what instance size must not drive. File-backed
  // pages are not counted: LevelDB maps its table files, and reading 300 MB maps 300 MB of page cache.
  const baselineAnonymous = anonymousBytes(peer.process.pid);
  let peakAnonymous = baselineAnonymous;
  const sampler = setInterval(() => (peakAnonymous = Math.max(peakAnonymous, anonymousBytes(peer.process.pid))), 20);
  t.after(() => clearInterval(sampler));
  const sentHash = createHash('sha256');
  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port: peer.dicomPort,
    callingAeTitle: 'LARGE',
    calledAeTitle: 'PACSMESH',
    presentationContexts: [{ abstractSyntaxUid: sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }],
    timeoutMs: 120_000,
  });
  const reply = await client.request(client.contexts[0]!.id, { commandField: CommandField.CStoreRq, affectedSopClassUid: sopClassUid, affectedSopInstanceUid: sopInstanceUid, priority: 0, hasDataSet: true }, dataSet(sentHash));
  await client.release();
  assert.equal(reply.command.status, 0, reply.command.errorComment);
  const sentSha = sentHash.digest('hex');
  t.diagnostic(`after store: anonymous ${mib(anonymousBytes(peer.process.pid))} MiB`);

  if (hasDcmtk(['getscu'])) {
    const out = mkdtempSync(join(tmpdir(), 'pacs-large-get-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));
    const got = await runTool('getscu', ['-S', '-aec', 'PACSMESH', '-od', out, '-k', 'QueryRetrieveLevel=STUDY', '-k', 'StudyInstanceUID=2.25.300000000000000000000000000000000002', '127.0.0.1', String(peer.dicomPort)], { timeoutMs: 120_000 });
    assert.equal(got.code, 0, got.stderr);
    const [file] = readdirSync(out);
    assert.ok(file, 'getscu wrote the instance');
    const path = join(out, file);
    const head = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      createReadStream(path, { start: 0, end: 4095 }).on('data', (c) => chunks.push(c as Buffer)).on('end', () => resolve(Buffer.concat(chunks))).on('error', reject);
    });
    const offset = splitPart10(head).datasetOffset;
    const receivedHash = createHash('sha256');
    await new Promise<void>((resolve, reject) => createReadStream(path, { start: offset }).on('data', (c) => receivedHash.update(c)).on('end', resolve).on('error', reject));
    assert.equal(receivedHash.digest('hex'), sentSha, 'C-GET returned the stored bytes unchanged');
  } else {
    t.diagnostic('DCMTK getscu not installed: retrieve half skipped');
  }
  clearInterval(sampler);
  const peakRss = peakRssBytes(peer.process.pid) ?? 0;
  t.diagnostic(
    `${((frameBytes * frameCount) / 1e6).toFixed(0)} MB instance: peer anonymous memory ${mib(baselineAnonymous)} MiB at start, peak ${mib(peakAnonymous)} MiB ` +
      `(+${mib(peakAnonymous - baselineAnonymous)} MiB); peak RSS with mapped table files ${mib(peakRss)} MiB`,
  );
  assert.ok(peakAnonymous - baselineAnonymous < 200 * 2 ** 20, `anonymous memory grew by ${mib(peakAnonymous - baselineAnonymous)} MiB`);
});
