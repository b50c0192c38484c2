import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DatasetParseError } from './errors.ts';
import { EncapsulatedFrameScanner } from './encapsulated-scan.ts';
import { encapsulatedFrame, readPixelData } from './pixel-data.ts';
import { concat, encapsulated, explicitLittle, imageHeader, seededRandom } from './test-fixtures.ts';

const jpegBaseline = '1.2.840.10008.1.2.4.50';
const rle = '1.2.840.10008.1.2.5';
/** The Pixel Data element's header in explicit VR little endian: tag, OB, two reserved bytes, undefined length. */
const elementHeaderBytes = 12;

/** Feeds the Pixel Data value in random pieces until the scanner is done; how many bytes it read. */
function scan(value: Uint8Array, scanner: EncapsulatedFrameScanner, random: () => number): number {
  let at = 0;
  while (at < value.length && !scanner.done) {
    const size = 1 + Math.floor(random() * (random() < 0.3 ? 5 : 40));
    scanner.push(value.subarray(at, at + size));
    at += size;
  }
  return Math.min(at, value.length);
}

interface Layout {
  frames: Uint8Array[][];
  table: 'empty' | 'full' | 'short' | 'wrong first entry';
  transferSyntaxUid: string;
}

function randomLayout(random: () => number): Layout {
  const frameCount = 1 + Math.floor(random() * 6);
  const markerDelimited = random() < 0.5;
  const frames = Array.from({ length: frameCount }, () => {
    const fragmentCount = random() < 0.6 ? 1 : 1 + Math.floor(random() * 3);
    return Array.from({ length: fragmentCount }, (_, index) => {
      const bytes = Uint8Array.from({ length: 2 + 2 * Math.floor(random() * 12) }, () => Math.floor(random() * 256));
      // An end-of-image marker only at the frame's end (a JPEG codestream), sometimes before one pad byte.
      if (bytes.length >= 4) bytes[bytes.length - 2] = bytes[bytes.length - 1] = 0;
      if (markerDelimited && index === fragmentCount - 1) {
        if (random() < 0.5) bytes.set([0xff, 0xd9], bytes.length - 2);
        else if (bytes.length >= 4) bytes.set([0xff, 0xd9, 0x00], bytes.length - 3);
      }
      return bytes;
    });
  });
  const tables = ['empty', 'full', 'short', 'wrong first entry'] as const;
  return { frames, table: tables[Math.floor(random() * tables.length)]!, transferSyntaxUid: markerDelimited ? jpegBaseline : rle };
}

function encode(layout: Layout): { dataset: Uint8Array; value: Uint8Array } {
  const fragments = layout.frames.flat();
  const starts: number[] = [];
  let position = 0;
  for (const frame of layout.frames) {
    starts.push(position);
    for (const fragment of frame) position += 8 + fragment.length;
  }
  const offsets = layout.table === 'empty' ? [] : layout.table === 'short' ? starts.slice(0, -1) : layout.table === 'wrong first entry' ? [2, ...starts.slice(1)] : starts;
  const header = imageHeader(explicitLittle, { frames: String(layout.frames.length) });
  const pixelData = encapsulated(offsets, fragments);
  return { dataset: concat([header, pixelData]), value: pixelData.subarray(elementHeaderBytes) };
}

describe('EncapsulatedFrameScanner', () => {
  it('finds the same frames as readPixelData for random layouts, frame choices and chunk splits (2,000 seeded cases)', () => {
    for (let seed = 1; seed <= 2000; seed++) {
      const random = seededRandom(seed);
      const layout = randomLayout(random);
      const { dataset, value } = encode(layout);
      const whole = readPixelData(dataset, layout.transferSyntaxUid);
      assert.equal(whole.kind, 'encapsulated');
      if (whole.kind !== 'encapsulated') return;
      const wanted = layout.frames.map((_, index) => index + 1).filter(() => random() < 0.5);
      const scanner = new EncapsulatedFrameScanner({ numberOfFrames: layout.frames.length, wantedFrames: wanted, transferSyntaxUid: layout.transferSyntaxUid });
      scan(value, scanner, random);
      assert.ok(scanner.done, `seed ${seed}: not done at the end of the value`);
      const frames = scanner.frames();
      if (whole.frameFragments === undefined) {
        assert.equal(frames, undefined, `seed ${seed}: frames located where readPixelData found none`);
        continue;
      }
      assert.ok(frames, `seed ${seed}: frames not located (${layout.table}, ${layout.frames.map((f) => f.length).join('/')} fragments)`);
      for (const frameNumber of wanted) {
        assert.deepEqual(Buffer.from(frames.get(frameNumber)!), Buffer.from(encapsulatedFrame(whole, frameNumber)), `seed ${seed}, frame ${frameNumber}`);
      }
    }
  });

  it('stops reading where a full offset table says the last wanted frame ends', () => {
    const layout: Layout = {
      frames: Array.from({ length: 10 }, (_, index) => [Uint8Array.from({ length: 100 }, () => index)]),
      table: 'full',
      transferSyntaxUid: rle,
    };
    const { value } = encode(layout);
    const scanner = new EncapsulatedFrameScanner({ numberOfFrames: 10, wantedFrames: [3, 2], transferSyntaxUid: rle });
    const read = scan(value, scanner, seededRandom(7));
    assert.ok(read < 4 * 108 + 8 + 40, `read ${read} of ${value.length} bytes`);
    const frames = scanner.frames()!;
    assert.deepEqual([...frames.keys()].sort(), [2, 3]);
    assert.ok(frames.get(3)!.every((byte) => byte === 2), 'frame 3 holds its own bytes');
  });

  it('keeps only the fragments that may belong to the wanted frames', () => {
    const layout: Layout = { frames: Array.from({ length: 50 }, () => [new Uint8Array(1000)]), table: 'empty', transferSyntaxUid: rle };
    const { value } = encode(layout);
    const scanner = new EncapsulatedFrameScanner({ numberOfFrames: 50, wantedFrames: [50], transferSyntaxUid: rle });
    const pushed: Uint8Array[] = [];
    for (let at = 0; at < value.length; at += 4096) pushed.push(value.subarray(at, at + 4096));
    for (const piece of pushed) scanner.push(piece);
    const frames = scanner.frames()!;
    assert.equal(frames.size, 1);
    assert.equal(frames.get(50)!.length, 1000);
  });

  it('a malformed item (another tag where an item belongs): DatasetParseError', () => {
    const value = Uint8Array.from([0xfe, 0xff, 0x00, 0xe0, 0, 0, 0, 0, 0x08, 0x00, 0x10, 0x00, 2, 0, 0, 0, 1, 2]);
    const scanner = new EncapsulatedFrameScanner({ numberOfFrames: 1, wantedFrames: [1], transferSyntaxUid: rle });
    assert.throws(() => scanner.push(value), DatasetParseError);
  });
});
