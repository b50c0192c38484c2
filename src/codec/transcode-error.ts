/**
 * The transcoder's one error class, apart from the codecs so that the thread pool (main thread) can name
 * it without loading them.
 */
export type TranscodeErrorCode =
  /** No acceptable syntax can be produced from the stored one. */
  | 'ERR_TRANSCODE_UNSUPPORTED'
  /** Malformed or undecodable data, or a codec that failed or ran past its time. */
  | 'ERR_TRANSCODE_FAILED'
  /** The transcoder could not take the job: its queue is full, or the peer is stopping. */
  | 'ERR_TRANSCODE_UNAVAILABLE'
  /** Its requestor is gone (the association ended, a C-CANCEL): the work stopped. */
  | 'ERR_TRANSCODE_CANCELLED'
  /** Refused before it ran: converting it would hold more than the pool's per-job bound (transcode-estimate.ts). */
  | 'ERR_TRANSCODE_TOO_LARGE';

export class TranscodeError extends Error {
  static readonly NAME = 'TranscodeError';
  override readonly name = TranscodeError.NAME;
  readonly code: TranscodeErrorCode;
  constructor(code: TranscodeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export function isTranscodeErrorCode(value: unknown): value is TranscodeErrorCode {
  return value === 'ERR_TRANSCODE_UNSUPPORTED' || value === 'ERR_TRANSCODE_FAILED' || value === 'ERR_TRANSCODE_UNAVAILABLE' || value === 'ERR_TRANSCODE_CANCELLED' || value === 'ERR_TRANSCODE_TOO_LARGE';
}

/** The error of a transcode whose requestor is gone, wherever it stopped (queue, thread, codec loop). */
export function transcodeCancelled(): TranscodeError {
  return new TranscodeError('ERR_TRANSCODE_CANCELLED', 'transcoding cancelled: its requestor is gone');
}
