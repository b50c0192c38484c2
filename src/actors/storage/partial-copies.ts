/**
 * What a receiving site keeps of a copy whose transfer was cut (a push or a replicate-batch stream reset, a
 * connection dropped, a pull's deadline): the open writer with the bytes that arrived in order, so the
 * next copy of that instance from that peer sends only the rest (replicate-batch/1 'want' offsets, fetch
 * and fetch-batch offsets: replication.ts). Before this, a cut-through push cut
 * at 100 KB/s was followed by the whole stored copy: 1.2-1.4x the instance crossed the link (hunt 116).
 *
 * Nothing here is trusted: the writer's running SHA-256 covers the kept bytes and the rest, and the commit
 * checks it against the sender's entry, so a partial that does not match stores nothing (the sender then
 * sends the whole copy). Bounded: bytes kept per sending peer and in all, and partial copies in all (the
 * oldest are dropped to make room), and each is dropped `keptMs` after its first cut (resumed and cut again
 * or not: its open upload holds the store's recovery checkpoint back). The kept bytes are chunks in the blob database (the
 * writer holds less than one chunk in memory), and survive a restart (hunt 132): a kept part's writer writes a
 * marker (InstanceWriter.persistPartial), and `restore` takes back, at start, what the store's open found,
 * within the same bounds and its first cut's keptMs (counted on the date, which a restart keeps).
 * A part is dropped as soon as its instance is stored here by any path (a push or batch of it that came
 * whole on another stream, a pull, a local ingest): before, it stayed until its keptMs or the next offer.
 */
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import { systemClock } from '../runtime/clock.ts';
import { startDeadline, untilAborted } from '../runtime/deadline.ts';
import type { InstanceWriter, ReplicaStore } from './replica-store.ts';

export interface PartialCopyLimits {
  /** Bytes of partial copies kept from one sending peer. */
  bytesPerPeerMax: number;
  /** Bytes of partial copies kept from all peers together. */
  bytesMax: number;
  /** Partial copies kept at most: each open writer holds less than a chunk (64 KiB) and a small-piece buffer in memory. */
  copiesMax: number;
  /** A partial copy is dropped this long after its first cut, however often it was resumed and cut again. */
  keptMs: number;
}

export const defaultPartialCopyLimits: PartialCopyLimits = {
  bytesPerPeerMax: 256 * 1024 * 1024,
  bytesMax: 1024 * 1024 * 1024,
  copiesMax: 256,
  keptMs: 10 * 60_000,
};

interface Partial {
  readonly sopInstanceUid: string;
  readonly fromPeerId: string;
  readonly writer: InstanceWriter;
  readonly bytes: number;
  readonly timer: TimerHandle;
  /** Resolves true once the store holds the part's marker: it then outlives this process. */
  readonly persisted: Promise<boolean>;
}

/**
 * A copy arriving marks its progress every this many bytes (an unsynced marker: see progressMarker), so that
 * a receiver killed with SIGKILL keeps what arrived of a large copy; smaller copies write no marker at all.
 */
export const progressMarkBytes = 8 * 1024 * 1024;

/** How long a stop waits for the pulls it cut to keep their parts (their commits in flight settle first). */
const pullsEndAfterCutMs = 2000;

/** Partial copies by SOP Instance UID (one each), oldest first. */
export class PartialCopies {
  private readonly byUid = new Map<string, Partial>();
  /**
   * When each writer was first kept: its open upload holds the store's recovery checkpoint back, so a part
   * resumed and cut again must not win another keptMs each time (a byte a resume would hold it for ever).
   */
  private readonly firstKeptAtMs = new WeakMap<InstanceWriter, number>();
  private bytesKept = 0;
  private keptCount = 0;
  private stopped = false;
  /** Set by cutPulls: a pull that starts later is cut at once. */
  private pullsCut = false;
  /**
   * This site's pulls in flight that keep their cut parts here (pullStarted): a stop cuts them first and
   * waits for their keeps, so that a restart keeps what arrived of them too (hunt 140: custody cut its pulls
   * after the table had stopped, and their parts were deleted).
   */
  private readonly pullsInFlight = new Set<{ cut: AbortController; ended: Promise<void> }>();
  /** The running restore, which a stop waits for (one part's read-back at most: it stops at the next). */
  private restoring: Promise<void> = Promise.resolve();
  private readonly stopWatchingStore: () => void;

  /** With `store`, the store the kept writers write to: a part is dropped once its instance is stored there. */
  constructor(
    private readonly limits: PartialCopyLimits = defaultPartialCopyLimits,
    private readonly clock: Clock = systemClock,
    private readonly store?: Pick<ReplicaStore, 'getEntry' | 'onInstanceStored' | 'restoredPartials'>,
  ) {
    this.stopWatchingStore = store?.onInstanceStored((sopInstanceUid) => this.drop(sopInstanceUid)) ?? (() => undefined);
  }

  /** Bytes kept in all, and the partial copies kept. */
  get stats(): { bytes: number; copies: number } {
    return { bytes: this.bytesKept, copies: this.byUid.size };
  }

  /** Partial copies kept since the start (resumed, dropped or still here). */
  get keptSinceStart(): number {
    return this.keptCount;
  }

  /**
   * Keeps an open writer whose transfer was cut. Takes ownership: a writer that is empty, over the bounds,
   * or no longer resumable (a write failed, the store faulted: its resume would fail at the first write)
   * is aborted here. Replaces (and aborts) an older partial of that UID.
   */
  keep(sopInstanceUid: string, fromPeerId: string, writer: InstanceWriter): void {
    this.drop(sopInstanceUid);
    const bytes = writer.bytesWritten;
    const nowMs = this.clock.nowMs();
    const firstKeptAtMs = this.firstKeptAtMs.get(writer) ?? nowMs;
    const leftMs = firstKeptAtMs + this.limits.keptMs - nowMs;
    if (this.stopped || bytes === 0 || bytes > this.limits.bytesPerPeerMax || bytes > this.limits.bytesMax || leftMs <= 0 || writer.resumable?.() === false) {
      void writer.abort();
      return;
    }
    // Room is made by dropping the oldest: a recent cut is the one a copy is most likely to follow soon.
    for (const partial of [...this.byUid.values()]) {
      const overall = this.bytesKept + bytes > this.limits.bytesMax || this.byUid.size >= this.limits.copiesMax;
      if (!overall && this.peerBytes(fromPeerId) + bytes <= this.limits.bytesPerPeerMax) break;
      if (overall || partial.fromPeerId === fromPeerId) this.drop(partial.sopInstanceUid);
    }
    this.firstKeptAtMs.set(writer, firstKeptAtMs);
    const timer = this.clock.setTimeout(() => this.drop(sopInstanceUid), leftMs);
    // Not awaited: a part whose marker fails to be written (a full disk) is still kept, until a restart.
    const persisted = writer.persistPartial?.({ sopInstanceUid, fromPeerId, keptUntilDateMs: this.clock.dateMs() + leftMs }).then(() => true, () => false) ?? Promise.resolve(false);
    this.byUid.set(sopInstanceUid, { sopInstanceUid, fromPeerId, writer, bytes, timer, persisted });
    this.bytesKept += bytes;
    this.keptCount += 1;
    // Stored by another stream before this part was kept (its commit's onInstanceStored came first): the
    // catalog already says so, since a commit writes it before it tells its listeners.
    void this.store?.getEntry(sopInstanceUid).then(
      (held) => {
        if (held !== undefined && this.byUid.get(sopInstanceUid)?.writer === writer) this.drop(sopInstanceUid);
      },
      () => undefined,
    );
  }

  /**
   * Takes back the parts the store's last open found (kept before a restart): each within the bounds as if
   * kept now, for what is left of its keptMs; one out of time, of an instance stored meanwhile, or whose
   * bytes do not read back whole is dropped. Call once, at start; copies offered meanwhile go whole. A stop
   * meanwhile leaves the parts not yet taken back as they are in the store, for its next open.
   */
  restore(): Promise<void> {
    this.restoring = this.restoreEach();
    return this.restoring;
  }

  private async restoreEach(): Promise<void> {
    for (const restored of this.store?.restoredPartials?.() ?? []) {
      // Stopping (a restart): neither read back nor dropped; the part and its marker stay for the next open.
      if (this.stopped) return;
      const leftMs = Math.min(this.limits.keptMs, restored.keptUntilDateMs - this.clock.dateMs());
      let writer: InstanceWriter;
      try {
        if (leftMs <= 0) throw new Error('not kept');
        writer = await restored.resume();
      } catch {
        await restored.drop();
        continue;
      }
      // Read back only, nothing written: left open as it is, like a durable part at a stop.
      if (this.stopped) return;
      if (this.byUid.has(restored.sopInstanceUid)) {
        // A newer part of it was kept since the start.
        void writer.abort();
        continue;
      }
      this.firstKeptAtMs.set(writer, this.clock.nowMs() + leftMs - this.limits.keptMs);
      this.keep(restored.sopInstanceUid, restored.fromPeerId, writer);
    }
  }

  /** The writer kept for this instance from this peer, now the caller's (it must commit or abort it). */
  take(sopInstanceUid: string, fromPeerId: string): { writer: InstanceWriter; offset: number } | undefined {
    const kept = this.byUid.get(sopInstanceUid);
    if (kept === undefined || kept.fromPeerId !== fromPeerId) return undefined;
    // The store faulted since it was kept (or a chunk write it had in flight failed): it could not commit.
    if (kept.writer.resumable?.() === false) {
      this.drop(sopInstanceUid);
      return undefined;
    }
    this.forget(kept);
    return { writer: kept.writer, offset: kept.bytes };
  }

  /** Drops (aborts) what is kept of this instance, from any peer: it is stored, or arriving again whole. */
  drop(sopInstanceUid: string): void {
    const kept = this.byUid.get(sopInstanceUid);
    if (kept === undefined) return;
    this.forget(kept);
    void kept.writer.abort();
  }

  /**
   * For a copy arriving into `writer` from `fromPeerId`: writes a piece, and every progressMarkBytes (counted
   * from the writer's bytes at the call: a resumed copy's from where it resumed) has the writer name its
   * chunks so far in an unsynced marker (InstanceWriter.markProgress) before the promise settles, so a
   * SIGKILL keeps them as a cut keeps a part (hunt 140). A piece short of the next mark gets the writer's own
   * promise back, so a copy arriving awaits nothing more per piece than the write: an `await` per piece cost
   * ~80 ns on every piece of every copy, small ones included (hunt 146). Best effort: a failed marker is not
   * retried.
   */
  progressWriter(sopInstanceUid: string, fromPeerId: string, writer: InstanceWriter): (piece: Uint8Array) => Promise<void> {
    let nextMarkAt = writer.bytesWritten + progressMarkBytes;
    const markIfDue = (): Promise<void> | undefined => {
      if (writer.bytesWritten < nextMarkAt || this.stopped || writer.markProgress === undefined) return undefined;
      nextMarkAt = writer.bytesWritten + progressMarkBytes;
      const firstKeptAtMs = this.firstKeptAtMs.get(writer) ?? this.clock.nowMs();
      const keptUntilDateMs = this.clock.dateMs() + firstKeptAtMs + this.limits.keptMs - this.clock.nowMs();
      return writer.markProgress({ sopInstanceUid, fromPeerId, keptUntilDateMs }).catch(() => undefined);
    };
    return (piece) => (writer.bytesWritten + piece.byteLength >= nextMarkAt ? writer.write(piece).then(markIfDue) : writer.write(piece));
  }

  /**
   * A pull of this site's that keeps its cut parts here begins: it runs on the signal given (aborted with
   * `parent`, or by this table's stop), and calls `end` once it has kept what it keeps.
   */
  pullStarted(parent?: AbortSignal): { signal: AbortSignal; end(): void } {
    const cut = new AbortController();
    if (this.pullsCut) cut.abort(new Error('the pulling peer is stopping'));
    // Linked by hand and unlinked at the end: the parent (custody's shutdown) outlives thousands of pulls.
    const onParentAbort = (): void => cut.abort(parent?.reason);
    if (parent?.aborted === true) onParentAbort();
    else parent?.addEventListener('abort', onParentAbort, { once: true });
    let end!: () => void;
    const pull = { cut, ended: new Promise<void>((resolve) => (end = resolve)) };
    this.pullsInFlight.add(pull);
    return {
      signal: cut.signal,
      end: () => {
        parent?.removeEventListener('abort', onParentAbort);
        this.pullsInFlight.delete(pull);
        end();
      },
    };
  }

  /**
   * Cuts this site's pulls in flight (pullStarted), and those that start from now on at once; settles once
   * the pulls cut have kept what arrived. A stopping peer calls it while copies arriving are cut, so both
   * keep their parts at the same time (see stop).
   */
  cutPulls(): Promise<void> {
    this.pullsCut = true;
    const pulls = [...this.pullsInFlight];
    for (const pull of pulls) pull.cut.abort(new Error('the pulling peer is stopping'));
    return Promise.all(pulls.map((pull) => pull.ended)).then(() => undefined);
  }

  /**
   * Cuts this site's pulls in flight (cutPulls) and waits until `deadline` (at most pullsEndAfterCutMs
   * without one) for them to keep what arrived; then forgets everything, and later `keep`s abort their
   * writer at once. A part whose marker the store holds is left open there, for the store's next open to
   * offer back (a restart: the store closes next); the others are dropped.
   */
  async stop(deadline?: AbortSignal): Promise<void> {
    const pullsEnded = this.cutPulls();
    // Without pulls in flight the table stops at once: a keep right after this call is refused.
    if (this.pullsInFlight.size > 0) {
      const own = deadline === undefined ? startDeadline(pullsEndAfterCutMs, undefined, undefined, this.clock) : undefined;
      await untilAborted(pullsEnded, deadline ?? own?.signal);
      own?.clear();
    }
    this.stopped = true;
    this.stopWatchingStore();
    // Waited for whatever the deadline: it stops at the next part, and a read cut by the store's close would drop the part it read.
    await this.restoring.catch(() => undefined);
    const released = [...this.byUid.values()];
    for (const kept of released) this.forget(kept);
    await Promise.all(released.map(async (kept) => (await kept.persisted ? undefined : kept.writer.abort())));
  }

  private forget(kept: Partial): void {
    this.clock.clearTimeout(kept.timer);
    this.byUid.delete(kept.sopInstanceUid);
    this.bytesKept -= kept.bytes;
  }

  private peerBytes(peerId: string): number {
    let bytes = 0;
    for (const partial of this.byUid.values()) if (partial.fromPeerId === peerId) bytes += partial.bytes;
    return bytes;
  }
}
