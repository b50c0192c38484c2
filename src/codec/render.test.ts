import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { inflateSync } from 'node:zlib';
import { Tags } from './dictionary.ts';
import { encodePng } from './png.ts';
import { RenderError, fittedSize, paletteDataTags, renderAttributesOf, renderFrame, type RenderAttributes } from './render.ts';
import { parseDataset } from './dataset/reader.ts';
import { encodeDataset } from './dataset/writer.ts';
import type { ImagePixelAttributes } from './dataset/pixel-data.ts';

const grey16: ImagePixelAttributes = { rows: 2, columns: 2, samplesPerPixel: 1, bitsAllocated: 16, numberOfFrames: 1, photometricInterpretation: 'MONOCHROME2' };
const plain: RenderAttributes = { bitsStored: 16, pixelRepresentation: 0, planarConfiguration: 0, rescaleSlope: 1, rescaleIntercept: 0, window: undefined };
const words = (...values: number[]) => {
  const bytes = Buffer.alloc(values.length * 2);
  values.forEach((value, index) => bytes.writeUInt16LE(value & 0xffff, index * 2));
  return bytes;
};

describe('renderFrame', () => {
  it('a CT window on rescaled signed values (PS3.3 C.11.2.1.2.1 LINEAR): below, at the centre, above', () => {
    const attributes = renderAttributesOf(
      [
        { tag: Tags.BitsStored, vr: 'US', value: '12' },
        { tag: Tags.PixelRepresentation, vr: 'US', value: '1' },
        { tag: Tags.RescaleIntercept, vr: 'DS', value: '-1024' },
        { tag: Tags.RescaleSlope, vr: 'DS', value: '1' },
        { tag: Tags.WindowCenter, vr: 'DS', value: '40\\400' },
        { tag: Tags.WindowWidth, vr: 'DS', value: '400\\2000' },
      ],
      grey16,
    );
    assert.deepEqual(attributes.window, { center: 40, width: 400, function: 'LINEAR' });
    // Stored 12-bit signed: 0x800 is -2048 (below), 1064 is 40 HU (the centre), 2047 is 1023 HU (above).
    const image = renderFrame(words(0x800, 1064, 2047, 0xf000 | 1064), grey16, attributes);
    assert.deepEqual([...image.pixels], [0, 128, 255, 128]);
    const asked = renderFrame(words(1064, 1064, 1064, 1064), grey16, attributes, { window: { center: 1040, width: 2000, function: 'LINEAR_EXACT' } });
    assert.equal(asked.pixels[0], 0);
  });

  it("without a window: the frame's own range; MONOCHROME1 inverted; 8-bit", () => {
    const image = renderFrame(Uint8Array.from([10, 20, 30, 40]), { ...grey16, bitsAllocated: 8, photometricInterpretation: 'MONOCHROME1' }, { ...plain, bitsStored: 8 });
    assert.deepEqual([...image.pixels], [255, 170, 85, 0]);
  });

  it('RGB by pixel or by plane, and YBR_FULL converted to RGB', () => {
    const rgb = { ...grey16, rows: 1, samplesPerPixel: 3, bitsAllocated: 8, photometricInterpretation: 'RGB' };
    assert.deepEqual([...renderFrame(Uint8Array.from([1, 2, 3, 4, 5, 6]), rgb, plain).pixels], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual([...renderFrame(Uint8Array.from([1, 4, 2, 5, 3, 6]), rgb, { ...plain, planarConfiguration: 1 }).pixels], [1, 2, 3, 4, 5, 6]);
    const ybr = renderFrame(Uint8Array.from([128, 128, 128, 255, 128, 128]), { ...rgb, photometricInterpretation: 'YBR_FULL' }, plain);
    assert.deepEqual([...ybr.pixels], [128, 128, 128, 255, 255, 255]);
  });

  it('fits the asked size keeping the aspect ratio (at most twice the image)', () => {
    assert.deepEqual(fittedSize(512, 256, 128), { columns: 128, rows: 64 });
    assert.deepEqual(fittedSize(512, 256, 128, 32), { columns: 64, rows: 32 });
    assert.deepEqual(fittedSize(100, 100, 1000, 1000), { columns: 200, rows: 200 });
    assert.deepEqual(fittedSize(100, 20000, 8192), { columns: 41, rows: 8192 }, 'one bound asked: the other side stays within renderedSideMax');
    // Enlarged up to 4 megapixels only (hunt 79: a 4096 x 4096 image at 8192 x 8192 held 64 MB a request).
    assert.deepEqual(fittedSize(4096, 4096, 8192, 8192), { columns: 4096, rows: 4096 }, 'a large image is not enlarged');
    assert.deepEqual(fittedSize(1500, 1000, 8192, 8192), { columns: 2508, rows: 1672 }, 'a middling one up to 4 megapixels');
    const image = renderFrame(Uint8Array.from([0, 255, 0, 255]), { ...grey16, bitsAllocated: 8 }, { ...plain, bitsStored: 8 }, { maxColumns: 1 });
    assert.deepEqual([image.columns, image.rows, image.pixels.length], [1, 1, 1]);
  });

  it('PALETTE COLOR through its tables (16-bit entries, and 8-bit ones packed two a word), read as words by the header reader', () => {
    const palette8 = { ...grey16, bitsAllocated: 8, photometricInterpretation: 'PALETTE COLOR' };
    const words = (values: number[]) => Buffer.from(Uint16Array.from(values).buffer);
    for (const [bits, red, green, blue] of [
      [16, words([0x0000, 0xff00, 0x8000]), words([0x1000, 0x2000, 0x3000]), words([0xffff, 0, 0x7fff])],
      // Packed: entries 0 and 1 in the first word's low and high bytes, entry 2 in the next word's low byte.
      [8, Buffer.from([0x00, 0xff, 0x80, 0x00]), Buffer.from([0x10, 0x20, 0x30, 0x00]), Buffer.from([0xff, 0x00, 0x7f, 0x00])],
    ] as const) {
      // A header as stored: descriptors (3 entries from stored value 10) and the tables, OW, after them.
      const header = Buffer.concat([
        encodeDataset([0x00281101, 0x00281102, 0x00281103].map((tag) => ({ tag, vr: 'US' as const, value: `3\\10\\${bits}` })), '1.2.840.10008.1.2.1'),
        ...[[0x1201, red], [0x1202, green], [0x1203, blue]].map(([element, data]) => {
          const head = Buffer.alloc(12);
          head.writeUInt16LE(0x0028, 0);
          head.writeUInt16LE(element as number, 2);
          head.write('OW', 4, 'latin1');
          head.writeUInt32LE((data as Buffer).length, 8);
          return Buffer.concat([head, data as Buffer]);
        }),
      ]);
      const { elements } = parseDataset(header, '1.2.840.10008.1.2.1', { wordValueTags: paletteDataTags });
      const attributes = renderAttributesOf(elements, palette8);
      assert.ok(attributes.palette, `${bits}-bit entries read`);
      // Stored values 9 (below the first mapped: entry 0), 10, 11, 12 (entry 2), 200 (beyond: the last entry).
      const image = renderFrame(Uint8Array.from([10, 11, 12, 200]), palette8, attributes);
      assert.equal(image.samplesPerPixel, 3);
      assert.deepEqual([...image.pixels], [0x00, 0x10, 0xff, 0xff, 0x20, 0x00, 0x80, 0x30, 0x7f, 0x80, 0x30, 0x7f], `${bits}-bit entries`);
    }
  });

  it('refuses what it does not render: a palette without tables, 32-bit, a short frame', () => {
    assert.throws(() => renderFrame(new Uint8Array(4), { ...grey16, photometricInterpretation: 'PALETTE COLOR', bitsAllocated: 8 }, plain), (e: unknown) => e instanceof RenderError && e.code === 'ERR_RENDER_UNSUPPORTED');
    assert.throws(() => renderFrame(new Uint8Array(16), { ...grey16, bitsAllocated: 32 }, plain), (e: unknown) => e instanceof RenderError && e.code === 'ERR_RENDER_UNSUPPORTED');
    assert.throws(() => renderFrame(new Uint8Array(3), grey16, plain), (e: unknown) => e instanceof RenderError && e.code === 'ERR_RENDER_PIXEL_DATA');
  });
});

describe('encodePng', () => {
  it('a grey and an RGB image: signature, IHDR, and the rows back from IDAT', () => {
    for (const samples of [1, 3] as const) {
      const pixels = Uint8Array.from({ length: 3 * 2 * samples }, (_, index) => index * 7);
      const png = encodePng(pixels, 3, 2, samples);
      assert.equal(png.subarray(0, 8).toString('hex'), '89504e470d0a1a0a');
      assert.equal(png.subarray(12, 16).toString('latin1'), 'IHDR');
      assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20), png[24], png[25]], [3, 2, 8, samples === 1 ? 0 : 2]);
      const idatAt = png.indexOf('IDAT');
      const raw = inflateSync(png.subarray(idatAt + 4, idatAt + 4 + png.readUInt32BE(idatAt - 4)));
      const rowBytes = 3 * samples;
      assert.deepEqual([...raw.subarray(1, 1 + rowBytes), ...raw.subarray(2 + rowBytes, 2 + 2 * rowBytes)], [...pixels]);
      assert.equal(png.subarray(-8, -4).toString('latin1'), 'IEND');
    }
  });
});
