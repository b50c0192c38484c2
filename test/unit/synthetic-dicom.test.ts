import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { getFreePort, hasDcmtk, peakRssBytes, runTool, startRssSampler, startStorescp } from '../support/dicom-tools.ts';
import {
  IMPLEMENTATION_CLASS_UID,
  SopClass,
  TransferSyntax,
  makeInstance,
  makeInstanceWithInfo,
  makeSeries,
  newUid,
  uidFromSeed,
  writeSeriesToDir,
  type InstanceOptions,
  type SyntheticTransferSyntax,
} from '../support/synthetic-dicom.ts';

const dcmdumpMissing = hasDcmtk(['dcmdump']) ? false : 'dcmdump (DCMTK) is not installed: apt-get install dcmtk';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'synthetic-dicom-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Writes the bytes, runs dcmdump (not quiet, so warnings show), asserts a clean parse, returns stdout. */
async function dump(name: string, bytes: Uint8Array, extraArgs: string[] = []): Promise<string> {
  const file = join(dir, `${name}.dcm`);
  await writeFile(file, bytes);
  const r = await runTool('dcmdump', [...extraArgs, file], { timeoutMs: 20_000 });
  assert.equal(r.code, 0, `dcmdump failed on ${name}: ${r.stderr}`);
  assert.equal(r.stderr.trim(), '', `dcmdump printed warnings/errors on ${name}: ${r.stderr}`);
  assert.doesNotMatch(r.stdout, /^[WE]: /m, `dcmdump reported problems on ${name}`);
  return r.stdout;
}

/** The value of an element in dcmdump output: "[text]" or "=Name" or raw. */
function field(out: string, tag: string): string | undefined {
  const line = out.split('\n').find((l) => l.startsWith(`(${tag})`));
  if (line === undefined) return undefined;
  const m = /^\([0-9a-f,]+\) \S\S (.*?)\s+#\s*\d+,/.exec(line);
  const v = m?.[1] ?? '';
  return v.startsWith('[') && v.endsWith(']') ? v.slice(1, -1) : v;
}

const variants: Array<[string, SyntheticTransferSyntax, string]> = [
  ['implicit-le', TransferSyntax.ImplicitVrLittleEndian, 'LittleEndianImplicit'],
  ['explicit-le', TransferSyntax.ExplicitVrLittleEndian, 'LittleEndianExplicit'],
  ['explicit-be', TransferSyntax.ExplicitVrBigEndian, 'BigEndianExplicit'],
  ['deflated', TransferSyntax.DeflatedExplicitVrLittleEndian, 'DeflatedLittleEndianExplicit'],
];

const base: InstanceOptions = {
  patient: { id: 'PID-42', name: 'DOE^JOHN', birthDate: '19800215', sex: 'M' },
  study: { uid: uidFromSeed('study'), date: '20230405', time: '101530', accession: 'ACC9', description: 'CHEST CT', referringPhysician: 'HOUSE^GREGORY' },
  series: { uid: uidFromSeed('series'), modality: 'CT', number: 7, description: 'AXIAL 1MM' },
  sopInstanceUid: uidFromSeed('instance'),
  instanceNumber: 3,
  rows: 16,
  columns: 12,
};

describe('UIDs', () => {
  it('are valid 2.25 UIDs of at most 64 characters', () => {
    for (const u of [newUid(), uidFromSeed('x'), IMPLEMENTATION_CLASS_UID]) {
      assert.match(u, /^2\.25\.(0|[1-9][0-9]*)$/);
      assert.ok(u.length <= 64);
      assert.ok(BigInt(u.slice(5)) < 2n ** 128n);
    }
    assert.equal(uidFromSeed('a'), uidFromSeed('a'));
    assert.notEqual(uidFromSeed('a'), uidFromSeed('b'));
    assert.notEqual(newUid(), newUid());
  });
});

describe('makeInstance structure', () => {
  it('has preamble, DICM, a correct meta group and even length', () => {
    const b = makeInstance({ ...base, rows: 3, columns: 3, bitsAllocated: 8 });
    assert.ok(b.subarray(0, 128).every((x) => x === 0));
    assert.equal(Buffer.from(b.subarray(128, 132)).toString('latin1'), 'DICM');
    const buf = Buffer.from(b);
    assert.equal(buf.readUInt16LE(132), 0x0002);
    assert.equal(buf.readUInt16LE(134), 0x0000);
    assert.equal(buf.toString('latin1', 136, 138), 'UL');
    const groupLength = buf.readUInt32LE(140);
    // The element right after the meta group must be in group 0008 (dataset starts there).
    const next = 144 + groupLength;
    assert.equal(buf.readUInt16LE(next), 0x0008);
    assert.equal(b.length % 2, 0);
  });

  it('is 0.5 MB for 512x512 16-bit', () => {
    const b = makeInstance({ rows: 512, columns: 512, bitsAllocated: 16 });
    assert.ok(b.length > 512 * 512 * 2 && b.length < 512 * 512 * 2 + 4096, String(b.length));
  });

  it('is deterministic for a given pixel seed and UIDs', () => {
    const a = makeInstance(base);
    const b = makeInstance(base);
    assert.deepEqual(a, b);
    const c = makeInstance({ ...base, pixelSeed: 99 });
    assert.notDeepEqual(a, c);
  });

  it('refuses non-ASCII text without a character set', () => {
    assert.throws(() => makeInstance({ patient: { name: 'MÜLLER' } }), /specificCharacterSet/);
  });
});

describe('dcmdump parses every variant', { skip: dcmdumpMissing }, () => {
  for (const [name, ts, tsName] of variants) {
    for (const bitsAllocated of [8, 16] as const) {
      it(`${name}, ${bitsAllocated}-bit, private elements`, async () => {
        const out = await dump(`${name}-${bitsAllocated}`, makeInstance({ ...base, transferSyntaxUid: ts, bitsAllocated, privateElements: true }));
        assert.equal(field(out, '0002,0010'), `=${tsName}`);
        assert.equal(field(out, '0002,0002'), '=CTImageStorage');
        assert.equal(field(out, '0002,0003'), base.sopInstanceUid);
        assert.equal(field(out, '0002,0012'), IMPLEMENTATION_CLASS_UID);
        assert.equal(field(out, '0008,0016'), '=CTImageStorage');
        assert.equal(field(out, '0008,0018'), base.sopInstanceUid);
        assert.equal(field(out, '0010,0010'), 'DOE^JOHN');
        assert.equal(field(out, '0010,0020'), 'PID-42');
        assert.equal(field(out, '0010,0030'), '19800215');
        assert.equal(field(out, '0010,0040'), 'M');
        assert.equal(field(out, '0020,000d'), base.study!.uid);
        assert.equal(field(out, '0008,0020'), '20230405');
        assert.equal(field(out, '0008,0030'), '101530');
        assert.equal(field(out, '0008,0050'), 'ACC9');
        assert.equal(field(out, '0008,1030'), 'CHEST CT');
        assert.equal(field(out, '0008,0090'), 'HOUSE^GREGORY');
        assert.equal(field(out, '0020,000e'), base.series!.uid);
        assert.equal(field(out, '0008,0060'), 'CT');
        assert.equal(field(out, '0020,0011'), '7');
        assert.equal(field(out, '0008,103e'), 'AXIAL 1MM');
        assert.equal(field(out, '0020,0013'), '3');
        assert.equal(field(out, '0028,0010'), '16');
        assert.equal(field(out, '0028,0011'), '12');
        assert.equal(field(out, '0028,0100'), String(bitsAllocated));
        assert.equal(field(out, '0009,0010'), 'PACSMESH TEST');
        assert.ok(out.includes('(0009,1001)') && out.includes('(0009,1002)') && out.includes('(0009,1003)'));
        if (ts !== TransferSyntax.ImplicitVrLittleEndian) {
          assert.equal(field(out, '0009,1001'), 'private text value');
          assert.equal(field(out, '0009,1002'), '1234');
        }
        assert.match(out, new RegExp(`\\(7fe0,0010\\) ${bitsAllocated === 8 && ts !== TransferSyntax.ImplicitVrLittleEndian ? 'OB' : 'OW'} .*# *${16 * 12 * (bitsAllocated / 8)}, 1 PixelData`));
      });
    }
  }

  it('pixel values are the same in little and big endian', async () => {
    const px = (out: string) => out.split('\n').find((l) => l.startsWith('(7fe0,0010)'));
    const le = await dump('px-le', makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }), ['+L']);
    const be = await dump('px-be', makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian }), ['+L']);
    const im = await dump('px-im', makeInstance({ ...base, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }), ['+L']);
    assert.ok(px(le) !== undefined);
    assert.equal(px(be), px(le));
    assert.equal(px(im), px(le));
  });

  for (const charset of ['ISO_IR 100', 'ISO_IR 192'] as const) {
    it(`specific character set ${charset} with non-ASCII names`, async () => {
      const name = 'MÜLLER^JÜRGEN^José';
      const bytes = makeInstance({ ...base, specificCharacterSet: charset, patient: { ...base.patient, name }, study: { ...base.study, description: 'Thorax Übersicht' } });
      const raw = Buffer.from(bytes);
      const encoded = charset === 'ISO_IR 100' ? Buffer.from(name, 'latin1') : Buffer.from(name, 'utf8');
      assert.ok(raw.includes(encoded), 'name bytes in the chosen character set');
      // +U8 makes dcmdump convert from the declared character set to UTF-8.
      const out = await dump(`charset-${charset.replace(' ', '_')}`, bytes, ['+U8']);
      assert.equal(field(out, '0010,0010'), name);
      assert.equal(field(out, '0008,1030'), 'Thorax Übersicht');
    });
  }

  it('extraElements add and replace elements (e.g. a legacy date)', async () => {
    const out = await dump('extra', makeInstance({ ...base, extraElements: [{ tag: 0x00100030, vr: 'DA', value: '19930430' }, { tag: 0x00181030, vr: 'LO', value: 'PROTOCOL X' }] }));
    assert.equal(field(out, '0010,0030'), '19930430');
    assert.equal(field(out, '0018,1030'), 'PROTOCOL X');
  });

  it('other SOP classes', async () => {
    const out = await dump('mr', makeInstance({ ...base, sopClassUid: SopClass.MrImageStorage, series: { ...base.series, modality: 'MR' } }));
    assert.equal(field(out, '0008,0016'), '=MRImageStorage');
    assert.equal(field(out, '0002,0002'), '=MRImageStorage');
  });
});

describe('series', () => {
  it('makeSeries shares study/series, numbers instances, has unique UIDs', () => {
    const s = makeSeries({ count: 4, rows: 8, columns: 8, uidSeed: 'series-test' });
    assert.equal(s.length, 4);
    assert.equal(new Set(s.map((x) => x.sopInstanceUid)).size, 4);
    assert.deepEqual(s.map((x) => x.instanceNumber), [1, 2, 3, 4]);
    const again = makeSeries({ count: 4, rows: 8, columns: 8, uidSeed: 'series-test' });
    assert.deepEqual(again.map((x) => x.sopInstanceUid), s.map((x) => x.sopInstanceUid));
    assert.deepEqual(again[2]!.bytes, s[2]!.bytes);
  });

  it('writeSeriesToDir writes <n>.dcm files that dcmdump reads', { skip: dcmdumpMissing }, async () => {
    const out = join(dir, 'series');
    const w = await writeSeriesToDir(out, { count: 3, rows: 32, columns: 32, uidSeed: 'dir-test', study: { uid: uidFromSeed('dir-study') } });
    assert.deepEqual((await readdir(out)).sort(), ['1.dcm', '2.dcm', '3.dcm']);
    let total = 0;
    for (const [i, f] of w.files.entries()) {
      total += (await stat(f)).size;
      const r = await runTool('dcmdump', [f], { timeoutMs: 20_000 });
      assert.equal(r.code, 0);
      assert.equal(r.stderr, '');
      assert.equal(field(r.stdout, '0008,0018'), w.sopInstanceUids[i]);
      assert.equal(field(r.stdout, '0020,000d'), uidFromSeed('dir-study'));
      assert.equal(field(r.stdout, '0020,0013'), String(i + 1));
    }
    assert.equal(total, w.totalBytes);
  });

  it('makeInstanceWithInfo reports generated UIDs', () => {
    const { resolved } = makeInstanceWithInfo({ rows: 2, columns: 2 });
    assert.match(resolved.sopInstanceUid, /^2\.25\./);
    assert.match(resolved.studyInstanceUid, /^2\.25\./);
    assert.equal(resolved.transferSyntaxUid, TransferSyntax.ExplicitVrLittleEndian);
  });
});

describe('network round trip through DCMTK', { skip: hasDcmtk(['storescu', 'storescp', 'dcmdump']) ? false : 'DCMTK is not installed' }, () => {
  it('storescp (TCP_NODELAY=1) receives every variant sent by storescu', async () => {
    const inDir = join(dir, 'net-in');
    const outDir = join(dir, 'net-out');
    const files: string[] = [];
    const w = await writeSeriesToDir(inDir, { count: 2, rows: 64, columns: 64, uidSeed: 'net' });
    files.push(...w.files);
    for (const [name, ts] of variants) {
      const f = join(inDir, `${name}.dcm`);
      await writeFile(f, makeInstance({ ...base, sopInstanceUid: uidFromSeed(`net-${name}`), transferSyntaxUid: ts, privateElements: true }));
      files.push(f);
    }
    const port = await getFreePort();
    const scp = await startStorescp({ port, outDir, aeTitle: 'TESTSCP' });
    try {
      assert.ok(scp.pid > 0);
      const sampler = startRssSampler(scp.pid);
      // storescu proposes uncompressed syntaxes by default: it converts the deflated file when sending.
      const r = await runTool('storescu', ['-aet', 'TEST', '-aec', 'TESTSCP', '127.0.0.1', String(port), ...files], { timeoutMs: 30_000, env: { TCP_NODELAY: '1' } });
      assert.equal(r.code, 0, r.stderr);
      const received = await readdir(outDir);
      assert.equal(received.length, files.length, `received ${received.join(', ')}; storescu: ${r.stderr}`);
      const hwm = peakRssBytes(scp.pid);
      assert.ok(hwm !== undefined && hwm > 0);
      const s = sampler.stop();
      assert.ok(s.peakProcessBytes > 0 && s.samples >= 1);
    } finally {
      await scp.stop();
    }
    assert.ok(scp.process.hasExited);
  });
});
