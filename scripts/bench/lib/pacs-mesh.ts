/**
 * pacs-mesh as a benchmark server: one node started with
 *   node --initial-old-space-size=128 bin/pacs-mesh.js start --site <site> --data <dir> --ae-title PACSMESH --host 127.0.0.1
 *        --dicom-port <n> --http-port <n>
 * from the repository root, `TCP_NODELAY=1` in its environment, ready when GET /healthz answers 200.
 * The pid is the node process itself (no npx/shell wrapper), which is the process doing the work.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getFreePort, spawnManaged, waitForPort } from '../../../test/support/dicom-tools.ts';
import { captureOutput, httpGetJson, waitForHttpOk, type BenchServer, type BenchServerFactory, type BenchServerStartOptions } from './server.ts';
import { pacsMeshBin, peerProcessArgs, peerProcessEnv } from '../../../src/peer-process.ts';
import { buildIsCurrent } from '../../../bin/build-current.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export interface StartPacsMeshOptions extends BenchServerStartOptions {
  site?: string;
  env?: Record<string, string>;
}

export interface PacsMeshServer extends BenchServer {
  httpPort: number;
  url: string;
}

export async function pacsMeshVersion(): Promise<string | undefined> {
  if (!existsSync(pacsMeshBin)) return undefined;
  try {
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version?: string };
    // Which LevelDB addon the peers load (see scripts/build-leveldb.js): it moves the figures by ~10 %.
    const leveldb = execFileSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-leveldb.js'), '--status'], { encoding: 'utf8' }).trim();
    // Peers run the sources through tsx when dist/ is older than src/: ~80 MiB more each (helper 82).
    const code = buildIsCurrent(REPO_ROOT) ? 'from the dist/ bundle' : 'SOURCES THROUGH TSX (dist/ is stale: npm run build)';
    return `pacs-mesh ${pkg.version ?? '?'} ${code}, LevelDB ${leveldb}`;
  } catch {
    return 'pacs-mesh';
  }
}

export async function startPacsMesh(opts: StartPacsMeshOptions): Promise<PacsMeshServer> {
  if (!existsSync(pacsMeshBin)) throw new Error(`${pacsMeshBin} does not exist yet`);
  const dicomPort = opts.dicomPort ?? (await getFreePort());
  let httpPort = opts.httpPort ?? (await getFreePort());
  while (httpPort === dicomPort) httpPort = await getFreePort();
  const aeTitle = opts.aeTitle ?? 'PACSMESH';
  const args = peerProcessArgs([
    'start',
    '--site', opts.site ?? 'bench',
    '--data', opts.dataDir,
    '--ae-title', aeTitle,
    '--host', '127.0.0.1',
    '--dicom-port', String(dicomPort),
    '--http-port', String(httpPort),
    ...(opts.extraArgs ?? []),
  ]);
  const mp = spawnManaged(process.execPath, args, { cwd: REPO_ROOT, env: peerProcessEnv({ ...process.env, TCP_NODELAY: '1', ...opts.env }) });
  const output = captureOutput(mp);
  const url = `http://127.0.0.1:${httpPort}`;
  // Polled every 20 ms: the catch-up benchmark times a restarted peer from its readiness.
  const ok = (await waitForHttpOk(`${url}/healthz`, opts.startTimeoutMs ?? 60_000, mp, 20)) && (await waitForPort(dicomPort, 10_000, () => !mp.hasExited));
  if (!ok) {
    const exited = mp.hasExited;
    await mp.stop(2000);
    throw new Error(`pacs-mesh ${exited ? 'exited before becoming ready' : 'did not become ready in time'}; output:\n${output().slice(-4000)}`);
  }
  return {
    name: 'pacs-mesh',
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
      const { status, json } = await httpGetJson(`${url}/api/mesh`, 10_000);
      const v = (json as { instances?: unknown } | undefined)?.instances;
      if (status !== 200) throw new Error(`GET /api/mesh: HTTP ${status}`);
      if (typeof v === 'number') return v;
      if (Array.isArray(v)) return v.length;
      throw new Error(`GET /api/mesh: no numeric "instances" field in ${JSON.stringify(json)?.slice(0, 200)}`);
    },
    stop: () => mp.stop(10_000),
  };
}

export const pacsMeshFactory: BenchServerFactory = {
  id: 'pacs-mesh',
  name: 'pacs-mesh',
  version: pacsMeshVersion,
  start: (opts) => startPacsMesh(opts),
};
