/**
 * WADO-RS frames (PS3.18 10.4.1.1.5): /studies/{s}/series/{se}/instances/{i}/frames/{list}.
 */
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import type { DicomWebRoute } from './routes.ts';

export async function retrieveFrames(_ctx: DicomWebContext, _exchange: DicomWebExchange, _route: Extract<DicomWebRoute, { type: 'frames' }>): Promise<void> {
  throw new DicomWebError(501, 'ERR_DICOMWEB_NOT_IMPLEMENTED', 'frame retrieval is not available yet');
}
