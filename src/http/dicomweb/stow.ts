/**
 * STOW-RS (PS3.18 10.5): POST /studies[/{study}] with multipart/related; type="application/dicom".
 */
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import type { DicomWebRoute } from './routes.ts';

export async function storeInstances(_ctx: DicomWebContext, _exchange: DicomWebExchange, _route: Extract<DicomWebRoute, { type: 'store' }>): Promise<void> {
  throw new DicomWebError(501, 'ERR_DICOMWEB_NOT_IMPLEMENTED', 'STOW-RS is not available yet');
}
