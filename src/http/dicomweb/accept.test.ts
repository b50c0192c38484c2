import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseAccept } from './accept.ts';
import { instanceSyntaxFor } from './wado.ts';

describe('parseAccept', () => {
  it('reads ranges with quoted parameters, best quality first, and drops q=0', () => {
    const ranges = parseAccept('application/json;q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*, text/html;q=0');
    assert.deepEqual(ranges.map((range) => range.mediaType), ['multipart/related', 'application/json']);
    assert.equal(ranges[0]!.parameters.get('type'), 'application/dicom');
    assert.equal(ranges[0]!.parameters.get('transfer-syntax'), '*');
    assert.deepEqual(parseAccept(undefined).map((range) => range.mediaType), ['*/*']);
    assert.deepEqual(parseAccept('garbage, ,/;'), []);
    assert.deepEqual(parseAccept('a/b; x="1,2;3", c/d').map((range) => [range.mediaType, range.parameters.get('x')]), [['a/b', '1,2;3'], ['c/d', undefined]]);
  });

  it('negotiates the instances\' transfer syntax (PS3.18 8.7.3.5)', () => {
    const jpegLs = new Set(['1.2.840.10008.1.2.4.80']);
    assert.equal(instanceSyntaxFor(parseAccept(undefined), jpegLs), '1.2.840.10008.1.2.1', 'the default is Explicit VR LE');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=*'), jpegLs), '*');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'), jpegLs), '1.2.840.10008.1.2.4.80');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'), jpegLs), undefined, 'no lossy re-encoding');
    assert.equal(instanceSyntaxFor(parseAccept('application/dicom+json'), jpegLs), undefined);
    assert.equal(
      instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, multipart/related; type="application/dicom";q=0.5'), jpegLs),
      '1.2.840.10008.1.2.1',
      'the next range when the first cannot be served',
    );
  });
});
