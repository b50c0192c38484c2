/** Errors raised by the dataset codec; `code` is stable so callers can map it to a DIMSE status. */

export type DatasetParseErrorCode =
  | 'ERR_DATASET_TRUNCATED'
  | 'ERR_DATASET_MALFORMED'
  | 'ERR_DATASET_TOO_LARGE_HEADER'
  /** More kept top-level elements than the reader's bound. */
  | 'ERR_DATASET_TOO_MANY_ELEMENTS'
  /** Sequences and items nested beyond the reader's bound. */
  | 'ERR_DATASET_TOO_DEEP'
  | 'ERR_DATASET_INFLATE'
  | 'ERR_PART10_MALFORMED';

export class DatasetParseError extends Error {
  override readonly name = 'DatasetParseError';
  readonly code: DatasetParseErrorCode;
  /** Offset in the (inflated) dataset stream where the problem was found, when known. */
  readonly streamOffset: number | undefined;

  constructor(code: DatasetParseErrorCode, message: string, streamOffset?: number) {
    super(streamOffset === undefined ? message : `${message} (at byte ${streamOffset})`);
    this.code = code;
    this.streamOffset = streamOffset;
  }
}

export type DatasetEncodeErrorCode = 'ERR_DATASET_ENCODE_VALUE' | 'ERR_DATASET_ENCODE_VR';

export class DatasetEncodeError extends Error {
  override readonly name = 'DatasetEncodeError';
  readonly code: DatasetEncodeErrorCode;

  constructor(code: DatasetEncodeErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}
