/** Error classes of src/net: a stable `name` per class and a `code` per cause (js-libp2p style). */

export type SwarmKeyErrorCode =
  | 'ERR_SWARM_KEY_FORMAT'
  | 'ERR_SWARM_KEY_ENCODING'
  | 'ERR_SWARM_KEY_LENGTH'
  | 'ERR_SWARM_KEY_READ';

export class SwarmKeyError extends Error {
  static readonly NAME = 'SwarmKeyError';
  override readonly name = SwarmKeyError.NAME;
  readonly code: SwarmKeyErrorCode;
  constructor(code: SwarmKeyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export type ProtectorErrorCode = 'ERR_PNET_HANDSHAKE' | 'ERR_PNET_KEYSTREAM_EXHAUSTED';

export class ProtectorError extends Error {
  static readonly NAME = 'ProtectorError';
  override readonly name = ProtectorError.NAME;
  readonly code: ProtectorErrorCode;
  constructor(code: ProtectorErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export type MeshStreamErrorCode =
  | 'ERR_STREAM_CLOSED'
  | 'ERR_STREAM_RESET'
  | 'ERR_UNEXPECTED_EOF'
  | 'ERR_FRAME_TOO_LARGE'
  | 'ERR_BODY_LENGTH'
  | 'ERR_ABORTED'
  | 'ERR_READ_TOO_LARGE';

export class MeshStreamError extends Error {
  static readonly NAME = 'MeshStreamError';
  override readonly name = MeshStreamError.NAME;
  readonly code: MeshStreamErrorCode;
  constructor(code: MeshStreamErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export type MeshNodeErrorCode =
  | 'ERR_NODE_CONFIG'
  | 'ERR_PEER_KEY'
  | 'ERR_NOT_STARTED'
  | 'ERR_INVALID_PEER_ID'
  | 'ERR_INVALID_MULTIADDR'
  | 'ERR_PEER_DROPPED'
  | 'ERR_CONNECTION_SILENT';

export class MeshNodeError extends Error {
  static readonly NAME = 'MeshNodeError';
  override readonly name = MeshNodeError.NAME;
  readonly code: MeshNodeErrorCode;
  constructor(code: MeshNodeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
