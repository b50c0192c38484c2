import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeCharacters, splitValueBytes } from './character-sets.ts';

/** A latin1 string of the bytes written as hex, the form the codec gives values in. */
const bytes = (hex: string): string => Buffer.from(hex.replace(/ /g, ''), 'hex').toString('latin1');
const ESC_JIS = '1b2442';
const ESC_ASCII = '1b2842';

describe('decodeCharacters', () => {
  it('leaves ASCII, unknown sets and values without a character set as they are', () => {
    assert.equal(decodeCharacters('Doe^John', 'ISO_IR 192'), 'Doe^John');
    assert.equal(decodeCharacters(bytes('4dfc6c6c6572'), undefined), bytes('4dfc6c6c6572'));
    assert.equal(decodeCharacters(bytes('4dfc6c6c6572'), 'NO SUCH SET'), bytes('4dfc6c6c6572'));
  });

  it('decodes single character sets without code extensions', () => {
    assert.equal(decodeCharacters(bytes('4dc3bc6c6c6572'), 'ISO_IR 192'), 'Müller');
    assert.equal(decodeCharacters(bytes('b8d2d0ddd5d2'), 'ISO_IR 144'), 'Иванев');
  });

  it('decodes the PS3.5 H.3.1 Japanese name (ISO 2022 IR 87) to Unicode', () => {
    const name = bytes(
      `5961 6d61 6461 5e54 6172 6f75 3d ${ESC_JIS} 3b33 4544 ${ESC_ASCII} 5e ${ESC_JIS} 4240 4f3a ${ESC_ASCII}`,
    );
    assert.equal(decodeCharacters(name, '\\ISO 2022 IR 87'), 'Yamada^Tarou=山田^太郎');
  });

  it('a byte inside a two-byte character is never a delimiter, a wildcard or an ASCII letter', () => {
    // 森 is 3F 39 ('?9'), 本 is 4B 5C ('K\'), 出 is 3D 50 ('=P'), a JIS code with 'E' 'D' bytes: 田 45 44.
    const cases: Array<[string, string]> = [
      [`${ESC_JIS} 3f39 ${ESC_ASCII}`, '森'],
      [`${ESC_JIS} 3b33 4b5c ${ESC_ASCII}`, '山本'],
      [`${ESC_JIS} 3d50 387d ${ESC_ASCII} 5e ${ESC_JIS} 4240 4f3a ${ESC_ASCII}`, '出口^太郎'],
      [`${ESC_JIS} 3b33 4544 ${ESC_ASCII}`, '山田'],
    ];
    for (const [hex, expected] of cases) assert.equal(decodeCharacters(bytes(hex), '\\ISO 2022 IR 87'), expected, hex);
  });

  it('splits multi-valued text only at a single-byte backslash, and returns to value 1 sets after it', () => {
    const twoValues = bytes(`${ESC_JIS} 3b33 4b5c ${ESC_ASCII} 5c ${ESC_JIS} 3a64 4b5c ${ESC_ASCII}`);
    assert.deepEqual(decodeCharacters(twoValues, '\\ISO 2022 IR 87').split('\\'), ['山本', '坂本']);
    // An encoder that did not switch back before the delimiter still has its pair bytes read as pairs.
    assert.equal(decodeCharacters(bytes(`${ESC_JIS} 3b33 4b5c`), '\\ISO 2022 IR 87'), '山本');
  });

  it('decodes half-width katakana (IR 13), Korean (IR 149), Chinese (IR 58) and ISO 8859 in G1', () => {
    assert.equal(decodeCharacters(bytes('d4cfc0de'), 'ISO 2022 IR 13\\ISO 2022 IR 87'), 'ﾔﾏﾀﾞ');
    assert.equal(decodeCharacters(bytes('1b242943 c8abb1e6b5bf'), '\\ISO 2022 IR 149'), '홍길동');
    assert.equal(decodeCharacters(bytes('1b242941 cdf5'), '\\ISO 2022 IR 58'), '王');
    assert.equal(decodeCharacters(bytes('1b2d4c b8d2'), '\\ISO 2022 IR 144'), 'Ив');
    assert.equal(decodeCharacters(bytes('4dfc'), 'ISO 2022 IR 100'), 'Mü');
  });

  it('decodes a long value (1 MB of text around an escape) without running out of stack', () => {
    const long = 'A'.repeat(1 << 20);
    assert.equal(decodeCharacters(`${long}${bytes(`${ESC_JIS} 3f39 ${ESC_ASCII}`)}${long}`, '\\ISO 2022 IR 87'), `${long}森${long}`);
  });

  it('keeps unknown escapes, a lone half character and undesignated high bytes as bytes', () => {
    assert.equal(decodeCharacters(bytes('1b2858 41'), '\\ISO 2022 IR 87'), bytes('1b2858 41'));
    assert.equal(decodeCharacters(bytes(`${ESC_JIS} 3b`), '\\ISO 2022 IR 87'), ';');
    assert.equal(decodeCharacters(bytes('41 e9'), '\\ISO 2022 IR 87'), bytes('41 e9'));
  });
});

describe('splitValueBytes', () => {
  it('splits at single-byte backslashes only, keeping each value\'s bytes', () => {
    assert.deepEqual(splitValueBytes('A\\B', undefined), ['A', 'B']);
    assert.deepEqual(splitValueBytes(bytes('4d52 9c5c 31 5c 32'), 'GB18030'), [bytes('4d52 9c5c 31'), '2']);
    assert.deepEqual(splitValueBytes(bytes('8139ee39 5c 41'), 'GB18030'), [bytes('8139ee39'), 'A'], 'a four-byte sequence');
    const yamamoto = bytes(`${ESC_JIS} 3b33 4b5c ${ESC_ASCII}`);
    assert.deepEqual(splitValueBytes(`${yamamoto}\\X`, '\\ISO 2022 IR 87'), [yamamoto, 'X']);
    assert.deepEqual(splitValueBytes(bytes('9c5c'), 'ISO_IR 100'), [bytes('9c'), ''], 'a single-byte set: every 0x5C');
  });
});
