/**
 * What converting one stored instance holds in memory at its peak, from what the catalog knows before the
 * instance is read: its stored size and its Image Pixel attributes (the catalog keeps every top-level
 * numeric and text attribute of the header, Rows to Bits Allocated among them). The transcoder pool admits
 * jobs by this estimate and refuses one over `transcodeJobBytesMax`; DICOMweb weighs a conversion by it in
 * its held-bytes budget. Budgets that counted the stored size let a 17 MB JPEG cine (553 MB decoded) run
 * three at once in the pool, 5 GB (hunt 85).
 *
 * The model (transcode.ts, "Memory"): the input stays held to the end; the dataset's uncompressed size S
 * (the stored size for a native instance, the decoded pixels for a compressed or deflated one) is held
 * - twice more for native -> native (the output, plus swapped copies of binary values when the byte order
 *   changes): about 3x a native instance;
 * - three times more when pixels are decoded or encoded (the decoded frames, their concatenation into the
 *   Pixel Data value, which overlap until the frames are collected, and the output; encoded frames are at
 *   most as large as the decoded ones).
 * Measured (hunt 86, one C-MOVE alone, peak RSS above the idle peer's): a 17 MB JPEG cine of 553 MB decoded,
 * +1.7 GB (estimate 1.68 GB); a 600 MB explicit VR LE instance converted to implicit VR LE, +2.0 GB of
 * anonymous memory (estimate 1.8 GB) plus 0.6 GB of the store's files mapped while it is read.
 */
import type { DicomElement } from './dicom-types.ts';
import { Tags } from './dictionary.ts';
import { DEFLATED_LE, UNCOMPRESSED } from './transcode-targets.ts';

/**
 * One conversion estimated above this is refused, not run: about a 680 MB native instance, or compressed
 * pixel data decoding to 680 MB. Beyond, one conversion alone would take most of a small machine's memory;
 * such an instance is still sent as stored to whoever takes its syntax (transfer-syntax=* in DICOMweb).
 */
export const transcodeJobBytesMax = 2 * 1024 * 1024 * 1024;

/** The catalog's knowledge of an instance that the estimate uses. */
export interface EstimatedInstance {
  byteLength: number;
  transferSyntaxUid: string;
  attributes: readonly DicomElement[];
}

/**
 * A compressed instance whose catalog entry lacks its image size (none in this archive's corpus) is taken
 * to decode to this many times its stored size: lossless codecs reach 2-3x.
 */
const unknownDecodedRatio = 4;

/** Bytes of pixel data the instance decodes to (0 when the catalog lacks Rows or Columns). */
export function decodedPixelBytes(attributes: readonly DicomElement[]): number {
  const count = (tag: number, fallback: number): number => {
    const value = Number(attributes.find((element) => element.tag === tag)?.value?.split('\\')[0]?.trim());
    return Number.isSafeInteger(value) && value > 0 ? value : fallback;
  };
  const rows = count(Tags.Rows, 0);
  const columns = count(Tags.Columns, 0);
  const frames = count(Tags.NumberOfFrames, 1);
  const samples = count(Tags.SamplesPerPixel, 1);
  const bitsAllocated = count(Tags.BitsAllocated, 16);
  return Math.ceil((rows * columns * frames * samples * bitsAllocated) / 8);
}

/** Peak bytes held converting `instance` to `toTransferSyntaxUid`; 0 when it goes as stored. */
export function estimateTranscodeBytes(instance: EstimatedInstance, toTransferSyntaxUid: string): number {
  const stored = Math.max(0, instance.byteLength);
  const from = instance.transferSyntaxUid;
  if (from === toTransferSyntaxUid) return 0;
  // An entry without attributes (a test's bare one) counts as one whose image size is unknown.
  const pixels = decodedPixelBytes(instance.attributes ?? []);
  const nativeSource = UNCOMPRESSED.has(from) && from !== DEFLATED_LE;
  // The uncompressed dataset: what a native instance is, what a deflated or compressed one becomes.
  const uncompressed = nativeSource ? stored : Math.max(stored, pixels > 0 ? pixels : stored * unknownDecodedRatio);
  const pixelsCoded = !UNCOMPRESSED.has(from) || !UNCOMPRESSED.has(toTransferSyntaxUid);
  return stored + (pixelsCoded ? 3 : 2) * uncompressed;
}

/** Why a conversion estimated at `estimatedBytes` is refused, its first 64 characters a DIMSE Error Comment's; undefined when it may run. */
export function transcodeTooLarge(estimatedBytes: number, jobBytesMax = transcodeJobBytesMax): string | undefined {
  if (!(estimatedBytes > jobBytesMax)) return undefined;
  const mib = (bytes: number) => Math.ceil(bytes / (1024 * 1024));
  return `conversion needs ~${mib(estimatedBytes)} MiB, over ${mib(jobBytesMax)} MiB: refused; the instance is sent as stored to a receiver that accepts its transfer syntax`;
}
