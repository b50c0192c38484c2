/** The one error of multipart bodies, read (STOW-RS requests) or written (WADO-RS responses), with a stable code. */

export type MultipartErrorCode =
  /** No delimiter line within the preamble's bound: not a multipart body with this boundary. */
  | 'ERR_MULTIPART_NO_START'
  /** The body ended before the close delimiter (a cut upload, or a client that never sent it). */
  | 'ERR_MULTIPART_TRUNCATED'
  /** A part's header section is over its bound. */
  | 'ERR_MULTIPART_HEADER_TOO_LARGE'
  /** A header line that is not `name: value`, or a Content-Type given twice. */
  | 'ERR_MULTIPART_HEADER'
  /** The boundary is followed by something other than `--` or optional padding and CRLF. */
  | 'ERR_MULTIPART_DELIMITER'
  /** More parts than one request may hold. */
  | 'ERR_MULTIPART_TOO_MANY_PARTS'
  /** Writing: the client closed the connection before the response was whole. */
  | 'ERR_DICOMWEB_CLIENT_GONE'
  /** Writing: a part written after the end, alongside another, or with a header that is not a header line (a bug). */
  | 'ERR_DICOMWEB_MULTIPART_USAGE';

export class MultipartError extends Error {
  static readonly NAME = 'MultipartError';
  override readonly name = MultipartError.NAME;
  constructor(
    readonly code: MultipartErrorCode,
    message: string,
  ) {
    super(message);
  }
}
