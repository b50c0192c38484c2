/**
 * Work for other peers, run in batches (one stream carries many instances), pipelined per peer.
 *
 * A batch goes through three phases: it *opens* (the offer and its answer: no instance bytes move), its
 * bytes *flow*, then it *waits* for its outcome (the receiver's last commits). A new batch for a peer opens
 * only while no other batch of that peer is opening and fewer than `flowingMax` are flowing, with at most
 * `runningMax` in all. So the next batch opens while the previous one's bytes flow, and its bytes are ready
 * to flow when the previous one starts waiting: the pipe between the peers does not stand idle between
 * batches. (Two batches started together used to open together, flow together and wait together; the
 * pipe was idle for a third of a catch-up.) A run reports its phases through `BatchPhases`; one that
 * reports none counts as opening until it ends, so its batches run one at a time.
 *
 * A batch starts one event-loop turn after the moment it may, so items the reducer emits together (a
 * finished batch frees many slots at once) travel together instead of the first alone. No bound of its
 * own on items: every item is one of the custody reducer's replications or fetches in flight, which the
 * reducer bounds.
 *
 * With `keyOf`, an item whose key is already queued or in a running batch of the same peer is not queued
 * again: its enqueue resolves with the one already there. The custody reducer offers an owed copy again
 * once replicationRetryMs passed without an outcome, but over a slow link one batch's bytes take longer
 * than that (128 copies of 0.5 MB at 10 Mbit/s: ~50 s), so the copy went into a second batch while the
 * first still carried it, and the receiver, not holding it yet, wanted it twice (hunt 66-67: 4.1x the
 * bytes of a catch-up over 10 Mbit/s links). The batch that carries it reports its outcome either way.
 */
export interface BatchPhases {
  /** The opening exchange is done and the batch's bytes flow: the next batch may open. */
  flowing(): void;
  /** Every byte of the batch has gone: only its outcome is awaited. */
  flowed(): void;
}

export interface PeerBatchLimits {
  /** Batches of one peer whose bytes flow at once. */
  flowingMax: number;
  /** Batches of one peer running at once, in any phase. */
  runningMax: number;
}

interface PeerQueue<T> {
  readonly items: Array<{ item: T; done: () => void }>;
  opening: number;
  flowing: number;
  running: number;
}

export class PeerBatches<T> {
  private readonly peers = new Map<string, PeerQueue<T>>();
  private readonly limits: PeerBatchLimits;
  /** With keyOf: the items of each peer queued or in a running batch, by key, with their enqueue's promise. */
  private readonly pending = new Map<string, Map<string, Promise<void>>>();

  constructor(
    private readonly batchMax: number,
    /** Runs one batch; must report each item's outcome itself and never throw. */
    private readonly run: (peerId: string, items: T[], phases: BatchPhases) => Promise<void>,
    limits: Partial<PeerBatchLimits> = {},
    /** Items of one peer with the same key are one item: queued or running once (see the class comment). */
    private readonly keyOf?: (item: T) => string,
  ) {
    this.limits = { flowingMax: 1, runningMax: 1, ...limits };
  }

  /** Resolves once the batch holding `item` (or an item of the same key already there) has run. */
  enqueue(peerId: string, item: T): Promise<void> {
    const key = this.keyOf?.(item);
    let pending = key === undefined ? undefined : this.pending.get(peerId);
    const already = key === undefined ? undefined : pending?.get(key);
    if (already !== undefined) return already;
    const promise = new Promise<void>((resolve) => {
      const done = (): void => {
        if (key !== undefined && pending !== undefined) {
          pending.delete(key);
          if (pending.size === 0 && this.pending.get(peerId) === pending) this.pending.delete(peerId);
        }
        resolve();
      };
      let peer = this.peers.get(peerId);
      if (peer === undefined) this.peers.set(peerId, (peer = { items: [], opening: 0, flowing: 0, running: 0 }));
      peer.items.push({ item, done });
      this.pump(peerId, peer);
    });
    if (key !== undefined) {
      if (pending === undefined) this.pending.set(peerId, (pending = new Map()));
      pending.set(key, promise);
    }
    return promise;
  }

  /** Items of `peerId` queued or in a running batch (with keyOf only; 0 otherwise). */
  pendingCount(peerId: string): number {
    return this.pending.get(peerId)?.size ?? 0;
  }

  /** Opens the next batch of a peer if its phases allow one. */
  private pump(peerId: string, peer: PeerQueue<T>): void {
    const { flowingMax, runningMax } = this.limits;
    if (peer.items.length > 0 && peer.opening === 0 && peer.flowing < flowingMax && peer.running < runningMax) {
      peer.opening += 1;
      peer.running += 1;
      void this.runOne(peerId, peer);
    } else if (peer.items.length === 0 && peer.running === 0) {
      this.peers.delete(peerId);
    }
  }

  private async runOne(peerId: string, peer: PeerQueue<T>): Promise<void> {
    let phase: 'opening' | 'flowing' | 'waiting' = 'opening';
    /** Moves this batch's count from its phase to `next` (phases only go forward). */
    const enter = (next: 'flowing' | 'waiting'): void => {
      if (phase === 'opening') peer.opening -= 1;
      else if (phase === 'flowing') peer.flowing -= 1;
      if (next === 'flowing') peer.flowing += 1;
      phase = next;
    };
    const phases: BatchPhases = {
      flowing: () => {
        if (phase !== 'opening') return;
        enter('flowing');
        this.pump(peerId, peer);
      },
      flowed: () => {
        if (phase === 'waiting') return;
        enter('waiting');
        this.pump(peerId, peer);
      },
    };
    await new Promise<void>((resolve) => setImmediate(resolve));
    const batch = peer.items.splice(0, this.batchMax);
    try {
      if (batch.length > 0) await this.run(peerId, batch.map((b) => b.item), phases);
    } catch {
      // run reports every outcome itself; should it throw anyway, the reducer's retry timeout frees
      // these items, and the next batch must still run.
    } finally {
      for (const b of batch) b.done();
      enter('waiting');
      peer.running -= 1;
      this.pump(peerId, peer);
    }
  }
}
