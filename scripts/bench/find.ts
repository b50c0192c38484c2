/**
 * C-FIND benchmark: study searches over an archive of many small studies, pacs-mesh beside Orthanc.
 *
 *   node --import tsx scripts/bench/find.ts [--studies 1000] [--instances 3] [--queries 15] [--rows 64] [--columns 64]
 *                                          [--servers orthanc,pacs-mesh] [--tmp <dir>] [--keep]
 *
 * One patient per study (FIND^PATIENT<n>, FINDP<n>). Each server starts fresh, takes every study over one
 * storescu association (its count is checked), then answers the same findscu searches, one process and
 * association each, in turn with the other servers (query 1 at every server, then query 2, ...):
 *   name      Study Root, STUDY level, PatientName=FIND^PATIENT<k> (one study; no PatientID or UID key)
 *   wildcard  the same with PatientName=FIND^PATIENT12* (the studies 12, 120-129, ...)
 *   suffix    PatientName=*ATIENT<k> (one study; a leading wildcard: pacs-mesh's newest-instance scan)
 *   week      StudyDate=<a 7-day range> (each study has its own day, from 2020-01-01 on: 7 studies)
 *   id        PatientID=FINDP<k> (an indexed lookup, for reference)
 *   idprefix  PatientID=FINDP12* (the wildcard's studies; pacs-mesh reads the patient index range of FINDP12)
 *   echo      echoscu: the cost of the process and the association alone
 * each asking for StudyInstanceUID, PatientName and NumberOfStudyRelatedInstances. Every answer's count
 * of matches is checked. Medians per search and the ratios pacs-mesh / Orthanc (time) are printed and
 * written to scripts/bench/out/find-<timestamp>.json.
 */
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool } from '../../test/support/dicom-tools.ts';
import { TransferSyntax, writeSeriesToDir } from '../../test/support/synthetic-dicom.ts';
import { SERVER_FACTORIES, startBenchServer, type BenchServer, type BenchServerResult } from './lib/index.ts';
import { choicesArg, fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench } from './lib/run.ts';

const CLIENT_AE = 'BENCH';
const SEARCHES = ['name', 'wildcard', 'suffix', 'week', 'id', 'idprefix', 'echo'] as const;
const DAY_MS = 86_400_000;
/** Study n's date: 2020-01-01 plus n days, as YYYYMMDD. */
const studyDate = (study: number): string => new Date(Date.UTC(2020, 0, 1) + study * DAY_MS).toISOString().slice(0, 10).replaceAll('-', '');
type Search = (typeof SEARCHES)[number];

interface ServerResult extends BenchServerResult {
  loadSeconds?: number;
  timesMs: Record<Search, number[]>;
  medianMs?: Record<Search, number>;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const studies = intArg(args, 'studies', 1000);
  const instancesPerStudy = intArg(args, 'instances', 3);
  const queries = intArg(args, 'queries', 15);
  const rows = intArg(args, 'rows', 64);
  const columns = intArg(args, 'columns', 64);
  const serverIds = choicesArg(args, 'servers', Object.keys(SERVER_FACTORIES), ['orthanc', 'pacs-mesh']);
  const bench = await startBench('find', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const inputDir = join(workDir, 'input');
  const generatedAt = performance.now();
  for (let study = 0; study < studies; study++) {
    await writeSeriesToDir(join(inputDir, `study${study}`), {
      count: instancesPerStudy,
      rows,
      columns,
      bitsAllocated: 16,
      transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
      uidSeed: `find-bench-${startedAt}-${study}`,
      patient: { id: `FINDP${study}`, name: `FIND^PATIENT${study}` },
      study: { description: 'FIND BENCHMARK', accession: `FA${study}`, date: studyDate(study) },
      series: { modality: 'CT', description: 'SYNTHETIC CT', number: 1 },
    });
  }
  const total = studies * instancesPerStudy;
  console.log(`generated ${studies} studies of ${instancesPerStudy} CT instances ${rows}x${columns} in ${((performance.now() - generatedAt) / 1000).toFixed(1)} s`);
  const wildcardMatches = Array.from({ length: studies }, (_, study) => String(study)).filter((n) => n.startsWith('12')).length;

  const results: ServerResult[] = [];
  const running: Array<{ result: ServerResult; server: BenchServer; dataDir: string }> = [];
  try {
    for (const id of serverIds) {
      const factory = SERVER_FACTORIES[id]!;
      const result: ServerResult = { id, name: factory.name, version: await factory.version().catch(() => undefined), status: 'ok', timesMs: { name: [], wildcard: [], suffix: [], week: [], id: [], idprefix: [], echo: [] } };
      results.push(result);
      const dataDir = await mkdtemp(join(workDir, `${id}-`));
      const server = await startBenchServer(result, dataDir, { DicomAlwaysAllowFind: true });
      if (!server) continue;
      running.push({ result, server, dataDir });
      const loaded = await runTool('storescu', ['-aet', CLIENT_AE, '-aec', server.aeTitle, '+sd', '+r', server.host, String(server.dicomPort), inputDir], {
        timeoutMs: 1_800_000,
        env: { TCP_NODELAY: '1' },
      });
      result.loadSeconds = loaded.elapsedMs / 1000;
      const stored = await server.countStored().catch(() => -1);
      console.log(`${factory.name}: stored ${stored}/${total} in ${fmt(result.loadSeconds, 1)} s`);
      if (loaded.code !== 0 || stored !== total) {
        result.status = 'failed';
        result.message = `storescu exit ${loaded.code}, stored ${stored}/${total}`;
      }
    }

    // Searches interleaved across servers, so that a change of machine load affects them alike.
    for (let query = 0; query < queries; query++) {
      const patient = (query * 7919) % studies;
      for (const { result, server } of running) {
        if (result.status !== 'ok') continue;
        for (const search of SEARCHES) {
          const expected = search === 'wildcard' || search === 'idprefix' ? wildcardMatches : search === 'week' ? Math.min(7, studies - patient) : 1;
          const keys =
            search === 'name'
              ? [`PatientName=FIND^PATIENT${patient}`]
              : search === 'wildcard'
                ? ['PatientName=FIND^PATIENT12*']
                : search === 'suffix'
                  ? [`PatientName=*ATIENT${patient}`]
                  : search === 'week'
                    ? [`StudyDate=${studyDate(patient)}-${studyDate(patient + 6)}`]
                    : search === 'idprefix'
                      ? ['PatientID=FINDP12*']
                      : [`PatientID=FINDP${patient}`];
          const timed = search === 'echo' ? await echo(server) : await find(server, keys, join(workDir, `${result.id}-${search}-${query}`));
          if (timed.matches !== undefined && timed.matches !== expected) {
            result.status = 'failed';
            result.message = `${search} search ${query}: ${timed.matches} matches, expected ${expected}`;
            console.log(`!! ${result.name}: ${result.message}`);
          }
          result.timesMs[search].push(timed.elapsedMs);
        }
      }
    }
  } finally {
    for (const { server, dataDir } of running) {
      await server.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  }
  for (const result of results) {
    if (result.timesMs.name.length > 0) result.medianMs = Object.fromEntries(SEARCHES.map((s) => [s, median(result.timesMs[s])])) as Record<Search, number>;
  }

  const mesh = results.find((r) => r.id === 'pacs-mesh')?.medianMs;
  const orthanc = results.find((r) => r.id === 'orthanc')?.medianMs;
  const ratio = (search: Search): number | undefined => (mesh && orthanc ? mesh[search] / orthanc[search] : undefined);
  console.log(`\nC-FIND: ${studies} studies x ${instancesPerStudy} instances (${total}), one findscu process per search, medians of ${queries}\n`);
  console.log(
    table(
      ['server', 'load s', ...SEARCHES.map((s) => `${s} ms`), 'version / note'],
      results.map((r) => [
        r.name,
        fmt(r.loadSeconds, 1),
        ...SEARCHES.map((s) => fmt(r.medianMs?.[s], 1)),
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${r.message ?? ''}`,
      ]),
    ),
  );
  console.log('');
  for (const search of SEARCHES) {
    const value = ratio(search);
    console.log(`pacs-mesh / Orthanc, ${search.padEnd(8)}: ${value === undefined ? 'n/a' : `${value.toFixed(2)}x the time`}`);
  }
  const file = await writeResult('find', {
    benchmark: 'find',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: { studies, instancesPerStudy, queries, rows, columns, wildcardMatches, client: 'findscu -S (one process and association per search)' },
    servers: results,
    ratios: Object.fromEntries(SEARCHES.map((s) => [s, ratio(s) ?? null])),
  });
  console.log(`\nresults: ${file}`);
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

/** One findscu search at STUDY level (Study Root); each pending response is written to a file, counted. */
async function find(server: BenchServer, keys: string[], outputDir: string): Promise<{ elapsedMs: number; matches: number }> {
  await mkdir(outputDir, { recursive: true });
  const returned = ['StudyInstanceUID', 'PatientName', 'PatientID', 'NumberOfStudyRelatedInstances'].filter((key) => !keys.some((k) => k.startsWith(`${key}=`)));
  const args = ['-S', '-aet', CLIENT_AE, '-aec', server.aeTitle, '-X', '-od', outputDir, '-k', 'QueryRetrieveLevel=STUDY', ...[...keys, ...returned].flatMap((k) => ['-k', k]), server.host, String(server.dicomPort)];
  const run = await runTool('findscu', args, { timeoutMs: 120_000, env: { TCP_NODELAY: '1' } });
  if (run.code !== 0) throw new Error(`findscu exit ${run.code}: ${run.stderr.slice(-500)}`);
  const matches = (await readdir(outputDir)).filter((name) => name.startsWith('rsp')).length;
  await rm(outputDir, { recursive: true, force: true });
  return { elapsedMs: run.elapsedMs, matches };
}

async function echo(server: BenchServer): Promise<{ elapsedMs: number; matches?: undefined }> {
  const run = await runTool('echoscu', ['-aet', CLIENT_AE, '-aec', server.aeTitle, server.host, String(server.dicomPort)], { timeoutMs: 60_000, env: { TCP_NODELAY: '1' } });
  if (run.code !== 0) throw new Error(`echoscu exit ${run.code}: ${run.stderr.slice(-500)}`);
  return { elapsedMs: run.elapsedMs };
}

runBench(main);
