/**
 * DICOMweb (PS3.18) on the HTTP port, under /dicom-web: QIDO-RS searches, WADO-RS retrieves and STOW-RS
 * stores, for viewers and systems that speak HTTP rather than DIMSE. Each request is routed by a pure
 * function, then served by its service; every refusal is an HTTP status with a message and a stable code.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { requestUrl, sendJson } from '../respond.ts';
import { errorText } from '../../actors/runtime/logger.ts';
import { DicomWebError, type DicomWebContext, type DicomWebExchange, type DicomWebStats } from './context.ts';
import { retrieveBulkData } from './bulkdata.ts';
import { retrieveFrames } from './frames.ts';
import { parseRenderedQuery, renderedTypeAsked, sendRendered, sendThumbnail } from './rendered.ts';
import { searchEntities } from './qido.ts';
import { routeOf, type DicomWebRoute } from './routes.ts';
import { storeInstances } from './stow.ts';
import { retrieveInstances, retrieveMetadata } from './wado.ts';
import { retrieveUriInstance } from './wado-uri.ts';

export const dicomWebPrefix = '/dicom-web';
/** WADO-URI also at the server's root, where Orthanc and most viewers' wadoUriRoot expect it. */
export const wadoUriPath = '/wado';

/**
 * A Host header fit to start the URLs a response names (a reg-name may hold "_": Docker's service names);
 * anything else falls back to the address the client reached (hostReached).
 */
export const hostPattern = /^[A-Za-z0-9._-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$/;

/**
 * This peer's address for the URLs of a request without a usable Host (HTTP/1.0): the one it listens on, or,
 * bound to every interface, the one this connection reached (hunt 191: URLs named http://0.0.0.0:8042).
 */
function hostReached(req: IncomingMessage, ownAddress: string): string {
  const local = req.socket.localAddress?.replace(/^::ffff:/, '');
  if (!(ownAddress.startsWith('0.0.0.0:') || ownAddress.startsWith('[::]:')) || local === undefined) return ownAddress;
  return `${local.includes(':') ? `[${local}]` : local}:${req.socket.localPort}`;
}

/**
 * The scheme the client used: https behind a TLS proxy that says so (X-Forwarded-Proto, or Forwarded's proto),
 * else http (hunt 191: behind the README's TLS proxy every URL named http).
 */
function schemeOf(req: IncomingMessage): 'http' | 'https' {
  const forwardedProto = req.headers['x-forwarded-proto'];
  const first = (Array.isArray(forwardedProto) ? forwardedProto[0] : forwardedProto)?.split(',')[0]?.trim().toLowerCase();
  if (first === 'https') return 'https';
  const forwarded = req.headers.forwarded?.split(',')[0] ?? '';
  return /(^|;)\s*proto="?https"?\s*(;|$)/i.test(forwarded) ? 'https' : 'http';
}

export async function handleDicomWeb(ctx: DicomWebContext, req: IncomingMessage, res: ServerResponse, ownAddress: string): Promise<void> {
  const url = requestUrl(req);
  const routed = routeOf(req.method ?? 'GET', url.pathname === wadoUriPath ? wadoUriPath : url.pathname.slice(dicomWebPrefix.length));
  countOutcome(ctx.stats, res);
  if (!routed.ok) {
    if (routed.allow !== undefined) res.setHeader('allow', routed.allow);
    sendJson(res, routed.httpStatus, { error: routed.message, code: routed.code });
    return;
  }
  const host = req.headers.host !== undefined && hostPattern.test(req.headers.host) ? req.headers.host : hostReached(req, ownAddress);
  const exchange: DicomWebExchange = { req, res, query: url.searchParams, baseUrl: `${schemeOf(req)}://${host}${dicomWebPrefix}` };
  const route = routed.route;
  countRequest(ctx.stats, route);
  // What a search or retrieve answers (its representation, or a 406) depends on Accept: a cache in front (the
  // README's proxy) must not hand one client's answer to another (RFC 9110 12.5.5; only frames and rendered
  // images said so before hunt 196).
  if (route.type !== 'store' && route.type !== 'uri') res.setHeader('vary', 'Accept');
  try {
    switch (route.type) {
      case 'search':
        await searchEntities(ctx, exchange, route);
        return;
      case 'retrieve':
        if (route.metadata) await retrieveMetadata(ctx, exchange, route);
        else await retrieveInstances(ctx, exchange, route);
        return;
      case 'frames':
        await retrieveFrames(ctx, exchange, route);
        return;
      case 'rendered':
        await sendRendered(ctx, exchange, { ...route, mediaType: renderedTypeAsked(exchange), ...parseRenderedQuery(exchange.query) });
        return;
      case 'thumbnail':
        await sendThumbnail(ctx, exchange, route, renderedTypeAsked(exchange));
        return;
      case 'bulkdata':
        await retrieveBulkData(ctx, exchange, route);
        return;
      case 'store':
        await storeInstances(ctx, exchange, route);
        return;
      case 'uri':
        await retrieveUriInstance(ctx, exchange);
        return;
      default: {
        const unreachable: never = route;
        throw new Error(`unhandled route ${JSON.stringify(unreachable)}`);
      }
    }
  } catch (error) {
    // Once a multipart body has started, a status can no longer be sent: the connection is cut, so the
    // client sees a broken response rather than a short one that looks whole.
    if (res.headersSent) {
      ctx.log.warn('DICOMweb response cut short', { path: url.pathname.slice(0, 200), error: error instanceof Error ? error.message : String(error) });
      res.destroy();
      return;
    }
    // A fault answered here (a 500) was only counted: the operator had the count in /api/mesh and no line
    // saying what failed; refusals (4xx) and busy answers (503) are the client's to read. A bug (any other
    // error) is answered 500 and logged by the HTTP server, once.
    if (!(error instanceof DicomWebError)) throw error;
    if (error.httpStatus >= 500 && error.httpStatus !== 503) ctx.log.error('DICOMweb request failed', { path: url.pathname.slice(0, 200), code: error.code, error: errorText(error) });
    if (error.httpStatus === 503) res.setHeader('retry-after', '5');
    sendJson(res, error.httpStatus, { error: error.message, code: error.code });
  }
}

function countRequest(stats: DicomWebStats, route: DicomWebRoute): void {
  switch (route.type) {
    case 'search':
      stats.searches++;
      return;
    case 'retrieve':
      if (route.metadata) stats.metadata++;
      else stats.retrieves++;
      return;
    case 'uri':
      stats.retrieves++;
      return;
    case 'frames':
    case 'rendered':
    case 'thumbnail':
    case 'bulkdata':
      stats.frames++;
      return;
    case 'store':
      stats.stores++;
      return;
    default: {
      const unreachable: never = route;
      throw new Error(`unhandled route ${JSON.stringify(unreachable)}`);
    }
  }
}

/** Counts how the response ends: refused, failed, or cut before it was whole. */
function countOutcome(stats: DicomWebStats, res: ServerResponse): void {
  res.once('close', () => {
    if (!res.writableFinished) stats.cutShort++;
    else if (res.statusCode >= 500 && res.statusCode !== 503) stats.failed++;
    else if (res.statusCode >= 400) stats.refused++;
  });
}
