/**
 * A multipart/related response (RFC 2387, PS3.18 8.7.3.2) written part by part as the bytes come, with
 * the socket's back-pressure: a study of any size goes out with one chunk of it in memory at a time.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';

export interface MultipartWriter {
  /** One part: its headers, then its body, waiting whenever the client reads slower than we write. */
  writePart(headers: Readonly<Record<string, string>>, body: Uint8Array | AsyncIterable<Uint8Array>): Promise<void>;
  /** The closing delimiter; the response ends. */
  end(): void;
}

export class ClientGoneError extends Error {
  override readonly name = 'ClientGoneError';
  readonly code = 'ERR_DICOMWEB_CLIENT_GONE';
  constructor() {
    super('the client closed the connection');
  }
}

/** Starts a 200 multipart/related response whose parts are of media type `type`. */
export function startMultipart(res: ServerResponse, type: string): MultipartWriter {
  const boundary = `pacs-mesh-${randomBytes(12).toString('hex')}`;
  res.writeHead(200, { 'content-type': `multipart/related; type="${type}"; boundary=${boundary}` });
  const write = async (chunk: Uint8Array | string): Promise<void> => {
    if (res.destroyed || res.writableEnded) throw new ClientGoneError();
    if (res.write(chunk)) return;
    // Waits for the client to read, or for it to go away (then nothing more is read from the store).
    await Promise.race([once(res, 'drain'), once(res, 'close')]);
    if (res.destroyed) throw new ClientGoneError();
  };
  let partsWritten = 0;
  return {
    async writePart(headers, body) {
      const headerText = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
      // The first delimiter opens the body; each later one starts with the CRLF that ends the part before.
      await write(`${partsWritten++ === 0 ? '' : '\r\n'}--${boundary}\r\n${headerText}\r\n`);
      if (body instanceof Uint8Array) await write(body);
      else for await (const chunk of body) await write(chunk);
    },
    end() {
      res.end(`\r\n--${boundary}--\r\n`);
    },
  };
}
