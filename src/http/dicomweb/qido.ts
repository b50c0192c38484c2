/**
 * QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered from the catalog as C-FIND is.
 */
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import type { DicomWebRoute } from './routes.ts';

export async function searchEntities(_ctx: DicomWebContext, _exchange: DicomWebExchange, _route: Extract<DicomWebRoute, { type: 'search' }>): Promise<void> {
  throw new DicomWebError(501, 'ERR_DICOMWEB_NOT_IMPLEMENTED', 'QIDO-RS is not available yet');
}
