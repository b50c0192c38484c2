/**
 * The DICOMweb resources (PS3.18 10.4-10.6) as a closed union, read from a request's method and path:
 * a pure function, so every path a client may send is checked without a server.
 */
import { isAcceptableUid } from '../../codec/uid.ts';

export type SearchLevel = 'STUDY' | 'SERIES' | 'IMAGE';

export type DicomWebRoute =
  /** QIDO-RS: /studies, /series, /instances, or under a study or series. */
  | { type: 'search'; level: SearchLevel; studyUid?: string; seriesUid?: string }
  /** WADO-RS: the instances of a study, series or one instance, or their metadata. */
  | { type: 'retrieve'; level: SearchLevel; studyUid: string; seriesUid?: string; instanceUid?: string; metadata: boolean }
  /** WADO-RS: one top-level binary value of an instance, named by its tag (the BulkDataURI metadata gives). */
  | { type: 'bulkdata'; studyUid: string; seriesUid: string; instanceUid: string; tag: number }
  /** WADO-RS: frames of one instance, numbered from 1. */
  | { type: 'frames'; studyUid: string; seriesUid: string; instanceUid: string; frameNumbers: number[] }
  /** WADO-RS Retrieve Rendered: one frame of an instance (frame 1 for the instance's own resource) as an image. */
  | { type: 'rendered'; studyUid: string; seriesUid: string; instanceUid: string; frameNumber: number }
  /** WADO-RS thumbnail (PS3.18 10.4.1.1.4): of a study, a series, an instance (its first frame) or one frame. */
  | { type: 'thumbnail'; level: SearchLevel; studyUid: string; seriesUid?: string; instanceUid?: string; frameNumber: number }
  /** STOW-RS: POST /studies, or /studies/{uid} for instances of that study only. */
  | { type: 'store'; studyUid?: string }
  /** WADO-URI: /wado, the instance named by its query parameters (see wado-uri.ts). */
  | { type: 'uri' };

export type RouteResult =
  | { ok: true; route: DicomWebRoute }
  | { ok: false; httpStatus: 400 | 404 | 405; code: string; message: string; allow?: string };

/** A frame list holds at most this many numbers: each is a part of the response. */
export const frameNumbersMax = 10_000;

const notFound = (path: string): RouteResult => ({ ok: false, httpStatus: 404, code: 'ERR_HTTP_NOT_FOUND', message: `no DICOMweb resource at ${path.slice(0, 200)}` });

/**
 * The route of `method` on `path` (the part after /dicom-web, without the query). UIDs are checked here
 * (digits and dots, at most 64 characters): a malformed one is a 400 naming it, never a key.
 */
export function routeOf(method: string, path: string): RouteResult {
  const segments = path.split('/').filter((segment) => segment !== '');
  const [top, studyUid, second, seriesUid, third, instanceUid, fourth, ...rest] = segments.map(safeDecode);
  if (segments.some((segment) => safeDecode(segment) === undefined)) return { ok: false, httpStatus: 400, code: 'ERR_DICOMWEB_PATH', message: 'the path holds a malformed percent-encoding' };
  const uids = [studyUid, seriesUid, instanceUid].filter((uid): uid is string => uid !== undefined);
  const badUid = uids.find((uid) => !isAcceptableUid(uid));
  const isRead = method === 'GET' || method === 'HEAD';
  const readOnly = (route: DicomWebRoute): RouteResult => (isRead ? { ok: true, route } : { ok: false, httpStatus: 405, code: 'ERR_HTTP_METHOD', message: `method ${method} not allowed here`, allow: 'GET, HEAD' });

  if (top === undefined) return notFound(path);
  if (segments.length === 1 && (top === 'series' || top === 'instances')) {
    return readOnly({ type: 'search', level: top === 'series' ? 'SERIES' : 'IMAGE' });
  }
  if (segments.length === 1 && top === 'wado') return readOnly({ type: 'uri' });
  if (top !== 'studies') return notFound(path);
  if (studyUid === undefined) {
    if (method === 'POST') return { ok: true, route: { type: 'store' } };
    return isRead ? { ok: true, route: { type: 'search', level: 'STUDY' } } : { ok: false, httpStatus: 405, code: 'ERR_HTTP_METHOD', message: `method ${method} not allowed here`, allow: 'GET, HEAD, POST' };
  }
  if (badUid !== undefined) return { ok: false, httpStatus: 400, code: 'ERR_DICOMWEB_UID', message: `not a valid UID (digits and dots, at most 64 characters): "${badUid.slice(0, 80)}"` };
  if (second === undefined) {
    if (method === 'POST') return { ok: true, route: { type: 'store', studyUid } };
    return isRead ? { ok: true, route: { type: 'retrieve', level: 'STUDY', studyUid, metadata: false } } : { ok: false, httpStatus: 405, code: 'ERR_HTTP_METHOD', message: `method ${method} not allowed here`, allow: 'GET, HEAD, POST' };
  }
  if (second === 'metadata' && seriesUid === undefined) return readOnly({ type: 'retrieve', level: 'STUDY', studyUid, metadata: true });
  if (second === 'thumbnail' && seriesUid === undefined) return readOnly({ type: 'thumbnail', level: 'STUDY', studyUid, frameNumber: 1 });
  if (second === 'instances' && seriesUid === undefined) return readOnly({ type: 'search', level: 'IMAGE', studyUid });
  if (second !== 'series') return notFound(path);
  if (seriesUid === undefined) return readOnly({ type: 'search', level: 'SERIES', studyUid });
  if (third === undefined) return readOnly({ type: 'retrieve', level: 'SERIES', studyUid, seriesUid, metadata: false });
  if (third === 'metadata' && instanceUid === undefined) return readOnly({ type: 'retrieve', level: 'SERIES', studyUid, seriesUid, metadata: true });
  if (third === 'thumbnail' && instanceUid === undefined) return readOnly({ type: 'thumbnail', level: 'SERIES', studyUid, seriesUid, frameNumber: 1 });
  if (third !== 'instances') return notFound(path);
  if (instanceUid === undefined) return readOnly({ type: 'search', level: 'IMAGE', studyUid, seriesUid });
  if (fourth === undefined) return readOnly({ type: 'retrieve', level: 'IMAGE', studyUid, seriesUid, instanceUid, metadata: false });
  if (fourth === 'metadata' && rest.length === 0) return readOnly({ type: 'retrieve', level: 'IMAGE', studyUid, seriesUid, instanceUid, metadata: true });
  if (fourth === 'rendered' && rest.length === 0) return readOnly({ type: 'rendered', studyUid, seriesUid, instanceUid, frameNumber: 1 });
  if (fourth === 'thumbnail' && rest.length === 0) return readOnly({ type: 'thumbnail', level: 'IMAGE', studyUid, seriesUid, instanceUid, frameNumber: 1 });
  if (fourth === 'frames' && rest.length === 2 && (rest[1] === 'rendered' || rest[1] === 'thumbnail')) {
    const frameNumbers = parseFrameList(rest[0]!);
    if (frameNumbers?.length !== 1) return { ok: false, httpStatus: 400, code: 'ERR_DICOMWEB_FRAMES', message: `frames are rendered one at a time: "${rest[0]!.slice(0, 80)}" is not one frame number from 1` };
    const frameNumber = frameNumbers[0]!;
    return readOnly(rest[1] === 'rendered' ? { type: 'rendered', studyUid, seriesUid, instanceUid, frameNumber } : { type: 'thumbnail', level: 'IMAGE', studyUid, seriesUid, instanceUid, frameNumber });
  }
  if (fourth === 'bulkdata' && rest.length === 1) {
    if (!/^[0-9A-Fa-f]{8}$/.test(rest[0]!)) return { ok: false, httpStatus: 400, code: 'ERR_DICOMWEB_TAG', message: `bulk data is named by a tag of 8 hex digits, not "${rest[0]!.slice(0, 80)}"` };
    return readOnly({ type: 'bulkdata', studyUid, seriesUid, instanceUid, tag: parseInt(rest[0]!, 16) >>> 0 });
  }
  if (fourth === 'frames' && rest.length === 1) {
    const frameNumbers = parseFrameList(rest[0]!);
    if (frameNumbers === undefined) {
      return { ok: false, httpStatus: 400, code: 'ERR_DICOMWEB_FRAMES', message: `frame list "${rest[0]!.slice(0, 80)}" is not a comma-separated list of frame numbers from 1 (at most ${frameNumbersMax})` };
    }
    return readOnly({ type: 'frames', studyUid, seriesUid, instanceUid, frameNumbers });
  }
  return notFound(path);
}

function safeDecode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

/** "1,3,5" -> [1, 3, 5]; undefined for anything else (PS3.18 8.3.5.1: uintList, numbered from 1). */
export function parseFrameList(text: string): number[] | undefined {
  const parts = text.split(',');
  if (parts.length > frameNumbersMax) return undefined;
  const numbers: number[] = [];
  for (const part of parts) {
    if (!/^[0-9]{1,9}$/.test(part)) return undefined;
    const number = Number(part);
    if (number < 1) return undefined;
    numbers.push(number);
  }
  return numbers;
}
