/**
 * Streaming, push-based reader of a dataset's header: the top-level text and numeric attributes that
 * come before Pixel Data. It is on the ingest hot path, so values it does not keep (bulk data, private
 * blobs, whole sequences) are skipped by length without being buffered or scanned, and memory stays
 * bounded by a 12-byte header carry-over plus the kept values, whatever the dataset size. With
 * `wholeDataset` it goes on past Pixel Data, still by length, to check the structure to the end.
 */
import type { DicomElement, Tag, Vr } from '../dicom-types.ts';
import { TransferSyntax, tagHex } from '../dicom-types.ts';
import { implicitVrOf, Tags, vrOf } from '../dictionary.ts';
import { DatasetParseError } from './errors.ts';
import { StreamingInflater } from './inflater.ts';
import {
  decodeNumbers, decodeText, explicitVrHeader, isDecodableVr, layoutOf, textVrs,
} from './vr.ts';

export interface DatasetHeaderReaderOptions {
  transferSyntaxUid: string;
  /** Top-level values longer than this are skipped, not kept. Default 64 KiB. */
  maxValueBytes?: number;
  /**
   * Bound on the bytes the reader examines before Pixel Data: element headers (top level and nested)
   * plus kept values. Values skipped by length do not count, so a large encapsulated document or
   * private blob is accepted; a flood of tiny elements is not. Default 16 MiB.
   */
  maxHeaderBytes?: number;
  /** Bound on the number of kept top-level elements. Default 16384. */
  maxElementCount?: number;
  /** Bound on nested sequences and items, each counting one level (so 64 sequences, as the transcoder takes). Default 128. */
  maxNestingDepth?: number;
  /**
   * Also list the top-level elements that were skipped (sequences, bulk data, values over
   * maxValueBytes, Pixel Data itself) with `value: undefined`, e.g. to see which sequence keys a C-FIND
   * identifier asks for. Default false.
   */
  includeSkippedElements?: boolean;
  /**
   * Top-level OW / OB values to keep as 16-bit little endian words (decimal values joined by backslash, as
   * a US value), e.g. Palette Color Lookup Table Data for rendering; still within maxValueBytes.
   */
  wordValueTags?: ReadonlySet<number>;
  /**
   * Read past Pixel Data to the end and check the whole dataset's structure, as a C-STORE must before it
   * answers Success (PS3.4 B.2.3: what is stored can be retrieved): every value complete, encapsulated
   * pixel data as even-length fragments closed by its delimiter, nothing trailing, top-level tags in
   * ascending order without repeats (PS3.5 7.1) and no File Meta Information (group 0002). Values after
   * Pixel Data are skipped by length, not kept; a deflated dataset is inflated to its end. Default false:
   * the reader stops at Pixel Data.
   */
  wholeDataset?: boolean;
  /**
   * Told of each top-level value of defined length skipped before Pixel Data (bulk data, or longer than
   * maxValueBytes), as its header is read: where the value starts in the stream and how long it is, and
   * whether a 4-byte length field comes just before it (implicit VR, or an explicit VR long form). The
   * DICOMweb header reader leaves large ones out of what it keeps (an encapsulated document of 70 MB).
   */
  onTopLevelValueSkipped?: (skipped: SkippedTopLevelValue) => void;
}

export interface SkippedTopLevelValue {
  tag: Tag;
  vr: Vr;
  valueOffset: number;
  valueLength: number;
  lengthFieldOf4Bytes: boolean;
}

export interface DatasetHeader {
  /** Kept top-level elements in stream order. */
  elements: DicomElement[];
  /** Value of (0008,0005) when present, backslash-separated as sent. */
  specificCharacterSet?: string;
  /** True when top-level Pixel Data (7FE0,0010) was reached; the reader stops there unless reading the whole dataset. */
  reachedPixelData: boolean;
  /** Offset of the Pixel Data element's tag in the dataset stream (in inflated bytes for deflated syntaxes). */
  pixelDataOffset?: number;
}

export const defaultMaxValueBytes = 64 * 1024;
export const defaultMaxHeaderBytes = 16 * 1024 * 1024;
export const defaultMaxElementCount = 16384;
export const defaultMaxNestingDepth = 128;

const undefinedLength = 0xffffffff;
/** JPIP Referenced (Deflate): the pixels are referenced, not in the data set. */
const jpipReferencedSyntaxUids: ReadonlySet<string> = new Set(['1.2.840.10008.1.2.4.94', '1.2.840.10008.1.2.4.95']);
/** The native (unencapsulated) transfer syntaxes: their Pixel Data is never encapsulated. */
const nativeSyntaxUids: ReadonlySet<string> = new Set([
  TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrLittleEndian,
  TransferSyntax.ExplicitVrBigEndian, TransferSyntax.DeflatedExplicitVrLittleEndian,
]);
const itemTag = Tags.Item;
const itemDelimitationTag = Tags.ItemDelimitationItem;
const sequenceDelimitationTag = Tags.SequenceDelimitationItem;
const pixelDataTag = Tags.PixelData;
const specificCharacterSetTag = Tags.SpecificCharacterSet;
const maxHeaderLengthBytes = 12;

const phaseHeader = 0;
const phaseValue = 1;
const phaseSkip = 2;
type Phase = typeof phaseHeader | typeof phaseValue | typeof phaseSkip;

/** A container being walked: to its delimiter, or (whole data sets only) to the end of its defined length. */
interface Level {
  /** 'fragments': encapsulated Pixel Data (top-level, or an icon's), a sequence of defined-length items (PS3.5 A.4). */
  kind: 'sequence' | 'item' | 'fragments';
  implicitVr: boolean;
  littleEndian: boolean;
  /** Stream offset where a defined-length sequence or item ends; undefined for an undefined length. */
  endOffset?: number;
}

function readUint16(bytes: Uint8Array, at: number, littleEndian: boolean): number {
  return littleEndian ? bytes[at]! | (bytes[at + 1]! << 8) : (bytes[at]! << 8) | bytes[at + 1]!;
}

function readUint32(bytes: Uint8Array, at: number, littleEndian: boolean): number {
  return littleEndian
    ? (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0
    : ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  return value;
}

export class DatasetHeaderReader {
  private readonly topImplicitVr: boolean;
  private readonly topLittleEndian: boolean;
  private readonly maxValueBytes: number;
  private readonly maxHeaderBytes: number;
  private readonly maxElementCount: number;
  private readonly maxNestingDepth: number;
  private readonly includeSkippedElements: boolean;
  private readonly wordValueTags: ReadonlySet<number> | undefined;
  private readonly wholeDataset: boolean;
  /** A native (uncompressed) syntax: Pixel Data has a defined length, never fragments (PS3.5 A.1-A.3, A.4). */
  private readonly nativeSyntax: boolean;
  /** An encapsulated syntax (PS3.5 A.4): Pixel Data is fragments, never a defined-length value. */
  private readonly encapsulatedSyntax: boolean;
  private inflater: StreamingInflater | undefined;

  private phase: Phase = phaseHeader;
  /** Carry-over for an element header split across chunks. */
  private readonly headerCarry = new Uint8Array(maxHeaderLengthBytes);
  private headerCarryLength = 0;
  /** The element whose value is being kept or skipped. */
  private pendingTag: Tag = 0;
  private pendingVr: Vr = '';
  private pendingLittleEndian = true;
  private pendingValueBytes = 0;
  private valueBuffer: Uint8Array | undefined;
  private valueFilledBytes = 0;
  private skipRemainingBytes = 0;
  private readonly levels: Level[] = [];
  /** Levels of defined length open: their headers are not charged, as when such a value was skipped. */
  private definedLengthLevels = 0;

  /** Bytes of the (inflated) dataset consumed so far. */
  private streamOffset = 0;
  private examinedBytes = 0;
  private readonly elements: DicomElement[] = [];
  private keptElementCount = 0;
  private specificCharacterSet: string | undefined;
  private pixelDataOffset: number | undefined;
  /** Top-level Pixel Data was reached: the header is complete. */
  private complete = false;
  /** Nothing more to read: at Pixel Data, or never when reading the whole dataset. */
  private done = false;
  /** The last top-level tag, for the order check of a whole dataset (-1 before the first). */
  private lastTopLevelTag = -1;
  private ended = false;
  private failure: DatasetParseError | undefined;
  private readonly onTopLevelValueSkipped: ((skipped: SkippedTopLevelValue) => void) | undefined;

  constructor(options: DatasetHeaderReaderOptions) {
    const layout = layoutOf(options.transferSyntaxUid);
    this.topImplicitVr = layout.implicitVr;
    this.topLittleEndian = layout.littleEndian;
    this.maxValueBytes = positiveInteger(options.maxValueBytes, defaultMaxValueBytes, 'maxValueBytes');
    this.maxHeaderBytes = positiveInteger(options.maxHeaderBytes, defaultMaxHeaderBytes, 'maxHeaderBytes');
    this.maxElementCount = positiveInteger(options.maxElementCount, defaultMaxElementCount, 'maxElementCount');
    this.maxNestingDepth = positiveInteger(options.maxNestingDepth, defaultMaxNestingDepth, 'maxNestingDepth');
    this.includeSkippedElements = options.includeSkippedElements ?? false;
    this.wordValueTags = options.wordValueTags;
    this.wholeDataset = options.wholeDataset ?? false;
    this.onTopLevelValueSkipped = options.onTopLevelValueSkipped;
    this.nativeSyntax = nativeSyntaxUids.has(options.transferSyntaxUid);
    this.encapsulatedSyntax = !this.nativeSyntax && !jpipReferencedSyntaxUids.has(options.transferSyntaxUid);
    if (layout.deflated) this.inflater = new StreamingInflater();
  }

  /** True once nothing more will be read (top-level Pixel Data, unless reading the whole dataset): later chunks are ignored. */
  get isComplete(): boolean {
    return this.done;
  }

  /**
   * Feeds the next fragment of the dataset, split anywhere. The reader does not keep a reference to
   * `chunk`. Throws DatasetParseError as soon as the bytes are known to be malformed; the reader is then
   * failed: later pushes are ignored and end() throws the same error.
   */
  push(chunk: Uint8Array): void {
    if (this.done || this.ended || this.failure !== undefined || chunk.length === 0) return;
    try {
      if (this.inflater === undefined) {
        this.consume(chunk);
      } else {
        this.inflater.push(chunk, (inflated) => {
          this.consume(inflated);
          return !this.done;
        });
        if (this.done) this.releaseInflater();
      }
    } catch (error) {
      throw this.fail(error);
    }
  }

  /** The top-level elements read so far, in order (what end() will return begins so). */
  get elementsRead(): readonly DicomElement[] {
    return this.elements;
  }

  /** Stops reading before the end (nothing more will be pushed): frees a deflated syntax's inflater now. */
  abandon(): void {
    this.ended = true;
    this.releaseInflater();
  }

  /** Bytes of the data set read so far (inflated, for a deflated syntax). */
  get bytesRead(): number {
    return this.streamOffset;
  }

  /** Ends the dataset and returns its header; throws DatasetParseError when it is truncated or malformed. */
  end(): DatasetHeader {
    if (this.failure !== undefined) throw this.failure;
    if (!this.ended) {
      this.ended = true;
      try {
        if (!this.done) this.checkEndOfStream();
      } catch (error) {
        throw this.fail(error);
      }
    }
    const header: DatasetHeader = { elements: this.elements, reachedPixelData: this.complete };
    if (this.specificCharacterSet !== undefined) header.specificCharacterSet = this.specificCharacterSet;
    if (this.pixelDataOffset !== undefined) header.pixelDataOffset = this.pixelDataOffset;
    return header;
  }

  private checkEndOfStream(): void {
    if (this.inflater !== undefined) {
      const inflater = this.inflater;
      this.inflater = undefined;
      inflater.finish((inflated) => {
        this.consume(inflated);
        return !this.done;
      });
      if (this.done) return;
    }
    if (this.phase === phaseValue || this.phase === phaseSkip) {
      const missingBytes = this.phase === phaseValue ? this.pendingValueBytes - this.valueFilledBytes : this.skipRemainingBytes;
      throw new DatasetParseError('ERR_DATASET_TRUNCATED',
        `dataset ends inside the value of (${tagHex(this.pendingTag)}): ${missingBytes} bytes missing`, this.streamOffset);
    }
    if (this.headerCarryLength > 0) {
      throw new DatasetParseError('ERR_DATASET_TRUNCATED',
        `dataset ends inside an element header (${this.headerCarryLength} trailing bytes)`, this.streamOffset);
    }
    if (this.definedLengthLevels > 0) this.closeEndedLevels();
    if (this.levels.length > 0) {
      throw new DatasetParseError('ERR_DATASET_TRUNCATED',
        this.currentLevel()?.kind === 'fragments'
          ? 'dataset ends inside encapsulated Pixel Data (no sequence delimiter)'
          : `dataset ends inside ${this.levels.length} sequence/item level(s)`, this.streamOffset);
    }
  }

  private fail(error: unknown): unknown {
    this.releaseInflater();
    this.valueBuffer = undefined;
    if (error instanceof DatasetParseError) this.failure = error;
    return error;
  }

  private releaseInflater(): void {
    this.inflater?.close();
    this.inflater = undefined;
  }

  /** Advances the state machine over one chunk of plain (not deflated) dataset bytes. */
  private consume(chunk: Uint8Array): void {
    const length = chunk.length;
    let offset = 0;
    while (offset < length && !this.done) {
      const available = length - offset;
      if (this.phase === phaseSkip) {
        const skippedBytes = Math.min(this.skipRemainingBytes, available);
        offset += skippedBytes;
        this.streamOffset += skippedBytes;
        this.skipRemainingBytes -= skippedBytes;
        if (this.skipRemainingBytes === 0) this.phase = phaseHeader;
        continue;
      }
      if (this.phase === phaseValue) {
        const neededBytes = this.pendingValueBytes - this.valueFilledBytes;
        if (this.valueFilledBytes === 0 && available >= neededBytes) {
          // The whole value is in this chunk: decode it in place, no copy.
          this.keepPendingValue(chunk, offset);
          offset += neededBytes;
          this.streamOffset += neededBytes;
          this.phase = phaseHeader;
          continue;
        }
        this.valueBuffer ??= new Uint8Array(this.pendingValueBytes);
        const copiedBytes = Math.min(neededBytes, available);
        this.valueBuffer.set(chunk.subarray(offset, offset + copiedBytes), this.valueFilledBytes);
        this.valueFilledBytes += copiedBytes;
        offset += copiedBytes;
        this.streamOffset += copiedBytes;
        if (this.valueFilledBytes === this.pendingValueBytes) {
          this.keepPendingValue(this.valueBuffer, 0);
          this.valueBuffer = undefined;
          this.valueFilledBytes = 0;
          this.phase = phaseHeader;
        }
        continue;
      }
      if (this.definedLengthLevels > 0 && this.headerCarryLength === 0) this.closeEndedLevels();
      if (this.headerCarryLength === 0 && available >= maxHeaderLengthBytes) {
        const headerBytes = this.parseHeader(chunk, offset, this.streamOffset);
        offset += headerBytes;
        this.streamOffset += headerBytes;
        continue;
      }
      // Slow path near a chunk boundary: gather the 6 bytes that tell the header length, then the rest.
      const wantedBytes = this.headerCarryLength < 6 ? 6 : this.headerLength(this.headerCarry, 0);
      const copiedBytes = Math.min(wantedBytes - this.headerCarryLength, available);
      this.headerCarry.set(chunk.subarray(offset, offset + copiedBytes), this.headerCarryLength);
      this.headerCarryLength += copiedBytes;
      offset += copiedBytes;
      this.streamOffset += copiedBytes;
      if (this.headerCarryLength < 6) continue;
      const headerLength = this.headerLength(this.headerCarry, 0);
      if (this.headerCarryLength < headerLength) continue;
      this.headerCarryLength = 0;
      this.parseHeader(this.headerCarry, 0, this.streamOffset - headerLength);
    }
  }

  private currentLevel(): Level | undefined {
    return this.levels.length === 0 ? undefined : this.levels[this.levels.length - 1];
  }

  /** One more level would not go beyond maxNestingDepth. */
  private assertRoomForLevel(what: 'sequences' | 'items', elementOffset: number): void {
    if (this.levels.length >= this.maxNestingDepth) {
      throw new DatasetParseError('ERR_DATASET_TOO_DEEP', `${what} nested deeper than ${this.maxNestingDepth} levels`, elementOffset);
    }
  }

  /** The innermost open container of defined length, which everything read now must end within. */
  private innermostDefinedLength(): Level | undefined {
    return this.levels.findLast((l) => l.endOffset !== undefined);
  }

  private pushDefinedLength(level: Level): void {
    const enclosing = this.innermostDefinedLength();
    if (enclosing !== undefined && level.endOffset! > enclosing.endOffset!) {
      throw new DatasetParseError('ERR_DATASET_MALFORMED',
        `a defined-length ${level.kind} runs ${level.endOffset! - enclosing.endOffset!} bytes past the end of its defined-length ${enclosing.kind}`, enclosing.endOffset);
    }
    this.levels.push(level);
    this.definedLengthLevels++;
  }

  /** At an element boundary: closes the defined-length containers that end here; one overrun is malformed. */
  private closeEndedLevels(): void {
    for (let level = this.currentLevel(); level?.endOffset !== undefined && this.streamOffset >= level.endOffset; level = this.currentLevel()) {
      if (this.streamOffset > level.endOffset) {
        throw new DatasetParseError('ERR_DATASET_MALFORMED',
          `an element runs ${this.streamOffset - level.endOffset} bytes past the end of its defined-length ${level.kind}`, level.endOffset);
      }
      this.levels.pop();
      this.definedLengthLevels--;
    }
  }

  /** Length of the element header starting at `at`, from its first 6 bytes (tag and VR). */
  private headerLength(bytes: Uint8Array, at: number): number {
    const level = this.currentLevel();
    if (level === undefined ? this.topImplicitVr : level.implicitVr || level.kind !== 'item') return 8;
    const littleEndian = level === undefined ? this.topLittleEndian : level.littleEndian;
    if (readUint16(bytes, at, littleEndian) === 0xfffe) return 8;
    const first = bytes[at + 4]!;
    const second = bytes[at + 5]!;
    return explicitVrHeader(first, second)?.longLength === true ? 12 : 8; // parseHeader rejects bytes that are no VR
  }

  /** Parses one element header (all its bytes are available at `at`) and sets the next phase; returns its length. */
  private parseHeader(bytes: Uint8Array, at: number, elementOffset: number): number {
    const level = this.currentLevel();
    const implicitVr = level === undefined ? this.topImplicitVr : level.implicitVr;
    const littleEndian = level === undefined ? this.topLittleEndian : level.littleEndian;
    const group = readUint16(bytes, at, littleEndian);
    const tag = ((group << 16) | readUint16(bytes, at + 2, littleEndian)) >>> 0;

    if (group === 0xfffe) {
      if (this.definedLengthLevels === 0) this.chargeExaminedBytes(8, elementOffset);
      this.parseDelimiterOrItem(tag, readUint32(bytes, at + 4, littleEndian), level, elementOffset);
      return 8;
    }
    if (level !== undefined && level.kind !== 'item') {
      throw new DatasetParseError('ERR_DATASET_MALFORMED',
        `expected an item or a sequence delimiter inside ${level.kind === 'fragments' ? 'encapsulated Pixel Data' : 'a sequence'}, found (${tagHex(tag)})`, elementOffset);
    }
    if (level === undefined && this.wholeDataset) this.checkTopLevelOrder(tag, elementOffset);

    let vr: Vr;
    let valueLength: number;
    let headerLength: number;
    if (implicitVr) {
      // Pixel Representation, which decides US or SS, is kept (top level) before the attributes it decides.
      vr = vrOf(tag) ?? (level === undefined ? implicitVrOf(tag, () => this.elements.find((element) => element.tag === Tags.PixelRepresentation)?.value) : undefined) ?? 'UN';
      valueLength = readUint32(bytes, at + 4, littleEndian);
      headerLength = 8;
    } else {
      const first = bytes[at + 4]!;
      const second = bytes[at + 5]!;
      const header = explicitVrHeader(first, second);
      if (header === undefined) {
        throw new DatasetParseError('ERR_DATASET_MALFORMED',
          `invalid VR bytes 0x${first.toString(16).padStart(2, '0')} 0x${second.toString(16).padStart(2, '0')} for (${tagHex(tag)}) in explicit VR`,
          elementOffset);
      }
      vr = header.vr ?? vrOf(tag) ?? 'UN';
      if (header.longLength) {
        valueLength = readUint32(bytes, at + 8, littleEndian);
        headerLength = 12;
      } else {
        valueLength = readUint16(bytes, at + 6, littleEndian);
        headerLength = 8;
      }
    }
    if (!this.complete && this.definedLengthLevels === 0) this.chargeExaminedBytes(headerLength, elementOffset);
    if (this.definedLengthLevels > 0) {
      // An element must end within its defined-length item: found here, not after the value is skipped.
      const enclosing = this.innermostDefinedLength()!;
      const endOffset = elementOffset + headerLength + (valueLength === undefinedLength ? 0 : valueLength);
      if (endOffset > enclosing.endOffset!) {
        throw new DatasetParseError('ERR_DATASET_MALFORMED',
          `(${tagHex(tag)}) runs ${endOffset - enclosing.endOffset!} bytes past the end of its defined-length ${enclosing.kind}`, elementOffset);
      }
    }

    if (level === undefined && tag === pixelDataTag) {
      this.complete = true;
      this.pixelDataOffset = elementOffset;
      if (this.includeSkippedElements) this.elements.push({ tag, vr, value: undefined });
      if (!this.wholeDataset) {
        this.done = true;
        this.levels.length = 0;
      } else if (valueLength === undefinedLength) {
        // Encapsulated (undefined-length, fragment) Pixel Data belongs to the encapsulated syntaxes only
        // (PS3.5 A.4). In a native one it is a mislabelled compressed instance (odil 0.12's `odil store`
        // sends a JPEG file so on an explicit VR LE context): stored with Success, no transcoder or reader
        // could turn it into the syntax it claims, so every retrieve needing a conversion failed.
        if (this.nativeSyntax) {
          throw new DatasetParseError('ERR_DATASET_MALFORMED',
            'encapsulated (undefined-length) Pixel Data in a native transfer syntax (PS3.5 A.4: only encapsulated syntaxes carry fragments)', elementOffset);
        }
        this.levels.push({ kind: 'fragments', implicitVr: false, littleEndian });
      } else {
        // And the other way round: native (defined-length) Pixel Data labelled with an encapsulated syntax
        // (JPIP referenced syntaxes aside, whose instances carry no pixels) cannot be decoded either.
        if (this.encapsulatedSyntax) {
          throw new DatasetParseError('ERR_DATASET_MALFORMED',
            'native (defined-length) Pixel Data in an encapsulated transfer syntax (PS3.5 A.4: its Pixel Data is a sequence of fragments)', elementOffset);
        }
        this.startSkip(tag, valueLength);
      }
      return headerLength;
    }
    if (valueLength === undefinedLength) {
      // A sequence, or undefined-length bulk data (encapsulated pixels in an icon, or UN holding an
      // implicit VR little endian sequence, PS3.5 6.2.2): walk its items to find the delimiter.
      this.assertRoomForLevel('sequences', elementOffset);
      if (tag === pixelDataTag && !implicitVr && (vr === 'OB' || vr === 'OW')) {
        // An icon's Pixel Data in the instance's compressed syntax (PS3.5 8.2): fragments, whose bytes are
        // no elements (read as items, the whole-data-set walk refused such instances 0xC000: helper 49).
        this.levels.push({ kind: 'fragments', implicitVr: false, littleEndian });
        return headerLength;
      }
      if (level === undefined && this.includeSkippedElements && !this.complete) this.elements.push({ tag, vr, value: undefined });
      const holdsImplicitVr = implicitVr || vr === 'UN';
      this.levels.push({ kind: 'sequence', implicitVr: holdsImplicitVr, littleEndian: holdsImplicitVr || littleEndian });
      return headerLength;
    }
    if (this.wholeDataset && valueLength > 0 && (implicitVr ? vrOf(tag) === 'SQ' : vr === 'SQ')) {
      // A defined-length sequence is walked too: skipped by length, an item longer than its sequence or an
      // element cut off at its item's end was stored with Success, and no DCMTK reader could read it back
      // (helper 44). Nothing inside is kept, so no header counts against the header bound.
      this.assertRoomForLevel('sequences', elementOffset);
      if (level === undefined && this.includeSkippedElements && !this.complete) this.elements.push({ tag, vr, value: undefined });
      this.pushDefinedLength({ kind: 'sequence', implicitVr, littleEndian, endOffset: elementOffset + headerLength + valueLength });
      return headerLength;
    }
    if (level === undefined && !this.complete) {
      // A known text/numeric attribute sent as UN (explicit VR LE) is still worth indexing.
      const keptVr = this.wordValueTags?.has(tag) === true ? 'US' : vr === 'UN' && !implicitVr && littleEndian ? (vrOf(tag) ?? vr) : vr;
      if (isDecodableVr(keptVr) && valueLength <= this.maxValueBytes) {
        this.startKeptValue(tag, keptVr, valueLength, littleEndian, elementOffset);
        return headerLength;
      }
      if (this.includeSkippedElements) this.elements.push({ tag, vr, value: undefined });
      this.onTopLevelValueSkipped?.({ tag, vr, valueOffset: elementOffset + headerLength, valueLength, lengthFieldOf4Bytes: headerLength === 12 || implicitVr });
    }
    this.startSkip(tag, valueLength);
    return headerLength;
  }

  private parseDelimiterOrItem(tag: Tag, length: number, level: Level | undefined, elementOffset: number): void {
    if (level?.kind === 'fragments') {
      if (tag === itemTag && length !== undefinedLength && length % 2 === 0) {
        this.startSkip(tag, length);
        return;
      }
      if (tag === sequenceDelimitationTag) {
        this.levels.pop();
        return;
      }
      if (tag === itemTag) {
        throw new DatasetParseError('ERR_DATASET_MALFORMED',
          `a Pixel Data fragment of ${length === undefinedLength ? 'undefined' : `odd length ${length}`} (fragments have an even, defined length)`, elementOffset);
      }
    } else if (level?.kind === 'sequence') {
      if (tag === itemTag) {
        if (length !== undefinedLength && !this.wholeDataset) {
          this.startSkip(tag, length);
          return;
        }
        this.assertRoomForLevel('items', elementOffset);
        const item: Level = { kind: 'item', implicitVr: level.implicitVr, littleEndian: level.littleEndian };
        if (length === undefinedLength) this.levels.push(item);
        else this.pushDefinedLength({ ...item, endOffset: elementOffset + 8 + length });
        return;
      }
      if (tag === sequenceDelimitationTag && level.endOffset === undefined) {
        this.levels.pop();
        return;
      }
    } else if (level?.kind === 'item') {
      if (tag === itemDelimitationTag && level.endOffset === undefined) {
        this.levels.pop();
        return;
      }
    } else if ((tag === itemDelimitationTag || (tag === sequenceDelimitationTag && !this.wholeDataset)) && length === 0) {
      // A stray delimiter at top level (seen from some converters) carries nothing: ignore it. A C-STORE
      // (wholeDataset) refuses a stray Sequence Delimitation Item, as DCMTK cannot read a data set holding
      // one back (hunt 192), while it drops a stray Item Delimitation Item.
      return;
    }
    throw new DatasetParseError('ERR_DATASET_MALFORMED',
      `unexpected (${tagHex(tag)}) ${level === undefined ? 'at top level' : level.kind === 'fragments' ? 'inside encapsulated Pixel Data' : `inside ${level.kind === 'item' ? 'an item' : 'a sequence'}`}`, elementOffset);
  }

  /** A whole dataset's top-level tags ascend without repeats (PS3.5 7.1) and leave out the File Meta Information. */
  private checkTopLevelOrder(tag: Tag, elementOffset: number): void {
    if (tag >>> 16 === 0x0002) {
      throw new DatasetParseError('ERR_DATASET_MALFORMED',
        `File Meta Information element (${tagHex(tag)}) inside the data set (it belongs to the file's header only)`, elementOffset);
    }
    if (tag <= this.lastTopLevelTag) {
      throw new DatasetParseError('ERR_DATASET_MALFORMED',
        tag === this.lastTopLevelTag ? `(${tagHex(tag)}) appears twice` : `(${tagHex(tag)}) follows (${tagHex(this.lastTopLevelTag)}): elements out of ascending order`, elementOffset);
    }
    this.lastTopLevelTag = tag;
  }

  private startSkip(tag: Tag, length: number): void {
    this.pendingTag = tag;
    if (length === 0) {
      this.phase = phaseHeader;
      return;
    }
    this.skipRemainingBytes = length;
    this.phase = phaseSkip;
  }

  private startKeptValue(tag: Tag, vr: Vr, length: number, littleEndian: boolean, elementOffset: number): void {
    if (this.keptElementCount >= this.maxElementCount) {
      throw new DatasetParseError('ERR_DATASET_TOO_MANY_ELEMENTS', `more than ${this.maxElementCount} top-level elements`, elementOffset);
    }
    this.chargeExaminedBytes(length, elementOffset);
    this.pendingTag = tag;
    this.pendingVr = vr;
    this.pendingLittleEndian = littleEndian;
    this.pendingValueBytes = length;
    this.valueFilledBytes = 0;
    if (length === 0) {
      this.keepPendingValue(this.headerCarry, 0);
      this.phase = phaseHeader;
      return;
    }
    this.phase = phaseValue;
  }

  private keepPendingValue(bytes: Uint8Array, at: number): void {
    const vr = this.pendingVr;
    const value = textVrs.has(vr)
      ? decodeText(bytes, at, at + this.pendingValueBytes)
      : decodeNumbers(bytes, at, this.pendingValueBytes, vr, this.pendingLittleEndian);
    this.keptElementCount++;
    this.elements.push({ tag: this.pendingTag, vr, value });
    if (this.pendingTag === specificCharacterSetTag) this.specificCharacterSet = value;
  }

  private chargeExaminedBytes(bytes: number, elementOffset: number): void {
    this.examinedBytes += bytes;
    if (this.examinedBytes > this.maxHeaderBytes) {
      throw new DatasetParseError('ERR_DATASET_TOO_LARGE_HEADER',
        `dataset header exceeds ${this.maxHeaderBytes} bytes before Pixel Data`, elementOffset);
    }
  }
}

/** Reads a whole in-memory dataset (a C-FIND identifier, a small instance): push + end in one call. */
export function parseDataset(
  bytes: Uint8Array,
  transferSyntaxUid: string,
  options: Omit<DatasetHeaderReaderOptions, 'transferSyntaxUid'> = {},
): DatasetHeader {
  const reader = new DatasetHeaderReader({ ...options, transferSyntaxUid });
  reader.push(bytes);
  return reader.end();
}
