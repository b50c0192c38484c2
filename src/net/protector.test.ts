import '../polyfill.ts';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { xsalsa20 } from '@noble/ciphers/salsa.js';
import { preSharedKey } from '@libp2p/pnet';
import { defaultLogger } from '@libp2p/logger';
import { multiaddrConnectionPair, byteStream } from '@libp2p/utils';
import { pskProtector, XSalsa20Keystream } from './protector.ts';
import { generateSwarmKey } from './swarm-key.ts';
import { ProtectorError } from './errors.ts';
import type { ConnectionProtector, MessageStream } from '@libp2p/interface';

function protectorFrom(factory: (components: never) => ConnectionProtector): ConnectionProtector {
  return factory({ logger: defaultLogger() } as never);
}

/** Sends `payload` from a to b over the protected pair and returns what b received. */
async function roundTrip(a: MessageStream, b: MessageStream, payload: Uint8Array): Promise<Uint8Array> {
  const reader = byteStream(b);
  const writer = byteStream(a);
  const [received] = await Promise.all([
    reader.read({ bytes: payload.byteLength, signal: AbortSignal.timeout(5000) }),
    (async () => {
      for (let off = 0; off < payload.byteLength; off += 7777) {
        await writer.write(payload.subarray(off, Math.min(payload.byteLength, off + 7777)));
      }
    })(),
  ]);
  return received.subarray();
}

describe('XSalsa20Keystream', () => {
  it('equals one-shot xsalsa20 whatever the chunking', () => {
    const key = randomBytes(32);
    const nonce = randomBytes(24);
    const plain = new Uint8Array(randomBytes(70_000));
    const expected = xsalsa20(key, nonce, plain);
    for (const sizes of [[1], [63, 1, 64, 65], [3, 5, 7, 11, 4096, 13], [70_000]]) {
      const ks = new XSalsa20Keystream(key, nonce);
      const out = new Uint8Array(plain.byteLength);
      let off = 0;
      let i = 0;
      while (off < plain.byteLength) {
        const n = Math.min(sizes[i++ % sizes.length] as number, plain.byteLength - off);
        out.set(ks.process(plain.subarray(off, off + n)), off);
        off += n;
      }
      assert.deepEqual(out, expected, `chunking ${sizes.join(',')}`);
    }
  });

  it('does not modify its input and refuses to go past the counter limit', () => {
    const ks = new XSalsa20Keystream(randomBytes(32), randomBytes(24));
    const input = new Uint8Array(100);
    ks.process(input);
    assert.ok(input.every((b) => b === 0));
    (ks as unknown as { position: number }).position = (2 ** 32 - 1) * 64 - 10;
    assert.throws(() => ks.process(new Uint8Array(11)), (err: unknown) => err instanceof ProtectorError && err.code === 'ERR_PNET_KEYSTREAM_EXHAUSTED');
  });
});

describe('pskProtector', () => {
  it('interoperates with @libp2p/pnet in both directions', async () => {
    const key = generateSwarmKey();
    const ours = protectorFrom(pskProtector({ swarmKey: key }));
    const theirs = protectorFrom(preSharedKey({ psk: new TextEncoder().encode(key.text) }) as never);
    const payload = new Uint8Array(randomBytes(300_000));

    const [outbound, inbound] = multiaddrConnectionPair();
    const [a, b] = await Promise.all([ours.protect(outbound), theirs.protect(inbound)]);
    const atB = await roundTrip(a, b, payload);
    assert.equal(createHash('sha256').update(atB).digest('hex'), createHash('sha256').update(payload).digest('hex'));
    const atA = await roundTrip(b, a, payload.subarray(0, 100_001));
    assert.deepEqual(atA, payload.subarray(0, 100_001));
  });

  it('a different key yields garbage, not the plaintext', async () => {
    const ours = protectorFrom(pskProtector({ swarmKey: generateSwarmKey() }));
    const other = protectorFrom(pskProtector({ swarmKey: generateSwarmKey() }));
    const [outbound, inbound] = multiaddrConnectionPair();
    const [a, b] = await Promise.all([ours.protect(outbound), other.protect(inbound)]);
    const payload = new TextEncoder().encode('/multistream/1.0.0\n'.repeat(10));
    const received = await roundTrip(a, b, payload);
    assert.notDeepEqual(received, payload);
  });

  it('fails the handshake with a clear error when the remote sends no nonce', async () => {
    const ours = protectorFrom(pskProtector({ swarmKey: generateSwarmKey(), handshakeTimeout: 200 }));
    const [outbound] = multiaddrConnectionPair();
    // AbortSignal.timeout does not keep the event loop alive (a real node's listener does): hold it here
    const keepAlive = setTimeout(() => {}, 5000);
    try {
      await assert.rejects(ours.protect(outbound), (err: unknown) => err instanceof ProtectorError && err.code === 'ERR_PNET_HANDSHAKE');
    } finally {
      clearTimeout(keepAlive);
    }
  });
});
