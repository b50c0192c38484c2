/**
 * A streaming reader of multipart bodies (RFC 2046 5.1, as multipart/related uses it: RFC 2387): parts come
 * one after another, each with its headers and a body read chunk by chunk, so a part of any size passes
 * through a buffer of one network chunk plus one delimiter. The reader pulls from its source only when the
 * consumer asks for more, which carries the consumer's back-pressure to the request stream.
 */
import { MultipartError } from './multipart-error.ts';

export interface MultipartLimits {
  /** A part's header section, CRLFs included. */
  partHeaderMaxBytes: number;
  /** Parts in one body. */
  partsMax: number;
  /** Bytes before the first delimiter (RFC 2046 lets a preamble be sent; it is ignored). */
  preambleMaxBytes: number;
}

export const defaultMultipartLimits: MultipartLimits = {
  partHeaderMaxBytes: 16 * 1024,
  partsMax: 10_000,
  preambleMaxBytes: 16 * 1024,
};

export interface MultipartPart {
  /** From 0, in body order. */
  index: number;
  /** Header names in lower case; a folded value is unfolded. */
  headers: ReadonlyMap<string, string>;
  /**
   * The part's bytes, in order. Read it to its end, or leave it: asking for the next part skips what is
   * left. The chunks are never reused by the reader, so a consumer may keep them.
   */
  body: AsyncIterable<Uint8Array>;
}

/**
 * RFC 2046 5.1.1's bchars, not ending with a space, 1 to 200 characters rather than 70: Orthanc 1.10's
 * DICOMweb client sends 73 (two UUIDs), and the length only sets the size of a delimiter we look for.
 */
export const boundaryMaxChars = 200;
const boundaryPattern = new RegExp(`^[0-9A-Za-z'()+_,\\-./:=? ]{0,${boundaryMaxChars - 1}}[0-9A-Za-z'()+_,\\-./:=?]$`);

export function isValidBoundary(boundary: string): boolean {
  return boundaryPattern.test(boundary);
}

/** Transport padding after a boundary (RFC 2046 5.1.1: white space a gateway may add): a few bytes in practice. */
const paddingMaxBytes = 1024;

const crlf = Buffer.from('\r\n', 'latin1');
const headerEnd = Buffer.from('\r\n\r\n', 'latin1');
const empty = Buffer.alloc(0);

/**
 * The parts of a multipart body read from `source` with `boundary` (already checked by isValidBoundary).
 * Throws MultipartError for a body that is not well formed, at the point where that shows: the parts
 * before it have been delivered whole.
 */
export async function* readMultipart(source: AsyncIterable<Uint8Array>, boundary: string, limits: MultipartLimits = defaultMultipartLimits): AsyncGenerator<MultipartPart> {
  if (!isValidBoundary(boundary)) throw new MultipartError('ERR_MULTIPART_DELIMITER', `the boundary must be 1 to ${boundaryMaxChars} characters of RFC 2046 5.1.1`);
  const reader = new DelimitedReader(source[Symbol.asyncIterator](), Buffer.from(`\r\n--${boundary}`, 'latin1'));
  try {
    await reader.skipPreamble(limits.preambleMaxBytes);
    for (let index = 0; ; index++) {
      if (await reader.atCloseDelimiter()) return;
      if (index >= limits.partsMax) throw new MultipartError('ERR_MULTIPART_TOO_MANY_PARTS', `more than ${limits.partsMax} parts in one request`);
      const headers = parseHeaders(await reader.readHeaderSection(limits.partHeaderMaxBytes));
      const body = reader.openBody();
      yield { index, headers, body };
      await reader.skipBody(body);
    }
  } finally {
    await reader.close();
  }
}

/** The byte-level state: what was pulled from the source and not yet consumed. */
class DelimitedReader {
  /** Starts with a CRLF so a delimiter at the very start of the body is found like every other one. */
  private buffer: Buffer = Buffer.from(crlf);
  private sourceDone = false;
  private bodyOpen = false;

  constructor(
    private readonly source: AsyncIterator<Uint8Array>,
    /** CRLF "--" boundary: what ends a part's body (RFC 2046 5.1.1: the CRLF belongs to the delimiter). */
    private readonly delimiter: Buffer,
  ) {}

  /** Appends the next chunk of the source; false at its end. */
  private async pull(): Promise<boolean> {
    if (this.sourceDone) return false;
    const next = await this.source.next();
    if (next.done) {
      this.sourceDone = true;
      return false;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    return true;
  }

  /** Whether at least `bytes` are buffered, pulling as needed; false when the source ends first. */
  private async have(bytes: number): Promise<boolean> {
    while (this.buffer.length < bytes) {
      if (!(await this.pull())) return false;
    }
    return true;
  }

  async skipPreamble(maxBytes: number): Promise<void> {
    let skipped = 0;
    for (;;) {
      const at = this.buffer.indexOf(this.delimiter);
      if (at >= 0 && skipped + at <= maxBytes + crlf.length) {
        this.buffer = this.buffer.subarray(at + this.delimiter.length);
        return;
      }
      const keep = Math.min(this.buffer.length, this.delimiter.length - 1);
      skipped += this.buffer.length - keep;
      this.buffer = this.buffer.subarray(this.buffer.length - keep);
      if (skipped > maxBytes) throw new MultipartError('ERR_MULTIPART_NO_START', `no "--boundary" line in the first ${maxBytes} bytes: not a multipart body with the boundary its Content-Type names`);
      if (!(await this.pull())) throw new MultipartError('ERR_MULTIPART_NO_START', 'the body holds no "--boundary" line: not a multipart body with the boundary its Content-Type names');
    }
  }

  /**
   * Just after a boundary: true for the close delimiter ("--"); otherwise consumes the transport padding
   * (spaces and tabs, RFC 2046 5.1.1) and leaves the CRLF that starts the header section.
   */
  async atCloseDelimiter(): Promise<boolean> {
    if (!(await this.have(2))) throw new MultipartError('ERR_MULTIPART_TRUNCATED', 'the body ends just after a boundary: no close delimiter');
    if (this.buffer[0] === 0x2d && this.buffer[1] === 0x2d) return true;
    for (let at = 0; ; at++) {
      if (at > paddingMaxBytes) throw new MultipartError('ERR_MULTIPART_DELIMITER', `over ${paddingMaxBytes} bytes of padding after a boundary`);
      if (!(await this.have(at + 2))) throw new MultipartError('ERR_MULTIPART_TRUNCATED', 'the body ends inside a delimiter line');
      const byte = this.buffer[at];
      if (byte === 0x20 || byte === 0x09) continue;
      if (byte === 0x0d && this.buffer[at + 1] === 0x0a) {
        this.buffer = this.buffer.subarray(at);
        return false;
      }
      // A bare LF: a body written with LF line ends, which multipart/related does not take (helper 85: the
      // message below sent such clients looking for a boundary inside a part).
      if (byte === 0x0a) throw new MultipartError('ERR_MULTIPART_DELIMITER', 'a boundary line ends with LF alone: multipart lines end with CRLF (RFC 2046 5.1.1)');
      throw new MultipartError('ERR_MULTIPART_DELIMITER', 'a boundary line goes on after the boundary: the boundary must not occur inside a part (RFC 2046 5.1.1)');
    }
  }

  /** The header section after a delimiter line, without its CRLFs; starts at the delimiter line's CRLF. */
  async readHeaderSection(maxBytes: number): Promise<string> {
    for (;;) {
      // The section is CRLF *(header CRLF) CRLF, so an empty one is the four bytes CRLF CRLF.
      const at = this.buffer.indexOf(headerEnd);
      if (at >= 0) {
        if (at + 4 > maxBytes) break;
        const text = this.buffer.toString('latin1', 2, Math.max(2, at));
        this.buffer = this.buffer.subarray(at + 4);
        return text;
      }
      if (this.buffer.length > maxBytes) break;
      if (!(await this.pull())) throw new MultipartError('ERR_MULTIPART_TRUNCATED', 'the body ends inside the headers of a part');
    }
    throw new MultipartError('ERR_MULTIPART_HEADER_TOO_LARGE', `a part's headers are over ${maxBytes} bytes`);
  }

  openBody(): AsyncGenerator<Uint8Array> {
    this.bodyOpen = true;
    return this.bodyChunks();
  }

  private async *bodyChunks(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const at = this.buffer.indexOf(this.delimiter);
      if (at >= 0) {
        const last = this.buffer.subarray(0, at);
        this.buffer = this.buffer.subarray(at + this.delimiter.length);
        this.bodyOpen = false;
        if (last.length > 0) yield last;
        return;
      }
      // What could be the start of a delimiter stays buffered; the rest is the part's.
      const keep = Math.min(this.buffer.length, this.delimiter.length - 1);
      const ready = this.buffer.subarray(0, this.buffer.length - keep);
      this.buffer = this.buffer.subarray(this.buffer.length - keep);
      if (ready.length > 0) yield ready;
      if (!(await this.pull())) throw new MultipartError('ERR_MULTIPART_TRUNCATED', 'the body ends inside a part: no closing boundary');
    }
  }

  /** Reads what the consumer left of a body, so the next part starts at its delimiter. */
  async skipBody(body: AsyncGenerator<Uint8Array>): Promise<void> {
    if (!this.bodyOpen) return;
    // A consumer that stopped early ended its generator: read the rest through a new one.
    await body.return(undefined);
    if (!this.bodyOpen) return;
    for await (const _chunk of this.bodyChunks()) {
      // skipped
    }
  }

  /** Lets the source release what it holds when the reader stops early (an error, or a consumer that left). */
  async close(): Promise<void> {
    this.buffer = empty;
    if (!this.sourceDone) {
      this.sourceDone = true;
      await this.source.return?.();
    }
  }
}

/** RFC 5322-style header lines (RFC 2046 5.1.1: only Content-* fields are meaningful here). */
function parseHeaders(text: string): Map<string, string> {
  const headers = new Map<string, string>();
  if (text === '') return headers;
  const lines: string[] = [];
  for (const line of text.split('\r\n')) {
    // A line starting with white space continues the one before (folding).
    if ((line.startsWith(' ') || line.startsWith('\t')) && lines.length > 0) lines[lines.length - 1] += ` ${line.trim()}`;
    else lines.push(line);
  }
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon).trim().toLowerCase() : '';
    if (!/^[!#$%&'*+\-.^_`|~0-9a-z]+$/.test(name)) throw new MultipartError('ERR_MULTIPART_HEADER', `a part header line is not "name: value": "${printable(line)}"`);
    const value = line.slice(colon + 1).trim();
    if (headers.has(name)) {
      if (name === 'content-type') throw new MultipartError('ERR_MULTIPART_HEADER', 'a part has two Content-Type headers');
      continue;
    }
    headers.set(name, value);
  }
  return headers;
}

/** Up to 80 characters of `text` with control and non-ASCII characters shown as "?", for a message. */
export function printable(text: string): string {
  return text.slice(0, 80).replace(/[^\x20-\x7e]/g, '?');
}
