/** VR classes and the value codecs shared by the reader, the writer and the Part 10 splitter. */
import type { Vr } from '../dicom-types.ts';
import { TransferSyntax } from '../dicom-types.ts';

/** VRs whose explicit VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2). */
export const longLengthVrs: ReadonlySet<Vr> = new Set([
  'OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV',
]);

/** VRs whose value is text, kept as a latin1 string. */
export const textVrs: ReadonlySet<Vr> = new Set([
  'AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT',
]);

/** Binary numeric VRs and the size of one value in bytes. */
export const numericVrSizes: ReadonlyMap<Vr, number> = new Map([
  ['US', 2], ['SS', 2], ['UL', 4], ['SL', 4], ['FL', 4], ['FD', 8], ['SV', 8], ['UV', 8], ['AT', 4],
]);

/** VRs whose value is bytes, not text or numbers: what DICOM JSON names by a BulkDataURI (PS3.18 F.2.7). */
export const binaryVrs: ReadonlySet<Vr> = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'UN']);

/** Every VR defined by PS3.5 6.2, used to tell a known VR from two random uppercase letters. */
export const knownVrs: ReadonlySet<Vr> = new Set([
  ...textVrs, ...numericVrSizes.keys(), 'OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UN',
]);

/** How an explicit VR element header goes on after its two VR bytes. */
export interface ExplicitVrHeader {
  /** The VR named; undefined for legacy bytes, whose value is read as in implicit VR (dictionary VR, else UN). */
  readonly vr: Vr | undefined;
  /** 2 reserved bytes and a 4-byte length follow; else a 2-byte length. */
  readonly longLength: boolean;
}

const explicitVrHeaders = new Map<number, ExplicitVrHeader | null>();

/**
 * The header form of two explicit VR bytes; undefined when they are no VR at all (non-printable: an
 * implicit VR data set sent as explicit, say). Two capital letters unknown here are a future VR, with a
 * 4-byte length (PS3.5 7.1.2). Other printable bytes are a legacy writer's (CTN 3.2 writes two spaces for
 * an element its dictionary lacks): read as DCMTK reads them, with a 2-byte length. At most 65,536 entries.
 */
export function explicitVrHeader(first: number, second: number): ExplicitVrHeader | undefined {
  const key = (first << 8) | second;
  let header = explicitVrHeaders.get(key);
  if (header === undefined) {
    header = classifyVrBytes(first, second);
    explicitVrHeaders.set(key, header);
  }
  return header ?? undefined;
}

function classifyVrBytes(first: number, second: number): ExplicitVrHeader | null {
  const upper = (byte: number) => byte >= 0x41 && byte <= 0x5a;
  const printable = (byte: number) => byte >= 0x20 && byte <= 0x7e;
  if (upper(first) && upper(second)) {
    const vr = String.fromCharCode(first, second);
    return { vr, longLength: longLengthVrs.has(vr) || !knownVrs.has(vr) };
  }
  return printable(first) && printable(second) ? { vr: undefined, longLength: false } : null;
}

/** True for the VRs whose value this codec decodes into `DicomElement.value`. */
export function isDecodableVr(vr: Vr): boolean {
  return textVrs.has(vr) || numericVrSizes.has(vr);
}

export interface TransferSyntaxLayout {
  implicitVr: boolean;
  littleEndian: boolean;
  deflated: boolean;
}

const deflatedSyntaxUids: ReadonlySet<string> = new Set([
  TransferSyntax.DeflatedExplicitVrLittleEndian,
  '1.2.840.10008.1.2.4.95', // JPIP Referenced Deflate
]);

/**
 * How a transfer syntax lays out the dataset. Any syntax other than implicit LE, explicit BE and the
 * deflated ones is explicit VR little endian (all encapsulated syntaxes are, PS3.5 A.4).
 */
export function layoutOf(transferSyntaxUid: string): TransferSyntaxLayout {
  if (transferSyntaxUid === TransferSyntax.ImplicitVrLittleEndian) {
    return { implicitVr: true, littleEndian: true, deflated: false };
  }
  if (transferSyntaxUid === TransferSyntax.ExplicitVrBigEndian) {
    return { implicitVr: false, littleEndian: false, deflated: false };
  }
  return { implicitVr: false, littleEndian: true, deflated: deflatedSyntaxUids.has(transferSyntaxUid) };
}

/** Latin1 text of bytes[start, end) without trailing spaces and NULs (the padding PS3.5 6.2 allows). */
export function decodeText(bytes: Uint8Array, start: number, end: number): string {
  while (end > start && (bytes[end - 1] === 0x20 || bytes[end - 1] === 0x00)) end--;
  if (end === start) return '';
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
}

function formatFloat(x: number): string {
  return Object.is(x, -0) ? '-0' : String(x);
}

/**
 * Decimal values of a binary numeric VR joined by backslash. A trailing partial value (odd or
 * non-multiple length from a broken sender) is ignored rather than rejected.
 */
export function decodeNumbers(bytes: Uint8Array, start: number, length: number, vr: Vr, littleEndian: boolean): string {
  const size = numericVrSizes.get(vr);
  if (size === undefined) throw new Error(`not a numeric VR: ${vr}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset + start, length);
  const count = Math.floor(length / size);
  const values: string[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const at = i * size;
    switch (vr) {
      case 'US': values[i] = String(view.getUint16(at, littleEndian)); break;
      case 'SS': values[i] = String(view.getInt16(at, littleEndian)); break;
      case 'UL': values[i] = String(view.getUint32(at, littleEndian)); break;
      case 'SL': values[i] = String(view.getInt32(at, littleEndian)); break;
      case 'FL': values[i] = formatFloat(view.getFloat32(at, littleEndian)); break;
      case 'FD': values[i] = formatFloat(view.getFloat64(at, littleEndian)); break;
      case 'SV': values[i] = view.getBigInt64(at, littleEndian).toString(); break;
      case 'UV': values[i] = view.getBigUint64(at, littleEndian).toString(); break;
      default: {
        // AT: group then element, each in the syntax's byte order, reported as one 32-bit tag number.
        const group = view.getUint16(at, littleEndian);
        const element = view.getUint16(at + 2, littleEndian);
        values[i] = String(((group << 16) | element) >>> 0);
      }
    }
  }
  return values.join('\\');
}
