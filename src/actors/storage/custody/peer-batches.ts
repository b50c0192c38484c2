/**
 * Work for other peers, run in batches (one stream carries many instances): one batch per peer at a
 * time, and whatever is queued meanwhile forms the next. No bound of its own: every item is one of the
 * custody reducer's replications or fetches in flight, which the reducer bounds.
 */
export class PeerBatches<T> {
  private readonly queues = new Map<string, Array<{ item: T; done: () => void }>>();
  private readonly running = new Set<string>();

  constructor(
    private readonly batchMax: number,
    /** Runs one batch; must report each item's outcome itself and never throw. */
    private readonly run: (peerId: string, items: T[]) => Promise<void>,
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
    if (this.running.has(peerId)) return;
    this.running.add(peerId);
    try {
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
      this.running.delete(peerId);
    }
  }
}
