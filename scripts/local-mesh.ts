/**
 * `npm start`: a working local mesh on the embedded defaults: three sites on 127.0.0.1, each its own
 * `pacs-mesh start` process with its own data directory under .data/, one shared swarm key.
 * Ctrl-C (or SIGTERM) stops all three cleanly, and so does the end of its parent (a SIGTERM to npm). `--sites N` changes the number of sites (1-5);
 * `--data DIR` and `--base-port N` (DICOM N.., HTTP N+100.., libp2p N+200..) let tests run one elsewhere. The sites
 * run admitted voters, site-a founding them (see foundsVoters).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { holdsFoundedVoters } from '../src/actors/balancer/state-files.ts';
import { writeSwarmKeyFile } from '../src/net/swarm-key.ts';
import { peerProcessArgs, peerProcessEnv } from '../src/peer-process.ts';
import { LocalMeshOptionError, localMeshUsage, parseLocalMeshOptions, type LocalMeshOptions } from './local-mesh-options.ts';

const repoRoot = resolve(fileURLToPath(new URL('..', import.meta.url)));
const options = ((): LocalMeshOptions => {
  try {
    return parseLocalMeshOptions(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof LocalMeshOptionError)) throw error;
    process.stderr.write(`local-mesh: ${error.message} (usage: ${localMeshUsage})\n`);
    process.exit(2);
  }
})();
const dataRoot = resolve(options.dataRoot ?? join(repoRoot, '.data'));
const { siteCount, basePort } = options;

interface Site {
  name: string;
  dicomPort: number;
  httpPort: number;
  p2pPort: number;
  child?: ChildProcess;
}

const sites: Site[] = Array.from({ length: siteCount }, (_, i) => ({
  name: `site-${String.fromCharCode(97 + i)}`,
  dicomPort: basePort === undefined ? 11112 + i : basePort + i,
  httpPort: basePort === undefined ? 8042 + i : basePort + 100 + i,
  p2pPort: basePort === undefined ? 4001 + i : basePort + 200 + i,
}));

const swarmKeyFile = join(dataRoot, 'swarm.key');
let stopping = false;

/**
 * Every site runs admitted voters (docs/mesh-algorithms.md, "Admitted voters"); the first founds them while no site's
 * election record holds a list: a new .data, or one of learnt rosters (upgraded so). Not once one does: site-a's
 * directory deleted alone would found a second mesh beside b and c's list; it joins and is admitted instead.
 */
async function foundsVoters(): Promise<boolean> {
  for (const site of sites) {
    const dir = join(dataRoot, site.name);
    if (existsSync(dir) && (await holdsFoundedVoters(dir))) return false;
  }
  return true;
}

function startSite(site: Site, bootstrap: string[], founds = false): ChildProcess {
  const args = peerProcessArgs([
    'start',
    '--site', site.name, '--data', join(dataRoot, site.name), '--host', '127.0.0.1',
    '--dicom-port', String(site.dicomPort), '--http-port', String(site.httpPort),
    '--p2p-port', String(site.p2pPort), '--swarm-key', swarmKeyFile,
    ...bootstrap.flatMap((b) => ['--bootstrap', b]),
    '--election-voters', 'admitted',
    // Never auto: site-a starts without --bootstrap, and its directory deleted alone would found a second mesh.
    '--found-mesh', founds ? 'yes' : 'no',
  ]);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'], env: peerProcessEnv() });
  child.on('exit', (code, signal) => {
    if (!stopping) process.stderr.write(`local-mesh: ${site.name} exited (${signal ?? code}); the other sites keep running\n`);
  });
  return child;
}

/** Whether something already listens on 127.0.0.1:`port` (another `npm start`, say). */
async function portTaken(port: number): Promise<boolean> {
  const probe = createServer();
  return new Promise((resolve) => {
    probe.once('error', () => resolve(true));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)));
  });
}

/**
 * Waits for a site's HTTP port and returns its dialable multiaddrs (empty without a mesh). A site whose
 * process has ended is not ready, whatever answers on its port.
 */
async function waitReady(site: Site, timeoutMs = 30_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (site.child !== undefined && site.child.exitCode !== null) throw new Error(`${site.name} exited before it was ready (its message is above)`);
    try {
      // /healthz turns 200 only once the mesh is up, so the addresses below are complete.
      const health = await fetch(`http://127.0.0.1:${site.httpPort}/healthz`);
      if (health.ok) {
        const response = await fetch(`http://127.0.0.1:${site.httpPort}/api/mesh`);
        const body = (await response.json()) as { self?: { multiaddrs?: string[] } };
        return body.self?.multiaddrs ?? [];
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${site.name} did not become ready within ${timeoutMs} ms`);
}

/** Waits (bounded) until every site's /api/mesh lists every site alive; says so if they do not in time. */
async function waitConverged(timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const views = await Promise.all(
        sites.map(async (site) => (await (await fetch(`http://127.0.0.1:${site.httpPort}/api/mesh`)).json()) as { members?: Array<{ alive?: boolean }> }),
      );
      if (views.every((view) => (view.members ?? []).filter((m) => m.alive === true).length >= sites.length)) return;
    } catch {
      // a site busy starting answers a moment later
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  process.stderr.write(`local-mesh: the sites did not all see each other within ${timeoutMs / 1000} s; they keep trying\n`);
}

function stopAll(): void {
  if (stopping) return;
  stopping = true;
  for (const site of sites) site.child?.kill('SIGTERM');
  // A site that ignores SIGTERM for too long is killed, so Ctrl-C always returns the shell.
  setTimeout(() => {
    for (const site of sites) site.child?.kill('SIGKILL');
    process.exit(0);
  }, 8000).unref();
}

async function main(): Promise<void> {
  mkdirSync(dataRoot, { recursive: true });
  if (!existsSync(swarmKeyFile)) await writeSwarmKeyFile(swarmKeyFile);
  process.on('SIGINT', stopAll);
  process.on('SIGTERM', stopAll);
  // A SIGTERM to `npm start` ends npm and its shell, not this process: once orphaned, stop the sites too.
  const parentPid = process.ppid;
  setInterval(() => {
    if (process.ppid !== parentPid) stopAll();
  }, 500).unref();
  // Ports already taken (a mesh started before and still running): its answers would pass for ours, and
  // "is up" was printed while every site here had exited (a new-user run of the README).
  for (const site of sites) {
    for (const [port, kind] of [[site.dicomPort, 'DICOM'], [site.httpPort, 'HTTP'], [site.p2pPort, 'libp2p']] as const) {
      if (await portTaken(port)) {
        // Debian's orthanc package, which the benchmarks need, starts a service on 8042 (site-a's HTTP port) and 4242.
        process.stderr.write(
          `local-mesh: 127.0.0.1:${port} (${site.name}'s ${kind} port) is in use: another \`npm start\` still running, or another server ` +
            `(Orthanc's Debian service listens on 8042)? Stop it first, or pass --base-port N (DICOM ports N.., HTTP N+100.., libp2p N+200..)\n`,
        );
        process.exit(1);
      }
    }
  }
  const [first, ...rest] = sites;
  first!.child = startSite(first!, [], await foundsVoters());
  const bootstrap = await waitReady(first!);
  for (const site of rest) site.child = startSite(site, bootstrap.slice(0, 1));
  for (const site of rest) await waitReady(site);
  // "Up" once every site sees every other alive: a store made before a site is seen goes to it only by
  // repair, seconds later, which looked like a lost copy to someone trying the mesh right away.
  await waitConverged();
  const lines = sites.map((s) => `  ${s.name}: DICOM 127.0.0.1:${s.dicomPort} (AE PACSMESH), status http://127.0.0.1:${s.httpPort}/, DICOMweb http://127.0.0.1:${s.httpPort}/dicom-web, data ${join(dataRoot, s.name)}`);
  process.stdout.write(`\nlocal mesh of ${sites.length} sites is up (swarm key ${swarmKeyFile}):\n${lines.join('\n')}\nCtrl-C stops them all.\n\n`);
  await Promise.all(sites.map((s) => new Promise((r) => s.child!.once('exit', r))));
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`local-mesh: ${error instanceof Error ? error.message : String(error)}\n`);
  stopAll();
  process.exitCode = 1;
});
