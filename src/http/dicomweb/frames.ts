/**
 * WADO-RS frames (PS3.18 10.4, frames resources): /studies/{s}/series/{se}/instances/{i}/frames/{list}
 * answers one multipart/related part per listed frame, in the order listed.
 *
 * Representations (PS3.18 8.7.3.3, see pixel-media-types.ts): by default uncompressed little endian
 * (application/octet-stream, transfer syntax 1.2.840.10008.1.2.1), an encapsulated instance decoded by
 * the transcoder first; a client that accepts the stored compressed syntax (`type="image/jls"`,
 * `transfer-syntax=*`, or that syntax's UID) gets each frame's codestream as stored, fragments joined.
 * Explicit VR big endian and deflated instances go through the transcoder to explicit VR little endian.
 *
 * Memory: an instance over `frameStreamingBytesMin` in little endian or a compressed syntax is read as it
 * streams, keeping its header and the requested frames' bytes only. Otherwise the stored data set is read
 * whole (instances up to `frameSourceBytesMax`), and the requested frames are views into it (copies only
 * for a frame of several fragments, or a 1-bit frame that starts inside a byte). Decoding an encapsulated instance whose frames are located decodes a data set of the
 * requested frames alone; otherwise (frames not located, big endian, deflated) the whole instance is
 * converted: its bytes move to the transcoder's thread, and the converted instance comes back (up to
 * `decodedPixelBytesMax` of pixels).
 */
import { canTranscode, EXPLICIT_LE, IMPLICIT_LE, UNCOMPRESSED } from '../../codec/transcode-targets.ts';
import { DatasetParseError } from '../../codec/dataset/errors.ts';
import type { DicomElement } from '../../codec/dicom-types.ts';
import { EncapsulatedFrameScanner } from '../../codec/dataset/encapsulated-scan.ts';
import { encapsulatedFrame, framesOnlyDataset, nativeFrame, nativeFrameBits, readPixelData, readPixelDataHeader, type ImagePixelAttributes, type PixelData } from '../../codec/dataset/pixel-data.ts';
import { Tags } from '../../codec/dictionary.ts';
import { parseAccept } from './accept.ts';
import type { CatalogEntry } from '../../actors/storage/catalog-types.ts';
import { DicomWebError, heldInstanceBytesMax, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { convertInstance, holdingInstance, readToPixelData, readWholeInstance, selectInstances, streamInstanceHead } from './instances.ts';
import { startMultipart } from './multipart-writer.ts';
import { chooseFrameRepresentation, describeRepresentation, offeredRepresentations, type FrameOffers, type FrameRepresentation } from './pixel-media-types.ts';
import type { DicomWebRoute } from './routes.ts';

type FramesRoute = Extract<DicomWebRoute, { type: 'frames' }>;

/** Stored instances larger than this are refused (413): the frames are cut from the instance read whole. */
export const frameSourceBytesMax = 512 * 1024 * 1024;
/** Decoding an encapsulated instance produces all its frames: beyond this many pixel bytes, 413. */
export const decodedPixelBytesMax = 1024 * 1024 * 1024;

/** How the stored bytes hold their pixels, which says how native frames are had. */
type StoredLayout =
  /** Implicit or explicit VR little endian: frames are cut from the value as they are. */
  | 'nativeLittleEndian'
  /** Explicit VR big endian or deflated: converted to explicit VR little endian by the transcoder first. */
  | 'nativeConverted'
  /** A compressed syntax: frames as stored, or decoded by the transcoder. */
  | 'encapsulated';

function storedLayoutOf(transferSyntaxUid: string): StoredLayout {
  if (transferSyntaxUid === IMPLICIT_LE || transferSyntaxUid === EXPLICIT_LE) return 'nativeLittleEndian';
  return UNCOMPRESSED.has(transferSyntaxUid) ? 'nativeConverted' : 'encapsulated';
}

export async function retrieveFrames(ctx: DicomWebContext, exchange: DicomWebExchange, route: FramesRoute): Promise<void> {
  await framesFor(ctx, exchange, route, parseAccept(exchange.req.headers.accept), (representation, frames) => sendFrames(exchange, route, representation, frames));
}

/** What the delivered frames are cut from: their pixel attributes and the header of their data set (after any decode). */
export interface FramesSource {
  image: ImagePixelAttributes;
  elements: readonly DicomElement[];
  /** The stored data set's bytes up to its Pixel Data at least, in `transferSyntaxUid`: for values `elements` leaves out (a palette). */
  header: Uint8Array;
  transferSyntaxUid: string;
}

/** Where frames go once had: the multipart response, or a rendering. */
export type DeliverFrames = (representation: FrameRepresentation, frames: Uint8Array[], source: FramesSource) => Promise<void>;

/** The image attributes that size what a deliverer makes of its frames. */
export type DeliveredImageSize = Pick<ImagePixelAttributes, 'rows' | 'columns' | 'samplesPerPixel' | 'photometricInterpretation'>;

/**
 * Bytes a deliverer holds beyond the frames until its response is read (a rendering's pixels and encoded
 * body), for an image of this size: weighed in the budget of bytes held at once with the frames.
 */
export type HeldBeyondFrames = (image: DeliveredImageSize) => number;

/**
 * The asked frames of an instance, in the representation the ranges choose, handed to `deliver`, which
 * holds `heldBeyond` more bytes than the frames until its response is read.
 */
export async function framesFor(
  ctx: DicomWebContext,
  exchange: DicomWebExchange,
  route: FramesRoute,
  ranges: ReturnType<typeof parseAccept>,
  deliver: DeliverFrames,
  heldBeyond: HeldBeyondFrames = () => 0,
): Promise<void> {
  const [selected] = await selectInstances(ctx, { level: 'IMAGE', studyUid: route.studyUid, seriesUid: route.seriesUid, instanceUid: route.instanceUid });
  if (selected === undefined) throw new DicomWebError(404, 'ERR_DICOMWEB_NOT_FOUND', `instance ${route.instanceUid} is not stored in this mesh`);
  const request: FramesRequest = { ctx, exchange, route, ranges, selected, deliver, heldBeyond };
  // A large native little endian or encapsulated instance: only its header and the asked frames' bytes are
  // kept, whatever its size.
  if (selected.byteLength > frameStreamingBytesMin) {
    const layout = storedLayoutOf(selected.transferSyntaxUid);
    if (layout === 'nativeLittleEndian' && (await nativeFramesByRange(request))) return;
    if (layout === 'encapsulated' && (await encapsulatedFramesByRange(request))) return;
  }
  if (selected.byteLength > frameSourceBytesMax) {
    throw new DicomWebError(413, 'ERR_DICOMWEB_TOO_LARGE', `instance ${route.instanceUid} holds ${selected.byteLength} bytes: frames are served from instances up to ${frameSourceBytesMax} read whole`);
  }
  // The instance is read whole (and, when decoded, its pixels made): requests share a budget of bytes held
  // at once, and wait their turn beyond it, so parallel viewers of a large cine cannot exhaust memory.
  // The image's size is weighed as the catalog holds it, since the hold comes before the read.
  await holdingInstance(ctx, exchange, selected.byteLength * 3 + heldBeyond(catalogImageSize(selected)), () => framesOf(request));
}

/** An image's size as its catalog entry holds it (what is missing or unreadable counts 0, or 1 sample). */
function catalogImageSize(entry: CatalogEntry): DeliveredImageSize {
  const text = (tag: number) => entry.attributes.find((element) => element.tag === tag)?.value?.split('\\')[0]?.trim() ?? '';
  const count = (tag: number, fallback: number) => {
    const value = Number(text(tag));
    return Number.isSafeInteger(value) && value > 0 ? value : fallback;
  };
  return { rows: count(Tags.Rows, 0), columns: count(Tags.Columns, 0), samplesPerPixel: count(Tags.SamplesPerPixel, 1), photometricInterpretation: text(Tags.PhotometricInterpretation) };
}

/** A frames request once its instance is chosen: what the paths that read and hold its frames take. */
interface FramesRequest {
  ctx: DicomWebContext;
  exchange: DicomWebExchange;
  route: FramesRoute;
  ranges: ReturnType<typeof parseAccept>;
  selected: CatalogEntry;
  deliver: DeliverFrames;
  heldBeyond: HeldBeyondFrames;
}

/** Above this, a little endian or compressed instance's frames are read by range rather than with the whole instance. */
export const frameStreamingBytesMin = 8 * 1024 * 1024;

/**
 * The asked frames of a native little endian instance, read from the store as it goes: the header up to
 * Pixel Data, then only the frames' bytes are kept (the chunks before them are read and dropped). Not
 * checked against the SHA-256, which needs every byte: the scrub checks stored copies. False (nothing
 * sent) for what this path does not take: 1-bit frames, no Pixel Data, Pixel Data of undefined length.
 */
async function nativeFramesByRange(request: FramesRequest): Promise<boolean> {
  const { ctx, exchange, route, ranges, selected, deliver, heldBeyond } = request;
  const offers: FrameOffers = { storedTransferSyntaxUid: selected.transferSyntaxUid, storedEncapsulated: false, asStored: false, native: true };
  const representation = chooseFrameRepresentation(ranges, offers);
  if (representation === undefined) {
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `the frames of instance ${route.instanceUid} can be sent as: ${offeredRepresentations(offers).map(describeRepresentation).join(', ')}`);
  }
  const { chunks } = await streamInstanceHead(ctx, selected, 4);
  try {
    const read = await pixelDataHead(chunks, selected.transferSyntaxUid, route);
    if (read === undefined) return false;
    const { head, valueStart, valueLength, source } = read;
    const image = source.image;
    if (image.bitsAllocated % 8 !== 0 || valueLength === 0xffffffff) return false;
    const size = nativeFrameBits(image) / 8;
    if (route.frameNumbers.some((frameNumber) => frameNumber * size > valueLength)) {
      throw unservableFrames(`the Pixel Data of instance ${route.instanceUid} holds ${valueLength} bytes: too few for its ${image.numberOfFrames} frames`);
    }
    // One buffer a frame, however often the list names it, held within the budget of bytes held at once
    // (as an instance read whole is): a list names up to 10,000 frames, and a buffer for each copy of a
    // 32 MB frame took 4.8 GB for 100 of them (hunt 79), as many frames of a large cine do for many clients.
    const wanted = [...new Set(route.frameNumbers)];
    await holdingFrames(ctx, exchange, route, wanted.length, wanted.length * size + heldBeyond(image), async () => {
      const frameRanges = wanted.map((frameNumber) => ({ start: valueStart + (frameNumber - 1) * size, end: valueStart + frameNumber * size }));
      const frames = wanted.map(() => Buffer.alloc(size));
      copyOverlaps(head, 0, frameRanges, frames);
      let offset = head.length;
      // The chunks before the frames are read and dropped; the store's read ends once the last frame is whole.
      while (frameRanges.some((range) => range.end > offset)) {
        const next = await chunks.next();
        if (next.done === true) break;
        copyOverlaps(next.value, offset, frameRanges, frames);
        offset += next.value.byteLength;
      }
      await chunks.return(undefined);
      if (frameRanges.some((range) => range.end > offset)) throw unservableFrames(`the stored copy of instance ${route.instanceUid} ends before its frames do`);
      const frameOf = new Map(wanted.map((frameNumber, index) => [frameNumber, frames[index]!]));
      await deliver(representation, route.frameNumbers.map((frameNumber) => frameOf.get(frameNumber)!), source);
    });
  } finally {
    await chunks.return(undefined);
  }
  return true;
}

/**
 * The asked frames of a compressed instance, read from the store as it goes: the header up to Pixel Data,
 * then only the fragments of those frames are kept; the read stops where an offset table says they end.
 * Sent as stored, or decoded (those frames alone). Not checked against the SHA-256, as nativeFramesByRange.
 * False (nothing sent) when the frames cannot be told apart this way: the whole-instance path decides.
 */
async function encapsulatedFramesByRange(request: FramesRequest): Promise<boolean> {
  const { ctx, exchange, route, ranges, selected, deliver, heldBeyond } = request;
  const syntax = selected.transferSyntaxUid;
  const offers: FrameOffers = { storedTransferSyntaxUid: syntax, storedEncapsulated: true, asStored: true, native: canTranscode(syntax, EXPLICIT_LE) };
  const representation = chooseFrameRepresentation(ranges, offers);
  if (representation === undefined) return false;
  const { chunks } = await streamInstanceHead(ctx, selected, 4);
  let codestreams: Map<number, Uint8Array> | undefined;
  let stored: FramesSource;
  try {
    const read = await pixelDataHead(chunks, syntax, route);
    if (read === undefined || read.valueLength !== 0xffffffff) return false;
    stored = read.source;
    const scanner = new EncapsulatedFrameScanner({ numberOfFrames: stored.image.numberOfFrames, wantedFrames: route.frameNumbers, transferSyntaxUid: syntax });
    checked(() => scanner.push(read.head.subarray(read.valueStart)), route.instanceUid);
    while (!scanner.done) {
      const next = await chunks.next();
      if (next.done === true) throw unservableFrames(`the stored copy of instance ${route.instanceUid} ends inside its Pixel Data`);
      checked(() => scanner.push(next.value), route.instanceUid);
    }
    codestreams = scanner.frames();
  } finally {
    await chunks.return(undefined);
  }
  if (codestreams === undefined) return false;
  const codestreamOf = (frameNumber: number) => codestreams.get(frameNumber)!;
  // Held within the budget of bytes held at once, as the native path's frames are: the codestreams, and
  // the frames decoded from them (a rendering of a large compressed image was not counted: review).
  let heldBytes = heldBeyond(stored.image);
  for (const codestream of codestreams.values()) heldBytes += codestream.byteLength;
  if (representation.kind !== 'stored') heldBytes += (codestreams.size * nativeFrameBits(stored.image)) / 8;
  await holdingFrames(ctx, exchange, route, codestreams.size, heldBytes, async () => {
    if (representation.kind === 'stored') await deliver(representation, route.frameNumbers.map(codestreamOf), stored);
    else {
      const decoded = await decodedFrames(ctx, exchange, route, stored, codestreamOf);
      await deliver(representation, decoded.frames, decoded.source);
    }
  });
  return true;
}

/**
 * Runs `work`, which holds `bytes` for `distinctFrames` asked frames, within the budget of bytes held at
 * once (waiting its turn beyond it); a 413 when they alone would take more than the whole budget.
 */
async function holdingFrames(ctx: DicomWebContext, exchange: DicomWebExchange, route: FramesRoute, distinctFrames: number, bytes: number, work: () => Promise<void>): Promise<void> {
  if (bytes > heldInstanceBytesMax) {
    throw new DicomWebError(413, 'ERR_DICOMWEB_TOO_LARGE', `the ${distinctFrames} frames asked of instance ${route.instanceUid} hold ${bytes} bytes (more than ${heldInstanceBytesMax} at once): ask for fewer frames a request`);
  }
  await holdingInstance(ctx, exchange, bytes, work);
}

/**
 * The stored header read from `chunks` up to and with the Pixel Data element's own header (8 bytes in
 * implicit VR, 12 in explicit VR), and where the value starts; undefined without Pixel Data within the
 * bound (the whole-instance path says so: 404). A 404 for a frame beyond the image.
 */
async function pixelDataHead(chunks: AsyncIterator<Uint8Array>, syntax: string, route: FramesRoute): Promise<{ head: Buffer; source: FramesSource; valueStart: number; valueLength: number } | undefined> {
  const elementHeaderBytes = syntax === IMPLICIT_LE ? 8 : 12;
  const { head, pixelDataOffset } = await readToPixelData(chunks, syntax, elementHeaderBytes);
  if (pixelDataOffset === undefined || head.length < pixelDataOffset + elementHeaderBytes) return undefined;
  const source: FramesSource = { ...pixelAttributesOf(head, syntax, route.instanceUid), header: head, transferSyntaxUid: syntax };
  const { numberOfFrames } = source.image;
  const missing = route.frameNumbers.find((frameNumber) => frameNumber > numberOfFrames);
  if (missing !== undefined) throw new DicomWebError(404, 'ERR_DICOMWEB_NO_SUCH_FRAME', `instance ${route.instanceUid} has ${numberOfFrames} frame(s): there is no frame ${missing}`);
  const valueStart = pixelDataOffset + elementHeaderBytes;
  return { head, source, valueStart, valueLength: head.readUInt32LE(valueStart - 4) };
}

/**
 * The asked frames decoded to native little endian: a data set of those codestreams alone goes through the
 * transcoder, so a client that fetches a long cine frame by frame does not cost a decode of every frame.
 */
async function decodedFrames(
  ctx: DicomWebContext,
  exchange: DicomWebExchange,
  route: FramesRoute,
  stored: FramesSource,
  codestreamOf: (frameNumber: number) => Uint8Array,
): Promise<{ frames: Uint8Array[]; source: FramesSource }> {
  const wanted = [...new Set(route.frameNumbers)];
  const decoded = await toExplicitLittleEndian(ctx, exchange, framesOnlyDataset(stored.elements, wanted.map(codestreamOf)), stored.transferSyntaxUid, { ...stored.image, numberOfFrames: wanted.length }, route.instanceUid);
  const { native, source } = nativeOf(decoded, stored, route.instanceUid);
  const positions = new Map(wanted.map((frameNumber, index) => [frameNumber, index + 1]));
  return { frames: eachFrame(route.frameNumbers, (frameNumber) => checked(() => nativeFrame(native, positions.get(frameNumber)!), route.instanceUid)), source };
}

/**
 * `frameOf` each asked frame, made once a frame number: a list may name a frame many times (up to 10,000),
 * and a frame copied out (joined fragments, 1-bit frames) made again for each would multiply its bytes.
 */
function eachFrame(frameNumbers: readonly number[], frameOf: (frameNumber: number) => Uint8Array): Uint8Array[] {
  const made = new Map<number, Uint8Array>();
  return frameNumbers.map((frameNumber) => {
    let frame = made.get(frameNumber);
    if (frame === undefined) {
      frame = frameOf(frameNumber);
      made.set(frameNumber, frame);
    }
    return frame;
  });
}

/**
 * A data set the transcoder made in explicit VR little endian: its native Pixel Data, and the stored header
 * with the colour layout the decoder gave (a frames-only data set keeps no window or rescale).
 */
function nativeOf(decoded: Uint8Array, stored: FramesSource, instanceUid: string): { native: Extract<PixelData, { kind: 'native' }>; source: FramesSource } {
  const native = checked(() => readPixelData(decoded, EXPLICIT_LE), instanceUid);
  if (native.kind !== 'native') throw new DicomWebError(500, 'ERR_DICOMWEB_PIXEL_DATA', `the Pixel Data of instance ${instanceUid} is not native after conversion to ${EXPLICIT_LE}`);
  const decodedElements = pixelAttributesOf(decoded, EXPLICIT_LE, instanceUid).elements;
  const layoutTags = new Set([Tags.PhotometricInterpretation, planarConfigurationTag]);
  const elements = [...stored.elements.filter((element) => !layoutTags.has(element.tag)), ...decodedElements.filter((element) => layoutTags.has(element.tag))];
  return { native, source: { ...stored, image: native.image, elements } };
}

const planarConfigurationTag = 0x00280006;

/** Copies the part of `bytes` (at `bytesStart` in the data set) that falls in each range into its frame. */
function copyOverlaps(bytes: Uint8Array, bytesStart: number, ranges: ReadonlyArray<{ start: number; end: number }>, frames: Uint8Array[]): void {
  const bytesEnd = bytesStart + bytes.byteLength;
  ranges.forEach((range, index) => {
    const from = Math.max(range.start, bytesStart);
    const to = Math.min(range.end, bytesEnd);
    if (from < to) frames[index]!.set(bytes.subarray(from - bytesStart, to - bytesStart), from - range.start);
  });
}

async function framesOf(request: FramesRequest): Promise<void> {
  const { ctx, exchange, route, ranges, selected, deliver } = request;
  const { entry, bytes } = await readWholeInstance(ctx, selected);
  const storedSyntax = entry.transferSyntaxUid;
  const layout = storedLayoutOf(storedSyntax);

  const header: FramesSource = { ...pixelAttributesOf(bytes, storedSyntax, route.instanceUid), header: bytes, transferSyntaxUid: storedSyntax };
  const image = header.image;
  const missing = route.frameNumbers.find((frameNumber) => frameNumber > image.numberOfFrames);
  if (missing !== undefined) {
    // PS3.18 Table 10.4.3-1: 404, the Target Resource (that frame) does not exist.
    throw new DicomWebError(404, 'ERR_DICOMWEB_NO_SUCH_FRAME', `instance ${route.instanceUid} has ${image.numberOfFrames} frame(s): there is no frame ${missing}`);
  }

  let stored: PixelData | undefined = layout === 'nativeConverted' ? undefined : checked(() => readPixelData(bytes, storedSyntax), route.instanceUid);
  if (layout === 'encapsulated' && stored?.kind !== 'encapsulated') {
    throw unservableFrames(`instance ${route.instanceUid} is stored in ${storedSyntax}, but its Pixel Data is not encapsulated`);
  }
  const offers: FrameOffers = {
    storedTransferSyntaxUid: storedSyntax,
    storedEncapsulated: layout === 'encapsulated',
    asStored: stored?.kind === 'encapsulated' && stored.frameFragments !== undefined,
    native: layout !== 'encapsulated' || canTranscode(storedSyntax, EXPLICIT_LE),
  };
  const representation = chooseFrameRepresentation(ranges, offers);
  if (representation === undefined) {
    const offered = offeredRepresentations(offers).map(describeRepresentation);
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', offered.length === 0
      ? `the frames of instance ${route.instanceUid} (stored in ${storedSyntax}) can be sent in no representation: they cannot be told apart, nor decoded`
      : `the frames of instance ${route.instanceUid} can be sent as: ${offered.join(', ')}`);
  }

  switch (representation.kind) {
    case 'stored': {
      if (stored?.kind !== 'encapsulated') throw new Error('frames offered as stored without encapsulated Pixel Data');
      const encapsulated = stored;
      await deliver(representation, eachFrame(route.frameNumbers, (frameNumber) => checked(() => encapsulatedFrame(encapsulated, frameNumber), route.instanceUid)), header);
      return;
    }
    case 'native': {
      if (stored?.kind === 'encapsulated' && stored.frameFragments !== undefined) {
        const encapsulated = stored;
        stored = undefined;
        const decoded = await decodedFrames(ctx, exchange, route, header, (frameNumber) => checked(() => encapsulatedFrame(encapsulated, frameNumber), route.instanceUid));
        await deliver(representation, decoded.frames, decoded.source);
        return;
      }
      let source = header;
      if (layout !== 'nativeLittleEndian') {
        stored = undefined;
        const decoded = await toExplicitLittleEndian(ctx, exchange, bytes, storedSyntax, image, route.instanceUid);
        const converted = nativeOf(decoded, header, route.instanceUid);
        stored = converted.native;
        // The whole data set converted is the header from now on: the stored bytes went to the transcoder's
        // thread (transferred: empty here), and a palette's tables are read from the header (hunt 191: a big
        // endian PALETTE COLOR instance was never rendered).
        source = { ...converted.source, header: decoded, transferSyntaxUid: EXPLICIT_LE };
      }
      if (stored?.kind !== 'native') throw new DicomWebError(500, 'ERR_DICOMWEB_PIXEL_DATA', `the Pixel Data of instance ${route.instanceUid} is not native after conversion to ${EXPLICIT_LE}`);
      const native = stored;
      await deliver(representation, eachFrame(route.frameNumbers, (frameNumber) => checked(() => nativeFrame(native, frameNumber), route.instanceUid)), source);
      return;
    }
    default: {
      const unreachable: never = representation;
      throw new Error(`unhandled representation ${JSON.stringify(unreachable)}`);
    }
  }
}

function pixelAttributesOf(bytes: Uint8Array, transferSyntaxUid: string, instanceUid: string): { image: ImagePixelAttributes; elements: DicomElement[] } {
  const { header, elements } = checked(() => readPixelDataHeader(bytes, transferSyntaxUid), instanceUid);
  switch (header.kind) {
    case 'absent':
      // Frames exist only in Pixel Data (7FE0,0010): for another instance the frames resource does not exist.
      throw new DicomWebError(404, 'ERR_DICOMWEB_NO_PIXEL_DATA', `instance ${instanceUid} has no Pixel Data, so no frames`);
    case 'present':
      return { image: header.image, elements };
    default: {
      const unreachable: never = header;
      throw new Error(`unhandled pixel data header ${JSON.stringify(unreachable)}`);
    }
  }
}

/**
 * An instance whose Pixel Data does not fit its own attributes (too short for its frames, Bits Allocated 12, a
 * Number of Frames that is no number): a 406, as for a conversion that cannot be done, saying it can be had
 * as stored. It was a 500 logged as this server's failure, for data a modality sent (hunt 191).
 */
function unservableFrames(why: string): DicomWebError {
  return new DicomWebError(406, 'ERR_DICOMWEB_PIXEL_DATA', `${why}: its frames cannot be served; the instance can be had as stored (transfer-syntax=*)`);
}

/** `read()`, with a stored instance the reader finds malformed answered unservableFrames (whatever the request). */
function checked<T>(read: () => T, instanceUid: string): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof DatasetParseError) throw unservableFrames(`the Pixel Data of instance ${instanceUid} cannot be read: ${error.message}`);
    throw error;
  }
}

/** The instance in explicit VR little endian, made in the transcoder's thread (stopped if the client goes away). */
async function toExplicitLittleEndian(ctx: DicomWebContext, exchange: DicomWebExchange, bytes: Uint8Array, fromSyntax: string, image: ImagePixelAttributes, instanceUid: string): Promise<Uint8Array> {
  const decodedPixelBytes = image.rows * image.columns * image.samplesPerPixel * Math.ceil(image.bitsAllocated / 8) * image.numberOfFrames;
  if (decodedPixelBytes > decodedPixelBytesMax) {
    throw new DicomWebError(413, 'ERR_DICOMWEB_TOO_LARGE', `instance ${instanceUid} decodes to ${decodedPixelBytes} bytes of pixels (more than ${decodedPixelBytesMax}): ask for its frames as stored (transfer-syntax=${fromSyntax})`);
  }
  // Weighed in the transcoder by what decoding holds (transcode-estimate.ts), not by the stored size.
  const converted = await convertInstance(ctx, exchange, bytes, fromSyntax, EXPLICIT_LE, instanceUid, { estimatedBytes: bytes.byteLength + 3 * decodedPixelBytes });
  // Its frames are counted in the budget of bytes held until read (framesFor) from here on.
  converted.release?.();
  return converted.bytes;
}

async function sendFrames(exchange: DicomWebExchange, route: FramesRoute, representation: FrameRepresentation, frames: readonly Uint8Array[]): Promise<void> {
  const partType = `${representation.mediaType}; transfer-syntax=${representation.transferSyntaxUid}`;
  const instanceUrl = `${exchange.baseUrl}/studies/${route.studyUid}/series/${route.seriesUid}/instances/${route.instanceUid}`;
  const writer = startMultipart(exchange.res, { type: representation.mediaType, transferSyntax: representation.transferSyntaxUid });
  for (const [index, frame] of frames.entries()) {
    await writer.writePart({ 'Content-Type': partType, 'Content-Location': `${instanceUrl}/frames/${route.frameNumbers[index]!}` }, frame);
  }
  writer.end();
}
