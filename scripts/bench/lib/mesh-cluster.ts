/**
 * A small cluster of `pacs-mesh` peer processes on 127.0.0.1 for the mesh benchmarks (mesh-ingest,
 * catch-up, failover): start N peers sharing one swarm key, kill -9 one, stop one (SIGTERM), restart one
 * with its data directory, and wait until the mesh is whole again.
 *
 * Each peer keeps its ports (DICOM, HTTP, libp2p) and data directory for the life of the cluster, so a
 * restarted peer comes back at the same addresses with the same PeerId (the identity lives in the data
 * directory). Peers are started through `startPacsMesh` (lib/pacs-mesh.ts), i.e. `spawnManaged`: they die
 * with the benchmark, even when it is killed. Every wait is bounded.
 *
 * The peer contract used here (GET /api/mesh):
 *   { self: { site, peerId, multiaddrs }, instances, activeAssociations,
 *     members: [{ peerId, site, alive, status, dicom, http, instances, load }], leader: { peerId, site, term } | null }
 * The first peer is started without --bootstrap; the others bootstrap with its `self.multiaddrs[0]`
 * (a restarted peer bootstraps with the address of any running peer).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { getFreePort, runTool, sleep } from '../../../test/support/dicom-tools.ts';
import { REPO_ROOT, startPacsMesh, type PacsMeshServer } from './pacs-mesh.ts';
import { peerProcessArgs } from '../../../src/peer-process.ts';

export interface MeshMemberStatus {
  peerId: string;
  site?: string;
  alive?: boolean;
  status?: string;
  dicom?: string;
  http?: string;
  instances?: number;
  load?: unknown;
}

export interface MeshApiStatus {
  self: { site?: string; peerId?: string; multiaddrs?: string[] };
  instances: number;
  activeAssociations?: number;
  /** Associations this peer has served since it started (when the peer reports it). */
  associationsServed?: number;
  members?: MeshMemberStatus[];
  leader?: { peerId: string; site?: string; term?: number } | null;
  /** The admitted voters this peer holds (admitted voters, the command's default). */
  balancer?: { voters?: { peers: string[] } };
}

export interface MeshPeerSpec {
  /** Short name used in tables ("A", "p1", ...). */
  name: string;
  site: string;
  priority?: number;
  /** Extra CLI arguments of this peer only. */
  extraArgs?: string[];
}

export type LogLevel = 'info' | 'warn' | 'error' | 'silent';

export interface MeshClusterOptions {
  /** Directory for the swarm key and the peers' data directories (the caller removes it). */
  rootDir: string;
  peers: MeshPeerSpec[];
  /** `--write-quorum N` for every peer; omitted: the peer's default. */
  writeQuorum?: number;
  logLevel?: LogLevel;
  /** Extra CLI arguments for every peer. */
  extraArgs?: string[];
  /** Readiness timeout of one peer (default 60 s). */
  startTimeoutMs?: number;
  aeTitle?: string;
}

export interface MeshPeer {
  readonly spec: MeshPeerSpec;
  readonly name: string;
  readonly dataDir: string;
  readonly dicomPort: number;
  readonly httpPort: number;
  readonly p2pPort: number;
  readonly url: string;
  /** The running process, undefined while stopped. */
  server: PacsMeshServer | undefined;
  /** Learnt from /api/mesh once the peer has started; stable across restarts. */
  peerId: string | undefined;
  multiaddr: string | undefined;
  /** Output of the previous incarnations (bounded), for error messages. */
  pastOutput: string;
}

/** utime + stime of a process (all threads) or of one thread, in ms; undefined where /proc is not there. */
export function cpuMs(pid: number, tid?: number): number | undefined {
  try {
    const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
    // The fields after the command name (which may hold spaces), from field 3 on: utime is 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond;
  } catch {
    return undefined;
  }
}
const clockTicksPerSecond = 100;

/** CPU of every running site's process (main thread, all threads), by site name. */
export function sitesCpu(peers: readonly MeshPeer[]): Map<string, { main: number; all: number }> {
  const out = new Map<string, { main: number; all: number }>();
  for (const p of peers) {
    const pid = p.server?.pid;
    if (pid === undefined) continue;
    const main = cpuMs(pid, pid);
    const all = cpuMs(pid);
    if (main !== undefined && all !== undefined) out.set(p.name, { main, all });
  }
  return out;
}

export function isRunning(p: MeshPeer): boolean {
  return p.server !== undefined && !p.server.process.hasExited;
}

/** GET /api/mesh of one peer (rejects on a connection error, a timeout or a non-200 answer). */
export async function meshStatus(p: MeshPeer, timeoutMs = 2000): Promise<MeshApiStatus> {
  const res = await fetch(`${p.url}/api/mesh`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${p.name}: GET /api/mesh HTTP ${res.status}`);
  return JSON.parse(text) as MeshApiStatus;
}

/** The status, or undefined when the peer does not answer. */
export async function tryStatus(p: MeshPeer, timeoutMs = 2000): Promise<MeshApiStatus | undefined> {
  try {
    return await meshStatus(p, timeoutMs);
  } catch {
    return undefined;
  }
}

export function memberIsAlive(m: MeshMemberStatus): boolean {
  return m.alive === true || (m.alive === undefined && m.status === 'alive');
}

/** PeerIds a status reports alive, itself included. */
export function aliveSet(s: MeshApiStatus): Set<string> {
  const ids = new Set<string>();
  for (const m of s.members ?? []) if (memberIsAlive(m)) ids.add(m.peerId);
  if (s.self.peerId !== undefined) ids.add(s.self.peerId);
  return ids;
}

export interface WholeResult {
  ok: boolean;
  /** Time from the call until the condition was seen (or until giving up). */
  ms: number;
  /** performance.now() when the condition was seen (when the poll that saw it returned). */
  at: number;
  /** The leader all running peers agree on (when a leader was required or seen). */
  leader?: { peerId: string; term?: number };
  detail: string;
}

export class MeshCluster {
  readonly peers: MeshPeer[] = [];
  readonly swarmKeyFile: string;

  private constructor(readonly opts: MeshClusterOptions) {
    this.swarmKeyFile = join(opts.rootDir, 'swarm.key');
  }

  /** Allocates ports and data directories and writes the swarm key with `pacs-mesh keygen`. Starts nothing. */
  static async create(opts: MeshClusterOptions): Promise<MeshCluster> {
    const c = new MeshCluster(opts);
    await mkdir(opts.rootDir, { recursive: true });
    const used = new Set<number>();
    const port = async (): Promise<number> => {
      for (let i = 0; i < 50; i++) {
        const p = await getFreePort();
        if (!used.has(p)) {
          used.add(p);
          return p;
        }
      }
      throw new Error('no free port');
    };
    for (const spec of opts.peers) {
      const dataDir = join(opts.rootDir, `${spec.site}-${spec.name}`);
      const httpPort = await port();
      c.peers.push({
        spec,
        name: spec.name,
        dataDir,
        dicomPort: await port(),
        httpPort,
        p2pPort: await port(),
        url: `http://127.0.0.1:${httpPort}`,
        server: undefined,
        peerId: undefined,
        multiaddr: undefined,
        pastOutput: '',
      });
    }
    const r = await runTool(process.execPath, peerProcessArgs(['keygen', '--out', c.swarmKeyFile]), { cwd: REPO_ROOT, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`pacs-mesh keygen failed (${r.code}): ${r.stderr.slice(-2000)}`);
    return c;
  }

  peer(name: string): MeshPeer {
    const p = this.peers.find((x) => x.name === name);
    if (p === undefined) throw new Error(`no peer ${name}`);
    return p;
  }

  running(): MeshPeer[] {
    return this.peers.filter(isRunning);
  }

  /** Starts the first peer, then all the others at once, bootstrapping with the first one. */
  async startAll(): Promise<void> {
    const [first, ...rest] = this.peers;
    if (first === undefined) return;
    await this.start(first, []);
    await Promise.all(rest.map((p) => this.start(p)));
  }

  /**
   * Starts (or restarts) a peer with its data directory; resolves once GET /healthz answers 200 and the
   * DICOM port accepts connections. `bootstrap` defaults to the address of a running peer (none for the
   * first one).
   */
  async start(p: MeshPeer, bootstrap?: string[]): Promise<PacsMeshServer> {
    if (isRunning(p)) throw new Error(`${p.name} is already running`);
    let addrs = bootstrap;
    if (addrs === undefined) {
      addrs = [];
      for (const other of this.running()) {
        if (other === p) continue;
        const a = other.multiaddr ?? (await tryStatus(other))?.self.multiaddrs?.[0];
        if (a !== undefined) {
          addrs = [a];
          break;
        }
      }
    }
    const args = [
      '--p2p-port', String(p.p2pPort),
      '--swarm-key', this.swarmKeyFile,
      ...addrs.flatMap((a) => ['--bootstrap', a]),
      '--log-level', this.opts.logLevel ?? 'warn',
      ...(this.opts.writeQuorum !== undefined ? ['--write-quorum', String(this.opts.writeQuorum)] : []),
      ...(p.spec.priority !== undefined ? ['--priority', String(p.spec.priority)] : []),
      ...(this.opts.extraArgs ?? []),
      ...(p.spec.extraArgs ?? []),
    ];
    p.server = await startPacsMesh({
      dataDir: p.dataDir,
      site: p.spec.site,
      aeTitle: this.opts.aeTitle ?? 'PACSMESH',
      dicomPort: p.dicomPort,
      httpPort: p.httpPort,
      extraArgs: args,
      startTimeoutMs: this.opts.startTimeoutMs ?? 60_000,
    });
    const s = await tryStatus(p, 5000);
    if (s?.self.peerId !== undefined) p.peerId = s.self.peerId;
    const ma = s?.self.multiaddrs?.[0];
    if (ma !== undefined) p.multiaddr = ma;
    return p.server;
  }

  private retire(p: MeshPeer): void {
    if (p.server !== undefined) p.pastOutput = (p.pastOutput + p.server.output()).slice(-32_000);
    p.server = undefined;
  }

  /** kill -9; resolves once the process is gone. Returns performance.now() just before the signal. */
  async kill9(p: MeshPeer): Promise<number> {
    const s = p.server;
    if (s === undefined || s.process.hasExited) throw new Error(`${p.name} is not running`);
    const t = performance.now();
    s.process.child.kill('SIGKILL');
    await s.process.exited;
    this.retire(p);
    return t;
  }

  /** SIGTERM (SIGKILL after 10 s); resolves once the process is gone. */
  async terminate(p: MeshPeer): Promise<void> {
    if (p.server === undefined) return;
    await p.server.stop().catch(() => undefined);
    this.retire(p);
  }

  /**
   * Polls every `intervalMs` until every running peer answers, sees every running peer alive and (when
   * `requireLeader`) all report the same non-null leader that is one of the running peers, and hold admitted voters
   * naming every running peer (a leader killed before the others were admitted leaves no majority to elect).
   */
  async waitWhole(timeoutMs: number, opts: { requireLeader?: boolean; intervalMs?: number; exclude?: string } = {}): Promise<WholeResult> {
    const t0 = performance.now();
    const deadline = t0 + timeoutMs;
    let detail = '';
    for (let i = 0; i < 100_000 && performance.now() < deadline; i++) {
      const live = this.running();
      const statuses = await Promise.all(live.map((p) => tryStatus(p, 1000)));
      const ids = live.map((p, k) => p.peerId ?? statuses[k]?.self.peerId);
      let ok = statuses.every((s) => s !== undefined) && ids.every((x) => x !== undefined);
      if (ok) {
        for (const s of statuses) {
          const alive = aliveSet(s!);
          if (!ids.every((id) => alive.has(id!))) ok = false;
        }
      }
      let leader: WholeResult['leader'];
      if (ok && opts.requireLeader === true) {
        const ls = statuses.map((s) => s!.leader ?? null);
        const first = ls[0];
        ok = first !== null && first !== undefined && ls.every((l) => l !== null && l.peerId === first.peerId) && ids.includes(first.peerId) && first.peerId !== opts.exclude;
        ok &&= statuses.every((s) => s!.balancer?.voters === undefined || ids.every((id) => s!.balancer!.voters!.peers.includes(id!)));
        if (ok) leader = { peerId: first!.peerId, term: first!.term };
      }
      if (ok) {
        const at = performance.now();
        return { ok: true, ms: at - t0, at, leader, detail: '' };
      }
      detail = live
        .map((p, k) => {
          const s = statuses[k];
          if (s === undefined) return `${p.name}: no answer`;
          const voters = s.balancer?.voters === undefined ? '' : ` voters ${s.balancer.voters.peers.map((id) => this.nameOf(id)).join(',')}`;
          return `${p.name}: alive ${[...aliveSet(s)].map((id) => this.nameOf(id)).join(',')} leader ${s.leader ? this.nameOf(s.leader.peerId) : 'null'}${voters}`;
        })
        .join('; ');
      await sleep(opts.intervalMs ?? 100);
    }
    const at = performance.now();
    return { ok: false, ms: at - t0, at, detail };
  }

  /** The short name of a PeerId (or the PeerId's tail when unknown). */
  nameOf(peerId: string | undefined): string {
    if (peerId === undefined) return '?';
    return this.peers.find((p) => p.peerId === peerId)?.name ?? `…${peerId.slice(-6)}`;
  }

  byPeerId(peerId: string): MeshPeer | undefined {
    return this.peers.find((p) => p.peerId === peerId);
  }

  /** Recent output of a peer (current and past incarnations). */
  output(p: MeshPeer): string {
    return (p.pastOutput + (p.server?.output() ?? '')).slice(-8000);
  }

  /** Stops every running peer (SIGTERM, then SIGKILL). Never throws. */
  async stopAll(): Promise<void> {
    await Promise.all(this.running().map((p) => this.terminate(p).catch(() => undefined)));
  }
}

/** Polls `f` every `intervalMs` until it returns a value other than undefined, or `timeoutMs` passes. */
export async function pollUntil<T>(f: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 100): Promise<T | undefined> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 1_000_000 && performance.now() < deadline; i++) {
    const v = await f().catch(() => undefined);
    if (v !== undefined) return v;
    await sleep(intervalMs);
  }
  return undefined;
}

/** The standard three sites of one peer each: A, B, C (sites site-a, site-b, site-c). */
export function threeSites(n = 3): MeshPeerSpec[] {
  return Array.from({ length: n }, (_, i) => {
    const letter = String.fromCharCode(65 + i);
    return { name: letter, site: `site-${letter.toLowerCase()}` };
  });
}

/** One site with `n` peers p1..pn (on purpose: `--site-peers several`, else all but the first stop, exit 2). */
export function oneSite(n = 3, site = 'site-a'): MeshPeerSpec[] {
  return Array.from({ length: n }, (_, i) => ({ name: `p${i + 1}`, site, extraArgs: ['--site-peers', 'several'] }));
}

export interface StorescuResult {
  ok: boolean;
  code: number | null;
  timedOut: boolean;
  elapsedMs: number;
  /** performance.now() at spawn and at exit. */
  startedAt: number;
  endedAt: number;
  stderr: string;
}

/** `storescu -aet BENCH -aec <ae> +sd 127.0.0.1 <port> <files or dir...>` with TCP_NODELAY=1. */
export async function storescu(port: number, inputs: string[], opts: { aeTitle?: string; callingAe?: string; timeoutMs?: number; extraArgs?: string[] } = {}): Promise<StorescuResult> {
  const startedAt = performance.now();
  const r = await runTool(
    'storescu',
    ['-aet', opts.callingAe ?? 'BENCH', '-aec', opts.aeTitle ?? 'PACSMESH', ...(opts.extraArgs ?? []), '+sd', '127.0.0.1', String(port), ...inputs],
    { timeoutMs: opts.timeoutMs ?? 600_000, env: { TCP_NODELAY: '1' } },
  );
  const endedAt = performance.now();
  // storescu exits 0 even when a C-STORE-RSP carries a failure status: it logs it as an "E:" line.
  const rspError = /^E: /m.test(r.stderr);
  return { ok: r.code === 0 && !r.timedOut && !rspError, code: r.code, timedOut: r.timedOut, elapsedMs: r.elapsedMs, startedAt, endedAt, stderr: r.stderr };
}

/** The first lines of an error, for a table cell or a log line. */
export function firstLines(e: unknown, n = 6): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split('\n').slice(0, n).join('\n   ');
}
