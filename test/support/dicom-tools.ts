/**
 * Typed helpers to run DCMTK tools (and other server processes) as children of a test or benchmark.
 *
 * Every child started through `spawnManaged` is:
 *  - started with `setpriv --pdeathsig KILL` when setpriv exists (util-linux; it execs the target, so
 *    the pid is the real process): the kernel kills it if this process dies, even by SIGKILL;
 *  - recorded in a registry that SIGKILLs whatever is still running on `exit`, SIGINT, SIGTERM and on
 *    an uncaught exception.
 * DCMTK servers get `TCP_NODELAY=1` in their environment (Debian's DCMTK leaves Nagle on otherwise and
 * loses ~44 ms per C-STORE).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants as fsConstants, readFileSync, readdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { delimiter, join } from 'node:path';

// ---------------------------------------------------------------------------------------------------
// Executables

/** Absolute path of `cmd` on PATH, or undefined. */
export function which(cmd: string): string | undefined {
  if (cmd.includes('/')) {
    try {
      accessSync(cmd, fsConstants.X_OK);
      return cmd;
    } catch {
      return undefined;
    }
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, cmd);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export const DCMTK_TOOLS = ['storescu', 'storescp', 'findscu', 'getscu', 'movescu', 'echoscu', 'dcmdump'] as const;
export type DcmtkTool = (typeof DCMTK_TOOLS)[number];

/** True when all the given DCMTK tools (default: all of DCMTK_TOOLS) are on PATH. */
export function hasDcmtk(tools: readonly DcmtkTool[] = DCMTK_TOOLS): boolean {
  return tools.every((t) => which(t) !== undefined);
}

// ---------------------------------------------------------------------------------------------------
// Child registry: nothing outlives us

const live = new Set<ChildProcess>();
let handlersInstalled = false;

function killAllNow(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAllNow();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

const setprivPath = which('setpriv');

export interface ManagedProcess {
  child: ChildProcess;
  pid: number;
  /** Resolves with the exit code (or null when killed by a signal) once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** True once the process has exited. */
  readonly hasExited: boolean;
  /** SIGTERM, then SIGKILL after `graceMs` (default 3000); resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
  /**
   * The exit, or 'running' if the process has not exited within `timeoutMs`. Its timer is cleared either way: a
   * bare setTimeout raced against the exit kept the test file's process alive for the rest of it (20 s a run).
   */
  exitedWithin(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | 'running'>;
}

/**
 * Spawns a process that is killed with us (see the module comment). `stdio` defaults to
 * ['ignore', 'pipe', 'pipe'].
 */
export function spawnManaged(cmd: string, args: string[], opts: SpawnOptions = {}): ManagedProcess {
  installExitHandlers();
  const [file, argv] = setprivPath !== undefined ? [setprivPath, ['--pdeathsig', 'KILL', '--', cmd, ...args]] : [cmd, args];
  const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  live.add(child);
  let hasExited = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      hasExited = true;
      live.delete(child);
      resolve({ code, signal });
    });
    child.once('error', () => {
      hasExited = true;
      live.delete(child);
      resolve({ code: null, signal: null });
    });
  });
  if (child.pid === undefined) {
    // spawn failed synchronously (ENOENT is reported via 'error')
  }
  const mp: ManagedProcess = {
    child,
    pid: child.pid ?? -1,
    exited,
    get hasExited() {
      return hasExited;
    },
    async stop(graceMs = 3000) {
      if (hasExited) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (!hasExited) child.kill('SIGKILL');
      }, graceMs);
      await exited;
      clearTimeout(timer);
    },
    async exitedWithin(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      try {
        return await Promise.race([exited, new Promise<'running'>((resolve) => (timer = setTimeout(() => resolve('running'), timeoutMs)))]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return mp;
}

// ---------------------------------------------------------------------------------------------------
// runTool

export interface RunToolOptions {
  timeoutMs?: number;
  /** Merged over process.env. */
  env?: Record<string, string | undefined>;
  cwd?: string;
}

export interface RunToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Wall time from spawn to exit. */
  elapsedMs: number;
  pid: number;
}

/** Runs a tool to completion, killing it (SIGKILL) after `timeoutMs` (default 60 s). */
export async function runTool(cmd: string, args: string[], opts: RunToolOptions = {}): Promise<RunToolResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const start = performance.now();
  const mp = spawnManaged(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  mp.child.stdout?.on('data', (b: Buffer) => out.push(b));
  mp.child.stderr?.on('data', (b: Buffer) => err.push(b));
  let spawnError: Error | undefined;
  mp.child.once('error', (e) => {
    spawnError = e;
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    mp.child.kill('SIGKILL');
  }, timeoutMs);
  const { code, signal } = await mp.exited;
  const elapsedMs = performance.now() - start;
  clearTimeout(timer);
  // Let the pipes drain ('close' follows 'exit').
  await new Promise<void>((resolve) => {
    if (mp.child.stdout === null || mp.child.stdout.closed) return resolve();
    const t = setTimeout(resolve, 1000);
    mp.child.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
  let stderr = Buffer.concat(err).toString('utf8');
  if (spawnError !== undefined) stderr += `\n${spawnError.message}`;
  return { code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr, timedOut, elapsedMs, pid: mp.pid };
}

// ---------------------------------------------------------------------------------------------------
// Ports

/** Ports handed out by this process, so that two asked for before either is bound differ. */
const portsHandedOut = new Set<number>();

/**
 * A TCP port free on 127.0.0.1 right now, for a process that binds it a moment later. Drawn below Linux's
 * ephemeral range (32768+): a port the kernel picks for `listen(0)` lies in that range, where the outgoing
 * connections of other peers and tests also land, and one of them took such a port before the peer it
 * was meant for had started (EADDRINUSE in the mesh tests). Never the same port twice per process.
 */
export async function getFreePort(tries = 200): Promise<number> {
  for (let i = 0; i < tries; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (portsHandedOut.has(port) || !(await canListen(port))) continue;
    portsHandedOut.add(port);
    return port;
  }
  throw new Error(`no free port in 20000-31999 after ${tries} tries`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * A base port whose `base + offset` ports are all free right now, for launchers that lay ports out from a
 * base (scripts/local-mesh.ts). Drawn below Linux's ephemeral range (32768+), where outgoing connections
 * of other tests never land.
 */
export async function getFreePortBlock(offsets: readonly number[], tries = 50): Promise<number> {
  for (let i = 0; i < tries; i++) {
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    if (offsets.some((o) => portsHandedOut.has(base + o))) continue;
    if (!(await Promise.all(offsets.map((o) => canListen(base + o)))).every(Boolean)) continue;
    for (const o of offsets) portsHandedOut.add(base + o);
    return base;
  }
  throw new Error(`no base port with ${offsets.length} free ports at its offsets after ${tries} tries`);
}

/** Resolves true once a TCP connection to 127.0.0.1:port succeeds, false after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs = 10_000, isAlive: () => boolean = () => true): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && isAlive()) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port });
      const t = setTimeout(() => {
        s.destroy();
        resolve(false);
      }, 500);
      s.once('connect', () => {
        clearTimeout(t);
        s.destroy();
        resolve(true);
      });
      s.once('error', () => {
        clearTimeout(t);
        resolve(false);
      });
    });
    if (ok) return true;
    await sleep(25);
  }
  return false;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------------
// storescp

export interface StartStorescpOptions {
  port: number;
  outDir: string;
  aeTitle?: string;
  /** Extra storescp arguments (before the port). */
  extraArgs?: string[];
  /** Readiness timeout (default 10 s). */
  timeoutMs?: number;
}

export interface StorescpHandle {
  pid: number;
  port: number;
  aeTitle: string;
  outDir: string;
  process: ManagedProcess;
  /** Output collected so far (stdout and stderr). */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts DCMTK storescp writing `<outDir>/<modality>.<sop instance uid>[.dcm]` files, with
 * `TCP_NODELAY=1`. Resolves once it accepts TCP connections. storescp (3.6.7) has no bind option: it
 * listens on all interfaces, but only loopback clients are used here.
 */
export async function startStorescp(opts: StartStorescpOptions): Promise<StorescpHandle> {
  const aeTitle = opts.aeTitle ?? 'STORESCP';
  await mkdir(opts.outDir, { recursive: true });
  const args = ['-aet', aeTitle, '-od', opts.outDir, '-dhl', ...(opts.extraArgs ?? []), String(opts.port)];
  const mp = spawnManaged('storescp', args, { env: { ...process.env, TCP_NODELAY: '1' } });
  const chunks: Buffer[] = [];
  let size = 0;
  const keep = (b: Buffer) => {
    if (size < 1_000_000) {
      chunks.push(b);
      size += b.length;
    }
  };
  mp.child.stdout?.on('data', keep);
  mp.child.stderr?.on('data', keep);
  const output = () => Buffer.concat(chunks).toString('utf8');
  const ready = await waitForPort(opts.port, opts.timeoutMs ?? 10_000, () => !mp.hasExited);
  if (!ready) {
    await mp.stop(500);
    throw new Error(`storescp did not start on port ${opts.port}: ${output()}`);
  }
  return { pid: mp.pid, port: opts.port, aeTitle, outDir: opts.outDir, process: mp, output, stop: () => mp.stop() };
}

// ---------------------------------------------------------------------------------------------------
// Memory

function readStatusField(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set size (VmHWM) of a live process, in bytes; undefined when it is gone. */
export function peakRssBytes(pid: number): number | undefined {
  return readStatusField(pid, 'VmHWM');
}

/** Current resident set size (VmRSS), in bytes. */
export function rssBytes(pid: number): number | undefined {
  return readStatusField(pid, 'VmRSS');
}

/** Direct children of `pid` (from /proc/<pid>/task/<tid>/children, all threads). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (text) for (const p of text.split(/\s+/)) out.push(Number(p));
    } catch {
      // thread gone
    }
  }
  return out;
}

/** `pid` and all its descendants (bounded to 1000 processes). */
export function processTree(pid: number): number[] {
  const seen: number[] = [];
  const queue = [pid];
  while (queue.length > 0 && seen.length < 1000) {
    const p = queue.shift()!;
    if (seen.includes(p)) continue;
    seen.push(p);
    queue.push(...childPids(p));
  }
  return seen;
}

export interface RssSample {
  /** Largest VmHWM/VmRSS seen for any single process of the tree: the process that does the work. */
  peakProcessBytes: number;
  /** Pid of that process. */
  peakPid: number;
  /** Largest sum of VmRSS over the whole tree at one sample. */
  peakTreeBytes: number;
  samples: number;
}

export interface RssSampler {
  /** Current figures (the sampler keeps running). */
  read(): RssSample;
  /** Takes a last sample, stops polling and returns the figures. Call it before stopping the process. */
  stop(): RssSample;
}

/**
 * Polls VmRSS (and VmHWM) of `pid` and its descendants every `intervalMs` (default 50 ms) and keeps the
 * maxima. For a wrapper (npx, a shell, `setpriv`) the descendants are included, and `peakProcessBytes`
 * is the heaviest single process, i.e. the one doing the work. Polling stops by itself after
 * `maxDurationMs` (default 1 hour).
 */
export function startRssSampler(pid: number, opts: { intervalMs?: number; maxDurationMs?: number } = {}): RssSampler {
  const state: RssSample = { peakProcessBytes: 0, peakPid: pid, peakTreeBytes: 0, samples: 0 };
  const sample = () => {
    let tree = 0;
    for (const p of processTree(pid)) {
      const rss = rssBytes(p) ?? 0;
      const hwm = Math.max(peakRssBytes(p) ?? 0, rss);
      tree += rss;
      if (hwm > state.peakProcessBytes) {
        state.peakProcessBytes = hwm;
        state.peakPid = p;
      }
    }
    if (tree > state.peakTreeBytes) state.peakTreeBytes = tree;
    state.samples++;
  };
  sample();
  const timer = setInterval(sample, opts.intervalMs ?? 50);
  timer.unref();
  const cap = setTimeout(() => clearInterval(timer), opts.maxDurationMs ?? 3_600_000);
  cap.unref();
  return {
    read: () => ({ ...state }),
    stop: () => {
      clearInterval(timer);
      clearTimeout(cap);
      sample();
      return { ...state };
    },
  };
}
