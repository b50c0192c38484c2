/**
 * Rendering of one native frame into an 8-bit image a browser shows (PS3.18 8.3.5 rendered resources, WADO-URI's
 * image/jpeg and image/png): the Modality LUT as a rescale (PS3.3 C.11.1), a VOI window (PS3.3 C.11.2.1.2:
 * LINEAR, LINEAR_EXACT or SIGMOID) from the request, else the instance's first Window Center / Width, else
 * the frame's own range, MONOCHROME1 inverted; colour (RGB, YBR_FULL) as it is, 8 bits a sample; PALETTE
 * COLOR through its lookup tables. Then a scale to fit the asked size, keeping the aspect ratio (nearest
 * pixel). Pure: no I/O, no codec.
 *
 * Not rendered (RenderError): segmented palettes and other photometric interpretations, colour of more
 * than 8 bits, Bits Allocated other than 8 or 16; presentation states, overlays and ICC profiles are not applied.
 */
import type { DicomElement } from './dicom-types.ts';
import { Tags } from './dictionary.ts';
import type { ImagePixelAttributes } from './dataset/pixel-data.ts';

export class RenderError extends Error {
  override readonly name = 'RenderError';
  constructor(
    readonly code: 'ERR_RENDER_UNSUPPORTED' | 'ERR_RENDER_PIXEL_DATA',
    message: string,
  ) {
    super(message);
  }
}

export type VoiFunction = 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID';

export interface RenderOptions {
  /** The VOI window to apply (in rescaled values); default: the instance's, else the frame's range. */
  window?: { center: number; width: number; function: VoiFunction };
  /** The rendered image fits within these (each optional); never enlarged beyond twice, never below 1 pixel. */
  maxColumns?: number;
  maxRows?: number;
}

export interface RenderedImage {
  columns: number;
  rows: number;
  /** 1 (grey) or 3 (RGB, interleaved). */
  samplesPerPixel: 1 | 3;
  pixels: Uint8Array;
}

/** The attributes of the instance that rendering reads, beside the pixel attributes of the frame. */
export interface RenderAttributes {
  bitsStored: number;
  pixelRepresentation: number;
  planarConfiguration: number;
  rescaleSlope: number;
  rescaleIntercept: number;
  window: { center: number; width: number; function: VoiFunction } | undefined;
  /** PALETTE COLOR's lookup tables, 8 bits an entry (from the data elements read as words: paletteDataTags). */
  palette?: Palette;
}

/** A Palette Color Lookup Table (PS3.3 C.7.6.3.1.5-6), each entry brought to 8 bits. */
export interface Palette {
  firstMapped: number;
  red: Uint8Array;
  green: Uint8Array;
  blue: Uint8Array;
}

/** Red, Green and Blue Palette Color Lookup Table Data: read as 16-bit words (reader option wordValueTags). */
export const paletteDataTags: ReadonlySet<number> = new Set([0x00281201, 0x00281202, 0x00281203]);
const paletteDescriptorTags = [0x00281101, 0x00281102, 0x00281103];

/** The palette of `elements` (descriptors and data read as words), or undefined when absent or unusable (segmented, short). */
export function paletteOf(elements: readonly DicomElement[]): Palette | undefined {
  const numbers = (tag: number) => elements.find((element) => element.tag === tag)?.value?.split('\\').map(Number);
  const channels: Uint8Array[] = [];
  let firstMapped = 0;
  for (const [index, descriptorTag] of paletteDescriptorTags.entries()) {
    const [entriesValue, first, bits] = numbers(descriptorTag) ?? [];
    const words = numbers([...paletteDataTags][index]!);
    if (entriesValue === undefined || first === undefined || words === undefined || words.some((word) => !Number.isInteger(word))) return undefined;
    const entries = entriesValue === 0 ? 65536 : entriesValue;
    firstMapped = first;
    const channel = new Uint8Array(entries);
    if (bits === 16 && words.length >= entries) {
      for (let i = 0; i < entries; i++) channel[i] = words[i]! >> 8;
    } else if (bits === 8 && words.length >= entries) {
      // One 8-bit entry a word (some writers): in the low byte, or the high one when any exceeds 255.
      const shift = words.some((word) => word > 255) ? 8 : 0;
      for (let i = 0; i < entries; i++) channel[i] = (words[i]! >> shift) & 0xff;
    } else if (bits === 8 && words.length * 2 >= entries) {
      // Two entries a word, the first in the low byte (PS3.3 C.7.6.3.1.6: as 8 bits allocated).
      for (let i = 0; i < entries; i++) channel[i] = (words[i >> 1]! >> ((i & 1) * 8)) & 0xff;
    } else {
      return undefined;
    }
    channels.push(channel);
  }
  return { firstMapped, red: channels[0]!, green: channels[1]!, blue: channels[2]! };
}

export function renderAttributesOf(elements: readonly DicomElement[], image: ImagePixelAttributes): RenderAttributes {
  const text = (tag: number) => elements.find((element) => element.tag === tag)?.value;
  const firstNumber = (tag: number) => {
    const value = Number.parseFloat(text(tag)?.split('\\')[0] ?? '');
    return Number.isFinite(value) ? value : undefined;
  };
  const center = firstNumber(Tags.WindowCenter);
  const width = firstNumber(Tags.WindowWidth);
  const voiFunction = (text(voiLutFunctionTag)?.trim().toUpperCase() ?? 'LINEAR') as VoiFunction;
  return {
    bitsStored: Math.min(image.bitsAllocated, firstNumber(Tags.BitsStored) ?? image.bitsAllocated),
    pixelRepresentation: firstNumber(Tags.PixelRepresentation) ?? 0,
    planarConfiguration: firstNumber(planarConfigurationTag) ?? 0,
    rescaleSlope: firstNumber(Tags.RescaleSlope) ?? 1,
    rescaleIntercept: firstNumber(Tags.RescaleIntercept) ?? 0,
    window: center !== undefined && width !== undefined && width >= 1 ? { center, width, function: voiFunctions.includes(voiFunction) ? voiFunction : 'LINEAR' } : undefined,
    ...(image.photometricInterpretation.toUpperCase() === 'PALETTE COLOR' ? { palette: paletteOf(elements) } : {}),
  };
}

const planarConfigurationTag = 0x00280006;
const voiLutFunctionTag = 0x00281056;
export const voiFunctions: readonly VoiFunction[] = ['LINEAR', 'LINEAR_EXACT', 'SIGMOID'];

/** Renders one native little endian frame. Throws RenderError. */
export function renderFrame(frame: Uint8Array, image: ImagePixelAttributes, attributes: RenderAttributes, options: RenderOptions = {}): RenderedImage {
  const pixelCount = image.rows * image.columns;
  const photometric = image.photometricInterpretation.toUpperCase();
  let full: { samplesPerPixel: 1 | 3; pixels: Uint8Array };
  if (image.samplesPerPixel === 1 && (photometric === 'MONOCHROME1' || photometric === 'MONOCHROME2')) {
    full = { samplesPerPixel: 1, pixels: renderGrey(frame, pixelCount, image, attributes, options.window, photometric === 'MONOCHROME1') };
  } else if (image.samplesPerPixel === 1 && photometric === 'PALETTE COLOR') {
    if (attributes.palette === undefined) throw new RenderError('ERR_RENDER_UNSUPPORTED', 'PALETTE COLOR without a usable lookup table (segmented tables are not rendered)');
    full = { samplesPerPixel: 3, pixels: renderPalette(frame, pixelCount, image, attributes.palette) };
  } else if (image.samplesPerPixel === 3 && (photometric === 'RGB' || photometric === 'YBR_FULL')) {
    if (image.bitsAllocated !== 8) throw new RenderError('ERR_RENDER_UNSUPPORTED', `colour of ${image.bitsAllocated} bits a sample is not rendered`);
    if (frame.length < pixelCount * 3) throw new RenderError('ERR_RENDER_PIXEL_DATA', `the frame holds ${frame.length} bytes, ${pixelCount * 3} expected`);
    full = { samplesPerPixel: 3, pixels: renderColour(frame, pixelCount, attributes.planarConfiguration === 1, photometric === 'YBR_FULL') };
  } else {
    throw new RenderError('ERR_RENDER_UNSUPPORTED', `${photometric || 'no photometric interpretation'} with ${image.samplesPerPixel} samples a pixel is not rendered`);
  }
  const size = fittedSize(image.columns, image.rows, options.maxColumns, options.maxRows);
  if (size.columns === image.columns && size.rows === image.rows) return { columns: image.columns, rows: image.rows, ...full };
  return { ...size, samplesPerPixel: full.samplesPerPixel, pixels: scaled(full.pixels, image.columns, image.rows, size.columns, size.rows, full.samplesPerPixel) };
}

function renderGrey(frame: Uint8Array, pixelCount: number, image: ImagePixelAttributes, attributes: RenderAttributes, asked: RenderOptions['window'], inverted: boolean): Uint8Array {
  const bytesPerSample = image.bitsAllocated === 8 ? 1 : image.bitsAllocated === 16 ? 2 : 0;
  if (bytesPerSample === 0) throw new RenderError('ERR_RENDER_UNSUPPORTED', `Bits Allocated ${image.bitsAllocated} is not rendered`);
  if (frame.length < pixelCount * bytesPerSample) throw new RenderError('ERR_RENDER_PIXEL_DATA', `the frame holds ${frame.length} bytes, ${pixelCount * bytesPerSample} expected`);
  const bitsStored = Math.min(16, Math.max(1, attributes.bitsStored));
  const mask = 2 ** bitsStored - 1;
  const signBit = 2 ** (bitsStored - 1);
  const signed = attributes.pixelRepresentation === 1;
  const rescaled = (stored: number) => (signed && stored >= signBit ? stored - 2 * signBit : stored) * attributes.rescaleSlope + attributes.rescaleIntercept;
  const storedAt = bytesPerSample === 1 ? (i: number) => frame[i]! & mask : (i: number) => (frame[2 * i]! | (frame[2 * i + 1]! << 8)) & mask;
  let window = asked ?? attributes.window;
  if (window === undefined) {
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < pixelCount; i++) {
      const value = rescaled(storedAt(i));
      if (value < min) min = value;
      if (value > max) max = value;
    }
    window = { center: (min + max) / 2, width: Math.max(1, max - min), function: 'LINEAR_EXACT' };
  }
  // One grey level per possible stored value (at most 65,536), then one lookup a pixel: the window's
  // arithmetic per pixel made a 512 x 512 frame cost several milliseconds.
  const toGrey = voiTransform(window);
  const greyOf = new Uint8Array(mask + 1);
  for (let stored = 0; stored <= mask; stored++) {
    const grey = toGrey(rescaled(stored));
    greyOf[stored] = inverted ? 255 - grey : grey;
  }
  const out = new Uint8Array(pixelCount);
  for (let i = 0; i < pixelCount; i++) out[i] = greyOf[storedAt(i)]!;
  return out;
}

/** The VOI function onto 0..255 (PS3.3 C.11.2.1.2.1-3). */
function voiTransform(window: { center: number; width: number; function: VoiFunction }): (value: number) => number {
  const { center, width } = window;
  switch (window.function) {
    case 'LINEAR': {
      const low = center - 0.5 - (width - 1) / 2;
      const high = center - 0.5 + (width - 1) / 2;
      return (x) => (x <= low ? 0 : x > high ? 255 : Math.round(((x - (center - 0.5)) / Math.max(width - 1, 1) + 0.5) * 255));
    }
    case 'LINEAR_EXACT': {
      const low = center - width / 2;
      const high = center + width / 2;
      return (x) => (x <= low ? 0 : x > high ? 255 : Math.round(((x - center) / width + 0.5) * 255));
    }
    case 'SIGMOID':
      return (x) => Math.round(255 / (1 + Math.exp(-4 * ((x - center) / width))));
    default: {
      const unreachable: never = window.function;
      throw new RenderError('ERR_RENDER_UNSUPPORTED', `VOI LUT function ${String(unreachable)}`);
    }
  }
}

/** Each stored value looked up in the palette (clamped to its first and last entries, PS3.3 C.7.6.3.1.5). */
function renderPalette(frame: Uint8Array, pixelCount: number, image: ImagePixelAttributes, palette: Palette): Uint8Array {
  const bytesPerSample = image.bitsAllocated === 8 ? 1 : image.bitsAllocated === 16 ? 2 : 0;
  if (bytesPerSample === 0) throw new RenderError('ERR_RENDER_UNSUPPORTED', `PALETTE COLOR of ${image.bitsAllocated} bits allocated is not rendered`);
  if (frame.length < pixelCount * bytesPerSample) throw new RenderError('ERR_RENDER_PIXEL_DATA', `the frame holds ${frame.length} bytes, ${pixelCount * bytesPerSample} expected`);
  const last = palette.red.length - 1;
  const out = new Uint8Array(pixelCount * 3);
  for (let i = 0; i < pixelCount; i++) {
    const stored = bytesPerSample === 1 ? frame[i]! : frame[2 * i]! | (frame[2 * i + 1]! << 8);
    const entry = Math.min(last, Math.max(0, stored - palette.firstMapped));
    out[3 * i] = palette.red[entry]!;
    out[3 * i + 1] = palette.green[entry]!;
    out[3 * i + 2] = palette.blue[entry]!;
  }
  return out;
}

function renderColour(frame: Uint8Array, pixelCount: number, planar: boolean, ybr: boolean): Uint8Array {
  const out = new Uint8Array(pixelCount * 3);
  for (let i = 0; i < pixelCount; i++) {
    const a = planar ? frame[i]! : frame[3 * i]!;
    const b = planar ? frame[pixelCount + i]! : frame[3 * i + 1]!;
    const c = planar ? frame[2 * pixelCount + i]! : frame[3 * i + 2]!;
    if (!ybr) {
      out[3 * i] = a;
      out[3 * i + 1] = b;
      out[3 * i + 2] = c;
      continue;
    }
    // YBR_FULL to RGB (PS3.3 C.7.6.3.1.2).
    out[3 * i] = clampByte(a + 1.402 * (c - 128));
    out[3 * i + 1] = clampByte(a - 0.344136 * (b - 128) - 0.714136 * (c - 128));
    out[3 * i + 2] = clampByte(a + 1.772 * (b - 128));
  }
  return out;
}

function clampByte(value: number): number {
  return value <= 0 ? 0 : value >= 255 ? 255 : Math.round(value);
}

/** A rendered image asked a size is at most this many pixels a side. */
export const renderedSideMax = 8192;

/**
 * An image is enlarged only up to this many pixels: a larger one gains nothing a viewer sees, and its
 * rendering is held whole (the budget of bytes held at once weighs the stored frame, not what it is made
 * into): 40 clients asking a 4096 x 4096 image at viewport=8192,8192 held 3.7 GB (hunt 79).
 */
export const renderedEnlargedPixelsMax = 2048 * 2048;

/**
 * The largest size within the bounds with the image's aspect ratio (at most twice the image, and enlarged
 * only up to renderedEnlargedPixelsMax; at most renderedSideMax a side when a size is asked, at least 1 x 1).
 */
export function fittedSize(columns: number, rows: number, maxColumns?: number, maxRows?: number): { columns: number; rows: number } {
  if (maxColumns === undefined && maxRows === undefined) return { columns, rows };
  let scale = Math.min(2, (maxColumns ?? renderedSideMax) / columns, (maxRows ?? renderedSideMax) / rows, renderedSideMax / columns, renderedSideMax / rows);
  if (scale > 1) scale = Math.max(1, Math.min(scale, Math.sqrt(renderedEnlargedPixelsMax / (columns * rows))));
  return { columns: Math.max(1, Math.round(columns * scale)), rows: Math.max(1, Math.round(rows * scale)) };
}

function scaled(pixels: Uint8Array, columns: number, rows: number, toColumns: number, toRows: number, samples: number): Uint8Array {
  const out = new Uint8Array(toColumns * toRows * samples);
  for (let y = 0; y < toRows; y++) {
    const sourceRow = Math.min(rows - 1, Math.floor(((y + 0.5) * rows) / toRows));
    for (let x = 0; x < toColumns; x++) {
      const sourceColumn = Math.min(columns - 1, Math.floor(((x + 0.5) * columns) / toColumns));
      const from = (sourceRow * columns + sourceColumn) * samples;
      const to = (y * toColumns + x) * samples;
      for (let s = 0; s < samples; s++) out[to + s] = pixels[from + s]!;
    }
  }
  return out;
}
