/**
 * The custody stream protocols between sites. Every frame is a uint32-length-prefixed versioned envelope
 * (src/codec/envelope.ts); instance bytes follow as `uint64 BE length | bytes`, read through the bounded
 * StreamReader (back-pressure both ways, memory independent of instance size).
 *
 * /pacs-mesh/replicate-batch/1 (push many stored instances to a site: debt drain, catch-up):
 *   C: {type:'offerBatch', entries}          S: {type:'want', indices} | refused
 *   C: (u64 length, bytes) per wanted entry, in order, close
 *   S: {type:'batchResult', siteName, stored, failed: [{index, code, message}]}
 *   Entries not wanted are held there already ('have'): a modality retry or debt replayed after a restart
 *   costs no bytes. An offer with `resumable: true` may be answered `{type:'want', indices, offsets}`:
 *   the receiver kept `offsets[i]` bytes of that copy from a cut push or batch (partial-copies.ts), and
 *   its body is then `u64 (byteLength - offset)` and the bytes from that offset; the SHA-256 over the
 *   whole is checked as ever, and a kept part that fails it fails that copy (ERR_REPLICATION_RESUME_MISMATCH)
 *   and is dropped. A peer before this ignores `resumable` (and is not sent offsets): every byte travels.
 *   One stream and one round trip for up to batchEntriesMax instances; the receiver's synced commits
 *   overlap (LevelDB merges their fsyncs). A result is sent only after the receiver verified byteLength + SHA-256 and made each copy durable, so the sender's custody takes 'stored' (or 'have') as
 *   that site's replicaAck: the receiver does NOT also send a replicaAck on /custody/1 for a pushed copy.
 * /pacs-mesh/fetch-batch/1 (pull many instances: repair, catch-up):
 *   C: {type:'fetchBatch', uids, offsets?}, close
 *                                            S: per uid, in order: {type:'instance', entry, fromByte?} + u64 length + bytes
 *                                              | {type:'missing', sopInstanceUid}; then {type:'end'}
 *   `offsets[i]` (absent: all 0) is what the puller kept of uids[i] from a cut transfer from this peer
 *   (partial-copies.ts); a server that honours it answers `fromByte` (the same number) and sends
 *   `u64 (byteLength - fromByte)` and the bytes from there. A server before this ignores `offsets` and sends
 *   whole (no `fromByte`), and the puller then drops its part. The SHA-256 over the whole is checked as for
 *   a resumed batch. Without it, an instance whose transfer takes longer than the pull deadline never arrived.
 * /pacs-mesh/push/1 (cut-through: the instance while it arrives from the modality): see push.ts.
 * /pacs-mesh/fetch/1 (pull one instance):
 *   C: {type:'fetch', sopInstanceUid, offset?}, close
 *                                            S: {type:'instance', entry, fromByte?} + u64 length + bytes | {type:'missing'} | refused
 *   `offset` and `fromByte` as for fetch-batch.
 * /pacs-mesh/custody/1 (small custody messages: replicaAck, repairDigest, repairKeys):
 *   C: CustodyMessage envelope *, close      S: closes (no answer: every custody message is repeated or repaired)
 *   Up to custodyMessagesPerStreamMax per stream: a catch-up acknowledges hundreds of pulls, and a stream
 *   per message cost more than the message.
 * /pacs-mesh/query/1 (retrieve resolution at a peer, for retrieve-anywhere):
 *   C: {type:'retrieve', request, limit}     S: {type:'entries', entries}* then {type:'end', truncated} | refused
 *
 * Bounds: concurrent inbound streams per protocol (excess is refused with ERR_REPLICATION_BUSY; only queries
 * wait, briefly and in a bounded queue, for a slot first),
 * frame sizes, body length, and a deadline per stream. A malformed request is answered 'refused' and the
 * stream closed; nothing a peer sends can throw out of a handler.
 */
import { EnvelopeError, decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import type { MeshNode } from '../../net/node.ts';
import type { MeshStream } from '../../net/stream.ts';
import { systemClock } from '../runtime/clock.ts';
import { startDeadline, untilAborted, withDeadline } from '../runtime/deadline.ts';
import { createRepeatLimiter, errorText, type Logger } from '../runtime/logger.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { isValidUid } from './catalog.ts';
import { repairLeafBucketsMax, type CustodyMessage, type InstanceKey } from './custody/messages.ts';
import { digestBucketCount, digestHashBytes, digestLeavesPerBucket } from './custody/digest.ts';
import type { BatchPhases } from './custody/peer-batches.ts';
import { PUSH_PROTOCOL, copiesArrivingRepeatMs, defaultPushLimits, receivePushes } from './push.ts';
import { resolveRetrieve, type QueryRequest } from './query/query.ts';
import type { BulkInFlight } from './bulk-in-flight.ts';
import { PartialCopies, defaultPartialCopyLimits, type PartialCopyLimits } from './partial-copies.ts';
import { StoreError, replicaEntryBuilder, type CommitResult, type InstanceWriter, type ReplicaStore } from './replica-store.ts';

export const REPLICATE_BATCH_PROTOCOL = '/pacs-mesh/replicate-batch/1';
export const FETCH_BATCH_PROTOCOL = '/pacs-mesh/fetch-batch/1';
export const FETCH_PROTOCOL = '/pacs-mesh/fetch/1';
export const CUSTODY_PROTOCOL = '/pacs-mesh/custody/1';
export const QUERY_PROTOCOL = '/pacs-mesh/query/1';

export type ReplicationErrorCode =
  | 'ERR_REPLICATION_BUSY'
  | 'ERR_REPLICATION_REFUSED'
  | 'ERR_REPLICATION_MALFORMED'
  | 'ERR_REPLICATION_MISMATCH'
  /** This site's own copy could not be read whole (StoreError ERR_STORE_CORRUPT): retrying soon will not help. */
  | 'ERR_REPLICATION_SOURCE_UNREADABLE'
  /** A batch moved no byte and got no answer for stallTimeoutMs. */
  | 'ERR_REPLICATION_STALLED'
  /** The receiver resumed a copy from the part it kept of a cut transfer, and the whole did not match: it dropped that part, the next copy goes whole. */
  | 'ERR_REPLICATION_RESUME_MISMATCH';

export class ReplicationError extends Error {
  static readonly NAME = 'ReplicationError';
  override readonly name = ReplicationError.NAME;
  readonly code: ReplicationErrorCode;
  constructor(code: ReplicationErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export interface ReplicationLimits {
  /** Largest header / answer frame (a catalog entry with its attributes). */
  frameBytesMax: number;
  /** Largest instance accepted. */
  bodyBytesMax: number;
  /** Largest custody message (a repairKeys message of repairKeysMax keys fits well below). */
  custodyMessageBytesMax: number;
  /** Concurrent inbound streams per protocol, all peers together. */
  inboundReplicationsMax: number;
  /** Instances one replicate-batch stream may offer (and one fetch-batch ask for). Catch-up of 1,000 from
   *  ready: 1.11-1.24 s with 64, 0.95-1.07 s with 128 (fewer round trips; 3 runs each). */
  batchEntriesMax: number;
  /** Commits of one received batch running at once (the store combines them into shared synced batches):
   *  a whole batch, so a round is not cut short while the sender waits (catch-up from ready 1.22-1.36 s
   *  with 16, 1.11-1.24 s with 64). */
  batchCommitsInFlightMax: number;
  /** ...and their bytes at most (each holds at most its instance in memory until committed), so a batch
   *  of large instances keeps fewer running: with inboundReplicationsMax streams, 64 MiB at most in all. */
  batchCommitBytesInFlightMax: number;
  /** Concurrent push streams received: one per association storing at another site, plus the idle ones
   *  senders keep (idleStreamsPerPeerMax per site). A stream over the limit is reset and custody falls back. */
  inboundPushesMax: number;
  inboundFetchesMax: number;
  inboundCustodyMessagesMax: number;
  inboundQueriesMax: number;
  /** Custody messages one /custody/1 stream may carry. */
  custodyMessagesPerStreamMax: number;
  /** Entries a query answer may carry. */
  queryEntriesMax: number;
  /** Deadline of one whole transfer (replicate, fetch) and of one small exchange. */
  transferTimeoutMs: number;
  exchangeTimeoutMs: number;
  /**
   * A replicate-batch that moves no byte and gets no answer for this long is given up (its copies are
   * offered again later), well before transferTimeoutMs: a receiver whose store faulted mid-batch held
   * the sender's whole queue to that peer for up to the transfer deadline.
   */
  stallTimeoutMs: number;
}

export const defaultReplicationLimits: ReplicationLimits = {
  frameBytesMax: 1024 * 1024,
  bodyBytesMax: 8 * 1024 * 1024 * 1024,
  custodyMessageBytesMax: 1024 * 1024,
  inboundReplicationsMax: 16,
  inboundPushesMax: 64,
  batchEntriesMax: 128,
  batchCommitsInFlightMax: 128,
  batchCommitBytesInFlightMax: 4 * 1024 * 1024,
  inboundFetchesMax: 16,
  inboundCustodyMessagesMax: 32,
  inboundQueriesMax: 16,
  queryEntriesMax: 100_000,
  custodyMessagesPerStreamMax: 64,
  transferTimeoutMs: 10 * 60_000,
  exchangeTimeoutMs: 15_000,
  stallTimeoutMs: 60_000,
};

type Refused = { type: 'refused'; code: string; message: string };
/**
 * `offsets` (only to an offer with `resumable: true`; absent from peers before it): per wanted index, the
 * bytes of that instance the receiver kept from a cut transfer (partial-copies.ts); the body then carries
 * only the rest.
 */
type WantAnswer = { type: 'want'; indices: number[]; offsets?: number[] } | Refused;
type BatchFailure = { index: number; code: string; message: string };
type BatchAnswer = { type: 'batchResult'; siteName: string; stored: number[]; failed: BatchFailure[] } | Refused;
/** `fromByte` (absent: 0): the body starts at that byte, the offset the puller asked for (see fetch-batch/1). */
type InstanceAnswer = { type: 'instance'; entry: CatalogEntry; fromByte?: number };
type FetchAnswer = InstanceAnswer | { type: 'missing' } | Refused;
type FetchBatchAnswer = InstanceAnswer | { type: 'missing'; sopInstanceUid: string } | { type: 'end' } | Refused;
type QueryAnswer = { type: 'entries'; entries: CatalogEntry[] } | { type: 'end'; truncated: boolean } | Refused;

/** How long a stopping server waits, without a deadline given, for the handlers of the streams and the pulls it cut to end (they end at once). */
const handlersEndAfterCutMs = 5_000;

/** Query answers are cut into frames of about this many bytes of entries. */
const queryFrameBytesTarget = 256 * 1024;

/**
 * At most the bytes of `entry` in an envelope (MessagePack): its fixed fields, and per attribute its keys
 * and at most 3 bytes a UTF-16 unit of its value. Frames were sized at 64 bytes an attribute, but the
 * catalog keeps values of up to 1,024 bytes: 200 entries of 40 long values made an 'entries' frame of
 * 3.5 MB, over frameBytesMax, and the query was refused (hunt 100).
 */
function entryBytesMax(entry: CatalogEntry): number {
  let bytes = 512;
  for (const attribute of entry.attributes) bytes += 32 + 3 * (attribute.value?.length ?? 0);
  return bytes;
}

// ---------------------------------------------------------------- framing

async function writeFrameEnvelope<T extends { type: string }>(stream: MeshStream, message: T, maxBytes: number, signal: AbortSignal): Promise<void> {
  await stream.writer.writeFrame(encodeEnvelope(message, { maxBytes }), { signal });
}

/** Stages an envelope frame: it goes out with whatever is written next (see StreamWriter.stage). */
async function stageFrameEnvelope<T extends { type: string }>(stream: MeshStream, message: T, maxBytes: number, signal: AbortSignal): Promise<void> {
  await stream.writer.stageFrame(encodeEnvelope(message, { maxBytes }), { signal });
}

async function readRequestFrame<T extends { type: string }>(stream: MeshStream, maxBytes: number, signal: AbortSignal): Promise<T> {
  return decodeEnvelope<T>(await stream.reader.readFrame(maxBytes, { signal }), { maxBytes });
}

/**
 * A stored chunk goes to the stream in pieces of at most this many bytes, each one progress for the
 * stall rule (stallTimeoutMs, 60 s, at 256 KiB a piece: links down to ~4.4 KB/s). A chunk can be a whole
 * instance (one written in a single piece: the chunk is whatever the writer held when it flushed), and
 * one such chunk of 10 MB took 100 s at 100 KB/s, so a batch whose bytes flowed steadily was given up as
 * stalled ~60 s into it, and offered again to be cut the same way (hunt 123; hunt 121's stall at load 30
 * was this: its resumed 6.47 MB were one chunk's tail, 65 s of the link).
 */
const progressPieceBytesMax = 256 * 1024;

/** Filler for the part of a body that could not be read here (see writeBody). */
const fillerChunk = new Uint8Array(64 * 1024);

/**
 * An instance's body on the wire: its u64 length, then its stored bytes chunk by chunk. Whatever the
 * caller staged (an answer's frame) and the length go out with the first chunk, in one muxer frame.
 * Never fewer than byteLength bytes (the store's readers never yield more): a local copy that cannot be
 * read whole (StoreError ERR_STORE_CORRUPT) is padded with zeros, so the receiver's SHA-256 check fails
 * that one instance and the stream goes on with the next. Returns that read error (undefined when the
 * body was sent whole); a failure to write throws.
 * With `gather`, the length and the chunks are gathered (StreamWriter.gather) and nothing is flushed at the
 * end: the small instances of a batch then travel many per muxer frame, the caller flushing once.
 */
async function writeBody(
  stream: MeshStream,
  entry: CatalogEntry,
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  signal: AbortSignal,
  onProgress: () => void = () => {},
  gather = false,
  fromByte = 0,
): Promise<unknown> {
  const length = entry.byteLength - fromByte;
  if (gather) await stream.writer.gatherUint64(length, { signal });
  else await stream.writer.stageUint64(length, { signal });
  const source = fromByte > 0 ? bytesFrom(chunks, fromByte) : Symbol.asyncIterator in chunks ? chunks[Symbol.asyncIterator]() : chunks[Symbol.iterator]();
  let sent = 0;
  let readError: unknown;
  let finished = false;
  try {
    for (;;) {
      let next: IteratorResult<Uint8Array>;
      try {
        next = await source.next();
      } catch (error) {
        readError = error;
        break;
      }
      if (next.done === true) {
        finished = true;
        break;
      }
      const chunk = next.value;
      if (chunk.byteLength > progressPieceBytesMax) {
        // Written, not gathered: gathered, a piece this large would only be copied into the next send.
        for (let at = 0; at < chunk.byteLength; at += progressPieceBytesMax) {
          await stream.writer.write(chunk.subarray(at, Math.min(chunk.byteLength, at + progressPieceBytesMax)), { signal });
          onProgress();
        }
      } else {
        if (gather) await stream.writer.gather(chunk, { signal });
        else await stream.writer.write(chunk, { signal });
        onProgress();
      }
      sent += chunk.byteLength;
    }
  } finally {
    // A write that failed closes the read, and the LevelDB iterator behind it, now rather than at GC.
    if (!finished) await Promise.resolve(source.return?.()).catch(() => undefined);
  }
  if (sent < length) {
    readError ??= new StoreError('ERR_STORE_CORRUPT', `instance ${entry.sopInstanceUid} has ${fromByte + sent} bytes, catalog says ${entry.byteLength}`);
    while (sent < length) {
      const filler = fillerChunk.subarray(0, Math.min(fillerChunk.byteLength, length - sent));
      await stream.writer.write(filler, { signal });
      sent += filler.byteLength;
    }
  }
  if (!gather) await stream.writer.flush({ signal });
  return readError;
}

/** The chunks of a stored copy from byte `fromByte` on (those before are read and skipped). */
async function* bytesFrom(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, fromByte: number): AsyncGenerator<Uint8Array> {
  let skip = fromByte;
  for await (const chunk of chunks) {
    if (skip >= chunk.byteLength) {
      skip -= chunk.byteLength;
      continue;
    }
    yield skip > 0 ? chunk.subarray(skip) : chunk;
    skip = 0;
  }
}

/**
 * A fetch's 'instance' answer: the entry, then its body (from `fromByte`, a resumed pull), gathered (see writeBody: the caller's next write,
 * flush or close sends what is held). A local copy that cannot be read whole goes out padded and is logged.
 */
async function writeInstanceAnswer(
  stream: MeshStream,
  entry: CatalogEntry,
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  limits: ReplicationLimits,
  signal: AbortSignal,
  log: Logger,
  fromByte = 0,
): Promise<void> {
  const answer: InstanceAnswer = fromByte > 0 ? { type: 'instance', entry, fromByte } : { type: 'instance', entry };
  await stream.writer.gatherFrame(encodeEnvelope(answer, { maxBytes: limits.frameBytesMax }), { signal });
  const readError = await writeBody(stream, entry, chunks, signal, undefined, true, fromByte);
  if (readError !== undefined) {
    log.error('local copy unreadable: sent padded, the receiver rejects it', { sopInstanceUid: entry.sopInstanceUid, to: stream.remotePeer, error: errorText(readError) });
  }
}

/**
 * The byte a pull's answer starts at: the puller's kept offset when it is within the entry (else the whole
 * is sent, and the puller drops its part).
 */
function honouredOffset(entry: CatalogEntry, offset: number | undefined): number {
  return offset !== undefined && offset > 0 && offset <= entry.byteLength ? offset : 0;
}

/**
 * Where the body of an 'instance' answer starts: 0 (whole), or the offset asked for (`askedOffset`, the
 * part kept here) when the server honoured it; any other `fromByte` is malformed.
 */
function answeredFromByte(answer: InstanceAnswer, askedOffset: number | undefined): number {
  const fromByte = answer.fromByte ?? 0;
  if (fromByte !== 0 && fromByte !== askedOffset) throw new ReplicationError('ERR_REPLICATION_MALFORMED', `an answer from byte ${String(fromByte).slice(0, 32)}, asked from ${askedOffset ?? 0}`);
  return fromByte;
}

/**
 * What a pulled body's commit resumes from: the part kept here when the server honoured its offset (`fromByte` > 0);
 * a part the server ignored (it sent whole) is of no use any more and is aborted. A cut pull keeps its part in `partials`.
 */
function pulledResume(
  part: { writer: InstanceWriter; offset: number } | undefined,
  fromByte: number,
  partials: PartialCopies | undefined,
): { resumed?: { writer: InstanceWriter; offset: number }; partials?: PartialCopies } {
  if (part !== undefined && fromByte === 0) void part.writer.abort();
  return { ...(fromByte > 0 && { resumed: part }), ...(partials !== undefined && { partials }) };
}

/** Reads a body's u64 length, which must be the byteLength of the entry it belongs to (less `fromByte`, a resume's offset). */
async function readBodyLength(stream: MeshStream, entry: CatalogEntry, signal: AbortSignal, fromByte = 0): Promise<number> {
  const length = await stream.reader.readUint64({ signal });
  if (length !== entry.byteLength - fromByte) throw new ReplicationError('ERR_REPLICATION_MISMATCH', `body of ${length} bytes announced for an entry of ${entry.byteLength} resumed from byte ${fromByte}`);
  return length;
}

/** The entry of an 'instance' answer to a fetch of `sopInstanceUid`, checked before its bytes are read. */
function fetchedEntry(raw: unknown, sopInstanceUid: string, limits: ReplicationLimits): CatalogEntry {
  const entry = validateCatalogEntry(raw);
  if (entry.sopInstanceUid !== sopInstanceUid) throw new ReplicationError('ERR_REPLICATION_MALFORMED', `asked for ${sopInstanceUid}, got ${entry.sopInstanceUid}`);
  if (entry.byteLength > limits.bodyBytesMax) throw new ReplicationError('ERR_REPLICATION_REFUSED', `instance of ${entry.byteLength} bytes exceeds ${limits.bodyBytesMax}`);
  return entry;
}

/**
 * Commits of received instances that run while the next instance arrives: their synced batches reach
 * LevelDB together and share fsyncs. `receive` waits only when `max` commits, or `bytesMax` bytes of
 * them, are already running (one commit always may run, whatever its size).
 */
class CommitPipeline {
  private readonly running = new Set<Promise<void>>();
  private runningBytes = 0;
  constructor(
    private readonly max: number,
    private readonly bytesMax: number,
  ) {}

  /**
   * Reads the entry's bytes from the stream into a new writer (or, `resumed`, the rest of them into the
   * writer kept of a cut transfer) and starts the verified commit (byteLength and SHA-256 must match the
   * entry); `settled` gets its outcome. A failure to read throws; with `partials`, what arrived of a
   * stream that was cut is kept there for the next copy to resume.
   */
  async receive(
    store: ReplicaStore,
    stream: MeshStream,
    entry: CatalogEntry,
    signal: AbortSignal,
    settled: (outcome: { result: CommitResult } | { error: unknown }) => void,
    resume: { resumed?: { writer: InstanceWriter; offset: number }; partials?: PartialCopies } = {},
  ): Promise<void> {
    const writer = resume.resumed?.writer ?? store.beginWrite();
    // A large copy marks its progress, so a SIGKILL keeps what arrived (PartialCopies.progressWriter).
    const write = resume.partials?.progressWriter(entry.sopInstanceUid, stream.remotePeer, writer) ?? ((piece: Uint8Array) => writer.write(piece));
    try {
      // The writer keeps the pieces until it flushes them; the stream reader's buffers are never reused.
      for await (const piece of stream.reader.body(entry.byteLength - (resume.resumed?.offset ?? 0), { signal })) await write(piece);
    } catch (error) {
      if (resume.partials !== undefined && !(error instanceof StoreError)) resume.partials.keep(entry.sopInstanceUid, stream.remotePeer, writer);
      else await writer.abort();
      throw error;
    }
    const done = (): void => {
      this.running.delete(commit);
      this.runningBytes -= entry.byteLength;
    };
    const commit: Promise<void> = writer.commit(entry.sopInstanceUid, replicaEntryBuilder(entry)).then(
      (result) => {
        done();
        settled({ result });
      },
      async (error: unknown) => {
        done();
        await writer.abort();
        // Our kept part, not the sender's copy, may be what differs: the sender must not suspect its own.
        const resumedMismatch = resume.resumed !== undefined && error instanceof StoreError && error.code === 'ERR_STORE_REPLICA_MISMATCH';
        settled({ error: resumedMismatch ? new ReplicationError('ERR_REPLICATION_RESUME_MISMATCH', `resumed from byte ${resume.resumed!.offset}: ${error.message}`) : error });
      },
    );
    this.running.add(commit);
    this.runningBytes += entry.byteLength;
    while (this.running.size >= this.max || (this.running.size > 0 && this.runningBytes >= this.bytesMax)) await Promise.race(this.running);
  }

  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
  }
}

// ---------------------------------------------------------------- validation of what peers send

function isString(v: unknown, maxLength = 1024): v is string {
  return typeof v === 'string' && v.length <= maxLength;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Checks a catalog entry received from a peer field by field; throws ERR_REPLICATION_MALFORMED. */
export function validateCatalogEntry(value: unknown): CatalogEntry {
  const e = value as Record<string, unknown> | null;
  const bad = (why: string): never => {
    throw new ReplicationError('ERR_REPLICATION_MALFORMED', `malformed catalog entry: ${why}`);
  };
  if (e === null || typeof e !== 'object' || Array.isArray(e)) return bad('not a map');
  for (const field of ['sopInstanceUid', 'sopClassUid', 'studyInstanceUid', 'seriesInstanceUid'] as const) {
    if (!isString(e[field], 64) || !isValidUid(e[field] as string)) bad(`${field} is not a UID`);
  }
  for (const field of ['patientId', 'transferSyntaxUid', 'blobId'] as const) if (!isString(e[field], 256)) bad(`${field} is not a string`);
  if (!isString(e.sha256, 64) || !/^[0-9a-f]{64}$/.test(e.sha256 as string)) bad('sha256 is not 64 hex digits');
  if (!isCount(e.byteLength)) bad('byteLength is not a count');
  if (typeof e.storedAtMs !== 'number' || !Number.isFinite(e.storedAtMs)) bad('storedAtMs is not a number');
  if (!Array.isArray(e.attributes) || e.attributes.length > 4096) bad('attributes is not a bounded list');
  for (const a of e.attributes as unknown[]) {
    const attr = a as Record<string, unknown> | null;
    if (attr === null || typeof attr !== 'object' || !isCount(attr.tag) || !isString(attr.vr, 2)) bad('an attribute is malformed');
    if (attr!.value !== undefined && attr!.value !== null && !isString(attr!.value, 64 * 1024)) bad('an attribute value is not text');
  }
  return {
    sopInstanceUid: e.sopInstanceUid as string,
    sopClassUid: e.sopClassUid as string,
    studyInstanceUid: e.studyInstanceUid as string,
    seriesInstanceUid: e.seriesInstanceUid as string,
    patientId: e.patientId as string,
    transferSyntaxUid: e.transferSyntaxUid as string,
    byteLength: e.byteLength as number,
    sha256: e.sha256 as string,
    storedAtMs: e.storedAtMs as number,
    blobId: e.blobId as string,
    attributes: (e.attributes as Array<Record<string, unknown>>).map((a) => ({
      tag: a.tag as number,
      vr: a.vr as string,
      value: typeof a.value === 'string' ? a.value : undefined,
    })),
  };
}

function validateInstanceKeys(value: unknown): InstanceKey[] | undefined {
  if (!Array.isArray(value) || value.length > 100_000) return undefined;
  const out: InstanceKey[] = [];
  for (const k of value as unknown[]) {
    const key = k as Record<string, unknown> | null;
    if (key === null || typeof key !== 'object' || !isString(key.sopInstanceUid, 64) || !isString(key.sha256, 64)) return undefined;
    if (!isValidUid(key.sopInstanceUid)) return undefined;
    out.push({ sopInstanceUid: key.sopInstanceUid, sha256: key.sha256 });
  }
  return out;
}

/** A repair window's start: absent (from the first UID; also from peers that predate it) or a UID-sized string. */
function isOptionalAfterUid(value: unknown): value is string | undefined {
  return value === undefined || isString(value, 64);
}

/** An array of at most `lengthMax` whole numbers below `bound` (bucket or leaf numbers). */
function isIndexList(value: unknown, lengthMax: number, bound: number): value is number[] {
  return Array.isArray(value) && value.length <= lengthMax && value.every((b) => Number.isInteger(b) && (b as number) >= 0 && (b as number) < bound);
}

/** A custody message from a peer, or undefined when malformed (the reducer only ever sees valid ones). */
export function validateCustodyMessage(value: unknown): CustodyMessage | undefined {
  const m = value as Record<string, unknown> | null;
  if (m === null || typeof m !== 'object') return undefined;
  switch (m.type) {
    case 'replicaAck':
      if (!isString(m.sopInstanceUid, 64) || !isValidUid(m.sopInstanceUid) || !isString(m.siteName, 256)) return undefined;
      return { type: 'replicaAck', sopInstanceUid: m.sopInstanceUid, siteName: m.siteName };
    case 'repairDigest':
      if (!Array.isArray(m.buckets) || m.buckets.length !== 256 || !m.buckets.every((b) => isString(b, 64))) return undefined;
      if (!isOptionalAfterUid(m.afterUid) || (m.leaves !== undefined && typeof m.leaves !== 'boolean')) return undefined;
      return { type: 'repairDigest', buckets: m.buckets as string[], afterUid: m.afterUid, ...(m.leaves === true ? { leaves: true } : {}) };
    case 'repairLeaves': {
      if (!isIndexList(m.buckets, repairLeafBucketsMax, digestBucketCount) || !isOptionalAfterUid(m.afterUid)) return undefined;
      const bucketBytes = digestLeavesPerBucket * digestHashBytes;
      if (!(m.leafHashes instanceof Uint8Array) || m.leafHashes.length !== m.buckets.length * bucketBytes) return undefined;
      return { type: 'repairLeaves', buckets: m.buckets, leafHashes: m.leafHashes, afterUid: m.afterUid };
    }
    case 'repairKeys': {
      if (!isIndexList(m.buckets, digestBucketCount, digestBucketCount)) return undefined;
      if (m.leaves !== undefined && !isIndexList(m.leaves, repairLeafBucketsMax * digestLeavesPerBucket, digestBucketCount * digestLeavesPerBucket)) return undefined;
      const keys = validateInstanceKeys(m.keys);
      if (keys === undefined || typeof m.replyWanted !== 'boolean' || !isOptionalAfterUid(m.afterUid)) return undefined;
      return { type: 'repairKeys', buckets: m.buckets, ...(m.leaves === undefined ? {} : { leaves: m.leaves }), keys, replyWanted: m.replyWanted, afterUid: m.afterUid };
    }
    default:
      return undefined;
  }
}

function validateQueryRequest(value: unknown): QueryRequest {
  const r = value as Record<string, unknown> | null;
  const bad = (why: string): never => {
    throw new ReplicationError('ERR_REPLICATION_MALFORMED', `malformed retrieve request: ${why}`);
  };
  if (r === null || typeof r !== 'object') return bad('not a map');
  if (r.root !== 'PATIENT' && r.root !== 'STUDY') bad('unknown root');
  if (r.level !== 'PATIENT' && r.level !== 'STUDY' && r.level !== 'SERIES' && r.level !== 'IMAGE') bad('unknown level');
  if (!Array.isArray(r.keys) || r.keys.length > 256) return bad('keys is not a bounded list');
  const keys = (r.keys as unknown[]).map((k) => {
    const e = k as Record<string, unknown> | null;
    if (e === null || typeof e !== 'object' || !isCount(e.tag) || !isString(e.vr, 2)) return bad('a key is malformed');
    if (e.value !== undefined && e.value !== null && !isString(e.value, 1024 * 1024)) return bad('a key value is not text');
    return { tag: e.tag, vr: e.vr, value: typeof e.value === 'string' ? e.value : undefined };
  });
  return { root: r.root as QueryRequest['root'], level: r.level as QueryRequest['level'], keys };
}

function refusedError(answer: Refused): ReplicationError {
  const code =
    answer.code === 'ERR_REPLICATION_BUSY' || answer.code === 'ERR_REPLICATION_RESUME_MISMATCH'
      ? answer.code
      : answer.code === 'ERR_STORE_REPLICA_MISMATCH'
        ? 'ERR_REPLICATION_MISMATCH'
        : 'ERR_REPLICATION_REFUSED';
  return new ReplicationError(code, `peer refused: ${String(answer.code).slice(0, 64)}: ${String(answer.message).slice(0, 512)}`);
}

function refusalOf(error: unknown): Refused {
  const e = error as { code?: unknown; message?: unknown };
  return {
    type: 'refused',
    code: typeof e?.code === 'string' ? e.code : 'ERR_REPLICATION_REFUSED',
    message: (typeof e?.message === 'string' ? e.message : String(error)).slice(0, 1024),
  };
}

function unexpected(what: string, answer: { type: string }): ReplicationError {
  return new ReplicationError('ERR_REPLICATION_MALFORMED', `unexpected ${what} answer of type ${String(answer.type).slice(0, 64)}`);
}

// ---------------------------------------------------------------- server side

/**
 * Concurrent streams of one protocol. With `waitMs`, a stream over the limit waits (up to `waitersMax` of
 * them, first come first served) that long for a slot before it is refused.
 */
class Slots {
  private used = 0;
  private readonly waiters: Array<(taken: boolean) => void> = [];
  constructor(
    private readonly max: number,
    private readonly queue: { waitMs: number; waitersMax: number } = { waitMs: 0, waitersMax: 0 },
  ) {}

  take(): Promise<boolean> {
    if (this.used < this.max) {
      this.used++;
      return Promise.resolve(true);
    }
    if (this.waiters.length >= this.queue.waitersMax) return Promise.resolve(false);
    return new Promise((resolve) => {
      const waiter = (taken: boolean) => {
        clearTimeout(timer);
        resolve(taken);
      };
      const timer = setTimeout(() => {
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        resolve(false);
      }, this.queue.waitMs);
      this.waiters.push(waiter);
    });
  }

  give(): void {
    // The slot passes straight to the first waiter, if any.
    const next = this.waiters.shift();
    if (next !== undefined) next(true);
    else this.used--;
  }
}

export interface ReplicationServerInit {
  node: MeshNode;
  store: ReplicaStore;
  siteName: string;
  log: Logger;
  /** A pushed copy was verified and made durable here (the stream ack is the replicaAck). */
  onReplicaStored(entry: CatalogEntry, fromPeerId: string): void;
  /** A valid custody message arrived. */
  onCustodyMessage(fromPeerId: string, message: CustodyMessage): void;
  /**
   * A peer offered copies we lack (their UIDs) and is sending them, in a batch or a push; called again
   * with those still to come every copiesArrivingRepeatMs while their bytes flow (custody pulls none of them meanwhile: see
   * 'copiesOffered').
   */
  onCopiesOffered?(sopInstanceUids: string[], fromPeerId: string): void;
  limits?: Partial<ReplicationLimits>;
  /** Bounds on what is kept of cut transfers for a resume (partial-copies.ts). */
  partialCopyLimits?: Partial<PartialCopyLimits>;
}

export interface ReplicationServer {
  /** What is kept of cut transfers: the copies received here, and this site's pulls (pass it as ClientOptions.partials). */
  readonly partialCopies: PartialCopies;
  /**
   * Stops receiving: cuts the copies arriving and this site's pulls, and waits until `deadline` for them
   * to keep what arrived (a later stop does not cut them again). A stopping peer calls it as soon as its
   * associations no longer need them.
   */
  cut(deadline: AbortSignal): Promise<void>;
  /** cut, then stops the table of kept parts; waits until `deadline` in all (handlersEndAfterCutMs without one). */
  stop(deadline?: AbortSignal): Promise<void>;
}

export async function serveReplication(init: ReplicationServerInit): Promise<ReplicationServer> {
  const limits = { ...defaultReplicationLimits, ...init.limits };
  const { node, store, log } = init;
  const partials = new PartialCopies({ ...defaultPartialCopyLimits, ...init.partialCopyLimits }, systemClock, store);
  const replicateSlots = new Slots(limits.inboundReplicationsMax);
  const pushSlots = new Slots(limits.inboundPushesMax);
  const fetchSlots = new Slots(limits.inboundFetchesMax);
  const custodySlots = new Slots(limits.inboundCustodyMessagesMax);
  // A burst of retrieves at several sites asks each peer at once: those over the limit wait rather than be
  // refused, which the asker would count as a silent peer (0xA701: helper 43). 2 s was too short for 36
  // retrieves at once on a busy machine (helper 45); the wait stays within the asker's exchange deadline.
  const querySlots = new Slots(limits.inboundQueriesMax, { waitMs: Math.min(8_000, limits.exchangeTimeoutMs / 2), waitersMax: 64 });
  // A peer whose store refuses every stream (a full disk) fails several a second: one line per 5 s each.
  const failures = createRepeatLimiter(log, 5_000);

  /** Copies being received (batches, pushes), with their handler's end: a stopping server cuts them and waits for that. */
  const handling = new Map<MeshStream, Promise<void>>();
  const receivesCopies = new Set([REPLICATE_BATCH_PROTOCOL, PUSH_PROTOCOL]);
  /**
   * Runs a handler within its slot and deadline (null: the handler keeps its own deadlines); any failure is
   * answered (if possible) and logged. With `resetOnRefusal` (a sender that is still writing and not yet
   * reading: push/1) the stream is reset instead.
   */
  const guarded = (protocol: string, slots: Slots, timeoutMs: number | null, body: (stream: MeshStream, signal: AbortSignal) => Promise<void>, resetOnRefusal = false) =>
    async (stream: MeshStream): Promise<void> => {
      const handled = guardedRun(protocol, slots, timeoutMs, body, resetOnRefusal, stream);
      if (!receivesCopies.has(protocol)) return handled;
      handling.set(stream, handled);
      try {
        await handled;
      } finally {
        handling.delete(stream);
      }
    };
  const guardedRun = async (protocol: string, slots: Slots, timeoutMs: number | null, body: (stream: MeshStream, signal: AbortSignal) => Promise<void>, resetOnRefusal: boolean, stream: MeshStream): Promise<void> => {
    const deadline = timeoutMs === null ? undefined : startDeadline(timeoutMs);
    const signal = deadline?.signal ?? new AbortController().signal;
    try {
      if (!(await slots.take())) {
        if (resetOnRefusal) stream.abort(new ReplicationError('ERR_REPLICATION_BUSY', `too many concurrent ${protocol} streams`));
        else await answerAndClose(stream, { type: 'refused', code: 'ERR_REPLICATION_BUSY', message: `too many concurrent ${protocol} streams` }, signal);
        return;
      }
      try {
        await body(stream, signal);
      } catch (error) {
        failures.warn(`${protocol} ${stream.remotePeer}`, 'custody stream failed', { protocol, peer: stream.remotePeer, error: errorText(error) });
        if (resetOnRefusal) stream.abort(error instanceof Error ? error : new Error(String(error)));
        else await answerAndClose(stream, refusalOf(error), signal);
      } finally {
        slots.give();
      }
    } finally {
      deadline?.clear();
    }
  };

  /**
   * The first frame of a request. Its first bytes are due within exchangeTimeoutMs, not the transfer's
   * deadline: a peer that opened streams and sent nothing held every slot of a protocol for 10 minutes
   * (hunt 100: another peer's batches refused busy, its queries waiting, for as long as it liked). The
   * whole frame only within stallTimeoutMs, the sender's own bound on a transfer without progress: an
   * offer of 128 entries with full headers (~0.5 MB) on a slow link, or one busy with other streams, takes
   * longer than exchangeTimeoutMs while it arrives (yamux delivers it in frames of up to a stream window:
   * nothing is seen of a frame before its last byte), and every batch was refused (hunt 102).
   */
  const readRequest = async <T extends { type: string }>(stream: MeshStream, signal: AbortSignal): Promise<T> => {
    const whole = startDeadline(limits.stallTimeoutMs, signal, `the request not whole in ${limits.stallTimeoutMs} ms`);
    const firstBytes = startDeadline(limits.exchangeTimeoutMs, whole.signal, `no byte of the request in ${limits.exchangeTimeoutMs} ms`);
    // The stream's reader listens from its creation, so a listener of ours takes nothing from it.
    stream.raw.addEventListener('message', firstBytes.clear, { once: true });
    if (stream.reader.bufferedBytes > 0) firstBytes.clear();
    try {
      return await readRequestFrame<T>(stream, limits.frameBytesMax, firstBytes.signal);
    } finally {
      firstBytes.clear();
      whole.clear();
      stream.raw.removeEventListener('message', firstBytes.clear);
    }
  };

  const answerAndClose = async <T extends { type: string }>(stream: MeshStream, answer: T, signal: AbortSignal): Promise<void> => {
    try {
      await writeFrameEnvelope(stream, answer, limits.frameBytesMax, signal);
      await stream.closeWrite({ signal });
    } catch {
      stream.abort(new Error('custody stream failed'));
    }
  };

  // A registration that throws (the protocol handled already) must not leave the others registered,
  // nor the partial copies listening to the store: the caller never gets a server to stop.
  const handled: string[] = [];
  const handle = async (protocol: string, handler: (stream: MeshStream) => Promise<void>, options: { maxInboundStreams: number }): Promise<void> => {
    await node.handle(protocol, handler, options);
    handled.push(protocol);
  };
  try {
    await handle(
      REPLICATE_BATCH_PROTOCOL,
      guarded(REPLICATE_BATCH_PROTOCOL, replicateSlots, limits.transferTimeoutMs, async (stream, signal) => {
        const offer = await readRequest<{ type: string; entries?: unknown; resumable?: unknown }>(stream, signal);
        if (offer.type !== 'offerBatch' || !Array.isArray(offer.entries) || offer.entries.length > limits.batchEntriesMax) {
          throw new ReplicationError('ERR_REPLICATION_MALFORMED', `expected an offerBatch of at most ${limits.batchEntriesMax} entries`);
        }
        const entries = offer.entries.map(validateCatalogEntry);
        for (const entry of entries) {
          if (entry.byteLength > limits.bodyBytesMax) throw new ReplicationError('ERR_REPLICATION_REFUSED', `instance of ${entry.byteLength} bytes exceeds ${limits.bodyBytesMax}`);
        }
        const held = await store.getEntries(entries.map((e) => e.sopInstanceUid));
        const offered = new Set<string>();
        const wanted: number[] = [];
        for (const [index, entry] of entries.entries()) {
          // A UID offered twice is wanted once.
          if (held[index] === undefined && !offered.has(entry.sopInstanceUid)) wanted.push(index);
          else if (held[index] !== undefined) partials.drop(entry.sopInstanceUid);
          offered.add(entry.sopInstanceUid);
        }
        // A sender that can resume is told what was kept of each wanted copy; the others send every byte.
        const resumed = new Map<number, { writer: InstanceWriter; offset: number }>();
        for (const index of wanted) {
          const uid = entries[index]!.sopInstanceUid;
          const kept = offer.resumable === true ? partials.take(uid, stream.remotePeer) : undefined;
          // More than the entry holds: not this instance's bytes. Without a resume the copy comes whole.
          if (kept !== undefined && kept.offset <= entries[index]!.byteLength) resumed.set(index, kept);
          else if (kept !== undefined) void kept.writer.abort();
          else partials.drop(uid);
        }
        const want: WantAnswer = resumed.size === 0 ? { type: 'want', indices: wanted } : { type: 'want', indices: wanted, offsets: wanted.map((index) => resumed.get(index)?.offset ?? 0) };
        try {
          await writeFrameEnvelope(stream, want, limits.frameBytesMax, signal);
        } catch (error) {
          for (const kept of resumed.values()) void kept.writer.abort();
          throw error;
        }
        const stored: number[] = [];
        const failed: BatchFailure[] = [];
        const commits = new CommitPipeline(limits.batchCommitsInFlightMax, limits.batchCommitBytesInFlightMax);
        // Custody hears which copies are still on their way (from the one being read on) until they are in.
        let receiving = 0;
        let arriving: ReturnType<typeof setInterval> | undefined;
        if (wanted.length > 0 && init.onCopiesOffered !== undefined) {
          const onOffered = init.onCopiesOffered;
          const tell = (): void => onOffered(wanted.slice(receiving).map((index) => entries[index]!.sopInstanceUid), stream.remotePeer);
          tell();
          arriving = setInterval(tell, copiesArrivingRepeatMs);
          arriving.unref();
        }
        try {
          for (const [position, index] of wanted.entries()) {
            receiving = position;
            const entry = entries[index]!;
            const resumedAt = resumed.get(index);
            await readBodyLength(stream, entry, signal, resumedAt?.offset);
            // From here the commit pipeline owns the kept writer (it keeps it again if the stream is cut).
            resumed.delete(index);
            await commits.receive(store, stream, entry, signal, (outcome) => {
              if ('error' in outcome) {
                const { code, message } = refusalOf(outcome.error);
                failed.push({ index, code, message });
                return;
              }
              stored.push(index);
              if (outcome.result.outcome === 'stored') init.onReplicaStored(outcome.result.entry, stream.remotePeer);
            }, { resumed: resumedAt, partials });
          }
        } finally {
          clearInterval(arriving);
          // Kept parts of copies the stream never reached go back, for the next offer.
          for (const [index, kept] of resumed) partials.keep(entries[index]!.sopInstanceUid, stream.remotePeer, kept.writer);
          await commits.drain();
        }
        await answerAndClose(stream, { type: 'batchResult', siteName: init.siteName, stored: stored.sort((x, y) => x - y), failed }, signal);
      }),
      { maxInboundStreams: limits.inboundReplicationsMax },
    );

    const pushLimits = { ...defaultPushLimits, frameBytesMax: limits.frameBytesMax, bodyBytesMax: limits.bodyBytesMax, transferTimeoutMs: limits.transferTimeoutMs };
    await handle(
      PUSH_PROTOCOL,
      guarded(
        PUSH_PROTOCOL,
        pushSlots,
        // A push stream carries one push after another: each has its own deadline, and idle streams end.
        null,
        (stream, signal) =>
          receivePushes(stream, signal, {
            store,
            siteName: init.siteName,
            limits: pushLimits,
            validateEntry: validateCatalogEntry,
            onReplicaStored: init.onReplicaStored,
            ...(init.onCopiesOffered !== undefined && { onCopiesOffered: init.onCopiesOffered }),
            partials,
          }),
        true,
      ),
      { maxInboundStreams: limits.inboundPushesMax },
    );

    await handle(
      FETCH_PROTOCOL,
      guarded(FETCH_PROTOCOL, fetchSlots, limits.transferTimeoutMs, async (stream, signal) => {
        const request = await readRequest<{ type: string; sopInstanceUid?: unknown; offset?: unknown }>(stream, signal);
        if (request.type !== 'fetch' || !isString(request.sopInstanceUid, 64) || !isValidUid(request.sopInstanceUid) || (request.offset !== undefined && !isCount(request.offset))) {
          throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'malformed fetch request');
        }
        const entry = await store.getEntry(request.sopInstanceUid);
        if (entry === undefined) {
          await answerAndClose(stream, { type: 'missing' }, signal);
          return;
        }
        await writeInstanceAnswer(stream, entry, store.readInstance(entry), limits, signal, log, honouredOffset(entry, request.offset));
        await stream.closeWrite({ signal });
      }),
      { maxInboundStreams: limits.inboundFetchesMax },
    );

    await handle(
      FETCH_BATCH_PROTOCOL,
      guarded(FETCH_BATCH_PROTOCOL, fetchSlots, limits.transferTimeoutMs, async (stream, signal) => {
        const request = await readRequest<{ type: string; uids?: unknown; offsets?: unknown }>(stream, signal);
        const { uids, offsets } = request;
        if (request.type !== 'fetchBatch' || !Array.isArray(uids) || uids.length > limits.batchEntriesMax || !uids.every((u) => isString(u, 64) && isValidUid(u))) {
          throw new ReplicationError('ERR_REPLICATION_MALFORMED', `expected a fetchBatch of at most ${limits.batchEntriesMax} UIDs`);
        }
        if (offsets !== undefined && (!Array.isArray(offsets) || offsets.length !== uids.length || !offsets.every(isCount))) {
          throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'fetchBatch offsets do not match its UIDs');
        }
        // Answers in request order: each 'missing' is staged and goes out with the next instance (or the 'end').
        const held = await store.getEntries(uids as string[]);
        const bodies = store.readInstances(held.filter((entry): entry is CatalogEntry => entry !== undefined));
        for (const [index, entry] of held.entries()) {
          if (entry === undefined) {
            await stageFrameEnvelope(stream, { type: 'missing', sopInstanceUid: (uids as string[])[index]! }, limits.frameBytesMax, signal);
            continue;
          }
          const body = await bodies.next();
          if (body.done === true) throw new StoreError('ERR_STORE_CORRUPT', `the store ended its reads before instance ${index + 1} of ${held.length}`);
          await writeInstanceAnswer(stream, entry, body.value.chunks, limits, signal, log, honouredOffset(entry, (offsets as number[] | undefined)?.[index]));
        }
        await bodies.return(undefined);
        await answerAndClose(stream, { type: 'end' }, signal);
      }),
      { maxInboundStreams: limits.inboundFetchesMax },
    );

    await handle(
      CUSTODY_PROTOCOL,
      guarded(CUSTODY_PROTOCOL, custodySlots, limits.exchangeTimeoutMs, async (stream, signal) => {
        for (let count = 0; ; count++) {
          const frame = await stream.reader.readFrameOrEnd(limits.custodyMessageBytesMax, { signal });
          if (frame === null) break;
          if (count >= limits.custodyMessagesPerStreamMax) throw new ReplicationError('ERR_REPLICATION_MALFORMED', `more than ${limits.custodyMessagesPerStreamMax} custody messages on one stream`);
          const raw = decodeEnvelope<{ type: string }>(frame, { maxBytes: limits.custodyMessageBytesMax });
          const message = validateCustodyMessage(raw);
          if (message === undefined) throw new ReplicationError('ERR_REPLICATION_MALFORMED', `malformed custody message of type ${String(raw.type).slice(0, 64)}`);
          init.onCustodyMessage(stream.remotePeer, message);
        }
        await stream.closeWrite({ signal });
      }),
      { maxInboundStreams: limits.inboundCustodyMessagesMax },
    );

    await handle(
      QUERY_PROTOCOL,
      guarded(QUERY_PROTOCOL, querySlots, limits.transferTimeoutMs, async (stream, signal) => {
        const raw = await readRequest<{ type: string; request?: unknown; limit?: unknown }>(stream, signal);
        if (raw.type !== 'retrieve') throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'expected a retrieve request');
        const request = validateQueryRequest(raw.request);
        const limit = isCount(raw.limit) ? Math.min(raw.limit, limits.queryEntriesMax) : limits.queryEntriesMax;
        let batch: CatalogEntry[] = [];
        let batchBytes = 0;
        let sent = 0;
        let truncated = false;
        // resolveRetrieve validates the identifier and throws QueryError: answered as 'refused' by guarded().
        for await (const entry of resolveRetrieve(store.db, request)) {
          if (sent >= limit) {
            truncated = true;
            break;
          }
          batch.push(entry);
          sent++;
          batchBytes += entryBytesMax(entry);
          if (batchBytes >= queryFrameBytesTarget) {
            await writeFrameEnvelope(stream, { type: 'entries', entries: batch }, limits.frameBytesMax, signal);
            batch = [];
            batchBytes = 0;
          }
        }
        if (batch.length > 0) await writeFrameEnvelope(stream, { type: 'entries', entries: batch }, limits.frameBytesMax, signal);
        await answerAndClose(stream, { type: 'end', truncated }, signal);
      }),
      // Room for the waiting ones: a query over the slots waits, or is answered "busy", rather than reset.
      { maxInboundStreams: limits.inboundQueriesMax + 64 },
    );
  } catch (error) {
    await Promise.allSettled(handled.map((protocol) => node.unhandle(protocol)));
    await partials.stop();
    throw error;
  }
  // The parts kept before a restart come back in the background (their bytes are read back for their SHA-256).
  const restoring = partials.restore().catch((error: unknown) => log.warn('kept parts of cut copies not restored', { error: errorText(error) }));

  let cutting: Promise<void> | undefined;
  const cut = (deadline: AbortSignal): Promise<void> =>
    (cutting ??= (async () => {
      // libp2p drops a handler at once and then updates its own peer record: that wait ends with the deadline too.
      await untilAborted(Promise.allSettled([REPLICATE_BATCH_PROTOCOL, PUSH_PROTOCOL, FETCH_PROTOCOL, FETCH_BATCH_PROTOCOL, CUSTODY_PROTOCOL, QUERY_PROTOCOL].map((p) => node.unhandle(p))), deadline);
      // Copies still arriving are cut here, while the table keeps what arrived: a restart is a cut too, and
      // their parts then outlive it (cut later, by the node's stop, they would find the table stopped).
      for (const stream of handling.keys()) stream.abort(new ReplicationError('ERR_REPLICATION_REFUSED', 'the receiving peer is stopping'));
      // This site's pulls are cut at the same time: both keep their parts within the one deadline (hunt 149).
      await untilAborted(Promise.allSettled([...handling.values(), partials.cutPulls()]), deadline);
    })());

  return {
    partialCopies: partials,
    cut,
    async stop(deadline) {
      const own = deadline === undefined ? startDeadline(handlersEndAfterCutMs) : undefined;
      const until = deadline ?? own!.signal;
      await cut(until);
      await partials.stop(until);
      own?.clear();
      // Waits for the restore only to the end of the part it reads back, not through the rest.
      await restoring;
    },
  };
}

// ---------------------------------------------------------------- client side

export interface ClientOptions {
  limits?: Partial<ReplicationLimits>;
  signal?: AbortSignal;
  /** A batch transfer (replicateBatchTo, fetchBatchFrom) says when its bytes start and stop flowing. */
  phases?: BatchPhases;
  /**
   * The node's copies in flight per peer (bulk-in-flight.ts): replicateBatchTo counts its batch there, and
   * sendCustodyMessages waits behind those; without it, neither is counted nor waited for.
   */
  bulkInFlight?: BulkInFlight;
  /**
   * Parts kept of cut transfers (the replication server's table): a pull (fetchBatchFrom, fetchFrom) asks
   * only for what follows a part kept from that peer, and keeps what arrived of a pull that is cut. Without
   * it a pull keeps nothing, and an instance whose transfer takes longer than transferTimeoutMs never arrives.
   */
  partials?: PartialCopies;
}

/** withStream under a deadline of its own (and `options.signal`), its timer cleared when the exchange ends. */
function exchange<T>(node: MeshNode, peerId: string, protocol: string, timeoutMs: number, options: ClientOptions, run: (stream: MeshStream, signal: AbortSignal) => Promise<T>): Promise<T> {
  return withDeadline(timeoutMs, options.signal, (signal) => withStream(node, peerId, protocol, signal, (stream) => run(stream, signal)));
}

async function withStream<T>(node: MeshNode, peerId: string, protocol: string, signal: AbortSignal, run: (stream: MeshStream) => Promise<T>): Promise<T> {
  const stream = await node.openStream(peerId, protocol, { signal });
  try {
    const result = await run(stream);
    await stream.close({ signal });
    return result;
  } catch (error) {
    stream.abort(error instanceof Error ? error : new Error(String(error)));
    throw error;
  }
}

export type BatchOutcome = { sopInstanceUid: string; outcome: 'stored' | 'have'; siteName: string } | { sopInstanceUid: string; error: ReplicationError };

/**
 * Pushes up to `batchEntriesMax` stored instances to a peer over one stream. One outcome per entry, in
 * order: held by the peer (this transfer or before) or failed. Throws only when the whole stream failed.
 */
export async function replicateBatchTo(
  node: MeshNode,
  peerId: string,
  store: ReplicaStore,
  entries: readonly CatalogEntry[],
  options: ClientOptions = {},
): Promise<BatchOutcome[]> {
  const limits = { ...defaultReplicationLimits, ...options.limits };
  if (entries.length > limits.batchEntriesMax) throw new RangeError(`a batch holds at most ${limits.batchEntriesMax} entries`);
  let offer: Uint8Array;
  try {
    // resumable: this sender sends a wanted copy from the offset the receiver names (older receivers ignore it).
    offer = encodeEnvelope({ type: 'offerBatch', entries, resumable: true }, { maxBytes: limits.frameBytesMax });
  } catch (error) {
    // Entries with rich headers may not fit one offer frame: each half goes on its own stream.
    if (!(error instanceof EnvelopeError && error.code === 'ERR_ENVELOPE_TOO_LARGE')) throw error;
    if (entries.length === 1) return [{ sopInstanceUid: entries[0]!.sopInstanceUid, error: new ReplicationError('ERR_REPLICATION_REFUSED', error.message) }];
    const half = Math.ceil(entries.length / 2);
    // The halves go one after the other: for the batch's phases, its bytes flow from the first to the last.
    const halves = { ...options, phases: undefined };
    options.phases?.flowing();
    const outcomes = [
      ...(await replicateBatchTo(node, peerId, store, entries.slice(0, half), halves)),
      ...(await replicateBatchTo(node, peerId, store, entries.slice(half), halves)),
    ];
    options.phases?.flowed();
    return outcomes;
  }
  const transfer = startDeadline(limits.transferTimeoutMs, options.signal);
  const stall = stallWatch(transfer.signal, limits.stallTimeoutMs);
  const { signal, touch } = stall;
  const ended = options.bulkInFlight?.started(peerId) ?? (() => undefined);
  try {
    return await replicateBatchOver(node, peerId, store, entries, offer, limits, options, signal, touch);
  } catch (error) {
    if (!stall.stalled) throw error;
    throw new ReplicationError('ERR_REPLICATION_STALLED', `replicate-batch to ${peerId}: no byte moved and no answer for ${limits.stallTimeoutMs / 1000} s (the receiver may be stalled); offered again later`, { cause: error });
  } finally {
    ended();
    stall.stop();
    transfer.clear();
  }
}

/**
 * A signal that also aborts when `touch` was not called for `idleMs` (nor `progressAtMs` moved within it,
 * when given): a peer that stopped reading or answering. Checked a few times per idleMs, so it aborts
 * between idleMs and 1.25 x idleMs.
 */
function stallWatch(parent: AbortSignal, idleMs: number, progressAtMs?: () => number): { signal: AbortSignal; touch(): void; stop(): void; readonly stalled: boolean } {
  const controller = new AbortController();
  let lastProgressMs = performance.now();
  const timer = setInterval(() => {
    if (performance.now() - Math.max(lastProgressMs, progressAtMs?.() ?? Number.NEGATIVE_INFINITY) < idleMs) return;
    controller.abort(new Error(`no progress for ${idleMs} ms`));
    clearInterval(timer);
  }, Math.max(10, idleMs / 4));
  timer.unref();
  return {
    signal: AbortSignal.any([parent, controller.signal]),
    touch: () => (lastProgressMs = performance.now()),
    stop: () => clearInterval(timer),
    get stalled() {
      return controller.signal.aborted;
    },
  };
}

async function replicateBatchOver(
  node: MeshNode,
  peerId: string,
  store: ReplicaStore,
  entries: readonly CatalogEntry[],
  offer: Uint8Array,
  limits: ReplicationLimits,
  options: ClientOptions,
  signal: AbortSignal,
  touch: () => void,
): Promise<BatchOutcome[]> {
  return withStream(node, peerId, REPLICATE_BATCH_PROTOCOL, signal, async (stream) => {
    await stream.writer.writeFrame(offer, { signal });
    touch();
    const want = await readRequestFrame<WantAnswer>(stream, limits.frameBytesMax, signal);
    touch();
    if (want.type === 'refused') throw refusedError(want);
    if (want.type !== 'want' || !Array.isArray(want.indices)) throw unexpected('offerBatch', want);
    options.phases?.flowing();
    const wanted = new Set<number>();
    for (const index of want.indices) {
      if (!Number.isInteger(index) || index < 0 || index >= entries.length || wanted.has(index)) throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'want names an entry that was not offered');
      wanted.add(index);
    }
    const offsets = new Map<number, number>();
    if (want.offsets !== undefined) {
      if (!Array.isArray(want.offsets) || want.offsets.length !== want.indices.length) throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'want offsets do not match its indices');
      for (const [at, offset] of want.offsets.entries()) {
        const index = want.indices[at]!;
        if (!isCount(offset) || offset > entries[index]!.byteLength) throw new ReplicationError('ERR_REPLICATION_MALFORMED', 'a want offset is not within its entry');
        if (offset > 0) offsets.set(index, offset);
      }
    }
    const sentIndices = [...wanted].sort((x, y) => x - y);
    // Copies that could not be read here went out padded: the receiver fails each alone, the rest travel.
    const unreadable = new Map<string, unknown>();
    let position = 0;
    for await (const { entry, chunks } of store.readInstances(sentIndices.map((index) => entries[index]!))) {
      const readError = await writeBody(stream, entry, chunks, signal, touch, true, offsets.get(sentIndices[position++]!) ?? 0);
      if (readError !== undefined) unreadable.set(entry.sopInstanceUid, readError);
    }
    await stream.closeWrite({ signal });
    touch();
    options.phases?.flowed();
    const answer = await readRequestFrame<BatchAnswer>(stream, limits.frameBytesMax, signal);
    if (answer.type === 'refused') throw refusedError(answer);
    if (answer.type !== 'batchResult' || !isString(answer.siteName, 256) || !Array.isArray(answer.stored) || !Array.isArray(answer.failed)) throw unexpected('replicate-batch', answer);
    const stored = new Set(answer.stored.filter((i) => wanted.has(i)));
    const failedAt = new Map<number, BatchFailure>();
    for (const f of answer.failed) if (f !== null && typeof f === 'object' && wanted.has(f.index)) failedAt.set(f.index, f);
    return entries.map((entry, index): BatchOutcome => {
      if (!wanted.has(index)) return { sopInstanceUid: entry.sopInstanceUid, outcome: 'have', siteName: answer.siteName };
      if (stored.has(index)) return { sopInstanceUid: entry.sopInstanceUid, outcome: 'stored', siteName: answer.siteName };
      const readError = unreadable.get(entry.sopInstanceUid);
      if (readError !== undefined) {
        return { sopInstanceUid: entry.sopInstanceUid, error: new ReplicationError('ERR_REPLICATION_SOURCE_UNREADABLE', errorText(readError), { cause: readError }) };
      }
      const failure = failedAt.get(index);
      return { sopInstanceUid: entry.sopInstanceUid, error: refusedError({ type: 'refused', code: String(failure?.code ?? 'ERR_REPLICATION_REFUSED'), message: String(failure?.message ?? 'no outcome reported') }) };
    });
  });
}

/**
 * Pulls an instance from a peer into the local store (verified, durable). undefined when the peer does
 * not hold it. The returned entry is the local one.
 */
export async function fetchFrom(
  node: MeshNode,
  peerId: string,
  store: ReplicaStore,
  sopInstanceUid: string,
  options: ClientOptions = {},
): Promise<{ entry: CatalogEntry; outcome: 'stored' | 'duplicate' } | undefined> {
  const held = await store.getEntry(sopInstanceUid);
  if (held !== undefined) return { entry: held, outcome: 'duplicate' };
  const limits = { ...defaultReplicationLimits, ...options.limits };
  const kept = options.partials?.take(sopInstanceUid, peerId);
  let pending = kept;
  // A stop of the table cuts this pull and waits for its keep below (PartialCopies.pullStarted).
  const pulling = options.partials?.pullStarted(options.signal);
  try {
    return await fetchOne(node, peerId, sopInstanceUid, pulling === undefined ? options : { ...options, signal: pulling.signal }, kept?.offset, async (entry, fromByte, stream, signal) => {
      // Resumed, or sent whole: either way the part kept here is the pipeline's or no use any more.
      pending = undefined;
      let settled: { result: CommitResult } | { error: unknown } | undefined;
      const commits = new CommitPipeline(1, limits.batchCommitBytesInFlightMax);
      await commits.receive(store, stream, entry, signal, (outcome) => (settled = outcome), pulledResume(kept, fromByte, options.partials));
      await commits.drain();
      if (settled === undefined || 'error' in settled) throw settled?.error ?? new ReplicationError('ERR_REPLICATION_MALFORMED', 'no outcome');
      const outcome = settled.result.outcome;
      return { entry: (await store.getEntry(sopInstanceUid)) ?? settled.result.entry, outcome: outcome === 'stored' ? 'stored' : 'duplicate' };
    });
  } finally {
    // The peer lacks it now, or the exchange failed before its body: the part is kept for the next pull.
    if (pending !== undefined) options.partials!.keep(sopInstanceUid, peerId, pending.writer);
    pulling?.end();
  }
}

/**
 * Replaces a local copy that failed verification (`corrupt`, its entry) with the peer's copy, which must
 * be the same instance (same byteLength and SHA-256: ERR_REPLICATION_MISMATCH otherwise, and a copy of
 * the peer's that is itself damaged fails the store's check). undefined when the peer does not hold it.
 */
export async function repairFrom(
  node: MeshNode,
  peerId: string,
  store: ReplicaStore,
  corrupt: CatalogEntry,
  options: ClientOptions = {},
): Promise<'repaired' | 'changed' | undefined> {
  return fetchOne(node, peerId, corrupt.sopInstanceUid, options, undefined, async (entry, _fromByte, stream, signal) => {
    const body = stream.reader.body(entry.byteLength, { signal });
    if (entry.sha256 !== corrupt.sha256 || entry.byteLength !== corrupt.byteLength) {
      throw new ReplicationError('ERR_REPLICATION_MISMATCH', `${peerId} holds ${corrupt.sopInstanceUid} with other bytes (${entry.byteLength} bytes, SHA-256 ${entry.sha256})`);
    }
    return store.repairCopy(corrupt, body);
  });
}

/**
 * One instance over fetch/1, asked from byte `offset` (a part kept here) when given: its checked entry and
 * where its body starts go to `receive`, which reads the body from `stream`; undefined when the peer lacks it.
 */
async function fetchOne<T>(
  node: MeshNode,
  peerId: string,
  sopInstanceUid: string,
  options: ClientOptions,
  offset: number | undefined,
  receive: (entry: CatalogEntry, fromByte: number, stream: MeshStream, signal: AbortSignal) => Promise<T>,
): Promise<T | undefined> {
  const limits = { ...defaultReplicationLimits, ...options.limits };
  return exchange(node, peerId, FETCH_PROTOCOL, limits.transferTimeoutMs, options, async (stream, signal) => {
    await writeFrameEnvelope(stream, { type: 'fetch', sopInstanceUid, ...(offset !== undefined && { offset }) }, limits.frameBytesMax, signal);
    await stream.closeWrite({ signal });
    const answer = await readRequestFrame<FetchAnswer>(stream, limits.frameBytesMax, signal);
    if (answer.type === 'missing') return undefined;
    if (answer.type === 'refused') throw refusedError(answer);
    if (answer.type !== 'instance') throw unexpected('fetch', answer);
    const entry = fetchedEntry(answer.entry, sopInstanceUid, limits);
    const fromByte = answeredFromByte(answer, offset);
    await readBodyLength(stream, entry, signal, fromByte);
    return receive(entry, fromByte, stream, signal);
  });
}

export type FetchBatchOutcome = { sopInstanceUid: string; entry: CatalogEntry; outcome: 'stored' | 'duplicate' } | { sopInstanceUid: string; missing: true } | { sopInstanceUid: string; error: unknown };

/**
 * Pulls up to `batchEntriesMax` instances from a peer over one stream into the local store (each verified
 * and durable; their commits overlap). One outcome per UID, in order; UIDs already held locally are not
 * asked for. Throws only when the whole stream failed (outcomes settled before that are lost: the caller
 * retries them, and a retry of a stored one is a duplicate).
 */
export async function fetchBatchFrom(
  node: MeshNode,
  peerId: string,
  store: ReplicaStore,
  uids: readonly string[],
  options: ClientOptions = {},
): Promise<FetchBatchOutcome[]> {
  const limits = { ...defaultReplicationLimits, ...options.limits };
  if (uids.length > limits.batchEntriesMax) throw new RangeError(`a batch holds at most ${limits.batchEntriesMax} UIDs`);
  const outcomes = new Map<string, FetchBatchOutcome>();
  const wanted: string[] = [];
  const distinct = [...new Set(uids)];
  for (const [index, held] of (await store.getEntries(distinct)).entries()) {
    const uid = distinct[index]!;
    if (held === undefined) wanted.push(uid);
    else outcomes.set(uid, { sopInstanceUid: uid, entry: held, outcome: 'duplicate' });
  }
  // Parts kept of earlier transfers from this peer: asked for from their offsets, and kept again if unused.
  const kept = new Map<string, { writer: InstanceWriter; offset: number }>();
  for (const uid of wanted) {
    const part = options.partials?.take(uid, peerId);
    if (part !== undefined) kept.set(uid, part);
  }
  if (wanted.length > 0) {
    // A stop of the table cuts this pull and waits for its keeps below (PartialCopies.pullStarted).
    const pulling = options.partials?.pullStarted(options.signal);
    const request = kept.size === 0 ? { type: 'fetchBatch', uids: wanted } : { type: 'fetchBatch', uids: wanted, offsets: wanted.map((uid) => kept.get(uid)?.offset ?? 0) };
    try {
      await exchange(node, peerId, FETCH_BATCH_PROTOCOL, limits.transferTimeoutMs, pulling === undefined ? options : { ...options, signal: pulling.signal }, async (stream, signal) => {
        await writeFrameEnvelope(stream, request, limits.frameBytesMax, signal);
        await stream.closeWrite({ signal });
        // The source answers at once with the first instance: there is no opening exchange to wait for.
        options.phases?.flowing();
        const commits = new CommitPipeline(limits.batchCommitsInFlightMax, limits.batchCommitBytesInFlightMax);
        try {
          for (const uid of wanted) {
            const answer = await readRequestFrame<FetchBatchAnswer>(stream, limits.frameBytesMax, signal);
            if (answer.type === 'refused') throw refusedError(answer);
            if (answer.type === 'missing' && answer.sopInstanceUid === uid) {
              outcomes.set(uid, { sopInstanceUid: uid, missing: true });
              continue;
            }
            if (answer.type !== 'instance') throw unexpected('fetchBatch', answer);
            const entry = fetchedEntry(answer.entry, uid, limits);
            const part = kept.get(uid);
            const fromByte = answeredFromByte(answer, part?.offset);
            await readBodyLength(stream, entry, signal, fromByte);
            // Resumed (the pipeline owns the part from here, and keeps it again if cut), or sent whole.
            kept.delete(uid);
            await commits.receive(store, stream, entry, signal, (outcome) => {
              outcomes.set(uid, 'error' in outcome ? { sopInstanceUid: uid, error: outcome.error } : { sopInstanceUid: uid, entry: outcome.result.entry, outcome: outcome.result.outcome });
            }, pulledResume(part, fromByte, options.partials));
          }
          options.phases?.flowed();
        } finally {
          await commits.drain();
        }
        const end = await readRequestFrame<FetchBatchAnswer>(stream, limits.frameBytesMax, signal);
        if (end.type !== 'end') throw unexpected('fetchBatch end', end);
      });
    } finally {
      // Parts of instances the stream never reached (or the peer lacks now) are kept for the next pull.
      for (const [uid, part] of kept) options.partials!.keep(uid, peerId, part.writer);
      pulling?.end();
    }
  }
  return uids.map((uid) => outcomes.get(uid) ?? { sopInstanceUid: uid, error: new ReplicationError('ERR_REPLICATION_MALFORMED', 'no outcome') });
}

/** Sends one custody message (fire and forget at the protocol level: the message is retried by its reducer). */
export async function sendCustodyMessage(node: MeshNode, peerId: string, message: CustodyMessage, options: ClientOptions = {}): Promise<void> {
  await sendCustodyMessages(node, peerId, [message], options);
}

/**
 * Sends up to custodyMessagesPerStreamMax custody messages to one peer over one stream. Its deadline,
 * exchangeTimeoutMs, counts from when no copy of ours to that peer is in flight any more (`options.bulkInFlight`):
 * on a slow link the messages wait behind the copies' bytes already handed to the connection, and are not
 * given up while those drain; stallTimeoutMs bounds the whole.
 */
export async function sendCustodyMessages(node: MeshNode, peerId: string, messages: readonly CustodyMessage[], options: ClientOptions = {}): Promise<void> {
  const limits = { ...defaultReplicationLimits, ...options.limits };
  if (messages.length > limits.custodyMessagesPerStreamMax) throw new RangeError(`at most ${limits.custodyMessagesPerStreamMax} custody messages per stream`);
  const whole = startDeadline(Math.max(limits.exchangeTimeoutMs, limits.stallTimeoutMs), options.signal);
  const behindCopies = stallWatch(whole.signal, limits.exchangeTimeoutMs, () => options.bulkInFlight?.drainedAtMs(peerId) ?? Number.NEGATIVE_INFINITY);
  try {
    await withStream(node, peerId, CUSTODY_PROTOCOL, behindCopies.signal, async (stream) => {
      // Staged, so the messages share frames (closeWrite sends what is still held).
      for (const message of messages) await stageFrameEnvelope(stream, message, limits.custodyMessageBytesMax, behindCopies.signal);
      await stream.closeWrite({ signal: behindCopies.signal });
    });
  } finally {
    behindCopies.stop();
    whole.clear();
  }
}

/** Asks a peer which instances a C-GET/C-MOVE identifier selects there (catalog entries, at most `limit`). */
export async function queryPeer(
  node: MeshNode,
  peerId: string,
  request: QueryRequest,
  limit: number,
  options: ClientOptions = {},
): Promise<{ entries: CatalogEntry[]; truncated: boolean }> {
  const limits = { ...defaultReplicationLimits, ...options.limits };
  return exchange(node, peerId, QUERY_PROTOCOL, limits.exchangeTimeoutMs, options, async (stream, signal) => {
    await writeFrameEnvelope(stream, { type: 'retrieve', request, limit }, limits.frameBytesMax, signal);
    await stream.closeWrite({ signal });
    const entries: CatalogEntry[] = [];
    for (;;) {
      const answer = await readRequestFrame<QueryAnswer>(stream, limits.frameBytesMax, signal);
      if (answer.type === 'end') return { entries, truncated: answer.truncated === true };
      if (answer.type === 'refused') throw refusedError(answer);
      if (answer.type !== 'entries' || !Array.isArray(answer.entries)) throw unexpected('query', answer);
      for (const e of answer.entries) {
        if (entries.length >= limit) throw new ReplicationError('ERR_REPLICATION_MALFORMED', `peer sent more than the ${limit} entries asked for`);
        entries.push(validateCatalogEntry(e));
      }
    }
  });
}
