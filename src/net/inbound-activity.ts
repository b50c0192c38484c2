/**
 * When each protected connection last received bytes: the proof of life that decides whether a connection
 * whose pings go unanswered is dead. A ping waits behind every byte queued before it in the same TCP
 * connection; on a slow link (3 Mbit/s) a few MiB of copies in flight held pings past their timeout, and
 * libp2p's connection monitor aborted a connection that was delivering data the whole time (helper 68:
 * both sites marked each other dead, every stream of the connection failed). Any byte arriving proves the
 * other side and the path are alive; a half-open connection, or a peer that stands still, sends none.
 *
 * Connections are known by their remote address without its `/p2p/` part, as the pnet layer (which sees
 * every byte) and libp2p's connection object (which can be aborted) both name it. Two connections with the
 * same remote address (rare: each TCP connection has its own port on one side) share one entry, alive
 * while either receives.
 */
export interface InboundActivityInit {
  /**
   * Milliseconds of this process's run time (see RunTimeClock): a wall clock step, or time in which this
   * process could not read what arrived, must not make a connection look silent. Default performance.now().
   */
  nowMs?: () => number;
}

/**
 * The time this process could run: the monotonic clock less the time a check due every `periodMs` came late
 * (its event loop stood still: SIGSTOP, a long GC, a loaded machine's scheduler), in which nothing that
 * arrived could be read. A gap still open counts too, so the clock stands still while the loop is late and
 * never runs backwards at the next check. On the monotonic clock alone, turns of the loop each a little
 * late (under two checks, which counted as a stall) added up: at 0.25 s late per turn, two in-process peers
 * pinging every 0.2 s judged each other silent for 0.8 s and cut their connection (hunt 114, hunt 119).
 */
export class RunTimeClock {
  private lateMs = 0;
  private checkedAtMs: number;

  constructor(
    private readonly periodMs: number,
    private readonly monotonicMs: () => number = () => performance.now(),
  ) {
    this.checkedAtMs = monotonicMs();
  }

  /** The periodic check ran (every periodMs): how late it came is time this process did not run. */
  checked(): void {
    const nowMs = this.monotonicMs();
    this.lateMs += this.openLateMs(nowMs);
    this.checkedAtMs = nowMs;
  }

  nowMs(): number {
    const nowMs = this.monotonicMs();
    return nowMs - this.lateMs - this.openLateMs(nowMs);
  }

  private openLateMs(nowMs: number): number {
    return Math.max(0, nowMs - this.checkedAtMs - this.periodMs);
  }
}

/** The key both layers derive from a remote multiaddr: the address without the peer ID. */
export function connectionAddressKey(remoteAddr: string): string {
  const at = remoteAddr.indexOf('/p2p/');
  return at < 0 ? remoteAddr : remoteAddr.slice(0, at);
}

/** One connection's side of the record: what the pnet layer calls as bytes arrive and when it closes. */
export interface ConnectionActivity {
  /** Bytes arrived (called for every chunk: one clock read and one field write). */
  received(): void;
  /** The connection closed (once; later calls do nothing). */
  closed(): void;
}

export class InboundActivity {
  private readonly nowMs: () => number;
  /** One entry per open connection address; deleted when its last connection closes (bounded by connections). */
  private readonly entries = new Map<string, { connections: number; lastInboundMs: number }>();

  constructor(init: InboundActivityInit = {}) {
    this.nowMs = init.nowMs ?? (() => performance.now());
  }

  /** A connection opened: it counts as heard now (its handshake just arrived). */
  opened(remoteAddr: string): ConnectionActivity {
    const key = connectionAddressKey(remoteAddr);
    let entry = this.entries.get(key);
    if (entry === undefined) this.entries.set(key, (entry = { connections: 0, lastInboundMs: 0 }));
    entry.connections += 1;
    entry.lastInboundMs = this.nowMs();
    const tracked = entry;
    let open = true;
    return {
      received: () => {
        tracked.lastInboundMs = this.nowMs();
      },
      closed: () => {
        if (!open) return;
        open = false;
        tracked.connections -= 1;
        if (tracked.connections <= 0 && this.entries.get(key) === tracked) this.entries.delete(key);
      },
    };
  }

  /** How long nothing has arrived on the connection at this address; undefined for one not tracked here. */
  silentForMs(remoteAddr: string): number | undefined {
    const entry = this.entries.get(connectionAddressKey(remoteAddr));
    return entry === undefined ? undefined : this.nowMs() - entry.lastInboundMs;
  }

  get size(): number {
    return this.entries.size;
  }
}
