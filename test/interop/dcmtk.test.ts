/**
 * Interop suite: drives one pacs-mesh peer with the DCMTK command-line tools.
 *
 *  - echoscu: success, and rejection of a wrong called AE title;
 *  - storescu of every file of ../shared/dicom-corpus/public, proposing the file's own transfer syntax,
 *    plus synthetic instances (explicit VR big endian, deflated, private elements, UTF-8 and Latin-1
 *    text); the same storescu commands also send everything to a reference storescp (bit-preserving),
 *    which records exactly what storescu puts on the wire;
 *  - storescu of an unknown SOP class is refused (no presentation context) and the peer keeps serving;
 *  - findscu, patient root (-P) and study root (-S), at every level: counts and key values against what
 *    was stored, PatientID, PatientName wildcard, StudyDate range and non-ASCII PatientName queries;
 *  - getscu of each study, movescu of each study to a storescp, movescu to an unknown AE (0xA801);
 *  - findscu --cancel and movescu --cancel of a study of 300 instances: final status Cancel.
 * Every retrieved instance is compared with the original file element by element (compare.ts) and with
 * what storescu sent byte for byte; the final test prints which copies are byte-identical.
 *
 * Set INTEROP_KEEP=1 to keep the work directory.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer, type Peer } from '../../src/peer.ts';
import { getFreePort, hasDcmtk, startStorescp, type StorescpHandle } from '../support/dicom-tools.ts';
import { writeSeriesToDir } from '../support/synthetic-dicom.ts';
import { compareInstances, TS, type Identity } from './compare.ts';
import {
  dcmtk,
  expectedStudies,
  findscu,
  getscuPreference,
  groupBy,
  loadCorpus,
  normalizeDate,
  readReceived,
  responseText,
  retrieveSummary,
  storescuProposal,
  syntheticPatients,
  tsName,
  wildcardMatch,
  writeSynthetic,
  writeUnknownClassProfile,
  writeUnknownSopClass,
  type Instance,
} from './harness.ts';

const AE = 'PACSMESH';
const MOVE_AE = 'STORESCP';
const REF_AE = 'REFSCP';

const Tag = {
  SpecificCharacterSet: 0x00080005,
  StudyDate: 0x00080020,
  QueryRetrieveLevel: 0x00080052,
  Modality: 0x00080060,
  ModalitiesInStudy: 0x00080061,
  SopClassUid: 0x00080016,
  SopInstanceUid: 0x00080018,
  PatientName: 0x00100010,
  PatientId: 0x00100020,
  StudyInstanceUid: 0x0020000d,
  SeriesInstanceUid: 0x0020000e,
  NumberOfPatientRelatedStudies: 0x00201200,
  NumberOfPatientRelatedInstances: 0x00201204,
  NumberOfStudyRelatedSeries: 0x00201206,
  NumberOfStudyRelatedInstances: 0x00201208,
  NumberOfSeriesRelatedInstances: 0x00201209,
} as const;

interface Outcome {
  /** storescu's copy (reference storescp) vs the original file. */
  sent?: Identity;
  get?: Identity;
  move?: Identity;
  /** The retrieved data set is byte-identical to what storescu sent. */
  getAsSent?: boolean;
  moveAsSent?: boolean;
  notes: string[];
}

describe('DCMTK interop', { timeout: 170_000 }, () => {
  let work: string;
  let peer: Peer | undefined;
  let moveScp: StorescpHandle | undefined;
  let refScp: StorescpHandle | undefined;
  let instances: Instance[] = [];
  const outcomes = new Map<string, Outcome>();
  /** What storescu sent, by SOP instance UID (captured by the reference storescp). */
  let sentCopies = new Map<string, { file: string; bytes: Uint8Array }>();
  let stored = false;

  const instancesByUid = () => new Map(instances.map((i) => [i.sopInstanceUid, i]));
  const outcome = (uid: string) => {
    let o = outcomes.get(uid);
    if (!o) outcomes.set(uid, (o = { notes: [] }));
    return o;
  };
  const port = () => {
    assert.ok(peer, 'the peer is not running');
    return peer.dicomPort;
  };
  const requireStored = () => assert.ok(stored, 'the store step failed: nothing to query or retrieve');

  before(async () => {
    assert.ok(hasDcmtk(), 'DCMTK (storescu, storescp, findscu, getscu, movescu, echoscu, dcmdump) is not on PATH: apt-get install dcmtk');
    const corpus = loadCorpus();
    work = await mkdtemp(join(tmpdir(), 'pacs-mesh-interop-'));
    const synthetic = await writeSynthetic(join(work, 'synthetic'));
    instances = [...corpus, ...synthetic];
    const uids = new Set(instances.map((i) => i.sopInstanceUid));
    assert.equal(uids.size, instances.length, 'SOP Instance UIDs must be unique across the corpus and the synthetic instances');

    // deadPort: nothing listens there (a move destination that is down).
    const [movePort, refPort, deadPort] = [await getFreePort(), await getFreePort(), await getFreePort()];
    // +xa: accept every transfer syntax; +B: write the data set exactly as received.
    moveScp = await startStorescp({ port: movePort, outDir: join(work, 'moved'), aeTitle: MOVE_AE, extraArgs: ['+xa', '+B'] });
    refScp = await startStorescp({ port: refPort, outDir: join(work, 'sent'), aeTitle: REF_AE, extraArgs: ['+xa', '+B'] });
    peer = await startPeer(
      parseStartArgs([
        '--site', 'interop', '--data', join(work, 'peer'), '--ae-title', AE, '--host', '127.0.0.1',
        '--dicom-port', '0', '--http-port', '0', '--move-dest', `${MOVE_AE}=127.0.0.1:${movePort}`, '--move-dest', `DOWNSCP=127.0.0.1:${deadPort}`, '--log-level', 'error',
      ]),
    );
  });

  after(async () => {
    await peer?.stop().catch(() => undefined);
    await moveScp?.stop().catch(() => undefined);
    await refScp?.stop().catch(() => undefined);
    if (work && process.env.INTEROP_KEEP !== '1') await rm(work, { recursive: true, force: true });
  });

  async function meshInstances(): Promise<number> {
    assert.ok(peer);
    const res = await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { instances: number };
    return body.instances;
  }

  // -------------------------------------------------------------------------------------------------
  // C-ECHO

  it('echoscu: C-ECHO succeeds', async () => {
    const run = await dcmtk('echoscu', ['-v', '-aec', AE, '127.0.0.1', String(port())]);
    assert.equal(run.code, 0, run.output);
    assert.match(run.output, /Received Echo Response \(Success\)/);
  });

  it('echoscu: a wrong called AE title is rejected', async () => {
    const run = await dcmtk('echoscu', ['-aec', 'NOT-THE-ARCHIVE', '127.0.0.1', String(port())]);
    assert.notEqual(run.code, 0, 'echoscu must fail');
    assert.match(run.stderr, /Association Rejected/);
    assert.match(run.stderr, /Called AE Title Not Recognized/);
  });

  // -------------------------------------------------------------------------------------------------
  // C-STORE

  it('storescu: every corpus file and synthetic instance, each in its own transfer syntax', async () => {
    const before = await meshInstances();
    const byTs = groupBy(instances, (i) => i.transferSyntaxUid);
    for (const [ts, group] of byTs) {
      const files = group.map((i) => i.path);
      for (const [calledAe, targetPort] of [[AE, port()], [REF_AE, refScp!.port]] as const) {
        // -R: propose only the SOP classes of these files; -x?: this syntax first (plus uncompressed ones).
        const run = await dcmtk('storescu', ['-v', '-R', storescuProposal(ts), '-aec', calledAe, '127.0.0.1', String(targetPort), ...files], 60_000);
        assert.equal(run.code, 0, `storescu ${tsName[ts] ?? ts} to ${calledAe}:\n${run.output}`);
        const successes = run.output.match(/Received Store Response \(Success\)/g)?.length ?? 0;
        assert.equal(successes, files.length, `storescu ${tsName[ts] ?? ts} to ${calledAe}: ${successes}/${files.length} successes\n${run.output}`);
        // storescu converts only when the syntax was not accepted: it must have sent each file as it is.
        for (const m of run.output.matchAll(/Converting transfer syntax: (.*) -> (.*)/g)) assert.equal(m[1], m[2], `storescu converted a file: ${m[0]}`);
      }
    }
    assert.equal(await meshInstances(), before + instances.length, 'GET /api/mesh instances');
    stored = true;

    sentCopies = await readReceived(refScp!.outDir);
    for (const inst of instances) {
      const copy = sentCopies.get(inst.sopInstanceUid);
      assert.ok(copy, `reference storescp did not receive ${inst.name}`);
      const cmp = compareInstances(inst.bytes, copy.bytes);
      const o = outcome(inst.sopInstanceUid);
      o.sent = cmp.identity;
      if (cmp.tolerated.length > 0) o.notes.push(`storescu: ${cmp.tolerated.join('; ')}`);
      assert.notEqual(cmp.identity, 'different', `storescu changed ${inst.name}: ${cmp.differences.join('; ')}`);
    }
  });

  it('storescu: an unknown SOP class is refused and the peer keeps serving', async () => {
    const file = await writeUnknownSopClass(work);
    const profile = await writeUnknownClassProfile(work);
    const before = await meshInstances();
    // +v prints the negotiated presentation contexts; -xf proposes 1.2.3.4.5 (storescu refuses unknown classes otherwise).
    const run = await dcmtk('storescu', ['-v', '+v', '-aec', AE, '-xf', profile, 'Default', '127.0.0.1', String(port()), file]);
    assert.notEqual(run.code, 0, `storescu must fail:\n${run.output}`);
    assert.match(run.output, /Context ID:\s+1 \((Abstract Syntax Not Supported|Rejected)[^)]*\)\s*\n\S*\s*Abstract Syntax: 1\.2\.3\.4\.5/);
    assert.match(run.output, /No presentation context for: \(unknown SOP class\) 1\.2\.3\.4\.5/);
    assert.equal(await meshInstances(), before);
    const echo = await dcmtk('echoscu', ['-aec', AE, '127.0.0.1', String(port())]);
    assert.equal(echo.code, 0, `the peer stopped answering after the refusal:\n${echo.output}`);
  });

  // -------------------------------------------------------------------------------------------------
  // C-FIND

  const find = (root: 'P' | 'S', keys: string[]) => findscu({ port: port(), calledAe: AE, root, keys, workDir: join(work, 'find') });

  function assertStudySet(returned: string[], expected: { must: Set<string>; may: Set<string> }, what: string): void {
    assert.equal(new Set(returned).size, returned.length, `${what}: a study is returned twice`);
    for (const s of expected.must) assert.ok(returned.includes(s), `${what}: study ${s} missing`);
    for (const s of returned) assert.ok(expected.must.has(s) || expected.may.has(s), `${what}: unexpected study ${s}`);
  }

  it('findscu -P PATIENT: one response per PatientID with its study and instance counts', async () => {
    requireStored();
    const r = await find('P', ['QueryRetrieveLevel=PATIENT', 'PatientID', 'PatientName', 'NumberOfPatientRelatedStudies', 'NumberOfPatientRelatedInstances']);
    assert.equal(r.status, 'Success', r.output);
    const patients = groupBy(instances, (i) => i.patientId);
    assert.equal(r.responses.length, patients.size, `patients: ${r.responses.map((x) => responseText(x, Tag.PatientId)).join(', ')}`);
    for (const rsp of r.responses) {
      assert.equal(responseText(rsp, Tag.QueryRetrieveLevel), 'PATIENT');
      const pid = responseText(rsp, Tag.PatientId);
      const members = patients.get(pid);
      assert.ok(members, `unexpected PatientID "${pid}"`);
      assert.equal(responseText(rsp, Tag.NumberOfPatientRelatedStudies), String(new Set(members.map((i) => i.studyUid)).size), `studies of patient "${pid}"`);
      assert.equal(responseText(rsp, Tag.NumberOfPatientRelatedInstances), String(members.length), `instances of patient "${pid}"`);
      const names = new Set(members.map((i) => i.patientName));
      assert.ok(names.has(responseText(rsp, Tag.PatientName)), `PatientName of "${pid}": ${responseText(rsp, Tag.PatientName)} not in ${[...names].join(' | ')}`);
    }
  });

  it('findscu -S STUDY: one response per StudyInstanceUID with counts, date and modalities', async () => {
    requireStored();
    const r = await find('S', [
      'QueryRetrieveLevel=STUDY', 'StudyInstanceUID', 'PatientID', 'StudyDate', 'ModalitiesInStudy',
      'NumberOfStudyRelatedSeries', 'NumberOfStudyRelatedInstances',
    ]);
    assert.equal(r.status, 'Success', r.output);
    const studies = groupBy(instances, (i) => i.studyUid);
    assert.equal(r.responses.length, studies.size, 'number of studies = distinct StudyInstanceUIDs stored');
    for (const rsp of r.responses) {
      const uid = responseText(rsp, Tag.StudyInstanceUid);
      const members = studies.get(uid);
      assert.ok(members, `unexpected study ${uid}`);
      assert.equal(responseText(rsp, Tag.NumberOfStudyRelatedInstances), String(members.length), `instances of study ${uid}`);
      assert.equal(responseText(rsp, Tag.NumberOfStudyRelatedSeries), String(new Set(members.map((i) => i.seriesUid)).size), `series of study ${uid}`);
      assert.ok(members.some((i) => i.studyDate === responseText(rsp, Tag.StudyDate)), `StudyDate of ${uid}`);
      assert.ok(members.some((i) => i.patientId === responseText(rsp, Tag.PatientId)), `PatientID of ${uid}`);
      const modalities = new Set(members.map((i) => i.modality).filter((m) => m !== ''));
      const returned = responseText(rsp, Tag.ModalitiesInStudy).split('\\').map((m) => m.trim()).filter((m) => m !== '');
      assert.deepEqual(new Set(returned), modalities, `ModalitiesInStudy of ${uid}`);
    }
  });

  it('findscu -S STUDY with empty keys of lower levels and sequences (as viewers send): every study, those keys empty', async () => {
    requireStored();
    const r = await find('S', ['QueryRetrieveLevel=STUDY', 'StudyInstanceUID', 'Modality', 'InstitutionName', 'ReferencedStudySequence', 'ProcedureCodeSequence']);
    assert.equal(r.status, 'Success', r.output);
    assert.equal(r.responses.length, groupBy(instances, (i) => i.studyUid).size);
    for (const rsp of r.responses) {
      assert.equal(responseText(rsp, Tag.Modality), '');
      assert.equal(responseText(rsp, 0x00080080), '');
    }
  });

  it('findscu -P and -S STUDY by PatientID return that patient\'s studies', async () => {
    requireStored();
    const pids = [...new Set(instances.map((i) => i.patientId))].filter((p) => p !== '');
    for (const pid of pids) {
      const expected = expectedStudies(instances, (i) => i.patientId === pid);
      for (const root of ['P', 'S'] as const) {
        const r = await find(root, ['QueryRetrieveLevel=STUDY', `PatientID=${pid}`, 'StudyInstanceUID', 'PatientName']);
        assert.equal(r.status, 'Success', r.output);
        assertStudySet(r.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), expected, `-${root} PatientID=${pid}`);
        for (const rsp of r.responses) assert.equal(responseText(rsp, Tag.PatientId), pid);
      }
    }
    // The synthetic patient with two studies.
    const r = await find('S', ['QueryRetrieveLevel=STUDY', `PatientID=${syntheticPatients.bigEndian.id}`, 'StudyInstanceUID']);
    assert.equal(r.responses.length, 2);
  });

  it('findscu -S STUDY: PatientName wildcards (PN matching ignores ASCII case)', async () => {
    requireStored();
    // 'lestrade*' and '*patient*' also check the case-insensitive PN matching the archive documents.
    for (const pattern of ['INTEROP^*', 'Lestrade*', 'lestrade*', '*patient*', 'C?mpressedSamples^CT1', 'Nobody*']) {
      const expected = expectedStudies(instances, (i) => wildcardMatch(pattern, i.patientName, { ignoreAsciiCase: true }));
      assert.ok(expected.must.size > 0 || pattern === 'Nobody*', `pattern ${pattern} selects nothing`);
      const r = await find('S', ['QueryRetrieveLevel=STUDY', `PatientName=${pattern}`, 'StudyInstanceUID']);
      assert.equal(r.status, 'Success', r.output);
      assertStudySet(r.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), expected, `PatientName=${pattern}`);
      for (const rsp of r.responses) {
        assert.ok(wildcardMatch(pattern, responseText(rsp, Tag.PatientName), { ignoreAsciiCase: true }), `PatientName ${responseText(rsp, Tag.PatientName)} !~ ${pattern}`);
      }
    }
  });

  it('findscu -S STUDY: non-ASCII PatientName (ISO_IR 192 and ISO_IR 100, case folded)', async () => {
    requireStored();
    const utf8Study = instances.find((i) => i.patientId === syntheticPatients.utf8.id)!.studyUid;
    const r = await find('S', ['QueryRetrieveLevel=STUDY', 'SpecificCharacterSet=ISO_IR 192', 'PatientName=Müller*', 'StudyInstanceUID']);
    assert.equal(r.status, 'Success', r.output);
    assert.deepEqual(r.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), [utf8Study]);
    assert.equal(Buffer.from(responseText(r.responses[0]!, Tag.PatientName), 'latin1').toString('utf8'), syntheticPatients.utf8.name);
    // `?` is one character (ü is two bytes in UTF-8); the response names its character set unasked (PS3.4 C.4.1.1.3.2).
    const oneCharacter = await find('S', ['QueryRetrieveLevel=STUDY', 'PatientName=M?ller*', 'StudyInstanceUID']);
    assert.deepEqual(oneCharacter.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), [utf8Study], oneCharacter.output);
    assert.equal(responseText(oneCharacter.responses[0]!, Tag.SpecificCharacterSet), 'ISO_IR 192');
    // Case folding beyond ASCII, as Orthanc does: a UTF-8 key in capitals finds the UTF-8 and the Latin-1 names.
    const latin1Study = instances.find((i) => i.patientId === syntheticPatients.latin1.id)!.studyUid;
    for (const [pattern, study] of [['MÜLLER^JÜRGEN', utf8Study], ['GÓMEZ*', latin1Study]] as const) {
      const folded = await find('S', ['QueryRetrieveLevel=STUDY', 'SpecificCharacterSet=ISO_IR 192', `PatientName=${pattern}`, 'StudyInstanceUID']);
      assert.deepEqual(folded.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), [study], `PatientName=${pattern}: ${folded.output}`);
    }

    // The Latin-1 instance, found by PatientID: its name comes back in its own bytes and character set.
    const l1 = await find('S', ['QueryRetrieveLevel=STUDY', `PatientID=${syntheticPatients.latin1.id}`, 'PatientName', 'SpecificCharacterSet', 'StudyInstanceUID']);
    assert.equal(l1.responses.length, 1);
    assert.equal(responseText(l1.responses[0]!, Tag.PatientName), syntheticPatients.latin1.name, 'Latin-1 PatientName bytes');
  });

  it('findscu -P and -S STUDY: StudyDate ranges and single dates', async () => {
    requireStored();
    // Legacy dates (1993.04.30 in the corpus) are matched as 19930430, as PS3.5 6.2 recommends; a study
    // whose date is unknown (zero length) matches every date (PS3.4 C.2.2.1.2).
    const inRange = (from: string, to: string) => (i: Instance) => {
      const date = normalizeDate(i.studyDate);
      if (date.trim() === '') return true;
      return /^\d{8}$/.test(date) && (from === '' || date >= from) && (to === '' || date <= to);
    };
    const cases: Array<[string, (i: Instance) => boolean]> = [
      ['20230101-20231231', inRange('20230101', '20231231')],
      ['20100101-20181231', inRange('20100101', '20181231')],
      ['20230220', inRange('20230220', '20230220')],
      ['-20051231', inRange('', '20051231')],
      ['19930101-19941231', inRange('19930101', '19941231')],
      ['20200101-', inRange('20200101', '')],
    ];
    for (const [range, predicate] of cases) {
      const expected = expectedStudies(instances, predicate);
      assert.ok(expected.must.size > 0, `range ${range} selects nothing: pick another`);
      for (const root of ['S', 'P'] as const) {
        const r = await find(root, ['QueryRetrieveLevel=STUDY', `StudyDate=${range}`, 'StudyInstanceUID']);
        assert.equal(r.status, 'Success', r.output);
        assertStudySet(r.responses.map((x) => responseText(x, Tag.StudyInstanceUid)), expected, `-${root} StudyDate=${range}`);
      }
    }
  });

  it('findscu -S SERIES and IMAGE: every series and instance of every study', async () => {
    requireStored();
    for (const [studyUid, members] of groupBy(instances, (i) => i.studyUid)) {
      const series = groupBy(members, (i) => i.seriesUid);
      const r = await find('S', ['QueryRetrieveLevel=SERIES', `StudyInstanceUID=${studyUid}`, 'SeriesInstanceUID', 'Modality', 'NumberOfSeriesRelatedInstances']);
      assert.equal(r.status, 'Success', r.output);
      assert.deepEqual(new Set(r.responses.map((x) => responseText(x, Tag.SeriesInstanceUid))), new Set(series.keys()), `series of study ${studyUid}`);
      assert.equal(r.responses.length, series.size);
      for (const rsp of r.responses) {
        const list = series.get(responseText(rsp, Tag.SeriesInstanceUid))!;
        assert.equal(responseText(rsp, Tag.NumberOfSeriesRelatedInstances), String(list.length));
        assert.ok(list.some((i) => i.modality === responseText(rsp, Tag.Modality)), `Modality of series ${responseText(rsp, Tag.SeriesInstanceUid)}`);
      }
      for (const [seriesUid, list] of series) {
        const img = await find('S', ['QueryRetrieveLevel=IMAGE', `StudyInstanceUID=${studyUid}`, `SeriesInstanceUID=${seriesUid}`, 'SOPInstanceUID', 'SOPClassUID']);
        assert.equal(img.status, 'Success', img.output);
        const got = new Map(img.responses.map((x) => [responseText(x, Tag.SopInstanceUid), responseText(x, Tag.SopClassUid)]));
        assert.equal(img.responses.length, list.length, `instances of series ${seriesUid}`);
        assert.deepEqual(got, new Map(list.map((i) => [i.sopInstanceUid, i.sopClassUid])), `instances of series ${seriesUid}`);
      }
    }
  });

  /** Studies whose instances carry different PatientIDs (the corpus has one: nibabel 0/1 and siemens_dwi_1000). */
  const sharedStudies = () =>
    new Set([...groupBy(instances, (i) => i.studyUid)].filter(([, m]) => new Set(m.map((i) => i.patientId)).size > 1).map(([uid]) => uid));

  it('findscu -P SERIES and IMAGE under each patient', async () => {
    requireStored();
    const shared = sharedStudies();
    for (const [pid, members] of groupBy(instances, (i) => i.patientId)) {
      // An empty PatientID key is universal matching: that "patient" cannot be addressed in Patient Root.
      if (pid === '') continue;
      for (const [studyUid, studyMembers] of groupBy(members, (i) => i.studyUid)) {
        if (shared.has(studyUid)) continue; // see the next test
        const series = groupBy(studyMembers, (i) => i.seriesUid);
        const r = await find('P', ['QueryRetrieveLevel=SERIES', `PatientID=${pid}`, `StudyInstanceUID=${studyUid}`, 'SeriesInstanceUID', 'Modality']);
        assert.equal(r.status, 'Success', r.output);
        assert.deepEqual(new Set(r.responses.map((x) => responseText(x, Tag.SeriesInstanceUid))), new Set(series.keys()), `-P series of ${pid}/${studyUid}`);
        for (const [seriesUid, list] of series) {
          const img = await find('P', ['QueryRetrieveLevel=IMAGE', `PatientID=${pid}`, `StudyInstanceUID=${studyUid}`, `SeriesInstanceUID=${seriesUid}`, 'SOPInstanceUID', 'SOPClassUID']);
          assert.equal(img.status, 'Success', img.output);
          assert.deepEqual(
            new Set(img.responses.map((x) => responseText(x, Tag.SopInstanceUid))),
            new Set(list.map((i) => i.sopInstanceUid)),
            `-P instances of ${pid}/${studyUid}/${seriesUid}`,
          );
        }
      }
    }
  });

  it('findscu -P: a study filed under two PatientIDs is listed under each patient at STUDY, SERIES and IMAGE level, and found by each one\'s name', async () => {
    requireStored();
    const shared = sharedStudies();
    assert.ok(shared.size > 0, 'the corpus has no study shared by two PatientIDs');
    const problems: string[] = [];
    for (const studyUid of shared) {
      const members = instances.filter((i) => i.studyUid === studyUid);
      for (const [pid, list] of groupBy(members, (i) => i.patientId)) {
        if (pid === '') continue;
        // The PATIENT level says this patient has the study; descending the hierarchy must find it.
        const patient = await find('P', ['QueryRetrieveLevel=PATIENT', `PatientID=${pid}`, 'NumberOfPatientRelatedStudies', 'NumberOfPatientRelatedInstances']);
        const claims = `PATIENT level: ${responseText(patient.responses[0] ?? new Map(), Tag.NumberOfPatientRelatedStudies)} studies, ${responseText(patient.responses[0] ?? new Map(), Tag.NumberOfPatientRelatedInstances)} instances`;
        const study = await find('P', ['QueryRetrieveLevel=STUDY', `PatientID=${pid}`, 'StudyInstanceUID']);
        const studies = study.responses.map((x) => responseText(x, Tag.StudyInstanceUid));
        if (!studies.includes(studyUid)) problems.push(`findscu -P -k QueryRetrieveLevel=STUDY -k PatientID=${pid} -k StudyInstanceUID: ${studies.length} responses, study ${studyUid} missing (${claims})`);
        // By this patient's name alone, in both roots: its part of the study answers (whichever is newest).
        const name = list.map((i) => i.patientName).find((n) => n !== '');
        for (const root of name === undefined ? [] : (['S', 'P'] as const)) {
          const byName = await find(root, ['QueryRetrieveLevel=STUDY', `PatientName=${name}`, 'StudyInstanceUID']);
          if (!byName.responses.some((x) => responseText(x, Tag.StudyInstanceUid) === studyUid)) problems.push(`findscu -${root} -k QueryRetrieveLevel=STUDY -k PatientName=${name}: study ${studyUid} missing`);
        }
        for (const [seriesUid, seriesList] of groupBy(list, (i) => i.seriesUid)) {
          const series = await find('P', ['QueryRetrieveLevel=SERIES', `PatientID=${pid}`, `StudyInstanceUID=${studyUid}`, 'SeriesInstanceUID']);
          const seriesUids = series.responses.map((x) => responseText(x, Tag.SeriesInstanceUid));
          if (!seriesUids.includes(seriesUid)) problems.push(`findscu -P -k QueryRetrieveLevel=SERIES -k PatientID=${pid} -k StudyInstanceUID=${studyUid} -k SeriesInstanceUID: ${seriesUids.length} responses, series ${seriesUid} missing`);
          const img = await find('P', ['QueryRetrieveLevel=IMAGE', `PatientID=${pid}`, `StudyInstanceUID=${studyUid}`, `SeriesInstanceUID=${seriesUid}`, 'SOPInstanceUID']);
          const got = new Set(img.responses.map((x) => responseText(x, Tag.SopInstanceUid)));
          const want = new Set(seriesList.map((i) => i.sopInstanceUid));
          if (got.size !== want.size || [...want].some((u) => !got.has(u))) problems.push(`IMAGE level under ${pid}: got ${[...got].join(', ')}; want ${[...want].join(', ')}`);
        }
      }
    }
    assert.deepEqual(problems, [], `Patient Root hierarchy is inconsistent for a study shared by two PatientIDs:\n${problems.join('\n')}`);
  });

  it('findscu/movescu: refused requests get the documented statuses; unsupported models are not negotiated', async () => {
    requireStored();
    const statusOf = async (tool: 'findscu' | 'movescu', args: string[]) => {
      const extra = tool === 'movescu' ? ['-aem', MOVE_AE] : [];
      const run = await dcmtk(tool, ['-d', '-aec', AE, ...extra, ...args.flatMap((a) => (a.startsWith('-') ? [a] : ['-k', a])), '127.0.0.1', String(port())]);
      return /DIMSE Status\s*:\s*(0x[0-9a-f]{4})/i.exec([...run.output.matchAll(/DIMSE Status\s*:\s*0x[0-9a-f]{4}/gi)].at(-1)?.[0] ?? '')?.[1]?.toLowerCase() ?? `none:\n${run.output.slice(-800)}`;
    };
    // PATIENT level does not exist in Study Root.
    assert.equal(await statusOf('findscu', ['-S', 'QueryRetrieveLevel=PATIENT', 'PatientID']), '0xa900');
    // A unique key, or a value to match, of a lower level than the query level.
    assert.equal(await statusOf('findscu', ['-S', 'QueryRetrieveLevel=STUDY', 'SOPInstanceUID']), '0xa900');
    assert.equal(await statusOf('findscu', ['-S', 'QueryRetrieveLevel=STUDY', 'Modality=CT']), '0xa900');
    // A malformed date key.
    assert.equal(await statusOf('findscu', ['-S', 'QueryRetrieveLevel=STUDY', 'StudyDate=2020xx']), '0xc001');
    // A wildcard in a C-MOVE unique key.
    assert.equal(await statusOf('movescu', ['-S', 'QueryRetrieveLevel=STUDY', 'StudyInstanceUID=1.2.3*']), '0xc002');
    // Patient/Study Only and Modality Worklist are not offered: no presentation context is accepted.
    for (const model of ['-O', '-W']) {
      const run = await dcmtk('findscu', [model, '-aec', AE, '-k', 'QueryRetrieveLevel=PATIENT', '-k', 'PatientID', '127.0.0.1', String(port())]);
      assert.notEqual(run.code, 0);
      assert.match(run.output, /No Acceptable Presentation Contexts/, `findscu ${model}`);
    }
  });

  // -------------------------------------------------------------------------------------------------
  // C-GET and C-MOVE

  /**
   * Checks a received copy against the original (element by element at least) and against what storescu
   * sent (byte for byte). Returns the problems found.
   */
  function checkCopy(inst: Instance, copy: Uint8Array, via: 'get' | 'move'): string[] {
    const problems: string[] = [];
    const vsOriginal = compareInstances(inst.bytes, copy);
    const o = outcome(inst.sopInstanceUid);
    o[via] = vsOriginal.identity;
    if (vsOriginal.identity === 'different') problems.push(`${via} of ${inst.name} differs from the original: ${vsOriginal.differences.join('; ')}`);
    if (vsOriginal.transcodedTo !== undefined) {
      o.notes.push(`${via}: came back as ${tsName[vsOriginal.transcodedTo] ?? vsOriginal.transcodedTo}`);
      // getscu 3.6.7 `+xi` proposes explicit VR little endian (not implicit): the archive has to transcode.
      if (!(via === 'get' && inst.transferSyntaxUid === TS.ImplicitLE)) problems.push(`${via} of ${inst.name}: transcoded to ${vsOriginal.transcodedTo} although its own syntax was proposed`);
      return problems;
    }
    const sent = sentCopies.get(inst.sopInstanceUid);
    if (sent) {
      const vsSent = compareInstances(sent.bytes, copy);
      o[via === 'get' ? 'getAsSent' : 'moveAsSent'] = vsSent.byteIdentical;
      if (!vsSent.byteIdentical) {
        problems.push(`${via} of ${inst.name}: the data set is not byte-identical to what storescu sent (${vsSent.identity}: ${[...vsSent.differences, ...vsSent.tolerated].join('; ') || 'length encoding'})`);
      }
    }
    return problems;
  }

  let getCounter = 0;
  async function getscu(keys: string[], preferredTs: string, level: string): Promise<{ dir: string; output: string; code: number | null }> {
    const dir = join(work, 'get', String(++getCounter).padStart(3, '0'));
    await mkdir(dir, { recursive: true });
    // +B: write what arrives, bit for bit; +x?: propose the stored syntax first for every storage class.
    const run = await dcmtk('getscu', ['-v', '+B', '-S', '-aec', AE, getscuPreference(preferredTs), '-od', dir, '-k', `QueryRetrieveLevel=${level}`, ...keys.flatMap((k) => ['-k', k]), '127.0.0.1', String(port())], 60_000);
    return { dir, output: run.output, code: run.code };
  }

  it('getscu: each study comes back identical (per transfer syntax where a study mixes them)', async () => {
    requireStored();
    const byUid = instancesByUid();
    const problems: string[] = [];
    for (const [studyUid, members] of groupBy(instances, (i) => i.studyUid)) {
      const syntaxes = groupBy(members, (i) => i.transferSyntaxUid);
      // getscu proposes ONE context per storage class with the preferred syntax first, and the archive
      // accepts the first: a study mixing syntaxes of one class is fetched in one getscu per syntax.
      const runs =
        syntaxes.size === 1
          ? [{ ts: members[0]!.transferSyntaxUid, level: 'STUDY', keys: [`StudyInstanceUID=${studyUid}`], expected: members }]
          : [...groupBy(members, (i) => `${i.transferSyntaxUid}|${i.seriesUid}`).values()].map((list) => ({
              ts: list[0]!.transferSyntaxUid,
              level: 'IMAGE',
              keys: [`StudyInstanceUID=${studyUid}`, `SeriesInstanceUID=${list[0]!.seriesUid}`, `SOPInstanceUID=${list.map((i) => i.sopInstanceUid).join('\\')}`],
              expected: list,
            }));
      for (const run of runs) {
        const res = await getscu(run.keys, run.ts, run.level);
        const what = `getscu ${getscuPreference(run.ts)} ${run.level} ${studyUid}`;
        const summary = retrieveSummary(res.output, 'get');
        if (res.code !== 0 || summary.finalStatus !== 'Success' || summary.completed !== run.expected.length) {
          problems.push(`${what}: exit ${res.code}, ${JSON.stringify(summary)}, want ${run.expected.length} completed`);
        }
        const received = await readReceived(res.dir);
        for (const i of run.expected) if (!received.has(i.sopInstanceUid)) problems.push(`${what}: ${i.name} not received`);
        for (const [uid, copy] of received) {
          const inst = byUid.get(uid);
          if (!inst) problems.push(`${what}: unexpected instance ${uid}`);
          else problems.push(...checkCopy(inst, copy.bytes, 'get'));
        }
      }
    }
    assert.deepEqual(problems, []);
  });

  it('getscu: a STUDY-level C-GET of a study mixing JPEG and uncompressed instances of one class', async (t) => {
    requireStored();
    const mixed = [...groupBy(instances, (i) => i.studyUid)].find(([, m]) => new Set(m.map((i) => i.transferSyntaxUid)).size > 1);
    if (!mixed) return t.skip('no study mixes transfer syntaxes');
    const [studyUid, members] = mixed;
    const ts = members.find((i) => i.transferSyntaxUid !== TS.ExplicitLE && i.transferSyntaxUid !== TS.ImplicitLE)?.transferSyntaxUid ?? members[0]!.transferSyntaxUid;
    const res = await getscu([`StudyInstanceUID=${studyUid}`], ts, 'STUDY');
    const summary = retrieveSummary(res.output, 'get');
    const received = await readReceived(res.dir);
    const inAcceptedTs = members.filter((i) => i.transferSyntaxUid === ts);
    t.diagnostic(`study ${studyUid}: ${members.length} instances, getscu ${getscuPreference(ts)}: ${JSON.stringify(summary)}, ${received.size} received`);
    // The archive accepted `ts` for the class and may only send other instances if it can transcode them to it.
    for (const i of inAcceptedTs) assert.ok(received.has(i.sopInstanceUid), `${i.name} not received`);
    assert.equal((summary.completed ?? 0) + (summary.failed ?? 0) + (summary.warning ?? 0), members.length, 'every instance is accounted for');
    assert.equal(summary.completed, received.size);
    for (const i of inAcceptedTs) {
      const cmp = compareInstances(i.bytes, received.get(i.sopInstanceUid)!.bytes);
      assert.notEqual(cmp.identity, 'different', cmp.differences.join('; '));
    }
    if ((summary.failed ?? 0) > 0) assert.match(summary.finalStatus, /Warning|SubOperationsCompleteOneOrMoreFailures/);
  });

  it('movescu: each study to a storescp comes back identical', async () => {
    requireStored();
    assert.ok(moveScp);
    const byUid = instancesByUid();
    const problems: string[] = [];
    for (const [studyUid, members] of groupBy(instances, (i) => i.studyUid)) {
      await rm(moveScp.outDir, { recursive: true, force: true });
      await mkdir(moveScp.outDir, { recursive: true });
      const run = await dcmtk('movescu', ['-v', '-S', '-aec', AE, '-aem', MOVE_AE, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(port())], 60_000);
      const what = `movescu ${studyUid}`;
      const summary = retrieveSummary(run.output, 'move');
      if (run.code !== 0 || summary.finalStatus !== 'Success') problems.push(`${what}: exit ${run.code}, ${JSON.stringify(summary)}\n${run.output.slice(-1500)}`);
      const received = await readReceived(moveScp.outDir);
      for (const i of members) if (!received.has(i.sopInstanceUid)) problems.push(`${what}: ${i.name} not received`);
      for (const [uid, copy] of received) {
        const inst = byUid.get(uid);
        if (!inst) problems.push(`${what}: unexpected instance ${uid}`);
        else problems.push(...checkCopy(inst, copy.bytes, 'move'));
      }
    }
    assert.deepEqual(problems, []);
  });

  it('getscu and movescu: a copy stored in odd-sized chunks (replicas arrive off a byte stream) goes out in even fragments', async () => {
    requireStored();
    assert.ok(peer && moveScp);
    const store = peer.store;
    // The largest uncompressed instance, rewritten in pieces of 65,537 bytes: each one an odd chunk.
    const inst = instances.filter((i) => i.transferSyntaxUid === TS.ExplicitLE).sort((a, b) => b.bytes.length - a.bytes.length)[0]!;
    const entry = (await store.getEntry(inst.sopInstanceUid))!;
    assert.ok(entry.byteLength > 2 * 65_537, `${inst.name} has ${entry.byteLength} bytes`);
    const chunks: Uint8Array[] = [];
    for await (const chunk of store.readInstance(entry)) chunks.push(chunk);
    const whole = Buffer.concat(chunks);
    const pieces: Uint8Array[] = [];
    for (let offset = 0; offset < whole.length; offset += 65_537) pieces.push(whole.subarray(offset, offset + 65_537));
    assert.equal(await store.repairCopy(entry, pieces), 'repaired');

    const keys = [`StudyInstanceUID=${inst.studyUid}`, `SeriesInstanceUID=${inst.seriesUid}`, `SOPInstanceUID=${inst.sopInstanceUid}`];
    const got = await getscu(keys, inst.transferSyntaxUid, 'IMAGE');
    assert.equal(retrieveSummary(got.output, 'get').completed, 1, got.output.slice(-1500));
    const gotCopy = (await readReceived(got.dir)).get(inst.sopInstanceUid);
    assert.ok(gotCopy, 'received by getscu');
    assert.deepEqual(checkCopy(inst, gotCopy.bytes, 'get'), []);

    await rm(moveScp.outDir, { recursive: true, force: true });
    await mkdir(moveScp.outDir, { recursive: true });
    const moved = await dcmtk('movescu', ['-v', '-S', '-aec', AE, '-aem', MOVE_AE, '-k', 'QueryRetrieveLevel=IMAGE', ...keys.flatMap((k) => ['-k', k]), '127.0.0.1', String(port())], 60_000);
    assert.equal(retrieveSummary(moved.output, 'move').finalStatus, 'Success', moved.output.slice(-1500));
    const movedCopy = (await readReceived(moveScp.outDir)).get(inst.sopInstanceUid);
    assert.ok(movedCopy, 'received by the storescp');
    assert.deepEqual(checkCopy(inst, movedCopy.bytes, 'move'), []);
  });

  it('movescu: patient root, one patient, to the storescp', async () => {
    requireStored();
    assert.ok(moveScp);
    const pid = syntheticPatients.bigEndian.id;
    const members = instances.filter((i) => i.patientId === pid);
    await rm(moveScp.outDir, { recursive: true, force: true });
    await mkdir(moveScp.outDir, { recursive: true });
    const run = await dcmtk('movescu', ['-v', '-P', '-aec', AE, '-aem', MOVE_AE, '-k', 'QueryRetrieveLevel=PATIENT', '-k', `PatientID=${pid}`, '127.0.0.1', String(port())]);
    assert.equal(retrieveSummary(run.output, 'move').finalStatus, 'Success', run.output);
    const received = await readReceived(moveScp.outDir);
    assert.deepEqual(new Set(received.keys()), new Set(members.map((i) => i.sopInstanceUid)));
  });

  it('movescu: an unknown destination AE fails with 0xA801', async () => {
    requireStored();
    const studyUid = instances[0]!.studyUid;
    const run = await dcmtk('movescu', ['-d', '-S', '-aec', AE, '-aem', 'NOWHERE', '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(port())]);
    assert.notEqual(run.code, 0, run.output);
    assert.match(run.output, /DIMSE Status\s*:\s*0xa801/i);
    assert.match(run.output, /Refused: MoveDestinationUnknown/);
  });

  it('movescu: a destination that does not answer fails with 0xA702 and says why', async () => {
    requireStored();
    const studyUid = instances[0]!.studyUid;
    const run = await dcmtk('movescu', ['-d', '-S', '-aec', AE, '-aem', 'DOWNSCP', '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(port())]);
    assert.match(run.output, /DIMSE Status\s*:\s*0xa702/i, run.output.slice(-1500));
    assert.match(run.output, /ErrorComment|Error Comment/, run.output.slice(-1500));
    assert.match(run.output, /cannot reach the destination/, run.output.slice(-1500));
  });

  // -------------------------------------------------------------------------------------------------
  // C-CANCEL

  it('findscu --cancel and movescu --cancel: matching and sub-operations stop with status Cancel', async () => {
    assert.ok(moveScp);
    // A study of its own, large enough that neither tool can get all of it before its cancel is read.
    const count = 300;
    const studyUid = '1.2.826.0.1.3680043.10.1453.88.1';
    const series = await writeSeriesToDir(join(work, 'cancel'), { count, rows: 8, columns: 8, study: { uid: studyUid }, patient: { id: 'CANCEL1', name: 'CANCEL^STUDY' } });
    const stored = await dcmtk('storescu', ['-aec', AE, '+sd', '127.0.0.1', String(port()), series.dir], 60_000);
    assert.equal(stored.code, 0, stored.output);

    const found = await dcmtk('findscu', ['-v', '-S', '--cancel', '1', '-aec', AE, '-k', 'QueryRetrieveLevel=IMAGE', '-k', `StudyInstanceUID=${studyUid}`, '-k', 'SeriesInstanceUID', '-k', 'SOPInstanceUID', '127.0.0.1', String(port())]);
    assert.match(found.output, /Sending Cancel Request/, found.output.slice(-1500));
    assert.match(found.output, /Received Final Find Response \(Cancel/, found.output.slice(-1500));
    assert.ok((found.output.match(/Find Response: \d+ \(Pending\)/g)?.length ?? 0) < count, found.output.slice(-1500));

    await rm(moveScp.outDir, { recursive: true, force: true });
    await mkdir(moveScp.outDir, { recursive: true });
    // -d: the final response's counts (PS3.4 C.4.2.1.6) are dumped only at debug level.
    const moved = await dcmtk('movescu', ['-d', '-S', '--cancel', '1', '-aec', AE, '-aem', MOVE_AE, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(port())], 60_000);
    assert.match(moved.output, /Sending Cancel Request/, moved.output.slice(-1500));
    const final = moved.output.slice(moved.output.indexOf('Received Final Move Response'));
    assert.match(final, /DIMSE Status\s*:\s*0xfe00: Cancel/, moved.output.slice(-1500));
    const received = (await readReceived(moveScp.outDir)).size;
    assert.ok(received >= 1 && received < count, `the storescp received ${received} of ${count}`);
    // Remaining counts those not initiated; one in flight the storescp did not answer within the cancel's grace is failed (and may be on disk).
    const counted = (label: string) => Number(new RegExp(`${label} Suboperations\\s*:\\s*(\\d+)`).exec(final)?.[1]);
    const [remaining, completed, failed, warning] = ['Remaining', 'Completed', 'Failed', 'Warning'].map(counted);
    assert.equal(remaining! + completed! + failed! + warning!, count, final.slice(0, 1500));
    assert.ok(remaining! > 0 && completed! <= received && received <= completed! + failed!, `${received} received: ${final.slice(0, 1500)}`);

    const echo = await dcmtk('echoscu', ['-aec', AE, '127.0.0.1', String(port())]);
    assert.equal(echo.code, 0, echo.output);
  });

  // -------------------------------------------------------------------------------------------------
  // Report

  it('report: identity of every instance (sent by storescu, C-GET, C-MOVE)', (t) => {
    requireStored();
    const rows = instances.map((i) => {
      const o = outcomes.get(i.sopInstanceUid) ?? { notes: [] };
      return { i, o };
    });
    t.diagnostic('instance | transfer syntax | storescu sent vs original | C-GET vs original | C-MOVE vs original | notes');
    for (const { i, o } of rows) {
      t.diagnostic(`${i.name} | ${tsName[i.transferSyntaxUid] ?? i.transferSyntaxUid} | ${o.sent ?? '-'} | ${o.get ?? '-'} | ${o.move ?? '-'} | ${o.notes.join(' / ')}`);
    }
    const count = (via: 'sent' | 'get' | 'move', id: Identity) => rows.filter(({ o }) => o[via] === id).length;
    t.diagnostic(`byte-identical to the original: sent ${count('sent', 'byte-identical')}, get ${count('get', 'byte-identical')}, move ${count('move', 'byte-identical')} of ${rows.length}`);
    t.diagnostic(`element-identical only: sent ${count('sent', 'element-identical')}, get ${count('get', 'element-identical')}, move ${count('move', 'element-identical')}`);
    t.diagnostic(
      `byte-identical to what storescu sent: get ${rows.filter(({ o }) => o.getAsSent).length}, move ${rows.filter(({ o }) => o.moveAsSent).length} of ${rows.length}` +
        ` (the rest of the C-GET copies were implicit VR instances that getscu 3.6.7 can only accept in explicit VR)`,
    );
    for (const { i, o } of rows) {
      assert.ok(o.get, `${i.name} was not retrieved by C-GET`);
      assert.ok(o.move, `${i.name} was not retrieved by C-MOVE`);
    }
  });
});
