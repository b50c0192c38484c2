/**
 * `/pacs-mesh/tunnel/1`: one DICOM association's TCP bytes over one libp2p stream.
 *
 * Wire:
 *   opener -> frame(envelope { type: 'tunnel-open', clientAddress, clientPort })
 *   server -> frame(envelope { type: 'tunnel-ready' } | { type: 'tunnel-refused', reason })
 *   then raw bytes both ways; each side half-closes its direction at TCP end, resets on error.
 * The opener waits for `tunnel-ready` before it touches the client socket, so a refused or failed tunnel
 * leaves the socket unread and the front door can still serve the association locally.
 *
 * The server side connects to its own DICOM port on 127.0.0.1 (rather than faking a net.Socket for the
 * listener): the listener and the association actor then see a real socket with every method they use
 * (setNoDelay, timeouts, destroy, half-close), at the cost of one loopback hop. The client's real address
 * is not lost: every such loopback connection is registered, and {@link tunnelledClientOf} gives the
 * listener (for logs and access control) the original client address; the front door also uses it to
 * serve tunnelled connections locally, so a tunnel never tunnels again.
 *
 * Back-pressure: socket -> stream pauses the socket while 256 KiB wait for the stream writer ('drain');
 * stream -> socket reads through the bounded StreamReader and waits for the socket's 'drain'.
 * Memory per tunnel is bounded by the reader's high-water mark + the yamux window + 256 KiB + one chunk.
 */
import { connect, type Socket } from 'node:net';
import { decodeEnvelope, encodeEnvelope } from '../codec/envelope.ts';
import type { MeshNode } from './node.ts';
import type { MeshStream } from './stream.ts';
import { countDown, countUp } from '../keyed-counts.ts';

export const TUNNEL_PROTOCOL = '/pacs-mesh/tunnel/1';
const HEADER_MAX_BYTES = 1024;
/** Client bytes read from the socket but not yet taken by the stream, before the socket is paused. */
const UPSTREAM_QUEUE_MAX_BYTES = 256 * 1024;
/**
 * How long a socket may keep its own end open once the other side's end reached it. The association at the
 * other end is over then (released, aborted, or closed by ARTIM); a direct connection is destroyed at that
 * point, but a tunnelled one waited for the client's end for ever: clients that never close theirs held a
 * connection of the DICOM port and a tunnel at the serving peer each, until neither took any more.
 */
export const DEFAULT_END_GRACE_MS = 10_000;

export type TunnelErrorCode = 'ERR_TUNNEL_REFUSED' | 'ERR_TUNNEL_HEADER' | 'ERR_TUNNEL_OPEN' | 'ERR_TUNNEL_ABANDONED';

export class TunnelError extends Error {
  static readonly NAME = 'TunnelError';
  override readonly name = TunnelError.NAME;
  readonly code: TunnelErrorCode;
  constructor(code: TunnelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export interface TunnelClient {
  /** The modality's address as the front door saw it. */
  clientAddress: string;
  clientPort: number;
  /** The peer whose front door accepted the connection. */
  viaPeerId: string;
}

interface TunnelOpen {
  type: 'tunnel-open';
  clientAddress: string;
  clientPort: number;
}

type TunnelReply = { type: 'tunnel-ready' } | { type: 'tunnel-refused'; reason: string };

export interface TunnelStats {
  bytesToStream: number;
  bytesToSocket: number;
}

export interface TunnelLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

interface TunnelledConnection {
  client: TunnelClient;
  /** The listener's end of this connection closed: the association it carried is over. */
  acceptorClosed(): void;
}

/**
 * Connections made by tunnel servers in this process to their local DICOM port, keyed by source address and
 * port and destination port (the kernel may reuse a source port towards different destinations). Bounded by
 * the live tunnels.
 */
const tunnelledConnections = new Map<string, TunnelledConnection>();
/** Loopback connects started but not yet registered (their source port is unknown until 'connect'). */
let pendingLocalConnects = 0;
const pendingWaiters = new Set<() => void>();

/**
 * The addresses tunnel servers of this process connect to (a peer started with `--host IP` listens there only).
 * A connection to a host's own address comes from that address, not from 127.0.0.1: with loopback alone
 * recognised, every tunnelled association at such a peer was taken for a direct one (hunt 106), its client
 * logged as the peer itself, and routed again by its front door (a second hop, or back to the entry).
 */
const tunnelServerHosts = new Map<string, number>();

function normalAddress(address: string | undefined): string {
  return address === undefined ? '' : address.startsWith('::ffff:') ? address.slice(7) : address;
}

function connectionKey(sourceAddress: string | undefined, sourcePort: number | undefined, destinationPort: number | undefined): string {
  return `${normalAddress(sourceAddress)}:${sourcePort ?? 0}->${destinationPort ?? 0}`;
}

/** Whether a connection from `address` can be one of this process's tunnels (others never wait for one). */
function mayBeTunnelled(address: string | undefined): boolean {
  const normal = normalAddress(address);
  return normal === '127.0.0.1' || normal === '::1' || tunnelServerHosts.has(normal);
}

function settlePending(): void {
  pendingLocalConnects--;
  if (pendingLocalConnects === 0) {
    for (const wake of pendingWaiters) wake();
    pendingWaiters.clear();
  }
}

/**
 * The real client of a connection accepted by a local DICOM listener, if the connection came through a
 * tunnel (undefined for a direct connection). Resolves at once unless a tunnel server of this process is
 * connecting on loopback at that moment (its 'connect' and the listener's 'connection' race).
 */
export async function tunnelledClientOf(socket: Socket, waitMaxMs = 1000): Promise<TunnelClient | undefined> {
  if (!mayBeTunnelled(socket.remoteAddress)) return undefined;
  const key = connectionKey(socket.remoteAddress, socket.remotePort, socket.localPort);
  const deadline = performance.now() + waitMaxMs;
  while (true) {
    const found = tunnelledConnections.get(key);
    if (found !== undefined || pendingLocalConnects === 0 || performance.now() >= deadline) return found?.client;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        pendingWaiters.delete(done);
        resolve();
      }, Math.max(1, deadline - performance.now()));
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      pendingWaiters.add(done);
    });
  }
}

/** Same, synchronously: only connections already registered. */
export function tunnelledClientOfSync(socket: Socket): TunnelClient | undefined {
  if (!mayBeTunnelled(socket.remoteAddress)) return undefined;
  return tunnelledConnections.get(connectionKey(socket.remoteAddress, socket.remotePort, socket.localPort))?.client;
}

/**
 * For a connection the local DICOM listener accepted through a tunnel (no-op for any other): once the
 * listener's end of it closes, the association is over, and the tunnel gets its end grace to deliver what
 * is still in flight before it is reset. The tunnel cannot see that end itself while a client that does not
 * read holds it paused (the FIN waits unread behind the data): a C-GET to a stalled viewer, aborted by the
 * idle timeout, kept its tunnel and the viewer's connection at the entry peer for as long as the viewer
 * kept its socket open (hunt 106), where a direct connection is closed.
 */
export function watchTunnelledAcceptor(socket: Socket): void {
  if (!mayBeTunnelled(socket.remoteAddress)) return;
  const found = tunnelledConnections.get(connectionKey(socket.remoteAddress, socket.remotePort, socket.localPort));
  if (found === undefined) return;
  if (socket.destroyed) found.acceptorClosed();
  else socket.once('close', () => found.acceptorClosed());
}

/**
 * Pipes a TCP socket and a mesh stream both ways until both directions ended; resolves with the byte
 * counts. Never throws: an error on either side resets/destroys the other.
 */
export function pipeSocketAndStream(socket: Socket, stream: MeshStream, options: { endGraceMs?: number } = {}): Promise<TunnelStats> {
  const stats: TunnelStats = { bytesToStream: 0, bytesToSocket: 0 };
  let failed = false;
  const fail = (err: Error): void => {
    if (failed) return;
    failed = true;
    stream.abort(err);
    socket.destroy();
  };
  // A reset of the stream (the other side failed) ends the tunnel now, whichever way is still waiting: nothing
  // can cross any more. Waited for the client's end (up to the end grace) or for it to read (for ever) before.
  const onStreamClosed = (evt: { error?: Error }): void => {
    if (evt.error != null) fail(evt.error);
  };
  stream.raw.addEventListener('close', onStreamClosed);
  if (stream.raw.status === 'reset' || stream.raw.status === 'aborted') fail(new Error(`tunnel stream ${stream.raw.status}`));

  // socket -> stream: writes are chained in order; the socket is paused while more than
  // UPSTREAM_QUEUE_MAX_BYTES wait for the stream (pausing on every chunk halves the throughput).
  const upstream = new Promise<void>((resolve) => {
    // Closed while the tunnel opened (the client reset it): no 'end' or 'close' will come, nothing can go either way.
    if (socket.destroyed) {
      fail(new Error('client socket closed before the tunnel opened'));
      resolve();
      return;
    }
    let ended = false;
    let writing: Promise<void> = Promise.resolve();
    let queuedBytes = 0;
    let paused = false;
    socket.on('data', (chunk: Buffer) => {
      stats.bytesToStream += chunk.byteLength;
      queuedBytes += chunk.byteLength;
      if (queuedBytes >= UPSTREAM_QUEUE_MAX_BYTES && !paused) {
        paused = true;
        socket.pause();
      }
      writing = writing
        .then(() => (failed ? undefined : stream.writer.write(chunk)))
        .then(() => {
          queuedBytes -= chunk.byteLength;
          if (paused && !failed && queuedBytes < UPSTREAM_QUEUE_MAX_BYTES) {
            paused = false;
            socket.resume();
          }
        })
        .catch((err: Error) => fail(err));
    });
    socket.once('end', () => {
      ended = true;
      writing
        .then(() => (failed ? undefined : stream.closeWrite()))
        .catch((err: Error) => fail(err))
        .finally(resolve);
    });
    socket.once('close', (hadError) => {
      // Closed without its end: destroyed here (a stop, a failed write). Nothing can reach it any more, and the
      // other side would wait for our end for ever.
      if (hadError || !ended) fail(new Error(hadError ? 'client socket closed with an error' : 'client socket destroyed before its end'));
      resolve();
    });
    socket.on('error', (err) => fail(err));
    socket.resume();
  });

  // stream -> socket
  const downstream = (async () => {
    try {
      while (true) {
        const chunk = await stream.reader.read();
        if (chunk === null) break;
        if (!socket.writable) throw new Error('client socket no longer writable');
        stats.bytesToSocket += chunk.byteLength;
        if (!socket.write(chunk)) {
          await new Promise<void>((resolve, reject) => {
            const cleanup = (): void => {
              socket.off('drain', onDrain);
              socket.off('close', onClose);
            };
            const onDrain = (): void => {
              cleanup();
              resolve();
            };
            // Also how a reset of the stream ends this wait (onStreamClosed destroys the socket).
            const onClose = (): void => {
              cleanup();
              reject(new Error('client socket closed while writing'));
            };
            if (socket.destroyed) {
              reject(new Error('client socket closed while writing'));
              return;
            }
            socket.once('drain', onDrain);
            socket.once('close', onClose);
          });
        }
      }
      if (!socket.destroyed) {
        socket.end();
        // Destroyed after the grace if its end has not come: 'close' without 'end' fails the tunnel (see above).
        const grace = setTimeout(() => socket.destroy(), options.endGraceMs ?? DEFAULT_END_GRACE_MS);
        grace.unref();
        socket.once('close', () => clearTimeout(grace));
      }
    } catch (err) {
      fail(err as Error);
    }
  })();

  return Promise.all([upstream, downstream]).then(() => {
    stream.raw.removeEventListener('close', onStreamClosed);
    // Both directions are finished: release the stream (a no-op when it already closed cleanly).
    if (!failed && stream.raw.status === 'open') stream.abort(new Error('tunnel finished'));
    if (!socket.destroyed) socket.destroySoon();
    return stats;
  });
}

export interface OpenTunnelOptions {
  /** Bound on dialling, opening the stream and the remote's connect to its DICOM port. Default 3000. */
  timeoutMs?: number;
  /** See DEFAULT_END_GRACE_MS. */
  endGraceMs?: number;
}

export interface OpenedTunnel {
  peerId: string;
  /** Resolves when the association's bytes stopped flowing both ways. */
  finished: Promise<TunnelStats>;
}

/**
 * Opens a tunnel to `peerId` for `socket` and starts piping once the remote is connected to its DICOM
 * port. Throws {@link TunnelError} (without having read from `socket`) when that fails.
 */
export async function openTunnel(node: MeshNode, peerId: string, socket: Socket, options: OpenTunnelOptions = {}): Promise<OpenedTunnel> {
  const signal = AbortSignal.timeout(options.timeoutMs ?? 3000);
  let stream: MeshStream;
  try {
    stream = await node.openStream(peerId, TUNNEL_PROTOCOL, { signal });
  } catch (err) {
    throw new TunnelError('ERR_TUNNEL_OPEN', `cannot open a tunnel to ${peerId}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const open: TunnelOpen = { type: 'tunnel-open', clientAddress: socket.remoteAddress ?? '', clientPort: socket.remotePort ?? 0 };
    await stream.writer.writeFrame(encodeEnvelope(open, { maxBytes: HEADER_MAX_BYTES }), { signal });
    const reply = decodeEnvelope<TunnelReply>(await stream.reader.readFrame(HEADER_MAX_BYTES, { signal }), { maxBytes: HEADER_MAX_BYTES });
    if (reply.type === 'tunnel-refused') {
      throw new TunnelError('ERR_TUNNEL_REFUSED', `peer ${peerId} refused the tunnel: ${String(reply.reason).slice(0, 200)}`);
    }
    if (reply.type !== 'tunnel-ready') throw new TunnelError('ERR_TUNNEL_HEADER', `unexpected tunnel reply ${String((reply as { type: string }).type).slice(0, 40)}`);
  } catch (err) {
    stream.abort(err as Error);
    if (err instanceof TunnelError) throw err;
    throw new TunnelError('ERR_TUNNEL_OPEN', `tunnel to ${peerId} failed to open: ${(err as Error).message}`, { cause: err });
  }
  socket.setNoDelay(true);
  return { peerId, finished: pipeSocketAndStream(socket, stream, options.endGraceMs === undefined ? {} : { endGraceMs: options.endGraceMs }) };
}

export interface TunnelServerInit {
  node: MeshNode;
  /** The local DICOM port tunnels are connected to. */
  localPort: number;
  /** Default 127.0.0.1. */
  localHost?: string;
  log: TunnelLogger;
  /** Tunnels served at once; more are refused (the opener then serves locally). Default 256. */
  maxTunnels?: number;
  /** Bound on reading the header and connecting to the local port. Default 3000. */
  timeoutMs?: number;
  /** See DEFAULT_END_GRACE_MS; also how long a tunnel may outlive its association at this end ({@link watchTunnelledAcceptor}). */
  endGraceMs?: number;
}

export interface TunnelServer {
  active(): number;
  stop(): Promise<void>;
}

function parseOpen(value: unknown): TunnelOpen | null {
  const v = value as Record<string, unknown>;
  if (v.type !== 'tunnel-open' || typeof v.clientAddress !== 'string' || v.clientAddress.length > 64) return null;
  if (typeof v.clientPort !== 'number' || !Number.isInteger(v.clientPort) || v.clientPort < 0 || v.clientPort > 65535) return null;
  return { type: 'tunnel-open', clientAddress: v.clientAddress, clientPort: v.clientPort };
}

function connectLocal(host: string, port: number, signal: AbortSignal): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const socket = connect({ host, port, noDelay: true });
    const onError = (err: Error): void => {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    };
    const onAbort = (): void => onError(new Error('timed out connecting to the local DICOM port'));
    socket.once('error', onError);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      socket.off('error', onError);
      signal.removeEventListener('abort', onAbort);
      socket.pause();
      resolve(socket);
    });
  });
}

/** Serves `/pacs-mesh/tunnel/1`: each stream becomes a loopback connection to the local DICOM port. */
export async function startTunnelServer(init: TunnelServerInit): Promise<TunnelServer> {
  const { node, log } = init;
  const host = init.localHost ?? '127.0.0.1';
  const maxTunnels = init.maxTunnels ?? 256;
  const endGraceMs = init.endGraceMs ?? DEFAULT_END_GRACE_MS;
  const live = new Set<Socket>();
  let stopped = false;
  const hostKey = normalAddress(host);
  countUp(tunnelServerHosts, hostKey);

  const reply = (stream: MeshStream, message: TunnelReply, signal: AbortSignal): Promise<void> =>
    stream.writer.writeFrame(encodeEnvelope(message, { maxBytes: HEADER_MAX_BYTES }), { signal });

  await node.handle(
    TUNNEL_PROTOCOL,
    async (stream) => {
      const signal = AbortSignal.timeout(init.timeoutMs ?? 3000);
      const open = parseOpen(decodeEnvelope(await stream.reader.readFrame(HEADER_MAX_BYTES, { signal }), { maxBytes: HEADER_MAX_BYTES }));
      if (open === null) throw new TunnelError('ERR_TUNNEL_HEADER', 'malformed tunnel header');
      if (stopped || live.size >= maxTunnels) {
        await reply(stream, { type: 'tunnel-refused', reason: stopped ? 'stopping' : 'too many tunnels' }, signal);
        await stream.close({ signal }).catch(() => undefined);
        return;
      }
      const client: TunnelClient = { clientAddress: open.clientAddress, clientPort: open.clientPort, viaPeerId: stream.remotePeer };
      let socket: Socket;
      let acceptorGrace: ReturnType<typeof setTimeout> | undefined;
      const acceptorClosed = (): void => {
        if (acceptorGrace !== undefined) return;
        // Still piping once it fires (the pipe's end clears it), if only towards a socket closed already.
        acceptorGrace = setTimeout(() => {
          log.warn('tunnel reset: its association ended here and what was in flight did not reach the client in time (a client that does not read)', { via: stream.remotePeer, client: `${client.clientAddress}:${client.clientPort}`, endGraceMs });
          stream.abort(new TunnelError('ERR_TUNNEL_ABANDONED', 'the association ended at the serving peer'));
          socket.destroy();
        }, endGraceMs);
        acceptorGrace.unref();
      };
      pendingLocalConnects++;
      try {
        socket = await connectLocal(host, init.localPort, signal);
        tunnelledConnections.set(connectionKey(socket.localAddress, socket.localPort, socket.remotePort), { client, acceptorClosed });
      } catch (err) {
        settlePending();
        log.warn('tunnel refused: local DICOM port unreachable', { via: stream.remotePeer, error: (err as Error).message });
        await reply(stream, { type: 'tunnel-refused', reason: 'local port unreachable' }, signal).catch(() => undefined);
        await stream.close({ signal }).catch(() => undefined);
        return;
      }
      settlePending();
      const key = connectionKey(socket.localAddress, socket.localPort, socket.remotePort);
      // Stopped while the local connection was made: stop() has destroyed the live sockets already, not this one.
      if (stopped) {
        socket.destroy();
        tunnelledConnections.delete(key);
        await reply(stream, { type: 'tunnel-refused', reason: 'stopping' }, signal).catch(() => undefined);
        await stream.close({ signal }).catch(() => undefined);
        return;
      }
      live.add(socket);
      try {
        await reply(stream, { type: 'tunnel-ready' }, signal);
        log.info('tunnel opened', { via: stream.remotePeer, client: `${client.clientAddress}:${client.clientPort}` });
        const stats = await pipeSocketAndStream(socket, stream, { endGraceMs });
        log.info('tunnel closed', { via: stream.remotePeer, client: `${client.clientAddress}:${client.clientPort}`, ...stats });
      } finally {
        clearTimeout(acceptorGrace);
        live.delete(socket);
        socket.destroy();
        tunnelledConnections.delete(key);
      }
    },
    { maxInboundStreams: maxTunnels, maxOutboundStreams: maxTunnels },
  );

  return {
    active: () => live.size,
    async stop() {
      if (stopped) return;
      stopped = true;
      countDown(tunnelServerHosts, hostKey);
      await node.unhandle(TUNNEL_PROTOCOL).catch(() => undefined);
      for (const socket of live) socket.destroy();
    },
  };
}
