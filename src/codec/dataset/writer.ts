/**
 * Encodes a list of elements as a dataset (no Part 10 header), e.g. a C-FIND response identifier or a
 * Storage Commitment report with its sequences.
 * Values follow the `DicomElement` conventions, so `parseDataset(encodeDataset(x, ts), ts)` gives x back.
 */
import zlib from 'node:zlib';
import type { DicomElement, Vr } from '../dicom-types.ts';
import { tagHex } from '../dicom-types.ts';
import { DatasetEncodeError } from './errors.ts';
import { layoutOf, longLengthVrs, numericVrSizes, textVrs, type TransferSyntaxLayout } from './vr.ts';

const vrPattern = /^[A-Z]{2}$/;
const maxShortValueBytes = 0xffff;
/** Largest defined length: 0xFFFFFFFF means undefined length, and values must be even. */
const maxLongValueBytes = 0xfffffffe;

const integerRanges: ReadonlyMap<Vr, readonly [number, number]> = new Map([
  ['US', [0, 0xffff]], ['SS', [-0x8000, 0x7fff]], ['UL', [0, 0xffffffff]], ['SL', [-0x80000000, 0x7fffffff]],
  ['AT', [0, 0xffffffff]],
]);
const bigIntRanges: ReadonlyMap<Vr, readonly [bigint, bigint]> = new Map([
  ['SV', [-(2n ** 63n), 2n ** 63n - 1n]], ['UV', [0n, 2n ** 64n - 1n]],
]);

/** An element to write; a sequence (VR SQ) carries its items, each written as a defined-length item. */
export type WritableElement = DicomElement & { readonly items?: readonly (readonly WritableElement[])[] };

function encodeValue(element: WritableElement, layout: TransferSyntaxLayout): Uint8Array {
  const { vr, value } = element;
  const littleEndian = layout.littleEndian;
  if (vr === 'SQ') return encodeItems(element.items ?? [], layout);
  if (value === undefined || value === '') return new Uint8Array(0);
  if (textVrs.has(vr)) {
    const text = Buffer.from(value, 'latin1');
    if (text.length % 2 === 0) return text;
    const padded = new Uint8Array(text.length + 1);
    padded.set(text);
    padded[text.length] = vr === 'UI' ? 0x00 : 0x20;
    return padded;
  }
  const size = numericVrSizes.get(vr);
  if (size === undefined) {
    throw new DatasetEncodeError('ERR_DATASET_ENCODE_VALUE',
      `(${tagHex(element.tag)}) ${vr}: only text and numeric VRs can carry a value here`);
  }
  const parts = value.split('\\');
  const bytes = new Uint8Array(parts.length * size);
  const view = new DataView(bytes.buffer);
  parts.forEach((part, index) => {
    const at = index * size;
    const invalid = (): DatasetEncodeError => new DatasetEncodeError('ERR_DATASET_ENCODE_VALUE',
      `(${tagHex(element.tag)}) ${vr}: "${part}" is not a valid value`);
    const bigRange = bigIntRanges.get(vr);
    if (bigRange !== undefined) {
      if (!/^-?[0-9]+$/.test(part)) throw invalid();
      const number = BigInt(part);
      if (number < bigRange[0] || number > bigRange[1]) throw invalid();
      if (vr === 'SV') view.setBigInt64(at, number, littleEndian);
      else view.setBigUint64(at, number, littleEndian);
      return;
    }
    const number = Number(part.trim());
    if (part.trim() === '' || Number.isNaN(number) && !/^\s*NaN\s*$/.test(part)) throw invalid();
    if (vr === 'FL') { view.setFloat32(at, number, littleEndian); return; }
    if (vr === 'FD') { view.setFloat64(at, number, littleEndian); return; }
    const range = integerRanges.get(vr)!;
    if (!Number.isInteger(number) || number < range[0] || number > range[1]) throw invalid();
    switch (vr) {
      case 'US': view.setUint16(at, number, littleEndian); break;
      case 'SS': view.setInt16(at, number, littleEndian); break;
      case 'UL': view.setUint32(at, number, littleEndian); break;
      case 'SL': view.setInt32(at, number, littleEndian); break;
      default:
        // AT: the 32-bit tag number goes out as group then element, each in the syntax's byte order.
        view.setUint16(at, number >>> 16, littleEndian);
        view.setUint16(at + 2, number & 0xffff, littleEndian);
    }
  });
  return bytes;
}

/**
 * Encodes `elements` sorted by tag in implicit VR LE, explicit VR LE, explicit VR BE or deflated
 * explicit VR LE (any other syntax is written as explicit VR LE). Text values are padded to even length
 * (UI with NUL, others with space); an element whose value is undefined or '' is written with length 0.
 */
export function encodeDataset(elements: readonly WritableElement[], transferSyntaxUid: string): Uint8Array {
  const layout = layoutOf(transferSyntaxUid);
  const output = encodeElements(elements, layout);
  if (!layout.deflated) return output;
  const deflated = zlib.deflateRawSync(output);
  return new Uint8Array(deflated.buffer, deflated.byteOffset, deflated.length);
}

/** A sequence's value: each item as (FFFE,E000) with its defined length, then its elements. */
function encodeItems(items: readonly (readonly WritableElement[])[], layout: TransferSyntaxLayout): Uint8Array {
  const bodies = items.map((item) => encodeElements(item, layout));
  const output = new Uint8Array(bodies.reduce((sum, body) => sum + 8 + body.length, 0));
  const view = new DataView(output.buffer);
  let at = 0;
  for (const body of bodies) {
    view.setUint16(at, 0xfffe, layout.littleEndian);
    view.setUint16(at + 2, 0xe000, layout.littleEndian);
    view.setUint32(at + 4, body.length, layout.littleEndian);
    output.set(body, at + 8);
    at += 8 + body.length;
  }
  return output;
}

function encodeElements(elements: readonly WritableElement[], layout: TransferSyntaxLayout): Uint8Array {
  const littleEndian = layout.littleEndian;
  const sorted = [...elements].sort((a, b) => (a.tag >>> 0) - (b.tag >>> 0));
  const encoded = sorted.map((element) => {
    if (!vrPattern.test(element.vr)) {
      throw new DatasetEncodeError('ERR_DATASET_ENCODE_VR', `(${tagHex(element.tag)}): invalid VR "${element.vr}"`);
    }
    const value = encodeValue(element, layout);
    const longForm = layout.implicitVr || longLengthVrs.has(element.vr);
    if (value.length > (longForm ? maxLongValueBytes : maxShortValueBytes)) {
      throw new DatasetEncodeError('ERR_DATASET_ENCODE_VALUE',
        `(${tagHex(element.tag)}) ${element.vr}: value of ${value.length} bytes is too long for its length field`);
    }
    return { tag: element.tag >>> 0, vr: element.vr, value };
  });

  const totalBytes = encoded.reduce((sum, { vr, value }) =>
    sum + value.length + (!layout.implicitVr && longLengthVrs.has(vr) ? 12 : 8), 0);
  const output = new Uint8Array(totalBytes);
  const view = new DataView(output.buffer);
  let at = 0;
  for (const { tag, vr, value } of encoded) {
    view.setUint16(at, tag >>> 16, littleEndian);
    view.setUint16(at + 2, tag & 0xffff, littleEndian);
    if (layout.implicitVr) {
      view.setUint32(at + 4, value.length, littleEndian);
      at += 8;
    } else {
      output[at + 4] = vr.charCodeAt(0);
      output[at + 5] = vr.charCodeAt(1);
      if (longLengthVrs.has(vr)) {
        view.setUint16(at + 6, 0, littleEndian);
        view.setUint32(at + 8, value.length, littleEndian);
        at += 12;
      } else {
        view.setUint16(at + 6, value.length, littleEndian);
        at += 8;
      }
    }
    output.set(value, at);
    at += value.length;
  }
  return output;
}
