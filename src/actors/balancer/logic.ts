/**
 * Balancer reducer: leader election over the membership view, and the leader's routing table.
 *
 * The rule: the leader should be the best-ranked alive member, rank = (priority, peerId), lowest wins,
 * among members that can record a vote (`electable`).
 * Every peer evaluates that rule on its own view; only a peer that sees itself as the winner runs.
 *
 * Why at most one leader per term (the invariant the simulation checks):
 *   1. A peer votes at most once per term: votedFor is persisted with currentTerm before the vote is sent,
 *      so not even a crash and restart lets it vote twice in one term.
 *   2. A candidate becomes leader of term t only with votes from a strict majority of the fixed roster
 *      (every peer of every configured site), counting its own.
 *   3. Two strict majorities of one list share at least one peer, and that peer voted for only one of them.
 * So two distinct leaders can never claim the same term, in one connected component or across components,
 * whatever their views. Views only decide who runs (liveness), never who may win twice (safety).
 * A majority of each candidate's own view would not do: two peers with disjoint stale views could
 * each gather a majority of what they see in the same term.
 * The price: a component without a roster majority elects nobody; its front doors serve locally.
 * With a learnt roster the lists differ between peers, and majorities of two lists need not meet: with
 * votersThroughLeader the list that counts is the admitted voters, which only a leader extends, one peer at a
 * time (see nextVotersChange), so the lists two candidates of one term can win with have intersecting majorities.
 *
 * Terms are monotonic: a peer adopts any higher term it hears (vote, request, announcement), persists it,
 * and ignores everything older, with one exception: a request for votes it would refuse anyway, while it
 * has a live leader (Raft's "disruptive servers" rule, Ongaro 4.2.3). Without it, a peer that hears
 * nothing from the leader while the others do (one direction of a link lost, a peer starved of CPU) ran
 * every vote timeout, each request raised the others' term, and the leader stepped down each time.
 * Ignoring a request is what a lost message does, so safety is untouched.
 * A leader steps down when a better-ranked peer is alive in its view or when it no longer sees a roster
 * majority; the next leader needs a new, higher term.
 *
 * The state is immutable: every step returns a new object.
 */
import type { MemberRecord } from '../membership/messages.ts';
import {
  rosterMissingMax,
  routingTopic,
  votersMax,
  type BalancerConfig,
  type BalancerEffect,
  type BalancerInput,
  type BalancerMessage,
  type ElectionDurable,
  type RoutingEntry,
  type RoutingLimits,
  type RoutingTable,
  type Voters,
  type VotersVersion,
} from './messages.ts';

export type BalancerRole = 'follower' | 'candidate' | 'leader';

export interface BalancerState {
  readonly config: BalancerConfig;
  readonly durable: ElectionDurable;
  readonly role: BalancerRole;
  /** The leader of durable.currentTerm as far as this peer knows; null when none. */
  readonly leaderId: string | null;
  readonly leaderHeardAtMs: number;
  /** Voters (self included) for this peer's candidacy in currentTerm. */
  readonly votesGranted: readonly string[];
  /** Candidate: when to give up this round. Follower: no new candidacy before this time. */
  readonly candidacyDeadlineMs: number;
  /** Candidacies in a row that ran out of time (none since this peer led or followed a leader): see candidacyTimeoutMs. */
  readonly candidaciesTimedOut: number;
  /** A voter answered this candidacy with a refusal: it ran out of time for want of votes, not for slow ones. */
  readonly candidacyRefused: boolean;
  /** The latest membership view, sorted by peerId. */
  readonly members: readonly MemberRecord[];
  /** The routing table this peer follows (its own when it leads). */
  readonly table: RoutingTable | null;
  readonly nextAnnounceAtMs: number;
  /** When the last input came (see BalancerConfig.stallMinMs); undefined before the first. */
  readonly lastInputAtMs?: number;
  /**
   * The leader this peer followed when it last stalled: no candidacy while its view has it suspect (see
   * afterStall and leaderAtStallSuspect). Undefined when none.
   */
  readonly leaderAtStall?: string;
  /**
   * A new peer told where the mesh is (--bootstrap) whose roster is itself alone: no candidacy before this time
   * while its roster has learnt no other peer. Undefined when none.
   */
  readonly aloneCandidacyNotBeforeMs?: number;
  /**
   * The latest request for votes this peer left unanswered for want of a roster majority in its view (see
   * onMessage): answered as soon as its view shows one, if still of its term. Undefined when none.
   */
  readonly withheldVoteRequest?: { readonly candidateId: string; readonly term: number; readonly roster?: readonly string[]; readonly voters?: VotersVersion };
  /**
   * After a stall, no request for votes is answered before this time (see afterStall): the view is the one from
   * before the stall. Undefined when none.
   */
  readonly votesNotAnsweredBeforeMs?: number;
  /**
   * Peers voters named in refusals as missing from this peer's roster (ghosts it never met: see
   * rosterMissingFrom): part of its candidacies' roster until it leads or follows a leader. Undefined when none.
   */
  readonly rosterTaught?: readonly string[];
  /** Without a leader: when this peer next sends its voters to the rule's winner (see pushVoters). Undefined: at once. */
  readonly votersPushAtMs?: number;
  /** Leader: the voters that hold its current ElectionDurable.voters (itself included). Undefined when none. */
  readonly votersHeldBy?: readonly string[];
  /**
   * Leader: peers outside its voters that said (votersHeld) they hold its list in its term, so run admitted mode; the
   * only ones it admits (hunt 186). At most votersMax; undefined when none.
   */
  readonly votersReady?: readonly string[];
  /**
   * A founder whose list no leader has stamped yet: the peers of its roster whose term it has heard since it started.
   * It leads only once they are a majority of its roster (see heardTheMeshTerms). Undefined when none.
   */
  readonly termsHeardFrom?: readonly string[];
  /**
   * A founder whose list no leader has stamped yet: its roster when it started (the peers it learnt before it founded,
   * or before this start), of which it must have heard a majority too (see heardTheMeshTerms). Undefined otherwise.
   */
  readonly foundingRoster?: readonly string[];
  /**
   * Without a list of its own (learnt rosters, or a record of an earlier version): peers that said (their voters,
   * pushed while they have no leader) they wait to be admitted, so neither run nor grant it a vote, and until when
   * that holds (a push comes every vote timeout). The rule passes them over: a site joined on the defaults (admitted
   * voters) to a mesh of learnt rosters was the rule's winner there, and nobody ran (the election simulation, founding
   * 'autoUpgrade', seed 17). At most awaitingAdmissionMax; undefined when none.
   */
  readonly awaitingAdmission?: readonly { readonly peerId: string; readonly untilMs: number }[];
}

export interface BalancerStep {
  readonly state: BalancerState;
  readonly effects: readonly BalancerEffect[];
}

export const defaultRoutingLimits: RoutingLimits = {
  associationsPerPeerMax: 32,
  custodyQueueMax: 1000,
  freeDiskBytesMin: 10 * 1024 ** 3,
  refillLagInstancesMin: 200,
};

/**
 * A restarted peer comes back as a follower of nobody, remembering only its term and vote (and whether it has
 * met the mesh). A first start with bootstrap PeerIds has not met it: no record, or the empty one (term 0, no
 * vote), which the record file reads on an empty data directory.
 */
export function initBalancer(config: BalancerConfig, durable: ElectionDurable | null): BalancerState {
  const record = durable ?? { currentTerm: 0, votedFor: null };
  const firstStart = record.meshMet === undefined && record.currentTerm === 0 && record.votedFor === null && record.voters === undefined;
  // Its own address in the list (the same --bootstrap list given to every site) names no peer to meet.
  const joins = firstStart && (config.bootstrapPeerIds ?? []).some((peerId) => peerId !== config.selfPeerId);
  const met = joins ? { ...record, meshMet: false } : record;
  // A joiner is no voter until the mesh's leader admits it and a first peer starts the mesh alone. A record of a
  // version before hunt 168 gets no list: its learnt roster counts, judged as before, until a leader stamps one
  // (see maybeWin); as lists of one version (0, 0), rosters that grew apart were granted without the roster check.
  const founds = config.foundsVoters ?? !(config.bootstrapsElsewhere ?? joins);
  const initialVoters: Voters = { peers: founds ? [config.selfPeerId] : [], term: 0, seq: 0 };
  // Told whether it founds (the actor: the operator's --found-mesh), any record without a list starts one, so that a
  // mesh upgrading from an earlier version is founded by one site as a new one is (hunt 184): its first leaders,
  // elected by learnt rosters, could otherwise stamp two lists of one version.
  const startsList = config.votersThroughLeader === true && record.voters === undefined && (firstStart || config.foundsVoters !== undefined);
  // A joiner that never heard a leader's list (still its empty one) told to found does: no leader ever counted it, so
  // this is a first founding; else a mesh whose sites all started as joiners (the same --bootstrap list everywhere)
  // could never be founded but on a new data directory (the warning at such a site says to restart one so).
  const foundsOverEmpty = config.votersThroughLeader === true && config.foundsVoters === true && record.voters !== undefined && isJoinersEmptyList(record.voters);
  const state: BalancerState = {
    config,
    durable: startsList || foundsOverEmpty ? { ...met, voters: initialVoters } : met,
    role: 'follower',
    leaderId: null,
    leaderHeardAtMs: 0,
    votesGranted: [],
    candidacyDeadlineMs: 0,
    candidaciesTimedOut: 0,
    candidacyRefused: false,
    members: [],
    table: null,
    nextAnnounceAtMs: 0,
  };
  return foundsUnstamped(state) ? { ...state, foundingRoster: config.rosterPeerIds } : state;
}

export function stepBalancer(before: BalancerState, input: BalancerInput): BalancerStep {
  const effects: BalancerEffect[] = [];
  const state = noteMeshMet(afterStall(before, input.nowMs), effects);
  let next: BalancerState;
  switch (input.type) {
    case 'tick':
      next = onTick(answerWithheldVoteRequest(state, input.nowMs, effects), input.nowMs, effects);
      break;
    case 'peersForgotten':
      // Out of the roster already: a leader takes a peer the roster forgot out of its voters at its next change (nextVotersChange).
      next = onTick(input.by === 'operator' ? withoutForgottenVoters(state, input.peerIds, effects) : withVotersLeaving(state, input.peerIds, effects), input.nowMs, effects);
      break;
    case 'viewChanged':
      next = onTick(answerWithheldVoteRequest({ ...state, members: input.members }, input.nowMs, effects), input.nowMs, effects);
      break;
    case 'messageReceived':
      next = onMessage(state, input.from, input.message, input.nowMs, effects);
      break;
    default:
      return assertNever(input);
  }
  return { state: noteMeshMet(next, effects), effects: oneWritePerStep(effects) };
}

/**
 * Whether this peer may run and vote as far as meeting the mesh goes: it has no bootstrap PeerIds, or has met
 * one of them (ElectionDurable.meshMet). A joiner whose bootstrap peer is down or cut off and that meets only
 * later joiners forms a group that shares no voter with the mesh: with the ordinary rules it elected there in
 * a term the mesh had used (term 1: 161 of the election simulation's 190 breaks over seeds 1-5000, hunt 164).
 * Its front door serves locally meanwhile, as any peer without a leader does.
 */
function hasMetTheMesh(s: BalancerState): boolean {
  return s.durable.meshMet !== false;
}

/**
 * A peer that has not met the mesh meets it when a bootstrap peer is in its roster (learnt from its view, or
 * kept from a former start), or when it follows a leader: a bootstrap address that answers under another PeerId
 * now (that site restored on an empty disk) never brings the PeerId named, and a leader heard is a mesh met.
 * A candidate whose roster holds a bootstrap peer has met it, and so has this peer through it: a bootstrap peer
 * killed before this peer learnt it, and no leader left, kept a majority from voting (the election simulation).
 * Persisted at once, so that a bootstrap peer forgotten later (decommissioned) does not undo it.
 */
function noteMeshMet(s: BalancerState, effects: BalancerEffect[], candidateRoster: readonly string[] = []): BalancerState {
  if (hasMetTheMesh(s)) return s;
  const roster = new Set([...s.config.rosterPeerIds, ...candidateRoster]);
  const bootstrapInRoster = (s.config.bootstrapPeerIds ?? []).some((peerId) => peerId !== s.config.selfPeerId && roster.has(peerId));
  const followsLeader = s.role === 'follower' && s.leaderId !== null;
  // Admitted to the voters (hunt 168): a leader of the mesh counted it, though it may never have heard that leader.
  const admitted = s.durable.voters?.peers.includes(s.config.selfPeerId) === true;
  if (!bootstrapInRoster && !followsLeader && !admitted) return s;
  const durable: ElectionDurable = { ...s.durable, meshMet: true };
  effects.push({ type: 'persist', key: 'election', value: durable });
  return { ...s, durable };
}

/**
 * A request for votes left unanswered while this peer saw no majority of its roster alive is answered once its
 * view shows one, as if it came now: the candidate asks again only at its vote timeout (up to 8x voteTimeoutMs,
 * 2.4 s wired), so a voter whose view came just after the request held the election up to that long.
 */
function answerWithheldVoteRequest(state: BalancerState, nowMs: number, effects: BalancerEffect[]): BalancerState {
  const request = state.withheldVoteRequest;
  if (request === undefined || !answersVoteRequests(state, nowMs)) return state;
  const s = withoutWithheldVoteRequest(state);
  if (request.term !== s.durable.currentTerm) return s;
  return onMessage(s, request.candidateId, { type: 'requestVote', ...request }, nowMs, effects);
}

function withoutWithheldVoteRequest(state: BalancerState): BalancerState {
  const { withheldVoteRequest: _dropped, ...s } = state;
  return s;
}

/**
 * Whether this peer answers a request for votes now: it sees a strict majority of its own roster alive (hunt
 * 156), in a view that is not the one from before a stall of its own. Right after a stall the view still has
 * the members of before it alive (membership credits the stall for a suspect time), though the others may have
 * dropped this peer and elected among themselves meanwhile: a voter resumed beside a candidate with a stale
 * roster granted it a majority of that roster at its first input (hunt 158).
 */
function answersVoteRequests(state: BalancerState, nowMs: number): boolean {
  return hasMetTheMesh(state) && seesRosterMajority(state) && nowMs >= (state.votesNotAnsweredBeforeMs ?? Number.NEGATIVE_INFINITY);
}

/**
 * Each persist writes the whole election record, so of two with nothing sent or published between them only
 * the later one need reach the disk: a voter adopting a candidate's term and granting it its vote wrote twice
 * before answering (each write 0.1-2.4 s at load 21-31, hunt 117), and the vote came after the timeout.
 */
function oneWritePerStep(effects: BalancerEffect[]): BalancerEffect[] {
  return effects.filter((e, i) => e.type !== 'persist' || !laterWriteBeforeAnythingLeaves(effects, i));
}

function laterWriteBeforeAnythingLeaves(effects: readonly BalancerEffect[], index: number): boolean {
  for (const e of effects.slice(index + 1)) {
    if (e.type === 'send' || e.type === 'publish') return false;
    if (e.type === 'persist') return true;
  }
  return false;
}

/**
 * Time this process stood still (see BalancerConfig.stallMinMs) is not its leader's silence, and its view
 * is being rebuilt as the others reconnect: the stall is credited to the leader's last-heard time, and no
 * candidacy starts for settleAfterStallMs, nor while the leader it followed is suspect (the others dropped
 * its connections while it stood still, so a suspect leader may well be alive: it is alive again once its
 * heartbeats come through, dead after membership's silence). Whatever input comes first after the stall
 * finds it.
 */
function afterStall(state: BalancerState, nowMs: number): BalancerState {
  const { stallMinMs, settleAfterStallMs } = state.config;
  const lastInputAtMs = state.lastInputAtMs;
  if (stallMinMs === undefined) return state;
  if (lastInputAtMs === undefined || nowMs - lastInputAtMs <= stallMinMs) return nowMs > (lastInputAtMs ?? Number.NEGATIVE_INFINITY) ? { ...state, lastInputAtMs: nowMs } : state;
  const stalledMs = nowMs - lastInputAtMs;
  return {
    ...state,
    lastInputAtMs: nowMs,
    leaderAtStall: state.role === 'follower' && state.leaderId !== null ? state.leaderId : undefined,
    leaderHeardAtMs: state.leaderHeardAtMs + stalledMs,
    candidacyDeadlineMs: Math.max(state.candidacyDeadlineMs, nowMs + (settleAfterStallMs ?? 0)),
    votesNotAnsweredBeforeMs: nowMs + (settleAfterStallMs ?? 0),
  };
}

/**
 * The leader followed at a stall is suspect in the view (see BalancerState.leaderAtStall). Kept while it is
 * alive (the view right after a stall has everyone alive, credited, before the disconnects come), forgotten
 * once it is dead or gone, or announces again.
 */
function leaderAtStallSuspect(state: BalancerState): boolean {
  return state.members.some((m) => m.peerId === state.leaderAtStall && m.status === 'suspect');
}

/**
 * The rule: best (priority, peerId) among alive, electable members of a view, or null for an empty view.
 * A peer that cannot record a vote (a full disk) is passed over: waiting for it would leave no leader.
 */
export function ruleWinner(members: readonly MemberRecord[]): MemberRecord | null {
  let best: MemberRecord | null = null;
  for (const m of members) {
    if (m.status !== 'alive' || !m.electable) continue;
    if (best === null || compareRank(m, best) < 0) best = m;
  }
  return best;
}

/**
 * A peer joining a mesh elects itself alone only once it has waited to meet it: with a roster of itself, its
 * candidacy wins in term 1, a term the mesh used (on a loaded machine a newcomer heard nobody in its 2 s settle
 * time and led term 1 beside the mesh's leader: the chaos test, seed 8). Not with admitted voters: a joiner holds no
 * vote until admitted, and the one voter of a list of itself is the mesh's founder, which waited 15 s for nobody.
 */
function waitsToMeetTheMesh(s: BalancerState, nowMs: number): boolean {
  return s.durable.voters === undefined && s.aloneCandidacyNotBeforeMs !== undefined && nowMs < s.aloneCandidacyNotBeforeMs && s.config.rosterPeerIds.length === 1;
}

/** At most this many taught peers (see BalancerState.rosterTaught): a frame carries a roster of at most some 70 PeerIds anyway. */
const rosterTaughtMax = 64;

export function majorityOf(roster: readonly string[]): number {
  return Math.floor(roster.length / 2) + 1;
}

function compareRank(a: { priority: number; peerId: string }, b: { priority: number; peerId: string }): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  return a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0;
}

/**
 * Whether a strict majority of the roster is alive in view; with `votersOnly`, alive and able to record a
 * vote (electable). A leader keeps its term while followers cannot vote; a candidate needs voters: with two
 * of three sites' disks full, the third ran for a new term every vote timeout (11 to 1,500 in minutes).
 */
function seesRosterMajority(state: BalancerState, votersOnly = false): boolean {
  const voters = voterIds(state);
  const roster = new Set(voters);
  let alive = 0;
  for (const m of state.members) if (m.status === 'alive' && roster.has(m.peerId) && (!votersOnly || m.electable)) alive += 1;
  return alive >= majorityOf(voters);
}

/** Whose votes count: the admitted voters (ElectionDurable.voters) when this peer keeps them, else its roster. */
function voterIds(state: BalancerState): readonly string[] {
  return state.durable.voters?.peers ?? state.config.rosterPeerIds;
}

/**
 * The rule's winner among the peers whose votes count: a peer not admitted yet can neither run nor be voted for
 * by a peer that waits for it, and the leader that would admit it must be elected meanwhile.
 */
function ruleWinnerOf(state: BalancerState): MemberRecord | null {
  const voters = state.durable.voters;
  if (voters === undefined) {
    const waiting = new Set((state.awaitingAdmission ?? []).map((w) => w.peerId));
    return ruleWinner(waiting.size === 0 ? state.members : state.members.filter((m) => !waiting.has(m.peerId)));
  }
  const admitted = new Set(voters.peers);
  return ruleWinner(state.members.filter((m) => admitted.has(m.peerId)));
}

function selfIsWinner(state: BalancerState): boolean {
  return ruleWinnerOf(state)?.peerId === state.config.selfPeerId;
}

/**
 * A leader keeps the lead while it is the rule's winner, and while the winner is a better-ranked peer alive in
 * its view for less than handOverGraceMs (this peer still able to record votes): that peer takes over by asking
 * for votes, which this leader grants. Quitting at the returning peer's first heartbeat left the mesh without a
 * leader for its start and settle time (2.9-8.7 s measured, helper 97), and with no announcement to learn the
 * term from while it settled, its first candidacy reused a term everyone had voted in, and was refused.
 */
function keepsLead(state: BalancerState, nowMs: number): boolean {
  const winner = ruleWinnerOf(state);
  if (winner === null) return false;
  if (winner.peerId === state.config.selfPeerId) return true;
  const self = state.members.find((m) => m.peerId === state.config.selfPeerId);
  if (self === undefined || self.status !== 'alive' || !self.electable) return false;
  return winner.status === 'alive' && nowMs - winner.statusSinceMs < (state.config.handOverGraceMs ?? 0);
}

function onTick(state: BalancerState, nowMs: number, effects: BalancerEffect[]): BalancerState {
  let s = expireAwaitingAdmission(state, nowMs);
  const self = s.config.selfPeerId;
  if (s.role === 'leader') {
    if (!keepsLead(s, nowMs) || !seesRosterMajority(s)) {
      // A better peer is back, or we lost the majority: hand over; the successor runs with a higher term.
      // Not sooner than a settle after a stall allows (see afterStall).
      s = { ...s, role: 'follower', leaderId: null, candidacyDeadlineMs: Math.max(s.candidacyDeadlineMs, nowMs) };
      effects.push({ type: 'leaderChanged', term: s.durable.currentTerm, leaderId: null });
      s = setTable(s, null, effects);
    } else {
      const changed = nextVotersChange(s, effects);
      if (changed !== s || nowMs >= s.nextAnnounceAtMs) return announce(changed, nowMs, effects);
      return s;
    }
  }
  if (s.role === 'follower' && s.leaderId !== null) {
    if (!leaderLooksAlive(s, nowMs)) {
      s = { ...s, leaderId: null };
      effects.push({ type: 'leaderChanged', term: s.durable.currentTerm, leaderId: null });
      s = setTable(s, null, effects);
    }
  }
  if (s.leaderAtStall !== undefined && !s.members.some((m) => m.peerId === s.leaderAtStall && m.status !== 'dead')) s = { ...s, leaderAtStall: undefined };
  s = pushVoters(s, nowMs, effects);
  if (s.role === 'candidate' && nowMs >= s.candidacyDeadlineMs) {
    if (!s.candidacyRefused && mayRun(s, nowMs)) {
      // Out of time with no refusal: the votes are late or lost, not denied. Ask again in this term (a voter
      // grants the candidate it voted for again, without a write), so that a late vote still counts; a new
      // term made every voter write again and this peer's own write held the late votes in its mailbox
      // (2-5 new terms per return of the best-ranked peer at load 21-31, hunt 117).
      s = { ...s, candidaciesTimedOut: s.candidaciesTimedOut + 1 };
      s = { ...s, candidacyDeadlineMs: nowMs + candidacyTimeoutMs(s) };
      askForVotes(s, effects);
      // Its voters may have shrunk meanwhile (peers forgotten) to a list whose majority it already holds.
      return maybeWin(s, nowMs, effects);
    }
    // Refused in time: the voters' views disagree for now (a dead leader not noticed yet), nothing is slow, and
    // waiting longer only delays the failover (2.3 s instead of ~1.5 s when a voter noticed after 1.5 s).
    s = { ...s, role: 'follower', votesGranted: [], candidaciesTimedOut: s.candidacyRefused ? s.candidaciesTimedOut : s.candidaciesTimedOut + 1 };
  }
  const wantsToRun = s.role === 'follower' && nowMs >= s.candidacyDeadlineMs && !waitsToMeetTheMesh(s, nowMs) && mayRun(s, nowMs);
  if (!wantsToRun) return s;
  // Run: a fresh term, our own vote persisted before anyone hears of the candidacy.
  const durable: ElectionDurable = { ...s.durable, currentTerm: s.durable.currentTerm + 1, votedFor: self };
  effects.push({ type: 'persist', key: 'election', value: durable });
  s = {
    ...s,
    durable,
    role: 'candidate',
    votesGranted: [self],
    candidacyRefused: false,
    candidacyDeadlineMs: nowMs + candidacyTimeoutMs(s),
  };
  if (s.leaderId !== null) {
    s = { ...s, leaderId: null };
    effects.push({ type: 'leaderChanged', term: durable.currentTerm, leaderId: null });
    s = setTable(s, null, effects);
  }
  askForVotes(s, effects);
  return maybeWin(s, nowMs, effects);
}

/**
 * A follower without a leader sends its voters to the rule's winner among them, every vote timeout: that peer may
 * not know it was admitted (the leader that admitted it fell before it heard), and then nobody runs. A joiner whose
 * list is empty (no leader stamped one yet) sends it, with its term, to every peer alive in its view instead: the
 * founder, which it cannot tell apart, leads only once it has heard the terms of a majority (heardTheMeshTerms). Such
 * a founder sends its list to the peers alive whose term it has not heard, every vote timeout, and is answered with it.
 */
function pushVoters(s: BalancerState, nowMs: number, effects: BalancerEffect[]): BalancerState {
  const voters = s.durable.voters;
  if (voters === undefined || s.role !== 'follower' || s.leaderId !== null || nowMs < (s.votersPushAtMs ?? Number.NEGATIVE_INFINITY)) return s;
  const self = s.config.selfPeerId;
  const winner = ruleWinnerOf(s);
  const alive = s.members.filter((m) => m.status === 'alive' && m.peerId !== self).map((m) => m.peerId);
  // A founder that has not heard the terms of a majority asks the peers alive whose term it has not heard: a peer on
  // the defaults still without a list (learnt rosters until a leader stamps one) pushes nothing, and answers
  // (answerWithTerm); the joiners push theirs anyway.
  const heard = new Set(s.termsHeardFrom ?? []);
  const to =
    voters.peers.length === 0 ? alive : !heardTheMeshTerms(s) ? alive.filter((peerId) => !heard.has(peerId)) : winner === null || winner.peerId === self ? [] : [winner.peerId];
  if (to.length === 0) return s;
  for (const peerId of to) effects.push({ type: 'send', to: peerId, message: { type: 'voters', term: s.durable.currentTerm, voters } });
  return { ...s, votersPushAtMs: nowMs + s.config.voteTimeoutMs };
}

/** A joiner's list, made by no leader: empty, version (0, 0) (a leader's list names at least the leader). */
export function isJoinersEmptyList(voters: Voters): boolean {
  return voters.peers.length === 0 && voters.term === 0 && voters.seq === 0;
}

/** A founder's list, made by no leader yet: the founder alone, version (0, 0). */
function foundsUnstamped(s: BalancerState): boolean {
  const voters = s.durable.voters;
  return voters !== undefined && voters.term === 0 && voters.peers.length === 1 && voters.peers[0] === s.config.selfPeerId;
}

/**
 * A founder leads once it has heard the terms of a majority of its roster (itself included; a new mesh's founder has a
 * roster of itself): founding a running mesh (the upgrade), it led at once a term one above its own, which a leader
 * elected by learnt rosters had used while it was cut off (the election simulation, founding 'upgrade', hunt 186). The
 * joiners say their term to every peer they see while they have no leader (pushVoters). And a majority of its roster as
 * it was when it started (foundingRoster, less the peers forgotten since): the peers it learns afterwards are mostly
 * sites new since the upgrade, on their first start, which never voted while the rosters were learnt, yet they made up
 * its majority, and the roster they grew made the learnt-era leader's voters a minority of it. Seed 21245 of the
 * election simulation (founding 'upgrade'): e led term 2 with d and f while a was cut off; a founded with the roster
 * {a, c, e, f}, learnt b, a new site, and led term 2 with the terms of a, b and c, three of five; it now waits for f's
 * (2) and leads term 3 (100685 the same). Where every peer that knew such a term was killed (20908, 100566) it waits
 * until the operator forgets them: no rule can tell that term then.
 */
function heardTheMeshTerms(s: BalancerState): boolean {
  if (!foundsUnstamped(s)) return true;
  const heard = new Set([...(s.termsHeardFrom ?? []), s.config.selfPeerId]);
  const roster = s.config.rosterPeerIds;
  const heardMajority = (peers: readonly string[]): boolean => peers.filter((peerId) => heard.has(peerId)).length >= majorityOf(peers);
  const atStart = founderWaitsForTermsOf(s) ?? [];
  return heardMajority(roster) && (atStart.length === 0 || heardMajority(atStart));
}

/**
 * A founder whose list no leader has stamped: the peers of its roster as it was when it started (less those forgotten
 * since), a majority of whose terms it must hear before it leads (heardTheMeshTerms); undefined for any other peer.
 * For the election simulation, which expects no leader where a majority of them was killed (their terms died with them).
 */
export function founderWaitsForTermsOf(s: BalancerState): readonly string[] | undefined {
  if (!foundsUnstamped(s)) return undefined;
  return (s.foundingRoster ?? s.config.rosterPeerIds).filter((peerId) => s.config.rosterPeerIds.includes(peerId));
}

/** A founder notes the term of a peer of its roster heard (see heardTheMeshTerms); bounded by the roster. */
function noteTermHeard(s: BalancerState, from: string): BalancerState {
  const heard = s.termsHeardFrom ?? [];
  if (!foundsUnstamped(s) || heard.includes(from) || !s.config.rosterPeerIds.includes(from)) return s;
  return { ...s, termsHeardFrom: [...heard, from] };
}

/** At most this many peers awaiting admission are remembered (see BalancerState.awaitingAdmission): votersMax. */
const awaitingAdmissionMax = votersMax;

/**
 * A peer without a list notes a sender whose pushed voters do not name it (it awaits admission) for three vote
 * timeouts; any other push from it, or the time running out, ends that (pruned at ticks: expireAwaitingAdmission).
 */
function noteAwaitingAdmission(s: BalancerState, from: string, voters: Voters | undefined, nowMs: number): BalancerState {
  if (s.durable.voters !== undefined || voters === undefined) return s;
  const others = (s.awaitingAdmission ?? []).filter((w) => w.peerId !== from);
  const next = voters.peers.includes(from) ? others : [...others, { peerId: from, untilMs: nowMs + 3 * s.config.voteTimeoutMs }].slice(-awaitingAdmissionMax);
  return { ...s, awaitingAdmission: next.length === 0 ? undefined : next };
}

function expireAwaitingAdmission(s: BalancerState, nowMs: number): BalancerState {
  const waiting = s.awaitingAdmission;
  if (waiting === undefined) return s;
  if (s.durable.voters !== undefined) return { ...s, awaitingAdmission: undefined };
  const left = waiting.filter((w) => w.untilMs > nowMs);
  return left.length === waiting.length ? s : { ...s, awaitingAdmission: left.length === 0 ? undefined : left };
}

/** Whether this peer may stand (or go on standing) for election now, its settle times aside. */
function mayRun(s: BalancerState, nowMs: number): boolean {
  return hasMetTheMesh(s) && heardTheMeshTerms(s) && !leaderAtStallSuspect(s) && s.leaderId !== s.config.selfPeerId && selfIsWinner(s) && seesRosterMajority(s, true) && !followsBetterRankedLeader(s, nowMs);
}

/** requestVote of this peer's current term to every other voter that has not granted it yet. */
function askForVotes(s: BalancerState, effects: BalancerEffect[]): void {
  const roster = candidacyRoster(s);
  const voters = s.durable.voters;
  const version = voters === undefined ? {} : { voters: { term: voters.term, seq: voters.seq } };
  for (const peerId of roster) {
    if (peerId === s.config.selfPeerId || s.votesGranted.includes(peerId)) continue;
    effects.push({ type: 'send', to: peerId, message: { type: 'requestVote', term: s.durable.currentTerm, candidateId: s.config.selfPeerId, roster, ...version } });
  }
}

/**
 * The roster a candidacy asks and counts: this peer's, and the peers voters taught it (rosterTaught). A voter
 * refuses a candidate whose roster lacks a peer of its own; a ghost (a peer gone for less than
 * rosterForgetAfterMs) that the best-ranked peer never met made every voter that knew it refuse that peer,
 * and the mesh had no leader until the ghost was forgotten (the election simulation, hunt 159).
 */
function candidacyRoster(s: BalancerState): readonly string[] {
  if (s.durable.voters !== undefined) return s.durable.voters.peers;
  const taught = s.rosterTaught;
  if (taught === undefined) return s.config.rosterPeerIds;
  return [...new Set([...s.config.rosterPeerIds, ...taught])].sort();
}

function onMessage(
  state: BalancerState,
  from: string,
  message: BalancerMessage,
  nowMs: number,
  effects: BalancerEffect[],
): BalancerState {
  let s = noteTermHeard(message.type === 'requestVote' ? noteMeshMet(state, effects, message.roster) : state, from);
  if (message.term > s.durable.currentTerm) {
    if (message.type === 'requestVote' && hasLiveLeader(s, nowMs) && (!wouldVoteFor(s, message.candidateId) || leaderOutranks(s, message.candidateId))) {
      // A candidate this peer would refuse, while its leader is alive: refuse without taking its term.
      effects.push({ type: 'send', to: from, message: { type: 'vote', term: s.durable.currentTerm, voterId: s.config.selfPeerId, granted: false } });
      return s;
    }
    s = adoptTerm(s, message.term, effects);
  }
  // A candidate's voters came from the leader that made them, as a refusal's do (see heldVoters).
  if (message.type === 'requestVote' && message.voters !== undefined && message.roster !== undefined) s = heldVoters(s, { ...message.voters, peers: message.roster }, effects);
  const term = s.durable.currentTerm;
  switch (message.type) {
    case 'requestVote': {
      const self = s.config.selfPeerId;
      const candidate = message.candidateId;
      let granted = false;
      let missing: string[] = [];
      if (message.term === term && (s.durable.votedFor === null || s.durable.votedFor === candidate)) {
        // A voter answers only while it sees a majority of its own roster alive. A candidate whose learnt roster
        // is a stale subset of the voter's (a site killed moments after its first start, back much later) won
        // with a majority of its roster in one component while another component, holding a majority of the
        // mesh's, elected in the same term (the chaos test, seed 5959060: two leaders of term 3). No answer
        // rather than a refusal: the candidate asks again in its term, where the vote can still come once this
        // voter sees its majority, instead of running a new term every vote timeout while it does not. It is
        // answered as soon as this voter's view shows its majority (answerWithheldVoteRequest); not on the view
        // from before a stall of its own (answersVoteRequests).
        if (!answersVoteRequests(s, nowMs)) return { ...s, withheldVoteRequest: { candidateId: candidate, term, ...(message.roster !== undefined ? { roster: message.roster } : {}), ...(message.voters !== undefined ? { voters: message.voters } : {}) } };
        // A request kept from before is answered by this one (a candidate's next ask came before the tick that would answer it).
        if (s.withheldVoteRequest !== undefined) s = withoutWithheldVoteRequest(s);
        const own = s.durable.voters;
        if (own !== undefined && message.voters !== undefined) granted = wouldVoteFor(s, candidate) && compareVersions(message.voters, own) >= 0;
        // A candidate without a list (an earlier build, a peer without --election-voters admitted) wins with a majority
        // of its learnt roster, which need not meet a majority of the list: refused once this peer holds one (hunt 184).
        // So is it by a joiner whose list is empty: voting by its learnt roster meanwhile, it elected a second leader of
        // a term with a candidate that never met that term's leader (the election simulation, 'autoUpgrade', seed 172).
        else if (own !== undefined) granted = false;
        else {
          missing = rosterMissingFrom(message.roster, s.config.rosterPeerIds);
          granted = wouldVoteFor(s, candidate) && missing.length === 0;
        }
        if (granted && s.durable.votedFor !== candidate) {
          const durable: ElectionDurable = { ...s.durable, currentTerm: term, votedFor: candidate };
          effects.push({ type: 'persist', key: 'election', value: durable });
          s = { ...s, durable };
        }
        // Having voted, no candidacy of its own before it could have heard the outcome (Raft resets its
        // election timer likewise): a peer whose view still had the candidate dead ran at once against a
        // resumed leader, before that leader's announcement reached it.
        if (granted) s = { ...s, candidacyDeadlineMs: Math.max(s.candidacyDeadlineMs, nowMs + s.config.voteTimeoutMs) };
      }
      const own = s.durable.voters;
      const newer = !granted && own !== undefined && (message.voters === undefined ? own.term > 0 : compareVersions(own, message.voters) > 0) ? { voters: own } : {};
      effects.push({ type: 'send', to: from, message: { type: 'vote', term, voterId: self, granted, ...(missing.length > 0 ? { rosterMissing: missing.slice(0, rosterMissingMax) } : {}), ...newer } });
      return s;
    }
    case 'vote': {
      if (s.role !== 'candidate' || message.term !== term) return s;
      if (!message.granted) return { ...taughtBy(heldVoters(s, message.voters, effects), message.rosterMissing), candidacyRefused: true };
      if (s.votesGranted.includes(message.voterId) || !candidacyRoster(s).includes(message.voterId)) return s;
      return maybeWin({ ...s, votesGranted: [...s.votesGranted, message.voterId] }, nowMs, effects);
    }
    case 'announce': {
      if (message.term < term) {
        effects.push({ type: 'send', to: from, message: { type: 'newerTerm', term } });
        return s;
      }
      if (message.leaderId === s.config.selfPeerId) return s;
      if (s.leaderAtStall !== undefined) s = { ...s, leaderAtStall: undefined };
      // A leader of our term exists: a candidate of this term lost, and a leader here would be a bug.
      if (s.leaderId !== message.leaderId) effects.push({ type: 'leaderChanged', term, leaderId: message.leaderId });
      s = { ...withoutRosterTaught(s), role: 'follower', votesGranted: [], leaderId: message.leaderId, leaderHeardAtMs: nowMs, candidaciesTimedOut: 0 };
      s = holdLeadersVoters(s, message.leaderId, message.voters, effects);
      return setTable(s, message.table, effects);
    }
    case 'voters':
      return answerWithTerm(answerOlderVoters(heldVoters(noteAwaitingAdmission(s, from, message.voters, nowMs), message.voters, effects), from, message.voters, effects), from, message.voters, effects);
    case 'votersHeld': {
      const voters = s.durable.voters;
      const held = s.votersHeldBy ?? [];
      // Only the voter itself may say it holds the list: a relayed or forged one would count toward a majority it never had.
      if (from !== message.voterId || s.role !== 'leader' || message.term !== term || voters === undefined || message.voters.term !== voters.term) return s;
      if (!voters.peers.includes(message.voterId)) return readyToBeAdmitted(s, message.voterId);
      if (held.includes(message.voterId) || compareVersions(message.voters, voters) !== 0) return s;
      return { ...s, votersHeldBy: [...held, message.voterId] };
    }
    case 'newerTerm':
      // Adopting the term (above) already made this peer a follower; nothing else to do.
      return s;
    default:
      return assertNever(message);
  }
}

/** Vote only for the rule's winner as this peer sees it (or a better-ranked peer), so that views, not races, pick the leader. */
function wouldVoteFor(state: BalancerState, candidateId: string): boolean {
  const best = ruleWinnerOf(state);
  const known = state.members.find((m) => m.peerId === candidateId);
  return best === null || best.peerId === candidateId || (known !== undefined && compareRank(known, best) <= 0);
}

/**
 * The peers of this voter's roster missing from the candidate's: a voter grants only a candidate whose roster
 * holds every peer of its own (as Raft grants only a candidate whose log is up to date). A candidate whose
 * learnt roster is a stale subset of its voters' won with a majority of a smaller list, which need not meet a
 * majority elsewhere (hunt 158: rosters c {b, c}, b {b, c, d}; the election simulation, hunt 159). A candidate
 * of a version before hunt 159 sends no roster, and is judged as before (none missing).
 */
function rosterMissingFrom(candidateRoster: readonly string[] | undefined, voterRoster: readonly string[]): string[] {
  if (candidateRoster === undefined) return [];
  const held = new Set(candidateRoster);
  return voterRoster.filter((peerId) => !held.has(peerId));
}

/** A refusal's rosterMissing added to rosterTaught (self aside; bounded like the roster a request can carry). */
function taughtBy(s: BalancerState, missing: readonly string[] | undefined): BalancerState {
  if (missing === undefined || missing.length === 0) return s;
  const known = new Set(candidacyRoster(s));
  const added = missing.filter((peerId) => !known.has(peerId) && peerId !== s.config.selfPeerId);
  if (added.length === 0) return s;
  return { ...s, rosterTaught: [...(s.rosterTaught ?? []), ...added].slice(0, rosterTaughtMax) };
}

function withoutRosterTaught(s: BalancerState): BalancerState {
  if (s.rosterTaught === undefined) return s;
  const { rosterTaught: _dropped, ...rest } = s;
  return rest;
}

/** This peer leads, or follows a leader that looks alive (leaderLooksAlive). */
function hasLiveLeader(state: BalancerState, nowMs: number): boolean {
  return state.role === 'leader' || leaderLooksAlive(state, nowMs);
}

/**
 * The leader this peer follows was heard within leaderSilenceMaxMs and is alive in its view, or went
 * suspect or dead in it more than an announce interval before it was last heard: a leader resumed after a
 * stall (SIGSTOP, a frozen VM) announces before its heartbeats have made it alive again in the others'
 * views, and an announcement is as good a sign of life. (A status changed around or after the last
 * announcement is a real death: an announcement relayed late cannot hide it.)
 */
function leaderLooksAlive(state: BalancerState, nowMs: number): boolean {
  if (state.leaderId === null || nowMs - state.leaderHeardAtMs > state.config.leaderSilenceMaxMs) return false;
  const leader = state.members.find((m) => m.peerId === state.leaderId);
  if (leader === undefined) return false;
  return leader.status === 'alive' || leader.statusSinceMs < state.leaderHeardAtMs - state.config.announceIntervalMs;
}

/**
 * The leader this peer follows, or this peer when it leads, ranks better than `peerId` (by its record,
 * whatever its status), and can record votes: one that cannot (a full disk) makes way, as the rule says.
 */
function leaderOutranks(state: BalancerState, peerId: string): boolean {
  const leader = state.members.find((m) => m.peerId === (state.role === 'leader' ? state.config.selfPeerId : state.leaderId));
  const other = state.members.find((m) => m.peerId === peerId);
  return leader !== undefined && other !== undefined && leader.electable && compareRank(leader, other) < 0;
}

/**
 * This peer follows a leader that looks alive and ranks better than itself: it does not run, though its
 * view (missing the leader's heartbeats for now) makes it the rule's winner. Without this, the others ran
 * against a resumed leader in the moment before its heartbeats reached them (terms 5 -> 8 in 330 ms).
 * A leader ranked worse than this peer still makes way for it (the leader steps down once it sees it).
 */
function followsBetterRankedLeader(state: BalancerState, nowMs: number): boolean {
  return leaderLooksAlive(state, nowMs) && leaderOutranks(state, state.config.selfPeerId);
}

function adoptTerm(state: BalancerState, term: number, effects: BalancerEffect[]): BalancerState {
  const durable: ElectionDurable = { ...state.durable, currentTerm: term, votedFor: null };
  effects.push({ type: 'persist', key: 'election', value: durable });
  let s: BalancerState = { ...state, durable, role: 'follower', votesGranted: [] };
  if (state.leaderId !== null) {
    s = { ...s, leaderId: null };
    effects.push({ type: 'leaderChanged', term, leaderId: null });
    s = setTable(s, null, effects);
  }
  return s;
}

/**
 * How long a candidacy waits for its votes before it asks again: voteTimeoutMs, doubled each time it ran out
 * of time without a refusal, up to 8x. On peers short of CPU a vote (persisted by the voter before it is
 * sent) took longer than 300 ms; a fixed timeout then started the next term before it arrived, every time,
 * and two of three sites stayed leaderless for 15-30 s over dozens of terms (it now asks again in its own
 * term, where a late vote still counts, but asking often only adds work for the slow voters).
 */
function candidacyTimeoutMs(state: BalancerState): number {
  return state.config.voteTimeoutMs * 2 ** Math.min(state.candidaciesTimedOut, 3);
}

function maybeWin(state: BalancerState, nowMs: number, effects: BalancerEffect[]): BalancerState {
  const roster = candidacyRoster(state);
  if (state.votesGranted.filter((peerId) => roster.includes(peerId)).length < majorityOf(roster)) return state;
  const term = state.durable.currentTerm;
  effects.push({ type: 'claimedLeadership', term });
  effects.push({ type: 'leaderChanged', term, leaderId: state.config.selfPeerId });
  const s: BalancerState = { ...withoutRosterTaught(state), role: 'leader', leaderId: state.config.selfPeerId, votesGranted: [], candidaciesTimedOut: 0, votersReady: undefined };
  // Its voters stamped with its term before any change (Raft's leader commits an entry of its own term first):
  // once a majority holds them, no candidate holding an older leader's uncommitted change gets their votes. A
  // record of an earlier version stamps the roster it won with.
  const peers = s.durable.voters?.peers ?? (s.config.votersThroughLeader === true ? roster : undefined);
  return announce(withVoters(s, peers, 0, effects), nowMs, effects);
}

/** Leader: a majority of its voters holds its current list (see nextVotersChange). */
function votersCommitted(s: BalancerState): boolean {
  return s.durable.voters !== undefined && (s.votersHeldBy ?? []).length >= majorityOf(s.durable.voters.peers);
}

/**
 * `a` supersedes `b`: a later version, or the same one made by a leader with peers forgotten since (see
 * withoutForgottenVoters: a forgetting that reached some peers and not others reaches the rest this way, as the
 * forget-peer topic would have). Lists of version (0, 0) were made by no leader (a first start's) and differ
 * without anything forgotten.
 */
export function newerVoters(a: Voters, b: Voters): boolean {
  const order = compareVersions(a, b);
  return order > 0 || (order === 0 && a.term > 0 && a.peers.length < b.peers.length && a.peers.every((peerId) => b.peers.includes(peerId)));
}

function compareVersions(a: VotersVersion, b: VotersVersion): number {
  return a.term !== b.term ? a.term - b.term : a.seq - b.seq;
}

/** Leader: `peers` as its voters, version (its term, seq), persisted before anything leaves; no-op without peers. */
function withVoters(s: BalancerState, peers: readonly string[] | undefined, seq: number, effects: BalancerEffect[]): BalancerState {
  if (peers === undefined) return s;
  const durable: ElectionDurable = { ...s.durable, voters: { peers: [...peers].sort(), term: s.durable.currentTerm, seq } };
  effects.push({ type: 'persist', key: 'election', value: durable });
  return { ...s, durable, votersHeldBy: [s.config.selfPeerId] };
}

/**
 * Peers taken out of the roster (forgotten by the operator or after rosterForgetAfterMs, replaced by a restored
 * site's successor, lost their site name: peers that never vote again) leave the voters at once, as they left the
 * roster before hunt 168: kept, a ghost no leader could be elected to take out blocked the mesh for good. A
 * majority of a list with such a peer, its vote never given again, is a majority of the list without it. The
 * leader makes it a new version, so that every follower drops it too. An operator's override, outside the argument
 * at nextVotersChange: forgetting a majority of a list at a peer that never heard the term they elected in lets it
 * lead that term again (the election simulation, seed 17511).
 */
function withoutForgottenVoters(s: BalancerState, forgotten: readonly string[], effects: BalancerEffect[]): BalancerState {
  const voters = s.durable.voters;
  const gone = new Set(forgotten.filter((peerId) => peerId !== s.config.selfPeerId));
  if (voters === undefined || !voters.peers.some((peerId) => gone.has(peerId))) return s;
  const peers = voters.peers.filter((peerId) => !gone.has(peerId));
  if (s.role === 'leader') return withVoters(s, peers, voters.seq + 1, effects);
  const durable: ElectionDurable = { ...s.durable, voters: { ...voters, peers } };
  effects.push({ type: 'persist', key: 'election', value: durable });
  return { ...s, durable };
}

/**
 * Voters among `forgotten` noted as leaving (ElectionDurable.votersLeaving), persisted, bounded by the list. Not every
 * voter missing from the roster: one it never saw alive (admitted by an earlier leader, cut off from this one) taken
 * out left a list without a live majority (the election simulation, seed 569).
 */
function withVotersLeaving(s: BalancerState, forgotten: readonly string[], effects: BalancerEffect[]): BalancerState {
  const voters = s.durable.voters?.peers ?? [];
  const before = s.durable.votersLeaving ?? [];
  const leaving = [...new Set([...before, ...forgotten])].filter((peerId) => peerId !== s.config.selfPeerId && voters.includes(peerId)).sort();
  if (leaving.length === before.length && leaving.every((peerId, i) => peerId === before[i])) return s;
  const { votersLeaving: _, ...rest } = s.durable;
  const durable: ElectionDurable = leaving.length === 0 ? rest : { ...rest, votersLeaving: leaving };
  effects.push({ type: 'persist', key: 'election', value: durable });
  return { ...s, durable };
}

/**
 * Leader: once a majority of its voters holds them, one voter its roster forgot removed, else one peer of its roster
 * alive in its view admitted. Why one at a time, each held by a majority before the next: any majority of a list and
 * any majority of that list with one peer more or less share a peer, and no candidate can win with a list older than
 * one a majority holds (a voter grants no older version), so every two lists a leader can be elected with are at
 * most one change apart. Only the operator's forget-peer removes at once (withoutForgottenVoters).
 */
function nextVotersChange(s: BalancerState, effects: BalancerEffect[]): BalancerState {
  const voters = s.durable.voters;
  if (voters === undefined || !votersCommitted(s)) return s;
  const roster = new Set(s.config.rosterPeerIds);
  const forgotten = new Set(s.durable.votersLeaving ?? []);
  const leaving = voters.peers.find((peerId) => peerId !== s.config.selfPeerId && forgotten.has(peerId) && !roster.has(peerId));
  if (leaving !== undefined) return withVoters(s, voters.peers.filter((peerId) => peerId !== leaving), voters.seq + 1, effects);
  // A longer list fits no request for votes nor the election record: the peers past it stay non-voting members.
  if (voters.peers.length >= votersMax) return s;
  const admitted = new Set(voters.peers);
  const ready = new Set(s.votersReady ?? []);
  const joiner = s.members.find((m) => m.status === 'alive' && roster.has(m.peerId) && ready.has(m.peerId) && !admitted.has(m.peerId));
  if (joiner !== undefined) return withVoters(s, [...voters.peers, joiner.peerId], voters.seq + 1, effects);
  return s;
}

/**
 * Leader: a peer outside its voters that holds its list (votersHeld, sent only by a peer in admitted mode) may be
 * admitted. A peer of an earlier build or in learnt mode sends none: admitted, it voted by the roster check alone,
 * without comparing versions, which the argument at nextVotersChange needs of every voter (hunt 186).
 */
function readyToBeAdmitted(s: BalancerState, peerId: string): BalancerState {
  const ready = s.votersReady ?? [];
  if (ready.includes(peerId) || ready.length >= votersMax) return s;
  return { ...s, votersReady: [...ready, peerId] };
}

/**
 * Follower: the leader's voters, adopted (persisted) when newer than its own, and acknowledged while the leader
 * has not seen a majority hold them; a peer not among them acknowledges every announcement, its leave to be admitted
 * (readyToBeAdmitted), until it is or the list is full. A follower without voters of its own ignores them (see
 * adoptsFirstVoters).
 */
function holdLeadersVoters(s: BalancerState, leaderId: string, voters: (Voters & { readonly committed: boolean }) | undefined, effects: BalancerEffect[]): BalancerState {
  const own = s.durable.voters;
  if (voters === undefined || (own === undefined && !adoptsFirstVoters(s, voters))) return s;
  const next = heldVoters(s, voters, effects);
  const waitsToBeAdmitted = !voters.peers.includes(s.config.selfPeerId) && voters.peers.length < votersMax;
  if ((!voters.committed || waitsToBeAdmitted) && (own === undefined || compareVersions(voters, own) >= 0)) {
    effects.push({ type: 'send', to: leaderId, message: { type: 'votersHeld', term: s.durable.currentTerm, voterId: s.config.selfPeerId, voters: { term: voters.term, seq: voters.seq } } });
  }
  return next;
}

/**
 * A list pushed to this peer that is older than its own is answered with its own (a relay of its leader's list, as a
 * refusal's is): a joiner pushing its empty list to every peer it sees then learns that the mesh was founded though no
 * leader is heard (a mesh of two with one site down, say). Without it the joiner could not tell that mesh from one
 * nobody founded, said to found it again (`--found-mesh yes`, which made a second mesh), and would have done so.
 */
function answerOlderVoters(s: BalancerState, from: string, theirs: Voters, effects: BalancerEffect[]): BalancerState {
  const own = s.durable.voters;
  if (own === undefined || !newerVoters(own, theirs)) return s;
  effects.push({ type: 'send', to: from, message: { type: 'voters', term: s.durable.currentTerm, voters: own } });
  return s;
}

/**
 * A peer in admitted mode still without a list (a record of learnt rosters started on the defaults: its roster counts
 * until a leader stamps one) answers a list pushed by a peer it names (a founder waiting for the mesh's terms, see
 * heardTheMeshTerms) with its term, as `newerTerm` (whatever the two terms: the founder notes whose it heard). Such a
 * peer pushes nothing, having no list; the founder, a first site whose record of learnt rosters held no term or vote
 * (so it founds as a first start does), waited for terms that never came while the peers on learnt rosters waited
 * for it, their rule's winner, to run: no leader after the heal (the election simulation, founding 'autoUpgrade',
 * seeds 11128, 20900, 21150). Learnt mode (no votersThroughLeader) steps as before.
 */
function answerWithTerm(s: BalancerState, from: string, theirs: Voters, effects: BalancerEffect[]): BalancerState {
  if (s.durable.voters !== undefined || s.config.votersThroughLeader !== true || !theirs.peers.includes(from)) return s;
  effects.push({ type: 'send', to: from, message: { type: 'newerTerm', term: s.durable.currentTerm } });
  return s;
}

/** A peer without voters (a record of an earlier version) takes the first list a leader made; a pinned roster none. */
function adoptsFirstVoters(s: BalancerState, voters: Voters): boolean {
  return s.config.votersThroughLeader === true && voters.term > 0;
}

/**
 * `voters` adopted (persisted) when newer than this peer's own: from its leader, or from a voter refusing it for
 * holding newer ones. A list only ever comes from the leader that made it, so one relayed is that leader's message
 * arriving late, which the argument at nextVotersChange allows; without the relay, a best-ranked peer that missed a
 * change ran and was refused for good (no other peer runs while it is alive).
 */
function heldVoters(s: BalancerState, voters: Voters | undefined, effects: BalancerEffect[]): BalancerState {
  const own = s.durable.voters;
  if (voters === undefined || (own === undefined ? !adoptsFirstVoters(s, voters) : !newerVoters(voters, own))) return s;
  const durable: ElectionDurable = { ...s.durable, voters: { peers: voters.peers, term: voters.term, seq: voters.seq } };
  effects.push({ type: 'persist', key: 'election', value: durable });
  // A candidacy ends with the list it was judged by: votes granted to it count in no other (a leader holds the
  // newest list of its term, and a newer one comes only with a newer term, which made it a follower already).
  return s.role === 'candidate' ? { ...s, durable, role: 'follower', votesGranted: [] } : { ...s, durable };
}

function announce(state: BalancerState, nowMs: number, effects: BalancerEffect[]): BalancerState {
  const table = buildRoutingTable(state.members, state.durable.currentTerm, state.config.selfPeerId, state.config.routing);
  const s = setTable({ ...state, nextAnnounceAtMs: nowMs + state.config.announceIntervalMs }, table, effects);
  const voters = s.durable.voters;
  const committed = votersCommitted(s);
  effects.push({
    type: 'publish',
    topic: routingTopic,
    message: { type: 'announce', term: table.term, leaderId: table.leaderId, table, ...(voters !== undefined ? { voters: { ...voters, committed } } : {}) },
  });
  return s;
}

function setTable(state: BalancerState, table: RoutingTable | null, effects: BalancerEffect[]): BalancerState {
  if (sameTable(state.table, table)) return state;
  effects.push({ type: 'routingTableChanged', table });
  return { ...state, table };
}

function sameTable(a: RoutingTable | null, b: RoutingTable | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.term !== b.term || a.leaderId !== b.leaderId || a.entries.length !== b.entries.length) return false;
  return a.entries.every((e, i) => {
    const o = b.entries[i];
    return o !== undefined && e.peerId === o.peerId && e.weight === o.weight && e.saturated === o.saturated && e.refilling === o.refilling;
  });
}

/**
 * The leader's table: every alive member with a weight from its spare association and custody capacity,
 * and whether it is refilling (see RoutingEntry.refilling).
 */
export function buildRoutingTable(
  members: readonly MemberRecord[],
  term: number,
  leaderId: string,
  limits: RoutingLimits,
): RoutingTable {
  const alive = members.filter((m) => m.status === 'alive');
  // Each peer converges to the whole archive (repair pulls from every peer, its own site's too), and
  // searches answer from the peer's own catalog: a peer far behind the fullest one is refilling. Summed
  // per site (as before), a second peer under a site's name made every other site look behind (helper 64).
  const fullestPeerInstances = Math.max(0, ...alive.map((m) => m.instanceCount));
  const entries: RoutingEntry[] = alive
    .map((m) => {
      const { activeAssociations, queuedCustodyWork, freeDiskBytes, freeDiskUnknown } = m.load;
      const saturated =
        activeAssociations >= limits.associationsPerPeerMax ||
        queuedCustodyWork >= limits.custodyQueueMax ||
        (freeDiskUnknown !== true && freeDiskBytes < limits.freeDiskBytesMin);
      const associationHeadroom = 1 - activeAssociations / limits.associationsPerPeerMax;
      const custodyHeadroom = 1 - queuedCustodyWork / limits.custodyQueueMax;
      // Integer weights keep tables comparable and the choice reproducible across platforms.
      const refilling = fullestPeerInstances - m.instanceCount >= limits.refillLagInstancesMin;
      const weight = saturated || refilling ? 0 : Math.max(1, Math.round(1000 * associationHeadroom * custodyHeadroom));
      return {
        peerId: m.peerId,
        siteName: m.siteName,
        dicomAddress: m.addresses.dicom,
        aeTitle: m.addresses.aeTitle,
        accessDigest: m.addresses.accessDigest ?? '',
        weight,
        saturated,
        refilling,
      };
    })
    .sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0));
  return { term, leaderId, entries };
}

/**
 * The table as this peer sees it at this moment. The leader's load figures lag by a heartbeat or more; this
 * peer knows its own associations and those it tunnelled to each peer that have not ended: a peer at the
 * limit by either count is full. Without the tunnels, a burst at one front door all went to the peer the
 * table still showed with room (89 of 100 at --associations-per-peer 10, 25 of them rejected there as
 * congestion while the entry peer served none: hunt 106).
 */
export function withLiveLoad(
  table: RoutingTable,
  selfPeerId: string,
  live: { localActiveAssociations?: number | undefined; tunnelsOpenTo?: ReadonlyMap<string, number> | undefined },
  limits: RoutingLimits,
): RoutingTable {
  const full = (peerId: string): boolean =>
    peerId === selfPeerId
      ? live.localActiveAssociations !== undefined && live.localActiveAssociations >= limits.associationsPerPeerMax
      : (live.tunnelsOpenTo?.get(peerId) ?? 0) >= limits.associationsPerPeerMax;
  if (!table.entries.some((e) => !e.saturated && full(e.peerId))) return table;
  return { ...table, entries: table.entries.map((e) => (!e.saturated && full(e.peerId) ? { ...e, saturated: true, weight: 0 } : e)) };
}

export type RouteReason = 'no-table' | 'unknown-origin' | 'same-site' | 'cross-site' | 'all-saturated';

export interface RouteChoice {
  readonly peerId: string;
  readonly reason: RouteReason;
}

/**
 * Where a new association arriving at fromPeerId should be served. `draw` is a uniform number in [0, 1)
 * from the caller's seeded PRNG (or a counter / 2^32), so the choice is reproducible.
 * Same-site peers first; another site only when every peer of this site is saturated, refilling or gone.
 */
export function chooseTarget(table: RoutingTable | null, fromPeerId: string, draw: number): RouteChoice {
  if (table === null) return { peerId: fromPeerId, reason: 'no-table' };
  const origin = table.entries.find((e) => e.peerId === fromPeerId);
  if (origin === undefined) return { peerId: fromPeerId, reason: 'unknown-origin' };
  // The modality called the origin's AE title, and may ask for a C-MOVE to a destination the origin knows:
  // a peer answering another AE title, or with other destinations or another allow-list, would fail it.
  const candidates = table.entries.filter((e) => e.aeTitle === origin.aeTitle && e.accessDigest === origin.accessDigest && !e.saturated && !e.refilling);
  const sameSite = candidates.filter((e) => e.siteName === origin.siteName);
  if (sameSite.length > 0) return { peerId: weightedPick(sameSite, draw), reason: 'same-site' };
  const otherSites = candidates.filter((e) => e.siteName !== origin.siteName);
  if (otherSites.length > 0) return { peerId: weightedPick(otherSites, draw), reason: 'cross-site' };
  return { peerId: fromPeerId, reason: 'all-saturated' };
}

function weightedPick(entries: readonly RoutingEntry[], draw: number): string {
  const total = entries.reduce((sum, e) => sum + e.weight, 0);
  let point = Math.min(Math.max(draw, 0), 0.999999999) * total;
  for (const e of entries) {
    if (point < e.weight) return e.peerId;
    point -= e.weight;
  }
  return (entries[entries.length - 1] as RoutingEntry).peerId;
}

function assertNever(value: never): never {
  throw new Error(`unhandled balancer input: ${JSON.stringify(value)}`);
}
