/**
 * A few bytes on a full connection go out behind what the connection holds, instead of waiting until the
 * whole connection has drained.
 *
 * libp2p (utils 7, yamux 8): when the socket under a connection takes no more, the muxer marks EVERY
 * stream of the connection "needs drain", and a marked stream keeps whatever it is given in its own
 * buffer (and its `close()` waits) until the connection's next 'drain'. That event comes only once the
 * socket's whole buffer has been written, but a stream with data queued is also woken by each window
 * update from the remote: copies in flight refill the socket as fast as it empties, and the connection
 * may not drain for a long time. At 1 Mbit/s with three pushes and a batch on it (helper 77, emulated
 * WAN), the sender's protocol selection and a custody stream's half-close waited 5-20 s: custody streams
 * missed their 15 s deadline at the receiver, and pushes were reset by the receiver's 10 s limit on
 * protocol negotiation before their first byte.
 *
 * So a stream that holds nothing is not marked, and one whose send the connection accepted only over
 * its high-water mark is not marked either while it has handed over fewer than `smallWriteBytesMax`
 * bytes since it was last woken: control messages (protocol selection, custody messages, answers,
 * half-closes) join the connection's queue at once, which is FIFO, bounded by the socket's buffer and
 * what the windows of the bulk streams let in. A bulk stream passes the budget with its first piece
 * and waits as before. The library's stream class is patched once per process, on import of this
 * module (as `yamux-window.ts` does for window updates).
 */
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';

/** Bytes a stream may hand over on a full connection before it waits for the connection to drain. */
export const smallWriteBytesMax = 16 * 1024;

/** The fields of a yamux stream read or written here (private in the library's types). */
interface DrainFields {
  writeBuffer: { byteLength: number };
  sendWindowCapacity: number;
  /** Bytes handed to the muxer while the connection was full, since the stream was last woken. */
  bytesSentWhileFull?: number;
}

interface SendResult {
  sentBytes: number;
  canSendMore: boolean;
}

interface Patched {
  onMuxerNeedsDrain(this: DrainFields): void;
  onMuxerDrain(this: DrainFields): void;
  sendData(this: DrainFields, data: { byteLength: number }): SendResult;
  handleWindowUpdate(this: DrainFields, frame: unknown): void;
}

/**
 * Whether a stream must wait for the connection to drain: it has bytes of its own still queued, or it
 * has handed over its budget since it was last woken.
 */
export function mustWaitForDrain(queuedBytes: number, bytesSentWhileFull: number): boolean {
  return queuedBytes > 0 || bytesSentWhileFull >= smallWriteBytesMax;
}

const prototype = YamuxStream.prototype as unknown as Patched;
const library = {
  onMuxerNeedsDrain: prototype.onMuxerNeedsDrain,
  onMuxerDrain: prototype.onMuxerDrain,
  sendData: prototype.sendData,
  handleWindowUpdate: prototype.handleWindowUpdate,
};

function fieldsPresent(stream: DrainFields): boolean {
  return typeof stream.writeBuffer?.byteLength === 'number' && typeof stream.sendWindowCapacity === 'number';
}

prototype.onMuxerNeedsDrain = function onMuxerNeedsDrain(this: DrainFields): void {
  if (fieldsPresent(this) && !mustWaitForDrain(this.writeBuffer.byteLength, this.bytesSentWhileFull ?? 0)) return;
  library.onMuxerNeedsDrain.call(this);
};

prototype.onMuxerDrain = function onMuxerDrain(this: DrainFields): void {
  this.bytesSentWhileFull = 0;
  library.onMuxerDrain.call(this);
};

prototype.handleWindowUpdate = function handleWindowUpdate(this: DrainFields, frame: unknown): void {
  // A window update wakes a stream with data queued (the library dispatches 'drain'): a new budget too.
  if (fieldsPresent(this) && this.writeBuffer.byteLength > 0) this.bytesSentWhileFull = 0;
  library.handleWindowUpdate.call(this, frame);
};

prototype.sendData = function sendData(this: DrainFields, data: { byteLength: number }): SendResult {
  const result = library.sendData.call(this, data);
  // Not sent whole (the send window is used up) or sent on a connection with room: the library's answer.
  if (result.canSendMore || !fieldsPresent(this) || data.byteLength > 0 || this.sendWindowCapacity === 0) return result;
  // All of it was handed over, and the connection is now over its high-water mark.
  this.bytesSentWhileFull = (this.bytesSentWhileFull ?? 0) + result.sentBytes;
  if (mustWaitForDrain(0, this.bytesSentWhileFull)) return result;
  return { sentBytes: result.sentBytes, canSendMore: true };
};
