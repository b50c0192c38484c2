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
 * So while the connection is full, every stream may hand over `smallWriteBytesMax` bytes until it
 * drains, and no more: a stream holding nothing is not held back, and a window update no longer lets a
 * copy refill the connection past that (it waits for the drain as the others do). Control messages
 * (protocol selection, custody messages, answers, half-closes) join the connection's queue at once,
 * behind at most the socket's buffer, one window of the stream that first sent after the last drain,
 * and 16 KiB from each other stream. With a first version that left the window updates alone, copies
 * queued ~1 MB in the socket (8 s at 1 Mbit/s) and custody messages still took 11-16 s. The library's
 * stream class is patched once per process, on import of this module (as `yamux-window.ts` does for
 * window updates).
 */
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';

/** Bytes a stream may hand over on a full connection before it waits for the connection to drain. */
export const smallWriteBytesMax = 16 * 1024;

/** The fields of a yamux stream read or written here (private in the library's types). */
interface DrainFields {
  writeBuffer: { byteLength: number };
  sendWindowCapacity: number;
  /** The connection said it is full and has not drained since (told to every stream by the muxer). */
  connectionFull?: boolean;
  /** Bytes handed to the muxer since the connection was last full and drained. */
  bytesSentWhileFull?: number;
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

interface Patched {
  onMuxerNeedsDrain(this: DrainFields): void;
  onMuxerDrain(this: DrainFields): void;
  sendData(this: DrainFields, data: ByteList): SendResult;
}

/** Bytes a stream may still hand over while the connection is full (0: it waits for the drain). */
export function roomWhileFull(connectionFull: boolean, bytesSentWhileFull: number): number {
  return connectionFull ? Math.max(0, smallWriteBytesMax - bytesSentWhileFull) : Number.POSITIVE_INFINITY;
}

const prototype = YamuxStream.prototype as unknown as Patched;
const library = {
  onMuxerNeedsDrain: prototype.onMuxerNeedsDrain,
  onMuxerDrain: prototype.onMuxerDrain,
  sendData: prototype.sendData,
};

function fieldsPresent(stream: DrainFields): boolean {
  return typeof stream.writeBuffer?.byteLength === 'number' && typeof stream.sendWindowCapacity === 'number';
}

prototype.onMuxerNeedsDrain = function onMuxerNeedsDrain(this: DrainFields): void {
  if (!fieldsPresent(this)) {
    library.onMuxerNeedsDrain.call(this);
    return;
  }
  this.connectionFull = true;
  // A stream holding nothing, with room left, is not held back: its next few bytes go out (sendData).
  if (this.writeBuffer.byteLength === 0 && roomWhileFull(true, this.bytesSentWhileFull ?? 0) > 0) return;
  library.onMuxerNeedsDrain.call(this);
};

prototype.onMuxerDrain = function onMuxerDrain(this: DrainFields): void {
  this.connectionFull = false;
  this.bytesSentWhileFull = 0;
  library.onMuxerDrain.call(this);
};

prototype.sendData = function sendData(this: DrainFields, data: ByteList): SendResult {
  if (!fieldsPresent(this)) return library.sendData.call(this, data);
  const room = roomWhileFull(this.connectionFull === true, this.bytesSentWhileFull ?? 0);
  // Woken by a window update while the connection is still full: the library would send the whole
  // window's worth; this stream waits for the connection's drain instead (as every other one does).
  if (room === 0) return { sentBytes: 0, canSendMore: false };
  let result: SendResult;
  if (data.byteLength <= room) {
    result = library.sendData.call(this, data);
  } else {
    const part = data.sublist(0, room);
    result = library.sendData.call(this, part);
    data.consume(result.sentBytes);
    result = { sentBytes: result.sentBytes, canSendMore: false };
  }
  if (this.connectionFull === true) this.bytesSentWhileFull = (this.bytesSentWhileFull ?? 0) + result.sentBytes;
  // All of it handed over, the send window not used up, and room left: the connection being full
  // (the library's false) does not hold this stream's next few bytes.
  if (!result.canSendMore && data.byteLength === 0 && this.sendWindowCapacity > 0 && roomWhileFull(this.connectionFull === true, this.bytesSentWhileFull ?? 0) > 0) {
    return { sentBytes: result.sentBytes, canSendMore: true };
  }
  return result;
};
