/**
 * Copies this node is sending to each peer (pushes, replicate-batches; not the answers to its pulls, whose
 * end the answering side does not see), so that a
 * small message to that peer can tell "queued behind bytes still on their way" from "lost". Every byte a
 * copy hands to the connection is ahead of anything sent after it, and on a slow link that is seconds:
 * at 100 KB/s through test/support/throttle-proxy.ts, custody messages took 2.5-4.8 s behind one copy and
 * 9-13 s behind three (hunt 121), where a copy's stream takes up to its window (4 MiB) at once and the
 * kernel holds more in front of the link. A copy's answer comes only once all its bytes arrived, so once
 * no copy to a peer is in flight nothing of ours is queued ahead of a message to it.
 * One per node's sending side (custody creates it with its push streams and stops it with them), one
 * entry per peer, bounded.
 */

/** Peers tracked at most (a mesh has far fewer; past it, peers with no copy in flight are forgotten). */
const peersTrackedMax = 4096;

interface PeerBulk {
  inFlight: number;
  /** performance.now() when the last copy in flight ended. */
  endedAtMs: number;
}

export class BulkInFlight {
  private readonly peers = new Map<string, PeerBulk>();

  /** Peers tracked now. */
  get peerCount(): number {
    return this.peers.size;
  }

  /** A copy to `peerId` starts; call the function returned once it ended, whatever its outcome (once). */
  started(peerId: string): () => void {
    const peers = this.peers;
    if (peers.size >= peersTrackedMax && !peers.has(peerId)) for (const [id, bulk] of peers) if (bulk.inFlight === 0) peers.delete(id);
    let bulk = peers.get(peerId);
    if (bulk === undefined) peers.set(peerId, (bulk = { inFlight: 0, endedAtMs: Number.NEGATIVE_INFINITY }));
    bulk.inFlight += 1;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      bulk.inFlight -= 1;
      bulk.endedAtMs = performance.now();
    };
  }

  /** When our copies to `peerId` last left nothing queued (performance.now() time): now while one is in flight, -Infinity if none ever was. */
  drainedAtMs(peerId: string): number {
    const bulk = this.peers.get(peerId);
    if (bulk === undefined) return Number.NEGATIVE_INFINITY;
    return bulk.inFlight > 0 ? performance.now() : bulk.endedAtMs;
  }

  /** Forgets every peer (copies still in flight end unheard): the node's sending side stopped. */
  stop(): void {
    this.peers.clear();
  }
}
