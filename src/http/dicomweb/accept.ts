import { DicomWebError } from './context.ts';

/**
 * The Accept header (RFC 9110 12.5.1) as media ranges: comma-separated, each with `;` parameters whose
 * values may be quoted (commas and semicolons inside quotes stay in the value), and a q weight. Bounded:
 * a header past `acceptHeaderCharsMax` or `mediaRangesMax` ranges is read only that far.
 */

export interface MediaRange {
  /** Lower case, `*` for a wildcard. */
  type: string;
  subtype: string;
  /** Parameter names in lower case, values unquoted (case kept: a transfer syntax is a UID). `q` is not kept here. */
  parameters: ReadonlyMap<string, string>;
  /** 0 to 1; 0 means "not acceptable". */
  q: number;
}

export const acceptHeaderCharsMax = 8192;
export const mediaRangesMax = 64;

const tokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const qPattern = /^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$/;

/** Splits `text` at `separator` outside double quotes (a backslash escapes the next character inside them). */
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  for (let index = 0; index < text.length; index++) {
    const char = text[index]!;
    if (quoted && char === '\\' && index + 1 < text.length) {
      current += char + text[++index]!;
      continue;
    }
    if (char === '"') quoted = !quoted;
    if (char === separator && !quoted) {
      parts.push(current);
      current = '';
      continue;
    }
    current += char;
  }
  parts.push(current);
  return parts;
}

function unquote(value: string): string | undefined {
  if (!value.startsWith('"')) return value;
  if (value.length < 2 || !value.endsWith('"')) return undefined;
  return value.slice(1, -1).replace(/\\(.)/g, '$1');
}

/**
 * The ranges of an Accept header in the order sent; a malformed range (no type/subtype, a bad parameter or
 * q) is left out, as if not sent. An absent or empty header means anything: one `*\/*` range.
 */
export function parseAccept(header: string | readonly string[] | undefined): MediaRange[] {
  const text = (Array.isArray(header) ? header.join(',') : (header as string | undefined) ?? '').slice(0, acceptHeaderCharsMax);
  if (text.trim() === '') return [{ type: '*', subtype: '*', parameters: new Map(), q: 1 }];
  const ranges: MediaRange[] = [];
  for (const rangeText of splitOutsideQuotes(text, ',')) {
    if (ranges.length >= mediaRangesMax) break;
    if (rangeText.trim() === '') continue;
    const range = parseRange(rangeText);
    if (range !== undefined) ranges.push(range);
  }
  return ranges;
}

function parseRange(text: string): MediaRange | undefined {
  const [mediaType, ...parameterTexts] = splitOutsideQuotes(text, ';').map((part) => part.trim());
  const slash = mediaType?.indexOf('/') ?? -1;
  if (mediaType === undefined || slash < 0) return undefined;
  const type = mediaType.slice(0, slash).toLowerCase();
  const subtype = mediaType.slice(slash + 1).toLowerCase();
  if (!tokenPattern.test(type) || !tokenPattern.test(subtype) || (type === '*' && subtype !== '*')) return undefined;
  const parameters = new Map<string, string>();
  let q = 1;
  for (const parameterText of parameterTexts) {
    if (parameterText === '') continue;
    const equals = parameterText.indexOf('=');
    if (equals <= 0) return undefined;
    const name = parameterText.slice(0, equals).trim().toLowerCase();
    const value = unquote(parameterText.slice(equals + 1).trim());
    if (!tokenPattern.test(name) || value === undefined) return undefined;
    if (name === 'q') {
      if (!qPattern.test(value)) return undefined;
      q = Number(value);
      continue;
    }
    // A parameter given twice keeps its first value.
    if (!parameters.has(name)) parameters.set(name, value);
  }
  return { type, subtype, parameters, q };
}

/** A media type (RFC 9110 8.3.1), as a Content-Type gives it: `type/subtype` in lower case and its parameters. */
export interface MediaType {
  essence: string;
  parameters: ReadonlyMap<string, string>;
}

/** The media type of a Content-Type value (or a part's); undefined when it does not parse. */
export function parseMediaType(text: string): MediaType | undefined {
  const range = parseRange(text);
  return range === undefined || range.type === '*' || range.subtype === '*' ? undefined : { essence: `${range.type}/${range.subtype}`, parameters: range.parameters };
}

/** `type/subtype; name="value"`, as a Content-Type or a 406 message names a representation. */
export function formatMediaType(mediaType: string, parameters: ReadonlyArray<readonly [string, string]>): string {
  return [mediaType, ...parameters.map(([name, value]) => `${name}=${tokenPattern.test(value) ? value : `"${value.replace(/(["\\])/g, '\\$1')}"`}`)].join('; ');
}

/** The ranges that accept something (q above 0), best first; ranges of equal q keep the order sent. */
export function acceptableRanges(ranges: readonly MediaRange[]): MediaRange[] {
  return ranges.filter((range) => range.q > 0).sort((a, b) => b.q - a.q);
}

/** The media type JSON answers are labelled with. */
export type DicomJsonMediaType = 'application/dicom+json' | 'application/json';

/**
 * How DICOM JSON is acceptable, if it is (searches and metadata are sent only so): as application/dicom+json when
 * the most specific range covering it has a q above 0 (RFC 9110 12.5.1: `application/dicom+json;q=0, *\/*` refuses
 * it), else as application/json when that is named: the same body, labelled as asked (hunt 196: labelled with the
 * type the client refused).
 */
function dicomJsonAccepted(header: string | readonly string[] | undefined): DicomJsonMediaType | undefined {
  const ranges = parseAccept(header);
  const named = (subtype: string) => ranges.find((range) => range.type === 'application' && range.subtype === subtype);
  const dicomJson = named('dicom+json') ?? named('*') ?? ranges.find((range) => range.type === '*');
  if ((dicomJson?.q ?? 0) > 0) return 'application/dicom+json';
  return (named('json')?.q ?? 0) > 0 ? 'application/json' : undefined;
}

export function acceptsDicomJson(header: string | readonly string[] | undefined): boolean {
  return dicomJsonAccepted(header) !== undefined;
}

/**
 * Whether the client's first choice is a single part of `application/{subtype}` itself (PS3.18 8.7.3.5.2), before
 * any multipart range or `*\/*`: a resource of one item (an instance, a bulk data value) is then sent as its body.
 */
export function prefersSinglePart(header: string | undefined, subtype: string): boolean {
  const first = acceptableRanges(parseAccept(header)).find((range) => (range.type === 'application' && range.subtype === subtype) || range.type === 'multipart' || range.type === '*');
  return first?.type === 'application';
}

/** Refuses (406) a request whose Accept header excludes DICOM JSON, the one form `what` is sent in (XML is not offered). */
export function requireDicomJson(accept: string | undefined, what: string): DicomJsonMediaType {
  const accepted = dicomJsonAccepted(accept);
  if (accepted !== undefined) return accepted;
  throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `${what} sent as application/dicom+json only (asked: ${(accept ?? '').slice(0, 120)})`);
}
