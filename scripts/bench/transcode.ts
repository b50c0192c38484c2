/**
 * Retrieve-with-transcoding benchmark: a C-GET that needs every instance decompressed, pacs-mesh beside
 * Orthanc, and how the server answers other requestors meanwhile.
 *
 *   node --import tsx scripts/bench/transcode.ts [--count 4] [--rows 4096] [--columns 4096] [--gets 3]
 *                                               [--servers orthanc,pacs-mesh] [--tmp <dir>] [--keep]
 *
 * A synthetic CT series (16 bits, random pixels, 32 MB per instance at the default size) is compressed
 * with DCMTK's dcmcjpls (JPEG-LS lossless) and stored in that syntax (storescu -xt) at each server. Then,
 * `--gets` times per server, in turn with the other servers: getscu retrieves the study accepting
 * uncompressed syntaxes only, so that the server decodes every frame, while echoscu asks the same server
 * again and again (one process and association each, back to back). Printed per server: the retrieve's
 * wall time (median), the echo round trips during the retrieves (median and worst: a server whose codec
 * holds its only thread answers nobody meanwhile), and the peak RSS; then the ratios pacs-mesh / Orthanc.
 * Each retrieved file is checked: as many as stored, each in an uncompressed syntax, with full-size pixel
 * data. Results go to scripts/bench/out/transcode-<timestamp>.json.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { runTool, startRssSampler, which } from '../../test/support/dicom-tools.ts';
import { TransferSyntax, writeSeriesToDir } from '../../test/support/synthetic-dicom.ts';
import { SERVER_FACTORIES, startBenchServer, type BenchServer, type BenchServerResult } from './lib/index.ts';
import { choicesArg, fmt, hostInfo, intArg, median, MiB, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench } from './lib/run.ts';

const CLIENT_AE = 'BENCH';
const UNCOMPRESSED = new Set([TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian, '1.2.840.10008.1.2.2']);

interface ServerResult extends BenchServerResult {
  retrieveMs: number[];
  echoMs: number[];
  peakRssBytes: number;
  medianRetrieveMs?: number;
  medianEchoMs?: number;
  worstEchoMs?: number;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 4);
  const rows = intArg(args, 'rows', 4096);
  const columns = intArg(args, 'columns', 4096);
  const gets = intArg(args, 'gets', 3);
  const serverIds = choicesArg(args, 'servers', ['orthanc', 'pacs-mesh'], ['orthanc', 'pacs-mesh']);
  if (which('dcmcjpls') === undefined || which('getscu') === undefined) {
    console.error('dcmcjpls and getscu (DCMTK) are needed: apt-get install dcmtk');
    return 2;
  }
  const bench = await startBench('transcode', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  const generatedAt = performance.now();
  const series = await writeSeriesToDir(join(workDir, 'native'), {
    count,
    rows,
    columns,
    bitsAllocated: 16,
    transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
    uidSeed: `transcode-bench-${startedAt}`,
    patient: { id: 'BENCHTX', name: 'BENCH^TRANSCODE' },
    study: { description: 'TRANSCODE BENCHMARK', accession: 'BENCHTX' },
    series: { modality: 'CT', description: 'SYNTHETIC CT', number: 1 },
  });
  const compressedDir = join(workDir, 'jpeg-ls');
  await mkdir(compressedDir, { recursive: true });
  for (const file of series.files) {
    const run = await runTool('dcmcjpls', [file, join(compressedDir, file.split('/').pop()!)], { timeoutMs: 300_000 });
    if (run.code !== 0) throw new Error(`dcmcjpls exit ${run.code}: ${run.stderr.slice(-500)}`);
  }
  const studyInstanceUid = await studyUidOf(series.files[0]!);
  const pixelBytes = rows * columns * 2;
  console.log(`generated ${count} CT instances ${rows}x${columns}x16 (random pixels, ${(pixelBytes / 1e6).toFixed(1)} MB each), compressed to JPEG-LS lossless, in ${((performance.now() - generatedAt) / 1000).toFixed(1)} s`);

  const results: ServerResult[] = [];
  const running: Array<{ result: ServerResult; server: BenchServer; dataDir: string }> = [];
  try {
    for (const id of serverIds) {
      const factory = SERVER_FACTORIES[id]!;
      const result: ServerResult = { id, name: factory.name, version: await factory.version().catch(() => undefined), status: 'ok', retrieveMs: [], echoMs: [], peakRssBytes: 0 };
      results.push(result);
      const dataDir = join(workDir, `${id}-data`);
      await mkdir(dataDir, { recursive: true });
      const server = await startBenchServer(result, dataDir, { DicomAlwaysAllowGet: true });
      if (!server) continue;
      running.push({ result, server, dataDir });
      const stored = await runTool('storescu', ['-aet', CLIENT_AE, '-aec', server.aeTitle, '-xt', '+sd', server.host, String(server.dicomPort), compressedDir], { timeoutMs: 600_000, env: { TCP_NODELAY: '1' } });
      const held = await server.countStored().catch(() => -1);
      console.log(`${factory.name}: stored ${held}/${count} in JPEG-LS in ${fmt(stored.elapsedMs / 1000, 1)} s`);
      if (stored.code !== 0 || held !== count) {
        result.status = 'failed';
        result.message = `storescu exit ${stored.code}, stored ${held}/${count}`;
      }
    }

    // Retrieves interleaved across servers, so that a change of machine load affects them alike.
    for (let get = 0; get < gets; get++) {
      for (const { result, server } of running) {
        if (result.status !== 'ok') continue;
        const outputDir = join(workDir, `${result.id}-get-${get}`);
        await mkdir(outputDir, { recursive: true });
        const sampler = startRssSampler(server.pid, { intervalMs: 50 });
        let retrieving = true;
        const echoes = (async () => {
          while (retrieving) {
            const echo = await runTool('echoscu', ['-aet', CLIENT_AE, '-aec', server.aeTitle, server.host, String(server.dicomPort)], { timeoutMs: 60_000, env: { TCP_NODELAY: '1' } });
            if (echo.code !== 0) throw new Error(`echoscu exit ${echo.code} during the retrieve: ${echo.stderr.slice(-300)}`);
            // Only echoes that ran while the retrieve did (the last one may end after it).
            if (retrieving) result.echoMs.push(echo.elapsedMs);
          }
        })();
        const retrieve = await runTool(
          'getscu',
          ['-S', '-aet', CLIENT_AE, '-aec', server.aeTitle, '-od', outputDir, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyInstanceUid}`, server.host, String(server.dicomPort)],
          { timeoutMs: 900_000, env: { TCP_NODELAY: '1' } },
        );
        retrieving = false;
        await echoes;
        result.peakRssBytes = Math.max(result.peakRssBytes, sampler.stop().peakProcessBytes);
        const problem = retrieve.code !== 0 ? `getscu exit ${retrieve.code}: ${retrieve.stderr.slice(-300)}` : await checkRetrieved(outputDir, count, pixelBytes);
        await rm(outputDir, { recursive: true, force: true });
        if (problem !== undefined) {
          result.status = 'failed';
          result.message = `retrieve ${get}: ${problem}`;
          console.log(`!! ${result.name}: ${result.message}`);
          continue;
        }
        result.retrieveMs.push(retrieve.elapsedMs);
        console.log(`${result.name}: retrieve ${get + 1}/${gets} ${fmt(retrieve.elapsedMs / 1000, 2)} s, ${result.echoMs.length} echoes so far`);
      }
    }
  } finally {
    for (const { server } of running) await server.stop();
  }
  for (const result of results) {
    if (result.retrieveMs.length > 0) result.medianRetrieveMs = median(result.retrieveMs);
    if (result.echoMs.length > 0) {
      result.medianEchoMs = median(result.echoMs);
      result.worstEchoMs = Math.max(...result.echoMs);
    }
  }

  const mesh = results.find((r) => r.id === 'pacs-mesh');
  const orthanc = results.find((r) => r.id === 'orthanc');
  const ratio = (pick: (r: ServerResult) => number | undefined): number | undefined => {
    const a = mesh && pick(mesh);
    const b = orthanc && pick(orthanc);
    return a !== undefined && b !== undefined && b > 0 ? a / b : undefined;
  };
  console.log(`\nC-GET of ${count} JPEG-LS instances (${rows}x${columns}x16) decoded for an uncompressed-only requestor, medians of ${gets}\n`);
  console.log(
    table(
      ['server', 'retrieve s', 'decoded MB/s', 'echo median ms', 'echo worst ms', 'echoes', 'peak RSS MiB', 'version / note'],
      results.map((r) => [
        r.name,
        fmt(r.medianRetrieveMs === undefined ? undefined : r.medianRetrieveMs / 1000, 2),
        fmt(r.medianRetrieveMs === undefined ? undefined : (count * pixelBytes) / 1e6 / (r.medianRetrieveMs / 1000), 1),
        fmt(r.medianEchoMs, 0),
        fmt(r.worstEchoMs, 0),
        String(r.echoMs.length),
        fmt(r.peakRssBytes / MiB, 0),
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${r.message ?? ''}`,
      ]),
    ),
  );
  const retrieveRatio = ratio((r) => r.medianRetrieveMs);
  const echoRatio = ratio((r) => r.worstEchoMs);
  console.log(`\npacs-mesh / Orthanc, retrieve time: ${retrieveRatio === undefined ? 'n/a' : `${retrieveRatio.toFixed(2)}x`}`);
  console.log(`pacs-mesh / Orthanc, worst echo during it: ${echoRatio === undefined ? 'n/a' : `${echoRatio.toFixed(2)}x`}`);
  const file = await writeResult('transcode', {
    benchmark: 'transcode',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: { count, rows, columns, gets, stored: 'JPEG-LS lossless (dcmcjpls, storescu -xt)', retrieved: 'getscu -S STUDY, uncompressed syntaxes only', echo: 'echoscu back to back during each retrieve' },
    servers: results,
    ratios: { retrieveTime: retrieveRatio ?? null, worstEcho: echoRatio ?? null },
  });
  console.log(`\nresults: ${file}`);
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

/** The StudyInstanceUID (0020,000D) of a generated explicit VR little endian file. */
async function studyUidOf(file: string): Promise<string> {
  const bytes = await readFile(file);
  const tag = Buffer.from([0x20, 0x00, 0x0d, 0x00, 0x55, 0x49]);
  const at = bytes.indexOf(tag);
  if (at < 0) throw new Error(`no StudyInstanceUID in ${file}`);
  return bytes.toString('latin1', at + 8, at + 8 + bytes.readUInt16LE(at + 6)).replace(/\0+$/, '');
}

/** undefined when the retrieved files are as expected; otherwise what is wrong. */
async function checkRetrieved(dir: string, count: number, pixelBytes: number): Promise<string | undefined> {
  const files = await readdir(dir);
  if (files.length !== count) return `${files.length} files received, ${count} expected`;
  for (const name of files) {
    const bytes = await readFile(join(dir, name));
    const tsTag = bytes.indexOf(Buffer.from([0x02, 0x00, 0x10, 0x00, 0x55, 0x49]));
    const ts = tsTag < 0 ? '' : bytes.toString('latin1', tsTag + 8, tsTag + 8 + bytes.readUInt16LE(tsTag + 6)).replace(/\0+$/, '');
    if (!UNCOMPRESSED.has(ts)) return `${name} arrived in ${ts || 'no syntax'}`;
    if (bytes.length < pixelBytes) return `${name} holds ${bytes.length} bytes, less than its pixels`;
  }
  return undefined;
}

runBench(main);
