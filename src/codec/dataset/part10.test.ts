import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { TransferSyntax } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { isAcceptableUid } from '../uid.ts';
import { DatasetParseError } from './errors.ts';
import { splitPart10 } from './part10.ts';
import { DatasetHeaderReader, parseDataset } from './reader.ts';
import { concat, corpusDirectory, corpusSkip, element, explicitLittle, implicitLittle, seededRandom } from './test-fixtures.ts';

function part10(meta: Uint8Array, dataset: Uint8Array): Uint8Array {
  const preamble = new Uint8Array(128);
  return concat([preamble, Buffer.from('DICM', 'latin1'), meta, dataset]);
}

describe('splitPart10', () => {
  it('returns the meta elements, the transfer syntax and where the dataset starts', () => {
    const metaBody = concat([
      element(0x00020001, 'OB', Uint8Array.from([0, 1]), explicitLittle),
      element(0x00020010, 'UI', `${TransferSyntax.ImplicitVrLittleEndian}\0`, explicitLittle),
    ]);
    const groupLength = element(0x00020000, 'UL', Uint8Array.from([metaBody.length, 0, 0, 0]), explicitLittle);
    const meta = concat([groupLength, metaBody]);
    const dataset = element(Tags.PatientID, 'LO', 'P1', implicitLittle);
    const split = splitPart10(part10(meta, dataset));
    assert.equal(split.transferSyntaxUid, TransferSyntax.ImplicitVrLittleEndian);
    assert.equal(split.datasetOffset, 132 + meta.length);
    assert.deepEqual(split.metaElements, [
      { tag: 0x00020000, vr: 'UL', value: String(metaBody.length) },
      { tag: 0x00020001, vr: 'OB', value: undefined },
      { tag: 0x00020010, vr: 'UI', value: TransferSyntax.ImplicitVrLittleEndian },
    ]);
  });

  it('rejects a file without DICM or without a transfer syntax, and a meta length past the end', () => {
    const code = (action: () => unknown) => assert.throws(action, (error) => error instanceof DatasetParseError && error.code === 'ERR_PART10_MALFORMED');
    code(() => splitPart10(new Uint8Array(200)));
    code(() => splitPart10(part10(element(0x00020002, 'UI', '1.2\0', explicitLittle), new Uint8Array(0))));
    code(() => splitPart10(part10(element(0x00020010, 'UI', '1.2\0', explicitLittle).subarray(0, 10), new Uint8Array(0))));
  });
});

const corpusFiles = path.join(corpusDirectory, 'public');
const manifestPath = path.join(corpusDirectory, 'manifest.tsv');
const corpusManifestSkip = corpusSkip !== false ? corpusSkip : existsSync(manifestPath) ? false : `the DICOM corpus has no manifest at ${manifestPath}`;
const corpusAvailable = corpusManifestSkip === false;

describe('real corpus (read in place, never copied)', { skip: corpusManifestSkip }, () => {
  const manifest = corpusAvailable ? readFileSync(manifestPath, 'utf8').trim().split('\n') : [];
  const columns = manifest[0]?.split('\t') ?? [];
  const rows = manifest.slice(1).map((line) => Object.fromEntries(line.split('\t').map((cell, i) => [columns[i], cell])) as Record<string, string>);
  const files = corpusAvailable ? readdirSync(corpusFiles).filter((name) => name.endsWith('.dcm')) : [];

  it('lists every corpus file in the manifest', () => {
    assert.ok(files.length > 0);
    for (const file of files) assert.ok(rows.some((row) => row['file'] === file), file);
  });

  for (const file of files) {
    it(`reads ${file} in one piece and in random chunks`, () => {
      const bytes = new Uint8Array(readFileSync(path.join(corpusFiles, file)));
      const row = rows.find((candidate) => candidate['file'] === file);
      assert.ok(row, `${file} is not in the manifest`);
      const split = splitPart10(bytes);
      assert.equal(split.transferSyntaxUid, row['transferSyntaxUID']);
      const dataset = bytes.subarray(split.datasetOffset);
      const header = parseDataset(dataset, split.transferSyntaxUid);
      const valueOf = (tag: number) => header.elements.find((e) => e.tag === tag)?.value;
      assert.equal(valueOf(Tags.SOPInstanceUID), row['sopInstanceUID']);
      assert.equal(valueOf(Tags.SOPClassUID), row['sopClassUID']);
      for (const tag of [Tags.StudyInstanceUID, Tags.SeriesInstanceUID, Tags.SOPInstanceUID]) {
        const uid = valueOf(tag);
        assert.ok(uid !== undefined && isAcceptableUid(uid), `${file}: ${tag.toString(16)} = ${uid}`);
      }
      const hasPixels = !['SR', 'RTSTRUCT', 'RTPLAN'].includes(row['modality'] ?? '');
      if (hasPixels && file !== 'nibabel__csa_slice_norm.dcm') assert.equal(header.reachedPixelData, true);

      const random = seededRandom(file.length);
      const reader = new DatasetHeaderReader({ transferSyntaxUid: split.transferSyntaxUid });
      for (let at = 0; at < dataset.length && !reader.isComplete;) {
        const size = 1 + Math.floor(random() * 9000);
        reader.push(dataset.slice(at, at + size));
        at += size;
      }
      assert.deepEqual(reader.end(), header);
    });
  }
});
