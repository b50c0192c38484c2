/**
 * Synthetic DICOM Part 10 files, written from scratch by this module (no external sample files).
 *
 * A file is: 128-byte preamble, "DICM", the File Meta Information group (always explicit VR little
 * endian, with a correct (0002,0000) group length), then the dataset in the requested transfer syntax.
 * Every element has an even length (UI padded with NUL, other text with a space, binary with a zero
 * byte) and elements are written in ascending tag order.
 *
 * UIDs: `newUid()` uses the ISO/IEC 9834-8 / ITU-T X.667 "2.25." form, i.e. "2.25." followed by the
 * decimal value of a 128-bit UUID. That root needs no registration and is collision-free by
 * construction, whereas a made-up organisational root (e.g. "1.2.826.0.1.3680043.10.NNNN.") would only
 * be legitimate if NNNN were really assigned to this project. `uidFromSeed(seed)` derives a name-based
 * (version 5 style, SHA-1) UUID from a string so tests can get reproducible UIDs. Either way the UID is
 * at most 44 characters (limit 64).
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { TransferSyntax } from '../../src/codec/dicom-types.ts';

export { TransferSyntax };

export const SopClass = {
  CtImageStorage: '1.2.840.10008.5.1.4.1.1.2',
  MrImageStorage: '1.2.840.10008.5.1.4.1.1.4',
  SecondaryCaptureImageStorage: '1.2.840.10008.5.1.4.1.1.7',
} as const;

/** Implementation Class UID written in (0002,0012): a fixed 2.25 UID (derived from "pacs-mesh synthetic-dicom"). */
export const IMPLEMENTATION_CLASS_UID = uidFromSeed('pacs-mesh synthetic-dicom implementation');
export const IMPLEMENTATION_VERSION_NAME = 'PACSMESH_SYN1';

// ---------------------------------------------------------------------------------------------------
// UIDs

function uuidHexToUid(hex: string): string {
  return `2.25.${BigInt(`0x${hex}`).toString(10)}`;
}

/** A fresh random UID of the form 2.25.<decimal of a random (version 4) UUID>. */
export function newUid(): string {
  return uuidHexToUid(randomUUID().replace(/-/g, ''));
}

/** A reproducible UID: 2.25.<decimal of a name-based (SHA-1, version 5 layout) UUID of `seed`>. */
export function uidFromSeed(seed: string): string {
  const h = createHash('sha1').update('pacs-mesh/uid/').update(seed).digest();
  const b = Buffer.from(h.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x50; // version 5
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 4122 variant
  return uuidHexToUid(b.toString('hex'));
}

/** Returns a generator of UIDs: reproducible from `seed` when given, random otherwise. */
export function uidGenerator(seed?: string): (label: string) => string {
  let n = 0;
  return (label: string) => (seed === undefined ? newUid() : uidFromSeed(`${seed}/${label}/${n++}`));
}

// ---------------------------------------------------------------------------------------------------
// Options

export type SyntheticTransferSyntax =
  | typeof TransferSyntax.ImplicitVrLittleEndian
  | typeof TransferSyntax.ExplicitVrLittleEndian
  | typeof TransferSyntax.ExplicitVrBigEndian
  | typeof TransferSyntax.DeflatedExplicitVrLittleEndian;

export type SpecificCharacterSet = 'ISO_IR 100' | 'ISO_IR 192';

export interface PatientOptions {
  id?: string;
  name?: string;
  /** YYYYMMDD */
  birthDate?: string;
  sex?: 'M' | 'F' | 'O' | '';
}

export interface StudyOptions {
  uid?: string;
  date?: string;
  time?: string;
  accession?: string;
  description?: string;
  referringPhysician?: string;
  id?: string;
}

export interface SeriesOptions {
  uid?: string;
  modality?: string;
  number?: number;
  description?: string;
}

export interface ExtraElement {
  tag: number;
  vr: string;
  /** Text (encoded with the character set), numbers (binary VRs / IS / DS), or raw bytes. */
  value: string | number[] | Uint8Array;
}

export interface PrivateBlockOptions {
  /** Odd group, default 0x0009. */
  group?: number;
  /** Private creator, written in (gggg,0010). Default "PACSMESH TEST". */
  creator?: string;
  /** Elements in the block reserved by the creator: `element` is 0x00..0xFF (written as gggg,10xx). */
  elements?: Array<{ element: number; vr: string; value: string | number[] | Uint8Array }>;
}

export type PixelPattern = 'random' | 'gradient' | 'zero';

export interface InstanceOptions {
  transferSyntaxUid?: SyntheticTransferSyntax;
  patient?: PatientOptions;
  study?: StudyOptions;
  series?: SeriesOptions;
  sopClassUid?: string;
  sopInstanceUid?: string;
  instanceNumber?: number;
  rows?: number;
  columns?: number;
  /** 8 or 16. */
  bitsAllocated?: 8 | 16;
  /** Default: 8 for 8-bit, 12 for 16-bit. Pixel values are kept below 2^bitsStored. */
  bitsStored?: number;
  pixelPattern?: PixelPattern;
  /** Seed of the pseudo-random pixel content (default: derived from the instance number). */
  pixelSeed?: number;
  /** Adds a private block; `true` gives a default one with a few values. */
  privateElements?: boolean | PrivateBlockOptions;
  /**
   * Writes (0008,0005) and encodes PN/LO/SH/ST/LT/UT text with it. Without it text must be ASCII
   * (the default repertoire); use `extraElements` with raw bytes to produce deliberately odd data.
   */
  specificCharacterSet?: SpecificCharacterSet;
  /** Added or replacing (same tag) the generated elements. */
  extraElements?: ExtraElement[];
}

export interface ResolvedInstance {
  transferSyntaxUid: SyntheticTransferSyntax;
  sopClassUid: string;
  sopInstanceUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  patientId: string;
}

// ---------------------------------------------------------------------------------------------------
// Encoding

const LONG_LENGTH_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV']);
const CHARSET_VRS = new Set(['PN', 'LO', 'SH', 'ST', 'LT', 'UT', 'UC']);
const TEXT_VRS = new Set(['AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT']);
const NUMERIC_SIZE: Record<string, number> = { US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, AT: 4, SV: 8, UV: 8 };

interface Element {
  tag: number;
  vr: string;
  /** Value bytes in little-endian order (swapped for big endian at write time when needed), unpadded. */
  bytes: Uint8Array;
}

function encodeText(value: string, vr: string, charset: SpecificCharacterSet | undefined): Uint8Array {
  if (CHARSET_VRS.has(vr) && charset !== undefined) {
    return charset === 'ISO_IR 192' ? Buffer.from(value, 'utf8') : latin1Strict(value);
  }
  // eslint-disable-next-line no-control-regex
  if (!/^[\x00-\x7f]*$/.test(value)) {
    throw new Error(`non-ASCII text in ${vr} value ${JSON.stringify(value)}: set specificCharacterSet`);
  }
  return Buffer.from(value, 'latin1');
}

function latin1Strict(value: string): Uint8Array {
  for (const ch of value) {
    if (ch.codePointAt(0)! > 0xff) throw new Error(`${JSON.stringify(value)} is not representable in ISO_IR 100`);
  }
  return Buffer.from(value, 'latin1');
}

function encodeNumbers(values: number[], vr: string): Uint8Array {
  const size = NUMERIC_SIZE[vr];
  if (size === undefined) throw new Error(`cannot encode numbers as ${vr}`);
  const b = Buffer.alloc(values.length * size);
  values.forEach((v, i) => {
    const o = i * size;
    switch (vr) {
      case 'US': b.writeUInt16LE(v, o); break;
      case 'SS': b.writeInt16LE(v, o); break;
      case 'UL': b.writeUInt32LE(v, o); break;
      case 'SL': b.writeInt32LE(v, o); break;
      case 'FL': b.writeFloatLE(v, o); break;
      case 'FD': b.writeDoubleLE(v, o); break;
      case 'SV': b.writeBigInt64LE(BigInt(v), o); break;
      case 'UV': b.writeBigUInt64LE(BigInt(v), o); break;
      case 'AT': b.writeUInt16LE((v >>> 16) & 0xffff, o); b.writeUInt16LE(v & 0xffff, o + 2); break;
    }
  });
  return b;
}

function toElement(tag: number, vr: string, value: string | number[] | Uint8Array, charset: SpecificCharacterSet | undefined): Element {
  if (value instanceof Uint8Array) return { tag, vr, bytes: value };
  if (typeof value === 'string') {
    if (!TEXT_VRS.has(vr)) throw new Error(`text value for non-text VR ${vr}`);
    return { tag, vr, bytes: encodeText(value, vr, charset) };
  }
  if (vr === 'IS' || vr === 'DS') return { tag, vr, bytes: encodeText(value.map(String).join('\\'), vr, charset) };
  return { tag, vr, bytes: encodeNumbers(value, vr) };
}

function padByte(vr: string): number {
  if (vr === 'UI') return 0x00;
  return TEXT_VRS.has(vr) ? 0x20 : 0x00;
}

/** Swaps each `size`-byte word of a little-endian buffer into big-endian order (returns a copy). */
function swapWords(bytes: Uint8Array, size: number): Uint8Array {
  const out = Buffer.from(bytes);
  if (size === 2) out.swap16();
  else if (size === 4) out.swap32();
  else if (size === 8) out.swap64();
  return out;
}

function valueForSyntax(e: Element, bigEndian: boolean): Uint8Array {
  if (!bigEndian) return e.bytes;
  if (e.vr === 'AT') {
    // AT is a pair of 16-bit numbers: swap each half.
    return swapWords(e.bytes, 2);
  }
  const size = e.vr === 'OW' ? 2 : e.vr === 'OL' || e.vr === 'OF' ? 4 : e.vr === 'OD' || e.vr === 'OV' ? 8 : NUMERIC_SIZE[e.vr];
  return size === undefined ? e.bytes : swapWords(e.bytes, size);
}

function encodeElements(elements: Element[], explicit: boolean, bigEndian: boolean): Uint8Array {
  const sorted = [...elements].sort((a, b) => (a.tag >>> 0) - (b.tag >>> 0));
  const parts: Uint8Array[] = [];
  let total = 0;
  for (const e of sorted) {
    let value = valueForSyntax(e, bigEndian);
    if (value.length % 2 === 1) {
      const padded = Buffer.alloc(value.length + 1, padByte(e.vr));
      padded.set(value);
      value = padded;
    }
    const long = LONG_LENGTH_VRS.has(e.vr);
    const header = Buffer.alloc(!explicit ? 8 : long ? 12 : 8);
    const group = (e.tag >>> 16) & 0xffff;
    const element = e.tag & 0xffff;
    if (bigEndian) {
      header.writeUInt16BE(group, 0);
      header.writeUInt16BE(element, 2);
    } else {
      header.writeUInt16LE(group, 0);
      header.writeUInt16LE(element, 2);
    }
    if (!explicit) {
      header.writeUInt32LE(value.length, 4);
    } else {
      header.write(e.vr, 4, 'latin1');
      if (long) {
        if (bigEndian) header.writeUInt32BE(value.length, 8);
        else header.writeUInt32LE(value.length, 8);
      } else {
        if (value.length > 0xffff) throw new Error(`value of (${group.toString(16)},${element.toString(16)}) too long for ${e.vr}`);
        if (bigEndian) header.writeUInt16BE(value.length, 6);
        else header.writeUInt16LE(value.length, 6);
      }
    }
    parts.push(header, value);
    total += header.length + value.length;
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Pixel data

/** Deterministic pixel bytes (little endian for 16-bit samples). Length is rows*columns*bytesPerSample. */
export function makePixelData(rows: number, columns: number, bitsAllocated: 8 | 16, bitsStored: number, pattern: PixelPattern, seed: number): Uint8Array {
  const count = rows * columns;
  const bytesPer = bitsAllocated / 8;
  const buf = Buffer.alloc(count * bytesPer);
  if (pattern === 'zero') return buf;
  const mask = bitsStored >= 32 ? 0xffffffff : (1 << bitsStored) - 1;
  if (pattern === 'gradient') {
    const max = mask;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < columns; c++) {
        const v = Math.floor(((r + c + seed) % (rows + columns)) * (max / Math.max(1, rows + columns - 1))) & mask;
        const i = r * columns + c;
        if (bytesPer === 2) buf.writeUInt16LE(v, i * 2);
        else buf[i] = v;
      }
    }
    return buf;
  }
  // xorshift32: each 32-bit word gives two 16-bit or four 8-bit samples (little-endian host assumed,
  // as on every platform Node runs on in practice).
  const padded = Buffer.alloc(Math.ceil(buf.length / 4) * 4);
  let x = (Math.imul(seed, 2654435761) + 0x9e3779b9) >>> 0 || 1;
  const words = new Uint32Array(padded.buffer, padded.byteOffset, padded.length / 4);
  const wordMask = bytesPer === 2 ? Math.imul(mask & 0xffff, 0x10001) >>> 0 : Math.imul(mask & 0xff, 0x1010101) >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = (x & wordMask) >>> 0;
  }
  buf.set(padded.subarray(0, buf.length));
  return buf;
}

// ---------------------------------------------------------------------------------------------------
// Instances

const DEFAULT_PRIVATE: Required<PrivateBlockOptions> = {
  group: 0x0009,
  creator: 'PACSMESH TEST',
  elements: [
    { element: 0x01, vr: 'LO', value: 'private text value' },
    { element: 0x02, vr: 'US', value: [1234] },
    { element: 0x03, vr: 'OB', value: Uint8Array.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]) },
    { element: 0x04, vr: 'DS', value: '3.14159' },
  ],
};

function resolveDefaults(opts: InstanceOptions): Required<Pick<InstanceOptions, 'transferSyntaxUid' | 'sopClassUid' | 'sopInstanceUid' | 'instanceNumber' | 'rows' | 'columns' | 'bitsAllocated' | 'pixelPattern'>> & {
  patient: Required<PatientOptions>;
  study: Required<StudyOptions>;
  series: Required<SeriesOptions>;
  bitsStored: number;
  pixelSeed: number;
} {
  const bitsAllocated = opts.bitsAllocated ?? 16;
  const instanceNumber = opts.instanceNumber ?? 1;
  return {
    transferSyntaxUid: opts.transferSyntaxUid ?? TransferSyntax.ExplicitVrLittleEndian,
    sopClassUid: opts.sopClassUid ?? SopClass.CtImageStorage,
    sopInstanceUid: opts.sopInstanceUid ?? newUid(),
    instanceNumber,
    rows: opts.rows ?? 64,
    columns: opts.columns ?? 64,
    bitsAllocated,
    bitsStored: opts.bitsStored ?? (bitsAllocated === 8 ? 8 : 12),
    pixelPattern: opts.pixelPattern ?? 'random',
    pixelSeed: opts.pixelSeed ?? instanceNumber,
    patient: {
      id: opts.patient?.id ?? 'SYN0001',
      name: opts.patient?.name ?? 'SYNTHETIC^PATIENT',
      birthDate: opts.patient?.birthDate ?? '19700101',
      sex: opts.patient?.sex ?? 'O',
    },
    study: {
      uid: opts.study?.uid ?? newUid(),
      date: opts.study?.date ?? '20240101',
      time: opts.study?.time ?? '120000',
      accession: opts.study?.accession ?? 'ACC0001',
      description: opts.study?.description ?? 'SYNTHETIC STUDY',
      referringPhysician: opts.study?.referringPhysician ?? 'REFERRING^DOCTOR',
      id: opts.study?.id ?? '1',
    },
    series: {
      uid: opts.series?.uid ?? newUid(),
      modality: opts.series?.modality ?? 'CT',
      number: opts.series?.number ?? 1,
      description: opts.series?.description ?? 'SYNTHETIC SERIES',
    },
  };
}

/** Builds the dataset elements (no meta group) of one instance. */
function buildDataset(o: ReturnType<typeof resolveDefaults>, opts: InstanceOptions): Element[] {
  const cs = opts.specificCharacterSet;
  const map = new Map<number, Element>();
  const put = (tag: number, vr: string, value: string | number[] | Uint8Array) => {
    map.set(tag >>> 0, toElement(tag >>> 0, vr, value, cs));
  };
  const n = o.instanceNumber;
  if (cs !== undefined) put(0x00080005, 'CS', cs);
  put(0x00080008, 'CS', 'ORIGINAL\\PRIMARY\\AXIAL');
  put(0x00080016, 'UI', o.sopClassUid);
  put(0x00080018, 'UI', o.sopInstanceUid);
  put(0x00080020, 'DA', o.study.date);
  put(0x00080021, 'DA', o.study.date);
  put(0x00080023, 'DA', o.study.date);
  put(0x00080030, 'TM', o.study.time);
  put(0x00080031, 'TM', o.study.time);
  put(0x00080033, 'TM', o.study.time);
  put(0x00080050, 'SH', o.study.accession);
  put(0x00080060, 'CS', o.series.modality);
  put(0x00080070, 'LO', 'PACS-MESH SYNTHETIC');
  put(0x00080090, 'PN', o.study.referringPhysician);
  put(0x00081030, 'LO', o.study.description);
  put(0x0008103e, 'LO', o.series.description);
  put(0x00100010, 'PN', o.patient.name);
  put(0x00100020, 'LO', o.patient.id);
  put(0x00100030, 'DA', o.patient.birthDate);
  put(0x00100040, 'CS', o.patient.sex);
  put(0x00180050, 'DS', '1.0');
  put(0x0020000d, 'UI', o.study.uid);
  put(0x0020000e, 'UI', o.series.uid);
  put(0x00200010, 'SH', o.study.id);
  put(0x00200011, 'IS', [o.series.number]);
  put(0x00200013, 'IS', [n]);
  put(0x00200032, 'DS', `-125\\-125\\${(-n).toFixed(1)}`);
  put(0x00200037, 'DS', '1\\0\\0\\0\\1\\0');
  put(0x00200052, 'UI', uidFromSeed(`frame-of-reference/${o.series.uid}`));
  put(0x00201041, 'DS', (-n).toFixed(1));
  put(0x00280002, 'US', [1]);
  put(0x00280004, 'CS', 'MONOCHROME2');
  put(0x00280010, 'US', [o.rows]);
  put(0x00280011, 'US', [o.columns]);
  put(0x00280030, 'DS', '0.5\\0.5');
  put(0x00280100, 'US', [o.bitsAllocated]);
  put(0x00280101, 'US', [o.bitsStored]);
  put(0x00280102, 'US', [o.bitsStored - 1]);
  put(0x00280103, 'US', [0]);
  if (o.series.modality === 'CT') {
    put(0x00281050, 'DS', '40');
    put(0x00281051, 'DS', '400');
    put(0x00281052, 'DS', '-1024');
    put(0x00281053, 'DS', '1');
  }
  put(0x7fe00010, o.bitsAllocated === 8 ? 'OB' : 'OW', makePixelData(o.rows, o.columns, o.bitsAllocated, o.bitsStored, o.pixelPattern, o.pixelSeed));

  if (opts.privateElements) {
    const p: Required<PrivateBlockOptions> = opts.privateElements === true ? DEFAULT_PRIVATE : { ...DEFAULT_PRIVATE, ...opts.privateElements };
    if (p.group % 2 !== 1) throw new Error('private group must be odd');
    put(((p.group << 16) | 0x0010) >>> 0, 'LO', p.creator);
    for (const e of p.elements) {
      if (e.element < 0 || e.element > 0xff) throw new Error('private element must be 0x00..0xff');
      put(((p.group << 16) | 0x1000 | e.element) >>> 0, e.vr, e.value);
    }
  }
  for (const e of opts.extraElements ?? []) put(e.tag, e.vr, e.value);
  return [...map.values()];
}

function buildMeta(sopClassUid: string, sopInstanceUid: string, transferSyntaxUid: string): Uint8Array {
  const meta: Element[] = [
    { tag: 0x00020001, vr: 'OB', bytes: Uint8Array.from([0x00, 0x01]) },
    toElement(0x00020002, 'UI', sopClassUid, undefined),
    toElement(0x00020003, 'UI', sopInstanceUid, undefined),
    toElement(0x00020010, 'UI', transferSyntaxUid, undefined),
    toElement(0x00020012, 'UI', IMPLEMENTATION_CLASS_UID, undefined),
    toElement(0x00020013, 'SH', IMPLEMENTATION_VERSION_NAME, undefined),
  ];
  const body = encodeElements(meta, true, false);
  const groupLength = encodeElements([{ tag: 0x00020000, vr: 'UL', bytes: encodeNumbers([body.length], 'UL') }], true, false);
  const out = new Uint8Array(groupLength.length + body.length);
  out.set(groupLength, 0);
  out.set(body, groupLength.length);
  return out;
}

/** Encodes only the dataset (no preamble, no meta) in the given transfer syntax. */
export function encodeDataset(opts: InstanceOptions = {}): { bytes: Uint8Array; resolved: ResolvedInstance } {
  const o = resolveDefaults(opts);
  const elements = buildDataset(o, opts);
  const ts = o.transferSyntaxUid;
  const explicit = ts !== TransferSyntax.ImplicitVrLittleEndian;
  const bigEndian = ts === TransferSyntax.ExplicitVrBigEndian;
  let bytes = encodeElements(elements, explicit, bigEndian);
  if (ts === TransferSyntax.DeflatedExplicitVrLittleEndian) bytes = new Uint8Array(deflateRawSync(bytes));
  return {
    bytes,
    resolved: {
      transferSyntaxUid: ts,
      sopClassUid: o.sopClassUid,
      sopInstanceUid: o.sopInstanceUid,
      studyInstanceUid: o.study.uid,
      seriesInstanceUid: o.series.uid,
      patientId: o.patient.id,
    },
  };
}

/** A complete DICOM Part 10 file plus the UIDs that were used (generated ones included). */
export function makeInstanceWithInfo(opts: InstanceOptions = {}): { bytes: Uint8Array; resolved: ResolvedInstance } {
  const { bytes: dataset, resolved } = encodeDataset(opts);
  let body = dataset;
  if (body.length % 2 === 1) {
    // Only a deflated stream can be odd: pad it with one zero byte (PS3.5 A.5).
    const padded = new Uint8Array(body.length + 1);
    padded.set(body);
    body = padded;
  }
  const meta = buildMeta(resolved.sopClassUid, resolved.sopInstanceUid, resolved.transferSyntaxUid);
  const out = new Uint8Array(132 + meta.length + body.length);
  out.set([0x44, 0x49, 0x43, 0x4d], 128); // "DICM"
  out.set(meta, 132);
  out.set(body, 132 + meta.length);
  return { bytes: out, resolved };
}

/** A complete DICOM Part 10 file. */
export function makeInstance(opts: InstanceOptions = {}): Uint8Array {
  return makeInstanceWithInfo(opts).bytes;
}

// ---------------------------------------------------------------------------------------------------
// Series

export interface SeriesGenOptions extends Omit<InstanceOptions, 'sopInstanceUid' | 'instanceNumber'> {
  count: number;
  /** Makes every UID reproducible (study, series, instances) when the study/series UIDs are not given. */
  uidSeed?: string;
  /** Instance numbers start here (default 1). */
  firstInstanceNumber?: number;
}

export interface SeriesInstance {
  sopInstanceUid: string;
  instanceNumber: number;
  bytes: Uint8Array;
}

function* seriesInstances(opts: SeriesGenOptions): Generator<SeriesInstance> {
  const uid = uidGenerator(opts.uidSeed);
  const study = { ...opts.study, uid: opts.study?.uid ?? uid('study') };
  const series = { ...opts.series, uid: opts.series?.uid ?? uid('series') };
  const first = opts.firstInstanceNumber ?? 1;
  for (let i = 0; i < opts.count; i++) {
    const instanceNumber = first + i;
    const sopInstanceUid = uid(`instance-${instanceNumber}`);
    const bytes = makeInstance({ ...opts, study, series, sopInstanceUid, instanceNumber });
    yield { sopInstanceUid, instanceNumber, bytes };
  }
}

/** `count` instances of one series (same patient/study/series, instance numbers 1..count). */
export function makeSeries(opts: SeriesGenOptions): SeriesInstance[] {
  return [...seriesInstances(opts)];
}

export interface WrittenSeries {
  dir: string;
  files: string[];
  sopInstanceUids: string[];
  totalBytes: number;
}

/** Writes the series as `<dir>/<n>.dcm` (n = instance number), one file at a time (bounded memory). */
export async function writeSeriesToDir(dir: string, opts: SeriesGenOptions): Promise<WrittenSeries> {
  await mkdir(dir, { recursive: true });
  const files: string[] = [];
  const sopInstanceUids: string[] = [];
  let totalBytes = 0;
  for (const inst of seriesInstances(opts)) {
    const file = join(dir, `${inst.instanceNumber}.dcm`);
    await writeFile(file, inst.bytes);
    files.push(file);
    sopInstanceUids.push(inst.sopInstanceUid);
    totalBytes += inst.bytes.length;
  }
  return { dir, files, sopInstanceUids, totalBytes };
}
