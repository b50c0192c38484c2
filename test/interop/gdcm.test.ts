/**
 * Interop suite: drives one pacs-mesh peer with GDCM's gdcmscu (Debian's libgdcm-tools), the DICOM client
 * of GDCM that ITK-based tools embed. Skipped, saying so, when gdcmscu is not installed.
 *
 *  - C-ECHO;
 *  - C-STORE of a few corpus files (explicit and implicit VR LE, JPEG baseline, RLE, JPEG 2000, SR) and
 *    synthetic instances (big endian, private elements, UTF-8 and Latin-1 text) on one association, each
 *    in its own syntax; a deflated one is refused (gdcmscu sends it with gzip's trailer, odd-sized);
 *  - C-FIND, Patient Root and Study Root, at every level, with wildcards, a date range and a UTF-8 name;
 *  - C-MOVE of studies, of a patient, of a series, of single instances and of a study of 33 SOP classes in 3
 *    syntaxes each (132 contexts) to gdcmscu's own C-STORE receiver (--port-scp), every file it writes
 *    compared with the original element by element; a C-MOVE with a failed sub-operation (its final response
 *    carries the Failed SOP Instance UID List).
 * gdcmscu has no C-GET (3.0.21 answers --get with exit status 1).
 *
 * gdcmscu 3.0.21 ends every association it requested with an abort() (SIGABRT, exit status 134 in a shell, "ProtocolStream as nullptr is
 * invalid") once the release is confirmed, DCMTK's storescp as acceptor too: its results are read from its
 * debug output (-D) and, for C-FIND, from the wire (a recording proxy between it and the peer), since it
 * prints a C-FIND's matches only after that release.
 *
 * Set INTEROP_KEEP=1 to keep the work directory.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseStartArgs } from '../../src/config.ts';
import { decodeCommand, type DimseCommand } from '../../src/codec/dimse.ts';
import { PduFramer } from '../../src/codec/pdu.ts';
import { startPeer, type Peer } from '../../src/peer.ts';
import { getFreePort, runTool, which } from '../support/dicom-tools.ts';
import { copyDifferences, datasetText, flattenDataset, flattenFile, TS, type FlatDataset } from './compare.ts';
import { groupBy, loadCorpus, syntheticPatients, writeSynthetic, type Instance } from './harness.ts';
import { manyStorageClasses, storeManyClassStudy } from '../support/many-class-study.ts';
import { damageChunk } from '../../src/actors/storage/fixtures/store-keys.ts';

const AE = 'PACSMESH';
const MOVE_AE = 'GDCMSCP';
const gdcmscuPath = which('gdcmscu');

/** A few corpus files, one or two per syntax and kind (the whole corpus takes longer than this suite may). */
const corpusChoice = new Set([
  'pydicom__CT_small.dcm',
  'nibabel__0.dcm',
  'nibabel__1.dcm',
  'octave-dicom__simple-test.dcm',
  'pydicom__SC_rgb_jpeg_dcmtk.dcm',
  'octave-dicom__US-PAL-8-10x-echo.dcm',
  'pydicom__J2K_pixelrep_mismatch.dcm',
  'pydicom__reportsi.dcm',
]);

interface GdcmRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/** gdcmscu 3.0.21's abort() after every confirmed release (see the file comment), not a failure of the operation. */
const abortedAfterRelease = (run: GdcmRun) => run.signal === 'SIGABRT' && run.output.includes('ProtocolStream as nullptr is invalid');

/** A TCP proxy to `targetPort` keeping what the target sent on each connection. */
async function recordingProxy(targetPort: number): Promise<{ port: number; connections: Buffer[][]; close(): Promise<void> }> {
  const connections: Buffer[][] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const received: Buffer[] = [];
    connections.push(received);
    const target = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, target]) {
      sockets.add(s);
      s.on('error', () => undefined);
    }
    client.pipe(target);
    target.on('data', (chunk: Buffer) => {
      received.push(chunk);
      client.write(chunk);
    });
    target.on('end', () => client.end());
    client.on('close', () => target.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy: no port');
  return {
    port: address.port,
    connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The DIMSE messages in what an acceptor sent: each command with its data set (implicit VR LE, the syntax gdcmscu proposes). */
function dimseMessages(bytes: Buffer): Array<{ command: DimseCommand; identifier?: FlatDataset }> {
  const messages: Array<{ command: DimseCommand; identifier?: FlatDataset }> = [];
  let commandParts: Uint8Array[] = [];
  let dataParts: Uint8Array[] = [];
  for (const pdu of new PduFramer().push(bytes)) {
    if (pdu.type !== 'pData') continue;
    for (const pdv of pdu.values) {
      (pdv.isCommand ? commandParts : dataParts).push(pdv.data);
      if (!pdv.isLast) continue;
      if (pdv.isCommand) {
        messages.push({ command: decodeCommand(Buffer.concat(commandParts)) });
        commandParts = [];
      } else {
        messages.at(-1)!.identifier = flattenDataset(Buffer.concat(dataParts), TS.ImplicitLE);
        dataParts = [];
      }
    }
  }
  return messages;
}

describe('GDCM gdcmscu interop', { skip: gdcmscuPath === undefined ? 'gdcmscu is not installed (apt-get install libgdcm-tools)' : false, timeout: 120_000 }, () => {
  let work: string;
  let peer: Peer | undefined;
  let movePort = 0;
  let instances: Instance[] = [];
  let deflated: Instance | undefined;
  let stored = false;

  const port = () => {
    assert.ok(peer, 'the peer is not running');
    return peer.dicomPort;
  };
  const requireStored = () => assert.ok(stored, 'the store step failed: nothing to query or retrieve');

  /** gdcmscu -D with `args`, to the peer (or `toPort`), bounded; a timeout is an error. */
  async function gdcmscu(args: string[], toPort = port()): Promise<GdcmRun> {
    const run = await runTool('gdcmscu', ['-D', ...args, '--call', AE, '127.0.0.1', String(toPort)], { timeoutMs: 60_000 });
    const output = `${run.stdout}\n${run.stderr}`;
    if (run.timedOut) throw new Error(`gdcmscu ${args.join(' ')} timed out:\n${output.slice(-4000)}`);
    return { code: run.code, signal: run.signal, output };
  }

  function assertCompleted(run: GdcmRun, what: string): void {
    assert.ok(run.code === 0 || abortedAfterRelease(run), `${what}: exit ${run.code ?? run.signal}\n${run.output.slice(-4000)}`);
  }

  before(async () => {
    if (gdcmscuPath === undefined) return;
    work = await mkdtemp(join(tmpdir(), 'pacs-mesh-gdcm-'));
    const synthetic = await writeSynthetic(join(work, 'synthetic'));
    deflated = synthetic.find((i) => i.transferSyntaxUid === TS.DeflatedLE);
    instances = [...loadCorpus().filter((i) => corpusChoice.has(i.name)), ...synthetic.filter((i) => i !== deflated)];
    assert.equal(instances.filter((i) => i.source === 'corpus').length, corpusChoice.size, 'a chosen corpus file is missing');
    // gdcmscu's C-STORE receiver listens on a port of its own, and its AE title is the calling one.
    movePort = await getFreePort();
    peer = await startPeer(
      parseStartArgs(['--site', 'gdcm', '--data', join(work, 'peer'), '--ae-title', AE, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--move-dest', `${MOVE_AE}=127.0.0.1:${movePort}`, '--log-level', 'error']),
    );
  });

  after(async () => {
    await peer?.stop().catch(() => undefined);
    if (work && process.env.INTEROP_KEEP !== '1') await rm(work, { recursive: true, force: true });
  });

  it('C-ECHO succeeds', async () => {
    const run = await gdcmscu(['--echo']);
    assertCompleted(run, 'gdcmscu --echo');
    // The C-ECHO-RSP (command field 0x8030) with status 0, as gdcmscu printed it.
    assert.match(run.output, /\(0000,0100\) \?\? \(US\) 32816[\s\S]*?\(0000,0900\) \?\? \(US\) 0\s/);
  });

  it('C-STORE of every chosen instance on one association, each in its own syntax', async () => {
    const dir = join(work, 'to-store');
    await mkdir(dir, { recursive: true });
    for (const inst of instances) await copyFile(inst.path, join(dir, `${inst.sopInstanceUid}.dcm`));
    const run = await gdcmscu(['--store', '-r', '-i', dir]);
    assertCompleted(run, 'gdcmscu --store');
    const stored_ = [...run.output.matchAll(/C-Store of file (\S+) was successful/g)].map((m) => basename(m[1]!, '.dcm'));
    assert.deepEqual(stored_.sort(), instances.map((i) => i.sopInstanceUid).sort(), run.output.slice(-4000));
    // One context per file's own syntax: nothing was converted on the way.
    for (const ts of new Set(instances.map((i) => i.transferSyntaxUid))) assert.ok(run.output.includes(`TransferSyntax: Name: ${ts} `), `no context accepted in ${ts}`);
    stored = true;
  });

  it('C-STORE of a deflated instance: refused 0xC000 (gdcmscu sends the stream with gzip\'s 8-byte trailer, of odd length), the peer keeps serving', async () => {
    assert.ok(deflated);
    const run = await gdcmscu(['--store', '-i', deflated.path]);
    assertCompleted(run, 'gdcmscu --store (deflated)');
    assert.match(run.output, /\(0000,0900\) \?\? \(US\) 49152/);
    assert.match(run.output, /data set of odd length/);
    assertCompleted(await gdcmscu(['--echo']), 'gdcmscu --echo after the refusal');
  });

  /**
   * A C-FIND through the recording proxy: the identifiers the peer sent, checked against how many matches
   * gdcmscu itself read (each one's command PDU is in its debug output; identifiers it reads silently).
   */
  async function find(args: string[]): Promise<FlatDataset[]> {
    const proxy = await recordingProxy(port());
    try {
      const run = await gdcmscu(['--find', ...args], proxy.port);
      assertCompleted(run, `gdcmscu --find ${args.join(' ')}`);
      assert.equal(proxy.connections.length, 1);
      const messages = dimseMessages(Buffer.concat(proxy.connections[0]!));
      const final = messages.at(-1);
      assert.equal(final?.command.status, 0, `final status 0x${final?.command.status?.toString(16)} ${final?.command.errorComment ?? ''}`);
      const matches = messages.slice(0, -1);
      for (const m of matches) assert.equal(m.command.status, 0xff00);
      // gdcmscu read each command, in its own PDU, then its identifier (hunt 155: it kept every other one).
      assert.equal((run.output.match(/^PDU code: 4$/gm) ?? []).length, messages.length, 'responses gdcmscu read');
      return matches.map((m) => m.identifier ?? new Map());
    } finally {
      await proxy.close();
    }
  }
  const text = (identifier: FlatDataset, tag: number) => datasetText(identifier, tag) ?? '';

  it('C-FIND Patient Root, PATIENT level: one match per PatientID with its instance count', async () => {
    requireStored();
    const matches = await find(['--patientroot', '--patient', '--key', '10,20=', '--key', '10,10=', '--key', '20,1204=']);
    const patients = groupBy(instances, (i) => i.patientId);
    assert.deepEqual(matches.map((m) => text(m, 0x00100020)).sort(), [...patients.keys()].sort());
    for (const m of matches) assert.equal(text(m, 0x00201204), String(patients.get(text(m, 0x00100020))!.length), `instances of ${text(m, 0x00100020)}`);
  });

  it('C-FIND Study Root, STUDY level: every study, with its date and instance count; PatientName wildcard; StudyDate range', async () => {
    requireStored();
    const studies = groupBy(instances, (i) => i.studyUid);
    const all = await find(['--studyroot', '--study', '--key', '20,d=', '--key', '8,20=', '--key', '20,1208=']);
    assert.deepEqual(all.map((m) => text(m, 0x0020000d)).sort(), [...studies.keys()].sort());
    for (const m of all) {
      const members = studies.get(text(m, 0x0020000d))!;
      assert.equal(text(m, 0x00201208), String(members.length));
      assert.ok(members.some((i) => i.studyDate === text(m, 0x00080020)));
    }
    // The synthetic patient with two studies, by a name wildcard (no spaces: gdcmscu cuts a --key value at one).
    const byName = await find(['--studyroot', '--study', '--key', '10,10=INTEROP^BIG*', '--key', '20,d=']);
    assert.equal(byName.length, 2);
    // The synthetic studies of 2023 (the corpus has none), and those without a date.
    const byDate = await find(['--studyroot', '--study', '--key', '8,20=20230101-20231231', '--key', '20,d=']);
    // A study without a date matches any (PS3.4 C.2.2.1.2: an empty value matches every key).
    const in2023 = (date: string) => date === '' || date.startsWith('2023');
    assert.deepEqual(byDate.map((m) => text(m, 0x0020000d)).sort(), [...studies.keys()].filter((s) => in2023(studies.get(s)![0]!.studyDate)).sort());
  });

  it('C-FIND SERIES (Study Root) and IMAGE (Patient Root) levels', async () => {
    requireStored();
    const nibabel = instances.find((i) => i.name === 'nibabel__0.dcm')!;
    const series = await find(['--studyroot', '--series', '--key', `20,d=${nibabel.studyUid}`, '--key', '20,e=', '--key', '8,60=', '--key', '20,1209=']);
    const expectedSeries = groupBy(instances.filter((i) => i.studyUid === nibabel.studyUid), (i) => i.seriesUid);
    assert.deepEqual(series.map((m) => text(m, 0x0020000e)).sort(), [...expectedSeries.keys()].sort());
    assert.equal(text(series.find((m) => text(m, 0x0020000e) === nibabel.seriesUid)!, 0x00201209), String(expectedSeries.get(nibabel.seriesUid)!.length));
    const images = await find(['--patientroot', '--image', '--key', `10,20=${nibabel.patientId}`, '--key', `20,d=${nibabel.studyUid}`, '--key', `20,e=${nibabel.seriesUid}`, '--key', '8,18=']);
    assert.deepEqual(images.map((m) => text(m, 0x00080018)).sort(), expectedSeries.get(nibabel.seriesUid)!.map((i) => i.sopInstanceUid).sort());
  });

  it('C-FIND with a UTF-8 PatientName (gdcmscu sends Specific Character Set ISO_IR 192 in every query)', async () => {
    requireStored();
    const matches = await find(['--patientroot', '--patient', '--key', '10,10=Mü*', '--key', '10,20=']);
    assert.deepEqual(matches.map((m) => text(m, 0x00100020)), [syntheticPatients.utf8.id]);
    assert.equal(Buffer.from(text(matches[0]!, 0x00100010), 'latin1').toString('utf8'), syntheticPatients.utf8.name);
    assert.equal(text(matches[0]!, 0x00080005), 'ISO_IR 192');
  });

  /** gdcmscu --move `args` into a fresh directory (gdcmscu needs it to exist): the files it wrote, by SOP Instance UID. */
  async function move(label: string, args: string[]): Promise<Map<string, Uint8Array>> {
    const out = join(work, 'moved', label);
    await mkdir(out, { recursive: true });
    const run = await gdcmscu(['--move', '--aetitle', MOVE_AE, '--port-scp', String(movePort), '-o', out, ...args]);
    assertCompleted(run, `gdcmscu --move ${args.join(' ')}`);
    const files = new Map<string, Uint8Array>();
    for (const f of await readdir(out)) {
      const bytes = await readFile(join(out, f));
      files.set(datasetText(flattenFile(bytes).flat, 0x00080018) ?? f, bytes);
    }
    return files;
  }

  /** A moved copy is the original (GDCM takes implicit VR LE only: most are converted). */
  function assertSameInstance(original: Instance, copy: Uint8Array): void {
    assert.deepEqual(copyDifferences(original.bytes, copy), [], `${original.name} (${original.transferSyntaxUid} -> ${flattenFile(copy).part10.transferSyntaxUid})`);
  }

  it('C-MOVE of every study (Study Root) to gdcmscu\'s own receiver: every instance, each the original', async () => {
    requireStored();
    const received = new Map<string, Uint8Array>();
    for (const study of groupBy(instances, (i) => i.studyUid).keys()) {
      for (const [uid, bytes] of await move(`study-${study}`, ['--studyroot', '--study', '--key', `20,d=${study}`])) received.set(uid, bytes);
    }
    assert.deepEqual([...received.keys()].sort(), instances.map((i) => i.sopInstanceUid).sort());
    for (const inst of instances) assertSameInstance(inst, received.get(inst.sopInstanceUid)!);
  });

  it('C-MOVE of a patient (Patient Root, PATIENT level)', async () => {
    requireStored();
    const received = await move('patient', ['--patientroot', '--patient', '--key', `10,20=${syntheticPatients.bigEndian.id}`]);
    assert.deepEqual([...received.keys()].sort(), instances.filter((i) => i.patientId === syntheticPatients.bigEndian.id).map((i) => i.sopInstanceUid).sort());
  });

  it('C-MOVE of a series (Study Root, SERIES level): its instances, each the original', async () => {
    requireStored();
    const nibabel = instances.find((i) => i.name === 'nibabel__0.dcm')!;
    const members = instances.filter((i) => i.seriesUid === nibabel.seriesUid);
    assert.equal(members.length, 2, 'nibabel__0 and nibabel__1 share a series');
    const received = await move('series', ['--studyroot', '--series', '--key', `20,d=${nibabel.studyUid}`, '--key', `20,e=${nibabel.seriesUid}`]);
    assert.deepEqual([...received.keys()].sort(), members.map((i) => i.sopInstanceUid).sort());
    for (const inst of members) assertSameInstance(inst, received.get(inst.sopInstanceUid)!);
  });

  it('C-MOVE of single instances (Patient Root, IMAGE level): one stored as implicit VR LE, one JPEG 2000 (decoded for GDCM), one big endian', async () => {
    requireStored();
    const chosen = [
      instances.find((i) => i.transferSyntaxUid === TS.ImplicitLE),
      instances.find((i) => i.name === 'pydicom__J2K_pixelrep_mismatch.dcm'),
      instances.find((i) => i.transferSyntaxUid === TS.ExplicitBE),
    ];
    for (const inst of chosen) {
      assert.ok(inst, 'an instance of each kind is among the chosen ones');
      const received = await move(`image-${inst.sopInstanceUid}`, [
        '--patientroot',
        '--image',
        '--key',
        `10,20=${inst.patientId}`,
        '--key',
        `20,d=${inst.studyUid}`,
        '--key',
        `20,e=${inst.seriesUid}`,
        '--key',
        `8,18=${inst.sopInstanceUid}`,
      ]);
      assert.deepEqual([...received.keys()], [inst.sopInstanceUid]);
      assertSameInstance(inst, received.get(inst.sopInstanceUid)!);
    }
  });

  it('C-MOVE of a study of 33 SOP classes in 3 syntaxes each (132 contexts to propose, over 128): every instance on the one association gdcmscu takes', async () => {
    requireStored();
    const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.5';
    const manyClasses = await storeManyClassStudy(port(), studyInstanceUid, manyStorageClasses.slice(0, 33), [TS.ImplicitLE, TS.ExplicitLE, TS.ExplicitBE]);
    // Its receiver refused the connection of a second association (hunt 160): the move has to fit one.
    const received = await move('many-classes', ['--studyroot', '--study', '--key', `20,d=${studyInstanceUid}`]);
    assert.deepEqual([...received.keys()].sort(), manyClasses.map((i) => i.sopInstanceUid).sort());
    for (const instance of manyClasses) assert.deepEqual(copyDifferences(instance.part10, received.get(instance.sopInstanceUid)!), [], instance.sopInstanceUid);
  });

  it('C-MOVE with a failed sub-operation: gdcmscu reads the final response and its Failed SOP Instance UID List (it aborted on CommandDataSetType 0000H, hunt 160)', async () => {
    requireStored();
    assert.ok(peer);
    const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.160.6';
    const [kept, damaged] = await storeManyClassStudy(port(), studyInstanceUid, manyStorageClasses.slice(0, 2), [TS.ExplicitLE]);
    // A copy that no longer matches its checksum, and no other site to repair it from: that sub-operation fails.
    await damageChunk(peer.store, (await peer.store.getEntry(damaged!.sopInstanceUid))!.blobId, 0, 'flip');
    const received = await move('with-failure', ['--studyroot', '--study', '--key', `20,d=${studyInstanceUid}`]);
    assert.deepEqual([...received.keys()], [kept!.sopInstanceUid]);
  });

  it('C-GET', { skip: 'gdcmscu 3.0.21 has no C-GET (--get exits with status 1)' }, () => undefined);
});
