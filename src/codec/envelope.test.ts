import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { decodeEnvelope, encodeEnvelope, EnvelopeError, ENVELOPE_VERSION } from './envelope.ts';

type Msg = { type: 'ping'; n: number } | { type: 'blob'; data: Uint8Array };

const raw = new Packr({ useRecords: false });

function assertEnvelopeError(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof EnvelopeError, `expected EnvelopeError, got ${String(err)}`);
    assert.equal(err.name, 'EnvelopeError');
    assert.equal(err.code, code);
    return true;
  });
}

describe('envelope', () => {
  it('round-trips a message, binary fields included', () => {
    const msg: Msg = { type: 'blob', data: new Uint8Array([1, 2, 3]) };
    const bytes = encodeEnvelope(msg);
    const back = decodeEnvelope<Msg>(bytes, { maxBytes: 1024 });
    assert.equal(back.type, 'blob');
    assert.deepEqual(new Uint8Array((back as { data: Uint8Array }).data), new Uint8Array([1, 2, 3]));
    assert.deepEqual(decodeEnvelope<Msg>(encodeEnvelope<Msg>({ type: 'ping', n: 7 }), { maxBytes: 64 }), { type: 'ping', n: 7 });
  });

  it('documents its wire form: [1, payload]', () => {
    const bytes = encodeEnvelope({ type: 'x' });
    assert.deepEqual(raw.unpack(bytes), [ENVELOPE_VERSION, { type: 'x' }]);
  });

  it('checks the size limit before unpacking', () => {
    const bytes = encodeEnvelope({ type: 'blob', data: new Uint8Array(2000) });
    assertEnvelopeError(() => decodeEnvelope(bytes, { maxBytes: 1000 }), 'ERR_ENVELOPE_TOO_LARGE');
    // Garbage that would fail to unpack is still reported as too large: the size check comes first.
    assertEnvelopeError(() => decodeEnvelope(new Uint8Array(5000).fill(0xc1), { maxBytes: 100 }), 'ERR_ENVELOPE_TOO_LARGE');
    assertEnvelopeError(() => encodeEnvelope({ type: 'blob', data: new Uint8Array(2000) }, { maxBytes: 1000 }), 'ERR_ENVELOPE_TOO_LARGE');
  });

  it('rejects an unknown version', () => {
    assertEnvelopeError(() => decodeEnvelope(raw.pack([2, { type: 'x' }]), { maxBytes: 100 }), 'ERR_ENVELOPE_VERSION');
    assertEnvelopeError(() => decodeEnvelope(raw.pack([0, { type: 'x' }]), { maxBytes: 100 }), 'ERR_ENVELOPE_VERSION');
    // The receiver logs this text (dropped heartbeat, refused stream): it names both versions and the cause.
    assert.throws(() => decodeEnvelope(raw.pack([2, { type: 'x' }]), { maxBytes: 100 }), /envelope version 2 \(supported: 1\): the sender runs a pacs-mesh version this one cannot read/);
  });

  it('rejects malformed envelopes', () => {
    const cases: unknown[] = [
      { type: 'x' }, // not wrapped
      [1], // no payload
      [1, { type: 'x' }, 3], // extra element
      ['1', { type: 'x' }], // version not a number
      [1, 'x'], // payload not a map
      [1, [1, 2]], // payload an array
      [1, { kind: 'x' }], // no type
      [1, { type: 5 }], // type not a string
      [1, { type: '' }], // empty type
      null,
    ];
    for (const c of cases) {
      assertEnvelopeError(() => decodeEnvelope(raw.pack(c), { maxBytes: 100 }), 'ERR_ENVELOPE_MALFORMED');
    }
    assertEnvelopeError(() => decodeEnvelope(new Uint8Array(0), { maxBytes: 100 }), 'ERR_ENVELOPE_MALFORMED');
    assertEnvelopeError(() => decodeEnvelope(new Uint8Array([0x92, 0x01]), { maxBytes: 100 }), 'ERR_ENVELOPE_MALFORMED'); // truncated
    assertEnvelopeError(() => decodeEnvelope(new Uint8Array([0xc1]), { maxBytes: 100 }), 'ERR_ENVELOPE_MALFORMED'); // never-used byte
    const trailing = new Uint8Array([...encodeEnvelope({ type: 'x' }), 0xc0]);
    assertEnvelopeError(() => decodeEnvelope(trailing, { maxBytes: 100 }), 'ERR_ENVELOPE_MALFORMED');
  });

  it('refuses to encode a payload without a string type', () => {
    assertEnvelopeError(() => encodeEnvelope({ type: 3 } as unknown as { type: string }), 'ERR_ENVELOPE_ENCODE');
    assertEnvelopeError(() => encodeEnvelope([] as unknown as { type: string }), 'ERR_ENVELOPE_ENCODE');
  });

  it('does not let a __proto__ key pollute prototypes', () => {
    const evil = raw.pack([1, JSON.parse('{"type":"x","__proto__":{"polluted":true}}')]);
    const msg = decodeEnvelope<{ type: string }>(evil, { maxBytes: 100 });
    assert.equal(msg.type, 'x');
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal((msg as Record<string, unknown>).polluted, undefined);
  });
});
