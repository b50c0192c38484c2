import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { encodeEnvelope } from '../../codec/envelope.ts';
import { createTwoSlotFile, SLOT_BYTES } from '../../durable-file.ts';
import { ELECTION_MAX_BYTES } from './election-streams.ts';
import { votersMax } from './messages.ts';
import { ELECTION_RECORD_FILE, LEGACY_ELECTION_FILE, openElectionRecord, readElectionRecord } from './state-files.ts';

async function dataDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-election-record-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

test('election record: an empty data dir reads term 0, no vote; the file comes with the first write and keeps the newest record', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  t.after(() => record.close());
  assert.deepEqual(record.durable, { currentTerm: 0, votedFor: null });
  assert.equal(await exists(join(dir, ELECTION_RECORD_FILE)), false, 'nothing written at start: a start on a full disk is not refused');
  for (let term = 1; term <= 5; term++) {
    await record.write({ currentTerm: term, votedFor: term % 2 === 0 ? null : `peer-${term}` });
    assert.deepEqual(record.durable, { currentTerm: term, votedFor: term % 2 === 0 ? null : `peer-${term}` });
  }
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 5, votedFor: 'peer-5' });
  assert.equal((await stat(join(dir, ELECTION_RECORD_FILE))).size, 2 * SLOT_BYTES);
});

test('election record: close waits for the first write, which creates the file, and leaves no handle of it open', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  // The balancer stops (close) while its first vote is being recorded: the marker, then the file, are written after close is called.
  const writing = record.write({ currentTerm: 1, votedFor: 'peer-1' });
  await record.close();
  await writing;
  assert.deepEqual(record.durable, { currentTerm: 1, votedFor: 'peer-1' }, 'the write in flight was waited for, as close does once the file exists');
  const recPath = join(dir, ELECTION_RECORD_FILE);
  const open = (await readdir('/proc/self/fd')).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => ''));
  assert.deepEqual((await Promise.all(open)).filter((target) => target === recPath), [], 'no descriptor of the record is left open after close');
  await assert.rejects(record.write({ currentTerm: 2, votedFor: null }), { code: 'ERR_BALANCER_STATE_WRITE' });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 1, votedFor: 'peer-1' });
});

test('election record: a data dir of an earlier build keeps its term and vote; its file then points to the new one, which earlier builds refuse', async (t) => {
  const dir = await dataDir(t);
  await writeFile(join(dir, LEGACY_ELECTION_FILE), '{"currentTerm":41,"votedFor":"12D3KooWVoter"}\n');
  const record = await openElectionRecord(dir);
  assert.deepEqual(record.durable, { currentTerm: 41, votedFor: '12D3KooWVoter' });
  // The first write (the next term or vote) creates the two-slot file and leaves the marker.
  await record.write({ currentTerm: 42, votedFor: null });
  await record.close();
  const marker = JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')) as Record<string, unknown>;
  assert.equal(marker.movedTo, ELECTION_RECORD_FILE);
  // What earlier builds checked before they started (loadElection): no safe integer term, so they refuse.
  assert.equal(Number.isSafeInteger(marker.currentTerm), false);
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 42, votedFor: null });
  // The marker without its file is a record lost: refused, not read as no vote.
  await rm(join(dir, ELECTION_RECORD_FILE));
  await assert.rejects(openElectionRecord(dir), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_BALANCER_STATE_FILE');
    assert.match(err.message, /balancer-election\.rec is damaged \(missing, though balancer-election\.json says the record moved there\): restore it, or move it and balancer-election\.json away/);
    return true;
  });
});

test('election record: a migration cut off before the new file exists leaves a marker earlier builds refuse, and this build starts from the record before it', async (t) => {
  const dir = await dataDir(t);
  await writeFile(join(dir, LEGACY_ELECTION_FILE), '{"currentTerm":41,"votedFor":"12D3KooWVoter"}\n');
  const record = await openElectionRecord(dir);
  // A directory where the file goes: creating it fails as a crash at that moment would leave things (no file).
  await mkdir(join(dir, ELECTION_RECORD_FILE, 'in-the-way'), { recursive: true });
  await assert.rejects(record.write({ currentTerm: 42, votedFor: null }), { code: 'ERR_BALANCER_STATE_WRITE' });
  await record.close();
  const marker = JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')) as Record<string, unknown>;
  assert.equal(Number.isSafeInteger(marker.currentTerm), false, 'earlier builds refuse the data dir from here on');
  await rm(join(dir, ELECTION_RECORD_FILE), { recursive: true });
  const restarted = await openElectionRecord(dir);
  assert.deepEqual(restarted.durable, { currentTerm: 41, votedFor: '12D3KooWVoter' }, 'the write never resolved: the record before it');
  await restarted.write({ currentTerm: 42, votedFor: null });
  await restarted.close();
  assert.deepEqual(JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')), JSON.parse(JSON.stringify({ movedTo: ELECTION_RECORD_FILE, note: marker.note })), 'once the file exists the marker no longer holds a record');
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 42, votedFor: null });
});

test('election record: a marker still holding the record from before the move is made final at a later write, once it can be', async (t) => {
  const dir = await dataDir(t);
  const first = await openElectionRecord(dir);
  await first.write({ currentTerm: 3, votedFor: 'a' });
  await first.close();
  // As a failed clean-up leaves it: the `.rec` written, the marker still holding the record from before the move.
  await writeFile(join(dir, LEGACY_ELECTION_FILE), `${JSON.stringify({ movedTo: ELECTION_RECORD_FILE, recordBeforeMove: { currentTerm: 2, votedFor: null } })}\n`);
  // The clean-up fails at the start (a directory where its temporary file goes), then the way clears.
  await mkdir(join(dir, `${LEGACY_ELECTION_FILE}.tmp`, 'in-the-way'), { recursive: true });
  const record = await openElectionRecord(dir);
  t.after(() => record.close());
  assert.ok('recordBeforeMove' in (JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')) as object));
  await rm(join(dir, `${LEGACY_ELECTION_FILE}.tmp`), { recursive: true });
  await record.write({ currentTerm: 4, votedFor: null });
  const marker = JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')) as Record<string, unknown>;
  assert.equal(marker.movedTo, ELECTION_RECORD_FILE);
  assert.equal('recordBeforeMove' in marker, false, 'a lost .rec is refused again, not read as the record from before the move');
});

test('election record: a migration cut off after the new file (the old record still in place) starts from the new file and leaves the marker', async (t) => {
  const dir = await dataDir(t);
  const first = await openElectionRecord(dir);
  await first.write({ currentTerm: 9, votedFor: 'b' });
  await first.close();
  await writeFile(join(dir, LEGACY_ELECTION_FILE), '{"currentTerm":8,"votedFor":"a"}\n');
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 9, votedFor: 'b' });
  assert.equal((JSON.parse(await readFile(join(dir, LEGACY_ELECTION_FILE), 'utf8')) as Record<string, unknown>).movedTo, ELECTION_RECORD_FILE);
});

test('election record: a torn newest slot reads as the record before it; both slots damaged stops the start with the file named', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  await record.write({ currentTerm: 3, votedFor: 'a' });
  await record.write({ currentTerm: 4, votedFor: 'b' });
  await record.close();
  const path = join(dir, ELECTION_RECORD_FILE);
  const handle = await open(path, 'r+');
  try {
    // The newest is in slot 1 (creation wrote slot 0); zeros over its payload, as a write torn by a power cut.
    await handle.write(new Uint8Array(8), 0, 8, SLOT_BYTES + 20);
    assert.deepEqual(await readElectionRecord(dir), { currentTerm: 3, votedFor: 'a' });
    await handle.write(new Uint8Array(8), 0, 8, 20);
  } finally {
    await handle.close();
  }
  await assert.rejects(openElectionRecord(dir), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_BALANCER_STATE_FILE');
    assert.match(err.message, /balancer-election\.rec is damaged \(neither of its two slots is whole\): restore it, or move it and balancer-election\.json away to start with no vote record/);
    return true;
  });
});

test('election record: a write after close is refused as a state write (ERR_BALANCER_STATE_WRITE), the record unchanged', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  await record.write({ currentTerm: 1, votedFor: 'a' });
  await record.close();
  await assert.rejects(record.write({ currentTerm: 2, votedFor: 'b' }), { code: 'ERR_BALANCER_STATE_WRITE' });
  assert.deepEqual(record.durable, { currentTerm: 1, votedFor: 'a' });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 1, votedFor: 'a' });
});

test('election record: whether the peer has met the mesh (hunt 164) is kept with the term; a record without it reads without it', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  t.after(() => record.close());
  await record.write({ currentTerm: 2, votedFor: null, meshMet: false });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 2, votedFor: null, meshMet: false });
  await record.write({ currentTerm: 2, votedFor: null, meshMet: true });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 2, votedFor: null, meshMet: true });
  await record.write({ currentTerm: 3, votedFor: 'peer-1' });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 3, votedFor: 'peer-1' });
});

/** A PeerId's length and alphabet (Ed25519, as pacs-mesh creates them): what bounds how many voters fit a slot. */
const peerIdLike = (i: number): string => `12D3KooW${String(i).padStart(44, 'A')}`;

test('election record: the admitted voters (hunt 184) are kept with the term, up to votersMax PeerIds; a list past what a slot holds is a refused write', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  t.after(() => record.close());
  const full = { peers: Array.from({ length: votersMax }, (_, i) => peerIdLike(i)).sort(), term: 7, seq: 3 };
  await record.write({ currentTerm: 9, votedFor: peerIdLike(0), meshMet: true, voters: full });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 9, votedFor: peerIdLike(0), meshMet: true, voters: full });
  // The same list fits a request for votes, which carries it as its roster.
  const request = { type: 'requestVote', term: 9, candidateId: peerIdLike(0), roster: full.peers, voters: { term: 7, seq: 3 } };
  assert.ok(encodeEnvelope(request, { maxBytes: ELECTION_MAX_BYTES }).length <= ELECTION_MAX_BYTES);
  const tooMany = { peers: Array.from({ length: 80 }, (_, i) => peerIdLike(i)), term: 7, seq: 4 };
  await assert.rejects(record.write({ currentTerm: 9, votedFor: null, voters: tooMany }), { code: 'ERR_BALANCER_STATE_WRITE' });
  assert.deepEqual(record.durable.voters, full, 'unchanged');
});

test('election record: the voters leaving (hunt 186) are kept as positions in the list, all of a full list still within a slot', async (t) => {
  const dir = await dataDir(t);
  const record = await openElectionRecord(dir);
  t.after(() => record.close());
  const full = { peers: Array.from({ length: votersMax }, (_, i) => peerIdLike(i)).sort(), term: 7, seq: 3 };
  const leaving = full.peers.slice(1);
  await record.write({ currentTerm: 9, votedFor: null, meshMet: true, voters: full, votersLeaving: leaving });
  assert.deepEqual(await readElectionRecord(dir), { currentTerm: 9, votedFor: null, meshMet: true, voters: full, votersLeaving: leaving });
  // One no longer in the list (taken out since) is not written: only the list's own count.
  await record.write({ currentTerm: 9, votedFor: null, voters: { ...full, peers: full.peers.slice(0, 3) }, votersLeaving: [full.peers[2] as string, full.peers[5] as string] });
  assert.deepEqual((await readElectionRecord(dir))?.votersLeaving, [full.peers[2]]);
  for (const votersLeavingAt of [[3], [0, 0], [-1], ['peer-x'], 'all']) {
    const bad = await dataDir(t);
    const file = await createTwoSlotFile(join(bad, ELECTION_RECORD_FILE), encodeEnvelope({ type: 'electionRecord', currentTerm: 2, votedFor: null, voters: { peers: ['a', 'b', 'c'], term: 1, seq: 0 }, votersLeavingAt }));
    await file.close();
    await assert.rejects(readElectionRecord(bad), (err: Error & { code?: string }) => err.code === 'ERR_BALANCER_STATE_FILE' && /voters leaving/.test(err.message), JSON.stringify(votersLeavingAt));
  }
});

test('election record: admitted voters that are not a bounded list of PeerIds make the record damaged (the start stops with the file named)', async (t) => {
  const bad: unknown[] = [
    'peer-a',
    { peers: ['peer-a'], term: -1, seq: 0 },
    { peers: ['peer-a'], term: 1 },
    { peers: ['peer-a', ''], term: 1, seq: 0 },
    { peers: ['peer-a', 'peer-a'], term: 1, seq: 0 },
    { peers: Array.from({ length: votersMax + 1 }, (_, i) => `p${i}`), term: 1, seq: 0 },
  ];
  for (const voters of bad) {
    const dir = await dataDir(t);
    const file = await createTwoSlotFile(join(dir, ELECTION_RECORD_FILE), encodeEnvelope({ type: 'electionRecord', currentTerm: 2, votedFor: null, voters }));
    await file.close();
    await assert.rejects(readElectionRecord(dir), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_BALANCER_STATE_FILE', JSON.stringify(voters));
      assert.match(err.message, /balancer-election\.rec is damaged \(admitted voters/);
      return true;
    });
  }
});
