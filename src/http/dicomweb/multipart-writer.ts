/**
 * A multipart/related response body (RFC 2387, PS3.18 8.6.1.2) written part by part, honouring the
 * response's back-pressure: a write the socket cannot take yet is awaited ('drain'), so a response holds
 * no more than one chunk beyond the socket's buffer whatever its size. A client that goes away ends the
 * writing with ERR_DICOMWEB_CLIENT_GONE instead of a wait for ever.
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { formatMediaType } from './accept.ts';
import { MultipartError } from './multipart-error.ts';

export interface MultipartOptions {
  /** The parts' media type: the `type` parameter of multipart/related. */
  type: string;
  /** The `transfer-syntax` parameter, when the parts have one. */
  transferSyntax?: string;
  /** Default 200. */
  status?: number;
  /** More response headers. */
  headers?: Readonly<Record<string, string>>;
}

export interface MultipartWriter {
  readonly boundary: string;
  /**
   * Writes one part: its headers (names as given, values without CR or LF), then its body, chunk by chunk.
   * A body in memory (one Uint8Array, or an array of them, written in one go) also gets a Content-Length
   * header. Rejects with MultipartError when the client is gone; parts must be written one after the other
   * (await each).
   */
  writePart(headers: Readonly<Record<string, string>>, body: Uint8Array | readonly Uint8Array[] | AsyncIterable<Uint8Array>): Promise<void>;
  /** Writes the closing delimiter and ends the response. */
  end(): void;
}

/** Whether `error` (or the response's state) says the client went away: nobody is left to answer. */
export function isClientGone(error: unknown, res: ServerResponse): boolean {
  return (error instanceof MultipartError && error.code === 'ERR_DICOMWEB_CLIENT_GONE') || res.destroyed;
}

/** The chunks of a body held in memory (one Uint8Array or an array of them); undefined for a stream. */
export function inMemoryChunks(body: Uint8Array | readonly Uint8Array[] | AsyncIterable<Uint8Array>): readonly Uint8Array[] | undefined {
  return body instanceof Uint8Array ? [body] : Array.isArray(body) ? (body as readonly Uint8Array[]) : undefined;
}

/** The total length of chunks in memory. */
export function byteLengthOf(chunks: readonly Uint8Array[]): number {
  return chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
}

const crlf = '\r\n';
const headerValuePattern = /^[^\r\n]*$/;
const headerNamePattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Sends the status and headers now (a later error can only cut the connection) and returns the part writer. */
export function startMultipart(res: ServerResponse, options: MultipartOptions): MultipartWriter {
  // 32 random hex digits: a boundary that no part's bytes can be expected to hold (RFC 2046 5.1.1).
  const boundary = randomBytes(16).toString('hex');
  const parameters: Array<[string, string]> = [['type', options.type]];
  if (options.transferSyntax !== undefined) parameters.push(['transfer-syntax', options.transferSyntax]);
  parameters.push(['boundary', boundary]);
  res.writeHead(options.status ?? 200, { ...options.headers, 'content-type': formatMediaType('multipart/related', parameters) });
  // A HEAD response has the headers only: its parts are not written (nor read).
  const headOnly = res.req?.method === 'HEAD';
  let writing = false;
  let ended = false;
  const body = responseBodyWriter(res);

  return {
    boundary,
    async writePart(headers, partBody) {
      if (ended || writing) throw new MultipartError('ERR_DICOMWEB_MULTIPART_USAGE', ended ? 'the multipart response has ended' : 'parts must be written one at a time');
      const lines: string[] = [];
      for (const [name, value] of Object.entries(headers)) {
        if (!headerNamePattern.test(name) || !headerValuePattern.test(value)) throw new MultipartError('ERR_DICOMWEB_MULTIPART_USAGE', `part header ${JSON.stringify(name.slice(0, 40))} is not a header line`);
        lines.push(`${name}: ${value}`);
      }
      const inMemory = inMemoryChunks(partBody);
      if (inMemory !== undefined && !Object.keys(headers).some((name) => name.toLowerCase() === 'content-length')) {
        lines.push(`Content-Length: ${byteLengthOf(inMemory)}`);
      }
      if (headOnly) return;
      writing = true;
      try {
        await body.write(`--${boundary}${crlf}${lines.join(crlf)}${crlf}${crlf}`);
        await body.writeAll(inMemory ?? (partBody as AsyncIterable<Uint8Array>));
        await body.write(crlf);
      } finally {
        writing = false;
      }
    },
    end() {
      if (ended) return;
      ended = true;
      if (headOnly) res.end();
      else res.end(`--${boundary}--${crlf}`);
    },
  };
}

/** Writes a response body with back-pressure (see the module comment); rejects with ERR_DICOMWEB_CLIENT_GONE once the client is gone. */
export interface ResponseBodyWriter {
  write(chunk: Uint8Array | string): Promise<void>;
  /** Chunks in memory go out in one corked write (a few syscalls, not one per chunk), then one wait for the socket; others one by one. */
  writeAll(chunks: readonly Uint8Array[] | AsyncIterable<Uint8Array>): Promise<void>;
}

/** A 200 whose body is `body`, written as the client reads it; a client gone meanwhile ends it without an error. */
export async function sendBody(res: ServerResponse, headers: Record<string, string>, body: readonly Uint8Array[] | AsyncIterable<Uint8Array>): Promise<void> {
  try {
    res.writeHead(200, headers);
    await responseBodyWriter(res).writeAll(body);
  } catch (error) {
    if (isClientGone(error, res)) return;
    throw error;
  }
  res.end();
}

export function responseBodyWriter(res: ServerResponse): ResponseBodyWriter {
  const checkClient = (): void => {
    if (res.destroyed || res.writableEnded) throw new MultipartError('ERR_DICOMWEB_CLIENT_GONE', 'the client closed the connection');
  };

  /** Waits until the socket has taken what it holds, or the client is gone. */
  function drain(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const drained = () => {
        res.off('close', closed);
        resolve();
      };
      const closed = () => {
        res.off('drain', drained);
        reject(new MultipartError('ERR_DICOMWEB_CLIENT_GONE', 'the client closed the connection'));
      };
      res.once('drain', drained);
      res.once('close', closed);
    });
  }

  async function write(chunk: Uint8Array | string): Promise<void> {
    checkClient();
    if (!res.write(chunk)) await drain();
  }

  return {
    write,
    async writeAll(chunks) {
      if (Array.isArray(chunks)) {
        checkClient();
        res.cork();
        let taken = true;
        for (const chunk of chunks as readonly Uint8Array[]) if (chunk.byteLength > 0) taken = res.write(chunk) && taken;
        res.uncork();
        if (!taken) await drain();
        return;
      }
      for await (const chunk of chunks as AsyncIterable<Uint8Array>) if (chunk.byteLength > 0) await write(chunk);
    },
  };
}
