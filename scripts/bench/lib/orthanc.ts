/**
 * A throwaway Orthanc (Debian's /usr/sbin/Orthanc) for benchmarks: its own config in the data dir,
 * storage and SQLite index under the data dir, storage compression off, no plugins, HTTP and DICOM on
 * free ports, `TCP_NODELAY=1` in its environment. It is started with `setpriv --pdeathsig KILL` (see
 * spawnManaged), so it dies with the benchmark even when the benchmark is killed.
 *
 * Orthanc 1.10 has no DICOM bind-address option: its DICOM port listens on all interfaces (HTTP is
 * restricted by "RemoteAccessAllowed": false); only 127.0.0.1 is ever used as a client address here.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { getFreePort, runTool, spawnManaged, waitForPort, which } from '../../../test/support/dicom-tools.ts';
import { captureOutput, httpGetJson, waitForHttpOk, type BenchServer, type BenchServerFactory, type BenchServerStartOptions } from './server.ts';

export const ORTHANC_BIN = '/usr/sbin/Orthanc';

export interface OrthancServer extends BenchServer {
  httpPort: number;
  /** Base URL of the REST API, e.g. http://127.0.0.1:8042 */
  url: string;
}

export interface StartOrthancOptions extends BenchServerStartOptions {
  /** Extra configuration keys (override the defaults). */
  config?: Record<string, unknown>;
  bin?: string;
}

export function orthancBin(): string | undefined {
  return which(ORTHANC_BIN) ?? which('Orthanc');
}

export async function orthancVersion(): Promise<string | undefined> {
  const bin = orthancBin();
  if (bin === undefined) return undefined;
  const r = await runTool(bin, ['--version'], { timeoutMs: 10_000 });
  return r.stdout.split('\n')[0]?.trim() || undefined;
}

export async function startOrthanc(opts: StartOrthancOptions): Promise<OrthancServer> {
  const bin = opts.bin ?? orthancBin();
  if (bin === undefined) throw new Error('Orthanc is not installed (apt-get install orthanc)');
  const dicomPort = opts.dicomPort ?? (await getFreePort());
  let httpPort = opts.httpPort ?? (await getFreePort());
  while (httpPort === dicomPort) httpPort = await getFreePort();
  const aeTitle = opts.aeTitle ?? 'ORTHANC';
  const storage = join(opts.dataDir, 'storage');
  await mkdir(storage, { recursive: true });
  const config = {
    Name: 'pacs-mesh-bench',
    StorageDirectory: storage,
    IndexDirectory: storage,
    StorageCompression: false,
    HttpPort: httpPort,
    DicomPort: dicomPort,
    DicomAet: aeTitle,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomCheckCalledAet: false,
    DicomAlwaysAllowStore: true,
    DicomModalities: {},
    OrthancPeers: {},
    Plugins: [],
    SaveJobs: false,
    ...opts.config,
  };
  const configPath = join(opts.dataDir, 'orthanc.json');
  await writeFile(configPath, JSON.stringify(config, null, 2));
  const mp = spawnManaged(bin, [configPath], { env: { ...process.env, TCP_NODELAY: '1' }, cwd: opts.dataDir });
  const output = captureOutput(mp);
  const url = `http://127.0.0.1:${httpPort}`;
  const timeoutMs = opts.startTimeoutMs ?? 30_000;
  const httpOk = await waitForHttpOk(`${url}/system`, timeoutMs, mp);
  const dicomOk = httpOk && (await waitForPort(dicomPort, 10_000, () => !mp.hasExited));
  if (!httpOk || !dicomOk) {
    await mp.stop(2000);
    throw new Error(`Orthanc did not become ready (HTTP ${httpPort}, DICOM ${dicomPort}); output:\n${output().slice(-4000)}`);
  }
  return {
    name: 'Orthanc',
    aeTitle,
    host: '127.0.0.1',
    dicomPort,
    httpPort,
    url,
    pid: mp.pid,
    dataDir: opts.dataDir,
    process: mp,
    output,
    async countStored() {
      const { status, json } = await httpGetJson(`${url}/statistics`, 10_000);
      const n = (json as { CountInstances?: unknown } | undefined)?.CountInstances;
      if (status !== 200 || typeof n !== 'number') throw new Error(`GET /statistics: HTTP ${status}`);
      return n;
    },
    stop: () => mp.stop(10_000),
  };
}

export const orthancFactory: BenchServerFactory = {
  id: 'orthanc',
  name: 'Orthanc',
  version: orthancVersion,
  start: (opts) => startOrthanc(opts),
};
