/**
 * Failover benchmark (issue 4, acceptance 4): kill -9 of the balancer leader during continuous light
 * ingest, repeated `--rounds` times, and the throughput cost of the front door's tunnel.
 *
 *   node --import tsx scripts/bench/failover.ts [--rounds 10] [--topology one-site|three-sites] [--peers 3]
 *        [--ingest-interval-ms 50] [--ingest-rows 64] [--modality-peer 1] [--agree-timeout-s 10]
 *        [--whole-timeout-s 60] [--settle-ms 1000] [--write-quorum N]
 *        [--tunnel-count 100] [--tunnel-rows 512] [--tunnel-columns 512] [--tunnel-runs 4] [--no-tunnel]
 *        [--no-rotate] [--tmp <dir>] [--keep]
 *
 * Cluster: by default one site with three peers p1..p3 (the balancer routes within a site, so tunnels
 * happen; with --topology three-sites each peer is its own site and a front door only crosses sites when
 * its own is saturated or down).
 *
 * Continuous ingest: a "modality" loop sends one new 64x64 instance per storescu call (a fresh
 * association each time) every `--ingest-interval-ms`, to its peer (--modality-peer, 1-based). When a
 * call fails it moves on to the next peer of its list, as a modality configured with fallbacks would.
 *
 * Each round: find the leader from /api/mesh, kill -9 it, then measure
 *   (a) agreement: from the kill until every survivor's /api/mesh reports the same new leader (a running
 *       peer other than the killed one), polled every 50 ms;
 *   (b) first store: from the kill until the first successful C-STORE (storescu call that started after
 *       the kill, at a survivor) completes.
 * Then the killed peer is restarted with its data directory and the round ends once every peer sees
 * every peer alive and all agree on one leader (plus `--settle-ms`). Leader rotation (default; off with
 * --no-rotate): all peers start with --priority 100 and a killed peer is restarted with 100 + round, so
 * it does not take the leadership back on its return (no extra hand-over in the round) and the victims
 * rotate over all peers, the modality's peer included (its calls then fail until it moves on).
 *
 * Tunnelling cost (ingest loop stopped, mesh whole, replication settled): the same kind of series
 * (`--tunnel-count` x 512x512x16, fresh UIDs each time) is sent over one storescu association to each
 * peer in turn. The peer that served it is the one whose /api/mesh `associationsServed` counter moved
 * (nothing else talks DICOM meanwhile); without that field, the one whose `activeAssociations`, sampled
 * every 20 ms, was non-zero. Served by the entry peer = direct; by another = tunnelled there. Attempts continue until both kinds have `--tunnel-runs` samples (at most
 * 4x that many attempts). The balancer picks a target per association by weighted draw over the same-site
 * peers, so with one site of three peers about two thirds of the associations are tunnelled.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sleep } from '../../test/support/dicom-tools.ts';
import { TransferSyntax, makeInstance, newUid, writeSeriesToDir } from '../../test/support/synthetic-dicom.ts';
import { MeshCluster, firstLines, isRunning, oneSite, storescu, threeSites, tryStatus, type MeshPeer } from './lib/mesh-cluster.ts';
import { fmt, hostInfo, ingestRates, intArg, median, parseArgs, table, writeResult } from './lib/stats.ts';
import { runBench, startBench } from './lib/run.ts';

const TARGET_AGREE_MEDIAN_MS = 1000;
const TARGET_AGREE_WORST_MS = 2000;

interface StoreRecord {
  peer: string;
  startedAt: number;
  endedAt: number;
  ok: boolean;
}

interface Round {
  round: number;
  ok: boolean;
  error?: string;
  killed?: string;
  oldLeaderTerm?: number;
  newLeader?: string;
  newLeaderTerm?: number;
  /** (a) kill -> every survivor reports the same new leader. */
  agreeMs?: number;
  /** (b) kill -> first successful C-STORE at a survivor that started after the kill. */
  firstStoreMs?: number;
  firstStorePeer?: string;
  /** storescu calls that started in this round (kill to the mesh being whole again). */
  stores?: number;
  failedStores?: number;
  failedStoresAtKilledPeer?: number;
  restartMs?: number;
  wholeAgainMs?: number;
}

interface TunnelAttempt {
  attempt: number;
  entry: string;
  kind: 'direct' | 'tunnelled' | 'unclear';
  servedBy?: string;
  /** How servedBy was found: the associationsServed counters, or activeAssociations samples. */
  method: 'associationsServed' | 'activeAssociations';
  maxActive: Record<string, number>;
  ok: boolean;
  wallMs: number;
  imagesPerSec: number;
  mbPerSec: number;
  error?: string;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const rounds = intArg(args, 'rounds', 10);
  const topology = String(args.get('topology') ?? 'one-site');
  if (topology !== 'one-site' && topology !== 'three-sites') throw new Error('--topology must be one-site or three-sites');
  const peerCount = intArg(args, 'peers', 3);
  const ingestIntervalMs = intArg(args, 'ingest-interval-ms', 50);
  const ingestRows = intArg(args, 'ingest-rows', 64);
  const modalityIndex = intArg(args, 'modality-peer', 1) - 1;
  const agreeTimeoutMs = intArg(args, 'agree-timeout-s', 10) * 1000;
  const wholeTimeoutMs = intArg(args, 'whole-timeout-s', 60) * 1000;
  const settleMs = intArg(args, 'settle-ms', 1000);
  const writeQuorum = args.has('write-quorum') ? intArg(args, 'write-quorum', 1) : undefined;
  const tunnelCount = intArg(args, 'tunnel-count', 100);
  const tunnelRows = intArg(args, 'tunnel-rows', 512);
  const tunnelColumns = intArg(args, 'tunnel-columns', 512);
  const tunnelRuns = intArg(args, 'tunnel-runs', 4);
  const withTunnel = !args.has('no-tunnel');
  const rotate = !args.has('no-rotate');
  if (peerCount < 3) throw new Error('--peers must be at least 3 (a leader to kill and two survivors)');
  if (modalityIndex >= peerCount) throw new Error('--modality-peer is beyond --peers');
  const bench = await startBench('failover', args);
  if (!bench) return 2;
  const { workDir, startedAt, hostAtStart } = bench;

  // With rotation every peer starts at priority 100 and a restarted peer comes back one step worse, so it
  // does not take the leadership back and the next round kills another peer (the modality's one too).
  const specs = (topology === 'one-site' ? oneSite(peerCount) : threeSites(peerCount)).map((sp) => (rotate ? { ...sp, priority: 100 } : sp));
  const cluster = await MeshCluster.create({ rootDir: join(workDir, 'mesh'), peers: specs, ...(writeQuorum !== undefined ? { writeQuorum } : {}) });
  const roundsOut: Round[] = [];
  const tunnel: TunnelAttempt[] = [];
  let fatal: string | undefined;
  const stores: StoreRecord[] = [];
  let stopIngest = false;
  let ingest: Promise<void> | undefined;

  try {
    try {
      await cluster.startAll();
    } catch (e) {
      throw new Error(`the mesh did not start: ${firstLines(e, 8)}`);
    }
    const first = await cluster.waitWhole(30_000, { requireLeader: true });
    if (!first.ok) throw new Error(`no agreed leader with every peer alive within 30 s: ${first.detail}`);
    console.log(`${topology}: ${cluster.peers.map((p) => `${p.name} (site ${p.spec.site}, dicom ${p.dicomPort})`).join(', ')}; leader ${cluster.nameOf(first.leader?.peerId)} term ${first.leader?.term ?? '?'}`);

    // ---------------------------------------------------------------- continuous ingest (the modality)
    const ingestDir = join(workDir, 'ingest');
    await mkdir(ingestDir, { recursive: true });
    const studyUid = newUid();
    const seriesUid = newUid();
    const order = [...cluster.peers.slice(modalityIndex), ...cluster.peers.slice(0, modalityIndex)];
    ingest = (async () => {
      let k = 0;
      for (let i = 0; i < 200_000 && !stopIngest; i++) {
        const p = order[k % order.length]!;
        const file = join(ingestDir, 'current.dcm');
        await writeFile(file, makeInstance({ rows: ingestRows, columns: ingestRows, bitsAllocated: 16, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, study: { uid: studyUid }, series: { uid: seriesUid, modality: 'CT' }, patient: { id: 'BENCH004', name: 'BENCH^FAILOVER' } }));
        const r = await storescu(p.dicomPort, [file], { timeoutMs: 15_000 });
        stores.push({ peer: p.name, startedAt: r.startedAt, endedAt: r.endedAt, ok: r.ok });
        if (!r.ok) k++; // retry at the next peer of the list
        await sleep(ingestIntervalMs);
      }
    })();

    // ---------------------------------------------------------------- kill rounds
    for (let round = 1; round <= rounds; round++) {
      const rd: Round = { round, ok: false };
      roundsOut.push(rd);
      try {
        const before = await cluster.waitWhole(wholeTimeoutMs, { requireLeader: true });
        if (!before.ok) throw new Error(`mesh not whole before the kill: ${before.detail}`);
        const victim = cluster.byPeerId(before.leader!.peerId);
        if (victim === undefined || !isRunning(victim)) throw new Error(`the leader ${before.leader!.peerId} is not one of our running peers`);
        rd.killed = victim.name;
        rd.oldLeaderTerm = before.leader!.term;
        const storesBefore = stores.length;
        const tKill = await cluster.kill9(victim);

        // (a) every survivor reports the same new leader.
        const agree = await cluster.waitWhole(agreeTimeoutMs, { requireLeader: true, exclude: victim.peerId, intervalMs: 50 });
        if (!agree.ok) throw new Error(`survivors did not agree on a new leader within ${agreeTimeoutMs / 1000} s: ${agree.detail}`);
        rd.agreeMs = agree.at - tKill;
        rd.newLeader = cluster.nameOf(agree.leader?.peerId);
        rd.newLeaderTerm = agree.leader?.term;

        // (b) the first successful store that started after the kill (at most 10 s more).
        for (let i = 0; i < 200; i++) {
          if (stores.slice(storesBefore).some((s) => s.ok && s.startedAt >= tKill)) break;
          await sleep(50);
        }
        const firstOk = stores.slice(storesBefore).filter((s) => s.ok && s.startedAt >= tKill).sort((x, y) => x.endedAt - y.endedAt)[0];
        if (firstOk !== undefined) {
          rd.firstStoreMs = firstOk.endedAt - tKill;
          rd.firstStorePeer = firstOk.peer;
        }

        // Restart the killed peer with its data directory; wait for a whole mesh.
        if (rotate) victim.spec.priority = 100 + round;
        const tr = performance.now();
        await cluster.start(victim);
        rd.restartMs = performance.now() - tr;
        const whole = await cluster.waitWhole(wholeTimeoutMs, { requireLeader: true });
        if (!whole.ok) throw new Error(`mesh not whole ${wholeTimeoutMs / 1000} s after the restart: ${whole.detail}`);
        rd.wholeAgainMs = performance.now() - tr;
        await sleep(settleMs);
        const roundStores = stores.slice(storesBefore);
        rd.stores = roundStores.length;
        rd.failedStores = roundStores.filter((s) => !s.ok).length;
        rd.failedStoresAtKilledPeer = roundStores.filter((s) => !s.ok && s.peer === victim.name).length;
        rd.ok = firstOk !== undefined;
        if (!rd.ok) rd.error = 'no successful C-STORE at a survivor within 10 s of the agreement';
      } catch (e) {
        rd.error = firstLines(e, 3);
      }
      console.log(
        `round ${String(round).padStart(2)}/${rounds}: ` +
          (rd.agreeMs !== undefined
            ? `killed ${rd.killed} (leader, term ${rd.oldLeaderTerm ?? '?'}); new leader ${rd.newLeader} term ${rd.newLeaderTerm ?? '?'} agreed after ${fmt(rd.agreeMs)} ms; ` +
              `first store after ${fmt(rd.firstStoreMs)} ms at ${rd.firstStorePeer ?? '-'}; ${rd.failedStores ?? '?'}/${rd.stores ?? '?'} stores failed` +
              ` (${rd.failedStoresAtKilledPeer ?? '?'} at the killed peer); restart ${fmt((rd.restartMs ?? NaN) / 1000, 1)} s, whole after ${fmt((rd.wholeAgainMs ?? NaN) / 1000, 1)} s`
            : '') +
          (rd.error !== undefined ? `${rd.agreeMs !== undefined ? '; ' : ''}FAILED: ${rd.error}` : ''),
      );
      // Bring back any peer that is still down (one more try); without a full mesh or without an
      // agreement the next round would measure something else: stop the rounds here.
      let allBack = true;
      for (const p of cluster.peers) {
        if (isRunning(p)) continue;
        allBack = await cluster.start(p).then(() => true, () => false) && allBack;
      }
      if (rd.agreeMs === undefined || !allBack) {
        console.log(`   (stopping the kill rounds: ${!allBack ? 'a peer could not be restarted' : 'no agreement'})`);
        break;
      }
    }
    stopIngest = true;
    await ingest;
    ingest = undefined;

    // ---------------------------------------------------------------- tunnelling cost
    if (withTunnel && roundsOut.some((r) => r.ok)) {
      const maxAttempts = tunnelRuns * 4;
      for (let attempt = 1; attempt <= maxAttempts; attempt++) {
        const nDirect = tunnel.filter((t) => t.ok && t.kind === 'direct').length;
        const nTunnel = tunnel.filter((t) => t.ok && t.kind === 'tunnelled').length;
        if (nDirect >= tunnelRuns && nTunnel >= tunnelRuns) break;
        await settleReplication(cluster, 60_000);
        const entry = cluster.peers[(attempt - 1) % cluster.peers.length]!;
        const dir = join(workDir, `tunnel-${attempt}`);
        const series = await writeSeriesToDir(dir, {
          count: tunnelCount,
          rows: tunnelRows,
          columns: tunnelColumns,
          bitsAllocated: 16,
          transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian,
          uidSeed: `failover-tunnel-${startedAt}-${attempt}`,
          patient: { id: 'BENCH005', name: 'BENCH^TUNNEL' },
          series: { modality: 'CT', number: attempt },
        });
        const servedBefore = await Promise.all(cluster.peers.map((p) => tryStatus(p, 2000).then((s) => s?.associationsServed)));
        const maxActive: Record<string, number> = Object.fromEntries(cluster.peers.map((p) => [p.name, 0]));
        let sampling = true;
        const sampler = (async () => {
          for (let i = 0; i < 100_000 && sampling; i++) {
            await Promise.all(
              cluster.peers.map(async (p) => {
                const s = await tryStatus(p, 500);
                if (s !== undefined) maxActive[p.name] = Math.max(maxActive[p.name]!, s.activeAssociations ?? 0);
              }),
            );
            await sleep(20);
          }
        })();
        const r = await storescu(entry.dicomPort, [dir], { timeoutMs: 300_000 });
        sampling = false;
        await sampler;
        await rm(dir, { recursive: true, force: true });
        // Who served it: the peer whose associationsServed counter moved (nothing else talks DICOM now),
        // else the peers that showed an active association while it ran.
        const servedAfter = await Promise.all(cluster.peers.map((p) => tryStatus(p, 2000).then((s) => s?.associationsServed)));
        const counted = servedBefore.every((x) => x !== undefined) && servedAfter.every((x) => x !== undefined);
        const busy = counted ? cluster.peers.filter((_, k) => servedAfter[k]! > servedBefore[k]!) : cluster.peers.filter((p) => maxActive[p.name]! > 0);
        const others = busy.filter((p) => p !== entry);
        const kind: TunnelAttempt['kind'] = busy.length !== 1 ? 'unclear' : others.length === 1 ? 'tunnelled' : 'direct';
        const t: TunnelAttempt = {
          attempt,
          entry: entry.name,
          kind,
          method: counted ? 'associationsServed' : 'activeAssociations',
          ...(kind === 'tunnelled' ? { servedBy: others[0]!.name } : kind === 'direct' ? { servedBy: entry.name } : {}),
          maxActive,
          ok: r.ok,
          wallMs: Math.round(r.elapsedMs),
          ...ingestRates(tunnelCount, series.totalBytes, r.elapsedMs),
          ...(r.ok ? {} : { error: `storescu exit ${r.code}: ${r.stderr.split('\n').filter(Boolean).slice(-3).join(' | ')}` }),
        };
        tunnel.push(t);
        console.log(
          `tunnel attempt ${attempt}: into ${entry.name}, ${kind}${t.servedBy !== undefined && kind === 'tunnelled' ? ` -> ${t.servedBy}` : ''}, ` +
            `${fmt(t.wallMs / 1000, 2)} s, ${fmt(t.imagesPerSec)} img/s, ${fmt(t.mbPerSec)} MB/s (max active associations ${Object.entries(maxActive).map(([k, v]) => `${k} ${v}`).join(', ')})${r.ok ? '' : `  FAILED: ${t.error}`}`,
        );
      }
    }
  } catch (e) {
    fatal = firstLines(e, 8);
    console.log(`\n!! ${fatal}`);
  } finally {
    stopIngest = true;
    if (ingest !== undefined) await ingest.catch(() => undefined);
    await cluster.stopAll();
  }

  // ------------------------------------------------------------------ report
  const agreed = roundsOut.filter((r) => r.agreeMs !== undefined);
  const agreeMs = agreed.map((r) => r.agreeMs!);
  const firstStoreMs = roundsOut.map((r) => r.firstStoreMs).filter((x): x is number => x !== undefined);
  const medAgree = agreeMs.length > 0 ? median(agreeMs) : undefined;
  const worstAgree = agreeMs.length > 0 ? Math.max(...agreeMs) : undefined;
  const medFirst = firstStoreMs.length > 0 ? median(firstStoreMs) : undefined;
  const worstFirst = firstStoreMs.length > 0 ? Math.max(...firstStoreMs) : undefined;
  const direct = tunnel.filter((t) => t.ok && t.kind === 'direct');
  const tunnelled = tunnel.filter((t) => t.ok && t.kind === 'tunnelled');
  const medDirect = direct.length > 0 ? median(direct.map((t) => t.imagesPerSec)) : undefined;
  const medTunnelled = tunnelled.length > 0 ? median(tunnelled.map((t) => t.imagesPerSec)) : undefined;
  const tunnelRatio = medDirect !== undefined && medTunnelled !== undefined ? medTunnelled / medDirect : undefined;
  const loadEnd = hostInfo().loadavg as number[];

  console.log(`\nFailover: ${topology}, ${peerCount} peers, kill -9 of the leader during continuous ingest (one ${ingestRows}x${ingestRows} instance per storescu call every ${ingestIntervalMs} ms into ${cluster.peers[modalityIndex]!.name}, next peer on failure)\n`);
  if (roundsOut.length > 0) {
    console.log(
      table(
        ['round', 'killed', 'new leader', 'term', '(a) agree ms', '(b) 1st store ms', 'at', 'failed/stores', 'whole again s', 'note'],
        roundsOut.map((r) => [
          String(r.round),
          r.killed ?? '-',
          r.newLeader ?? '-',
          r.newLeaderTerm === undefined ? '-' : String(r.newLeaderTerm),
          fmt(r.agreeMs),
          fmt(r.firstStoreMs),
          r.firstStorePeer ?? '-',
          r.stores === undefined ? '-' : `${r.failedStores}/${r.stores}`,
          fmt(r.wholeAgainMs && r.wholeAgainMs / 1000, 1),
          r.error ?? '',
        ]),
        [0, 1, 2, 6, 9],
      ),
    );
    console.log('');
  }
  const verdict = medAgree === undefined ? 'n/a' : medAgree <= TARGET_AGREE_MEDIAN_MS && worstAgree! <= TARGET_AGREE_WORST_MS ? 'MET' : 'NOT MET';
  console.log(`(a) kill -> survivors agree on a new leader: median ${fmt(medAgree)} ms, worst ${fmt(worstAgree)} ms over ${agreeMs.length} kill(s)   (target median <= ${TARGET_AGREE_MEDIAN_MS} ms, worst <= ${TARGET_AGREE_WORST_MS} ms: ${verdict})`);
  console.log(`(b) kill -> first successful C-STORE at a survivor: median ${fmt(medFirst)} ms, worst ${fmt(worstFirst)} ms   (granularity: one storescu call every ~${ingestIntervalMs} ms + its own duration)`);
  if (withTunnel) {
    console.log(`\nTunnelling: ${tunnelCount} x ${tunnelRows}x${tunnelColumns}x16 per association, classified by which peer's associationsServed counter moved (or activeAssociations during the run)\n`);
    console.log(
      table(
        ['path', 'runs', 'images/s', 'MB/s', 'entry -> served by'],
        [
          ['direct', String(direct.length), fmt(medDirect), fmt(direct.length > 0 ? median(direct.map((t) => t.mbPerSec)) : undefined), direct.map((t) => t.entry).join(' ')],
          ['tunnelled', String(tunnelled.length), fmt(medTunnelled), fmt(tunnelled.length > 0 ? median(tunnelled.map((t) => t.mbPerSec)) : undefined), tunnelled.map((t) => `${t.entry}->${t.servedBy}`).join(' ')],
          ['unclear/failed', String(tunnel.length - direct.length - tunnelled.length), '', '', ''],
        ],
      ),
    );
    console.log(`\ntunnelled / direct (images/s): ${tunnelRatio === undefined ? 'n/a (need both kinds of runs)' : `${tunnelRatio.toFixed(2)}x (cost ${((1 - tunnelRatio) * 100).toFixed(0)}%)`}`);
  }
  console.log(`load average at start ${(hostAtStart.loadavg as number[]).map((x) => x.toFixed(2)).join(' ')}, at end ${loadEnd.map((x) => x.toFixed(2)).join(' ')} (${hostAtStart.cpus} cores)`);

  const file = await writeResult('failover', {
    benchmark: 'failover',
    startedAt,
    finishedAt: new Date().toISOString(),
    host: { ...hostAtStart, loadavgAtEnd: loadEnd },
    params: { rounds, rotate, topology, peers: peerCount, ingestIntervalMs, ingestRows, modalityPeer: cluster.peers[modalityIndex]!.name, agreeTimeoutMs, wholeTimeoutMs, settleMs, writeQuorum: writeQuorum ?? null, tunnelCount, tunnelRows, tunnelColumns, tunnelRuns, units: { times: 'ms', mb: '10^6 bytes' } },
    error: fatal ?? null,
    rounds: roundsOut,
    summary: {
      agreeMs: { median: medAgree ?? null, worst: worstAgree ?? null, n: agreeMs.length },
      firstStoreMs: { median: medFirst ?? null, worst: worstFirst ?? null, n: firstStoreMs.length },
      stores: { total: stores.length, failed: stores.filter((s) => !s.ok).length },
    },
    target: { agreeMedianMs: TARGET_AGREE_MEDIAN_MS, agreeWorstMs: TARGET_AGREE_WORST_MS, met: verdict === 'n/a' ? null : verdict === 'MET' },
    tunnel: { attempts: tunnel, directImagesPerSec: medDirect ?? null, tunnelledImagesPerSec: medTunnelled ?? null, ratio: tunnelRatio ?? null },
  });
  console.log(`\nresults: ${file}`);
  return fatal === undefined && roundsOut.length === rounds && roundsOut.every((r) => r.ok) ? 0 : 1;
}

/** Waits until every running peer reports the same instance count (bounded); replication has settled. */
async function settleReplication(cluster: MeshCluster, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (let i = 0; i < 100_000 && performance.now() < deadline; i++) {
    const counts = await Promise.all(cluster.running().map((p: MeshPeer) => tryStatus(p, 1000).then((s) => s?.instances)));
    if (counts.every((c) => c !== undefined && c === counts[0])) return true;
    await sleep(200);
  }
  return false;
}

runBench(main);
