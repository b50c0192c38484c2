/**
 * The common shape of a server under benchmark, so that every benchmark (ingest, mesh ingest,
 * failover, ...) starts, measures and stops servers the same way.
 *
 * Rules every implementation follows:
 *  - listens on 127.0.0.1 (or, for tools without a bind option, is only ever contacted there);
 *  - gets a fresh data directory per start (the caller owns and removes it);
 *  - runs with `TCP_NODELAY=1` in its environment (Nagle costs ~44 ms per C-STORE otherwise);
 *  - is started through `spawnManaged` (test/support/dicom-tools.ts), so it dies with the benchmark;
 *  - `start` resolves only once the server accepts DICOM associations, and rejects (after killing
 *    what it started) when the server does not come up in time.
 */
import type { ManagedProcess } from '../../../test/support/dicom-tools.ts';

export interface BenchServer {
  /** Display name ("storescp", "Orthanc", "pacs-mesh"). */
  name: string;
  /** Called AE title to use from SCUs. */
  aeTitle: string;
  host: string;
  dicomPort: number;
  /** HTTP port when the server has one. */
  httpPort?: number;
  /** Pid of the process doing the work (not a wrapper). */
  pid: number;
  dataDir: string;
  process: ManagedProcess;
  /** Number of instances the server reports as stored. */
  countStored(): Promise<number>;
  /** Recent stdout/stderr of the server (bounded), for error messages. */
  output(): string;
  /** Stops the server and waits until the process is gone (SIGTERM, then SIGKILL after a grace period). */
  stop(): Promise<void>;
}

export interface BenchServerStartOptions {
  /** Fresh, empty directory for the server's storage. */
  dataDir: string;
  /** Defaults per server. */
  aeTitle?: string;
  /** Free ports are picked when omitted. */
  dicomPort?: number;
  httpPort?: number;
  /** How long to wait for readiness. */
  startTimeoutMs?: number;
  /** Extra command-line arguments, for a server that takes them (pacs-mesh). */
  extraArgs?: string[];
}

export interface BenchServerFactory {
  /** Name used on the command line (--servers) and in results. */
  id: string;
  name: string;
  /** Version string, or undefined when the server is not available. */
  version(): Promise<string | undefined>;
  start(opts: BenchServerStartOptions): Promise<BenchServer>;
}

/** Keeps the last `max` bytes of a process's stdout and stderr. */
export function captureOutput(mp: ManagedProcess, max = 64 * 1024): () => string {
  let buf = '';
  const add = (b: Buffer) => {
    buf += b.toString('utf8');
    if (buf.length > max) buf = buf.slice(buf.length - max);
  };
  mp.child.stdout?.on('data', add);
  mp.child.stderr?.on('data', add);
  return () => buf;
}

/** GET a URL with a timeout; resolves with status and parsed JSON (undefined when not JSON). */
export async function httpGetJson(url: string, timeoutMs = 5000): Promise<{ status: number; json: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json };
}

/**
 * Polls `url` until it answers 200, the process exits, or `timeoutMs` passes. Returns true on 200.
 */
export async function waitForHttpOk(url: string, timeoutMs: number, mp: ManagedProcess, pollMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !mp.hasExited) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return true;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
  return false;
}
