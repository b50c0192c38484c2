/**
 * The election messages' transport: one kept stream per peer, both ends.
 *
 * `/pacs-mesh/election/2` is a stream of uint32 length-prefixed envelope frames that the sender keeps open
 * for every later message to that peer: opening a stream costs a multistream-select round trip and a
 * peer-store write at each end (6-7 ms median, 51-66 ms p99 at load 10: hunt 124), paid once per peer
 * instead of once per vote. The sender never waits for an answer on it (votes come back on the voter's
 * own stream), so a frame is a datagram: one written into a stream the far end has just reset is lost, as
 * any election message may be (the reducer asks again on its timers).
 *
 * Sender, per peer (a lane): frames wait in a queue of at most `queuedPerPeerMax` (the oldest dropped
 * first: a newer term makes it stale) and for at most `messageDeadlineMs`; one write at a time. The stream
 * is opened at the first frame, or `warmAfterMs` after the peer is first seen alive (a failover's first
 * request for votes goes to a peer it may never have written to), reopened once when a write on it fails
 * or does not complete within `writeDeadlineMs` (the frame goes again on the fresh stream; if that fails
 * too it is dropped), and closed when the peer leaves the view, comes back as a new incarnation, or this
 * side stops. A peer of an earlier version (no `/2`: multistream-select refuses it) gets each frame on a
 * stream of its own over `/pacs-mesh/election/1`, as before, until it leaves the view or restarts, and
 * is asked for `/2` again `legacyRecheckAfterMs` later: a peer of this version refuses `/2` too in the
 * moment between its membership's start and its balancer's handlers, and stayed on one stream per frame.
 *
 * Receiver: `/1` streams carry one frame each (earlier versions send that way during a rolling upgrade);
 * `/2` streams are read frame after frame until their end, at most one per peer (a newer one replaces it:
 * the sender reopened).
 */
import type { MeshNode } from '../../net/node.ts';
import type { MeshStream } from '../../net/stream.ts';
import { MeshStreamError } from '../../net/errors.ts';
import { countDown, countUp } from '../../keyed-counts.ts';
import { createRepeatLimiter, type Logger } from '../runtime/logger.ts';

/** One frame per stream: what every version accepts (earlier ones send only this way). */
export const ELECTION_PROTOCOL = '/pacs-mesh/election/1';
/** A kept stream of frames (this version on). */
export const ELECTION_STREAM_PROTOCOL = '/pacs-mesh/election/2';
/** Election frames are tiny; anything bigger is an attack or a bug. */
export const ELECTION_MAX_BYTES = 4 * 1024;
/**
 * Deadline of one election message: its one-message stream (open, frame, close) at either end, or its wait
 * for a kept stream to open. Its opening crosses the link twice behind whatever copies are queued on it:
 * at 1 Mbit/s every `newerTerm` a peer sent for 3 minutes missed a 2 s deadline (helper 73), and that peer
 * stayed without a leader the whole time. A late vote is harmless: the reducer ignores one of another term
 * or after its candidacy.
 */
export const electionMessageDeadlineMs = 10_000;
/**
 * One-message streams in flight to one peer of an earlier version: a peer that does not answer holds its
 * streams until their deadline, and must not take the slots of messages to the others.
 */
export const electionSendsPerPeerMax = 4;

export interface ElectionStreamLimits {
  /** Frames waiting for one peer's stream; past it the oldest is dropped. */
  queuedPerPeerMax: number;
  /** Peers with a lane (a queue and maybe a stream); a frame to one more is dropped. Above membersMax (256). */
  peersMax: number;
  /** A write on a kept stream not done by then fails over to a fresh stream (a small frame goes at once unless the far end reads nothing). */
  writeDeadlineMs: number;
  /** See electionMessageDeadlineMs. */
  messageDeadlineMs: number;
  /** A peer alive this long gets its stream before the first frame (opened on the connection the duplicate sweep keeps: node.ts openStream). */
  warmAfterMs: number;
  /** One-message streams (peers of an earlier version) in flight, in all and per peer. */
  legacySendsInFlightMax: number;
  legacySendsPerPeerMax: number;
  /** A peer that refused `/2` is asked again after this long (it may have been starting, not of an earlier version). */
  legacyRecheckAfterMs: number;
}

export const defaultElectionStreamLimits: ElectionStreamLimits = {
  queuedPerPeerMax: 8,
  peersMax: 1024,
  writeDeadlineMs: 1000,
  messageDeadlineMs: electionMessageDeadlineMs,
  warmAfterMs: 3000,
  legacySendsInFlightMax: 16,
  legacySendsPerPeerMax: electionSendsPerPeerMax,
  legacyRecheckAfterMs: 60_000,
};

/** What the receiver's owner made of a frame: a malformed one resets the stream it came on. */
export type FrameVerdict = 'accepted' | 'invalid' | 'malformed';

/** The part of a membership record the lanes follow. */
export interface ElectionPeerView {
  readonly peerId: string;
  readonly incarnation: number;
  readonly status: 'alive' | 'suspect' | 'dead';
}

export interface ElectionStreamsInit {
  node: MeshNode;
  selfPeerId: string;
  log: Logger;
  /** A frame from `from` (the stream's authenticated remote peer). Called synchronously; must not throw. */
  deliver(from: string, frame: Uint8Array): FrameVerdict;
  limits?: Partial<ElectionStreamLimits>;
}

export interface ElectionStreamStats {
  /** Kept streams this side opened, and one-message streams (to peers of an earlier version). */
  keptOpened: number;
  legacyOpened: number;
  /** Writes on a kept stream that failed or ran out of time, each followed by a fresh stream. */
  failovers: number;
  /** Frames not sent: queue full, too old, no stream to be had, or too many in flight. */
  dropped: number;
  /** Kept streams open now, outbound (this side's) and inbound (the others'). */
  keptOut: number;
  keptIn: number;
  lanes: number;
}

export interface ElectionStreams {
  /** Serves both protocols (frames received before are impossible: nothing listens until then). */
  start(): Promise<void>;
  /** Queues a frame (an encoded envelope) for `to`; never throws, never waits. */
  send(to: string, frame: Uint8Array): void;
  /** The membership view: lanes of peers gone or restarted are closed; peers alive get their stream warm. */
  viewChanged(members: readonly ElectionPeerView[]): void;
  stats(): ElectionStreamStats;
  /** Stops serving both protocols and closes every kept stream, both ways. */
  stop(): Promise<void>;
}

interface QueuedFrame {
  readonly frame: Uint8Array;
  readonly queuedAtMs: number;
}

interface Lane {
  readonly peerId: string;
  incarnation: number | undefined;
  stream: MeshStream | null;
  opening: Promise<MeshStream> | null;
  readonly queue: QueuedFrame[];
  draining: boolean;
  /** The peer refused /2 (an earlier version, or starting): one stream per frame, since `legacySinceMs`. */
  legacy: boolean;
  legacySinceMs: number;
  /** Said once per lane in the log, not at every recheck. */
  legacyLogged: boolean;
  closed: boolean;
}

/** libp2p's multistream-select found no protocol both ends speak: the peer runs another version. */
function protocolUnsupported(error: unknown): boolean {
  return (error as Error | undefined)?.name === 'UnsupportedProtocolError';
}

/** Closes our end and waits a moment for theirs; resets the stream if that does not come. */
async function retire(stream: MeshStream): Promise<void> {
  try {
    await stream.close({ signal: AbortSignal.timeout(1000) });
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)));
  }
}

/** Open, writable, and not ended by the far end: a frame written now can arrive. */
function usable(stream: MeshStream): boolean {
  return stream.raw.status === 'open' && stream.raw.writeStatus === 'writable' && !stream.reader.done;
}

/** Creates the lanes; nothing is served until `start` (so an owner can create it before what `deliver` reaches exists). */
export function createElectionStreams(init: ElectionStreamsInit): ElectionStreams {
  const { node, log } = init;
  const limits: ElectionStreamLimits = { ...defaultElectionStreamLimits, ...init.limits };
  const lanes = new Map<string, Lane>();
  /** Each peer's incarnation in the last view: a lane opened later starts from it (a change then means a restart). */
  let viewIncarnations = new Map<string, number>();
  /** Peers seen alive that have no lane yet, with the timer that opens their stream. */
  const warmTimers = new Map<string, NodeJS.Timeout>();
  const inbound = new Map<string, MeshStream>();
  const legacyInFlightTo = new Map<string, number>();
  let legacyInFlight = 0;
  let stopped = false;
  const stats = { keptOpened: 0, legacyOpened: 0, failovers: 0, dropped: 0 };
  let readFailures = 0;
  const badInput = createRepeatLimiter(log, 10_000);
  const nowMs = (): number => performance.now();

  const drop = (to: string, why: string): void => {
    if (stats.dropped++ % 100 === 0) log.warn('election message dropped', { to, why, dropped: stats.dropped });
  };

  const laneOf = (peerId: string): Lane | undefined => {
    const existing = lanes.get(peerId);
    if (existing !== undefined || lanes.size >= limits.peersMax) return existing;
    const lane: Lane = { peerId, incarnation: viewIncarnations.get(peerId), stream: null, opening: null, queue: [], draining: false, legacy: false, legacySinceMs: 0, legacyLogged: false, closed: false };
    lanes.set(peerId, lane);
    return lane;
  };

  /** Takes the lane out; its stream's closing is returned (bounded by retire). */
  const closeLane = (lane: Lane): Promise<void> => {
    lane.closed = true;
    lane.queue.length = 0;
    if (lanes.get(lane.peerId) === lane) lanes.delete(lane.peerId);
    const stream = lane.stream;
    lane.stream = null;
    return stream === null ? Promise.resolve() : retire(stream);
  };

  /** The lane's kept stream, opened if it has none (one open at a time per lane). */
  const streamOf = (lane: Lane): Promise<MeshStream> => {
    if (lane.stream !== null && usable(lane.stream)) return Promise.resolve(lane.stream);
    if (lane.stream !== null) {
      // Ended or reset since the last frame (the far end stopped, the connection dropped): not written to.
      void retire(lane.stream);
      lane.stream = null;
    }
    lane.opening ??= (async () => {
      try {
        const stream = await node.openStream(lane.peerId, ELECTION_STREAM_PROTOCOL, { signal: AbortSignal.timeout(limits.messageDeadlineMs) });
        stats.keptOpened++;
        if (lane.closed || stopped) {
          void retire(stream);
          throw new Error('election lane closed while its stream opened');
        }
        lane.stream = stream;
        stream.raw.addEventListener('close', () => {
          if (lane.stream === stream) lane.stream = null;
        });
        return stream;
      } catch (err) {
        if (protocolUnsupported(err) && !lane.legacy) {
          lane.legacy = true;
          lane.legacySinceMs = nowMs();
          if (!lane.legacyLogged) log.info('peer of an earlier version: election messages go one stream each', { peer: lane.peerId });
          lane.legacyLogged = true;
        }
        throw err;
      } finally {
        lane.opening = null;
      }
    })();
    return lane.opening;
  };

  /** The old way, for a peer of an earlier version: a stream of its own, one frame, closed. */
  const sendOnOwnStream = (to: string, frame: Uint8Array): void => {
    if (legacyInFlight >= limits.legacySendsInFlightMax || (legacyInFlightTo.get(to) ?? 0) >= limits.legacySendsPerPeerMax) {
      drop(to, 'too many one-message streams in flight');
      return;
    }
    legacyInFlight++;
    countUp(legacyInFlightTo, to);
    const signal = AbortSignal.timeout(limits.messageDeadlineMs);
    void (async () => {
      let stream: MeshStream | undefined;
      try {
        stream = await node.openStream(to, ELECTION_PROTOCOL, { signal });
        stats.legacyOpened++;
        await stream.writer.writeFrame(frame, { signal });
        await stream.close({ signal });
      } catch (err) {
        // Unreachable voters are normal during failover; the reducer's timers retry.
        stream?.abort(err as Error);
      } finally {
        legacyInFlight--;
        countDown(legacyInFlightTo, to);
      }
    })();
  };

  /** One frame on the lane's kept stream; a failed or stuck write on a kept stream is tried once more on a fresh one. */
  const writeOnLane = async (lane: Lane, frame: Uint8Array): Promise<void> => {
    for (let attempt = 0; attempt < 2; attempt++) {
      const fresh = lane.stream === null || !usable(lane.stream);
      let stream: MeshStream;
      try {
        stream = await streamOf(lane);
      } catch {
        if (lane.legacy && !lane.closed) sendOnOwnStream(lane.peerId, frame);
        else drop(lane.peerId, 'no stream');
        return;
      }
      try {
        await stream.writer.writeFrame(frame, { signal: AbortSignal.timeout(limits.writeDeadlineMs) });
        return;
      } catch (err) {
        stream.abort(err instanceof Error ? err : new Error(String(err)));
        if (lane.stream === stream) lane.stream = null;
        stats.failovers++;
        if (fresh || lane.closed) {
          drop(lane.peerId, 'write failed on a fresh stream');
          return;
        }
      }
    }
  };

  const drain = async (lane: Lane): Promise<void> => {
    if (lane.draining) return;
    lane.draining = true;
    try {
      for (let item = lane.queue.shift(); item !== undefined && !lane.closed && !stopped; item = lane.queue.shift()) {
        if (nowMs() - item.queuedAtMs > limits.messageDeadlineMs) {
          drop(lane.peerId, 'waited too long');
          continue;
        }
        if (lane.legacy && nowMs() - lane.legacySinceMs >= limits.legacyRecheckAfterMs) lane.legacy = false;
        if (lane.legacy) sendOnOwnStream(lane.peerId, item.frame);
        else await writeOnLane(lane, item.frame);
      }
    } finally {
      lane.draining = false;
    }
  };

  const warm = (peerId: string): void => {
    warmTimers.delete(peerId);
    if (stopped) return;
    const lane = laneOf(peerId);
    if (lane === undefined || lane.legacy || lane.stream !== null) return;
    streamOf(lane).catch(() => undefined);
  };

  // ---------------------------------------------------------------- receiving

  /** A kept stream: frames until its end; the previous one from the same peer is reset (its sender reopened). */
  const serveKept = async (stream: MeshStream): Promise<void> => {
    const from = stream.remotePeer;
    if (stopped) {
      stream.abort(new Error('election streams stopped'));
      return;
    }
    inbound.get(from)?.abort(new Error('replaced by a newer election stream from the same peer'));
    inbound.set(from, stream);
    try {
      for (;;) {
        let frame: Uint8Array | null;
        try {
          frame = await stream.reader.readFrameOrEnd(ELECTION_MAX_BYTES);
        } catch (err) {
          noteReadFailure(stream, err);
          stream.abort(err as Error);
          return;
        }
        if (frame === null) return;
        if (init.deliver(from, frame) === 'malformed') {
          stream.abort(new Error('malformed election message'));
          return;
        }
      }
    } finally {
      if (inbound.get(from) === stream) inbound.delete(from);
    }
  };

  /** A stream of one frame (the earlier versions' way). */
  const serveOne = async (stream: MeshStream): Promise<void> => {
    let frame: Uint8Array;
    try {
      frame = await stream.reader.readFrame(ELECTION_MAX_BYTES, { signal: AbortSignal.timeout(limits.messageDeadlineMs) });
    } catch (err) {
      noteReadFailure(stream, err);
      stream.abort(err as Error);
      return;
    }
    if (init.deliver(stream.remotePeer, frame) === 'malformed') stream.abort(new Error('malformed election message'));
  };

  const noteReadFailure = (stream: MeshStream, err: unknown): void => {
    // A stream reset or cut off mid-frame (a partition, a peer stopping) is not malformed input: the
    // sender's timers retry, and only an oversized frame says something about the sender.
    if (err instanceof MeshStreamError && err.code === 'ERR_FRAME_TOO_LARGE') {
      badInput.warn(`dropped oversized election message ${stream.remotePeer}`, 'dropped oversized election message', { from: stream.remotePeer, error: err.message });
    } else if (!stopped && readFailures++ % 100 === 0) {
      log.info('election message not received: the stream ended first', { from: stream.remotePeer, error: (err as Error).message, failures: readFailures });
    }
  };

  return {
    async start() {
      await node.handle(ELECTION_PROTOCOL, serveOne, { maxInboundStreams: 64, maxOutboundStreams: 64 });
      // One kept stream per peer, plus a replaced one while its reset is on its way.
      await node.handle(ELECTION_STREAM_PROTOCOL, serveKept, { maxInboundStreams: 4, maxOutboundStreams: 4 });
    },
    send(to, frame) {
      if (stopped) return;
      const lane = laneOf(to);
      if (lane === undefined) {
        drop(to, 'too many peers');
        return;
      }
      if (lane.queue.length >= limits.queuedPerPeerMax) {
        lane.queue.shift();
        drop(to, 'queue full');
      }
      lane.queue.push({ frame, queuedAtMs: nowMs() });
      void drain(lane);
    },
    viewChanged(members) {
      if (stopped) return;
      const byPeer = new Map(members.map((m) => [m.peerId, m] as const));
      viewIncarnations = new Map(members.map((m) => [m.peerId, m.incarnation] as const));
      for (const lane of [...lanes.values()]) {
        const m = byPeer.get(lane.peerId);
        if (m === undefined || m.status === 'dead') {
          void closeLane(lane);
          continue;
        }
        if (lane.incarnation !== undefined && lane.incarnation !== m.incarnation) {
          // Restarted: its old stream went with its old process, and it may be of another version now.
          const stream = lane.stream;
          lane.stream = null;
          stream?.abort(new Error('peer restarted'));
          lane.legacy = false;
        }
        lane.incarnation = m.incarnation;
      }
      for (const [peerId, timer] of warmTimers) {
        if (byPeer.get(peerId)?.status !== 'alive') {
          clearTimeout(timer);
          warmTimers.delete(peerId);
        }
      }
      for (const m of members) {
        if (m.peerId === init.selfPeerId || m.status !== 'alive' || lanes.has(m.peerId) || warmTimers.has(m.peerId)) continue;
        const timer = setTimeout(() => warm(m.peerId), limits.warmAfterMs);
        timer.unref();
        warmTimers.set(m.peerId, timer);
      }
    },
    stats() {
      let keptOut = 0;
      for (const lane of lanes.values()) if (lane.stream !== null && lane.stream.raw.status === 'open') keptOut++;
      return { ...stats, keptOut, keptIn: inbound.size, lanes: lanes.size };
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const timer of warmTimers.values()) clearTimeout(timer);
      warmTimers.clear();
      await Promise.allSettled([node.unhandle(ELECTION_PROTOCOL), node.unhandle(ELECTION_STREAM_PROTOCOL)]);
      const closing = [...lanes.values()].map(closeLane);
      for (const stream of inbound.values()) stream.abort(new Error('election streams stopped'));
      inbound.clear();
      await Promise.allSettled(closing);
    },
  };
}

/** Creates and starts (see createElectionStreams). */
export async function startElectionStreams(init: ElectionStreamsInit): Promise<ElectionStreams> {
  const streams = createElectionStreams(init);
  await streams.start();
  return streams;
}
