/**
 * Transfer syntax conversion of one stored instance, for C-GET / C-MOVE receivers that do not accept
 * the syntax the instance was stored in. The peer runs it in a worker thread (transcode-pool.ts), where a
 * codec busy with a large frame holds no association and no heartbeat.
 *
 * Input and output are dataset bytes WITHOUT the Part 10 meta header.
 *
 * What works (see `canTranscode`):
 * - identity (from === to): the input is returned as is, byte for byte;
 * - uncompressed <-> uncompressed: implicit VR LE, explicit VR LE, explicit VR BE, deflated explicit VR LE.
 *   Done by the small re-encoder in this file, NOT by dcmjs: dcmjs' parse/naturalize path drops private
 *   elements and rewrites Specific Character Set (STACK.md trap 7). Here every element is kept in source
 *   order and every value keeps its original bytes (text is never decoded, so the character set bytes are
 *   untouched); only the element headers change, and binary values are byte-swapped for big endian.
 *   Implicit -> explicit takes each VR from the dcmjs data dictionary (the copy dcmjs-dimse loads, no own
 *   dependency); private and unknown elements become 'UN' (PS3.5 6.2.2), private creators 'LO', group
 *   lengths 'UL'; the ambiguous "US or SS" follows Pixel Representation, Pixel Data is OB for Bits
 *   Allocated <= 8 and OW otherwise, other "OB or OW" / "US or OW" are OW; a value longer than 65535 bytes
 *   for a VR with a 16-bit length field, or whose length is not a multiple of the VR's word size, becomes
 *   'UN'. An element of undefined length in implicit VR is a sequence (written as SQ); an explicit 'UN' of
 *   undefined length stays 'UN' with its items in implicit VR LE, as PS3.5 requires. Group length elements
 *   (gggg,0000) are kept; recomputed when the header sizes change (explicit <-> implicit) or when the
 *   transcoder rewrote an element of their group (decoded or compressed Pixel Data, a new Photometric
 *   Interpretation or Planar Configuration), otherwise copied (a wrong value in the source stays wrong, but
 *   explicit LE/BE/deflated round trips stay byte-exact); sequence/item lengths are recomputed (defined stays defined,
 *   undefined stays undefined).
 * - compressed -> uncompressed (any of the four above): JPEG baseline (.50), JPEG extended (.51), JPEG
 *   lossless with any predictor (.57) and SV1 (.70),
 *   JPEG-LS lossless/near-lossless (.80/.81), JPEG 2000 lossless/lossy (.90/.91), RLE (1.2.840.10008.1.2.5),
 *   HTJ2K (.201/.202/.203), JPEG XL (.110/.112). Pixel data is decoded frame by frame with dcmjs-dimse `Transcoding` over the
 *   dcmjs-codecs WASM, on a throw-away dataset holding only the Image Pixel attributes and one frame; the
 *   decoded frames and the attributes the decoder changed (Photometric Interpretation, e.g. YBR_FULL_422 ->
 *   RGB, and Planar Configuration) are then spliced into the re-encoded original, so private elements and
 *   the character set survive here too. Encapsulated Pixel Data inside items (an Icon Image Sequence in
 *   the instance's syntax) is decoded the same way with its item's attributes. The Extended Offset Table (7FE0,0001/0002), meaningful only for
 *   encapsulated data, is dropped. Exception: JPEG baseline labelled RGB (compressed without colour
 *   transform) is decoded by the dcmjs-codecs JPEG decoder directly without YCbCr conversion, because
 *   dcmjs-dimse's codec always converts for baseline and garbles such images; JPEG extended and .57, which
 *   dcmjs-dimse refuses, go to that decoder directly too (same pixels as dcmdjpeg); the corpus JPEG baseline and
 *   RLE files decode byte-identical to DCMTK's dcmdjpeg/dcmdrle. Lossy Image Compression attributes are left as
 *   they are (a decoded lossy image still is lossy-derived), but a JPEG baseline or extended source that does not
 *   say 01 gets it, as dcmdjpeg does (hunt 165).
 * - uncompressed or decodable -> lossless compressed: RLE (.5), JPEG lossless SV1 (.70), JPEG-LS lossless
 *   (.80), and for one sample per pixel JPEG 2000 lossless (.90) and HTJ2K lossless (.201), frame by frame
 *   through dcmjs-dimse `Transcoding`; every frame is decoded back and compared with its source before it
 *   is used (`encodePixelData`), and the output decodes with DCMTK's dcmdrle/dcmdjpeg/dcmdjpls to the same
 *   pixels. This is what lets a C-GET requestor that lists JPEG Lossless first (getscu +xs) receive the
 *   instances stored otherwise (helper 47). Only 8/16-bit MONOCHROME1/2, PALETTE COLOR and RGB (by plane: interleaved first).
 * - NOT supported: encoding into a lossy syntax (JPEG baseline/extended, lossy JPEG-LS/JPEG 2000), JPEG XL
 *   JPEG recompression (.111), MPEG/HEVC video, and compressed
 *   sources with Bits Allocated other than 8 or 16 (dcmjs-codecs limit; fails with ERR_TRANSCODE_FAILED).
 *
 * Target choice (`transcodeDataset`): if the stored syntax is acceptable the bytes are returned untouched.
 * Otherwise the receiver's list is walked in its order and the first syntax we can produce wins, with two
 * rules on top: a target we only decode into beats one we would compress into, and a lossless target
 * always beats a lossy one, whatever the order; a lossy target is taken only when it is the only reachable
 * option. As this module never encodes lossily, every reachable target is lossless today (decoding a lossy
 * source does not lose more); the rule is there so that a lossy encoder added later cannot silently turn a
 * lossless original into a lossy copy.
 *
 * Memory (per call, proportional to the instance, nothing kept between calls except the codec module):
 * - uncompressed: input + output (+ the inflated/deflated copy for deflated syntaxes, + swapped copies of
 *   binary values when the byte order changes): about 2-3x the dataset size at peak. Values that do not
 *   change are referenced, not copied, until the one final concatenation.
 * - compressed: input + decoded frames + final output, about 2x the decoded pixel data plus the input.
 *   The WASM heap holds one frame (encoded + decoded) at a time; each frame's codec context is released by
 *   dcmjs-codecs after the frame. A WebAssembly memory never shrinks, so the module is dropped (to be
 *   re-created lazily on the next compressed call) when its memory exceeds WASM_RESET_BYTES, and always
 *   after a decoder error (an exception thrown through WASM frames may leak native allocations and leaves
 *   the native stack pointer unrestored). Note: the codec module is a process-wide singleton shared with
 *   dcmjs-dimse; this module owns its life cycle, other code should transcode through here.
 *
 * Errors: never throws anything but TranscodeError ('ERR_TRANSCODE_UNSUPPORTED' when no acceptable syntax
 * can be produced from the stored one, 'ERR_TRANSCODE_FAILED' for malformed or undecodable data,
 * 'ERR_TRANSCODE_CANCELLED' once the caller's signal is aborted).
 */
import { createRequire } from 'node:module';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import type DcmjsDimse from 'dcmjs-dimse';
import { TranscodeError, transcodeCancelled } from './transcode-error.ts';
import { chooseTarget, DEFLATED_LE, ENCODABLE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, MONOCHROME_ONLY_TARGETS, UNCOMPRESSED } from './transcode-targets.ts';

export { TranscodeError } from './transcode-error.ts';
export { canTranscode, needsEncoding } from './transcode-targets.ts';

// Required when this module is first used (it is imported on the first retrieve that transcodes), not
// imported: a bundler hoists static imports of external packages to the start of the bundle, and loading
// dcmjs-dimse with dcmjs (dictionaries built at load) cost every peer start ~40-60 ms.
const dcmjsDimse = createRequire(import.meta.url)('dcmjs-dimse') as typeof DcmjsDimse;
const { Dataset, Transcoding } = dcmjsDimse;


/**
 * `signal`: when aborted, the work stops at the next frame with ERR_TRANSCODE_CANCELLED (its requestor is
 * gone: the codec's time goes to the others).
 */
export async function transcodeDataset(
  datasetBytes: Uint8Array,
  fromTransferSyntaxUid: string,
  acceptableTransferSyntaxUids: readonly string[],
  options: { signal?: AbortSignal; renderedJpegQuality?: number } = {},
): Promise<{ bytes: Uint8Array; transferSyntaxUid: string }> {
  const { signal } = options;
  if (options.renderedJpegQuality !== undefined) return encodeRenderedJpeg(datasetBytes, fromTransferSyntaxUid, options.renderedJpegQuality, signal);
  if (!(datasetBytes instanceof Uint8Array)) {
    throw new TranscodeError('ERR_TRANSCODE_FAILED', 'datasetBytes must be a Uint8Array');
  }
  const from = String(fromTransferSyntaxUid).replace(/\0+$/, '').trim();
  let acceptable: string[];
  try {
    acceptable = Array.from(acceptableTransferSyntaxUids, (t) => String(t).replace(/\0+$/, '').trim());
  } catch {
    throw new TranscodeError('ERR_TRANSCODE_UNSUPPORTED', 'acceptableTransferSyntaxUids is not a list');
  }
  if (acceptable.includes(from)) return { bytes: datasetBytes, transferSyntaxUid: from };
  const target = chooseTarget(from, acceptable);
  if (target === undefined) {
    throw new TranscodeError(
      'ERR_TRANSCODE_UNSUPPORTED',
      `cannot transcode ${from} to any of [${acceptable.join(', ')}]`,
    );
  }

  if (UNCOMPRESSED.has(from)) {
    let elements: El[];
    try {
      elements = parseDataset(inflateIfNeeded(datasetBytes, from), encodingOf(from));
    } catch (err) {
      throw asTranscodeError(err);
    }
    if (ENCODABLE.has(target)) await encodePixelData(elements, target, signal);
    try {
      return { bytes: finish(elements, target), transferSyntaxUid: target };
    } catch (err) {
      throw asTranscodeError(err);
    }
  }

  // Compressed source (all of them are explicit VR little endian outside the pixel data).
  let elements: El[];
  try {
    elements = parseDataset(datasetBytes, { explicit: true, littleEndian: true });
  } catch (err) {
    throw asTranscodeError(err);
  }
  const pixel = elements.find((e) => e.tag === PIXEL_DATA);
  if (pixel?.fragments) {
    await decodePixelData(elements, pixel, from, signal);
    // PS3.3 C.7.6.1.1.5: an image once lossy compressed says so, decoded or not; without it a JPEG baseline
    // copy sent decoded (or in JPEG Lossless) read as an original. dcmdjpeg adds it too (hunt 165).
    const lossyMark = elements.find((e) => e.tag === LOSSY_IMAGE_COMPRESSION);
    if (ALWAYS_LOSSY_PROCESSES.has(from) && textValue(lossyMark)?.trim() !== '01') setElement(elements, LOSSY_IMAGE_COMPRESSION, 'CS', csValue('01'));
  } else if (pixel) {
    throw new TranscodeError('ERR_TRANSCODE_FAILED', `pixel data of a ${from} dataset is not encapsulated`);
  }
  await decodeNestedPixelData(elements, from, signal);
  if (ENCODABLE.has(target)) await encodePixelData(elements, target, signal);
  try {
    return { bytes: finish(elements, target), transferSyntaxUid: target };
  } catch (err) {
    throw asTranscodeError(err);
  }
}

function asTranscodeError(err: unknown): TranscodeError {
  if (err instanceof TranscodeError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TranscodeError('ERR_TRANSCODE_FAILED', `transcoding failed: ${message}`, { cause: err });
}

function fail(message: string): never {
  throw new TranscodeError('ERR_TRANSCODE_FAILED', message);
}

interface Encoding {
  explicit: boolean;
  littleEndian: boolean;
  /** A compressed target: Pixel Data may be encapsulated (explicit VR LE everywhere else). */
  encapsulated?: boolean;
}

function encodingOf(ts: string): Encoding {
  if (ts === IMPLICIT_LE) return { explicit: false, littleEndian: true };
  if (ts === EXPLICIT_BE) return { explicit: true, littleEndian: false };
  return { explicit: true, littleEndian: true };
}

/** Upper bound for an inflated deflated dataset (guards against deflate bombs). */
const MAX_INFLATED_BYTES = 2 ** 31 - 1;

function inflateIfNeeded(bytes: Uint8Array, ts: string): Uint8Array {
  if (ts !== DEFLATED_LE) return bytes;
  try {
    return inflateRawSync(bytes, { maxOutputLength: MAX_INFLATED_BYTES });
  } catch (err) {
    throw new TranscodeError('ERR_TRANSCODE_FAILED', `cannot inflate deflated dataset: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function finish(elements: El[], target: string): Uint8Array {
  const enc: Encoding = { ...encodingOf(target), encapsulated: ENCODABLE.has(target) || target === JPEG_BASELINE };
  const out = new Sink();
  writeDataset(elements, enc, out);
  const bytes = out.concat();
  if (target !== DEFLATED_LE) return bytes;
  const deflated = deflateRawSync(bytes);
  // PS3.5 A.5: an odd-length deflated stream gets one trailing NUL (P-DATA values must be even; DCMTK aborts).
  if (deflated.byteLength % 2 === 0) return new Uint8Array(deflated.buffer, deflated.byteOffset, deflated.byteLength);
  const padded = new Uint8Array(deflated.byteLength + 1);
  padded.set(deflated);
  return padded;
}

// ---------------------------------------------------------------------------------------------------
// Parsed form: a tree whose leaves reference the source bytes.

interface Item {
  elements: El[];
  undefinedLength: boolean;
}

interface El {
  tag: number;
  /** VR as read (explicit source) or null (implicit source: resolved when writing). */
  vr: string | null;
  /** Leaf value in the source byte order. */
  value?: Uint8Array;
  littleEndian: boolean;
  /** Sequence items (SQ, or a sequence-like element of undefined length). */
  items?: Item[];
  /** Items of an explicit 'UN' of undefined length: encoded in implicit VR LE. */
  itemsImplicit?: boolean;
  undefinedLength?: boolean;
  /** Encapsulated pixel data: the items in order (first one is the Basic Offset Table). */
  fragments?: Uint8Array[];
  /** Made or replaced by the transcoder (decoded/encoded Pixel Data, a new Photometric Interpretation...): its group's length is recomputed. */
  rewritten?: boolean;
}

const PIXEL_DATA = 0x7fe00010;
const ITEM = 0xfffee000;
const ITEM_DELIM = 0xfffee00d;
const SEQ_DELIM = 0xfffee0dd;
const UNDEFINED = 0xffffffff;

const LONG_VRS: ReadonlySet<string> = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const KNOWN_VRS: ReadonlySet<string> = new Set([
  ...LONG_VRS,
  'AE', 'AS', 'AT', 'CS', 'DA', 'DS', 'DT', 'FD', 'FL', 'IS', 'LO', 'LT', 'PN', 'SH', 'SL', 'SS', 'ST', 'TM', 'UI', 'UL', 'US',
]);
/** Byte-swap unit per VR (VRs not listed are byte strings). */
const WORD_SIZE: Readonly<Record<string, number>> = {
  AT: 2, US: 2, SS: 2, OW: 2,
  UL: 4, SL: 4, FL: 4, OF: 4, OL: 4,
  FD: 8, OD: 8, OV: 8, SV: 8, UV: 8,
};

/** Max nesting of sequences (a malicious dataset must not overflow the stack). */
const MAX_DEPTH = 64;

class Reader {
  readonly view: DataView;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  need(pos: number, n: number, end: number): void {
    if (pos + n > end) fail(`truncated dataset at offset ${pos} (need ${n} bytes, ${end - pos} left)`);
  }
  u16(pos: number, le: boolean): number {
    return this.view.getUint16(pos, le);
  }
  u32(pos: number, le: boolean): number {
    return this.view.getUint32(pos, le);
  }
  tag(pos: number, le: boolean): number {
    return ((this.u16(pos, le) << 16) | this.u16(pos + 2, le)) >>> 0;
  }
}

function parseDataset(bytes: Uint8Array, enc: Encoding): El[] {
  const r = new Reader(bytes);
  const { elements, pos } = readElements(r, 0, bytes.length, enc, false, 0);
  if (pos !== bytes.length) fail(`unexpected delimiter at offset ${pos}`);
  return elements;
}

/**
 * Reads elements from pos until end, or until an item delimiter when `untilItemDelim` (returns the
 * position after it).
 */
function readElements(
  r: Reader,
  start: number,
  end: number,
  enc: Encoding,
  untilItemDelim: boolean,
  depth: number,
): { elements: El[]; pos: number } {
  if (depth > MAX_DEPTH) fail('sequences nested too deeply');
  const le = enc.littleEndian;
  const elements: El[] = [];
  let pos = start;
  while (pos < end) {
    r.need(pos, 8, end);
    const tag = r.tag(pos, le);
    if (depth === 0 && (tag === ITEM_DELIM || tag === SEQ_DELIM) && r.u32(pos + 4, le) === 0) {
      // A stray delimiter at top level (seen from some converters) carries nothing: the store's reader
      // accepts it, so it is dropped here too (an instance stored with one could not be transcoded).
      pos += 8;
      continue;
    }
    if (tag === ITEM_DELIM) {
      if (!untilItemDelim) fail(`item delimiter outside an item at offset ${pos}`);
      return { elements, pos: pos + 8 };
    }
    if (tag === ITEM || tag === SEQ_DELIM) fail(`unexpected item tag at offset ${pos}`);
    let vr: string | null = null;
    let length: number;
    if (enc.explicit) {
      vr = String.fromCharCode(r.bytes[pos + 4]!, r.bytes[pos + 5]!);
      if (!KNOWN_VRS.has(vr)) {
        // A VR this code does not know (a newer standard): PS3.5 6.2 says to read it like UN.
        if (!/^[A-Z]{2}$/.test(vr)) fail(`invalid VR ${JSON.stringify(vr)} at offset ${pos}`);
        vr = 'UN';
      }
      if (LONG_VRS.has(vr)) {
        r.need(pos, 12, end);
        length = r.u32(pos + 8, le);
        pos += 12;
      } else {
        length = r.u16(pos + 6, le);
        pos += 8;
      }
    } else {
      length = r.u32(pos + 4, le);
      pos += 8;
    }
    const el: El = { tag, vr, littleEndian: le };
    if (length === UNDEFINED) {
      el.undefinedLength = true;
      if (tag === PIXEL_DATA && (vr === 'OB' || vr === 'OW')) {
        pos = readFragments(r, pos, end, le, el);
      } else if (vr === null || vr === 'SQ' || vr === 'UN') {
        const itemEnc = vr === 'UN' ? { explicit: false, littleEndian: true } : enc;
        el.itemsImplicit = vr === 'UN';
        const res = readItems(r, pos, end, itemEnc, true, depth);
        el.items = res.items;
        pos = res.pos;
      } else {
        fail(`undefined length for VR ${vr} at offset ${pos}`);
      }
    } else {
      r.need(pos, length, end);
      const isSeq = vr === 'SQ' || (vr === null && dictionaryVr(tag) === 'SQ');
      if (isSeq && vr === null) {
        // Implicit VR: trust the dictionary only if the value really parses as items.
        try {
          el.items = readItems(r, pos, pos + length, enc, false, depth).items;
        } catch {
          el.vr = 'UN';
          el.value = r.bytes.subarray(pos, pos + length);
        }
      } else if (isSeq) {
        el.items = readItems(r, pos, pos + length, enc, false, depth).items;
      } else {
        el.value = r.bytes.subarray(pos, pos + length);
      }
      pos += length;
    }
    elements.push(el);
  }
  if (untilItemDelim) fail('missing item delimiter');
  return { elements, pos };
}

function readItems(
  r: Reader,
  start: number,
  end: number,
  enc: Encoding,
  untilSeqDelim: boolean,
  depth: number,
): { items: Item[]; pos: number } {
  const le = enc.littleEndian;
  const items: Item[] = [];
  let pos = start;
  while (pos < end) {
    r.need(pos, 8, end);
    const tag = r.tag(pos, le);
    const length = r.u32(pos + 4, le);
    pos += 8;
    if (tag === SEQ_DELIM) {
      if (!untilSeqDelim) fail(`sequence delimiter in a defined-length sequence at offset ${pos - 8}`);
      return { items, pos };
    }
    if (tag !== ITEM) fail(`expected an item at offset ${pos - 8}`);
    if (length === UNDEFINED) {
      const res = readElements(r, pos, end, enc, true, depth + 1);
      items.push({ elements: res.elements, undefinedLength: true });
      pos = res.pos;
    } else {
      r.need(pos, length, end);
      const res = readElements(r, pos, pos + length, enc, false, depth + 1);
      items.push({ elements: res.elements, undefinedLength: false });
      pos += length;
    }
  }
  if (untilSeqDelim) fail('missing sequence delimiter');
  return { items, pos };
}

function readFragments(r: Reader, start: number, end: number, le: boolean, el: El): number {
  const fragments: Uint8Array[] = [];
  let pos = start;
  for (;;) {
    r.need(pos, 8, end);
    const tag = r.tag(pos, le);
    const length = r.u32(pos + 4, le);
    pos += 8;
    if (tag === SEQ_DELIM) break;
    if (tag !== ITEM || length === UNDEFINED) fail(`bad pixel data fragment at offset ${pos - 8}`);
    r.need(pos, length, end);
    fragments.push(r.bytes.subarray(pos, pos + length));
    pos += length;
  }
  el.fragments = fragments;
  return pos;
}

// ---------------------------------------------------------------------------------------------------
// Data dictionary (for implicit -> explicit): the dcmjs copy that dcmjs-dimse itself loads.

interface DictEntry {
  vr?: string;
}
let dictionary: Record<string, DictEntry | undefined> | undefined;

function loadDictionary(): Record<string, DictEntry | undefined> {
  if (dictionary) return dictionary;
  const req = createRequire(import.meta.url);
  const fromDimse = createRequire(req.resolve('dcmjs-dimse'));
  const dcmjs = fromDimse('dcmjs') as { data: { DicomMetaDictionary: { dictionary: Record<string, DictEntry | undefined> } } };
  dictionary = dcmjs.data.DicomMetaDictionary.dictionary;
  return dictionary;
}

function dictionaryVr(tag: number): string | undefined {
  const group = tag >>> 16;
  const elem = tag & 0xffff;
  if (elem === 0) return 'UL';
  if (group & 1) return elem >= 0x10 && elem <= 0xff ? 'LO' : undefined;
  const hex = (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
  try {
    return loadDictionary()[hex]?.vr;
  } catch {
    return undefined;
  }
}

interface LevelContext {
  bitsAllocated?: number;
  pixelRepresentation?: number;
}

/** VR to write in an explicit syntax for an element read from implicit VR (see module comment). */
function resolveVr(el: El, ctx: LevelContext): string {
  if (el.vr !== null) return el.vr;
  if (el.items) return 'SQ';
  const length = el.value?.length ?? 0;
  let vr = dictionaryVr(el.tag) ?? 'UN';
  switch (vr) {
    case 'ox':
      vr = el.tag === PIXEL_DATA && (ctx.bitsAllocated ?? 16) <= 8 ? 'OB' : 'OW';
      break;
    case 'xs':
      vr = ctx.pixelRepresentation === 1 ? 'SS' : 'US';
      break;
    case 'lt':
      vr = 'OW';
      break;
    case 'up':
      vr = 'UL';
      break;
    case 'SQ': // an SQ with a value that did not parse as items would have failed earlier
      break;
    default:
      if (!KNOWN_VRS.has(vr)) vr = 'UN';
  }
  if (!LONG_VRS.has(vr) && length > 0xffff) vr = 'UN';
  const word = WORD_SIZE[vr];
  if (word !== undefined && length % word !== 0) vr = 'UN';
  return vr;
}

// ---------------------------------------------------------------------------------------------------
// Writer

class Sink {
  readonly parts: Uint8Array[] = [];
  size = 0;
  push(part: Uint8Array): void {
    if (part.length === 0) return;
    this.parts.push(part);
    this.size += part.length;
  }
  append(other: Sink): void {
    for (const p of other.parts) this.parts.push(p);
    this.size += other.size;
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.size);
    let off = 0;
    for (const p of this.parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }
}

function header(tag: number, vr: string | null, length: number, enc: Encoding): Uint8Array {
  const le = enc.littleEndian;
  const long = vr === null || LONG_VRS.has(vr);
  const size = vr === null ? 8 : long ? 12 : 8;
  const buf = new Uint8Array(size);
  const v = new DataView(buf.buffer);
  v.setUint16(0, tag >>> 16, le);
  v.setUint16(2, tag & 0xffff, le);
  if (vr === null) {
    v.setUint32(4, length, le);
  } else {
    buf[4] = vr.charCodeAt(0);
    buf[5] = vr.charCodeAt(1);
    if (long) v.setUint32(8, length, le);
    else v.setUint16(6, length, le);
  }
  return buf;
}

function swapped(value: Uint8Array, word: number): Uint8Array {
  const out = new Uint8Array(value.length);
  const n = value.length - (value.length % word);
  for (let i = 0; i < n; i += word) {
    for (let j = 0; j < word; j++) out[i + j] = value[i + word - 1 - j]!;
  }
  out.set(value.subarray(n), n);
  return out;
}

function readUint(value: Uint8Array | undefined, littleEndian: boolean): number | undefined {
  if (!value || value.length < 2) return undefined;
  return new DataView(value.buffer, value.byteOffset, value.byteLength).getUint16(0, littleEndian);
}

function writeDataset(elements: El[], enc: Encoding, out: Sink, depth = 0): void {
  const ctx: LevelContext = {};
  const groupLengthFixups: { group: number; buf: Uint8Array }[] = [];
  const groupSizes = new Map<number, number>();
  // Groups where the transcoder made or replaced an element: their stored lengths no longer hold.
  const rewrittenGroups = new Set<number>();
  for (const el of elements) if (el.rewritten) rewrittenGroups.add(el.tag >>> 16);
  for (const el of elements) {
    if (el.tag === 0x00280100) ctx.bitsAllocated = readUint(el.value, el.littleEndian);
    if (el.tag === 0x00280103) ctx.pixelRepresentation = readUint(el.value, el.littleEndian);
    const sink = new Sink();
    const vr = enc.explicit ? resolveVr(el, ctx) : null;
    const group = el.tag >>> 16;
    if ((el.tag & 0xffff) === 0 && el.value?.length === 4 && !el.items && ((el.vr !== null) !== enc.explicit || rewrittenGroups.has(group))) {
      // Group length, and the header sizes change (explicit <-> implicit) or the transcoder rewrote an
      // element of the group (decoded or compressed Pixel Data, a new Photometric Interpretation, PS3.5
      // 7.2): recomputed below once the group's encoded size is known. Otherwise the value is kept as it
      // was (swapped if needed), so explicit LE <-> BE <-> deflated stays byte-exact.
      const buf = new Uint8Array(4);
      groupLengthFixups.push({ group, buf });
      sink.push(header(el.tag, vr, 4, enc));
      sink.push(buf);
      out.append(sink);
      continue;
    }
    if (el.fragments && !enc.encapsulated) fail('encapsulated pixel data cannot be written in an uncompressed syntax');
    if (el.fragments) {
      sink.push(header(el.tag, 'OB', UNDEFINED, enc));
      for (const fragment of el.fragments) {
        sink.push(header(ITEM, null, fragment.length, enc));
        sink.push(fragment);
      }
      sink.push(header(SEQ_DELIM, null, 0, enc));
    } else if (el.items) {
      writeSequence(el, vr, enc, sink, depth);
    } else {
      let value = el.value ?? new Uint8Array(0);
      const sourceVr = el.vr ?? vr;
      if (el.littleEndian !== enc.littleEndian && sourceVr !== null) {
        const word = WORD_SIZE[sourceVr];
        if (word !== undefined) value = swapped(value, word);
      }
      sink.push(header(el.tag, vr, value.length, enc));
      sink.push(value);
    }
    groupSizes.set(group, (groupSizes.get(group) ?? 0) + sink.size);
    out.append(sink);
  }
  for (const { group, buf } of groupLengthFixups) {
    new DataView(buf.buffer).setUint32(0, groupSizes.get(group) ?? 0, enc.littleEndian);
  }
}

function writeSequence(el: El, vr: string | null, enc: Encoding, out: Sink, depth: number): void {
  // An explicit 'UN' of undefined length keeps its items in implicit VR LE (PS3.5 6.2.2), in any syntax.
  const keepUn = el.itemsImplicit === true && (vr === 'UN' || vr === null);
  const itemEnc: Encoding = keepUn ? { explicit: false, littleEndian: true } : enc;
  const body = new Sink();
  for (const item of el.items ?? []) {
    const itemBody = new Sink();
    writeDataset(item.elements, itemEnc, itemBody, depth + 1);
    if (item.undefinedLength) {
      body.push(header(ITEM, null, UNDEFINED, itemEnc));
      body.append(itemBody);
      body.push(header(ITEM_DELIM, null, 0, itemEnc));
    } else {
      body.push(header(ITEM, null, itemBody.size, itemEnc));
      body.append(itemBody);
    }
  }
  const outVr = vr === null ? null : keepUn ? 'UN' : 'SQ';
  if (el.undefinedLength) {
    out.push(header(el.tag, outVr, UNDEFINED, enc));
    out.append(body);
    out.push(header(SEQ_DELIM, null, 0, itemEnc));
  } else {
    out.push(header(el.tag, outVr, body.size, enc));
    out.append(body);
  }
}

// ---------------------------------------------------------------------------------------------------
// Compressed pixel data

/** Drop and re-create the WASM module when its memory grows beyond this (WASM memory never shrinks). */
const WASM_RESET_BYTES = 512 * 1024 * 1024;

let codecsReady: Promise<void> | undefined;

function ensureCodecs(): Promise<void> {
  if (codecsReady && Transcoding.isInitialized()) return codecsReady;
  if (!codecsReady || !Transcoding.isInitialized()) {
    const attempt = (async () => {
      const wasm = createRequire(import.meta.url).resolve('dcmjs-codecs/build/dcmjs-native-codecs.wasm');
      await Transcoding.initializeAsync({ webAssemblyModulePathOrUrl: wasm });
    })();
    codecsReady = attempt;
    attempt.catch(() => {
      if (codecsReady === attempt) codecsReady = undefined;
    });
  }
  return codecsReady;
}

/**
 * Runs `work` on the loaded codec module (synchronously, so no other call can touch the module meanwhile),
 * with dcmjs-dimse's logger quieted: it logs every transcode at INFO level (its logger starts with
 * everything enabled); the application's level is restored after. The module is dropped after a failure
 * or once it has grown past WASM_RESET_BYTES. Any error comes out as a TranscodeError.
 */
function withCodecs(work: () => void): void {
  const log = dcmjsDimse.log;
  const savedLevel = log.getLevel();
  if (savedLevel < log.levels.WARN) log.setLevel(log.levels.WARN, false);
  let failed = false;
  try {
    work();
  } catch (err) {
    failed = true;
    throw asTranscodeError(err);
  } finally {
    if (log.getLevel() !== savedLevel) log.setLevel(savedLevel, false);
    if (failed || wasmMemoryBytes() > WASM_RESET_BYTES) releaseCodecs();
  }
}

/**
 * `work` for each of `steps` (frames, or parts of them), on the loaded codec module, with the event loop
 * given a turn between steps: a large multi-frame instance decoded or compressed in one go held the peer's
 * heartbeats and every other association for seconds.
 */
async function eachFrameWithCodecs(steps: number, signal: AbortSignal | undefined, work: (index: number) => void): Promise<void> {
  for (let i = 0; i < steps; i++) {
    if (i > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    if (signal?.aborted) throw transcodeCancelled();
    await loadCodecs();
    withCodecs(() => work(i));
  }
}

/** The Image Pixel attributes of one frame, for a throw-away dcmjs data set around it. */
function onePixelFrame(attrs: PixelAttrs, planarConfiguration: number | undefined): Record<string, unknown> {
  const input: Record<string, unknown> = {
    Rows: attrs.rows,
    Columns: attrs.columns,
    BitsAllocated: attrs.bitsAllocated,
    BitsStored: attrs.bitsStored,
    HighBit: attrs.highBit,
    PixelRepresentation: attrs.pixelRepresentation,
    SamplesPerPixel: attrs.samplesPerPixel,
    PhotometricInterpretation: attrs.photometric,
    NumberOfFrames: 1,
  };
  if (planarConfiguration !== undefined) input.PlanarConfiguration = planarConfiguration;
  return input;
}

/** The codec module, loaded; from the caller's next synchronous step on, no other call can release it. */
async function loadCodecs(): Promise<void> {
  try {
    await ensureCodecs();
    // Another call may have released the module between our await and now: initialise again if so.
    while (!Transcoding.isInitialized()) await ensureCodecs();
  } catch (err) {
    throw new TranscodeError('ERR_TRANSCODE_FAILED', `cannot load the codec WASM: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** Drops the codec module and its WebAssembly memory (re-created on the next compressed call). */
export function releaseCodecs(): void {
  codecsReady = undefined;
  try {
    Transcoding.release();
  } catch {
    /* already released */
  }
}

function wasmMemoryBytes(): number {
  try {
    const req = createRequire(createRequire(import.meta.url).resolve('dcmjs-dimse'));
    const native = (req('dcmjs-codecs') as { NativeCodecs?: { wasmApi?: { wasmMemory?: WebAssembly.Memory } } })
      .NativeCodecs;
    return native?.wasmApi?.wasmMemory?.buffer.byteLength ?? 0;
  } catch {
    return 0;
  }
}

interface PixelAttrs {
  rows: number;
  columns: number;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  pixelRepresentation: number;
  samplesPerPixel: number;
  planarConfiguration: number | undefined;
  photometric: string;
  frames: number;
}

function textValue(el: El | undefined): string | undefined {
  if (!el?.value) return undefined;
  return Buffer.from(el.value.buffer, el.value.byteOffset, el.value.byteLength)
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .trim();
}

function pixelAttrs(elements: El[]): PixelAttrs {
  const get = (tag: number) => elements.find((e) => e.tag === tag);
  const us = (tag: number, name: string, dflt?: number): number => {
    const el = get(tag);
    const v = readUint(el?.value, el?.littleEndian ?? true);
    if (v === undefined) {
      if (dflt !== undefined) return dflt;
      fail(`missing ${name}`);
    }
    return v;
  };
  const bitsAllocated = us(0x00280100, 'BitsAllocated');
  const bitsStored = us(0x00280101, 'BitsStored', bitsAllocated);
  const framesText = textValue(get(0x00280008));
  const frames = framesText ? Number.parseInt(framesText, 10) : 1;
  if (!Number.isSafeInteger(frames) || frames < 1) fail(`bad NumberOfFrames ${JSON.stringify(framesText)}`);
  const photometric = textValue(get(0x00280004));
  if (!photometric) fail('missing PhotometricInterpretation');
  const planarEl = get(0x00280006);
  const planar = planarEl ? readUint(planarEl.value, planarEl.littleEndian) : undefined;
  return {
    rows: us(0x00280010, 'Rows'),
    columns: us(0x00280011, 'Columns'),
    bitsAllocated,
    bitsStored,
    highBit: us(0x00280102, 'HighBit', bitsStored - 1),
    pixelRepresentation: us(0x00280103, 'PixelRepresentation', 0),
    samplesPerPixel: us(0x00280002, 'SamplesPerPixel', 1),
    planarConfiguration: planar,
    photometric,
    frames,
  };
}

function startsWith(bytes: Uint8Array, prefix: readonly number[]): boolean {
  if (bytes.length < prefix.length) return false;
  return prefix.every((b, i) => bytes[i] === b);
}

/** Groups the fragments (after the Basic Offset Table) into frames. */
function splitFrames(elements: El[], fragmentsWithBot: Uint8Array[], frames: number, ts: string): Uint8Array[] {
  const bot = fragmentsWithBot[0];
  const fragments = fragmentsWithBot.slice(1);
  if (bot === undefined || fragments.length === 0) fail('encapsulated pixel data has no fragments');
  const concat = (list: Uint8Array[]): Uint8Array => {
    if (list.length === 1) return list[0]!;
    const s = new Sink();
    for (const f of list) s.push(f);
    return s.concat();
  };
  if (frames === 1) return [concat(fragments)];
  if (fragments.length === frames) return fragments;

  // Offsets of each frame's first fragment, relative to the first fragment's item tag.
  let offsets: number[] | undefined;
  if (bot.length >= 4 * frames) {
    const v = new DataView(bot.buffer, bot.byteOffset, bot.byteLength);
    offsets = Array.from({ length: frames }, (_, i) => v.getUint32(4 * i, true));
  } else {
    const eot = elements.find((e) => e.tag === 0x7fe00001)?.value;
    if (eot && eot.length >= 8 * frames) {
      const v = new DataView(eot.buffer, eot.byteOffset, eot.byteLength);
      offsets = Array.from({ length: frames }, (_, i) => Number(v.getBigUint64(8 * i, true)));
    }
  }
  const groups: Uint8Array[][] = [];
  if (offsets) {
    let off = 0;
    let frame = -1;
    for (const f of fragments) {
      while (frame + 1 < frames && offsets[frame + 1] === off) frame++;
      if (frame < 0) fail('basic offset table does not start at the first fragment');
      (groups[frame] ??= []).push(f);
      off += 8 + f.length;
    }
  } else {
    // No offset table: a new frame starts with the codec's start-of-image marker.
    const isJ2k = ts.startsWith('1.2.840.10008.1.2.4.9') || ts.startsWith('1.2.840.10008.1.2.4.20');
    const isStart = (f: Uint8Array) =>
      isJ2k
        ? startsWith(f, [0xff, 0x4f, 0xff, 0x51]) || startsWith(f, [0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20])
        : startsWith(f, [0xff, 0xd8]);
    if (ts === '1.2.840.10008.1.2.5') fail('RLE pixel data must have one fragment per frame');
    for (const f of fragments) {
      if (isStart(f) || groups.length === 0) groups.push([f]);
      else groups[groups.length - 1]!.push(f);
    }
  }
  if (groups.length !== frames || groups.some((g) => !g)) {
    fail(`cannot split ${fragments.length} fragments into ${frames} frames`);
  }
  return groups.map(concat);
}

/** RLE frames carry a 64-byte header; the decoder accepts anything, so check it here. */
function checkRleHeader(frame: Uint8Array, attrs: PixelAttrs, index: number): void {
  if (frame.length < 64) fail(`RLE frame ${index} is shorter than its 64-byte header`);
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const segments = v.getUint32(0, true);
  const expected = attrs.samplesPerPixel * Math.ceil(attrs.bitsAllocated / 8);
  if (segments !== expected) fail(`RLE frame ${index} has ${segments} segments, expected ${expected}`);
  let previous = 64;
  for (let s = 0; s < segments; s++) {
    const offset = v.getUint32(4 + 4 * s, true);
    if (offset < previous || offset > frame.length || (s === 0 && offset !== 64)) {
      fail(`RLE frame ${index} has a bad segment offset table`);
    }
    previous = offset;
  }
}

/**
 * The size a JPEG, JPEG-LS, JPEG 2000, HTJ2K or JPEG XL frame declares in its own header (SOFn, SOF55,
 * SIZ, SizeHeader), read before anything is decoded; undefined when the frame has no such header where this
 * looks (bytes no decoder takes: the decoder says why). Rows 0 is a JPEG height given later (DNL).
 */
export function codestreamSize(frame: Uint8Array): { columns: number; rows: number } | undefined {
  const u16 = (at: number) => (at + 2 <= frame.length ? (frame[at]! << 8) | frame[at + 1]! : undefined);
  const u32 = (at: number) => (at + 4 <= frame.length ? ((frame[at]! << 24) >>> 0) + (frame[at + 1]! << 16) + (frame[at + 2]! << 8) + frame[at + 3]! : undefined);
  let at = 0;
  // A JP2 file (PS3.5 A.4.4 wants a bare codestream, but some writers keep the boxes): the codestream box.
  if (u32(0) === 12 && u32(4) === 0x6a502020) {
    while (at + 8 <= frame.length) {
      const length = u32(at)!;
      if (u32(at + 4) === 0x6a703263) {
        at += 8;
        break;
      }
      if (length < 8) return undefined;
      at += length;
    }
  }
  if (u16(at) === 0xff4f && u16(at + 2) === 0xff51) {
    // SOC, then SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz (PS3.5 refers to ISO/IEC 15444-1 A.5.1).
    const [x, y, x0, y0] = [u32(at + 8), u32(at + 12), u32(at + 16), u32(at + 20)];
    if (x === undefined || y === undefined || x0 === undefined || y0 === undefined) return undefined;
    return { columns: x - x0, rows: y - y0 };
  }
  const jpegXl = jpegXlSize(frame);
  if (jpegXl !== undefined) return jpegXl;
  if (u16(at) !== 0xffd8) return undefined;
  at += 2;
  // JPEG and JPEG-LS: marker segments up to the frame header (ISO/IEC 10918-1 B.2, 14495-1 C.2.2).
  while (at + 4 <= frame.length) {
    if (frame[at] !== 0xff) return undefined;
    const marker = frame[at + 1]!;
    if (marker === 0xff) {
      at += 1;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return undefined;
    const isFrameHeader = (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) || marker === 0xf7;
    if (isFrameHeader) {
      const rows = u16(at + 5);
      const columns = u16(at + 7);
      return rows === undefined || columns === undefined ? undefined : { columns, rows };
    }
    at += 2 + u16(at + 2)!;
  }
  return undefined;
}

/**
 * A JPEG XL frame's size (ISO/IEC 18181-1 SizeHeader, after the FF 0A signature; in a container, the first
 * `jxlc` or `jxlp` box's codestream), or undefined when it is neither.
 */
function jpegXlSize(frame: Uint8Array): { columns: number; rows: number } | undefined {
  let at = 0;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length >= 12 && view.getUint32(0) === 12 && view.getUint32(4) === 0x4a584c20) {
    // ISOBMFF boxes (18181-2): size, type; a jxlp box starts with a 4-byte index.
    while (at + 8 <= frame.length) {
      const size = view.getUint32(at);
      const type = view.getUint32(at + 4);
      if (type === 0x6a786c63) {
        at += 8;
        break;
      }
      if (type === 0x6a786c70) {
        at += 12;
        break;
      }
      if (size < 8) return undefined;
      at += size;
    }
  }
  if (frame[at] !== 0xff || frame[at + 1] !== 0x0a) return undefined;
  let bit = (at + 2) * 8;
  const bits = (n: number): number | undefined => {
    let value = 0;
    for (let i = 0; i < n; i++, bit++) {
      const byte = frame[bit >> 3];
      if (byte === undefined) return undefined;
      value += ((byte >> (bit & 7)) & 1) * 2 ** i;
    }
    return value;
  };
  const u32 = (): number | undefined => {
    const selector = bits(2);
    return selector === undefined ? undefined : bits([9, 13, 18, 30][selector]!);
  };
  const small = bits(1);
  const rowsValue = small === 1 ? bits(5) : u32();
  const ratio = bits(3);
  if (rowsValue === undefined || ratio === undefined) return undefined;
  const rows = small === 1 ? (rowsValue + 1) * 8 : rowsValue + 1;
  if (ratio !== 0) {
    const [numerator, denominator] = [[1, 1], [12, 10], [4, 3], [3, 2], [16, 9], [5, 4], [2, 1]][ratio - 1]!;
    return { columns: Math.floor((rows * numerator!) / denominator!), rows };
  }
  const columnsValue = small === 1 ? bits(5) : u32();
  if (columnsValue === undefined) return undefined;
  return { columns: small === 1 ? (columnsValue + 1) * 8 : columnsValue + 1, rows };
}

/**
 * A compressed frame must be of the data set's Rows x Columns: the decoders size their output by the
 * frame's own header, so a codestream declaring 30000 x 30000 in a 128 x 128 instance took 7 GB and 11 s
 * to decode, and its first Rows x Columns samples went out as the image, with Success (hunt 89).
 */
function checkCodestreamSize(frame: Uint8Array, attrs: PixelAttrs, index: number): void {
  const size = codestreamSize(frame);
  if (size === undefined) return;
  if (size.columns !== attrs.columns || (size.rows !== 0 && size.rows !== attrs.rows)) {
    fail(`frame ${index}'s codestream declares ${size.columns} x ${size.rows} pixels, the data set ${attrs.columns} x ${attrs.rows} (Columns x Rows): not decoded`);
  }
}

function csValue(text: string): Uint8Array {
  const padded = text.length % 2 ? `${text} ` : text;
  return new Uint8Array(Buffer.from(padded, 'latin1'));
}

function usValue(n: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n, true);
  return b;
}

function setElement(elements: El[], tag: number, vr: string, value: Uint8Array): void {
  const el: El = { tag, vr, value, littleEndian: true, rewritten: true };
  const i = elements.findIndex((e) => e.tag >= tag);
  if (i < 0) elements.push(el);
  else if (elements[i]!.tag === tag) elements[i] = el;
  else elements.splice(i, 0, el);
}

const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';

/** Lossy Image Compression (0028,2110). */
const LOSSY_IMAGE_COMPRESSION = 0x00282110;

/**
 * Syntaxes whose process is lossy whatever its parameters (JPEG baseline and extended); JPEG-LS near-lossless,
 * JPEG 2000, HTJ2K and JPEG XL may hold a lossless codestream, so their instances keep what they say.
 */
const ALWAYS_LOSSY_PROCESSES: ReadonlySet<string> = new Set([JPEG_BASELINE, '1.2.840.10008.1.2.4.51']);

interface NativeCodecsApi {
  NativeCodecs: {
    decodeJpeg(context: unknown, parameters?: { convertColorspaceToRgb?: boolean }): {
      getDecodedBuffer(): Uint8Array | undefined;
      getPhotometricInterpretation(): string | undefined;
    };
    encodeJpeg(context: unknown, parameters?: { lossy?: boolean; quality?: number }): { getEncodedBuffer(): Uint8Array | undefined };
  };
  Context: new (attrs: Record<string, unknown>) => unknown;
}

/** dcmjs-codecs as dcmjs-dimse loads it (the same module instance, whose WASM the codecs share). */
function nativeCodecs(): NativeCodecsApi {
  return createRequire(createRequire(import.meta.url).resolve('dcmjs-dimse'))('dcmjs-codecs') as NativeCodecsApi;
}

/** JPEG syntaxes dcmjs-dimse's Transcoding refuses, which the dcmjs-codecs JPEG decoder reads (as dcmdjpeg does). */
const JPEG_DIRECT: ReadonlySet<string> = new Set(['1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.4.57']);

/**
 * One JPEG frame through the dcmjs-codecs decoder directly, for two cases:
 * - JPEG baseline labelled RGB: the components were compressed without a colour transform. dcmjs-dimse's
 *   codec always converts YCbCr -> RGB for baseline, which garbles these (seen on pydicom
 *   SC_jpeg_no_color_transform: up to 137 off per sample); decoded without conversion, like DCMTK.
 * - JPEG extended (.51) and lossless with any predictor (.57), which dcmjs-dimse does not take (helper 47:
 *   such instances never reached an uncompressed-only receiver); YBR colour is converted to RGB, as dcmdjpeg does.
 */
function decodeJpegDirect(frame: Uint8Array, attrs: PixelAttrs): Record<string, unknown> {
  const { NativeCodecs, Context } = nativeCodecs();
  const convert = attrs.samplesPerPixel === 3 && attrs.photometric.startsWith('YBR');
  const ctx = new Context({
    width: attrs.columns,
    height: attrs.rows,
    bitsAllocated: attrs.bitsAllocated,
    bitsStored: attrs.bitsStored,
    samplesPerPixel: attrs.samplesPerPixel,
    pixelRepresentation: attrs.pixelRepresentation,
    planarConfiguration: 0,
    photometricInterpretation: attrs.photometric,
    encodedBuffer: frame,
  });
  const out = NativeCodecs.decodeJpeg(ctx, { convertColorspaceToRgb: convert }).getDecodedBuffer();
  if (!out) fail('JPEG decoder returned no data');
  const copy = out.byteOffset === 0 && out.byteLength === out.buffer.byteLength ? out.buffer : out.slice().buffer;
  // Decoded colour data is interleaved whatever the source said.
  if (attrs.samplesPerPixel === 1) return { PixelData: [copy] };
  return { PixelData: [copy], PhotometricInterpretation: convert ? 'RGB' : attrs.photometric, PlanarConfiguration: 0 };
}

/**
 * Encapsulated Pixel Data inside items: an Icon Image Sequence of a compressed instance may be compressed in
 * the instance's syntax (PS3.5 8.2, PS3.3 C.7.6.1.1.6). Each item's image is decoded with that item's own
 * Image Pixel attributes, so the output has no encapsulated value left anywhere.
 */
async function decodeNestedPixelData(elements: El[], ts: string, signal: AbortSignal | undefined): Promise<void> {
  for (const el of elements) {
    for (const item of el.items ?? []) {
      const pixel = item.elements.find((e) => e.tag === PIXEL_DATA);
      if (pixel?.fragments) await decodePixelData(item.elements, pixel, ts, signal);
      await decodeNestedPixelData(item.elements, ts, signal);
    }
  }
}

async function decodePixelData(elements: El[], pixel: El, ts: string, signal: AbortSignal | undefined): Promise<void> {
  let attrs: PixelAttrs;
  let frames: Uint8Array[];
  try {
    attrs = pixelAttrs(elements);
    frames = splitFrames(elements, pixel.fragments!, attrs.frames, ts);
    if (ts === '1.2.840.10008.1.2.5') frames.forEach((f, i) => checkRleHeader(f, attrs, i));
    else frames.forEach((f, i) => checkCodestreamSize(f, attrs, i));
  } catch (err) {
    throw asTranscodeError(err);
  }
  const decoded: Uint8Array[] = [];
  let outPhotometric = attrs.photometric;
  let outPlanar = attrs.planarConfiguration;
  const bytesPerSample = Math.ceil(attrs.bitsAllocated / 8);
  await eachFrameWithCodecs(frames.length, signal, (i) => {
    const f = frames[i]!;
    const input = { ...onePixelFrame(attrs, attrs.planarConfiguration), PixelData: [f.buffer.slice(f.byteOffset, f.byteOffset + f.byteLength)] };
    const result =
      (ts === JPEG_BASELINE && attrs.photometric === 'RGB') || JPEG_DIRECT.has(ts)
        ? decodeJpegDirect(f, attrs)
        : Transcoding.transcodeDataset(new Dataset(input, ts), EXPLICIT_LE).getElements();
    const px = result.PixelData;
    const buf = Array.isArray(px) ? px[0] : px;
    if (!(buf instanceof ArrayBuffer)) fail(`decoder returned no pixel data for frame ${i}`);
    const photometric = String(result.PhotometricInterpretation ?? attrs.photometric);
    const planar = typeof result.PlanarConfiguration === 'number' ? result.PlanarConfiguration : outPlanar;
    if (i === 0) {
      outPhotometric = photometric;
      outPlanar = planar;
    } else if (photometric !== outPhotometric) {
      fail(`frames decode to different photometric interpretations (${outPhotometric}, ${photometric})`);
    }
    const frameSize =
      photometric === 'YBR_FULL_422'
        ? 2 * bytesPerSample * attrs.rows * attrs.columns
        : attrs.rows * attrs.columns * attrs.samplesPerPixel * bytesPerSample;
    // More than one byte of padding is another image than the data set describes (other components or depth).
    if (buf.byteLength < frameSize || buf.byteLength > frameSize + 1) {
      fail(`frame ${i} decoded to ${buf.byteLength} bytes, expected ${frameSize}`);
    }
    // dcmjs-codecs pads each odd-sized frame; frames must be contiguous, so trim to the exact size.
    decoded.push(new Uint8Array(buf, 0, frameSize));
  });

  const sink = new Sink();
  for (const d of decoded) sink.push(d);
  if (sink.size % 2) sink.push(new Uint8Array(1));
  const pixelValue = sink.concat();
  decoded.length = 0;

  const idx = elements.indexOf(pixel);
  elements[idx] = {
    tag: PIXEL_DATA,
    vr: attrs.bitsAllocated <= 8 ? 'OB' : 'OW',
    value: pixelValue,
    littleEndian: true,
    rewritten: true,
  };
  // The Extended Offset Table describes encapsulated data only.
  for (const tag of [0x7fe00001, 0x7fe00002]) {
    const i = elements.findIndex((e) => e.tag === tag);
    if (i >= 0) elements.splice(i, 1);
  }
  if (outPhotometric !== attrs.photometric) setElement(elements, 0x00280004, 'CS', csValue(outPhotometric));
  if (attrs.samplesPerPixel > 1 && outPlanar !== undefined && outPlanar !== attrs.planarConfiguration) {
    setElement(elements, 0x00280006, 'US', usValue(outPlanar));
  }
}

/** One encoded frame's bytes from a dcmjs Transcoding result (an array of fragments, or one buffer). */
function encodedFrameOf(result: Record<string, unknown>): Uint8Array {
  const px = result.PixelData;
  const parts = (Array.isArray(px) ? px : [px]).filter((p): p is ArrayBuffer => p instanceof ArrayBuffer);
  if (parts.length === 0) fail('encoder returned no pixel data');
  const sink = new Sink();
  for (const p of parts) sink.push(new Uint8Array(p));
  return sink.concat();
}

function unsupported(message: string): never {
  throw new TranscodeError('ERR_TRANSCODE_UNSUPPORTED', message);
}

/**
 * Compresses native Pixel Data losslessly into `target`, frame by frame. Each frame is decoded back and must
 * equal its source bytes, or nothing is sent: a copy that is not the original is never delivered as one.
 * Only what the encoders are checked for (PS3.5 8.2): 8 or 16 bits allocated, MONOCHROME1/2 or PALETTE
 * COLOR, or RGB (not for JPEG 2000); anything else is ERR_TRANSCODE_UNSUPPORTED. Nested pixel
 * data (icons) stays native, which the encapsulated syntaxes allow. Without Pixel Data the data set is
 * written in explicit VR LE under the target's UID, as the syntax defines.
 */
async function encodePixelData(elements: El[], target: string, signal: AbortSignal | undefined): Promise<void> {
  const index = elements.findIndex((e) => e.tag === PIXEL_DATA);
  if (index < 0) return;
  const pixel = elements[index]!;
  if (pixel.fragments || !pixel.value) fail('pixel data to compress is not native');
  let attrs: PixelAttrs;
  try {
    attrs = pixelAttrs(elements);
  } catch (err) {
    throw asTranscodeError(err);
  }
  if (attrs.bitsAllocated !== 8 && attrs.bitsAllocated !== 16) unsupported(`cannot compress ${attrs.bitsAllocated}-bit pixel data`);
  const monochrome = attrs.samplesPerPixel === 1 && ['MONOCHROME1', 'MONOCHROME2', 'PALETTE COLOR'].includes(attrs.photometric);
  const rgb = attrs.samplesPerPixel === 3 && attrs.photometric === 'RGB';
  if (!monochrome && !(rgb && !MONOCHROME_ONLY_TARGETS.has(target))) {
    unsupported(`cannot compress ${attrs.photometric} with ${attrs.samplesPerPixel} samples into ${target}`);
  }
  // Colour by plane (R..., G..., B...) is interleaved first: the encoders take it so, and decoders give it so.
  const planar = rgb && attrs.planarConfiguration === 1;
  const bytesPerSample = attrs.bitsAllocated / 8;
  const frameSize = attrs.rows * attrs.columns * attrs.samplesPerPixel * bytesPerSample;
  let native = pixel.value;
  if (native.length < frameSize * attrs.frames) fail(`pixel data holds ${native.length} bytes, ${attrs.frames} frames need ${frameSize * attrs.frames}`);
  // Big endian: an OW value is byte-swapped per 16-bit word whatever Bits Allocated says (8-bit samples in OW
  // too, PS3.5 8.1.1), as the uncompressed path un-swaps it; the whole value, so an odd-length last word is right.
  const word = pixel.vr === null ? undefined : WORD_SIZE[pixel.vr];
  if (!pixel.littleEndian && word !== undefined) native = swapped(native, word);

  const encoded: Uint8Array[] = [];
  const input = onePixelFrame(attrs, attrs.samplesPerPixel > 1 ? 0 : undefined);
  // Compressing a frame and decoding it back are separate turns of the event loop: together, one 27 MB
  // mammogram held it for 1.7 s in JPEG-LS, longer than a peer may miss heartbeats before it is suspect.
  let pending: { frame: Uint8Array; bytes: Uint8Array } | undefined;
  await eachFrameWithCodecs(2 * attrs.frames, signal, (step) => {
    const i = step >> 1;
    if (step % 2 === 0) {
      // A copy with its own buffer (a Buffer's slice() is a view of the whole inflated data set).
      const source = native.subarray(i * frameSize, (i + 1) * frameSize);
      const frame = planar ? interleaved(source, attrs.rows * attrs.columns, bytesPerSample) : new Uint8Array(source);
      const result = Transcoding.transcodeDataset(new Dataset({ ...input, PixelData: [frame.buffer] }, EXPLICIT_LE), target).getElements();
      if (String(result.PhotometricInterpretation ?? attrs.photometric) !== attrs.photometric) {
        fail(`the ${target} encoder changed the photometric interpretation to ${String(result.PhotometricInterpretation)}`);
      }
      pending = { frame, bytes: encodedFrameOf(result) };
      return;
    }
    const { frame, bytes } = pending!;
    pending = undefined;
    const back = Transcoding.transcodeDataset(new Dataset({ ...input, PixelData: [bytes.slice().buffer] }, target), EXPLICIT_LE).getElements();
    const decoded = back.PixelData;
    const decodedFrame = Array.isArray(decoded) ? decoded[0] : decoded;
    if (!(decodedFrame instanceof ArrayBuffer) || decodedFrame.byteLength < frameSize || !Buffer.from(decodedFrame, 0, frameSize).equals(frame)) {
      fail(`frame ${i} does not decode back to its source in ${target} (bits above High Bit in use?)`);
    }
    encoded.push(bytes.length % 2 ? Buffer.concat([bytes, new Uint8Array(1)]) : bytes);
  });
  // A Basic Offset Table for several frames (offsets from the first fragment's item tag); empty for one.
  let bot = new Uint8Array(0);
  if (encoded.length > 1) {
    bot = new Uint8Array(4 * encoded.length);
    const view = new DataView(bot.buffer);
    let offset = 0;
    encoded.forEach((f, i) => {
      view.setUint32(4 * i, offset, true);
      offset += 8 + f.length;
    });
  }
  elements[index] = { tag: PIXEL_DATA, vr: 'OB', fragments: [bot, ...encoded], undefinedLength: true, littleEndian: true, rewritten: true };
  if (planar) setElement(elements, 0x00280006, 'US', usValue(0));
}

/**
 * A rendered image (8 bits a sample, MONOCHROME2 or RGB, one frame, explicit VR little endian) as lossy JPEG
 * Baseline at `quality` (1-100): for a browser, never stored nor sent as DICOM, hence lossy and unchecked.
 */
async function encodeRenderedJpeg(datasetBytes: Uint8Array, from: string, quality: number, signal: AbortSignal | undefined): Promise<{ bytes: Uint8Array; transferSyntaxUid: string }> {
  if (from !== EXPLICIT_LE) unsupported(`a rendered image comes in ${EXPLICIT_LE}, not ${from}`);
  let elements: El[];
  let attrs: PixelAttrs;
  try {
    elements = parseDataset(datasetBytes, encodingOf(from));
    attrs = pixelAttrs(elements);
  } catch (err) {
    throw asTranscodeError(err);
  }
  const index = elements.findIndex((e) => e.tag === PIXEL_DATA);
  const pixels = elements[index]?.value;
  const frameBytes = attrs.rows * attrs.columns * attrs.samplesPerPixel;
  if (!pixels || attrs.bitsAllocated !== 8 || attrs.frames !== 1 || pixels.length < frameBytes) fail('a rendered image is one frame of 8-bit samples');
  let jpeg: Uint8Array | undefined;
  await eachFrameWithCodecs(1, signal, () => {
    const { NativeCodecs, Context } = nativeCodecs();
    const ctx = new Context({
      width: attrs.columns,
      height: attrs.rows,
      bitsAllocated: 8,
      bitsStored: 8,
      samplesPerPixel: attrs.samplesPerPixel,
      pixelRepresentation: 0,
      planarConfiguration: 0,
      photometricInterpretation: attrs.photometric,
      decodedBuffer: new Uint8Array(pixels.subarray(0, frameBytes)),
    });
    jpeg = NativeCodecs.encodeJpeg(ctx, { lossy: true, quality: Math.min(100, Math.max(1, Math.round(quality))) }).getEncodedBuffer()?.slice();
  });
  if (!jpeg || jpeg.length === 0) fail('the JPEG encoder returned no data');
  elements[index] = { tag: PIXEL_DATA, vr: 'OB', fragments: [new Uint8Array(0), jpeg.length % 2 ? Buffer.concat([jpeg, new Uint8Array(1)]) : jpeg], undefinedLength: true, littleEndian: true, rewritten: true };
  try {
    return { bytes: finish(elements, JPEG_BASELINE), transferSyntaxUid: JPEG_BASELINE };
  } catch (err) {
    throw asTranscodeError(err);
  }
}

/** One frame of three colour planes (pixels samples each) as interleaved samples, in a buffer of its own. */
function interleaved(planes: Uint8Array, pixels: number, bytesPerSample: number): Uint8Array {
  const out = new Uint8Array(planes.length);
  const planeBytes = pixels * bytesPerSample;
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) {
      const from = c * planeBytes + p * bytesPerSample;
      const to = (p * 3 + c) * bytesPerSample;
      for (let b = 0; b < bytesPerSample; b++) out[to + b] = planes[from + b]!;
    }
  }
  return out;
}
