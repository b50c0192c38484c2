import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Tags, keywordOf, tagOf, vrOf } from './dictionary.ts';

describe('dictionary', () => {
  it('maps keywords, tags and VRs both ways', () => {
    assert.equal(Tags.PatientName, 0x00100010);
    assert.equal(Tags.QueryRetrieveLevel, 0x00080052);
    assert.equal(Tags.PixelData, 0x7fe00010);
    assert.equal(Tags.SequenceDelimitationItem, 0xfffee0dd);
    assert.equal(vrOf(Tags.StudyInstanceUID), 'UI');
    assert.equal(vrOf(Tags.Rows), 'US');
    assert.equal(vrOf(Tags.PatientAge), 'AS');
    assert.equal(keywordOf(0x0020000e), 'SeriesInstanceUID');
    assert.equal(tagOf('NumberOfStudyRelatedInstances'), 0x00201208);
    assert.equal(tagOf('patientname'), undefined);
    for (const [keyword, tag] of Object.entries(Tags)) {
      assert.equal(tagOf(keyword), tag);
      assert.equal(keywordOf(tag), keyword);
    }
    assert.ok(Object.keys(Tags).length >= 80);
  });

  it('knows group lengths, private creators, the registry\'s attributes with one VR, and nothing else', () => {
    assert.equal(vrOf(0x00080000), 'UL');
    assert.equal(vrOf(0x7fe00000), 'UL');
    assert.equal(vrOf(0x00290010), 'LO');
    assert.equal(vrOf(0x00291010), undefined);
    assert.equal(vrOf(Tags.Item), undefined);
    assert.equal(vrOf(0x00101040), 'LO', 'PatientAddress, from the registry');
    assert.equal(vrOf(0x00189082), 'FD', 'EffectiveEchoTime, from the registry');
    assert.equal(vrOf(0x00280106), undefined, 'US or SS');
    assert.equal(vrOf(0x60003000), undefined, 'a repeating group');
    assert.equal(vrOf(0x00100003), undefined, 'not in the registry');
    assert.equal(vrOf(0x0010_0010 | 0), 'PN');
    assert.equal(vrOf(-131072 + 0x0010), undefined); // (FFFE,0010) as a signed number: normalized, unknown
  });
});
