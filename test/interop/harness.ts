/**
 * Helpers of the DCMTK interop suite: the corpus (real files from ../shared/dicom-corpus plus synthetic
 * instances), what each instance says about itself (the expected query model), the DCMTK option that
 * proposes/prefers each transfer syntax, and thin wrappers around the tools with bounded run times.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { corpusDirectory } from '../../src/codec/dataset/test-fixtures.ts';
import { runTool, type RunToolResult } from '../support/dicom-tools.ts';
import { makeInstance, SopClass, TransferSyntax, uidFromSeed, type InstanceOptions } from '../support/synthetic-dicom.ts';
import { datasetText, flattenFile, TS, type FlatDataset } from './compare.ts';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** ../shared/dicom-corpus/public beside the repository, or under PACS_MESH_CORPUS_DIR, as for the unit tests. */
export const corpusDir = resolve(corpusDirectory, 'public');

/** Tool runs are bounded; a tool that hangs fails its test instead of the suite. */
export const toolTimeoutMs = 30_000;

// ---------------------------------------------------------------------------------------------------
// Instances

export interface Instance {
  /** Corpus file name, or "synthetic/<label>". */
  name: string;
  source: 'corpus' | 'synthetic';
  path: string;
  bytes: Uint8Array;
  transferSyntaxUid: string;
  sopClassUid: string;
  sopInstanceUid: string;
  /** '' when absent (the archive files such instances under one patient with an empty ID). */
  patientId: string;
  /** Raw bytes as latin1 (so UTF-8 names are compared as bytes). */
  patientName: string;
  studyUid: string;
  studyDate: string;
  seriesUid: string;
  modality: string;
  specificCharacterSet: string;
}

function describeInstance(name: string, source: Instance['source'], path: string, bytes: Uint8Array): Instance {
  const { part10, flat } = flattenFile(bytes);
  const text = (tag: number) => datasetText(flat, tag) ?? '';
  const sopInstanceUid = text(0x00080018);
  const studyUid = text(0x0020000d);
  const seriesUid = text(0x0020000e);
  if (!sopInstanceUid || !studyUid || !seriesUid) throw new Error(`${name}: no SOP Instance / Study / Series Instance UID in the data set`);
  return {
    name,
    source,
    path,
    bytes,
    transferSyntaxUid: part10.transferSyntaxUid,
    sopClassUid: text(0x00080016),
    sopInstanceUid,
    patientId: text(0x00100020),
    patientName: text(0x00100010),
    studyUid,
    studyDate: text(0x00080020),
    seriesUid,
    modality: text(0x00080060),
    specificCharacterSet: text(0x00080005),
  };
}

/**
 * The real files. Fails with an explicit message when the corpus is not there (CI clones the repository
 * with `shared/` beside it).
 */
export function loadCorpus(): Instance[] {
  if (!existsSync(corpusDir)) {
    throw new Error(`DICOM corpus not found at ${corpusDir}: the interop suite needs ../shared/dicom-corpus/public beside the repository, or PACS_MESH_CORPUS_DIR naming the corpus (see ../shared/dicom-corpus/README.md)`);
  }
  const files = readdirSync(corpusDir).filter((f) => f.endsWith('.dcm')).sort();
  if (files.length === 0) throw new Error(`DICOM corpus at ${corpusDir} holds no .dcm file`);
  const instances = files.map((f) => {
    const path = join(corpusDir, f);
    return describeInstance(f, 'corpus', path, readFileSync(path));
  });
  checkManifest(instances);
  return instances;
}

/** The manifest (when present) must agree with the files on transfer syntax and SOP instance UID. */
function checkManifest(instances: Instance[]): void {
  const manifestPath = [join(corpusDir, 'manifest.tsv'), join(corpusDir, '..', 'manifest.tsv')].find((p) => existsSync(p));
  if (manifestPath === undefined) return;
  const [header, ...rows] = readFileSync(manifestPath, 'utf8').split('\n').filter((l) => l.trim().length > 0);
  const columns = header!.split('\t');
  const col = (name: string) => columns.indexOf(name);
  const [fileCol, tsCol, uidCol] = [col('file'), col('transferSyntaxUID'), col('sopInstanceUID')];
  if (fileCol < 0 || tsCol < 0) return;
  const byFile = new Map(rows.map((r) => r.split('\t')).map((cells) => [cells[fileCol]!, cells]));
  for (const inst of instances) {
    const cells = byFile.get(inst.name);
    if (cells === undefined) continue;
    if (cells[tsCol] !== inst.transferSyntaxUid) throw new Error(`${inst.name}: manifest says transfer syntax ${cells[tsCol]}, the file has ${inst.transferSyntaxUid}`);
    if (uidCol >= 0 && cells[uidCol] !== inst.sopInstanceUid) throw new Error(`${inst.name}: manifest says SOP instance ${cells[uidCol]}, the data set has ${inst.sopInstanceUid}`);
  }
}

/** Synthetic instances for what the corpus lacks: big endian, deflate, private elements, non-ASCII text. */
export const syntheticPatients = {
  bigEndian: { id: 'INTEROP-BE', name: 'INTEROP^BIG ENDIAN', birthDate: '19610203', sex: 'M' as const },
  utf8: { id: 'INTEROP-UTF8', name: 'Müller^Jürgen', birthDate: '19720304', sex: 'M' as const },
  latin1: { id: 'INTEROP-L1', name: 'Gómez^José', birthDate: '19830405', sex: 'M' as const },
  deflated: { id: 'INTEROP-DEFL', name: 'INTEROP^DEFLATED', birthDate: '19940506', sex: 'F' as const },
};

export async function writeSynthetic(dir: string): Promise<Instance[]> {
  await mkdir(dir, { recursive: true });
  const uid = (label: string) => uidFromSeed(`pacs-mesh interop/${label}`);
  const small = { rows: 32, columns: 32 } as const;
  const specs: Array<[string, InstanceOptions]> = [
    ['be-1', {
      ...small, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian, patient: syntheticPatients.bigEndian,
      study: { uid: uid('study-be'), date: '20230115', description: 'BIG ENDIAN STUDY', accession: 'INTBE1' },
      series: { uid: uid('series-be'), modality: 'CT', number: 1 }, sopInstanceUid: uid('be-1'), instanceNumber: 1,
    }],
    ['be-2-private', {
      ...small, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian, patient: syntheticPatients.bigEndian,
      study: { uid: uid('study-be'), date: '20230115', description: 'BIG ENDIAN STUDY', accession: 'INTBE1' },
      series: { uid: uid('series-be'), modality: 'CT', number: 1 }, sopInstanceUid: uid('be-2'), instanceNumber: 2, privateElements: true,
    }],
    ['le-earlier-study', {
      ...small, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, patient: syntheticPatients.bigEndian, sopClassUid: SopClass.MrImageStorage,
      study: { uid: uid('study-be-earlier'), date: '20221231', description: 'EARLIER STUDY', accession: 'INTBE0' },
      series: { uid: uid('series-be-earlier'), modality: 'MR', number: 1 }, sopInstanceUid: uid('le-earlier'), instanceNumber: 1,
    }],
    ['utf8-private', {
      ...small, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, patient: syntheticPatients.utf8, specificCharacterSet: 'ISO_IR 192',
      sopClassUid: SopClass.MrImageStorage, privateElements: { creator: 'PACSMESH ÜBER', elements: [{ element: 0x01, vr: 'LO', value: 'privé – ünïcødé' }, { element: 0x02, vr: 'UL', value: [0xdeadbeef] }] },
      study: { uid: uid('study-utf8'), date: '20230220', description: 'Kopf – Übersicht', accession: 'INTU8' },
      series: { uid: uid('series-utf8'), modality: 'MR', number: 3, description: 'Schädel' }, sopInstanceUid: uid('utf8'), instanceNumber: 1,
    }],
    ['latin1-implicit-private', {
      ...small, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian, patient: syntheticPatients.latin1, specificCharacterSet: 'ISO_IR 100',
      sopClassUid: SopClass.SecondaryCaptureImageStorage, bitsAllocated: 8, privateElements: true,
      study: { uid: uid('study-latin1'), date: '20230310', description: 'Estudio cráneo', accession: 'INTL1' },
      series: { uid: uid('series-latin1'), modality: 'OT', number: 1 }, sopInstanceUid: uid('latin1'), instanceNumber: 1,
    }],
    ['deflated', {
      ...small, transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian, patient: syntheticPatients.deflated,
      study: { uid: uid('study-deflated'), date: '20230405', description: 'DEFLATED STUDY', accession: 'INTDF' },
      series: { uid: uid('series-deflated'), modality: 'CT', number: 1 }, sopInstanceUid: uid('deflated'), instanceNumber: 1,
    }],
  ];
  const out: Instance[] = [];
  for (const [label, opts] of specs) {
    const path = join(dir, `${label}.dcm`);
    const bytes = makeInstance(opts);
    await writeFile(path, bytes);
    out.push(describeInstance(`synthetic/${label}`, 'synthetic', path, bytes));
  }
  return out;
}

/** An instance of a SOP class no archive knows (1.2.3.4.5), for the refusal test. */
export async function writeUnknownSopClass(dir: string): Promise<string> {
  const path = join(dir, 'unknown-sop-class.dcm');
  await writeFile(path, makeInstance({ rows: 8, columns: 8, sopClassUid: '1.2.3.4.5', sopInstanceUid: uidFromSeed('pacs-mesh interop/unknown-class'), patient: { id: 'INTEROP-UNKNOWN' } }));
  return path;
}

/**
 * storescu refuses to read a file of an unknown SOP class unless a configuration file proposes it:
 * this profile proposes 1.2.3.4.5 (and Verification, so that the association has one acceptable context).
 */
export async function writeUnknownClassProfile(dir: string): Promise<string> {
  const path = join(dir, 'unknown-class.cfg');
  await writeFile(
    path,
    [
      '[[TransferSyntaxes]]',
      '[Uncompressed]',
      'TransferSyntax1 = LittleEndianExplicit',
      'TransferSyntax2 = LittleEndianImplicit',
      '',
      '[[PresentationContexts]]',
      '[Unknown]',
      'PresentationContext1 = 1.2.3.4.5\\Uncompressed',
      'PresentationContext2 = VerificationSOPClass\\Uncompressed',
      '',
      '[[Profiles]]',
      '[Default]',
      'PresentationContexts = Unknown',
      '',
    ].join('\n'),
  );
  return path;
}

// ---------------------------------------------------------------------------------------------------
// Transfer syntax options

/** storescu `-x?` (propose) and getscu/storescp `+x?` (prefer) letter for each syntax. */
const syntaxLetters: Record<string, string> = {
  [TS.ExplicitLE]: 'e',
  [TS.ImplicitLE]: 'i',
  [TS.ExplicitBE]: 'b',
  [TS.DeflatedLE]: 'd',
  [TS.JpegBaseline]: 'y',
  '1.2.840.10008.1.2.4.51': 'x',
  [TS.JpegLosslessSv1]: 's',
  [TS.JpegLsLossless]: 't',
  '1.2.840.10008.1.2.4.81': 'u',
  [TS.Jpeg2000Lossless]: 'v',
  [TS.Jpeg2000]: 'w',
  [TS.Rle]: 'r',
};

function letterFor(transferSyntaxUid: string): string {
  const letter = syntaxLetters[transferSyntaxUid];
  if (letter === undefined) throw new Error(`no DCMTK option proposes transfer syntax ${transferSyntaxUid}: extend syntaxLetters in test/interop/harness.ts`);
  return letter;
}

/** storescu: propose this syntax (plus the uncompressed ones DCMTK always adds). */
export const storescuProposal = (ts: string) => `-x${letterFor(ts)}`;
/** getscu: prefer this syntax for incoming C-STORE sub-operations (it is then proposed first). */
export const getscuPreference = (ts: string) => `+x${letterFor(ts)}`;

export const tsName: Record<string, string> = {
  [TS.ExplicitLE]: 'explicit LE',
  [TS.ImplicitLE]: 'implicit LE',
  [TS.ExplicitBE]: 'explicit BE',
  [TS.DeflatedLE]: 'deflated LE',
  [TS.JpegBaseline]: 'JPEG baseline',
  [TS.Jpeg2000Lossless]: 'JPEG 2000 lossless',
  [TS.Rle]: 'RLE lossless',
};

// ---------------------------------------------------------------------------------------------------
// Tools

/** Runs a DCMTK tool with TCP_NODELAY=1 and a bounded run time; a timeout is an error. */
export async function dcmtk(tool: string, args: string[], timeoutMs = toolTimeoutMs): Promise<RunToolResult & { output: string }> {
  const result = await runTool(tool, args, { timeoutMs, env: { TCP_NODELAY: '1' } });
  if (result.timedOut) throw new Error(`${tool} ${args.join(' ')} timed out after ${timeoutMs} ms:\n${result.stdout}${result.stderr}`);
  return { ...result, output: `${result.stdout}\n${result.stderr}` };
}

/** storescu of `instances` to the peer at `port` (AE PACSMESH), each proposing its own transfer syntax; every one must succeed. */
export async function storeWithStorescu(port: number, instances: readonly Instance[]): Promise<void> {
  for (const [ts, group] of groupBy(instances, (instance) => instance.transferSyntaxUid)) {
    const run = await dcmtk('storescu', ['-R', storescuProposal(ts), '-aec', 'PACSMESH', '127.0.0.1', String(port), ...group.map((instance) => instance.path)], 60_000);
    if (run.code !== 0) throw new Error(`storescu ${tsName[ts] ?? ts} failed:\n${run.output}`);
  }
}

/** Reads every DICOM file of a directory, keyed by the SOP Instance UID of its data set. */
export async function readReceived(dir: string): Promise<Map<string, { file: string; bytes: Uint8Array }>> {
  const out = new Map<string, { file: string; bytes: Uint8Array }>();
  if (!existsSync(dir)) return out;
  for (const f of (await readdir(dir)).sort()) {
    const file = join(dir, f);
    const bytes = await readFile(file);
    let uid: string | undefined;
    try {
      uid = datasetText(flattenFile(bytes).flat, 0x00080018);
    } catch (error) {
      throw new Error(`received file ${file} does not parse: ${(error as Error).message}`);
    }
    if (uid === undefined) throw new Error(`received file ${file} has no SOP Instance UID`);
    out.set(uid, { file, bytes });
  }
  return out;
}

export interface FindResult {
  status: string;
  responses: FlatDataset[];
  output: string;
}

let findCounter = 0;

/**
 * findscu with `-X`: every pending response is written to rspNNNN.dcm in a fresh directory and parsed
 * here; the final status is read from the verbose log ("Received Final Find Response (Success)").
 */
export async function findscu(opts: { port: number; calledAe: string; root: 'P' | 'S'; keys: string[]; workDir: string }): Promise<FindResult> {
  const dir = join(opts.workDir, `find-${String(++findCounter).padStart(4, '0')}`);
  await mkdir(dir, { recursive: true });
  const args = ['-v', `-${opts.root}`, '-aec', opts.calledAe, '-X', '-od', dir, ...opts.keys.flatMap((k) => ['-k', k]), '127.0.0.1', String(opts.port)];
  const run = await dcmtk('findscu', args);
  const status = /Received Final Find Response \(([^)]*)\)/.exec(run.output)?.[1] ?? `no final response (exit ${run.code})`;
  const responses: FlatDataset[] = [];
  for (const f of (await readdir(dir)).filter((n) => /^rsp\d+\.dcm$/.test(n)).sort()) {
    responses.push(flattenFile(await readFile(join(dir, f))).flat);
  }
  return { status, responses, output: run.output };
}

/** Sub-operation counts and final status as getscu/movescu print them (-v). */
export function retrieveSummary(output: string, kind: 'get' | 'move'): { finalStatus: string; completed?: number; failed?: number; warning?: number } {
  const finalStatus =
    kind === 'get'
      ? ([...output.matchAll(/Received C-GET Response \(([^)]*)\)/g)].at(-1)?.[1] ?? 'none')
      : (/Received Final Move Response \(([^)]*)\)/.exec(output)?.[1] ?? 'none');
  const num = (label: string) => {
    const m = [...output.matchAll(new RegExp(`Number of ${label} Suboperations\\s*:\\s*(\\d+)`, 'g'))].at(-1);
    return m ? Number(m[1]) : undefined;
  };
  return { finalStatus, completed: num('Completed'), failed: num('Failed'), warning: num('Warning') };
}

// ---------------------------------------------------------------------------------------------------
// Expectations

const foldAscii = (text: string) => text.replace(/[A-Z]/g, (c) => c.toLowerCase());

/**
 * DICOM wildcard matching (* and ?) on the raw value. `ignoreAsciiCase` for PN, which PS3.4 C.2.2.2.1
 * allows to match case-insensitively (the archive does, for ASCII letters).
 */
export function wildcardMatch(pattern: string, value: string, opts: { ignoreAsciiCase?: boolean } = {}): boolean {
  const [p, v] = opts.ignoreAsciiCase ? [foldAscii(pattern), foldAscii(value)] : [pattern, value];
  const re = new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 's');
  return re.test(v);
}

/** A DA value as YYYYMMDD: the legacy ACR-NEMA form yyyy.mm.dd (PS3.5 6.2, recommended) is converted. */
export function normalizeDate(value: string): string {
  return /^\d{4}\.\d{2}\.\d{2}$/.test(value) ? value.replaceAll('.', '') : value;
}

/**
 * Studies an instance-level predicate selects. An archive reports a study's attributes from one of its
 * instances, so a study whose instances disagree (the corpus has one: same StudyInstanceUID, two
 * PatientIDs) may or may not be returned; a study whose instances all match must be; none, must not.
 */
export function expectedStudies(instances: Instance[], predicate: (i: Instance) => boolean): { must: Set<string>; may: Set<string> } {
  const byStudy = groupBy(instances, (i) => i.studyUid);
  const must = new Set<string>();
  const may = new Set<string>();
  for (const [study, members] of byStudy) {
    const matching = members.filter(predicate).length;
    if (matching === members.length) must.add(study);
    else if (matching > 0) may.add(study);
  }
  return { must, may };
}

export function groupBy<T>(items: readonly T[], key: (item: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = out.get(k);
    if (list) list.push(item);
    else out.set(k, [item]);
  }
  return out;
}

/** A top-level text value of a C-FIND response ('' when absent). */
export const responseText = (flat: FlatDataset, tag: number) => datasetText(flat, tag) ?? '';
