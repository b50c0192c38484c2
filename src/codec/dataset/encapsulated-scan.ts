/**
 * Frames of encapsulated Pixel Data cut from its bytes as they stream from the store: only the fragments
 * that may belong to the asked frames are kept, so a frame of a large compressed cine costs its own bytes
 * in memory, not the instance's. Which fragments make a frame is decided as readPixelData decides
 * (locateFrames) once every fragment has been seen; or earlier, when a Basic Offset Table with one entry
 * per frame says where the asked frames end (the entries after that point are then trusted unchecked).
 */
import { DatasetParseError } from './errors.ts';
import { binarySearch, defaultMaxFragmentCount, isMarkerDelimited, itemTag, locateFrames, sequenceDelimiterTag } from './pixel-data.ts';

const itemHeaderBytes = 8;
const undefinedLength = 0xffffffff;

type ScanPhase =
  | { phase: 'itemHeader'; filled: number }
  | { phase: 'offsetTable'; remaining: number; keep: boolean }
  | { phase: 'fragment'; remaining: number; keep: boolean }
  | { phase: 'done' };

export interface EncapsulatedScanInit {
  numberOfFrames: number;
  /** Frame numbers (from 1) whose codestreams are wanted. */
  wantedFrames: Iterable<number>;
  transferSyntaxUid: string;
  maxFragmentCount?: number;
}

export class EncapsulatedFrameScanner {
  private readonly numberOfFrames: number;
  private readonly wanted: ReadonlySet<number>;
  private readonly lastWanted: number;
  private readonly markerDelimited: boolean;
  private readonly maxFragmentCount: number;
  private state: ScanPhase = { phase: 'itemHeader', filled: 0 };
  private readonly header = Buffer.alloc(itemHeaderBytes);
  private offsetTableParts: Uint8Array[] = [];
  /** Undefined until the first item (the Basic Offset Table) has been read. */
  private basicOffsetTable: number[] | undefined;
  /** Bytes of the Pixel Data value consumed so far. */
  private consumed = 0;
  private firstFragmentAt = -1;
  private readonly fragmentPositions: number[] = [];
  private readonly fragmentEndsWithEndOfImage: boolean[] = [];
  private fragmentsEndingWithEndOfImage = 0;
  /** The last three bytes of the fragment being read: where its end-of-image marker is. */
  private tail: number[] = [];
  private readonly keptFragments = new Map<number, Uint8Array[]>();
  /** Set when the offset table located the wanted frames before the last fragment: their fragments by frame. */
  private locatedEarly: Array<{ first: number; count: number }> | undefined;
  private earlyEndPossible: boolean;

  constructor(init: EncapsulatedScanInit) {
    this.numberOfFrames = init.numberOfFrames;
    this.wanted = new Set(init.wantedFrames);
    this.lastWanted = Math.max(0, ...this.wanted);
    this.markerDelimited = isMarkerDelimited(init.transferSyntaxUid);
    this.maxFragmentCount = init.maxFragmentCount ?? defaultMaxFragmentCount;
    this.earlyEndPossible = this.lastWanted < this.numberOfFrames;
  }

  /** True once the wanted frames are known: the rest of the value need not be read. */
  get done(): boolean {
    return this.state.phase === 'done';
  }

  /** Consumes the next bytes of the Pixel Data value (from just after its element header). Throws DatasetParseError. */
  push(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length && this.state.phase !== 'done') {
      const state = this.state;
      switch (state.phase) {
        case 'itemHeader': {
          const take = Math.min(itemHeaderBytes - state.filled, bytes.length - at);
          this.header.set(bytes.subarray(at, at + take), state.filled);
          state.filled += take;
          at += take;
          this.consumed += take;
          if (state.filled === itemHeaderBytes) this.onItemHeader(this.consumed - itemHeaderBytes);
          break;
        }
        case 'offsetTable':
        case 'fragment': {
          const take = Math.min(state.remaining, bytes.length - at);
          const piece = bytes.subarray(at, at + take);
          at += take;
          this.consumed += take;
          state.remaining -= take;
          if (state.keep) this.keep(piece, state.phase);
          if (state.phase === 'fragment') this.noteTail(piece);
          if (state.remaining === 0) this.onItemEnd(state.phase);
          break;
        }
        default: {
          const unreachable: never = state;
          throw new Error(`unhandled scan phase ${JSON.stringify(unreachable)}`);
        }
      }
    }
  }

  /**
   * The wanted frames' codestreams (fragments joined), by frame number; undefined when the frames cannot be
   * told apart this way (the caller reads the instance whole). Only once `done`.
   */
  frames(): Map<number, Uint8Array> | undefined {
    if (this.state.phase !== 'done') throw new Error('the Pixel Data has not been read to its end');
    const located =
      this.locatedEarly ??
      locateFrames(this.numberOfFrames, this.basicOffsetTable ?? [], this.fragmentPositions, (index) => this.fragmentEndsWithEndOfImage[index]!, this.markerDelimited);
    if (located === undefined) return undefined;
    const frames = new Map<number, Uint8Array>();
    for (const frameNumber of this.wanted) {
      const frame = located[frameNumber - 1];
      if (frame === undefined) return undefined;
      const { first, count } = frame;
      const parts: Uint8Array[] = [];
      for (let index = first; index < first + count; index++) {
        const kept = this.keptFragments.get(index);
        if (kept === undefined) return undefined;
        parts.push(...kept);
      }
      frames.set(frameNumber, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
    }
    return frames;
  }

  private onItemHeader(itemAt: number): void {
    const tag = ((this.header.readUInt16LE(0) << 16) | this.header.readUInt16LE(2)) >>> 0;
    const length = this.header.readUInt32LE(4);
    if (tag === sequenceDelimiterTag) {
      this.state = { phase: 'done' };
      return;
    }
    if (tag !== itemTag) throw new DatasetParseError('ERR_DATASET_MALFORMED', `(${tag.toString(16).padStart(8, '0')}) inside encapsulated Pixel Data, where an item belongs`);
    if (length === undefinedLength) throw new DatasetParseError('ERR_DATASET_MALFORMED', 'a Pixel Data item of undefined length');
    if (this.basicOffsetTable === undefined) {
      if (length % 4 !== 0) throw new DatasetParseError('ERR_DATASET_MALFORMED', `the Basic Offset Table is ${length} bytes, not a multiple of 4`);
      // A table of another size than one entry per frame is not used (locateFrames): it is read past, not kept.
      const keep = length === 4 * this.numberOfFrames;
      this.basicOffsetTable = [];
      this.state = { phase: 'offsetTable', remaining: length, keep };
      if (length === 0) this.onItemEnd('offsetTable');
      return;
    }
    if (this.fragmentPositions.length >= this.maxFragmentCount) {
      throw new DatasetParseError('ERR_DATASET_TOO_MANY_ELEMENTS', `encapsulated Pixel Data has more than ${this.maxFragmentCount} fragments`);
    }
    if (this.firstFragmentAt < 0) this.firstFragmentAt = itemAt;
    const position = itemAt - this.firstFragmentAt;
    if (this.endsWantedFrames(position)) {
      this.state = { phase: 'done' };
      return;
    }
    const index = this.fragmentPositions.length;
    this.fragmentPositions.push(position);
    this.tail = [];
    this.state = { phase: 'fragment', remaining: length, keep: this.mayBelongToWantedFrame(index, position) };
    if (length === 0) this.onItemEnd('fragment');
  }

  private onItemEnd(phase: 'offsetTable' | 'fragment'): void {
    if (phase === 'offsetTable') {
      const table = Buffer.concat(this.offsetTableParts);
      this.offsetTableParts = [];
      for (let at = 0; at + 4 <= table.length; at += 4) this.basicOffsetTable!.push(table.readUInt32LE(at));
    } else {
      const t = this.tail;
      const n = t.length;
      const endsWithEndOfImage = (n >= 2 && t[n - 2] === 0xff && t[n - 1] === 0xd9) || (n >= 3 && t[n - 3] === 0xff && t[n - 2] === 0xd9 && t[n - 1] === 0x00);
      this.fragmentEndsWithEndOfImage.push(endsWithEndOfImage);
      if (endsWithEndOfImage) this.fragmentsEndingWithEndOfImage++;
    }
    this.state = { phase: 'itemHeader', filled: 0 };
  }

  private keep(piece: Uint8Array, phase: 'offsetTable' | 'fragment'): void {
    if (phase === 'offsetTable') {
      this.offsetTableParts.push(piece);
      return;
    }
    const index = this.fragmentPositions.length - 1;
    const parts = this.keptFragments.get(index);
    if (parts === undefined) this.keptFragments.set(index, [piece]);
    else parts.push(piece);
  }

  private noteTail(piece: Uint8Array): void {
    if (piece.length >= 3) this.tail = [piece[piece.length - 3]!, piece[piece.length - 2]!, piece[piece.length - 1]!];
    else this.tail = [...this.tail, ...piece].slice(-3);
  }

  /** Whether any rule of locateFrames could put this fragment in a wanted frame: such fragments are kept. */
  private mayBelongToWantedFrame(index: number, position: number): boolean {
    const table = this.basicOffsetTable!;
    if (table.length === this.numberOfFrames && this.wanted.has(entriesAtOrBelow(table, position))) return true;
    if (this.wanted.has(index + 1)) return true;
    if (this.numberOfFrames === 1) return true;
    return this.markerDelimited && this.wanted.has(this.fragmentsEndingWithEndOfImage + 1);
  }

  /**
   * At a fragment's start: whether the offset table says the frame after the last wanted one starts here,
   * every entry up to it at a fragment seen; if so the wanted frames are located.
   */
  private endsWantedFrames(position: number): boolean {
    if (!this.earlyEndPossible) return false;
    const table = this.basicOffsetTable!;
    if (table.length !== this.numberOfFrames) return false;
    const endOfWanted = table[this.lastWanted]!;
    if (position < endOfWanted) return false;
    this.earlyEndPossible = false;
    if (position !== endOfWanted) return false;
    const starts = table.slice(0, this.lastWanted + 1).map((offset) => (offset === position ? this.fragmentPositions.length : binarySearch(this.fragmentPositions, offset)));
    if (starts[0] !== 0 || !starts.every((start, index) => start >= 0 && (index === 0 || start > starts[index - 1]!))) return false;
    this.locatedEarly = starts.slice(0, -1).map((first, index) => ({ first, count: starts[index + 1]! - first }));
    return true;
  }
}

/** How many entries of an ascending table are at or below `position`: the frame (from 1) a fragment there starts or continues. */
function entriesAtOrBelow(table: readonly number[], position: number): number {
  let low = 0;
  let high = table.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (table[middle]! <= position) low = middle + 1;
    else high = middle;
  }
  return low;
}
