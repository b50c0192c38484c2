import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  MatchingKeyError,
  compileKeyMatcher,
  dateTimeBounds,
  matchesKey,
  normalizePersonName,
  parseDateTimeKey,
  dateIndexForms,
  personNameForms,
  type MatchingType,
  wildcardPattern,
} from './matching.ts';
import { Prng } from '../../../sim/prng.ts';

/** A text's UTF-8 bytes as the catalog holds values (one char per byte). */
const utf8 = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');

function typeOf(vr: string, key: string | undefined): MatchingType {
  const compiled = compileKeyMatcher(vr, key);
  assert.ok(compiled.ok);
  return compiled.matcher.type;
}

describe('universal matching', () => {
  it('a zero-length or absent key matches everything, empty values included', () => {
    assert.equal(typeOf('LO', ''), 'universal');
    assert.equal(typeOf('LO', undefined), 'universal');
    assert.equal(typeOf('LO', '   '), 'universal', 'padding only');
    for (const stored of ['X', '', undefined]) assert.equal(matchesKey('LO', '', stored), true);
  });

  it('a lone * is universal for every VR, including those without wildcard matching', () => {
    for (const vr of ['PN', 'LO', 'UI', 'DA', 'TM', 'IS']) {
      assert.equal(typeOf(vr, '*'), 'universal', vr);
      assert.equal(matchesKey(vr, '*', ''), true, `${vr} empty stored value`);
      assert.equal(matchesKey(vr, '*', undefined), true, `${vr} absent stored value`);
    }
  });
});

describe('single value matching', () => {
  it('is exact and case-sensitive for non-PN text', () => {
    assert.equal(typeOf('LO', 'ABC'), 'single-value');
    assert.equal(matchesKey('LO', 'ABC', 'ABC'), true);
    assert.equal(matchesKey('LO', 'ABC', 'abc'), false);
    assert.equal(matchesKey('LO', 'ABC', 'ABCD'), false);
    assert.equal(matchesKey('CS', 'CT', 'MR'), false);
  });

  it('ignores padding: trailing spaces always, leading spaces where not significant', () => {
    assert.equal(matchesKey('LO', 'ABC ', 'ABC'), true);
    assert.equal(matchesKey('SH', ' ABC', 'ABC  '), true);
    assert.equal(matchesKey('CS', 'CT', 'CT '), true);
    assert.equal(matchesKey('ST', ' text', 'text'), false, 'leading spaces are significant for ST');
  });

  it('compares latin1 bytes exactly (non-ASCII, ! and ^ are ordinary characters)', () => {
    assert.equal(matchesKey('LO', 'ID\xfc!\xff', 'ID\xfc!\xff'), true);
    assert.equal(matchesKey('LO', 'ID\xfc!\xff', 'ID\xdc!\xff'), false);
  });

  it('compares numbers by value', () => {
    assert.equal(matchesKey('IS', '5', '05'), true);
    assert.equal(matchesKey('DS', '1.0', '1'), true);
    assert.equal(matchesKey('US', '2', '3'), false);
  });

  it('an empty stored value matches no non-universal key', () => {
    assert.equal(matchesKey('LO', 'ABC', ''), false);
    assert.equal(matchesKey('LO', 'ABC', undefined), false);
    assert.equal(matchesKey('PN', 'DOE*', ''), false);
    assert.equal(matchesKey('DA', '20200101-', ''), false);
  });

  it('matches a multi-valued stored attribute when any value matches (C.2.2.3)', () => {
    assert.equal(matchesKey('CS', 'PRIMARY', 'ORIGINAL\\PRIMARY\\AXIAL'), true);
    assert.equal(matchesKey('CS', 'LOCALIZER', 'ORIGINAL\\PRIMARY\\AXIAL'), false);
  });

  it('a multi-valued non-UI key matches any of its values (OR)', () => {
    assert.equal(matchesKey('CS', 'CT\\MR', 'MR'), true);
    assert.equal(matchesKey('CS', 'CT\\MR', 'SR\\MR'), true);
    assert.equal(matchesKey('CS', 'CT\\MR', 'US'), false);
  });

  it('treats backslash as an ordinary character for LT/ST/UT', () => {
    assert.equal(matchesKey('LT', 'a\\b', 'a\\b'), true);
    assert.equal(matchesKey('LT', 'a\\b', 'a'), false);
  });
});

describe('PN matching (case-insensitive, trailing components ignored)', () => {
  it('is case-insensitive for ASCII letters', () => {
    assert.equal(matchesKey('PN', 'doe^john', 'DOE^JOHN'), true);
    assert.equal(matchesKey('PN', 'DOE^JOHN', 'Doe^John'), true);
    assert.equal(matchesKey('PN', 'DOE^JANE', 'Doe^John'), false);
  });

  it('ignores trailing empty components and component groups', () => {
    assert.equal(normalizePersonName('Doe^John^^^'), 'doe^john');
    assert.equal(normalizePersonName('Doe^John^^=='), 'doe^john');
    assert.equal(matchesKey('PN', 'Doe^John', 'Doe^John^^^'), true);
    assert.equal(matchesKey('PN', 'Doe^John^', 'DOE^JOHN'), true);
    assert.equal(matchesKey('PN', 'Doe', 'Doe^John'), false, 'single value: not a prefix match');
  });

  it('matches a key without = against each component group', () => {
    const stored = 'Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B';
    assert.equal(matchesKey('PN', 'YAMADA^TAROU', stored), true);
    assert.equal(matchesKey('PN', '\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B', stored), true);
  });

  it('matches a key with = group by group: each non-empty key group against the same group, empty key groups universal', () => {
    const sets = { key: 'ISO_IR 192', stored: 'ISO_IR 192' };
    const pn = (key: string, stored: string): boolean => matchesKey('PN', utf8(key), utf8(stored), sets);
    const full = 'Yamada^Tarou=山田^太郎=やまだ^たろう';
    assert.equal(pn('Yamada^Tarou=山田^太郎=やまだ^たろう', full), true, 'every group equal');
    assert.equal(pn('YAMADA^TAROU=山田^太郎', full), true, 'a key without the phonetic group leaves it universal');
    assert.equal(pn('Yamada^Tarou=山田^太郎', 'Yamada^Tarou=山田^太郎=やまだ^たろう^^'), true, 'trailing empty components per group');
    assert.equal(pn('=山田^太郎', full), true, 'an empty alphabetic key group is universal');
    assert.equal(pn('==やまだ^たろう', full), true, 'only the phonetic group asked');
    assert.equal(pn('=やまだ^たろう', full), false, 'a phonetic name in the ideographic group of the key does not match');
    assert.equal(pn('Yamada*=山田*', full), true, 'wildcards per group');
    assert.equal(pn('Yamada*=山本*', full), false, 'one group failing fails the key');
    assert.equal(pn('Yamada^Tarou=山田^太郎', 'Yamada^Tarou'), false, 'a key group the name does not carry does not match');
    assert.equal(pn('Yamada^Tarou=山田^太郎', 'Yamada^Jirou=山田^太郎'), false);
    assert.equal(pn('*=山田^太郎', 'Sato=山田^太郎'), true, 'a lone * group is universal for that group');
    assert.equal(pn('Yama*', 'Yamada^Tarou=山田^太郎'), true, 'a key without = still spans the whole name');
    assert.equal(pn('*=*', ''), true, 'a wildcard key matching nothing but stars matches an empty name');
    assert.equal(pn('山田^太郎=', full), true, 'a trailing empty key group is dropped: the key matches any group, as without =');
    assert.equal(pn('Doe\\=山田*', full), true, 'several key values: any may match');
  });

  it('a PN key whose every group and component is empty (=, ==, ^, =^) is universal, as its empty groups are', () => {
    for (const key of ['=', '==', '^', '=^', '^^=^']) {
      assert.equal(matchesKey('PN', key, 'Doe^John'), true, `${key} matches a name`);
      assert.equal(matchesKey('PN', key, 'Yamada^Tarou=\x1b$B;3ED\x1b(B'), true, `${key} matches a name with groups`);
      assert.equal(matchesKey('PN', key, ''), true, `${key} matches an empty name`);
      const compiled = compileKeyMatcher('PN', key);
      assert.ok(compiled.ok);
      assert.equal(compiled.matcher.personNamePrefixes, undefined, `${key} does not bound the name index`);
    }
    assert.equal(matchesKey('PN', 'Smith\\=', 'Doe^John'), true, 'one empty value among several: the key matches everything');
  });

  it('bounds the names a key can match by literal prefixes of the forms the name index holds', () => {
    const prefixesOf = (key: string, characterSet?: string) => {
      const compiled = compileKeyMatcher('PN', key, characterSet);
      assert.ok(compiled.ok);
      return compiled.matcher.personNamePrefixes;
    };
    assert.deepEqual(prefixesOf('DOE^J*'), ['doe^j']);
    assert.deepEqual(prefixesOf('Doe^John^^'), ['doe^john']);
    assert.deepEqual(prefixesOf('SMITH\\do?'), ['smith', 'do']);
    assert.equal(prefixesOf('*oe'), undefined, 'a leading wildcard bounds nothing');
    assert.equal(prefixesOf('DOE\\*X'), undefined, 'nor does one value of several');
    assert.equal(prefixesOf('*'), undefined);
    assert.deepEqual(prefixesOf('Yamada^T*=\x1b$B;3ED\x1b(B*', 'ISO 2022 IR 6\\ISO 2022 IR 87'), ['yamada^t'], 'the longest literal prefix of a key group');
    assert.deepEqual(prefixesOf('=\x1b$B;3ED\x1b(B^*', 'ISO 2022 IR 6\\ISO 2022 IR 87'), ['\u5c71\u7530^'], 'an ideographic group alone: a group form');
    assert.equal(prefixesOf('*=?amada'), undefined, 'no group with a literal prefix bounds nothing');
    assert.deepEqual(prefixesOf('M\xc3\xbcller*', 'ISO_IR 192'), ['m\xfcller'], 'decoded characters, as the stored forms');
    const yamada = 'Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B';
    assert.deepEqual(personNameForms(yamada, 'ISO 2022 IR 6\\ISO 2022 IR 87'), ['yamada^tarou=\u5c71\u7530^\u592a\u90ce', 'yamada^tarou', '\u5c71\u7530^\u592a\u90ce']);
    assert.deepEqual(personNameForms(' Doe^John^^\\Roe'), ['doe^john', 'roe']);
    assert.deepEqual(personNameForms(undefined), []);
  });

  it('bounds the dates a DA key can match by intervals of the forms the date index holds', () => {
    const intervalsOf = (key: string) => {
      const compiled = compileKeyMatcher('DA', key);
      assert.ok(compiled.ok);
      return compiled.matcher.dateIntervals;
    };
    assert.deepEqual(intervalsOf('20240101'), [{ from: '20240101', to: '20240101' }]);
    assert.deepEqual(intervalsOf('20240101-'), [{ from: '20240101', to: undefined }]);
    assert.deepEqual(intervalsOf('-1999.12.31\\20240101'), [{ from: undefined, to: '19991231' }, { from: '20240101', to: '20240101' }]);
    assert.equal(intervalsOf(''), undefined);
    assert.deepEqual(dateIndexForms('1993.04.30\\20240101\\garbage\\20240101 '), ['19930430', '20240101']);
    assert.deepEqual(dateIndexForms(undefined), []);
  });

  it('folds the case of letters beyond ASCII one character for one (as Orthanc does), never into two', () => {
    const utf8Sets = { key: 'ISO_IR 192', stored: 'ISO_IR 192' };
    const folds = (key: string, stored: string): boolean => matchesKey('PN', utf8(key), utf8(stored), utf8Sets);
    assert.equal(matchesKey('PN', 'M\xdcLLER', 'M\xfcller'), true, 'Latin-1');
    assert.equal(folds('müller^j*', 'MÜLLER^JÜRGEN'), true);
    assert.equal(folds('MULLER', 'Müller'), false, 'accents stay: Orthanc does not drop them either');
    assert.equal(folds('ΟΔΥΣΣΕΑΣ', 'οδυσσεας'), true, 'Greek: the capital sigma finds the final one');
    assert.equal(folds('ИВАН*', 'иванов'), true, 'Cyrillic');
    assert.equal(folds('STRAẞE', 'Straße'), true, 'capital sharp s');
    assert.equal(folds('STRASSE', 'Straße'), false, 'no folding into two characters');
    assert.equal(folds('Stra?e', 'STRAẞE'), true, '? is still one character');
    assert.equal(folds('\u{10400}*', '\u{10428}x'), true, 'outside the BMP (Deseret)');
    assert.equal(normalizePersonName('İstanbul'), 'İstanbul', 'the dotted capital I would lower-case into two code points');
  });
});

describe('list of UID matching', () => {
  it('matches any UID of a backslash-separated list', () => {
    assert.equal(typeOf('UI', '1.2.3\\1.2.4'), 'uid-list');
    assert.equal(typeOf('UI', '1.2.3'), 'single-value');
    assert.equal(matchesKey('UI', '1.2.3\\1.2.4', '1.2.4'), true);
    assert.equal(matchesKey('UI', '1.2.3\\1.2.4', '1.2.5'), false);
    assert.equal(matchesKey('UI', '1.2.3', '1.2.3\0'), true, 'trailing NUL padding');
  });

  it('treats wildcards in a UI key literally (no wildcard matching for UI)', () => {
    assert.equal(typeOf('UI', '1.2.*'), 'single-value');
    assert.equal(matchesKey('UI', '1.2.*', '1.2.3'), false);
  });
});

describe('wildcard matching', () => {
  it('* matches any sequence and ? exactly one character', () => {
    assert.equal(typeOf('LO', 'AB*'), 'wildcard');
    assert.equal(matchesKey('LO', 'AB*', 'AB'), true);
    assert.equal(matchesKey('LO', 'AB*', 'ABCDEF'), true);
    assert.equal(matchesKey('LO', '*CD*', 'ABCDEF'), true);
    assert.equal(matchesKey('LO', 'A?C', 'ABC'), true);
    assert.equal(matchesKey('LO', 'A?C', 'AC'), false);
    assert.equal(matchesKey('LO', 'A?C', 'ABBC'), false);
    assert.equal(matchesKey('LO', 'ab*', 'ABC'), false, 'case-sensitive outside PN');
  });

  it('treats regular expression characters literally', () => {
    assert.equal(matchesKey('LO', 'a.c*', 'abc'), false);
    assert.equal(matchesKey('LO', 'a.c*', 'a.cd'), true);
    assert.equal(matchesKey('LO', '(x)+[y]*', '(x)+[y]z'), true);
  });

  it('is case-insensitive for PN, and * spans components', () => {
    assert.equal(matchesKey('PN', 'doe*', 'DOE^JOHN'), true);
    assert.equal(matchesKey('PN', 'DOE^J*', 'Doe^John^^'), true);
    assert.equal(matchesKey('PN', '*^jo?n', 'Doe^John'), true);
    assert.equal(matchesKey('PN', 'smith*', 'Doe^John'), false);
  });

  it('is only done for AE, CS, LO, LT, PN, SH, ST, UC, UR, UT', () => {
    for (const vr of ['AE', 'CS', 'LO', 'LT', 'PN', 'SH', 'ST', 'UC', 'UR', 'UT']) {
      assert.equal(typeOf(vr, 'A*'), 'wildcard', vr);
    }
    for (const vr of ['UI', 'IS', 'DS', 'AS', 'US']) assert.notEqual(typeOf(vr, 'A*'), 'wildcard', vr);
  });

  it('an empty value matches only a pattern of *s (* matches zero characters too)', () => {
    assert.equal(matchesKey('LO', '*?', ''), false);
    assert.equal(matchesKey('LO', 'A*', ''), false);
    assert.equal(matchesKey('PN', '**', ''), true);
    assert.equal(matchesKey('PN', '**', undefined), true);
    assert.equal(matchesKey('LO', '***', ''), true);
  });

  it('agrees with a regular expression on seeded random patterns and texts', () => {
    const seed = 29;
    const prng = new Prng(seed);
    const pick = (alphabet: string, lengthMax: number): string =>
      Array.from({ length: prng.nextInt(lengthMax + 1) }, () => alphabet[prng.nextInt(alphabet.length)]).join('');
    for (let round = 0; round < 5000; round++) {
      const pattern = pick('ab*?', 6);
      const text = pick('ab', 7);
      const source = Array.from(pattern, (char) => (char === '*' ? '.*' : char === '?' ? '.' : char)).join('');
      const expected = new RegExp(`^${source}$`, 'su').test(text);
      assert.equal(wildcardPattern(pattern).test(text), expected, `seed ${seed}: "${pattern}" against "${text}"`);
    }
    assert.equal(wildcardPattern('?').test('\u{1F600}'), true, 'one code point outside the BMP');
  });

  it('many *s against a long value that does not match answer at once (no backtracking blow-up)', { timeout: 10_000 }, () => {
    assert.equal(matchesKey('PN', `${'*'.repeat(500_000)}n`, 'Smith^John'), true, 'a run of stars is one star');
    assert.equal(matchesKey('PN', 'S**h^**n', 'Smith^John'), true);
    const name = 'Smith^John^Alexander^Maximilian^Bartholomew^Jonathan^Christopherson';
    assert.equal(matchesKey('PN', `${'*'.repeat(40)}x`, name), false);
    assert.equal(matchesKey('PN', `${'*a'.repeat(30)}*b`, 'a'.repeat(60)), false);
    assert.equal(matchesKey('PN', `${'*a'.repeat(30)}*`, 'a'.repeat(60)), true);
  });
});

describe('character sets (values compared as characters)', () => {

  it('? is one character in a UTF-8 value, whatever its byte count', () => {
    const stored = { stored: 'ISO_IR 192' };
    assert.equal(matchesKey('PN', 'M?ller*', utf8('Müller^Jürgen'), stored), true);
    assert.equal(matchesKey('PN', 'M??ller*', utf8('Müller^Jürgen'), stored), false);
    assert.equal(matchesKey('LO', '?', utf8('😀'), stored), true, 'a character outside the BMP');
    assert.equal(matchesKey('PN', utf8('M?ller^J?rgen'), utf8('Müller^Jürgen'), { key: 'ISO_IR 192', ...stored }), true);
  });

  it('matches a Latin-1 key against a UTF-8 value and back, but not bytes that name other characters', () => {
    assert.equal(matchesKey('PN', 'M\xfcller', utf8('Müller'), { key: 'ISO_IR 100', stored: 'ISO_IR 192' }), true);
    assert.equal(matchesKey('PN', utf8('Müller'), 'M\xfcller', { key: 'ISO_IR 192', stored: 'ISO_IR 100' }), true);
    assert.equal(matchesKey('LO', utf8('Müller'), 'M\xfcller', { key: 'ISO_IR 192' }), true, 'no stored set: latin1');
    // Byte 0xFC is ü in Latin-1 but ь in ISO_IR 144 (Cyrillic).
    assert.equal(matchesKey('LO', 'M\xfcller', 'M\xfcller', { key: 'ISO_IR 100', stored: 'ISO_IR 144' }), false);
  });

  it('matches ISO 2022 Japanese names as characters: the bytes of a kanji are not wildcards or delimiters', () => {
    const jis = (kanjiBytes: string) => `\x1b$B${kanjiBytes}\x1b(B`;
    const sets = { key: '\\ISO 2022 IR 87', stored: '\\ISO 2022 IR 87' };
    const yamada = jis(';3ED'); // 山田
    assert.equal(matchesKey('PN', yamada, yamada, sets), true);
    assert.equal(matchesKey('PN', `${jis('?9')}*`, jis('D9'), sets), false, '森* must not find 長 (0x3F is ?)');
    assert.equal(matchesKey('PN', `${jis(';3ED')}*`, jis(';3ed'), sets), false, 'no case folding inside kanji');
    assert.equal(matchesKey('PN', `${jis(';3K\\')}*`, `Sakamoto=${jis(':dK\\')}`, sets), false, '山本* must not find 坂本');
    const deguchi = `${jis('=P8}')}^${jis('B@O:')}`; // 出口^太郎: 0x3D is =
    assert.equal(matchesKey('PN', deguchi, deguchi, sets), true);
    assert.equal(matchesKey('PN', `${jis('=P8}')}*`, deguchi, sets), true);
    assert.equal(matchesKey('PN', utf8('山田*'), `Yamada^Tarou=${yamada}^${jis('B@O:')}`, { key: 'ISO_IR 192', stored: sets.stored }), true);
    assert.equal(matchesKey('LO', 'A\xe9', 'A\xe9', { key: 'NO SUCH SET', stored: 'NO SUCH SET' }), true, 'unknown set: bytes');
  });

  it('does not decode the values of VRs that hold ASCII only', () => {
    assert.equal(matchesKey('CS', 'A\xc3\xbc', 'A\xc3\xbc', { key: 'ISO_IR 192', stored: 'ISO_IR 100' }), true);
  });
});

describe('range matching', () => {
  it('TM: a range whose start is after its end spans midnight; reversed DA ranges match nothing', () => {
    for (const stored of ['235959.999999', '2330', '000000', '0015']) assert.equal(matchesKey('TM', '2300-0030', stored), true, stored);
    for (const stored of ['2259', '0031', '120000']) assert.equal(matchesKey('TM', '2300-0030', stored), false, stored);
    assert.equal(matchesKey('DA', '20201231-20200101', '20200601'), false);
  });

  it('refuses keys that name no real date or time as malformed, and never matches such stored values', () => {
    for (const [vr, key] of [['DA', '20201301'], ['DA', '20200230'], ['DA', '20210229-'], ['TM', '2460'], ['TM', '2400'], ['DT', '20201332'], ['DT', '2020010125']]) {
      assert.equal(compileKeyMatcher(vr!, key).ok, false, `${vr} ${key}`);
    }
    assert.equal(compileKeyMatcher('DA', '20200229').ok, true, 'a leap day');
    assert.equal(compileKeyMatcher('TM', '235960').ok, true, 'a leap second');
    assert.equal(matchesKey('DA', '20200101-20201231', '20200230'), false);
  });

  it('DA: closed, open-start and open-end ranges, inclusive', () => {
    assert.equal(typeOf('DA', '20200101-20201231'), 'range');
    assert.equal(matchesKey('DA', '20200101-20201231', '20200101'), true);
    assert.equal(matchesKey('DA', '20200101-20201231', '20201231'), true);
    assert.equal(matchesKey('DA', '20200101-20201231', '20210101'), false);
    assert.equal(matchesKey('DA', '-20201231', '19990101'), true);
    assert.equal(matchesKey('DA', '-20201231', '20210101'), false);
    assert.equal(matchesKey('DA', '20200101-', '20991231'), true);
    assert.equal(matchesKey('DA', '20200101-', '20191231'), false);
    assert.equal(matchesKey('DA', '20201231-20200101', '20200601'), false, 'reversed range matches nothing');
  });

  it('DA: a single value is exact; legacy dotted dates are understood', () => {
    assert.equal(typeOf('DA', '20200101'), 'single-value');
    assert.equal(matchesKey('DA', '20200101', '20200101'), true);
    assert.equal(matchesKey('DA', '20200101', '20200102'), false);
    assert.equal(matchesKey('DA', '19930101-19931231', '1993.04.30'), true);
    assert.equal(matchesKey('DA', '1993.04.30', '19930430'), true);
    assert.equal(matchesKey('DA', '20200101', 'garbage'), false);
  });

  it('TM: partial bounds cover the whole period they name', () => {
    assert.equal(matchesKey('TM', '1000-1200', '100000'), true);
    assert.equal(matchesKey('TM', '1000-1200', '120059.999'), true);
    assert.equal(matchesKey('TM', '1000-1200', '120100'), false);
    assert.equal(matchesKey('TM', '1000-1200', '0959'), false);
    assert.equal(matchesKey('TM', '-08', '085959'), true);
    assert.equal(matchesKey('TM', '-08', '09'), false);
    assert.equal(matchesKey('TM', '2300-', '235959.999999'), true);
    assert.equal(matchesKey('TM', '1030', '103015'), true, 'single TM value covers its precision');
    assert.equal(matchesKey('TM', '1030', '1031'), false);
    assert.equal(matchesKey('TM', '10:00-11:00', '10:30:00'), true, 'legacy colons');
  });

  it('DT: ranges, partial values and UTC offsets', () => {
    assert.equal(matchesKey('DT', '2020-2021', '20211231235959'), true);
    assert.equal(matchesKey('DT', '2020-2021', '2022'), false);
    assert.equal(matchesKey('DT', '20200101120000-', '20200101120000.5'), true);
    assert.equal(matchesKey('DT', '-20200101', '20200101235959'), true);
    assert.equal(matchesKey('DT', '-20200101', '20200102'), false);
    assert.equal(parseDateTimeKey('DT', '20200101120000-0500')?.isRange, false, 'a -hhmm suffix is an offset');
    assert.equal(parseDateTimeKey('DT', '20200101-20201231')?.isRange, true);
    assert.equal(parseDateTimeKey('DT', '20200101+0100-20201231+0100')?.isRange, true);
  });

  it('DT: values with UTC offsets are compared as instants (PS3.4 C.2.2.2.5.1; hunt 85 compared them as written)', () => {
    // 12:00+0500 and 07:00+0000 are the same instant; 12:00-0800 is 20:00Z.
    assert.equal(matchesKey('DT', '20200101070000+0000', '20200101120000+0500'), true);
    assert.equal(matchesKey('DT', '20200101120000+0500', '20200101120000-0800'), false);
    assert.equal(matchesKey('DT', '20200101120000+0500', '20200101120000+0500'), true);
    assert.equal(matchesKey('DT', '20200101000000+0000-20200101100000+0000', '20200101120000+0500'), true);
    assert.equal(matchesKey('DT', '20200101000000+0000-20200101100000+0000', '20200101120000-0800'), false);
    assert.equal(matchesKey('DT', '-20200101100000+0000', '20200101120000-0800'), false);
    assert.equal(matchesKey('DT', '20200101100000+0000-', '20200101120000-0800'), true);
    // Across a day: 2020-01-01 in UTC+1400 begins 2019-12-31 10:00Z.
    assert.equal(matchesKey('DT', '20200101+1400', '20191231100000+0000'), true);
    assert.equal(matchesKey('DT', '20200101+1400', '20191231095959+0000'), false);
    assert.equal(matchesKey('DT', '20200101+1400', '20200101100000+0000'), false, '2020-01-02 00:00+1400');
    // Into another year and month, both ways.
    assert.equal(matchesKey('DT', '20200229233000-0100', '20200301003000+0000'), true);
    assert.equal(matchesKey('DT', '2021+0000', '20210101003000+0100'), false, 'still 2020 in UTC');
  });

  it('DT: a value without an offset takes its instance\'s Timezone Offset From UTC, a key the query\'s; else it is compared as written', () => {
    assert.equal(matchesKey('DT', '20200101070000+0000', '20200101120000', { storedTimezone: '+0500' }), true);
    assert.equal(matchesKey('DT', '20200101070000+0000', '20200101070000', { storedTimezone: '+0500' }), false);
    assert.equal(matchesKey('DT', '20200101070000', '20200101120000+0500', { keyTimezone: '+0000' }), true);
    assert.equal(matchesKey('DT', '20200101000000-20200101100000', '20200101120000+0500', { keyTimezone: '+0000' }), true);
    assert.equal(matchesKey('DT', '20200101000000-20200101100000', '20200101120000+0500', { keyTimezone: '+0800' }), false);
    // The value's own offset wins over (0008,0201) (PS3.3 C.12.1.1.8: it does not apply to such values).
    assert.equal(matchesKey('DT', '20200101070000+0000', '20200101120000+0500', { storedTimezone: '-0800' }), true);
    // Unknown on one side: as written, as before.
    assert.equal(matchesKey('DT', '20200101120000+0500', '20200101120000'), true);
    assert.equal(matchesKey('DT', '20200101120000', '20200101120000-0800'), true);
    assert.equal(matchesKey('DT', '2020', '20200101120000'), true);
  });

  it('malformed keys are refused, with a comment', () => {
    for (const [vr, key] of [
      ['DA', '2020-01-01'],
      ['DA', 'abc-'],
      ['DA', '-'],
      ['DA', '202001'],
      ['TM', '25:00-xx'],
      ['TM', '1-2'],
      ['DT', 'yesterday'],
      ['DT', '20200101+2000-20200102'],
    ] as const) {
      const compiled = compileKeyMatcher(vr, key);
      assert.equal(compiled.ok, false, `${vr} ${key}`);
      if (!compiled.ok) assert.match(compiled.comment, /malformed/);
    }
    assert.throws(() => matchesKey('DA', 'x-y', '20200101'), (error: unknown) => {
      assert.ok(error instanceof MatchingKeyError);
      assert.equal(error.name, 'MatchingKeyError');
      assert.equal(error.code, 'MALFORMED_MATCHING_KEY');
      return true;
    });
  });

  it('dateTimeBounds pads to fixed width', () => {
    assert.deepEqual(dateTimeBounds('TM', '10'), { first: '100000000000', last: '105959999999' });
    assert.deepEqual(dateTimeBounds('DT', '2020'), { first: '20200101000000000000', last: '20201231235959999999' });
    assert.equal(dateTimeBounds('TM', '1030.5'), undefined, 'a fraction needs seconds');
  });
});

describe('sequence matching', () => {
  it('is out of scope: an SQ key is treated as universal', () => {
    assert.equal(typeOf('SQ', undefined), 'sequence');
    assert.equal(matchesKey('SQ', undefined, undefined), true);
  });
});
