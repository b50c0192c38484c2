/**
 * A synchronous, push-based raw inflater with a bounded output buffer, for deflated datasets.
 * node:zlib has no public synchronous streaming API (its sync functions are one-shot and close the
 * engine), so this drives the zlib handle the way node's own processChunkSync does, one fixed-size
 * output window at a time; the handle is checked at construction so a Node change fails loudly.
 */
import zlib from 'node:zlib';
import { DatasetParseError } from './errors.ts';

interface ZlibHandle {
  writeSync(
    flushFlag: number, input: Uint8Array, inputOffset: number, inputLength: number,
    output: Uint8Array, outputOffset: number, outputLength: number,
  ): void;
  onerror: ((message: string, errno: number) => void) | undefined;
}

interface ZlibInternals {
  _handle: ZlibHandle | null;
  _writeState: Uint32Array;
}

/** Receives one window of inflated bytes; returns false to stop. */
export type InflateSink = (output: Uint8Array) => boolean;

export const defaultInflateWindowBytes = 64 * 1024;

export class StreamingInflater {
  private readonly engine: zlib.InflateRaw;
  private readonly handle: ZlibHandle;
  private readonly writeState: Uint32Array;
  private readonly outputWindow: Uint8Array;
  private engineError: string | undefined;
  private finished = false;

  constructor(outputWindowBytes = defaultInflateWindowBytes) {
    this.engine = new zlib.InflateRaw();
    const internals = this.engine as unknown as ZlibInternals;
    if (internals._handle === null || typeof internals._handle?.writeSync !== 'function' || !(internals._writeState instanceof Uint32Array)) {
      throw new DatasetParseError('ERR_DATASET_INFLATE', 'this Node.js version does not expose the zlib handle needed for streaming inflate');
    }
    this.handle = internals._handle;
    this.writeState = internals._writeState;
    this.handle.onerror = (message) => { this.engineError = message; };
    this.outputWindow = new Uint8Array(outputWindowBytes);
  }

  /**
   * Inflates `input`, handing each output window to `sink` before the window is reused (the sink must
   * copy what it keeps); the sink returns false to stop inflating this input early. Input after the
   * end of the deflate stream (padding) is ignored.
   */
  push(input: Uint8Array, sink: InflateSink): void {
    this.run(input, zlib.constants.Z_SYNC_FLUSH, sink);
  }

  /** Flushes the stream; throws ERR_DATASET_TRUNCATED when the deflate stream did not end. */
  finish(sink: InflateSink): void {
    this.run(new Uint8Array(0), zlib.constants.Z_FINISH, sink);
    this.close();
  }

  /** Frees the native zlib state; safe to call more than once. */
  close(): void {
    if (this.finished) return;
    this.finished = true;
    this.engine.close();
  }

  private run(input: Uint8Array, flushFlag: number, sink: InflateSink): void {
    if (this.finished) return;
    let inputOffset = 0;
    let inputLength = input.length;
    for (;;) {
      this.handle.writeSync(flushFlag, input, inputOffset, inputLength, this.outputWindow, 0, this.outputWindow.length);
      if (this.engineError !== undefined) {
        const message = this.engineError;
        this.close();
        const truncated = flushFlag === zlib.constants.Z_FINISH && /unexpected end/i.test(message);
        throw new DatasetParseError(truncated ? 'ERR_DATASET_TRUNCATED' : 'ERR_DATASET_INFLATE', `deflated dataset: ${message}`);
      }
      const outputFreeBytes = this.writeState[0]!;
      const inputLeftBytes = this.writeState[1]!;
      const producedBytes = this.outputWindow.length - outputFreeBytes;
      inputOffset += inputLength - inputLeftBytes;
      inputLength = inputLeftBytes;
      if (producedBytes > 0 && !sink(this.outputWindow.subarray(0, producedBytes))) return;
      // A full window means zlib may hold more output; otherwise it consumed all it could.
      if (outputFreeBytes !== 0) return;
    }
  }
}
