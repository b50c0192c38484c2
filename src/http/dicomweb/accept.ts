/**
 * The Accept header as media ranges (RFC 9110 12.5.1), best first: what DICOMweb retrieves negotiate
 * their media type and transfer syntax from (PS3.18 8.7). Bounded: a header of thousands of ranges is
 * read no further than its first ones.
 */

export interface MediaRange {
  /** Lowercase `type/subtype`, wildcards included ("*\/*", "multipart/*"). */
  mediaType: string;
  /** Parameter names lowercase; values unquoted, as sent. */
  parameters: ReadonlyMap<string, string>;
  /** 0..1; 0 means "not acceptable". */
  quality: number;
}

/** Ranges read from one header at most. */
const rangesMax = 64;

/** The ranges of an Accept header, highest quality first (stable); `*\/*` when the header is absent or empty. */
export function parseAccept(header: string | undefined): MediaRange[] {
  if (header === undefined || header.trim() === '') return [{ mediaType: '*/*', parameters: new Map(), quality: 1 }];
  const ranges: MediaRange[] = [];
  for (const text of splitOutsideQuotes(header, ',').slice(0, rangesMax)) {
    const [typeText, ...parameterTexts] = splitOutsideQuotes(text, ';');
    const mediaType = typeText!.trim().toLowerCase();
    if (!/^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+*-]+$|^\*\/\*$/.test(mediaType)) continue;
    const parameters = new Map<string, string>();
    let quality = 1;
    for (const parameterText of parameterTexts) {
      const equals = parameterText.indexOf('=');
      if (equals < 0) continue;
      const name = parameterText.slice(0, equals).trim().toLowerCase();
      let value = parameterText.slice(equals + 1).trim();
      if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1).replace(/\\(.)/g, '$1');
      if (name === 'q') {
        const parsed = Number(value);
        quality = Number.isFinite(parsed) && parsed >= 0 && parsed <= 1 ? parsed : 1;
      } else parameters.set(name, value);
    }
    ranges.push({ mediaType, parameters, quality });
  }
  return ranges.filter((range) => range.quality > 0).sort((a, b) => b.quality - a.quality);
}

/** `text` split at `separator` where it is not inside a quoted string. */
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let index = 0; index < text.length; index++) {
    const char = text[index];
    if (char === '\\' && quoted) index++;
    else if (char === '"') quoted = !quoted;
    else if (char === separator && !quoted) {
      parts.push(text.slice(start, index));
      start = index + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}
