/**
 * Media types of pixel data in WADO-RS responses (PS3.18 8.7.3.3, Tables 8.7.3-4 and 8.7.3-5), and the
 * choice among an Accept header's ranges of the representation a frames response is sent in.
 */
import { acceptableRanges, formatMediaType, type MediaRange } from './accept.ts';

export const explicitVrLittleEndian = '1.2.840.10008.1.2.1';
export const octetStream = 'application/octet-stream';

/**
 * PS3.18 Table 8.7.3-5: the compressed syntaxes each media type carries (its default first). The x- names
 * are those earlier editions and dicomweb-client use; a response echoes the name the request used.
 */
const syntaxesOfMediaType: ReadonlyMap<string, readonly string[]> = new Map([
  ['image/jpeg', ['1.2.840.10008.1.2.4.70', '1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.4.57']],
  ['image/dicom-rle', ['1.2.840.10008.1.2.5']],
  ['image/x-dicom-rle', ['1.2.840.10008.1.2.5']],
  ['image/jls', ['1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.4.81']],
  ['image/x-jls', ['1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.4.81']],
  ['image/jp2', ['1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.91']],
  ['image/jpx', ['1.2.840.10008.1.2.4.92', '1.2.840.10008.1.2.4.93']],
  ['image/jphc', ['1.2.840.10008.1.2.4.201', '1.2.840.10008.1.2.4.202', '1.2.840.10008.1.2.4.203']],
  ['image/jxl', ['1.2.840.10008.1.2.4.110', '1.2.840.10008.1.2.4.111', '1.2.840.10008.1.2.4.112']],
  // PS3.18 8.7.3.5 video-pixel: MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 (the fragmentable variants too).
  ['video/mpeg', ['1.2.840.10008.1.2.4.100', '1.2.840.10008.1.2.4.100.1', '1.2.840.10008.1.2.4.101', '1.2.840.10008.1.2.4.101.1']],
  ['video/mp4', [
    '1.2.840.10008.1.2.4.102', '1.2.840.10008.1.2.4.102.1', '1.2.840.10008.1.2.4.103', '1.2.840.10008.1.2.4.103.1', '1.2.840.10008.1.2.4.104',
    '1.2.840.10008.1.2.4.104.1', '1.2.840.10008.1.2.4.105', '1.2.840.10008.1.2.4.105.1', '1.2.840.10008.1.2.4.106', '1.2.840.10008.1.2.4.106.1',
  ]],
  ['video/H265', ['1.2.840.10008.1.2.4.107', '1.2.840.10008.1.2.4.108']],
]);

/** The standard's media type of a compressed syntax's frames; undefined for one it names none for (private ones). */
export function mediaTypeOfSyntax(transferSyntaxUid: string): string | undefined {
  for (const [mediaType, syntaxes] of syntaxesOfMediaType) {
    if (!mediaType.includes('/x-') && syntaxes.includes(transferSyntaxUid)) return mediaType;
  }
  return undefined;
}

/** What this instance's frames can be sent as. */
export interface FrameOffers {
  storedTransferSyntaxUid: string;
  /** The stored syntax is an encapsulated (compressed) one. */
  storedEncapsulated: boolean;
  /** Encapsulated, and each frame's fragments are known: its codestream can go as stored. */
  asStored: boolean;
  /** Uncompressed little endian frames can be produced: stored so, or decodable by the transcoder. */
  native: boolean;
}

export type FrameRepresentation =
  /** Uncompressed, little endian (PS3.18 Table 8.7.3-4): the default. */
  | { kind: 'native'; mediaType: typeof octetStream; transferSyntaxUid: typeof explicitVrLittleEndian }
  /** Each frame's codestream as stored, without the fragment items (PS3.18 8.7.3.3.2). */
  | { kind: 'stored'; mediaType: string; transferSyntaxUid: string };

const native: FrameRepresentation = { kind: 'native', mediaType: octetStream, transferSyntaxUid: explicitVrLittleEndian };

/**
 * The representation of the first range, by q then the order sent, that this instance can be sent in;
 * undefined when none can (406). A range without a transfer-syntax parameter means its media type's
 * default (PS3.18 8.7.3.5): explicit VR little endian for octet-stream; for an image/* type, any of its
 * syntaxes that the instance is stored in (the response names it). `transfer-syntax=*` lets the frames go
 * as stored, else uncompressed. `*\/*` and multipart/related without a type are the default, uncompressed.
 * Single-part media types are not offered: this response is always multipart (PS3.18 8.6.1).
 */
export function chooseFrameRepresentation(ranges: readonly MediaRange[], offers: FrameOffers): FrameRepresentation | undefined {
  for (const range of acceptableRanges(ranges)) {
    for (const candidate of candidatesOf(range, offers)) {
      if (candidate.kind === 'native' ? offers.native : offers.asStored) return candidate;
    }
  }
  return undefined;
}

function candidatesOf(range: MediaRange, offers: FrameOffers): FrameRepresentation[] {
  if (range.type === '*') return [native];
  if (range.type !== 'multipart' || (range.subtype !== 'related' && range.subtype !== '*')) return [];
  const partType = range.parameters.get('type')?.toLowerCase();
  const transferSyntax = range.parameters.get('transfer-syntax');
  const stored = offers.storedTransferSyntaxUid;
  if (partType === undefined) return [native];
  if (partType === octetStream || partType === '*/*') {
    if (transferSyntax === undefined || transferSyntax === explicitVrLittleEndian) return [native];
    if (!offers.storedEncapsulated) return transferSyntax === '*' ? [native] : [];
    const asStored: FrameRepresentation = { kind: 'stored', mediaType: octetStream, transferSyntaxUid: stored };
    if (transferSyntax === '*') return [asStored, native];
    return transferSyntax === stored ? [asStored] : [];
  }
  if (!offers.storedEncapsulated || (transferSyntax !== undefined && transferSyntax !== '*' && transferSyntax !== stored)) return [];
  if (partType === 'image/*' || partType === 'video/*') {
    const mediaType = mediaTypeOfSyntax(stored);
    return mediaType?.startsWith(partType.slice(0, -1)) === true ? [{ kind: 'stored', mediaType, transferSyntaxUid: stored }] : [];
  }
  // Media type names are case-insensitive (video/H265 is written so by PS3.18).
  const named = [...syntaxesOfMediaType.keys()].find((name) => name.toLowerCase() === partType);
  return named !== undefined && syntaxesOfMediaType.get(named)!.includes(stored) ? [{ kind: 'stored', mediaType: named, transferSyntaxUid: stored }] : [];
}

/** The multipart media type a representation is asked for with: what a 406 lists. */
export function describeRepresentation(representation: FrameRepresentation): string {
  return formatMediaType('multipart/related', [['type', representation.mediaType], ['transfer-syntax', representation.transferSyntaxUid]]);
}

/** Every representation the instance can be sent in, for a 406's message. */
export function offeredRepresentations(offers: FrameOffers): FrameRepresentation[] {
  const offered: FrameRepresentation[] = [];
  if (offers.native) offered.push(native);
  if (offers.asStored) offered.push({ kind: 'stored', mediaType: mediaTypeOfSyntax(offers.storedTransferSyntaxUid) ?? octetStream, transferSyntaxUid: offers.storedTransferSyntaxUid });
  return offered;
}
