/**
 * C-MOVE and C-GET under faults, with DCMTK as the partner (hunt 136): a destination that aborts every
 * association, one paused (SIGSTOP) in the middle of a move, the requestor itself as the destination, a
 * Move Destination named like a member of every JavaScript object, and a C-GET under way while the peer is
 * stopped (SIGTERM). The peer runs as a process (`pacs-mesh start`), as an operator runs it.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { getFreePort, hasDcmtk, spawnManaged, startStorescp, type StorescpHandle } from '../support/dicom-tools.ts';
import { uidFromSeed, writeSeriesToDir, type WrittenSeries } from '../support/synthetic-dicom.ts';
import { MeshCluster, type PeerProcess } from '../mesh/support.ts';
import { dcmtk, readReceived, retrieveSummary } from './harness.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';

const AE = 'PACSMESH';
const studyUid = uidFromSeed('hunt-136 retrieve faults study');
const instanceCount = 24;
/** A study of larger instances, so that getscu is still receiving it when it is paused. */
const stopStudyUid = uidFromSeed('hunt-136 retrieve faults stop study');
const stopInstanceCount = 60;

/** Polls `check` every 5 ms for up to `timeoutMs`. */
async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const filesIn = async (dir: string) => (await readdir(dir).catch(() => [])).length;

describe('C-MOVE and C-GET under faults, with DCMTK', { timeout: 170_000 }, () => {
  let work: string;
  let cluster: MeshCluster;
  let peer: PeerProcess;
  let series: WrittenSeries;
  let stopSeries: WrittenSeries;
  let aborter: StorescpHandle | undefined;
  let paused: StorescpHandle | undefined;
  let callerPort: number;
  let moveDests: string[];

  const studyKeys = ['-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`];

  before(async () => {
    assert.ok(hasDcmtk(['storescu', 'storescp', 'getscu', 'movescu', 'echoscu']), 'DCMTK is not on PATH: apt-get install dcmtk');
    work = await mkdtemp(join(tmpdir(), 'pacs-mesh-retrieve-faults-'));
    series = await writeSeriesToDir(join(work, 'study'), { count: instanceCount, rows: 64, columns: 64, study: { uid: studyUid }, patient: { id: 'FAULTS1', name: 'RETRIEVE^FAULTS' } });
    stopSeries = await writeSeriesToDir(join(work, 'stop-study'), { count: stopInstanceCount, rows: 256, columns: 256, study: { uid: stopStudyUid }, patient: { id: 'FAULTS2', name: 'RETRIEVE^STOP' } });
    const [aborterPort, pausedPort] = [await getFreePort(), await getFreePort()];
    callerPort = await getFreePort();
    // --abort-after: an A-ABORT after each C-STORE-RQ (a destination that crashes on every instance).
    aborter = await startStorescp({ port: aborterPort, outDir: join(work, 'aborted'), aeTitle: 'ABORTER', extraArgs: ['--abort-after'] });
    // --sleep-after 1: a second per instance, so that the move is still under way when the test pauses it.
    paused = await startStorescp({ port: pausedPort, outDir: join(work, 'paused'), aeTitle: 'PAUSED', extraArgs: ['+xa', '--sleep-after', '1'] });
    moveDests = ['--move-dest', `ABORTER=127.0.0.1:${aborterPort}`, '--move-dest', `PAUSED=127.0.0.1:${pausedPort}`, '--move-dest', `MOVESCU=127.0.0.1:${callerPort}`];
    cluster = new MeshCluster();
    peer = await cluster.start('faults', { swarmKeyFile: null, extraArgs: moveDests });
    const stored = await dcmtk('storescu', ['-aec', AE, '127.0.0.1', String(peer.dicomPort), ...series.files, ...stopSeries.files], 60_000);
    assert.equal(stored.code, 0, stored.output);
  });

  after(async () => {
    await aborter?.stop().catch(() => undefined);
    await paused?.stop().catch(() => undefined);
    await cluster?.dispose();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('movescu to a destination that aborts every association: 0xA702, every instance counted failed and listed, the peer serves on', async () => {
    const run = await dcmtk('movescu', ['-d', '-S', '-aec', AE, '-aem', 'ABORTER', ...studyKeys, '127.0.0.1', String(peer.dicomPort)]);
    assert.match(run.output, /DIMSE Status\s*:\s*0xa702/i, run.output.slice(-2000));
    assert.match(run.output, new RegExp(`Failed Suboperations\\s*:\\s*${instanceCount}\\b`), run.output.slice(-2000));
    const listed = /\(0008,0058\) UI \[([^\]]*)\]/.exec(run.output)?.[1]?.split('\\') ?? [];
    assert.deepEqual(listed.sort(), [...series.sopInstanceUids].sort(), 'the Failed SOP Instance UID List names every instance');
    // The Error Comment says what happened, in words (it was the abort indication as JSON).
    assert.match(run.output, /A-ABORT by the acceptor \(source 0: service user\)/, run.output.slice(-2000));
    const echo = await dcmtk('echoscu', ['-aec', AE, '127.0.0.1', String(peer.dicomPort)]);
    assert.equal(echo.code, 0, echo.output);
  });

  it('movescu to a Move Destination named like a member of every JavaScript object ("constructor", "toString"): 0xA801, unknown', async () => {
    for (const destination of ['constructor', 'toString', '__proto__']) {
      const run = await dcmtk('movescu', ['-d', '-S', '-aec', AE, '-aem', destination, ...studyKeys, '127.0.0.1', String(peer.dicomPort)]);
      assert.match(run.output, /DIMSE Status\s*:\s*0xa801/i, `${destination}: ${run.output.slice(-1500)}`);
    }
  });

  it('movescu naming itself as the destination (its own storage SCP, +P): every instance arrives, Success', async () => {
    const dir = join(work, 'to-caller');
    await mkdir(dir);
    const run = await dcmtk('movescu', ['-v', '-S', '-aet', 'MOVESCU', '-aec', AE, '-aem', 'MOVESCU', '+P', String(callerPort), '-od', dir, ...studyKeys, '127.0.0.1', String(peer.dicomPort)], 60_000);
    assert.equal(run.code, 0, run.output.slice(-2000));
    assert.deepEqual(retrieveSummary(run.output, 'move'), { finalStatus: 'Success', completed: undefined, failed: undefined, warning: undefined });
    assert.deepEqual([...(await readReceived(dir)).keys()].sort(), [...series.sopInstanceUids].sort());
  });

  it('movescu to a destination paused (SIGSTOP) for 3 s in the middle of a move: every instance once it resumes, Success', async () => {
    assert.ok(paused);
    const pausedDir = join(work, 'paused');
    // Four instances at a second each at the destination: the pause lands in the middle.
    const imageKeys = ['-k', 'QueryRetrieveLevel=IMAGE', '-k', `StudyInstanceUID=${studyUid}`, '-k', `SOPInstanceUID=${series.sopInstanceUids.slice(0, 4).join('\\')}`];
    const moving = dcmtk('movescu', ['-v', '-S', '-aec', AE, '-aem', 'PAUSED', ...imageKeys, '127.0.0.1', String(peer.dicomPort)], 90_000);
    await until(async () => (await filesIn(pausedDir)) >= 1, 30_000, 'the first instance at the destination');
    paused.process.child.kill('SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 3000));
    paused.process.child.kill('SIGCONT');
    const run = await moving;
    assert.equal(retrieveSummary(run.output, 'move').finalStatus, 'Success', run.output.slice(-2000));
    assert.deepEqual([...(await readReceived(pausedDir)).keys()].sort(), series.sopInstanceUids.slice(0, 4).sort());
  });

  it('a C-MOVE under way while the peer is stopped (SIGTERM): after the drain the sub-operation in flight ends, then a final C-MOVE-RSP (0xB000, the rest failed and listed) and a release, not a bare A-ABORT', async () => {
    // A destination taking a second per instance: the move of 24 outlasts the 5 s drain.
    const slowDir = join(work, 'slow');
    const slow = await startStorescp({ port: await getFreePort(), outDir: slowDir, aeTitle: 'SLOW', extraArgs: ['--sleep-after', '1'] });
    try {
      cluster.peers.splice(cluster.peers.indexOf(peer), 1);
      await peer.stop();
      peer = await cluster.start('faults', { swarmKeyFile: null, dataDir: peer.dataDir, extraArgs: [...moveDests, '--move-dest', `SLOW=127.0.0.1:${slow.port}`] });
      const moving = dcmtk('movescu', ['-d', '-S', '-aec', AE, '-aem', 'SLOW', ...studyKeys, '127.0.0.1', String(peer.dicomPort)], 90_000);
      await until(async () => (await filesIn(slowDir)) >= 1, 30_000, 'the first instance at the destination');
      const logFrom = peer.output().length;
      peer.process.child.kill('SIGTERM');
      const [run, exit] = await Promise.all([moving, peer.process.exited]);
      assert.deepEqual(exit, { code: 0, signal: null }, peer.output().slice(-2000));
      assert.match(run.output, /DIMSE Status\s*:\s*0xb000/i, `${run.output.slice(-1500)}\n${peer.output().slice(logFrom)}`);
      // The last response's counts, as movescu -d dumps it.
      const lastCount = (label: string) => Number([...run.output.matchAll(new RegExp(`${label} Suboperations\\s*:\\s*(\\d+)`, 'g'))].at(-1)?.[1]);
      const summary = { completed: lastCount('Completed'), failed: lastCount('Failed') };
      const received = await readReceived(slowDir);
      assert.ok(received.size >= 1 && received.size < instanceCount, `stopped in the middle: ${received.size} of ${instanceCount}`);
      assert.equal(summary.completed, received.size, 'every one counted completed arrived');
      assert.equal(summary.failed, instanceCount - received.size, JSON.stringify(summary));
      const listed = /\(0008,0058\) UI \[([^\]]*)\]/.exec(run.output)?.[1]?.split('\\') ?? [];
      assert.deepEqual([...listed, ...received.keys()].sort(), [...series.sopInstanceUids].sort(), 'the Failed SOP Instance UID List names exactly the ones not sent');
      assert.match(run.output, /\d+ failed: the archive is stopping, retry/);
      assert.match(run.output, /Releasing Association/);
      assert.doesNotMatch(peer.output().slice(logFrom), /aborting association|ERR_UNHANDLED_REJECTION/);
    } finally {
      await slow.stop().catch(() => undefined);
      cluster.peers.splice(cluster.peers.indexOf(peer), 1);
      peer = await cluster.start('faults', { swarmKeyFile: null, dataDir: peer.dataDir, extraArgs: moveDests });
    }
  });

  it('a C-GET under way while the peer is stopped (SIGTERM): after the drain it ends with a final C-GET-RSP (0xB000, the rest failed and listed) and a release, what arrived is whole, the peer exits 0, and restarted it holds every instance', async () => {
    const dir = join(work, 'get-during-stop');
    await mkdir(dir);
    const stopKeys = ['-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${stopStudyUid}`];
    // getscu reads nothing while stopped, so the C-GET is still under way when the peer is told to stop.
    const getter = spawnManaged('getscu', ['-d', '-S', '-aec', AE, '-od', dir, ...stopKeys, '127.0.0.1', String(peer.dicomPort)], { env: { ...process.env, TCP_NODELAY: '1' } });
    let output = '';
    getter.child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
    getter.child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
    await until(async () => (await filesIn(dir)) >= 1, 30_000, 'the first instance at getscu');
    getter.child.kill('SIGSTOP');
    const logFrom = peer.output().length;
    peer.process.child.kill('SIGTERM');
    // The drain (5 s) passes with getscu stopped; then the peer has its retrieves end: getscu goes on from there.
    await until(async () => /the retrieves under way send their final responses/.test(peer.output()), 20_000, 'the end of the drain');
    getter.child.kill('SIGCONT');
    const exit = await peer.process.exited;
    await getter.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, peer.output().slice(-2000));
    assert.doesNotMatch(peer.output(), /ERR_UNHANDLED_REJECTION|query\/retrieve task failed/);
    // A final response that says what was not sent, then a release, not a bare A-ABORT (hunt 140).
    // (getscu prints no identifier: the Failed SOP Instance UID List is checked with movescu below.)
    const summary = retrieveSummary(output, 'get');
    assert.match(output, /DIMSE Status\s*:\s*0xb000/i, output.slice(-3000));
    assert.ok(summary.completed! >= 1 && summary.completed! + summary.failed! === stopInstanceCount, JSON.stringify(summary));
    assert.match(output, /\d+ failed: the archive is stopping, retry/);
    assert.match(output, /Releasing Association/);
    assert.doesNotMatch(peer.output().slice(logFrom), /aborting association/);
    // Every file getscu kept is an instance as stored: none half-written.
    const originals = new Map(await Promise.all(stopSeries.files.map(async (file, i) => [stopSeries.sopInstanceUids[i]!, await readFile(file)] as const)));
    const received = await readReceived(dir);
    assert.ok(received.size >= 1 && received.size < stopInstanceCount, `paused in the middle: ${received.size} of ${stopInstanceCount}\n${output.slice(-2000)}`);
    assert.equal(received.size, summary.completed, 'every one counted completed arrived');
    for (const [uid, { bytes }] of received) {
      const original = originals.get(uid)!;
      assert.ok(Buffer.from(bytes.subarray(splitPart10(bytes).datasetOffset)).equals(original.subarray(splitPart10(original).datasetOffset)), `${uid} arrived whole`);
    }
    // Restarted on the same data directory, it serves the whole study.
    cluster.peers.splice(cluster.peers.indexOf(peer), 1);
    peer = await cluster.start('faults', { swarmKeyFile: null, dataDir: peer.dataDir, extraArgs: moveDests });
    const again = join(work, 'get-after-restart');
    await mkdir(again);
    const run = await dcmtk('getscu', ['-v', '-S', '-aec', AE, '-od', again, ...stopKeys, '127.0.0.1', String(peer.dicomPort)], 60_000);
    assert.equal(run.code, 0, run.output.slice(-2000));
    assert.equal((await readReceived(again)).size, stopInstanceCount);
  });
});
