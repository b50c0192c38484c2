/**
 * A peer's stop: one deadline bounds its whole drain (associations, copies arriving, its own pulls).
 */
import './polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeSwarmKeyFile } from './net/swarm-key.ts';
import { createLogger, silentLogger } from './actors/runtime/logger.ts';
import type { ReplicaStore } from './actors/storage/replica-store.ts';
import { startDeadline, untilAborted } from './actors/runtime/deadline.ts';
import { stopDeadlineMs } from './peer.ts';
import { openStoreClient, startTestPeer } from '../test/support/peer-fixture.ts';
import { waitFor } from '../test/support/wait.ts';

/** Holds every commit of `store` until released: what a stalled disk (or a faulted store waiting to reopen) does. */
function holdCommits(store: ReplicaStore): { held(): number; release(): void } {
  const release = Promise.withResolvers<void>();
  const beginWrite = store.beginWrite.bind(store);
  let held = 0;
  store.beginWrite = () => {
    const writer = beginWrite();
    const commit = writer.commit.bind(writer);
    writer.commit = async (...args) => {
      held++;
      await release.promise;
      return commit(...args);
    };
    return writer;
  };
  return {
    held: () => held,
    release: () => {
      store.beginWrite = beginWrite;
      release.resolve();
    },
  };
}

test('a stop whose association, copies arriving and own pull are all stuck ends by its deadline, not one wait after another (hunt 149)', { timeout: 90_000 }, async (t) => {
  const keyDir = mkdtempSync(join(tmpdir(), 'pacs-stop-deadline-'));
  t.after(() => rmSync(keyDir, { recursive: true, force: true }));
  const swarmKey = join(keyDir, 'swarm.key');
  await writeSwarmKeyFile(swarmKey);
  const mesh = ['--swarm-key', swarmKey, '--p2p-port', '0', '--write-quorum', '2'];
  const a = await startTestPeer(mesh, 'stop-a');
  t.after(() => a.dispose());
  const status = async (port: number) => (await (await fetch(`http://127.0.0.1:${port}/api/mesh`)).json()) as { self: { multiaddrs: string[] }; members?: Array<{ site: string; alive: boolean }> };
  const [address] = (await status(a.httpPort)).self.multiaddrs;
  // The stop measured is B's, with the default grace its command has.
  const b = await startTestPeer([...mesh, '--bootstrap', address!], 'stop-b', process.env.STOP_TEST_LOG ? createLogger({ site: 'stop-b' }, 'info') : silentLogger, { shutdownGraceMs: undefined });
  t.after(() => b.dispose());
  const bothAlive = async (port: number) => (await status(port)).members?.filter((m) => m.alive).length === 2;
  await waitFor('both sites alive at both', async () => (await bothAlive(a.httpPort)) && (await bothAlive(b.httpPort)), 30_000);
  const gate = holdCommits(b.store);
  t.after(() => gate.release());
  // A copy arriving at B: a C-STORE at A, whose write quorum of 2 needs B's copy.
  const atA = await openStoreClient(a.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  t.after(() => atA.client.abort());
  const study = { uid: '1.2.826.0.1.3680043.149.1' };
  const copied = { study, sopInstanceUid: '1.2.826.0.1.3680043.149.1.1.1' };
  void atA.storeInstance(copied).catch(() => undefined);
  await waitFor('the copy arriving at B held', () => gate.held() >= 1);
  // A slow association at B: its C-STORE's commit is held.
  const atB = await openStoreClient(b.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  void atB.storeInstance({ sopInstanceUid: '1.2.826.0.1.3680043.149.2.1.1' }).catch(() => undefined);
  await waitFor("B's own C-STORE held", () => gate.held() >= 2);
  // B's own pull: a WADO-RS of the study A holds, which B lacks.
  const wado = new AbortController();
  t.after(() => wado.abort());
  void fetch(`http://127.0.0.1:${b.httpPort}/dicom-web/studies/${study.uid}`, { headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' }, signal: wado.signal })
    .then((response) => response.arrayBuffer())
    .catch(() => undefined);
  await waitFor("B's pull of the copy held", () => gate.held() >= 3);

  const startedMs = performance.now();
  const stopped = b.stop().then(() => performance.now() - startedMs);
  // Generous (timing belongs in benchmarks): one wait after another took 7 + 5 + 2 s, then waited for custody's held pull for ever.
  const boundMs = stopDeadlineMs + 3000;
  const bound = startDeadline(boundMs);
  const tookMs = await untilAborted(stopped, bound.signal);
  bound.clear();
  // Released either way, so that a stop held past the bound still ends, and the test with it.
  gate.release();
  assert.ok(tookMs !== undefined, `the stop took more than ${boundMs} ms (${Math.round(await stopped)} ms once the held commits went on), its deadline is ${stopDeadlineMs} ms`);
});
