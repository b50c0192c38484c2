/**
 * PS3.4 C.2.2.2 attribute matching of one C-FIND key against one stored value. Pure: no I/O.
 *
 * Values are latin1 strings (the raw bytes) as produced by the codec. Matching choices of this SCP
 * (to be copied into the conformance statement):
 * - Character sets: the values of PN, LO, SH, LT, ST, UT and UC are compared as characters, the key's
 *   decoded with the query's Specific Character Set and the stored one with its instance's (single-byte
 *   ISO_IR sets, ISO_IR 192 UTF-8, GB18030, GBK, and the ISO 2022 code extensions: Japanese, Korean,
 *   Chinese, ISO 8859), so `?` is one character, a byte inside a two-byte character is never a delimiter
 *   or a wildcard, and a UTF-8 name matches a Latin-1 or ISO 2022 key (see codec/character-sets.ts).
 * - Universal matching: a zero-length key, and a key that is exactly `*` (C.2.2.2.4: "Wild Card Matching on
 *   a value of * is equivalent to Universal Matching"). We apply the lone `*` rule to every VR, including
 *   those that do not allow wildcards (UI, DA, ...), as some SCUs send it there to mean "return it".
 * - Single value matching: exact and case-sensitive, after removing padding (trailing spaces/NULs for every
 *   VR, leading spaces too for VRs where they are not significant). Numbers (IS, DS, US, ...) compare by
 *   numeric value ("5" matches "05", "1.0" matches "1").
 * - PN: case-insensitive for ASCII letters only (case rules beyond ASCII differ between languages),
 *   trailing empty components (`Doe^John^^` = `Doe^John`) and trailing empty component groups are ignored.
 *   A key without `=` is matched against the whole name and each component group of the stored name (so an
 *   alphabetic key matches a name that also carries ideographic/phonetic groups). A key with `=` is matched
 *   group by group: each non-empty key group against the same group of the name (wildcards within it), an
 *   empty key group is universal (see personNameKeyTest), so a key of empty groups only (`=`, `^=^`) is universal.
 * - List of UID matching: a UI key with backslash-separated UIDs matches any of them.
 * - Wildcard matching (`*` any sequence, also none, `?` one character) only for AE, CS, LO, LT, PN, SH,
 *   ST, UC, UR, UT (C.2.2.2.4). For the other VRs `*` and `?` are literal characters. A pattern that
 *   matches a zero-length value (`**`) matches an empty stored value, as `*` does.
 * - Range matching for DA, TM, DT: `a-b`, `-b`, `a-` (inclusive). A partial time or datetime bound covers
 *   the whole period it names: `1000-12` matches 10:00:00 to 12:59:59.999999, DT `2020-2021` covers both
 *   years. A single TM/DT value without `-` is matched the same way (key `1030` matches `103015`); a single
 *   DA value matches exactly. A TM range whose start is after its end spans midnight (`2300-0030`); a
 *   reversed DA or DT range matches nothing. A key naming no real date or time (month 13, 30 February,
 *   minute 60) is malformed. Legacy `1993.04.30` dates and `10:30:00` times are understood.
 * - DT and UTC offsets (PS3.4 C.2.2.2.5.1: the offset "shall be taken into account for the purposes of
 *   the match"): a key value and a stored value are compared as instants (UTC) when the offset of each is
 *   known: its own `&ZZXX` suffix, else, for a stored value, its instance's Timezone Offset From UTC
 *   (0008,0201), and for a key, the query identifier's (PS3.3 C.12.1.1.8: that attribute applies to the DT
 *   values without an explicit offset). When either side's offset is unknown (no suffix, no (0008,0201):
 *   "undefined", PS3.3), the two are compared as written, as before (decision: neither UTC nor this
 *   archive's clock is the right guess). DA and TM values are compared as written. Combined StudyDate+StudyTime
 *   datetime matching (an extended negotiation option) is not done: each attribute is matched on its own.
 * - Multiple values in a non-UI key (e.g. ModalitiesInStudy `CT\MR`): without extended negotiation the
 *   standard leaves this undefined; we match if any key value matches (OR).
 * - Multi-valued stored attributes (C.2.2.3): the entity matches if any stored value matches.
 * - Empty stored value: matches universal matching (zero-length key or `*`) and a wildcard pattern that
 *   matches nothing but `*`s; no other key.
 * - Sequence matching (SQ) is out of scope: an SQ key is treated as universal matching.
 */

import { decodeCharacters } from '../../../codec/character-sets.ts';

export type MatchingType = 'universal' | 'single-value' | 'uid-list' | 'wildcard' | 'range' | 'sequence';

export interface ValueMatcher {
  readonly type: MatchingType;
  /**
   * `storedCharacterSet`: the (0008,0005) value of the instance the stored value comes from;
   * `storedTimezone` its Timezone Offset From UTC (0008,0201), for DT values without an offset.
   */
  matches(storedValue: string | undefined, storedCharacterSet?: string, storedTimezone?: string): boolean;
  /**
   * PN keys only: every stored name this key matches has a form (personNameForms) starting with one of
   * these texts; absent when some key value starts with a wildcard (no such bound).
   */
  readonly personNamePrefixes?: readonly string[];
  /**
   * DA keys only: every stored date this key matches lies in one of these inclusive intervals of
   * dateIndexForms values (YYYYMMDD; an absent bound is open).
   */
  readonly dateIntervals?: ReadonlyArray<{ from: string | undefined; to: string | undefined }>;
}

export type CompileMatcherResult = { ok: true; matcher: ValueMatcher } | { ok: false; comment: string };

export class MatchingKeyError extends Error {
  override readonly name = 'MatchingKeyError';
  readonly code = 'MALFORMED_MATCHING_KEY';
  constructor(message: string) {
    super(message);
  }
}

const WILDCARD_VRS = new Set(['AE', 'CS', 'LO', 'LT', 'PN', 'SH', 'ST', 'UC', 'UR', 'UT']);
/** VRs whose value is one single text (backslash is an ordinary character). */
const SINGLE_VALUED_TEXT_VRS = new Set(['LT', 'ST', 'UT', 'UR']);
/** VRs where leading spaces are padding too (PS3.5 6.2). */
const LEADING_SPACE_PADDING_VRS = new Set([
  'AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'PN', 'SH', 'TM',
  'US', 'UL', 'SS', 'SL', 'FL', 'FD', 'SV', 'UV', 'AT',
]);
const NUMERIC_VRS = new Set(['DS', 'IS', 'US', 'UL', 'SS', 'SL', 'FL', 'FD', 'SV', 'UV']);
const DATE_TIME_VRS = new Set(['DA', 'TM', 'DT']);

/** Text VRs whose values use the data set's character set (PS3.5 6.1.2.3); the others are ASCII. */
const CHARACTER_SET_VRS = new Set(['PN', 'LO', 'SH', 'LT', 'ST', 'UT', 'UC']);
const UNIVERSAL: ValueMatcher = { type: 'universal', matches: () => true };
const SEQUENCE: ValueMatcher = { type: 'sequence', matches: () => true };

/** Removes the padding of one value of the given VR. */
export function normalizeValue(vr: string, value: string): string {
  const withoutTrailing = value.replace(/[ \0]+$/, '');
  return LEADING_SPACE_PADDING_VRS.has(vr) ? withoutTrailing.replace(/^ +/, '') : withoutTrailing;
}

/** The values of a (possibly multi-valued) element, each normalized. */
export function splitValues(vr: string, value: string): string[] {
  const parts = SINGLE_VALUED_TEXT_VRS.has(vr) ? [value] : value.split('\\');
  return parts.map((part) => normalizeValue(vr, part));
}

/**
 * Case folding of a person name, code point by code point: upper then lower case (so `ς` and `Σ` both
 * become `σ`, `ẞ` becomes `ß`), keeping the character where a mapping would give more than one code point
 * (`ß` -> `SS`, `İ` -> `i̇`): a `?` still stands for one character on both sides, and Orthanc, the anchor,
 * likewise finds `Müller` by `MÜLLER*` but not `Strasse` by `straße`. No locale: Turkish dotless rules
 * would need the reading site's language, which the query does not carry.
 */
export function foldCase(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text)) return text.replace(/[A-Z]+/g, (letters) => letters.toLowerCase());
  let folded = '';
  for (const character of text) folded += foldCharacter(character);
  return folded;
}

function foldCharacter(character: string): string {
  const upper = character.toUpperCase();
  const base = isOneCodePoint(upper) ? upper : character;
  const lower = base.toLowerCase();
  return isOneCodePoint(lower) ? lower : base;
}

function isOneCodePoint(text: string): boolean {
  return text.length === 1 || (text.length === 2 && text.codePointAt(0)! > 0xffff);
}

/** PN comparison form: case folded (foldCase), trailing empty components and component groups removed. */
export function normalizePersonName(name: string): string {
  const groups = name.split('=').map((group) => group.replace(/[\^ ]+$/, ''));
  while (groups.length > 0 && groups[groups.length - 1] === '') groups.pop();
  return foldCase(groups.join('='));
}

function hasWildcard(value: string): boolean {
  return value.includes('*') || value.includes('?');
}

/** A compiled `*`/`?` pattern, matched by code point (so `?` is one character, even outside the BMP). */
export interface WildcardPattern {
  test(text: string): boolean;
}

/**
 * Compiles a wildcard key. The pattern is cut at its `*`s: the first piece must start the text, the last
 * must end it, and each piece between is taken at its leftmost place after the one before (leftmost is
 * never worse for what follows). So `*a*a*a...*b` costs one pass over the text, where a regular
 * expression of `.*`s backtracked exponentially and stalled the whole peer for minutes.
 */
export function wildcardPattern(pattern: string): WildcardPattern {
  // `**` matches what `*` does: a key of a million stars is one piece per star no longer, for every value.
  const pieces = pattern.replace(/\*+/g, '*').split('*').map((piece) => Array.from(piece));
  const hasStar = pieces.length > 1;
  const charsMin = pieces.reduce((sum, piece) => sum + piece.length, 0);
  return {
    test(text: string): boolean {
      const chars = Array.from(text);
      if (chars.length < charsMin || (!hasStar && chars.length !== charsMin)) return false;
      const fitsAt = (piece: string[], at: number): boolean => piece.every((token, i) => token === '?' || token === chars[at + i]);
      const first = pieces[0]!;
      const last = pieces[pieces.length - 1]!;
      if (!fitsAt(first, 0)) return false;
      if (!hasStar) return true;
      const end = chars.length - last.length;
      if (!fitsAt(last, end)) return false;
      let from = first.length;
      for (const piece of pieces.slice(1, -1)) {
        let at = from;
        while (at + piece.length <= end && !fitsAt(piece, at)) at++;
        if (at + piece.length > end) return false;
        from = at + piece.length;
      }
      return true;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Dates and times: every value becomes a fixed-width digit string, so comparisons are string comparisons.

/** The first and last instant (fixed-width digits) named by a DA, TM or DT value; undefined if malformed. */
export function dateTimeBounds(vr: string, value: string): { first: string; last: string } | undefined {
  if (vr === 'DA') {
    const date = /^\d{4}\.\d{2}\.\d{2}$/.test(value) ? value.replaceAll('.', '') : value;
    const match = /^(\d{4})(\d{2})(\d{2})$/.exec(date);
    return match && isCalendarDate(match[1]!, match[2], match[3]) ? { first: date, last: date } : undefined;
  }
  if (vr === 'TM') {
    const time = /^\d{2}:\d{2}(:\d{2}(\.\d*)?)?$/.test(value) ? value.replaceAll(':', '') : value;
    const match = /^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$/.exec(time);
    if (!match) return undefined;
    const [, hours, minutes, seconds, fraction] = match;
    if (fraction !== undefined && seconds === undefined) return undefined;
    if (!isClockTime(hours!, minutes, seconds)) return undefined;
    return {
      first: hours! + (minutes ?? '00') + (seconds ?? '00') + (fraction ?? '').padEnd(6, '0'),
      last: hours! + (minutes ?? '59') + (seconds ?? '59') + (fraction ?? '').padEnd(6, '9'),
    };
  }
  if (vr === 'DT') {
    const parsed = parseDateTime(value);
    return parsed?.bounds;
  }
  return undefined;
}

/** Month 01-12 and a day that month has (PS3.5 6.2 DA); absent parts are not checked. */
function isCalendarDate(year: string, month: string | undefined, day: string | undefined): boolean {
  if (month === undefined) return true;
  const monthNumber = Number(month);
  if (monthNumber < 1 || monthNumber > 12) return false;
  if (day === undefined) return true;
  const yearNumber = Number(year);
  const isLeapYear = yearNumber % 4 === 0 && (yearNumber % 100 !== 0 || yearNumber % 400 === 0);
  const daysInMonth = monthNumber === 2 ? (isLeapYear ? 29 : 28) : [4, 6, 9, 11].includes(monthNumber) ? 30 : 31;
  return Number(day) >= 1 && Number(day) <= daysInMonth;
}

/** Hours 00-23, minutes 00-59, seconds 00-60 (a leap second, PS3.5 6.2 TM); absent parts are not checked. */
function isClockTime(hours: string, minutes: string | undefined, seconds: string | undefined): boolean {
  return Number(hours) <= 23 && (minutes === undefined || Number(minutes) <= 59) && (seconds === undefined || Number(seconds) <= 60);
}

interface ParsedDateTime {
  bounds: { first: string; last: string };
  offsetValid: boolean;
  /** The `&ZZXX` suffix in minutes east of UTC, when present and valid. */
  offsetMinutes: number | undefined;
}

function parseDateTime(value: string): ParsedDateTime | undefined {
  const match = /^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:([+-])(\d{2})(\d{2}))?$/.exec(value);
  if (!match) return undefined;
  const [, year, month, day, hours, minutes, seconds, fraction, sign, offsetHours, offsetMins] = match;
  if (fraction !== undefined && seconds === undefined) return undefined;
  if (!isCalendarDate(year!, month, day) || (hours !== undefined && !isClockTime(hours, minutes, seconds))) return undefined;
  const offsetMinutes = sign === undefined ? undefined : timezoneOffsetMinutes(`${sign}${offsetHours}${offsetMins}`);
  return {
    offsetValid: sign === undefined || offsetMinutes !== undefined,
    offsetMinutes,
    bounds: {
      first:
        year! + (month ?? '01') + (day ?? '01') + (hours ?? '00') + (minutes ?? '00') + (seconds ?? '00') +
        (fraction ?? '').padEnd(6, '0'),
      last:
        year! + (month ?? '12') + (day ?? '31') + (hours ?? '23') + (minutes ?? '59') + (seconds ?? '59') +
        (fraction ?? '').padEnd(6, '9'),
    },
  };
}

interface Interval {
  /** Inclusive; undefined = open. */
  from: string | undefined;
  to: string | undefined;
  isRange: boolean;
}

function parseRangeSide(vr: string, side: string): { first: string; last: string } | undefined | 'empty' {
  const trimmed = side.trim();
  if (trimmed === '') return 'empty';
  return dateTimeBounds(vr, trimmed);
}

function intervalFromParts(vr: string, low: string, high: string): Interval | undefined {
  const lowBounds = parseRangeSide(vr, low);
  const highBounds = parseRangeSide(vr, high);
  if (lowBounds === undefined || highBounds === undefined) return undefined;
  if (lowBounds === 'empty' && highBounds === 'empty') return undefined;
  return {
    from: lowBounds === 'empty' ? undefined : lowBounds.first,
    to: highBounds === 'empty' ? undefined : highBounds.last,
    isRange: true,
  };
}

/** Parses one DA/TM/DT key value: a single value or a range. Undefined when malformed. */
export function parseDateTimeKey(vr: string, keyValue: string): Interval | undefined {
  if (vr === 'DT') {
    const points = parseDateTimeKeyPoints(keyValue, undefined);
    return points && { from: points.from?.digits, to: points.to?.digits, isRange: points.isRange };
  }
  const parts = keyValue.split('-');
  if (parts.length === 1) {
    const bounds = dateTimeBounds(vr, keyValue);
    return bounds ? { from: bounds.first, to: bounds.last, isRange: false } : undefined;
  }
  if (parts.length !== 2) return undefined;
  return intervalFromParts(vr, parts[0]!, parts[1]!);
}

function storedInstant(vr: string, storedValue: string): string | undefined {
  return dateTimeBounds(vr, storedValue)?.first;
}

/** A Timezone Offset From UTC (0008,0201) value (`+0500`, `-0800`) in minutes east of UTC; undefined unless valid. */
export function timezoneOffsetMinutes(value: string | undefined): number | undefined {
  const match = value === undefined ? null : /^([+-])(\d{2})(\d{2})$/.exec(value.trim());
  if (!match || Number(match[2]) > 14 || Number(match[3]) > 59) return undefined;
  return (match[1] === '-' ? -1 : 1) * (Number(match[2]) * 60 + Number(match[3]));
}

/**
 * A fixed-width DT instant (YYYYMMDDHHMMSSFFFFFF) written at `offsetMinutes` east of UTC, as UTC. Seconds
 * and fraction are kept as they are (a whole-minute shift leaves them, and a leap second stays 60).
 * Undefined beyond years 0000-9999.
 */
export function dateTimeInUtc(digits: string, offsetMinutes: number): string | undefined {
  if (offsetMinutes === 0) return digits;
  const date = new Date(0);
  date.setUTCFullYear(Number(digits.slice(0, 4)), Number(digits.slice(4, 6)) - 1, Number(digits.slice(6, 8)));
  date.setUTCHours(Number(digits.slice(8, 10)), Number(digits.slice(10, 12)) - offsetMinutes, 0, 0);
  const year = date.getUTCFullYear();
  if (year < 0 || year > 9999) return undefined;
  const two = (n: number) => String(n).padStart(2, '0');
  return `${String(year).padStart(4, '0')}${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${digits.slice(12)}`;
}

/** One bound of a DT key, or a stored DT value: its fixed-width digits as written, and its offset when known. */
interface DateTimePoint {
  digits: string;
  offsetMinutes: number | undefined;
}

/** `a` compared with `b` (negative, 0, positive): as instants when both offsets are known, else as written. */
function compareDateTimes(a: DateTimePoint, b: DateTimePoint): number {
  let left = a.digits;
  let right = b.digits;
  if (a.offsetMinutes !== undefined && b.offsetMinutes !== undefined) {
    const leftUtc = dateTimeInUtc(left, a.offsetMinutes);
    const rightUtc = dateTimeInUtc(right, b.offsetMinutes);
    if (leftUtc !== undefined && rightUtc !== undefined) [left, right] = [leftUtc, rightUtc];
  }
  return left < right ? -1 : left > right ? 1 : 0;
}

/**
 * A DT key value as bounds with their offsets (the value's own, else `keyTimezone`); undefined when malformed.
 * `-` is both the range separator and the sign of a UTC offset: a value that parses as one DT with a
 * plausible offset (<= 14 hours) is a single value, otherwise each `-` is tried as the separator.
 */
function parseDateTimeKeyPoints(keyValue: string, keyTimezone: number | undefined): { from?: DateTimePoint; to?: DateTimePoint; isRange: boolean } | undefined {
  const point = (parsed: ParsedDateTime, which: 'first' | 'last'): DateTimePoint => ({ digits: parsed.bounds[which], offsetMinutes: parsed.offsetMinutes ?? keyTimezone });
  const single = parseDateTime(keyValue);
  if (single?.offsetValid) return { from: point(single, 'first'), to: point(single, 'last'), isRange: false };
  for (let index = keyValue.indexOf('-'); index !== -1; index = keyValue.indexOf('-', index + 1)) {
    const low = keyValue.slice(0, index).trim();
    const high = keyValue.slice(index + 1).trim();
    if (low === '' && high === '') continue;
    const lowParsed = low === '' ? undefined : parseDateTime(low);
    const highParsed = high === '' ? undefined : parseDateTime(high);
    if ((low !== '' && !lowParsed?.offsetValid) || (high !== '' && !highParsed?.offsetValid)) continue;
    return { from: lowParsed && point(lowParsed, 'first'), to: highParsed && point(highParsed, 'last'), isRange: true };
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------

function isNumber(text: string): boolean {
  return text !== '' && Number.isFinite(Number(text));
}

function singleValueEquals(vr: string, keyValue: string, storedValue: string): boolean {
  if (NUMERIC_VRS.has(vr) && isNumber(keyValue) && isNumber(storedValue)) {
    return Number(keyValue) === Number(storedValue);
  }
  return keyValue === storedValue;
}

/** Values of the stored attribute as matching sees them (characters, see decodeCharacters); [] when empty. */
function storedValuesOf(vr: string, storedValue: string | undefined, storedCharacterSet?: string): string[] {
  if (storedValue === undefined) return [];
  const text = CHARACTER_SET_VRS.has(vr) ? decodeCharacters(storedValue, storedCharacterSet) : storedValue;
  return splitValues(vr, text).filter((value) => value !== '');
}

/** Whether a stored attribute is absent or zero length (no value but empty ones): unknown, for C.2.2.1.2. */
export function isUnknownValue(vr: string, storedValue: string | undefined): boolean {
  return storedValuesOf(vr, storedValue).length === 0;
}

/** For PN: the forms of a stored name a key without `=` is compared with: the whole name and each group. */
function personNameCandidates(storedName: string): string[] {
  const whole = normalizePersonName(storedName);
  return [whole, ...whole.split('=').filter((group) => group !== '')];
}

/**
 * The forms of a stored PN value that any key is compared with (each value's whole normalized name and its
 * component groups): what the catalog's name index holds, so that a key's personNamePrefixes find it.
 */
export function personNameForms(storedValue: string | undefined, storedCharacterSet?: string): string[] {
  return [...new Set(storedValuesOf('PN', storedValue, storedCharacterSet).flatMap((value) => personNameCandidates(value)))];
}

/** The dates of a stored DA value as a key compares them (YYYYMMDD, legacy `1993.04.30` too): the date index's. */
export function dateIndexForms(storedValue: string | undefined): string[] {
  return [...new Set(storedValuesOf('DA', storedValue).flatMap((value) => storedInstant('DA', value) ?? []))];
}

/** The text before each key's first wildcard (the whole key without one); undefined when one is empty. */
export function literalPrefixes(keys: readonly string[]): string[] | undefined {
  const prefixes = keys.map((key) => key.slice(0, key.search(/[*?]|$/)));
  return prefixes.every((prefix) => prefix !== '') ? prefixes : undefined;
}

/**
 * Compiles the matcher for one key, once per query. `vr` is the key's VR (the caller substitutes the stored
 * VR when the key's is UN); `keyCharacterSet` is the query's (0008,0005), `keyTimezone` its Timezone Offset
 * From UTC (0008,0201), the offset of DT key values without their own. Fails only for malformed DA/TM/DT
 * keys.
 */
export function compileKeyMatcher(vr: string, keyValue: string | undefined, keyCharacterSet?: string, keyTimezone?: string): CompileMatcherResult {
  if (vr === 'SQ') return { ok: true, matcher: SEQUENCE };
  if (keyValue === undefined) return { ok: true, matcher: UNIVERSAL };
  const keyText = normalizeValue(vr, CHARACTER_SET_VRS.has(vr) ? decodeCharacters(keyValue, keyCharacterSet) : keyValue);
  if (keyText === '' || keyText === '*') return { ok: true, matcher: UNIVERSAL };
  const keyValues = splitValues(vr, keyText);

  if (vr === 'UI') {
    const uids = new Set(keyValues.filter((uid) => uid !== ''));
    return {
      ok: true,
      matcher: {
        type: uids.size > 1 ? 'uid-list' : 'single-value',
        matches: (stored) => storedValuesOf(vr, stored).some((uid) => uids.has(uid)),
      },
    };
  }

  if (vr === 'DT') {
    const queryOffset = timezoneOffsetMinutes(keyTimezone);
    const intervals: Array<{ from?: DateTimePoint; to?: DateTimePoint; isRange: boolean }> = [];
    for (const value of keyValues) {
      const interval = parseDateTimeKeyPoints(value, queryOffset);
      if (!interval) return { ok: false, comment: `malformed DT matching key value "${value}"` };
      intervals.push(interval);
    }
    return {
      ok: true,
      matcher: {
        type: intervals.some((interval) => interval.isRange) ? 'range' : 'single-value',
        matches: (stored, _storedCharacterSet, storedTimezone) => {
          const instanceOffset = timezoneOffsetMinutes(storedTimezone);
          return storedValuesOf(vr, stored).some((value) => {
            const parsed = parseDateTime(value);
            if (parsed === undefined) return false;
            const instant: DateTimePoint = { digits: parsed.bounds.first, offsetMinutes: parsed.offsetMinutes ?? instanceOffset };
            return intervals.some(({ from, to }) => (from === undefined || compareDateTimes(from, instant) <= 0) && (to === undefined || compareDateTimes(instant, to) <= 0));
          });
        },
      },
    };
  }

  if (DATE_TIME_VRS.has(vr)) {
    const intervals: Interval[] = [];
    for (const value of keyValues) {
      const interval = parseDateTimeKey(vr, value);
      if (!interval) return { ok: false, comment: `malformed ${vr} matching key value "${value}"` };
      intervals.push(interval);
    }
    return {
      ok: true,
      matcher: {
        type: intervals.some((interval) => interval.isRange) ? 'range' : 'single-value',
        ...(vr === 'DA' ? { dateIntervals: intervals.map(({ from, to }) => ({ from, to })) } : {}),
        matches: (stored) =>
          storedValuesOf(vr, stored).some((value) => {
            const instant = storedInstant(vr, value);
            if (instant === undefined) return false;
            return intervals.some((interval) => {
              const { from, to } = interval;
              // A TM range whose start is after its end spans midnight (PS3.4 C.2.2.2.5.1): 2300-0030.
              if (vr === 'TM' && from !== undefined && to !== undefined && from > to) return from <= instant || instant <= to;
              return (from === undefined || from <= instant) && (to === undefined || instant <= to);
            });
          }),
      },
    };
  }

  if (vr === 'PN') {
    const personNameKeys = keyValues.map(normalizePersonName);
    // `=` or `^=^`: every group empty, so every group universal (a value empty as given stays a key for empty names).
    if (personNameKeys.some((key, i) => key === '' && keyValues[i] !== '')) return { ok: true, matcher: UNIVERSAL };
    const tests = personNameKeys.map(personNameKeyTest);
    const personNamePrefixes = personNameKeyPrefixes(personNameKeys);
    return {
      ok: true,
      matcher: {
        type: personNameKeys.some(hasWildcard) ? 'wildcard' : 'single-value',
        ...(personNamePrefixes === undefined ? {} : { personNamePrefixes }),
        matches: (stored, storedCharacterSet) =>
          nonEmpty(storedValuesOf(vr, stored, storedCharacterSet)).some((value) => tests.some((test) => test(value))),
      },
    };
  }

  if (WILDCARD_VRS.has(vr) && keyValues.some(hasWildcard)) {
    const patterns = keyValues.map(wildcardPattern);
    return {
      ok: true,
      matcher: {
        type: 'wildcard',
        matches: (stored, storedCharacterSet) =>
          nonEmpty(storedValuesOf(vr, stored, storedCharacterSet)).some((value) => patterns.some((pattern) => pattern.test(value))),
      },
    };
  }

  return {
    ok: true,
    matcher: {
      type: 'single-value',
      matches: (stored, storedCharacterSet) =>
        storedValuesOf(vr, stored, storedCharacterSet).some((value) => keyValues.some((key) => singleValueEquals(vr, key, value))),
    },
  };
}

/** One normalized PN key text (a group, or a whole name) as a test of one normalized text: wildcard or exact. */
function personNameTextTest(key: string): (text: string) => boolean {
  if (!hasWildcard(key)) return (text) => text === key;
  const pattern = wildcardPattern(key);
  return (text) => pattern.test(text);
}

/**
 * The test of one normalized PN key value against one stored name. A key without `=` is compared with the
 * whole name and with each of its component groups (so an alphabetic key finds a name that also carries
 * ideographic/phonetic groups). A key with `=` is compared group by group, as dcm4chee-arc does: each
 * non-empty group of the key must match the same group of the name (wildcards within that group), and an
 * empty key group is universal, so `=山田*` asks only the ideographic group.
 */
export function personNameKeyTest(key: string): (storedName: string) => boolean {
  if (!key.includes('=')) {
    const test = personNameTextTest(key);
    return (storedName) => personNameCandidates(storedName).some(test);
  }
  const groupTests = key.split('=').map((group) => (group === '' ? undefined : personNameTextTest(group)));
  return (storedName) => {
    const storedGroups = normalizePersonName(storedName).split('=');
    return groupTests.every((test, index) => test === undefined || test(storedGroups[index] ?? ''));
  };
}

/**
 * personNamePrefixes of normalized PN key values: a key without `=` bounds by its literal prefix (whole name
 * and groups are forms); a key with groups by the longest literal prefix of one of its groups, as every
 * non-empty stored group is a form too. Undefined when some key value has no such prefix.
 */
function personNameKeyPrefixes(keys: readonly string[]): string[] | undefined {
  const prefixes: string[] = [];
  for (const key of keys) {
    const candidates = key.split('=').flatMap((group) => literalPrefixes([group]) ?? []);
    const longest = candidates.reduce<string | undefined>((best, prefix) => (best === undefined || prefix.length > best.length ? prefix : best), undefined);
    if (longest === undefined) return undefined;
    prefixes.push(longest);
  }
  return prefixes;
}

/** An empty stored value is one zero-length value to a wildcard pattern (`**` matches it, as `*` does). */
function nonEmpty(values: string[]): string[] {
  return values.length === 0 ? [''] : values;
}

/** One-shot convenience: does `storedValue` match `keyValue`? Throws MatchingKeyError for a malformed key. */
export function matchesKey(
  vr: string,
  keyValue: string | undefined,
  storedValue: string | undefined,
  characterSets: { key?: string; stored?: string; keyTimezone?: string; storedTimezone?: string } = {},
): boolean {
  const compiled = compileKeyMatcher(vr, keyValue, characterSets.key, characterSets.keyTimezone);
  if (!compiled.ok) throw new MatchingKeyError(compiled.comment);
  return compiled.matcher.matches(storedValue, characterSets.stored, characterSets.storedTimezone);
}
