/**
 * A TCP proxy that emulates a slow WAN link on loopback, without root or tc: each direction of each
 * connection is a bottleneck of `bytesPerSecond` (the link's serialisation, bytes leaving in order) with a
 * queue of at most `queueBytesMax` in front of it (a router's buffer), plus `latencyMs` one way.
 *
 * What arrives while the queue is full stays unread in the proxy's socket, so TCP pushes back on the
 * sender as a real bottleneck does; what the kernel holds on loopback in front of the queue (the sender's
 * send buffer, the proxy's receive buffer) is the rest of the delay a byte sees, as on a real link the
 * sender's socket buffer is. Counters per direction say what went through, for measurements.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { portBelowEphemeralRange } from './ports.ts';

export interface ThrottleProxyInit {
  /** Where connections are forwarded. */
  targetPort: number;
  targetHost?: string;
  /**
   * Port to listen on (127.0.0.1); 0 picks one from the ephemeral range. Default: a free one below it (ports.ts),
   * where no other test's peer redials: a stray connection's 72 bytes once counted in a test's forwardBytes.
   */
  listenPort?: number;
  /** The link's rate, each direction on its own (bytes per second). */
  bytesPerSecond: number;
  /** One-way delay added to every byte (ms). Default 0. */
  latencyMs?: number;
  /** Bytes waiting for the bottleneck before the proxy stops reading (a router's buffer). Default 64 KiB. */
  queueBytesMax?: number;
}

/** Bytes that went each way, over all connections, and the connections seen. */
export interface ThrottleProxyStats {
  /** From the connecting side to the target. */
  forwardBytes: number;
  /** From the target back to the connecting side. */
  backwardBytes: number;
  connectionsOpened: number;
  connectionsClosed: number;
}

export interface ThrottleProxy {
  readonly port: number;
  readonly stats: ThrottleProxyStats;
  /** Changes the rate of every direction from now on (bytes per second). */
  setBytesPerSecond(bytesPerSecond: number): void;
  /** Closes the listener and every connection. */
  close(): Promise<void>;
}

/** Largest piece scheduled at once: at 100 KB/s, ~160 ms of the link. */
const pieceBytesMax = 16 * 1024;

/** One direction of one connection: reads `from`, delivers to `to` at the link's pace. */
class ThrottledDirection {
  /** When the bottleneck is free again (performance.now() ms): what is queued leaves by then. */
  private linkFreeAtMs = 0;
  /** Pieces in order, with the time each reaches the other end; bounded by the queue and the latency. */
  private readonly deliveries: Array<{ atMs: number; bytes: Buffer }> = [];
  private timer: NodeJS.Timeout | undefined;
  private resumeTimer: NodeJS.Timeout | undefined;
  private ended = false;
  private done = false;

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly link: { bytesPerSecond: number; latencyMs: number; queueBytesMax: number },
    private readonly counted: (bytes: number) => void,
  ) {
    from.on('data', (chunk: Buffer) => this.accept(chunk));
    from.on('end', () => {
      this.ended = true;
      this.flush();
    });
  }

  private accept(chunk: Buffer): void {
    for (let at = 0; at < chunk.byteLength; at += pieceBytesMax) {
      const bytes = chunk.subarray(at, Math.min(chunk.byteLength, at + pieceBytesMax));
      const nowMs = performance.now();
      this.linkFreeAtMs = Math.max(this.linkFreeAtMs, nowMs) + (bytes.byteLength * 1000) / this.link.bytesPerSecond;
      this.deliveries.push({ atMs: this.linkFreeAtMs + this.link.latencyMs, bytes });
    }
    this.schedule();
    // The queue: what has not yet left the bottleneck. Past its bound, TCP holds the sender back.
    const queuedMs = this.linkFreeAtMs - performance.now();
    const queueMs = (this.link.queueBytesMax * 1000) / this.link.bytesPerSecond;
    if (queuedMs > queueMs && !this.from.isPaused()) {
      this.from.pause();
      this.resumeTimer = setTimeout(() => {
        this.resumeTimer = undefined;
        if (!this.done) this.from.resume();
      }, queuedMs - queueMs / 2);
    }
  }

  private schedule(): void {
    if (this.timer !== undefined || this.deliveries.length === 0) return;
    const waitMs = Math.max(0, this.deliveries[0]!.atMs - performance.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, waitMs);
  }

  private flush(): void {
    const nowMs = performance.now();
    while (this.deliveries.length > 0 && this.deliveries[0]!.atMs <= nowMs + 1) {
      const { bytes } = this.deliveries.shift()!;
      if (!this.to.destroyed) this.to.write(bytes);
      this.counted(bytes.byteLength);
    }
    if (this.deliveries.length > 0) this.schedule();
    else if (this.ended && !this.to.destroyed) this.to.end();
  }

  stop(): void {
    this.done = true;
    clearTimeout(this.timer);
    clearTimeout(this.resumeTimer);
    this.deliveries.length = 0;
  }
}

/** Starts a proxy on 127.0.0.1; every connection to it is forwarded to the target through the slow link. */
export async function startThrottleProxy(init: ThrottleProxyInit): Promise<ThrottleProxy> {
  const link = { bytesPerSecond: init.bytesPerSecond, latencyMs: init.latencyMs ?? 0, queueBytesMax: init.queueBytesMax ?? 64 * 1024 };
  const stats: ThrottleProxyStats = { forwardBytes: 0, backwardBytes: 0, connectionsOpened: 0, connectionsClosed: 0 };
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    stats.connectionsOpened += 1;
    const upstream = connect({ host: init.targetHost ?? '127.0.0.1', port: init.targetPort });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('error', () => undefined);
    }
    const forward = new ThrottledDirection(client, upstream, link, (n) => (stats.forwardBytes += n));
    const backward = new ThrottledDirection(upstream, client, link, (n) => (stats.backwardBytes += n));
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      stats.connectionsClosed += 1;
      forward.stop();
      backward.stop();
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', close);
    upstream.on('close', close);
  });
  const listenPort = init.listenPort ?? (await portBelowEphemeralRange());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    stats,
    setBytesPerSecond(bytesPerSecond) {
      link.bytesPerSecond = bytesPerSecond;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
