import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseMultipart, mediaTypeParameter } from '../../../test/support/multipart.ts';
import { MultipartError } from './multipart-error.ts';
import { startMultipart, type MultipartWriter } from './multipart-writer.ts';

/** A server whose one request is answered by `serve`; returns the port and a stop function. */
async function serveOnce(serve: (res: ServerResponse) => Promise<void>): Promise<{ port: number; outcome: Promise<unknown>; stop(): Promise<void> }> {
  let settle!: (value: unknown) => void;
  const outcome = new Promise<unknown>((resolve) => (settle = resolve));
  const server = createServer((_req, res) => {
    serve(res).then(() => settle('done'), (error: unknown) => settle(error));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    outcome,
    stop: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function get(port: number, method = 'GET'): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path: '/' }, resolve);
    req.on('error', reject);
    req.end();
  });
}

async function readAll(response: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('startMultipart', () => {
  it('writes parts a multipart parser reads back: headers, bodies from bytes and from chunks, the closing delimiter', async () => {
    const served = await serveOnce(async (res) => {
      const writer = startMultipart(res, { type: 'application/octet-stream', transferSyntax: '1.2.840.10008.1.2.1' });
      await writer.writePart({ 'Content-Type': 'application/octet-stream' }, Uint8Array.from([1, 2, 3]));
      await writer.writePart({ 'Content-Type': 'application/octet-stream' }, (async function* () {
        yield Uint8Array.from([4]);
        yield new Uint8Array(0);
        yield Buffer.from('\r\n--not-the-boundary\r\n');
      })());
      await writer.writePart({}, new Uint8Array(0));
      // Chunks in memory: one part, its Content-Length their sum.
      await writer.writePart({ 'Content-Type': 'application/dicom' }, [Buffer.from('ab'), new Uint8Array(0), Buffer.from('cde')]);
      writer.end();
    });
    try {
      const response = await get(served.port);
      const contentType = response.headers['content-type']!;
      assert.match(contentType, /^multipart\/related; type="application\/octet-stream"; transfer-syntax=1\.2\.840\.10008\.1\.2\.1; boundary=[0-9a-f]{32}$/);
      const parts = parseMultipart(await readAll(response), contentType);
      assert.deepEqual(parts.map((part) => [part.headers, part.body.toString('latin1')]), [
        [{ 'content-type': 'application/octet-stream', 'content-length': '3' }, '\x01\x02\x03'],
        [{ 'content-type': 'application/octet-stream' }, '\x04\r\n--not-the-boundary\r\n'],
        [{ 'content-length': '0' }, ''],
        [{ 'content-type': 'application/dicom', 'content-length': '5' }, 'abcde'],
      ]);
      assert.equal(mediaTypeParameter(contentType, 'type'), 'application/octet-stream');
      assert.equal(await served.outcome, 'done');
    } finally {
      await served.stop();
    }
  });

  it('waits for the client to read (back-pressure), and fails with ERR_DICOMWEB_CLIENT_GONE when it goes away', async () => {
    const chunkBytes = 1024 * 1024;
    const chunkCount = 256;
    let chunksTaken = 0;
    const served = await serveOnce(async (res) => {
      const writer = startMultipart(res, { type: 'application/octet-stream' });
      await writer.writePart({}, (async function* () {
        for (let index = 0; index < chunkCount; index++) {
          chunksTaken++;
          yield new Uint8Array(chunkBytes);
        }
      })());
      writer.end();
    });
    try {
      const response = await get(served.port);
      response.pause();
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Socket buffers take a few MiB at most: the writer waits instead of pulling all 256 MiB into memory.
      assert.ok(chunksTaken < 32, `${chunksTaken} chunks taken while the client read nothing`);
      response.destroy();
      const outcome = await served.outcome;
      assert.ok(outcome instanceof MultipartError, String(outcome));
      assert.equal(outcome.code, 'ERR_DICOMWEB_CLIENT_GONE');
    } finally {
      await served.stop();
    }
  });

  it('refuses header lines that could split the part, and parts written at once', async () => {
    let writer!: MultipartWriter;
    const served = await serveOnce(async (res) => {
      writer = startMultipart(res, { type: 'application/octet-stream' });
      await assert.rejects(writer.writePart({ 'Content-Type': 'a/b\r\nX-Injected: 1' }, new Uint8Array(1)), (error: unknown) => error instanceof MultipartError && error.code === 'ERR_DICOMWEB_MULTIPART_USAGE');
      await assert.rejects(writer.writePart({ 'Bad Name': 'x' }, new Uint8Array(1)), MultipartError);
      const first = writer.writePart({}, new Uint8Array(8));
      await assert.rejects(writer.writePart({}, new Uint8Array(8)), /one at a time/);
      await first;
      writer.end();
      await assert.rejects(writer.writePart({}, new Uint8Array(1)), /ended/);
    });
    try {
      const response = await get(served.port);
      const parts = parseMultipart(await readAll(response), response.headers['content-type']!);
      assert.equal(parts.length, 1);
      assert.equal(await served.outcome, 'done');
    } finally {
      await served.stop();
    }
  });

  it('answers HEAD with the headers alone', async () => {
    const served = await serveOnce(async (res) => {
      const writer = startMultipart(res, { type: 'image/jls', transferSyntax: '1.2.840.10008.1.2.4.80' });
      await writer.writePart({}, new Uint8Array(100));
      writer.end();
    });
    try {
      const response = await get(served.port, 'HEAD');
      assert.match(response.headers['content-type']!, /type="image\/jls"; transfer-syntax=1\.2\.840\.10008\.1\.2\.4\.80; boundary=/);
      assert.equal((await readAll(response)).length, 0);
      assert.equal(await served.outcome, 'done');
    } finally {
      await served.stop();
    }
  });
});
