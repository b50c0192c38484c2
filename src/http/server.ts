/**
 * The operators' HTTP port: /healthz for probes, /api/mesh for the state of this peer and its mesh (and
 * / for the same as a page that reloads itself, /metrics for the same in the Prometheus text format),
 * POST /api/scrub to start a scrub pass now, POST /api/forget-site?site=NAME to decommission a site,
 * POST /api/forget-peer?peer=PEERID to take one ghost voter out of the election roster; and DICOMweb
 * (QIDO-RS, WADO-RS, STOW-RS) under /dicom-web, WADO-URI at /wado.
 */
import type { ForgetPeerOutcome } from '../actors/balancer/actor.ts';
import { listenOn } from '../actors/runtime/listen.ts';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { DicomWebContext } from './dicomweb/context.ts';
import { dicomWebPrefix, handleDicomWeb, hostPattern, wadoUriPath } from './dicomweb/service.ts';
import { answerAndClose, closeBothWays, closeWithConnection, continueWhenRead, requestUrl, openResponsesOf, whenResponsesClosed, sendJson } from './respond.ts';
import { metricsContentType, metricsText } from './metrics.ts';
import { statusPageHtml } from './status-page.ts';
import { countDown, countUp } from '../keyed-counts.ts';
import { siteNamePattern } from '../config.ts';
import { errorText, type Logger } from '../actors/runtime/logger.ts';

export type MeshStatusProvider = () => Promise<Record<string, unknown>>;

export interface HttpServerInit {
  host: string;
  port: number;
  meshStatus: MeshStatusProvider;
  isHealthy: () => boolean;
  /** Says what failed for every 500 this server answers (DICOMweb's own 500s are logged by DICOMweb). */
  log: Logger;
  /** POST /api/forget-site?site=NAME (see CustodyService.forgetSite); undefined without a mesh. */
  forgetSite?: (siteName: string) => { outcome: 'forgotten'; debtEntriesDropped: number } | { outcome: 'alive' | 'unknown' };
  /** POST /api/forget-peer?peer=PEERID (see BalancerService.forgetPeer); undefined without a mesh. */
  forgetPeer?: (peerId: string) => ForgetPeerOutcome;
  /** Connections open at once; beyond it new ones are closed. Default 1024. */
  maxConnections?: number;
  /** Connections open at once from one address; beyond it new ones get a 503 and are closed. Default a quarter of maxConnections (--http-connections-per-client). */
  maxConnectionsPerClient?: number;
  /** Starts a scrub pass now and returns the scrub's figures; undefined when the scrub is off. */
  scrubNow?: () => object | undefined;
  /** DICOMweb under /dicom-web; undefined: those paths are 404. */
  dicomWeb?: DicomWebContext;
  /** How long a kept-alive connection waits for its next request. Default 5000 (Node's); tests set less. */
  keepAliveTimeoutMs?: number;
  /** How long a request's headers may take to arrive (then 408 and the connection closes). Default 10,000; tests set less. */
  headersTimeoutMs?: number;
  /** How long a whole request (its body included) may take to arrive. Default 10 minutes; tests set less. */
  requestTimeoutMs?: number;
}

/**
 * How often Node checks the headers' and requests' timeouts: its default, 30 s, let headers trickle in
 * for up to 40 s where 10 s was set. A pass over at most 1,024 connections a second costs nothing.
 */
const timeoutsCheckIntervalMs = 1000;

export interface RunningHttpServer {
  port: number;
  /**
   * Stops accepting connections and closes idle ones at once; requests in flight get up to `graceMs` to
   * finish (a retrieve being sent, a STOW-RS waiting for its quorum), then their connections are cut.
   */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Requests of one connection handled at once. HTTP/1.1 lets a client send requests without waiting for the
 * answers (pipelining), and Node starts each as soon as it is parsed: one write of 20,000 searches ran
 * thousands at once and took 500 MiB (hunt 90), past every bound on connections. Beyond this, 503 and the
 * connection closes once the answers before it are sent.
 */
export const pipelinedRequestsMax = 16;

/** The resources this port has: a path outside them is 404 whatever the method (RFC 9110 15.5.5). */
const resources = new Set(['/', '/api/scrub', '/api/forget-site', '/api/forget-peer', '/healthz', '/api/mesh', '/metrics']);

/**
 * Why the request's Host header is not acceptable (RFC 9112 3.2: a 400 for an HTTP/1.1 request without one,
 * with more than one, or with one that is no host[:port]); undefined when it is. Node's own check answered a
 * missing one with an empty 400, and took two Host lines or any text (hunt 191).
 */
function hostRefusal(req: IncomingMessage): string | undefined {
  let hosts = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'host') hosts++;
  if (hosts > 1) return 'the request has more than one Host header';
  const host = req.headers.host;
  if (host === undefined) return req.httpVersionMajor === 1 && req.httpVersionMinor >= 1 ? 'an HTTP/1.1 request needs a Host header' : undefined;
  // Empty is allowed (a URI without an authority); otherwise host[:port].
  return host === '' || hostPattern.test(host) ? undefined : 'the Host header is no host[:port]';
}

async function route(init: HttpServerInit, req: IncomingMessage, res: ServerResponse, ownAddress: string): Promise<void> {
  // Routed by the path the resource reads (dot-segments removed, as URL does): `/dicom-web/../../etc/passwd`
  // reached DICOMweb, which named "d" as the resource not found (hunt 196).
  const path = requestUrl(req).pathname;
  if (init.dicomWeb !== undefined && (path === dicomWebPrefix || path.startsWith(`${dicomWebPrefix}/`) || path === wadoUriPath)) {
    await handleDicomWeb(init.dicomWeb, req, res, ownAddress);
    return;
  }
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
  if (path === '/api/forget-peer') {
    forgetPeer(init, req, res);
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
    case '/': {
      const page = statusPageHtml(await init.meshStatus(), init.isHealthy());
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(page), 'cache-control': 'no-store', 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'" });
      res.end(page);
      return;
    }
    case '/metrics': {
      const memory = process.memoryUsage();
      const figures = { residentMemoryBytes: memory.rss, heapUsedBytes: memory.heapUsed, startTimeSeconds: Math.round(Date.now() / 1000 - process.uptime()) };
      const body = metricsText(await init.meshStatus(), init.isHealthy(), figures);
      res.writeHead(200, { 'content-type': metricsContentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    default: // '/api/mesh'
      sendJson(res, 200, await init.meshStatus());
  }
}

/**
 * The one `name` query value of a POST to a mesh action, matching `valid`; null when the request was
 * answered with an error already (wrong method, no mesh, a missing or malformed value).
 */
function meshActionArgument(req: IncomingMessage, res: ServerResponse, action: { what: string; name: string; usage: string; meshAvailable: boolean; valid: RegExp }): string | null {
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    sendJson(res, 405, { error: `method not allowed: POST ${action.what}`, code: 'ERR_HTTP_METHOD' });
    return null;
  }
  if (!action.meshAvailable) {
    sendJson(res, 409, { error: 'this peer is not in a mesh (no --swarm-key)', code: 'ERR_NO_MESH' });
    return null;
  }
  const values = requestUrl(req).searchParams.getAll(action.name);
  const value = values.length === 1 ? values[0]! : '';
  if (!action.valid.test(value)) {
    sendJson(res, 400, { error: `name one ${action.name}: ${action.usage}`, code: 'ERR_HTTP_QUERY' });
    return null;
  }
  return value;
}

/** POST /api/forget-site?site=NAME: decommissions a site that is down, with the copies owed to it. */
function forgetSite(init: HttpServerInit, req: IncomingMessage, res: ServerResponse): void {
  const siteName = meshActionArgument(req, res, {
    what: 'forgets a site',
    name: 'site',
    usage: 'POST /api/forget-site?site=NAME',
    meshAvailable: init.forgetSite !== undefined,
    valid: siteNamePattern,
  });
  if (siteName === null || init.forgetSite === undefined) return;
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

/** POST /api/forget-peer?peer=PEERID: one peer that is gone for good stops counting as a voter. */
function forgetPeer(init: HttpServerInit, req: IncomingMessage, res: ServerResponse): void {
  const peerId = meshActionArgument(req, res, {
    what: 'forgets a peer',
    name: 'peer',
    usage: 'POST /api/forget-peer?peer=PEERID (see balancer.rosterMembers in /api/mesh)',
    meshAvailable: init.forgetPeer !== undefined,
    // PeerIds are base58btc (no 0, O, I, l).
    valid: /^[1-9A-HJ-NP-Za-km-z]{16,128}$/,
  });
  if (peerId === null || init.forgetPeer === undefined) return;
  const outcome = init.forgetPeer(peerId);
  if (outcome === 'forgotten') {
    sendJson(res, 200, { status: `peer ${peerId} leaves the election roster` });
    return;
  }
  // Keyed by outcome: a new refusal cannot be added without its answer here.
  const refusals: Record<Exclude<ForgetPeerOutcome, 'forgotten'>, { status: number; error: string; code: string }> = {
    up: { status: 409, error: `peer ${peerId} is alive or suspect: stop it first (it would be learnt again at once)`, code: 'ERR_PEER_UP' },
    self: { status: 409, error: `peer ${peerId} is this peer`, code: 'ERR_PEER_SELF' },
    pinned: { status: 409, error: 'the roster is pinned (--roster): change the flag on every peer instead', code: 'ERR_ROSTER_PINNED' },
    unknown: { status: 404, error: `peer ${peerId} is not in this peer's election roster`, code: 'ERR_PEER_UNKNOWN' },
  };
  const { status, error, code } = refusals[outcome];
  sendJson(res, status, { error, code });
}

/**
 * A request target in absolute form (`GET http://host:port/path`, as sent to a proxy) read as the path it
 * names, with its authority as the Host (RFC 9112 3.2.2: a server must accept it and ignore the Host header
 * then): every such request was a 404.
 */
function toOriginForm(req: IncomingMessage): void {
  const target = req.url ?? '/';
  if (!/^https?:\/\//i.test(target)) return;
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return;
  }
  req.url = `${url.pathname}${url.search}`;
  req.headers.host = url.host;
}

export async function startHttpServer(init: HttpServerInit): Promise<RunningHttpServer> {
  let ownAddress = `${init.host}:${init.port}`;
  let stopping = false;
  /** Connections refused by the per-address cap (see below): a request that still arrives on one is dropped. */
  const refused = new WeakSet<Socket>();
  /** Per connection, its requests not yet answered (see pipelinedRequestsMax). */
  const running = new WeakMap<Socket, number>();
  const headersTimeoutMs = init.headersTimeoutMs ?? 10_000;
  // The Host checks are this server's own (hostRefusal), so that their 400 has a JSON body as every refusal here does.
  const server: Server = createServer({ connectionsCheckingInterval: Math.min(timeoutsCheckIntervalMs, headersTimeoutMs), requireHostHeader: false }, (req, res) => {
    if (refused.has(req.socket)) {
      req.socket.destroy();
      return;
    }
    closeWithConnection(req, res);
    const badHost = hostRefusal(req);
    if (badHost !== undefined) {
      res.setHeader('connection', 'close');
      sendJson(res, 400, { error: badHost, code: 'ERR_HTTP_HOST' });
      return;
    }
    toOriginForm(req);
    const socket = req.socket;
    const ahead = running.get(socket) ?? 0;
    running.set(socket, ahead + 1);
    res.once('close', () => running.set(socket, (running.get(socket) ?? 1) - 1));
    if (ahead >= pipelinedRequestsMax) {
      res.setHeader('connection', 'close');
      res.setHeader('retry-after', '1');
      sendJson(res, 503, { error: `over ${pipelinedRequestsMax} requests sent on one connection before their answers: wait for the answers, or open another connection`, code: 'ERR_HTTP_PIPELINING' });
      return;
    }
    if (stopping) {
      // A request on a connection kept alive from before the stop: the client should ask another site.
      res.setHeader('connection', 'close');
      sendJson(res, 503, { error: 'this peer is stopping: ask another site', code: 'ERR_HTTP_STOPPING' });
      return;
    }
    // Once the stop has begun, a connection whose last response is sent closes rather than waiting for more.
    res.once('finish', () => {
      if (stopping) setImmediate(() => server.closeIdleConnections());
    });
    route(init, req, res, ownAddress).catch((error: unknown) => {
      // A bug, or a status that could not be gathered: without this line the client's 500 was all there was.
      const fields = { method: req.method, path: (req.url ?? '/').split('?')[0]!.slice(0, 200), code: 'ERR_HTTP_INTERNAL', error: errorText(error), stack: (error as Error | undefined)?.stack };
      if (!res.headersSent) {
        init.log.error('HTTP request failed: answered 500', fields);
        sendJson(res, 500, { error: errorText(error), code: 'ERR_HTTP_INTERNAL' });
      } else {
        init.log.error('HTTP request failed: response cut short', fields);
        res.destroy();
      }
    });
  });
  server.headersTimeout = headersTimeoutMs;
  // A STOW-RS upload of a large study takes its time; headersTimeout and maxConnections still bound idle clients,
  // and a connection on which nothing moves either way for 2 minutes (a stalled upload, a viewer that stopped
  // reading a retrieve) is closed, as the DICOM port's --idle-timeout does by default.
  server.timeout = 120_000;
  server.requestTimeout = init.requestTimeoutMs ?? 10 * 60_000;
  server.keepAliveTimeout = init.keepAliveTimeoutMs ?? 5000;
  // Node destroys a socket at once when its keep-alive or idle timeout fires, and after this peer's loop was
  // held (a pause, a long stall) the timer fires before the bytes that arrived meanwhile are read: a request
  // a client sent in time was reset ("fetch failed": helper 75). The socket goes only if nothing arrived by
  // the next turn of the loop, whose poll phase reads what is waiting.
  server.on('timeout', (socket: Socket) => {
    const bytesReadBefore = socket.bytesRead;
    setImmediate(() => {
      if (socket.bytesRead === bytesReadBefore) socket.destroy();
    });
  });
  // Idle or slow connections beyond this are closed at once: they must not use up the file descriptors
  // the DICOM port and the mesh need (20,000 of them made the whole peer unreachable for ~7 s).
  server.maxConnections = init.maxConnections ?? 1024;
  // One client (a script of slow uploads sending a byte now and then, which no timeout ends) took every
  // connection and kept viewers and /healthz out for as long as it went on (hunt 85): one address holds a
  // quarter at most, so the others still get in.
  const perClientMax = init.maxConnectionsPerClient ?? Math.max(1, Math.floor(server.maxConnections / 4));
  const openByClient = new Map<string, number>();
  // Ahead of the HTTP server's own listener, which attaches the request parser.
  server.prependListener('connection', (socket: Socket) => {
    const client = socket.remoteAddress ?? '';
    const open = countUp(openByClient, client);
    socket.once('close', () => countDown(openByClient, client));
    if (open <= perClientMax) return;
    // Closed both ways once the answer is out: a request it still sends is not served (review 88).
    refused.add(socket);
    answerAndClose(socket, '503 Service Unavailable', { error: `this address has ${perClientMax} connections open here, the most one client may hold: close some and retry`, code: 'ERR_HTTP_TOO_MANY_CONNECTIONS' }, { 'retry-after': '5' });
  });
  // Requests the HTTP parser refuses (headers over 16 KiB, an unknown method, a malformed line) get a JSON
  // body too, as every other refusal on this port does.
  // The connection is closed both ways once the answer is out, as Node does without this listener: a client
  // that trickled header lines past the headers' timeout and ignored the 408's half-close kept its connection
  // for as long as it went on sending (hunt 185).
  // The requests read before the refused one are answered first, in order (RFC 9112 9.3.2), and a request
  // whose body broke (a malformed chunk, the request timeout) is answered by its handler, which sees its body
  // end there: before hunt 191 the refusal went out at once, in place of the answers of requests pipelined
  // before it, and a STOW-RS whose chunked body broke after a stored instance was answered 400 "cannot be
  // read" (no instance stored) instead of its 202 naming it.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const bodyBroken = openResponsesOf(socket).find((res) => !res.req.complete);
    if (bodyBroken !== undefined && !bodyBroken.req.readableEnded) {
      // Marked complete, or the end of its stream would destroy the connection (Node aborts a request that
      // ends incomplete) before its answer is out; the answer says the connection closes.
      bodyBroken.shouldKeepAlive = false;
      bodyBroken.req.complete = true;
      bodyBroken.req.push(null);
    }
    whenResponsesClosed(socket, () => {
      if (bodyBroken !== undefined || !socket.writable) return closeBothWays(socket);
      // An unknown method stays a 400, not RFC 9110's 501: the parser cannot tell one from a line of garbage.
      const [status, reason] = error.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large'] : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout'] : [400, 'Bad Request'];
      answerAndClose(socket, `${status} ${reason}`, { error: `the request cannot be read: ${reason.toLowerCase()}${status === 431 ? ' (16 KiB of headers at most)' : ''}`, code: status === 431 ? 'ERR_HTTP_HEADERS_TOO_LARGE' : status === 408 ? 'ERR_HTTP_REQUEST_TIMEOUT' : 'ERR_HTTP_MALFORMED' });
    });
  });
  // Without these listeners Node closed a CONNECT without a word, and answered an Expect it does not know
  // with a bare 417 (hunt 191).
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    answerAndClose(socket, '405 Method Not Allowed', { error: 'CONNECT: this is no proxy', code: 'ERR_HTTP_METHOD' }, { allow: 'GET, HEAD, POST' });
  });
  // Answered by the resource: it sends the 100 when it reads the body (continueNow), and a response without one
  // closes the connection (Node's rule), since the client may still send the body it held back.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    continueWhenRead(res);
    server.emit('request', req, res);
  });
  server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) => {
    res.setHeader('connection', 'close');
    sendJson(res, 417, { error: 'the only expectation this server meets is 100-continue', code: 'ERR_HTTP_EXPECTATION' });
  });
  const port = await listenOn(server, init.port, init.host);
  ownAddress = `${init.host.includes(':') ? `[${init.host}]` : init.host}:${port}`;
  return {
    port,
    stop: (graceMs = 0) =>
      new Promise<void>((resolve) => {
        stopping = true;
        const cut = setTimeout(() => server.closeAllConnections(), graceMs);
        server.close(() => {
          clearTimeout(cut);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}
