/**
 * Decoding text values (latin1 strings of their raw bytes, as the codec reads them) into characters,
 * following a data set's Specific Character Set (0008,0005): PS3.3 C.12.1.1.2 and PS3.5 6.1.
 *
 * Without code extensions one TextDecoder does it. With them (ISO 2022: escape sequences switch the G0
 * and G1 sets within a value) the bytes are walked: a byte of a two-byte set is half a character, never a
 * delimiter, a wildcard or a letter to fold (PS3.5 6.1.2.3: "Only the character that encodes as a single
 * byte valued 05/12 is a delimiter"). Japanese (IR 87, IR 159, IR 13), Korean (IR 149), Chinese (IR 58)
 * and the single-byte ISO 8859 sets are decoded to Unicode, so such a value matches the same name sent
 * in UTF-8. Unknown escape sequences and sets are kept as their bytes.
 */

/** Decoders for (0008,0005) values of one character set without code extensions that TextDecoder knows. */
const SINGLE_SET_LABELS = new Map<string, string>([
  ['ISO_IR 101', 'iso-8859-2'], ['ISO_IR 109', 'iso-8859-3'], ['ISO_IR 110', 'iso-8859-4'],
  ['ISO_IR 144', 'iso-8859-5'], ['ISO_IR 127', 'iso-8859-6'], ['ISO_IR 126', 'iso-8859-7'],
  ['ISO_IR 138', 'iso-8859-8'], ['ISO_IR 148', 'iso-8859-9'], ['ISO_IR 203', 'iso-8859-15'],
  ['ISO_IR 166', 'windows-874'], ['ISO_IR 13', 'shift_jis'], ['ISO_IR 192', 'utf-8'],
  ['GB18030', 'gb18030'], ['GBK', 'gbk'],
]);

/** A graphic set an escape sequence (or value 1 of (0008,0005)) designates. */
interface GraphicSet {
  /** Bytes per character. */
  readonly width: 1 | 2;
  /** Decodes a run of this set's bytes, given as they appear in the value (G0: 0x21-0x7E, G1: 0xA0-0xFF). */
  readonly decode: (bytes: number[]) => string;
}

const decoders = new Map<string, TextDecoder | null>();

function decoderFor(label: string): TextDecoder | undefined {
  if (!decoders.has(label)) {
    let decoder: TextDecoder | null = null;
    try {
      decoder = new TextDecoder(label);
    } catch {
      decoder = null; // a Node.js built without that encoding: the bytes are kept
    }
    decoders.set(label, decoder);
  }
  return decoders.get(label) ?? undefined;
}

/** Bytes as a latin1 string (not String.fromCharCode(...bytes): a long value would overflow the stack). */
const latin1Of = (bytes: number[]): string => Buffer.from(bytes).toString('latin1');

function viaDecoder(label: string, toEncoded: (bytes: number[]) => number[]): (bytes: number[]) => string {
  return (bytes) => {
    const decoder = decoderFor(label);
    return decoder ? decoder.decode(Uint8Array.from(toEncoded(bytes))) : latin1Of(bytes);
  };
}

const asIs = (bytes: number[]): number[] => bytes;
const withHighBit = (bytes: number[]): number[] => bytes.map((byte) => byte | 0x80);
/** JIS X 0212 in EUC-JP: each two-byte character behind the SS3 byte 0x8F. */
const jisX0212InEucJp = (bytes: number[]): number[] =>
  bytes.flatMap((byte, index) => (index % 2 === 0 ? [0x8f, byte | 0x80] : [byte | 0x80]));

const ASCII: GraphicSet = { width: 1, decode: latin1Of };
/** JIS X 0201 Romaji differs from ASCII only at 0x5C and 0x7E; kept as ASCII so 0x5C stays the delimiter. */
const JIS_X0201_ROMAJI = ASCII;
const JIS_X0201_KATAKANA: GraphicSet = { width: 1, decode: viaDecoder('shift_jis', asIs) };
const JIS_X0208: GraphicSet = { width: 2, decode: viaDecoder('euc-jp', withHighBit) };
const JIS_X0212: GraphicSet = { width: 2, decode: viaDecoder('euc-jp', jisX0212InEucJp) };
const KS_X1001: GraphicSet = { width: 2, decode: viaDecoder('euc-kr', withHighBit) };
const GB2312: GraphicSet = { width: 2, decode: viaDecoder('gbk', withHighBit) };
const iso8859 = (label: string): GraphicSet => ({ width: 1, decode: viaDecoder(label, asIs) });

/** Escape sequences (the bytes after ESC) of PS3.3 Tables C.12-3 and C.12-4: which set, into G0 or G1. */
const ESCAPES: ReadonlyArray<readonly [string, 'G0' | 'G1', GraphicSet]> = [
  ['(B', 'G0', ASCII],
  ['(J', 'G0', JIS_X0201_ROMAJI],
  [')I', 'G1', JIS_X0201_KATAKANA],
  ['$B', 'G0', JIS_X0208],
  ['$@', 'G0', JIS_X0208], // the 1978 edition's designation, seen in old Japanese data
  ['$(D', 'G0', JIS_X0212],
  ['$)C', 'G1', KS_X1001],
  ['$)A', 'G1', GB2312],
  ['-A', 'G1', iso8859('iso-8859-1')],
  ['-B', 'G1', iso8859('iso-8859-2')],
  ['-C', 'G1', iso8859('iso-8859-3')],
  ['-D', 'G1', iso8859('iso-8859-4')],
  ['-L', 'G1', iso8859('iso-8859-5')],
  ['-G', 'G1', iso8859('iso-8859-6')],
  ['-F', 'G1', iso8859('iso-8859-7')],
  ['-H', 'G1', iso8859('iso-8859-8')],
  ['-M', 'G1', iso8859('iso-8859-9')],
  ['-b', 'G1', iso8859('iso-8859-15')],
  ['-T', 'G1', iso8859('windows-874')],
];

/** The sets value 1 of (0008,0005) designates before any escape sequence (PS3.5 6.1.2.5.3). */
function initialSets(firstTerm: string): { g0: GraphicSet; g1: GraphicSet | undefined } {
  const term = firstTerm.replace(/^ISO 2022 IR /, 'ISO_IR ');
  if (term === 'ISO_IR 13') return { g0: JIS_X0201_ROMAJI, g1: JIS_X0201_KATAKANA };
  if (term === 'ISO_IR 149') return { g0: ASCII, g1: KS_X1001 };
  if (term === 'ISO_IR 58') return { g0: ASCII, g1: GB2312 };
  if (term === 'ISO_IR 100') return { g0: ASCII, g1: iso8859('iso-8859-1') };
  const label = SINGLE_SET_LABELS.get(term);
  return { g0: ASCII, g1: label?.startsWith('iso-8859') || label === 'windows-874' ? iso8859(label) : undefined };
}

/** Bytes at which every designation returns to value 1's (PS3.5 6.1.2.5.3): value delimiter and controls. */
function resetsDesignations(byte: number): boolean {
  return byte === 0x5c || byte === 0x0a || byte === 0x0d || byte === 0x0c || byte === 0x09;
}

function decodeWithCodeExtensions(bytes: string, terms: string[]): string {
  const initial = initialSets(terms[0] ?? '');
  let { g0, g1 } = initial;
  let output = '';
  let run: number[] = [];
  let runSet: GraphicSet | undefined;
  const flush = (): void => {
    if (runSet && run.length > 0) output += runSet.decode(run);
    run = [];
    runSet = undefined;
  };
  const append = (set: GraphicSet, ...codes: number[]): void => {
    if (runSet !== set) flush();
    runSet = set;
    run.push(...codes);
  };
  for (let index = 0; index < bytes.length; ) {
    const byte = bytes.charCodeAt(index);
    if (byte === 0x1b) {
      const escape = escapeAt(bytes, index);
      if (escape) {
        if (escape[1] === 'G0') g0 = escape[2];
        else g1 = escape[2];
        index += 1 + escape[0].length;
        continue;
      }
      // Unknown: the ESC and what follows stay as bytes (compared as such).
      append(ASCII, byte);
      index++;
      continue;
    }
    const set = byte < 0x80 ? g0 : g1;
    const isControlOrSpace = byte <= 0x20 || byte === 0x7f;
    if (set === undefined || (byte < 0x80 && isControlOrSpace)) {
      append(ASCII, byte); // a high byte with no G1 set designated is kept as its latin1 character
      if (resetsDesignations(byte)) ({ g0, g1 } = initial);
      index++;
      continue;
    }
    if (set.width === 2) {
      const second = bytes.charCodeAt(index + 1);
      const pairs = index + 1 < bytes.length && (byte < 0x80 ? second > 0x20 && second < 0x7f : second >= 0xa0);
      if (pairs) append(set, byte, second);
      else append(ASCII, byte); // half a character: kept as a byte
      index += pairs ? 2 : 1;
      continue;
    }
    append(set, byte);
    if (set === ASCII && resetsDesignations(byte)) ({ g0, g1 } = initial);
    index++;
  }
  flush();
  return output;
}

/** The terms (values) of a Specific Character Set (0008,0005); [''] without one. */
function termsOf(specificCharacterSet: string | undefined): string[] {
  return (specificCharacterSet ?? '').split('\\').map((term) => term.trim());
}

/** The designation an escape sequence starting at `index` (the ESC byte) makes, if it is one we know. */
function escapeAt(bytes: string, index: number): (typeof ESCAPES)[number] | undefined {
  return ESCAPES.find(([sequence]) => bytes.startsWith(sequence, index + 1));
}

/** The (0008,0005) terms; several values, or one `ISO 2022` term, mean code extensions. */
function usesCodeExtensions(terms: string[]): boolean {
  return terms.length > 1 || terms[0]!.startsWith('ISO 2022');
}

/**
 * The characters of `value` (latin1 string of its bytes) in the character set (0008,0005) names. Unchanged
 * when it has no byte above 0x7F and no escape, without a character set, for ISO_IR 100 (latin1 already)
 * and for sets it cannot decode (unknown names).
 */
export function decodeCharacters(value: string, specificCharacterSet: string | undefined): string {
  if (specificCharacterSet === undefined || specificCharacterSet === '' || !/[\x1b\x80-\xff]/.test(value)) return value;
  const terms = termsOf(specificCharacterSet);
  if (usesCodeExtensions(terms)) return decodeWithCodeExtensions(value, terms);
  const label = SINGLE_SET_LABELS.get(terms[0]!);
  const decoder = label === undefined ? undefined : decoderFor(label);
  return decoder === undefined ? value : decoder.decode(Buffer.from(value, 'latin1'));
}

/**
 * Splits a multi-valued text (latin1 string of its bytes) at its value delimiters, keeping each value's
 * bytes: a 0x5C that is the second byte of a GB18030/GBK character, or inside ISO 2022 two-byte text, is
 * part of a character, not a delimiter (PS3.5 6.1.2.3).
 */
export function splitValueBytes(value: string, specificCharacterSet: string | undefined): string[] {
  const terms = termsOf(specificCharacterSet);
  const isGb = terms[0] === 'GB18030' || terms[0] === 'GBK';
  const hasCodeExtensions = usesCodeExtensions(terms);
  const values: string[] = [];
  let start = 0;
  let twoByteG0 = false;
  for (let index = 0; index < value.length; ) {
    const byte = value.charCodeAt(index);
    if (isGb && byte >= 0x81 && byte <= 0xfe) {
      const second = value.charCodeAt(index + 1);
      index += second >= 0x30 && second <= 0x39 ? 4 : 2; // a four-byte GB18030 sequence, or two bytes
      continue;
    }
    if (hasCodeExtensions && byte === 0x1b) {
      const escape = escapeAt(value, index);
      if (escape?.[1] === 'G0') twoByteG0 = escape[2].width === 2;
      index += 1 + (escape?.[0].length ?? 0);
      continue;
    }
    if (twoByteG0 && byte > 0x20 && byte < 0x7f) {
      index += 2;
      continue;
    }
    if (byte === 0x5c) {
      values.push(value.slice(start, index));
      start = index + 1;
      twoByteG0 = false;
    }
    index++;
  }
  values.push(value.slice(start));
  return values;
}
