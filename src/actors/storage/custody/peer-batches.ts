/**
 * Work for other peers, run in batches (one stream carries many instances): up to `batchesPerPeerMax`
 * batches per peer at a time, and whatever is queued meanwhile forms the next. Two at a time keep the
 * pipe full while the other side commits the previous batch. A batch starts one event-loop turn after
 * the item that opened it, so items the reducer emits together (a finished batch frees many slots at
 * once) travel together instead of the first alone. No bound of its own: every item is one of the
 * custody reducer's replications or fetches in flight, which the reducer bounds.
 */
export class PeerBatches<T> {
  private readonly queues = new Map<string, Array<{ item: T; done: () => void }>>();
  private readonly running = new Map<string, number>();

  constructor(
    private readonly batchMax: number,
    /** Runs one batch; must report each item's outcome itself and never throw. */
    private readonly run: (peerId: string, items: T[]) => Promise<void>,
    private readonly batchesPerPeerMax = 1,
  ) {}

  /** Resolves once the batch holding `item` has run. */
  enqueue(peerId: string, item: T): Promise<void> {
    return new Promise<void>((done) => {
      let queue = this.queues.get(peerId);
      if (queue === undefined) this.queues.set(peerId, (queue = []));
      queue.push({ item, done });
      void this.drain(peerId);
    });
  }

  private async drain(peerId: string): Promise<void> {
    const running = this.running.get(peerId) ?? 0;
    if (running >= this.batchesPerPeerMax) return;
    this.running.set(peerId, running + 1);
    try {
      await new Promise<void>((resolve) => setImmediate(resolve));
      for (let queue = this.queues.get(peerId); queue !== undefined && queue.length > 0; queue = this.queues.get(peerId)) {
        const batch = queue.splice(0, this.batchMax);
        try {
          await this.run(peerId, batch.map((b) => b.item));
        } catch {
          // run reports every outcome itself; should it throw anyway, the reducer's retry timeout frees
          // these items, and the next batch must still run.
        } finally {
          for (const b of batch) b.done();
        }
      }
      this.queues.delete(peerId);
    } finally {
      const left = (this.running.get(peerId) ?? 1) - 1;
      if (left === 0) this.running.delete(peerId);
      else this.running.set(peerId, left);
    }
  }
}
