/**
 * `npm start` as a new user runs it: the local mesh launcher brings up three sites that see each other,
 * agree on a leader and replicate, and Ctrl-C (SIGINT) stops them all.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, repoRoot } from './support.ts';
import { getFreePortBlock, runTool, spawnManaged } from '../support/dicom-tools.ts';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { makeInstance } from '../support/synthetic-dicom.ts';

interface Status {
  instances: number;
  leader: { peerId: string } | null;
  members: Array<{ alive: boolean; electable: boolean }>;
  balancer?: { voters?: { peers: string[] } };
}

test('npm start: a local mesh of three sites that find each other and replicate', { timeout: 120_000 }, async (t) => {
  const dataRoot = mkdtempSync(join(tmpdir(), 'pacs-local-mesh-'));
  // The launcher's layout: DICOM base+0..2, HTTP base+100..102, libp2p base+200..202, all free.
  const basePort = await getFreePortBlock([0, 1, 2, 100, 101, 102, 200, 201, 202]);
  const launcher = spawnManaged(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts/local-mesh.ts'), '--data', dataRoot, '--base-port', String(basePort)], { cwd: repoRoot });
  let output = '';
  launcher.child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  launcher.child.stderr?.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-20_000)));
  t.after(async () => {
    await launcher.stop(10_000);
    rmSync(dataRoot, { recursive: true, force: true });
  });
  const status = async (i: number) => (await (await fetch(`http://127.0.0.1:${basePort + 100 + i}/api/mesh`, { signal: AbortSignal.timeout(2000) })).json()) as Status;
  await eventually(
    async () => {
      const views = await Promise.all([0, 1, 2].map(status));
      const leaders = new Set(views.map((v) => v.leader?.peerId));
      // Admitted voters (hunt 186): site-a founds them and admits the two others.
      const admitted = views.every((v) => v.balancer?.voters?.peers.length === 3);
      return views.every((v) => v.members.filter((m) => m.alive && m.electable).length === 3) && leaders.size === 1 && !leaders.has(undefined) && admitted;
    },
    60_000,
    () => `launcher output:\n${output}`,
  );
  const file = join(dataRoot, 'one.dcm');
  writeFileSync(file, makeInstance({ rows: 16, columns: 16 }));
  const stored = await runTool('storescu', ['-aec', 'PACSMESH', '127.0.0.1', String(basePort), file], { timeoutMs: 30_000 });
  assert.equal(stored.code, 0, stored.stderr);
  await eventually(async () => (await Promise.all([0, 1, 2].map(status))).every((v) => v.instances === 1), 20_000, () => 'replication');
  const views = await Promise.all([0, 1, 2].map(status));
  launcher.child.kill('SIGINT');
  const exit = await launcher.exited;
  assert.equal(exit.code, 0, `launcher exit ${JSON.stringify(exit)}:\n${output}`);
  // Started again on its data, site-a does not found again (its record holds the list): one leader, the same voters.
  const voters = JSON.stringify(views[0]?.balancer?.voters?.peers);
  const again = spawnManaged(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts/local-mesh.ts'), '--data', dataRoot, '--base-port', String(basePort)], { cwd: repoRoot });
  let againOutput = '';
  again.child.stdout?.on('data', (b: Buffer) => (againOutput += b.toString()));
  again.child.stderr?.on('data', (b: Buffer) => (againOutput = (againOutput + b.toString()).slice(-20_000)));
  t.after(() => again.stop(10_000));
  await eventually(
    async () => {
      const seen = await Promise.all([0, 1, 2].map(status));
      return new Set(seen.map((v) => v.leader?.peerId ?? null)).size === 1 && seen[0]?.leader != null && seen.every((v) => JSON.stringify(v.balancer?.voters?.peers) === voters);
    },
    60_000,
    () => `launcher output:\n${againOutput}`,
  );
  assert.doesNotMatch(againOutput, /--found-mesh yes ignored/);
});

test('npm start: a launcher whose parent dies (a SIGTERM to npm ends npm and its shell) stops its sites', { timeout: 60_000 }, async (t) => {
  const dataRoot = mkdtempSync(join(tmpdir(), 'pacs-local-mesh-'));
  const basePort = await getFreePortBlock([0, 100, 200]);
  // The shell stands in for npm's: it prints the launcher's pid, then is killed, leaving the launcher orphaned.
  const launch = `"${process.execPath}" --import tsx scripts/local-mesh.ts --sites 1 --data "${dataRoot}" --base-port ${basePort} & echo $!; wait`;
  const shell = spawnManaged('/bin/sh', ['-c', launch], { cwd: repoRoot });
  let output = '';
  shell.child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  t.after(async () => {
    // Whatever still runs on this data root (when the test fails: the launcher and its site) is killed, and
    // the shell's pipes closed: a site holding them would keep this test process alive.
    for (const pid of processesMentioning(dataRoot)) process.kill(pid, 'SIGKILL');
    shell.child.stdout?.destroy();
    shell.child.stderr?.destroy();
    await shell.stop(5_000);
    rmSync(dataRoot, { recursive: true, force: true });
  });
  const health = async (): Promise<boolean> => (await fetch(`http://127.0.0.1:${basePort + 100}/healthz`, { signal: AbortSignal.timeout(1000) })).ok;
  await eventually(health, 60_000, () => `launcher output:\n${output}`);
  const launcherPid = Number(output.split('\n')[0]);
  assert.ok(Number.isInteger(launcherPid) && launcherPid > 0, `launcher pid from ${JSON.stringify(output.slice(0, 40))}`);
  shell.child.kill('SIGKILL');
  await shell.exited;
  await eventually(async () => !alive(launcherPid) && !(await health().catch(() => false)), 20_000, () => 'the orphaned launcher and its site still run');
});

/** The pids of processes whose command line mentions `text`. */
function processesMentioning(text: string): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)
    .filter((name) => {
      try {
        return readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Whether a process runs (a zombie waiting for init to reap it counts as gone). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
