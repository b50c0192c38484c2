import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import dcmjsCodecs from 'dcmjs-codecs';
import { canTranscode, codestreamSize, TranscodeError, transcodeDataset } from './transcode.ts';
import { corpusDirectory, corpusSkip } from './dataset/test-fixtures.ts';

const IMPLICIT = '1.2.840.10008.1.2';
const EXPLICIT = '1.2.840.10008.1.2.1';
const DEFLATED = '1.2.840.10008.1.2.1.99';
const BIG = '1.2.840.10008.1.2.2';
const RLE = '1.2.840.10008.1.2.5';
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';
const JPEG_LOSSLESS = '1.2.840.10008.1.2.4.70';
const JPEG_LS = '1.2.840.10008.1.2.4.80';
const J2K = '1.2.840.10008.1.2.4.90';
const HTJ2K = '1.2.840.10008.1.2.4.201';
const JXL = '1.2.840.10008.1.2.4.110';
const UNCOMPRESSED = [IMPLICIT, EXPLICIT, DEFLATED, BIG];

// ---------------------------------------------------------------------------------------------------
// A tiny encoder/decoder for the tests (deliberately independent of the module under test).

type Value = Uint8Array | Item[];
interface Item {
  elements: TEl[];
  undefinedLength?: boolean;
}
interface TEl {
  tag: number;
  vr: string;
  /** Value in little-endian byte order (items for SQ). */
  value: Value;
  undefinedLength?: boolean;
}
interface Enc {
  explicit: boolean;
  le: boolean;
}
const LONG = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const WORD: Record<string, number> = { AT: 2, US: 2, SS: 2, OW: 2, UL: 4, SL: 4, FL: 4, OF: 4, FD: 8, OD: 8 };

const latin1 = (s: string) => new Uint8Array(Buffer.from(s.length % 2 ? `${s} ` : s, 'latin1'));
const uid = (s: string) => new Uint8Array(Buffer.from(s.length % 2 ? `${s}\0` : s, 'latin1'));
const us = (...n: number[]) => {
  const b = Buffer.alloc(2 * n.length);
  n.forEach((v, i) => b.writeUInt16LE(v, 2 * i));
  return new Uint8Array(b);
};
const ul = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return new Uint8Array(b);
};
const fd = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(n);
  return new Uint8Array(b);
};

function swap(v: Uint8Array, w: number): Uint8Array {
  const o = new Uint8Array(v.length);
  for (let i = 0; i < v.length; i += w) for (let j = 0; j < w; j++) o[i + j] = v[i + w - 1 - j]!;
  return o;
}

function head(tag: number, vr: string | null, len: number, e: Enc): Buffer {
  const long = vr === null || LONG.has(vr);
  const b = Buffer.alloc(vr !== null && long ? 12 : 8);
  const w16 = (v: number, o: number) => (e.le ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o));
  const w32 = (v: number, o: number) => (e.le ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o));
  w16(tag >>> 16, 0);
  w16(tag & 0xffff, 2);
  if (vr === null) w32(len, 4);
  else {
    b.write(vr, 4, 'latin1');
    if (long) w32(len, 8);
    else w16(len, 6);
  }
  return b;
}

function encode(elements: TEl[], e: Enc): Buffer {
  const parts: Buffer[] = [];
  for (const el of elements) {
    const vr = e.explicit ? el.vr : null;
    if (Array.isArray(el.value)) {
      const items = el.value.map((it) => {
        const body = encode(it.elements, e);
        return it.undefinedLength
          ? Buffer.concat([head(0xfffee000, null, 0xffffffff, e), body, head(0xfffee00d, null, 0, e)])
          : Buffer.concat([head(0xfffee000, null, body.length, e), body]);
      });
      const body = Buffer.concat(items);
      if (el.undefinedLength) parts.push(head(el.tag, vr, 0xffffffff, e), body, head(0xfffee0dd, null, 0, e));
      else parts.push(head(el.tag, vr, body.length, e), body);
    } else {
      const w = WORD[el.vr];
      const v = !e.le && w ? swap(el.value, w) : el.value;
      parts.push(head(el.tag, vr, v.length, e), Buffer.from(v));
    }
  }
  return Buffer.concat(parts);
}

interface Parsed {
  tag: number;
  vr: string | null;
  value?: Uint8Array;
  items?: Parsed[][];
}

/** Parses a dataset (defined or undefined lengths; implicit elements of undefined length are sequences). */
function parse(buf: Uint8Array, e: Enc, start = 0, end = buf.length): { els: Parsed[]; pos: number } {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const r16 = (o: number) => (e.le ? b.readUInt16LE(o) : b.readUInt16BE(o));
  const r32 = (o: number) => (e.le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const els: Parsed[] = [];
  let pos = start;
  while (pos < end) {
    const tag = ((r16(pos) << 16) | r16(pos + 2)) >>> 0;
    if (tag === 0xfffee00d) return { els, pos: pos + 8 };
    let vr: string | null = null;
    let len: number;
    if (e.explicit) {
      vr = b.toString('latin1', pos + 4, pos + 6);
      if (LONG.has(vr)) {
        len = r32(pos + 8);
        pos += 12;
      } else {
        len = r16(pos + 6);
        pos += 8;
      }
    } else {
      len = r32(pos + 4);
      pos += 8;
    }
    if (len === 0xffffffff || vr === 'SQ') {
      const itemEnc = vr === 'UN' ? { explicit: false, le: true } : e;
      const stop = len === 0xffffffff ? Infinity : pos + len;
      const items: Parsed[][] = [];
      const ib = (o: number, n: 2 | 4) =>
        n === 2 ? (itemEnc.le ? b.readUInt16LE(o) : b.readUInt16BE(o)) : itemEnc.le ? b.readUInt32LE(o) : b.readUInt32BE(o);
      while (pos < stop) {
        const it = ((ib(pos, 2) << 16) | ib(pos + 2, 2)) >>> 0;
        const il = ib(pos + 4, 4);
        pos += 8;
        if (it === 0xfffee0dd) break;
        if (il === 0xffffffff) {
          const res = parse(buf, itemEnc, pos, buf.length);
          items.push(res.els);
          pos = res.pos;
        } else {
          items.push(parse(buf, itemEnc, pos, pos + il).els);
          pos += il;
        }
      }
      els.push({ tag, vr, items });
    } else {
      els.push({ tag, vr, value: buf.subarray(pos, pos + len) });
      pos += len;
    }
  }
  return { els, pos };
}

const find = (els: Parsed[], tag: number) => els.find((x) => x.tag === tag);
const text = (v: Uint8Array | undefined) => (v ? Buffer.from(v).toString('latin1') : undefined);

// A dataset with a private block, a Latin-1 name, binary values, a nested sequence and a private sequence.
const patientName = 'Müller^Jürgen=Ærøskøbing'; // non-ASCII in ISO_IR 100 (Latin-1), 1 byte per char
function sampleElements(): TEl[] {
  return [
    { tag: 0x00080005, vr: 'CS', value: latin1('ISO_IR 100') },
    { tag: 0x00080016, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.7') },
    { tag: 0x00080018, vr: 'UI', value: uid('1.2.3.4.5.6.7') },
    { tag: 0x00080060, vr: 'CS', value: latin1('OT') },
    {
      tag: 0x00081140,
      vr: 'SQ',
      undefinedLength: true,
      value: [
        {
          elements: [
            { tag: 0x00081150, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.2') },
            { tag: 0x00081155, vr: 'UI', value: uid('1.2.3.9') },
          ],
        },
        { undefinedLength: true, elements: [{ tag: 0x00081160, vr: 'IS', value: latin1('3') }] },
      ],
    },
    { tag: 0x00090010, vr: 'LO', value: latin1('ACME PRIVATE') },
    { tag: 0x00091001, vr: 'LO', value: latin1('secret ÿ value') },
    { tag: 0x00091002, vr: 'SQ', undefinedLength: true, value: [{ elements: [{ tag: 0x00091003, vr: 'UN', value: us(7, 8) }] }] },
    { tag: 0x00100010, vr: 'PN', value: latin1(patientName) },
    { tag: 0x00100020, vr: 'LO', value: latin1('ID-1') },
    { tag: 0x00181030, vr: 'LO', value: latin1('Protocolé') },
    { tag: 0x00201041, vr: 'DS', value: latin1('-12.5') },
    { tag: 0x00280002, vr: 'US', value: us(1) },
    { tag: 0x00280004, vr: 'CS', value: latin1('MONOCHROME2') },
    { tag: 0x00280010, vr: 'US', value: us(2) },
    { tag: 0x00280011, vr: 'US', value: us(3) },
    { tag: 0x00280100, vr: 'US', value: us(16) },
    { tag: 0x00280101, vr: 'US', value: us(12) },
    { tag: 0x00280102, vr: 'US', value: us(11) },
    { tag: 0x00280103, vr: 'US', value: us(1) },
    { tag: 0x00280106, vr: 'SS', value: us(0xfff0) },
    { tag: 0x00281050, vr: 'DS', value: latin1('40') },
    { tag: 0x00540081, vr: 'US', value: us(9) },
    { tag: 0x00189327, vr: 'FD', value: fd(1.5) },
    { tag: 0x00209165, vr: 'AT', value: us(0x0020, 0x9056) },
    { tag: 0x7fe00010, vr: 'OW', value: us(1, 2, 3, 4, 0x0fff, 0xf800) },
  ];
}

function assertTranscodeError(err: unknown, code: string): true {
  assert.ok(err instanceof TranscodeError, `expected TranscodeError, got ${String(err)}`);
  assert.equal(err.name, 'TranscodeError');
  assert.equal(err.code, code);
  return true;
}

// ---------------------------------------------------------------------------------------------------

test('canTranscode: uncompressed <-> uncompressed, compressed -> uncompressed, anything -> lossless syntaxes we encode', () => {
  for (const a of UNCOMPRESSED) for (const b of UNCOMPRESSED) assert.equal(canTranscode(a, b), true, `${a} -> ${b}`);
  const decodable = [JPEG_BASELINE, '1.2.840.10008.1.2.4.51', '1.2.840.10008.1.2.4.57', JPEG_LOSSLESS, JPEG_LS, '1.2.840.10008.1.2.4.81', J2K, '1.2.840.10008.1.2.4.91', RLE, HTJ2K, '1.2.840.10008.1.2.4.202', '1.2.840.10008.1.2.4.203', JXL, '1.2.840.10008.1.2.4.112'];
  const encodable = [RLE, JPEG_LOSSLESS, JPEG_LS, J2K, HTJ2K];
  for (const c of decodable) {
    for (const u of UNCOMPRESSED) {
      assert.equal(canTranscode(c, u), true, `${c} -> ${u}`);
      assert.equal(canTranscode(u, c), encodable.includes(c), `${u} -> ${c}`);
    }
    assert.equal(canTranscode(c, c), true);
    for (const d of decodable) if (d !== c) assert.equal(canTranscode(c, d), encodable.includes(d), `${c} -> ${d}`);
  }
  for (const unsupported of ['1.2.840.10008.1.2.4.111', '1.2.840.10008.1.2.4.100', '9.9.9']) {
    assert.equal(canTranscode(unsupported, EXPLICIT), false, unsupported);
  }
});

test('target choice: stored syntax returned untouched, receiver order otherwise, unsupported throws', async () => {
  const ds = new Uint8Array(encode(sampleElements(), { explicit: true, le: true }));
  const same = await transcodeDataset(ds, EXPLICIT, [J2K, EXPLICIT]);
  assert.equal(same.transferSyntaxUid, EXPLICIT);
  assert.equal(same.bytes, ds);

  // Receiver order decides among reachable targets; one we would compress into comes after those we need
  // not, and a lossy one is never produced.
  assert.equal((await transcodeDataset(ds, EXPLICIT, [J2K, BIG, IMPLICIT])).transferSyntaxUid, BIG);
  assert.equal((await transcodeDataset(ds, EXPLICIT, [JPEG_BASELINE, IMPLICIT, BIG])).transferSyntaxUid, IMPLICIT);
  assert.equal((await transcodeDataset(ds, EXPLICIT, [JPEG_BASELINE, RLE])).transferSyntaxUid, RLE);

  await assert.rejects(transcodeDataset(ds, EXPLICIT, [JPEG_BASELINE]), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_UNSUPPORTED'));
  await assert.rejects(transcodeDataset(ds, EXPLICIT, []), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_UNSUPPORTED'));
  await assert.rejects(transcodeDataset(ds, '1.2.840.10008.1.2.4.111', [EXPLICIT]), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_UNSUPPORTED'));
});

test('implicit -> explicit -> implicit keeps every element, private ones and Latin-1 bytes included', async () => {
  const implicit = new Uint8Array(encode(sampleElements(), { explicit: false, le: true }));
  const ex = await transcodeDataset(implicit, IMPLICIT, [EXPLICIT]);
  assert.equal(ex.transferSyntaxUid, EXPLICIT);

  const els = parse(ex.bytes, { explicit: true, le: true }).els;
  // Every top-level element is there, in order.
  assert.deepEqual(els.map((e) => e.tag), sampleElements().map((e) => e.tag));
  // VRs from the dictionary; private elements as UN, the private creator as LO, ambiguous ones resolved.
  const vrOf = (tag: number) => find(els, tag)!.vr;
  assert.equal(vrOf(0x00080005), 'CS');
  assert.equal(vrOf(0x00100010), 'PN');
  assert.equal(vrOf(0x00081140), 'SQ');
  assert.equal(vrOf(0x00090010), 'LO');
  assert.equal(vrOf(0x00091001), 'UN');
  assert.equal(vrOf(0x00091002), 'SQ'); // undefined length in implicit VR: a sequence
  assert.equal(vrOf(0x00280106), 'SS'); // US or SS, Pixel Representation 1
  assert.equal(vrOf(0x00189327), 'FD');
  assert.equal(vrOf(0x00209165), 'AT');
  assert.equal(vrOf(0x7fe00010), 'OW');
  // Bytes untouched: the character set and the Latin-1 values.
  assert.equal(text(find(els, 0x00080005)!.value), 'ISO_IR 100');
  assert.deepEqual(find(els, 0x00100010)!.value, latin1(patientName));
  assert.equal(find(els, 0x00100010)!.value!.length, patientName.length + (patientName.length % 2));
  assert.deepEqual(find(els, 0x00091001)!.value, latin1('secret ÿ value'));
  assert.equal(find(els, 0x00081140)!.items!.length, 2);
  assert.deepEqual(find(els, 0x00091002)!.items![0]!.map((e) => [e.tag, e.vr]), [[0x00091003, 'UN']]);

  const back = await transcodeDataset(ex.bytes, EXPLICIT, [IMPLICIT]);
  assert.equal(back.transferSyntaxUid, IMPLICIT);
  assert.deepEqual(Buffer.from(back.bytes), Buffer.from(implicit));
});

test('a stray delimiter at top level, which the store accepts, is dropped rather than failing the transcode', async () => {
  const implicit = Buffer.from(encode(sampleElements(), { explicit: false, le: true }));
  const expected = await transcodeDataset(new Uint8Array(implicit), IMPLICIT, [EXPLICIT]);
  // (FFFE,E00D) and (FFFE,E0DD) of length 0 before the first element, as some converters write them.
  const stray = Buffer.from([0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0, 0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]);
  const withStray = await transcodeDataset(new Uint8Array(Buffer.concat([stray, implicit])), IMPLICIT, [EXPLICIT]);
  assert.deepEqual(Buffer.from(withStray.bytes), Buffer.from(expected.bytes));
});

test('a deflated result is always of even length: an odd deflate stream gets one trailing NUL (PS3.5 A.5)', async () => {
  let padded = 0;
  for (let extra = 0; extra < 24; extra++) {
    const elements = [...sampleElements(), { tag: 0x00100010, vr: 'PN', value: latin1(`Name^${'x'.repeat(extra * 7)}`.padEnd(extra * 7 + 6 + ((extra * 7) % 2), ' ')) }];
    const le = new Uint8Array(encode(elements.sort((a, b) => a.tag - b.tag), { explicit: true, le: true }));
    const deflated = await transcodeDataset(le, EXPLICIT, [DEFLATED]);
    assert.equal(deflated.bytes.length % 2, 0, `extra ${extra}`);
    if (deflateRawSync(le).length % 2 === 1) padded++;
    assert.deepEqual(Buffer.from((await transcodeDataset(deflated.bytes, DEFLATED, [EXPLICIT])).bytes), Buffer.from(le));
  }
  assert.ok(padded > 0, 'some of these deflate to an odd length');
});

test('explicit LE <-> BE <-> deflated <-> implicit round trips are exact', async () => {
  const le = new Uint8Array(encode(sampleElements(), { explicit: true, le: true }));
  const be = await transcodeDataset(le, EXPLICIT, [BIG]);
  // Independently encoded big-endian version must match byte for byte (binary values swapped, text not).
  assert.deepEqual(Buffer.from(be.bytes), encode(sampleElements(), { explicit: true, le: false }));
  assert.deepEqual(Buffer.from((await transcodeDataset(be.bytes, BIG, [EXPLICIT])).bytes), Buffer.from(le));

  const deflated = await transcodeDataset(le, EXPLICIT, [DEFLATED]);
  assert.deepEqual(inflateRawSync(deflated.bytes), Buffer.from(le));
  assert.deepEqual(Buffer.from((await transcodeDataset(deflated.bytes, DEFLATED, [EXPLICIT])).bytes), Buffer.from(le));

  // BE -> implicit -> BE (the VR comes back from the dictionary; private ones come back as UN).
  const implicit = await transcodeDataset(be.bytes, BIG, [IMPLICIT]);
  assert.deepEqual(Buffer.from(implicit.bytes), encode(sampleElements(), { explicit: false, le: true }));
  const be2 = await transcodeDataset(implicit.bytes, IMPLICIT, [BIG]);
  const els = parse(be2.bytes, { explicit: true, le: false }).els;
  assert.deepEqual(find(els, 0x00280106)!.value, swap(us(0xfff0), 2));
  assert.deepEqual(find(els, 0x00091001)!.value, latin1('secret ÿ value'));
  assert.equal(find(els, 0x00091001)!.vr, 'UN');
});

test('explicit UN of undefined length keeps implicit-encoded items; group lengths recomputed', async () => {
  const elements: TEl[] = [
    { tag: 0x00080000, vr: 'UL', value: ul(0) }, // wrong on purpose: recomputed for implicit <-> explicit
    { tag: 0x00080005, vr: 'CS', value: latin1('ISO_IR 100') },
    { tag: 0x00080060, vr: 'CS', value: latin1('CT') },
    { tag: 0x00110010, vr: 'LO', value: latin1('VENDOR') },
  ];
  const head8 = encode(elements, { explicit: true, le: true });
  // (0011,1001) UN, undefined length, one item with (0011,1002) in implicit VR LE.
  const inner = encode([{ tag: 0x00111002, vr: 'LO', value: latin1('x') }], { explicit: false, le: true });
  const un = Buffer.concat([
    head(0x00111001, 'UN', 0xffffffff, { explicit: true, le: true }),
    head(0xfffee000, null, inner.length, { explicit: false, le: true }),
    inner,
    head(0xfffee0dd, null, 0, { explicit: false, le: true }),
  ]);
  const ds = new Uint8Array(Buffer.concat([head8, un]));
  const implicit = await transcodeDataset(ds, EXPLICIT, [IMPLICIT]);
  const ie = parse(implicit.bytes, { explicit: false, le: true }).els;
  assert.equal(Buffer.from(find(ie, 0x00080000)!.value!).readUInt32LE(), 8 + 10 + 8 + 2);
  assert.equal(find(ie, 0x00111001)!.items![0]![0]!.tag, 0x00111002);

  const be = await transcodeDataset(ds, EXPLICIT, [BIG]);
  const bee = parse(be.bytes, { explicit: true, le: false }).els;
  assert.equal(find(bee, 0x00111001)!.vr, 'UN');
  assert.deepEqual(find(bee, 0x00111001)!.items![0]![0]!.value, latin1('x'));
  assert.deepEqual(Buffer.from((await transcodeDataset(be.bytes, BIG, [EXPLICIT])).bytes), Buffer.from(ds));
});

test('bad input throws TranscodeError, never anything else', async () => {
  const good = encode(sampleElements(), { explicit: true, le: true });
  const cases: [Uint8Array, string][] = [
    [new Uint8Array(good.subarray(0, good.length - 3)), EXPLICIT],
    [new Uint8Array([1, 2, 3]), IMPLICIT],
    [new Uint8Array(good), BIG],
    [new Uint8Array([0xde, 0xad, 0xbe, 0xef]), DEFLATED],
    [new Uint8Array(Buffer.from('0800050043530a00', 'hex')), EXPLICIT],
  ];
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = 0; i < 200; i++) {
    const b = new Uint8Array(good);
    for (let k = 0; k < 4; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
    cases.push([b, i % 2 ? EXPLICIT : IMPLICIT]);
  }
  for (const [bytes, ts] of cases) {
    try {
      await transcodeDataset(bytes, ts, ts === EXPLICIT ? [IMPLICIT] : [EXPLICIT]);
    } catch (err) {
      assertTranscodeError(err, 'ERR_TRANSCODE_FAILED');
    }
  }
  await assert.rejects(transcodeDataset(new Uint8Array(good.subarray(0, 40)), EXPLICIT, [IMPLICIT]), (e) =>
    assertTranscodeError(e, 'ERR_TRANSCODE_FAILED'),
  );
});

// ---------------------------------------------------------------------------------------------------
// Compressed sources built in the test with the dcmjs-codecs encoders.

const { NativeCodecs, Context } = dcmjsCodecs;

async function codecs(): Promise<void> {
  if (!NativeCodecs.isInitialized()) {
    await NativeCodecs.initializeAsync({
      webAssemblyModulePathOrUrl: new URL('../../node_modules/dcmjs-codecs/build/dcmjs-native-codecs.wasm', import.meta.url).pathname,
    });
  }
}

function encapsulated(frames: Uint8Array[], bot: boolean, splitEachFrameInto = 1): Buffer {
  const e = { explicit: true, le: true };
  const items: Buffer[] = [];
  const offsets: number[] = [];
  let off = 0;
  for (const f of frames) {
    offsets.push(off);
    const step = Math.ceil(f.length / splitEachFrameInto / 2) * 2;
    for (let p = 0; p < f.length; p += step) {
      let piece = Buffer.from(f.subarray(p, p + step));
      if (piece.length % 2) piece = Buffer.concat([piece, Buffer.alloc(1)]);
      items.push(head(0xfffee000, null, piece.length, e), piece);
      off += 8 + piece.length;
    }
  }
  const botValue = bot ? Buffer.concat(offsets.map((o) => Buffer.from(ul(o)))) : Buffer.alloc(0);
  return Buffer.concat([
    head(0x7fe00010, 'OB', 0xffffffff, e),
    head(0xfffee000, null, botValue.length, e),
    botValue,
    ...items,
    head(0xfffee0dd, null, 0, e),
  ]);
}

interface ImageShape {
  rows: number;
  columns: number;
  bits: number;
  stored: number;
  spp: number;
  pi: string;
  signed?: number;
  frames?: number;
}

/** The Image Pixel module's elements (group 0028) of an image shaped so, in tag order. */
function imagePixelElements(image: ImageShape): TEl[] {
  return [
    { tag: 0x00280002, vr: 'US', value: us(image.spp) },
    { tag: 0x00280004, vr: 'CS', value: latin1(image.pi) },
    ...(image.spp > 1 ? [{ tag: 0x00280006, vr: 'US', value: us(0) }] : []),
    ...(image.frames !== undefined ? [{ tag: 0x00280008, vr: 'IS', value: latin1(String(image.frames)) }] : []),
    { tag: 0x00280010, vr: 'US', value: us(image.rows) },
    { tag: 0x00280011, vr: 'US', value: us(image.columns) },
    { tag: 0x00280100, vr: 'US', value: us(image.bits) },
    { tag: 0x00280101, vr: 'US', value: us(image.stored) },
    { tag: 0x00280102, vr: 'US', value: us(image.stored - 1) },
    { tag: 0x00280103, vr: 'US', value: us(image.signed ?? 0) },
  ];
}

function pixels(w: number, h: number, spp: number, bits: number, frame: number): Uint8Array {
  const px = new Uint8Array(w * h * spp * (bits / 8));
  for (let i = 0; i < px.length; i++) px[i] = bits === 16 && i % 2 ? (i + frame) & 0x0f : (i * 7 + frame * 31 + (i >> 5)) & 0xff;
  return px;
}

test('compressed -> uncompressed: RLE, JPEG lossless, JPEG-LS, J2K, HTJ2K, JPEG XL decode exactly, multi-frame', async () => {
  await codecs();
  const W = 33;
  const H = 17;
  const FRAMES = 3;
  const encoders: [string, (c: InstanceType<typeof Context>) => InstanceType<typeof Context>][] = [
    [RLE, (c) => NativeCodecs.encodeRle(c)],
    [JPEG_LOSSLESS, (c) => NativeCodecs.encodeJpeg(c, { lossy: false, predictor: 1, pointTransform: 0 })],
    [JPEG_LS, (c) => NativeCodecs.encodeJpegLs(c, { lossy: false })],
    [J2K, (c) => NativeCodecs.encodeJpeg2000(c, { lossy: false })],
    [HTJ2K, (c) => NativeCodecs.encodeHtJpeg2000(c, { lossy: false })],
    [JXL, (c) => NativeCodecs.encodeJpegXl(c, { lossy: false })],
  ];
  for (const [bits, spp, pi] of [[16, 1, 'MONOCHROME2'], [8, 3, 'RGB']] as const) {
    for (const [ts, enc] of encoders) {
      await codecs();
      const raw = Array.from({ length: FRAMES }, (_, f) => pixels(W, H, spp, bits, f));
      const compressed = raw.map((px) =>
        enc(
          new Context({ width: W, height: H, bitsAllocated: bits, bitsStored: bits === 16 ? 12 : 8, samplesPerPixel: spp,
            pixelRepresentation: 0, planarConfiguration: 0, photometricInterpretation: pi, decodedBuffer: px }),
        ).getEncodedBuffer()!,
      );
      const attrs: TEl[] = [
        { tag: 0x00080005, vr: 'CS', value: latin1('ISO_IR 100') },
        { tag: 0x00090010, vr: 'LO', value: latin1('ACME PRIVATE') },
        { tag: 0x00091001, vr: 'LO', value: latin1('kept ÿ') },
        { tag: 0x00100010, vr: 'PN', value: latin1(patientName) },
        { tag: 0x00280002, vr: 'US', value: us(spp) },
        { tag: 0x00280004, vr: 'CS', value: latin1(pi) },
        ...(spp > 1 ? [{ tag: 0x00280006, vr: 'US', value: us(0) }] : []),
        { tag: 0x00280008, vr: 'IS', value: latin1(String(FRAMES)) },
        { tag: 0x00280010, vr: 'US', value: us(H) },
        { tag: 0x00280011, vr: 'US', value: us(W) },
        { tag: 0x00280100, vr: 'US', value: us(bits) },
        { tag: 0x00280101, vr: 'US', value: us(bits === 16 ? 12 : 8) },
        { tag: 0x00280102, vr: 'US', value: us(bits === 16 ? 11 : 7) },
        { tag: 0x00280103, vr: 'US', value: us(0) },
      ];
      // With a Basic Offset Table and frames split over 2 fragments (not for RLE: one fragment per frame).
      const split = ts === RLE ? 1 : 2;
      for (const [bot, pieces] of [[true, split], [false, 1]] as const) {
        const ds = new Uint8Array(Buffer.concat([encode(attrs, { explicit: true, le: true }), encapsulated(compressed, bot, pieces)]));
        for (const target of [EXPLICIT, IMPLICIT, BIG]) {
          const r = await transcodeDataset(ds, ts, [target]);
          assert.equal(r.transferSyntaxUid, target);
          const enc = { explicit: target !== IMPLICIT, le: target !== BIG };
          const els = parse(r.bytes, enc).els;
          let px = find(els, 0x7fe00010)!.value!;
          if (target === BIG && bits === 16) px = swap(px, 2);
          const expected = Buffer.concat(raw.map((f) => Buffer.from(f)));
          assert.equal(px.length, expected.length + (expected.length % 2), `${ts} ${bits}-bit size`);
          assert.deepEqual(Buffer.from(px.subarray(0, expected.length)), expected, `${ts} ${bits}-bit pixels -> ${target}`);
          assert.deepEqual(find(els, 0x00091001)!.value, latin1('kept ÿ'));
          assert.deepEqual(find(els, 0x00100010)!.value, latin1(patientName));
          assert.equal(text(find(els, 0x00080005)!.value), 'ISO_IR 100');
          if (target !== IMPLICIT) assert.equal(find(els, 0x7fe00010)!.vr, bits === 8 ? 'OB' : 'OW');
        }
      }
    }
  }
});

test('a codestream whose own header declares another size than Rows x Columns is refused before it is decoded (hunt 89: 30000 x 30000 in a 128 x 128 CT took 7 GB, and went out with Success)', async () => {
  await codecs();
  const W = 33;
  const H = 17;
  const encoders: [string, string, (c: InstanceType<typeof Context>) => InstanceType<typeof Context>][] = [
    [JPEG_BASELINE, 'ffc0', (c) => NativeCodecs.encodeJpeg(c, { lossy: true, quality: 90 })],
    [JPEG_LOSSLESS, 'ffc3', (c) => NativeCodecs.encodeJpeg(c, { lossy: false, predictor: 1, pointTransform: 0 })],
    [JPEG_LS, 'fff7', (c) => NativeCodecs.encodeJpegLs(c, { lossy: false })],
    [J2K, 'ff51', (c) => NativeCodecs.encodeJpeg2000(c, { lossy: false })],
    [HTJ2K, 'ff51', (c) => NativeCodecs.encodeHtJpeg2000(c, { lossy: false })],
  ];
  const attrs = encode(
    [
      { tag: 0x00280002, vr: 'US', value: us(1) },
      { tag: 0x00280004, vr: 'CS', value: latin1('MONOCHROME2') },
      { tag: 0x00280010, vr: 'US', value: us(H) },
      { tag: 0x00280011, vr: 'US', value: us(W) },
      { tag: 0x00280100, vr: 'US', value: us(8) },
      { tag: 0x00280101, vr: 'US', value: us(8) },
      { tag: 0x00280102, vr: 'US', value: us(7) },
      { tag: 0x00280103, vr: 'US', value: us(0) },
    ],
    { explicit: true, le: true },
  );
  for (const [ts, marker, enc] of encoders) {
    await codecs();
    const frame = Buffer.from(
      enc(new Context({ width: W, height: H, bitsAllocated: 8, bitsStored: 8, samplesPerPixel: 1, pixelRepresentation: 0, planarConfiguration: 0,
        photometricInterpretation: 'MONOCHROME2', decodedBuffer: pixels(W, H, 1, 8, 0) })).getEncodedBuffer()!,
    );
    const at = frame.indexOf(Buffer.from(marker, 'hex'));
    assert.ok(at > 0, `${ts}: no ${marker} in the encoder's output`);
    const declaring = (columns: number, rows: number) => {
      const lying = Buffer.from(frame);
      // SOFn / SOF55: Lf, P, Y, X. SIZ: Lsiz, Rsiz, Xsiz, Ysiz (no image offset here).
      if (marker === 'ff51') {
        lying.writeUInt32BE(columns, at + 6);
        lying.writeUInt32BE(rows, at + 10);
      } else {
        lying.writeUInt16BE(rows, at + 5);
        lying.writeUInt16BE(columns, at + 7);
      }
      return lying;
    };
    assert.deepEqual(codestreamSize(frame), { columns: W, rows: H }, ts);
    // Read without decoding anything: 30000 x 30000 is 900 M samples a decoder would hold.
    assert.deepEqual(codestreamSize(declaring(30000, 30000)), { columns: 30000, rows: 30000 }, ts);
    // A wider image decodes to more bytes than Rows x Columns, of which the first ones went out as the image.
    for (const [columns, rows] of [[2 * W, H], [W, H + 3], [W - 1, H]]) {
      const ds = new Uint8Array(Buffer.concat([attrs, encapsulated([declaring(columns, rows)], false)]));
      await assert.rejects(transcodeDataset(ds, ts, [EXPLICIT]), (e) => {
        assertTranscodeError(e, 'ERR_TRANSCODE_FAILED');
        assert.match((e as Error).message, new RegExp(`declares ${columns} x ${rows} pixels, the data set ${W} x ${H}`), ts);
        return true;
      });
    }
    // The frame as encoded still decodes.
    const ok = await transcodeDataset(new Uint8Array(Buffer.concat([attrs, encapsulated([frame], false)])), ts, [EXPLICIT]);
    assert.equal(find(parse(ok.bytes, { explicit: true, le: true }).els, 0x7fe00010)!.value!.length, W * H + 1);
  }
  // JPEG XL's SizeHeader is bit-packed: frames encoded at other sizes (small and large forms, aspect ratios).
  for (const [columns, rows] of [[2 * W, H], [W, H], [64, 48], [40, 40], [300, 200], [W, 2 * H]]) {
    await codecs();
    const frame = Buffer.from(
      NativeCodecs.encodeJpegXl(new Context({ width: columns, height: rows, bitsAllocated: 8, bitsStored: 8, samplesPerPixel: 1, pixelRepresentation: 0, planarConfiguration: 0,
        photometricInterpretation: 'MONOCHROME2', decodedBuffer: pixels(columns, rows, 1, 8, 0) }), { lossy: false }).getEncodedBuffer()!,
    );
    assert.deepEqual(codestreamSize(frame), { columns, rows }, `JPEG XL ${columns} x ${rows}`);
    if (columns === W && rows === H) continue;
    const ds = new Uint8Array(Buffer.concat([attrs, encapsulated([frame], false)]));
    await assert.rejects(transcodeDataset(ds, JXL, [EXPLICIT]), (e) => {
      assert.match((e as Error).message, new RegExp(`declares ${columns} x ${rows} pixels, the data set ${W} x ${H}`));
      return true;
    });
  }
});

test('an encapsulated icon (Icon Image Sequence in the instance\'s syntax) is decoded too, not left encapsulated', async () => {
  await codecs();
  const imageAttrs = (w: number, h: number): TEl[] => imagePixelElements({ rows: h, columns: w, bits: 8, stored: 8, spp: 1, pi: 'MONOCHROME2' });
  const rle = (w: number, h: number, px: Uint8Array) =>
    NativeCodecs.encodeRle(
      new Context({ width: w, height: h, bitsAllocated: 8, bitsStored: 8, samplesPerPixel: 1, pixelRepresentation: 0,
        planarConfiguration: 0, photometricInterpretation: 'MONOCHROME2', decodedBuffer: px }),
    ).getEncodedBuffer()!;
  const image = pixels(32, 16, 1, 8, 0);
  const icon = pixels(8, 6, 1, 8, 5);
  const e = { explicit: true, le: true };
  // The icon item: its own Image Pixel attributes, then its encapsulated Pixel Data (undefined lengths).
  const itemBody = Buffer.concat([encode(imageAttrs(8, 6), e), encapsulated([rle(8, 6, icon)], false)]);
  const iconSequence = Buffer.concat([
    head(0x00880200, 'SQ', 0xffffffff, e),
    head(0xfffee000, null, 0xffffffff, e), itemBody, head(0xfffee00d, null, 0, e),
    head(0xfffee0dd, null, 0, e),
  ]);
  const ds = new Uint8Array(Buffer.concat([
    encode([{ tag: 0x00100010, vr: 'PN', value: latin1(patientName) }, ...imageAttrs(32, 16)], e),
    iconSequence,
    encapsulated([rle(32, 16, image)], true),
  ]));
  for (const target of [EXPLICIT, IMPLICIT]) {
    const r = await transcodeDataset(ds, RLE, [target]);
    const els = parse(r.bytes, { explicit: target === EXPLICIT, le: true }).els;
    assert.deepEqual(Buffer.from(find(els, 0x7fe00010)!.value!), Buffer.from(image), `image -> ${target}`);
    const iconItem = find(els, 0x00880200)!.items![0]!;
    assert.deepEqual(Buffer.from(find(iconItem, 0x7fe00010)!.value!), Buffer.from(icon), `icon -> ${target}`);
    assert.deepEqual(find(els, 0x00100010)!.value, latin1(patientName));
  }
});

test('native and decoded pixels compress losslessly into RLE, JPEG Lossless, JPEG-LS, J2K and HTJ2K (DCMTK decodes the same pixels)', async () => {
  await codecs();
  const W = 33;
  const H = 17;
  const FRAMES = 3;
  const dcmtkDecoder: Record<string, string | undefined> = { [RLE]: 'dcmdrle', [JPEG_LOSSLESS]: 'dcmdjpeg', [JPEG_LS]: 'dcmdjpls' };
  const images = [
    { name: 'mono16 12 stored', bits: 16, stored: 12, spp: 1, pi: 'MONOCHROME2', signed: 0 },
    { name: 'mono16 signed', bits: 16, stored: 16, spp: 1, pi: 'MONOCHROME2', signed: 1 },
    { name: 'mono8', bits: 8, stored: 8, spp: 1, pi: 'MONOCHROME1', signed: 0 },
    { name: 'rgb8', bits: 8, stored: 8, spp: 3, pi: 'RGB', signed: 0 },
  ];
  const tmp = mkdtempSync(join(tmpdir(), 'transcode-encode-'));
  try {
    for (const image of images) {
      const raw = Array.from({ length: FRAMES }, (_, f) => pixels(W, H, image.spp, image.bits, f));
      if (image.stored === 12) for (const frame of raw) for (let i = 1; i < frame.length; i += 2) frame[i]! &= 0x0f;
      const all = Buffer.concat(raw.map((f) => Buffer.from(f)));
      const elements: TEl[] = [
        { tag: 0x00080016, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.7') },
        { tag: 0x00080018, vr: 'UI', value: uid('1.2.3.4.5.7') },
        { tag: 0x00090010, vr: 'LO', value: latin1('ACME PRIVATE') },
        { tag: 0x00091001, vr: 'LO', value: latin1('kept ÿ') },
        ...imagePixelElements({ ...image, rows: H, columns: W, frames: FRAMES }),
        { tag: 0x7fe00010, vr: image.bits === 8 ? 'OB' : 'OW', value: new Uint8Array(all) },
      ];
      const explicit = new Uint8Array(encode(elements, { explicit: true, le: true }));
      const sources: Array<[string, Uint8Array]> = [
        [EXPLICIT, explicit],
        [IMPLICIT, new Uint8Array(encode(elements, { explicit: false, le: true }))],
        [BIG, new Uint8Array(encode(elements, { explicit: true, le: false }))],
        [DEFLATED, new Uint8Array(deflateRawSync(explicit))],
      ];
      for (const target of [RLE, JPEG_LOSSLESS, JPEG_LS, J2K, HTJ2K]) {
        const what = `${image.name} -> ${target}`;
        if (image.spp === 3 && (target === J2K || target === HTJ2K)) {
          await assert.rejects(transcodeDataset(explicit, EXPLICIT, [target]), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_UNSUPPORTED'), what);
          continue;
        }
        for (const [from, ds] of sources) {
          const r = await transcodeDataset(ds, from, [target]);
          assert.equal(r.transferSyntaxUid, target, `${what} from ${from}`);
          const back = await transcodeDataset(r.bytes, target, [EXPLICIT]);
          const els = parse(back.bytes, { explicit: true, le: true }).els;
          assert.deepEqual(Buffer.from(find(els, 0x7fe00010)!.value!.subarray(0, all.length)), all, `${what} from ${from}: decodes to the source pixels`);
          assert.deepEqual(find(els, 0x00091001)!.value, latin1('kept ÿ'), `${what} from ${from}: private value kept`);
          const tool = dcmtkDecoder[target];
          if (from !== EXPLICIT || !tool || !hasTool(tool)) continue;
          const file = join(tmp, `${image.name.replace(/ /g, '-')}-${target}.dcm`);
          writeFileSync(file, part10(r.bytes, target, '1.2.840.10008.5.1.4.1.1.7', '1.2.3.4.5.7'));
          execFileSync(tool, [file, `${file}.dec`], { stdio: 'ignore' });
          const decoded = find(parse(readPart10(`${file}.dec`).dataset, { explicit: true, le: true }).els, 0x7fe00010)!.value!;
          assert.deepEqual(Buffer.from(decoded.subarray(0, all.length)), all, `${what}: ${tool} decodes the source pixels (frames and offset table read right)`);
        }
      }
      // A compressed source goes through its decoder first.
      const rle = await transcodeDataset(explicit, EXPLICIT, [RLE]);
      const viaRle = await transcodeDataset(rle.bytes, RLE, [JPEG_LOSSLESS]);
      const back = await transcodeDataset(viaRle.bytes, JPEG_LOSSLESS, [EXPLICIT]);
      assert.deepEqual(Buffer.from(find(parse(back.bytes, { explicit: true, le: true }).els, 0x7fe00010)!.value!.subarray(0, all.length)), all, `${image.name}: RLE -> JPEG Lossless`);
    }
    // Bits above High Bit in use, which JPEG 2000 does not keep: the frame would not come back as it was,
    // so nothing is sent (JPEG Lossless keeps them, and passes the same check).
    const dirty = [
      ...imagePixelElements({ rows: 2, columns: 2, bits: 16, stored: 12, spp: 1, pi: 'MONOCHROME2' }),
      { tag: 0x7fe00010, vr: 'OW', value: us(1, 0xf002, 3, 4) },
    ];
    await assert.rejects(transcodeDataset(new Uint8Array(encode(dirty, { explicit: true, le: true })), EXPLICIT, [J2K]), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_FAILED'));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a data set without Pixel Data (a report) goes into a compressed syntax as explicit VR LE, every element kept', async () => {
  const report = sampleElements().filter((e) => e.tag !== 0x7fe00010);
  const implicit = new Uint8Array(encode(report, { explicit: false, le: true }));
  const r = await transcodeDataset(implicit, IMPLICIT, [JPEG_LOSSLESS]);
  assert.equal(r.transferSyntaxUid, JPEG_LOSSLESS);
  assert.deepEqual(Buffer.from(r.bytes), Buffer.from((await transcodeDataset(implicit, IMPLICIT, [EXPLICIT])).bytes));
});

test('colour by plane (Planar Configuration 1) is interleaved before it is compressed, and says so', async () => {
  await codecs();
  const W = 5;
  const H = 3;
  const interleavedFrames = [pixels(W, H, 3, 8, 0), pixels(W, H, 3, 8, 1)];
  const byPlane = interleavedFrames.map((f) => {
    const out = new Uint8Array(f.length);
    for (let p = 0; p < W * H; p++) for (let c = 0; c < 3; c++) out[c * W * H + p] = f[p * 3 + c]!;
    return out;
  });
  const elements = [
    ...imagePixelElements({ rows: H, columns: W, bits: 8, stored: 8, spp: 3, pi: 'RGB', frames: 2 }).map((e) => (e.tag === 0x00280006 ? { ...e, value: us(1) } : e)),
    { tag: 0x7fe00010, vr: 'OB', value: new Uint8Array(Buffer.concat([...byPlane, Buffer.alloc(1)])) },
  ];
  const ds = new Uint8Array(encode(elements, { explicit: true, le: true }));
  for (const target of [RLE, JPEG_LOSSLESS, JPEG_LS]) {
    const compressed = await transcodeDataset(ds, EXPLICIT, [target]);
    const back = parse((await transcodeDataset(compressed.bytes, target, [EXPLICIT])).bytes, { explicit: true, le: true }).els;
    assert.deepEqual(Buffer.from(find(back, 0x7fe00010)!.value!.subarray(0, 2 * W * H * 3)), Buffer.concat(interleavedFrames.map((f) => Buffer.from(f))), target);
    assert.equal(Buffer.from(find(back, 0x00280006)!.value!).readUInt16LE(), 0, `${target}: Planar Configuration now 0`);
  }
});

test('a multi-frame instance is decoded and compressed a frame at a time, giving the event loop a turn between frames', async () => {
  await codecs();
  const FRAMES = 24;
  const image = { rows: 64, columns: 64, bits: 16, stored: 12, spp: 1, pi: 'MONOCHROME2', frames: FRAMES };
  const raw = new Uint8Array(64 * 64 * 2 * FRAMES);
  for (let i = 0; i < raw.length; i += 2) raw[i] = i & 0xff;
  const ds = new Uint8Array(encode([...imagePixelElements(image), { tag: 0x7fe00010, vr: 'OW', value: raw }], { explicit: true, le: true }));
  // Turns of the event loop while one transcode runs (each setImmediate callback is one).
  const turnsDuring = async (work: () => Promise<unknown>) => {
    let turns = 0;
    let running = true;
    const spin = () => {
      if (!running) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    await work();
    running = false;
    return turns;
  };
  let compressed: Uint8Array | undefined;
  const encodeTurns = await turnsDuring(async () => (compressed = (await transcodeDataset(ds, EXPLICIT, [RLE])).bytes));
  const decodeTurns = await turnsDuring(() => transcodeDataset(compressed!, RLE, [EXPLICIT]));
  assert.ok(encodeTurns >= FRAMES - 1, `compressing: ${encodeTurns} turns for ${FRAMES} frames`);
  assert.ok(decodeTurns >= FRAMES - 1, `decoding: ${decodeTurns} turns for ${FRAMES} frames`);
});

test('undecodable compressed data throws ERR_TRANSCODE_FAILED and the codec recovers', async () => {
  const attrs = encode(
    [
      { tag: 0x00280002, vr: 'US', value: us(1) },
      { tag: 0x00280004, vr: 'CS', value: latin1('MONOCHROME2') },
      { tag: 0x00280010, vr: 'US', value: us(16) },
      { tag: 0x00280011, vr: 'US', value: us(16) },
      { tag: 0x00280100, vr: 'US', value: us(8) },
      { tag: 0x00280101, vr: 'US', value: us(8) },
      { tag: 0x00280102, vr: 'US', value: us(7) },
      { tag: 0x00280103, vr: 'US', value: us(0) },
    ],
    { explicit: true, le: true },
  );
  const junk = [new Uint8Array(64).fill(0x55), new Uint8Array([0xff, 0xd8, 0xff, 0xc0, 0, 0x11, 8, 0, 16, 0, 16, 1])];
  for (const ts of [JPEG_BASELINE, JPEG_LOSSLESS, JPEG_LS, J2K, RLE, HTJ2K]) {
    for (const j of junk) {
      const ds = new Uint8Array(Buffer.concat([attrs, encapsulated([j], false)]));
      await assert.rejects(transcodeDataset(ds, ts, [EXPLICIT]), (e) => assertTranscodeError(e, 'ERR_TRANSCODE_FAILED'));
    }
  }
  // Still works afterwards (the module was dropped and is re-created lazily).
  await codecs();
  const px = pixels(16, 16, 1, 8, 0);
  const rle = NativeCodecs.encodeRle(
    new Context({ width: 16, height: 16, bitsAllocated: 8, bitsStored: 8, samplesPerPixel: 1, pixelRepresentation: 0,
      planarConfiguration: 0, photometricInterpretation: 'MONOCHROME2', decodedBuffer: px }),
  ).getEncodedBuffer()!;
  const ok = await transcodeDataset(new Uint8Array(Buffer.concat([attrs, encapsulated([rle], false)])), RLE, [EXPLICIT]);
  assert.deepEqual(find(parse(ok.bytes, { explicit: true, le: true }).els, 0x7fe00010)!.value, px);
});

// ---------------------------------------------------------------------------------------------------
// Real corpus (read-only).

// Where every corpus test reads it (../shared/dicom-corpus beside the repository, or PACS_MESH_CORPUS_DIR): a path
// of one machine here skipped the test on a clean clone's CI and ignored the variable (hunt 162).
const CORPUS = join(corpusDirectory, 'public');

function readPart10(path: string): { meta: Buffer; dataset: Uint8Array; ts: string } {
  const buf = readFileSync(path);
  assert.equal(buf.toString('latin1', 128, 132), 'DICM');
  const groupLength = buf.readUInt32LE(132 + 8); // (0002,0000) UL, explicit VR LE
  const metaEnd = 132 + 12 + groupLength;
  const meta = parse(new Uint8Array(buf.subarray(132, metaEnd)), { explicit: true, le: true }).els;
  const ts = text(find(meta, 0x00020010)!.value)!.replace(/[\0 ]+$/, '');
  return { meta: buf.subarray(0, metaEnd), dataset: new Uint8Array(buf.subarray(metaEnd)), ts };
}

function part10(dataset: Uint8Array, ts: string, sopClass: string, sopInstance: string): Buffer {
  const meta = encode(
    [
      { tag: 0x00020001, vr: 'OB', value: new Uint8Array([0, 1]) },
      { tag: 0x00020002, vr: 'UI', value: uid(sopClass) },
      { tag: 0x00020003, vr: 'UI', value: uid(sopInstance) },
      { tag: 0x00020010, vr: 'UI', value: uid(ts) },
      { tag: 0x00020012, vr: 'UI', value: uid('1.2.826.0.1.3680043.9.9999') },
    ],
    { explicit: true, le: true },
  );
  const gl = encode([{ tag: 0x00020000, vr: 'UL', value: ul(meta.length) }], { explicit: true, le: true });
  return Buffer.concat([Buffer.alloc(128), Buffer.from('DICM'), gl, meta, Buffer.from(dataset)]);
}

/** True when a DCMTK tool is on PATH (the tests that need one skip their DCMTK checks without it). */
function hasTool(tool: string): boolean {
  try {
    execFileSync(tool, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const hasDcmdump = (): boolean => hasTool('dcmdump');

test('JPEG extended (.51) and lossless with any predictor (.57) decode to the pixels dcmdjpeg gives', async (t) => {
  if (!hasTool('dcmcjpeg') || !hasTool('dcmdjpeg')) {
    t.skip('DCMTK (dcmcjpeg, dcmdjpeg) is not installed');
    return;
  }
  const tmp = mkdtempSync(join(tmpdir(), 'transcode-jpeg-'));
  try {
    const images = [
      { name: 'mono12', bits: 16, stored: 12, spp: 1, pi: 'MONOCHROME2' },
      { name: 'rgb8', bits: 8, stored: 8, spp: 3, pi: 'RGB' },
    ];
    let checked = 0;
    for (const image of images) {
      const W = 24;
      const H = 10;
      const raw = pixels(W, H, image.spp, image.bits, 3);
      if (image.bits === 16) for (let i = 1; i < raw.length; i += 2) raw[i]! &= 0x0f; // 12 bits stored
      const ds = encode([
        { tag: 0x00080016, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.7') },
        { tag: 0x00080018, vr: 'UI', value: uid('1.2.3.4.5.6') },
        ...imagePixelElements({ ...image, rows: H, columns: W }),
        { tag: 0x7fe00010, vr: image.bits === 8 ? 'OB' : 'OW', value: raw },
      ], { explicit: true, le: true });
      const source = join(tmp, `${image.name}.dcm`);
      writeFileSync(source, part10(ds, EXPLICIT, '1.2.840.10008.5.1.4.1.1.7', '1.2.3.4.5.6'));
      for (const [label, options] of [['extended', ['+ee']], ['lossless sv1', ['+el', '+sv', '1']], ['lossless sv4', ['+el', '+sv', '4']], ['lossless sv7', ['+el', '+sv', '7']]] as const) {
        const compressed = join(tmp, `${image.name}-${label.replace(' ', '-')}.dcm`);
        execFileSync('dcmcjpeg', [...options, source, compressed], { stdio: 'ignore' });
        const { dataset, ts } = readPart10(compressed);
        assert.equal(ts, label === 'extended' ? '1.2.840.10008.1.2.4.51' : '1.2.840.10008.1.2.4.57', `${image.name} ${label}`);
        const reference = `${compressed}.ref.dcm`;
        execFileSync('dcmdjpeg', [compressed, reference], { stdio: 'ignore' });
        const refPx = find(parse(readPart10(reference).dataset, { explicit: true, le: true }).els, 0x7fe00010)!.value!;
        const r = await transcodeDataset(dataset, ts, [EXPLICIT]);
        const els = parse(r.bytes, { explicit: true, le: true }).els;
        assert.deepEqual(Buffer.from(find(els, 0x7fe00010)!.value!), Buffer.from(refPx), `${image.name} ${label}: same pixels as dcmdjpeg`);
        if (image.spp === 3) assert.equal(text(find(els, 0x00280004)!.value)?.trim(), 'RGB', `${image.name} ${label}: photometric`);
        if (label !== 'extended') assert.deepEqual(Buffer.from(find(els, 0x7fe00010)!.value!), Buffer.from(raw), `${image.name} ${label}: lossless`);
        checked++;
      }
    }
    assert.equal(checked, 8);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a JPEG baseline image decoded says it was lossy compressed: Lossy Image Compression 01 added where the source left it out, as dcmdjpeg does (hunt 165)', async (t) => {
  const name = 'pydicom__SC_jpeg_no_color_transform.dcm';
  if (!existsSync(join(CORPUS, name))) {
    t.skip(`corpus file ${name} is missing`);
    return;
  }
  const { dataset, ts } = readPart10(join(CORPUS, name));
  assert.equal(ts, JPEG_BASELINE);
  // The same file without its (0028,2110) CS "01" (8 + 2 bytes, explicit VR LE), as some modalities write it.
  const at = Buffer.from(dataset).indexOf(Buffer.from([0x28, 0x00, 0x10, 0x21, 0x43, 0x53, 0x02, 0x00]));
  assert.ok(at > 0, 'the file says 01');
  const unmarked = Buffer.concat([dataset.subarray(0, at), dataset.subarray(at + 10)]);
  assert.equal(find(parse(unmarked, { explicit: true, le: true }).els, 0x00282110), undefined);
  for (const target of [EXPLICIT, IMPLICIT, JPEG_LOSSLESS]) {
    const r = await transcodeDataset(unmarked, ts, [target]);
    assert.equal(r.transferSyntaxUid, target);
    const lossy = find(parse(r.bytes, { explicit: target !== IMPLICIT, le: true }).els, 0x00282110);
    assert.equal(text(lossy?.value)?.trim(), '01', `decoded into ${target}: the copy still says it was lossy compressed`);
  }
  // Left as it is when the source says so (the corpus test checks every other element's bytes).
  const kept = await transcodeDataset(dataset, ts, [EXPLICIT]);
  assert.equal(text(find(parse(kept.bytes, { explicit: true, le: true }).els, 0x00282110)?.value)?.trim(), '01');
});

test('corpus: JPEG baseline, RLE and JPEG 2000 files decode to explicit VR LE with full-size pixel data', { skip: corpusSkip }, async (t) => {
  const dump = hasDcmdump();
  const tmp = mkdtempSync(join(tmpdir(), 'transcode-test-'));
  try {
    let n = 0;
    for (const name of readdirSync(CORPUS).filter((f) => f.endsWith('.dcm')).sort()) {
      const { dataset, ts } = readPart10(join(CORPUS, name));
      if (![JPEG_BASELINE, RLE, J2K].includes(ts)) continue;
      n++;
      const source = parse(dataset, { explicit: true, le: true }).els;
      const r = await transcodeDataset(dataset, ts, [JPEG_LS, EXPLICIT]); // JPEG-LS: not reachable, skipped
      assert.equal(r.transferSyntaxUid, EXPLICIT, name);
      const els = parse(r.bytes, { explicit: true, le: true }).els;
      const num = (tag: number) => Buffer.from(find(els, tag)!.value!).readUInt16LE();
      const frames = Number.parseInt(text(find(els, 0x00280008)?.value) ?? '1', 10) || 1;
      const size = num(0x00280010) * num(0x00280011) * num(0x00280002) * (num(0x00280100) / 8) * frames;
      const px = find(els, 0x7fe00010)!;
      assert.equal(px.value!.length, size + (size % 2), `${name}: pixel data size`);
      assert.equal(px.vr, num(0x00280100) === 8 ? 'OB' : 'OW');
      const group7fe0 = find(els, 0x7fe00000)?.value;
      if (group7fe0) assert.equal(Buffer.from(group7fe0).readUInt32LE(), 12 + px.value!.length, `${name}: (7FE0,0000) is the native Pixel Data's size`);
      // Every non-pixel element is still there with the same bytes (photometric may change to RGB).
      for (const el of source) {
        // Group lengths of the groups rewritten (0028 when the photometric changes, 7FE0) are recomputed.
        if ([0x7fe00010, 0x7fe00001, 0x7fe00002, 0x00280004, 0x00280006, 0x00280000, 0x7fe00000].includes(el.tag)) continue;
        const out = find(els, el.tag);
        assert.ok(out, `${name}: element ${el.tag.toString(16)} kept`);
        if (el.value) assert.deepEqual(out.value, el.value, `${name}: ${el.tag.toString(16)} bytes`);
      }
      if (dump) {
        const sop = (tag: number) => text(find(els, tag)?.value)?.replace(/\0+$/, '') ?? '1.2.3';
        const file = join(tmp, `${name}.dcm`);
        writeFileSync(file, part10(r.bytes, EXPLICIT, sop(0x00080016), sop(0x00080018)));
        const out = execFileSync('dcmdump', ['-q', '+P', '7fe0,0010', '+P', '0028,0004', file], { encoding: 'utf8' });
        assert.match(out, /\(7fe0,0010\) O[BW] /, `${name}: dcmdump sees native pixel data`);
        assert.match(out, new RegExp(`# *${size + (size % 2)}, 1 PixelData`), `${name}: dcmdump pixel length`);
        execFileSync('dcmdump', ['-q', '-E', file], { stdio: 'ignore' }); // throws on a parse error
      }
      // Cross-check the decoded pixels against DCMTK where it has a decoder (no JPEG 2000 in DCMTK).
      const tool = ts === RLE ? 'dcmdrle' : ts === JPEG_BASELINE ? 'dcmdjpeg' : undefined;
      if (dump && tool) {
        const ref = join(tmp, `${name}.ref.dcm`);
        execFileSync(tool, [join(CORPUS, name), ref], { stdio: 'ignore' });
        const { dataset: refDs } = readPart10(ref);
        const refPx = find(parse(refDs, { explicit: true, le: true }).els, 0x7fe00010)!.value!;
        assert.deepEqual(Buffer.from(px.value!), Buffer.from(refPx), `${name}: same pixels as ${tool}`);
      }
    }
    assert.ok(n >= 3, 'corpus holds JPEG baseline, RLE and JPEG 2000 files');
    if (!dump) t.diagnostic('dcmdump not installed: Part 10 check skipped');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('corpus: uncompressed files survive implicit <-> explicit <-> BE <-> deflated', { skip: corpusSkip }, async (t) => {
  const dump = hasDcmdump();
  const tmp = mkdtempSync(join(tmpdir(), 'transcode-test-'));
  try {
    for (const name of readdirSync(CORPUS).filter((f) => f.endsWith('.dcm')).sort()) {
      const { dataset, ts } = readPart10(join(CORPUS, name));
      if (ts !== IMPLICIT && ts !== EXPLICIT) continue;
      for (const via of UNCOMPRESSED.filter((x) => x !== ts)) {
        const there = await transcodeDataset(dataset, ts, [via]);
        const back = await transcodeDataset(there.bytes, via, [ts]);
        if (ts === EXPLICIT && via !== IMPLICIT) {
          // Between explicit syntaxes nothing changes but the byte order: exact.
          assert.deepEqual(Buffer.from(back.bytes), Buffer.from(dataset), `${name} via ${via}`);
        } else {
          // Through implicit VR: same elements in the same order, same value bytes. Exceptions: VRs (lost in
          // implicit VR) and group lengths, recomputed (some corpus files carry wrong ones, e.g. the
          // CT-MONO2-16-ankle (0008,0000) says 414 where the group holds 402 bytes).
          const enc: Enc = { explicit: ts === EXPLICIT, le: true };
          const a: Parsed[] = parse(dataset, enc).els;
          const b: Parsed[] = parse(back.bytes, enc).els;
          assert.deepEqual(b.map((e) => e.tag), a.map((e) => e.tag), name);
          for (let i = 0; i < a.length; i++) {
            if (a[i]!.value && (a[i]!.tag & 0xffff) !== 0) assert.deepEqual(b[i]!.value, a[i]!.value, `${name} ${a[i]!.tag.toString(16)}`);
          }
        }
        if (dump && via !== DEFLATED) {
          const file = join(tmp, `${name}.${via}.dcm`);
          writeFileSync(file, part10(there.bytes, via, '1.2.840.10008.5.1.4.1.1.7', '1.2.3'));
          execFileSync('dcmdump', ['-q', '-E', file], { stdio: 'ignore' });
        }
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('group lengths (gggg,0000) of groups whose elements the transcoder rewrites are recomputed (PS3.5 7.2)', async () => {
  await codecs();
  const W = 5;
  const H = 3;
  const e = { explicit: true, le: true };
  const planes = pixels(W, H, 3, 8, 0); // R..., G..., B... (Planar Configuration 1)
  const image = imagePixelElements({ rows: H, columns: W, bits: 8, stored: 8, spp: 3, pi: 'RGB' }).map((el) =>
    el.tag === 0x00280006 ? { ...el, value: us(1) } : el,
  );
  const withGroupLength = (group: number, body: Buffer) => Buffer.concat([encode([{ tag: (group << 16) >>> 0, vr: 'UL', value: ul(body.length) }], e), body]);
  const top = encode([{ tag: 0x00080016, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.7') }, { tag: 0x00080018, vr: 'UI', value: uid('1.2.3.4.5.8') }], e);
  const group28 = withGroupLength(0x0028, encode(image, e));
  const nativePixels = withGroupLength(0x7fe0, encode([{ tag: 0x7fe00010, vr: 'OB', value: planes }], e));
  const native = new Uint8Array(Buffer.concat([top, group28, nativePixels]));

  /** The (gggg,0000) value at the group's start and the group's real encoded size after it (groups 0028 and 7FE0). */
  const groupLengths = (bytes: Uint8Array, explicit: boolean) => {
    const b = Buffer.from(bytes);
    const at = (group: number) => {
      const tag = Buffer.alloc(4);
      tag.writeUInt16LE(group, 0);
      const pattern = explicit ? Buffer.concat([tag, Buffer.from('UL'), Buffer.from([4, 0])]) : Buffer.concat([tag, ul(4)]);
      const pos = b.indexOf(pattern);
      assert.ok(pos >= 0, `(${group.toString(16)},0000) kept`);
      return { value: b.readUInt32LE(pos + 8), after: pos + 12 }; // both headers are 8 bytes, then the 4-byte value
    };
    const g28 = at(0x0028);
    const g7fe0 = at(0x7fe0);
    return { '0028': [g28.value, g7fe0.after - 12 - g28.after], '7fe0': [g7fe0.value, b.length - g7fe0.after] };
  };
  // Native -> compressed (Pixel Data encapsulated, Planar Configuration set to 0).
  for (const target of [RLE, JPEG_LOSSLESS, JPEG_LS]) {
    const r = await transcodeDataset(native, EXPLICIT, [target]);
    const lengths = groupLengths(r.bytes, true);
    assert.equal(lengths['7fe0'][0], lengths['7fe0'][1], `${target}: (7FE0,0000) is the encapsulated Pixel Data's size`);
    assert.equal(lengths['0028'][0], lengths['0028'][1], `${target}: (0028,0000)`);
    // ... and back: compressed -> native, in explicit and implicit VR.
    for (const back of [EXPLICIT, IMPLICIT]) {
      const n = await transcodeDataset(r.bytes, target, [back]);
      const l = groupLengths(n.bytes, back !== IMPLICIT);
      assert.equal(l['7fe0'][0], l['7fe0'][1], `${target} -> ${back}: (7FE0,0000) is the native Pixel Data's size`);
      assert.equal(l['0028'][0], l['0028'][1], `${target} -> ${back}: (0028,0000)`);
    }
  }
  // Untouched groups keep their value byte for byte (explicit LE <-> BE round trip stays exact).
  const be = await transcodeDataset(native, EXPLICIT, [BIG]);
  assert.deepEqual(Buffer.from((await transcodeDataset(be.bytes, BIG, [EXPLICIT])).bytes), Buffer.from(native));
});

test('big endian 8-bit Pixel Data in OW (byte-swapped per word) is un-swapped before it is compressed', async () => {
  await codecs();
  // 3x3 RGB, 8 bits: 27 samples, an odd length padded to 28 (the last word holds one sample and the pad).
  const W = 3;
  const H = 3;
  const samples = pixels(W, H, 3, 8, 2);
  const padded = Buffer.concat([Buffer.from(samples), Buffer.alloc(1)]);
  const elements: TEl[] = [
    { tag: 0x00080016, vr: 'UI', value: uid('1.2.840.10008.5.1.4.1.1.7') },
    { tag: 0x00080018, vr: 'UI', value: uid('1.2.3.4.5.9') },
    ...imagePixelElements({ rows: H, columns: W, bits: 8, stored: 8, spp: 3, pi: 'RGB' }),
    // encode() swaps OW per 16-bit word for big endian, as PS3.5 has it.
    { tag: 0x7fe00010, vr: 'OW', value: new Uint8Array(padded) },
  ];
  const big = new Uint8Array(encode(elements, { explicit: true, le: false }));
  // The uncompressed path un-swaps it (the reference for what the samples are).
  const le = await transcodeDataset(big, BIG, [EXPLICIT]);
  assert.deepEqual(Buffer.from(find(parse(le.bytes, { explicit: true, le: true }).els, 0x7fe00010)!.value!.subarray(0, samples.length)), Buffer.from(samples));
  for (const target of [RLE, JPEG_LOSSLESS, JPEG_LS]) {
    const r = await transcodeDataset(big, BIG, [target]);
    const back = await transcodeDataset(r.bytes, target, [EXPLICIT]);
    const px = find(parse(back.bytes, { explicit: true, le: true }).els, 0x7fe00010)!.value!;
    assert.deepEqual(Buffer.from(px.subarray(0, samples.length)), Buffer.from(samples), `big endian OW 8-bit -> ${target}: the source samples`);
  }
});
