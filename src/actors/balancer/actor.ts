/**
 * The balancer actor: the nact wiring around the pure election + routing reducer in logic.ts.
 *
 * Transport of the reducer's messages:
 * - `send` (requestVote, vote, newerTerm) goes point to point as envelope frames on a stream kept per peer
 *   (`/pacs-mesh/election/2`, election-streams.ts; one stream per frame over `/pacs-mesh/election/1` to
 *   and from peers of earlier versions). The sender is the stream's authenticated remote peer (noise), so
 *   a vote cannot be forged by a third peer.
 * - `publish` (announce) goes over gossip `pacs-mesh/routing/1`; only an announcement signed by the
 *   leader it names is accepted.
 * - `persist` ({currentTerm, votedFor}) is written (in place, one of two slots, then fdatasync: see
 *   state-files.ts) BEFORE any later effect of the same step is performed, so no vote or claim leaves the
 *   peer before it is durable.
 *
 * The roster (whose strict majority elects a leader) is formed here, see docs/mesh-algorithms.md
 * ("The roster in a real deployment"): the `roster` option when given (pinned), otherwise self plus every
 * peer ever seen alive, persisted in `<dataDir>/balancer-roster.json` with its site and DICOM address,
 * replaced by a successor at that address, taken out once stopped for a copied --site, and forgotten after
 * `rosterForgetAfterMs` of absence counted while this peer sees a majority of its roster alive (the rules
 * are in roster.ts). A started (or restarted) balancer does not run for `settleMs`, so it
 * learns the view, the roster and the current term before it can split a vote.
 *
 * Bounds: one tick in flight, view changes coalesced to the latest, at most `mailboxMax` mesh messages
 * queued, election frames queued per peer as election-streams.ts bounds them (more are dropped: the
 * reducer retries on its own timers).
 */
import { join } from 'node:path';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import { writeFileDurably } from '../../durable-file.ts';
import type { GossipMessage, MeshNode } from '../../net/node.ts';
import type { MembershipService } from '../membership/actor.ts';
import type { MemberRecord } from '../membership/messages.ts';
import { createTicker, onTickingActorCrash } from '../runtime/ticker.ts';
import type { Clock } from '../runtime/clock.ts';
import { createRepeatLimiter, type Logger } from '../runtime/logger.ts';
import { actorSender, type CrashDecision, type Ref, spawnActor, stopActor } from '../runtime/nact.ts';
import { encodeRosterFile, forgetRosterPeers, learnRoster, rosterAtStart, rosterMajorityLack, type RosterMajorityLack, type RosterPeer, type RosterPeers, votersLeftByRosterChange } from './roster.ts';
import { BalancerError, loadRoster, openElectionRecord, ROSTER_FILE } from './state-files.ts';
import { alreadyRepublished, forgetsNotOutlived, forgetsToRepublish, isIncarnation, noteForgets, recentForgetLimits, type IncarnationSeen, type RecentForget } from './recent-forgets.ts';
import { isPeerId, parseVoters, parseVotersVersion } from './voters-codec.ts';
import { createElectionStreams, ELECTION_MAX_BYTES, type ElectionStreamLimits, type ElectionStreamStats, type FrameVerdict } from './election-streams.ts';
import { chooseTarget as chooseRoute, defaultRoutingLimits, initBalancer, isJoinersEmptyList, stepBalancer, withLiveLoad, type BalancerRole, type BalancerState } from './logic.ts';
import {
  forgetPeerTopic,
  rosterMissingMax,
  routingTopic,
  type BalancerEffect,
  type BalancerMessage,
  type ElectionDurable,
  type RoutingEntry,
  type RoutingLimits,
  type RoutingTable,
  type Voters,
} from './messages.ts';

export {
  ELECTION_MAX_BYTES,
  ELECTION_PROTOCOL,
  ELECTION_STREAM_PROTOCOL,
  electionMessageDeadlineMs,
  electionSendsPerPeerMax,
  type ElectionStreamLimits,
  type ElectionStreamStats,
} from './election-streams.ts';
/** An announcement carries the table: ~150 bytes per member, membersMax 256. */
export const ANNOUNCE_MAX_BYTES = 256 * 1024;
const ENTRIES_MAX = 1024;
const STRING_MAX_CHARS = 256;

export const balancerTimings = {
  tickIntervalMs: 100,
  /** Long enough for a vote round trip over one stream, short enough to retry fast after a denied vote. */
  voteTimeoutMs: 300,
  announceIntervalMs: 500,
  /** Four missed announcements. */
  leaderSilenceMaxMs: 2000,
  /** No candidacy in the first 2 s after a (re)start: time to hear heartbeats and the current term. */
  settleMs: 2000,
  /**
   * A peer started with --bootstrap that knows no other peer yet does not elect itself alone for this long
   * after its start, unless it learns a peer first: what a peer without a connection waits before it warns
   * that it serves alone (src/mesh.ts), far above a loaded machine's way to the first heartbeat.
   */
  aloneJoinWaitMs: 15_000,
  /**
   * Two seconds without an input: this process stood still, and settles again for settleMs (see
   * BalancerConfig.stallMinMs). Below membership's deadAfterMs (3 s), from which the others drop its
   * connections; above the event-loop lags of a loaded machine (with 1 s, in-process election tests failed
   * at load 13: every lag held a candidacy back 2 s).
   */
  stallMinMs: 2000,
  /**
   * A leader hands over to a better-ranked peer when it asks for votes, or after this long alive without
   * asking: above a returning peer's way from its first heartbeat to its first candidacy (its balancer
   * starting, ~1 s on a loaded machine, then settleMs), so that it hears the current term meanwhile.
   */
  handOverGraceMs: 6000,
  /** A roster peer absent this long, counted while a majority of the roster is seen alive, is forgotten (decommissioned, or replaced with a new PeerId). */
  rosterForgetAfterMs: 24 * 3600_000,
  /**
   * The most of the time between two roster updates that counts as absence (learnRoster): views come every
   * heartbeat (500 ms) while a majority is seen, so a minute spans a slow disk's writes but not a stall of hours.
   */
  rosterViewGapCountedMaxMs: 60_000,
  /** After a failed state write, how often the election record (and the roster) is written again to see if the disk takes it. */
  stateWriteProbeIntervalMs: 5000,
  /** No strict majority of the roster alive this long (past a restart of the others, a short cut) is worth a warning. */
  rosterMajorityWarnAfterMs: 60_000,
  /** How often that warning repeats while it lasts. */
  rosterMajorityWarnIntervalMs: 600_000,
} as const;

export { BalancerError, type BalancerErrorCode } from './state-files.ts';

/** The PeerIds named by --bootstrap addresses (after /p2p/; config.ts checked them); an address without one names none. */
export function bootstrapPeerIdsOf(addresses: readonly string[]): string[] {
  return addresses.flatMap((address) => {
    const parts = address.split('/');
    const at = parts.lastIndexOf('p2p');
    const peerId = at >= 0 ? parts[at + 1] : undefined;
    return peerId !== undefined && peerId !== '' ? [peerId] : [];
  });
}

export interface BalancerServiceInit {
  node: MeshNode;
  peerId: string;
  /** Holds the election record and the learnt roster. */
  dataDir: string;
  membership: MembershipService;
  clock: Clock;
  log: Logger;
  parent: Ref<any>;
  /** Pinned roster (e.g. a `--roster` flag): exactly these peers (plus self) vote; nothing is learnt. */
  roster?: readonly string[];
  rosterForgetAfterMs?: number;
  /** How often recent forget-peers are published again (recentForgetLimits.republishIntervalMs); tests shorten it. */
  forgetRepublishIntervalMs?: number;
  /**
   * Peers a forget-peer took out here (its roster written), or that it names and this roster does not hold (not up
   * nor back here since it was asked): the mesh drops their saved addresses. Only here: the forget's rules decide it.
   */
  onPeersForgotten?: (peerIds: readonly string[]) => void;
  settleMs?: number;
  /** Started with --bootstrap: joining a mesh, so a roster of itself alone waits aloneJoinWaitMs before it elects itself. */
  joinsMesh?: boolean;
  aloneJoinWaitMs?: number;
  /**
   * The PeerIds the --bootstrap addresses name (bootstrapPeerIdsOf): until one of them has been in the roster, this
   * peer neither runs nor votes (BalancerConfig.bootstrapPeerIds). Not with a pinned roster, whose voters are fixed.
   */
  bootstrapPeerIds?: readonly string[];
  tickIntervalMs?: number;
  voteTimeoutMs?: number;
  announceIntervalMs?: number;
  leaderSilenceMaxMs?: number;
  handOverGraceMs?: number;
  stateWriteProbeIntervalMs?: number;
  rosterMajorityWarnAfterMs?: number;
  routing?: RoutingLimits;
  /** Uniform draw in [0, 1) for chooseTarget. Default Math.random. */
  random?: () => number;
  mailboxMax?: number;
  /** One-message election streams in flight (to peers of an earlier version). Default 16. */
  sendsInFlightMax?: number;
  /** The kept election streams' bounds (election-streams.ts). */
  electionStreams?: Partial<ElectionStreamLimits>;
  /**
   * Admitted voters (BalancerConfig.votersThroughLeader, `--election-voters admitted`, the command's default): off when
   * absent here; on too, whatever this says, once the election record holds a list (the mode is persisted there). Not
   * with a pinned roster.
   */
  votersThroughLeader?: boolean;
  /** With votersThroughLeader, BalancerConfig.foundsVoters (`--found-mesh yes|no`; absent: auto, see bootstrapsElsewhere). */
  foundsVoters?: boolean;
  /** BalancerConfig.bootstrapsElsewhere: --bootstrap names another peer (an address without a PeerId included). */
  bootstrapsElsewhere?: boolean;
  /** Actor name under `parent`. Default 'balancer'. */
  name?: string;
  /** Writes the learnt roster's file durably. Default writeFileDurably; a test's twin holds or refuses writes. */
  writeRosterFile?: (path: string, text: string) => Promise<void>;
  onCrash?: (error: unknown) => CrashDecision | Promise<CrashDecision>;
}

export interface LeaderInfo {
  peerId: string;
  site: string;
  term: number;
}

/** One voter of the roster as /api/mesh shows it. */
export interface RosterMember {
  peerId: string;
  /** Where it was last seen; null when not recorded (rosters written by pacs-mesh before site names were kept). */
  site: string | null;
  dicom: string | null;
  /** ISO time it was last seen alive (this peer: now). */
  lastSeenAt: string;
  /** Alive or suspect in this peer's membership view. */
  up: boolean;
}

export type ForgetPeerOutcome = 'forgotten' | 'up' | 'unknown' | 'pinned' | 'self';

export interface BalancerService {
  /**
   * The sites the operator forgot (custody's tombstones marked byOperator; not those forgotten by silence): their
   * peers in the learnt roster that are not up leave it now and at every later view (see learnRoster); pinned: nothing.
   */
  setForgottenSites(siteNames: readonly string[]): void;
  /**
   * Takes one peer that is not up out of the learnt roster (a ghost: e.g. a site moved to another address
   * under a new PeerId). The outcome is decided on the roster as it is now; the write follows.
   */
  forgetPeer(peerId: string): ForgetPeerOutcome;
  leader(): LeaderInfo | null;
  table(): RoutingTable | null;
  /** Where the next new association should go: another peer's DICOM address, or here. */
  /** `tunnelsOpenTo`: associations this peer tunnelled to each peer that have not ended yet. */
  chooseTarget(localActiveAssociations?: number, tunnelsOpenTo?: ReadonlyMap<string, number>): { peerId: string; dicom: string } | 'local';
  /** The voters this peer counts a majority of. */
  roster(): string[];
  /** The voters with where they were last seen (learnt roster; pinned: PeerIds only). */
  rosterMembers(): RosterMember[];
  /** Role and term, for /api/mesh and tests. */
  /**
   * `waitsToMeetBootstrapPeers`: present (true) while this peer neither runs nor votes, having never met one of its
   * --bootstrap peers (BalancerConfig.bootstrapPeerIds), so that an operator sees why in /api/mesh.
   * `lacksRosterMajority`: present while this peer sees no strict majority of its roster alive (no leader can be
   * elected with it: see rosterMajorityLack), with the voters alive and counted.
   * `voters`: the admitted voters and their version (hunt 184), present while this peer keeps them.
   */
  status(): { role: BalancerRole; term: number; votedFor: string | null; waitsToMeetBootstrapPeers?: true; lacksRosterMajority?: { alive: number; voters: number }; voters?: Voters };
  /** The election streams' counts, for tests. */
  electionStreamStats(): ElectionStreamStats;
  crashForTest(reason?: string): void;
  stop(): Promise<void>;
}

type BalancerMsg =
  | { readonly type: 'tick' }
  | { readonly type: 'view' }
  /** The operator took these peers out (POST /api/forget-peer): they leave the learnt roster now, not after rosterForgetAfterMs. */
  | { readonly type: 'forgetPeers'; readonly forgets: readonly RecentForget[] }
  | { readonly type: 'mesh'; readonly from: string; readonly message: BalancerMessage }
  | { readonly type: 'crash'; readonly reason: string };

interface RosterState {
  readonly peers: RosterPeers;
  readonly persistedAtMs: number;
  /** Forget-peers asked here or applied here, republished for late peers (recent-forgets.ts); persisted with the roster. */
  readonly forgets: readonly RecentForget[];
}

interface ActorState {
  readonly balancer: BalancerState;
  readonly roster: RosterState;
}

/** Validates a decoded election or routing message; null for anything malformed. */
export function parseBalancerMessage(value: unknown): BalancerMessage | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  const id = isPeerId;
  const term = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (!term(v.term)) return null;
  switch (v.type) {
    case 'requestVote': {
      if (!id(v.candidateId)) return null;
      // Absent from candidates before hunt 159 (roster) and 168 (voters): judged as before (see logic.ts, rosterMissingFrom).
      const version = optional(v.voters, parseVotersVersion);
      if (version === null) return null;
      const voters = version === undefined ? {} : { voters: version };
      if (v.roster === undefined) return { type: 'requestVote', term: v.term, candidateId: v.candidateId, ...voters };
      if (!Array.isArray(v.roster) || v.roster.length > ENTRIES_MAX || !v.roster.every(id)) return null;
      return { type: 'requestVote', term: v.term, candidateId: v.candidateId, roster: v.roster as string[], ...voters };
    }
    case 'vote': {
      if (!id(v.voterId) || typeof v.granted !== 'boolean') return null;
      const listed = optional(v.voters, parseVoters);
      if (listed === null) return null;
      const voters = listed === undefined ? {} : { voters: listed };
      if (v.rosterMissing === undefined) return { type: 'vote', term: v.term, voterId: v.voterId, granted: v.granted, ...voters };
      if (!Array.isArray(v.rosterMissing) || v.rosterMissing.length > rosterMissingMax || !v.rosterMissing.every(id)) return null;
      return { type: 'vote', term: v.term, voterId: v.voterId, granted: v.granted, rosterMissing: v.rosterMissing as string[], ...voters };
    }
    case 'voters': {
      const voters = parseVoters(v.voters);
      return voters === null ? null : { type: 'voters', term: v.term, voters };
    }
    case 'votersHeld': {
      const voters = parseVotersVersion(v.voters);
      return !id(v.voterId) || voters === null ? null : { type: 'votersHeld', term: v.term, voterId: v.voterId, voters };
    }
    case 'newerTerm':
      return { type: 'newerTerm', term: v.term };
    case 'announce': {
      if (!id(v.leaderId)) return null;
      const t = v.table as Record<string, unknown> | null;
      if (typeof t !== 'object' || t === null || t.term !== v.term || t.leaderId !== v.leaderId) return null;
      if (!Array.isArray(t.entries) || t.entries.length > ENTRIES_MAX) return null;
      const entries: RoutingEntry[] = [];
      for (const raw of t.entries as unknown[]) {
        if (typeof raw !== 'object' || raw === null) return null;
        const e = raw as Record<string, unknown>;
        if (!id(e.peerId) || typeof e.siteName !== 'string' || e.siteName.length > STRING_MAX_CHARS) return null;
        if (typeof e.dicomAddress !== 'string' || e.dicomAddress.length > STRING_MAX_CHARS) return null;
        if (typeof e.aeTitle !== 'string' || e.aeTitle.length > STRING_MAX_CHARS) return null;
        if (typeof e.weight !== 'number' || !Number.isFinite(e.weight) || e.weight < 0 || typeof e.saturated !== 'boolean') return null;
        if (e.refilling !== undefined && typeof e.refilling !== 'boolean') return null;
        if (e.accessDigest !== undefined && (typeof e.accessDigest !== 'string' || e.accessDigest.length > STRING_MAX_CHARS)) return null;
        entries.push({
          peerId: e.peerId,
          siteName: e.siteName,
          dicomAddress: e.dicomAddress,
          aeTitle: e.aeTitle,
          accessDigest: e.accessDigest ?? '',
          weight: e.weight,
          saturated: e.saturated,
          refilling: e.refilling ?? false,
        });
      }
      // The leader's admitted voters (hunt 168), absent from leaders of earlier builds or without a list.
      const listed = optional(v.voters, parseVoters);
      const committed = (v.voters as { committed?: unknown } | undefined)?.committed;
      if (listed === null || (listed !== undefined && typeof committed !== 'boolean')) return null;
      const voters = listed === undefined ? {} : { voters: { ...listed, committed: committed as boolean } };
      return { type: 'announce', term: v.term, leaderId: v.leaderId, table: { term: v.term, leaderId: v.leaderId, entries }, ...voters };
    }
    default:
      return null;
  }
}

/** An optional field: undefined when absent, else what `parse` makes of it (null: malformed, and so is the message). */
function optional<T>(value: unknown, parse: (value: unknown) => T | null): T | null | undefined {
  return value === undefined ? undefined : parse(value);
}

/** The peer IDs of a forget-peer message (see forgetPeerTopic); null for anything malformed. */
export function parseForgetPeers(value: unknown): string[] | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  if (v.type !== 'forgetPeers' || !Array.isArray(v.peerIds) || v.peerIds.length === 0 || v.peerIds.length > recentForgetLimits.perMessageMax) return null;
  const peerIds = v.peerIds as unknown[];
  return peerIds.every((id): id is string => typeof id === 'string' && id.length > 0 && id.length <= STRING_MAX_CHARS) ? peerIds : null;
}

/**
 * A forget-peer message's forgets, on this peer's clock: `forgottenAtMs` (hunt 180, beside peerIds: earlier builds
 * ignore it) says when each was asked, and `sentAtMs` (hunt 182) when the message left, both on the sender's clock,
 * so each counts as asked that long (never less than 0) before `receivedAtMs`. Sites' wall clocks disagree by hours
 * at times: read as they were, a forget from a clock ahead was applied to a peer that had come back here since the
 * ask, and one from a clock 7 days behind was dropped at once. Without `sentAtMs` (hunt 180's build) a time is
 * taken as it is, at most `receivedAtMs`; without `forgottenAtMs` (an earlier build's message, or a length that
 * does not match) each counts as asked at `receivedAtMs`. Null for anything malformed.
 */
export function parseForgetMessage(value: unknown, receivedAtMs: number): RecentForget[] | null {
  const peerIds = parseForgetPeers(value);
  if (peerIds === null) return null;
  const v = value as Record<string, unknown>;
  const at = v.forgottenAtMs;
  const times = Array.isArray(at) && at.length === peerIds.length && at.every((t) => typeof t === 'number' && Number.isFinite(t)) ? (at as number[]) : null;
  const sentAtMs = typeof v.sentAtMs === 'number' && Number.isFinite(v.sentAtMs) ? v.sentAtMs : null;
  const onOwnClock = (t: number): number => (sentAtMs === null ? Math.min(t, receivedAtMs) : receivedAtMs - Math.max(0, sentAtMs - t));
  // `incarnations` (beside peerIds, null where none is named; earlier builds send none and ignore it): see RecentForget.
  const incarnations = Array.isArray(v.incarnations) && v.incarnations.length === peerIds.length ? (v.incarnations as unknown[]) : null;
  return peerIds.map((peerId, i) => {
    const incarnation = incarnations?.[i];
    return { peerId, atMs: times === null ? receivedAtMs : onOwnClock(times[i]!), ...(isIncarnation(incarnation) ? { incarnation } : {}) };
  });
}

/** A forget-peer message that earlier builds read as before (peerIds) and this one with its times (`sentAtMs`: see parseForgetMessage). */
export function encodeForgetMessage(forgets: readonly RecentForget[], sentAtMs: number): Uint8Array {
  return encodeEnvelope({ type: 'forgetPeers', peerIds: forgets.map((f) => f.peerId), forgottenAtMs: forgets.map((f) => f.atMs), incarnations: forgets.map((f) => f.incarnation ?? null), sentAtMs }, { maxBytes: ELECTION_MAX_BYTES });
}

/** The leader's site for the log line of a leader change: a PeerId alone meant looking it up in /api/mesh. */
export function leaderSiteField(leaderId: string | null, members: readonly Pick<MemberRecord, 'peerId' | 'siteName'>[]): { leaderSite?: string } {
  const site = leaderId === null ? undefined : members.find((m) => m.peerId === leaderId)?.siteName;
  return site === undefined ? {} : { leaderSite: site };
}

function withoutVoters(durable: ElectionDurable): ElectionDurable {
  const { voters: _dropped, ...rest } = durable;
  return rest;
}

/** The peer a message claims to come from, which must be the authenticated sender. */
function claimedSender(message: BalancerMessage): string | null {
  switch (message.type) {
    case 'requestVote':
      return message.candidateId;
    case 'vote':
    case 'votersHeld':
      return message.voterId;
    case 'announce':
      return message.leaderId;
    case 'newerTerm':
    case 'voters':
      return null;
    default: {
      const unreachable: never = message;
      return unreachable;
    }
  }
}

export async function startBalancer(init: BalancerServiceInit): Promise<BalancerService> {
  const { node, clock, log, membership } = init;
  const self = init.peerId;
  const tickIntervalMs = init.tickIntervalMs ?? balancerTimings.tickIntervalMs;
  const settleMs = init.settleMs ?? balancerTimings.settleMs;
  const forgetAfterMs = init.rosterForgetAfterMs ?? balancerTimings.rosterForgetAfterMs;
  const forgetRepublishIntervalMs = init.forgetRepublishIntervalMs ?? recentForgetLimits.republishIntervalMs;
  const stateWriteProbeIntervalMs = init.stateWriteProbeIntervalMs ?? balancerTimings.stateWriteProbeIntervalMs;
  const mailboxMax = init.mailboxMax ?? 256;
  const random = init.random ?? Math.random;
  const pinned = init.roster ? new Set([...init.roster, self]) : null;
  // Damaged state files stop the start here, with the file named, rather than crash the actor until its
  // restart budget is spent and leave the peer running without a balancer.
  const electionRecord = await openElectionRecord(init.dataDir);
  if (!pinned) await loadRoster(init.dataDir).catch(async (err: unknown) => {
    await electionRecord.close();
    throw err;
  });

  let current: ActorState | null = null;
  /**
   * The learnt roster as last read at a (re)start or written since, for /api/mesh: `current` is null until a fresh
   * balancer's first step has written the roster (a durable write, slow on a loaded disk), and after a state file
   * not written, and the status then listed no roster member at all (hunt 187's test, failed in CI).
   */
  let rosterShown: RosterPeers | null = null;
  const writeRosterFile = init.writeRosterFile ?? writeFileDurably;
  let stopped = false;
  let viewPending = false;
  /** Custody's forgotten sites (setForgottenSites): applied to the roster at every view. */
  let forgottenSites: ReadonlySet<string> = new Set();
  let queuedMesh = 0;
  let dropped = 0;
  let announceTooLarge = 0;
  /** Input another peer gets wrong (a bug, a newer version) repeats at every election or announce: one line per kind and sender each 10 s. */
  const badInput = createRepeatLimiter(log, 10_000);
  const rosterMajorityWarnAfterMs = init.rosterMajorityWarnAfterMs ?? balancerTimings.rosterMajorityWarnAfterMs;
  const majorityWarning = createRepeatLimiter(log, balancerTimings.rosterMajorityWarnIntervalMs, () => clock.nowMs());
  /** Since when this peer has seen no strict majority of its roster alive (null: it sees one), and whether it said so. */
  let majorityLack: { sinceMs: number; warned: boolean } | null = null;
  let leader: { peerId: string; term: number } | null = null;
  let table: RoutingTable | null = null;
  const ready = Promise.withResolvers<void>();

  const send = actorSender(() => ref, () => stopped, log, 'balancer');

  const ticker = createTicker(clock, () => send({ type: 'tick' }), () => stopped);

  const rosterIds = (roster: RosterState): string[] => [...roster.peers.keys()].sort();
  /**
   * When each peer of the view or roster (so bounded by them) last came back as this process sees it: alive after it
   * was seen dead in this run. A forget asked before that is of a peer that came back for real, and is not applied
   * (forgetsNotOutlived). A first sighting is no return: a restarted peer's view can show a dead peer alive from the
   * others' last records, and a peer seen alive until it died, later here than where the forget was asked, did not come back.
   */
  const cameUpAtMs = new Map<string, number>();
  const seenState = new Map<string, 'up' | 'dead'>();
  /** Each peer's highest incarnation heard here, and since when: a forget naming a lower one outlived by a return after it (forgetsNotOutlived). */
  const incarnationSeen = new Map<string, IncarnationSeen>();
  const noteComingsUp = (members: readonly MemberRecord[], roster: RosterState, nowMs: number): void => {
    const known = new Set(members.map((m) => m.peerId));
    for (const map of [cameUpAtMs, seenState, incarnationSeen]) for (const peerId of map.keys()) if (!known.has(peerId) && !roster.peers.has(peerId)) map.delete(peerId);
    for (const m of members) {
      if (m.incarnation > (incarnationSeen.get(m.peerId)?.incarnation ?? Number.NEGATIVE_INFINITY)) incarnationSeen.set(m.peerId, { incarnation: m.incarnation, sinceMs: nowMs });
      if (m.status === 'dead') seenState.set(m.peerId, 'dead');
      else if (m.status === 'alive') {
        if (seenState.get(m.peerId) === 'dead') cameUpAtMs.set(m.peerId, nowMs);
        seenState.set(m.peerId, 'up');
      }
    }
  };
  /** The forgets that may apply here (forgetsNotOutlived), with this peer's comings up, incarnations heard, and `roster`'s forgets and peers. */
  const notOutlived = (forgets: readonly RecentForget[], roster: RosterState | undefined): RecentForget[] =>
    forgetsNotOutlived(forgets, cameUpAtMs, incarnationSeen, roster === undefined ? undefined : { forgets: roster.forgets, rosterPeerIds: new Set(roster.peers.keys()) });
  /** Peers that may still be up (alive or suspect): never forgotten or replaced. */
  const upPeerIds = (): Set<string> => new Set(membership.members().filter((m) => m.status === 'alive' || m.status === 'suspect').map((m) => m.peerId));
  const lackOfMajority = (s: ActorState | null): RosterMajorityLack | null =>
    s === null ? null : rosterMajorityLack(s.balancer.durable.voters?.peers ?? s.balancer.config.rosterPeerIds, new Set(membership.liveMembers().map((m) => m.peerId)), self);

  /** Since when this peer has waited to be admitted with no leader to admit it (see watchAdmission); null while it need not. */
  let unadmittedLeaderless: { sinceMs: number; warned: boolean } | null = null;
  /**
   * A peer outside the admitted voters with no leader for a minute is told why and the way out, at most every 10 min:
   * a mesh nobody founded (the same --bootstrap list given to every site, or sites joined on the defaults to a mesh
   * of learnt rosters) never elects, and otherwise looks like a fault of the network.
   */
  const watchAdmission = (s: ActorState, nowMs: number): void => {
    const voters = s.balancer.durable.voters;
    if (voters === undefined || voters.peers.includes(self) || s.balancer.leaderId !== null) {
      if (unadmittedLeaderless?.warned === true) log.info('this peer no longer waits without a leader to be admitted to the voters', { leader: s.balancer.leaderId, admitted: voters?.peers.includes(self) === true });
      unadmittedLeaderless = null;
      return;
    }
    unadmittedLeaderless ??= { sinceMs: nowMs, warned: false };
    if (nowMs - unadmittedLeaderless.sinceMs < rosterMajorityWarnAfterMs) return;
    unadmittedLeaderless.warned = true;
    const founded = voters.peers.length > 0;
    majorityWarning.warn(
      'admission',
      founded
        ? 'this peer waits to be admitted to the election\'s voters, and no leader is heard: the voters it knows are down or cut off (a leader admits it once a majority of them is back)'
        : "this peer waits to be admitted to the election's voters, and no leader is heard: if no site founded this mesh's voters (every site started with --bootstrap naming another, or the mesh's sites run learnt rosters: a data directory from before admitted voters were the default, or --election-voters learnt), restart one site once with --found-mesh yes (docs/mesh-algorithms.md, \"Admitted voters\", founding); but if another site's /api/mesh lists voters (balancer.voters.peers), the mesh was founded and a majority of its voters is down or cut off: never found it again (a second mesh), bring them back or forget those gone for good at that site",
      { voters: voters.peers.length, waitingForMs: nowMs - unadmittedLeaderless.sinceMs },
    );
  };

  /**
   * Without a majority of its roster alive this peer neither elects nor forgets by absence (a mesh that lost half
   * its sites for good waits for the operator: custody's forgetting by silence leaves voters alone): told at most every 10 min, with the way
   * out, so that the operator does not take the leaderless mesh for a fault of the network.
   */
  const watchRosterMajority = (s: ActorState, nowMs: number): void => {
    const lack = lackOfMajority(s);
    if (lack === null) {
      if (majorityLack?.warned === true) log.info('a strict majority of the election roster is alive again: elections and forgetting resume', { voters: s.balancer.config.rosterPeerIds.length });
      majorityLack = null;
      return;
    }
    majorityLack ??= { sinceMs: nowMs, warned: false };
    if (nowMs - majorityLack.sinceMs < rosterMajorityWarnAfterMs) return;
    majorityLack.warned = true;
    const absent = lack.absent.slice(0, 16).map((peerId) => ({ peer: peerId, memberSite: s.roster.peers.get(peerId)?.site ?? null }));
    const wayOut = pinned
      ? 'the pinned --roster changes only by restarting with another one'
      : 'take the voters gone for good (sites decommissioned, or lost with their disks) out at any one peer: POST /api/forget-site?site=NAME, or /api/forget-peer?peer=PEERID; never voters merely cut off, which would then elect on their side too';
    majorityWarning.warn('rosterMajority', `no strict majority of this peer's election roster is alive: it cannot be elected, withholds its votes and forgets no voter by absence until one is (nor with custody's forgetting of a site silent 7 days; without a leader each site serves its own associations); ${wayOut}`, { alive: lack.alive, voters: lack.voters, absent, lackingForMs: nowMs - majorityLack.sinceMs });
  };

  // False from a failed state write until one succeeds: the heartbeat says so, and the others elect
  // among themselves instead of waiting for a best-ranked peer that cannot record its candidacy.
  let electable = true;
  /**
   * The files whose last write failed: electable again only once none is left. A roster written while the
   * record is refused (at every reload) made the peer electable for a moment each time, and the record
   * written on a full disk (in place) while the roster is refused did the same.
   */
  const filesNotWritten = new Set<'election' | 'roster'>();
  let stateWriteFailedAtMs = 0;
  let stateWriteFailures = 0;

  /** Writes the election record; a failure (a disk refusing writes) is ERR_BALANCER_STATE_WRITE, which `handle` answers by reloading. */
  const writeElection = async (durable: ElectionDurable): Promise<void> => {
    try {
      await electionRecord.write(durable);
    } catch (err) {
      filesNotWritten.add('election');
      throw err;
    }
    wroteState('election');
  };
  /** Writes the learnt roster, with the same failure as writeElection. */
  const writeRoster = async (peers: RosterPeers, forgets: readonly RecentForget[]): Promise<void> => {
    try {
      await writeRosterFile(join(init.dataDir, ROSTER_FILE), `${encodeRosterFile(peers, forgets)}\n`);
    } catch (err) {
      filesNotWritten.add('roster');
      throw new BalancerError('ERR_BALANCER_STATE_WRITE', `cannot write ${ROSTER_FILE}: ${(err as Error).message}`, { cause: err });
    }
    wroteState('roster');
  };
  const wroteState = (file: 'election' | 'roster'): void => {
    filesNotWritten.delete(file);
    if (electable || filesNotWritten.size > 0) return;
    electable = true;
    membership.setElectable(true);
    log.info('balancer state written again: this peer votes and stands for election again', { failures: stateWriteFailures });
  };
  /** A state file not written (a full disk): logged at the first failure and every 20th after it. */
  const noteStateWriteFailure = (err: unknown): void => {
    if (!(err instanceof BalancerError && err.code === 'ERR_BALANCER_STATE_WRITE')) throw err;
    // A write cut short by stop() (the record closed) says nothing about the disk.
    if (stopped) return;
    stateWriteFailedAtMs = clock.nowMs();
    if (electable) {
      electable = false;
      membership.setElectable(false);
    }
    if (stateWriteFailures++ % 20 === 0) {
      log.warn('balancer state not written: this peer neither votes nor stands for election until it is', { error: err.message, failures: stateWriteFailures });
    }
  };
  /**
   * While not electable, nothing else may write (no candidacy; others may not ask for votes): try now and
   * then. Both files: on a full disk the election record, written in place, still takes writes while the
   * roster, written through a new file, does not (see filesNotWritten).
   */
  const probeStateWrite = async (s: ActorState): Promise<void> => {
    if (electable || clock.nowMs() - stateWriteFailedAtMs < stateWriteProbeIntervalMs) return;
    try {
      // The records as they are on disk: writing them again changes nothing but tells whether the disk takes them.
      if (!pinned) await writeRoster(s.roster.peers, s.roster.forgets);
      await writeElection(electionRecord.durable);
    } catch (err) {
      noteStateWriteFailure(err);
    }
  };

  /**
   * Learns peers seen alive, replaces their predecessors, forgets long-absent ones; persists before the reducer counts
   * with it. `ofForgottenSites`: the peers it took out because the operator forgot their site (none unless persisted).
   */
  const updateRoster = async (roster: RosterState, members: readonly MemberRecord[], nowMs: number): Promise<{ roster: RosterState; ofForgottenSites: string[] }> => {
    if (pinned) return { roster, ofForgottenSites: [] };
    const { peers, learnt, forgotten, replaced, ofLostSiteClaims, ofForgottenSites, detailsChanged } = learnRoster(roster.peers, members, self, nowMs, forgetAfterMs, forgottenSites, membership.siteClaimConfirmMs, balancerTimings.rosterViewGapCountedMaxMs);
    // Last-seen times only matter at the scale of rosterForgetAfterMs: refresh them once a minute.
    const changed = learnt.length > 0 || forgotten.length > 0 || replaced.length > 0 || ofLostSiteClaims.length > 0 || ofForgottenSites.length > 0 || detailsChanged;
    if (changed || nowMs - roster.persistedAtMs >= 60_000) {
      try {
        await writeRoster(peers, roster.forgets);
      } catch (err) {
        // The election counts only with a roster on disk: keep the old one (following a leader needs no
        // writes) and try again with the next view.
        noteStateWriteFailure(err);
        return { roster, ofForgottenSites: [] };
      }
      for (const m of learnt) log.info('roster learnt a peer', { peer: m.peerId, memberSite: m.siteName });
      for (const r of replaced) log.warn('roster replaced a peer by its successor (same site and DICOM address, new PeerId)', { peer: r.peer, by: r.by, memberSite: r.site, dicom: r.dicom });
      for (const f of forgotten) log.warn('roster forgot a long-absent peer', f);
      for (const f of ofForgottenSites) log.warn('roster forgot a peer of a forgotten site', { peer: f.peer, memberSite: f.site });
      for (const f of ofLostSiteClaims) log.warn('roster forgot a peer that stopped for a copied --site (its site name is held by a peer that started first)', { peer: f.peer, memberSite: f.site, heldBy: f.to });
      return { roster: { peers, persistedAtMs: nowMs, forgets: roster.forgets }, ofForgottenSites: ofForgottenSites.map((f) => f.peer) };
    }
    return { roster: { peers, persistedAtMs: roster.persistedAtMs, forgets: roster.forgets }, ofForgottenSites: [] };
  };

  /**
   * Drops peers that are not up, nor came up again here since the forget was asked, from the learnt roster, persisted
   * (with the forgets applied, to republish) before the reducer counts without them.
   */
  const forgetFromRoster = async (roster: RosterState, asked: readonly RecentForget[]): Promise<RosterState> => {
    if (pinned) return roster;
    const applicable = notOutlived(asked, roster);
    const { peers, gone } = forgetRosterPeers(roster.peers, applicable.map((f) => f.peerId), upPeerIds(), self);
    if (gone.length === 0) return roster;
    const nowMs = clock.nowMs();
    const forgets = noteForgets(roster.forgets, applicable.filter((f) => gone.includes(f.peerId)), nowMs);
    try {
      await writeRoster(peers, forgets);
    } catch (err) {
      noteStateWriteFailure(err);
      return roster;
    }
    log.warn('roster forgot peers on the operator\'s request', { peers: gone });
    init.onPeersForgotten?.(gone);
    return { peers, persistedAtMs: nowMs, forgets };
  };

  /**
   * The recent forgets again, once every republishInterval, for the peers that were down or cut off when they were
   * asked (or saw the peer up then): each applies them with the same rules. Old ones leave the list here.
   */
  let forgetsRepublishedAtMs = clock.nowMs();
  /** The PeerIds of forgets held here that another peer republished since this one last did (bounded by the forgets held). */
  const forgetsHeardFromOthers = new Set<string>();
  const republishForgets = (roster: RosterState, nowMs: number): RosterState => {
    if (pinned || nowMs - forgetsRepublishedAtMs < forgetRepublishIntervalMs) return roster;
    forgetsRepublishedAtMs = nowMs;
    for (const forgets of forgetsToRepublish(roster.forgets, new Set(roster.peers.keys()), nowMs, forgetsHeardFromOthers)) publishForgets(forgets);
    forgetsHeardFromOthers.clear();
    const kept = noteForgets(roster.forgets, [], nowMs);
    return kept.length === roster.forgets.length ? roster : { ...roster, forgets: kept };
  };
  const publishForgets = (forgets: readonly RecentForget[]): void => {
    let bytes: Uint8Array;
    try {
      bytes = encodeForgetMessage(forgets, clock.nowMs());
    } catch (err) {
      log.warn('forget-peer not passed on to the other peers: ask each of them', { peerIds: forgets.map((f) => f.peerId), error: (err as Error).message });
      return;
    }
    node.publish(forgetPeerTopic, bytes).catch((err: Error) => {
      log.warn('forget-peer not passed on to the other peers now: passed on again within a minute', { peerIds: forgets.map((f) => f.peerId), error: err.message });
    });
  };

  const withRoster = (b: BalancerState, roster: RosterState): BalancerState => {
    const ids = rosterIds(roster);
    const old = b.config.rosterPeerIds;
    if (old.length === ids.length && old.every((x, i) => x === ids[i])) return b;
    return { ...b, config: { ...b.config, rosterPeerIds: ids } };
  };

  let startedOnce = false;
  const initialize = async (): Promise<ActorState> => {
    const nowMs = clock.nowMs();
    // The record as last made durable: after a write that failed, what the disk holds may be newer, but it
    // was never acted on, and the page cache may hold a record that never reached the disk.
    // A pinned roster is a fixed list of voters of its own: an admitted list is not kept beside it.
    const durable = pinned ? withoutVoters(electionRecord.durable) : electionRecord.durable;
    const admitsVoters = !pinned && (init.votersThroughLeader === true || durable.voters !== undefined);
    const file = pinned ? null : await loadRoster(init.dataDir);
    const peers = file === null ? new Map([...pinned!].map((p) => [p, { seenAtMs: nowMs, site: null, dicom: null }] as const)) : rosterAtStart(file.peers, self, nowMs);
    if (!peers.has(self)) peers.set(self, { seenAtMs: nowMs, site: null, dicom: null });
    const roster: RosterState = { peers, persistedAtMs: 0, forgets: noteForgets(file?.forgets ?? [], [], nowMs) };
    const balancer = initBalancer(
      {
        selfPeerId: self,
        rosterPeerIds: rosterIds(roster),
        voteTimeoutMs: init.voteTimeoutMs ?? balancerTimings.voteTimeoutMs,
        announceIntervalMs: init.announceIntervalMs ?? balancerTimings.announceIntervalMs,
        leaderSilenceMaxMs: init.leaderSilenceMaxMs ?? balancerTimings.leaderSilenceMaxMs,
        handOverGraceMs: init.handOverGraceMs ?? balancerTimings.handOverGraceMs,
        stallMinMs: balancerTimings.stallMinMs,
        settleAfterStallMs: settleMs,
        ...(!pinned && (init.bootstrapPeerIds?.length ?? 0) > 0 ? { bootstrapPeerIds: init.bootstrapPeerIds } : {}),
        ...(admitsVoters ? { votersThroughLeader: true, ...(init.foundsVoters !== undefined ? { foundsVoters: init.foundsVoters } : {}), ...(init.bootstrapsElsewhere !== undefined ? { bootstrapsElsewhere: init.bootstrapsElsewhere } : {}) } : {}),
        routing: init.routing ?? defaultRoutingLimits,
      },
      durable,
    );
    // The reducer's own "no candidacy before" knob holds a fresh balancer back while the view settles.
    const settled: BalancerState = {
      ...balancer,
      candidacyDeadlineMs: nowMs + settleMs,
      ...(init.joinsMesh === true && roster.peers.size === 1 ? { aloneCandidacyNotBeforeMs: nowMs + (init.aloneJoinWaitMs ?? balancerTimings.aloneJoinWaitMs) } : {}),
    };
    leader = null;
    table = null;
    // A list started now (founded, or a joiner's empty one) is durable before anything acts on it: a founder killed
    // before its first candidacy lost its founding, and restarted without --found-mesh (as an operator's usual
    // command, or npm start once another site's record held a list) joined with an empty list: a mesh without a
    // founder, never a leader (the chaos test with admitted voters, seed 197043).
    if (settled.durable.voters !== undefined && settled.durable.voters !== durable.voters) {
      try {
        await writeElection(settled.durable);
      } catch (err) {
        noteStateWriteFailure(err);
      }
    }
    // Once: later loads follow a state file not written (logged by noteStateWriteFailure) or a restart (logged
    // by the supervisor), and on a full disk they came twice a second.
    if (!startedOnce) {
      const voters = settled.durable.voters;
      log.info('balancer started', { term: settled.durable.currentTerm, roster: settled.config.rosterPeerIds.length, pinned: pinned !== null, ...(admitsVoters ? { voters: voters?.peers.length ?? null } : {}) });
      if (admitsVoters && init.votersThroughLeader !== true) log.warn('the election record holds admitted voters: this peer keeps them, though started with --election-voters learnt', { voters: voters?.peers.length });
      // The learnt mode's known fault, said where an operator chose it (the default, admitted voters, does not have it).
      if (!admitsVoters && !pinned) log.warn('this peer counts votes by its learnt roster (--election-voters learnt): rosters can differ, and two leaders of one term remain possible; admitted voters, the default, close that (README, "Admitted voters and founding a mesh")', { roster: settled.config.rosterPeerIds.length });
      if (init.foundsVoters === true && durable.voters !== undefined && !isJoinersEmptyList(durable.voters)) log.warn('--found-mesh yes ignored: the election record already holds admitted voters', { voters: durable.voters.peers.length });
      if (voters !== undefined && !voters.peers.includes(self)) log.info('this peer neither runs nor votes in elections until the mesh\'s leader admits it to the voters', { voters: voters.peers.length });
    }
    // An operator wondering why this site neither leads nor votes finds it here (see BalancerConfig.bootstrapPeerIds).
    if (settled.durable.meshMet === false) log.info('this peer neither runs nor votes in elections until it has met one of its --bootstrap peers', { bootstrapPeerIds: settled.config.bootstrapPeerIds });
    startedOnce = true;
    rosterShown = roster.peers;
    ready.resolve();
    return { balancer: settled, roster };
  };

  // Created before the actor can send (perform), served once deliverElectionFrame's mailbox exists (start below).
  const electionStreams = createElectionStreams({
    node,
    selfPeerId: self,
    log,
    deliver: (from, frame) => deliverElectionFrame(from, frame),
    limits: { ...(init.sendsInFlightMax !== undefined ? { legacySendsInFlightMax: init.sendsInFlightMax } : {}), ...init.electionStreams },
  });

  /**
   * A request for votes whose roster does not fit in a frame (some 70 PeerIds: ELECTION_MAX_BYTES is what peers
   * of earlier versions accept) goes without it, judged as a request of an earlier version: a crash at every
   * candidacy would leave no leader at all.
   */
  let rosterTooLarge = 0;
  const encodeElectionMessage = (message: BalancerMessage): Uint8Array => {
    try {
      return encodeEnvelope(message, { maxBytes: ELECTION_MAX_BYTES });
    } catch (err) {
      if (message.type !== 'requestVote' || message.roster === undefined || (err as { code?: string }).code !== 'ERR_ENVELOPE_TOO_LARGE') throw err;
      if (rosterTooLarge++ % 100 === 0) log.warn('request for votes sent without its roster: too large for a frame', { roster: message.roster.length, failures: rosterTooLarge });
      const { roster: _dropped, ...withoutRoster } = message;
      return encodeEnvelope(withoutRoster, { maxBytes: ELECTION_MAX_BYTES });
    }
  };

  const perform = async (effects: readonly BalancerEffect[], state: ActorState): Promise<void> => {
    for (const effect of effects) {
      switch (effect.type) {
        case 'persist':
          // Awaited: the vote or candidacy that follows in `effects` must not leave before it is durable.
          await writeElection(effect.value);
          break;
        case 'send':
          electionStreams.send(effect.to, encodeElectionMessage(effect.message));
          break;
        case 'publish': {
          let bytes: Uint8Array;
          try {
            bytes = encodeEnvelope(effect.message, { maxBytes: ANNOUNCE_MAX_BYTES });
          } catch (err) {
            // A table the others would refuse (too many members, or members with long names): not announced,
            // and the followers serve locally, rather than a crash at every announcement that spent the
            // restart budget and stopped the peer, then the next leader (helper 97).
            if (announceTooLarge++ % 100 === 0) {
              log.error('routing announcement not sent: the table is too large to announce', { error: (err as Error).message, entries: effect.message.type === 'announce' ? effect.message.table.entries.length : 0, failures: announceTooLarge });
            }
            break;
          }
          node.publish(routingTopic, bytes).catch((err: Error) => {
            log.warn('routing announcement failed', { error: err.message });
          });
          break;
        }
        case 'leaderChanged':
          leader = effect.leaderId === null ? null : { peerId: effect.leaderId, term: effect.term };
          log.info('leader changed', { term: effect.term, leader: effect.leaderId, ...leaderSiteField(effect.leaderId, membership.members()) });
          break;
        case 'claimedLeadership':
          log.info('leadership claimed', { term: effect.term, roster: state.balancer.config.rosterPeerIds.length });
          break;
        case 'routingTableChanged':
          table = effect.table;
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(`unhandled balancer effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
  };

  const handle = async (state: ActorState | null, message: BalancerMsg): Promise<ActorState | null> => {
    if (message.type === 'tick') ticker.handled();
    if (message.type === 'view') viewPending = false;
    if (message.type === 'mesh') queuedMesh--;
    if (stopped) return state;
    if (message.type === 'crash') throw new BalancerError('ERR_BALANCER_CRASH_TEST', `balancer actor crashed on request: ${message.reason}`);
    let s = state;
    let fresh = false;
    if (s === null) {
      s = await initialize();
      fresh = true;
    }
    let next: ActorState | null;
    try {
      if (message.type === 'tick') await probeStateWrite(s);
      next = await stepAndPerform(s, message, fresh);
      if (message.type === 'tick') {
        watchRosterMajority(next, clock.nowMs());
        watchAdmission(next, clock.nowMs());
      }
    } catch (err) {
      noteStateWriteFailure(err);
      // The step's term or vote never reached the disk, and what it would have sent is not sent: start
      // again from the files on the next message, as a restart would, but without counting a crash (a
      // full disk would otherwise spend the restart budget at every election and stop the peer).
      current = null;
      leader = null;
      table = null;
      next = null;
    }
    if (message.type === 'tick') ticker.schedule(tickIntervalMs);
    return next;
  };

  /** One message through the reducer, then its effects in order. */
  const stepAndPerform = async (s: ActorState, message: Exclude<BalancerMsg, { type: 'crash' }>, fresh: boolean): Promise<ActorState> => {
    // A fresh balancer (a start, a restart, a state file not written) learns the view first: stepped with the
    // reducer's empty one, a request for votes found every candidate the rule's winner and was granted (helper 97).
    if (fresh && message.type === 'mesh') s = await stepAndPerform(s, { type: 'view' }, true);
    const nowMs = clock.nowMs();
    let roster = s.roster;
    let balancer = s.balancer;
    // Peers of sites the operator forgot, taken out of the roster at this step (updateRoster).
    let ofForgottenSites: readonly string[] = [];
    let step;
    if (message.type === 'mesh') {
      step = stepBalancer(balancer, { type: 'messageReceived', from: message.from, message: message.message, nowMs });
    } else if (message.type === 'forgetPeers') {
      roster = await forgetFromRoster(roster, message.forgets);
      balancer = withRoster(balancer, roster);
      step = stepBalancer(balancer, { type: 'viewChanged', members: membership.members(), nowMs });
    } else if (message.type === 'view' || fresh || message.type === 'tick') {
      // Ticks re-read the view too: membership emits viewChanged only on changes, and a fresh actor
      // (start or restart) has none yet.
      const members = membership.members();
      noteComingsUp(members, roster, nowMs);
      if (message.type === 'tick') roster = republishForgets(roster, nowMs);
      if (message.type !== 'tick' || fresh) {
        ({ roster, ofForgottenSites } = await updateRoster(roster, members, nowMs));
        balancer = withRoster(balancer, roster);
        step = stepBalancer(balancer, { type: 'viewChanged', members, nowMs });
      } else {
        step = stepBalancer(balancer, { type: 'tick', nowMs });
      }
    } else {
      const unreachable: never = message;
      throw new Error(`unhandled balancer message ${JSON.stringify(unreachable)}`);
    }
    // Peers the roster dropped leave the admitted voters: the operator's forget-peer and forget-site at once, the
    // others through the leader. A forgotten site's peers at once too: in a mesh left without a majority of its voters
    // (two sites, one decommissioned) no leader could take them out, and the forget-site its warning names did nothing.
    const voters = step.state.durable.voters?.peers;
    const operatorForgot = message.type === 'forgetPeers' && !pinned ? notOutlived(message.forgets, s.roster).map((f) => f.peerId) : [];
    const left = voters === undefined ? [] : votersLeftByRosterChange(s.roster.peers, roster.peers, voters, operatorForgot, upPeerIds(), self);
    const byOperator = message.type === 'forgetPeers' ? left : left.filter((peerId) => ofForgottenSites.includes(peerId));
    const byRoster = left.filter((peerId) => !byOperator.includes(peerId));
    for (const [peerIds, by] of [[byOperator, 'operator'], [byRoster, 'roster']] as const) {
      if (peerIds.length === 0) continue;
      const after = stepBalancer(step.state, { type: 'peersForgotten', peerIds, by, nowMs });
      step = { state: after.state, effects: [...step.effects, ...after.effects] };
    }
    const next: ActorState = { balancer: step.state, roster };
    current = next;
    rosterShown = roster.peers;
    await perform(step.effects, next);
    return next;
  };

  const ref: Ref<BalancerMsg> = spawnActor<ActorState | null, BalancerMsg>(init.parent, {
    name: init.name ?? 'balancer',
    initialState: null,
    handle,
    onCrash: async (error) => {
      const decision = await onTickingActorCrash(ticker, log, 'balancer', error, init.onCrash);
      if (decision === 'reset' || decision === 'stop' || decision === 'escalate') {
        // A restarted balancer follows nobody until it hears the leader again: serve locally meanwhile.
        leader = null;
        table = null;
      }
      // Stopped before it ever started: the start fails with the cause instead of waiting for ever.
      if (decision === 'stop' || decision === 'escalate') ready.reject(error);
      return decision;
    },
  });

  const enqueueMesh = (from: string, message: BalancerMessage): void => {
    if (queuedMesh >= mailboxMax) {
      if (dropped++ % 100 === 0) log.warn('balancer mailbox full, message dropped', { from, type: message.type, dropped });
      return;
    }
    queuedMesh++;
    send({ type: 'mesh', from, message });
  };

  /** An election frame from `from` (authenticated by the stream): parsed, checked against its sender, queued. */
  const deliverElectionFrame = (from: string, frame: Uint8Array): FrameVerdict => {
    let message: BalancerMessage | null = null;
    try {
      message = parseBalancerMessage(decodeEnvelope(frame, { maxBytes: ELECTION_MAX_BYTES }));
    } catch (err) {
      badInput.warn(`dropped malformed election message ${from}`, 'dropped malformed election message', { from, error: (err as Error).message });
      return 'malformed';
    }
    const claimed = message === null ? null : claimedSender(message);
    if (message === null || message.type === 'announce' || (claimed !== null && claimed !== from)) {
      badInput.warn(`dropped invalid election message ${from}`, 'dropped invalid election message', { from });
      return 'invalid';
    }
    enqueueMesh(from, message);
    return 'accepted';
  };
  await electionStreams.start();

  const unsubscribe = node.subscribe(routingTopic, (m: GossipMessage) => {
    let message: BalancerMessage | null;
    try {
      message = parseBalancerMessage(decodeEnvelope(m.data, { maxBytes: ANNOUNCE_MAX_BYTES }));
    } catch (err) {
      badInput.warn(`dropped malformed routing announcement ${m.from}`, 'dropped malformed routing announcement', { from: m.from, error: (err as Error).message });
      return;
    }
    // Only a leader speaks for itself on this topic; votes never travel by gossip.
    if (message === null || message.type !== 'announce' || m.from === undefined || message.leaderId !== m.from) {
      badInput.warn(`dropped invalid routing announcement ${m.from}`, 'dropped invalid routing announcement', { from: m.from });
      return;
    }
    enqueueMesh(m.from, message);
  });

  /**
   * Whether `peerId` may leave the roster here ('forgotten'), or why not: one rule for a forget asked here or at another peer.
   * An admitted voter the roster has dropped already counts as held: a site restored on an empty disk replaces its
   * lost identity in the roster at once, but not in the voters, and in a mesh of two sites no leader could take it out
   * (the warning of a missing majority names it; before, a forget of it was refused as unknown, and the mesh stayed
   * leaderless for good). votersLeftByRosterChange then takes it out of the voters.
   */
  const forgetOutcome = (peerId: string): ForgetPeerOutcome => {
    if (pinned) return 'pinned';
    if (peerId === self) return 'self';
    if (upPeerIds().has(peerId)) return 'up';
    if (!current?.roster.peers.has(peerId) && !current?.balancer.durable.voters?.peers.includes(peerId)) return 'unknown';
    return 'forgotten';
  };

  // A forget asked at another peer: taken here too, unless the peer is up as this peer sees it.
  const unsubscribeForget = node.subscribe(forgetPeerTopic, (m: GossipMessage) => {
    let forgets: RecentForget[] | null;
    try {
      forgets = parseForgetMessage(decodeEnvelope(m.data, { maxBytes: ELECTION_MAX_BYTES }), clock.nowMs());
    } catch {
      forgets = null;
    }
    if (forgets === null) {
      badInput.warn(`dropped invalid forget-peer message ${m.from}`, 'dropped invalid forget-peer message', { from: m.from });
      return;
    }
    for (const peerId of alreadyRepublished(current?.roster.forgets ?? [], forgets)) forgetsHeardFromOthers.add(peerId);
    // Republished every minute: only those that still change this roster are taken (and logged).
    const applicable = notOutlived(forgets, current?.roster);
    // Not in the roster: unknown too while the balancer reloads (no roster read), which says nothing.
    const notHeld = current === null ? [] : applicable.filter((f) => forgetOutcome(f.peerId) === 'unknown').map((f) => f.peerId);
    if (notHeld.length > 0) init.onPeersForgotten?.(notHeld);
    const forgotten = applicable.filter((f) => forgetOutcome(f.peerId) === 'forgotten');
    if (forgotten.length === 0) return;
    log.info('peers taken out of the election roster, as another peer was asked (POST /api/forget-peer)', { peerIds: forgotten.map((f) => f.peerId), from: m.from });
    send({ type: 'forgetPeers', forgets: forgotten });
  });

  const viewChanged = (): void => {
    electionStreams.viewChanged(membership.members());
    if (viewPending) return;
    viewPending = true;
    send({ type: 'view' });
  };
  membership.onViewChanged(viewChanged);
  electionStreams.viewChanged(membership.members());

  ticker.postNow();
  await ready.promise.catch(async (err: unknown) => {
    await electionStreams.stop();
    await electionRecord.close();
    throw err;
  });

  return {
    leader() {
      if (leader === null) return null;
      const peerId = leader.peerId;
      const site =
        membership.members().find((m) => m.peerId === peerId)?.siteName ?? table?.entries.find((e) => e.peerId === peerId)?.siteName ?? '';
      return { peerId, site, term: leader.term };
    },
    table: () => table,
    chooseTarget(localActiveAssociations, tunnelsOpenTo) {
      // The table's load figures lag by a heartbeat; this peer's own counts are live, so a burst of
      // connections at one front door spills over as soon as this peer, or the one it tunnels to, is really full.
      const limits = init.routing ?? defaultRoutingLimits;
      const live = table === null ? null : withLiveLoad(table, self, { localActiveAssociations, tunnelsOpenTo }, limits);
      const choice = chooseRoute(live, self, random());
      if (choice.peerId === self) return 'local';
      const entry = table?.entries.find((e) => e.peerId === choice.peerId);
      if (entry === undefined) return 'local';
      // The table lags membership by up to an announce interval: never send work to a peer we see gone.
      if (!membership.liveMembers().some((m) => m.peerId === choice.peerId)) return 'local';
      return { peerId: entry.peerId, dicom: entry.dicomAddress };
    },
    roster: () => (current ? [...current.balancer.config.rosterPeerIds] : rosterShown ? [...rosterShown.keys()].sort() : [self]),
    rosterMembers() {
      const up = upPeerIds();
      const peers = rosterShown ?? new Map<string, RosterPeer>();
      return [...peers].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([peerId, entry]) => ({
        peerId,
        site: entry.site,
        dicom: entry.dicom,
        lastSeenAt: new Date(peerId === self ? clock.nowMs() : entry.seenAtMs).toISOString(),
        up: peerId === self || up.has(peerId),
      }));
    },
    setForgottenSites(siteNames) {
      const next = new Set(siteNames);
      if (next.size === forgottenSites.size && [...next].every((site) => forgottenSites.has(site))) return;
      forgottenSites = next;
      viewChanged();
    },
    forgetPeer(peerId) {
      const outcome = forgetOutcome(peerId);
      if (outcome !== 'forgotten') return outcome;
      const incarnation = membership.members().find((m) => m.peerId === peerId)?.incarnation;
      const forget: RecentForget = { peerId, atMs: clock.nowMs(), ...(incarnation !== undefined ? { incarnation } : {}) };
      send({ type: 'forgetPeers', forgets: [forget] });
      // Every other alive peer drops it too (helper 64: only this one did, and the others' rosters still
      // counted the ghost: no majority once one more site went down); a peer down now learns it when it
      // returns, from republishForgets here or at any peer that applied it (hunt 180).
      publishForgets([forget]);
      return 'forgotten';
    },
    status() {
      const b = current?.balancer;
      const lack = lackOfMajority(current);
      return {
        role: b?.role ?? 'follower',
        term: b?.durable.currentTerm ?? 0,
        votedFor: b?.durable.votedFor ?? null,
        ...(b?.durable.meshMet === false ? { waitsToMeetBootstrapPeers: true as const } : {}),
        ...(lack === null ? {} : { lacksRosterMajority: { alive: lack.alive, voters: lack.voters } }),
        ...(b?.durable.voters === undefined ? {} : { voters: { peers: [...b.durable.voters.peers], term: b.durable.voters.term, seq: b.durable.voters.seq } }),
      };
    },
    electionStreamStats: () => electionStreams.stats(),
    crashForTest(reason = 'test') {
      send({ type: 'crash', reason });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      ticker.stop();
      unsubscribe();
      unsubscribeForget();
      await electionStreams.stop();
      leader = null;
      table = null;
      try {
        stopActor(ref);
      } catch {
        // already stopped by its supervisor
      }
      // Waits for a write in flight; a step still running after it finds the record closed and sends nothing.
      await electionRecord.close();
    },
  };
}
