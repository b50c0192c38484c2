/**
 * Rendered images (PS3.18 8.3.5 and 10.4 "Retrieve Rendered"; WADO-URI's image/jpeg and image/png, 9.2.2):
 * one frame made 8-bit by src/codec/render.ts (rescale, VOI window, MONOCHROME1 inverted, fitted to the asked
 * size), as JPEG Baseline (lossy, made in the transcoder's thread) or PNG (lossless). For a browser, a report
 * or an EHR link: never a diagnostic representation.
 *
 * WADO-RS: /studies/{s}/series/{se}/instances/{i}/rendered (frame 1) and .../frames/{n}/rendered, Accept
 * image/jpeg (the default) or image/png; `window=center,width[,linear|linear-exact|sigmoid]`,
 * `viewport=vw,vh` (a source region after them is a 400), `quality` (1-100, JPEG), `annotation` ignored.
 */
import { encodeDataset } from '../../codec/dataset/writer.ts';
import { readPixelData } from '../../codec/dataset/pixel-data.ts';
import { parseDataset } from '../../codec/dataset/reader.ts';
import { DatasetParseError } from '../../codec/dataset/errors.ts';
import type { DicomElement } from '../../codec/dicom-types.ts';
import { Tags } from '../../codec/dictionary.ts';
import { encodePng } from '../../codec/png.ts';
import { RenderError, fittedSize, paletteDataTags, renderAttributesOf, renderFrame, renderedSideMax, voiFunctions, type RenderOptions, type RenderedImage, type VoiFunction } from '../../codec/render.ts';
import { EXPLICIT_LE } from '../../codec/transcode-targets.ts';
import { acceptableRanges, parseAccept, type MediaRange } from './accept.ts';
import { DicomWebError, endAndDrain, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { framesFor, type FramesSource, type HeldBeyondFrames } from './frames.ts';
import { convertInstance, selectInstances } from './instances.ts';
import type { DicomWebRoute } from './routes.ts';

export type RenderedMediaType = 'image/jpeg' | 'image/png';

export interface RenderedRequest {
  studyUid: string;
  seriesUid: string;
  instanceUid: string;
  frameNumber: number;
  mediaType: RenderedMediaType;
  options: RenderOptions;
  /** JPEG quality, 1-100. */
  quality: number;
}

/** JPEG quality when the request names none: a browser's view, small enough to send quickly. */
export const defaultJpegQuality = 90;

/** The rendered media type the first acceptable range takes (JPEG for `*\/*`, `image/*` or no header); undefined: 406. */
export function chooseRenderedType(ranges: readonly MediaRange[]): RenderedMediaType | undefined {
  if (ranges.length === 0) return 'image/jpeg';
  for (const range of acceptableRanges(ranges)) {
    if (range.type === '*' || (range.type === 'image' && (range.subtype === '*' || range.subtype === 'jpeg'))) return 'image/jpeg';
    if (range.type === 'image' && range.subtype === 'png') return 'image/png';
  }
  return undefined;
}

const badRequest = (message: string) => new DicomWebError(400, 'ERR_DICOMWEB_RENDER_QUERY', message);

/** A number parameter in [min, max], or a 400 naming it. */
export function numberParameter(name: string, text: string, min: number, max: number): number {
  const value = /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/.test(text.trim()) ? Number(text) : NaN;
  if (!Number.isFinite(value) || value < min || value > max) throw badRequest(`${name} is "${text.slice(0, 40)}", not a number from ${min} to ${max}`);
  return value;
}

/** WADO-RS rendered parameters (PS3.18 8.3.5.1): window, viewport, quality; others are ignored. */
export function parseRenderedQuery(query: URLSearchParams): { options: RenderOptions; quality: number } {
  const options: RenderOptions = {};
  const window = query.get('window');
  if (window !== null) {
    const [center, width, fn, ...extra] = window.split(',');
    if (center === undefined || width === undefined || extra.length > 0) throw badRequest(`window is "${window.slice(0, 60)}", not center,width[,function]`);
    const voiFunction = (fn ?? 'linear').trim().toUpperCase().replace('-', '_') as VoiFunction;
    if (!voiFunctions.includes(voiFunction)) throw badRequest(`window function "${(fn ?? '').slice(0, 20)}" is not linear, linear-exact or sigmoid`);
    options.window = { center: numberParameter('window center', center, -1e9, 1e9), width: numberParameter('window width', width, 1, 1e9), function: voiFunction };
  }
  const viewport = query.get('viewport');
  if (viewport !== null) {
    const parts = viewport.split(',');
    if (parts.length !== 2) throw badRequest(`viewport is "${viewport.slice(0, 60)}": only vw,vh is supported (no source region)`);
    options.maxColumns = numberParameter('viewport width', parts[0]!, 1, renderedSideMax);
    options.maxRows = numberParameter('viewport height', parts[1]!, 1, renderedSideMax);
  }
  const quality = query.get('quality');
  return { options, quality: quality === null ? defaultJpegQuality : numberParameter('quality', quality, 1, 100) };
}

/** The rendered media type the request's Accept header takes first; a 406 when it takes none. */
export function renderedTypeAsked(exchange: DicomWebExchange): RenderedMediaType {
  const mediaType = chooseRenderedType(parseAccept(exchange.req.headers.accept));
  if (mediaType === undefined) throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', 'rendered images are sent as image/jpeg or image/png');
  return mediaType;
}

/** A thumbnail's largest side when the request gives no viewport. */
export const thumbnailSideDefault = 128;

/**
 * A thumbnail (PS3.18 10.4.1.1.4): a small rendering of the frame, the instance's first frame, or for a
 * series or a study the middle image of its (first) series with images, in Instance Number order.
 */
export async function sendThumbnail(ctx: DicomWebContext, exchange: DicomWebExchange, route: Extract<DicomWebRoute, { type: 'thumbnail' }>, mediaType: RenderedMediaType): Promise<void> {
  const { options, quality } = parseRenderedQuery(exchange.query);
  options.maxColumns ??= thumbnailSideDefault;
  options.maxRows ??= thumbnailSideDefault;
  let chosen: { seriesUid: string; instanceUid: string } | undefined;
  if (route.instanceUid !== undefined) chosen = { seriesUid: route.seriesUid!, instanceUid: route.instanceUid };
  else {
    const images = (await selectInstances(ctx, { level: route.level, studyUid: route.studyUid, seriesUid: route.seriesUid })).filter((entry) => entry.attributes.some((element) => element.tag === Tags.Rows));
    const series = images.filter((entry) => entry.seriesInstanceUid === images[0]?.seriesInstanceUid);
    const middle = series[Math.floor((series.length - 1) / 2)];
    if (middle === undefined) throw new DicomWebError(404, 'ERR_DICOMWEB_NO_PIXEL_DATA', `${route.level === 'STUDY' ? 'study' : 'series'} ${route.seriesUid ?? route.studyUid} holds no image to make a thumbnail of`);
    chosen = { seriesUid: middle.seriesInstanceUid, instanceUid: middle.sopInstanceUid };
  }
  await sendRendered(ctx, exchange, { studyUid: route.studyUid, ...chosen, frameNumber: route.frameNumber, mediaType, options, quality });
}

/** The request's one frame, rendered and sent as a single image. */
export async function sendRendered(ctx: DicomWebContext, exchange: DicomWebExchange, request: RenderedRequest): Promise<void> {
  const route = { type: 'frames' as const, studyUid: request.studyUid, seriesUid: request.seriesUid, instanceUid: request.instanceUid, frameNumbers: [request.frameNumber] };
  // The frame as native little endian, decoded first when stored compressed.
  const nativeRanges = parseAccept('multipart/related; type="application/octet-stream"');
  try {
    await renderedFrame(ctx, exchange, request, route, nativeRanges);
  } catch (error) {
    // The conversion's own message offers the instance as stored (transfer-syntax=*), which a rendered
    // resource has no parameter for (hunt 89): its pixel data cannot be decoded, or the image encoded.
    if (!(error instanceof DicomWebError) || error.code !== 'ERR_DICOMWEB_NOT_CONVERTIBLE') throw error;
    const reason = error.cause instanceof Error ? error.cause.message : error.message;
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_RENDERABLE', `instance ${request.instanceUid} cannot be rendered: ${reason}; it can be had as DICOM`);
  }
}

async function renderedFrame(ctx: DicomWebContext, exchange: DicomWebExchange, request: RenderedRequest, route: Extract<DicomWebRoute, { type: 'frames' }>, nativeRanges: ReturnType<typeof parseAccept>): Promise<void> {
  await framesFor(ctx, exchange, route, nativeRanges, async (_representation, frames, source) => {
    let image: RenderedImage;
    try {
      image = renderFrame(frames[0]!, source.image, renderAttributesOf(withPalette(source), source.image), request.options);
    } catch (error) {
      if (error instanceof RenderError) throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_RENDERABLE', `instance ${request.instanceUid} cannot be rendered: ${error.message}; it can be had as DICOM`);
      throw error;
    }
    const body = request.mediaType === 'image/png' ? encodePng(image.pixels, image.columns, image.rows, image.samplesPerPixel) : await jpegOf(ctx, exchange, image, request);
    exchange.res.writeHead(200, { 'content-type': request.mediaType, 'content-length': String(body.length) });
    // Within the frames' hold on the budget of bytes held at once until read: a PNG of a large image can be
    // as large as its pixels, and clients that do not read theirs would hold one each, unbounded (hunt 79).
    await endAndDrain(exchange.res, exchange.req.method === 'HEAD' ? undefined : body);
  }, renderingBytes(request.options));
}

/**
 * What a rendering holds beyond its frame until read: its 8-bit pixels at the image's size, again at the
 * size they are fitted to, and the encoded body (a PNG can be as large as its pixels). Counted as the frame
 * alone, 40 clients that read nothing held 2.1 GB against a 1 GiB budget (hunt 79).
 */
function renderingBytes(options: RenderOptions): HeldBeyondFrames {
  return (image) => {
    const fitted = fittedSize(image.columns, image.rows, options.maxColumns, options.maxRows);
    const samples = image.samplesPerPixel === 1 && image.photometricInterpretation.toUpperCase() !== 'PALETTE COLOR' ? 1 : 3;
    return samples * (image.columns * image.rows + 2 * fitted.columns * fitted.rows);
  };
}

/** Lookup Table Data is binary, which headers leave out: read again as words for a PALETTE COLOR image. */
function withPalette(source: FramesSource): readonly DicomElement[] {
  if (source.image.photometricInterpretation.toUpperCase() !== 'PALETTE COLOR') return source.elements;
  let tables: DicomElement[];
  try {
    tables = parseDataset(source.header, source.transferSyntaxUid, { wordValueTags: paletteDataTags, maxValueBytes: paletteDataBytesMax }).elements.filter((element) => paletteDataTags.has(element.tag));
  } catch (error) {
    if (error instanceof DatasetParseError) throw new DicomWebError(406, 'ERR_DICOMWEB_PIXEL_DATA', `the palette of this instance cannot be read: ${error.message}; it can be had as DICOM`);
    throw error;
  }
  return [...source.elements, ...tables];
}

/** A palette's table of 65,536 16-bit entries: 128 KiB. */
const paletteDataBytesMax = 128 * 1024;

/** The image as JPEG Baseline, encoded in the transcoder's thread: a large one must not hold the event loop. */
async function jpegOf(ctx: DicomWebContext, exchange: DicomWebExchange, image: RenderedImage, request: RenderedRequest): Promise<Uint8Array> {
  const us = (tag: number, value: number) => ({ tag, vr: 'US' as const, value: String(value) });
  const header = encodeDataset(
    [
      us(Tags.SamplesPerPixel, image.samplesPerPixel),
      { tag: Tags.PhotometricInterpretation, vr: 'CS', value: image.samplesPerPixel === 1 ? 'MONOCHROME2' : 'RGB' },
      ...(image.samplesPerPixel === 3 ? [us(0x00280006, 0)] : []),
      us(Tags.Rows, image.rows),
      us(Tags.Columns, image.columns),
      us(Tags.BitsAllocated, 8),
      us(Tags.BitsStored, 8),
      us(Tags.HighBit, 7),
      us(Tags.PixelRepresentation, 0),
    ],
    EXPLICIT_LE,
  );
  // Pixel Data (explicit VR little endian, OB, even length) after the header the writer made.
  const pixelBytes = image.pixels.length + (image.pixels.length % 2);
  const dataset = Buffer.alloc(header.length + 12 + pixelBytes);
  dataset.set(header, 0);
  dataset.writeUInt16LE(0x7fe0, header.length);
  dataset.writeUInt16LE(0x0010, header.length + 2);
  dataset.write('OB', header.length + 4, 'latin1');
  dataset.writeUInt32LE(pixelBytes, header.length + 8);
  dataset.set(image.pixels, header.length + 12);
  const encoded = await convertInstance(ctx, exchange, dataset, EXPLICIT_LE, jpegBaseline, request.instanceUid, { renderedJpegQuality: request.quality });
  // A JPEG of one 8-bit frame, counted with the rendering in the budget of bytes held until read.
  encoded.release?.();
  const pixel = readPixelData(encoded.bytes, jpegBaseline);
  if (pixel.kind !== 'encapsulated' || pixel.fragments.length !== 1) throw new Error('the JPEG encoder made no single codestream');
  return pixel.fragments[0]!;
}

const jpegBaseline = '1.2.840.10008.1.2.4.50';
