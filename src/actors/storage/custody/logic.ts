/**
 * Custody reducer: per instance, local durable copy -> replicas offered to every known site -> write quorum
 * -> C-STORE status; owed copies as persistent, bounded debt drained when sites return; anti-entropy repair.
 *
 * Like etcd raft's Step, stepCustody takes ownership of the state it is given: it may update the large
 * collections in place (copying thousands of keys per message would cost more than the work) and returns
 * the state to use next. It does no I/O, reads no clock and draws no random numbers.
 *
 * Debt: every copy owed to another known site is a debt entry, persisted when the local write completes and
 * removed when that site acknowledges a durable copy. So in-flight replicas and copies for absent sites are
 * one mechanism, and a crash loses no obligation.
 */
import type { ForgottenSite, MemberRecord, MemberStatus } from '../../membership/messages.ts';
import { siteKeeperAgainst, sitePrecedence } from '../../membership/logic.ts';
import {
  bucketOf,
  diffBuckets, diffLeaves, digestAdd, digestBuckets, digestHas, digestLeafHashes, digestRoot, digestSha256, keyCountInBuckets, keysInBuckets, keysInLeaves, leafOf, missingKeys, type Digest } from './digest.ts';
import {
  repairLeafBucketsMax,
  repairLeavesKeysPerBucketMinDefault,
  replicationBackOffMaxMsDefault,
  replicationBackOffMinMsDefault,
  siteClaimConfirmMsDefault,
  storeSettleAfterStartMsDefault,
  StoreStatus,
  type CustodyConfig,
  type CustodyEffect,
  type CustodyInput,
  type CustodyMessage,
  type DebtEntry,
  type InstanceKey,
  type KnownSite,
} from './messages.ts';

interface WritingStore {
  readonly requestId: string;
  readonly sopInstanceUid: string;
  readonly sha256: string;
}

interface PendingStore {
  readonly requestId: string;
  readonly sopInstanceUid: string;
  readonly quorum: number;
  readonly sitesHolding: Set<string>;
  readonly deadlineMs: number;
}

export interface CustodyState {
  readonly config: CustodyConfig;
  /** Mirror of the local store: what this peer holds durably. */
  readonly digest: Digest;
  /** Mirror of the persisted debt, keyed by debtKey(uid, site), in insertion order. */
  readonly debt: Map<string, DebtEntry>;
  /**
   * The entries of `debt` per site, in insertion order (kept with it by oweCopy and forgiveCopy): drainDebt
   * walks only the sites it can send to, so copies owed to a site that is down (a weekend's ingest) cost
   * nothing per store; queued work, /api/mesh.
   */
  readonly debtBySite: Map<string, Map<string, DebtEntry>>;
  /** Mirror of the persisted known sites: other sites heard from -> when last (see KnownSite). */
  readonly knownSites: Map<string, number>;
  /** Known sites learnt from a peer not settled yet (KnownSite.unsettled): their times are no news against a tombstone. */
  readonly knownSitesUnsettled: Set<string>;
  /**
   * Mirror of the persisted tombstones: sites forgotten lately -> when (here, or by the peer whose heartbeat
   * said so first) and whether by the operator (ForgottenSite.byOperator). A dead record of one still in the
   * view must not bring it back; only hearing from it again after that does. Passed on in heartbeats for
   * knownSiteForgetAfterMs, so that every peer forgets such a site, a peer restored from a backup taken
   * before the forgetting too.
   */
  readonly forgottenSites: Map<string, ForgottenSite>;
  /**
   * forgottenSites as the heartbeat passes them on, newest first; null once they changed (every change
   * goes through persistSitesChange). Kept, so the stats computed after every step neither sort nor
   * allocate, and an unchanged list is the same array (the actor and the mesh compare by identity).
   */
  tombstonesPassedOn: readonly ForgottenSite[] | null;
  /**
   * The first view after this start (see creditDowntime), and this peer's time away before it: left out of
   * the silence of what was last heard (or forgotten) before the start, whose persisted times are on the
   * clock of the run that wrote them. Undefined until that view.
   */
  startedAt?: { readonly nowMs: number; readonly awayMs: number };
  /** Stores whose local write is under way (volatile: a crash loses them and the modality retries). */
  readonly writing: Map<string, WritingStore>;
  /** Stores waiting for their quorum (volatile). */
  readonly pending: Map<string, PendingStore>;
  /** debtKey -> time the transfer started. */
  readonly replicationsInFlight: Map<string, number>;
  /** uid -> when the pull started and from which peer. */
  readonly fetchesInFlight: Map<string, { sinceMs: number; from: string }>;
  /**
   * uid -> peers that hold it: keys repair exchanges found missing and not pulled yet (at most
   * repairKeysMax). Each finished pull starts the next one, from the holder with the fewest pulls in
   * flight, so a large difference neither waits one repair round per fetchesInFlightMax keys nor loads a
   * single source while another holds the same keys (volatile: the next exchange finds whatever is left).
   */
  readonly pullQueue: Map<string, string[]>;
  /** UIDs whose bytes differ at another peer, reported once each (volatile; at most uidConflictsMax). */
  readonly uidConflicts: Set<string>;
  members: readonly MemberRecord[];
  /**
   * When `members` came. Membership sends a view with every heartbeat, so between two views an alive record
   * is alive as of the last one; after this process stood still, its first tick can come before the next
   * view, and the last one is as old as the stall.
   */
  viewAtMs: number;
  nextRepairAtMs: number;
  /**
   * Per repair partner: the UID after which the next exchange's window of keys starts (see repairDigest),
   * '' to start from the first. Volatile; at most one per member.
   */
  readonly repairCursors: Map<string, string>;
  /** When the last copy pushed to us (not one we pulled) arrived; see CustodyConfig.repairQuietMs. */
  lastPushedCopyAtMs: number;
  /**
   * Copies another peer offered us and is sending (replicate-batch/1), by UID, with when it last said so
   * (see 'copiesOffered'): not pulled meanwhile. Forgotten incomingCopyForgetMs after the last word
   * (the sender repeats it while the bytes flow), or when the copy is stored. Volatile.
   */
  readonly copiesIncoming: Map<string, number>;
  /** false while the local store refuses writes: no repair exchange, no pull (see storeWritableChanged). */
  storeWritable: boolean;
  /**
   * Peers that refused the replication protocol (see 'peerLacksProtocol'), by peerId: no copies go to them
   * before `untilMs`. Dropped when the peer leaves the view, restarts (another incarnation) or acknowledges
   * a copy. Volatile; at most one per member.
   */
  readonly replicationBackOff: Map<string, { readonly incarnation: number; readonly delayMs: number; readonly untilMs: number }>;
  /**
   * When a due repair first waited for pushed copies to pause (undefined once they do): from
   * repairQuietOverrideFactor x repairQuietMs later, repair no longer waits for them.
   */
  repairDeferredSinceMs: number | undefined;
  /**
   * Per repair partner: the keys its last whole exchange (its full list of differing keys, not cut at
   * repairKeysMax) named that this peer lacked and has not received since. Volatile; at most repairKeysMax
   * keys per member.
   */
  readonly reconciliationAwaited: Map<string, Set<string>>;
  /**
   * Partners this peer has caught up with: everything a whole exchange named is held here (see
   * reconciliationAwaited). Searches wait for it after a start (a refill); volatile, members only.
   */
  readonly reconciledPeers: Set<string>;
  /**
   * Which forgetting of the partners caught up with these are (see the input reconciliationsForgotten): the
   * actor trusts reconciledPeers only once they are of the forgetting it asked for last.
   */
  reconciledGeneration: number;
}

/**
 * How many times repairQuietMs a due repair waits for pushed copies to pause. Under an ingest that never
 * stops they never do, and a site restored from an empty disk, owed nothing for what it lost, got only the
 * new instances (a gap of 9,300 stayed for as long as the ingest ran).
 */
export const repairQuietOverrideFactor = 10;

export interface CustodyStep {
  readonly state: CustodyState;
  readonly effects: readonly CustodyEffect[];
}

export interface CustodyDurable {
  /** The digest of what the store holds (owned by custody from here on); see digestOf. */
  readonly digest: Digest;
  readonly debt: readonly DebtEntry[];
  /** Absent: none yet (a new data directory). */
  readonly knownSites?: readonly KnownSite[];
  /** Absent: none. */
  readonly forgottenSites?: readonly ForgottenSite[];
}

export function debtKey(sopInstanceUid: string, siteName: string): string {
  return `${sopInstanceUid}\n${siteName}`;
}

/** Rebuilds custody after a start or a crash from what the store and the debt table hold. */
export function initCustody(config: CustodyConfig, durable: CustodyDurable, reconciledGeneration = 0): CustodyState {
  const digest = durable.digest;
  const debt = new Map<string, DebtEntry>();
  const debtBySite = new Map<string, Map<string, DebtEntry>>();
  for (const d of durable.debt) {
    const key = debtKey(d.sopInstanceUid, d.siteName);
    debt.set(key, d);
    siteDebt(debtBySite, d.siteName).set(key, d);
  }
  const knownSites = new Map<string, number>();
  const knownSitesUnsettled = new Set<string>();
  for (const k of durable.knownSites ?? []) {
    if (k.siteName === config.selfSiteName) continue;
    knownSites.set(k.siteName, k.lastHeardMs);
    if (k.unsettled === true) knownSitesUnsettled.add(k.siteName);
  }
  const forgottenSites = new Map<string, ForgottenSite>();
  for (const f of [...(durable.forgottenSites ?? [])].sort((x, y) => x.forgottenAtMs - y.forgottenAtMs)) forgottenSites.set(f.siteName, tombstoneOf(f.siteName, f.forgottenAtMs, f.byOperator === true));
  return {
    config,
    digest,
    debt,
    debtBySite,
    knownSites,
    knownSitesUnsettled,
    forgottenSites,
    tombstonesPassedOn: null,
    writing: new Map(),
    pending: new Map(),
    replicationsInFlight: new Map(),
    fetchesInFlight: new Map(),
    pullQueue: new Map(),
    uidConflicts: new Set(),
    members: [],
    viewAtMs: Number.NEGATIVE_INFINITY,
    nextRepairAtMs: 0,
    repairCursors: new Map(),
    lastPushedCopyAtMs: Number.NEGATIVE_INFINITY,
    copiesIncoming: new Map(),
    storeWritable: true,
    replicationBackOff: new Map(),
    repairDeferredSinceMs: undefined,
    reconciliationAwaited: new Map(),
    reconciledPeers: new Set(),
    reconciledGeneration,
  };
}

/**
 * A copy offered to us (see CustodyState.copiesIncoming) is pulled again once its sender has not said it
 * is still coming for this long; senders repeat it every 500 ms while the bytes flow.
 */
export const incomingCopyForgetMs = 2_000;

/** The quorum a store accepted now must reach ('auto': 2 if another site is alive, else 1). */
export function effectiveWriteQuorum(config: Pick<CustodyConfig, 'writeQuorum'>, aliveSiteCount: number): number {
  if (config.writeQuorum === 'auto') return aliveSiteCount >= 2 ? 2 : 1;
  return Math.max(1, config.writeQuorum);
}

/** The quorum a store whose local write completes now must reach (see sitesForQuorum). */
export function writeQuorumNow(state: CustodyState, nowMs: number): number {
  return effectiveWriteQuorum(state.config, sitesForQuorum(state, nowMs));
}

/** The sites this peer knows of, itself included. */
export function sitesKnown(state: CustodyState): number {
  return state.knownSites.size + 1;
}

/** True when an explicit --write-quorum asks for more sites than are known: every store is refused until that many are alive. */
export function writeQuorumAboveSitesKnown(config: CustodyConfig, sitesKnownCount: number): boolean {
  return config.writeQuorum !== 'auto' && config.writeQuorum > sitesKnownCount;
}

export function stepCustody(state: CustodyState, input: CustodyInput): CustodyStep {
  const effects: CustodyEffect[] = [];
  switch (input.type) {
    case 'tick':
      onTick(state, input.nowMs, effects);
      break;
    case 'reconciliationsForgotten':
      // This process stood still while the others went on: what it caught up with before is no longer all.
      state.reconciledPeers.clear();
      state.reconciliationAwaited.clear();
      state.reconciledGeneration = input.generation;
      break;
    case 'viewChanged':
      state.members = input.members;
      state.viewAtMs = input.nowMs;
      for (const peerId of state.repairCursors.keys()) if (!input.members.some((m) => m.peerId === peerId)) state.repairCursors.delete(peerId);
      for (const peerId of state.reconciliationAwaited.keys()) if (!input.members.some((m) => m.peerId === peerId)) state.reconciliationAwaited.delete(peerId);
      for (const peerId of state.reconciledPeers) if (!input.members.some((m) => m.peerId === peerId)) state.reconciledPeers.delete(peerId);
      // A restart (another build, maybe) ends a back-off at once: its copies go at this drain.
      for (const [peerId, backOff] of state.replicationBackOff) if (!input.members.some((m) => m.peerId === peerId && m.incarnation === backOff.incarnation)) state.replicationBackOff.delete(peerId);
      updateKnownSites(state, input.nowMs, effects);
      answerUnreachableQuorums(state, input.nowMs, effects);
      drainDebt(state, input.nowMs, effects);
      break;
    case 'storeRequested':
      onStoreRequested(state, input.requestId, input.sopInstanceUid, input.sha256, effects);
      break;
    case 'localWriteDone':
      onLocalWriteDone(state, input.requestId, input.ok, input.nowMs, effects);
      break;
    case 'replicaStored':
      // Not one of our pulls: another site is pushing copies to us.
      if (!state.fetchesInFlight.has(input.sopInstanceUid)) state.lastPushedCopyAtMs = input.nowMs;
      onReplicaStored(state, input.sopInstanceUid, input.sha256, input.fromPeerId, effects);
      pullNext(state, input.nowMs, effects);
      break;
    case 'replicasStored': {
      for (const copy of input.copies) {
        if (!state.fetchesInFlight.has(copy.sopInstanceUid)) state.lastPushedCopyAtMs = input.nowMs;
        holdReplica(state, copy.sopInstanceUid, copy.sha256);
        ackReplica(state, copy.sopInstanceUid, copy.fromPeerId, effects);
      }
      pullNext(state, input.nowMs, effects);
      break;
    }
    case 'replicasAcknowledged': {
      state.replicationBackOff.delete(input.fromPeerId);
      let freed = false;
      for (const ack of input.acks) freed = takeReplicaAck(state, input.fromPeerId, ack.sopInstanceUid, ack.siteName, input.nowMs, effects) || freed;
      // The slots freed, refilled together (see onReplicaAck).
      if (freed) drainDebt(state, input.nowMs, effects);
      break;
    }
    case 'copiesOffered':
      state.lastPushedCopyAtMs = Math.max(state.lastPushedCopyAtMs, input.nowMs);
      for (const uid of input.sopInstanceUids) {
        state.pullQueue.delete(uid);
        if (!digestHas(state.digest, uid)) state.copiesIncoming.set(uid, input.nowMs);
      }
      break;
    case 'replicationFailed': {
      const key = debtKey(input.sopInstanceUid, input.toSiteName);
      // Held as if just sent: the tick frees it after replicationRetryMs.
      if (input.retryLater === true && state.debt.has(key)) state.replicationsInFlight.set(key, input.nowMs);
      else state.replicationsInFlight.delete(key);
      break;
    }
    case 'peerLacksProtocol':
      backOffReplication(state, input.peerId, input.nowMs);
      break;
    case 'forgetSiteRequested':
      if (input.siteName !== state.config.selfSiteName && !state.members.some((m) => m.siteName === input.siteName && m.status === 'alive')) {
        const change = noSitesChange();
        const tombstone = tombstoneOf(input.siteName, input.nowMs, true);
        forgetSites(state, [tombstone], change, effects);
        change.forgotten.push(tombstone);
        persistSitesChange(state, change, effects);
      }
      break;
    case 'fetchFailed':
      state.fetchesInFlight.delete(input.sopInstanceUid);
      pullNext(state, input.nowMs, effects);
      break;
    case 'storeWritableChanged':
      state.storeWritable = input.writable;
      pullNext(state, input.nowMs, effects);
      break;
    case 'messageReceived':
      onMessage(state, input.from, input.message, input.nowMs, effects);
      break;
    default:
      return assertNever(input);
  }
  return { state, effects };
}

/**
 * Other sites this peer has heard from and not forgotten, present or absent now (copies are owed to absent
 * sites too); persisted, so a restarted peer owes them copies before it hears from them again.
 */
function otherKnownSites(state: CustodyState): string[] {
  return [...state.knownSites.keys()].sort();
}

/** A known site as it is persisted. */
function knownSiteRecord(state: CustodyState, siteName: string): KnownSite {
  const lastHeardMs = state.knownSites.get(siteName) as number;
  return state.knownSitesUnsettled.has(siteName) ? { siteName, lastHeardMs, unsettled: true } : { siteName, lastHeardMs };
}

/** Last-heard times matter at the scale of knownSiteForgetAfterMs: a known site's is rewritten at most this often. */
export const knownSiteRefreshMs = 60_000;

/** What one step changed in the known sites and tombstones (see the persistKnownSites effect). */
interface SitesChange {
  readonly seen: KnownSite[];
  readonly learnt: string[];
  readonly forgotten: ForgottenSite[];
  readonly tombstonesAdopted: ForgottenSite[];
  readonly tombstonesDropped: string[];
}

function noSitesChange(): SitesChange {
  return { seen: [], learnt: [], forgotten: [], tombstonesAdopted: [], tombstonesDropped: [] };
}

function persistSitesChange(state: CustodyState, change: SitesChange, effects: CustodyEffect[]): void {
  const { seen, learnt, forgotten, tombstonesAdopted, tombstonesDropped } = change;
  if (seen.length + forgotten.length + tombstonesAdopted.length + tombstonesDropped.length === 0) return;
  if (forgotten.length + tombstonesAdopted.length + tombstonesDropped.length > 0) state.tombstonesPassedOn = null;
  effects.push({ type: 'persistKnownSites', seen, learnt, forgotten, tombstonesAdopted, tombstonesDropped, sitesKnown: sitesKnown(state) });
}

/**
 * Takes in the tombstones of the other peers' heartbeats, learns the sites of the view (when last heard:
 * now while alive), forgets long-silent ones, drops tombstones too old to pass on, and persists what
 * changed in one effect. A site last heard longer ago than knownSiteForgetAfterMs is not learnt, so the
 * record of a forgotten site that lingers in the view as dead does not bring it back.
 */
function updateKnownSites(state: CustodyState, nowMs: number, effects: CustodyEffect[]): void {
  const change = noSitesChange();
  if (state.startedAt === undefined) {
    creditDowntime(state, nowMs, change);
    dropDebtOfForgottenSites(state, effects);
  }
  adoptTombstones(state, nowMs, change, effects);
  const heard = new Map<string, { lastHeardMs: number; settled: boolean }>();
  // An alive record is alive as of its view: a tick after this process stood still, before the next view,
  // heard a site that had died meanwhile "now", past its forgetting elsewhere (simulation, seed 40251).
  const aliveAsOfMs = Math.min(nowMs, state.viewAtMs);
  for (const m of state.members) {
    if (m.siteName === state.config.selfSiteName) continue;
    const heardMs = m.status === 'alive' ? aliveAsOfMs : m.lastHeardAtMs;
    // A forgotten site is known again, and a known site's time moves on, only with a peer of it alive for
    // forgottenSiteReturnAliveMs. Not a dead or suspect record: the record of a site that is gone, whose
    // time this process's own pause may even have moved on (membership's stall rule: helper 52 saw a paused
    // peer learn a site it had just forgotten). Nor a heartbeat that made it alive a moment ago: a late or
    // relayed one of a site that is gone. Either moved a known site's time past a forgetting at another
    // peer whose tombstone had not arrived yet, which was then refused here for good as older than that
    // news (helper 92: a site stopped and forgotten at once stayed known, owed copies and counted as a
    // voter at one peer). A site not known here is learnt from any record: copies are owed to it at once.
    const settled = m.status === 'alive' && aliveAsOfMs - m.statusSinceMs >= state.config.forgottenSiteReturnAliveMs;
    const forgottenAtMs = state.forgottenSites.get(m.siteName)?.forgottenAtMs;
    if (forgottenAtMs !== undefined && (!settled || heardMs <= forgottenAtMs)) continue;
    if (!settled && state.knownSites.has(m.siteName)) continue;
    const before = heard.get(m.siteName);
    heard.set(m.siteName, { lastHeardMs: Math.max(heardMs, before?.lastHeardMs ?? Number.NEGATIVE_INFINITY), settled: settled || before?.settled === true });
  }
  for (const [siteName, { lastHeardMs, settled }] of heard) {
    if (nowMs - lastHeardMs >= state.config.knownSiteForgetAfterMs) continue;
    // Heard again: its tombstone goes.
    if (state.forgottenSites.delete(siteName)) change.tombstonesDropped.push(siteName);
    const known = state.knownSites.get(siteName);
    const settlesNow = settled && state.knownSitesUnsettled.has(siteName);
    if (known !== undefined && !settlesNow && lastHeardMs - known < knownSiteRefreshMs) continue;
    if (known === undefined) change.learnt.push(siteName);
    state.knownSites.set(siteName, lastHeardMs);
    // Learnt from a record not settled: perhaps a heartbeat read late (this peer stood still), sent before
    // the site went down and was forgotten elsewhere; that forgetting must still be taken in when it comes.
    if (settled) state.knownSitesUnsettled.delete(siteName);
    else state.knownSitesUnsettled.add(siteName);
    change.seen.push(knownSiteRecord(state, siteName));
  }
  forgetSilentSites(state, nowMs, change, effects);
  for (const [siteName, { forgottenAtMs }] of state.forgottenSites) {
    if (silenceMs(state, nowMs, forgottenAtMs) < state.config.knownSiteForgetAfterMs) continue;
    state.forgottenSites.delete(siteName);
    change.tombstonesDropped.push(siteName);
  }
  persistSitesChange(state, change, effects);
}

/**
 * At the first view after a start: the time since this peer last heard any site (it was down, or its
 * clock was set forward meanwhile) is not the other sites' silence, and sites last heard "in the future"
 * (its clock was set back) were heard now. Before, a restart with the clock a year ahead forgot every site
 * not yet heard, with the copies owed to them, and passed the forgetting on (hunt 72); one set back kept
 * dead sites known, and their debt growing to the bound, for as long as the step. Sites are forgotten by
 * silence during this peer's own runs, across restarts. The times themselves are kept (apart from those
 * in the future): a tombstone is compared with when a site was really last heard.
 */
function creditDowntime(state: CustodyState, nowMs: number, change: SitesChange): void {
  let lastHeardAnyMs = Number.NEGATIVE_INFINITY;
  for (const [siteName, lastHeardMs] of state.knownSites) {
    if (lastHeardMs > nowMs) {
      state.knownSites.set(siteName, nowMs);
      change.seen.push(knownSiteRecord(state, siteName));
    }
    lastHeardAnyMs = Math.max(lastHeardAnyMs, Math.min(lastHeardMs, nowMs));
  }
  state.startedAt = { nowMs, awayMs: lastHeardAnyMs === Number.NEGATIVE_INFINITY ? 0 : nowMs - lastHeardAnyMs };
}

/**
 * At the first view after a start: copies still owed to a site that is forgotten here (a tombstone, not
 * known) are dropped. The actor writes a forgetting's tombstone before the same step's debt removals, so a
 * crash between the two left them on disk: nothing drained them (the site is never alive) and nothing
 * forgot them again (the tombstone was already there), and they counted against debtEntriesMax for good.
 */
function dropDebtOfForgottenSites(state: CustodyState, effects: CustodyEffect[]): void {
  for (const siteName of [...state.debtBySite.keys()]) {
    if (state.forgottenSites.has(siteName) && !state.knownSites.has(siteName)) dropDebtOf(state, siteName, effects);
  }
}

/** Every copy owed to `siteName` is dropped, here and on disk. */
function dropDebtOf(state: CustodyState, siteName: string, effects: CustodyEffect[]): void {
  for (const [key, entry] of [...(state.debtBySite.get(siteName) ?? [])]) {
    forgiveCopy(state, key);
    state.replicationsInFlight.delete(key);
    effects.push({ type: 'removeDebt', sopInstanceUid: entry.sopInstanceUid, siteName: entry.siteName });
  }
}

/** Time since `sinceMs` that this peer ran: its time away before this start left out for older times. */
function silenceMs(state: CustodyState, nowMs: number, sinceMs: number): number {
  const startedAt = state.startedAt;
  return nowMs - sinceMs - (startedAt !== undefined && sinceMs < startedAt.nowMs ? startedAt.awayMs : 0);
}

/**
 * One forgetting read on two peers' clocks differs by the heartbeats' transit times (membership carries
 * tombstone times onto the receiver's clock): a later time for a tombstone held here is news only beyond
 * this, or two peers passing one tombstone back and forth would each take the other's as newer, every
 * heartbeat, and move it on by the transit time each time.
 */
export const tombstoneNewsMinMs = knownSiteRefreshMs;

/**
 * A site another peer forgot is forgotten here too (a week's silence there, or the operator's
 * POST /api/forget-site at one peer), unless it is up here or was heard here after it was forgotten there
 * (news the other peer lacks). A tombstone of a site unknown here is kept to pass on, so that it reaches
 * peers that start later, restored from an older backup. Tombstone times are on this peer's clock (the
 * member records' tombstones are shifted by membership), so sites whose wall clocks disagree still agree
 * on which came first, the forgetting or the last heartbeat (before, a day's skew kept a returned site
 * forgotten for a day, or a forgetting from spreading: hunt 72).
 */
function adoptTombstones(state: CustodyState, nowMs: number, change: SitesChange, effects: CustodyEffect[]): void {
  const c = state.config;
  let up: Set<string> | undefined;
  for (const m of state.members) {
    if (m.forgottenSites === undefined || m.status !== 'alive' || m.peerId === c.selfPeerId) continue;
    for (const tombstone of m.forgottenSites) {
      const { siteName, forgottenAtMs } = tombstone;
      if (siteName === c.selfSiteName || nowMs - forgottenAtMs >= c.knownSiteForgetAfterMs) continue;
      // Held here as recent, and as much the operator's: no news (an operator's forgetting is news to one by silence).
      const held = state.forgottenSites.get(siteName);
      if (held !== undefined && held.forgottenAtMs >= forgottenAtMs - tombstoneNewsMinMs && (held.byOperator === true || tombstone.byOperator !== true)) continue;
      // Not the view's dead records' times: this process's pauses move them on (see updateKnownSites); nor
      // the time of a site learnt from a peer not settled (KnownSite.unsettled).
      if (!state.knownSitesUnsettled.has(siteName) && (state.knownSites.get(siteName) ?? Number.NEGATIVE_INFINITY) > forgottenAtMs) continue;
      up ??= sitesUp(state);
      if (up.has(siteName)) continue;
      const wasKnown = state.knownSites.has(siteName) || state.debtBySite.has(siteName);
      // The operator's word stays with the site while it is not heard again: a later forgetting by silence at a
      // peer that missed it must not pass on without it, and leave the rosters that hear only that one waiting.
      const adopted = tombstoneOf(siteName, Math.max(forgottenAtMs, held?.forgottenAtMs ?? forgottenAtMs), tombstone.byOperator === true || held?.byOperator === true);
      forgetSites(state, [adopted], change, effects);
      (wasKnown ? change.forgotten : change.tombstonesAdopted).push(adopted);
    }
  }
}

/**
 * Forgets sites not alive now and silent for knownSiteForgetAfterMs, then the longest-silent ones beyond
 * knownSitesMax, with the copies owed to them.
 */
function forgetSilentSites(state: CustodyState, nowMs: number, change: SitesChange, effects: CustodyEffect[]): void {
  const c = state.config;
  const alive = new Set(state.members.filter((m) => m.status === 'alive').map((m) => m.siteName));
  const silent: string[] = [];
  for (const [siteName, lastHeardMs] of state.knownSites) {
    if (!alive.has(siteName) && silenceMs(state, nowMs, lastHeardMs) >= c.knownSiteForgetAfterMs) silent.push(siteName);
  }
  const excess = state.knownSites.size - silent.length - c.knownSitesMax;
  if (excess > 0) {
    const silentLongestFirst = [...state.knownSites].filter(([siteName]) => !silent.includes(siteName)).sort((a, b) => a[1] - b[1]);
    silent.push(...silentLongestFirst.slice(0, excess).map(([siteName]) => siteName));
  }
  const forgotten = silent.map((siteName) => tombstoneOf(siteName, nowMs, false));
  forgetSites(state, forgotten, change, effects);
  change.forgotten.push(...forgotten);
}

/** A tombstone as custody keeps, persists and passes it on: `byOperator` only when true (the field is new). */
function tombstoneOf(siteName: string, forgottenAtMs: number, byOperator: boolean): ForgottenSite {
  return byOperator ? { siteName, forgottenAtMs, byOperator: true } : { siteName, forgottenAtMs };
}

/** Drops sites from the known ones, with every copy owed to them, and keeps their tombstones (bounded). */
function forgetSites(state: CustodyState, sites: readonly ForgottenSite[], change: SitesChange, effects: CustodyEffect[]): void {
  if (sites.length === 0) return;
  for (const { siteName, forgottenAtMs, byOperator } of sites) {
    state.knownSites.delete(siteName);
    state.knownSitesUnsettled.delete(siteName);
    // Deleted first, so that the map's order is the order of forgetting and the bound drops the oldest.
    state.forgottenSites.delete(siteName);
    state.forgottenSites.set(siteName, tombstoneOf(siteName, forgottenAtMs, byOperator === true));
  }
  // Bounded like the known sites: the oldest forgetting is dropped first (its dead record is long gone).
  for (const siteName of state.forgottenSites.keys()) {
    if (state.forgottenSites.size <= state.config.knownSitesMax) break;
    state.forgottenSites.delete(siteName);
    change.tombstonesDropped.push(siteName);
  }
  for (const { siteName } of sites) dropDebtOf(state, siteName, effects);
}

function siteDebt(debtBySite: Map<string, Map<string, DebtEntry>>, siteName: string): Map<string, DebtEntry> {
  let owed = debtBySite.get(siteName);
  if (owed === undefined) debtBySite.set(siteName, (owed = new Map()));
  return owed;
}

function oweCopy(state: CustodyState, key: string, entry: DebtEntry): void {
  state.debt.set(key, entry);
  siteDebt(state.debtBySite, entry.siteName).set(key, entry);
}

/** Removes a debt entry; false when there was none. */
function forgiveCopy(state: CustodyState, key: string): boolean {
  const entry = state.debt.get(key);
  if (entry === undefined) return false;
  state.debt.delete(key);
  const owed = state.debtBySite.get(entry.siteName);
  owed?.delete(key);
  if (owed?.size === 0) state.debtBySite.delete(entry.siteName);
  return true;
}

/**
 * Where a new instance's copies go: one peer per other site that is alive, the one that keeps the site
 * when several claim it (sitePrecedence: started first, then the lowest peerId). The ingest pushes to
 * exactly these peers, so that custody's `replicate` effects find the pushes' results. A peer started
 * later under a copied --site (it stops itself within seconds) held the site's copies while it lived when
 * its peerId was the lower (review 83).
 */
export function aliveReplicaTargets(members: readonly MemberRecord[], selfSiteName: string): Array<{ siteName: string; peerId: string }> {
  const targets = new Map<string, MemberRecord>();
  for (const m of members) {
    if (m.siteName === selfSiteName || m.status !== 'alive') continue;
    const chosen = targets.get(m.siteName);
    if (chosen === undefined || sitePrecedence(m, chosen) < 0) targets.set(m.siteName, m);
  }
  return [...targets].map(([siteName, m]) => ({ siteName, peerId: m.peerId }));
}

/**
 * Whether `from`'s acknowledgement stands for `siteName`: not while an alive peer with precedence claims
 * that site at another DICOM address (as siteConflictsOf sees a conflict), unless both say the site has
 * several peers on purpose. A twin's copy is elsewhere: counted, it made an instance acknowledged with its
 * origin and the twin, online at its origin alone once the twin stopped, and forgave the real site's debt.
 * A peer not in the view yet (its acknowledgement outran its heartbeat) is taken at its word.
 */
function ackCountsForSite(state: CustodyState, from: string, siteName: string, nowMs: number): boolean {
  const { members } = state;
  const acking = members.find((m) => m.peerId === from);
  if (acking === undefined) return true;
  // A dead predecessor's late heartbeats make it alive for moments: its claim must last (review 88).
  return siteKeeperAgainst(members, acking, siteName, nowMs, state.config.siteClaimConfirmMs ?? siteClaimConfirmMsDefault) === undefined;
}

/** This site and the sites of the members in one of `statuses`. */
function sitesOf(state: CustodyState, statuses: readonly MemberStatus[]): Set<string> {
  const sites = new Set<string>([state.config.selfSiteName]);
  for (const m of state.members) if (statuses.includes(m.status)) sites.add(m.siteName);
  return sites;
}

/** Sites up: alive or suspect (a pause is not a death). */
function sitesUp(state: CustodyState): Set<string> {
  return sitesOf(state, ['alive', 'suspect']);
}

/** True in the first storeSettleAfterStartMs after a start (see CustodyConfig.storeSettleAfterStartMs). */
function settlingAfterStart(state: CustodyState, nowMs: number): boolean {
  const settleMs = state.config.storeSettleAfterStartMs ?? storeSettleAfterStartMsDefault;
  return settleMs > 0 && (state.startedAt === undefined || nowMs - state.startedAt.nowMs < settleMs);
}

/**
 * `sites`, and after a start the known sites not heard yet in this run (no record of theirs in the view: one
 * seen dead is not awaited).
 */
function withSitesAwaited(state: CustodyState, sites: Set<string>, nowMs: number): Set<string> {
  if (!settlingAfterStart(state, nowMs)) return sites;
  const heard = new Set(state.members.map((m) => m.siteName));
  for (const siteName of state.knownSites.keys()) if (!heard.has(siteName)) sites.add(siteName);
  return sites;
}

/** The sites a store's quorum may count on: alive ones, and the awaited ones (see withSitesAwaited). */
function sitesForQuorum(state: CustodyState, nowMs: number): number {
  return withSitesAwaited(state, sitesOf(state, ['alive']), nowMs).size;
}

/** Sites up (see sitesUp), and the awaited ones (see withSitesAwaited). */
function sitesUpOrAwaited(state: CustodyState, nowMs: number): Set<string> {
  return withSitesAwaited(state, sitesUp(state), nowMs);
}

function onStoreRequested(
  state: CustodyState,
  requestId: string,
  sopInstanceUid: string,
  sha256: string,
  effects: CustodyEffect[],
): void {
  const c = state.config;
  const owed = otherKnownSites(state).filter((site) => !state.debt.has(debtKey(sopInstanceUid, site))).length;
  const busy = state.writing.size + state.pending.size >= c.pendingStoresMax || state.writing.has(requestId);
  // Refuse rather than let the debt table grow without bound while sites stay away.
  if (busy || state.debt.size + owed > c.debtEntriesMax) {
    effects.push(ackOf(requestId, sopInstanceUid, StoreStatus.OutOfResources, 0, []));
    return;
  }
  state.writing.set(requestId, { requestId, sopInstanceUid, sha256 });
  effects.push({ type: 'writeLocal', requestId, sopInstanceUid });
}

function onLocalWriteDone(
  state: CustodyState,
  requestId: string,
  ok: boolean,
  nowMs: number,
  effects: CustodyEffect[],
): void {
  const store = state.writing.get(requestId);
  if (store === undefined) return;
  state.writing.delete(requestId);
  const self = state.config.selfSiteName;
  if (!ok) {
    effects.push(ackOf(requestId, store.sopInstanceUid, StoreStatus.OutOfResources, 0, []));
    return;
  }
  digestAdd(state.digest, store.sopInstanceUid, store.sha256);
  noteHeld(state, store.sopInstanceUid);
  for (const siteName of otherKnownSites(state)) {
    const key = debtKey(store.sopInstanceUid, siteName);
    if (state.debt.has(key)) continue;
    const entry: DebtEntry = { sopInstanceUid: store.sopInstanceUid, siteName, sinceMs: nowMs };
    oweCopy(state, key, entry);
    effects.push({ type: 'persistDebt', entry });
  }
  const quorum = writeQuorumNow(state, nowMs);
  const pending: PendingStore = {
    requestId,
    sopInstanceUid: store.sopInstanceUid,
    quorum,
    sitesHolding: new Set([self]),
    deadlineMs: nowMs + state.config.quorumTimeoutMs,
  };
  if (pending.sitesHolding.size >= quorum) {
    effects.push(ackOf(requestId, store.sopInstanceUid, StoreStatus.Success, quorum, [...pending.sitesHolding]));
  } else {
    state.pending.set(requestId, pending);
    refuseIfQuorumUnreachable(state, pending, sitesUpOrAwaited(state, nowMs), effects);
  }
  drainDebt(state, nowMs, effects);
}

/** refuseIfQuorumUnreachable for every pending store: the view changed, or a start's wait for the known sites ended. */
function answerUnreachableQuorums(state: CustodyState, nowMs: number, effects: CustodyEffect[]): void {
  if (state.pending.size === 0) return;
  const up = sitesUpOrAwaited(state, nowMs);
  for (const pending of [...state.pending.values()]) refuseIfQuorumUnreachable(state, pending, up, effects);
}

/**
 * Answers a pending store at once when its quorum can no longer be reached: the sites holding it and
 * those still up (alive or suspect: a pause is not a death) are fewer than the quorum. 0xA700, or under
 * 'auto' Success when what it holds is what the sites up now ask for. An explicit
 * --write-quorum at a site cut off from the others otherwise waited the whole quorum timeout per C-STORE
 * (10 s an image). The copies stay owed as debt, as on a timeout.
 */
function refuseIfQuorumUnreachable(state: CustodyState, pending: PendingStore, up: ReadonlySet<string>, effects: CustodyEffect[]): void {
  const canHold = new Set([...pending.sitesHolding, ...up]);
  if (canHold.size >= pending.quorum) return;
  state.pending.delete(pending.requestId);
  // 'auto' asks for what the sites up can give: a store in flight when this site is left alone is
  // acknowledged on its local copy, as the next one is (helper 65: it was answered 0xA700, and storescu stopped).
  const quorumNow = effectiveWriteQuorum(state.config, canHold.size);
  if (state.config.writeQuorum === 'auto' && pending.sitesHolding.size >= quorumNow) {
    effects.push(ackOf(pending.requestId, pending.sopInstanceUid, StoreStatus.Success, quorumNow, [...pending.sitesHolding].sort()));
    return;
  }
  effects.push(ackOf(pending.requestId, pending.sopInstanceUid, StoreStatus.OutOfResources, pending.quorum, [...pending.sitesHolding].sort(), up.size));
}

function onReplicaStored(
  state: CustodyState,
  sopInstanceUid: string,
  sha256: string,
  fromPeerId: string,
  effects: CustodyEffect[],
): void {
  holdReplica(state, sopInstanceUid, sha256);
  ackReplica(state, sopInstanceUid, fromPeerId, effects);
}

/** A stored copy is held from now on. */
function holdReplica(state: CustodyState, sopInstanceUid: string, sha256: string): void {
  state.fetchesInFlight.delete(sopInstanceUid);
  state.pullQueue.delete(sopInstanceUid);
  state.copiesIncoming.delete(sopInstanceUid);
  digestAdd(state.digest, sopInstanceUid, sha256);
  noteHeld(state, sopInstanceUid);
}

/** A key now held is no longer awaited from any partner; a partner none of whose keys is awaited is caught up with. */
function noteHeld(state: CustodyState, sopInstanceUid: string): void {
  for (const [peerId, awaited] of state.reconciliationAwaited) {
    if (!awaited.delete(sopInstanceUid) || awaited.size > 0) continue;
    state.reconciliationAwaited.delete(peerId);
    state.reconciledPeers.add(peerId);
  }
}

/**
 * A partner's whole list of keys in the buckets (or leaves) that differ: once this peer holds every one of
 * them it lacks, it holds everything the partner held then (copies the partner owes this site travel as debt).
 */
function noteWholeExchange(state: CustodyState, from: string, missing: readonly InstanceKey[]): void {
  if (missing.length === 0) {
    state.reconciliationAwaited.delete(from);
    state.reconciledPeers.add(from);
    return;
  }
  state.reconciliationAwaited.set(from, new Set(missing.map((k) => k.sopInstanceUid)));
}

function ackReplica(state: CustodyState, sopInstanceUid: string, fromPeerId: string, effects: CustodyEffect[]): void {
  // Acknowledge even a copy we already had: the sender may still owe it to this site.
  effects.push({
    type: 'send',
    to: fromPeerId,
    message: { type: 'replicaAck', sopInstanceUid, siteName: state.config.selfSiteName },
  });
}

function onMessage(
  state: CustodyState,
  from: string,
  message: CustodyMessage,
  nowMs: number,
  effects: CustodyEffect[],
): void {
  switch (message.type) {
    case 'replicaAck':
      onReplicaAck(state, from, message.sopInstanceUid, message.siteName, nowMs, effects);
      return;
    case 'repairDigest': {
      const buckets = diffBuckets(state.digest, message.buckets);
      if (buckets.length === 0) return;
      const afterUid = message.afterUid ?? '';
      const perBucketMin = state.config.repairLeavesKeysPerBucketMin ?? repairLeavesKeysPerBucketMinDefault;
      if (message.leaves === true && buckets.length <= repairLeafBucketsMax && keyCountInBuckets(state.digest, buckets) >= perBucketMin * buckets.length) {
        effects.push({ type: 'send', to: from, message: { type: 'repairLeaves', buckets, leafHashes: digestLeafHashes(state.digest, buckets), afterUid } });
        return;
      }
      const keys = keysInBuckets(state.digest, buckets, state.config.repairKeysMax, afterUid, owedTo(state, from));
      effects.push({ type: 'send', to: from, message: { type: 'repairKeys', buckets, keys, replyWanted: true, afterUid } });
      return;
    }
    case 'repairLeaves': {
      // Our answer to our own repairDigest: the leaves that differ, our keys in them, theirs asked for.
      const leaves = diffLeaves(state.digest, message.buckets, message.leafHashes);
      if (leaves.length === 0) return;
      const afterUid = message.afterUid ?? '';
      const keys = keysInLeaves(state.digest, leaves, state.config.repairKeysMax, afterUid, owedTo(state, from));
      effects.push({ type: 'send', to: from, message: { type: 'repairKeys', buckets: [], leaves, keys, replyWanted: true, afterUid } });
      return;
    }
    case 'repairKeys': {
      const { leaves } = message;
      const afterUid = message.afterUid ?? '';
      const wantedBuckets = new Set(message.buckets);
      const wantedLeaves = new Set(leaves);
      // Only keys of the buckets (or leaves) named count: a peer cannot make us pull from ones it did not list.
      const theirs = message.keys.filter((k) => (leaves === undefined ? wantedBuckets.has(bucketOf(k.sopInstanceUid)) : wantedLeaves.has(leafOf(k.sopInstanceUid))));
      reportUidConflicts(state, from, theirs, effects);
      const missing = missingKeys(state.digest, theirs);
      // Not cut at repairKeysMax, from the first key on: the whole difference.
      if (afterUid === '' && message.keys.length < state.config.repairKeysMax) noteWholeExchange(state, from, missing);
      if (!repairPaused(state, nowMs)) pull(state, from, missing, nowMs, effects);
      const ourKeys = () =>
        leaves === undefined
          ? keysInBuckets(state.digest, message.buckets.slice(0, 256), state.config.repairKeysMax, afterUid, owedTo(state, from))
          : keysInLeaves(state.digest, leaves, state.config.repairKeysMax, afterUid, owedTo(state, from));
      if (message.replyWanted) {
        const keys = ourKeys();
        effects.push({
          type: 'send',
          to: from,
          message: { type: 'repairKeys', buckets: message.buckets, ...(leaves === undefined ? {} : { leaves }), keys, replyWanted: false, afterUid },
        });
        // By buckets, the peer answering with replyWanted began the exchange: it has both lists now.
        if (leaves === undefined) advanceRepairCursor(state, from, [theirs, keys]);
      } else if (leaves !== undefined) {
        // By leaves, the exchange's last message comes back to the peer that began it (its own list again).
        advanceRepairCursor(state, from, [theirs, ourKeys()]);
      }
      return;
    }
    default:
      assertNever(message);
  }
}

/**
 * The keys this peer owes `peerId`'s site a copy of (debt entries): left out of the keys it lists to that
 * peer, which would otherwise pull them while the debt drain sends them too. Each copy then crossed the
 * link twice (hunt 67: two sites catching up over 10 Mbit/s pulled from the returning site nearly all it
 * was draining to them). The debt stays until that site acknowledges the copy, so it still gets there.
 */
function owedTo(state: CustodyState, peerId: string): ((sopInstanceUid: string) => boolean) | undefined {
  const siteName = state.members.find((m) => m.peerId === peerId)?.siteName;
  const owed = siteName === undefined ? undefined : state.debtBySite.get(siteName);
  if (owed === undefined || owed.size === 0) return undefined;
  return (sopInstanceUid) => owed.has(debtKey(sopInstanceUid, siteName!));
}

function onReplicaAck(
  state: CustodyState,
  from: string,
  sopInstanceUid: string,
  siteName: string,
  nowMs: number,
  effects: CustodyEffect[],
): void {
  // A finished transfer frees a slot: offer the next owed copy now rather than at the next tick.
  if (takeReplicaAck(state, from, sopInstanceUid, siteName, nowMs, effects)) drainDebt(state, nowMs, effects);
}

/** onReplicaAck without the refill; returns whether the copy's transfer slot was freed. */
function takeReplicaAck(state: CustodyState, from: string, sopInstanceUid: string, siteName: string, nowMs: number, effects: CustodyEffect[]): boolean {
  // A later twin's copy is not the site's (see ackCountsForSite): the copy stays owed, and a transfer to the
  // site's holder still under way keeps its slot (freed here, the drain sent the copy a second time: review 88).
  if (!ackCountsForSite(state, from, siteName, nowMs)) return false;
  const key = debtKey(sopInstanceUid, siteName);
  const wasInFlight = state.replicationsInFlight.delete(key);
  if (forgiveCopy(state, key)) effects.push({ type: 'removeDebt', sopInstanceUid, siteName });
  countTowardsQuorum(state, sopInstanceUid, siteName, effects);
  return wasInFlight;
}

/** A site holds a copy: the stores waiting for their quorum that it completes are answered. */
function countTowardsQuorum(state: CustodyState, sopInstanceUid: string, siteName: string, effects: CustodyEffect[]): void {
  for (const pending of [...state.pending.values()]) {
    if (pending.sopInstanceUid !== sopInstanceUid) continue;
    pending.sitesHolding.add(siteName);
    if (pending.sitesHolding.size >= pending.quorum) {
      state.pending.delete(pending.requestId);
      effects.push(
        ackOf(pending.requestId, sopInstanceUid, StoreStatus.Success, pending.quorum, [...pending.sitesHolding].sort()),
      );
    }
  }
}

/** Reported conflicts kept per process: beyond this many, later ones are not reported (the log has plenty). */
export const uidConflictsMax = 1024;

/**
 * Keys another peer holds under a UID we hold with other bytes. Nothing is pulled or replaced: both copies
 * were acknowledged, and as at one site (a UID already stored is answered Success, the new bytes dropped)
 * each site keeps what it stored first. The administrator hears of it once per UID.
 */
function reportUidConflicts(state: CustodyState, from: string, theirs: readonly InstanceKey[], effects: CustodyEffect[]): void {
  for (const k of theirs) {
    const localSha256 = digestSha256(state.digest, k.sopInstanceUid);
    if (localSha256 === undefined || localSha256 === k.sha256 || state.uidConflicts.has(k.sopInstanceUid)) continue;
    if (state.uidConflicts.size >= uidConflictsMax) return;
    state.uidConflicts.add(k.sopInstanceUid);
    effects.push({ type: 'uidConflict', sopInstanceUid: k.sopInstanceUid, localSha256, peerSha256: k.sha256, peerId: from });
  }
}

/**
 * After an exchange both sides have seen each other's keys up to the end of the shorter full window: the
 * next exchange with that partner starts there. When neither list was cut at repairKeysMax the whole
 * difference was listed, and the next one starts from the first UID again.
 */
function advanceRepairCursor(state: CustodyState, partner: string, lists: ReadonlyArray<readonly InstanceKey[]>): void {
  let cursor: string | undefined;
  for (const keys of lists) {
    if (keys.length < state.config.repairKeysMax) continue;
    const last = keys[keys.length - 1]!.sopInstanceUid;
    if (cursor === undefined || last < cursor) cursor = last;
  }
  if (cursor === undefined) state.repairCursors.delete(partner);
  else state.repairCursors.set(partner, cursor);
}

/**
 * No repair exchange and no new pulls: while other sites push copies to us (see CustodyConfig.repairQuietMs;
 * a due repair waits for them at most repairQuietOverrideFactor x that), or while our store refuses writes
 * (see storeWritableChanged).
 */
function repairPaused(state: CustodyState, nowMs: number): boolean {
  if (!state.storeWritable) return true;
  const deferredLongEnough = state.repairDeferredSinceMs !== undefined && nowMs - state.repairDeferredSinceMs >= repairQuietOverrideFactor * state.config.repairQuietMs;
  return copiesArriving(state, nowMs) && !deferredLongEnough;
}

function copiesArriving(state: CustodyState, nowMs: number): boolean {
  return nowMs - state.lastPushedCopyAtMs < state.config.repairQuietMs;
}

/** Queues the keys `from` holds and we miss (as another holder where queued already), then starts pulls. */
function pull(state: CustodyState, from: string, keys: readonly InstanceKey[], nowMs: number, effects: CustodyEffect[]): void {
  for (const k of keys) {
    if (state.fetchesInFlight.has(k.sopInstanceUid) || state.copiesIncoming.has(k.sopInstanceUid)) continue;
    const holders = state.pullQueue.get(k.sopInstanceUid);
    if (holders === undefined) {
      if (state.pullQueue.size < state.config.repairKeysMax) state.pullQueue.set(k.sopInstanceUid, [from]);
    } else if (!holders.includes(from)) {
      holders.push(from);
    }
  }
  pullNext(state, nowMs, effects);
}

/**
 * Starts queued pulls while there is room, skipping keys that arrived meanwhile; each from the holder
 * with the fewest pulls in flight (the first one named on a tie), so the sources share the work.
 */
function pullNext(state: CustodyState, nowMs: number, effects: CustodyEffect[]): void {
  if (!state.storeWritable || state.pullQueue.size === 0 || state.fetchesInFlight.size >= state.config.fetchesInFlightMax) return;
  const inFlightFrom = new Map<string, number>();
  for (const { from } of state.fetchesInFlight.values()) inFlightFrom.set(from, (inFlightFrom.get(from) ?? 0) + 1);
  for (const [uid, holders] of state.pullQueue) {
    if (state.fetchesInFlight.size >= state.config.fetchesInFlightMax) return;
    state.pullQueue.delete(uid);
    if (digestHas(state.digest, uid) || state.fetchesInFlight.has(uid) || state.copiesIncoming.has(uid)) continue;
    let from = holders[0]!;
    for (const holder of holders) if ((inFlightFrom.get(holder) ?? 0) < (inFlightFrom.get(from) ?? 0)) from = holder;
    inFlightFrom.set(from, (inFlightFrom.get(from) ?? 0) + 1);
    state.fetchesInFlight.set(uid, { sinceMs: nowMs, from });
    effects.push({ type: 'fetch', fromPeerId: from, sopInstanceUid: uid });
  }
}

function onTick(state: CustodyState, nowMs: number, effects: CustodyEffect[]): void {
  const c = state.config;
  for (const pending of [...state.pending.values()]) {
    if (nowMs < pending.deadlineMs) continue;
    // The copies stay owed as debt; only the modality's answer gives up, and it will retry.
    state.pending.delete(pending.requestId);
    effects.push(
      ackOf(pending.requestId, pending.sopInstanceUid, StoreStatus.OutOfResources, pending.quorum, [...pending.sitesHolding].sort()),
    );
  }
  answerUnreachableQuorums(state, nowMs, effects);
  for (const [key, sentAtMs] of [...state.replicationsInFlight]) {
    if (nowMs - sentAtMs >= c.replicationRetryMs) state.replicationsInFlight.delete(key);
  }
  // Deleting the entry being visited is safe in a Map's iteration: no copy of the map per tick.
  for (const [uid, fetch] of state.fetchesInFlight) {
    if (nowMs - fetch.sinceMs >= c.replicationRetryMs) state.fetchesInFlight.delete(uid);
  }
  for (const [uid, saidAtMs] of state.copiesIncoming) {
    if (nowMs - saidAtMs >= incomingCopyForgetMs) state.copiesIncoming.delete(uid);
  }
  updateKnownSites(state, nowMs, effects);
  drainDebt(state, nowMs, effects);
  if (!copiesArriving(state, nowMs)) state.repairDeferredSinceMs = undefined;
  else if (nowMs >= state.nextRepairAtMs) state.repairDeferredSinceMs ??= nowMs;
  // The interval runs from an exchange that started: a tick that found no partner (a start, before any
  // heartbeat) left a returning site without repair for a whole interval after the others were heard.
  if (nowMs >= state.nextRepairAtMs && !repairPaused(state, nowMs) && startRepair(state, effects)) {
    state.nextRepairAtMs = nowMs + c.repairIntervalMs;
  }
}

/**
 * A refusal while the peer's back-off runs is another batch of the same attempt; the first after it ran out
 * doubles it, up to replicationBackOffMaxMs.
 */
function backOffReplication(state: CustodyState, peerId: string, nowMs: number): void {
  const incarnation = state.members.find((m) => m.peerId === peerId)?.incarnation;
  if (incarnation === undefined) return;
  const c = state.config;
  const previous = state.replicationBackOff.get(peerId);
  if (previous !== undefined && previous.incarnation === incarnation && nowMs < previous.untilMs) return;
  const minMs = c.replicationBackOffMinMs ?? replicationBackOffMinMsDefault;
  const delayMs = previous === undefined || previous.incarnation !== incarnation ? minMs : Math.min(previous.delayMs * 2, c.replicationBackOffMaxMs ?? replicationBackOffMaxMsDefault);
  state.replicationBackOff.set(peerId, { incarnation, delayMs, untilMs: nowMs + delayMs });
}

/** Whether copies to `peerId` wait for its back-off (see 'peerLacksProtocol'). */
export function replicationBackedOff(state: CustodyState, peerId: string, nowMs: number): boolean {
  return nowMs < (state.replicationBackOff.get(peerId)?.untilMs ?? Number.NEGATIVE_INFINITY);
}

/**
 * Offers owed copies to sites that are alive, oldest debt first, within the in-flight bound, leaving a
 * quarter of it to each other alive site: the copies to a site that refuses or stalls (a full disk) took
 * every slot, being the oldest debt, and a new store's copy to a healthy site waited behind them until its
 * quorum deadline (every C-STORE answered 0xA700 while the quorum was there). Not an equal share: a site
 * catching up alone keeps three quarters of the slots (three batches of 128) instead of half.
 */
function drainDebt(state: CustodyState, nowMs: number, effects: CustodyEffect[]): void {
  const c = state.config;
  if (state.replicationsInFlight.size >= c.replicationsInFlightMax || state.debt.size === 0) return;
  const targets = aliveReplicaTargets(state.members, c.selfSiteName);
  const reservedPerOtherSite = Math.floor(c.replicationsInFlightMax / 4);
  const perSiteMax = Math.max(Math.ceil(c.replicationsInFlightMax / Math.max(1, targets.length)), c.replicationsInFlightMax - reservedPerOtherSite * (targets.length - 1));
  const inFlightBySite = new Map<string, number>();
  for (const key of state.replicationsInFlight.keys()) {
    const siteName = state.debt.get(key)?.siteName;
    if (siteName !== undefined) inFlightBySite.set(siteName, (inFlightBySite.get(siteName) ?? 0) + 1);
  }
  for (const { siteName, peerId } of targets) {
    if (replicationBackedOff(state, peerId, nowMs)) continue;
    let inFlight = inFlightBySite.get(siteName) ?? 0;
    // Oldest first; the entries skipped are those in flight, at most replicationsInFlightMax.
    for (const [key, entry] of state.debtBySite.get(siteName) ?? []) {
      if (state.replicationsInFlight.size >= c.replicationsInFlightMax) return;
      if (inFlight >= perSiteMax) break;
      if (state.replicationsInFlight.has(key)) continue;
      inFlight++;
      state.replicationsInFlight.set(key, nowMs);
      effects.push({ type: 'replicate', toPeerId: peerId, toSiteName: siteName, sopInstanceUid: entry.sopInstanceUid });
    }
  }
}

/**
 * Sends our bucket hashes to every alive peer whose digest root differs from ours: each answers with its
 * keys in the differing buckets, so keys that several of them hold can be pulled from all of them.
 * Returns whether there was any such peer.
 */
function startRepair(state: CustodyState, effects: CustodyEffect[]): boolean {
  const root = digestRoot(state.digest);
  const partners = state.members.filter(
    (m) => m.status === 'alive' && m.peerId !== state.config.selfPeerId && m.digestRoot !== root,
  );
  if (partners.length === 0) return false;
  const buckets = digestBuckets(state.digest);
  for (const partner of partners) {
    effects.push({ type: 'send', to: partner.peerId, message: { type: 'repairDigest', buckets, afterUid: state.repairCursors.get(partner.peerId), leaves: true } });
  }
  return true;
}

/**
 * Whether a peer holds nothing this one lacks, as far as this one knows: it is alive and its last digest
 * root equals `ownRoot`. A suspect or dead member's root dates from before its silence (or from before
 * this process's own pause) and may hide what it stored since, so it is never trusted.
 */
export function holdsNothingMore(members: readonly MemberRecord[], peerId: string, ownRoot: string): boolean {
  return ownRoot !== '' && members.some((m) => m.peerId === peerId && m.status === 'alive' && m.digestRoot === ownRoot);
}

/**
 * Figures for the heartbeat: held instances, digest root, work waiting now (copies owed to sites that are
 * alive, plus pulls), and the tombstones to pass on. Copies owed to absent sites wait for them, not for
 * this peer, so they do not make it look busy to the balancer (which would send its own site's
 * associations elsewhere).
 */
export interface HeartbeatFigures {
  readonly instanceCount: number;
  readonly digestRoot: string;
  readonly queuedWork: number;
  readonly forgottenSites: readonly ForgottenSite[];
}

export function custodyStats(state: CustodyState): HeartbeatFigures {
  let owedToAlive = 0;
  for (const { siteName } of aliveReplicaTargets(state.members, state.config.selfSiteName)) owedToAlive += state.debtBySite.get(siteName)?.size ?? 0;
  return {
    instanceCount: state.digest.size,
    digestRoot: digestRoot(state.digest),
    queuedWork: owedToAlive + state.fetchesInFlight.size,
    forgottenSites: tombstonesToPassOn(state),
  };
}

/** Whether two sets of figures are the same (the tombstones the same array while unchanged: CustodyState.tombstonesPassedOn). */
export function sameHeartbeatFigures(a: HeartbeatFigures, b: HeartbeatFigures): boolean {
  return a.instanceCount === b.instanceCount && a.digestRoot === b.digestRoot && a.queuedWork === b.queuedWork && a.forgottenSites === b.forgottenSites;
}

/** Every tombstone, newest first (at most knownSitesMax; the heartbeats carry them a page at a time). */
function tombstonesToPassOn(state: CustodyState): readonly ForgottenSite[] {
  state.tombstonesPassedOn ??= [...state.forgottenSites.values()].sort((a, b) => b.forgottenAtMs - a.forgottenAtMs);
  return state.tombstonesPassedOn;
}

function ackOf(
  requestId: string,
  sopInstanceUid: string,
  status: StoreStatus,
  quorum: number,
  sitesHolding: readonly string[],
  sitesUp?: number,
): CustodyEffect {
  return { type: 'ackStore', requestId, sopInstanceUid, status, quorum, sitesHolding, ...(sitesUp !== undefined && { sitesUp }) };
}

function assertNever(value: never): never {
  throw new Error(`unhandled custody input: ${JSON.stringify(value)}`);
}
