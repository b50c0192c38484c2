/** Reads a whole multipart/related response body into its parts, for tests of DICOMweb responses. */
import assert from 'node:assert/strict';

export interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

/** The boundary of a multipart Content-Type, quoted or not. */
export function boundaryOf(contentType: string): string {
  const match = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  assert.ok(match, `no boundary in ${contentType}`);
  return match[1] ?? match[2]!;
}

export function parseMultipart(body: Buffer, contentType: string): Part[] {
  const delimiter = Buffer.from(`--${boundaryOf(contentType)}`);
  const parts: Part[] = [];
  let at = body.indexOf(delimiter);
  assert.ok(at >= 0, 'no first delimiter');
  for (;;) {
    at += delimiter.length;
    if (body.subarray(at, at + 2).toString() === '--') return parts;
    assert.equal(body.subarray(at, at + 2).toString(), '\r\n', 'a delimiter ends its line');
    const headerEnd = body.indexOf('\r\n\r\n', at);
    const headers: Record<string, string> = {};
    for (const line of body.subarray(at + 2, headerEnd).toString('latin1').split('\r\n')) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), headerEnd + 4);
    assert.ok(next >= 0, 'part without a closing delimiter');
    parts.push({ headers, body: body.subarray(headerEnd + 4, next) });
    at = next + 2;
  }
}
