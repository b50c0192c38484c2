/**
 * WADO-RS (PS3.18 10.4): the instances of a study, series or one instance as application/dicom parts, and
 * their metadata as DICOM JSON.
 */
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import type { DicomWebRoute } from './routes.ts';

type RetrieveRoute = Extract<DicomWebRoute, { type: 'retrieve' }>;

export async function retrieveInstances(_ctx: DicomWebContext, _exchange: DicomWebExchange, _route: RetrieveRoute): Promise<void> {
  throw new DicomWebError(501, 'ERR_DICOMWEB_NOT_IMPLEMENTED', 'WADO-RS is not available yet');
}

export async function retrieveMetadata(_ctx: DicomWebContext, _exchange: DicomWebExchange, _route: RetrieveRoute): Promise<void> {
  throw new DicomWebError(501, 'ERR_DICOMWEB_NOT_IMPLEMENTED', 'WADO-RS metadata is not available yet');
}
