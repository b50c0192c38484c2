import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { KNOWN_PEERS_FILE, KnownPeersFile, absenceCounts, absentMsAt, parseKnownPeers, readKnownPeers, recountedAbsence, type KnownPeersProblem } from './known-peers.ts';
import { manualClock } from '../../test/support/manual-clock.ts';
import { waitFor } from '../../test/support/wait.ts';

const newPeerId = async (): Promise<string> => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString();

describe('known peers file', () => {
  const dirs: string[] = [];
  const newDir = async (): Promise<string> => {
    const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-known-'));
    dirs.push(dir);
    return dir;
  };
  after(async () => {
    await Promise.allSettled(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('keeps only addresses naming their peer; never this peer; a bad entry among good ones is left out', async () => {
    const [self, x, y] = [await newPeerId(), await newPeerId(), await newPeerId()];
    const text = JSON.stringify({
      version: 1,
      peers: [
        { peerId: self, addrs: [`/ip4/127.0.0.1/tcp/1/p2p/${self}`] },
        { peerId: x, addrs: [`/ip4/127.0.0.1/tcp/2/p2p/${x}`, `/ip4/127.0.0.1/tcp/3/p2p/${y}`, 'not a multiaddr', 42, `/ip4/127.0.0.1/tcp/4`] },
        { peerId: 'not a peer id', addrs: ['/ip4/127.0.0.1/tcp/5'] },
        { peerId: y, addrs: [] },
        null,
      ],
    });
    assert.deepEqual(parseKnownPeers(text, self), { peers: [{ peerId: x, addrs: [`/ip4/127.0.0.1/tcp/2/p2p/${x}`], absentMs: 0 }] });
    assert.match(parseKnownPeers('[]', self).error ?? '', /not a version 1 known-peers file/);
    assert.match(parseKnownPeers('{"version":2,"peers":[]}', self).error ?? '', /not a version 1/);
    assert.match(parseKnownPeers('{"vers', self).error ?? '', /not JSON/);
  });

  it('no file is no peers and no problem; a damaged, oversized or unreadable one is a problem and no peers', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    assert.deepEqual(await readKnownPeers(dir, self), { peers: [] });
    await writeFile(join(dir, KNOWN_PEERS_FILE), '\u0000\u0001garbage');
    const damaged = await readKnownPeers(dir, self);
    assert.deepEqual(damaged.peers, []);
    assert.equal(damaged.problem?.operation, 'read');
    await writeFile(join(dir, KNOWN_PEERS_FILE), ' '.repeat(300 * 1024));
    assert.match((await readKnownPeers(dir, self)).problem?.error ?? '', /too large/);
    const other = await newDir();
    await mkdir(join(other, KNOWN_PEERS_FILE));
    assert.equal((await readKnownPeers(other, self)).problem?.operation, 'read');
  });

  it('saves the last peers connected, bounded, a few addresses each; writes once after a burst of changes, and at stop', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const ids = await Promise.all([0, 1, 2, 3].map(() => newPeerId()));
    const file = new KnownPeersFile(dir, self, [], { maxPeers: 3, maxAddrsPerPeer: 2, writeDelayMs: 200, writeIntervalMs: 60_000 });
    file.noteConnected(self, ['/ip4/127.0.0.1/tcp/9']);
    ids.forEach((id, i) => file.noteConnected(id, [`/ip4/10.0.0.${i}/tcp/1`, `/ip4/10.0.0.${i}/tcp/2`, `/ip4/10.0.0.${i}/tcp/3`]));
    await assert.rejects(stat(file.path), 'nothing written at once');
    // The write's own fsyncs take a while on a loaded machine: waited for, not slept.
    await waitFor('the first write', async () => (await readKnownPeers(dir, self, { maxPeers: 3 })).peers.length > 0);
    const written = (await readKnownPeers(dir, self, { maxPeers: 3 })).peers;
    assert.deepEqual(written.map((p) => p.peerId), ids.slice(1), 'the three last, this peer never');
    assert.deepEqual(written[0]!.addrs, [`/ip4/10.0.0.1/tcp/1/p2p/${ids[1]}`, `/ip4/10.0.0.1/tcp/2/p2p/${ids[1]}`]);
    // Within the interval a change waits; the same addresses again are no change; stop writes what waits.
    file.noteConnected(ids[0]!, ['/ip4/10.0.0.9/tcp/1']);
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual((await readKnownPeers(dir, self, { maxPeers: 3 })).peers.map((p) => p.peerId), ids.slice(1));
    await file.stop();
    assert.deepEqual((await readKnownPeers(dir, self, { maxPeers: 3 })).peers.map((p) => p.peerId), [ids[2], ids[3], ids[0]]);
    const text = await readFile(file.path, 'utf8');
    assert.equal(JSON.parse(text).version, 1);
    assert.equal((await stat(file.path)).mode & 0o777, 0o600);
  });

  it('absence counts only for a peer not connected whose site has another peer connected; a spell ended adds to what was counted', () => {
    const sites = new Set(['site-b']);
    assert.equal(absenceCounts({ site: 'site-b', connected: false }, sites), true);
    assert.equal(absenceCounts({ site: 'site-b', connected: true }, sites), false);
    assert.equal(absenceCounts({ site: 'site-c', connected: false }, sites), false, 'a site cut off, or down');
    assert.equal(absenceCounts({ site: undefined, connected: false }, sites), false, 'a site not known yet');
    const counting = recountedAbsence({ countedMs: 5 }, true, 100);
    assert.deepEqual(counting, { countedMs: 5, sinceMs: 100 });
    assert.equal(absentMsAt(counting, 130), 35);
    assert.deepEqual(recountedAbsence(counting, false, 130), { countedMs: 35 });
    assert.equal(absentMsAt({ countedMs: 35 }, 1000), 35);
    // A spell that goes on is carried over whole; a nowMs before the spell began adds nothing.
    assert.deepEqual(recountedAbsence(counting, true, 150), { countedMs: 55, sinceMs: 150 });
    assert.equal(absentMsAt(counting, 90), 5);
  });

  it('a peer not connected for 24 h of this peer\'s run time is dropped; the time between two runs is not its absence (a mesh down together finds itself again)', async () => {
    const self = await newPeerId();
    const [x, y, z] = [await newPeerId(), await newPeerId(), await newPeerId()];
    const hourMs = 3600_000;
    const entry = (peerId: string, seenAtMs?: number) => ({ peerId, addrs: [`/ip4/10.0.0.1/tcp/1/p2p/${peerId}`], ...(seenAtMs === undefined ? {} : { seenAtMs }) });
    // Written at hour 100: x connected then, y last at hour 80 (20 h before), z at hour 70 (30 h before).
    const text = JSON.stringify({ version: 1, writtenAtMs: 100 * hourMs, peers: [entry(x, 100 * hourMs), entry(y, 80 * hourMs), entry(z, 70 * hourMs)] });
    assert.deepEqual(parseKnownPeers(text, self).peers.map((p) => [p.peerId, p.absentMs / hourMs]), [[x, 0], [y, 20]], 'z gone; read a week later, the week is left out');
    // A file written before the times were (or an entry "seen" after the write: a clock set back) counts as seen at once.
    const older = JSON.stringify({ version: 1, peers: [entry(x), entry(y, 90 * hourMs)] });
    assert.deepEqual(parseKnownPeers(older, self).peers.map((p) => p.absentMs), [0, 0]);
    const future = JSON.stringify({ version: 1, writtenAtMs: 100 * hourMs, peers: [entry(x, 120 * hourMs)] });
    assert.deepEqual(parseKnownPeers(future, self).peers.map((p) => p.absentMs), [0]);
    assert.deepEqual(parseKnownPeers(text, self, { forgetAfterMs: 10 * hourMs }).peers.map((p) => p.peerId), [x]);
  });

  it('the file keeps each peer\'s absence: one gone 24 h while its site\'s successor was connected is dropped, one connected stays; forgotten peers go', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const [x, y, y2, z, z2] = await Promise.all([0, 1, 2, 3, 4].map(() => newPeerId()));
    const clock = manualClock(1_000_000);
    const hourMs = 3600_000;
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 60_000, clock });
    for (const [i, id] of [x, y, z].entries()) file.noteConnected(id, [`/ip4/10.0.0.${i}/tcp/1`]);
    for (const [id, site] of [[x, 'site-x'], [y, 'site-y'], [z, 'site-z']] as const) file.noteSite(id, site);
    // y and z are restored under new PeerIds (y2, z2), which connect.
    file.noteDisconnected(y);
    file.noteConnected(y2, ['/ip4/10.0.0.1/tcp/1']);
    file.noteSite(y2, 'site-y');
    clock.advance(23 * hourMs);
    file.noteDisconnected(z);
    file.noteConnected(z2, []);
    file.noteSite(z2, 'site-z');
    clock.advance(1 * hourMs);
    // x connected all along, y gone 24 h with y2 connected, z 1 h.
    assert.deepEqual(file.list().map((p) => p.peerId), [x, z, y2]);
    await file.forget([z, 'not known']);
    assert.deepEqual(file.list().map((p) => p.peerId), [x, y2]);
    await file.stop();
    const written = JSON.parse(await readFile(file.path, 'utf8')) as { writtenAtMs: number; peers: Array<{ peerId: string; seenAtMs: number }> };
    assert.equal(written.writtenAtMs, clock.dateMs());
    assert.deepEqual(written.peers.map((p) => [p.peerId, p.seenAtMs]), [[x, clock.dateMs()], [y2, clock.dateMs()]], 'x and y2, connected at the stop, seen then');
  });

  it('while an absence counts, the file is written hourly and when the entry reaches 24 h: a process killed, not stopped, does not count it again from the last change (hunt 173)', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const [x, y, y2] = [await newPeerId(), await newPeerId(), await newPeerId()];
    const clock = manualClock(1_000_000);
    const hourMs = 3600_000;
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 0, writeIntervalMs: 0, clock });
    const absences = async () => (await readKnownPeers(dir, self)).peers.map((p) => [p.peerId, p.absentMs / hourMs]);
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    file.noteConnected(y, ['/ip4/10.0.0.2/tcp/1']);
    file.noteSite(x, 'site-x');
    file.noteSite(y, 'site-y');
    // y is restored under a new PeerId, y2, which connects: y's absence counts; nothing changes after that.
    file.noteDisconnected(y);
    file.noteConnected(y2, []);
    file.noteSite(y2, 'site-y');
    await waitFor('the change written', async () => (await absences()).length === 2);
    clock.advance(5 * hourMs);
    await waitFor('the absence written within the hour', async () => JSON.stringify(await absences()) === JSON.stringify([[x, 0], [y, 5]]));
    clock.advance(19 * hourMs);
    await waitFor('y written out at 24 h', async () => JSON.stringify(await absences()) === JSON.stringify([[x, 0]]));
    // Killed here: the file is all a next start has.
    assert.deepEqual(file.list().map((p) => p.peerId), [x]);
    await file.stop();
  });

  it('a peer forgotten leaves the file at once, not at the next write interval; one forgotten while connected is saved again only when it connects anew', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const [x, y, z] = [await newPeerId(), await newPeerId(), await newPeerId()];
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 3600_000, writeIntervalMs: 3600_000 });
    const saved = async () => (await readKnownPeers(dir, self)).peers.map((p) => p.peerId);
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    file.noteConnected(y, ['/ip4/10.0.0.2/tcp/1']);
    file.noteConnected(z, ['/ip4/10.0.0.3/tcp/1']);
    await file.forget([z]);
    assert.deepEqual(await saved(), [x, y], 'written at once, not an hour later');
    await file.forget([x]);
    assert.deepEqual(await saved(), [y], 'and again, within the write interval');
    // x is still connected: another of its connections identifies (a duplicate dialled at once), or a stop writes the list.
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    assert.deepEqual(file.list().map((p) => p.peerId), [y]);
    // Once it has left, a connection anew saves it again: it is up after all.
    file.noteDisconnected(x);
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/2']);
    assert.deepEqual(file.list().map((p) => p.peerId), [y, x]);
    await file.forget([x]);
    await file.stop();
    assert.deepEqual(await saved(), [y]);
  });

  it('an entry keeps its peer\'s site once the mesh says it: a forgotten site\'s peers go, across a restart too', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const [x, y, w] = [await newPeerId(), await newPeerId(), await newPeerId()];
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 60_000 });
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    file.noteConnected(y, ['/ip4/10.0.0.2/tcp/1']);
    file.noteSite(x, 'site-x');
    file.noteSite(y, 'site-y');
    file.noteSite(await newPeerId(), 'site-z');
    file.noteSite(w, 'site-w');
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/2']);
    // w was named before it said where it listens (first reached through a tunnel).
    file.noteConnected(w, []);
    file.noteConnected(w, ['/ip4/10.0.0.3/tcp/1']);
    await file.stop();
    const read = (await readKnownPeers(dir, self)).peers;
    assert.deepEqual(read.map((p) => [p.peerId, p.site]), [[y, 'site-y'], [x, 'site-x'], [w, 'site-w']], 'a new connection keeps the site; a peer without an entry gets none');
    const again = new KnownPeersFile(dir, self, read, { writeDelayMs: 60_000 });
    assert.deepEqual(again.forgetSites(new Set(['site-x', 'site-z'])), [x]);
    assert.deepEqual(again.list().map((p) => p.peerId), [y, w]);
    await again.stop();
  });

  it('a stop writes the file even with nothing new, so that the time until the next start is not counted as absence', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const [x, w] = [await newPeerId(), await newPeerId()];
    const clock = manualClock(1_000_000);
    const hourMs = 3600_000;
    const first = new KnownPeersFile(dir, self, [], { writeDelayMs: 0, clock });
    first.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    first.noteSite(x, 'site-x');
    first.noteDisconnected(x);
    await first.stop();
    // The next run: w, another peer of x's site, is connected 20 h, x still not back, and the peer stops; 10 h later it starts again.
    const second = new KnownPeersFile(dir, self, (await readKnownPeers(dir, self)).peers, { writeDelayMs: 60_000, clock });
    second.noteConnected(w, ['/ip4/10.0.0.2/tcp/1']);
    second.noteSite(w, 'site-x');
    clock.advance(20 * hourMs);
    await second.stop();
    clock.advance(10 * hourMs);
    assert.deepEqual((await readKnownPeers(dir, self)).peers.map((p) => [p.peerId, p.absentMs / hourMs]), [[x, 20], [w, 0]]);
  });

  it('absence counts only while another peer of its site is connected: sites cut apart for days (a WAN outage), or a site alone, keep each other\'s addresses, across restarts', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    // This peer is site-a; b (site-b) is on its side of the cut, c (site-c) on the other, c2 c's successor.
    const [b, c, c2, t] = await Promise.all([0, 1, 2, 3].map(() => newPeerId()));
    const clock = manualClock(1_000_000);
    const hourMs = 3600_000;
    const first = new KnownPeersFile(dir, self, [], { writeDelayMs: 60_000, clock });
    first.noteConnected(b, ['/ip4/10.0.0.1/tcp/1']);
    first.noteConnected(c, ['/ip4/10.0.0.2/tcp/1']);
    first.noteSite(b, 'site-b');
    first.noteSite(c, 'site-c');
    // The WAN link to site-c is cut for 3 days, b connected all along; then this site restarts, still cut off.
    first.noteDisconnected(c);
    clock.advance(72 * hourMs);
    assert.deepEqual(first.list().map((p) => p.peerId), [b, c]);
    await first.stop();
    const read = (await readKnownPeers(dir, self)).peers;
    assert.deepEqual(read.map((p) => [p.peerId, p.absentMs]), [[b, 0], [c, 0]]);
    // b stays, then goes too: this site alone for a week keeps both.
    const second = new KnownPeersFile(dir, self, read, { writeDelayMs: 60_000, clock });
    second.noteConnected(b, ['/ip4/10.0.0.1/tcp/1']);
    clock.advance(48 * hourMs);
    second.noteDisconnected(b);
    clock.advance(168 * hourMs);
    assert.deepEqual(second.list().map((p) => p.peerId), [c, b]);
    // c restored under a new PeerId, reached through a tunnel (no address worth saving): c's absence counts from now, b's not.
    second.noteConnected(c2, []);
    second.noteSite(c2, 'site-c');
    second.noteSite(t, 'site-b');
    clock.advance(23 * hourMs);
    // c2's connection drops for an hour: c's absence stops counting meanwhile.
    second.noteDisconnected(c2);
    clock.advance(1 * hourMs);
    assert.deepEqual(second.list().map((p) => p.peerId), [c, b]);
    second.noteConnected(c2, []);
    clock.advance(1 * hourMs);
    assert.deepEqual(second.list().map((p) => p.peerId), [b], 'c: 23 h + 1 h with c2 connected');
    await second.stop();
  });

  it('a site is kept only as --site takes it, from the file and from the mesh: a damaged one names no site', async () => {
    const self = await newPeerId();
    const [x, y, z, w] = [await newPeerId(), await newPeerId(), await newPeerId(), await newPeerId()];
    const entry = (peerId: string, site: unknown) => ({ peerId, addrs: [`/ip4/10.0.0.1/tcp/1/p2p/${peerId}`], site });
    const text = JSON.stringify({ version: 1, peers: [entry(x, 'site-x'), entry(y, ''), entry(z, 'site y\n'), entry(w, 's'.repeat(65))] });
    assert.deepEqual(parseKnownPeers(text, self).peers.map((p) => p.site), ['site-x', undefined, undefined, undefined]);
    const file = new KnownPeersFile(await newDir(), self, [], { writeDelayMs: 60_000 });
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    file.noteSite(x, 'site/x');
    assert.deepEqual(file.list().map((p) => p.site), [undefined]);
    await file.stop();
  });

  it('never writes a file larger than a start reads: the least recently connected peers are left out of it', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    const ids = await Promise.all(Array.from({ length: 64 }, () => newPeerId()));
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 60_000 });
    // Eight addresses of some 480 characters each (long DNS names), for each of 64 peers: over 256 KiB.
    const host = Array.from({ length: 7 }, () => 'h'.repeat(60)).join('.');
    for (const id of ids) file.noteConnected(id, Array.from({ length: 8 }, (_, port) => `/dns4/${host}/tcp/${port + 1}`));
    await file.stop();
    const read = await readKnownPeers(dir, self);
    assert.equal(read.problem, undefined);
    assert.ok(read.peers.length > 40 && read.peers.length < 64, `${read.peers.length} peers`);
    assert.deepEqual(read.peers.at(-1)?.peerId, ids.at(-1), 'the most recently connected kept');
  });

  it('a file that cannot be written is said once, and the list is kept', async () => {
    const self = await newPeerId();
    const dir = await newDir();
    // A directory in the file's place: the rename fails.
    await mkdir(join(dir, KNOWN_PEERS_FILE));
    await writeFile(join(dir, KNOWN_PEERS_FILE, 'x'), 'x');
    const problems: KnownPeersProblem[] = [];
    const file = new KnownPeersFile(dir, self, [], { writeDelayMs: 10, writeIntervalMs: 50 }, (p) => problems.push(p));
    const [x, y] = [await newPeerId(), await newPeerId()];
    file.noteConnected(x, ['/ip4/10.0.0.1/tcp/1']);
    await new Promise((r) => setTimeout(r, 200));
    file.noteConnected(y, ['/ip4/10.0.0.2/tcp/1']);
    await file.stop();
    assert.equal(problems.length, 1, JSON.stringify(problems));
    assert.equal(problems[0]!.operation, 'write');
    assert.deepEqual(file.list().map((p) => p.peerId), [x, y]);
  });
});
