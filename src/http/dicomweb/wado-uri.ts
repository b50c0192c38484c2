/**
 * WADO-URI (PS3.18 chapter 9), the service older web viewers (cornerstone's wadouri loader, OHIF in that
 * mode, Weasis through a manifest) load instances with: GET /wado?requestType=WADO&studyUID=...&seriesUID=...
 * &objectUID=...&contentType=application/dicom, answered with the instance as a DICOM file; or a rendered
 * image (image/jpeg, the default when contentType is absent, or image/png: see rendered.ts).
 */
import { isAcceptableUid } from '../../codec/uid.ts';
import { EXPLICIT_LE, canTranscodeInstance } from '../../codec/transcode-targets.ts';
import { acceptableRanges, parseAccept } from './accept.ts';
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { selectInstances } from './instances.ts';
import { chooseRenderedType, defaultJpegQuality, numberParameter, sendRendered, type RenderedMediaType, type RenderedRequest } from './rendered.ts';
import { renderedSideMax, type RenderOptions } from '../../codec/render.ts';
import { part10File, sendPart10File } from './wado.ts';

export interface UriRequest {
  kind: 'dicom';
  studyUid: string;
  seriesUid: string;
  objectUid: string;
  /** The transfer syntax asked (PS3.18 9.2.2.4: Explicit VR Little Endian when absent), or '*': as stored. */
  transferSyntax: string;
}

/**
 * A rendered image asked (contentType image/jpeg, the default, or image/png); `defaulted` when no contentType was
 * given, and then `fileTransferSyntax` is the syntax of the DICOM file sent instead for an object without pixels.
 */
export type RenderedUriRequest = { kind: 'rendered'; defaulted: boolean; fileTransferSyntax: string } & RenderedRequest;

/** Parameters of rendered representations (PS3.18 9.2.2): absent from a request for application/dicom. */
const renderingParameters = ['annotation', 'rows', 'columns', 'region', 'windowCenter', 'windowWidth', 'frameNumber', 'imageQuality', 'presentationUID', 'presentationSeriesUID', 'iccprofile'];

/** What a contentType list asks first: the DICOM file or a rendered type (PS3.18 9.2.2: image/jpeg when absent). */
function chooseContentType(contentType: string | undefined): 'application/dicom' | RenderedMediaType | undefined {
  if (contentType === undefined) return 'image/jpeg';
  for (const range of acceptableRanges(parseAccept(contentType))) {
    if ((range.type === 'application' && (range.subtype === 'dicom' || range.subtype === '*')) || range.type === '*') return 'application/dicom';
    const rendered = chooseRenderedType([range]);
    if (rendered !== undefined) return rendered;
  }
  return undefined;
}

/** A WADO-URI request's parameters, checked (pure): DicomWebError 400 or 406 naming what is wrong. */
export function parseUriRequest(query: URLSearchParams): UriRequest | RenderedUriRequest {
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
  // Asked to anonymize, an archive that cannot must not send the instance as it is.
  if (query.has('anonymize')) throw badRequest('anonymize is not supported');
  // An empty contentType (a viewer's template with nothing filled in) asks nothing: the default, as when absent.
  const contentType = one('contentType') || undefined;
  const transferSyntax = one('transferSyntax') ?? EXPLICIT_LE;
  if (transferSyntax !== '*' && !isAcceptableUid(transferSyntax)) throw badRequest(`transferSyntax is not a UID: "${transferSyntax.slice(0, 80)}"`);
  const chosen = chooseContentType(contentType);
  if (chosen === undefined) {
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `instances are sent as application/dicom, image/jpeg or image/png, not ${contentType!.slice(0, 80)}`);
  }
  if (chosen !== 'application/dicom') {
    return { kind: 'rendered', defaulted: contentType === undefined, fileTransferSyntax: transferSyntax, studyUid, seriesUid, instanceUid: objectUid, mediaType: chosen, ...renderedUriParameters(one, badRequest) };
  }
  const rendering = renderingParameters.filter((name) => query.has(name));
  if (rendering.length > 0) throw badRequest(`${rendering.join(', ')} apply to rendered images, not to application/dicom (PS3.18 9.2.2)`);
  return { kind: 'dicom', studyUid, seriesUid, objectUid, transferSyntax };
}

/** frameNumber, windowCenter / windowWidth, rows / columns, imageQuality (PS3.18 9.2.2); region and presentation states are refused. */
function renderedUriParameters(one: (name: string) => string | undefined, badRequest: (message: string) => DicomWebError): Pick<RenderedRequest, 'frameNumber' | 'options' | 'quality'> {
  for (const name of ['region', 'presentationUID', 'presentationSeriesUID']) {
    if (one(name) !== undefined) throw badRequest(`${name} is not supported for rendered images`);
  }
  const options: RenderOptions = {};
  const [center, width] = [one('windowCenter'), one('windowWidth')];
  if ((center === undefined) !== (width === undefined)) throw badRequest('windowCenter and windowWidth go together');
  if (center !== undefined && width !== undefined) options.window = { center: numberParameter('windowCenter', center, -1e9, 1e9), width: numberParameter('windowWidth', width, 1, 1e9), function: 'LINEAR' };
  const rows = one('rows');
  const columns = one('columns');
  if (rows !== undefined) options.maxRows = numberParameter('rows', rows, 1, renderedSideMax);
  if (columns !== undefined) options.maxColumns = numberParameter('columns', columns, 1, renderedSideMax);
  const frameNumber = one('frameNumber');
  const quality = one('imageQuality');
  return {
    frameNumber: frameNumber === undefined ? 1 : frameNumberOf(frameNumber, badRequest),
    options,
    quality: quality === undefined ? defaultJpegQuality : numberParameter('imageQuality', quality, 1, 100),
  };
}

export async function retrieveUriInstance(ctx: DicomWebContext, exchange: DicomWebExchange): Promise<void> {
  const parsed = parseUriRequest(exchange.query);
  let request: UriRequest;
  if (parsed.kind === 'rendered') {
    try {
      await sendRendered(ctx, exchange, parsed);
      return;
    } catch (error) {
      // No contentType asked for an object without pixels (a report, a PDF): the DICOM file, as PS3.18 9.2.2 allows.
      if (!(parsed.defaulted && error instanceof DicomWebError && error.code === 'ERR_DICOMWEB_NO_PIXEL_DATA')) throw error;
      request = { kind: 'dicom', studyUid: parsed.studyUid, seriesUid: parsed.seriesUid, objectUid: parsed.instanceUid, transferSyntax: parsed.fileTransferSyntax };
    }
  } else {
    request = parsed;
  }
  // One instance, or a 404 (selectInstances says which, and whether a site holding it is down).
  const entry = (await selectInstances(ctx, { level: 'IMAGE', studyUid: request.studyUid, seriesUid: request.seriesUid, instanceUid: request.objectUid }))[0]!;
  const target = request.transferSyntax === '*' ? entry.transferSyntaxUid : request.transferSyntax;
  if (!canTranscodeInstance(entry, target)) {
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `instance ${entry.sopInstanceUid} (stored in ${entry.transferSyntaxUid}) cannot be sent in ${target}: ask transferSyntax=* for it as stored, or ${EXPLICIT_LE}`);
  }
  // PS3.18 9.3: no transfer-syntax parameter on the media type; the file meta information says it.
  const headers = { 'content-type': 'application/dicom', 'content-disposition': `attachment; filename="${entry.sopInstanceUid}.dcm"` };
  await sendPart10File(exchange, headers, entry, target, () =>
    part10File(ctx, exchange, entry, target).catch((error: unknown) => {
      // The conversion's message names WADO-RS's parameter (transfer-syntax=*): WADO-URI's is transferSyntax.
      if (!(error instanceof DicomWebError) || error.code !== 'ERR_DICOMWEB_NOT_CONVERTIBLE') throw error;
      const reason = error.cause instanceof Error ? error.cause.message : error.message;
      throw new DicomWebError(406, error.code, `instance ${entry.sopInstanceUid} (stored as ${entry.transferSyntaxUid}) cannot be converted to ${target}: ${reason}; it can be had as stored (transferSyntax=*)`);
    }),
  );
}

function frameNumberOf(text: string, badRequest: (message: string) => DicomWebError): number {
  if (!/^[0-9]{1,9}$/.test(text) || Number(text) < 1) throw badRequest(`frameNumber is "${text.slice(0, 40)}", not a frame number from 1`);
  return Number(text);
}
