/**
 * Private-network connection protector, wire-compatible with the libp2p pnet spec
 * (https://github.com/libp2p/specs/blob/master/pnet/Private-Networks-PSK-V1.md) and with `@libp2p/pnet`:
 *
 * 1. each side sends a random 24-byte nonce, then reads the remote's 24 bytes;
 * 2. everything after that is XOR-ed with an XSalsa20 keystream keyed by the 32-byte PSK:
 *    outbound bytes with our nonce, inbound bytes with the remote's nonce.
 *
 * `@libp2p/pnet` 3.0.27 uses a WASM xsalsa20 that crashes on large transfers (STACK.md trap 2);
 * this one uses `@noble/ciphers` (pure JS). A peer with another key derives another keystream: the
 * noise handshake that follows fails, so it never gets a connection (and never sees gossip).
 *
 * Limit: noble exposes only the low 32 bits of Salsa20's 64-bit block counter, so one direction of one
 * connection can carry (2^32 - 1) * 64 bytes (~256 GiB). Past that the connection is aborted with
 * `ERR_PNET_KEYSTREAM_EXHAUSTED` (never a keystream reuse); the reconnect loop dials a fresh one.
 */
import { randomBytes } from 'node:crypto';
import { xsalsa20 } from '@noble/ciphers/salsa.js';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';
import { ProtectorError } from './errors.ts';
import type { SwarmKey } from './swarm-key.ts';
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface';
import type { SendResult } from '@libp2p/utils';
/** The list type of the installed @libp2p/utils (uint8arraylist 2 and 3 are both around: take it from the base class). */
type ByteList = Parameters<AbstractMultiaddrConnection['sendData']>[0];
/** One buffer or any list of buffers (structural, so either uint8arraylist version fits). */
type Bytes = Uint8Array | (Iterable<Uint8Array> & { readonly byteLength: number });

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
}

interface XSalsa20ConnectionInit {
  maConn: MultiaddrConnection;
  localNonce: Uint8Array;
  remoteNonce: Uint8Array;
  psk: Uint8Array;
  log: MultiaddrConnection['log'];
}

/** The protected connection: same shape as @libp2p/pnet's BoxMessageStream, with our keystream. */
class XSalsa20Connection extends AbstractMultiaddrConnection {
  private readonly maConn: MultiaddrConnection;
  private readonly inbound: XSalsa20Keystream;
  private readonly outbound: XSalsa20Keystream;

  constructor(init: XSalsa20ConnectionInit) {
    super({ log: init.log, remoteAddr: init.maConn.remoteAddr, direction: init.maConn.direction });
    this.maConn = init.maConn;
    this.inbound = new XSalsa20Keystream(init.psk, init.remoteNonce);
    this.outbound = new XSalsa20Keystream(init.psk, init.localNonce);

    this.maConn.addEventListener('message', (evt) => {
      let plain: Uint8Array;
      try {
        plain = this.inbound.process(evt.data);
      } catch (err) {
        this.abort(err as Error);
        return;
      }
      this.onData(plain);
    });
    // resume sending when the underlying connection can accept more data
    this.maConn.addEventListener('drain', () => {
      this.onMuxerDrain();
    });
    this.maConn.addEventListener('close', (evt) => {
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
    // throws ERR_PNET_KEYSTREAM_EXHAUSTED at the limit: the base class then aborts the connection
    const cipher = this.outbound.process(data);
    return { sentBytes: data.byteLength, canSendMore: this.maConn.send(cipher) };
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
  /** The nonce exchange must finish within this many ms (also bounded by the upgrader's signal). Default 5000. */
  handshakeTimeout?: number;
}

function isMultiaddrConnection(stream: MessageStream): stream is MultiaddrConnection {
  return (stream as Partial<MultiaddrConnection>).remoteAddr != null;
}

class PskConnectionProtector implements ConnectionProtector {
  readonly [Symbol.toStringTag] = 'pacs-mesh/pnet-noble';
  private readonly psk: Uint8Array;
  private readonly handshakeTimeout: number;

  constructor(init: PskProtectorInit) {
    const psk = init.swarmKey instanceof Uint8Array ? init.swarmKey : init.swarmKey.psk;
    if (psk.byteLength !== PSK_LENGTH) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', `the pre-shared key must be ${PSK_LENGTH} bytes`);
    }
    this.psk = Uint8Array.from(psk);
    this.handshakeTimeout = init.handshakeTimeout ?? 5000;
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    if (!isMultiaddrConnection(connection)) {
      throw new ProtectorError('ERR_PNET_HANDSHAKE', 'pnet can only protect a multiaddr connection');
    }
    const log = connection.log.newScope('pnet-noble');
    const timeout = AbortSignal.timeout(this.handshakeTimeout);
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
    log('exchanged nonces');
    return new XSalsa20Connection({ maConn: bytes.unwrap(), localNonce, remoteNonce, psk: this.psk, log });
  }
}

/** libp2p `connectionProtector` factory: `createLibp2p({ connectionProtector: pskProtector({ swarmKey }) })`. */
export function pskProtector(init: PskProtectorInit): () => ConnectionProtector {
  return () => new PskConnectionProtector(init);
}
