/**
 * Deterministic simulation of the election with learnt rosters (hunt 159). The mesh simulation
 * (simulation.ts) gives every peer one fixed roster, so its one-leader-per-term check tests the pinned
 * `--roster` case only. Here each peer learns its roster as the balancer actor does (actor.ts): roster.ts's
 * `learnRoster` on every view before the reducer counts with it, persisted at once and read back through
 * `rosterAtStart` after a crash, the settle time after a start, and the longer wait of a peer started with
 * `--bootstrap` whose roster is itself alone, and the rule that such a peer neither runs nor votes before it has
 * met its bootstrap peer (BalancerConfig.bootstrapPeerIds, hunt 164). By default the votes that count are the admitted
 * voters', changed only through the leader (BalancerConfig.votersThroughLeader, hunt 168; the actor's behind
 * --election-voters admitted, hunt 184, which also tells each first start whether it founds). Only membership and the balancer run (custody has its own simulation).
 *
 * Peers join over the run, each knowing only a bootstrap peer that joined before it; they crash and restart,
 * are killed for good (ghosts in the rosters of those that saw them, unknown to later joiners), are
 * partitioned, and an operator now and then forgets a killed peer (`POST /api/forget-peer`, passed on to every
 * peer that can be reached). Gossip (heartbeats, announcements) floods the graph of connections, as gossipsub
 * relays it; votes travel over a connection, opened by a peer to every peer it has seen alive (and to its
 * bootstrap peer).
 *
 * Checked after every step: at most one leader per term anywhere. Counted (and checked by the test): after a final heal
 * (and, at random, the operator forgetting the killed peers), whether the live peers end with one leader
 * followed by all within settleMaxMs when they are connected and the newest admitted voters among them have a
 * majority not killed (the cost of a safety rule in availability; the peers that have not met the mesh are counted apart).
 */
import { founderWaitsForTermsOf, initBalancer, newerVoters, stepBalancer, type BalancerState } from '../actors/balancer/logic.ts';
import type { BalancerEffect, BalancerInput, BalancerMessage, ElectionDurable, Voters } from '../actors/balancer/messages.ts';
import { forgetRosterPeers, learnRoster, rosterAtStart, type RosterPeers } from '../actors/balancer/roster.ts';
import { initMembership, stepMembership, viewMembers, type MembershipState } from '../actors/membership/logic.ts';
import type { Heartbeat, MemberRecord, MembershipEffect, MembershipInput } from '../actors/membership/messages.ts';
import { SimNetwork } from './network.ts';
import { simBalancerConfig, simTimings } from './simulation.ts';
import { Prng } from './prng.ts';
import { createRunRecord, type SimRunReport } from './run-record.ts';

type Payload =
  | { readonly kind: 'heartbeat'; readonly heartbeat: Heartbeat }
  | { readonly kind: 'balancer'; readonly message: BalancerMessage };

/** What a crash keeps: as the actor's files (election record, roster) and the node's known peers. */
interface Durable {
  incarnation: number;
  election: ElectionDurable | null;
  roster: RosterPeers;
  /** Peers this one dials: its bootstrap peer and every peer it has seen alive. */
  readonly knownPeers: Set<string>;
}

interface Live {
  membership: MembershipState;
  balancer: BalancerState;
}

interface Peer {
  readonly peerId: string;
  readonly priority: number;
  readonly joinAtMs: number;
  /** Started with --bootstrap (every peer but the first; every peer when the operator founds). */
  readonly joinsMesh: boolean;
  /** How its next start counts votes (see ElectionSimOptions.founding): the actor's --election-voters and --found-mesh. */
  votersMode: VotersMode;
  /** founding 'upgrade': when the operator restarts it with --election-voters admitted (and the founder --found-mesh yes). */
  upgradeAtMs: number;
  /** The PeerId its --bootstrap address names (BalancerConfig.bootstrapPeerIds); undefined for the first peer. */
  bootstrapPeerId?: string;
  readonly durable: Durable;
  live: Live | null;
  restartAtMs: number;
  killed: boolean;
}

/** BalancerConfig.votersThroughLeader and foundsVoters, as a start passes them. */
interface VotersMode {
  readonly votersThroughLeader: boolean;
  readonly foundsVoters?: boolean;
}

/**
 * Who founds the admitted voters. 'firstPeer': the reducer's default (a first start without --bootstrap founds).
 * 'operator': as the actor is run (docs/mesh-algorithms.md, "Founding"): `--found-mesh yes` on the first site only,
 * every other site a joiner, and --bootstrap everywhere (the founder's names a later site). 'upgrade': a mesh on learnt
 * rosters; from a time during the fault phase the operator restarts every site but the first with --election-voters
 * admitted, one after another within 3 s, then the first with --found-mesh yes too ("Upgrading a running mesh"); the
 * first site is not killed before that restart (the operator founds with a site it has). 'autoUpgrade': the same
 * restarts on the command's defaults (admitted voters, `--found-mesh auto`), nobody founding: each keeps its learnt
 * roster until the first leader elected after its restart stamps its roster as the list.
 */
export type ElectionSimFounding = 'firstPeer' | 'operator' | 'upgrade' | 'autoUpgrade';

export interface ElectionSimFaults {
  readonly crashPerTick: number;
  /** Per tick: a live peer is killed for good (at most a minority of all peers over a run). */
  readonly killPerTick: number;
  readonly partitionPerTick: number;
  /** Per tick, per killed peer not forgotten yet: the operator forgets it (forget-peer at a live peer). */
  readonly forgetPeerPerTick: number;
  readonly dropMax: number;
  readonly duplicateMax: number;
}

export const defaultElectionSimFaults: ElectionSimFaults = {
  crashPerTick: 0.006,
  killPerTick: 0.002,
  partitionPerTick: 0.008,
  forgetPeerPerTick: 0.002,
  dropMax: 0.15,
  duplicateMax: 0.05,
};

export interface ElectionSimOptions {
  readonly seed: number;
  /** Peers (one per site); default 3-6 chosen by the seed. */
  readonly peerCount?: number;
  readonly faultPhaseMs?: number;
  readonly settleMaxMs?: number;
  readonly faults?: Partial<ElectionSimFaults>;
  /**
   * BalancerConfig.votersThroughLeader (default true): the voters change only through the leader (hunt 168).
   * False: the learnt roster counts, as the balancer actor still wires it (two leaders of one term in 58 of seeds 1-5000).
   */
  readonly votersThroughLeader?: boolean;
  /** Who founds the admitted voters (default 'firstPeer'); 'operator' and 'upgrade' ignore votersThroughLeader. */
  readonly founding?: ElectionSimFounding;
  /** The roster's rosterForgetAfterMs (default 24 h, as wired): a few seconds lets a run's partitions outlast it. */
  readonly rosterForgetAfterMs?: number;
}

/** ok: at most one leader per term held throughout. */
export interface ElectionSimResult extends SimRunReport {
  /**
   * The violations between two claims made with the same roster: none can be, whatever the rosters learnt (two
   * majorities of one list share a voter, who voted once in the term). The breaks left (hunt 164) are all
   * between rosters that grew apart.
   */
  readonly sameRosterViolations: readonly string[];
  /**
   * founding 'upgrade': two leaders of one term both elected by learnt rosters before the upgrade (the learnt mode's
   * known breaks: not counted as violations there, the upgrade's own are); 'autoUpgrade': two of which one at least
   * was elected by a learnt roster (a peer keeps it until a stamped list reaches it).
   */
  readonly learntModeBreaks: readonly string[];
  /**
   * Violations between a claim made by a learnt roster and one made with admitted voters (founding 'upgrade': the
   * founder leads a term a learnt-era leader used, which it never heard), saying whether that leader still led then.
   */
  readonly crossModeBreaks: readonly string[];
  readonly stats: {
    readonly peerCount: number;
    readonly crashes: number;
    readonly kills: number;
    readonly partitions: number;
    readonly forgetPeers: number;
    readonly maxTerm: number;
    /**
     * Live peers at the end that never met one of their bootstrap peers (ElectionDurable.meshMet false): they
     * neither run nor vote, by design (hunt 164), e.g. when their bootstrap peer was killed before they learnt it.
     */
    readonly peersNotMetTheMesh: number;
    /** Live peers at the end that count votes by admitted voters (hold a list): all of them once a leader stamped one. */
    readonly peersHoldingVoters: number;
    readonly livePeers: number;
    /**
     * The live peers could elect after the heal: they are connected, and votersMajorityAlive (with the learnt
     * roster counting: each sees a majority of its roster alive, and all met the mesh); when the newest list is a
     * founder's that no leader stamped, a majority of the roster it founded with is not killed too.
     */
    readonly leaderExpected: boolean;
    /**
     * The newest admitted voters among the live peers (hunt 168) have a strict majority not killed: without it
     * no rule can elect safely (a voter killed is a voter cut off, for all the others know).
     */
    readonly votersMajorityAlive: boolean;
    /** Simulated ms from the final heal to one leader followed by all live peers; null when never. */
    readonly settledAfterHealMs: number | null;
  };
}

const tickMs = 50;
const traceLinesMax = 80;

/** The mesh simulation's timings (simulation.ts), and the actor's start-up waits scaled like them. */
const timings = {
  ...simTimings,
  // Wired: settleMs 2 s and aloneJoinWaitMs 15 s against deadAfterMs 3 s.
  settleMs: 1000,
  aloneJoinWaitMs: 7000,
  rosterForgetAfterMs: 24 * 3600_000,
};

export function runElectionSimulation(options: ElectionSimOptions): ElectionSimResult {
  const root = new Prng(options.seed);
  const faultPrng = root.fork();
  const netPrng = root.fork();
  const rates: ElectionSimFaults = { ...defaultElectionSimFaults, ...options.faults };
  const peerCount = options.peerCount ?? 3 + root.nextInt(4);
  const faultPhaseMs = options.faultPhaseMs ?? 30_000;
  const settleMaxMs = options.settleMaxMs ?? 30_000;
  const network = new SimNetwork<Payload>(netPrng, 20_000);
  network.faults = {
    dropProbability: faultPrng.nextUnit() * rates.dropMax,
    duplicateProbability: faultPrng.nextUnit() * rates.duplicateMax,
    delayMinMs: 1,
    delayMaxMs: 5 + faultPrng.nextInt(200),
  };

  const founding = options.founding ?? 'firstPeer';
  const initialMode = (first: boolean): VotersMode => {
    switch (founding) {
      case 'firstPeer':
        return { votersThroughLeader: options.votersThroughLeader ?? true };
      case 'operator':
        return { votersThroughLeader: true, foundsVoters: first };
      case 'upgrade':
      case 'autoUpgrade':
        return { votersThroughLeader: false };
      default:
        return assertNever(founding);
    }
  };
  // Drawn from a prng of its own, so that the other modes run as before for one seed.
  const upgradePrng = root.fork();
  const upgradeStartMs = upgradePrng.between(Math.floor(faultPhaseMs * 0.1), Math.floor(faultPhaseMs * 0.5));
  const founderUpgradeAtMs = upgradeStartMs + 3000 + upgradePrng.between(200, 3000);
  const peers: Peer[] = [];
  for (let i = 0; i < peerCount; i += 1) {
    // The first peer starts the mesh; the others start with it or join during the fault phase.
    const joinAtMs = i === 0 || faultPrng.chance(0.4) ? 0 : faultPrng.between(0, Math.floor(faultPhaseMs * 0.7));
    const peerId = `peer-${String.fromCharCode(97 + i)}`;
    peers.push({
      peerId,
      priority: faultPrng.nextInt(3),
      joinAtMs,
      joinsMesh: i > 0 || founding === 'operator',
      votersMode: initialMode(i === 0),
      upgradeAtMs: founding !== 'upgrade' && founding !== 'autoUpgrade' ? Number.POSITIVE_INFINITY : i === 0 ? founderUpgradeAtMs : upgradeStartMs + upgradePrng.between(0, 3000),
      durable: { incarnation: 0, election: null, roster: new Map(), knownPeers: new Set() },
      live: null,
      restartAtMs: Number.POSITIVE_INFINITY,
      killed: false,
    });
  }
  const byId = new Map(peers.map((p) => [p.peerId, p]));
  // Each joiner knows one peer that joined no later than it (the one it was told with --bootstrap).
  for (const p of peers) {
    if (!p.joinsMesh) continue;
    const earlier = peers.filter((o) => o !== p && (o.joinAtMs < p.joinAtMs || (o.joinAtMs === p.joinAtMs && o.peerId < p.peerId)));
    if (earlier.length === 0) continue;
    p.bootstrapPeerId = faultPrng.pick(earlier).peerId;
    p.durable.knownPeers.add(p.bootstrapPeerId);
  }
  const founder = peers[0] as Peer;
  if (founding === 'operator' && peers.length > 1) {
    // The same --bootstrap list at every site: the founder's names another site, which may not be up yet.
    founder.bootstrapPeerId = upgradePrng.pick(peers.slice(1)).peerId;
    founder.durable.knownPeers.add(founder.bootstrapPeerId);
  }

  const sameRosterViolations: string[] = [];
  let nowMs = 0;
  const record = createRunRecord(traceLinesMax, () => nowMs);
  const { violations, log, violate } = record;
  const claimsByTerm = new Map<number, { readonly peerId: string; readonly roster: readonly string[]; readonly byList: boolean }>();
  const learntModeBreaks: string[] = [];
  const crossModeBreaks: string[] = [];
  let crashes = 0;
  let kills = 0;
  let partitions = 0;
  let forgetPeers = 0;
  let maxTerm = 0;
  const forgotten = new Set<string>();

  /** A connection between two live peers: one of them dials the other, and no partition cuts it. */
  const linked = (a: Peer, b: Peer): boolean =>
    a !== b && a.live !== null && b.live !== null && network.connected(a.peerId, b.peerId) && (a.durable.knownPeers.has(b.peerId) || b.durable.knownPeers.has(a.peerId));

  /** The live peers gossip from `from` reaches: its component of the connection graph. */
  const reachable = (from: Peer): Peer[] => {
    const seen = new Set<Peer>([from]);
    const queue = [from];
    for (let p = queue.shift(); p !== undefined; p = queue.shift()) {
      for (const q of peers) {
        if (!seen.has(q) && linked(p, q)) {
          seen.add(q);
          queue.push(q);
        }
      }
    }
    seen.delete(from);
    return [...seen];
  };

  const broadcast = (from: Peer, payload: Payload): void => {
    for (const to of reachable(from)) network.send(from.peerId, to.peerId, payload, nowMs);
  };

  /** As the actor's updateRoster and withRoster: the roster learnt from the view is on disk before the reducer counts with it. */
  const withLearntRoster = (peer: Peer, live: Live, members: readonly MemberRecord[]): void => {
    const update = learnRoster(peer.durable.roster, members, peer.peerId, nowMs, options.rosterForgetAfterMs ?? timings.rosterForgetAfterMs);
    for (const m of update.learnt) log(`${peer.peerId} roster learns ${m.peerId}`);
    setRoster(peer, live, update.peers);
  };

  const setRoster = (peer: Peer, live: Live, roster: RosterPeers): void => {
    peer.durable.roster = roster;
    const ids = [...roster.keys()].sort();
    const old = live.balancer.config.rosterPeerIds;
    if (old.length === ids.length && old.every((x, i) => x === ids[i])) return;
    live.balancer = { ...live.balancer, config: { ...live.balancer.config, rosterPeerIds: ids } };
  };

  type Work = { readonly to: 'membership'; readonly input: MembershipInput } | { readonly to: 'balancer'; readonly input: BalancerInput };

  const run = (peer: Peer, initial: Work[]): void => {
    const queue = [...initial];
    for (let guard = 0; queue.length > 0; guard += 1) {
      if (guard > 10_000) throw new Error('effect loop did not settle');
      const live = peer.live;
      if (live === null) return;
      const work = queue.shift() as Work;
      if (work.to === 'membership') {
        const step = stepMembership(live.membership, work.input);
        live.membership = step.state;
        for (const e of step.effects) onMembershipEffect(peer, e, queue);
        continue;
      }
      if (work.input.type === 'viewChanged') withLearntRoster(peer, live, work.input.members);
      // Whether a claim of this step was counted by a list (a leader elected by its learnt roster stamps one as it wins).
      const byList = live.balancer.durable.voters !== undefined;
      const step = stepBalancer(live.balancer, work.input);
      live.balancer = step.state;
      for (const e of step.effects) onBalancerEffect(peer, e, byList);
    }
  };

  const onMembershipEffect = (peer: Peer, e: MembershipEffect, queue: Work[]): void => {
    switch (e.type) {
      case 'publish':
        broadcast(peer, { kind: 'heartbeat', heartbeat: e.message });
        return;
      case 'viewChanged':
        // The node dials every peer it has seen alive (its known peers, kept across restarts).
        for (const m of e.members) if (m.status === 'alive' && m.peerId !== peer.peerId) peer.durable.knownPeers.add(m.peerId);
        queue.push({ to: 'balancer', input: { type: 'viewChanged', members: e.members, nowMs } });
        return;
      case 'dropConnections':
        network.dropBetween(peer.peerId, e.peerId);
        return;
      case 'memberStatusChanged':
        log(`${peer.peerId} sees ${e.peerId}#${e.incarnation} ${e.from} -> ${e.to}`);
        return;
      case 'memberSiteRenamed':
      case 'siteConflictsChanged':
      case 'siteNameTaken':
      case 'selfStalled':
        return;
      default:
        assertNever(e);
    }
  };

  const onBalancerEffect = (peer: Peer, e: BalancerEffect, byList: boolean): void => {
    switch (e.type) {
      case 'persist':
        peer.durable.election = e.value;
        maxTerm = Math.max(maxTerm, e.value.currentTerm);
        return;
      case 'send': {
        const to = byId.get(e.to);
        if (to !== undefined && linked(peer, to)) network.send(peer.peerId, to.peerId, { kind: 'balancer', message: e.message }, nowMs);
        return;
      }
      case 'publish':
        broadcast(peer, { kind: 'balancer', message: e.message });
        return;
      case 'claimedLeadership': {
        // The list its majority was counted in: the admitted voters (hunt 168).
        const balancer = peer.live?.balancer;
        const roster = balancer?.durable.voters?.peers ?? balancer?.config.rosterPeerIds ?? [];
        const version = balancer?.durable.voters === undefined ? '' : ` v${balancer.durable.voters.term}.${balancer.durable.voters.seq}`;
        log(`${peer.peerId} claims leadership of term ${e.term} (roster ${roster.join(',')}${version})`);
        const previous = claimsByTerm.get(e.term);
        if (previous !== undefined && previous.peerId !== peer.peerId) {
          // Rosters that share no peer are two meshes that never met (a joiner that never reached the mesh).
          const met = previous.roster.some((id) => roster.includes(id));
          const what = `${previous.peerId} {${previous.roster.join(',')}} and ${peer.peerId} {${roster.join(',')}} both claimed term ${e.term}${met ? '' : ' (rosters disjoint)'}`;
          if (previous.roster.length === roster.length && previous.roster.every((id, i) => id === roster[i])) sameRosterViolations.push(what);
          const before = byId.get(previous.peerId)?.live?.balancer;
          const stillLeads = before?.role === 'leader' && before.durable.currentTerm === e.term;
          if (previous.byList !== byList) crossModeBreaks.push(`t=${nowMs}ms ${what}: ${previous.peerId} ${stillLeads ? 'still leads it' : 'no longer leads it'}`);
          if (founding === 'upgrade' && !previous.byList && !byList) learntModeBreaks.push(`t=${nowMs}ms ${what} (learnt rosters, before the upgrade)`);
          // Upgraded on the defaults, a peer keeps its learnt roster until a stamped list reaches it: its faults too.
          else if (founding === 'autoUpgrade' && (!previous.byList || !byList)) learntModeBreaks.push(`t=${nowMs}ms ${what} (a learnt roster, before its peer held a list)`);
          else violate(what);
        }
        claimsByTerm.set(e.term, { peerId: peer.peerId, roster, byList });
        return;
      }
      case 'leaderChanged':
      case 'routingTableChanged':
        return;
      default:
        assertNever(e);
    }
  };

  /** As the actor's initialize: the record and the roster from disk, a settle time, and a joiner alone waits longer. */
  const start = (peer: Peer): void => {
    peer.durable.incarnation += 1;
    const roster = rosterAtStart(peer.durable.roster, peer.peerId, nowMs);
    if (!roster.has(peer.peerId)) roster.set(peer.peerId, { seenAtMs: nowMs, site: null, dicom: null });
    peer.durable.roster = roster;
    const membership = initMembership({
      peerId: peer.peerId,
      siteName: `site-${peer.peerId.slice(5)}`,
      incarnation: peer.durable.incarnation,
      priority: peer.priority,
      addresses: { dicom: `${peer.peerId}:104`, http: `${peer.peerId}:8080`, aeTitle: 'PACSMESH' },
      heartbeatIntervalMs: timings.heartbeatIntervalMs,
      suspectAfterMs: timings.suspectAfterMs,
      deadAfterMs: timings.deadAfterMs,
      membersMax: timings.membersMax,
    });
    const config = { ...simBalancerConfig(peer.peerId, [...roster.keys()].sort()), ...peer.votersMode };
    const balancer = initBalancer(peer.bootstrapPeerId === undefined ? config : { ...config, bootstrapPeerIds: [peer.bootstrapPeerId] }, peer.durable.election);
    // As the actor: a list started now (founded, or a joiner's empty one) is durable before anything acts on it. Not
    // modelled before, a founder that crashed before its first write lost its founding and came back a joiner; once it
    // waited for the terms of its founding roster (logic.ts, heardTheMeshTerms), that left runs of 'upgrade' leaderless.
    if (balancer.durable.voters !== undefined && balancer.durable.voters !== peer.durable.election?.voters) peer.durable.election = balancer.durable;
    peer.live = {
      membership,
      balancer: {
        ...balancer,
        candidacyDeadlineMs: nowMs + timings.settleMs,
        ...(peer.joinsMesh && roster.size === 1 ? { aloneCandidacyNotBeforeMs: nowMs + timings.aloneJoinWaitMs } : {}),
      },
    };
    log(`${peer.peerId} starts, incarnation ${peer.durable.incarnation}, roster ${[...roster.keys()].join(',')}`);
    run(peer, [{ to: 'membership', input: { type: 'tick', nowMs } }]);
  };

  const stop = (peer: Peer, restartAtMs: number, why: string): void => {
    if (peer.live === null) return;
    const neighbours = peers.filter((q) => linked(peer, q));
    peer.live = null;
    peer.restartAtMs = restartAtMs;
    log(`${peer.peerId} ${why}`);
    // kill -9: the others' transports see the connection close at once.
    for (const q of neighbours) run(q, [{ to: 'membership', input: { type: 'peerDisconnected', peerId: peer.peerId, nowMs } }]);
  };

  /** POST /api/forget-peer at one live peer: taken out there and, over the forget-peer topic, wherever gossip reaches. */
  const forgetPeer = (at: Peer, peerId: string): void => {
    forgetPeers += 1;
    forgotten.add(peerId);
    log(`operator forgets ${peerId} at ${at.peerId}`);
    for (const p of [at, ...reachable(at)]) forgetAt(p, peerId);
  };

  const forgetAt = (p: Peer, peerId: string): void => {
    const live = p.live;
    if (live === null) return;
    const members = viewMembers(live.membership, nowMs);
    const up = new Set(members.filter((m) => m.status === 'alive' || m.status === 'suspect').map((m) => m.peerId));
    if (live.balancer.durable.voters === undefined) {
      // The learnt roster counting does what the actor does (a peer of its roster, then a viewChanged step): a
      // peersForgotten step instead hid 4 of the deployed rule's 58 breaks in seeds 1-5000.
      const { peers: roster, gone } = forgetRosterPeers(p.durable.roster, [peerId], up, p.peerId);
      if (gone.length === 0) return;
      setRoster(p, live, roster);
      run(p, [{ to: 'balancer', input: { type: 'viewChanged', members, nowMs } }]);
      return;
    }
    if (peerId === p.peerId || up.has(peerId)) return;
    setRoster(p, live, forgetRosterPeers(p.durable.roster, [peerId], up, p.peerId).peers);
    // Out of the voters too, though this peer never learnt it (admitted by a leader that had).
    run(p, [{ to: 'balancer', input: { type: 'peersForgotten', peerIds: [peerId], by: 'operator', nowMs } }]);
  };

  const deliverDue = (): void => {
    for (let e = network.nextDue(nowMs); e !== null; e = network.nextDue(nowMs)) {
      const to = byId.get(e.to);
      if (to === undefined || to.live === null) continue;
      const p = e.payload;
      if (p.kind === 'heartbeat') run(to, [{ to: 'membership', input: { type: 'heartbeatReceived', heartbeat: p.heartbeat, nowMs } }]);
      else run(to, [{ to: 'balancer', input: { type: 'messageReceived', from: e.from, message: p.message, nowMs } }]);
    }
  };

  const tickAll = (): void => {
    for (const p of peers) {
      if (p.live === null) continue;
      run(p, [
        { to: 'membership', input: { type: 'tick', nowMs } },
        { to: 'balancer', input: { type: 'tick', nowMs } },
      ]);
    }
  };

  /** founding 'upgrade': the operator restarts `peer` with --election-voters admitted (the founder --found-mesh yes); 'autoUpgrade': on the defaults. */
  const upgrade = (peer: Peer): void => {
    peer.upgradeAtMs = Number.POSITIVE_INFINITY;
    if (peer.killed) return;
    const founds = founding === 'upgrade' && peer === founder;
    peer.votersMode = founding === 'upgrade' ? { votersThroughLeader: true, foundsVoters: founds } : { votersThroughLeader: true };
    log(`operator upgrades ${peer.peerId}${founds ? ' (founds)' : ''}`);
    // Down (crashed, or not joined yet): its next start takes the options.
    if (peer.live !== null) stop(peer, nowMs + faultPrng.between(200, 1500), 'restarts for the upgrade');
  };

  const killsMax = Math.floor((peerCount - 1) / 2);
  let healAtMs = -1;
  for (; nowMs < faultPhaseMs && violations.length === 0; nowMs += tickMs) {
    for (const p of peers) if (nowMs >= p.upgradeAtMs) upgrade(p);
    for (const p of peers) {
      if (p.killed || p.live !== null) continue;
      if ((p.durable.incarnation === 0 && nowMs >= p.joinAtMs) || (p.durable.incarnation > 0 && nowMs >= p.restartAtMs)) start(p);
      // Its later starts without --found-mesh (the operator leaves it out of the usual command): the record keeps the list.
      if (p.live !== null && p.votersMode.foundsVoters === true && founding === 'upgrade') p.votersMode = { votersThroughLeader: true, foundsVoters: false };
    }
    if (healAtMs >= 0 && nowMs >= healAtMs) {
      network.heal();
      healAtMs = -1;
      log('partition heals');
    }
    const up = peers.filter((p) => p.live !== null);
    if (up.length > 1 && faultPrng.chance(rates.crashPerTick)) {
      crashes += 1;
      stop(faultPrng.pick(up), nowMs + faultPrng.between(300, 6000), 'crashes');
    }
    if (up.length > 1 && kills < killsMax && faultPrng.chance(rates.killPerTick)) {
      const victim = faultPrng.pick(up);
      if (victim !== founder || founder.upgradeAtMs === Number.POSITIVE_INFINITY) {
        kills += 1;
        victim.killed = true;
        stop(victim, Number.POSITIVE_INFINITY, 'is killed for good');
      }
    }
    for (const dead of peers.filter((p) => p.killed && !forgotten.has(p.peerId))) {
      const at = peers.filter((p) => p.live !== null);
      if (at.length > 0 && faultPrng.chance(rates.forgetPeerPerTick)) forgetPeer(faultPrng.pick(at), dead.peerId);
    }
    if (healAtMs < 0 && faultPrng.chance(rates.partitionPerTick)) {
      const groups = new Map<string, number>();
      for (const p of peers) groups.set(p.peerId, faultPrng.nextInt(2 + faultPrng.nextInt(2)));
      network.partition(groups);
      partitions += 1;
      healAtMs = nowMs + faultPrng.between(1000, 8000);
      log(`partition ${[...groups].map(([p, g]) => `${p}:${g}`).join(' ')}`);
    }
    deliverDue();
    tickAll();
  }

  // The final heal: no more faults; every peer not killed is started; at random the operator forgets the killed peers.
  const healMs = nowMs;
  network.heal();
  network.faults = { dropProbability: 0, duplicateProbability: 0, delayMinMs: 1, delayMaxMs: 20 };
  if (faultPrng.chance(0.5)) {
    for (const dead of peers.filter((p) => p.killed && !forgotten.has(p.peerId))) {
      const at = peers.find((p) => p.live !== null);
      if (at !== undefined) forgetPeer(at, dead.peerId);
    }
  }
  let settledAfterHealMs: number | null = null;
  for (; nowMs < healMs + settleMaxMs && violations.length === 0; nowMs += tickMs) {
    for (const p of peers) if (!p.killed && p.live === null) start(p);
    deliverDue();
    tickAll();
    if (settledAfterHealMs === null && oneLeaderFollowedByAll(peers)) settledAfterHealMs = nowMs - healMs;
    if (settledAfterHealMs !== null && nowMs - healMs >= settledAfterHealMs + 5000) break;
  }
  const alive = new Set(peers.filter((p) => !p.killed).map((p) => p.peerId));
  const livePeers = peers.filter((p) => p.live !== null);
  const connected = livePeers.length > 0 && reachable(livePeers[0] as Peer).length === livePeers.length - 1;
  const peersNotMetTheMesh = livePeers.filter((p) => p.live?.balancer.durable.meshMet === false).length;
  const peersHoldingVoters = livePeers.filter((p) => p.live?.balancer.durable.voters !== undefined).length;
  const newestVoters = livePeers
    .map((p) => p.live?.balancer.durable.voters)
    .reduce<Voters | undefined>((a, b) => (b !== undefined && (a === undefined || newerVoters(b, a)) ? b : a), undefined);
  const votersMajorityAlive = newestVoters !== undefined && newestVoters.peers.filter((id) => alive.has(id)).length * 2 > newestVoters.peers.length;
  // The newest list a founder's, not stamped yet: its first term needs the terms of a majority of its roster as it was
  // when it founded (logic.ts, heardTheMeshTerms). Those killed (not forgotten) may have led a term it never heard with
  // peers it never met (founding 'upgrade', seed 20908): no safe rule elects there, forget-peer ends it.
  const waitsFor = livePeers.map((p) => p.live?.balancer).find((b) => b !== undefined && b.durable.voters === newestVoters && founderWaitsForTermsOf(b) !== undefined);
  const foundingRoster = waitsFor === undefined ? [] : (founderWaitsForTermsOf(waitsFor) ?? []);
  const foundingMajorityAlive = foundingRoster.filter((id) => alive.has(id)).length * 2 > foundingRoster.length || foundingRoster.length === 0;
  // With the learnt roster counting (votersThroughLeader false): each sees a majority of its roster alive, and all met the mesh.
  const rosterMajorities = peersNotMetTheMesh === 0 && peers.every((p) => p.killed || [...p.durable.roster.keys()].filter((id) => alive.has(id)).length * 2 > p.durable.roster.size);
  const leaderExpected = connected && (newestVoters === undefined ? rosterMajorities : votersMajorityAlive && foundingMajorityAlive);
  const finalPeers = peers.map((p) => {
    const b = p.live?.balancer;
    const voters = b?.durable.voters === undefined ? '' : `, voters ${b.durable.voters.peers.join(',')} v${b.durable.voters.term}.${b.durable.voters.seq}`;
    const state = p.killed ? 'killed' : b === undefined ? 'down' : `${b.role} term ${b.durable.currentTerm} leader ${b.leaderId ?? '-'}${voters}`;
    return `${p.peerId} (joined ${p.joinAtMs} ms, bootstrap ${p.bootstrapPeerId ?? '-'}): ${state}, roster ${[...p.durable.roster.keys()].sort().join(',')}`;
  });
  return {
    seed: options.seed,
    ok: violations.length === 0,
    violations,
    sameRosterViolations,
    learntModeBreaks,
    crossModeBreaks,
    traceTail: record.traceTail(),
    finalPeers,
    stats: { peerCount, crashes, kills, partitions, forgetPeers, maxTerm, peersNotMetTheMesh, peersHoldingVoters, livePeers: livePeers.length, leaderExpected, votersMajorityAlive, settledAfterHealMs },
  };
}

function oneLeaderFollowedByAll(peers: readonly Peer[]): boolean {
  const live = peers.filter((p) => p.live !== null);
  const leaders = live.filter((p) => p.live?.balancer.role === 'leader');
  if (leaders.length !== 1) return false;
  const leader = leaders[0] as Peer;
  const term = leader.live?.balancer.durable.currentTerm;
  return live.every((p) => p.live?.balancer.leaderId === leader.peerId && p.live.balancer.durable.currentTerm === term);
}

function assertNever(value: never): never {
  throw new Error(`unhandled: ${JSON.stringify(value)}`);
}
