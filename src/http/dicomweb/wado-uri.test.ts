import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DicomWebError } from './context.ts';
import { parseUriRequest } from './wado-uri.ts';

const base = 'requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.4&objectUID=1.2.3.4.5';

describe('parseUriRequest', () => {
  it('reads the instance and the transfer syntax (Explicit VR Little Endian unless asked; * as stored)', () => {
    assert.deepEqual(parseUriRequest(new URLSearchParams(`${base}&contentType=application/dicom`)), { studyUid: '1.2.3', seriesUid: '1.2.3.4', objectUid: '1.2.3.4.5', transferSyntax: '1.2.840.10008.1.2.1' });
    assert.equal(parseUriRequest(new URLSearchParams(`${base}&contentType=application/dicom&transferSyntax=*`)).transferSyntax, '*');
    // A list of media types with preferences (PS3.18 9.1.2.2.1): application/dicom among them is enough.
    assert.equal(parseUriRequest(new URLSearchParams(`${base}&contentType=image/jpeg;q=0.9,application/dicom;q=0.5&charset=utf-8`)).objectUid, '1.2.3.4.5');
  });

  it('refuses with 400 or 406 and a code what it cannot serve', () => {
    const cases: Array<[string, number, RegExp]> = [
      [base, 406, /application\/dicom only/],
      [`${base}&contentType=application/dicom;q=0,image/png`, 406, /rendered images/],
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
