import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { isAcceptableUid, isValidUid, normalizeUidValue } from './uid.ts';

describe('UIDs', () => {
  it('accepts conformant UIDs in both checks', () => {
    for (const uid of ['1', '0', '1.2.840.10008.1.2.1', '1.0.3', `1.${'2'.repeat(62)}`]) {
      assert.ok(isValidUid(uid), uid);
      assert.ok(isAcceptableUid(uid), uid);
    }
  });

  it('accepts leading-zero components only in the lenient check', () => {
    for (const uid of ['1.2.246.352.91.0000217.20050503182534672016', '1.02', '00.1']) {
      assert.equal(isValidUid(uid), false, uid);
      assert.equal(isAcceptableUid(uid), true, uid);
    }
    assert.ok(isValidUid('999.999.133.1996.1.1800.1.6.25'));
  });

  it('rejects anything that is not a safe key', () => {
    for (const uid of ['', '.', '1.', '.1', '1..2', '1.2 ', '1.2\0', '1.2a', '1/2', '1.2\n', '１.2', `1.${'2'.repeat(63)}`, '1,2', '-1']) {
      assert.equal(isAcceptableUid(uid), false, JSON.stringify(uid));
      assert.equal(isValidUid(uid), false, JSON.stringify(uid));
    }
  });

  it('strips exactly one trailing NUL or space', () => {
    assert.equal(normalizeUidValue('1.2.3\0'), '1.2.3');
    assert.equal(normalizeUidValue('1.2.3 '), '1.2.3');
    assert.equal(normalizeUidValue('1.2.3'), '1.2.3');
    assert.equal(normalizeUidValue('1.2.3\0\0'), '1.2.3\0');
    assert.equal(normalizeUidValue(''), '');
  });
});
