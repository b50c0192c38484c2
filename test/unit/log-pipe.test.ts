/**
 * Logs are best effort: a peer whose stdout/stderr pipe closes (a log shipper restarting, `| head`) serves
 * on instead of dying of EPIPE with nothing said.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { peerProcessArgs, peerProcessEnv } from '../../src/peer-process.ts';
import { getFreePort } from '../support/dicom-tools.ts';
import { waitFor } from '../support/wait.ts';

async function httpStatus(url: string, method = 'GET'): Promise<number | undefined> {
  try {
    // 10 s, not 2: the peer is another process, whose answer at load waits for a core as well.
    return (await fetch(url, { method, signal: AbortSignal.timeout(10_000) })).status;
  } catch {
    return undefined;
  }
}

test('a peer whose log pipes close serves on, and still stops cleanly', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-log-pipe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const httpPort = await getFreePort();
  const args = peerProcessArgs(['start', '--data', dir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(httpPort)]);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: peerProcessEnv() });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => child.kill('SIGKILL'));
  const base = `http://127.0.0.1:${httpPort}`;
  await waitFor('the peer to answer /healthz', async () => (await httpStatus(`${base}/healthz`)) === 200, 30_000);
  // The reader goes away: the peer's next writes to stdout and stderr fail with EPIPE.
  child.stdout.destroy();
  child.stderr.destroy();
  for (let n = 0; n < 3; n++) {
    assert.equal(await httpStatus(`${base}/api/scrub`, 'POST'), 202, 'a scrub request (it logs a line)');
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  assert.equal(child.exitCode, null, 'the peer died when its log pipe closed');
  assert.equal(await httpStatus(`${base}/healthz`), 200);
  child.kill('SIGTERM');
  assert.equal(await exited, 0, 'a clean stop');
});
