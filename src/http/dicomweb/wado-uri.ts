/**
 * WADO-URI (PS3.18 chapter 9), the service older web viewers (cornerstone's wadouri loader, OHIF in that
 * mode, Weasis through a manifest) load instances with: GET /wado?requestType=WADO&studyUID=...&seriesUID=...
 * &objectUID=...&contentType=application/dicom, answered with the instance as a DICOM file. Rendered media
 * types (image/jpeg, the default when contentType is absent) are not offered: this archive renders nothing.
 */
import { isAcceptableUid } from '../../codec/uid.ts';
import { EXPLICIT_LE, canTranscodeInstance } from '../../codec/transcode-targets.ts';
import { acceptableRanges, parseAccept } from './accept.ts';
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { selectInstances } from './instances.ts';
import { byteLengthOf, inMemoryChunks, isClientGone, responseBodyWriter } from './multipart-writer.ts';
import { part10File } from './wado.ts';

export interface UriRequest {
  studyUid: string;
  seriesUid: string;
  objectUid: string;
  /** The transfer syntax asked (PS3.18 9.2.2.4: Explicit VR Little Endian when absent), or '*': as stored. */
  transferSyntax: string;
}

/** Parameters of rendered representations (PS3.18 9.2.2): absent from a request for application/dicom. */
const renderingParameters = ['annotation', 'rows', 'columns', 'region', 'windowCenter', 'windowWidth', 'frameNumber', 'imageQuality', 'presentationUID', 'presentationSeriesUID', 'iccprofile'];

/** A WADO-URI request's parameters, checked (pure): DicomWebError 400 or 406 naming what is wrong. */
export function parseUriRequest(query: URLSearchParams): UriRequest {
  const badRequest = (message: string) => new DicomWebError(400, 'ERR_DICOMWEB_URI_QUERY', message);
  const one = (name: string): string | undefined => {
    const values = query.getAll(name);
    if (values.length > 1) throw badRequest(`parameter ${name} is given ${values.length} times`);
    return values[0];
  };
  const requestType = one('requestType');
  if (requestType !== 'WADO') throw badRequest(`requestType must be WADO${requestType === undefined ? '' : `, not "${requestType.slice(0, 40)}"`}`);
  const uid = (name: string): string => {
    const value = one(name);
    if (value === undefined || value === '') throw badRequest(`${name} is required`);
    if (!isAcceptableUid(value)) throw new DicomWebError(400, 'ERR_DICOMWEB_UID', `${name} is not a valid UID (digits and dots, at most 64 characters): "${value.slice(0, 80)}"`);
    return value;
  };
  const [studyUid, seriesUid, objectUid] = [uid('studyUID'), uid('seriesUID'), uid('objectUID')];
  const contentType = one('contentType');
  const servesDicom = contentType !== undefined && acceptableRanges(parseAccept(contentType)).some((range) => (range.type === 'application' && (range.subtype === 'dicom' || range.subtype === '*')) || range.type === '*');
  if (!servesDicom) {
    throw new DicomWebError(
      406,
      'ERR_DICOMWEB_NOT_ACCEPTABLE',
      `instances are sent as contentType=application/dicom only; rendered images (${contentType === undefined ? 'image/jpeg, the default without contentType' : contentType.slice(0, 80)}) are not offered`,
    );
  }
  const rendering = renderingParameters.filter((name) => query.has(name));
  if (rendering.length > 0) throw badRequest(`${rendering.join(', ')} apply to rendered images, not to application/dicom (PS3.18 9.2.2)`);
  // Asked to anonymize, an archive that cannot must not send the instance as it is.
  if (query.has('anonymize')) throw badRequest('anonymize is not supported');
  const transferSyntax = one('transferSyntax') ?? EXPLICIT_LE;
  if (transferSyntax !== '*' && !isAcceptableUid(transferSyntax)) throw badRequest(`transferSyntax is not a UID: "${transferSyntax.slice(0, 80)}"`);
  return { studyUid, seriesUid, objectUid, transferSyntax };
}

export async function retrieveUriInstance(ctx: DicomWebContext, exchange: DicomWebExchange): Promise<void> {
  const request = parseUriRequest(exchange.query);
  // One instance, or a 404 (selectInstances says which, and whether a site holding it is down).
  const entry = (await selectInstances(ctx, { level: 'IMAGE', studyUid: request.studyUid, seriesUid: request.seriesUid, instanceUid: request.objectUid }))[0]!;
  const target = request.transferSyntax === '*' ? entry.transferSyntaxUid : request.transferSyntax;
  if (!canTranscodeInstance(entry, target)) {
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `instance ${entry.sopInstanceUid} (stored in ${entry.transferSyntaxUid}) cannot be sent in ${target}: ask transferSyntax=* for it as stored, or ${EXPLICIT_LE}`);
  }
  const { res } = exchange;
  // PS3.18 9.3: no transfer-syntax parameter on the media type; the file meta information says it.
  if (exchange.req.method === 'HEAD') {
    res.writeHead(200, { 'content-type': 'application/dicom' });
    res.end();
    return;
  }
  const file = await part10File(ctx, exchange, entry, target);
  const inMemory = inMemoryChunks(file.body);
  const length = inMemory === undefined ? undefined : byteLengthOf(inMemory);
  res.writeHead(200, {
    'content-type': 'application/dicom',
    'content-disposition': `attachment; filename="${entry.sopInstanceUid}.dcm"`,
    ...(length === undefined ? {} : { 'content-length': String(length) }),
  });
  try {
    await responseBodyWriter(res).writeAll(file.body);
  } catch (error) {
    if (isClientGone(error, res)) return;
    throw error;
  }
  res.end();
}
