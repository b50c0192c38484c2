/**
 * A simulated network for the deterministic simulation: it drops, delays, duplicates and reorders messages
 * and partitions peers into groups, all driven by one seeded PRNG. Time is whatever the caller says it is.
 */
import type { Prng } from './prng.ts';

export interface NetworkFaults {
  readonly dropProbability: number;
  readonly duplicateProbability: number;
  /** Each copy gets its own delay in [delayMinMs, delayMaxMs], which is what reorders messages. */
  readonly delayMinMs: number;
  readonly delayMaxMs: number;
}

export const noFaults: NetworkFaults = { dropProbability: 0, duplicateProbability: 0, delayMinMs: 1, delayMaxMs: 5 };

export interface Envelope<M> {
  readonly from: string;
  readonly to: string;
  readonly payload: M;
  readonly deliverAtMs: number;
  /** Send order, the tie-breaker that keeps delivery order deterministic. */
  readonly seq: number;
}

export interface NetworkStats {
  sent: number;
  delivered: number;
  dropped: number;
  duplicated: number;
  overflowed: number;
}

export class SimNetwork<M> {
  private readonly heap: Envelope<M>[] = [];
  private readonly group = new Map<string, number>();
  private seq = 0;
  faults: NetworkFaults = noFaults;
  readonly stats: NetworkStats = { sent: 0, delivered: 0, dropped: 0, duplicated: 0, overflowed: 0 };
  /** Told of every message lost (dropped, cut by a partition or a dropped connection, overflowed): a stream's sender sees its failure. */
  onLost: (e: Envelope<M>) => void = () => undefined;

  /** inFlightMax bounds the queue like a real link's buffers: beyond it, new messages are lost. */
  constructor(
    private readonly prng: Prng,
    private readonly inFlightMax: number,
  ) {}

  /** Puts each listed peer into its group; peers in different groups cannot exchange messages. */
  partition(groups: ReadonlyMap<string, number>): void {
    this.group.clear();
    for (const [peer, g] of groups) this.group.set(peer, g);
  }

  heal(): void {
    this.group.clear();
  }

  connected(a: string, b: string): boolean {
    return (this.group.get(a) ?? 0) === (this.group.get(b) ?? 0);
  }

  groupOf(peer: string): number {
    return this.group.get(peer) ?? 0;
  }

  get inFlight(): number {
    return this.heap.length;
  }

  /** `extraDelayMs` holds this message back beyond the link's delay (gossip relaying it late from a cache). */
  send(from: string, to: string, payload: M, nowMs: number, extraDelayMs = 0): void {
    this.stats.sent += 1;
    if (!this.connected(from, to) || this.prng.chance(this.faults.dropProbability)) {
      this.stats.dropped += 1;
      this.onLost({ from, to, payload, deliverAtMs: nowMs, seq: this.seq++ });
      return;
    }
    this.enqueue(from, to, payload, nowMs + extraDelayMs);
    if (this.prng.chance(this.faults.duplicateProbability)) {
      this.stats.duplicated += 1;
      this.enqueue(from, to, payload, nowMs + extraDelayMs);
    }
  }

  /** A transport event (a connection closed): neither dropped nor duplicated, only cut by a partition. */
  notify(from: string, to: string, payload: M, nowMs: number): void {
    this.enqueue(from, to, payload, nowMs);
  }

  /** A connection dropped: what was in flight between a and b, either way, is lost. */
  dropBetween(a: string, b: string): void {
    const kept: Envelope<M>[] = [];
    for (const e of this.heap.splice(0)) {
      if ((e.from === a && e.to === b) || (e.from === b && e.to === a)) {
        this.stats.dropped += 1;
        this.onLost(e);
      } else {
        kept.push(e);
      }
    }
    for (const e of kept) this.push(e);
  }

  /** Pops the next message due at or before nowMs; one cut by a partition since it was sent is lost. */
  nextDue(nowMs: number): Envelope<M> | null {
    for (;;) {
      const top = this.heap[0];
      if (top === undefined || top.deliverAtMs > nowMs) return null;
      this.pop();
      if (!this.connected(top.from, top.to)) {
        this.stats.dropped += 1;
        this.onLost(top);
        continue;
      }
      this.stats.delivered += 1;
      return top;
    }
  }

  private enqueue(from: string, to: string, payload: M, nowMs: number): void {
    if (this.heap.length >= this.inFlightMax) {
      this.stats.overflowed += 1;
      this.onLost({ from, to, payload, deliverAtMs: nowMs, seq: this.seq++ });
      return;
    }
    const delayMs = this.prng.between(this.faults.delayMinMs, this.faults.delayMaxMs);
    this.push({ from, to, payload, deliverAtMs: nowMs + delayMs, seq: this.seq++ });
  }

  private push(e: Envelope<M>): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop();
    if (last === undefined || h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && before(h[l]!, h[m]!)) m = l;
      if (r < h.length && before(h[r]!, h[m]!)) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}

function before<M>(a: Envelope<M>, b: Envelope<M>): boolean {
  return a.deliverAtMs !== b.deliverAtMs ? a.deliverAtMs < b.deliverAtMs : a.seq < b.seq;
}
