/**
 * A mesh child that keeps failing while the peer runs: the peer says so (`failed`, /healthz 503) instead of
 * running on without it; the command then stops and exits 1 (src/cli.ts) for its service manager.
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';
import { startTestPeer } from '../support/peer-fixture.ts';
import { waitFor } from '../support/wait.ts';

test('a mesh child past its restart budget fails the peer: failed settles with the child and its error, /healthz answers 503', { timeout: 30_000 }, async (t) => {
  const keyDir = mkdtempSync(join(tmpdir(), 'pacs-supervision-'));
  const swarmKeyPath = join(keyDir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyPath);
  const peer = await startTestPeer(['--swarm-key', swarmKeyPath, '--p2p-port', '0'], 'supervision');
  t.after(async () => {
    await peer.dispose();
    rmSync(keyDir, { recursive: true, force: true });
  });
  const healthz = async () => (await fetch(`http://127.0.0.1:${peer.httpPort}/healthz`)).status;
  assert.equal(await healthz(), 200);
  let settled = false;
  void peer.failed.then(() => (settled = true));
  // One crash is restarted and cured: the peer stays healthy, and /api/mesh counts the restart.
  peer.crashChildForTest('balancer');
  type Supervision = Record<string, { restarts: number; escalated: boolean }>;
  const supervision = async () => ((await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { supervision?: Supervision }).supervision;
  // The restart waited for, not given 500 ms: it reads the balancer's files, which a loaded machine can hold up.
  await waitFor('the balancer restarted', async () => (await supervision())?.balancer?.restarts === 1);
  assert.equal(settled, false);
  assert.equal(await healthz(), 200);
  assert.deepEqual(await supervision(), {
    membership: { restarts: 0, escalated: false },
    balancer: { restarts: 1, escalated: false },
    custody: { restarts: 0, escalated: false },
  });
  // Now every restart fails (a restarted balancer reads its learnt roster): past the budget, the peer fails.
  writeFileSync(join(peer.dataDir, 'balancer-roster.json'), 'garbage');
  peer.crashChildForTest('balancer');
  const failure = await peer.failed;
  assert.equal(failure.child, 'balancer');
  assert.match(failure.error, /balancer-roster\.json is damaged/);
  assert.equal(await healthz(), 503);
});
