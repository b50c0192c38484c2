/**
 * Which transfer syntaxes transcode.ts can produce from which: pure tables and predicates, apart from the
 * codecs, so that choosing a C-GET / C-MOVE presentation context in the peer's thread loads no codec
 * (the transcoding itself runs in the transcoder's thread: transcode-pool.ts).
 */
import type { DicomElement } from './dicom-types.ts';
import { Tags } from './dictionary.ts';

export const IMPLICIT_LE = '1.2.840.10008.1.2';
export const EXPLICIT_LE = '1.2.840.10008.1.2.1';
export const DEFLATED_LE = '1.2.840.10008.1.2.1.99';
export const EXPLICIT_BE = '1.2.840.10008.1.2.2';

export const UNCOMPRESSED: ReadonlySet<string> = new Set([IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE]);

/** Compressed syntaxes we can decode (verified by encoding + decoding with the dcmjs-codecs WASM). */
const DECODABLE: ReadonlySet<string> = new Set([
  '1.2.840.10008.1.2.4.50', // JPEG baseline (lossy)
  '1.2.840.10008.1.2.4.51', // JPEG extended (lossy, 8/12-bit): decoded by decodeJpegDirect
  '1.2.840.10008.1.2.4.57', // JPEG lossless, any predictor: decoded by decodeJpegDirect
  '1.2.840.10008.1.2.4.70', // JPEG lossless, first-order prediction
  '1.2.840.10008.1.2.4.80', // JPEG-LS lossless
  '1.2.840.10008.1.2.4.81', // JPEG-LS near-lossless
  '1.2.840.10008.1.2.4.90', // JPEG 2000 lossless only
  '1.2.840.10008.1.2.4.91', // JPEG 2000
  '1.2.840.10008.1.2.5', // RLE lossless
  '1.2.840.10008.1.2.4.201', // HTJ2K lossless
  '1.2.840.10008.1.2.4.202', // HTJ2K lossless RPCL
  '1.2.840.10008.1.2.4.203', // HTJ2K
  '1.2.840.10008.1.2.4.110', // JPEG XL lossless
  '1.2.840.10008.1.2.4.112', // JPEG XL
]);

/**
 * Lossless syntaxes we can encode into (dcmjs-dimse `Transcoding` over dcmjs-codecs, each frame decoded back
 * and compared before it is used), so a C-GET context accepted in one of them carries every instance.
 */
export const ENCODABLE: ReadonlySet<string> = new Set([
  '1.2.840.10008.1.2.5', // RLE lossless
  '1.2.840.10008.1.2.4.70', // JPEG lossless, first-order prediction
  '1.2.840.10008.1.2.4.80', // JPEG-LS lossless
  '1.2.840.10008.1.2.4.90', // JPEG 2000 lossless only (one sample per pixel)
  '1.2.840.10008.1.2.4.201', // HTJ2K lossless (one sample per pixel)
]);

/** Our JPEG 2000 encoders' colour output is not checked against a DICOM colour model (YBR_RCT): monochrome only. */
export const MONOCHROME_ONLY_TARGETS: ReadonlySet<string> = new Set(['1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.201']);

/** Syntaxes whose encoding loses information (relevant only as targets). */
const LOSSY: ReadonlySet<string> = new Set([
  '1.2.840.10008.1.2.4.50',
  '1.2.840.10008.1.2.4.51',
  '1.2.840.10008.1.2.4.81',
  '1.2.840.10008.1.2.4.91',
  '1.2.840.10008.1.2.4.203',
  '1.2.840.10008.1.2.4.100', // MPEG2 ...
  '1.2.840.10008.1.2.4.101',
  '1.2.840.10008.1.2.4.102',
  '1.2.840.10008.1.2.4.103',
  '1.2.840.10008.1.2.4.104',
  '1.2.840.10008.1.2.4.105',
  '1.2.840.10008.1.2.4.106',
  '1.2.840.10008.1.2.4.107',
  '1.2.840.10008.1.2.4.108',
  '1.2.840.10008.1.2.4.112',
]);

export function canTranscode(fromTransferSyntaxUid: string, toTransferSyntaxUid: string): boolean {
  if (fromTransferSyntaxUid === toTransferSyntaxUid) return true;
  if (!UNCOMPRESSED.has(toTransferSyntaxUid) && !ENCODABLE.has(toTransferSyntaxUid)) return false;
  return UNCOMPRESSED.has(fromTransferSyntaxUid) || DECODABLE.has(fromTransferSyntaxUid);
}

/** canTranscode for an instance of `samplesPerPixel`: a colour one is not encoded into the monochrome-only targets. */
export function canTranscodeSamples(fromTransferSyntaxUid: string, toTransferSyntaxUid: string, samplesPerPixel: number): boolean {
  if (fromTransferSyntaxUid === toTransferSyntaxUid) return true;
  return canTranscode(fromTransferSyntaxUid, toTransferSyntaxUid) && !(MONOCHROME_ONLY_TARGETS.has(toTransferSyntaxUid) && samplesPerPixel > 1);
}

/** canTranscodeSamples for a stored instance, its Samples per Pixel read from its catalog attributes (1 when absent). */
export function canTranscodeInstance(instance: { transferSyntaxUid: string; attributes: readonly DicomElement[] }, toTransferSyntaxUid: string): boolean {
  const samplesPerPixel = Number(instance.attributes.find((element) => element.tag === Tags.SamplesPerPixel)?.value ?? 1);
  return canTranscodeSamples(instance.transferSyntaxUid, toTransferSyntaxUid, samplesPerPixel);
}

/** True when producing `to` means compressing (costlier than decoding, and only lossless syntaxes). */
export function needsEncoding(toTransferSyntaxUid: string): boolean {
  return ENCODABLE.has(toTransferSyntaxUid);
}

/** The receiver's first syntax we can produce, preferring ones we only decode into, and lossless ones. */
export function chooseTarget(from: string, acceptable: readonly string[]): string | undefined {
  let encodedFallback: string | undefined;
  let lossyFallback: string | undefined;
  for (const ts of acceptable) {
    if (typeof ts !== 'string' || !canTranscode(from, ts)) continue;
    if (LOSSY.has(ts) && ts !== from) lossyFallback ??= ts;
    else if (ENCODABLE.has(ts)) encodedFallback ??= ts;
    else return ts;
  }
  return encodedFallback ?? lossyFallback;
}
