import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { deflateRawSync } from 'node:zlib';
import { TransferSyntax } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { encapsulatedFrame, framesOnlyDataset, nativeFrame, readPixelData, readPixelDataHeader, type PixelData } from './pixel-data.ts';
import { concat, element, encapsulated, explicitBig, explicitLittle, imageHeader, implicitLittle, marker, uint16Value, undefinedLength, type Encoding } from './test-fixtures.ts';

const jpegLs = '1.2.840.10008.1.2.4.80';
const rle = '1.2.840.10008.1.2.5';

function asNative(pixel: PixelData): Extract<PixelData, { kind: 'native' }> {
  assert.equal(pixel.kind, 'native');
  return pixel as Extract<PixelData, { kind: 'native' }>;
}

function asEncapsulated(pixel: PixelData): Extract<PixelData, { kind: 'encapsulated' }> {
  assert.equal(pixel.kind, 'encapsulated');
  return pixel as Extract<PixelData, { kind: 'encapsulated' }>;
}

const bytes = (...values: number[]) => Uint8Array.from(values);

describe('readPixelData: native', () => {
  for (const [name, encoding, uid] of [
    ['implicit VR LE', implicitLittle, TransferSyntax.ImplicitVrLittleEndian],
    ['explicit VR LE', explicitLittle, TransferSyntax.ExplicitVrLittleEndian],
    ['explicit VR BE', explicitBig, TransferSyntax.ExplicitVrBigEndian],
  ] as const) {
    it(`finds the attributes and the value (${name}), and slices frames`, () => {
      const value = Uint8Array.from({ length: 18 }, (_, index) => index);
      const data = concat([imageHeader(encoding, { frames: '3' }), element(Tags.PixelData, 'OB', value, encoding), element(0xfffcfffc, 'OB', new Uint8Array(4), encoding)]);
      const pixel = asNative(readPixelData(data, uid));
      assert.deepEqual(pixel.image, { rows: 2, columns: 3, samplesPerPixel: 1, bitsAllocated: 8, numberOfFrames: 3, photometricInterpretation: '' });
      assert.deepEqual([...pixel.value], [...value]);
      assert.equal(pixel.littleEndian, encoding.littleEndian);
      assert.deepEqual([...nativeFrame(pixel, 2)], [6, 7, 8, 9, 10, 11]);
      assert.deepEqual([...nativeFrame(pixel, 3)], [12, 13, 14, 15, 16, 17]);
    });
  }

  it('a frame beyond Number of Frames is a RangeError; a value too short for its frames is ERR_DATASET_TRUNCATED', () => {
    const data = concat([imageHeader(explicitLittle, { frames: '4' }), element(Tags.PixelData, 'OB', new Uint8Array(18), explicitLittle)]);
    const pixel = asNative(readPixelData(data, TransferSyntax.ExplicitVrLittleEndian));
    assert.throws(() => nativeFrame(pixel, 5), RangeError);
    assert.throws(() => nativeFrame(pixel, 0), RangeError);
    assert.equal(nativeFrame(pixel, 3).length, 6);
    assert.throws(() => nativeFrame(pixel, 4), (error: unknown) => error instanceof DatasetParseError && error.code === 'ERR_DATASET_TRUNCATED');
  });

  it('Bits Allocated 1: a frame that starts inside a byte is copied to start at bit 0', () => {
    // 3x3 pixels: 9 bits per frame, so frame 2 starts at bit 1 of byte 1.
    const data = concat([imageHeader(explicitLittle, { rows: 3, columns: 3, bitsAllocated: 1, frames: '2' }), element(Tags.PixelData, 'OB', bytes(0b1010_1010, 0b0101_0101, 0b0000_0011, 0), explicitLittle)]);
    const pixel = asNative(readPixelData(data, TransferSyntax.ExplicitVrLittleEndian));
    // Bits from bit 0: 0,1,0,1,0,1,0,1, 1,0,1,0,1,0,1,0, 1,1,...
    assert.deepEqual([...nativeFrame(pixel, 1)], [0b1010_1010, 0b1]);
    // Frame 2 is bits 9..17: 0,1,0,1,0,1,0,1,1 -> 0b1010_1010, then 1.
    assert.deepEqual([...nativeFrame(pixel, 2)], [0b1010_1010, 0b1]);
  });

  it('Bits Allocated 1 with byte-aligned frames gives views', () => {
    const data = concat([imageHeader(explicitLittle, { rows: 2, columns: 4, bitsAllocated: 1, frames: '2' }), element(Tags.PixelData, 'OB', bytes(0x0f, 0xf0), explicitLittle)]);
    const pixel = asNative(readPixelData(data, TransferSyntax.ExplicitVrLittleEndian));
    assert.deepEqual([...nativeFrame(pixel, 2)], [0xf0]);
    assert.equal(nativeFrame(pixel, 2).buffer, data.buffer);
  });

  it('YBR_FULL_422 frames hold two samples a pixel (PS3.3 C.7.6.3.1.2)', () => {
    const ordered = concat([
      element(Tags.SOPInstanceUID, 'UI', '1.2.3.4\0', explicitLittle),
      element(Tags.SamplesPerPixel, 'US', uint16Value([3], true), explicitLittle),
      element(Tags.PhotometricInterpretation, 'CS', 'YBR_FULL_422', explicitLittle),
      element(Tags.NumberOfFrames, 'IS', '2 ', explicitLittle),
      element(Tags.Rows, 'US', uint16Value([2], true), explicitLittle),
      element(Tags.Columns, 'US', uint16Value([2], true), explicitLittle),
      element(Tags.BitsAllocated, 'US', uint16Value([8], true), explicitLittle),
      element(Tags.PixelData, 'OB', Uint8Array.from({ length: 16 }, (_, index) => index), explicitLittle),
    ]);
    const pixel = asNative(readPixelData(ordered, TransferSyntax.ExplicitVrLittleEndian));
    assert.deepEqual([...nativeFrame(pixel, 2)], [8, 9, 10, 11, 12, 13, 14, 15]);
  });

  it('no Pixel Data: absent; a deflated data set: the header is read, the pixels are refused', () => {
    assert.deepEqual(readPixelData(imageHeader(explicitLittle), TransferSyntax.ExplicitVrLittleEndian), { kind: 'absent' });
    const plain = concat([imageHeader(explicitLittle, { frames: '1' }), element(Tags.PixelData, 'OB', new Uint8Array(6), explicitLittle)]);
    const deflated = new Uint8Array(deflateRawSync(plain));
    const { header } = readPixelDataHeader(deflated, TransferSyntax.DeflatedExplicitVrLittleEndian);
    assert.deepEqual(header, { kind: 'present', image: { rows: 2, columns: 3, samplesPerPixel: 1, bitsAllocated: 8, numberOfFrames: 1, photometricInterpretation: '' } });
    assert.throws(() => readPixelData(deflated, TransferSyntax.DeflatedExplicitVrLittleEndian), DatasetParseError);
  });

  it('hostile values: a length past the end, odd Bits Allocated, Number of Frames 0 or garbage, missing Rows', () => {
    const parseCode = (data: Uint8Array) => {
      try {
        readPixelData(data, TransferSyntax.ExplicitVrLittleEndian);
        return 'parsed';
      } catch (error) {
        assert.ok(error instanceof DatasetParseError, String(error));
        return error.code;
      }
    };
    const longPixels = concat([imageHeader(explicitLittle), element(Tags.PixelData, 'OB', new Uint8Array(6), explicitLittle, 0x7ffffff0)]);
    assert.equal(parseCode(longPixels), 'ERR_DATASET_TRUNCATED');
    const pixels = element(Tags.PixelData, 'OB', new Uint8Array(6), explicitLittle);
    assert.equal(parseCode(concat([imageHeader(explicitLittle, { bitsAllocated: 12 }), pixels])), 'ERR_DATASET_MALFORMED');
    assert.equal(parseCode(concat([imageHeader(explicitLittle, { frames: '0' }), pixels])), 'ERR_DATASET_MALFORMED');
    assert.equal(parseCode(concat([imageHeader(explicitLittle, { frames: '1e9' }), pixels])), 'ERR_DATASET_MALFORMED');
    assert.equal(parseCode(concat([element(Tags.Columns, 'US', uint16Value([3], true), explicitLittle), element(Tags.BitsAllocated, 'US', uint16Value([8], true), explicitLittle), pixels])), 'ERR_DATASET_MALFORMED');
  });
});

describe('readPixelData: encapsulated', () => {
  const fragment = (...values: number[]) => Uint8Array.from(values);

  it('one fragment per frame (RLE), Basic Offset Table empty', () => {
    const data = concat([imageHeader(explicitLittle, { frames: '2' }), encapsulated([], [fragment(1, 2), fragment(3, 4, 5, 6)])]);
    const pixel = asEncapsulated(readPixelData(data, rle));
    assert.deepEqual(pixel.basicOffsetTable, []);
    assert.deepEqual([...encapsulatedFrame(pixel, 1)], [1, 2]);
    assert.deepEqual([...encapsulatedFrame(pixel, 2)], [3, 4, 5, 6]);
  });

  it('the Basic Offset Table groups fragments into frames (offsets from the first fragment\'s item tag)', () => {
    // Fragments of 2, 4 and 2 bytes: item tags at 0, 10, 22. Frame 1 = fragments 0-1, frame 2 = fragment 2.
    const data = concat([imageHeader(explicitLittle, { frames: '2' }), encapsulated([0, 22], [fragment(1, 2), fragment(3, 4, 5, 6), fragment(7, 8)])]);
    const pixel = asEncapsulated(readPixelData(data, rle));
    assert.deepEqual(pixel.frameFragments, [{ first: 0, count: 2 }, { first: 2, count: 1 }]);
    assert.deepEqual([...encapsulatedFrame(pixel, 1)], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual([...encapsulatedFrame(pixel, 2)], [7, 8]);
  });

  it('a single frame in several fragments is all of them', () => {
    const data = concat([imageHeader(explicitLittle), encapsulated([], [fragment(0xff, 0xd8), fragment(9, 9, 0xff, 0xd9)])]);
    assert.deepEqual([...encapsulatedFrame(asEncapsulated(readPixelData(data, jpegLs)), 1)], [0xff, 0xd8, 9, 9, 0xff, 0xd9]);
  });

  it('without a table, JPEG-family frames end at the fragment ending with EOI (FFD9, maybe padded)', () => {
    const fragments = [fragment(0xff, 0xd8, 1, 2), fragment(3, 0xff, 0xd9, 0), fragment(0xff, 0xd8), fragment(0xff, 0xd9)];
    const data = concat([imageHeader(explicitLittle, { frames: '2' }), encapsulated([], fragments)]);
    const pixel = asEncapsulated(readPixelData(data, jpegLs));
    assert.deepEqual(pixel.frameFragments, [{ first: 0, count: 2 }, { first: 2, count: 2 }]);
    // The same fragments under RLE (no markers to go by): frames cannot be told apart.
    const opaque = asEncapsulated(readPixelData(data, rle));
    assert.equal(opaque.frameFragments, undefined);
    assert.throws(() => encapsulatedFrame(opaque, 1), DatasetParseError);
  });

  it('a table that points between fragments is ignored in favour of the next rule', () => {
    const data = concat([imageHeader(explicitLittle, { frames: '2' }), encapsulated([0, 4], [fragment(1, 2), fragment(3, 4)])]);
    assert.deepEqual(asEncapsulated(readPixelData(data, rle)).frameFragments, [{ first: 0, count: 1 }, { first: 1, count: 1 }]);
  });

  it('more frames than fragments: frames unknown', () => {
    const data = concat([imageHeader(explicitLittle, { frames: '3' }), encapsulated([], [fragment(1, 2), fragment(3, 4)])]);
    assert.equal(asEncapsulated(readPixelData(data, rle)).frameFragments, undefined);
  });

  it('hostile fragments: past the end, undefined length, no delimiter, a stray element, too many', () => {
    const header = imageHeader(explicitLittle);
    const start = element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength);
    const table = marker(0xfffee000, 0, explicitLittle);
    const codeOf = (data: Uint8Array, maxFragmentCount?: number) => {
      try {
        readPixelData(data, rle, maxFragmentCount === undefined ? {} : { maxFragmentCount });
        return 'parsed';
      } catch (error) {
        assert.ok(error instanceof DatasetParseError, String(error));
        return error.code;
      }
    };
    assert.equal(codeOf(concat([header, start, table, marker(0xfffee000, 1000, explicitLittle), fragment(1, 2)])), 'ERR_DATASET_TRUNCATED');
    assert.equal(codeOf(concat([header, start, table, marker(0xfffee000, undefinedLength, explicitLittle), fragment(1, 2)])), 'ERR_DATASET_TRUNCATED');
    assert.equal(codeOf(concat([header, start, table, marker(0xfffee000, 2, explicitLittle), fragment(1, 2)])), 'ERR_DATASET_TRUNCATED');
    assert.equal(codeOf(concat([header, start, table, element(Tags.Rows, 'US', uint16Value([1], true), explicitLittle)])), 'ERR_DATASET_MALFORMED');
    assert.equal(codeOf(concat([header, start, marker(0xfffee000, 3, explicitLittle), fragment(0, 0, 0, 0)])), 'ERR_DATASET_MALFORMED');
    const three = concat([header, encapsulated([], [fragment(1, 2), fragment(3, 4), fragment(5, 6)])]);
    assert.equal(codeOf(three, 2), 'ERR_DATASET_TOO_MANY_ELEMENTS');
    assert.equal(codeOf(three, 3), 'parsed');
  });
});

describe('framesOnlyDataset', () => {
  it('keeps the Image Pixel attributes a decoder reads, sets Number of Frames, and holds one (even) fragment per frame', () => {
    const header = concat([
      element(Tags.SOPInstanceUID, 'UI', '1.2.3.4\0', explicitLittle),
      element(Tags.SamplesPerPixel, 'US', uint16Value([3], true), explicitLittle),
      element(Tags.PhotometricInterpretation, 'CS', 'YBR_FULL_422', explicitLittle),
      element(0x00280006, 'US', uint16Value([0], true), explicitLittle),
      element(Tags.NumberOfFrames, 'IS', '10', explicitLittle),
      element(Tags.Rows, 'US', uint16Value([2], true), explicitLittle),
      element(Tags.Columns, 'US', uint16Value([3], true), explicitLittle),
      element(Tags.BitsAllocated, 'US', uint16Value([8], true), explicitLittle),
      element(Tags.BitsStored, 'US', uint16Value([8], true), explicitLittle),
      element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
    ]);
    const { elements } = readPixelDataHeader(header, jpegLs);
    const data = framesOnlyDataset(elements, [bytes(0xff, 0xd8, 0xff, 0xd9), bytes(0xff, 0xd8, 1, 0xff, 0xd9)]);
    const reread = readPixelDataHeader(data, jpegLs);
    assert.deepEqual(reread.elements.map((e) => [e.tag, e.value]), [
      [Tags.SamplesPerPixel, '3'], [Tags.PhotometricInterpretation, 'YBR_FULL_422'], [0x00280006, '0'], [Tags.NumberOfFrames, '2'],
      [Tags.Rows, '2'], [Tags.Columns, '3'], [Tags.BitsAllocated, '8'], [Tags.BitsStored, '8'],
    ]);
    const pixel = asEncapsulated(readPixelData(data, jpegLs));
    assert.equal(pixel.image.numberOfFrames, 2);
    assert.deepEqual(pixel.fragments.map((f) => [...f]), [[0xff, 0xd8, 0xff, 0xd9], [0xff, 0xd8, 1, 0xff, 0xd9, 0]]);
    assert.deepEqual([...encapsulatedFrame(pixel, 2)], [0xff, 0xd8, 1, 0xff, 0xd9, 0]);
  });
});
