/**
 * Private-network connection protector (the pnet layer under Noise):
 *
 * 1. each side sends a random 24-byte nonce, then reads the remote's 24 bytes;
 * 2. everything after that is XOR-ed with a keystream keyed by the 32-byte PSK (the swarm key):
 *    outbound bytes with our nonce, inbound bytes with the remote's nonce.
 *
 * Two keystreams (`PskProtectorInit.cipher`):
 *
 * - `'xchacha20'` (default): XChaCha20 (draft-irtf-cfrg-xchacha-03): subkey = HChaCha20(psk, nonce[0..16)),
 *   then IETF ChaCha20 with that subkey, nonce 0x00000000 || nonce[16..24), block counter from 0. HChaCha20
 *   is one block (`@noble/ciphers`); the stream itself is OpenSSL's `chacha20` through node:crypto: ~3 GB
 *   per CPU-second on 64 KiB chunks, ~10x the pure-JS XSalsa20 below (pnet was the largest CPU cost of
 *   replication on our 2-core machines).
 *   It is NOT wire-compatible with the libp2p pnet spec, go-libp2p or `@libp2p/pnet` (they use XSalsa20):
 *   every pacs-mesh peer uses it, and a pnet peer with the other cipher simply derives another keystream,
 *   exactly like a peer with another key.
 * - `'xsalsa20'`: the libp2p pnet spec
 *   (https://github.com/libp2p/specs/blob/master/pnet/Private-Networks-PSK-V1.md), wire-compatible with
 *   `@libp2p/pnet` and go-libp2p. `@libp2p/pnet` 3.0.27 uses a WASM xsalsa20 that crashes on large
 *   transfers (STACK.md trap 2); this one uses `@noble/ciphers` (pure JS, ~300 MB/s).
 *
 * A peer with another key (or the other cipher) derives another keystream: the Noise handshake that
 * follows fails, so it never gets a connection (and never sees gossip). pnet is unauthenticated
 * obfuscation plus access control; confidentiality and integrity come from Noise.
 *
 * Limits, per direction of one connection (never a keystream reuse: past them the connection is aborted
 * with `ERR_PNET_KEYSTREAM_EXHAUSTED` and the reconnect loop dials a fresh one, with fresh nonces):
 * - xchacha20: the IETF 32-bit block counter, 2^32 blocks * 64 bytes = 256 GiB (OpenSSL would carry into
 *   the nonce word past that; we stop first);
 * - xsalsa20: noble exposes only the low 32 bits of Salsa20's 64-bit block counter and refuses
 *   2^32 - 1, so (2^32 - 1) * 64 bytes (~256 GiB).
 */
import { createCipheriv, randomBytes, type Cipher } from 'node:crypto';
import { hchacha } from '@noble/ciphers/chacha.js';
import { xsalsa20 } from '@noble/ciphers/salsa.js';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';
import { ProtectorError } from './errors.ts';
import type { InboundActivity } from './inbound-activity.ts';
import type { SwarmKey } from './swarm-key.ts';
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface';
import type { SendResult } from '@libp2p/utils';
/** The list type of the installed @libp2p/utils (uint8arraylist 2 and 3 are both around: take it from the base class). */
type ByteList = Parameters<AbstractMultiaddrConnection['sendData']>[0];
/** One buffer or any list of buffers (structural, so either uint8arraylist version fits). */
type Bytes = Uint8Array | (Iterable<Uint8Array> & { readonly byteLength: number });

/** The keystream that protects the connection once the nonces are exchanged (see the header comment). */
export type PnetCipher = 'xchacha20' | 'xsalsa20';
export const PNET_CIPHERS: readonly PnetCipher[] = ['xchacha20', 'xsalsa20'];

export const NONCE_LENGTH = 24;
export const PSK_LENGTH = 32;
const BLOCK = 64;
/** Last block counter noble accepts (it refuses to reach 2^32 - 1). */
const MAX_BLOCK_COUNTER = 2 ** 32 - 2;

/**
 * An XSalsa20 keystream that keeps its position across calls, so a byte stream split into arbitrary
 * chunks is processed exactly as one message would be. No copy of the whole stream is kept: only the
 * 64-byte keystream block of the current partial block.
 */
export class XSalsa20Keystream {
  private readonly key: Uint8Array;
  private readonly nonce: Uint8Array;
  /** Bytes of keystream consumed so far. */
  private position = 0;
  private readonly block = new Uint8Array(BLOCK);
  private readonly zeros = new Uint8Array(BLOCK);
  private blockCounter = -1;

  constructor(key: Uint8Array, nonce: Uint8Array) {
    if (key.byteLength !== PSK_LENGTH) throw new RangeError(`xsalsa20 key must be ${PSK_LENGTH} bytes`);
    if (nonce.byteLength !== NONCE_LENGTH) throw new RangeError(`xsalsa20 nonce must be ${NONCE_LENGTH} bytes`);
    this.key = Uint8Array.from(key);
    this.nonce = Uint8Array.from(nonce);
  }

  get bytesProcessed(): number {
    return this.position;
  }

  /**
   * A zeroed buffer of `length` bytes placed so that, at the current keystream position, the part after
   * the leading partial block starts 4-byte aligned (noble's fast 32-bit path needs aligned buffers).
   */
  alloc(length: number): Uint8Array {
    const within = this.position % BLOCK;
    const head = within === 0 ? 0 : Math.min(BLOCK - within, length);
    const shift = (4 - (head % 4)) % 4;
    return new Uint8Array(length + 3).subarray(shift, shift + length);
  }

  /** XOR `data` in place with the next `data.byteLength` keystream bytes. */
  xorInPlace(data: Uint8Array): void {
    const len = data.byteLength;
    if (len === 0) return;
    const lastBlock = Math.floor((this.position + len - 1) / BLOCK);
    if (lastBlock > MAX_BLOCK_COUNTER) {
      throw new ProtectorError('ERR_PNET_KEYSTREAM_EXHAUSTED', 'xsalsa20 keystream exhausted for this connection (~256 GiB); reconnect');
    }
    let pos = 0;
    const within = this.position % BLOCK;
    if (within !== 0) {
      const counter = Math.floor(this.position / BLOCK);
      if (this.blockCounter !== counter) {
        xsalsa20(this.key, this.nonce, this.zeros, this.block, counter);
        this.blockCounter = counter;
      }
      const take = Math.min(BLOCK - within, len);
      const block = this.block;
      for (let i = 0; i < take; i++) data[i] = (data[i] as number) ^ (block[within + i] as number);
      pos = take;
      this.position += take;
    }
    if (pos < len) {
      const rest = data.subarray(pos);
      xsalsa20(this.key, this.nonce, rest, rest, this.position / BLOCK);
      this.position += rest.byteLength;
    }
  }

  /** Copy `data` (one buffer or a list) into a fresh aligned buffer and XOR it: the input is not modified. */
  process(data: Bytes): Uint8Array {
    const out = this.alloc(data.byteLength);
    if (data instanceof Uint8Array) {
      out.set(data);
    } else {
      let offset = 0;
      for (const buf of data) {
        out.set(buf, offset);
        offset += buf.byteLength;
      }
    }
    this.xorInPlace(out);
    return out;
  }

  /** `process` in the shape the connection wants (one buffer: it already had to copy into one). */
  processChunks(data: Bytes): Uint8Array[] {
    return [this.process(data)];
  }
}

/** "expand 32-byte k": ChaCha's first four state words. */
const SIGMA = new TextEncoder().encode('expand 32-byte k');
/** The IETF ChaCha20 block counter is 32 bits: 2^32 blocks of 64 bytes (256 GiB) per key and nonce. */
export const XCHACHA20_MAX_BYTES = 2 ** 32 * BLOCK;

/** A 32-bit-word view of a copy of `bytes` (host byte order, which is what noble's raw `hchacha` takes). */
function words(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(new Uint8Array(bytes).buffer);
}

/** HChaCha20 (draft-irtf-cfrg-xchacha-03 section 2.2): a 32-byte subkey from a 32-byte key and a 16-byte nonce. */
export function hchacha20(key: Uint8Array, nonce16: Uint8Array): Uint8Array {
  if (key.byteLength !== PSK_LENGTH) throw new RangeError(`hchacha20 key must be ${PSK_LENGTH} bytes`);
  if (nonce16.byteLength !== 16) throw new RangeError('hchacha20 nonce must be 16 bytes');
  const k = words(key);
  const out = new Uint32Array(8);
  // noble normalises host-order views itself (byte-swaps on big-endian hosts) and writes `out` the same way
  hchacha(words(SIGMA), k, words(nonce16), out);
  k.fill(0);
  return new Uint8Array(out.buffer);
}

/**
 * An XChaCha20 keystream (draft-irtf-cfrg-xchacha-03): HChaCha20 subkey, then node:crypto's native
 * `chacha20` (OpenSSL), whose cipher object keeps its stream position across `update()` calls, so a byte
 * stream split into arbitrary chunks is processed exactly as one message would be. `update()` returns a
 * fresh buffer: the input is never modified and nothing is copied besides that output.
 */
export class XChaCha20Keystream {
  private readonly cipher: Cipher;
  /** Bytes of keystream consumed so far (the only per-chunk bookkeeping: an add and a compare). */
  private position = 0;

  constructor(key: Uint8Array, nonce: Uint8Array) {
    if (key.byteLength !== PSK_LENGTH) throw new RangeError(`xchacha20 key must be ${PSK_LENGTH} bytes`);
    if (nonce.byteLength !== NONCE_LENGTH) throw new RangeError(`xchacha20 nonce must be ${NONCE_LENGTH} bytes`);
    const subkey = hchacha20(key, nonce.subarray(0, 16));
    // OpenSSL's 16-byte chacha20 IV: block counter (LE32) = 0 || 0x00000000 || nonce[16..24)
    const iv = new Uint8Array(16);
    iv.set(nonce.subarray(16, NONCE_LENGTH), 8);
    this.cipher = createCipheriv('chacha20', subkey, iv);
    subkey.fill(0);
  }

  get bytesProcessed(): number {
    return this.position;
  }

  /**
   * XOR `data` (one buffer or a list) with the next `data.byteLength` keystream bytes: one fresh output
   * buffer per input buffer, in order. Throws ERR_PNET_KEYSTREAM_EXHAUSTED, consuming nothing, if that
   * would go past block 2^32 - 1 (OpenSSL would carry into the nonce word instead).
   */
  processChunks(data: Bytes): Uint8Array[] {
    const end = this.position + data.byteLength;
    if (end > XCHACHA20_MAX_BYTES) {
      throw new ProtectorError('ERR_PNET_KEYSTREAM_EXHAUSTED', 'xchacha20 keystream exhausted for this connection (256 GiB); reconnect');
    }
    this.position = end;
    if (data instanceof Uint8Array) return [this.cipher.update(data)];
    const out: Uint8Array[] = [];
    for (const buf of data) out.push(this.cipher.update(buf));
    return out;
  }

  /** `processChunks` as one buffer (one more copy when `data` is a list of several buffers). */
  process(data: Bytes): Uint8Array {
    const out = this.processChunks(data);
    return out.length === 1 ? (out[0] as Uint8Array) : Buffer.concat(out, data.byteLength);
  }
}

/** What the connection needs from a keystream; `data` is never modified, the output is always fresh. */
interface Keystream {
  /** `data` XOR-ed with the next keystream bytes, as one buffer (outbound: one socket write). */
  process(data: Bytes): Uint8Array;
  /** The same as buffers in order, with no copy beyond the cipher's own output (inbound). */
  processChunks(data: Bytes): Uint8Array[];
}

function createKeystream(cipher: PnetCipher, key: Uint8Array, nonce: Uint8Array): Keystream {
  return cipher === 'xchacha20' ? new XChaCha20Keystream(key, nonce) : new XSalsa20Keystream(key, nonce);
}

interface PnetConnectionInit {
  maConn: MultiaddrConnection;
  localNonce: Uint8Array;
  remoteNonce: Uint8Array;
  psk: Uint8Array;
  cipher: PnetCipher;
  log: MultiaddrConnection['log'];
  inboundActivity?: InboundActivity;
  maxWriteBufferBytes: number;
}

/** The protected connection: same shape as @libp2p/pnet's BoxMessageStream, with our keystreams. */
class PnetConnection extends AbstractMultiaddrConnection {
  private readonly maConn: MultiaddrConnection;
  private readonly inbound: Keystream;
  private readonly outbound: Keystream;

  constructor(init: PnetConnectionInit) {
    // Past maxWriteBufferBytes queued for a peer that reads nothing, the connection is aborted (StreamBufferError).
    super({ log: init.log, remoteAddr: init.maConn.remoteAddr, direction: init.maConn.direction, maxWriteBufferLength: init.maxWriteBufferBytes });
    this.maConn = init.maConn;
    this.inbound = createKeystream(init.cipher, init.psk, init.remoteNonce);
    this.outbound = createKeystream(init.cipher, init.psk, init.localNonce);
    const activity = init.inboundActivity?.opened(init.maConn.remoteAddr.toString());

    this.maConn.addEventListener('message', (evt) => {
      activity?.received();
      let plain: Uint8Array[];
      try {
        plain = this.inbound.processChunks(evt.data);
      } catch (err) {
        this.abort(err as Error);
        return;
      }
      for (const buf of plain) this.onData(buf);
    });
    // resume sending when the underlying connection can accept more data
    this.maConn.addEventListener('drain', () => {
      this.onMuxerDrain();
    });
    this.maConn.addEventListener('close', (evt) => {
      activity?.closed();
      if (evt.error != null) {
        if (evt.local) {
          this.abort(evt.error);
        } else {
          this.onRemoteReset();
        }
      } else {
        this.onTransportClosed();
      }
    });
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    await this.maConn.close(options);
  }

  sendData(data: ByteList): SendResult {
    // throws ERR_PNET_KEYSTREAM_EXHAUSTED at the limit: the base class then aborts the connection.
    // One buffer, so one socket write per call as before: Noise hands us [2-byte length, frame] lists and
    // the TCP transport writes each buffer of a list on its own (TCP_NODELAY), so sending the list would put
    // every 2-byte length in a packet of its own; concatenating (xchacha20, lists only) costs one memcpy.
    return { sentBytes: data.byteLength, canSendMore: this.maConn.send(this.outbound.process(data)) };
  }

  sendReset(err: Error): void {
    this.maConn.abort(err);
  }

  sendPause(): void {
    this.maConn.pause();
  }

  sendResume(): void {
    this.maConn.resume();
  }
}

export interface PskProtectorInit {
  /** The swarm key, parsed (see swarm-key.ts), or its 32 raw bytes. */
  swarmKey: SwarmKey | Uint8Array;
  /**
   * The keystream after the nonce exchange. Default 'xchacha20' (native, fast; pacs-mesh peers only);
   * 'xsalsa20' is the libp2p pnet spec (interoperates with go-libp2p and @libp2p/pnet). Both ends must agree.
   */
  cipher?: PnetCipher;
  /**
   * The nonce exchange must finish within this many ms (also bounded by the upgrader's signal). Default 5000.
   * Elapsed time (a pause counts), not run time, on purpose: it bounds what a connection that never sends its nonce holds (see
   * docs/mesh-algorithms.md, hunt 119).
   */
  handshakeTimeoutMs?: number;
  /** Told when each protected connection opens, receives bytes and closes (the node's silence check). */
  inboundActivity?: InboundActivity;
  /**
   * Bytes a connection may hold for the remote at most (waiting for its socket); past it the connection is
   * aborted. Default 64 MiB (DEFAULT_CONNECTION_WRITE_BUFFER_BYTES). Without it, a peer that kept its
   * connection alive (it sends) but read nothing had every small stream write queued for it (hunt 100).
   */
  maxWriteBufferBytes?: number;
}

export const DEFAULT_CONNECTION_WRITE_BUFFER_BYTES = 64 * 1024 * 1024;

function isMultiaddrConnection(stream: MessageStream): stream is MultiaddrConnection {
  return (stream as Partial<MultiaddrConnection>).remoteAddr != null;
}

class PskConnectionProtector implements ConnectionProtector {
  readonly [Symbol.toStringTag] = 'pacs-mesh/pnet';
  private readonly psk: Uint8Array;
  private readonly cipher: PnetCipher;
  private readonly handshakeTimeoutMs: number;
  private readonly inboundActivity: InboundActivity | undefined;
  private readonly maxWriteBufferBytes: number;

  constructor(init: PskProtectorInit) {
    const psk = init.swarmKey instanceof Uint8Array ? init.swarmKey : init.swarmKey.psk;
    if (psk.byteLength !== PSK_LENGTH) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', `the pre-shared key must be ${PSK_LENGTH} bytes`);
    }
    const cipher = init.cipher ?? 'xchacha20';
    if (!PNET_CIPHERS.includes(cipher)) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', `unknown pnet cipher ${String(cipher)} (expected ${PNET_CIPHERS.join(' or ')})`);
    }
    this.psk = Uint8Array.from(psk);
    this.cipher = cipher;
    this.handshakeTimeoutMs = init.handshakeTimeoutMs ?? 5000;
    this.inboundActivity = init.inboundActivity;
    this.maxWriteBufferBytes = init.maxWriteBufferBytes ?? DEFAULT_CONNECTION_WRITE_BUFFER_BYTES;
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    if (!isMultiaddrConnection(connection)) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', 'pnet can only protect a multiaddr connection');
    }
    const log = connection.log.newScope('pnet');
    const timeout = AbortSignal.timeout(this.handshakeTimeoutMs);
    const signal = options?.signal != null ? AbortSignal.any([options.signal, timeout]) : timeout;
    const localNonce = new Uint8Array(randomBytes(NONCE_LENGTH));
    const bytes = byteStream(connection);
    let remoteNonce: Uint8Array;
    try {
      const [received] = await Promise.all([
        bytes.read({ bytes: NONCE_LENGTH, signal }),
        bytes.write(localNonce, { signal }),
      ]);
      remoteNonce = received.subarray();
    } catch (err) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', `pnet nonce exchange failed: ${(err as Error).message}`, { cause: err });
    }
    log('exchanged nonces (%s)', this.cipher);
    return new PnetConnection({ maConn: bytes.unwrap(), localNonce, remoteNonce, psk: this.psk, cipher: this.cipher, log, inboundActivity: this.inboundActivity, maxWriteBufferBytes: this.maxWriteBufferBytes });
  }
}

/** libp2p `connectionProtector` factory: `createLibp2p({ connectionProtector: pskProtector({ swarmKey }) })`. */
export function pskProtector(init: PskProtectorInit): () => ConnectionProtector {
  return () => new PskConnectionProtector(init);
}
