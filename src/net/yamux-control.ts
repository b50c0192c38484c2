/**
 * Small streams (control: protocol selection, custody messages, answers, half-closes, gossip) are not held
 * behind copies when a connection is full; copies wait for the connection's drain and take turns.
 *
 * libp2p (utils 7, yamux 8): when the socket under a connection takes no more, the muxer marks EVERY
 * stream of the connection "needs drain", and a marked stream keeps what it is given (and its `close()`
 * waits) until the connection's next 'drain'. That event comes only once the socket's whole buffer has
 * been written, and a stream with data queued is also woken by each window update from the remote, so
 * copies in flight refill the connection as fast as it empties; after each drain the first stream in the
 * muxer's list sends first and marks all the others again. At 1 Mbit/s under three pushes (helper 77,
 * emulated WAN) custody half-closes and protocol selections waited 5-29 s: custody streams missed their
 * 15 s deadline and pushes were reset by the receiver's 10 s limit on protocol negotiation.
 *
 * Here a stream is "control" while it has sent little lately: a token bucket of `controlBurstBytes`,
 * refilled at `controlRefillBytesPerSecond` while it has nothing pending; one that used it up counts as
 * bulk until the bucket is full again (a copy keeps it empty). Control bytes are handed to the connection
 * at once, full or not: they wait behind what the connection already holds, not for it to drain. Bulk
 * streams are held while the connection is full, window updates included (libp2p would let each one
 * refill it); at each drain they are woken in turn, on every other drain light streams (a custody
 * batch's tail) first. On a slow link (full for `congestedFullMs` or longer before it drained)
 * bulk streams hand over `bulkTurnBytes` at a time, so the connection holds about one turn of a copy in
 * front of the next control message, not a whole window's frame. A data frame is at most
 * `dataFrameBytesMax` (one Noise message) until the remote grants a window update, then half that grant
 * (about half a second of the link: the remote sizes its window by the rate its bytes arrive at): a frame
 * is heard only once whole, and a window-sized one took seconds on a 100 KB/s link whose kernel buffers
 * never let the connection look full (hunt 116).
 *
 * What control streams may add to a full connection is bounded by their buckets (16 KiB per stream at
 * once, 4 KiB/s after that); bulk streams add nothing while it is full. helper 77's version gave every
 * stream 16 KiB per full period, copies included: with ~25 copy streams open, a custody batch waited
 * behind ~400 KB per turn. The library's classes are patched once per process, on import of this
 * module (as `yamux-window.ts` does for window updates).
 */
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import { AbstractStreamMuxer } from '@libp2p/utils';

/**
 * Bytes a stream may hand over at once as control. Every new stream starts with it, copies included, so
 * it is kept small (with 64 KiB, 35 pings timed out at the receivers during a debt drain at 1 Mbit/s, 0
 * with 16 KiB). A larger custody batch sends the rest as a light stream (see drainOrder).
 */
export const controlBurstBytes = 16 * 1024;
/** Rate at which a stream's control allowance comes back (gossip and heartbeats stay well under it). */
export const controlRefillBytesPerSecond = 4 * 1024;
/** A connection that stayed full this long before it drained is a slow one (a fast link drains within a turn or two of the event loop). */
export const congestedFullMs = 100;
/** Bytes a bulk stream hands over at a time on a slow link (at 1 Mbit/s, ~130 ms). */
export const bulkTurnBytes = 16 * 1024;
/**
 * Largest yamux data frame a stream sends before its remote has granted it a window update: one Noise
 * message (65,535 bytes less its 16-byte tag and the 12-byte frame header). The receiver's muxer hands a
 * frame's data over only once all of it has come, and only then does the peer count as heard
 * (MeshNode.onPeerActivity): the library sizes frames by the send window (256 KiB to 4 MiB), which at
 * 100 KB/s is 2.6-40 s with nothing heard while bytes arrive, and the peer was suspected every ~3 s for a
 * whole copy (hunt 116). A connection whose socket takes everything (a large kernel buffer in front of a
 * slow link) never looks full here, so fullness cannot tell a slow link from a fast one; the remote's
 * grants can (see dataFrameBytesMaxFor).
 */
export const dataFrameBytesMax = 65_507;

/**
 * Largest data frame once the remote granted `lastGrantBytes` in a window update: half of it, at least
 * dataFrameBytesMax. A receiver sizes its window to about a second of the rate its bytes arrive at
 * (yamux-window.ts) and grants at most that, so a frame is at most ~0.5 s of the link on a slow one, while
 * on loopback (4 MiB windows) frames of 1-2 MiB cost a muxer step per megabyte, not per 64 KiB: the
 * fixed cap cost catch-up ~15-20 % there (docs/performance.md).
 */
export function dataFrameBytesMaxFor(lastGrantBytes: number | undefined): number {
  return Math.max(dataFrameBytesMax, Math.floor((lastGrantBytes ?? 0) / 2));
}

/** The connection's side of it: one per muxer, shared by its streams. */
export interface ConnectionState {
  /** The connection said it is full and has not drained since. */
  full: boolean;
  fullSinceMs: number;
  /** The last full period lasted congestedFullMs or longer. */
  congested: boolean;
  /** Drains seen (a bulk stream's turn is stamped with it). */
  drains: number;
  /** Bulk streams held for the next drain (at most the connection's streams; emptied at each drain). */
  held: Set<ControlFields>;
}

/** A stream's token bucket, as a value (the stream keeps these fields). */
export interface ControlBucket {
  tokens: number;
  atMs: number;
  /** Used up its allowance and not yet quiet long enough to have it back. */
  bulk: boolean;
  /** Has bytes it could not hand over yet (held, or out of send window): waiting is not being quiet. */
  pending: boolean;
}

/**
 * The bytes a stream may still hand over as control at `nowMs` (0: it is bulk); refills `bucket` for the
 * time it had nothing pending (a copy held for seconds must not come back as control).
 */
export function controlRoom(bucket: ControlBucket, nowMs: number): number {
  if (!bucket.pending) bucket.tokens = Math.min(controlBurstBytes, bucket.tokens + ((nowMs - bucket.atMs) * controlRefillBytesPerSecond) / 1000);
  bucket.atMs = nowMs;
  if (bucket.bulk && bucket.tokens >= controlBurstBytes) bucket.bulk = false;
  return bucket.bulk ? 0 : Math.floor(bucket.tokens);
}

/** Counts `bytes` handed over against the bucket; an emptied one makes the stream bulk. */
export function spendControl(bucket: ControlBucket, bytes: number): void {
  bucket.tokens -= bytes;
  if (bucket.tokens < 1) {
    bucket.tokens = 0;
    bucket.bulk = true;
  }
}

/** Whether a connection full for `fullForMs` before it drained counts as slow. */
export function congestedAfter(fullForMs: number): boolean {
  return fullForMs >= congestedFullMs;
}

/** The fields of a yamux stream read or written here (private in the library's types). */
interface ControlFields extends TurnFields {
  writeBuffer: { byteLength: number };
  sendWindowCapacity: number;
  writableNeedsDrain: boolean;
  /** Set at the connection's first full signal after the stream exists. */
  connection?: ConnectionState;
  bucket?: ControlBucket;
  /** The remote's last window update that granted bytes (its length). */
  lastGrantBytes?: number;
}

/** The library's byte list (sublist and consume are all that is used here). */
interface ByteList {
  byteLength: number;
  sublist(start: number, end: number): ByteList;
  consume(bytes: number): void;
}

interface SendResult {
  sentBytes: number;
  canSendMore: boolean;
}

interface StreamMethods {
  onMuxerNeedsDrain(this: ControlFields): void;
  onMuxerDrain(this: ControlFields): void;
  sendData(this: ControlFields, data: ByteList): SendResult;
  handleWindowUpdate(this: ControlFields, frame: { header: { length: number } }): void;
}

interface MuxerFields {
  maConn: { send(data: unknown): boolean; addEventListener(type: 'drain', listener: () => void): void };
  streams: unknown[];
  meshConnection?: ConnectionState;
}

const streamPrototype = YamuxStream.prototype as unknown as StreamMethods;
const muxerPrototype = AbstractStreamMuxer.prototype as unknown as { send(this: MuxerFields, data: unknown): boolean };
const library = {
  onMuxerNeedsDrain: streamPrototype.onMuxerNeedsDrain,
  onMuxerDrain: streamPrototype.onMuxerDrain,
  sendData: streamPrototype.sendData,
  handleWindowUpdate: streamPrototype.handleWindowUpdate,
  send: muxerPrototype.send,
};

/** The connection whose full signal is being told to its streams (set only during that synchronous call). */
let signalling: ConnectionState | undefined;

/**
 * Held streams that have sent less than this in their life are light (a custody batch: up to ~8 digest
 * messages of ~17 KB): on every other drain they go first.
 */
export const lightStreamBytes = 256 * 1024;

interface TurnFields {
  /** The drain count when this stream last handed over bulk bytes. */
  lastTurn?: number;
  /** Bytes this stream has handed over in its life. */
  sentBytesTotal?: number;
}

/**
 * Wake order at the `drains`-th drain: on even ones light streams first, fewest bytes first; otherwise
 * (and among the others) least recently served first, a stream never served before all. Helper 82,
 * 1 Mbit/s: with turns alone 101 custody batches from the busy site missed the receivers' 15 s; light
 * first at every drain, 0, but batch streams were then given up as stalled (no byte for 60 s) 7 times
 * (0 with turns alone); every other drain: 6 and 1.
 */
export function drainOrder(drains: number): (a: TurnFields, b: TurnFields) => number {
  const byTurn = (a: TurnFields, b: TurnFields): number => (a.lastTurn ?? -1) - (b.lastTurn ?? -1);
  if (drains % 2 === 1) return byTurn;
  const weight = (stream: TurnFields): number => Math.min(stream.sentBytesTotal ?? 0, lightStreamBytes);
  return (a, b) => weight(a) - weight(b) || byTurn(a, b);
}

function connectionOf(muxer: MuxerFields): ConnectionState {
  if (muxer.meshConnection !== undefined) return muxer.meshConnection;
  const state: ConnectionState = { full: false, fullSinceMs: 0, congested: false, drains: 0, held: new Set() };
  muxer.meshConnection = state;
  // Registered after the muxer's own listener, so it runs once every stream has been told of the drain.
  muxer.maConn.addEventListener('drain', () => {
    state.congested = state.full && congestedAfter(performance.now() - state.fullSinceMs);
    state.full = false;
    state.drains += 1;
    const held = [...state.held].sort(drainOrder(state.drains));
    state.held.clear();
    // In drainOrder's order: the first to send fills the connection again and the rest wait.
    for (const stream of held) library.onMuxerDrain.call(stream);
  });
  return state;
}

muxerPrototype.send = function send(this: MuxerFields, data: unknown): boolean {
  if (typeof this.maConn?.addEventListener !== 'function') return library.send.call(this, data);
  const state = connectionOf(this);
  const outer = signalling;
  signalling = state;
  try {
    const result = library.send.call(this, data);
    if (!result && !state.full) {
      state.full = true;
      state.fullSinceMs = performance.now();
    }
    return result;
  } finally {
    signalling = outer;
  }
};

function bucketOf(stream: ControlFields, nowMs: number): ControlBucket {
  stream.bucket ??= { tokens: controlBurstBytes, atMs: nowMs, bulk: false, pending: false };
  return stream.bucket;
}

function fieldsPresent(stream: ControlFields): boolean {
  return typeof stream.writeBuffer?.byteLength === 'number' && typeof stream.sendWindowCapacity === 'number';
}

function hold(stream: ControlFields): void {
  stream.connection?.held.add(stream);
  if (stream.bucket !== undefined) stream.bucket.pending = true;
}

streamPrototype.onMuxerNeedsDrain = function onMuxerNeedsDrain(this: ControlFields): void {
  if (!fieldsPresent(this)) {
    library.onMuxerNeedsDrain.call(this);
    return;
  }
  if (signalling !== undefined) this.connection = signalling;
  // A control stream is not held: its next few bytes join the connection's queue (sendData keeps to its allowance).
  const nowMs = performance.now();
  if (controlRoom(bucketOf(this, nowMs), nowMs) > 0) return;
  library.onMuxerNeedsDrain.call(this);
  hold(this);
};

streamPrototype.onMuxerDrain = function onMuxerDrain(this: ControlFields): void {
  // A held stream is woken by the connection's listener, in turn order; the rest as the library does.
  if (this.connection?.held.has(this) === true) return;
  library.onMuxerDrain.call(this);
};

streamPrototype.handleWindowUpdate = function handleWindowUpdate(this: ControlFields, frame: { header: { length: number } }): void {
  if (frame.header.length > 0) this.lastGrantBytes = frame.header.length;
  library.handleWindowUpdate.call(this, frame);
};

/** sendData's answer when bytes are left for later (the library keeps them and marks the stream). */
function waiting(bucket: ControlBucket, sentBytes: number): SendResult {
  bucket.pending = true;
  return { sentBytes, canSendMore: false };
}

streamPrototype.sendData = function sendData(this: ControlFields, data: ByteList): SendResult {
  if (!fieldsPresent(this)) return library.sendData.call(this, data);
  let sentBytes = 0;
  while (data.byteLength > 0) {
    // Read each time: the connection's first full signal may come during this call.
    const state = this.connection;
    // An exhausted send window: the remote's window update wakes the stream (the library's way).
    const nowMs = performance.now();
    const bucket = bucketOf(this, nowMs);
    if (this.sendWindowCapacity <= 0) return waiting(bucket, sentBytes);
    const room = controlRoom(bucket, nowMs);
    if (room === 0 && state?.full === true) {
      // Bulk on a full connection (woken by a window update, or its turn taken): wait for the drain.
      hold(this);
      return waiting(bucket, sentBytes);
    }
    const pieceBytesMax = room > 0 ? room : state?.congested === true ? bulkTurnBytes : dataFrameBytesMaxFor(this.lastGrantBytes);
    const piece = data.byteLength <= pieceBytesMax ? data : data.sublist(0, pieceBytesMax);
    const result = library.sendData.call(this, piece);
    if (piece !== data) data.consume(result.sentBytes);
    sentBytes += result.sentBytes;
    this.sentBytesTotal = (this.sentBytesTotal ?? 0) + result.sentBytes;
    spendControl(bucket, result.sentBytes);
    if (room === 0 && state !== undefined) this.lastTurn = state.drains;
    if (result.sentBytes === 0) return waiting(bucket, sentBytes);
    // Control bytes are not held by a full connection; bulk ones stop at it (the muxer held the stream).
    if (!result.canSendMore && (room === 0 || this.sendWindowCapacity <= 0)) return waiting(bucket, sentBytes);
  }
  if (this.bucket !== undefined) this.bucket.pending = false;
  return { sentBytes, canSendMore: true };
};
