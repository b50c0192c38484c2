import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DicomApplicationContext,
  PduError,
  PduFramer,
  decodePdu,
  defaultPduLimits,
  describeRejection,
  encodePDataFragments,
  encodePdu,
  evenChunks,
  type AssociateRqPdu,
  type Pdu,
} from './pdu.ts';
import { Prng } from '../sim/prng.ts';
import { negotiate } from '../actors/association/negotiation.ts';

const rq: AssociateRqPdu = {
  type: 'associateRq',
  protocolVersion: 1,
  calledAeTitle: 'PACSMESH',
  callingAeTitle: 'MODALITY',
  applicationContextName: DicomApplicationContext,
  presentationContexts: [
    { id: 1, abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: ['1.2.840.10008.1.2'] },
    { id: 3, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUids: ['1.2.840.10008.1.2.1', '1.2.840.10008.1.2'] },
  ],
  userInformation: {
    maxPduLength: 16384,
    implementationClassUid: '1.2.3.4',
    implementationVersionName: 'TEST',
    roleSelections: [{ sopClassUid: '1.2.840.10008.5.1.4.1.1.2', scuRole: false, scpRole: true }],
    asyncOps: { invoked: 1, performed: 1 },
  },
};

const samples: Pdu[] = [
  rq,
  {
    type: 'associateAc',
    protocolVersion: 1,
    calledAeTitle: 'PACSMESH',
    callingAeTitle: 'MODALITY',
    applicationContextName: DicomApplicationContext,
    presentationContexts: [{ id: 1, result: 0, transferSyntaxUid: '1.2.840.10008.1.2' }],
    userInformation: { maxPduLength: 0, implementationClassUid: '1.2.3', roleSelections: [] },
  },
  { type: 'associateRj', result: 1, source: 1, reason: 7 },
  { type: 'pData', values: [{ presentationContextId: 1, isCommand: true, isLast: true, data: Uint8Array.of(1, 2, 3, 4) }] },
  { type: 'releaseRq' },
  { type: 'releaseRp' },
  { type: 'abort', source: 2, reason: 6 },
];

test('every PDU type survives encode then decode', () => {
  for (const pdu of samples) {
    const decoded = decodePdu(encodePdu(pdu));
    if (pdu.type === 'pData' && decoded.type === 'pData') {
      assert.deepEqual([...decoded.values[0]!.data], [...pdu.values[0]!.data]);
      assert.equal(decoded.values[0]!.isCommand, true);
    } else if (decoded.type === 'associateRq') {
      const { aeTitleFields, ...rest } = decoded;
      assert.deepEqual(rest, pdu);
      assert.equal(Buffer.from(aeTitleFields!).toString('latin1'), 'PACSMESH        MODALITY        ');
    } else {
      assert.deepEqual(decoded, pdu);
    }
  }
});

test('the A-ASSOCIATE-AC sends back the AE title fields exactly as the request had them (PS3.8 9.3.3.2)', () => {
  // A leading space and NUL padding: not significant to us, but echoed unchanged.
  const fields = Buffer.from(' PACSMESH\0\0\0\0\0\0\0 MOD A          ', 'latin1');
  assert.equal(fields.length, 32);
  const bytes = encodePdu(rq);
  bytes.set(fields, 10);
  const received = decodePdu(bytes);
  assert.equal(received.type, 'associateRq');
  if (received.type !== 'associateRq') return;
  assert.equal(received.calledAeTitle, 'PACSMESH');
  const result = negotiate(received, { aeTitle: 'PACSMESH', maxPduLength: 16384, implementationClassUid: '1.2.3', implementationVersionName: 'TEST' });
  assert.equal(result.outcome, 'accept');
  if (result.outcome !== 'accept') return;
  assert.deepEqual(Buffer.from(encodePdu(result.ac).subarray(10, 42)), fields);
});

test('the framer gives the same PDUs whatever the split points', () => {
  const stream = Buffer.concat(samples.map(encodePdu));
  for (let cut = 1; cut < stream.length; cut++) {
    const framer = new PduFramer();
    const pdus = [...framer.push(stream.subarray(0, cut)), ...framer.push(stream.subarray(cut))];
    assert.equal(pdus.length, samples.length, `cut at ${cut}`);
    assert.equal(framer.bufferedBytes, 0);
  }
});

test('valid PDUs before malformed bytes are handed on, then the error, whatever the split points (hunt 126: in one chunk with the bad bytes they were dropped, so a C-ECHO or C-STORE was answered or not by where TCP cut)', () => {
  const valid = Buffer.concat(samples.map(encodePdu));
  for (const bad of [Buffer.from([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0]), Buffer.from([0x04, 0, 0xff, 0xff, 0xff, 0xf0])]) {
    const stream = Buffer.concat([valid, bad]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const framer = new PduFramer();
      const pdus: Pdu[] = [];
      let failure: unknown;
      for (const chunk of [stream.subarray(0, cut), stream.subarray(cut)]) {
        try {
          pdus.push(...framer.push(chunk));
        } catch (error) {
          failure = error;
          break;
        }
        failure = framer.failure;
        if (failure !== undefined) break;
      }
      assert.equal(pdus.length, samples.length, `cut at ${cut}: every valid PDU`);
      assert.ok(failure instanceof PduError, `cut at ${cut}: then the error`);
      assert.throws(() => framer.push(Buffer.from([0x05])), PduError, 'nothing more is framed');
    }
  }
});

test('an oversized length field is refused before anything is buffered', () => {
  const framer = new PduFramer(defaultPduLimits);
  const header = Buffer.from([0x04, 0, 0xff, 0xff, 0xff, 0xf0]);
  assert.throws(() => framer.push(header), (e: unknown) => e instanceof PduError && e.code === 'ERR_PDU_TOO_LARGE');
  const associate = Buffer.from([0x01, 0, 0x00, 0x10, 0x00, 0x00]);
  assert.throws(() => new PduFramer().push(associate), (e: unknown) => e instanceof PduError && e.code === 'ERR_PDU_TOO_LARGE');
});

test('an unknown PDU type is refused at once', () => {
  assert.throws(() => new PduFramer().push(Buffer.from([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0])), (e: unknown) => e instanceof PduError && e.code === 'ERR_PDU_UNRECOGNIZED');
});

test('P-DATA fragmentation respects the peer maximum length', () => {
  const data = new Uint8Array(100_000).map((_, i) => i & 0xff);
  const pdus = encodePDataFragments(5, false, data, 16384);
  let total = 0;
  pdus.forEach((bytes, index) => {
    const pdu = decodePdu(bytes);
    assert.equal(pdu.type, 'pData');
    if (pdu.type !== 'pData') return;
    assert.ok(bytes.length - 6 <= 16384);
    assert.equal(pdu.values[0]!.isLast, index === pdus.length - 1);
    total += pdu.values[0]!.data.length;
  });
  assert.equal(total, data.length);
});

test('a peer maximum of 2^31 + 6 and more (up to 2^32 - 1) gets fragments of 1 MiB, as no maximum does, not of 2 bytes (hunt 195)', () => {
  const data = new Uint8Array(3 * 1024 * 1024 + 10);
  for (const peerMaxPduLength of [0, 0x7fffffff, 0x80000006, 0xc0000000, 0xfffffffe, 0xffffffff]) {
    const pdus = encodePDataFragments(1, false, data, peerMaxPduLength);
    assert.equal(pdus.length, 4, `maximum ${peerMaxPduLength}`);
    assert.equal(decodePdu(pdus[0]!).type === 'pData' && (decodePdu(pdus[0]!) as { values: Array<{ data: Uint8Array }> }).values[0]!.data.length, 1024 * 1024);
  }
});

test('data set fragments have even lengths: an odd peer maximum is rounded down, odd chunks are re-cut', async () => {
  const data = new Uint8Array(50_000).map((_, i) => i & 0xff);
  for (const pdu of encodePDataFragments(5, false, data, 16_385)) {
    const decoded = decodePdu(pdu);
    assert.ok(decoded.type === 'pData');
    const fragment = decoded.values[0]!.data.length;
    assert.equal(fragment % 2, 0, `fragment of ${fragment} bytes`);
  }
  // Chunks as a replica may have been stored in: odd sizes, an empty one, a single byte.
  const sizes = [3, 5, 0, 1, 12_213, 2, 7, 1];
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const size of sizes) {
    chunks.push(data.subarray(offset, offset + size));
    offset += size;
  }
  const recut: Uint8Array[] = [];
  for await (const chunk of evenChunks((async function* () { yield* chunks; })())) recut.push(chunk);
  assert.ok(recut.every((chunk) => chunk.length > 0 && chunk.length % 2 === 0), JSON.stringify(recut.map((c) => c.length)));
  assert.deepEqual(Buffer.concat(recut), Buffer.from(data.subarray(0, offset)), 'same bytes, same order');
  const odd: Uint8Array[] = [];
  for await (const chunk of evenChunks((async function* () { yield data.subarray(0, 3); yield data.subarray(3, 6); yield data.subarray(6, 7); })())) odd.push(chunk);
  assert.deepEqual(odd.map((c) => c.length), [2, 4, 1], 'an odd whole ends with its odd byte');
});

test('seeded: evenChunks keeps every byte in order and cuts only even pieces, whatever the chunk sizes', async () => {
  const seed = Number(process.env.FUZZ_SEED ?? 20261128);
  const prng = new Prng(seed);
  const source = new Uint8Array(300_000).map((_, i) => (i * 31) & 0xff);
  for (let round = 0; round < 200; round++) {
    const chunks: Uint8Array[] = [];
    let offset = 0;
    const total = prng.nextInt(source.length);
    while (offset < total) {
      const size = Math.min(total - offset, prng.nextInt(4) === 0 ? prng.nextInt(8) : prng.nextInt(70_000));
      chunks.push(source.subarray(offset, offset + size));
      offset += size;
    }
    const out: Uint8Array[] = [];
    for await (const piece of evenChunks((async function* () { yield* chunks; })())) out.push(piece);
    const what = `seed ${seed} round ${round}`;
    assert.ok(Buffer.from(Buffer.concat(out)).equals(Buffer.from(source.subarray(0, total))), `${what}: same bytes`);
    out.forEach((piece, i) => assert.ok(piece.length > 0 && (piece.length % 2 === 0 || (i === out.length - 1 && total % 2 === 1)), `${what}: piece ${i} of ${piece.length}`));
  }
});

test('seeded fuzz: thousands of mutated PDUs only ever raise PduError', () => {
  const seed = Number(process.env.FUZZ_SEED ?? 20261128);
  const prng = new Prng(seed);
  const random = () => prng.nextUnit();
  const originals = samples.map(encodePdu);
  let rejected = 0;
  for (let round = 0; round < 5000; round++) {
    const original = originals[Math.floor(random() * originals.length)]!;
    const mutated = Buffer.from(original);
    const flips = 1 + Math.floor(random() * 8);
    for (let i = 0; i < flips; i++) mutated[Math.floor(random() * mutated.length)] = Math.floor(random() * 256);
    const cut = random() < 0.3 ? Math.floor(random() * mutated.length) : mutated.length;
    try {
      new PduFramer().push(mutated.subarray(0, cut));
    } catch (error) {
      if (!(error instanceof PduError)) assert.fail(`seed ${seed} round ${round}: ${String(error)}`);
      rejected++;
    }
  }
  assert.ok(rejected > 100, `only ${rejected} mutations were rejected`);
});

test('PDUs handed out stay intact while later chunks arrive (they are handled asynchronously)', () => {
  const first = encodePdu({ type: 'pData', values: [{ presentationContextId: 1, isCommand: false, isLast: false, data: new Uint8Array(1000).fill(0xaa) }] });
  const second = encodePdu({ type: 'pData', values: [{ presentationContextId: 1, isCommand: false, isLast: true, data: new Uint8Array(1000).fill(0xbb) }] });
  const stream = Buffer.concat([first, second, first]);
  const framer = new PduFramer();
  const held: Pdu[] = [];
  for (let offset = 0; offset < stream.length; offset += 700) held.push(...framer.push(stream.subarray(offset, offset + 700)));
  assert.equal(held.length, 3);
  const fills = held.map((p) => (p.type === 'pData' ? new Set(p.values[0]!.data).size === 1 && p.values[0]!.data[0] : -1));
  assert.deepEqual(fills, [0xaa, 0xbb, 0xaa]);
});

test('an A-ASSOCIATE-RJ is described in words for the log', () => {
  assert.equal(describeRejection({ result: 1, source: 1, reason: 7 }), 'permanent, by the service user: called AE title not recognized');
  assert.equal(describeRejection({ result: 2, source: 3, reason: 1 }), 'transient, by the presentation provider: temporary congestion');
  assert.equal(describeRejection({ result: 9, source: 9, reason: 9 }), 'result 9, source 9: reason 9');
});
