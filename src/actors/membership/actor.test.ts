import '../../polyfill.ts';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, type MeshNode } from '../../net/node.ts';
import { generateSwarmKey, type SwarmKey } from '../../net/swarm-key.ts';
import { systemClock } from '../runtime/clock.ts';
import { silentLogger } from '../runtime/logger.ts';
import { startActorSystem, stopActor } from '../runtime/nact.ts';
import { bumpIncarnation, parseHeartbeat, startMembership, type LocalStats, type MembershipService } from './actor.ts';
import { heartbeatForgottenSitesMax, membershipTopic } from './messages.ts';
import { encodeEnvelope } from '../../codec/envelope.ts';
import { waitFor } from '../../../test/support/wait.ts';
import { recordingLogger } from '../../../test/support/recording-logger.ts';
import { loopbackAddress } from '../../../test/support/mesh-nodes.ts';
import { stepWallClock } from '../../../test/support/wall-clock.ts';
import { trackLoopLag } from '../../../test/support/loop-lag.ts';
import { suiteTeardown } from '../../../test/support/teardown.ts';


function statusOf(m: MembershipService, peerId: string): string | undefined {
  return m.members().find((r) => r.peerId === peerId)?.status;
}

describe('membership actor over a real mesh (127.0.0.1)', { timeout: 60_000 }, () => {
  const dirs: string[] = [];
  const teardown = suiteTeardown(async () => {
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  async function peer(swarmKey: SwarmKey, bootstrap: string[], site = 'site-a', messages?: string[], localStats?: LocalStats) {
    const dataDir = await mkdtemp(join(tmpdir(), 'pacs-mesh-membership-'));
    dirs.push(dataDir);
    const node = await createMeshNode({
      host: '127.0.0.1',
      p2pPort: 0,
      swarmKey,
      dataDir,
      bootstrap,
      tuning: { reconnectMinDelayMs: 100, reconnectMaxDelayMs: 1000 },
    });
    const system = startActorSystem(`membership-test-${node.peerId.slice(-6)}`);
    const membership = await startMembership({
      node,
      peerId: node.peerId,
      siteName: site,
      priority: 100,
      dataDir,
      // A DICOM address of its own: a heartbeat naming this site and this address is a predecessor's.
      addresses: { dicom: `127.0.0.1:${node.peerId.slice(-5)}`, http: '127.0.0.1:8042', aeTitle: 'PACSMESH' },
      clock: systemClock,
      log: messages ? recordingLogger(messages) : silentLogger,
      parent: system,
      ...(localStats ? { localStats } : {}),
    });
    let stopped = false;
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      await node.stop();
      await membership.stop();
      stopActor(system);
    };
    await teardown.add(stop);
    return { node, membership, dataDir, stop };
  }

  it('heartbeats make members alive; a stopped peer is dead quickly on the others; junk is dropped', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const messagesAtA: string[] = [];
    const a = await peer(key, [], 'site-a', messagesAtA);
    const boot = [loopbackAddress(a.node)];
    const b = await peer(key, boot, 'site-b');
    const c = await peer(key, boot, 'site-c');
    const all = [a, b, c];
    const joinMs = await waitFor('all alive everywhere', () => all.every((p) => p.membership.liveMembers().length === 3));
    console.log(`membership: 3 peers alive in every view after ${joinMs} ms`);
    const rec = a.membership.members().find((m) => m.peerId === b.node.peerId)!;
    assert.equal(rec.siteName, 'site-b');
    assert.equal(rec.addresses.dicom, `127.0.0.1:${b.node.peerId.slice(-5)}`);

    // Malformed heartbeats (garbage, wrong fields, a forged peerId) are dropped, never a crash.
    await b.node.publish(membershipTopic, new Uint8Array([1, 2, 3, 4]));
    await b.node.publish(membershipTopic, encodeEnvelope({ type: 'heartbeat', peerId: 42 }));
    for (const sequence of [1, 2]) {
      await b.node.publish(membershipTopic, encodeEnvelope({ type: 'heartbeat', peerId: c.node.peerId, siteName: 'x', incarnation: 99, sequence, priority: 0, addresses: { dicom: '', http: '', aeTitle: 'PACSMESH' }, load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 0 }, instanceCount: 0, digestRoot: '' }));
    }
    await waitFor('a forged heartbeat heard', () => messagesAtA.includes('dropped heartbeat signed by another peer'));
    await new Promise((r) => setTimeout(r, 300));
    // Forged ones too: one line each 10 s per sender, not one per heartbeat (a gossip-rate log flood).
    assert.equal(messagesAtA.filter((m) => m === 'dropped heartbeat signed by another peer').length, 1, messagesAtA.join('\n'));
    assert.equal(a.membership.members().find((m) => m.peerId === c.node.peerId)?.incarnation, c.membership.incarnation);
    // One sender's bad heartbeats repeat at every interval: one line for them each 10 s, not one each.
    assert.equal(messagesAtA.filter((m) => m === 'dropped malformed heartbeat').length, 1, messagesAtA.join('\n'));
    assert.equal(a.membership.liveMembers().length, 3);

    const t0 = Date.now();
    const lag = trackLoopLag();
    await c.stop();
    const deadMs = await waitFor('c dead on a and b', () => statusOf(a.membership, c.node.peerId) === 'dead' && statusOf(b.membership, c.node.peerId) === 'dead', 5000);
    const sinceStopMs = Date.now() - t0;
    lag.stop();
    console.log(`membership: stopped peer marked dead on both survivors ${sinceStopMs} ms after stop (${deadMs} ms after stop returned; loop late ${lag.lateMs()} ms)`);
    // The survivors' timers run as late as this process's loop (one process hosts them): that time is not
    // theirs, and a survivor that found itself stalled waits out the silence instead (logic.ts, onDisconnected).
    assert.ok(sinceStopMs < 3000 + lag.lateMs(), `dead within 3 s: ${sinceStopMs} ms, the loop ${lag.lateMs()} ms late`);
    assert.equal(a.membership.liveMembers().length, 2);
  });

  it('the first heartbeat another peer hears carries the figures given at start, not zeros', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const stats: LocalStats = { load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 5e9 }, instanceCount: 42, digestRoot: 'root-42' };
    const a = await peer(key, [], 'site-a', undefined, stats);
    const b = await peer(key, [loopbackAddress(a.node)], 'site-b');
    await waitFor('a alive at b', () => statusOf(b.membership, a.node.peerId) === 'alive');
    const heard = b.membership.members().find((m) => m.peerId === a.node.peerId)!;
    assert.deepEqual([heard.instanceCount, heard.digestRoot, heard.load.freeDiskBytes], [42, 'root-42', 5e9]);
  });

  it('a hung peer (silent, still connected) is out of the live view within ~2 s, and its connection dropped once dead', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const a = await peer(key, []);
    const b = await peer(key, [loopbackAddress(a.node)]);
    await waitFor('both alive', () => a.membership.liveMembers().length === 2 && b.membership.liveMembers().length === 2);
    let droppedAtMs: number | undefined;
    a.node.onPeerDisconnected((peerId) => {
      if (peerId === b.node.peerId) droppedAtMs ??= Date.now();
    });
    // Stop b's membership only: the connection stays up, heartbeats stop (what a hung actor looks like).
    const t0 = Date.now();
    const lag = trackLoopLag();
    await b.membership.stop();
    await waitFor('b suspect on a', () => statusOf(a.membership, b.node.peerId) === 'suspect', 5000);
    const suspectMs = Date.now() - t0;
    lag.stop();
    await waitFor('b dead on a', () => statusOf(a.membership, b.node.peerId) === 'dead', 5000);
    const deadMs = Date.now() - t0;
    // The node's ping monitor alone would wait 5-10 s: membership drops the connection when it finds b dead.
    await waitFor('the connection to b dropped', () => droppedAtMs !== undefined, 2000);
    console.log(`membership: silent peer suspect after ${suspectMs} ms (loop late ${lag.lateMs()} ms), dead after ${deadMs} ms, connection dropped after ${droppedAtMs! - t0} ms`);
    // As above: time the loop ran late is not silence (a stall of this process is even credited back to b).
    assert.ok(suspectMs < 2500 + lag.lateMs(), `suspect within 2.5 s: ${suspectMs} ms, the loop ${lag.lateMs()} ms late`);
  });

  it('a wall clock stepped an hour forward or back changes nothing: live peers stay live, a hung one still leaves', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const a = await peer(key, []);
    const b = await peer(key, [loopbackAddress(a.node)]);
    const bothLive = () => a.membership.liveMembers().length === 2 && b.membership.liveMembers().length === 2;
    await waitFor('both alive', bothLive);
    const hourMs = 3_600_000;
    let undo = stepWallClock(hourMs);
    try {
      // Two failure-detection periods: a detector on the wall clock would see an hour of silence at once.
      for (let i = 0; i < 30; i++) {
        assert.ok(bothLive(), `a live peer left the view ${i * 50} ms after the wall clock stepped forward`);
        await new Promise((r) => setTimeout(r, 50));
      }
      undo();
      undo = stepWallClock(-hourMs);
      const t0 = performance.now();
      await b.membership.stop();
      // On the wall clock, the last heartbeat would be an hour in the future: never suspect.
      await waitFor('b suspect on a after the step back', () => statusOf(a.membership, b.node.peerId) === 'suspect', 5000);
      console.log(`membership: silent peer suspect ${Math.round(performance.now() - t0)} ms after the wall clock stepped back an hour`);
    } finally {
      undo();
    }
  });

  it('persists and bumps the incarnation; validates heartbeats', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-incarnation-'));
    dirs.push(dir);
    const dateMs = 1_800_000_000_000;
    assert.equal(await bumpIncarnation(dir, dateMs), dateMs);
    // Restarts within the same millisecond, or with the wall clock stepped back, still go up.
    assert.equal(await bumpIncarnation(dir, dateMs), dateMs + 1);
    assert.equal(await bumpIncarnation(dir, dateMs - 3_600_000), dateMs + 2);
    assert.equal((await readFile(join(dir, 'membership-incarnation'), 'utf8')).trim(), String(dateMs + 2));
    assert.equal(await bumpIncarnation(dir, dateMs + 60_000), dateMs + 60_000);
    // A lost or damaged file does not send the peer back to 1 (the others would ignore it as old news).
    const path = join(dir, 'membership-incarnation');
    for (const damage of ['garbage{', '', '-4', '1e400']) {
      await writeFile(path, damage);
      const reasons: string[] = [];
      assert.equal(await bumpIncarnation(dir, dateMs + 120_000, (r) => reasons.push(r)), dateMs + 120_000, damage);
      assert.match(reasons[0] ?? '', /not a counter/);
    }
    await rm(path);
    assert.equal(await bumpIncarnation(dir, dateMs + 180_000), dateMs + 180_000);
    // A file that cannot be written (a full disk; here a directory in the way) is reported, and the value used.
    await mkdir(`${path}.tmp`);
    const reasons: string[] = [];
    assert.equal(await bumpIncarnation(dir, dateMs + 240_000, (r) => reasons.push(r)), dateMs + 240_000);
    assert.match(reasons[0] ?? '', /cannot write .*kept in memory only/);
    // One that cannot be read (a directory in its place): the date, and the file named.
    await rm(`${path}.tmp`, { recursive: true });
    await rm(path, { force: true });
    await mkdir(path);
    const unreadable: string[] = [];
    assert.equal(await bumpIncarnation(dir, dateMs + 300_000, (r) => unreadable.push(r)), dateMs + 300_000);
    assert.match(unreadable[0] ?? '', /cannot read .*membership-incarnation .*starting from the date/);
    await rm(path, { recursive: true });
    assert.equal(parseHeartbeat({ type: 'heartbeat' }), null);
    assert.equal(parseHeartbeat(null), null);
    const valid = { type: 'heartbeat', peerId: 'p', siteName: 's', incarnation: 1, sequence: 1, priority: 0, addresses: { dicom: '', http: '', aeTitle: 'PACSMESH' }, load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 0 }, instanceCount: 0, digestRoot: '' };
    // A heartbeat from a peer that predates `electable` counts as electable; a malformed flag is junk.
    assert.equal(parseHeartbeat(valid)?.electable, true);
    assert.equal(parseHeartbeat({ ...valid, electable: false })?.electable, false);
    assert.equal(parseHeartbeat({ ...valid, electable: 'no' }), null);
    // Likewise `freeDiskUnknown`: absent when measured and from older peers, kept when true, junk when not a boolean.
    assert.equal(parseHeartbeat(valid)?.load.freeDiskUnknown, undefined);
    assert.equal(parseHeartbeat({ ...valid, load: { ...valid.load, freeDiskUnknown: true } })?.load.freeDiskUnknown, true);
    assert.equal(parseHeartbeat({ ...valid, load: { ...valid.load, freeDiskUnknown: false } })?.load.freeDiskUnknown, undefined);
    assert.equal(parseHeartbeat({ ...valid, load: { ...valid.load, freeDiskUnknown: 'yes' } }), null);
    // Likewise `accessDigest`: absent from older peers, kept when present, junk when not a string.
    assert.equal(parseHeartbeat(valid)?.addresses.accessDigest, undefined);
    assert.equal(parseHeartbeat({ ...valid, addresses: { ...valid.addresses, accessDigest: '0123abcd' } })?.addresses.accessDigest, '0123abcd');
    assert.equal(parseHeartbeat({ ...valid, addresses: { ...valid.addresses, accessDigest: 7 } }), null);
    // The build is shown, never acted on: kept when a short string, left out otherwise with the heartbeat kept.
    assert.equal(parseHeartbeat(valid)?.build, undefined);
    assert.equal(parseHeartbeat({ ...valid, build: '0.1.0' })?.build, '0.1.0');
    for (const odd of [7, 'x'.repeat(65), null]) assert.equal(parseHeartbeat({ ...valid, build: odd })?.build, undefined, String(odd).slice(0, 20));
    // Likewise the forgotten sites: bounded, each a site name and a time; anything else is junk.
    const tombstone = { siteName: 'site-x', forgottenAtMs: 5 };
    assert.equal(parseHeartbeat(valid)?.forgottenSites, undefined);
    assert.deepEqual(parseHeartbeat({ ...valid, forgottenSites: [tombstone] })?.forgottenSites, [tombstone]);
    assert.deepEqual(parseHeartbeat({ ...valid, forgottenSites: Array(heartbeatForgottenSitesMax).fill(tombstone) })?.forgottenSites?.length, heartbeatForgottenSitesMax);
    // The operator's flag is kept when true, dropped when false (by silence), junk when not a boolean.
    assert.deepEqual(parseHeartbeat({ ...valid, forgottenSites: [{ ...tombstone, byOperator: true }] })?.forgottenSites, [{ ...tombstone, byOperator: true }]);
    assert.deepEqual(parseHeartbeat({ ...valid, forgottenSites: [{ ...tombstone, byOperator: false }] })?.forgottenSites, [tombstone]);
    assert.equal(parseHeartbeat({ ...valid, forgottenSites: [{ ...tombstone, byOperator: 'yes' }] }), null);
    for (const junk of [Array(heartbeatForgottenSitesMax + 1).fill(tombstone), 'site-x', [{ siteName: '', forgottenAtMs: 5 }], [{ siteName: 'site-x' }], [{ siteName: 'x'.repeat(300), forgottenAtMs: 5 }], [{ siteName: 'site-x', forgottenAtMs: Infinity }], [{ ...tombstone, byOperator: 1 }], [null]]) {
      assert.equal(parseHeartbeat({ ...valid, forgottenSites: junk }), null, JSON.stringify(junk).slice(0, 80));
    }
  });
});
