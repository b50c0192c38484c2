import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jsonTag, toDicomJson } from './dicom-json.ts';

describe('toDicomJson (PS3.18 F.2)', () => {
  it('writes each VR family as the JSON model asks', () => {
    const json = toDicomJson([
      { tag: 0x00100010, vr: 'PN', value: 'Doe^John=ド^ジョン=do^jon\\Roe^Jane' },
      { tag: 0x00080020, vr: 'DA', value: '20240101' },
      { tag: 0x00200013, vr: 'IS', value: ' 7 ' },
      { tag: 0x00280030, vr: 'DS', value: '0.5\\1e1' },
      { tag: 0x00280010, vr: 'US', value: '512' },
      { tag: 0x00209165, vr: 'AT', value: String(0x00100020) },
      { tag: 0x00080018, vr: 'UI', value: '1.2.3\0' },
      { tag: 0x00081030, vr: 'LO', value: 'a\\\\b' },
      { tag: 0x00204000, vr: 'LT', value: 'line\\with backslash' },
      { tag: 0x00080050, vr: 'SH', value: '' },
      { tag: 0x00080060, vr: 'CS', value: undefined },
      { tag: 0x00180015, vr: 'CS', value: 'CHEST' },
      { tag: 0x00081115, vr: 'SQ', value: undefined, items: [[{ tag: 0x0020000e, vr: 'UI', value: '1.2' }], []] },
      { tag: 0x00400275, vr: 'SQ', value: undefined, items: [] },
      { tag: 0x7fe00010, vr: 'OW', value: undefined, bulkDataUri: 'http://x/bulk' },
      { tag: 0x00280000, vr: 'UL', value: '12' },
      { tag: 0x00660040, vr: 'UV', value: '18446744073709551615' },
    ]);
    assert.deepEqual(json['00100010'], { vr: 'PN', Value: [{ Alphabetic: 'Doe^John', Ideographic: 'ド^ジョン', Phonetic: 'do^jon' }, { Alphabetic: 'Roe^Jane' }] });
    assert.deepEqual(json['00200013'], { vr: 'IS', Value: ['7'] }, 'IS and DS as strings (CP-1861), exactly as stored');
    assert.deepEqual(json['00280030'], { vr: 'DS', Value: ['0.5', '1e1'] });
    assert.deepEqual(json['00280010'], { vr: 'US', Value: [512] });
    assert.deepEqual(json['00209165'], { vr: 'AT', Value: ['00100020'] });
    assert.deepEqual(json['00080018'], { vr: 'UI', Value: ['1.2.3'] });
    assert.deepEqual(json['00081030'], { vr: 'LO', Value: ['a', null, 'b'] });
    assert.deepEqual(json['00204000'], { vr: 'LT', Value: ['line\\with backslash'] });
    assert.deepEqual(json['00080050'], { vr: 'SH' });
    assert.deepEqual(json['00080060'], { vr: 'CS' });
    assert.deepEqual(json['00081115'], { vr: 'SQ', Value: [{ '0020000E': { vr: 'UI', Value: ['1.2'] } }, {}] });
    assert.deepEqual(json['00400275'], { vr: 'SQ' });
    assert.deepEqual(json['7FE00010'], { vr: 'OW', BulkDataURI: 'http://x/bulk' });
    assert.equal(json['00280000'], undefined, 'group lengths are left out');
    assert.deepEqual(json['00660040'], { vr: 'UV', Value: ['18446744073709551615'] });
    assert.deepEqual(Object.keys(json), [...Object.keys(json)].sort());
  });

  it('decodes text from the data set\'s character set', () => {
    const latin1 = toDicomJson([
      { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 100' },
      { tag: 0x00100010, vr: 'PN', value: 'M\xfcller' },
    ]);
    assert.deepEqual(latin1['00100010'], { vr: 'PN', Value: [{ Alphabetic: 'Müller' }] });
    const utf8 = toDicomJson([{ tag: 0x00100010, vr: 'PN', value: Buffer.from('Żółw', 'utf8').toString('latin1') }], 'ISO_IR 192');
    assert.deepEqual(utf8['00100010'], { vr: 'PN', Value: [{ Alphabetic: 'Żółw' }] });
    assert.equal(jsonTag(0x7fe00010), '7FE00010');
  });
});
