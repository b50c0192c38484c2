/**
 * The versioned envelope around every mesh message (gossip payloads, stream header/ack frames).
 *
 * Wire form: one MessagePack value, a two-element array `[version, payload]`, where `version` is the
 * unsigned integer {@link ENVELOPE_VERSION} (1) and `payload` is a map with at least a string `type`
 * field, e.g. `[1, { type: 'heartbeat', peer: '12D3...', incarnation: 4 }]`.
 * Plain MessagePack (no msgpackr records/structures), so any MessagePack library can read it.
 *
 * Decoding checks the byte length against `maxBytes` BEFORE unpacking, then the version, then that the
 * payload is an object with a string `type`, and that nothing follows the value. It does not validate the
 * other fields: each caller validates the fields of its own message union.
 */
import { Packr, Unpackr } from 'msgpackr';

export const ENVELOPE_VERSION = 1;

export type EnvelopeErrorCode =
  | 'ERR_ENVELOPE_TOO_LARGE'
  | 'ERR_ENVELOPE_VERSION'
  | 'ERR_ENVELOPE_MALFORMED'
  | 'ERR_ENVELOPE_ENCODE';

export class EnvelopeError extends Error {
  static readonly NAME = 'EnvelopeError';
  override readonly name = EnvelopeError.NAME;
  readonly code: EnvelopeErrorCode;

  constructor(code: EnvelopeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export interface EncodeEnvelopeOptions {
  /** Refuse to produce an envelope larger than this (so a sender fails before the receiver would). */
  maxBytes?: number;
}

export interface DecodeEnvelopeOptions {
  /** Largest accepted envelope in bytes; checked before any unpacking. */
  maxBytes: number;
}

const packr = new Packr({ useRecords: false, moreTypes: false, bundleStrings: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Encode a message as `[1, message]`. The message must be a plain object with a string `type`. */
export function encodeEnvelope<T extends { type: string }>(message: T, options: EncodeEnvelopeOptions = {}): Uint8Array {
  if (!isPlainObject(message) || typeof message.type !== 'string' || message.type.length === 0) {
    throw new EnvelopeError('ERR_ENVELOPE_ENCODE', 'envelope payload must be a plain object with a non-empty string `type`');
  }
  let bytes: Uint8Array;
  try {
    bytes = packr.pack([ENVELOPE_VERSION, message]);
  } catch (err) {
    throw new EnvelopeError('ERR_ENVELOPE_ENCODE', `cannot encode envelope of type ${message.type}: ${(err as Error).message}`, { cause: err });
  }
  if (options.maxBytes !== undefined && bytes.byteLength > options.maxBytes) {
    throw new EnvelopeError('ERR_ENVELOPE_TOO_LARGE', `envelope of type ${message.type} is ${bytes.byteLength} bytes, limit ${options.maxBytes}`);
  }
  return bytes;
}

/**
 * Decode an envelope. Throws {@link EnvelopeError}:
 * - `ERR_ENVELOPE_TOO_LARGE` if `bytes` is longer than `maxBytes` (nothing is unpacked);
 * - `ERR_ENVELOPE_VERSION` for a well-formed `[version, payload]` with an unknown version;
 * - `ERR_ENVELOPE_MALFORMED` for anything else (not MessagePack, trailing bytes, not a 2-array,
 *   payload not a map, `type` missing or not a non-empty string).
 *
 * The type parameter is a promise made by the caller, not checked here beyond `type: string`.
 */
export function decodeEnvelope<T extends { type: string }>(bytes: Uint8Array, options: DecodeEnvelopeOptions): T {
  const maxBytes = options.maxBytes;
  if (!(bytes instanceof Uint8Array)) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'envelope must be a Uint8Array');
  }
  if (bytes.byteLength > maxBytes) {
    throw new EnvelopeError('ERR_ENVELOPE_TOO_LARGE', `envelope is ${bytes.byteLength} bytes, limit ${maxBytes}`);
  }
  if (bytes.byteLength === 0) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'empty envelope');
  }
  let values: unknown[];
  try {
    values = unpackr.unpackMultiple(bytes) as unknown[];
  } catch (err) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', `envelope is not valid MessagePack: ${(err as Error).message}`, { cause: err });
  }
  if (values.length !== 1) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', `envelope must hold exactly one value, found ${values.length}`);
  }
  const value = values[0];
  if (!Array.isArray(value) || value.length !== 2) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'envelope must be a [version, payload] array');
  }
  const [version, payload] = value as [unknown, unknown];
  if (typeof version !== 'number' || !Number.isInteger(version)) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'envelope version must be an integer');
  }
  if (version !== ENVELOPE_VERSION) {
    // Only another pacs-mesh version sends one: the operator is told so, not just that the input was bad.
    throw new EnvelopeError(
      'ERR_ENVELOPE_VERSION',
      `unsupported envelope version ${version} (supported: ${ENVELOPE_VERSION}): the sender runs a pacs-mesh version this one cannot read; run one version at every site (docs/compatibility.md)`,
    );
  }
  if (!isPlainObject(payload)) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'envelope payload must be a map');
  }
  if (typeof payload.type !== 'string' || payload.type.length === 0) {
    throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', 'envelope payload must have a non-empty string `type`');
  }
  return payload as T;
}
