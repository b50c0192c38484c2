/**
 * What an operator reads when a site stands still (SIGSTOP, a frozen VM) for longer than the death timeout
 * and then resumes (hunt 144): the other site marks it dead and alive again, a leader change names the
 * leader's site, and the resumed site says in its own log that it stood still. Before, its log said only that
 * the others went suspect and came back, as if they had been the silent ones, and a leader change named a
 * PeerId the operator had to look up in /api/mesh. And a site restarted with another swarm key and no
 * --bootstrap, whose saved peers answer and refuse its key, was told only that they were down or moved.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';
import { eventually, newCluster } from './support.ts';

const stoodStill = /"level":"warn","message":"this process stood still for [\d.]+ s [^"]*took it for dead meanwhile"/;

test('a site stopped past the death timeout and resumed: dead then alive at the other, its own log says it stood still, leader changes name the site', { timeout: 90_000 }, async (t) => {
  const cluster = await newCluster(t);
  const logA = join(cluster.root, 'site-a.log');
  const logB = join(cluster.root, 'site-b.log');
  const a = await cluster.start('site-a', { logFile: logA, logLevel: 'info' });
  const b = await cluster.start('site-b', { logFile: logB, logLevel: 'info' });
  t.after(() => {
    a.process.child.kill('SIGCONT');
  });
  const aliveAtB = async (): Promise<boolean | undefined> => (await b.status()).members?.find((m) => m.site === 'site-a')?.alive;
  await eventually(async () => (await aliveAtB()) === true && (await b.status()).leader != null, 30_000, async () => JSON.stringify(await b.status()));
  a.process.child.kill('SIGSTOP');
  const stoppedAtMs = Date.now();
  await eventually(async () => (await aliveAtB()) === false, 20_000, async () => JSON.stringify((await b.status()).members));
  // Past the death timeout (3 s) with room to spare, whatever the machine's load made of the wait above.
  await new Promise((r) => setTimeout(r, Math.max(0, stoppedAtMs + 6000 - Date.now())));
  a.process.child.kill('SIGCONT');
  await eventually(async () => (await aliveAtB()) === true, 30_000, async () => JSON.stringify((await b.status()).members));
  await eventually(async () => stoodStill.test(readFileSync(logA, 'utf8')), 10_000, () => readFileSync(logA, 'utf8').slice(-3000));
  const leaderLines = readFileSync(logB, 'utf8')
    .split('\n')
    .filter((line) => line.includes('"message":"leader changed"') && !line.includes('"leader":null'));
  assert.ok(leaderLines.length > 0, 'a leader was elected');
  for (const line of leaderLines) assert.match(line, /"leaderSite":"site-[ab]"/, line);
});

const servesAloneOtherKey = /no other site has connected to this peer: it serves alone[^\n]*Their last dials: 1 peer\(s\): [^\n]*another swarm key/;

test('a site restarted with another swarm key and no --bootstrap says its saved peers refuse its key, not only that they are down or moved', { timeout: 90_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  const b = await cluster.start('site-b');
  await eventually(async () => (await a.status()).members?.find((m) => m.site === 'site-b')?.alive === true, 30_000, async () => JSON.stringify((await a.status()).members));
  // The warning needs b to know site-a (a peer that knows no other site serves alone by design): a seen alive
  // at b is not enough, b's custody records the site a moment later. Most likely why a clean-clone CI run saw the
  // restarted b print nothing in 40 s (2026-12-02, and once in 4 runs of this file): b stopped before it had.
  await eventually(async () => (await b.status()).custody?.knownSites.some((k) => k.site === 'site-a') === true, 30_000, async () => JSON.stringify((await b.status()).custody));
  // A clean stop writes b's saved peer addresses (known-peers.json), a among them.
  await b.stop();
  const otherKey = join(cluster.root, 'other.key');
  await writeSwarmKeyFile(otherKey);
  // Its check whether it serves alone runs every second from its start (15 s, then every 10 minutes, by
  // default); a answers every dial and fails the handshake, which a check after that dial says.
  const restarted = await cluster.start('site-b', { dataDir: b.dataDir, bootstrap: [], swarmKeyFile: otherKey, ports: { dicom: b.dicomPort, http: b.httpPort, p2p: b.p2pPort }, isolationCheckMs: 1000 });
  await eventually(async () => servesAloneOtherKey.test(restarted.output()), 40_000, async () => `${restarted.output().slice(-3000)}\n/api/mesh: ${JSON.stringify(await restarted.status().catch(String))}`);
});
