/** Reads a multipart/related response body (RFC 2046 5.1) into its parts, for tests of DICOMweb responses. */

export interface ReceivedPart {
  /** Header names in lower case. */
  headers: Record<string, string>;
  body: Buffer;
}

/** The `name` parameter of a Content-Type value, unquoted. */
export function mediaTypeParameter(contentType: string, name: string): string | undefined {
  const match = new RegExp(`;\\s*${name}=("([^"]*)"|[^;\\s]+)`, 'i').exec(contentType);
  return match === null ? undefined : (match[2] ?? match[1]);
}

/** The parts of `body`, whose Content-Type (with its boundary) is `contentType`; throws when the framing is wrong. */
export function parseMultipart(body: Buffer, contentType: string): ReceivedPart[] {
  const boundary = mediaTypeParameter(contentType, 'boundary');
  if (boundary === undefined) throw new Error(`no boundary in ${contentType}`);
  const delimiter = Buffer.from(`--${boundary}`);
  const nextDelimiter = Buffer.from(`\r\n--${boundary}`);
  if (!body.subarray(0, delimiter.length).equals(delimiter)) throw new Error('the body does not start with the boundary');
  const parts: ReceivedPart[] = [];
  let at = delimiter.length;
  for (;;) {
    const after = body.subarray(at, at + 2).toString('latin1');
    if (after === '--') {
      if (body.subarray(at + 2).toString('latin1').trim() !== '') throw new Error('bytes after the closing delimiter');
      return parts;
    }
    if (after !== '\r\n') throw new Error(`the boundary at ${at} is followed by ${JSON.stringify(after)}`);
    const headerEnd = body.indexOf('\r\n\r\n', at + 2, 'latin1');
    if (headerEnd < 0) throw new Error('a part has no end of headers');
    const headers: Record<string, string> = {};
    const headerText = body.subarray(at + 2, headerEnd).toString('latin1');
    for (const line of headerText === '' ? [] : headerText.split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) throw new Error(`bad part header line ${JSON.stringify(line)}`);
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const bodyStart = headerEnd + 4;
    const bodyEnd = body.indexOf(nextDelimiter, bodyStart);
    if (bodyEnd < 0) throw new Error('a part has no closing boundary');
    parts.push({ headers, body: body.subarray(bodyStart, bodyEnd) });
    at = bodyEnd + nextDelimiter.length;
  }
}
