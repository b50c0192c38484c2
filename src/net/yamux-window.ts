/**
 * Yamux window updates once half the receive window is used, as Go's yamux (the reference) sends them,
 * instead of after every data frame as @chainsafe/libp2p-yamux 8 does. Each update is a frame of its own
 * (Noise-encrypted, pnet-ciphered, one socket write at the receiver, one read and decode at the sender):
 * a restarted site catching up spent ~14% of its main thread writing them (CPU profile, 1,000 instances).
 *
 * The sender is never starved by this: it still holds at least half a window when an update is held back.
 * Frames that carry a SYN or ACK flag, and the update after a paused stream resumes past the threshold,
 * go out as before. The library exports its stream class (`@chainsafe/libp2p-yamux/stream`); its
 * `sendWindowUpdate` is replaced once per process, on import of this module.
 */
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';

/** The fields of a yamux stream that the window update reads or writes (private in the library's types). */
interface WindowFields {
  state: number;
  recvWindow: number;
  recvWindowCapacity: number;
  maxStreamWindowSize: number;
  epochStart: number;
  streamId: number;
  getRTT(): number;
  getSendFlags(): number;
  sendFrame(header: { type: number; flag: number; streamID: number; length: number }): boolean;
}

/** StreamState.Paused and FrameType.WindowUpdate of the library (stable: they are wire or API values). */
const streamStatePaused = 5;
const frameTypeWindowUpdate = 1;

/**
 * Whether a window update is due: always with a flag to send (opening or accepting a stream), otherwise
 * once at least half of the receive window has been consumed since the last update.
 */
export function windowUpdateDue(recvWindow: number, recvWindowCapacity: number, flags: number): boolean {
  if (flags !== 0) return true;
  return recvWindow - recvWindowCapacity >= recvWindow / 2;
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
    return;
  }
  const flags = this.getSendFlags();
  if (!windowUpdateDue(this.recvWindow, this.recvWindowCapacity, flags)) return;
  // The library's auto-tuning, unchanged: half a window consumed within four round trips doubles it.
  const now = Date.now();
  const rtt = this.getRTT();
  if (flags === 0 && rtt > -1 && now - this.epochStart <= rtt * 4) {
    this.recvWindow = Math.min(this.recvWindow * 2, this.maxStreamWindowSize);
  }
  const delta = this.recvWindow - this.recvWindowCapacity;
  this.recvWindowCapacity = this.recvWindow;
  this.epochStart = now;
  this.sendFrame({ type: frameTypeWindowUpdate, flag: flags, streamID: this.streamId, length: delta });
}

prototype.sendWindowUpdate = sendWindowUpdate;
