/**
 * Element-by-element comparison of two DICOM Part 10 files, independent of the peer's own dataset codec
 * (only the Part 10 meta splitter is shared). It walks both data sets (explicit/implicit VR little
 * endian, explicit VR big endian, deflated, encapsulated pixel data, nested sequences of any length
 * encoding) into a flat map "path -> value bytes" and compares the maps.
 *
 * Tolerated differences (storescu makes them when it re-encodes a file it sends):
 *  - group length elements (gggg,0000), at any depth, present on one side only or with another value;
 *  - data set trailing padding (FFFC,FFFC);
 *  - value padding: one value equal to the other plus trailing NUL/space bytes (odd lengths made even);
 *  - sequence and item length encoding (defined vs undefined length), which the flat map hides.
 * Anything else (a missing element, another VR in explicit syntaxes, other value bytes, another
 * number of items or fragments) is a difference.
 */
import { inflateRawSync } from 'node:zlib';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';

export const TS = {
  ImplicitLE: '1.2.840.10008.1.2',
  ExplicitLE: '1.2.840.10008.1.2.1',
  DeflatedLE: '1.2.840.10008.1.2.1.99',
  ExplicitBE: '1.2.840.10008.1.2.2',
  JpegBaseline: '1.2.840.10008.1.2.4.50',
  JpegLossless14: '1.2.840.10008.1.2.4.57',
  JpegLosslessSv1: '1.2.840.10008.1.2.4.70',
  JpegLsLossless: '1.2.840.10008.1.2.4.80',
  Jpeg2000Lossless: '1.2.840.10008.1.2.4.90',
  Jpeg2000: '1.2.840.10008.1.2.4.91',
  Rle: '1.2.840.10008.1.2.5',
} as const;

/** A Part 10 file split into its meta information and data set. */
export interface Part10 {
  transferSyntaxUid: string;
  /** (0002,0002) and (0002,0003): some corpus files disagree with their own data set, see `datasetText`. */
  metaSopClassUid: string;
  metaSopInstanceUid: string;
  /** The data set bytes as stored in the file (still deflated for the deflated syntax). */
  dataset: Uint8Array;
}

export function readPart10(bytes: Uint8Array): Part10 {
  const split = splitPart10(bytes);
  const meta = (tag: number) => (split.metaElements.find((e) => e.tag === tag)?.value ?? '').replace(/[\0 ]+$/, '');
  return {
    transferSyntaxUid: split.transferSyntaxUid,
    metaSopClassUid: meta(0x00020002),
    metaSopInstanceUid: meta(0x00020003),
    dataset: bytes.subarray(split.datasetOffset),
  };
}

// ---------------------------------------------------------------------------------------------------
// Walking a data set

const longVrs = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const ITEM_DELIM = 0xfffee00d;
const SEQ_DELIM = 0xfffee0dd;

export type FlatValue =
  | { kind: 'value'; vr: string; bytes: Uint8Array }
  | { kind: 'sequence'; vr: string; items: number }
  | { kind: 'fragments'; vr: string; count: number };

/** Flattened data set: "(gggg,eeee)" / "(gggg,eeee)[i].(gggg,eeee)" / "(7FE0,0010){f}" -> value. */
export type FlatDataset = Map<string, FlatValue>;

const hex4 = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
export const tagString = (tag: number) => `(${hex4(tag >>> 16)},${hex4(tag & 0xffff)})`;

class WalkError extends Error {}

interface Syntax {
  explicit: boolean;
  little: boolean;
}

class Walker {
  private readonly view: DataView;
  constructor(private readonly bytes: Uint8Array, private readonly out: FlatDataset) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private u16(at: number, little: boolean): number {
    if (at + 2 > this.bytes.length) throw new WalkError(`read past the end at ${at}`);
    return this.view.getUint16(at, little);
  }
  private u32(at: number, little: boolean): number {
    if (at + 4 > this.bytes.length) throw new WalkError(`read past the end at ${at}`);
    return this.view.getUint32(at, little);
  }
  private tagAt(at: number, little: boolean): number {
    return ((this.u16(at, little) << 16) | this.u16(at + 2, little)) >>> 0;
  }

  /**
   * Walks elements from `at` until `end` (defined length) or an item delimiter (undefined length, `end`
   * = Infinity). Returns the offset after the last element (after the delimiter when there is one).
   */
  walk(at: number, end: number, syntax: Syntax, prefix: string): number {
    const seen = new Map<number, number>();
    while (at < Math.min(end, this.bytes.length)) {
      if (at + 8 > this.bytes.length) {
        // A trailing odd byte or a few zero bytes after the last element: storescu-style padding.
        if (this.bytes.subarray(at).every((b) => b === 0)) return this.bytes.length;
        throw new WalkError(`truncated element header at ${at}`);
      }
      const tag = this.tagAt(at, syntax.little);
      if (tag === ITEM_DELIM) return at + 8;
      if (tag === ITEM || tag === SEQ_DELIM) throw new WalkError(`unexpected ${tagString(tag)} at ${at}`);
      let vr = '';
      let length: number;
      let valueAt: number;
      if (syntax.explicit) {
        vr = String.fromCharCode(this.bytes[at + 4]!, this.bytes[at + 5]!);
        if (!/^[A-Z]{2}$/.test(vr)) throw new WalkError(`no VR for ${tagString(tag)} at ${at}`);
        if (longVrs.has(vr)) {
          length = this.u32(at + 8, syntax.little);
          valueAt = at + 12;
        } else {
          length = this.u16(at + 6, syntax.little);
          valueAt = at + 8;
        }
      } else {
        length = this.u32(at + 4, syntax.little);
        valueAt = at + 8;
      }
      const n = seen.get(tag) ?? 0;
      seen.set(tag, n + 1);
      const key = `${prefix}${tagString(tag)}${n > 0 ? `#${n}` : ''}`;
      if (length === UNDEFINED) {
        if (vr === 'SQ' || vr === '' || vr === 'UN') {
          // UN with undefined length holds a sequence in implicit VR little endian (PS3.5 6.2.2).
          const inner: Syntax = vr === 'UN' ? { explicit: false, little: true } : syntax;
          at = this.sequence(valueAt, Infinity, inner, key, vr || 'SQ');
        } else {
          at = this.fragments(valueAt, syntax, key, vr);
        }
        continue;
      }
      if (valueAt + length > this.bytes.length) throw new WalkError(`${key} length ${length} runs past the end`);
      if (vr === 'SQ') {
        this.sequence(valueAt, valueAt + length, syntax, key, vr);
      } else if (vr === '' && this.looksLikeSequence(valueAt, length, syntax)) {
        // Implicit VR: a defined-length sequence is recognised by its first item tag and a clean walk.
        this.sequence(valueAt, valueAt + length, syntax, key, 'SQ');
      } else {
        this.out.set(key, { kind: 'value', vr, bytes: this.bytes.subarray(valueAt, valueAt + length) });
      }
      at = valueAt + length;
    }
    if (end !== Infinity && at !== end) throw new WalkError(`${prefix || 'data set'} overruns its length (${at} != ${end})`);
    return at;
  }

  private looksLikeSequence(at: number, length: number, syntax: Syntax): boolean {
    if (length < 8 || this.tagAt(at, syntax.little) !== ITEM) return false;
    try {
      new Walker(this.bytes, new Map()).sequence(at, at + length, syntax, '', 'SQ');
      return true;
    } catch {
      return false;
    }
  }

  /** Items from `at` to `end` (or a sequence delimiter); returns the offset after the sequence. */
  sequence(at: number, end: number, syntax: Syntax, key: string, vr: string): number {
    let items = 0;
    while (at < end) {
      const tag = this.tagAt(at, syntax.little);
      const length = this.u32(at + 4, syntax.little);
      at += 8;
      if (tag === SEQ_DELIM) {
        if (end !== Infinity) throw new WalkError(`${key}: sequence delimiter in a defined-length sequence`);
        this.out.set(key, { kind: 'sequence', vr, items });
        return at;
      }
      if (tag !== ITEM) throw new WalkError(`${key}: expected an item, found ${tagString(tag)}`);
      const itemPrefix = `${key}[${items}].`;
      at = length === UNDEFINED ? this.walk(at, Infinity, syntax, itemPrefix) : this.walk(at, at + length, syntax, itemPrefix);
      items++;
    }
    if (end === Infinity) throw new WalkError(`${key}: no sequence delimiter`);
    if (at !== end) throw new WalkError(`${key}: items overrun the sequence length`);
    this.out.set(key, { kind: 'sequence', vr, items });
    return at;
  }

  /** Encapsulated pixel data: the offset table and each fragment as values. */
  private fragments(at: number, syntax: Syntax, key: string, vr: string): number {
    let count = 0;
    for (;;) {
      const tag = this.tagAt(at, syntax.little);
      const length = this.u32(at + 4, syntax.little);
      at += 8;
      if (tag === SEQ_DELIM) break;
      if (tag !== ITEM || length === UNDEFINED || at + length > this.bytes.length) throw new WalkError(`${key}: bad fragment at ${at - 8}`);
      this.out.set(`${key}{${count}}`, { kind: 'value', vr, bytes: this.bytes.subarray(at, at + length) });
      at += length;
      count++;
    }
    this.out.set(key, { kind: 'fragments', vr, count });
    return at;
  }
}

/** Walks a data set (the bytes after the meta information) into a flat map. */
export function flattenDataset(dataset: Uint8Array, transferSyntaxUid: string): FlatDataset {
  let bytes = dataset;
  if (transferSyntaxUid === TS.DeflatedLE) bytes = new Uint8Array(inflateRawSync(dataset));
  const syntax: Syntax = {
    explicit: transferSyntaxUid !== TS.ImplicitLE,
    little: transferSyntaxUid !== TS.ExplicitBE,
  };
  const out: FlatDataset = new Map();
  new Walker(bytes, out).walk(0, bytes.length, syntax, '');
  return out;
}

/** A top-level text value of a flattened data set, without its padding; undefined when absent. */
export function datasetText(flat: FlatDataset, tag: number): string | undefined {
  const v = flat.get(tagString(tag));
  if (v === undefined || v.kind !== 'value') return undefined;
  return Buffer.from(v.bytes).toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '');
}

/** Reads a Part 10 file and flattens its data set. */
export function flattenFile(bytes: Uint8Array): { part10: Part10; flat: FlatDataset } {
  const part10 = readPart10(bytes);
  return { part10, flat: flattenDataset(part10.dataset, part10.transferSyntaxUid) };
}

// ---------------------------------------------------------------------------------------------------
// Comparing

const isGroupLength = (key: string) => /\(\w{4},0000\)(#\d+)?$/.test(key);
const isTrailingPadding = (key: string) => /^\(FFFC,FFFC\)/.test(key);

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** True when `long` is `short` followed by NUL/space bytes only. */
function isPaddedVersion(short: Uint8Array, long: Uint8Array): boolean {
  if (long.length <= short.length) return false;
  if (!bytesEqual(short, long.subarray(0, short.length))) return false;
  return long.subarray(short.length).every((b) => b === 0 || b === 0x20);
}

export interface ElementComparison {
  /** Real differences (the instances are not the same). */
  differences: string[];
  /** Tolerated differences (group lengths, padding). */
  tolerated: string[];
  /** How many flat entries were compared. */
  compared: number;
}

/** An empty sequence, or an empty value. */
function isEmpty(value: FlatValue): boolean {
  return value.kind === 'sequence' ? value.items === 0 : value.kind === 'value' && value.bytes.length === 0;
}

/** `ignoreVr`: one side is implicit VR, so only tags and values can be compared. */
export function compareFlat(expected: FlatDataset, actual: FlatDataset, opts: { ignoreVr?: boolean } = {}): ElementComparison {
  const differences: string[] = [];
  const tolerated: string[] = [];
  let compared = 0;
  for (const [key, want] of expected) {
    const got = actual.get(key);
    if (isGroupLength(key) || isTrailingPadding(key)) {
      if (got === undefined) tolerated.push(`${key} only in the original`);
      else if (got.kind !== 'value' || want.kind !== 'value' || !bytesEqual(got.bytes, want.bytes)) tolerated.push(`${key} value changed`);
      continue;
    }
    compared++;
    if (got === undefined) {
      differences.push(`${key} missing`);
      continue;
    }
    if (!opts.ignoreVr && want.vr !== got.vr) differences.push(`${key} VR ${want.vr || '(implicit)'} -> ${got.vr || '(implicit)'}`);
    if (want.kind !== got.kind) {
      // Implicit VR cannot tell an empty sequence from an empty value without a dictionary.
      if (opts.ignoreVr && isEmpty(want) && isEmpty(got)) continue;
      differences.push(`${key} ${want.kind} -> ${got.kind}`);
      continue;
    }
    if (want.kind === 'sequence' && got.kind === 'sequence') {
      if (want.items !== got.items) differences.push(`${key} ${want.items} items -> ${got.items}`);
    } else if (want.kind === 'fragments' && got.kind === 'fragments') {
      if (want.count !== got.count) differences.push(`${key} ${want.count} fragments -> ${got.count}`);
    } else if (want.kind === 'value' && got.kind === 'value' && !bytesEqual(want.bytes, got.bytes)) {
      if (isPaddedVersion(want.bytes, got.bytes) || isPaddedVersion(got.bytes, want.bytes)) {
        tolerated.push(`${key} padding ${want.bytes.length} -> ${got.bytes.length} bytes`);
      } else {
        differences.push(`${key} value differs (${want.bytes.length} bytes: ${preview(want.bytes)} -> ${got.bytes.length} bytes: ${preview(got.bytes)})`);
      }
    }
  }
  for (const key of actual.keys()) {
    if (expected.has(key)) continue;
    if (isGroupLength(key) || isTrailingPadding(key)) tolerated.push(`${key} only in the copy`);
    else differences.push(`${key} added`);
  }
  return { differences, tolerated, compared };
}

function preview(bytes: Uint8Array): string {
  const head = Buffer.from(bytes.subarray(0, 24));
  const printable = head.every((b) => b >= 0x20 && b < 0x7f);
  const text = printable ? JSON.stringify(head.toString('latin1')) : head.toString('hex');
  return bytes.length > 24 ? `${text}...` : text;
}

export type Identity = 'byte-identical' | 'element-identical' | 'different';

export interface InstanceComparison {
  identity: Identity;
  /** The data set bytes are equal (meta information aside). */
  byteIdentical: boolean;
  transferSyntaxUid: string;
  /** The copy's transfer syntax when it differs (only implicit <-> explicit VR little endian is compared). */
  transcodedTo?: string;
  differences: string[];
  tolerated: string[];
  compared: number;
}

const littleEndianUncompressed: readonly string[] = [TS.ImplicitLE, TS.ExplicitLE];

/**
 * Compares a copy with the original: the data set bytes, else element by element. Both must have the same
 * transfer syntax, except implicit vs explicit VR little endian (a lossless re-encoding whose values keep
 * their bytes): those are compared element by element, VRs aside, and `transcodedTo` is set.
 */
export function compareInstances(original: Uint8Array, copy: Uint8Array): InstanceComparison {
  const a = readPart10(original);
  const b = readPart10(copy);
  const differences: string[] = [];
  const transcoded = a.transferSyntaxUid !== b.transferSyntaxUid;
  if (transcoded && !(littleEndianUncompressed.includes(a.transferSyntaxUid) && littleEndianUncompressed.includes(b.transferSyntaxUid))) {
    differences.push(`transfer syntax ${a.transferSyntaxUid} -> ${b.transferSyntaxUid}`);
    return { identity: 'different', byteIdentical: false, transferSyntaxUid: b.transferSyntaxUid, differences, tolerated: [], compared: 0 };
  }
  const byteIdentical = bytesEqual(a.dataset, b.dataset);
  if (byteIdentical) {
    return { identity: 'byte-identical', byteIdentical, transferSyntaxUid: a.transferSyntaxUid, differences, tolerated: [], compared: 0 };
  }
  let flatA: FlatDataset;
  let flatB: FlatDataset;
  try {
    flatA = flattenDataset(a.dataset, a.transferSyntaxUid);
  } catch (error) {
    differences.push(`original does not parse: ${(error as Error).message}`);
    return { identity: 'different', byteIdentical, transferSyntaxUid: a.transferSyntaxUid, differences, tolerated: [], compared: 0 };
  }
  try {
    flatB = flattenDataset(b.dataset, b.transferSyntaxUid);
  } catch (error) {
    differences.push(`copy does not parse: ${(error as Error).message}`);
    return { identity: 'different', byteIdentical, transferSyntaxUid: a.transferSyntaxUid, differences, tolerated: [], compared: 0 };
  }
  const cmp = compareFlat(flatA, flatB, { ignoreVr: transcoded });
  differences.push(...cmp.differences);
  return {
    identity: differences.length === 0 ? 'element-identical' : 'different',
    byteIdentical,
    transferSyntaxUid: a.transferSyntaxUid,
    transcodedTo: transcoded ? b.transferSyntaxUid : undefined,
    differences,
    tolerated: cmp.tolerated,
    compared: cmp.compared,
  };
}

/**
 * How a copy differs from its original, either sent as stored (byte for byte or element by element in the
 * original's syntax) or converted into another syntax by the sender: then every element must be the same,
 * VRs aside (a big endian original's binary values compared in little endian order), Pixel Data only when
 * neither is compressed, and a decoded copy may have its Image Pixel attributes (0028,xxxx) rewritten.
 * Empty when it is the original.
 */
export function copyDifferences(original: Uint8Array, copy: Uint8Array): string[] {
  const originalTs = readPart10(original).transferSyntaxUid;
  const copyTs = readPart10(copy).transferSyntaxUid;
  const cmp = compareInstances(original, copy);
  if (cmp.transferSyntaxUid === originalTs || copyTs === originalTs) return cmp.identity === 'different' ? cmp.differences : [];
  // Deflated too: its data set is inflated before it is walked, and its pixel values are native.
  const uncompressed: readonly string[] = [TS.ImplicitLE, TS.ExplicitLE, TS.ExplicitBE, TS.DeflatedLE];
  const compressed = !uncompressed.includes(originalTs);
  // Between uncompressed syntaxes the pixel values are compared too (a big endian original's swapped, as its other binary values).
  const withoutPixels = (flat: FlatDataset) => (compressed || !uncompressed.includes(copyTs) ? new Map([...flat].filter(([key]) => !key.startsWith('(7FE0,0010)'))) : flat);
  const originalFlat = flattenFile(original).flat;
  const copyFlat = flattenFile(copy).flat;
  const a = withoutPixels(originalTs === TS.ExplicitBE ? littleEndian(originalFlat) : originalFlat);
  const b = withoutPixels(copyTs === TS.ExplicitBE ? littleEndian(copyFlat) : copyFlat);
  return compareFlat(a, b, { ignoreVr: true }).differences.filter((d) => !(compressed && d.startsWith('(0028,')));
}

/** Binary values of a big endian data set with their bytes in little endian order, to compare it with one in little endian. */
function littleEndian(flat: FlatDataset): FlatDataset {
  const unit: Record<string, number> = { US: 2, SS: 2, OW: 2, AT: 2, UL: 4, SL: 4, FL: 4, OF: 4, OL: 4, FD: 8, OD: 8, SV: 8, UV: 8, OV: 8 };
  return new Map(
    [...flat].map(([key, value]) => {
      const size = unit[value.vr];
      if (value.kind !== 'value' || size === undefined) return [key, value];
      const bytes = Buffer.from(value.bytes);
      for (let i = 0; i + size <= bytes.length; i += size) bytes.subarray(i, i + size).reverse();
      return [key, { ...value, bytes }];
    }),
  );
}
