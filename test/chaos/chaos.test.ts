/**
 * A seeded chaos run of the real mesh: 3-5 `pacs-mesh` processes on loopback driven through random steps
 * (first starts, kill -9, SIGSTOP/SIGCONT, graceful stops, restarts on the same data directory, storescu
 * of corpus and synthetic instances to a random live site, pauses), then healed (every site up) and
 * checked: (a) at most one leader per term in every /api/mesh view sampled during the run and in every
 * leadership the peers logged (a peer alone in its roster besides another is reported, not failed); (b) every
 * acknowledged instance at every site (its replica count) and retrievable there (WADO-RS, as sent);
 * (c) every site sees the same members alive and connected, the same leader and term; (d) no peer exited
 * unasked, a graceful stop exited 0, and none logged an unhandled rejection.
 *
 * CHAOS_SEED (default: random, printed) and CHAOS_STEPS (default 16) choose the run; CHAOS_ELECTION_VOTERS (default
 * `admitted`, the command's default) runs every site with `--election-voters admitted`, the plan's first site founding
 * them (`--found-mesh yes`) while no site's election record holds a list naming a voter and every other start
 * `--found-mesh no`, as `npm start` does, or with `learnt`, `--election-voters learnt`; the plan is made up
 * front from the seed (`plan.ts`), so a seed replays the same steps. CHAOS_BASE_PORT puts the sites on
 * fixed ports (base + 3 x site index + 0..2) instead of free ones. The peers' logs are kept only when the
 * run fails or its sites took over 30 s to converge (or always, with CHAOS_KEEP_LOGS=1), under CHAOS_LOG_DIR (default: the system's temp directory), and the path is printed.
 * `npm run test:chaos`; not part of `npm test` (a run takes minutes).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, newCluster, type MeshStatus, type PeerProcess } from '../mesh/support.ts';
import { getFreePort, hasDcmtk, runTool } from '../support/dicom-tools.ts';
import { makeInstanceWithInfo, TransferSyntax, uidFromSeed } from '../support/synthetic-dicom.ts';
import { parseMultipart } from '../support/multipart.ts';
import { compareInstances } from '../interop/compare.ts';
import { groupBy, loadCorpus, storescuProposal, type Instance } from '../interop/harness.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { describeStep, planChaos, type ChaosStep, type SiteName } from './plan.ts';
import { holdsFoundedVoters } from '../../src/actors/balancer/state-files.ts';

const seed = process.env['CHAOS_SEED'] !== undefined ? Number(process.env['CHAOS_SEED']) : randomInt(1, 1_000_000);
const stepCount = Number(process.env['CHAOS_STEPS'] ?? 16);
const basePort = process.env['CHAOS_BASE_PORT'] !== undefined ? Number(process.env['CHAOS_BASE_PORT']) : undefined;
const electionVoters = process.env['CHAOS_ELECTION_VOTERS'] ?? 'admitted';
if (electionVoters !== 'learnt' && electionVoters !== 'admitted') throw new Error(`CHAOS_ELECTION_VOTERS="${electionVoters}" must be learnt or admitted`);
/** Waits after healing: generous, the machine is shared. */
const convergeTimeoutMs = 180_000;
const samplingIntervalMs = 500;
/** A start's wait for /healthz: at load 40 restarts took over 30 s (seed 15: 20 s from the launch to its store loaded, four starts in a row). */
const startTimeoutMs = 90_000;
/** CHAOS_KEEP_LOGS=1 keeps the peers' logs of a run that passes too, to read for warnings no check fails on. */
const keepLogsAlways = process.env['CHAOS_KEEP_LOGS'] === '1';
/** Beyond this the peers' logs are kept though the run passes. */
const slowConvergenceMs = 30_000;

interface SiteRun {
  name: SiteName;
  ports: { dicom: number; http: number; p2p: number };
  dataDir: string;
  /** The --bootstrap of its first start, given again at each restart, as an operator's unit file would. */
  bootstrap: string[];
  peer: PeerProcess | null;
  starts: number;
  paused: { sinceMs: number; minMs: number } | null;
}

/** What storescu was told Success for, by SOP Instance UID. */
interface Acknowledged {
  /** The file storescu sent (it may drop group lengths or padding of a corpus file on the way). */
  file: Uint8Array;
  studyUid: string;
  /** Where and at which step it was acknowledged, for failure messages. */
  where: string;
}

test(`chaos: seed ${seed}, ${stepCount} steps${electionVoters === 'learnt' ? ', learnt rosters' : ''}`, { timeout: stepCount * 40_000 + 900_000 }, async (t) => {
  assert.ok(hasDcmtk(['storescu']), 'DCMTK storescu is not on PATH: apt-get install dcmtk');
  const corpus = loadCorpus();
  const plan = planChaos({ seed, steps: stepCount, corpusSize: corpus.length });
  const say = (line: string) => console.log(`[chaos ${seed} +${((Date.now() - startedAtMs) / 1000).toFixed(1)}s] ${line}`);
  const startedAtMs = Date.now();
  say(`CHAOS_SEED=${seed} CHAOS_STEPS=${stepCount}: ${plan.sites.length} sites; plan:\n  ${[...plan.steps, ...plan.heal].map(describeStep).join('\n  ')}`);

  const sites = new Map<SiteName, SiteRun>();
  let sampler: NodeJS.Timeout | undefined;
  // Registered before the cluster's dispose: a stopped process must be continued, and the sampler stopped, before the peers are.
  t.after(async () => {
    clearInterval(sampler);
    for (const run of sites.values()) if (run.peer !== null && !run.peer.process.hasExited) run.peer.process.child.kill('SIGCONT');
  });
  const cluster = await newCluster(t);
  const logDir = join(cluster.root, 'logs');
  const instanceDir = join(cluster.root, 'instances');
  mkdirSync(logDir);
  mkdirSync(instanceDir);

  for (const [index, name] of plan.sites.entries()) {
    const ports = basePort !== undefined ? { dicom: basePort + 3 * index, http: basePort + 3 * index + 1, p2p: basePort + 3 * index + 2 } : { dicom: await getFreePort(), http: await getFreePort(), p2p: await getFreePort() };
    sites.set(name, { name, ports, dataDir: join(cluster.root, name), bootstrap: [], peer: null, starts: 0, paused: null });
  }
  const site = (name: SiteName) => sites.get(name)!;

  /** (d): exits nobody asked for, and graceful stops that did not exit 0. */
  const crashes: string[] = [];
  /**
   * (a): every leader seen for each term, with where it was seen first, and whether it was seen leading with a
   * roster of itself alone: a new peer that heard nobody in its settle time elects itself (a one-peer component,
   * docs/mesh-algorithms.md "Trade-off"), in a term the mesh may have used; such terms are reported, not failed.
   */
  const leadersByTerm = new Map<number, Map<string, { firstSeen: string; alone: boolean }>>();
  let samples = 0;
  const startFailures: string[] = [];
  const acknowledged = new Map<string, Acknowledged>();
  const storeOutcomes: string[] = [];

  /** With admitted voters, the plan's first site founds them while no site's record holds a list naming a voter (scripts/local-mesh.ts's rule). */
  const electionArgs = async (run: SiteRun): Promise<string[]> => {
    if (electionVoters === 'learnt') return ['--election-voters', 'learnt'];
    const joins = ['--election-voters', 'admitted', '--found-mesh', 'no'];
    if (run.name !== plan.sites[0]) return joins;
    // A record caught in the middle of a write counts as founded: a second founder would make a second mesh.
    for (const other of sites.values()) if (existsSync(other.dataDir) && (await holdsFoundedVoters(other.dataDir).catch(() => true))) return joins;
    return ['--election-voters', 'admitted', '--found-mesh', 'yes'];
  };

  const launch = async (run: SiteRun): Promise<void> => {
    run.starts++;
    try {
      const peer = await cluster.start(run.name, { dataDir: run.dataDir, bootstrap: run.bootstrap, ports: run.ports, logFile: join(logDir, `${run.name}.log`), logLevel: 'info', readyTimeoutMs: startTimeoutMs, extraArgs: await electionArgs(run) });
      run.peer = peer;
      void peer.process.exited.then(({ code, signal }) => {
        if (exitsAsked.has(peer)) return;
        crashes.push(`${run.name} (start ${run.starts}) exited unasked: code ${code}, signal ${signal}\n${peer.output().slice(-3000)}`);
        // The heal starts it again.
        if (run.peer === peer) run.peer = null;
      });
    } catch (error) {
      // Not ready in time on a loaded machine, or it exited during its start: the heal starts it again.
      const message = (error as Error).message;
      if (/exited during start/.test(message)) crashes.push(`${run.name} (start ${run.starts}): ${message.slice(0, 3000)}`);
      else startFailures.push(`${run.name} (start ${run.starts}): ${message.slice(0, 300)}`);
      run.peer = null;
    }
  };
  /** Peers this test killed or stopped: their exit is no crash. */
  const exitsAsked = new WeakSet<PeerProcess>();
  const expectExit = (peer: PeerProcess) => exitsAsked.add(peer);

  const addressOf = async (run: SiteRun): Promise<string> => {
    for (let attempt = 0; attempt < 5 && run.peer !== null; attempt++) {
      try {
        const address = (await run.peer.status()).self.multiaddrs?.[0];
        if (address !== undefined) return address;
      } catch {
        // busy for a moment
      }
      await sleep(500);
    }
    // Without its PeerId: any peer there holding the swarm key is accepted.
    return `/ip4/127.0.0.1/tcp/${run.ports.p2p}`;
  };

  const sample = async (): Promise<void> => {
    await Promise.all(
      [...sites.values()].map(async (run) => {
        const peer = run.peer;
        if (peer === null || run.paused !== null || peer.process.hasExited) return;
        let status: MeshStatus & { balancer?: { role?: string; term?: number; roster?: number } };
        try {
          status = await peer.status();
        } catch {
          return;
        }
        samples++;
        const record = (term: number, peerId: string, how: string, alone: boolean) => {
          let seen = leadersByTerm.get(term);
          if (seen === undefined) leadersByTerm.set(term, (seen = new Map()));
          const known = seen.get(peerId) ?? { firstSeen: `${how} at +${((Date.now() - startedAtMs) / 1000).toFixed(1)}s`, alone: false };
          seen.set(peerId, { ...known, alone: known.alone || alone });
        };
        if (status.leader) record(status.leader.term, status.leader.peerId, `${run.name}'s view`, false);
        if (status.balancer?.role === 'leader' && status.balancer.term !== undefined && status.self.peerId !== undefined) {
          record(status.balancer.term, status.self.peerId, `${run.name} itself`, status.balancer.roster === 1);
        }
      }),
    );
  };
  let sampling = false;
  sampler = setInterval(() => {
    if (sampling) return;
    sampling = true;
    void sample().finally(() => (sampling = false));
  }, samplingIntervalMs);

  let syntheticCount = 0;
  const syntheticStudies = [0, 1, 2].map((i) => uidFromSeed(`chaos/${seed}/study/${i}`));
  const storeAt = async (step: Extract<ChaosStep, { type: 'store' }>, index: number): Promise<void> => {
    const run = site(step.site);
    const instances: Array<Pick<Instance, 'path' | 'transferSyntaxUid' | 'sopInstanceUid' | 'studyUid' | 'bytes'>> = step.corpusFiles.map((i) => corpus[i]!);
    for (let i = 0; i < step.newInstances; i++) {
      const n = syntheticCount++;
      const studyUid = syntheticStudies[n % syntheticStudies.length]!;
      const { bytes, resolved } = makeInstanceWithInfo({
        transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
        sopInstanceUid: uidFromSeed(`chaos/${seed}/instance/${n}`),
        study: { uid: studyUid },
        patient: { id: `CHAOS${n % 3}` },
        rows: 64,
        columns: 64,
        instanceNumber: n + 1,
        privateElements: true,
      });
      const path = join(instanceDir, `${n}.dcm`);
      writeFileSync(path, bytes);
      instances.push({ path, transferSyntaxUid: resolved.transferSyntaxUid, sopInstanceUid: resolved.sopInstanceUid, studyUid, bytes });
    }
    for (const [ts, group] of groupBy(instances, (instance) => instance.transferSyntaxUid)) {
      const byPath = new Map(group.map((instance) => [instance.path, instance]));
      // -R and the file's own syntax: each file goes as it is (no conversion by storescu); bounded DIMSE and ACSE waits.
      const result = await runTool('storescu', ['-v', '-R', storescuProposal(ts), '-to', '20', '-ta', '20', '-td', '30', '-aec', 'PACSMESH', '127.0.0.1', String(run.ports.dicom), ...group.map((g) => g.path)], {
        timeoutMs: 90_000,
        env: { TCP_NODELAY: '1' },
      });
      let current: (typeof group)[number] | undefined;
      let successes = 0;
      for (const line of (result.stdout + result.stderr).split('\n')) {
        const sending = /Sending file: (.*)$/.exec(line);
        if (sending) current = byPath.get(sending[1]!.trim());
        const response = /Received Store Response \(([^)]*)\)/.exec(line);
        if (response && current !== undefined) {
          if (response[1] === 'Success') {
            successes++;
            acknowledged.set(current.sopInstanceUid, { file: current.bytes, studyUid: current.studyUid, where: `${step.site} at step ${index}` });
          }
          current = undefined;
        }
      }
      storeOutcomes.push(`step ${index} ${step.site}: ${successes}/${group.length} acknowledged${result.code === 0 ? '' : ` (storescu exit ${result.code}${result.timedOut ? ', timed out' : ''})`}`);
      say(`  store step ${index} at ${step.site}: ${successes}/${group.length} acknowledged`);
      // The site is down or paused: the other groups would wait out the same timeouts.
      if (successes === 0 && result.code !== 0) break;
    }
  };
  let storeInFlight: Promise<void> = Promise.resolve();

  const perform = async (step: ChaosStep, index: number): Promise<void> => {
    switch (step.type) {
      case 'start': {
        const run = site(step.site);
        run.bootstrap = step.bootstrapFrom === null ? [] : [await addressOf(site(step.bootstrapFrom))];
        await launch(run);
        return;
      }
      case 'restart':
        await launch(site(step.site));
        return;
      case 'kill9': {
        const run = site(step.site);
        if (run.peer === null) return;
        expectExit(run.peer);
        await run.peer.kill9();
        run.peer = null;
        run.paused = null;
        return;
      }
      case 'stop': {
        const run = site(step.site);
        const peer = run.peer;
        if (peer === null) return;
        expectExit(peer);
        const exited = peer.process.exited;
        // A stop drains for up to ~7 s; a loaded machine gets more before the SIGKILL.
        await peer.process.stop(30_000);
        const { code, signal } = await exited;
        if (code !== 0) crashes.push(`${step.site}: a graceful stop exited with code ${code}, signal ${signal}\n${peer.output().slice(-3000)}`);
        run.peer = null;
        return;
      }
      case 'pause': {
        const run = site(step.site);
        if (run.peer === null) return;
        run.peer.process.child.kill('SIGSTOP');
        run.paused = { sinceMs: Date.now(), minMs: step.minMs };
        return;
      }
      case 'resume': {
        const run = site(step.site);
        if (run.peer === null || run.paused === null) return;
        await sleep(Math.max(0, run.paused.sinceMs + run.paused.minMs - Date.now()));
        run.peer.process.child.kill('SIGCONT');
        run.paused = null;
        return;
      }
      case 'store':
        // One storescu run at a time, going on while the next steps kill, pause and restart sites.
        await storeInFlight;
        if (site(step.site).peer === null) return;
        storeInFlight = storeAt(step, index);
        return;
      case 'sleep':
        await sleep(step.ms);
        return;
      default:
        step satisfies never;
    }
  };

  const keepLogs = (): string => {
    const kept = join(process.env['CHAOS_LOG_DIR'] ?? tmpdir(), `pacs-mesh-chaos-${seed}-${Date.now()}`);
    cpSync(logDir, kept, { recursive: true });
    return kept;
  };
  const peersNow = () => [...sites.values()].map((run) => run.peer).filter((peer): peer is PeerProcess => peer !== null);
  const summary = async (): Promise<string> => {
    const lines: string[] = [];
    for (const run of sites.values()) {
      if (run.peer === null) {
        lines.push(`${run.name}: not running`);
        continue;
      }
      try {
        const s = (await run.peer.status()) as MeshStatus & { balancer?: { role?: string; term?: number } };
        const members = (s.members ?? []).map((m) => `${m.site}:${m.peerId.slice(-6)}:${m.alive ? 'alive' : 'dead'}${m.connected === false ? ':unconnected' : ''}:${m.instances}`);
        lines.push(`${run.name} ${s.self.peerId?.slice(-6)}: ${s.instances} instances, debt ${s.custody?.debtEntries}, leader ${s.leader?.site ?? 'none'}/${s.leader?.term ?? '-'}, role ${s.balancer?.role}/${s.balancer?.term}; members ${members.join(' ')}`);
      } catch (error) {
        lines.push(`${run.name}: /api/mesh failed: ${(error as Error).message}`);
      }
    }
    return lines.join('\n');
  };

  try {
    for (const [index, step] of plan.steps.entries()) {
      say(`step ${index}: ${describeStep(step)}`);
      await perform(step, index);
    }
    say('heal');
    for (const step of plan.heal) {
      say(`heal: ${describeStep(step)}`);
      await perform(step, -1);
    }
    await storeInFlight;
    // A site whose start failed during the run (not ready in time) gets more tries now.
    for (let attempt = 0; attempt < 3; attempt++) {
      for (const run of sites.values()) if (run.peer === null) await launch(run);
    }
    const notRunning = [...sites.values()].filter((run) => run.peer === null).map((run) => run.name);
    assert.deepEqual(notRunning, [], `sites that would not start: ${startFailures.join('\n')}`);
    say(`healed: ${acknowledged.size} instances acknowledged; ${storeOutcomes.length} storescu runs`);

    // (c) Every site sees every site's peer alive and holds a connection to it, and all agree on the leader and term.
    const healedAtMs = Date.now();
    let lastProgressMs = healedAtMs;
    await eventually(
      async () => {
        if (Date.now() - lastProgressMs >= 15_000) {
          lastProgressMs = Date.now();
          say(`not converged yet:\n${await summary()}`);
        }
        const statuses = await Promise.all(peersNow().map((peer) => peer.status()));
        const ids = statuses.map((s) => s.self.peerId!).sort();
        return statuses.every((s) => {
          const alive = (s.members ?? []).filter((m) => m.alive);
          return (
            JSON.stringify(alive.map((m) => m.peerId).sort()) === JSON.stringify(ids) &&
            alive.every((m) => m.peerId === s.self.peerId || m.connected === true) &&
            s.leader != null &&
            s.leader.peerId === statuses[0]!.leader?.peerId &&
            s.leader.term === statuses[0]!.leader?.term
          );
        });
      },
      convergeTimeoutMs,
      async () => `the sites did not converge after healing:\n${await summary()}`,
    );
    say(`converged ${((Date.now() - healedAtMs) / 1000).toFixed(1)} s after healing:\n${await summary()}`);
    // Slow, though within the bound: the logs say why (the machine's load, or the mesh).
    if (Date.now() - healedAtMs > slowConvergenceMs) say(`converged slowly; peers' logs kept in ${keepLogs()}`);

    // (b) Every site holds the same instances, every acknowledged one among them, and owes no copies.
    await eventually(
      async () => {
        const statuses = await Promise.all(peersNow().map((peer) => peer.status()));
        return statuses.every((s) => s.instances >= acknowledged.size && s.instances === statuses[0]!.instances && s.custody?.debtEntries === 0);
      },
      convergeTimeoutMs,
      async () => `the sites' instances did not converge (${acknowledged.size} acknowledged):\n${await summary()}`,
    );
    // Each site serves the same data set bytes, and they are the file as sent (element by element: storescu may drop group lengths).
    const firstCopies = new Map<string, { site: string; dataSet: Buffer }>();
    for (const peer of peersNow()) {
      for (const [studyUid, uids] of groupBy([...acknowledged.keys()], (uid) => acknowledged.get(uid)!.studyUid)) {
        const held = await wadoStudy(peer, studyUid);
        for (const uid of uids) {
          const { file, where } = acknowledged.get(uid)!;
          const copy = held.get(uid);
          assert.ok(copy !== undefined, `${peer.site} does not serve ${uid} (acknowledged at ${where}) in study ${studyUid}`);
          const dataSet = Buffer.from(copy.subarray(splitPart10(copy).datasetOffset));
          const first = firstCopies.get(uid) ?? { site: peer.site, dataSet };
          firstCopies.set(uid, first);
          assert.ok(dataSet.equals(first.dataSet), `${peer.site} and ${first.site} serve ${uid} (acknowledged at ${where}) with different bytes`);
          const comparison = compareInstances(file, copy);
          assert.notEqual(comparison.identity, 'different', `${peer.site} serves ${uid} (acknowledged at ${where}) unlike the file sent: ${comparison.differences.join('; ')}`);
        }
      }
    }

    // (a) At most one leader per term, in every view sampled, besides peers that elected themselves alone.
    const describeTerm = ([term, leaders]: [number, Map<string, { firstSeen: string; alone: boolean }>]) =>
      `term ${term}: ${[...leaders].map(([peerId, seen]) => `${peerId.slice(-6)} (${seen.firstSeen}${seen.alone ? ', alone in its roster' : ''})`).join(', ')}`;
    const shared = [...leadersByTerm].filter(([, leaders]) => leaders.size > 1);
    for (const term of shared) say(`several leaders in ${describeTerm(term)}`);
    assert.deepEqual(shared.filter(([, leaders]) => [...leaders.values()].filter((seen) => !seen.alone).length > 1).map(describeTerm), [], 'two leaders in one term');
    // The same from every claim the peers logged (one line per leadership won, none missed between samples).
    const claims = new Map<number, Array<{ site: string; roster: number; time: string }>>();
    for (const run of sites.values()) {
      let text = '';
      try {
        text = readFileSync(join(logDir, `${run.name}.log`), 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) {
        if (!line.includes('"leadership claimed"')) continue;
        const entry = JSON.parse(line) as { term: number; roster: number; time: string };
        claims.set(entry.term, [...(claims.get(entry.term) ?? []), { site: run.name, roster: entry.roster, time: entry.time }]);
      }
    }
    const claimedTwice = [...claims].filter(([, list]) => new Set(list.map((c) => c.site)).size > 1);
    const describeClaims = ([term, list]: [number, Array<{ site: string; roster: number; time: string }>]) => `term ${term}: ${list.map((c) => `${c.site} at ${c.time} (roster ${c.roster})`).join(', ')}`;
    for (const term of claimedTwice) say(`leadership claimed by several peers in ${describeClaims(term)}`);
    assert.deepEqual(claimedTwice.filter(([, list]) => list.filter((c) => c.roster > 1).length > 1).map(describeClaims), [], 'two leaders in one term, by their logs');
    // (d) No peer exited unasked, and none logged an unhandled rejection.
    assert.deepEqual(crashes, [], 'peers crashed');
    assert.deepEqual(cluster.unhandledRejections, [], 'unhandled rejections');
    say(`passed: ${acknowledged.size} acknowledged instances at ${sites.size} sites; terms ${[...leadersByTerm.keys()].sort((x, y) => x - y).join(',')} (${shared.length} led by a peer alone besides another; ${claims.size} claims logged, ${claimedTwice.length} terms claimed twice); ${samples} samples; start retries: ${startFailures.length}; ${((Date.now() - startedAtMs) / 1000).toFixed(0)} s`);
    if (keepLogsAlways) say(`peers' logs kept in ${keepLogs()} (CHAOS_KEEP_LOGS)`);
  } catch (error) {
    say(`FAILED (seed ${seed}); peers' logs kept in ${keepLogs()}\nstores: ${storeOutcomes.join('; ')}\ncrashes: ${crashes.join('\n')}\nstart failures: ${startFailures.join('\n')}\n${await summary()}`);
    throw error;
  }
});

/** Every instance of a study as WADO-RS serves it (as stored), Part 10 files by SOP Instance UID; retried while the site refuses (503, 307). */
async function wadoStudy(peer: PeerProcess, studyUid: string): Promise<Map<string, Buffer>> {
  let held = new Map<string, Buffer>();
  await eventually(
    async () => {
      const response = await fetch(`http://127.0.0.1:${peer.httpPort}/dicom-web/studies/${studyUid}`, {
        headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
        redirect: 'manual',
        signal: AbortSignal.timeout(60_000),
      });
      if (response.status !== 200) return false;
      held = new Map();
      for (const part of parseMultipart(Buffer.from(await response.arrayBuffer()), response.headers.get('content-type')!)) {
        const uid = splitPart10(part.body).metaElements.find((element) => element.tag === Tags.MediaStorageSOPInstanceUID)!.value!.replace(/\0$/, '');
        held.set(uid, part.body);
      }
      return true;
    },
    60_000,
    () => `${peer.site}: WADO-RS of study ${studyUid} did not answer 200`,
  );
  return held;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
