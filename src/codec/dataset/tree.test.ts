import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TransferSyntax } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { parseDataset } from './reader.ts';
import { parseDatasetTree } from './tree.ts';
import { encodeDataset, type WritableElement } from './writer.ts';
import { Prng } from '../../sim/prng.ts';

const reference = (sopInstanceUid: string): WritableElement[] => [
  { tag: Tags.ReferencedSOPClassUID, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' },
  { tag: Tags.ReferencedSOPInstanceUID, vr: 'UI', value: sopInstanceUid },
];
const request: WritableElement[] = [
  { tag: Tags.TransactionUID, vr: 'UI', value: '1.2.3.4' },
  { tag: Tags.ReferencedSOPSequence, vr: 'SQ', value: undefined, items: [reference('1.2.3.5'), reference('1.2.3.6')] },
];

for (const syntax of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian]) {
  test(`a data set with a sequence reads back whole (${syntax})`, () => {
    const tree = parseDatasetTree(encodeDataset(request, syntax), syntax);
    assert.equal(tree.length, 2);
    assert.equal(tree[0]!.value, '1.2.3.4');
    assert.equal(tree[1]!.vr, 'SQ');
    assert.deepEqual(tree[1]!.items!.map((item) => item.map((e) => e.value)), [
      ['1.2.840.10008.5.1.4.1.1.2', '1.2.3.5'],
      ['1.2.840.10008.5.1.4.1.1.2', '1.2.3.6'],
    ]);
  });
}

test('sequences and items of undefined length are read to their delimiters', () => {
  const item = encodeDataset(reference('1.2.3.5'), TransferSyntax.ExplicitVrLittleEndian);
  const header = (group: number, element: number, length: number) => {
    const b = Buffer.alloc(8);
    b.writeUInt16LE(group, 0);
    b.writeUInt16LE(element, 2);
    b.writeUInt32LE(length, 4);
    return b;
  };
  const sequenceHeader = Buffer.from([0x08, 0x00, 0x99, 0x11, 0x53, 0x51, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  const bytes = Buffer.concat([sequenceHeader, header(0xfffe, 0xe000, 0xffffffff), item, header(0xfffe, 0xe00d, 0), header(0xfffe, 0xe0dd, 0)]);
  const tree = parseDatasetTree(bytes, TransferSyntax.ExplicitVrLittleEndian);
  assert.equal(tree[0]!.items![0]![1]!.value, '1.2.3.5');
  assert.throws(() => parseDatasetTree(bytes.subarray(0, bytes.length - 8), TransferSyntax.ExplicitVrLittleEndian), (e: unknown) => e instanceof DatasetParseError && e.code === 'ERR_DATASET_TRUNCATED');
});

test('a truncated, malformed or oversized data set is refused with a DatasetParseError', () => {
  const bytes = encodeDataset(request, TransferSyntax.ExplicitVrLittleEndian);
  const codeOf = (input: Uint8Array, limits = {}) => {
    try {
      parseDatasetTree(input, TransferSyntax.ExplicitVrLittleEndian, limits);
      return 'parsed';
    } catch (error) {
      assert.ok(error instanceof DatasetParseError, String(error));
      return error.code;
    }
  };
  // Cut anywhere but after the Transaction UID (a whole data set of one element), it is refused.
  const transactionUidBytes = 16;
  for (let cut = 1; cut < bytes.length; cut++) assert.equal(codeOf(bytes.subarray(0, cut)) === 'parsed', cut === transactionUidBytes, `cut at ${cut}`);
  const badVr = Buffer.from(bytes);
  badVr[4] = 0x01;
  assert.equal(codeOf(badVr), 'ERR_DATASET_MALFORMED');
  assert.equal(codeOf(bytes, { maxElements: 3 }), 'ERR_DATASET_TOO_MANY_ELEMENTS');
  assert.equal(codeOf(bytes, { maxDepth: 1 }), 'ERR_DATASET_TOO_DEEP');
  assert.equal(codeOf(bytes), 'parsed');
});

test('seeded fuzz: mutated and cut data sets either read or fail with a DatasetParseError, nothing else', () => {
  const seed = Number(process.env.FUZZ_SEED ?? 4245);
  const prng = new Prng(seed);
  for (const syntax of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian]) {
    const valid = encodeDataset(request, syntax);
    for (let round = 0; round < 3000; round++) {
      const mutated = Buffer.from(valid);
      const flips = 1 + prng.nextInt(6);
      for (let i = 0; i < flips; i++) mutated[prng.nextInt(mutated.length)] = prng.nextInt(256);
      const cut = prng.chance(0.3) ? prng.nextInt(mutated.length) : mutated.length;
      try {
        parseDatasetTree(mutated.subarray(0, cut), syntax);
      } catch (error) {
        assert.ok(error instanceof DatasetParseError, `FUZZ_SEED=${seed} round ${round}: ${String(error)}`);
      }
    }
  }
});

test('implicit VR: US or SS attributes follow the Pixel Representation of their data set (they were UN: hunt 196)', () => {
  // (0028,0106) Smallest Image Pixel Value, (0028,0120) Pixel Padding Value: US or SS.
  const padding = 0x00280120;
  const smallest = 0x00280106;
  for (const [representation, vr, values] of [[1, 'SS', ['-2000', '-1024']], [0, 'US', ['63536', '64512']]] as const) {
    const bytes = encodeDataset([
      { tag: Tags.PixelRepresentation, vr: 'US', value: String(representation) },
      { tag: smallest, vr, value: values[0] },
      { tag: padding, vr, value: values[1] },
    ], TransferSyntax.ImplicitVrLittleEndian);
    const tree = parseDatasetTree(bytes, TransferSyntax.ImplicitVrLittleEndian);
    assert.deepEqual(tree.slice(1).map((element) => [element.vr, element.value]), [[vr, values[0]], [vr, values[1]]]);
    const header = parseDataset(bytes, TransferSyntax.ImplicitVrLittleEndian, { wholeDataset: true });
    assert.deepEqual(header.elements.filter((element) => element.tag !== Tags.PixelRepresentation).map((element) => [element.vr, element.value]), [[vr, values[0]], [vr, values[1]]]);
  }
});
