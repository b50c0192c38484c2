/**
 * A peer's stop: one deadline bounds its whole drain (associations, copies arriving, its own pulls); a start
 * that fails stops what it had started, every step of it.
 */
import './polyfill.ts';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { writeSwarmKeyFile } from './net/swarm-key.ts';
import { createLogger, silentLogger } from './actors/runtime/logger.ts';
import type { ReplicaStore } from './actors/storage/replica-store.ts';
import { startDeadline, untilAborted } from './actors/runtime/deadline.ts';
import { startPeer, stopDeadlineMs } from './peer.ts';
import { ConfigError, parseStartArgs } from './config.ts';
import { systemClock, type Clock } from './actors/runtime/clock.ts';
import { recordingLogger } from '../test/support/recording-logger.ts';
import { getFreePort } from '../test/support/dicom-tools.ts';
import { associateRqBytes, openPeerClient, openStoreClient, startTestPeer, type TestPeer } from '../test/support/peer-fixture.ts';
import { Status } from './codec/dimse.ts';
import { damageChunk } from './actors/storage/fixtures/store-keys.ts';
import { waitFor } from '../test/support/wait.ts';
import { manualClock } from '../test/support/manual-clock.ts';
import { commitmentRequestDataSet, nActionCommand } from '../test/support/commitment.ts';
import { StorageCommitment } from './actors/commitment/messages.ts';
import { TransferSyntax } from './codec/dicom-types.ts';
import { halfCloseGraceMs } from './actors/association/connection.ts';
import { buildVersion } from './version.ts';

/** Holds every commit and copy repair of `store` until released: what a stalled disk (or a faulted store waiting to reopen) does. */
function holdCommits(store: ReplicaStore): { held(): number; release(): void } {
  const release = Promise.withResolvers<void>();
  const { beginWrite, repairCopy } = store;
  let held = 0;
  store.beginWrite = () => {
    const writer = beginWrite.call(store);
    const commit = writer.commit.bind(writer);
    writer.commit = async (...args) => {
      held++;
      await release.promise;
      return commit(...args);
    };
    return writer;
  };
  store.repairCopy = async (...args) => {
    held++;
    await release.promise;
    return repairCopy.apply(store, args);
  };
  return {
    held: () => held,
    release: () => {
      Object.assign(store, { beginWrite, repairCopy });
      release.resolve();
    },
  };
}

/** Two sites on loopback, B bootstrapping from A, both alive at both; B stops with the command's default grace. */
async function twoSites(t: TestContext, bArgs: string[] = []): Promise<{ a: TestPeer; b: TestPeer }> {
  const keyDir = mkdtempSync(join(tmpdir(), 'pacs-stop-deadline-'));
  t.after(() => rmSync(keyDir, { recursive: true, force: true }));
  const swarmKey = join(keyDir, 'swarm.key');
  await writeSwarmKeyFile(swarmKey);
  const mesh = ['--swarm-key', swarmKey, '--p2p-port', '0', '--write-quorum', '2'];
  const a = await startTestPeer(mesh, 'stop-a');
  t.after(() => a.dispose());
  const status = async (port: number) => (await (await fetch(`http://127.0.0.1:${port}/api/mesh`)).json()) as { self: { multiaddrs: string[] }; members?: Array<{ site: string; alive: boolean; build?: string }> };
  const [address] = (await status(a.httpPort)).self.multiaddrs;
  const b = await startTestPeer([...mesh, '--bootstrap', address!, ...bArgs], 'stop-b', process.env.STOP_TEST_LOG ? createLogger({ site: 'stop-b' }, 'info') : silentLogger, { shutdownGraceMs: undefined });
  t.after(() => b.dispose());
  const bothAlive = async (port: number) => (await status(port)).members?.filter((m) => m.alive).length === 2;
  await waitFor('both sites alive at both', async () => (await bothAlive(a.httpPort)) && (await bothAlive(b.httpPort)), 30_000);
  // Each member's build, from its heartbeats: what an operator upgrading one site at a time compares.
  assert.deepEqual((await status(b.httpPort)).members?.map((m) => m.build), [buildVersion().package, buildVersion().package]);
  return { a, b };
}

/**
 * Stops `peer` and fails if that takes more than its deadline + 3 s (generous: timing belongs in
 * benchmarks); releases `gate` then either way, so that a stop held past it still ends, and the test with it.
 */
async function stopWithinBound(peer: TestPeer, gate: { release(): void }): Promise<void> {
  const startedMs = performance.now();
  const stopped = peer.stop().then(() => performance.now() - startedMs);
  const boundMs = stopDeadlineMs + 3000;
  const bound = startDeadline(boundMs);
  const tookMs = await untilAborted(stopped, bound.signal);
  bound.clear();
  gate.release();
  assert.ok(tookMs !== undefined, `the stop took more than ${boundMs} ms (${Math.round(await stopped)} ms once the held writes went on), its deadline is ${stopDeadlineMs} ms`);
}

test('a stop whose association, copies arriving and own pull are all stuck ends by its deadline, not one wait after another (hunt 149)', { timeout: 90_000 }, async (t) => {
  const { a, b } = await twoSites(t);
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

  // One wait after another took 7 + 5 + 2 s, then waited for custody's held pull for ever.
  await stopWithinBound(b, gate);
});

test("a stop while the scrub repairs a damaged copy from another site ends by its deadline: the repair's pull is not waited for (hunt 149)", { timeout: 90_000 }, async (t) => {
  const { a, b } = await twoSites(t, ['--scrub-mb-per-s', '50']);
  const atA = await openStoreClient(a.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  const sopInstanceUid = '1.2.826.0.1.3680043.149.3.1.1';
  assert.equal((await atA.storeInstance({ sopInstanceUid })).command.status, Status.Success);
  await atA.client.release();
  const copy = await b.store.getEntry(sopInstanceUid);
  assert.ok(copy !== undefined, 'the write quorum of 2 put a copy at B');
  await damageChunk(b.store, copy.blobId, 0, 'flip');
  const gate = holdCommits(b.store);
  t.after(() => gate.release());
  assert.equal((await fetch(`http://127.0.0.1:${b.httpPort}/api/scrub`, { method: 'POST' })).status, 202);
  await waitFor("the scrub's repair of B's copy held", () => gate.held() >= 1);
  // The scrub's stop waited for its repair, a pull from A that only custody's stop, after it, would cut.
  await stopWithinBound(b, gate);
});

test("a stop's Storage Commitment look-ups are waited for until its deadline, not 2 s past it (hunt 152)", { timeout: 60_000 }, async (t) => {
  // The peer's timers on a clock the test moves: where the stop ends is exact, no timing.
  const clock = manualClock(1_000_000);
  const peer = await startTestPeer([], 'stop-commit', silentLogger, { clock, shutdownGraceMs: 1000, commitment: { checkWaitMs: 100, checkIntervalMs: 100 } });
  const deadlineMs = 1000 + halfCloseGraceMs;
  // The commitment's look-up in the store does not answer: a slow disk.
  const lookUps = Promise.withResolvers<void>();
  const { getEntries } = peer.store;
  let held = 0;
  peer.store.getEntries = async (...args) => {
    held++;
    await lookUps.promise;
    return getEntries.apply(peer.store, args);
  };
  t.after(async () => {
    lookUps.resolve();
    await peer.dispose();
  });
  const client = await openPeerClient(peer.dicomPort, 'MODALITY', [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }]);
  const request = commitmentRequestDataSet('1.2.826.0.1.3680043.152.1', [{ sopClassUid: '1.2.840.10008.5.1.4.1.1.7', sopInstanceUid: '1.2.826.0.1.3680043.152.1.1' }]);
  assert.equal((await client.request(client.contexts[0]!.id, nActionCommand(), request)).command.status, Status.Success);
  await client.release();
  await waitFor('the look-up held', () => (clock.advance(100), held > 0));
  // A requestor that never closes its end of an aborted association: the drain lasts to the deadline.
  const socket = connect({ host: '127.0.0.1', port: peer.dicomPort, allowHalfOpen: true });
  t.after(() => socket.destroy());
  socket.on('error', () => undefined);
  const accepted = new Promise((resolve) => socket.once('data', resolve));
  socket.write(associateRqBytes());
  await accepted;

  let stopped = false;
  void peer.stop().then(() => (stopped = true));
  // Up to the deadline and 1.5 s of the clock past it: commitment's own 2 s wait after the drain would still run.
  for (let advancedMs = 0; advancedMs < deadlineMs + 1500 && !stopped; advancedMs += 100) {
    clock.advance(100);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await waitFor('the stop to end', () => stopped, 2000).catch(() => undefined);
  assert.ok(stopped, `the stop had not ended ${deadlineMs + 1500} ms of its clock after it began, its deadline ${deadlineMs} ms`);
});

test("a start that fails after its ports opened, a step of its clean-up throwing, still frees the ports and the store's lock, and throws the start's own error", { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-failed-start-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [dicomPort, httpPort] = [await getFreePort(), await getFreePort()];
  const args = ['--site', 'clean-up', '--data', join(dir, 'data'), '--host', '127.0.0.1', '--dicom-port', String(dicomPort), '--http-port', String(httpPort), '--log-level', 'silent'];
  // The mesh cannot start (its swarm key is not there) once the DICOM and HTTP ports are open.
  const config = parseStartArgs([...args, '--swarm-key', join(dir, 'missing.key'), '--p2p-port', '0']);
  // The clean-up's first step throws: the clock refuses the timer of its deadline, the one timer this long.
  const shutdownGraceMs = 4321;
  const clock: Clock = {
    ...systemClock,
    setTimeout: (callback, delayMs) => {
      if (delayMs === shutdownGraceMs + halfCloseGraceMs) throw new Error('injected: a clean-up step fails');
      return systemClock.setTimeout(callback, delayMs);
    },
  };
  const messages: string[] = [];
  await assert.rejects(startPeer(config, { clock, shutdownGraceMs, log: recordingLogger(messages) }), (error: unknown) => {
    assert.ok(error instanceof ConfigError && /cannot use --swarm-key/.test(error.message), `the start's own error, not the clean-up's: ${String(error)}`);
    return true;
  });
  assert.ok(messages.includes('the clean-up of a failed start: its step "scrub and mesh" failed; the others still run'), messages.join('\n'));
  // The later steps ran: the same ports and data directory serve a start without the mesh. Before, they were
  // still bound and the store's LevelDB lock held.
  const again = await startPeer(parseStartArgs(args), { shutdownGraceMs: 1000 });
  await again.stop();
});
