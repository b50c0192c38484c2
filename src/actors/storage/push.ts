/**
 * Cut-through replication: /pacs-mesh/push/1 carries an instance to another site WHILE it arrives from
 * the modality, so the receiving site writes its chunks alongside ours and both sites' final fsyncs run
 * at the same time. The store-and-forward path (/pacs-mesh/replicate-batch/1: offer, want, bytes read back
 * from LevelDB) is what custody falls back to whenever a push fails; it also drains debt.
 *
 *   C: {type:'push', sopInstanceUid}                     (envelope frame)
 *   C: (u64 n > 0, n bytes)*  u64 0                       (the data set as it arrives, pieces <= pieceBytesMax)
 *   C: {type:'end', entry} | {type:'abort'}               (entry: the catalog entry; blobId is the sender's)
 *   S: {type:'stored', siteName} | {type:'have', siteName} (after the receiver verified byteLength + SHA-256
 *                                                          and made its copy durable, as replicate-batch/1 does)
 * then the next push on the same stream, or the sender's half-close. Streams are kept between pushes
 * ({@link PushStreams}): opening one costs multistream-select and a peer-store update on both sides, about
 * 1 ms of CPU each per instance. The receiver cannot answer until the end (the sender does not wait), so
 * a receiver that refuses or fails resets the stream instead: the sender sees the reset at once and
 * custody falls back.
 *
 * Sender memory is bounded: each push queues at most `queuedBytesMax`; past it, the local ingest waits
 * for the remote, and a remote that takes nothing for `stallTimeoutMs` is dropped (custody falls back).
 * A push cut while its bytes arrive (reset, stalled, the connection lost) leaves what arrived at the
 * receiver (partial-copies.ts): custody's stored copy that follows sends only the rest (replication.ts).
 */
import { startDeadline, withDeadline } from '../runtime/deadline.ts';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import type { MeshNode } from '../../net/node.ts';
import type { MeshStream } from '../../net/stream.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { isValidUid } from './catalog.ts';
import { BulkInFlight } from './bulk-in-flight.ts';
import type { PartialCopies } from './partial-copies.ts';
import { StoreError, replicaEntryBuilder, type ReplicaStore } from './replica-store.ts';

export const PUSH_PROTOCOL = '/pacs-mesh/push/1';

/** While a copy's bytes flow in (a push, or a batch: replication.ts), custody hears it is still coming this often (well below incomingCopyForgetMs). */
export const copiesArrivingRepeatMs = 500;

export interface PushLimits {
  /** Largest control frame (a catalog entry with its attributes). */
  frameBytesMax: number;
  /** Largest piece of data in one `u64 n` record. */
  pieceBytesMax: number;
  /** Largest instance accepted. */
  bodyBytesMax: number;
  /** Bytes one push may hold for a slow remote before the local ingest waits. */
  queuedBytesMax: number;
  /** A remote that takes nothing for this long while the queue is full is dropped. */
  stallTimeoutMs: number;
  /** Deadline of one whole push. */
  transferTimeoutMs: number;
  /** Idle streams kept per site between pushes (more concurrent pushes open more, closed after use). */
  idleStreamsPerPeerMax: number;
  /** The sender closes a stream idle this long; the receiver ends one idle for receiverIdleMs (longer). */
  idleStreamMs: number;
  receiverIdleMs: number;
}

export const defaultPushLimits: PushLimits = {
  frameBytesMax: 1024 * 1024,
  pieceBytesMax: 4 * 1024 * 1024,
  bodyBytesMax: 8 * 1024 * 1024 * 1024,
  queuedBytesMax: 2 * 1024 * 1024,
  stallTimeoutMs: 2_000,
  transferTimeoutMs: 10 * 60_000,
  idleStreamsPerPeerMax: 4,
  idleStreamMs: 5_000,
  receiverIdleMs: 60_000,
};

export type PushErrorCode = 'ERR_PUSH_MALFORMED' | 'ERR_PUSH_STALLED' | 'ERR_PUSH_ABORTED' | 'ERR_PUSH_REFUSED';

export class PushError extends Error {
  static readonly NAME = 'PushError';
  override readonly name = PushError.NAME;
  constructor(
    readonly code: PushErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface PushOutcome {
  outcome: 'stored' | 'have';
  siteName: string;
}

type PushHeader = { type: 'push'; sopInstanceUid: string };
type PushTail = { type: 'end'; entry: CatalogEntry } | { type: 'abort' };
type PushAnswer = { type: 'stored'; siteName: string } | { type: 'have'; siteName: string };

type QueueItem = { readonly kind: 'data'; readonly bytes: Uint8Array } | { readonly kind: 'end'; readonly entry: CatalogEntry } | { readonly kind: 'abort' };

interface IdleStream {
  readonly stream: MeshStream;
  readonly timer: NodeJS.Timeout;
}

/** Push streams kept open between pushes, per site: `take` one (or a new one), `give` it back after the answer. */
export class PushStreams {
  private readonly idle = new Map<string, IdleStream[]>();
  private stopped = false;

  /** `bulkInFlight` counts each push as a copy in flight to its site (share it with the node's replicate-batches and custody messages). */
  constructor(
    readonly node: MeshNode,
    private readonly limits: Pick<PushLimits, 'idleStreamsPerPeerMax' | 'idleStreamMs'> = defaultPushLimits,
    readonly bulkInFlight: BulkInFlight = new BulkInFlight(),
  ) {}

  /** Sites with at least one idle stream kept (an empty list is dropped, so sites that left cost nothing). */
  get peersWithIdleStreams(): number {
    return this.idle.size;
  }

  async take(peerId: string, signal: AbortSignal): Promise<MeshStream> {
    const kept = this.idle.get(peerId) ?? [];
    try {
      for (let entry = kept.pop(); entry !== undefined; entry = kept.pop()) {
        clearTimeout(entry.timer);
        if (entry.stream.reusable) return entry.stream;
        entry.stream.abort(new PushError('ERR_PUSH_ABORTED', 'push stream closed while idle'));
      }
    } finally {
      this.forgetIfEmpty(peerId, kept);
    }
    return this.node.openStream(peerId, PUSH_PROTOCOL, { signal });
  }

  give(peerId: string, stream: MeshStream): void {
    const kept = this.idle.get(peerId) ?? [];
    if (this.stopped || !stream.reusable || kept.length >= this.limits.idleStreamsPerPeerMax) {
      void retire(stream);
      return;
    }
    const entry: IdleStream = {
      stream,
      timer: setTimeout(() => {
        const at = kept.indexOf(entry);
        if (at >= 0) kept.splice(at, 1);
        this.forgetIfEmpty(peerId, kept);
        void retire(stream);
      }, this.limits.idleStreamMs),
    };
    entry.timer.unref();
    kept.push(entry);
    this.idle.set(peerId, kept);
  }

  /** Closes every idle stream; later `give`s close theirs at once. */
  stop(): void {
    this.stopped = true;
    for (const kept of this.idle.values()) {
      for (const entry of kept.splice(0)) {
        clearTimeout(entry.timer);
        void retire(entry.stream);
      }
    }
    this.idle.clear();
  }

  private forgetIfEmpty(peerId: string, kept: IdleStream[]): void {
    if (kept.length === 0 && this.idle.get(peerId) === kept) this.idle.delete(peerId);
  }
}

async function retire(stream: MeshStream): Promise<void> {
  try {
    await stream.close({ signal: AbortSignal.timeout(5_000) });
  } catch (error) {
    stream.abort(error instanceof Error ? error : new Error(String(error)));
  }
}

/** One instance pushed to one site. `write`, then `end` or `abort`; `result` settles with the site's answer. */
export class ReplicaPush {
  readonly result: Promise<PushOutcome>;
  private readonly queue: QueueItem[] = [];
  private queuedBytes = 0;
  private closed = false;
  private failure: Error | undefined;
  private itemArrived: (() => void) | undefined;
  private readonly spaceWaiters = new Set<() => void>();

  constructor(
    private readonly streams: PushStreams,
    readonly peerId: string,
    readonly sopInstanceUid: string,
    private readonly limits: PushLimits,
    signal?: AbortSignal,
  ) {
    const deadline = startDeadline(limits.transferTimeoutMs, signal, `push to ${peerId} not done in ${limits.transferTimeoutMs} ms`);
    const ended = streams.bulkInFlight.started(peerId);
    this.result = this.run(deadline.signal).finally(() => {
      ended();
      deadline.clear();
    });
    // Settled by whoever awaits it; this keeps a failure nobody awaited from being reported as unhandled.
    this.result.catch(() => undefined);
  }

  /** Queues a piece (kept by reference: do not reuse it). Waits while the queue is full; never throws. */
  async write(bytes: Uint8Array): Promise<void> {
    if (this.closed || this.failure || bytes.byteLength === 0) return;
    for (let off = 0; off < bytes.byteLength; off += this.limits.pieceBytesMax) {
      const piece = bytes.subarray(off, Math.min(bytes.byteLength, off + this.limits.pieceBytesMax));
      this.enqueue({ kind: 'data', bytes: piece });
      this.queuedBytes += piece.byteLength;
    }
    if (this.queuedBytes > this.limits.queuedBytesMax) await this.waitForSpace();
  }

  /** The instance is complete: send its catalog entry; the site answers once its copy is durable. */
  end(entry: CatalogEntry): void {
    if (this.closed) return;
    this.closed = true;
    this.enqueue({ kind: 'end', entry });
  }

  /** The instance will not be stored: the site drops what it received. */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    this.enqueue({ kind: 'abort' });
  }

  private enqueue(item: QueueItem): void {
    this.queue.push(item);
    this.itemArrived?.();
  }

  private waitForSpace(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.spaceWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.fail(new PushError('ERR_PUSH_STALLED', `site ${this.peerId} took nothing for ${this.limits.stallTimeoutMs} ms`));
        done();
      }, this.limits.stallTimeoutMs);
      this.spaceWaiters.add(done);
    });
  }

  private releaseSpace(): void {
    if (this.queuedBytes > this.limits.queuedBytesMax && !this.failure) return;
    for (const waiter of [...this.spaceWaiters]) waiter();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.itemArrived?.();
    this.releaseSpace();
  }

  private async next(): Promise<QueueItem> {
    while (this.queue.length === 0) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.itemArrived = resolve));
      this.itemArrived = undefined;
    }
    if (this.failure) throw this.failure;
    return this.queue.shift()!;
  }

  private async run(signal: AbortSignal): Promise<PushOutcome> {
    const onAbort = (): void => this.fail(signal.reason instanceof Error ? signal.reason : new PushError('ERR_PUSH_ABORTED', 'push aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    let stream: MeshStream | undefined;
    try {
      stream = await this.streams.take(this.peerId, signal);
      const options = { signal };
      // Staged: the header goes out with the first piece (or the tail) in one muxer frame.
      await stream.writer.stageFrame(encodeEnvelope<PushHeader>({ type: 'push', sopInstanceUid: this.sopInstanceUid }, { maxBytes: this.limits.frameBytesMax }), options);
      for (;;) {
        const item = await this.next();
        if (item.kind === 'data') {
          // The length is staged: it goes out in the same muxer frame as the piece's first bytes.
          await stream.writer.stageUint64(item.bytes.byteLength, options);
          await stream.writer.write(item.bytes, options);
          this.queuedBytes -= item.bytes.byteLength;
          this.releaseSpace();
          continue;
        }
        await stream.writer.stageUint64(0, options);
        const tail: PushTail = item.kind === 'end' ? { type: 'end', entry: item.entry } : { type: 'abort' };
        await stream.writer.writeFrame(encodeEnvelope(tail, { maxBytes: this.limits.frameBytesMax }), options);
        if (item.kind === 'abort') {
          this.streams.give(this.peerId, stream);
          stream = undefined;
          throw new PushError('ERR_PUSH_ABORTED', 'the instance was not stored here');
        }
        const answer = decodeEnvelope<PushAnswer>(await stream.reader.readFrame(this.limits.frameBytesMax, options), { maxBytes: this.limits.frameBytesMax });
        if ((answer.type === 'stored' || answer.type === 'have') && typeof answer.siteName === 'string' && answer.siteName.length <= 256) {
          this.streams.give(this.peerId, stream);
          return { outcome: answer.type, siteName: answer.siteName };
        }
        throw new PushError('ERR_PUSH_MALFORMED', `unexpected push answer of type ${String((answer as { type?: unknown }).type).slice(0, 64)}`);
      }
    } catch (error) {
      const failure = error instanceof Error ? error : new Error(String(error));
      this.fail(failure);
      stream?.abort(failure);
      throw failure;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }
}

export interface PushReceiverInit {
  store: ReplicaStore;
  siteName: string;
  limits: PushLimits;
  /** Validates a catalog entry from a peer (throws on a malformed one). */
  validateEntry(value: unknown): CatalogEntry;
  /** A pushed copy was verified and made durable here (the stream answer is the replicaAck). */
  onReplicaStored(entry: CatalogEntry, fromPeerId: string): void;
  /**
   * A push of a copy we lack started (its UID), said again every copiesArrivingRepeatMs while its bytes
   * flow: custody pulls none of them meanwhile (see 'copiesOffered').
   */
  onCopiesOffered?(sopInstanceUids: string[], fromPeerId: string): void;
  /** Where a push cut while its bytes arrived leaves them, for the stored copy that follows to resume. */
  partials?: PartialCopies;
}

/**
 * Receives pushes on one stream until the sender half-closes it (or leaves it idle for receiverIdleMs).
 * Throws on anything malformed or refused: the caller resets the stream, since the sender is not
 * listening until it has sent everything. `signal` ends the whole stream; each push has its own deadline.
 */
export async function receivePushes(stream: MeshStream, signal: AbortSignal, init: PushReceiverInit): Promise<void> {
  const { limits } = init;
  for (;;) {
    const idle = startDeadline(limits.receiverIdleMs, signal, `push stream idle for ${limits.receiverIdleMs} ms`);
    let header: Uint8Array | null;
    try {
      header = await stream.reader.readFrameOrEnd(limits.frameBytesMax, { signal: idle.signal });
    } catch (error) {
      if (signal.aborted || !idle.signal.aborted) throw error;
      // Left idle: a sender that still meant to use the stream sees the reset and falls back.
      stream.abort(new PushError('ERR_PUSH_ABORTED', (idle.signal.reason as Error).message));
      return;
    } finally {
      idle.clear();
    }
    if (header === null) {
      await stream.closeWrite({ signal: AbortSignal.any([signal, AbortSignal.timeout(5_000)]) });
      return;
    }
    await withDeadline(limits.transferTimeoutMs, signal, (pushSignal) => receiveOnePush(stream, header, pushSignal, init));
  }
}

async function receiveOnePush(stream: MeshStream, headerFrame: Uint8Array, signal: AbortSignal, init: PushReceiverInit): Promise<void> {
  const { store, limits } = init;
  const options = { signal };
  const header = decodeEnvelope<PushHeader>(headerFrame, { maxBytes: limits.frameBytesMax });
  if (header.type !== 'push' || typeof header.sopInstanceUid !== 'string' || header.sopInstanceUid.length > 64 || !isValidUid(header.sopInstanceUid)) {
    throw new PushError('ERR_PUSH_MALFORMED', 'malformed push header');
  }
  const uid = header.sopInstanceUid;
  // Arriving again whole: an older cut copy of it is of no more use.
  init.partials?.drop(uid);
  // Already held: read and drop the bytes (the sender does not wait for an answer before sending them).
  const writer = (await store.getEntry(uid)) === undefined ? store.beginWrite() : undefined;
  // A large copy marks its progress, so a SIGKILL keeps what arrived (PartialCopies.progressWriter).
  const write = writer === undefined ? undefined : (init.partials?.progressWriter(uid, stream.remotePeer, writer) ?? ((piece: Uint8Array) => writer.write(piece)));
  // Over a slow link a push takes seconds: repair would pull the same copy from a site that has it already
  // (hunt 74: 4-27 MB between sites b and c at 1 Mbit/s while site a's pushes to them were in flight).
  let arriving: ReturnType<typeof setInterval> | undefined;
  if (writer !== undefined && init.onCopiesOffered !== undefined) {
    const onOffered = init.onCopiesOffered;
    const tell = (): void => onOffered([uid], stream.remotePeer);
    tell();
    arriving = setInterval(tell, copiesArrivingRepeatMs);
    arriving.unref();
  }
  // While true, a failure is the stream's (reset, cut, timed out): what arrived is kept for a resume.
  let readingData = true;
  try {
    let total = 0;
    for (;;) {
      const length = await stream.reader.readUint64(options);
      if (length === 0) break;
      if (length > limits.pieceBytesMax) throw new PushError('ERR_PUSH_MALFORMED', `piece of ${length} bytes exceeds ${limits.pieceBytesMax}`);
      total += length;
      if (total > limits.bodyBytesMax) throw new PushError('ERR_PUSH_REFUSED', `instance over ${limits.bodyBytesMax} bytes`);
      // The writer keeps the pieces until it flushes them; the stream reader's buffers are never reused.
      for await (const piece of stream.reader.body(length, options)) if (write !== undefined) await write(piece);
    }
    readingData = false;
    const tail = decodeEnvelope<PushTail>(await stream.reader.readFrame(limits.frameBytesMax, options), { maxBytes: limits.frameBytesMax });
    if (tail.type === 'abort') {
      await writer?.abort();
      return;
    }
    if (tail.type !== 'end') throw new PushError('ERR_PUSH_MALFORMED', `expected end or abort, got ${String((tail as { type?: unknown }).type).slice(0, 64)}`);
    const entry = init.validateEntry(tail.entry);
    if (entry.sopInstanceUid !== uid) throw new PushError('ERR_PUSH_MALFORMED', `push of ${uid} ended with the entry of ${entry.sopInstanceUid}`);
    let answer: PushAnswer = { type: 'have', siteName: init.siteName };
    if (writer) {
      const result = await writer.commit(uid, replicaEntryBuilder(entry));
      if (result.outcome === 'stored') {
        init.onReplicaStored(result.entry, stream.remotePeer);
        answer = { type: 'stored', siteName: init.siteName };
      }
    }
    await stream.writer.writeFrame(encodeEnvelope(answer, { maxBytes: limits.frameBytesMax }), options);
  } catch (error) {
    const cut = readingData && !(error instanceof PushError) && !(error instanceof StoreError);
    if (writer !== undefined && cut && init.partials !== undefined) init.partials.keep(uid, stream.remotePeer, writer);
    else await writer?.abort();
    throw error;
  } finally {
    clearInterval(arriving);
  }
}
