/** The streaming multipart reader: parts and their bytes whatever the chunking, bounds, and each malformed body's error code. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Prng } from '../../sim/prng.ts';
import { parseMediaType } from './accept.ts';
import { MultipartError, type MultipartErrorCode } from './multipart-error.ts';
import { isValidBoundary, readMultipart, type MultipartLimits } from './multipart-reader.ts';

interface ReadPart {
  headers: Record<string, string>;
  body: Buffer;
}

async function* chunked(bytes: Uint8Array, sizes: () => number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; ) {
    const size = Math.max(1, sizes());
    yield bytes.subarray(at, at + size);
    at += size;
  }
}

async function readAll(source: AsyncIterable<Uint8Array>, boundary: string, limits?: MultipartLimits): Promise<ReadPart[]> {
  const parts: ReadPart[] = [];
  for await (const part of readMultipart(source, boundary, limits)) {
    const chunks: Buffer[] = [];
    for await (const chunk of part.body) chunks.push(Buffer.from(chunk));
    parts.push({ headers: Object.fromEntries(part.headers), body: Buffer.concat(chunks) });
  }
  return parts;
}

async function errorCodeOf(promise: Promise<unknown>): Promise<MultipartErrorCode | 'none'> {
  try {
    await promise;
    return 'none';
  } catch (error) {
    if (error instanceof MultipartError) return error.code;
    throw error;
  }
}

function body(boundary: string, parts: Array<{ headers?: string[]; body: Uint8Array | string }>, close = true): Buffer {
  const pieces: Buffer[] = [];
  for (const part of parts) {
    pieces.push(Buffer.from(`--${boundary}\r\n${(part.headers ?? []).map((h) => `${h}\r\n`).join('')}\r\n`, 'latin1'));
    pieces.push(typeof part.body === 'string' ? Buffer.from(part.body, 'latin1') : Buffer.from(part.body));
    pieces.push(Buffer.from('\r\n', 'latin1'));
  }
  if (close) pieces.push(Buffer.from(`--${boundary}--\r\n`, 'latin1'));
  return Buffer.concat(pieces);
}

const whole = (bytes: Uint8Array) => chunked(bytes, () => bytes.length);

test('parts come with their headers and exact bytes, whatever the chunk sizes (one byte to all)', async () => {
  const prng = new Prng(7);
  const binary = new Uint8Array(5000).map(() => prng.nextInt(256));
  // Bytes that look like a delimiter but are not one: no CRLF before, or a CRLF and a shorter boundary.
  const tricky = Buffer.from('--b0und\r\n--b0un\r\n-\r\n--b0unX', 'latin1');
  const bytes = body('b0und', [
    { headers: ['Content-Type: application/dicom'], body: binary },
    { headers: [], body: '' },
    { headers: ['content-type:   application/dicom ', 'X-Long: a', '  folded'], body: tricky },
  ]);
  for (const size of [1, 2, 3, 7, 8, 64, 1000, bytes.length]) {
    const parts = await readAll(chunked(bytes, () => size), 'b0und');
    assert.equal(parts.length, 3, `chunks of ${size}`);
    assert.deepEqual(parts[0]!.headers, { 'content-type': 'application/dicom' });
    assert.ok(parts[0]!.body.equals(Buffer.from(binary)), `chunks of ${size}`);
    assert.deepEqual(parts[1], { headers: {}, body: Buffer.alloc(0) });
    assert.deepEqual(parts[2]!.headers, { 'content-type': 'application/dicom', 'x-long': 'a folded' });
    assert.ok(parts[2]!.body.equals(tricky), `chunks of ${size}`);
  }
  const random = await readAll(chunked(bytes, () => 1 + prng.nextInt(300)), 'b0und');
  assert.ok(random[0]!.body.equals(Buffer.from(binary)));
});

test('a preamble, transport padding after a boundary and an epilogue are ignored (RFC 2046 5.1.1)', async () => {
  const bytes = Buffer.concat([
    Buffer.from('This is a preamble.\r\n--xyz  \t\r\nContent-Type: a/b\r\n\r\nhello\r\n--xyz--  \r\nepilogue', 'latin1'),
  ]);
  const parts = await readAll(whole(bytes), 'xyz');
  assert.deepEqual(parts, [{ headers: { 'content-type': 'a/b' }, body: Buffer.from('hello') }]);
});

test('a part left unread is skipped: the next part starts at its own delimiter', async () => {
  const bytes = body('q', [{ body: 'x'.repeat(10_000) }, { body: 'second' }]);
  const seen: string[] = [];
  for await (const part of readMultipart(chunked(bytes, () => 100), 'q')) {
    if (part.index === 0) {
      // Reads one chunk, then leaves.
      for await (const _chunk of part.body) break;
      continue;
    }
    for await (const chunk of part.body) seen.push(Buffer.from(chunk).toString('latin1'));
  }
  assert.deepEqual(seen.join(''), 'second');
});

test('each malformed body fails with its code, after the parts before the damage were delivered whole', async () => {
  const good = body('B', [{ body: 'one' }], false);
  const cases: Array<[string, Uint8Array, MultipartErrorCode]> = [
    ['no delimiter at all', Buffer.from('just some bytes'), 'ERR_MULTIPART_NO_START'],
    ['another boundary', body('other', [{ body: 'x' }]), 'ERR_MULTIPART_NO_START'],
    ['no close delimiter', good, 'ERR_MULTIPART_TRUNCATED'],
    ['cut inside a part', Buffer.concat([good, Buffer.from('--B\r\n\r\nhalf a part')]), 'ERR_MULTIPART_TRUNCATED'],
    ['cut inside headers', Buffer.concat([good, Buffer.from('--B\r\nContent-Ty')]), 'ERR_MULTIPART_TRUNCATED'],
    ['cut after a boundary', Buffer.concat([good, Buffer.from('--B')]), 'ERR_MULTIPART_TRUNCATED'],
    ['boundary goes on', Buffer.concat([good, Buffer.from('--BB\r\n\r\nx\r\n--B--')]), 'ERR_MULTIPART_DELIMITER'],
    ['header without colon', Buffer.concat([good, Buffer.from('--B\r\nnot a header\r\n\r\nx\r\n--B--')]), 'ERR_MULTIPART_HEADER'],
    ['two content types', Buffer.concat([good, Buffer.from('--B\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\nx\r\n--B--')]), 'ERR_MULTIPART_HEADER'],
  ];
  for (const [name, bytes, code] of cases) {
    const delivered: string[] = [];
    const result = errorCodeOf(
      (async () => {
        for await (const part of readMultipart(chunked(bytes, () => 3), 'B')) {
          const chunks: Buffer[] = [];
          for await (const chunk of part.body) chunks.push(Buffer.from(chunk));
          delivered.push(Buffer.concat(chunks).toString('latin1'));
        }
      })(),
    );
    assert.equal(await result, code, name);
    if (Buffer.from(bytes.subarray(0, good.length)).equals(good) && code !== 'ERR_MULTIPART_TRUNCATED') assert.deepEqual(delivered, ['one'], name);
    if (name === 'cut inside a part') assert.deepEqual(delivered, ['one'], name);
  }
});

test('bounds: header section size, number of parts, preamble size', async () => {
  const limits: MultipartLimits = { partHeaderMaxBytes: 100, partsMax: 3, preambleMaxBytes: 50 };
  assert.equal(await errorCodeOf(readAll(whole(body('L', [{ headers: [`X-A: ${'a'.repeat(200)}`], body: 'x' }])), 'L', limits)), 'ERR_MULTIPART_HEADER_TOO_LARGE');
  // A header section that never ends is refused once over its bound, not read to the end of the body.
  let pulledBytes = 0;
  async function* endlessHeader(): AsyncGenerator<Uint8Array> {
    yield Buffer.from('--L\r\nX-A: ');
    for (;;) {
      pulledBytes += 10;
      yield Buffer.from('aaaaaaaaaa');
    }
  }
  assert.equal(await errorCodeOf(readAll(endlessHeader(), 'L', limits)), 'ERR_MULTIPART_HEADER_TOO_LARGE');
  assert.ok(pulledBytes < 200, `${pulledBytes} bytes pulled`);
  assert.equal((await readAll(whole(body('L', [{ body: '1' }, { body: '2' }, { body: '3' }])), 'L', limits)).length, 3);
  assert.equal(await errorCodeOf(readAll(whole(body('L', [{ body: '1' }, { body: '2' }, { body: '3' }, { body: '4' }])), 'L', limits)), 'ERR_MULTIPART_TOO_MANY_PARTS');
  assert.equal(await errorCodeOf(readAll(whole(Buffer.concat([Buffer.from('p'.repeat(200)), body('L', [{ body: '1' }])])), 'L', limits)), 'ERR_MULTIPART_NO_START');
});

test('a large part goes through in bounded pieces, pulled only as the consumer reads', async () => {
  const partBytes = 8 * 1024 * 1024;
  const chunkBytes = 64 * 1024;
  let pulled = 0;
  async function* source(): AsyncGenerator<Uint8Array> {
    yield Buffer.from('--big\r\n\r\n');
    for (let sent = 0; sent < partBytes; sent += chunkBytes) {
      pulled += chunkBytes;
      yield Buffer.alloc(chunkBytes, sent / chunkBytes);
    }
    yield Buffer.from('\r\n--big--');
  }
  let received = 0;
  let largestPieceBytes = 0;
  for await (const part of readMultipart(source(), 'big')) {
    for await (const chunk of part.body) {
      received += chunk.length;
      largestPieceBytes = Math.max(largestPieceBytes, chunk.length);
      // The reader is at most one source chunk ahead of its consumer.
      assert.ok(pulled - received <= 2 * chunkBytes, `${pulled - received} bytes ahead`);
    }
  }
  assert.equal(received, partBytes);
  assert.ok(largestPieceBytes <= chunkBytes + 64);
});

test('boundaries: 1 to 200 bchars (70 in RFC 2046; Orthanc sends 73), not ending in a space', () => {
  assert.ok(isValidBoundary('a'));
  assert.ok(isValidBoundary('x'.repeat(70)));
  assert.ok(isValidBoundary('16b5a06e-4284-4caf-8f54-4f292bf04f6c-16b5a06e-4284-4caf-8f54-4f292bf04f6c'));
  assert.ok(isValidBoundary('x'.repeat(200)));
  assert.ok(isValidBoundary("gc0p4Jq0M2Yt08j34c0p'()+_,-./:=? z"));
  assert.ok(!isValidBoundary(''));
  assert.ok(!isValidBoundary('x'.repeat(201)));
  assert.ok(!isValidBoundary('ends with space '));
  assert.ok(!isValidBoundary('semi;colon'));
  assert.ok(!isValidBoundary('quote"'));
});

test('media types: case-insensitive names, quoted or bare values, parameters in any order', () => {
  const a = parseMediaType('Multipart/Related; Type="application/dicom"; BOUNDARY=abc');
  assert.equal(a?.essence, 'multipart/related');
  assert.equal(a?.parameters.get('type'), 'application/dicom');
  assert.equal(a?.parameters.get('boundary'), 'abc');
  const b = parseMediaType('multipart/related;boundary="a b:c";type=application/dicom;');
  assert.equal(b?.parameters.get('boundary'), 'a b:c');
  assert.equal(b?.parameters.get('type'), 'application/dicom');
  assert.equal(parseMediaType('multipart/related; boundary="a\\"b"')?.parameters.get('boundary'), 'a"b');
  assert.equal(parseMediaType('application/dicom')?.parameters.size, 0);
  assert.equal(parseMediaType('nonsense'), undefined);
  assert.equal(parseMediaType('a/b; boundary'), undefined);
  assert.equal(parseMediaType('a/b; x="unterminated'), undefined);
});

test('a body with LF line ends is refused naming CRLF, not as a boundary inside a part (helper 85)', async () => {
  const lfOnly = Buffer.from('--B\nContent-Type: application/dicom\n\nx\n--B--\n');
  await assert.rejects(
    (async () => {
      for await (const part of readMultipart(chunked(lfOnly, () => 5), 'B')) for await (const _ of part.body) void _;
    })(),
    (error: unknown) => error instanceof Error && (error as { code?: string }).code === 'ERR_MULTIPART_DELIMITER' && /LF alone: multipart lines end with CRLF/.test(error.message),
  );
});
