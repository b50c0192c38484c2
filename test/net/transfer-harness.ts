/** Spawns a receiver and a sender process (fixtures/transfer-peer.ts) and measures one transfer. */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { generateSwarmKey } from '../../src/net/swarm-key.ts';
import { peerNodeFlags, peerProcessEnv } from '../../src/peer-process.ts';
import type { ChildProcess } from 'node:child_process';

const FIXTURE = fileURLToPath(new URL('./fixtures/transfer-peer.ts', import.meta.url));

export interface TransferResult {
  bytes: number;
  senderSha256: string;
  receiverSha256: string;
  ackSha256: string;
  seconds: number;
  mibps: number;
  senderPeakRssMiB: number;
  receiverPeakRssMiB: number;
  disconnects: number;
  /** CPU time (every thread) of each process during the transfer, in ms. */
  senderCpuMs: number;
  receiverCpuMs: number;
}

type Line = Record<string, unknown> & { event: string };

function startPeer(env: Record<string, string>): { child: ChildProcess; next: (event: string, timeoutMs: number) => Promise<Line> } {
  // The same V8 flags as a peer process, so the stream copy that catch-up is compared with runs alike.
  const child = spawn(process.execPath, [...peerNodeFlags, '--import', 'tsx', FIXTURE], { env: peerProcessEnv({ ...process.env, ...env }), stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: Array<{ event: string; resolve: (l: Line) => void; reject: (e: Error) => void }> = [];
  const seen: Line[] = [];
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const dispatch = (): void => {
    for (const w of [...waiting]) {
      const i = seen.findIndex((l) => l.event === w.event || l.event === 'error');
      if (i >= 0) {
        const [line] = seen.splice(i, 1) as [Line];
        waiting.splice(waiting.indexOf(w), 1);
        if (line.event === 'error') w.reject(new Error(`${env.ROLE}: ${String(line.message)}`));
        else w.resolve(line);
      }
    }
  };
  rl.on('line', (text) => {
    try {
      seen.push(JSON.parse(text) as Line);
    } catch {
      return;
    }
    dispatch();
  });
  child.on('exit', (code) => {
    seen.push({ event: 'error', message: `exited with code ${code}` });
    dispatch();
  });
  const next = (event: string, timeoutMs: number): Promise<Line> =>
    new Promise<Line>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${env.ROLE}: no ${event} within ${timeoutMs} ms`)), timeoutMs);
      waiting.push({
        event,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      dispatch();
    });
  return { child, next };
}

async function peakRssMiB(pid: number | undefined): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+)\s+kB/.exec(status)?.[1]);
  return kb / 1024;
}

async function stopPeer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.stdin?.end();
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

export async function measureTransfer(bytes: number, options: { timeoutMs?: number; windowBytes?: number } = {}): Promise<TransferResult> {
  const timeoutMs = options.timeoutMs ?? 300_000;
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-transfer-'));
  const key = generateSwarmKey().text;
  const extra: Record<string, string> = options.windowBytes !== undefined ? { WINDOW_BYTES: String(options.windowBytes) } : {};
  const receiver = startPeer({ ROLE: 'receiver', SWARM_KEY: key, DATA_DIR: join(dir, 'r'), ...extra });
  let sender: ReturnType<typeof startPeer> | undefined;
  try {
    const ready = await receiver.next('ready', 30_000);
    sender = startPeer({ ROLE: 'sender', SWARM_KEY: key, DATA_DIR: join(dir, 's'), BOOTSTRAP: String(ready.addr), TRANSFER_BYTES: String(bytes), ...extra });
    const [sent, received] = await Promise.all([sender.next('sent', timeoutMs), receiver.next('received', timeoutMs)]);
    const ack = sent.ack as { sha256: string };
    return {
      bytes,
      senderSha256: String(sent.sha256),
      receiverSha256: String(received.sha256),
      ackSha256: ack.sha256,
      seconds: Number(sent.seconds),
      mibps: Number(sent.mibps),
      senderPeakRssMiB: await peakRssMiB(sender.child.pid),
      receiverPeakRssMiB: await peakRssMiB(receiver.child.pid),
      disconnects: Number(sent.disconnects) + Number(received.disconnects),
      senderCpuMs: Number(sent.cpuMs),
      receiverCpuMs: Number(received.cpuMs),
    };
  } finally {
    await Promise.allSettled([stopPeer(receiver.child), sender !== undefined ? stopPeer(sender.child) : Promise.resolve()]);
    await rm(dir, { recursive: true, force: true });
  }
}
