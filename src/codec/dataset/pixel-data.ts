/**
 * The top-level Pixel Data (7FE0,0010) of an in-memory data set, and its frames: native (one value, frames
 * back to back, PS3.5 8.1.1) or encapsulated (a Basic Offset Table item, then fragments, PS3.5 A.4). The
 * Image Pixel attributes come from the streaming header reader (reader.ts), which stops at Pixel Data; the
 * element there is then read by hand, every length checked against the bytes that hold it. Also builds
 * a data set of some frames alone (framesOnlyDataset), for a decoder to decode those and no others.
 *
 * Not covered: Float / Double Float Pixel Data (7FE0,0008/0009), the Extended Offset Table (7FE0,0001),
 * and deflated data sets (their header is read; for the pixels the caller inflates them first, as for tree.ts).
 */
import { tagHex, type DicomElement } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { parseDataset } from './reader.ts';
import { layoutOf } from './vr.ts';
import { encodeDataset } from './writer.ts';

/** What the frames of an image are made of (PS3.3 C.7.6.3). */
export interface ImagePixelAttributes {
  rows: number;
  columns: number;
  samplesPerPixel: number;
  /** 1, or a multiple of 8 up to 64. */
  bitsAllocated: number;
  /** (0028,0008), 1 when absent (a single-frame image). */
  numberOfFrames: number;
  /** (0028,0004), '' when absent: YBR_FULL_422 and YBR_PARTIAL_422 frames hold two samples per pixel, not three. */
  photometricInterpretation: string;
}

export type PixelDataHeader =
  /** No top-level Pixel Data (7FE0,0010): not an image, or one with Float Pixel Data. */
  | { kind: 'absent' }
  | { kind: 'present'; image: ImagePixelAttributes };

export type PixelData =
  | { kind: 'absent' }
  | {
      kind: 'native';
      image: ImagePixelAttributes;
      /** The value as stored, in the data set's byte order. */
      value: Uint8Array;
      littleEndian: boolean;
    }
  | {
      kind: 'encapsulated';
      image: ImagePixelAttributes;
      /** The Basic Offset Table's offsets (empty when the table is). */
      basicOffsetTable: number[];
      fragments: Uint8Array[];
      /**
       * For each frame (index 0 is frame 1), its fragments; undefined when the frames cannot be told apart
       * (more fragments than frames, no usable offset table and no end-of-image markers to go by).
       */
      frameFragments: Array<{ first: number; count: number }> | undefined;
    };

export interface PixelDataLimits {
  /** Fragments in encapsulated Pixel Data: each costs a view object here. Default 262,144. */
  maxFragmentCount?: number;
}

export const defaultMaxFragmentCount = 262_144;

const undefinedLength = 0xffffffff;
export const itemTag = 0xfffee000;
export const sequenceDelimiterTag = 0xfffee0dd;

/**
 * Syntaxes whose frames are JPEG-family codestreams, each ending with an EOI / EOC marker (FFD9): with
 * several fragments per frame and no offset table, the fragment ending with the marker ends the frame.
 */
const markerDelimitedSyntaxes: ReadonlySet<string> = new Set([
  '1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.4.57', '1.2.840.10008.1.2.4.70',
  '1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.4.81',
  '1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.91',
  '1.2.840.10008.1.2.4.201', '1.2.840.10008.1.2.4.202', '1.2.840.10008.1.2.4.203',
]);

function malformed(message: string, at?: number): DatasetParseError {
  return new DatasetParseError('ERR_DATASET_MALFORMED', message, at);
}

function integerOf(elements: ReadonlyArray<{ tag: number; value: string | undefined }>, tag: number, name: string, fallback: number | undefined, min: number, max: number): number {
  const text = elements.find((element) => element.tag === tag)?.value?.split('\\')[0]?.trim();
  if (text === undefined || text === '') {
    if (fallback === undefined) throw malformed(`the image has no ${name} (${tagHex(tag)})`);
    return fallback;
  }
  const value = /^[+]?[0-9]{1,10}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) throw malformed(`${name} (${tagHex(tag)}) is "${text.slice(0, 20)}", not an integer from ${min} to ${max}`);
  return value;
}

/**
 * The Image Pixel attributes and whether top-level Pixel Data is there, from the header alone (any
 * syntax, deflated ones included: the reader inflates as it goes). Throws DatasetParseError.
 */
export function readPixelDataHeader(bytes: Uint8Array, transferSyntaxUid: string): { header: PixelDataHeader; pixelDataOffset: number | undefined; elements: DicomElement[] } {
  const dataset = parseDataset(bytes, transferSyntaxUid);
  if (!dataset.reachedPixelData) return { header: { kind: 'absent' }, pixelDataOffset: undefined, elements: dataset.elements };
  const elements = dataset.elements;
  const bitsAllocated = integerOf(elements, Tags.BitsAllocated, 'Bits Allocated', undefined, 1, 64);
  if (bitsAllocated !== 1 && bitsAllocated % 8 !== 0) throw malformed(`Bits Allocated is ${bitsAllocated}: only 1 or a multiple of 8 describes whole samples`);
  const image: ImagePixelAttributes = {
    rows: integerOf(elements, Tags.Rows, 'Rows', undefined, 1, 0xffff),
    columns: integerOf(elements, Tags.Columns, 'Columns', undefined, 1, 0xffff),
    samplesPerPixel: integerOf(elements, Tags.SamplesPerPixel, 'Samples per Pixel', 1, 1, 4),
    bitsAllocated,
    numberOfFrames: integerOf(elements, Tags.NumberOfFrames, 'Number of Frames', 1, 1, 2 ** 31 - 1),
    photometricInterpretation: elements.find((element) => element.tag === Tags.PhotometricInterpretation)?.value?.trim() ?? '',
  };
  return { header: { kind: 'present', image }, pixelDataOffset: dataset.pixelDataOffset, elements };
}

/**
 * The top-level Pixel Data of a data set that is not deflated, as views into `bytes` (nothing copied).
 * Throws DatasetParseError when the element or its fragments run past the bytes or are malformed.
 */
export function readPixelData(bytes: Uint8Array, transferSyntaxUid: string, limits: PixelDataLimits = {}): PixelData {
  const layout = layoutOf(transferSyntaxUid);
  if (layout.deflated) throw malformed('a deflated data set must be inflated before its Pixel Data is read');
  const maxFragmentCount = limits.maxFragmentCount ?? defaultMaxFragmentCount;
  const { header, pixelDataOffset } = readPixelDataHeader(bytes, transferSyntaxUid);
  if (header.kind === 'absent' || pixelDataOffset === undefined) return { kind: 'absent' };
  const image = header.image;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const at = pixelDataOffset;
  const headerBytes = layout.implicitVr ? 8 : 12;
  if (at + headerBytes > bytes.length) throw new DatasetParseError('ERR_DATASET_TRUNCATED', 'the data set ends inside the Pixel Data element header', at);
  if (!layout.implicitVr) {
    const vr = String.fromCharCode(bytes[at + 4]!, bytes[at + 5]!);
    if (vr !== 'OB' && vr !== 'OW' && vr !== 'UN') throw malformed(`Pixel Data has VR ${JSON.stringify(vr)} (OB or OW expected)`, at);
  }
  const length = view.getUint32(at + headerBytes - 4, layout.littleEndian);
  const valueStart = at + headerBytes;
  if (length !== undefinedLength) {
    if (length > bytes.length - valueStart) throw new DatasetParseError('ERR_DATASET_TRUNCATED', `Pixel Data of ${length} bytes runs past the data set's end`, at);
    return { kind: 'native', image, value: bytes.subarray(valueStart, valueStart + length), littleEndian: layout.littleEndian };
  }
  // Encapsulated: items in little endian whatever the syntax (only explicit VR LE syntaxes encapsulate, PS3.5 A.4).
  const fragments: Uint8Array[] = [];
  /** Offset of each fragment's item tag from the first fragment's item tag: what Basic Offset Table entries point at. */
  const fragmentPositions: number[] = [];
  let basicOffsetTable: number[] | undefined;
  let cursor = valueStart;
  let firstFragmentAt = -1;
  for (;;) {
    if (cursor + 8 > bytes.length) throw new DatasetParseError('ERR_DATASET_TRUNCATED', 'encapsulated Pixel Data has no sequence delimiter', cursor);
    const tag = ((view.getUint16(cursor, true) << 16) | view.getUint16(cursor + 2, true)) >>> 0;
    const itemLength = view.getUint32(cursor + 4, true);
    if (tag === sequenceDelimiterTag) break;
    if (tag !== itemTag) throw malformed(`(${tagHex(tag)}) inside encapsulated Pixel Data, where an item belongs`, cursor);
    if (itemLength === undefinedLength || itemLength > bytes.length - cursor - 8) throw new DatasetParseError('ERR_DATASET_TRUNCATED', `a Pixel Data item of ${itemLength === undefinedLength ? 'undefined' : itemLength} bytes runs past the data set's end`, cursor);
    const itemValue = bytes.subarray(cursor + 8, cursor + 8 + itemLength);
    if (basicOffsetTable === undefined) {
      if (itemLength % 4 !== 0) throw malformed(`the Basic Offset Table is ${itemLength} bytes, not a multiple of 4`, cursor);
      basicOffsetTable = [];
      for (let entry = 0; entry < itemLength; entry += 4) basicOffsetTable.push(view.getUint32(cursor + 8 + entry, true));
    } else {
      if (fragments.length >= maxFragmentCount) throw new DatasetParseError('ERR_DATASET_TOO_MANY_ELEMENTS', `encapsulated Pixel Data has more than ${maxFragmentCount} fragments`, cursor);
      if (firstFragmentAt < 0) firstFragmentAt = cursor;
      fragments.push(itemValue);
      fragmentPositions.push(cursor - firstFragmentAt);
    }
    cursor += 8 + itemLength;
  }
  if (basicOffsetTable === undefined) throw malformed('encapsulated Pixel Data has no Basic Offset Table item', valueStart);
  const markerDelimited = isMarkerDelimited(transferSyntaxUid);
  const frameFragments = locateFrames(image.numberOfFrames, basicOffsetTable, fragmentPositions, (index) => markerDelimited && endsWithEndOfImage(fragments[index]!), markerDelimited);
  return { kind: 'encapsulated', image, basicOffsetTable, fragments, frameFragments };
}

/**
 * Which fragments make each frame, by the first rule that applies (PS3.5 A.4): the Basic Offset Table when
 * it has one entry per frame, each at a fragment's start; one fragment per frame; all fragments for a single
 * frame; the end-of-image markers of JPEG-family codestreams. Undefined when none does. Fragments are
 * given by their item's position from the first fragment's item tag (what offset table entries point at).
 */
export function locateFrames(
  numberOfFrames: number,
  basicOffsetTable: readonly number[],
  fragmentPositions: readonly number[],
  endsWithEndOfImageAt: (fragmentIndex: number) => boolean,
  markerDelimited: boolean,
): Array<{ first: number; count: number }> | undefined {
  const fragmentCount = fragmentPositions.length;
  if (numberOfFrames > fragmentCount) return undefined;
  if (basicOffsetTable.length === numberOfFrames) {
    const starts = basicOffsetTable.map((offset) => binarySearch(fragmentPositions, offset));
    if (starts[0] === 0 && starts.every((start, index) => start >= 0 && (index === 0 || start > starts[index - 1]!))) {
      return starts.map((first, index) => ({ first, count: (starts[index + 1] ?? fragmentCount) - first }));
    }
  }
  if (fragmentCount === numberOfFrames) return fragmentPositions.map((_, index) => ({ first: index, count: 1 }));
  if (numberOfFrames === 1) return [{ first: 0, count: fragmentCount }];
  if (!markerDelimited) return undefined;
  const frames: Array<{ first: number; count: number }> = [];
  let first = 0;
  for (let index = 0; index < fragmentCount; index++) {
    if (!endsWithEndOfImageAt(index)) continue;
    frames.push({ first, count: index + 1 - first });
    first = index + 1;
  }
  return frames.length === numberOfFrames && first === fragmentCount ? frames : undefined;
}

/** Whether the syntax's frames end with an end-of-image marker that tells fragments of one frame from the next. */
export function isMarkerDelimited(transferSyntaxUid: string): boolean {
  return markerDelimitedSyntaxes.has(transferSyntaxUid);
}

/** FFD9 at the end, or before the one padding byte an odd codestream gets. */
export function endsWithEndOfImage(fragment: Uint8Array): boolean {
  const n = fragment.length;
  if (n >= 2 && fragment[n - 2] === 0xff && fragment[n - 1] === 0xd9) return true;
  return n >= 3 && fragment[n - 3] === 0xff && fragment[n - 2] === 0xd9 && fragment[n - 1] === 0x00;
}

/** The index of `wanted` in an ascending array, or -1. */
export function binarySearch(sorted: readonly number[], wanted: number): number {
  let low = 0;
  let high = sorted.length - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const value = sorted[middle]!;
    if (value === wanted) return middle;
    if (value < wanted) low = middle + 1;
    else high = middle - 1;
  }
  return -1;
}

/**
 * Bits of one native frame: Rows x Columns x Samples per Pixel x Bits Allocated, where 4:2:2 subsampled
 * colour (YBR_FULL_422, YBR_PARTIAL_422) holds two Cb and two Cr per two pixels: two samples a pixel
 * (PS3.3 C.7.6.3.1.2).
 */
export function nativeFrameBits(image: ImagePixelAttributes): number {
  const subsampled = image.samplesPerPixel === 3 && /^YBR_(FULL|PARTIAL)_422$/.test(image.photometricInterpretation);
  return image.rows * image.columns * (subsampled ? 2 : image.samplesPerPixel) * image.bitsAllocated;
}

/**
 * Frame `frameNumber` (from 1) of native Pixel Data, in the value's byte order. With Bits Allocated 1 the
 * frames are packed without gaps (PS3.5 8.1.1), so one may start inside a byte: such a frame is copied to
 * start at bit 0 of its first byte (pixels least significant bit first), its last byte padded with zero
 * bits; byte-aligned frames are views. Throws DatasetParseError when the value is too short for the frame.
 */
export function nativeFrame(pixel: Extract<PixelData, { kind: 'native' }>, frameNumber: number): Uint8Array {
  const frameBits = nativeFrameBits(pixel.image);
  checkFrameNumber(pixel.image, frameNumber);
  const startBit = (frameNumber - 1) * frameBits;
  const endBit = startBit + frameBits;
  if (Math.ceil(endBit / 8) > pixel.value.length) {
    throw new DatasetParseError('ERR_DATASET_TRUNCATED', `Pixel Data holds ${pixel.value.length} bytes: too few for frame ${frameNumber} of ${frameBits / 8} bytes`);
  }
  if (startBit % 8 === 0 && frameBits % 8 === 0) return pixel.value.subarray(startBit / 8, endBit / 8);
  const out = new Uint8Array(Math.ceil(frameBits / 8));
  for (let bit = 0; bit < frameBits; bit++) {
    const source = startBit + bit;
    if ((pixel.value[source >>> 3]! >>> (source & 7)) & 1) out[bit >>> 3] |= 1 << (bit & 7);
  }
  return out;
}

/** The codestream of frame `frameNumber` (from 1): its fragments joined (a view when it has one). */
export function encapsulatedFrame(pixel: Extract<PixelData, { kind: 'encapsulated' }>, frameNumber: number): Uint8Array {
  checkFrameNumber(pixel.image, frameNumber);
  const located = pixel.frameFragments?.[frameNumber - 1];
  if (located === undefined) throw malformed(`the fragments of frame ${frameNumber} cannot be told apart`);
  if (located.count === 1) return pixel.fragments[located.first]!;
  return Buffer.concat(pixel.fragments.slice(located.first, located.first + located.count));
}

function checkFrameNumber(image: ImagePixelAttributes, frameNumber: number): void {
  if (!Number.isSafeInteger(frameNumber) || frameNumber < 1 || frameNumber > image.numberOfFrames) {
    throw new RangeError(`frame ${frameNumber} is not one of the image's ${image.numberOfFrames} frame(s)`);
  }
}

/** The Image Pixel attributes a decoder reads (PS3.3 C.7.6.3), which a frames-only data set keeps. */
const planarConfigurationTag = 0x00280006;
const decoderAttributeTags: ReadonlySet<number> = new Set([
  Tags.SamplesPerPixel, Tags.PhotometricInterpretation, planarConfigurationTag, Tags.Rows, Tags.Columns,
  Tags.BitsAllocated, Tags.BitsStored, Tags.HighBit, Tags.PixelRepresentation,
]);

/**
 * A data set in explicit VR little endian framing of an encapsulated syntax, holding the Image Pixel
 * attributes of `elements` (a header read by readPixelDataHeader) and only `codestreams`, one fragment
 * each, as Number of Frames frames: what a decoder needs to decode those frames and no others.
 */
export function framesOnlyDataset(elements: readonly DicomElement[], codestreams: readonly Uint8Array[]): Uint8Array {
  const kept = elements.filter((element) => decoderAttributeTags.has(element.tag) && element.value !== undefined);
  const header = encodeDataset([...kept, { tag: Tags.NumberOfFrames, vr: 'IS', value: String(codestreams.length) }], '1.2.840.10008.1.2.1');
  const paddedBytes = (codestream: Uint8Array) => codestream.length + (codestream.length % 2);
  const out = new Uint8Array(header.length + 12 + 8 + codestreams.reduce((sum, codestream) => sum + 8 + paddedBytes(codestream), 0) + 8);
  const view = new DataView(out.buffer);
  out.set(header, 0);
  let at = header.length;
  const itemHeader = (tag: number, length: number) => {
    view.setUint16(at, tag >>> 16, true);
    view.setUint16(at + 2, tag & 0xffff, true);
    view.setUint32(at + 4, length, true);
    at += 8;
  };
  view.setUint16(at, 0x7fe0, true);
  view.setUint16(at + 2, 0x0010, true);
  out.set([0x4f, 0x42], at + 4); // OB, then 2 reserved bytes
  view.setUint32(at + 8, undefinedLength, true);
  at += 12;
  itemHeader(itemTag, 0); // an empty Basic Offset Table: one fragment per frame says where frames start
  for (const codestream of codestreams) {
    // A fragment has an even length (PS3.5 A.4): an odd codestream gets one zero byte, as encoders pad.
    itemHeader(itemTag, paddedBytes(codestream));
    out.set(codestream, at);
    at += paddedBytes(codestream);
  }
  itemHeader(sequenceDelimiterTag, 0);
  return out;
}
