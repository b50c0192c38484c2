/**
 * Bounded reading and writing over libp2p v3 streams, with back-pressure in both directions.
 *
 * - {@link StreamWriter}: `send()` returning false means "wait for 'drain'" (STACK.md trap 3: `onDrain()`
 *   resolves only the first time, so we listen for the event). Large buffers go out in bounded pieces.
 * - {@link StreamReader}: listens to 'message' and pauses the stream once its queue reaches
 *   `highWaterMark`, resuming when the consumer drains it (trap 4: `for await (const c of stream)`
 *   buffers without bound). While paused, yamux stops sending window updates, so the remote can push at
 *   most one stream window more. Memory per stream <= highWaterMark + maxStreamWindowSize (+ one dispatch).
 *   It hands out views of the buffers libp2p delivered, without copying; a consumer may keep them, since
 *   libp2p never writes to a delivered buffer again (each socket read and each decryption allocates anew).
 * - Frames: uint32 big-endian length + bytes; the limit is checked before allocating.
 */
import { MeshStreamError } from './errors.ts';
import type { Stream } from '@libp2p/interface';

export const DEFAULT_READ_HIGH_WATER_MARK = 1024 * 1024;
/** Largest buffer handed to `stream.send` at once; bigger writes are split. */
export const DEFAULT_WRITE_CHUNK = 256 * 1024;
/** `readExactly` allocates `n` bytes when the data spans chunks: refuse anything above this. */
export const MAX_READ_EXACTLY = 64 * 1024 * 1024;
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;
/** At most this many bytes are staged; staging more sends what is held first. */
export const STAGED_BYTES_MAX = 16 * 1024;
/**
 * Staged bytes go out with at most this much of the next write in one send, so that the copy that joins
 * them stays small (the rest of the write follows as it is); both go out in one yamux frame when the send
 * window has room for them.
 */
const STAGED_SEND_BYTES_MAX = 60 * 1024;
/**
 * Gathered bytes (see StreamWriter.gather) go out together once this many are held: a muxer data frame
 * (up to the send window, 256 KiB at first) and four 64 KiB Noise messages, where small pieces sent one
 * by one were a frame and a Noise message each.
 */
export const GATHER_BYTES_MAX = 256 * 1024;

export interface ReadOptions {
  signal?: AbortSignal;
}

function abortError(signal: AbortSignal): MeshStreamError {
  const reason: unknown = signal.reason;
  const text = reason instanceof Error ? reason.message : String(reason ?? 'aborted');
  return new MeshStreamError('ERR_ABORTED', `operation aborted: ${text}`, { cause: reason });
}

function closedError(stream: Stream, err?: Error): MeshStreamError {
  if (err != null) {
    return new MeshStreamError('ERR_STREAM_RESET', `stream ${stream.protocol ?? ''} closed with error: ${err.message}`, { cause: err });
  }
  return new MeshStreamError('ERR_STREAM_CLOSED', `stream ${stream.protocol ?? ''} is closed (status ${stream.status})`);
}

export interface StreamReaderInit {
  /** Pause the stream when this many bytes are queued unread. Default 1 MiB. */
  highWaterMark?: number;
  /** Called whenever bytes arrive (the remote peer is alive, whatever its heartbeats' delay). Must be cheap. */
  onData?: () => void;
}

/**
 * Reads a stream through a bounded queue. Attach it as soon as the stream exists (data that arrives with
 * no 'message' listener waits in the stream's own buffer, which resets the stream past 4 MB).
 * Only one read may be pending at a time.
 */
export class StreamReader implements AsyncIterable<Uint8Array> {
  private readonly stream: Stream;
  private readonly highWaterMark: number;
  private readonly chunks: Uint8Array[] = [];
  private head = 0;
  private queued = 0;
  private ended = false;
  private error: MeshStreamError | undefined;
  private wake: (() => void) | undefined;
  private bytesRead = 0;

  private readonly onData: (() => void) | undefined;

  constructor(stream: Stream, init: StreamReaderInit = {}) {
    this.stream = stream;
    this.onData = init.onData;
    this.highWaterMark = Math.max(1, init.highWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK);
    stream.addEventListener('message', this.onMessage);
    stream.addEventListener('end', this.onEnd);
    stream.addEventListener('close', this.onClose);
    if (stream.readableEnded) this.ended = true;
  }

  /** Bytes currently queued in this reader (not counting the stream's own buffer). */
  get bufferedBytes(): number {
    return this.queued;
  }

  /** Total bytes handed to the consumer so far. */
  get totalRead(): number {
    return this.bytesRead;
  }

  /** True once the remote closed its writable end and everything queued has been read. */
  get done(): boolean {
    return this.ended && this.queued === 0;
  }

  private readonly onMessage = (evt: { data: Uint8Array | Iterable<Uint8Array> }): void => {
    this.onData?.();
    const data = evt.data;
    if (data instanceof Uint8Array) {
      this.enqueue(data);
    } else {
      for (const buf of data) this.enqueue(buf);
    }
    // Inside resume() the stream dispatches its buffer BEFORE telling yamux to resume: pausing here
    // would be undone at once (readStatus 'paused' but window updates flowing: the buffer then grows
    // until the 4 MB reset). maybeResume() pauses again after resume() returns instead.
    if (!this.resuming) this.pauseIfFull();
    this.notify();
  };

  private resuming = false;

  private pauseIfFull(): void {
    if (this.queued >= this.highWaterMark && this.stream.readStatus === 'readable') {
      this.stream.pause();
    }
  }

  private readonly onEnd = (): void => {
    this.ended = true;
    this.notify();
  };

  private readonly onClose = (evt: { error?: Error }): void => {
    if (evt.error != null) {
      this.error ??= closedError(this.stream, evt.error);
      this.ended = true;
    } else if (this.stream.readBufferLength === 0) {
      this.ended = true;
    }
    this.notify();
  };

  private enqueue(buf: Uint8Array): void {
    if (buf.byteLength === 0) return;
    this.chunks.push(buf);
    this.queued += buf.byteLength;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private maybeResume(): void {
    if (this.queued < this.highWaterMark && this.stream.readStatus === 'paused') {
      this.resuming = true;
      try {
        this.stream.resume();
      } finally {
        this.resuming = false;
      }
      this.pauseIfFull();
    }
  }

  /** Waits until at least one byte is queued. Resolves false at a clean end of stream. */
  private async fill(options?: ReadOptions): Promise<boolean> {
    while (this.queued === 0) {
      if (this.error != null) throw this.error;
      if (this.ended) return false;
      if (this.wake != null) throw new MeshStreamError('ERR_STREAM_CLOSED', 'concurrent reads on one stream are not supported');
      this.maybeResume();
      const signal = options?.signal;
      if (signal?.aborted === true) throw abortError(signal);
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          this.wake = undefined;
          reject(abortError(signal as AbortSignal));
        };
        this.wake = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
    return true;
  }

  /** Removes up to `max` bytes from the head chunk, without copying. */
  private take(max: number): Uint8Array {
    const first = this.chunks[this.head] as Uint8Array;
    let out: Uint8Array;
    if (first.byteLength <= max) {
      out = first;
      this.chunks[this.head] = undefined as unknown as Uint8Array;
      this.head++;
      if (this.head > 1024 || this.head === this.chunks.length) {
        this.chunks.splice(0, this.head);
        this.head = 0;
      }
    } else {
      out = first.subarray(0, max);
      this.chunks[this.head] = first.subarray(max);
    }
    this.queued -= out.byteLength;
    this.bytesRead += out.byteLength;
    this.maybeResume();
    return out;
  }

  /** The next chunk of at most `max` bytes (no copy), or null at the end of the stream. */
  async read(max = Number.MAX_SAFE_INTEGER, options?: ReadOptions): Promise<Uint8Array | null> {
    if (!(await this.fill(options))) return null;
    return this.take(max);
  }

  /** Exactly `n` bytes; throws ERR_UNEXPECTED_EOF if the stream ends first. */
  async readExactly(n: number, options?: ReadOptions): Promise<Uint8Array> {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`invalid length ${n}`);
    if (n > MAX_READ_EXACTLY) {
      throw new MeshStreamError('ERR_READ_TOO_LARGE', `readExactly(${n}) exceeds ${MAX_READ_EXACTLY} bytes; stream it with body()`);
    }
    if (n === 0) return new Uint8Array(0);
    if (!(await this.fill(options))) throw this.eof(n, 0);
    const first = this.chunks[this.head] as Uint8Array;
    if (first.byteLength >= n) return this.take(n);
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill(options))) throw this.eof(n, got);
      const piece = this.take(n - got);
      out.set(piece, got);
      got += piece.byteLength;
    }
    return out;
  }

  private eof(wanted: number, got: number): MeshStreamError {
    return new MeshStreamError('ERR_UNEXPECTED_EOF', `stream ended after ${got} of ${wanted} expected bytes`);
  }

  /** A uint32 BE length-prefixed frame; a length over `maxBytes` is rejected before allocating. */
  async readFrame(maxBytes: number, options?: ReadOptions): Promise<Uint8Array> {
    const header = await this.readExactly(4, options);
    const length = new DataView(header.buffer, header.byteOffset, 4).getUint32(0);
    if (length > maxBytes) {
      throw new MeshStreamError('ERR_FRAME_TOO_LARGE', `frame of ${length} bytes exceeds the limit of ${maxBytes}`);
    }
    return this.readExactly(length, options);
  }

  /** Like {@link readFrame} but resolves null on a clean end of stream before the frame starts. */
  async readFrameOrEnd(maxBytes: number, options?: ReadOptions): Promise<Uint8Array | null> {
    if (!(await this.fill(options))) return null;
    return this.readFrame(maxBytes, options);
  }

  /** A uint64 BE unsigned integer (must fit in a JS safe integer). */
  async readUint64(options?: ReadOptions): Promise<number> {
    const bytes = await this.readExactly(8, options);
    const value = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new MeshStreamError('ERR_BODY_LENGTH', `length ${value} is too large`);
    }
    return Number(value);
  }

  /** Yields exactly `n` bytes as chunks (no copies, no big allocation); throws ERR_UNEXPECTED_EOF if short. */
  async *body(n: number, options?: ReadOptions): AsyncGenerator<Uint8Array, void, undefined> {
    let left = n;
    while (left > 0) {
      if (!(await this.fill(options))) throw this.eof(n, n - left);
      const piece = this.take(left);
      left -= piece.byteLength;
      yield piece;
    }
  }

  /** Resolves once the remote has closed its end; throws if more data arrives first. */
  async expectEnd(options?: ReadOptions): Promise<void> {
    if (await this.fill(options)) {
      throw new MeshStreamError('ERR_BODY_LENGTH', `unexpected ${this.queued} extra bytes after the end of the message`);
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    while (true) {
      const chunk = await this.read();
      if (chunk == null) return;
      yield chunk;
    }
  }

  /** Stop listening to the stream (queued data is dropped). */
  detach(): void {
    this.stream.removeEventListener('message', this.onMessage);
    this.stream.removeEventListener('end', this.onEnd);
    this.stream.removeEventListener('close', this.onClose);
    this.chunks.length = 0;
    this.head = 0;
    this.queued = 0;
  }
}

export interface StreamWriterInit {
  /** Split writes into pieces of at most this many bytes. Default 256 KiB. */
  chunkSize?: number;
}

/**
 * Writes with back-pressure: each `write` resolves once the stream can take more, so a writer that
 * awaits every call holds at most one piece in the stream's write buffer.
 *
 * Small bytes that precede data (a frame header, a length) can be staged: they go out in the same muxer
 * frame as the next write instead of frames of their own. Each frame costs a Noise message, a pnet pass
 * and a socket write here and a read, a decryption and a decode at the other end (a catch-up sent three
 * frames per small instance). Whoever stages must write or `flush` before waiting for an answer.
 */
export class StreamWriter {
  private readonly stream: Stream;
  private readonly chunkSize: number;
  private written = 0;
  private staged: Uint8Array[] = [];
  private stagedBytes = 0;

  constructor(stream: Stream, init: StreamWriterInit = {}) {
    this.stream = stream;
    this.chunkSize = Math.max(1024, init.chunkSize ?? DEFAULT_WRITE_CHUNK);
  }

  get totalWritten(): number {
    return this.written;
  }

  /** Resolves when the stream does not need draining (immediately if it does not). */
  async waitWritable(options?: ReadOptions): Promise<void> {
    while (this.stream.writableNeedsDrain) {
      if (this.stream.status !== 'open') throw closedError(this.stream);
      await this.waitDrain(options);
    }
  }

  private waitDrain(options?: ReadOptions): Promise<void> {
    const stream = this.stream;
    const signal = options?.signal;
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        stream.removeEventListener('drain', onDrain);
        stream.removeEventListener('close', onClose);
        signal?.removeEventListener('abort', onAbort);
      };
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (evt: { error?: Error }): void => {
        cleanup();
        reject(closedError(stream, evt.error));
      };
      const onAbort = (): void => {
        cleanup();
        reject(abortError(signal as AbortSignal));
      };
      if (signal?.aborted === true) {
        reject(abortError(signal));
        return;
      }
      stream.addEventListener('drain', onDrain);
      stream.addEventListener('close', onClose);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Write `data` (after anything staged), waiting for 'drain' whenever the stream reports it is full. */
  async write(data: Uint8Array, options?: ReadOptions): Promise<void> {
    let offset = 0;
    if (this.stagedBytes > 0) {
      const head = data.subarray(0, Math.max(0, Math.min(data.byteLength, STAGED_SEND_BYTES_MAX - this.stagedBytes)));
      await this.send(this.takeStaged(head), options);
      offset = head.byteLength;
    }
    for (let off = offset; off < data.byteLength; off += this.chunkSize) {
      const piece = off === 0 && data.byteLength <= this.chunkSize ? data : data.subarray(off, Math.min(data.byteLength, off + this.chunkSize));
      await this.send(piece, options);
    }
  }

  /**
   * Holds `bytes` (by reference: do not reuse the buffer) to go out with the next write (see the class
   * comment); sends what is held first when full.
   */
  async stage(bytes: Uint8Array, options?: ReadOptions): Promise<void> {
    if (this.stagedBytes + bytes.byteLength > STAGED_BYTES_MAX) await this.flush(options);
    if (bytes.byteLength > STAGED_BYTES_MAX) return this.write(bytes, options);
    this.staged.push(bytes);
    this.stagedBytes += bytes.byteLength;
  }

  /**
   * Holds `bytes` (by reference: do not reuse the buffer) with what is staged, up to GATHER_BYTES_MAX (or
   * the write chunk size, if smaller) in all; once more would not fit, what is held goes out first, in
   * one send (one copy of the pieces). For many small pieces written one after the other (the instances
   * of a batch): each sent alone was a muxer frame, a Noise message and a socket write at the sender, and
   * a decryption, a frame and a stream event at the receiver. The bytes held go out with the next write,
   * flush or end (or stage, once more than STAGED_BYTES_MAX are held).
   */
  async gather(bytes: Uint8Array, options?: ReadOptions): Promise<void> {
    const max = Math.min(GATHER_BYTES_MAX, this.chunkSize);
    if (this.stagedBytes + bytes.byteLength > max) await this.flush(options);
    if (bytes.byteLength > max) return this.write(bytes, options);
    this.staged.push(bytes);
    this.stagedBytes += bytes.byteLength;
  }

  /** Gathers a uint32 BE length-prefixed frame (see `gather`). */
  async gatherFrame(payload: Uint8Array, options?: ReadOptions): Promise<void> {
    await this.gather(frameLength(payload), options);
    await this.gather(payload, options);
  }

  /** Gathers a uint64 BE (see `gather`). */
  async gatherUint64(value: number, options?: ReadOptions): Promise<void> {
    await this.gather(uint64Bytes(value), options);
  }

  /** Sends whatever is staged. */
  async flush(options?: ReadOptions): Promise<void> {
    if (this.stagedBytes > 0) await this.send(this.takeStaged(new Uint8Array(0)), options);
  }

  /** Write a uint32 BE length-prefixed frame (its length goes out with the payload's first bytes). */
  async writeFrame(payload: Uint8Array, options?: ReadOptions): Promise<void> {
    await this.stage(frameLength(payload), options);
    await this.write(payload, options);
  }

  /** Stages a uint32 BE length-prefixed frame (see `stage`); one too large to hold is written now. */
  async stageFrame(payload: Uint8Array, options?: ReadOptions): Promise<void> {
    if (4 + payload.byteLength > STAGED_BYTES_MAX) return this.writeFrame(payload, options);
    await this.stage(frameLength(payload), options);
    await this.stage(payload, options);
  }

  /** Stages a uint64 BE (see `stage`). */
  async stageUint64(value: number, options?: ReadOptions): Promise<void> {
    await this.stage(uint64Bytes(value), options);
  }

  /** Close our writable end once everything queued has been handed to the muxer (half-close). */
  async end(options?: ReadOptions): Promise<void> {
    if (this.stream.writeStatus === 'closed' || this.stream.writeStatus === 'closing') return;
    await this.flush(options);
    await this.stream.close(options);
  }

  private takeStaged(tail: Uint8Array): Uint8Array {
    const out = new Uint8Array(this.stagedBytes + tail.byteLength);
    let at = 0;
    for (const bytes of [...this.staged, tail]) {
      out.set(bytes, at);
      at += bytes.byteLength;
    }
    this.staged = [];
    this.stagedBytes = 0;
    return out;
  }

  private async send(piece: Uint8Array, options?: ReadOptions): Promise<void> {
    await this.waitWritable(options);
    const signal = options?.signal;
    if (signal?.aborted === true) throw abortError(signal);
    let ok: boolean;
    try {
      ok = this.stream.send(piece);
    } catch (err) {
      throw closedError(this.stream, err as Error);
    }
    this.written += piece.byteLength;
    if (!ok) await this.waitWritable(options);
  }
}

/** The uint32 BE length that precedes a frame's payload. */
function frameLength(payload: Uint8Array): Uint8Array {
  if (payload.byteLength > 0xffffffff) throw new MeshStreamError('ERR_FRAME_TOO_LARGE', 'frame over 4 GiB');
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, payload.byteLength);
  return out;
}

function uint64Bytes(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`invalid uint64 ${value}`);
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value));
  return bytes;
}

export interface MeshStreamInit extends StreamReaderInit, StreamWriterInit {}

/** A libp2p stream with its bounded reader and writer: what `handle`/`openStream` hand out. */
export class MeshStream {
  readonly raw: Stream;
  readonly remotePeer: string;
  readonly reader: StreamReader;
  readonly writer: StreamWriter;

  constructor(raw: Stream, remotePeer: string, init: MeshStreamInit = {}) {
    this.raw = raw;
    this.remotePeer = remotePeer;
    this.reader = new StreamReader(raw, init);
    this.writer = new StreamWriter(raw, init);
  }

  get protocol(): string {
    return this.raw.protocol;
  }

  /** Half-close: no more writes from us; reading continues until the remote closes. */
  closeWrite(options?: ReadOptions): Promise<void> {
    return this.writer.end(options);
  }

  /** Close our end and wait (bounded by `options.signal`) for the remote's end. */
  async close(options?: ReadOptions): Promise<void> {
    await this.writer.end(options);
    while ((await this.reader.read(Number.MAX_SAFE_INTEGER, options)) != null) {
      // discard whatever the remote still sends
    }
  }

  /** Open both ways with nothing unread: a finished exchange, so the stream can carry another. */
  get reusable(): boolean {
    return this.raw.status === 'open' && this.raw.writeStatus === 'writable' && this.reader.bufferedBytes === 0 && !this.reader.done;
  }

  /** Reset the stream at once, discarding buffered data in both directions. */
  abort(err: Error): void {
    this.raw.abort(err);
    this.reader.detach();
  }
}
