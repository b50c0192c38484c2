/**
 * Yamux receive windows sized to the link, in time rather than bytes, with window updates sent once half
 * the window is used (as Go's yamux, the reference, sends them) instead of after every data frame as
 * @chainsafe/libp2p-yamux 8 does.
 *
 * Window size: a stream's window is what its sender may have in flight, and on a slow link that is queued
 * in front of everything else the connection carries (gossip heartbeats, leader announcements, votes). The
 * library doubled a window whenever half of it arrived within four round trips, with the round trip its
 * keep-alive ping measured every 30 s behind the same queue: on a 100 KB/s link the first ping after a copy
 * started took seconds, every later epoch counted as fast, and windows grew to the 4 MiB cap, which is
 * ~40 s of that link (hunt 118: the receiving site lost its leader from ~30 s into a 10 MB copy to its
 * end). Here, at each update, the window becomes what arrived in the last epoch scaled to
 * `receiveWindowQueueMs` of that rate (between `receiveWindowMinBytes` and the configured cap): a window
 * that limits its stream grows by that time over the epoch's at each update (on loopback to the cap at
 * the first one), a link that limits it holds about `receiveWindowQueueMs` of it in flight. The rate is
 * taken over the last two epochs (the first update: one): when the event loop stalls, the half window that
 * waited in the socket's buffer is read back to back, an epoch of a millisecond whose rate alone took a
 * 100 KB/s stream to the 4 MiB cap; its sender's kernel buffers took the rest of the copy at once, and
 * gossip written behind it waited 7-29 s and came all at once when the copy ended (hunt 127). The epoch
 * before it holds the stall.
 *
 * Updates: each is a frame of its own (Noise-encrypted, pnet-ciphered, one socket write at the receiver,
 * one read and decode at the sender): a restarted site catching up spent ~14% of its main thread writing
 * them when one followed every frame (CPU profile, 1,000 instances). The sender still holds at least half a
 * window when an update is held back. Frames that carry a SYN or ACK flag, and the update after a paused
 * stream resumes past the threshold, go out as before. Credit already granted cannot be taken back, so a
 * window shrinks as its sender uses it up. The library exports its stream class
 * (`@chainsafe/libp2p-yamux/stream`); its `sendWindowUpdate` is replaced once per process, on import of
 * this module.
 */
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';

/**
 * Time of its own arrival rate a stream may have in flight: on a slow link about what a heartbeat waits
 * behind per copy (the leader is forgotten after 2 s without an announcement); far above any round trip, so
 * a window never holds a stream below its link's speed.
 */
export const receiveWindowQueueMs = 1000;
/**
 * Smallest window (a stream that was idle or held by its sender measures a low rate; it gets its window back
 * at the next update). 64 KiB is ~0.65 s at 100 KB/s. New streams still start at the protocol's 256 KiB.
 */
export const receiveWindowMinBytes = 64 * 1024;

/** The fields of a yamux stream that the window update reads or writes (private in the library's types). */
interface WindowFields {
  state: number;
  recvWindow: number;
  recvWindowCapacity: number;
  maxStreamWindowSize: number;
  epochStart: number;
  streamId: number;
  getSendFlags(): number;
  sendFrame(header: { type: number; flag: number; streamID: number; length: number }): boolean;
  /** What the sender could still send when the epoch began (set here; absent before the first update). */
  epochStartCapacity?: number;
  /** The stream was paused during this epoch: its rate says how fast it was read, not how fast bytes came. */
  pausedInEpoch?: boolean;
  /** What arrived in the epoch before this one, and over how long (absent after a pause, a flag or a clock step back). */
  previousEpochBytes?: number;
  previousEpochMs?: number;
}

/** StreamState.Paused and FrameType.WindowUpdate of the library (stable: they are wire or API values). */
const streamStatePaused = 5;
const frameTypeWindowUpdate = 1;

/**
 * Whether a window update is due: always with a flag to send (opening or accepting a stream), otherwise
 * once the sender holds at most half of the receive window.
 */
export function windowUpdateDue(recvWindow: number, recvWindowCapacity: number, flags: number): boolean {
  if (flags !== 0) return true;
  return recvWindow - recvWindowCapacity >= recvWindow / 2;
}

/**
 * The receive window after `receivedBytes` arrived over `epochMs`: that rate times receiveWindowQueueMs,
 * at least receiveWindowMinBytes, at most `maxWindowBytes`.
 */
export function tunedReceiveWindow(receivedBytes: number, epochMs: number, maxWindowBytes: number): number {
  const windowBytes = Math.round((receivedBytes * receiveWindowQueueMs) / Math.max(1, epochMs));
  return Math.min(maxWindowBytes, Math.max(receiveWindowMinBytes, windowBytes));
}

const prototype = YamuxStream.prototype as unknown as { sendWindowUpdate: (this: WindowFields) => void };
/** The library's own, for streams that lack the fields read here (a later library version). */
const librarySendWindowUpdate = prototype.sendWindowUpdate;

function sendWindowUpdate(this: WindowFields): void {
  if (typeof this.recvWindow !== 'number' || typeof this.recvWindowCapacity !== 'number' || typeof this.getSendFlags !== 'function' || typeof this.sendFrame !== 'function') {
    librarySendWindowUpdate.call(this);
    return;
  }
  if (this.state === streamStatePaused) {
    // As the library does: a paused stream wants no data now, and its epoch restarts when it resumes.
    this.epochStart = Date.now();
    this.pausedInEpoch = true;
    return;
  }
  const flags = this.getSendFlags();
  if (!windowUpdateDue(this.recvWindow, this.recvWindowCapacity, flags)) return;
  const nowMs = Date.now();
  const epochMs = nowMs - this.epochStart;
  // Date.now() stepped back (or no epoch start): the epoch's length is unknown, so it sizes nothing, as a paused one.
  const epochTimed = Number.isFinite(epochMs) && epochMs >= 0;
  if (flags === 0 && this.pausedInEpoch !== true && epochTimed) {
    const receivedBytes = (this.epochStartCapacity ?? this.recvWindow) - this.recvWindowCapacity;
    // Over this epoch and the one before: after a stall the half window read back to back is an epoch of
    // a millisecond, and the one before it holds the stall (hunt 127).
    this.recvWindow = tunedReceiveWindow(receivedBytes + (this.previousEpochBytes ?? 0), epochMs + (this.previousEpochMs ?? 0), this.maxStreamWindowSize);
    this.previousEpochBytes = receivedBytes;
    this.previousEpochMs = epochMs;
  } else {
    this.previousEpochBytes = undefined;
    this.previousEpochMs = undefined;
  }
  this.epochStart = nowMs;
  this.pausedInEpoch = false;
  // A smaller window than the sender still holds: nothing to grant until it has used enough of it.
  if (flags === 0 && !windowUpdateDue(this.recvWindow, this.recvWindowCapacity, 0)) {
    this.epochStartCapacity = this.recvWindowCapacity;
    return;
  }
  const delta = Math.max(0, this.recvWindow - this.recvWindowCapacity);
  this.recvWindowCapacity += delta;
  this.epochStartCapacity = this.recvWindowCapacity;
  this.sendFrame({ type: frameTypeWindowUpdate, flag: flags, streamID: this.streamId, length: delta });
}

prototype.sendWindowUpdate = sendWindowUpdate;
