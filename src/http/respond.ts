/** The JSON answer every resource of the HTTP port sends: the operators' API, refusals, and DICOMweb's. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export function sendJson(res: ServerResponse, status: number, body: unknown, contentType = 'application/json; charset=utf-8'): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
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
