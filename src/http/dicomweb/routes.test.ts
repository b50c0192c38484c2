import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { frameNumbersMax, parseFrameList, routeOf } from './routes.ts';

const s = '1.2.3';
const se = '1.2.3.4';
const i = '1.2.3.4.5';

describe('routeOf', () => {
  it('reads every DICOMweb resource of PS3.18 10.4-10.6', () => {
    const cases: Array<[string, string, unknown]> = [
      ['GET', '/studies', { type: 'search', level: 'STUDY' }],
      ['GET', '/series', { type: 'search', level: 'SERIES' }],
      ['GET', '/instances', { type: 'search', level: 'IMAGE' }],
      ['GET', `/studies/${s}/series`, { type: 'search', level: 'SERIES', studyUid: s }],
      ['GET', `/studies/${s}/instances`, { type: 'search', level: 'IMAGE', studyUid: s }],
      ['GET', `/studies/${s}/series/${se}/instances`, { type: 'search', level: 'IMAGE', studyUid: s, seriesUid: se }],
      ['GET', `/studies/${s}`, { type: 'retrieve', level: 'STUDY', studyUid: s, metadata: false }],
      ['HEAD', `/studies/${s}/metadata`, { type: 'retrieve', level: 'STUDY', studyUid: s, metadata: true }],
      ['GET', `/studies/${s}/series/${se}`, { type: 'retrieve', level: 'SERIES', studyUid: s, seriesUid: se, metadata: false }],
      ['GET', `/studies/${s}/series/${se}/metadata`, { type: 'retrieve', level: 'SERIES', studyUid: s, seriesUid: se, metadata: true }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}`, { type: 'retrieve', level: 'IMAGE', studyUid: s, seriesUid: se, instanceUid: i, metadata: false }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/metadata`, { type: 'retrieve', level: 'IMAGE', studyUid: s, seriesUid: se, instanceUid: i, metadata: true }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/3,1`, { type: 'frames', studyUid: s, seriesUid: se, instanceUid: i, frameNumbers: [3, 1] }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/rendered`, { type: 'rendered', studyUid: s, seriesUid: se, instanceUid: i, frameNumber: 1 }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/7/rendered`, { type: 'rendered', studyUid: s, seriesUid: se, instanceUid: i, frameNumber: 7 }],
      ['GET', `/studies/${s}/thumbnail`, { type: 'thumbnail', level: 'STUDY', studyUid: s, frameNumber: 1 }],
      ['GET', `/studies/${s}/series/${se}/thumbnail`, { type: 'thumbnail', level: 'SERIES', studyUid: s, seriesUid: se, frameNumber: 1 }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/thumbnail`, { type: 'thumbnail', level: 'IMAGE', studyUid: s, seriesUid: se, instanceUid: i, frameNumber: 1 }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/2/thumbnail`, { type: 'thumbnail', level: 'IMAGE', studyUid: s, seriesUid: se, instanceUid: i, frameNumber: 2 }],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/bulkdata/60003000`, { type: 'bulkdata', studyUid: s, seriesUid: se, instanceUid: i, tag: 0x60003000 }],
      ['GET', '/wado', { type: 'uri' }],
      ['POST', '/studies', { type: 'store' }],
      ['POST', `/studies/${s}`, { type: 'store', studyUid: s }],
      ['GET', `/studies/${s}/`, { type: 'retrieve', level: 'STUDY', studyUid: s, metadata: false }],
    ];
    for (const [method, path, route] of cases) assert.deepEqual(routeOf(method, path), { ok: true, route }, `${method} ${path}`);
  });

  it('refuses other paths, methods and malformed UIDs or frame lists with a status and a code', () => {
    const cases: Array<[string, string, number, string]> = [
      ['GET', '', 404, 'ERR_HTTP_NOT_FOUND'],
      ['GET', '/patients', 404, 'ERR_HTTP_NOT_FOUND'],
      ['GET', `/studies/${s}/bulkdata`, 404, 'ERR_HTTP_NOT_FOUND'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/bulkdata/7FE0001`, 400, 'ERR_DICOMWEB_TAG'],
      ['POST', `/studies/${s}/series/${se}/instances/${i}/bulkdata/7FE00010`, 405, 'ERR_HTTP_METHOD'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/1,2/rendered`, 400, 'ERR_DICOMWEB_FRAMES'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/rendered/1`, 404, 'ERR_HTTP_NOT_FOUND'],
      ['DELETE', `/studies/${s}`, 405, 'ERR_HTTP_METHOD'],
      ['PUT', '/studies', 405, 'ERR_HTTP_METHOD'],
      ['POST', `/studies/${s}/series`, 405, 'ERR_HTTP_METHOD'],
      ['GET', '/studies/1.2.abc', 400, 'ERR_DICOMWEB_UID'],
      ['GET', `/studies/${'1.'.repeat(40)}1`, 400, 'ERR_DICOMWEB_UID'],
      ['GET', `/studies/${s}/series/${se}/instances/%E0%A4%A`, 400, 'ERR_DICOMWEB_PATH'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/0`, 400, 'ERR_DICOMWEB_FRAMES'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/1,,2`, 400, 'ERR_DICOMWEB_FRAMES'],
      ['GET', `/studies/${s}/series/${se}/instances/${i}/frames/-1`, 400, 'ERR_DICOMWEB_FRAMES'],
    ];
    for (const [method, path, httpStatus, code] of cases) {
      const result = routeOf(method, path);
      assert.equal(result.ok, false, `${method} ${path}`);
      if (!result.ok) {
        assert.equal(result.httpStatus, httpStatus, `${method} ${path}`);
        assert.equal(result.code, code, `${method} ${path}`);
      }
    }
  });

  it('bounds frame lists', () => {
    assert.deepEqual(parseFrameList('1'), [1]);
    assert.equal(parseFrameList(Array.from({ length: frameNumbersMax + 1 }, () => '1').join(',')), undefined);
    assert.equal(parseFrameList('1234567890'), undefined);
  });
});
