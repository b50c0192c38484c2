import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import vm from 'node:vm';
import v8 from 'node:v8';
import zlib from 'node:zlib';
import type { DicomElement } from '../dicom-types.ts';
import { TransferSyntax } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { DatasetHeaderReader, parseDataset, type DatasetHeader } from './reader.ts';
import { encodeDataset } from './writer.ts';
import { cpuStopwatch } from '../../../test/support/cpu-time.ts';
import {
  concat, element, explicitBig, explicitLittle, implicitLittle, item, marker, seededRandom, uint16Value,
  undefinedLength, undefinedLengthSequence, type Encoding,
} from './test-fixtures.ts';

const jpegBaseline = '1.2.840.10008.1.2.4.50';

const syntaxes = [
  { uid: TransferSyntax.ImplicitVrLittleEndian, encoding: implicitLittle },
  { uid: TransferSyntax.ExplicitVrLittleEndian, encoding: explicitLittle },
  { uid: TransferSyntax.ExplicitVrBigEndian, encoding: explicitBig },
  { uid: TransferSyntax.DeflatedExplicitVrLittleEndian, encoding: explicitLittle },
] as const;

/** A small instance: text and numeric attributes around nested undefined-length sequences, then pixels. */
function sampleDataset(encoding: Encoding): { bytes: Uint8Array; expected: DicomElement[] } {
  const e = (tag: number, vr: string, value: Uint8Array | string) => element(tag, vr, value, encoding);
  const nestedItem = concat([
    e(Tags.StudyDescription, 'LO', 'INNER '),
    undefinedLengthSequence(Tags.ReferencedSeriesSequence, [
      item(e(Tags.SeriesInstanceUID, 'UI', '9.9.9\0'), encoding, false),
      item(e(Tags.SeriesInstanceUID, 'UI', '9.9.8\0'), encoding, true),
    ], encoding),
  ]);
  const bytes = concat([
    e(Tags.SpecificCharacterSet, 'CS', 'ISO_IR 100'),
    e(Tags.ImageType, 'CS', 'ORIGINAL\\PRIMARY '),
    e(Tags.SOPClassUID, 'UI', '1.2.840.10008.5.1.4.1.1.7\0'),
    e(Tags.SOPInstanceUID, 'UI', '1.2.3.4.5\0'),
    undefinedLengthSequence(Tags.ReferencedStudySequence, [item(nestedItem, encoding, false), item(nestedItem, encoding, true)], encoding),
    e(Tags.PatientName, 'PN', 'Dupont^Ren\xe9 '),
    e(Tags.PatientID, 'LO', 'P1'),
    e(0x00291010, encoding.implicitVr ? 'UN' : 'OB', new Uint8Array(300)),
    e(Tags.StudyInstanceUID, 'UI', '1.2.3\0'),
    e(Tags.SeriesNumber, 'IS', '7 '),
    e(Tags.Rows, 'US', uint16Value([512], encoding.littleEndian)),
    e(Tags.Columns, 'US', uint16Value([256], encoding.littleEndian)),
    e(Tags.PixelData, 'OW', new Uint8Array(64)),
    e(0xfffcfffc, 'OB', new Uint8Array(10)),
  ]);
  const expected: DicomElement[] = [
    { tag: Tags.SpecificCharacterSet, vr: 'CS', value: 'ISO_IR 100' },
    { tag: Tags.ImageType, vr: 'CS', value: 'ORIGINAL\\PRIMARY' },
    { tag: Tags.SOPClassUID, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
    { tag: Tags.SOPInstanceUID, vr: 'UI', value: '1.2.3.4.5' },
    { tag: Tags.PatientName, vr: 'PN', value: 'Dupont^Ren\xe9' },
    { tag: Tags.PatientID, vr: 'LO', value: 'P1' },
    { tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.3' },
    { tag: Tags.SeriesNumber, vr: 'IS', value: '7' },
    { tag: Tags.Rows, vr: 'US', value: '512' },
    { tag: Tags.Columns, vr: 'US', value: '256' },
  ];
  return { bytes, expected };
}

function sampleFor(uid: string, encoding: Encoding): { bytes: Uint8Array; expected: DicomElement[] } {
  const sample = sampleDataset(encoding);
  if (uid !== TransferSyntax.DeflatedExplicitVrLittleEndian) return sample;
  return { bytes: new Uint8Array(zlib.deflateRawSync(sample.bytes)), expected: sample.expected };
}

function readInPieces(bytes: Uint8Array, uid: string, cuts: number[]): DatasetHeader {
  const reader = new DatasetHeaderReader({ transferSyntaxUid: uid });
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    // Copy each piece so the reader cannot rely on the pieces being views of one buffer.
    reader.push(bytes.slice(from, cut));
    from = cut;
  }
  return reader.end();
}

function expectParseError(code: string, action: () => unknown): DatasetParseError {
  let caught: unknown;
  try {
    action();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof DatasetParseError, `expected DatasetParseError ${code}, got ${String(caught)}`);
  assert.equal(caught.name, 'DatasetParseError');
  assert.equal(caught.code, code, caught.message);
  return caught;
}

/** A real gc() without --expose-gc on the command line, so memory checks measure live data only. */
function garbageCollector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

/**
 * process.memoryUsage() once garbage is gone: after a full GC, V8 frees ArrayBuffer backing stores on a
 * background thread, so one gc() can leave just-dead chunks counted (CI saw 4 MiB of them once). Collects
 * until arrayBuffers stops falling (at most ten rounds).
 */
async function settledMemoryUsage(gc: () => void): Promise<NodeJS.MemoryUsage> {
  let usage = process.memoryUsage();
  for (let round = 0; round < 10; round++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
    const next = process.memoryUsage();
    if (round > 0 && next.arrayBuffers >= usage.arrayBuffers) return next;
    usage = next;
  }
  return usage;
}

describe('DatasetHeaderReader: transfer syntaxes', () => {
  for (const { uid, encoding } of syntaxes) {
    it(`reads top-level attributes and skips sequences in ${uid}`, () => {
      const { bytes, expected } = sampleFor(uid, encoding);
      const header = parseDataset(bytes, uid);
      assert.deepEqual(header.elements, expected);
      assert.equal(header.reachedPixelData, true);
      assert.equal(header.specificCharacterSet, 'ISO_IR 100');
    });
  }

  it('reads an encapsulated syntax as explicit VR little endian and stops at the fragments', () => {
    const encapsulated = concat([
      element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
      marker(0xfffee000, 0, explicitLittle),
      marker(0xfffee000, 4, explicitLittle), Uint8Array.from([0xff, 0xd8, 0xff, 0xd9]),
      marker(0xfffee0dd, 0, explicitLittle),
    ]);
    const bytes = concat([element(Tags.SOPInstanceUID, 'UI', '1.2\0', explicitLittle), encapsulated]);
    const header = parseDataset(bytes, jpegBaseline);
    assert.deepEqual(header.elements, [{ tag: Tags.SOPInstanceUID, vr: 'UI', value: '1.2' }]);
    assert.equal(header.reachedPixelData, true);
    assert.equal(header.pixelDataOffset, 12);
  });

  it('reads every binary numeric VR in little and big endian', () => {
    for (const encoding of [explicitLittle, explicitBig]) {
      const view = (size: number, write: (v: DataView) => void) => {
        const bytes = new Uint8Array(size);
        write(new DataView(bytes.buffer));
        return bytes;
      };
      const le = encoding.littleEndian;
      const bytes = concat([
        element(0x00091001, 'SS', view(4, (v) => { v.setInt16(0, -2, le); v.setInt16(2, 3, le); }), encoding),
        element(0x00091002, 'UL', view(4, (v) => v.setUint32(0, 4000000000, le)), encoding),
        element(0x00091003, 'SL', view(4, (v) => v.setInt32(0, -5, le)), encoding),
        element(0x00091004, 'FL', view(4, (v) => v.setFloat32(0, 0.5, le)), encoding),
        element(0x00091005, 'FD', view(8, (v) => v.setFloat64(0, -1.25, le)), encoding),
        element(0x00091006, 'SV', view(8, (v) => v.setBigInt64(0, -(2n ** 62n), le)), encoding),
        element(0x00091007, 'UV', view(8, (v) => v.setBigUint64(0, 2n ** 64n - 1n, le)), encoding),
        element(0x00091008, 'AT', view(4, (v) => { v.setUint16(0, 0x0010, le); v.setUint16(2, 0x0020, le); }), encoding),
        element(0x00091009, 'US', Uint8Array.from([1, 2, 3]), encoding), // odd length: partial value ignored
      ]);
      const header = parseDataset(bytes, le ? TransferSyntax.ExplicitVrLittleEndian : TransferSyntax.ExplicitVrBigEndian);
      assert.deepEqual(header.elements.map((e) => e.value), [
        '-2\\3', '4000000000', '-5', '0.5', '-1.25', String(-(2n ** 62n)), String(2n ** 64n - 1n),
        String(Tags.PatientID), le ? '513' : '258',
      ]);
    }
  });

  it('keeps group lengths as UL in implicit VR, reads registry attributes with their VR (US or SS by Pixel Representation, unsigned without one) and skips unknown tags as UN', () => {
    const bytes = concat([
      element(0x00080000, 'UL', Uint8Array.from([4, 0, 0, 0]), implicitLittle),
      element(0x00091001, 'UN', 'private', implicitLittle),
      element(Tags.Modality, 'CS', 'CT', implicitLittle),
      element(0x00101040, 'LO', 'Main Street 1 ', implicitLittle), // PatientAddress: not in the small dictionary
      element(0x00280106, 'US', Uint8Array.from([1, 0]), implicitLittle), // US or SS: US without a Pixel Representation (PS3.5 A.1)
    ]);
    const header = parseDataset(bytes, TransferSyntax.ImplicitVrLittleEndian, { includeSkippedElements: true });
    assert.deepEqual(header.elements, [
      { tag: 0x00080000, vr: 'UL', value: '4' },
      { tag: 0x00091001, vr: 'UN', value: undefined },
      { tag: Tags.Modality, vr: 'CS', value: 'CT' },
      { tag: 0x00101040, vr: 'LO', value: 'Main Street 1' },
      { tag: 0x00280106, vr: 'US', value: '1' },
    ]);
    assert.equal(header.reachedPixelData, false);
  });

  it('reads a known attribute sent as UN with its dictionary VR', () => {
    const bytes = element(Tags.PatientID, 'UN', 'ABC ', explicitLittle);
    assert.deepEqual(parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian).elements,
      [{ tag: Tags.PatientID, vr: 'LO', value: 'ABC' }]);
  });

  it('reads wordValueTags (palette Lookup Table Data, OW) as 16-bit words in every syntax, big endian too (hunt 191)', () => {
    const redPaletteData = 0x00281201;
    for (const { uid, encoding } of syntaxes) {
      const plain = concat([element(Tags.PatientID, 'LO', 'P1', encoding), element(redPaletteData, 'OW', uint16Value([1, 2, 0x0100, 0xffff], encoding.littleEndian), encoding)]);
      const bytes = uid === TransferSyntax.DeflatedExplicitVrLittleEndian ? new Uint8Array(zlib.deflateRawSync(plain)) : plain;
      const read = parseDataset(bytes, uid, { wordValueTags: new Set([redPaletteData]) }).elements.find((e) => e.tag === redPaletteData);
      assert.deepEqual(read, { tag: redPaletteData, vr: 'US', value: '1\\2\\256\\65535' }, uid);
    }
  });

  it('tolerates odd-length text and a stray delimiter at top level', () => {
    const bytes = concat([
      element(Tags.PatientID, 'LO', 'ABC', explicitLittle),
      marker(0xfffee00d, 0, explicitLittle),
      element(Tags.PatientSex, 'CS', 'F', explicitLittle),
    ]);
    assert.deepEqual(parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian).elements.map((e) => e.value), ['ABC', 'F']);
  });

  it('skips values over maxValueBytes and lists skipped elements only when asked', () => {
    const bytes = concat([
      element(Tags.PatientComments, 'LT', 'x'.repeat(100), explicitLittle),
      element(0x00420011, 'OB', new Uint8Array(8), explicitLittle),
      element(Tags.PatientID, 'LO', 'ok', explicitLittle),
    ]);
    const plain = parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian, { maxValueBytes: 99 });
    assert.deepEqual(plain.elements, [{ tag: Tags.PatientID, vr: 'LO', value: 'ok' }]);
    const listed = parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian, { maxValueBytes: 99, includeSkippedElements: true });
    assert.deepEqual(listed.elements.map((e) => [e.vr, e.value]), [['LT', undefined], ['OB', undefined], ['LO', 'ok']]);
  });
});

describe('DatasetHeaderReader: chunk boundaries', () => {
  for (const { uid, encoding } of syntaxes) {
    const { bytes } = sampleFor(uid, encoding);
    const whole = parseDataset(bytes, uid);

    it(`gives the same result one byte at a time (${uid})`, () => {
      const reader = new DatasetHeaderReader({ transferSyntaxUid: uid });
      for (let at = 0; at < bytes.length; at++) reader.push(bytes.subarray(at, at + 1));
      assert.deepEqual(reader.end(), whole);
    });

    it(`gives the same result split in two at every offset (${uid})`, () => {
      for (let cut = 0; cut <= bytes.length; cut++) {
        assert.deepEqual(readInPieces(bytes, uid, [cut]), whole, `cut at ${cut}`);
      }
    });

    it(`gives the same result with seeded random splits (${uid})`, () => {
      const random = seededRandom(0xd1c0);
      for (let round = 0; round < 200; round++) {
        const cutCount = 1 + Math.floor(random() * 12);
        const cuts = Array.from({ length: cutCount }, () => Math.floor(random() * bytes.length)).sort((a, b) => a - b);
        assert.deepEqual(readInPieces(bytes, uid, cuts), whole, `round ${round} cuts ${cuts.join(',')}`);
      }
    });
  }
});

describe('DatasetHeaderReader: nested sequences', () => {
  for (const encoding of [implicitLittle, explicitLittle, explicitBig]) {
    const uid = encoding.implicitVr ? TransferSyntax.ImplicitVrLittleEndian
      : encoding.littleEndian ? TransferSyntax.ExplicitVrLittleEndian : TransferSyntax.ExplicitVrBigEndian;
    it(`walks sequences of undefined length nested 20 deep (${uid})`, () => {
      let inner = element(Tags.PatientID, 'LO', 'deep', encoding);
      for (let depth = 0; depth < 20; depth++) {
        inner = undefinedLengthSequence(Tags.ContentSequence, [
          item(inner, encoding, false),
          item(element(Tags.PatientID, 'LO', 'mid', encoding), encoding, true),
          item(new Uint8Array(0), encoding, false),
        ], encoding);
      }
      const bytes = concat([
        element(Tags.PatientName, 'PN', 'A^B ', encoding),
        inner,
        // A defined-length sequence holding an undefined-length item is skipped whole by its length.
        element(Tags.ReferencedSOPSequence, 'SQ', item(element(Tags.PatientID, 'LO', 'no', encoding), encoding, false), encoding),
        element(Tags.PatientID, 'LO', 'top ', encoding),
      ]);
      const header = parseDataset(bytes, uid);
      assert.deepEqual(header.elements.map((e) => e.value), ['A^B', 'top']);
      for (const step of [1, 3, 7]) {
        const cuts = Array.from({ length: Math.floor(bytes.length / step) }, (_, i) => (i + 1) * step);
        assert.deepEqual(readInPieces(bytes, uid, cuts), header);
      }
    });
  }

  it('walks an undefined-length UN in explicit VR as an implicit VR little endian sequence', () => {
    const implicitContent = item(concat([
      element(Tags.PatientID, 'LO', 'in', implicitLittle),
      undefinedLengthSequence(Tags.ContentSequence, [item(new Uint8Array(0), implicitLittle, false)], implicitLittle),
    ]), implicitLittle, false);
    const bytes = concat([
      undefinedLengthSequence(0x00291020, [implicitContent], explicitLittle, 'UN'),
      element(Tags.PatientID, 'LO', 'out ', explicitLittle),
    ]);
    assert.deepEqual(parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian).elements.map((e) => e.value), ['out']);
  });

  it('walks encapsulated pixel data inside an icon item without stopping', () => {
    const icon = concat([
      element(Tags.Rows, 'US', uint16Value([8], true), explicitLittle),
      element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
      marker(0xfffee000, 0, explicitLittle),
      marker(0xfffee000, 6, explicitLittle), Uint8Array.from([1, 2, 3, 4, 5, 6]),
      marker(0xfffee0dd, 0, explicitLittle),
    ]);
    const bytes = concat([
      undefinedLengthSequence(Tags.IconImageSequence, [item(icon, explicitLittle, false)], explicitLittle),
      element(0x00900010, 'LO', 'after', explicitLittle),
      element(Tags.PixelData, 'OB', new Uint8Array(2), explicitLittle),
    ]);
    const header = parseDataset(bytes, jpegBaseline);
    assert.deepEqual(header.elements.map((e) => e.value), ['after']);
    assert.equal(header.reachedPixelData, true);
  });

  it('rejects nesting deeper than maxNestingDepth', () => {
    let inner: Uint8Array = new Uint8Array(0);
    for (let depth = 0; depth < 10; depth++) inner = undefinedLengthSequence(Tags.ContentSequence, [item(inner, explicitLittle, false)], explicitLittle);
    expectParseError('ERR_DATASET_TOO_DEEP', () => parseDataset(inner, TransferSyntax.ExplicitVrLittleEndian, { maxNestingDepth: 9 }));
    assert.doesNotThrow(() => parseDataset(inner, TransferSyntax.ExplicitVrLittleEndian, { maxNestingDepth: 20 }));
  });
});

describe('DatasetHeaderReader: large values and bounded memory', () => {
  const megabyte = 1024 * 1024;

  it('skips a 50 MB value pushed in 1 MB chunks without keeping it, then stops at Pixel Data', async () => {
    const gc = garbageCollector();
    const privateBlobBytes = 50 * megabyte;
    const head = concat([
      element(Tags.SOPInstanceUID, 'UI', '1.2.3\0', explicitLittle),
      element(0x00291010, 'OB', new Uint8Array(0), explicitLittle, privateBlobBytes),
    ]);
    const afterBlob = element(Tags.PatientID, 'LO', 'after', explicitLittle);
    const tail = concat([
      afterBlob,
      element(Tags.PixelData, 'OW', new Uint8Array(0), explicitLittle, privateBlobBytes),
    ]);
    const reader = new DatasetHeaderReader({ transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
    reader.push(head);
    const before = await settledMemoryUsage(gc);
    const cpuMs = cpuStopwatch();
    // Fresh chunks each time: if the reader kept any, arrayBuffers would grow by tens of MB.
    for (let pushed = 0; pushed < privateBlobBytes; pushed += megabyte) reader.push(new Uint8Array(megabyte));
    reader.push(tail);
    for (let pushed = 0; pushed < privateBlobBytes; pushed += megabyte) reader.push(new Uint8Array(megabyte));
    const elapsedMs = cpuMs();
    const after = await settledMemoryUsage(gc);
    assert.ok(reader.isComplete);
    const header = reader.end();
    assert.deepEqual(header.elements.map((e) => e.value), ['1.2.3', 'after']);
    assert.equal(header.pixelDataOffset, head.length + privateBlobBytes + afterBlob.length);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 4 * megabyte, `arrayBuffers grew by ${after.arrayBuffers - before.arrayBuffers}`);
    assert.ok(after.heapUsed - before.heapUsed < 8 * megabyte, `heap grew by ${after.heapUsed - before.heapUsed}`);
    assert.ok(elapsedMs < 5000, `took ${elapsedMs} ms of CPU`);
  });

  it('skips without scanning: 100 chunks of 1 MB of the same skipped value cost microseconds each', () => {
    const reader = new DatasetHeaderReader({ transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
    reader.push(element(0x00291010, 'UN', new Uint8Array(0), implicitLittle, 100 * megabyte));
    const chunk = new Uint8Array(megabyte);
    // CPU, not wall time: at load 10 the process can wait longer than the bound for a core.
    const cpuMs = cpuStopwatch();
    for (let i = 0; i < 100; i++) reader.push(chunk);
    const elapsedMs = cpuMs();
    assert.deepEqual(reader.end().elements, []);
    assert.ok(elapsedMs < 50, `100 skipped chunks took ${elapsedMs} ms of CPU`);
  });

  it('inflates a deflated dataset with a 50 MB value in bounded memory', async () => {
    const gc = garbageCollector();
    const blobBytes = 50 * megabyte;
    const plain = concat([
      element(Tags.SOPInstanceUID, 'UI', '1.2.3\0', explicitLittle),
      element(0x00291010, 'OB', new Uint8Array(blobBytes), explicitLittle),
      element(Tags.PatientID, 'LO', 'after', explicitLittle),
    ]);
    const deflated = new Uint8Array(zlib.deflateRawSync(plain, { level: 1 }));
    const before = await settledMemoryUsage(gc);
    const reader = new DatasetHeaderReader({ transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian });
    for (let at = 0; at < deflated.length; at += 4096) reader.push(deflated.subarray(at, at + 4096));
    const after = await settledMemoryUsage(gc);
    assert.deepEqual(reader.end().elements.map((e) => e.value), ['1.2.3', 'after']);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 4 * megabyte, `arrayBuffers grew by ${after.arrayBuffers - before.arrayBuffers}`);
  });

  it('ignores chunks after Pixel Data, and stops inflating there', () => {
    const plain = concat([
      element(Tags.PatientID, 'LO', 'p1', explicitLittle),
      element(Tags.PixelData, 'OB', new Uint8Array(2 * megabyte), explicitLittle),
    ]);
    const deflated = new Uint8Array(zlib.deflateRawSync(plain));
    const reader = new DatasetHeaderReader({ transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian });
    reader.push(deflated.subarray(0, 100));
    assert.ok(reader.isComplete);
    reader.push(Uint8Array.from([1, 2, 3])); // garbage after completion is never looked at
    assert.deepEqual(reader.end().elements.map((e) => e.value), ['p1']);
  });
});

describe('DatasetHeaderReader: malformed input', () => {
  it('reports truncation inside a value, a header and a sequence', () => {
    const value = element(Tags.PatientID, 'LO', 'ABCDEF', explicitLittle);
    expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(value.subarray(0, 10), TransferSyntax.ExplicitVrLittleEndian));
    expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(value.subarray(0, 5), TransferSyntax.ExplicitVrLittleEndian));
    const sequence = undefinedLengthSequence(Tags.ContentSequence, [item(value, explicitLittle, false)], explicitLittle);
    expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(sequence.subarray(0, sequence.length - 8), TransferSyntax.ExplicitVrLittleEndian));
    const skipped = element(0x00291010, 'OB', new Uint8Array(0), explicitLittle, 0xfffffff0);
    const error = expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(skipped, TransferSyntax.ExplicitVrLittleEndian));
    assert.match(error.message, /00291010/);
  });

  for (const { uid, encoding } of syntaxes) {
    it(`either reads a prefix or reports truncation at every cut (${uid})`, () => {
      const { bytes } = sampleFor(uid, encoding);
      const whole = parseDataset(bytes, uid);
      for (let cut = 0; cut < bytes.length; cut++) {
        try {
          const header = parseDataset(bytes.subarray(0, cut), uid);
          assert.deepEqual(header.elements, whole.elements.slice(0, header.elements.length), `cut ${cut}`);
        } catch (error) {
          assert.ok(error instanceof DatasetParseError, String(error));
          assert.equal(error.code, 'ERR_DATASET_TRUNCATED', `cut ${cut}: ${error.message}`);
        }
      }
    });
  }

  it('rejects VR bytes that are not printable in explicit VR', () => {
    const bytes = concat([element(Tags.PatientName, 'PN', 'AB', explicitLittle), Uint8Array.from([0x10, 0, 0x20, 0, 0x01, 0x6f, 2, 0, 0x41, 0x42])]);
    const error = expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian));
    assert.match(error.message, /invalid VR bytes 0x01 0x6f/);
    // An implicit VR dataset announced as explicit is rejected, not misread.
    const implicit = element(Tags.PatientID, 'LO', 'AB', implicitLittle);
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(implicit, TransferSyntax.ExplicitVrLittleEndian));
  });

  it("reads a legacy writer's VR of two spaces (CTN 3.2) as DCMTK does: a 2-byte length, the value as the dictionary's VR, else UN", () => {
    const legacy = (tag: number, value: string) => {
      const bytes = new Uint8Array(8 + value.length);
      new DataView(bytes.buffer).setUint16(0, tag >>> 16, true);
      new DataView(bytes.buffer).setUint16(2, tag & 0xffff, true);
      bytes[4] = 0x20;
      bytes[5] = 0x20;
      new DataView(bytes.buffer).setUint16(6, value.length, true);
      bytes.set(Buffer.from(value, 'latin1'), 8);
      return bytes;
    };
    const bytes = concat([element(Tags.PatientName, 'PN', 'DOE^JOHN', explicitLittle), legacy(Tags.PatientID, 'ID42'), legacy(0x00291010, 'priv'), element(Tags.StudyInstanceUID, 'UI', '1.2.3', explicitLittle)]);
    const { elements } = parseDataset(bytes, TransferSyntax.ExplicitVrLittleEndian);
    // The private element, UN, is stepped over (no value kept); what follows it is read in place.
    assert.deepEqual(elements.map((e) => [e.tag, e.vr, e.value]), [
      [Tags.PatientName, 'PN', 'DOE^JOHN'],
      [Tags.PatientID, 'LO', 'ID42'],
      [Tags.StudyInstanceUID, 'UI', '1.2.3'],
    ]);
  });

  it('rejects a non-item tag inside a sequence and items outside one', () => {
    const bad = concat([element(Tags.ContentSequence, 'SQ', new Uint8Array(0), explicitLittle, undefinedLength), element(Tags.PatientID, 'LO', 'AB', explicitLittle)]);
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(bad, TransferSyntax.ExplicitVrLittleEndian));
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(marker(0xfffee000, 0, explicitLittle), TransferSyntax.ExplicitVrLittleEndian));
  });

  it('enforces maxHeaderBytes and maxElementCount', () => {
    const many = concat(Array.from({ length: 100 }, (_, i) => element(0x00091000 + i, 'LO', 'abcd', explicitLittle)));
    expectParseError('ERR_DATASET_TOO_LARGE_HEADER', () => parseDataset(many, TransferSyntax.ExplicitVrLittleEndian, { maxHeaderBytes: 1000 }));
    expectParseError('ERR_DATASET_TOO_MANY_ELEMENTS', () => parseDataset(many, TransferSyntax.ExplicitVrLittleEndian, { maxElementCount: 50 }));
    assert.equal(parseDataset(many, TransferSyntax.ExplicitVrLittleEndian, { maxHeaderBytes: 1200 }).elements.length, 100);
    // Nested element headers count too, so a flood of tiny items inside a sequence is bounded as well.
    const flood = undefinedLengthSequence(Tags.ContentSequence, Array.from({ length: 500 }, () => item(new Uint8Array(0), explicitLittle, false)), explicitLittle);
    expectParseError('ERR_DATASET_TOO_LARGE_HEADER', () => parseDataset(flood, TransferSyntax.ExplicitVrLittleEndian, { maxHeaderBytes: 4000 }));
  });

  it('fails fast, then stays failed', () => {
    const reader = new DatasetHeaderReader({ transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
    const error = expectParseError('ERR_DATASET_MALFORMED', () => reader.push(Uint8Array.from([8, 0, 0x20, 0, 0x01, 0x02, 0, 0, 0, 0, 0, 0])));
    reader.push(new Uint8Array(100));
    assert.throws(() => reader.end(), (thrown) => thrown === error);
  });

  it('rejects a corrupt deflate stream and a truncated one', () => {
    expectParseError('ERR_DATASET_INFLATE', () => parseDataset(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), TransferSyntax.DeflatedExplicitVrLittleEndian));
    const deflated = new Uint8Array(zlib.deflateRawSync(element(Tags.PatientID, 'LO', 'x'.repeat(1000), explicitLittle)));
    expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(deflated.subarray(0, deflated.length - 4), TransferSyntax.DeflatedExplicitVrLittleEndian));
    // A pad byte after the end of the deflate stream is allowed.
    assert.equal(parseDataset(concat([deflated, Uint8Array.of(0)]), TransferSyntax.DeflatedExplicitVrLittleEndian).elements.length, 1);
  });

  it('never hangs or throws anything but DatasetParseError on garbage and mutations', () => {
    const random = seededRandom(42);
    const samples = syntaxes.map(({ uid, encoding }) => ({ uid, bytes: sampleFor(uid, encoding).bytes }));
    for (let round = 0; round < 2000; round++) {
      const { uid, bytes } = samples[round % samples.length]!;
      let input: Uint8Array;
      if (round % 2 === 0) {
        input = Uint8Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256));
      } else {
        input = bytes.slice();
        for (let flips = 1 + Math.floor(random() * 4); flips > 0; flips--) input[Math.floor(random() * input.length)] = Math.floor(random() * 256);
      }
      try {
        parseDataset(input, uid, { maxHeaderBytes: 64 * 1024 });
      } catch (error) {
        assert.ok(error instanceof DatasetParseError, `round ${round}: ${String(error)}`);
      }
    }
  });
});

describe('DatasetHeaderReader: a whole dataset (C-STORE)', () => {
  const explicitUid = TransferSyntax.ExplicitVrLittleEndian;
  const whole = { wholeDataset: true } as const;
  const prefix = (encoding: Encoding) => concat([
    element(Tags.SOPClassUID, 'UI', '1.2.840.10008.5.1.4.1.1.7\0', encoding),
    element(Tags.SOPInstanceUID, 'UI', '1.2.3.4.5\0', encoding),
    element(Tags.PatientID, 'LO', 'P1', encoding),
  ]);
  const native = (encoding: Encoding) => concat([prefix(encoding), element(Tags.PixelData, 'OW', new Uint8Array(64), encoding), element(0xfffcfffc, 'OB', new Uint8Array(10), encoding)]);
  const fragments = (pieces: Uint8Array[], delimited = true) => concat([
    prefix(explicitLittle),
    element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
    marker(0xfffee000, 0, explicitLittle),
    ...pieces.map((piece) => concat([marker(0xfffee000, piece.length, explicitLittle), piece])),
    ...(delimited ? [marker(0xfffee0dd, 0, explicitLittle)] : []),
  ]);
  const jpeg = fragments([Uint8Array.from([0xff, 0xd8, 0xff, 0xd9]), new Uint8Array(6)]);

  for (const { uid, encoding } of syntaxes) {
    it(`reads to the end, keeps only the header and accepts what follows Pixel Data (${uid})`, () => {
      const plain = native(encoding);
      const bytes = uid === TransferSyntax.DeflatedExplicitVrLittleEndian ? new Uint8Array(zlib.deflateRawSync(plain)) : plain;
      const header = parseDataset(bytes, uid, whole);
      assert.deepEqual(header.elements.map((e) => e.value), ['1.2.840.10008.5.1.4.1.1.7', '1.2.3.4.5', 'P1']);
      assert.equal(header.reachedPixelData, true);
    });

    it(`reports truncation at every cut after the header, where the default reader stops at Pixel Data (${uid})`, () => {
      const plain = native(encoding);
      const pixelDataAt = prefix(encoding).length;
      const pixelDataEnd = pixelDataAt + (encoding.implicitVr ? 8 : 12) + 64;
      for (let cut = pixelDataAt + 1; cut < plain.length; cut++) {
        if (cut === pixelDataEnd) continue; // a whole dataset that ends with Pixel Data
        const bytes = uid === TransferSyntax.DeflatedExplicitVrLittleEndian ? new Uint8Array(zlib.deflateRawSync(plain.subarray(0, cut))) : plain.subarray(0, cut);
        expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(bytes, uid, whole));
        if (cut >= pixelDataAt + (encoding.implicitVr ? 8 : 12)) assert.equal(parseDataset(bytes, uid).reachedPixelData, true, `cut ${cut}`);
      }
    });
  }

  it('refuses a stray Sequence Delimitation Item at top level, which DCMTK cannot read back; drops a stray Item Delimitation Item', () => {
    const withStray = (tag: number) => concat([prefix(explicitLittle), marker(tag, 0, explicitLittle), element(Tags.PatientSex, 'CS', 'F ', explicitLittle)]);
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(withStray(0xfffee0dd), explicitUid, whole));
    assert.deepEqual(parseDataset(withStray(0xfffee00d), explicitUid, whole).elements.map((e) => e.value), ['1.2.840.10008.5.1.4.1.1.7', '1.2.3.4.5', 'P1', 'F']);
    // Read back (not whole), an instance an earlier build stored with one is still read.
    assert.equal(parseDataset(withStray(0xfffee0dd), explicitUid).elements.length, 4);
  });

  it('reads an icon whose Pixel Data is encapsulated too, with an offset table and fragments that look like elements', () => {
    const iconPixels = concat([
      element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
      marker(0xfffee000, 4, explicitLittle), Uint8Array.from([0, 0, 0, 0]),
      // Fragment bytes that would read as an item tag and a header if walked as elements.
      marker(0xfffee000, 8, explicitLittle), Uint8Array.from([0xfe, 0xff, 0x00, 0xe0, 0x40, 0x00, 0x00, 0x00]),
      marker(0xfffee0dd, 0, explicitLittle),
    ]);
    const icon = concat([element(Tags.Rows, 'US', uint16Value([8], true), explicitLittle), iconPixels]);
    for (const definedItem of [false, true]) {
      const bytes = concat([
        prefix(explicitLittle),
        undefinedLengthSequence(Tags.IconImageSequence, [item(icon, explicitLittle, definedItem)], explicitLittle),
        element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
        marker(0xfffee000, 0, explicitLittle),
        marker(0xfffee000, 4, explicitLittle), Uint8Array.from([0xff, 0xd8, 0xff, 0xd9]),
        marker(0xfffee0dd, 0, explicitLittle),
      ]);
      const header = parseDataset(bytes, jpegBaseline, whole);
      assert.equal(header.reachedPixelData, true, `defined-length item ${definedItem}`);
      assert.deepEqual(header.elements.map((e) => e.value), ['1.2.840.10008.5.1.4.1.1.7', '1.2.3.4.5', 'P1']);
    }
  });

  it('reads encapsulated Pixel Data fragment by fragment, in any split', () => {
    assert.equal(parseDataset(jpeg, jpegBaseline, whole).reachedPixelData, true);
    for (let cut = 1; cut < jpeg.length; cut++) {
      const reader = new DatasetHeaderReader({ transferSyntaxUid: jpegBaseline, wholeDataset: true });
      reader.push(jpeg.slice(0, cut));
      assert.equal(reader.isComplete, false);
      reader.push(jpeg.slice(cut));
      assert.equal(reader.end().elements.length, 3, `cut ${cut}`);
    }
  });

  it('rejects encapsulated Pixel Data without its delimiter, with an odd or undefined fragment length, or holding an element', () => {
    const undelimited = expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(fragments([new Uint8Array(4)], false), jpegBaseline, whole));
    assert.match(undelimited.message, /encapsulated Pixel Data/);
    const odd = expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(fragments([new Uint8Array(5)]), jpegBaseline, whole));
    assert.match(odd.message, /odd length 5/);
    const open = concat([prefix(explicitLittle), element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength), marker(0xfffee000, undefinedLength, explicitLittle)]);
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(open, jpegBaseline, whole));
    const stray = concat([prefix(explicitLittle), element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength), element(Tags.PatientName, 'PN', 'AB', explicitLittle)]);
    expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(stray, jpegBaseline, whole));
  });

  it('rejects encapsulated Pixel Data in a native syntax (odil 0.12 sends JPEG files so on an explicit VR LE context)', () => {
    // The same bytes are a valid JPEG Baseline data set; labelled explicit VR LE (or any native syntax) they
    // cannot be retrieved as what they claim to be, so a C-STORE must not answer Success (PS3.5 A.4).
    assert.equal(parseDataset(jpeg, jpegBaseline, whole).reachedPixelData, true);
    const implicitJpeg = concat([
      prefix(implicitLittle),
      element(Tags.PixelData, 'OB', new Uint8Array(0), implicitLittle, undefinedLength),
      marker(0xfffee000, 0, implicitLittle),
      marker(0xfffee000, 4, implicitLittle), Uint8Array.from([0xff, 0xd8, 0xff, 0xd9]),
      marker(0xfffee0dd, 0, implicitLittle),
    ]);
    for (const uid of [explicitUid, TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.DeflatedExplicitVrLittleEndian]) {
      const plain = uid === TransferSyntax.ImplicitVrLittleEndian ? implicitJpeg : jpeg;
      const bytes = uid === TransferSyntax.DeflatedExplicitVrLittleEndian ? new Uint8Array(zlib.deflateRawSync(plain)) : plain;
      const error = expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(bytes, uid, whole));
      assert.match(error.message, /encapsulated \(undefined-length\) Pixel Data in a native transfer syntax/, uid);
      // The header reader (C-FIND, indexing) still stops at Pixel Data without judging it.
      assert.equal(parseDataset(bytes, uid).reachedPixelData, true, uid);
    }
  });

  it('rejects native (defined-length) Pixel Data in an encapsulated syntax', () => {
    // Labelled JPEG Lossless, the defined-length pixels could be kept but never decoded for a requestor
    // that takes uncompressed data: "pixel data of a 1.2.840.10008.1.2.4.70 dataset is not encapsulated".
    const error = expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(native(explicitLittle), '1.2.840.10008.1.2.4.70', whole));
    assert.match(error.message, /native \(defined-length\) Pixel Data in an encapsulated transfer syntax/);
    assert.equal(parseDataset(native(explicitLittle), '1.2.840.10008.1.2.4.70').reachedPixelData, true);
  });

  it('rejects bytes trailing the last element: too few for a header, or a header whose value is missing', () => {
    for (let extra = 1; extra <= 20; extra++) {
      const garbage = concat([native(explicitLittle), new Uint8Array(extra).fill(0xff)]);
      // Fewer than 8 bytes cannot hold a header; 8 or more hold one with an invalid VR.
      expectParseError(extra < 8 ? 'ERR_DATASET_TRUNCATED' : 'ERR_DATASET_MALFORMED', () => parseDataset(garbage, explicitUid, whole));
      const missingValue = concat([native(explicitLittle), element(0xfffcfffd, 'OB', new Uint8Array(extra), explicitLittle, extra + 2)]);
      expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(missingValue, explicitUid, whole));
    }
  });

  it('walks defined-length sequences and items: any split reads, and a length that lies is malformed (the default reader skips them)', () => {
    const referenced = 0x00400275; // Request Attributes Sequence (after the prefix's PatientID)
    for (const encoding of [explicitLittle, implicitLittle]) {
      const uid = encoding.implicitVr ? TransferSyntax.ImplicitVrLittleEndian : explicitUid;
      const inner = concat([element(Tags.PatientID, 'LO', 'P1', encoding), element(Tags.SeriesInstanceUID, 'UI', '1.2.3.4\0', encoding)]);
      const nested = element(0x00081140, 'SQ', item(inner, encoding, true), encoding);
      const items = concat([item(nested, encoding, true), item(inner, encoding, false), item(new Uint8Array(0), encoding, true)]);
      const good = concat([prefix(encoding), element(referenced, 'SQ', items, encoding), element(Tags.PixelData, 'OW', new Uint8Array(8), encoding)]);
      assert.equal(parseDataset(good, uid, whole).elements.length, 3);
      for (let cut = 1; cut < good.length; cut += 3) {
        const reader = new DatasetHeaderReader({ transferSyntaxUid: uid, wholeDataset: true });
        reader.push(good.slice(0, cut));
        reader.push(good.slice(cut));
        assert.equal(reader.end().elements.length, 3, `cut ${cut}`);
      }
      const cases = [
        // An item longer than its sequence.
        { bytes: element(referenced, 'SQ', concat([marker(0xfffee000, inner.length, encoding), inner.subarray(0, inner.length - 4)]), encoding), message: /item runs 4 bytes past the end of its defined-length sequence/ },
        // An element cut off at its item's end (the item says 6 bytes fewer than its elements take).
        { bytes: element(referenced, 'SQ', concat([marker(0xfffee000, inner.length - 6, encoding), inner.subarray(0, inner.length - 6)]), encoding), message: /past the end of its defined-length item/ },
        // A sequence holding an element where an item belongs.
        { bytes: element(referenced, 'SQ', inner, encoding), message: /expected an item/ },
        // A delimiter inside a defined-length item.
        { bytes: element(referenced, 'SQ', item(concat([inner, marker(0xfffee00d, 0, encoding)]), encoding, true), encoding), message: /unexpected \(FFFEE00D\) inside an item/ },
      ];
      for (const { bytes, message } of cases) {
        const dataSet = concat([prefix(encoding), bytes]);
        assert.match(expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(dataSet, uid, whole)).message, message);
        assert.equal(parseDataset(dataSet, uid).elements.length, 3, 'the default reader skips it by length');
      }
    }
  });

  it('takes 64 nested sequences of defined length, as the transcoder does; deeper is a bound (ERR_DATASET_TOO_DEEP), not malformed', () => {
    const nested = (depth: number): Uint8Array => {
      let content = element(Tags.PatientID, 'LO', 'P1', explicitLittle);
      for (let level = 0; level < depth; level++) content = element(0x00400275, 'SQ', item(content, explicitLittle, true), explicitLittle);
      return concat([prefix(explicitLittle), content]);
    };
    assert.equal(parseDataset(nested(64), explicitUid, whole).elements.length, 3);
    expectParseError('ERR_DATASET_TOO_DEEP', () => parseDataset(nested(65), explicitUid, whole));
  });

  it('rejects top-level elements out of order, repeated, or from the File Meta Information; the default reader reads them', () => {
    const e = (tag: number, value: string) => element(tag, 'LO', value, explicitLittle);
    const cases = [
      { bytes: concat([e(Tags.PatientID, 'P1'), e(Tags.PatientName, 'Z^Z')]), message: /out of ascending order/ },
      { bytes: concat([e(Tags.PatientName, 'A^A'), e(Tags.PatientName, 'Z^Z')]), message: /appears twice/ },
      { bytes: concat([element(0x00020010, 'UI', '1.2.840.10008.1.2.1\0', explicitLittle), e(Tags.PatientID, 'P1')]), message: /File Meta Information/ },
    ];
    for (const { bytes, message } of cases) {
      assert.match(expectParseError('ERR_DATASET_MALFORMED', () => parseDataset(bytes, explicitUid, whole)).message, message);
      assert.ok(parseDataset(bytes, explicitUid).elements.length > 0);
    }
  });

  it('rejects a deflate stream cut short or damaged after the header', () => {
    const plain = concat([prefix(explicitLittle), element(Tags.PixelData, 'OB', Uint8Array.from({ length: 20000 }, (_, i) => (i * 7919) % 251), explicitLittle)]);
    const deflated = new Uint8Array(zlib.deflateRawSync(plain));
    expectParseError('ERR_DATASET_TRUNCATED', () => parseDataset(deflated.subarray(0, Math.floor(deflated.length * 0.75)), TransferSyntax.DeflatedExplicitVrLittleEndian, whole));
    const damaged = deflated.slice();
    for (let at = Math.floor(damaged.length / 2); at < Math.floor(damaged.length / 2) + 40; at++) damaged[at] = 0xaa;
    assert.throws(() => parseDataset(damaged, TransferSyntax.DeflatedExplicitVrLittleEndian, whole), DatasetParseError);
  });
});
