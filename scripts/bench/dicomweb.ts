/**
 * DICOMweb benchmark: STOW-RS, QIDO-RS and WADO-RS at one pacs-mesh peer beside Orthanc with its DICOMweb
 * plugin (Debian `orthanc-dicomweb`), the same client (Node's fetch) and the same study at both.
 *
 *   node --import tsx scripts/bench/dicomweb.ts [--count 200] [--rows 512] [--columns 512] [--batch 10]
 *                                              [--queries 15] [--frames 50] [--retrieves 3] [--tmp <dir>] [--keep]
 *
 * Each server starts fresh and takes the synthetic CT series over STOW-RS, `--batch` instances per request,
 * one request after the other (images/s). Then, interleaved across the servers so that a change of machine
 * load affects them alike:
 *   qido-study     GET /studies?PatientID=<id>
 *   qido-instances GET /studies/{s}/series/{se}/instances (all `--count`)
 *   metadata       GET /studies/{s}/metadata
 *   frame          GET .../instances/{i}/frames/1 (native: uncompressed little endian), `--frames` instances
 *   rendered       GET .../instances/{i}/rendered, Accept image/jpeg (frame 1 windowed, a JPEG), as many
 *   wado-uri       GET /wado?requestType=WADO&...&contentType=application/dicom (one instance, a DICOM file), as many
 *   retrieve       GET /studies/{s} with transfer-syntax=* (the whole study as stored; MB/s)
 * Every answer's count is checked. Medians, the ratios pacs-mesh / Orthanc (time), and each server's peak
 * RSS are printed and written to scripts/bench/out/dicomweb-<timestamp>.json.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { peakRssBytes } from '../../test/support/dicom-tools.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { parseDataset } from '../../src/codec/dataset/reader.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { pacsMeshFactory, startOrthanc, type BenchServer, type BenchServerResult } from './lib/index.ts';
import { orthancVersion } from './lib/orthanc.ts';
import { fmt, hostInfo, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { removeAndSettle, runBench, startBench, writeBenchSeries } from './lib/run.ts';

const dicomWebPlugin = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';
const READS = ['qido-study', 'qido-instances', 'metadata', 'frame', 'rendered', 'wado-uri', 'retrieve'] as const;
type Read = (typeof READS)[number];

interface ServerResult extends BenchServerResult {
  stowSeconds?: number;
  stowImagesPerSec?: number;
  timesMs: Record<Read, number[]>;
  medianMs?: Record<Read, number>;
  retrieveMbPerSec?: number;
  peakRssMiB?: number;
}

interface Running {
  result: ServerResult;
  server: BenchServer;
  base: string;
  dataDir: string;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const count = intArg(args, 'count', 200);
  const rows = intArg(args, 'rows', 512);
  const columns = intArg(args, 'columns', 512);
  const batch = intArg(args, 'batch', 10);
  const queries = intArg(args, 'queries', 15);
  const frames = Math.min(intArg(args, 'frames', 50), count);
  const retrieves = intArg(args, 'retrieves', 3);
  if (!existsSync(dicomWebPlugin)) {
    console.error(`Orthanc's DICOMweb plugin is not installed (${dicomWebPlugin}): apt-get install orthanc orthanc-dicomweb`);
    return 2;
  }
  const bench = await startBench('dicomweb', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;
  const patientId = 'BENCH00DW';
  const series = await writeBenchSeries(join(workDir, 'input'), { count, rows, columns, label: 'dicomweb', patientId, startedAt });
  const files = await Promise.all(series.files.map((file) => readFile(file)));
  const { studyUid, seriesUid } = uidsOf(files[0]!);

  const results: ServerResult[] = [];
  const running: Running[] = [];
  const timesMs = (): Record<Read, number[]> => ({ 'qido-study': [], 'qido-instances': [], metadata: [], frame: [], rendered: [], 'wado-uri': [], retrieve: [] });
  try {
    for (const id of ['orthanc', 'pacs-mesh'] as const) {
      const result: ServerResult = { id, name: id === 'orthanc' ? 'Orthanc' : 'pacs-mesh', version: id === 'orthanc' ? await orthancVersion() : await pacsMeshFactory.version(), status: 'ok', timesMs: timesMs() };
      results.push(result);
      const dataDir = await mkdtemp(join(workDir, `${id}-`));
      let server: BenchServer;
      try {
        server = id === 'orthanc'
          ? await startOrthanc({ dataDir, config: { Plugins: [dicomWebPlugin], DicomWeb: { Enable: true, Root: '/dicom-web/' } } })
          : await pacsMeshFactory.start({ dataDir });
      } catch (error) {
        result.status = 'skipped';
        result.message = `${result.name} failed to start: ${(error as Error).message.split('\n')[0]}`;
        console.log(`!! SKIPPED ${result.message}`);
        continue;
      }
      const base = `http://127.0.0.1:${server.httpPort!}/dicom-web`;
      running.push({ result, server, base, dataDir });
      const started = performance.now();
      for (let start = 0; start < files.length; start += batch) {
        const response = await stow(base, files.slice(start, start + batch));
        if (response !== 200) {
          result.status = 'failed';
          result.message = `STOW-RS of instances ${start}-${start + batch - 1}: HTTP ${response}`;
          break;
        }
      }
      result.stowSeconds = (performance.now() - started) / 1000;
      result.stowImagesPerSec = count / result.stowSeconds;
      const stored = await server.countStored().catch(() => -1);
      console.log(`${result.name}: stored ${stored}/${count} over STOW-RS in ${fmt(result.stowSeconds, 2)} s (${fmt(result.stowImagesPerSec, 1)} img/s)`);
      if (stored !== count && result.status === 'ok') {
        result.status = 'failed';
        result.message = `stored ${stored}/${count}`;
      }
    }

    const instanceUids = series.sopInstanceUids;
    for (let query = 0; query < queries; query++) {
      for (const { result, base } of running) {
        if (result.status !== 'ok') continue;
        const checks: Array<[Read, () => Promise<number>, number]> = [
          ['qido-study', async () => (await json(`${base}/studies?PatientID=${patientId}`)).length, 1],
          ['qido-instances', async () => (await json(`${base}/studies/${studyUid}/series/${seriesUid}/instances`)).length, count],
        ];
        if (query < retrieves) {
          checks.push(['metadata', async () => (await json(`${base}/studies/${studyUid}/metadata`)).length, count]);
          checks.push(['retrieve', async () => parts(await fetch(`${base}/studies/${studyUid}`, { headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' } })), count]);
        }
        for (const [read, run, expected] of checks) {
          const started = performance.now();
          const got = await run();
          result.timesMs[read].push(performance.now() - started);
          if (got !== expected) {
            result.status = 'failed';
            result.message = `${read}: ${got} answers, expected ${expected}`;
            console.log(`!! ${result.name}: ${result.message}`);
          }
        }
      }
    }
    // Frames: one request per instance, alternating servers.
    for (let index = 0; index < frames; index++) {
      for (const { result, base } of running) {
        if (result.status !== 'ok') continue;
        const started = performance.now();
        const response = await fetch(`${base}/studies/${studyUid}/series/${seriesUid}/instances/${instanceUids[index]!}/frames/1`, { headers: { accept: 'multipart/related; type="application/octet-stream"' } });
        const body = Buffer.from(await response.arrayBuffer());
        result.timesMs.frame.push(performance.now() - started);
        if (response.status !== 200 || body.length < rows * columns * 2) {
          result.status = 'failed';
          result.message = `frame of instance ${index}: HTTP ${response.status}, ${body.length} bytes`;
        }
        const renderedStarted = performance.now();
        const rendered = await fetch(`${base}/studies/${studyUid}/series/${seriesUid}/instances/${instanceUids[index]!}/rendered`, { headers: { accept: 'image/jpeg' } });
        const jpeg = Buffer.from(await rendered.arrayBuffer());
        result.timesMs.rendered.push(performance.now() - renderedStarted);
        if (rendered.status !== 200 || jpeg.length < 4 || jpeg.readUInt16BE(0) !== 0xffd8) {
          result.status = 'failed';
          result.message = `rendered instance ${index}: HTTP ${rendered.status}, ${jpeg.length} bytes`;
        }
        // WADO-URI, at the server's root for both (the slash not percent-encoded: Orthanc 1.10's plugin does not decode it).
        const uriStarted = performance.now();
        const uri = await fetch(`${base.replace(/\/dicom-web$/, '')}/wado?requestType=WADO&studyUID=${studyUid}&seriesUID=${seriesUid}&objectUID=${instanceUids[index]!}&contentType=application/dicom`);
        const file = Buffer.from(await uri.arrayBuffer());
        result.timesMs['wado-uri'].push(performance.now() - uriStarted);
        if (uri.status !== 200 || file.length < rows * columns * 2) {
          result.status = 'failed';
          result.message = `WADO-URI of instance ${index}: HTTP ${uri.status}, ${file.length} bytes`;
        }
      }
    }
    for (const { result, server } of running) {
      const peak = peakRssBytes(server.pid);
      if (peak !== undefined) result.peakRssMiB = peak / 1024 / 1024;
    }
  } finally {
    for (const { server, dataDir } of running) {
      await server.stop();
      await removeAndSettle(dataDir);
    }
  }
  for (const result of results) {
    if (result.timesMs['qido-study'].length === 0) continue;
    result.medianMs = Object.fromEntries(READS.map((read) => [read, median(result.timesMs[read])])) as Record<Read, number>;
    result.retrieveMbPerSec = series.totalBytes / 1e6 / (result.medianMs.retrieve / 1000);
  }

  const mesh = results.find((r) => r.id === 'pacs-mesh');
  const orthanc = results.find((r) => r.id === 'orthanc');
  const timeRatio = (read: Read) => (mesh?.medianMs && orthanc?.medianMs ? mesh.medianMs[read] / orthanc.medianMs[read] : undefined);
  const stowRatio = mesh?.stowImagesPerSec && orthanc?.stowImagesPerSec ? mesh.stowImagesPerSec / orthanc.stowImagesPerSec : undefined;
  console.log(`\nDICOMweb: ${count} CT instances ${rows}x${columns}x16 (${(series.totalBytes / 1e6).toFixed(1)} MB), STOW-RS ${batch} per request; medians of ${queries} searches, ${retrieves} metadata and study retrieves, ${frames} frames\n`);
  console.log(
    table(
      ['server', 'STOW img/s', ...READS.map((read) => `${read} ms`), 'retrieve MB/s', 'peak RSS MiB', 'version / note'],
      results.map((r) => [
        r.name,
        fmt(r.stowImagesPerSec, 1),
        ...READS.map((read) => fmt(r.medianMs?.[read], 1)),
        fmt(r.retrieveMbPerSec, 1),
        fmt(r.peakRssMiB, 0),
        r.status === 'ok' ? (r.version ?? '') : `${r.status.toUpperCase()}: ${r.message ?? ''}`,
      ]),
    ),
  );
  console.log(`\npacs-mesh / Orthanc, STOW-RS: ${stowRatio === undefined ? 'n/a' : `${stowRatio.toFixed(2)}x the images/s`}`);
  for (const read of READS) {
    const ratio = timeRatio(read);
    console.log(`pacs-mesh / Orthanc, ${read.padEnd(14)}: ${ratio === undefined ? 'n/a' : `${ratio.toFixed(2)}x the time`}`);
  }
  const file = await writeResult('dicomweb', {
    benchmark: 'dicomweb',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: hostInfo().loadavg },
    params: { count, rows, columns, batch, queries, frames, retrieves, totalBytes: series.totalBytes, client: "Node's fetch, one request at a time" },
    servers: results,
    ratios: { stowImagesPerSec: stowRatio ?? null, ...Object.fromEntries(READS.map((read) => [read, timeRatio(read) ?? null])) },
  });
  console.log(`\nresults: ${file}`);
  return results.some((r) => r.status === 'failed') ? 1 : 0;
}

/** The study's and series' UIDs in the series generator's first file. */
function uidsOf(file: Buffer): { studyUid: string; seriesUid: string } {
  const split = splitPart10(file);
  const elements = parseDataset(file.subarray(split.datasetOffset), split.transferSyntaxUid).elements;
  const valueOf = (tag: number) => elements.find((element) => element.tag === tag)?.value ?? '';
  return { studyUid: valueOf(Tags.StudyInstanceUID), seriesUid: valueOf(Tags.SeriesInstanceUID) };
}

async function stow(base: string, files: readonly Buffer[]): Promise<number> {
  const boundary = `bench-${Date.now().toString(16)}`;
  const body = Buffer.concat([
    ...files.flatMap((file) => [Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), file, Buffer.from('\r\n')]),
    Buffer.from(`--${boundary}--\r\n`),
  ]);
  const response = await fetch(`${base}/studies`, { method: 'POST', body, headers: { 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}`, accept: 'application/dicom+json' } });
  await response.arrayBuffer();
  return response.status;
}

async function json(url: string): Promise<unknown[]> {
  const response = await fetch(url, { headers: { accept: 'application/dicom+json' } });
  return response.status === 200 ? ((await response.json()) as unknown[]) : [];
}

/** The number of parts of a multipart response (its body read whole). */
async function parts(response: Response): Promise<number> {
  const boundary = /boundary=("?)([^";]+)\1/.exec(response.headers.get('content-type') ?? '')?.[2];
  const body = Buffer.from(await response.arrayBuffer());
  if (response.status !== 200 || boundary === undefined) return -1;
  let found = 0;
  for (let at = body.indexOf(`--${boundary}`); at >= 0; at = body.indexOf(`--${boundary}`, at + boundary.length + 2)) found++;
  // Every part opens with a delimiter; the close delimiter is one more.
  return found - 1;
}

runBench(main);
