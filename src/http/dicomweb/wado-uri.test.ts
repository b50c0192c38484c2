import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DicomWebError } from './context.ts';
import { parseUriRequest } from './wado-uri.ts';

const base = 'requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.4&objectUID=1.2.3.4.5';

describe('parseUriRequest', () => {
  it('reads the instance and the transfer syntax (Explicit VR Little Endian unless asked; * as stored)', () => {
    assert.deepEqual(parseUriRequest(new URLSearchParams(`${base}&contentType=application/dicom`)), { kind: 'dicom', studyUid: '1.2.3', seriesUid: '1.2.3.4', objectUid: '1.2.3.4.5', transferSyntax: '1.2.840.10008.1.2.1' });
    assert.deepEqual(parseUriRequest(new URLSearchParams(`${base}&contentType=application/dicom&transferSyntax=*`)), { kind: 'dicom', studyUid: '1.2.3', seriesUid: '1.2.3.4', objectUid: '1.2.3.4.5', transferSyntax: '*' });
    // A list of media types with preferences (PS3.18 9.1.2.2.1): the first by preference is served.
    assert.equal(parseUriRequest(new URLSearchParams(`${base}&contentType=image/jpeg;q=0.5,application/dicom;q=0.9&charset=utf-8`)).kind, 'dicom');
  });

  it('a rendered image: image/jpeg without contentType (PS3.18 9.2.2), image/png, and the rendering parameters', () => {
    assert.deepEqual(parseUriRequest(new URLSearchParams(base)), {
      kind: 'rendered', defaulted: true, fileTransferSyntax: '1.2.840.10008.1.2.1', studyUid: '1.2.3', seriesUid: '1.2.3.4', instanceUid: '1.2.3.4.5', mediaType: 'image/jpeg', frameNumber: 1, options: {}, quality: 90,
    });
    // An empty contentType asks nothing (it was taken as application/dicom); the transfer syntax is that of the file sent for an object without pixels.
    assert.deepEqual(parseUriRequest(new URLSearchParams(`${base}&contentType=&transferSyntax=*`)), {
      kind: 'rendered', defaulted: true, fileTransferSyntax: '*', studyUid: '1.2.3', seriesUid: '1.2.3.4', instanceUid: '1.2.3.4.5', mediaType: 'image/jpeg', frameNumber: 1, options: {}, quality: 90,
    });
    assert.deepEqual(parseUriRequest(new URLSearchParams(`${base}&contentType=image/png;q=0.9,application/dicom;q=0.5&frameNumber=3&windowCenter=40&windowWidth=400&rows=128&imageQuality=70&annotation=patient`)), {
      kind: 'rendered', defaulted: false, fileTransferSyntax: '1.2.840.10008.1.2.1', studyUid: '1.2.3', seriesUid: '1.2.3.4', instanceUid: '1.2.3.4.5', mediaType: 'image/png', frameNumber: 3,
      options: { window: { center: 40, width: 400, function: 'LINEAR' }, maxRows: 128 }, quality: 70,
    });
  });

  it('refuses with 400 or 406 and a code what it cannot serve', () => {
    const cases: Array<[string, number, RegExp]> = [
      [`${base}&contentType=image/gif`, 406, /application\/dicom, image\/jpeg or image\/png, not image\/gif/],
      [`${base}&windowCenter=40`, 400, /windowCenter and windowWidth go together/],
      [`${base}&contentType=image/jpeg&region=0,0,0.5,0.5`, 400, /region is not supported/],
      [`${base}&frameNumber=0`, 400, /frameNumber is "0"/],
      [`${base}&imageQuality=101`, 400, /imageQuality is "101", not a number from 1 to 100/],
      [`${base}&contentType=application/dicom&studyUID=1.2.9`, 400, /studyUID is given 2 times/],
      [`${base.replace('&seriesUID=1.2.3.4', '')}&contentType=application/dicom`, 400, /seriesUID is required/],
      [`${base}&contentType=application/dicom&frameNumber=1&windowCenter=40`, 400, /windowCenter, frameNumber apply to rendered images/],
      [`${base}&contentType=application/dicom&transferSyntax=jpeg`, 400, /transferSyntax is not a UID/],
      [`${base.replace('requestType=WADO&', '')}&contentType=application/dicom`, 400, /requestType must be WADO/],
    ];
    for (const [query, status, message] of cases) {
      assert.throws(
        () => parseUriRequest(new URLSearchParams(query)),
        (error: unknown) => error instanceof DicomWebError && error.httpStatus === status && message.test(error.message) && error.code.startsWith('ERR_'),
        query,
      );
    }
  });
});
