/**
 * The comparer must catch real differences, or the interop suite would prove nothing.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeInstance, TransferSyntax, uidFromSeed } from '../support/synthetic-dicom.ts';
import { compareInstances, copyDifferences, datasetText, flattenFile, readPart10 } from './compare.ts';

const base = {
  rows: 8,
  columns: 8,
  sopInstanceUid: uidFromSeed('compare-test/1'),
  study: { uid: uidFromSeed('compare-test/study') },
  series: { uid: uidFromSeed('compare-test/series') },
  privateElements: true,
} as const;

/** Replaces the data set of a Part 10 file (meta kept). */
function withDataset(file: Uint8Array, dataset: Uint8Array): Uint8Array {
  const { dataset: old } = readPart10(file);
  const head = file.subarray(0, file.length - old.length);
  return Buffer.concat([head, dataset]);
}

describe('compareInstances', () => {
  for (const ts of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian, TransferSyntax.DeflatedExplicitVrLittleEndian]) {
    it(`${ts}: identical files are byte-identical; one changed pixel byte is a difference`, () => {
      const a = makeInstance({ ...base, transferSyntaxUid: ts });
      assert.equal(compareInstances(a, a).identity, 'byte-identical');
      const { flat } = flattenFile(a);
      assert.equal(datasetText(flat, 0x00080018), base.sopInstanceUid);
      assert.ok(flat.has('(0009,1001)'), 'private element walked');
      if (ts === TransferSyntax.DeflatedExplicitVrLittleEndian) return;
      const b = Uint8Array.from(a);
      b[b.length - 3] = b[b.length - 3]! ^ 0xff;
      const cmp = compareInstances(a, b);
      assert.equal(cmp.identity, 'different');
      assert.match(cmp.differences.join(), /\(7FE0,0010\) value differs/);
    });
  }

  it('tolerates a group length and trailing padding, not a missing element', () => {
    const a = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
    const { dataset } = readPart10(a);
    // (0008,0000) UL 4 bytes at the start, and (FFFC,FFFC) OB of 4 zero bytes at the end.
    const groupLength = Buffer.from([0x08, 0x00, 0x00, 0x00, 0x55, 0x4c, 0x04, 0x00, 0x10, 0x00, 0x00, 0x00]);
    const padding = Buffer.from([0xfc, 0xff, 0xfc, 0xff, 0x4f, 0x42, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0, 0, 0, 0]);
    const b = withDataset(a, Buffer.concat([groupLength, dataset, padding]));
    const cmp = compareInstances(a, b);
    assert.equal(cmp.identity, 'element-identical', cmp.differences.join('; '));
    assert.equal(cmp.tolerated.length, 2);

    const c = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, privateElements: false });
    const missing = compareInstances(a, c);
    assert.equal(missing.identity, 'different');
    assert.match(missing.differences.join(), /\(0009,1001\) missing/);
  });

  it('compares implicit with explicit VR little endian by value, and refuses other syntax changes', () => {
    const implicit = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
    const explicit = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
    const cmp = compareInstances(implicit, explicit);
    assert.equal(cmp.identity, 'element-identical', cmp.differences.join('; '));
    assert.equal(cmp.transcodedTo, TransferSyntax.ExplicitVrLittleEndian);
    const bigEndian = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian });
    assert.equal(compareInstances(explicit, bigEndian).identity, 'different');
  });
});

describe('copyDifferences', () => {
  it('a big endian original converted into little endian: the same, pixel values included; one changed pixel byte is a difference', () => {
    const bigEndian = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian });
    for (const ts of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian]) {
      const converted = makeInstance({ ...base, transferSyntaxUid: ts });
      assert.deepEqual(copyDifferences(bigEndian, converted), [], ts);
      const changed = Uint8Array.from(converted);
      changed[changed.length - 3] = changed[changed.length - 3]! ^ 0xff;
      assert.match(copyDifferences(bigEndian, changed).join(), /\(7FE0,0010\) value differs/, ts);
    }
  });

  it('a little endian original converted into big endian (a C-GET requestor proposing it first): the same, its binary values swapped back; one changed pixel byte is a difference', () => {
    const bigEndian = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian });
    for (const ts of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian]) {
      assert.deepEqual(copyDifferences(makeInstance({ ...base, transferSyntaxUid: ts }), bigEndian), [], ts);
      const changed = Uint8Array.from(bigEndian);
      changed[changed.length - 3] = changed[changed.length - 3]! ^ 0xff;
      assert.match(copyDifferences(makeInstance({ ...base, transferSyntaxUid: ts }), changed).join(), /\(7FE0,0010\) value differs/, ts);
    }
  });

  it('an original converted into deflated explicit VR LE, or a deflated one converted: the same, pixel values included; other pixel values are a difference', () => {
    const deflated = makeInstance({ ...base, transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian });
    for (const ts of [TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian]) {
      const other = makeInstance({ ...base, transferSyntaxUid: ts });
      assert.deepEqual(copyDifferences(other, deflated), [], `${ts} -> deflated`);
      assert.deepEqual(copyDifferences(deflated, other), [], `deflated -> ${ts}`);
      assert.match(copyDifferences(other, makeInstance({ ...base, transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian, pixelSeed: 99 })).join(), /\(7FE0,0010\) value differs/, ts);
    }
  });

  it('an empty sequence goes into implicit VR as an empty value (nothing tells them apart there): the same; a value where the sequence was is a difference', () => {
    const withSequence = (transferSyntaxUid: typeof TransferSyntax.ExplicitVrLittleEndian | typeof TransferSyntax.ImplicitVrLittleEndian, value: Uint8Array) =>
      makeInstance({ ...base, transferSyntaxUid, extraElements: [{ tag: 0x00081111, vr: 'SQ', value }] });
    const explicit = withSequence(TransferSyntax.ExplicitVrLittleEndian, new Uint8Array(0));
    assert.equal(flattenFile(explicit).flat.get('(0008,1111)')?.kind, 'sequence');
    assert.deepEqual(copyDifferences(explicit, withSequence(TransferSyntax.ImplicitVrLittleEndian, new Uint8Array(0))), []);
    assert.match(copyDifferences(explicit, withSequence(TransferSyntax.ImplicitVrLittleEndian, Uint8Array.from([1, 2]))).join(), /\(0008,1111\) sequence -> value/);
  });
});
