/**
 * Hand-built dataset bytes for the codec tests: sequences, items and delimiters in any byte order and
 * VR style, which the writer deliberately does not produce. Not used by production code.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tags } from '../dictionary.ts';
import { longLengthVrs } from './vr.ts';

export interface Encoding {
  implicitVr: boolean;
  littleEndian: boolean;
}

export const implicitLittle: Encoding = { implicitVr: true, littleEndian: true };
export const explicitLittle: Encoding = { implicitVr: false, littleEndian: true };
export const explicitBig: Encoding = { implicitVr: false, littleEndian: false };

export const undefinedLength = 0xffffffff;

function tagBytes(tag: number, encoding: Encoding): number[] {
  const group = tag >>> 16;
  const element = tag & 0xffff;
  return encoding.littleEndian
    ? [group & 0xff, group >>> 8, element & 0xff, element >>> 8]
    : [group >>> 8, group & 0xff, element >>> 8, element & 0xff];
}

function uint32Bytes(value: number, littleEndian: boolean): number[] {
  const bytes = [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24];
  return littleEndian ? bytes : bytes.reverse();
}

function uint16Bytes(value: number, littleEndian: boolean): number[] {
  const bytes = [value & 0xff, value >>> 8];
  return littleEndian ? bytes : bytes.reverse();
}

/** An element header followed by `value` (or nothing when `length` says undefined). */
export function element(tag: number, vr: string, value: Uint8Array | string, encoding: Encoding, length?: number): Uint8Array {
  const valueBytes = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  const valueLength = length ?? valueBytes.length;
  let header: number[];
  if (encoding.implicitVr) {
    header = [...tagBytes(tag, encoding), ...uint32Bytes(valueLength, encoding.littleEndian)];
  } else if (longLengthVrs.has(vr)) {
    header = [...tagBytes(tag, encoding), vr.charCodeAt(0), vr.charCodeAt(1), 0, 0, ...uint32Bytes(valueLength, encoding.littleEndian)];
  } else {
    header = [...tagBytes(tag, encoding), vr.charCodeAt(0), vr.charCodeAt(1), ...uint16Bytes(valueLength, encoding.littleEndian)];
  }
  return concat([Uint8Array.from(header), valueBytes]);
}

/** An item, sequence-delimiter or item-delimiter header (no VR in any syntax). */
export function marker(tag: number, length: number, encoding: Encoding): Uint8Array {
  return Uint8Array.from([...tagBytes(tag, encoding), ...uint32Bytes(length, encoding.littleEndian)]);
}

export function item(content: Uint8Array, encoding: Encoding, definedLength: boolean): Uint8Array {
  return definedLength
    ? concat([marker(0xfffee000, content.length, encoding), content])
    : concat([marker(0xfffee000, undefinedLength, encoding), content, marker(0xfffee00d, 0, encoding)]);
}

export function undefinedLengthSequence(tag: number, items: Uint8Array[], encoding: Encoding, vr = 'SQ'): Uint8Array {
  return concat([element(tag, vr, new Uint8Array(0), encoding, undefinedLength), ...items, marker(0xfffee0dd, 0, encoding)]);
}

export function uint16Value(values: number[], littleEndian: boolean): Uint8Array {
  return Uint8Array.from(values.flatMap((value) => uint16Bytes(value, littleEndian)));
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Deterministic PRNG (mulberry32) so random chunk splits are reproducible. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The shared read-only corpus (GPL files: read in place, never copied); PACS_MESH_CORPUS_DIR overrides it. */
export const corpusDirectory = process.env['PACS_MESH_CORPUS_DIR'] ?? new URL('../../../../shared/dicom-corpus/', import.meta.url).pathname;

/**
 * Why a test reading the corpus is skipped (`{ skip: corpusSkip }`), or false when it is there: a clone away from
 * ../shared ran npm test with four such tests failing on ENOENT. `.ci/run` refuses to start without the corpus, so
 * CI never skips them.
 */
export const corpusSkip: string | false = existsSync(join(corpusDirectory, 'public')) ? false : `the DICOM corpus is not at ${corpusDirectory} (PACS_MESH_CORPUS_DIR names another place)`;

export interface ImageOptions {
  rows?: number;
  columns?: number;
  samplesPerPixel?: number;
  bitsAllocated?: number;
  frames?: string;
}

export function imageHeader(encoding: Encoding, options: ImageOptions = {}): Uint8Array {
  const us = (tag: number, value: number) => element(tag, 'US', uint16Value([value], encoding.littleEndian), encoding);
  return concat([
    element(Tags.SOPInstanceUID, 'UI', '1.2.3.4\0', encoding),
    us(Tags.SamplesPerPixel, options.samplesPerPixel ?? 1),
    ...(options.frames === undefined ? [] : [element(Tags.NumberOfFrames, 'IS', options.frames.length % 2 === 0 ? options.frames : `${options.frames} `, encoding)]),
    us(Tags.Rows, options.rows ?? 2),
    us(Tags.Columns, options.columns ?? 3),
    us(Tags.BitsAllocated, options.bitsAllocated ?? 8),
  ]);
}

/** Encapsulated Pixel Data: a Basic Offset Table item, then the fragments, then the delimiter. */
export function encapsulated(offsets: number[], fragments: Uint8Array[]): Uint8Array {
  const table = new Uint8Array(offsets.length * 4);
  offsets.forEach((offset, index) => new DataView(table.buffer).setUint32(index * 4, offset, true));
  return concat([
    element(Tags.PixelData, 'OB', new Uint8Array(0), explicitLittle, undefinedLength),
    marker(0xfffee000, table.length, explicitLittle),
    table,
    ...fragments.flatMap((fragment) => [marker(0xfffee000, fragment.length, explicitLittle), fragment]),
    marker(0xfffee0dd, 0, explicitLittle),
  ]);
}
