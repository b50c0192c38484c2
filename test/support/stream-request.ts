/**
 * A generic request over one mesh stream for the stream and transfer tests (the custody protocols have
 * their own framing, in src/actors/storage/): `frame(envelope header) | uint64 BE body length | body bytes`,
 * then the receiver answers `frame(envelope ack)`.
 */
import { decodeEnvelope, encodeEnvelope } from '../../src/codec/envelope.ts';
import { MeshStreamError } from '../../src/net/errors.ts';
import { DEFAULT_MAX_FRAME_BYTES, type MeshStream, type ReadOptions } from '../../src/net/stream.ts';

export type Body = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

export interface RequestOptions extends ReadOptions {
  /** Largest envelope accepted for the ack. Default 64 KiB. */
  maxAckBytes?: number;
  /** Largest header envelope we send. Default 1 MiB. */
  maxHeaderBytes?: number;
}

/**
 * Client side of "header frame, body bytes, ack frame": sends `header` as an envelope frame, the body
 * length as uint64 BE, the body (checked to be exactly `bodyLength` bytes; on a mismatch the stream is
 * reset), closes its writable end, and returns the decoded ack envelope. The caller validates the ack.
 */
export async function sendRequest<Req extends { type: string }, Ack extends { type: string }>(
  stream: MeshStream,
  header: Req,
  body: Body,
  bodyLength: number,
  options: RequestOptions = {},
): Promise<Ack> {
  const headerBytes = encodeEnvelope(header, { maxBytes: options.maxHeaderBytes ?? DEFAULT_MAX_FRAME_BYTES });
  try {
    // Staged: header and length go out with the first piece of the body (end() sends them for an empty one).
    await stream.writer.stageFrame(headerBytes, options);
    await stream.writer.stageUint64(bodyLength, options);
    let sent = 0;
    const pieces: Iterable<Uint8Array> | AsyncIterable<Uint8Array> = body instanceof Uint8Array ? [body] : body;
    for await (const piece of pieces) {
      sent += piece.byteLength;
      if (sent > bodyLength) break;
      await stream.writer.write(piece, options);
    }
    if (sent !== bodyLength) {
      throw new MeshStreamError('ERR_BODY_LENGTH', `body has ${sent > bodyLength ? 'more' : sent} bytes, header announced ${bodyLength}`);
    }
    await stream.closeWrite(options);
    const ack = await stream.reader.readFrame(options.maxAckBytes ?? 64 * 1024, options);
    return decodeEnvelope<Ack>(ack, { maxBytes: options.maxAckBytes ?? 64 * 1024 });
  } catch (err) {
    stream.abort(err as Error);
    throw err;
  }
}

export interface ReadRequestOptions extends ReadOptions {
  /** Largest header envelope accepted. Default 1 MiB. */
  maxHeaderBytes?: number;
  /** Largest body accepted; a larger announced length is rejected before reading it. */
  maxBodyBytes: number;
}

export interface IncomingRequest<Req extends { type: string }> {
  header: Req;
  bodyLength: number;
  /** Exactly `bodyLength` bytes, as chunks; consume it fully before {@link writeResponse}. */
  body: AsyncIterable<Uint8Array>;
}

/** Server side: reads the header envelope and the body length; the body is streamed by the caller. */
export async function readRequest<Req extends { type: string }>(stream: MeshStream, options: ReadRequestOptions): Promise<IncomingRequest<Req>> {
  const maxHeaderBytes = options.maxHeaderBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const headerBytes = await stream.reader.readFrame(maxHeaderBytes, options);
  const header = decodeEnvelope<Req>(headerBytes, { maxBytes: maxHeaderBytes });
  const bodyLength = await stream.reader.readUint64(options);
  if (bodyLength > options.maxBodyBytes) {
    throw new MeshStreamError('ERR_BODY_LENGTH', `announced body of ${bodyLength} bytes exceeds the limit of ${options.maxBodyBytes}`);
  }
  return { header, bodyLength, body: stream.reader.body(bodyLength, options) };
}

/** Server side: sends the ack envelope and closes our writable end. */
export async function writeResponse<Ack extends { type: string }>(stream: MeshStream, ack: Ack, options: ReadOptions & { maxAckBytes?: number } = {}): Promise<void> {
  await stream.writer.writeFrame(encodeEnvelope(ack, { maxBytes: options.maxAckBytes ?? 64 * 1024 }), options);
  await stream.closeWrite(options);
}
