/**
 * Deterministic simulation of a pacs-mesh: N sites (one peer each) run the membership, balancer and custody
 * reducers over SimNetwork while faults (loss, delay, duplication, reordering, partitions, crashes with
 * restarts at a higher incarnation, a disk refusing election writes for a while, a site decommissioned
 * and forgotten by the operator at one peer) and modality stores happen at random. One seed reproduces
 * the run.
 *
 * The simulation is the reducers' caller: it performs their effects (sends, persists, local writes) the way
 * the nact actors will, and keeps each peer's "durable" state apart from the volatile reducer state,
 * which a crash throws away.
 */
import { chooseTarget, defaultRoutingLimits, initBalancer, stepBalancer, type BalancerState } from '../actors/balancer/logic.ts';
import type { BalancerConfig, BalancerEffect, BalancerInput, BalancerMessage, ElectionDurable } from '../actors/balancer/messages.ts';
import { initMembership, stepMembership, viewMembers, type MembershipState } from '../actors/membership/logic.ts';
import type { ForgottenSite, Heartbeat, MembershipEffect, MembershipInput } from '../actors/membership/messages.ts';
import { custodyStats, debtKey, sameHeartbeatFigures, type HeartbeatFigures, initCustody, stepCustody, type CustodyState } from '../actors/storage/custody/logic.ts';
import {
  StoreStatus,
  storeSettleAfterStartMsDefault,
  type CustodyEffect,
  type CustodyInput,
  type CustodyMessage,
  type DebtEntry,
  type KnownSite,
} from '../actors/storage/custody/messages.ts';
import { digestOf, digestRoot } from '../actors/storage/custody/digest.ts';
import { noFaults, SimNetwork, type Envelope, type NetworkFaults } from './network.ts';
import { Prng } from './prng.ts';
import { createRunRecord, type SimRunReport } from './run-record.ts';

/** What a site stores per instance: the catalog fields that must match everywhere after healing. */
export interface SimInstance {
  readonly sopInstanceUid: string;
  readonly studyInstanceUid: string;
  readonly sha256: string;
  readonly byteLength: number;
}

type SimPayload =
  | { readonly kind: 'heartbeat'; readonly heartbeat: Heartbeat }
  | { readonly kind: 'balancer'; readonly message: BalancerMessage }
  | { readonly kind: 'custody'; readonly message: CustodyMessage }
  /** The replicate stream: header and bytes in one piece. */
  | { readonly kind: 'replica'; readonly instance: SimInstance }
  | { readonly kind: 'fetchRequest'; readonly sopInstanceUid: string }
  | { readonly kind: 'fetchReply'; readonly sopInstanceUid: string; readonly instance: SimInstance | null }
  /** The transport closed the connection from `from` (it dropped a peer it found dead): a peer:disconnect event. */
  | { readonly kind: 'transportClosed' };

/** Survives crashes: the local store, the debt table, the known sites and tombstones, the election record and the incarnation counter. */
interface DurableState {
  incarnation: number;
  readonly store: Map<string, SimInstance>;
  readonly debt: Map<string, DebtEntry>;
  readonly knownSites: Map<string, KnownSite>;
  readonly forgottenSites: Map<string, ForgottenSite>;
  election: ElectionDurable | null;
}

interface Reducers {
  membership: MembershipState;
  balancer: BalancerState;
  custody: CustodyState;
  /** Bytes received from modalities, not yet durable (lost in a crash). */
  readonly staging: Map<string, SimInstance>;
  /** The balancer actor's flag: false from a failed election write until one succeeds. */
  electable: boolean;
  /** peerId -> when the node last reported data from it (peerActive, at most every peerActiveEveryMs). */
  readonly activeReportedAtMs: Map<string, number>;
  /** Custody's figures last given to membership (compared as the actor's publishStats does). */
  publishedStats: HeartbeatFigures | null;
}

interface SimPeer {
  readonly peerId: string;
  readonly siteName: string;
  readonly priority: number;
  readonly durable: DurableState;
  live: Reducers | null;
  restartAtMs: number;
  /** Election writes fail until then (a full disk); the disk's state, so it outlives a crash. */
  electionWritesFailUntilMs: number;
  /** When this incarnation started. */
  startedAtMs: number;
  /** The process stands still until then (SIGSTOP, a long GC pause): no ticks, nothing read, nothing written. */
  stalledUntilMs: number;
  /** What arrived while it stood still, waiting unread in its sockets. */
  readonly unread: Envelope<SimPayload>[];
}

/** Work a peer's process finishes later (a disk write, a stream's failure noticed): lost if it crashes first, late if it stalls. */
interface LocalEvent {
  readonly atMs: number;
  readonly peer: SimPeer;
  readonly incarnation: number;
  readonly act: () => void;
}

/** How often each fault happens (per 50 ms tick unless said otherwise); SimOptions.faults overrides some. */
export interface SimFaultRates {
  readonly crashPerTick: number;
  /** Per step that writes durable state (an election record, debt): the process dies while that write is in flight. */
  readonly crashDuringWrite: number;
  /** A live peer stands still for 0.5-4 s. */
  readonly stallPerTick: number;
  readonly partitionPerTick: number;
  readonly electionDiskFaultPerTick: number;
  /** Per instance written locally: the disk refuses it. */
  readonly localWriteFailure: number;
  /** Per gossip message and recipient: it arrives 1-3 s late, relayed from a gossip cache. */
  readonly lateRelay: number;
  /** Upper bounds of each seed's loss and duplication probabilities. */
  readonly dropMax: number;
  readonly duplicateMax: number;
  /** Per tick: a modality sends an instance. */
  readonly storePerTick: number;
}

export const defaultFaultRates: SimFaultRates = {
  crashPerTick: 0.004,
  crashDuringWrite: 0.03,
  stallPerTick: 0.002,
  partitionPerTick: 0.005,
  electionDiskFaultPerTick: 0.003,
  localWriteFailure: 0.01,
  lateRelay: 0.02,
  dropMax: 0.2,
  duplicateMax: 0.1,
  storePerTick: 0.15,
};

type Work =
  | { readonly to: 'membership'; readonly input: MembershipInput }
  | { readonly to: 'balancer'; readonly input: BalancerInput }
  | { readonly to: 'custody'; readonly input: CustodyInput };

export interface SimOptions {
  readonly seed: number;
  /** Sites (one peer each); default 3-5 chosen by the seed. */
  readonly siteCount?: number;
  /** Simulated time with faults and stores before the final heal. */
  readonly faultPhaseMs?: number;
  /** Longest simulated time allowed after the final heal for the mesh to converge. */
  readonly settleMaxMs?: number;
  /** Fault rates other than the defaults (e.g. a harsher sweep). */
  readonly faults?: Partial<SimFaultRates>;
}

/** finalPeers: role, term, leader, store and debt sizes. */
export interface SimResult extends SimRunReport {
  readonly stats: {
    readonly siteCount: number;
    readonly simulatedMs: number;
    readonly settleMs: number;
    readonly storesAcked: number;
    readonly storesRefused: number;
    readonly crashes: number;
    /** Crashes while a durable write of a step was in flight (part of the step's effects performed). */
    readonly crashesDuringWrites: number;
    readonly stalls: number;
    readonly localWritesFailed: number;
    readonly lateRelays: number;
    /** Replica transfers and pulls whose failure the sender saw (replicationFailed, fetchFailed). */
    readonly transfersFailed: number;
    /** 1 when a site was decommissioned and forgotten by the operator during the run (invariant g). */
    readonly decommissions: number;
    readonly partitions: number;
    readonly electionDiskFaults: number;
    /** Balancer steps undone because their election write failed. */
    readonly electionWritesRefused: number;
    readonly maxTerm: number;
    readonly messagesSent: number;
    readonly messagesDropped: number;
  };
}

const tickMs = 50;
/** The node reports data from a peer at most this often (peerActive). */
const peerActiveEveryMs = 250;
const traceLinesMax = 60;
const retriesPendingMax = 200;

/** Timings of the simulated peers (the election simulation runs with them too). */
export const simTimings = {
  heartbeatIntervalMs: 200,
  suspectAfterMs: 700,
  deadAfterMs: 1400,
  membersMax: 64,
  voteTimeoutMs: 600,
  announceIntervalMs: 200,
  leaderSilenceMaxMs: 1400,
  handOverGraceMs: 2800,
  // Stalls are 0.5-4 s: a resumed balancer settles as after a start (wired: 2 s of deadAfterMs 3 s).
  stallMinMs: 900,
  settleAfterStallMs: 1000,
  quorumTimeoutMs: 1500,
  replicationRetryMs: 800,
  repairIntervalMs: 500,
  repairQuietMs: 300,
};

/** A simulated peer's balancer configuration. */
export function simBalancerConfig(selfPeerId: string, rosterPeerIds: readonly string[]): BalancerConfig {
  return {
    selfPeerId,
    rosterPeerIds,
    voteTimeoutMs: simTimings.voteTimeoutMs,
    announceIntervalMs: simTimings.announceIntervalMs,
    leaderSilenceMaxMs: simTimings.leaderSilenceMaxMs,
    handOverGraceMs: simTimings.handOverGraceMs,
    stallMinMs: simTimings.stallMinMs,
    settleAfterStallMs: simTimings.settleAfterStallMs,
    routing: { associationsPerPeerMax: 8, custodyQueueMax: 500, freeDiskBytesMin: 1, refillLagInstancesMin: defaultRoutingLimits.refillLagInstancesMin },
  };
}

export function runSimulation(options: SimOptions): SimResult {
  const root = new Prng(options.seed);
  const faultPrng = root.fork();
  const workPrng = root.fork();
  const netPrng = root.fork();
  const siteCount = options.siteCount ?? 3 + root.nextInt(3);
  // Forked last, so that the draws of the forks above (and every earlier seed's run) stay as they were.
  const decommissionPrng = root.fork();
  // The later fault kinds draw from their own stream, likewise.
  const extraPrng = root.fork();
  let rates: SimFaultRates = { ...defaultFaultRates, ...options.faults };
  const faultPhaseMs = options.faultPhaseMs ?? 20_000;
  const settleMaxMs = options.settleMaxMs ?? 30_000;

  const network = new SimNetwork<SimPayload>(netPrng, 20_000);
  const baseFaults: NetworkFaults = {
    dropProbability: faultPrng.nextUnit() * rates.dropMax,
    duplicateProbability: faultPrng.nextUnit() * rates.duplicateMax,
    delayMinMs: 1,
    delayMaxMs: 5 + faultPrng.nextInt(300),
  };
  network.faults = baseFaults;

  const peers: SimPeer[] = [];
  for (let i = 0; i < siteCount; i += 1) {
    const letter = String.fromCharCode(97 + i);
    peers.push({
      peerId: `peer-${letter}`,
      siteName: `site-${letter}`,
      priority: faultPrng.nextInt(3),
      durable: { incarnation: 0, store: new Map(), debt: new Map(), knownSites: new Map(), forgottenSites: new Map(), election: null },
      live: null,
      restartAtMs: 0,
      electionWritesFailUntilMs: 0,
      startedAtMs: 0,
      stalledUntilMs: 0,
      unread: [],
    });
  }
  const byId = new Map(peers.map((p) => [p.peerId, p]));
  /**
   * In half the runs one site is decommissioned during the fault phase: it crashes for good, and once it
   * is not alive at some peer an operator forgets it there (POST /api/forget-site); the tombstone must
   * reach every other peer through heartbeats, whatever the faults: invariant (g) after healing. Not with
   * two sites: the simulation's roster is fixed (a real one drops a forgotten site's peers), and one peer
   * of two is no majority of it, so invariant (c) could not hold.
   */
  const decommission: { readonly peer: SimPeer; readonly atMs: number; forgotten: boolean } | undefined = decommissionPrng.chance(0.5) && siteCount >= 3
    ? { peer: decommissionPrng.pick(peers), atMs: decommissionPrng.between(Math.floor(faultPhaseMs * 0.2), Math.floor(faultPhaseMs * 0.6)), forgotten: false }
    : undefined;
  const active = peers.filter((p) => p !== decommission?.peer);
  const roster = peers.map((p) => p.peerId);

  let nowMs = 0;
  const record = createRunRecord(traceLinesMax, () => nowMs);
  const { violations, log, violate } = record;

  // Checker state: every leadership claim, and the quorum each acknowledged instance was promised.
  const claimsByTerm = new Map<number, string>();
  const claimsByComponentTerm = new Map<string, string>();
  const ackedQuorum = new Map<string, number>();
  /** Per peer, every other site its custody has seen alive since the run began, across its restarts. */
  const sitesSeenAlive = new Map<string, Set<string>>();
  /** requestId -> the sites its peer had seen alive when the local write began (the copies it must owe). */
  const owedAtWrite = new Map<string, readonly string[]>();
  /** uid -> owedAtWrite of its first acknowledged store: each of those sites must hold it or be owed it. */
  const ackedOwedTo = new Map<string, readonly string[]>();
  const requestToUid = new Map<string, SimInstance>();
  const retries: SimInstance[] = [];
  let storesAcked = 0;
  let storesRefused = 0;
  let crashes = 0;
  let crashesDuringWrites = 0;
  let stalls = 0;
  let localWritesFailed = 0;
  let lateRelays = 0;
  let transfersFailed = 0;
  const localEvents: LocalEvent[] = [];
  /** requestId -> the answer its modality got. */
  const answers = new Map<string, { readonly status: number; readonly quorum: number }>();
  /** `${viewer}#${its incarnation}|${member}` -> the highest incarnation of member that view has held (invariant l). */
  const highestIncarnationSeen = new Map<string, number>();
  let partitions = 0;
  let electionDiskFaults = 0;
  let electionWritesRefused = 0;
  let maxTerm = 0;
  let nextInstance = 0;
  let nextRequest = 0;

  const componentOf = (peerId: string): string =>
    peers
      .filter((p) => p.live !== null && network.connected(p.peerId, peerId))
      .map((p) => p.peerId)
      .join(',');

  const start = (peer: SimPeer): void => {
    peer.durable.incarnation += 1;
    const membership = initMembership({
      peerId: peer.peerId,
      siteName: peer.siteName,
      incarnation: peer.durable.incarnation,
      priority: peer.priority,
      addresses: { dicom: `${peer.peerId}:104`, http: `${peer.peerId}:8080`, aeTitle: 'PACSMESH' },
      heartbeatIntervalMs: simTimings.heartbeatIntervalMs,
      suspectAfterMs: simTimings.suspectAfterMs,
      deadAfterMs: simTimings.deadAfterMs,
      membersMax: simTimings.membersMax,
    });
    const balancer = initBalancer(simBalancerConfig(peer.peerId, roster), peer.durable.election);
    const custody = initCustody(
      {
        selfPeerId: peer.peerId,
        selfSiteName: peer.siteName,
        writeQuorum: 'auto',
        quorumTimeoutMs: simTimings.quorumTimeoutMs,
        debtEntriesMax: 400,
        pendingStoresMax: 16,
        replicationsInFlightMax: 16,
        replicationRetryMs: simTimings.replicationRetryMs,
        repairIntervalMs: simTimings.repairIntervalMs,
        repairQuietMs: simTimings.repairQuietMs,
        repairKeysMax: 256,
        // Leaf exchanges whenever few buckets differ (the default waits for large archives), so both forms run.
        repairLeavesKeysPerBucketMin: 1,
        fetchesInFlightMax: 16,
        // Longer than any run: forgetting is the reducer tests' business, not the simulation's.
        knownSiteForgetAfterMs: 24 * 3600_000,
        knownSitesMax: 16,
        forgottenSiteReturnAliveMs: 3 * simTimings.suspectAfterMs,
        siteClaimConfirmMs: 2 * simTimings.deadAfterMs,
      },
      {
        digest: digestOf(peer.durable.store.values()),
        debt: [...peer.durable.debt.values()],
        knownSites: [...peer.durable.knownSites.values()],
        forgottenSites: [...peer.durable.forgottenSites.values()],
      },
    );
    peer.live = { membership, balancer, custody, staging: new Map(), electable: true, activeReportedAtMs: new Map(), publishedStats: null };
    peer.startedAtMs = nowMs;
    log(`${peer.peerId} starts, incarnation ${peer.durable.incarnation}`);
    const queue: Work[] = [];
    publishStats(peer, queue);
    run(peer, queue);
  };

  /**
   * As the custody actor: its figures recomputed after every step and given to membership when they
   * changed (the tombstones to pass on included). Taken only at each change of the digest, they left an
   * operator's forgetting out of the heartbeats until the next instance arrived there (seed 2689).
   */
  const publishStats = (peer: SimPeer, queue: Work[]): void => {
    const live = peer.live;
    if (live === null) return;
    const next = custodyStats(live.custody);
    if (live.publishedStats !== null && sameHeartbeatFigures(next, live.publishedStats)) return;
    live.publishedStats = next;
    queue.push({
      to: 'membership',
      input: {
        type: 'localStatsChanged',
        load: { ...loadOf(peer), queuedCustodyWork: next.queuedWork },
        instanceCount: next.instanceCount,
        digestRoot: next.digestRoot,
        forgottenSites: next.forgottenSites,
      },
    });
  };

  const loadOf = (peer: SimPeer) => {
    const live = peer.live;
    return {
      activeAssociations: live ? live.custody.pending.size + live.custody.writing.size : 0,
      queuedCustodyWork: live ? custodyStats(live.custody).queuedWork : 0,
      freeDiskBytes: 1e12,
    };
  };

  const crash = (peer: SimPeer, restartAtMs: number): void => {
    const live = peer.live;
    if (live === null) return;
    peer.live = null;
    peer.restartAtMs = restartAtMs;
    crashes += 1;
    log(`${peer.peerId} crashes`);
    // The associations of the stores under way break: their modalities send them again later.
    for (const requestId of new Set([...live.staging.keys(), ...live.custody.writing.keys(), ...live.custody.pending.keys()])) {
      const instance = requestToUid.get(requestId);
      requestToUid.delete(requestId);
      if (instance !== undefined && retries.length < retriesPendingMax) retries.push(instance);
    }
    // What waited unread in its sockets is gone with it.
    for (const e of peer.unread.splice(0)) transferLost(e);
    peer.stalledUntilMs = 0;
    for (const other of peers) {
      if (other.live !== null && network.connected(other.peerId, peer.peerId)) transportClosed(other, peer.peerId);
    }
  };

  /** The process dies while a durable write of the step it is performing is in flight. */
  const crashDuringWrite = (peer: SimPeer, what: string): void => {
    crashesDuringWrites += 1;
    log(`${peer.peerId} crashes while writing ${what}`);
    crash(peer, nowMs + extraPrng.between(500, 5000));
  };

  /** A peer:disconnect event at `at` about `peerId`: read at once, or when a stalled process resumes. */
  const transportClosed = (at: SimPeer, peerId: string): void => {
    if (at.live === null) return;
    if (nowMs < at.stalledUntilMs) {
      at.unread.push({ from: peerId, to: at.peerId, payload: { kind: 'transportClosed' }, deliverAtMs: nowMs, seq: -1 });
      return;
    }
    run(at, [{ to: 'membership', input: { type: 'peerDisconnected', peerId, nowMs } }]);
  };

  const later = (peer: SimPeer, delayMs: number, act: () => void): void => {
    if (peer.live === null) return;
    localEvents.push({ atMs: nowMs + delayMs, peer, incarnation: peer.durable.incarnation, act });
  };

  /** Runs the local events that are due, in time order, at peers still in the incarnation that began them and not standing still. */
  const runLocalEvents = (): void => {
    for (;;) {
      let next = -1;
      for (let i = 0; i < localEvents.length; i += 1) {
        const e = localEvents[i] as LocalEvent;
        if (e.peer.live === null || e.peer.durable.incarnation !== e.incarnation) {
          localEvents.splice(i, 1);
          i -= 1;
          continue;
        }
        if (e.atMs > nowMs || nowMs < e.peer.stalledUntilMs) continue;
        if (next < 0 || e.atMs < (localEvents[next] as LocalEvent).atMs) next = i;
      }
      if (next < 0) return;
      const [e] = localEvents.splice(next, 1);
      e?.act();
    }
  };

  /**
   * A transfer lost on the way (dropped, cut, its receiver down): its stream fails, and the side that
   * opened it hears so (replicationFailed, fetchFailed), as the custody actor's batches report it.
   */
  const transferLost = (e: Envelope<SimPayload>): void => {
    const p = e.payload;
    const notice = (at: string, input: CustodyInput): void => {
      const peer = byId.get(at);
      if (peer === undefined || peer.live === null) return;
      transfersFailed += 1;
      later(peer, extraPrng.between(1, 50), () => run(peer, [{ to: 'custody', input: { ...input, nowMs } as CustodyInput }]));
    };
    const siteOf = (peerId: string): string => byId.get(peerId)?.siteName ?? '';
    if (p.kind === 'replica') notice(e.from, { type: 'replicationFailed', sopInstanceUid: p.instance.sopInstanceUid, toSiteName: siteOf(e.to), nowMs });
    else if (p.kind === 'fetchRequest') notice(e.from, { type: 'fetchFailed', sopInstanceUid: p.sopInstanceUid, nowMs });
    else if (p.kind === 'fetchReply') notice(e.to, { type: 'fetchFailed', sopInstanceUid: p.sopInstanceUid, nowMs });
    else if (p.kind === 'custody' && p.message.type === 'replicaAck') {
      // The acknowledgement travels back on the replicate stream: losing it fails the transfer.
      notice(e.to, { type: 'replicationFailed', sopInstanceUid: p.message.sopInstanceUid, toSiteName: p.message.siteName, nowMs });
    }
  };
  network.onLost = transferLost;

  /** Gossip: now and then a copy reaches a peer only late, relayed from another peer's message cache. */
  const broadcast = (from: SimPeer, payload: SimPayload): void => {
    for (const other of peers) {
      if (other === from) continue;
      const late = extraPrng.chance(rates.lateRelay);
      if (late) lateRelays += 1;
      network.send(from.peerId, other.peerId, payload, nowMs, late ? extraPrng.between(1000, 3000) : 0);
    }
  };

  /** The balancer actor telling membership whether this peer can be elected; its balancer reads the view at once. */
  const setElectable = (live: Reducers, electable: boolean, queue: Work[]): void => {
    live.electable = electable;
    live.membership = stepMembership(live.membership, { type: 'electabilityChanged', electable }).state;
    queue.push({ to: 'balancer', input: { type: 'viewChanged', members: viewMembers(live.membership, nowMs), nowMs } });
  };

  /** Runs inputs through one peer's reducers, performing effects until nothing is left to do. */
  const run = (peer: SimPeer, initial: Work[]): void => {
    const queue: Work[] = [...initial];
    for (let guard = 0; queue.length > 0; guard += 1) {
      if (guard > 10_000) throw new Error('effect loop did not settle');
      const live = peer.live;
      if (live === null) return;
      const work = queue.shift() as Work;
      switch (work.to) {
        case 'membership': {
          const step = stepMembership(live.membership, work.input);
          live.membership = step.state;
          if (work.input.type === 'heartbeatReceived') checkIncarnationOrder(peer, work.input.heartbeat.peerId);
          for (const e of step.effects) onMembershipEffect(peer, e, queue);
          break;
        }
        case 'balancer': {
          const step = stepBalancer(live.balancer, work.input);
          const persists = step.effects.some((e) => e.type === 'persist');
          if (persists && nowMs < peer.electionWritesFailUntilMs) {
            // As the actor does: nothing of the step happens, the balancer starts again from its record,
            // and the peer stops standing for election until a write succeeds.
            log(`${peer.peerId} cannot write its election record`);
            electionWritesRefused += 1;
            live.balancer = initBalancer(live.balancer.config, peer.durable.election);
            setElectable(live, false, queue);
            break;
          }
          live.balancer = step.state;
          // The actor awaits each persist before the step's next effect: a crash in that write leaves the
          // effects before it done, the record written or not, and nothing after it.
          const persistsAt = [...step.effects.keys()].filter((i) => step.effects[i]?.type === 'persist');
          const crashAt = persistsAt.length > 0 && extraPrng.chance(rates.crashDuringWrite) ? extraPrng.pick(persistsAt) : -1;
          for (const [i, e] of step.effects.entries()) {
            if (i === crashAt) {
              if (extraPrng.chance(0.5)) onBalancerEffect(peer, e);
              crashDuringWrite(peer, 'its election record');
              return;
            }
            onBalancerEffect(peer, e);
          }
          // A write that succeeds ends it: a persist, or the actor's probe at a tick once the disk takes writes.
          if (!live.electable && nowMs >= peer.electionWritesFailUntilMs && (persists || work.input.type === 'tick')) setElectable(live, true, queue);
          break;
        }
        case 'custody': {
          // Seen by custody, which learns (and persists) the sites it owes copies to; a crash in the step that
          // brought the view to the balancer first leaves it unseen.
          if (work.input.type === 'viewChanged') for (const m of work.input.members) if (m.status === 'alive') sitesSeenAlive.get(peer.peerId)?.add(m.siteName);
          const step = stepCustody(live.custody, work.input);
          live.custody = step.state;
          // As the actor: the step's effects at once, its debt changes in one write after them, and its
          // answers to modalities once that write is durable. A crash during the write loses the answers,
          // and the write lands whole or not at all.
          const isDebtWrite = (e: CustodyEffect): boolean => e.type === 'persistDebt' || e.type === 'removeDebt';
          const debtWrites = step.effects.filter(isDebtWrite);
          for (const e of step.effects) if (!isDebtWrite(e) && e.type !== 'ackStore') onCustodyEffect(peer, e, queue);
          if (debtWrites.length > 0 && extraPrng.chance(rates.crashDuringWrite)) {
            if (extraPrng.chance(0.5)) for (const e of debtWrites) onCustodyEffect(peer, e, queue);
            crashDuringWrite(peer, 'debt');
            return;
          }
          for (const e of debtWrites) onCustodyEffect(peer, e, queue);
          for (const e of step.effects) if (e.type === 'ackStore') onCustodyEffect(peer, e, queue);
          publishStats(peer, queue);
          break;
        }
        default:
          assertNever(work);
      }
    }
  };

  const onMembershipEffect = (peer: SimPeer, e: MembershipEffect, queue: Work[]): void => {
    switch (e.type) {
      case 'publish':
        broadcast(peer, { kind: 'heartbeat', heartbeat: e.message });
        return;
      case 'memberStatusChanged':
        log(`${peer.peerId} sees ${e.peerId}#${e.incarnation} ${e.from} -> ${e.to}`);
        return;
      case 'memberSiteRenamed':
        log(`${peer.peerId} sees ${e.peerId} move from ${e.fromSite} to ${e.toSite}`);
        return;
      case 'dropConnections': {
        // The node closes its connection to a peer found dead: what is in flight either way is lost, and the
        // other side sees a peer:disconnect (a stalled process when it resumes); the next message redials.
        network.dropBetween(peer.peerId, e.peerId);
        const other = byId.get(e.peerId);
        if (other !== undefined && network.connected(peer.peerId, other.peerId)) transportClosed(other, peer.peerId);
        return;
      }
      case 'siteConflictsChanged':
        // Every simulated site has a name of its own: crashes, restarts, delays and duplicates must never look like a copied --site.
        for (const conflict of e.conflicts) violate(`(h) ${peer.peerId} sees site ${conflict.siteName} claimed by ${conflict.peers.map((p) => `${p.peerId}@${p.dicom}`).join(' and ')}`);
        return;
      case 'siteNameTaken':
        violate(`(h) ${peer.peerId} was told its site ${e.siteName} is held by ${e.byPeerId}`);
        return;
      case 'selfStalled':
        log(`${peer.peerId} stood still for ${e.stalledMs} ms`);
        return;
      case 'viewChanged':
        queue.push({ to: 'balancer', input: { type: 'viewChanged', members: e.members, nowMs } });
        queue.push({ to: 'custody', input: { type: 'viewChanged', members: e.members, nowMs } });
        return;
      default:
        assertNever(e);
    }
  };

  const onBalancerEffect = (peer: SimPeer, e: BalancerEffect): void => {
    switch (e.type) {
      case 'persist':
        peer.durable.election = e.value;
        maxTerm = Math.max(maxTerm, e.value.currentTerm);
        return;
      case 'send':
        network.send(peer.peerId, e.to, { kind: 'balancer', message: e.message }, nowMs);
        return;
      case 'publish':
        broadcast(peer, { kind: 'balancer', message: e.message });
        return;
      case 'leaderChanged':
        return;
      case 'claimedLeadership': {
        log(`${peer.peerId} claims leadership of term ${e.term}`);
        // Invariant (a), exactly: no two distinct leaders claim one term within one connected component.
        const component = componentOf(peer.peerId);
        const key = `${component}|${e.term}`;
        const previous = claimsByComponentTerm.get(key);
        if (previous !== undefined && previous !== peer.peerId) {
          violate(`(a) ${previous} and ${peer.peerId} both claimed term ${e.term} in component {${component}}`);
        }
        claimsByComponentTerm.set(key, peer.peerId);
        // The design promises more (majority votes): one leader per term across the whole mesh.
        const anywhere = claimsByTerm.get(e.term);
        if (anywhere !== undefined && anywhere !== peer.peerId) {
          violate(`(a+) ${anywhere} and ${peer.peerId} both claimed term ${e.term} (anywhere in the mesh)`);
        }
        claimsByTerm.set(e.term, peer.peerId);
        return;
      }
      case 'routingTableChanged':
        return;
      default:
        assertNever(e);
    }
  };

  const onCustodyEffect = (peer: SimPeer, e: CustodyEffect, queue: Work[]): void => {
    const live = peer.live;
    if (live === null) return;
    switch (e.type) {
      case 'writeLocal': {
        const staged = live.staging.get(e.requestId);
        owedAtWrite.set(e.requestId, [...(sitesSeenAlive.get(peer.peerId) ?? [])]);
        if (staged === undefined) {
          queue.push({ to: 'custody', input: { type: 'localWriteDone', requestId: e.requestId, ok: false, nowMs } });
          return;
        }
        // The association's writer commits later; custody hears of it later still (a crash in between
        // leaves the instance stored, with neither debt nor answer). Now and then the disk refuses it.
        const failed = extraPrng.chance(rates.localWriteFailure);
        later(peer, extraPrng.between(1, 100), () => {
          peer.live?.staging.delete(e.requestId);
          if (failed) {
            localWritesFailed += 1;
            log(`${peer.peerId}'s disk refuses ${staged.sopInstanceUid}`);
          } else if (!peer.durable.store.has(staged.sopInstanceUid)) {
            peer.durable.store.set(staged.sopInstanceUid, staged);
          }
          later(peer, extraPrng.between(0, 20), () => run(peer, [{ to: 'custody', input: { type: 'localWriteDone', requestId: e.requestId, ok: !failed, nowMs } }]));
        });
        return;
      }
      case 'ackStore': {
        // (j) A modality gets one answer per C-STORE.
        if (answers.has(e.requestId)) violate(`(j) ${peer.peerId} answers store ${e.requestId} (${e.sopInstanceUid}) a second time`);
        answers.set(e.requestId, { status: e.status, quorum: e.quorum });
        const instance = requestToUid.get(e.requestId);
        requestToUid.delete(e.requestId);
        const owedTo = owedAtWrite.get(e.requestId) ?? [];
        owedAtWrite.delete(e.requestId);
        if (e.status === StoreStatus.Success) {
          checkAckedStore(peer, e.sopInstanceUid, e.quorum, e.sitesHolding);
          storesAcked += 1;
          ackedQuorum.set(e.sopInstanceUid, Math.max(e.quorum, ackedQuorum.get(e.sopInstanceUid) ?? 0));
          if (!ackedOwedTo.has(e.sopInstanceUid)) ackedOwedTo.set(e.sopInstanceUid, owedTo);
          log(`${peer.peerId} acks ${e.sopInstanceUid} quorum ${e.quorum} at {${e.sitesHolding.join(',')}}`);
        } else {
          storesRefused += 1;
          log(`${peer.peerId} refuses ${e.sopInstanceUid} (0x${e.status.toString(16)})`);
          // The modality keeps the instance and sends it again later.
          if (instance !== undefined && retries.length < retriesPendingMax) retries.push(instance);
        }
        return;
      }
      case 'persistDebt':
        peer.durable.debt.set(debtKey(e.entry.sopInstanceUid, e.entry.siteName), e.entry);
        return;
      case 'removeDebt':
        peer.durable.debt.delete(debtKey(e.sopInstanceUid, e.siteName));
        return;
      case 'persistKnownSites':
        for (const k of e.seen) peer.durable.knownSites.set(k.siteName, k);
        for (const f of [...e.forgotten, ...e.tombstonesAdopted]) {
          peer.durable.knownSites.delete(f.siteName);
          peer.durable.forgottenSites.set(f.siteName, f);
        }
        for (const siteName of e.tombstonesDropped) peer.durable.forgottenSites.delete(siteName);
        return;
      case 'replicate': {
        const instance = peer.durable.store.get(e.sopInstanceUid);
        if (instance === undefined) throw new Error(`${peer.peerId} asked to replicate ${e.sopInstanceUid} it does not hold`);
        network.send(peer.peerId, e.toPeerId, { kind: 'replica', instance }, nowMs);
        return;
      }
      case 'fetch':
        network.send(peer.peerId, e.fromPeerId, { kind: 'fetchRequest', sopInstanceUid: e.sopInstanceUid }, nowMs);
        return;
      case 'send':
        network.send(peer.peerId, e.to, { kind: 'custody', message: e.message }, nowMs);
        return;
      case 'uidConflict':
        // Every simulated UID has one content: a conflict here is a custody bug.
        throw new Error(`${peer.peerId} reports a UID conflict for ${e.sopInstanceUid} with ${e.peerId}`);
      default:
        assertNever(e);
    }
  };

  const deliver = (to: SimPeer, envelope: Envelope<SimPayload>): void => {
    const { from, payload } = envelope;
    const live = to.live;
    if (live === null) {
      transferLost(envelope);
      return;
    }
    // Bytes on a mesh stream (not gossip) count as hearing from their sender; the node reports it throttled.
    const viaStream = payload.kind !== 'heartbeat' && payload.kind !== 'transportClosed' && !(payload.kind === 'balancer' && payload.message.type === 'announce');
    if (viaStream && nowMs - (live.activeReportedAtMs.get(from) ?? Number.NEGATIVE_INFINITY) >= peerActiveEveryMs) {
      live.activeReportedAtMs.set(from, nowMs);
      run(to, [{ to: 'membership', input: { type: 'peerActive', peerId: from, nowMs } }]);
    }
    switch (payload.kind) {
      case 'transportClosed':
        run(to, [{ to: 'membership', input: { type: 'peerDisconnected', peerId: from, nowMs } }]);
        return;
      case 'heartbeat':
        run(to, [{ to: 'membership', input: { type: 'heartbeatReceived', heartbeat: payload.heartbeat, nowMs } }]);
        return;
      case 'balancer':
        run(to, [{ to: 'balancer', input: { type: 'messageReceived', from, message: payload.message, nowMs } }]);
        return;
      case 'custody':
        run(to, [{ to: 'custody', input: { type: 'messageReceived', from, message: payload.message, nowMs } }]);
        return;
      case 'replica':
      case 'fetchReply': {
        const instance = payload.instance;
        if (instance === null) {
          if (payload.kind === 'fetchReply') {
            run(to, [{ to: 'custody', input: { type: 'fetchFailed', sopInstanceUid: payload.sopInstanceUid, nowMs } }]);
          }
          return;
        }
        // The receiving stream handler writes durably before custody hears of it (and so before any ack).
        const existing = to.durable.store.get(instance.sopInstanceUid);
        if (existing !== undefined && existing.sha256 !== instance.sha256) {
          violate(`immutability: ${instance.sopInstanceUid} arrived at ${to.peerId} with different bytes`);
          return;
        }
        if (existing === undefined) to.durable.store.set(instance.sopInstanceUid, instance);
        run(to, [
          {
            to: 'custody',
            input: { type: 'replicaStored', sopInstanceUid: instance.sopInstanceUid, sha256: instance.sha256, fromPeerId: from, nowMs },
          },
        ]);
        return;
      }
      case 'fetchRequest': {
        const instance = to.durable.store.get(payload.sopInstanceUid) ?? null;
        network.send(to.peerId, from, { kind: 'fetchReply', sopInstanceUid: payload.sopInstanceUid, instance }, nowMs);
        return;
      }
      default:
        assertNever(payload);
    }
  };

  const store = (instance: SimInstance): void => {
    const door = workPrng.pick(peers);
    if (door.live === null || nowMs < door.stalledUntilMs) return;
    // The front door asks the table it follows; if the chosen peer is gone (or stands still), it serves the association itself.
    const choice = chooseTarget(door.live.balancer.table, door.peerId, workPrng.nextUnit());
    const chosen = byId.get(choice.peerId);
    const target =
      chosen !== undefined && chosen.live !== null && nowMs >= chosen.stalledUntilMs && network.connected(door.peerId, chosen.peerId) ? chosen : door;
    log(`modality stores ${instance.sopInstanceUid} via ${door.peerId} at ${target.peerId} (${choice.reason})`);
    storeAt(target, instance);
  };

  /** The association served at `target`: the bytes are received (staged), then custody takes the store. Returns its requestId. */
  const storeAt = (target: SimPeer, instance: SimInstance): string | undefined => {
    const live = target.live;
    if (live === null) return undefined;
    const requestId = `r${nextRequest++}`;
    live.staging.set(requestId, instance);
    requestToUid.set(requestId, instance);
    run(target, [
      { to: 'custody', input: { type: 'storeRequested', requestId, sopInstanceUid: instance.sopInstanceUid, sha256: instance.sha256, nowMs } },
    ]);
    return requestId;
  };

  const newInstance = (): SimInstance => {
    const n = nextInstance++;
    const study = Math.floor(n / 5);
    return {
      sopInstanceUid: `1.2.826.0.1.3680043.${options.seed}.${n}`,
      studyInstanceUid: `1.2.826.0.1.3680043.${options.seed}.9.${study}`,
      sha256: fakeSha(options.seed, n),
      byteLength: 1000 + workPrng.nextInt(500_000),
    };
  };

  /**
   * Invariant (i), at the moment of a Success: every site it names holds the instance durably, they are as
   * many as the quorum, and a quorum of 1 ('auto') means no other site could be asked: none alive in the
   * acknowledging custody's view, and in the first storeSettleAfterStartMsDefault after its start none it
   * knows of (durably) that it has not heard from yet in this run.
   */
  const checkAckedStore = (peer: SimPeer, uid: string, quorum: number, sitesHolding: readonly string[]): void => {
    for (const siteName of sitesHolding) {
      const site = peers.find((p) => p.siteName === siteName);
      if (site === undefined || !site.durable.store.has(uid)) violate(`(i) ${peer.peerId} acks ${uid} as held at ${siteName}, which does not hold it durably`);
    }
    if (new Set(sitesHolding).size < quorum) violate(`(i) ${peer.peerId} acks ${uid} with quorum ${quorum} held at ${sitesHolding.length} site(s)`);
    const live = peer.live;
    if (quorum >= 2 || live === null) return;
    // The view custody decided with: membership may have moved on within the same run of inputs (a
    // stall found, then the heartbeats read after it), and custody hears of that next.
    const view = live.custody.members;
    const otherAlive = view.filter((m) => m.status === 'alive' && m.siteName !== peer.siteName).map((m) => m.siteName);
    if (otherAlive.length > 0) violate(`(i) ${peer.peerId} acks ${uid} with quorum ${quorum} while ${otherAlive.join(',')} is alive in its view`);
    if (nowMs - peer.startedAtMs < storeSettleAfterStartMsDefault) {
      const heard = new Set(view.map((m) => m.siteName));
      const awaited = [...peer.durable.knownSites.keys()].filter((siteName) => !heard.has(siteName));
      if (awaited.length > 0) violate(`(i) ${peer.peerId} acks ${uid} with quorum ${quorum} ${nowMs - peer.startedAtMs} ms after its start, before hearing from known site(s) ${awaited.join(',')}`);
    }
  };

  /**
   * Invariant (l): a view never takes a member back to an older incarnation (an old process's heartbeat,
   * relayed late, neither overwrites nor resurrects its restarted successor). Incarnations only grow here,
   * so the reducer's one exception (a record dead for 10 x deadAfterMs) never applies.
   */
  const checkIncarnationOrder = (viewer: SimPeer, memberId: string): void => {
    const incarnation = viewer.live?.membership.members.get(memberId)?.incarnation;
    if (incarnation === undefined) return;
    const key = `${viewer.peerId}#${viewer.durable.incarnation}|${memberId}`;
    const highest = highestIncarnationSeen.get(key) ?? 0;
    if (incarnation < highest) violate(`(l) ${viewer.peerId} took ${memberId} back from incarnation ${highest} to ${incarnation}`);
    else highestIncarnationSeen.set(key, incarnation);
  };

  const checkAckedCopies = (): void => {
    // Invariant (b): an acknowledged instance has at least the quorum it was acknowledged with in durable copies.
    for (const [uid, quorum] of ackedQuorum) {
      let copies = 0;
      for (const p of peers) if (p.durable.store.has(uid)) copies += 1;
      if (copies < quorum) violate(`(b) ${uid} acknowledged with quorum ${quorum} but held durably by ${copies} site(s)`);
    }
  };

  const checkOwedCopies = (): void => {
    // Invariant (f): every site the acknowledging peer had ever seen alive holds an acknowledged instance, or
    // a peer holding it owes it that copy durably: no copy rests on repair alone (e.g. one acknowledged
    // after its entry peer restarted, before it heard from that site again). Not a site the operator
    // forgot: nothing is owed to it any more.
    for (const [uid, sites] of ackedOwedTo) {
      for (const siteName of sites) {
        if (decommission?.forgotten === true && siteName === decommission.peer.siteName) continue;
        const site = peers.find((p) => p.siteName === siteName);
        if (site === undefined || site.durable.store.has(uid)) continue;
        const owed = peers.some((p) => p.durable.store.has(uid) && p.durable.debt.has(debtKey(uid, siteName)));
        if (!owed) violate(`(f) ${uid} acknowledged, not held by ${siteName} and owed to it by no peer`);
      }
    }
  };

  const checkLeadersPerComponent = (): void => {
    // Invariant (a) on the live state too: claims that outlived a heal meet in one component here.
    const seen = new Map<string, string>();
    for (const p of peers) {
      const live = p.live;
      if (live === null || live.balancer.role !== 'leader') continue;
      const key = `${componentOf(p.peerId)}|${live.balancer.durable.currentTerm}`;
      const other = seen.get(key);
      if (other !== undefined && other !== p.peerId) violate(`(a) ${other} and ${p.peerId} lead the same term in {${key}}`);
      seen.set(key, p.peerId);
    }
  };

  const stepDecommission = (): void => {
    const d = decommission;
    if (d === undefined || nowMs < d.atMs || d.forgotten) return;
    if (d.peer.restartAtMs !== Number.POSITIVE_INFINITY) {
      if (d.peer.live !== null) crash(d.peer, Number.POSITIVE_INFINITY);
      d.peer.restartAtMs = Number.POSITIVE_INFINITY;
      log(`${d.peer.peerId} decommissioned: down for good`);
      return;
    }
    // Now and then, at a live peer where it is not up (an operator looks at /api/mesh first).
    const candidates = active.filter((p) => {
      const status = p.live?.membership.members.get(d.peer.peerId)?.status;
      return p.live !== null && nowMs >= p.stalledUntilMs && status !== 'alive' && status !== 'suspect';
    });
    if (candidates.length === 0 || !decommissionPrng.chance(0.05)) return;
    const at = decommissionPrng.pick(candidates);
    run(at, [{ to: 'custody', input: { type: 'forgetSiteRequested', siteName: d.peer.siteName, nowMs } }]);
    // Durably: the peer may crash in the same step, after writing the tombstone.
    d.forgotten = at.durable.forgottenSites.has(d.peer.siteName);
    if (d.forgotten) log(`operator forgets ${d.peer.siteName} at ${at.peerId}`);
  };

  /** Invariant (g): a decommissioned site, once forgotten at one peer, is forgotten at every other (no debt to it either). */
  const forgottenEverywhere = (): boolean => {
    const d = decommission;
    if (d === undefined) return true;
    const site = d.peer.siteName;
    return d.forgotten && active.every((p) => p.live !== null && !p.live.custody.knownSites.has(site) && p.live.custody.forgottenSites.has(site));
  };

  const tick = (p: SimPeer): void => {
    run(p, [
      { to: 'membership', input: { type: 'tick', nowMs } },
      { to: 'balancer', input: { type: 'tick', nowMs } },
      { to: 'custody', input: { type: 'tick', nowMs } },
    ]);
  };

  const tickAll = (): void => {
    for (const p of peers) if (p.live !== null && nowMs >= p.stalledUntilMs) tick(p);
  };

  const deliverDue = (): void => {
    // A process that resumes reads what waited in its sockets (before or after its first tick: both happen).
    for (const p of peers) {
      if (p.live === null || p.unread.length === 0 || nowMs < p.stalledUntilMs) continue;
      if (extraPrng.chance(0.5)) tick(p);
      for (const e of p.unread.splice(0)) deliver(p, e);
    }
    for (let e = network.nextDue(nowMs); e !== null; e = network.nextDue(nowMs)) {
      const to = byId.get(e.to);
      if (to === undefined) continue;
      if (to.live !== null && nowMs < to.stalledUntilMs) to.unread.push(e);
      else deliver(to, e);
    }
    runLocalEvents();
  };

  for (const p of peers) {
    sitesSeenAlive.set(p.peerId, new Set());
    start(p);
  }

  // Fault phase: faults and stores at random.
  let healAtMs = -1;
  for (; nowMs < faultPhaseMs && violations.length === 0; nowMs += tickMs) {
    for (const p of peers) if (p.live === null && nowMs >= p.restartAtMs) start(p);
    stepDecommission();
    if (healAtMs >= 0 && nowMs >= healAtMs) {
      network.heal();
      healAtMs = -1;
      log('partition heals');
    }
    const upCount = peers.filter((p) => p.live !== null).length;
    if (upCount > 1 && faultPrng.chance(rates.crashPerTick)) crash(faultPrng.pick(peers.filter((p) => p.live !== null)), nowMs + faultPrng.between(500, 5000));
    if (faultPrng.chance(rates.electionDiskFaultPerTick)) {
      const full = faultPrng.pick(peers);
      full.electionWritesFailUntilMs = nowMs + faultPrng.between(1000, 6000);
      electionDiskFaults += 1;
      log(`${full.peerId}'s disk refuses election writes until ${full.electionWritesFailUntilMs}`);
    }
    if (extraPrng.chance(rates.stallPerTick)) {
      const running = peers.filter((p) => p.live !== null && nowMs >= p.stalledUntilMs);
      if (running.length > 0) {
        const stalled = extraPrng.pick(running);
        stalled.stalledUntilMs = nowMs + extraPrng.between(500, 4000);
        stalls += 1;
        log(`${stalled.peerId} stands still until ${stalled.stalledUntilMs}`);
      }
    }
    if (healAtMs < 0 && faultPrng.chance(rates.partitionPerTick)) {
      const groups = new Map<string, number>();
      for (const p of peers) groups.set(p.peerId, faultPrng.nextInt(2));
      partitions += 1;
      const before = new Map(peers.map((p) => [p.peerId, network.groupOf(p.peerId)]));
      network.partition(groups);
      healAtMs = nowMs + faultPrng.between(1000, 8000);
      log(`partition ${peers.map((p) => `${p.peerId}:${groups.get(p.peerId)}`).join(' ')}`);
      // The transport notices closed connections across the cut at once.
      for (const a of peers) {
        for (const b of peers) {
          if (a === b || a.live === null || b.live === null) continue;
          if (before.get(a.peerId) === before.get(b.peerId) && !network.connected(a.peerId, b.peerId)) transportClosed(a, b.peerId);
        }
      }
    }
    if (workPrng.chance(rates.storePerTick)) {
      if (retries.length > 0 && workPrng.chance(0.5)) store(retries.shift() as SimInstance);
      else store(newInstance());
    }
    deliverDue();
    tickAll();
    checkAckedCopies();
    checkOwedCopies();
    checkLeadersPerComponent();
  }

  // Final heal: everyone up, no faults, no new stores; run until the mesh is quiet or time runs out.
  network.heal();
  network.faults = noFaults;
  for (const p of peers) {
    p.electionWritesFailUntilMs = 0;
    // Every process runs again (what waited in its sockets is read at the next step).
    p.stalledUntilMs = Math.min(p.stalledUntilMs, nowMs);
  }
  rates = { ...rates, crashDuringWrite: 0, localWriteFailure: 0, lateRelay: 0 };
  log('final heal');
  const healedAtMs = nowMs;
  /** Steps until every site settled and forgot what it must, checking as it goes; false when it never did. */
  const settle = (restartAndDecommission: boolean): boolean => {
    const fromMs = nowMs;
    for (; nowMs < fromMs + settleMaxMs && violations.length === 0; nowMs += tickMs) {
      if (restartAndDecommission) {
        for (const p of active) if (p.live === null) start(p);
        stepDecommission();
      }
      deliverDue();
      tickAll();
      checkAckedCopies();
      checkOwedCopies();
      checkLeadersPerComponent();
      if (settled(active) && forgottenEverywhere()) return true;
    }
    return false;
  };
  let converged = settle(true);
  if (violations.length === 0 && converged) {
    // (k) The healed mesh takes stores again: one new instance at each peer, answered Success within the
    // quorum timeout with a quorum of 2 (when there are two sites), then copied everywhere like the rest.
    const probes = active.map((p) => ({ peer: p, requestId: storeAt(p, newInstance()) }));
    const probedAtMs = nowMs;
    for (; nowMs <= probedAtMs + simTimings.quorumTimeoutMs + 500 && probes.some((q) => !answers.has(q.requestId ?? '')); nowMs += tickMs) {
      deliverDue();
      tickAll();
    }
    for (const { peer, requestId } of probes) {
      const answer = answers.get(requestId ?? '');
      const quorumWanted = active.length >= 2 ? 2 : 1;
      if (answer === undefined || answer.status !== StoreStatus.Success || answer.quorum < quorumWanted) {
        violate(`(k) after healing, a store at ${peer.peerId} was answered ${answer === undefined ? 'never' : `0x${answer.status.toString(16)} with quorum ${answer.quorum}`}`);
      }
    }
    converged = settle(false);
  }
  if (violations.length === 0 && !converged) {
    const leaders = active.filter((p) => p.live?.balancer.role === 'leader').map((p) => p.peerId);
    if (leaders.length !== 1) violate(`(c) after healing ${leaders.length} leaders: [${leaders.join(',')}]`);
    const sizes = active.map((p) => `${p.peerId}:${p.durable.store.size}`).join(' ');
    if (!sameStores(active)) violate(`(d) sites hold different instance sets after healing: ${sizes}`);
    const debts = active.map((p) => `${p.peerId}:${p.durable.debt.size}`).join(' ');
    if (active.some((p) => p.durable.debt.size > 0)) violate(`(e) replication debt left after healing: ${debts}`);
    if (!forgottenEverywhere()) {
      const where = active.map((p) => `${p.peerId}:${p.live?.custody.knownSites.has(decommission!.peer.siteName) ? 'known' : p.live?.custody.forgottenSites.has(decommission!.peer.siteName) ? 'tombstone' : 'neither'}`);
      violate(`(g) decommissioned ${decommission!.peer.siteName} (forgotten by the operator: ${decommission!.forgotten}) not forgotten everywhere: ${where.join(' ')}`);
    }
    if (violations.length === 0) violate('mesh did not settle after healing');
  }

  return {
    seed: options.seed,
    ok: violations.length === 0,
    violations,
    traceTail: record.traceTail(),
    finalPeers: peers.map((p) => {
      const live = p.live;
      if (live === null) return `${p.peerId} down`;
      const b = live.balancer;
      const view = live.membership.members;
      return (
        `${p.peerId} prio ${p.priority} ${b.role} term ${b.durable.currentTerm} voted ${b.durable.votedFor} leader ${b.leaderId}` +
        ` store ${p.durable.store.size} debt ${p.durable.debt.size}/${live.custody.debt.size} [${[...p.durable.debt.values()].slice(0, 3).map((d) => `${d.sopInstanceUid.split('.').pop()}->${d.siteName}`).join(' ')}]` +
        ` known [${[...live.custody.knownSites.keys()].join(',')}] forgotten [${[...live.custody.forgottenSites.keys()].join(',')}]` +
        ` pending ${live.custody.pending.size}` +
        ` view [${[...view.values()].map((m) => `${m.peerId}#${m.incarnation}:${m.status}`).join(' ')}]`
      );
    }),
    stats: {
      siteCount,
      simulatedMs: nowMs,
      settleMs: nowMs - healedAtMs,
      storesAcked,
      storesRefused,
      crashes,
      crashesDuringWrites,
      stalls,
      localWritesFailed,
      lateRelays,
      transfersFailed,
      decommissions: decommission?.forgotten === true ? 1 : 0,
      partitions,
      electionDiskFaults,
      electionWritesRefused,
      maxTerm,
      messagesSent: network.stats.sent,
      messagesDropped: network.stats.dropped,
    },
  };
}

/** (c) one leader that everyone follows, (d) identical stores, (e) no debt, and no custody work left. */
function settled(peers: readonly SimPeer[]): boolean {
  const leaders = peers.filter((p) => p.live?.balancer.role === 'leader');
  if (leaders.length !== 1) return false;
  const leader = leaders[0] as SimPeer;
  const term = leader.live?.balancer.durable.currentTerm;
  for (const p of peers) {
    const live = p.live;
    if (live === null || live.balancer.leaderId !== leader.peerId || live.balancer.durable.currentTerm !== term) return false;
    if (p.durable.debt.size > 0 || live.custody.debt.size > 0 || live.custody.pending.size > 0) return false;
  }
  return sameStores(peers);
}

function sameStores(peers: readonly SimPeer[]): boolean {
  const first = peers[0];
  if (first === undefined) return true;
  for (const p of peers) {
    if (p.durable.store.size !== first.durable.store.size) return false;
    for (const [uid, instance] of first.durable.store) {
      const other = p.durable.store.get(uid);
      if (
        other === undefined ||
        other.sha256 !== instance.sha256 ||
        other.studyInstanceUid !== instance.studyInstanceUid ||
        other.byteLength !== instance.byteLength
      ) {
        return false;
      }
    }
  }
  return true;
}

/** A stand-in for the SHA-256 of an instance's bytes: unique per instance, 64 hex digits. */
function fakeSha(seed: number, n: number): string {
  const g = new Prng(seed * 1_000_003 + n);
  let hex = '';
  for (let i = 0; i < 8; i += 1) hex += g.nextUint32().toString(16).padStart(8, '0');
  return hex;
}

function assertNever(value: never): never {
  throw new Error(`unhandled: ${JSON.stringify(value)}`);
}
