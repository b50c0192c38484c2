/**
 * Reads a small in-memory data set whole, sequences and items included (a Storage Commitment request's
 * Referenced SOP Sequence, say), where the streaming header reader keeps only top-level values. Values
 * are decoded as `DicomElement` does; bulk data is skipped. Bounds on depth and element count keep a
 * hostile data set from costing more than its size.
 */
import type { Tag, Vr } from '../dicom-types.ts';
import { tagHex } from '../dicom-types.ts';
import { implicitVrOf, Tags, vrOf } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { decodeNumbers, decodeText, explicitVrHeader, layoutOf, numericVrSizes, textVrs } from './vr.ts';

export interface TreeElement {
  tag: Tag;
  vr: Vr;
  /** Text and numeric VRs, as `DicomElement.value`; undefined for sequences and bulk data. */
  value: string | undefined;
  /** A sequence's items, each its elements in stream order. */
  items?: TreeElement[][];
  /** Where the value's bytes are in the data set read (absent for sequences): bulk data is served from them. */
  valueOffset?: number;
  valueLength?: number;
}

export interface TreeLimits {
  /** Nested sequences (each sequence and each item one level). Default 16. */
  maxDepth?: number;
  /** Elements in all, at every level. Default 100,000. */
  maxElements?: number;
}

const undefinedLength = 0xffffffff;
const itemTag = 0xfffee000;
const itemDelimiterTag = 0xfffee00d;
const sequenceDelimiterTag = 0xfffee0dd;

/**
 * The data set's elements (no File Meta; not deflated syntaxes: the caller inflates those). Throws
 * DatasetParseError for anything truncated, malformed or over the limits.
 */
export function parseDatasetTree(bytes: Uint8Array, transferSyntaxUid: string, limits: TreeLimits = {}): TreeElement[] {
  const layout = layoutOf(transferSyntaxUid);
  if (layout.deflated) throw new DatasetParseError('ERR_DATASET_MALFORMED', 'a deflated data set must be inflated before it is read whole');
  const maxDepth = limits.maxDepth ?? 16;
  const maxElements = limits.maxElements ?? 100_000;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let elementCount = 0;

  const u16 = (at: number) => view.getUint16(at, layout.littleEndian);
  const u32 = (at: number) => view.getUint32(at, layout.littleEndian);
  const need = (at: number, count: number, end: number) => {
    if (at + count > end) throw new DatasetParseError('ERR_DATASET_TRUNCATED', 'data set ends inside an element', at);
  };

  /** Elements from `at` to `end`, or to an item delimiter when `end` is undefined. Returns where it stopped. */
  function readElements(at: number, end: number, depth: number, untilDelimiter: boolean, out: TreeElement[]): number {
    while (at < end) {
      need(at, 8, end);
      const tag = ((u16(at) << 16) | u16(at + 2)) >>> 0;
      if (tag === itemDelimiterTag) {
        if (!untilDelimiter) throw new DatasetParseError('ERR_DATASET_MALFORMED', 'item delimiter outside an item of undefined length', at);
        return at + 8;
      }
      if (tag >>> 16 === 0xfffe) throw new DatasetParseError('ERR_DATASET_MALFORMED', `(${tagHex(tag)}) where an element belongs`, at);
      if (++elementCount > maxElements) throw new DatasetParseError('ERR_DATASET_TOO_MANY_ELEMENTS', `more than ${maxElements} elements`, at);
      let vr: Vr;
      let length: number;
      let headerBytes: number;
      if (layout.implicitVr) {
        vr = implicitVrOf(tag, () => findElement(out, Tags.PixelRepresentation)?.value) ?? 'UN';
        length = u32(at + 4);
        headerBytes = 8;
      } else {
        const header = explicitVrHeader(bytes[at + 4]!, bytes[at + 5]!);
        if (header === undefined) throw new DatasetParseError('ERR_DATASET_MALFORMED', `(${tagHex(tag)}) has no valid VR`, at);
        vr = header.vr ?? vrOf(tag) ?? 'UN';
        if (header.longLength) {
          need(at, 12, end);
          length = u32(at + 8);
          headerBytes = 12;
        } else {
          length = u16(at + 6);
          headerBytes = 8;
        }
      }
      at += headerBytes;
      if (vr === 'SQ' || (length === undefinedLength && vr === 'UN')) {
        if (depth + 1 > maxDepth) throw new DatasetParseError('ERR_DATASET_TOO_DEEP', `sequences nested deeper than ${maxDepth}`, at);
        const items: TreeElement[][] = [];
        at = readItems(at, length === undefinedLength ? end : checkedEnd(at, length, end), depth + 1, length === undefinedLength, items);
        out.push({ tag, vr: 'SQ', value: undefined, items });
        continue;
      }
      if (length === undefinedLength) throw new DatasetParseError('ERR_DATASET_MALFORMED', `(${tagHex(tag)}) ${vr} of undefined length`, at);
      const valueEnd = checkedEnd(at, length, end);
      const value = textVrs.has(vr) ? decodeText(bytes, at, valueEnd) : numericVrSizes.has(vr) ? decodeNumbers(bytes, at, length, vr, layout.littleEndian) : undefined;
      out.push({ tag, vr, value, valueOffset: at, valueLength: length });
      at = valueEnd;
    }
    if (untilDelimiter) throw new DatasetParseError('ERR_DATASET_TRUNCATED', 'item of undefined length has no delimiter', at);
    return at;
  }

  function readItems(at: number, end: number, depth: number, untilDelimiter: boolean, items: TreeElement[][]): number {
    while (at < end) {
      need(at, 8, end);
      const tag = ((u16(at) << 16) | u16(at + 2)) >>> 0;
      const length = u32(at + 4);
      at += 8;
      if (tag === sequenceDelimiterTag) {
        if (!untilDelimiter) throw new DatasetParseError('ERR_DATASET_MALFORMED', 'sequence delimiter in a sequence of defined length', at);
        return at;
      }
      if (tag !== itemTag) throw new DatasetParseError('ERR_DATASET_MALFORMED', `(${tagHex(tag)}) where a sequence item belongs`, at);
      if (depth + 1 > maxDepth) throw new DatasetParseError('ERR_DATASET_TOO_DEEP', `sequences nested deeper than ${maxDepth}`, at);
      const item: TreeElement[] = [];
      at = length === undefinedLength ? readElements(at, end, depth + 1, true, item) : readElements(at, checkedEnd(at, length, end), depth + 1, false, item);
      items.push(item);
    }
    if (untilDelimiter) throw new DatasetParseError('ERR_DATASET_TRUNCATED', 'sequence of undefined length has no delimiter', at);
    return at;
  }

  function checkedEnd(at: number, length: number, end: number): number {
    if (length > end - at) throw new DatasetParseError('ERR_DATASET_TRUNCATED', `value of ${length} bytes runs past its container`, at);
    return at + length;
  }

  const out: TreeElement[] = [];
  readElements(0, bytes.length, 0, false, out);
  return out;
}

/** The first element with `tag` among `elements` (one level). */
export function findElement(elements: readonly TreeElement[], tag: Tag): TreeElement | undefined {
  return elements.find((element) => element.tag === tag);
}
