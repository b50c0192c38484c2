/** The JSON answer every resource of the HTTP port sends: the operators' API, refusals, and DICOMweb's. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export function sendJson(res: ServerResponse, status: number, body: unknown, contentType = 'application/json; charset=utf-8'): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The request's target as a URL, dot-segments removed as every resource reads it; a path starting `//` stays a
 * path (resolved against a base, its first segment was taken for a host).
 */
export function requestUrl(req: IncomingMessage): URL {
  const target = req.url ?? '/';
  return new URL(`http://peer${target.startsWith('/') ? target : `/${target}`}`);
}

/** Responses to an `Expect: 100-continue` request whose 100 is not sent yet (see continueWhenRead). */
const continueOwed = new WeakSet<ServerResponse>();

/** Holds back the 100 (Continue) of `res`'s request until its body is asked for (`continueNow`). */
export function continueWhenRead(res: ServerResponse): void {
  continueOwed.add(res);
}

/**
 * Sends the 100 (Continue) a client waits for before its body, once a resource starts reading it: a request
 * refused on its headers alone (STOW-RS's 415) is then answered before the client sends a body it would
 * send in vain (Node answered 100 to every such request on arrival).
 */
export function continueNow(res: ServerResponse): void {
  if (!continueOwed.delete(res) || res.headersSent) return;
  res.writeContinue();
}

/** Per connection, its responses that have not closed yet (see closeWithConnection). */
const openResponses = new WeakMap<Socket, Set<ServerResponse>>();

/**
 * Makes `res` emit 'close' when its connection closes, as a response already being sent does. A response
 * queued behind another on a pipelining connection has no socket yet, and Node never tells it the
 * connection went: whatever waited for its 'finish' or 'close' (a budget of bytes held, a drain) waited
 * for good (review of helper 79's bounds: 43 such connections took the whole budget of bytes held).
 */
export function closeWithConnection(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  let responses = openResponses.get(socket);
  if (responses === undefined) {
    const created = new Set<ServerResponse>();
    responses = created;
    openResponses.set(socket, created);
    socket.once('close', () => {
      // The response being sent (it holds the socket) gets its 'close' from Node; the queued ones from here.
      for (const queued of created) {
        if (queued.socket) continue;
        queued.destroy();
        queued.emit('close');
      }
      created.clear();
    });
  }
  responses.add(res);
  res.once('close', () => responses.delete(res));
}

/** This connection's responses that have not closed yet (each with its request, `res.req`), in order. */
export function openResponsesOf(socket: Socket): ServerResponse[] {
  return [...(openResponses.get(socket) ?? [])];
}

/** Calls `then` once every response open on this connection now has closed; at once when none is open. */
export function whenResponsesClosed(socket: Socket, then: () => void): void {
  const open = openResponsesOf(socket);
  let left = open.length;
  if (left === 0) {
    then();
    return;
  }
  for (const res of open) res.once('close', () => --left === 0 && then());
}

/**
 * Writes a whole HTTP response straight to the socket (no request object to answer through) and closes
 * the connection both ways (closeBothWays).
 */
export function answerAndClose(socket: Socket, statusLine: string, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = JSON.stringify(body);
  const head = Object.entries({ 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(text)), ...headers, connection: 'close' })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  closeBothWays(socket, `HTTP/1.1 ${statusLine}\r\n${head}\r\n${text}`);
}

/**
 * Ends the connection after `last` (if any) is out, and destroys it then, or after a second: a client that
 * ignores the half-close and goes on sending would otherwise keep the connection, and count against every
 * bound on them.
 */
export function closeBothWays(socket: Socket, last?: string): void {
  const destroy = () => socket.destroy();
  if (last === undefined) socket.end(destroy);
  else socket.end(last, destroy);
  setTimeout(destroy, 1000).unref();
}
