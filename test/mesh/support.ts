/**
 * Real peers in separate processes on 127.0.0.1 for the mesh tests: each is `pacs-mesh start` with its
 * own data directory, and all share one swarm key.
 */
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getFreePort, runTool, spawnManaged, type ManagedProcess } from '../support/dicom-tools.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';
import { peerProcessArgs, peerProcessEnv } from '../../src/peer-process.ts';

export const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export interface MeshMemberView {
  peerId: string;
  site: string;
  alive: boolean;
  status?: 'alive' | 'suspect' | 'dead' | 'not heard';
  dicom: string;
  http: string;
  instances: number;
  /** Whether the peer asked holds a connection of its own to this member (absent for itself). */
  connected?: boolean;
  /** False for a known site none of whose peers the peer asked has heard since its start (status 'not heard'). */
  heardSinceStart?: boolean;
  /** On those: when the election roster last saw the peer alive, or null. */
  lastSeenAt?: string | null;
}

export interface MeshStatus {
  self: { site: string; peerId?: string; multiaddrs?: string[] };
  instances: number;
  members?: MeshMemberView[];
  leader?: { peerId: string; site: string; term: number } | null;
  custody?: { debtEntries: number; knownSites: Array<{ site: string; debtEntries: number }> };
  balancer?: { roster: number; rosterMembers: Array<{ peerId: string; site: string | null; dicom: string | null; up: boolean }>; voters?: { peers: string[]; term: number; seq: number } };
}

export interface PeerProcess {
  site: string;
  dataDir: string;
  dicomPort: number;
  httpPort: number;
  p2pPort: number;
  process: ManagedProcess;
  status(): Promise<MeshStatus>;
  kill9(): Promise<void>;
  stop(): Promise<void>;
  /** Everything the peer printed, for failure messages. */
  output(): string;
}

export class MeshCluster {
  readonly root = mkdtempSync(join(tmpdir(), 'pacs-mesh-cluster-'));
  readonly swarmKeyFile = join(this.root, 'swarm.key');
  readonly peers: PeerProcess[] = [];
  /** Unhandled rejections the peers reported: dispose() fails the test with them. */
  readonly unhandledRejections: string[] = [];

  async init(): Promise<void> {
    await writeSwarmKeyFile(this.swarmKeyFile);
  }

  /** Starts a peer; `bootstrap` defaults to the first peer's address. Resolves once /healthz answers. */
  /**
   * `logFile`: every byte the peer prints is also appended there (the output kept in memory is its last 20,000
   * characters); `logLevel` defaults to warn; `readyTimeoutMs` (default 90 s: a bound for a hang; a peer at load 20-29 took over 30 s to start (hunt 139)) bounds the wait for /healthz;
   * `isolationCheckMs`: the peer's check whether it serves alone runs this long after its start and at this interval
   * (PACS_MESH_ISOLATION_CHECK_MS), instead of 15 s and 10 minutes; `joinWaitAfterStartMs`: how long its searches
   * wait for a first other site after its start (PACS_MESH_JOIN_WAIT_MS), instead of 15 s; `repairKeysMax`: keys per
   * repair exchange (PACS_MESH_REPAIR_KEYS_MAX), instead of 2,000, for a refill lasting longer than a small archive's;
   * `forgetRepublishIntervalMs`: how often it sends its forget-peers again (PACS_MESH_FORGET_REPUBLISH_MS), instead of 60 s;
   * `aloneJoinWaitMs`: how long a joiner whose roster holds itself alone waits to elect itself (PACS_MESH_ALONE_JOIN_WAIT_MS), instead of 15 s.
   */
  async start(
    site: string,
    opts: { dataDir?: string; bootstrap?: string[]; extraArgs?: string[]; swarmKeyFile?: string | null; ports?: { dicom: number; http: number; p2p: number }; logFile?: string; logLevel?: 'info' | 'warn'; readyTimeoutMs?: number; isolationCheckMs?: number; joinWaitAfterStartMs?: number; repairKeysMax?: number; forgetRepublishIntervalMs?: number; aloneJoinWaitMs?: number } = {},
  ): Promise<PeerProcess> {
    const dataDir = opts.dataDir ?? join(this.root, site);
    const [dicomPort, httpPort, p2pPort] = opts.ports ? [opts.ports.dicom, opts.ports.http, opts.ports.p2p] : [await getFreePort(), await getFreePort(), await getFreePort()];
    const bootstrap = opts.bootstrap ?? (this.peers.length > 0 ? await this.peers[0]!.status().then((s) => (s.self.multiaddrs ?? []).slice(0, 1)) : []);
    // Without a key the peer is a single-site archive, for which the libp2p port means nothing.
    const keyArgs = opts.swarmKeyFile === null ? [] : ['--swarm-key', opts.swarmKeyFile ?? this.swarmKeyFile, '--p2p-port', String(p2pPort)];
    const args = peerProcessArgs([
      'start',
      '--site', site, '--data', dataDir, '--host', '127.0.0.1',
      '--dicom-port', String(dicomPort), '--http-port', String(httpPort),
      ...keyArgs, ...(bootstrap ?? []).flatMap((b) => ['--bootstrap', b]), '--log-level', opts.logLevel ?? 'warn', ...(opts.extraArgs ?? []),
    ]);
    const env = {
      ...peerProcessEnv(),
      ...(opts.isolationCheckMs === undefined ? {} : { PACS_MESH_ISOLATION_CHECK_MS: String(opts.isolationCheckMs) }),
      ...(opts.joinWaitAfterStartMs === undefined ? {} : { PACS_MESH_JOIN_WAIT_MS: String(opts.joinWaitAfterStartMs) }),
      ...(opts.repairKeysMax === undefined ? {} : { PACS_MESH_REPAIR_KEYS_MAX: String(opts.repairKeysMax) }),
      ...(opts.forgetRepublishIntervalMs === undefined ? {} : { PACS_MESH_FORGET_REPUBLISH_MS: String(opts.forgetRepublishIntervalMs) }),
      ...(opts.aloneJoinWaitMs === undefined ? {} : { PACS_MESH_ALONE_JOIN_WAIT_MS: String(opts.aloneJoinWaitMs) }),
    };
    const process = spawnManaged(globalThis.process.execPath, args, { cwd: repoRoot, env });
    let output = '';
    const keep = (b: Buffer) => {
      output = (output + b.toString()).slice(-20_000);
      if (opts.logFile !== undefined) appendFileSync(opts.logFile, b);
    };
    process.child.stdout?.on('data', keep);
    process.child.stderr?.on('data', (b: Buffer) => {
      keep(b);
      // The peer serves on after an unhandled rejection (src/cli.ts); a test must not.
      if (b.includes('ERR_UNHANDLED_REJECTION')) this.unhandledRejections.push(`${site}: ${b.toString().slice(0, 2000)}`);
    });
    const peer: PeerProcess = {
      site,
      dataDir,
      dicomPort,
      httpPort,
      p2pPort,
      process,
      status: async () => {
        const response = await fetch(`http://127.0.0.1:${httpPort}/api/mesh`, { signal: AbortSignal.timeout(3000) });
        return (await response.json()) as MeshStatus;
      },
      kill9: async () => {
        process.child.kill('SIGKILL');
        await process.exited;
      },
      stop: () => process.stop(5000),
      output: () => output,
    };
    const readyTimeoutMs = opts.readyTimeoutMs ?? 90_000;
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      if (process.hasExited) throw new Error(`${site} exited during start:\n${output}`);
      try {
        const response = await fetch(`http://127.0.0.1:${httpPort}/healthz`, { signal: AbortSignal.timeout(1000) });
        if (response.ok) break;
      } catch {
        // not yet listening
      }
      if (Date.now() > deadline) {
        // Stopped, or it outlived the test (it is in no cluster's peers to dispose of) and its pipes held the
        // test file open for good: a balancer test hung 50 min after a slow start on a loaded machine (helper 92).
        await process.stop(5000);
        throw new Error(`${site} not ready in ${readyTimeoutMs / 1000} s:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 150));
    }
    this.peers.push(peer);
    return peer;
  }

  /** Takes `peer` out of the peers this cluster stops at its disposal (a test stopped or killed it, and may start it again). */
  release(peer: PeerProcess): void {
    this.peers.splice(this.peers.indexOf(peer), 1);
  }

  async dispose(): Promise<void> {
    await Promise.all(this.peers.map((p) => p.stop().catch(() => undefined)));
    rmSync(this.root, { recursive: true, force: true });
    if (this.unhandledRejections.length > 0) throw new Error(`peers reported unhandled rejections:\n${this.unhandledRejections.join('\n')}`);
  }
}

/** A fresh cluster (its swarm key written), disposed after the test. */
export async function newCluster(t: { after(fn: () => Promise<void>): void }): Promise<MeshCluster> {
  const cluster = new MeshCluster();
  t.after(() => cluster.dispose());
  await cluster.init();
  return cluster;
}

/**
 * Three sites (site-a, then site-b and site-c bootstrapping from it, started together) on a fresh cluster
 * disposed after the test; resolves once site-c sees all three alive.
 */
export async function startThreeSites(
  t: { after(fn: () => Promise<void>): void },
  opts: { logLevel?: 'info' | 'warn'; forgetRepublishIntervalMs?: number } = {},
): Promise<{ cluster: MeshCluster; a: PeerProcess; b: PeerProcess; c: PeerProcess }> {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a', opts);
  // b and c both join through a: started one after the other, the second waited for the first's start.
  const [b, c] = await Promise.all([cluster.start('site-b', opts), cluster.start('site-c', opts)]);
  await eventually(
    async () => (await c.status()).members?.filter((m) => m.alive).length === 3,
    20_000,
    async () => `members seen by C: ${JSON.stringify((await c.status()).members)}`,
  );
  return { cluster, a, b, c };
}

/** Polls until `check` returns true; fails with `describe()` after `timeoutMs`. */
export async function eventually(check: () => Promise<boolean>, timeoutMs: number, describe: () => Promise<string> | string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // a peer that is restarting answers nothing for a moment
    }
    if (Date.now() > deadline) throw new Error(`condition not met in ${timeoutMs} ms: ${await describe()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The statuses when every peer follows the same leader in the same term and holds the same voters (list and version), else null. */
export async function agreedStatuses(peers: PeerProcess[]): Promise<MeshStatus[] | null> {
  const seen = await Promise.all(peers.map((p) => p.status()));
  const first = seen[0]!;
  const same = seen.every((s) => s.leader != null && s.leader.peerId === first.leader?.peerId && s.leader.term === first.leader?.term && JSON.stringify(s.balancer?.voters) === JSON.stringify(first.balancer?.voters));
  return same ? seen : null;
}

/** Each peer's site, leader and balancer view, for a failed wait's message. */
export async function describeElection(peers: PeerProcess[]): Promise<string> {
  return JSON.stringify(await Promise.all(peers.map(async (p) => {
    const s = await p.status();
    return { site: p.site, leader: s.leader, balancer: s.balancer };
  })));
}

/**
 * Polls until every peer follows one leader and holds admitted voters naming exactly these peers (agreedStatuses).
 * Admission goes one peer at a time: a leader killed before it ends can leave the survivors without a majority of
 * the list they hold (two voters, one dead), which is right, but not what a test of a new election means to set up.
 */
export async function untilAllAdmitted(peers: PeerProcess[], timeoutMs = 60_000): Promise<void> {
  const ids = (await Promise.all(peers.map(async (p) => (await p.status()).self.peerId!))).sort();
  await eventually(
    async () => JSON.stringify((await agreedStatuses(peers))?.[0]?.balancer?.voters?.peers) === JSON.stringify(ids),
    timeoutMs,
    async () => `want voters ${JSON.stringify(ids)}: ${await describeElection(peers)}`,
  );
}

/** C-GET of one study into a fresh folder; returns the data set bytes of each retrieved file by SOP Instance UID. */
export async function getStudy(peer: PeerProcess, studyUid: string, dir: string): Promise<Map<string, Buffer>> {
  mkdirSync(dir, { recursive: true });
  const result = await runTool('getscu', ['-S', '-aec', 'PACSMESH', '-od', dir, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(peer.dicomPort)], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  const byUid = new Map<string, Buffer>();
  for (const name of readdirSync(dir)) {
    const bytes = readFileSync(join(dir, name));
    const split = splitPart10(bytes);
    const uid = split.metaElements.find((e) => e.tag === 0x00020003)?.value ?? name;
    byUid.set(uid, Buffer.from(bytes.subarray(split.datasetOffset)));
  }
  return byUid;
}
