/**
 * The DICOM JSON Model (PS3.18 annex F.2): what QIDO-RS answers, WADO-RS metadata returns and STOW-RS
 * responses carry. Values arrive as this codec keeps them (text as latin1 bytes in the data set's
 * Specific Character Set, numbers as decimal text) and leave as Unicode strings and JSON numbers.
 */
import { decodeCharacters } from '../character-sets.ts';
import type { Tag, Vr } from '../dicom-types.ts';

/** One attribute in the JSON model: `vr`, and `Value`, `BulkDataURI` or `InlineBinary` when it has one. */
export interface DicomJsonAttribute {
  vr: Vr;
  Value?: DicomJsonValue[];
  BulkDataURI?: string;
  InlineBinary?: string;
}

export type DicomJsonValue = string | number | null | PersonNameJson | DicomJsonObject;
export type DicomJsonObject = Record<string, DicomJsonAttribute>;

export interface PersonNameJson {
  Alphabetic?: string;
  Ideographic?: string;
  Phonetic?: string;
}

/** An element to encode: the codec's value text, or a sequence's items, or a bulk data reference. */
export interface JsonSourceElement {
  tag: Tag;
  vr: Vr;
  value: string | undefined;
  items?: readonly (readonly JsonSourceElement[])[];
  bulkDataUri?: string;
}

/** Text VRs whose value is one string, backslashes included (PS3.5 6.2: LT, ST, UT, UR have no multiplicity). */
const SINGLE_VALUED_TEXT = new Set(['LT', 'ST', 'UT', 'UR']);
/**
 * IS and DS go out as JSON strings, which CP-1861 allows beside numbers (PS3.18 F.2.3.1): the value is
 * kept exactly ("0.50", "1E3"), as dcm4chee does by default, and Orthanc 1.10's DICOMweb client drops
 * IS and DS values sent as numbers (our interop test saw it).
 */
const NUMBER_STRINGS = new Set(['IS', 'DS']);
const BINARY_NUMBERS = new Set(['US', 'SS', 'UL', 'SL', 'FL', 'FD']);
/** 64-bit integers beyond 2^53 would lose digits as JSON numbers: kept as strings (PS3.18 F.2.3.1). */
const BIG_INTEGERS = new Set(['SV', 'UV']);

/** The tag as PS3.18 F.2.1.1 keys it: eight uppercase hex digits. */
export function jsonTag(tag: Tag): string {
  return (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
}

/**
 * The JSON model of `elements` (in ascending tag order, as F.2 asks). Text is decoded from the data set's
 * Specific Character Set (`characterSet`, or the one among the elements). Elements without a value and
 * without items or a bulk data reference become `{vr}` alone: present and empty.
 */
export function toDicomJson(elements: readonly JsonSourceElement[], characterSet?: string): DicomJsonObject {
  const specificCharacterSet = characterSet ?? elements.find((element) => element.tag === 0x00080005)?.value;
  const object: DicomJsonObject = {};
  for (const element of [...elements].sort((a, b) => (a.tag >>> 0) - (b.tag >>> 0))) {
    // Group lengths are deprecated in data sets and meaningless once re-encoded (F.2: not included).
    if ((element.tag & 0xffff) === 0) continue;
    object[jsonTag(element.tag)] = attributeOf(element, specificCharacterSet);
  }
  return object;
}

function attributeOf(element: JsonSourceElement, characterSet: string | undefined): DicomJsonAttribute {
  const vr = element.vr;
  if (vr === 'SQ' || element.items !== undefined) {
    const items = element.items ?? [];
    return items.length === 0 ? { vr: 'SQ' } : { vr: 'SQ', Value: items.map((item) => toDicomJson(item, characterSet)) };
  }
  if (element.bulkDataUri !== undefined) return { vr, BulkDataURI: element.bulkDataUri };
  if (element.value === undefined || element.value === '') return { vr };
  return { vr, Value: valuesOf(vr, element.value, characterSet) };
}

function valuesOf(vr: Vr, text: string, characterSet: string | undefined): DicomJsonValue[] {
  if (vr === 'AT') return text.split('\\').map((value) => jsonTag(Number(value)));
  if (BINARY_NUMBERS.has(vr)) return text.split('\\').map(numberOrText);
  if (BIG_INTEGERS.has(vr)) return text.split('\\');
  if (NUMBER_STRINGS.has(vr)) return text.split('\\').map((value) => (value.trim() === '' ? null : value.trim()));
  const decoded = decodeCharacters(text, characterSet);
  if (SINGLE_VALUED_TEXT.has(vr)) return [decoded];
  const values = decoded.split('\\');
  if (vr === 'PN') return values.map(personNameOf);
  // UIDs carry a trailing NUL as padding, others spaces (already trimmed at the end of the whole value).
  return values.map((value) => {
    const trimmed = vr === 'UI' ? value.replace(/\0+$/, '') : value.trim();
    return trimmed === '' ? null : trimmed;
  });
}

/** A number where the text is one, else the text: a malformed value is shown as it was stored, not lost. */
function numberOrText(value: string): number | string {
  const parsed = Number(value);
  return value !== '' && Number.isFinite(parsed) ? parsed : value;
}

/** PS3.18 F.2.2: a PN value's component groups (alphabetic=ideographic=phonetic) as named fields. */
function personNameOf(value: string): PersonNameJson | null {
  const trimmed = value.trim();
  if (trimmed === '') return null;
  const [alphabetic, ideographic, phonetic] = trimmed.split('=');
  const name: PersonNameJson = {};
  if (alphabetic) name.Alphabetic = alphabetic;
  if (ideographic) name.Ideographic = ideographic;
  if (phonetic) name.Phonetic = phonetic;
  return name;
}
