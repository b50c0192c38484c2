/**
 * The operators' HTTP port: /healthz for probes, /api/mesh for the state of this peer and its mesh,
 * POST /api/scrub to start a scrub pass now, POST /api/forget-site?site=NAME to decommission a site.
 */
import { listenOn } from '../actors/runtime/listen.ts';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export type MeshStatusProvider = () => Promise<Record<string, unknown>>;

export interface HttpServerInit {
  host: string;
  port: number;
  meshStatus: MeshStatusProvider;
  isHealthy: () => boolean;
  /** POST /api/forget-site?site=NAME (see CustodyService.forgetSite); undefined without a mesh. */
  forgetSite?: (siteName: string) => { outcome: 'forgotten'; debtEntriesDropped: number } | { outcome: 'alive' | 'unknown' };
  /** Connections open at once; beyond it new ones are closed. Default 1024. */
  maxConnections?: number;
  /** Starts a scrub pass now and returns the scrub's figures; undefined when the scrub is off. */
  scrubNow?: () => object | undefined;
}

export interface RunningHttpServer {
  port: number;
  stop(): Promise<void>;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The resources this port has: a path outside them is 404 whatever the method (RFC 9110 15.5.5). */
const resources = new Set(['/api/scrub', '/api/forget-site', '/healthz', '/api/mesh']);

async function route(init: HttpServerInit, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0] ?? '/';
  if (!resources.has(path)) {
    sendJson(res, 404, { error: `no resource at ${path.slice(0, 200)}`, code: 'ERR_HTTP_NOT_FOUND' });
    return;
  }
  if (path === '/api/scrub') {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      sendJson(res, 405, { error: 'method not allowed: POST starts a scrub pass', code: 'ERR_HTTP_METHOD' });
      return;
    }
    const stats = init.scrubNow?.();
    if (stats === undefined) sendJson(res, 409, { error: 'the scrub is off (--scrub-mb-per-s 0)', code: 'ERR_SCRUB_OFF' });
    else sendJson(res, 202, { status: 'scrub pass starting (unless one is running)', scrub: stats });
    return;
  }
  if (path === '/api/forget-site') {
    forgetSite(init, req, res);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    sendJson(res, 405, { error: 'method not allowed', code: 'ERR_HTTP_METHOD' });
    return;
  }
  switch (path) {
    case '/healthz':
      if (init.isHealthy()) sendJson(res, 200, { status: 'ok' });
      else sendJson(res, 503, { status: 'starting or stopping' });
      return;
    default: // '/api/mesh'
      sendJson(res, 200, await init.meshStatus());
  }
}

/** POST /api/forget-site?site=NAME: decommissions a site that is down, with the copies owed to it. */
function forgetSite(init: HttpServerInit, req: IncomingMessage, res: ServerResponse): void {
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    sendJson(res, 405, { error: 'method not allowed: POST forgets a site', code: 'ERR_HTTP_METHOD' });
    return;
  }
  if (init.forgetSite === undefined) {
    sendJson(res, 409, { error: 'this peer is not in a mesh (no --swarm-key): it owes no copies', code: 'ERR_NO_MESH' });
    return;
  }
  const sites = new URL(req.url ?? '/', 'http://peer').searchParams.getAll('site');
  const siteName = sites.length === 1 ? sites[0]! : '';
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(siteName)) {
    sendJson(res, 400, { error: 'name one site: POST /api/forget-site?site=NAME', code: 'ERR_HTTP_QUERY' });
    return;
  }
  const result = init.forgetSite(siteName);
  switch (result.outcome) {
    case 'forgotten':
      sendJson(res, 200, { status: `site ${siteName} forgotten`, debtEntriesDropped: result.debtEntriesDropped });
      return;
    case 'alive':
      sendJson(res, 409, { error: `site ${siteName} has a peer alive: stop it first (it would be learnt again at once)`, code: 'ERR_SITE_ALIVE' });
      return;
    case 'unknown':
      sendJson(res, 404, { error: `site ${siteName} is not known here`, code: 'ERR_SITE_UNKNOWN' });
      return;
    default: {
      const unreachable: never = result;
      throw new Error(`unhandled outcome ${JSON.stringify(unreachable)}`);
    }
  }
}

export async function startHttpServer(init: HttpServerInit): Promise<RunningHttpServer> {
  const server: Server = createServer((req, res) => {
    route(init, req, res).catch((error: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: error instanceof Error ? error.message : String(error), code: 'ERR_HTTP_INTERNAL' });
      else res.destroy();
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  // Idle or slow connections beyond this are closed at once: they must not use up the file descriptors
  // the DICOM port and the mesh need (20,000 of them made the whole peer unreachable for ~7 s).
  server.maxConnections = init.maxConnections ?? 1024;
  const port = await listenOn(server, init.port, init.host);
  return {
    port,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
