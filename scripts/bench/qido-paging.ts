/**
 * QIDO-RS paging benchmark: the first page and a page deep in a large result, pacs-mesh beside Orthanc with
 * its DICOMweb plugin, the same client (Node's fetch) and the same archive at both.
 *
 *   node --import tsx scripts/bench/qido-paging.ts [--studies 4000] [--instances 5] [--limit 100] [--queries 5]
 *                                                  [--all-pages 1] [--port-base <n>] [--tmp <dir>] [--keep]
 *
 * `--studies` studies of `--instances` small CT instances each (one patient per study) are sent to each
 * server over one storescu association. Then, interleaved across the servers:
 *   studies-first     GET /studies?limit=L
 *   studies-deep-jump GET /studies?offset=<last full page>&limit=L, no page asked before it: a walk from the first match
 *                     (pacs-mesh passes the matches before the offset on their index keys: no attribute is matched)
 *   studies-deep-next the same page asked right after the page before it (a viewer paging on): pacs-mesh resumes
 *                     where that page ended; the page before is asked untimed
 *   instances-first, instances-deep-jump, instances-deep-next: the same over /instances (page 200 by default)
 * The jump and next searches name their includefield attributes in two orders (the same answer): pacs-mesh
 * keeps where a search's page ended per search, so a jump never starts from the end of a page asked for `next`.
 * `--all-pages 1` (the default; `0` skips it): also the time to page through every instance once (L a page), per server.
 * Every answer's count is checked. Medians, ratios (pacs-mesh / Orthanc, deep / first) are printed and written
 * to scripts/bench/out/qido-paging-<timestamp>.json.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool } from '../../test/support/dicom-tools.ts';
import { TransferSyntax, writeSeriesToDir } from '../../test/support/synthetic-dicom.ts';
import { pacsMeshFactory, startOrthanc, type BenchServer, type BenchServerResult } from './lib/index.ts';
import { orthancVersion } from './lib/orthanc.ts';
import { fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench } from './lib/run.ts';

const dicomWebPlugin = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';
const SEARCHES = ['studies-first', 'studies-deep-jump', 'studies-deep-next', 'instances-first', 'instances-deep-jump', 'instances-deep-next'] as const;
type Search = (typeof SEARCHES)[number];
const JUMP_FIELDS = 'includefield=StudyDescription,00101010';
const NEXT_FIELDS = 'includefield=00101010,StudyDescription';

interface ServerResult extends BenchServerResult {
  loadSeconds?: number;
  timesMs: Record<Search, number[]>;
  medianMs?: Record<Search, number>;
  allPagesSeconds?: number;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const studies = intArg(args, 'studies', 4000);
  const instancesPerStudy = intArg(args, 'instances', 5);
  const limit = intArg(args, 'limit', 100);
  const queries = intArg(args, 'queries', 5);
  const allPages = intArg(args, 'all-pages', 1, 0);
  const portBase = args.has('port-base') ? intArg(args, 'port-base', 0) : undefined;
  const bench = await startBench('qido-paging', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;
  const total = studies * instancesPerStudy;
  const deepOffset = (count: number): number => Math.floor((count - 1) / limit) * limit;

  const inputDir = join(workDir, 'input');
  for (let study = 0; study < studies; study++) {
    await writeSeriesToDir(join(inputDir, `study${study}`), {
      count: instancesPerStudy,
      rows: 8,
      columns: 8,
      bitsAllocated: 16,
      transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
      uidSeed: `qido-paging-${startedAt}-${study}`,
      patient: { id: `QPP${study}`, name: `QIDO^PAGING${study}` },
      study: { description: 'QIDO PAGING', accession: `QA${study}`, date: '20240101' },
      series: { modality: 'CT', description: 'SYNTHETIC CT', number: 1 },
    });
  }

  const results: ServerResult[] = [];
  const running: Array<{ result: ServerResult; server: BenchServer; base: string; dataDir: string }> = [];
  const timesMs = (): Record<Search, number[]> => Object.fromEntries(SEARCHES.map((s) => [s, []])) as unknown as Record<Search, number[]>;
  try {
    for (const [index, id] of (['orthanc', 'pacs-mesh'] as const).entries()) {
      const result: ServerResult = { id, name: id === 'orthanc' ? 'Orthanc' : 'pacs-mesh', version: id === 'orthanc' ? await orthancVersion() : await pacsMeshFactory.version(), status: 'ok', timesMs: timesMs() };
      results.push(result);
      const dataDir = await mkdtemp(join(workDir, `${id}-`));
      const ports = portBase === undefined ? {} : { dicomPort: portBase + 2 * index, httpPort: portBase + 2 * index + 1 };
      let server: BenchServer;
      try {
        server = id === 'orthanc'
          ? await startOrthanc({ dataDir, ...ports, config: { Plugins: [dicomWebPlugin], DicomWeb: { Enable: true, Root: '/dicom-web/' } } })
          : await pacsMeshFactory.start({ dataDir, ...ports });
      } catch (error) {
        result.status = 'skipped';
        result.message = `${result.name} failed to start: ${(error as Error).message.split('\n')[0]}`;
        console.log(`!! SKIPPED ${result.message}`);
        continue;
      }
      running.push({ result, server, base: `http://127.0.0.1:${server.httpPort!}/dicom-web`, dataDir });
      const loaded = await runTool('storescu', ['-aet', 'BENCH', '-aec', server.aeTitle, '+sd', '+r', server.host, String(server.dicomPort), inputDir], { timeoutMs: 3_600_000, env: { TCP_NODELAY: '1' } });
      result.loadSeconds = loaded.elapsedMs / 1000;
      const stored = await server.countStored().catch(() => -1);
      console.log(`${result.name}: stored ${stored}/${total} in ${fmt(result.loadSeconds, 1)} s`);
      if (loaded.code !== 0 || stored !== total) {
        result.status = 'failed';
        result.message = `storescu exit ${loaded.code}, stored ${stored}/${total}`;
      }
    }

    const searches: Record<Search, { path: string; fields: string; offset: number; expected: (offset: number) => number; before?: number }> = {
      'studies-first': { path: '/studies', fields: JUMP_FIELDS, offset: 0, expected: () => Math.min(limit, studies) },
      'studies-deep-jump': { path: '/studies', fields: JUMP_FIELDS, offset: deepOffset(studies), expected: (o) => studies - o },
      'studies-deep-next': { path: '/studies', fields: NEXT_FIELDS, offset: deepOffset(studies), expected: (o) => studies - o, before: deepOffset(studies) - limit },
      'instances-first': { path: '/instances', fields: JUMP_FIELDS, offset: 0, expected: () => Math.min(limit, total) },
      'instances-deep-jump': { path: '/instances', fields: JUMP_FIELDS, offset: deepOffset(total), expected: (o) => total - o },
      'instances-deep-next': { path: '/instances', fields: NEXT_FIELDS, offset: deepOffset(total), expected: (o) => total - o, before: deepOffset(total) - limit },
    };
    const get = async (base: string, path: string, fields: string, offset: number): Promise<number> => {
      const response = await fetch(`${base}${path}?${fields}&offset=${offset}&limit=${limit}`, { headers: { accept: 'application/dicom+json' } });
      const body = (await response.json()) as unknown[];
      if (response.status !== 200) throw new Error(`${path} offset ${offset}: HTTP ${response.status}`);
      return body.length;
    };
    for (let query = 0; query < queries; query++) {
      for (const { result, base } of running) {
        if (result.status !== 'ok') continue;
        for (const search of SEARCHES) {
          const { path, fields, offset, expected, before } = searches[search];
          if (before !== undefined && before >= 0) await get(base, path, fields, before);
          const started = performance.now();
          const got = await get(base, path, fields, offset);
          result.timesMs[search].push(performance.now() - started);
          if (got !== expected(offset)) {
            result.status = 'failed';
            result.message = `${search}: ${got} results, expected ${expected(offset)}`;
            console.log(`!! ${result.name}: ${result.message}`);
          }
        }
      }
    }
    if (allPages > 0) {
      for (const { result, base } of running) {
        if (result.status !== 'ok') continue;
        const started = performance.now();
        let seen = 0;
        for (let offset = 0; ; offset += limit) {
          const got = await get(base, '/instances', NEXT_FIELDS.replace('includefield=', 'includefield=SeriesDate,'), offset);
          seen += got;
          if (got < limit) break;
        }
        result.allPagesSeconds = (performance.now() - started) / 1000;
        if (seen !== total) {
          result.status = 'failed';
          result.message = `paging through every instance: ${seen}, expected ${total}`;
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
    if (result.timesMs['studies-first'].length > 0) result.medianMs = Object.fromEntries(SEARCHES.map((s) => [s, median(result.timesMs[s])])) as Record<Search, number>;
  }
  const mesh = results.find((r) => r.id === 'pacs-mesh');
  const orthanc = results.find((r) => r.id === 'orthanc');
  const ratio = (search: Search): number | undefined => (mesh?.medianMs && orthanc?.medianMs ? mesh.medianMs[search] / orthanc.medianMs[search] : undefined);
  console.log(`\nQIDO-RS paging: ${studies} studies x ${instancesPerStudy} instances (${total}), ${limit} a page; deep pages at offset ${deepOffset(studies)} (studies) and ${deepOffset(total)} (instances); medians of ${queries}\n`);
  console.log(
    table(
      ['server', 'load s', ...SEARCHES.map((s) => `${s} ms`), 'all instance pages s', 'version / note'],
      results.map((r) => [
        r.name,
        fmt(r.loadSeconds, 1),
        ...SEARCHES.map((s) => fmt(r.medianMs?.[s], 1)),
        fmt(r.allPagesSeconds, 1),
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${r.message ?? ''}`,
      ]),
    ),
  );
  console.log('');
  for (const search of SEARCHES) console.log(`pacs-mesh / Orthanc, ${search.padEnd(19)}: ${ratio(search) === undefined ? 'n/a' : `${ratio(search)!.toFixed(2)}x the time`}`);
  for (const r of results) {
    if (!r.medianMs) continue;
    console.log(`${r.name}: deep / first page, studies: jump ${(r.medianMs['studies-deep-jump'] / r.medianMs['studies-first']).toFixed(1)}x, next ${(r.medianMs['studies-deep-next'] / r.medianMs['studies-first']).toFixed(1)}x; instances: jump ${(r.medianMs['instances-deep-jump'] / r.medianMs['instances-first']).toFixed(1)}x, next ${(r.medianMs['instances-deep-next'] / r.medianMs['instances-first']).toFixed(1)}x`);
  }
  const file = await writeResult('qido-paging', {
    benchmark: 'qido-paging',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: { studies, instancesPerStudy, limit, queries, client: 'Node fetch, one request at a time' },
    servers: results,
    ratios: Object.fromEntries(SEARCHES.map((s) => [s, ratio(s) ?? null])),
  });
  console.log(`\nresults: ${file}`);
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

runBench(main);
