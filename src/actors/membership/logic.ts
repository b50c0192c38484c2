/**
 * Membership reducer: heartbeats out, heartbeats in, a timeout failure detector and incarnation fencing.
 * Pure: time arrives in the inputs, effects go out; the state is immutable (a new object per change).
 */
import {
  heartbeatForgottenSitesMax,
  membershipTopic,
  type ForgottenSite,
  type Heartbeat,
  type MemberRecord,
  type MemberStatus,
  type MembershipConfig,
  type MembershipEffect,
  type MembershipInput,
  type PeerLoad,
  type SiteConflict,
} from './messages.ts';

export interface MembershipState {
  readonly config: MembershipConfig;
  /** Other peers only; self is added when the view is built. */
  readonly members: ReadonlyMap<string, MemberRecord>;
  readonly selfLoad: PeerLoad;
  readonly selfInstanceCount: number;
  readonly selfDigestRoot: string;
  readonly selfForgottenSites: readonly ForgottenSite[];
  readonly selfElectable: boolean;
  readonly heartbeatSequence: number;
  /** Null until the first tick, which sends at once so that a restart is announced without waiting. */
  readonly nextHeartbeatAtMs: number | null;
  /** When the last tick ran: a much later tick means this process itself stood still (see onTick). */
  readonly lastTickAtMs: number | null;
  /** When this process last found it had stood still (see onDisconnected). */
  readonly lastStallAtMs: number | null;
  /** The site-name conflicts last reported (siteConflictsChanged), sorted by site name. */
  readonly siteConflicts: readonly SiteConflict[];
  /** Set once another live peer with precedence took this peer's site name (siteNameTaken emitted). */
  readonly siteNameTakenBy: string | null;
}

export interface MembershipStep {
  readonly state: MembershipState;
  readonly effects: readonly MembershipEffect[];
}

export function initMembership(config: MembershipConfig): MembershipState {
  if (!(config.heartbeatIntervalMs < config.suspectAfterMs && config.suspectAfterMs < config.deadAfterMs)) {
    throw new Error('membership timings must satisfy heartbeatIntervalMs < suspectAfterMs < deadAfterMs');
  }
  return {
    config,
    members: new Map(),
    selfLoad: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 0 },
    selfInstanceCount: 0,
    selfDigestRoot: '',
    selfForgottenSites: [],
    selfElectable: true,
    heartbeatSequence: 0,
    nextHeartbeatAtMs: null,
    lastTickAtMs: null,
    lastStallAtMs: null,
    siteConflicts: [],
    siteNameTakenBy: null,
  };
}

export function stepMembership(state: MembershipState, input: MembershipInput): MembershipStep {
  // A stall is found by whatever comes first after it: the heartbeats that waited in the sockets may be
  // read before the first tick, and their view would count the stall as silence and as life (hunt 104).
  if ((input.type === 'heartbeatReceived' || input.type === 'peerDisconnected' || input.type === 'peerActive') && stalledMsAt(state, input.nowMs) > 0) {
    const ticked = onTick(state, input.nowMs);
    const step = stepMembership(ticked.state, input);
    return { state: step.state, effects: [...ticked.effects, ...step.effects] };
  }
  switch (input.type) {
    case 'tick':
      return onTick(state, input.nowMs);
    case 'heartbeatReceived':
      return onHeartbeat(state, input.heartbeat, input.nowMs);
    case 'peerDisconnected':
      return onDisconnected(state, input.peerId, input.nowMs);
    case 'peerActive':
      return onActive(state, input.peerId, input.nowMs);
    case 'localStatsChanged':
      return {
        state: {
          ...state,
          selfLoad: input.load,
          selfInstanceCount: input.instanceCount,
          selfDigestRoot: input.digestRoot,
          selfForgottenSites: input.forgottenSites ?? [],
        },
        effects: [],
      };
    case 'electabilityChanged':
      // Heartbeat at the next tick: the others wait for the best-ranked peer until they hear it cannot run.
      if (input.electable === state.selfElectable) return { state, effects: [] };
      return { state: { ...state, selfElectable: input.electable, nextHeartbeatAtMs: null }, effects: [] };
    case 'peerSubscribed':
      // Heartbeat at the next tick, not up to an interval later: a peer that just joined learns of us (and
      // we of it, as it does the same) in one tick, so a returning site's catch-up starts that much sooner.
      // Heartbeats published before the subscriptions were exchanged never reached it.
      return { state: { ...state, nextHeartbeatAtMs: null }, effects: [] };
    default:
      return assertNever(input);
  }
}

/** The record this peer publishes about itself, as it appears in the view. */
export function selfRecord(state: MembershipState, nowMs: number): MemberRecord {
  return aliveRecordOf(heartbeatOf(state), nowMs, 0);
}

/**
 * Another peer's tombstones on this peer's clock. Custody compares a tombstone's time with when this peer
 * last heard the site, and drops it once knownSiteForgetAfterMs old: read on the forgetting peer's clock,
 * a site forgotten by a peer whose clock ran a day ahead stayed forgotten here for a day after it came
 * back (no copies owed to it), and one forgotten by a peer running behind was never forgotten here (hunt
 * 72). The time since the forgetting, as the sender counts it, is carried onto this clock; a heartbeat
 * without the sender's time (an older peer) at least never puts a forgetting in this peer's future.
 */
function tombstonesOnOwnClock(hb: Heartbeat, receivedAtMs: number): readonly ForgottenSite[] | undefined {
  if (hb.forgottenSites === undefined || hb.forgottenSites.length === 0) return undefined;
  const shift = hb.sentAtMs === undefined ? 0 : receivedAtMs - hb.sentAtMs;
  return hb.forgottenSites.map((f) => ({ ...f, forgottenAtMs: Math.min(receivedAtMs, f.forgottenAtMs + shift) }));
}

/**
 * The view's record of an alive member, from its heartbeat (field by field: nothing else from the wire);
 * with `receivedAtMs`, another peer's heartbeat received then (its tombstones are put on this clock).
 */
function aliveRecordOf(hb: Heartbeat, lastHeardAtMs: number, statusSinceMs: number, receivedAtMs?: number): MemberRecord {
  const forgottenSites = receivedAtMs === undefined ? hb.forgottenSites : tombstonesOnOwnClock(hb, receivedAtMs);
  return {
    peerId: hb.peerId,
    siteName: hb.siteName,
    incarnation: hb.incarnation,
    sequence: hb.sequence,
    priority: hb.priority,
    electable: hb.electable,
    addresses: hb.addresses,
    load: hb.load,
    instanceCount: hb.instanceCount,
    digestRoot: hb.digestRoot,
    ...(forgottenSites !== undefined && forgottenSites.length > 0 ? { forgottenSites } : {}),
    ...(hb.siteShared === true ? { siteShared: true } : {}),
    ...(hb.build !== undefined ? { build: hb.build } : {}),
    status: 'alive',
    lastHeardAtMs,
    statusSinceMs,
  };
}

/** Every known member, self included, sorted by peerId so that every consumer iterates identically. */
export function viewMembers(state: MembershipState, nowMs: number): MemberRecord[] {
  return [...state.members.values(), selfRecord(state, nowMs)].sort(byPeerId);
}

/** The live view: alive members (self included), sorted by peerId. */
export function liveView(state: MembershipState, nowMs: number): MemberRecord[] {
  return viewMembers(state, nowMs).filter((m) => m.status === 'alive');
}

/**
 * How long this process stood still before `nowMs`. Ticks come far more often than heartbeats, so a gap
 * since the last tick longer than a heartbeat interval means it was stopped (SIGSTOP, a long GC pause, a
 * frozen VM) while the others' heartbeats waited unread in its sockets: that time is not their silence.
 */
function stalledMsAt(state: MembershipState, nowMs: number): number {
  return state.lastTickAtMs === null ? 0 : Math.max(0, nowMs - state.lastTickAtMs - state.config.heartbeatIntervalMs);
}

function onTick(state: MembershipState, nowMs: number): MembershipStep {
  const effects: MembershipEffect[] = [];
  const c = state.config;
  // Credited to every member: without it every peer turned dead at once on resuming, and a retrieve in
  // that moment answered Success with only the local copies.
  const stalledMs = stalledMsAt(state, nowMs);
  let members: Map<string, MemberRecord> | null = null;
  // Said once per stall, and only when others noticed it: their silence here was this process's own. With no
  // member heard since it went dead, nobody was listening, and "the others took it for suspect" would be false.
  const noticedByOthers = [...state.members.values()].some((record) => record.status !== 'dead');
  if (stalledMs >= c.suspectAfterMs && noticedByOthers) effects.push({ type: 'selfStalled', stalledMs, seenAs: stalledMs >= c.deadAfterMs ? 'dead' : 'suspect' });
  if (stalledMs > 0) {
    members = new Map();
    for (const [peerId, record] of state.members) {
      // Nor is it life: "alive without a break for X" (custody taking back a forgotten site or moving a known
      // site's time on, a site-name claim confirmed, the hand-over grace) counts from the end of the stall,
      // since the member may have died at any moment of it. Counted, one late-relayed heartbeat of a
      // decommissioned site before a 3.5 s stall made it alive "for 3.8 s" on resuming, past
      // forgottenSiteReturnAliveMs: the site was known again there for good (hunt 104); and with only the
      // stall left out, a site heard for 2.1 s before a stall in which it died and was forgotten elsewhere
      // (simulation, seed 8391).
      const statusSinceMs = record.status === 'alive' ? nowMs : record.statusSinceMs;
      members.set(peerId, { ...record, lastHeardAtMs: Math.min(nowMs, record.lastHeardAtMs + stalledMs), statusSinceMs });
    }
  }
  let viewChanged = false;
  for (const record of (members ?? state.members).values()) {
    const silentMs = nowMs - record.lastHeardAtMs;
    // Silence only ever degrades a status: coming back alive needs a newer heartbeat.
    let next: MemberStatus = record.status;
    if (silentMs >= c.deadAfterMs) next = 'dead';
    else if (silentMs >= c.suspectAfterMs && record.status === 'alive') next = 'suspect';
    if (next !== record.status) {
      members ??= new Map(state.members);
      members.set(record.peerId, { ...record, status: next, statusSinceMs: nowMs });
      effects.push(statusChanged(record, record.status, next));
      if (next === 'dead') effects.push({ type: 'dropConnections', peerId: record.peerId });
      viewChanged = true;
    }
  }
  let next: MembershipState = {
    ...state,
    lastTickAtMs: nowMs,
    lastStallAtMs: stalledMs > 0 ? nowMs : state.lastStallAtMs,
    ...(members && { members: pruneDead(members, c.membersMax) }),
  };
  if (next.nextHeartbeatAtMs === null || nowMs >= next.nextHeartbeatAtMs) {
    const sequence = next.heartbeatSequence + 1;
    next = { ...next, heartbeatSequence: sequence, nextHeartbeatAtMs: nowMs + c.heartbeatIntervalMs };
    effects.push({ type: 'publish', topic: membershipTopic, message: heartbeatOf(next, nowMs) });
  }
  if (viewChanged) effects.push({ type: 'viewChanged', members: viewMembers(next, nowMs) });
  next = checkSiteConflicts(next, nowMs, effects);
  return { state: next, effects };
}

/**
 * How long, in deadAfterMs, another peer must have been alive without a break before its claim on a site
 * name counts against another's: a dead predecessor's last heartbeats, relayed late from gossip caches
 * (a few seconds' worth, arriving together), make it alive for moments only, and must not make the site
 * restarted after it (under a new PeerId, at a new address) stop. Only a live process keeps it alive.
 */
export const siteConflictConfirmAfterDeadTimes = 2;

/**
 * How long, in deadAfterMs, a peer with precedence must have been alive without a break before this peer
 * stops for it: a deadAfterMs after the conflict is reported everywhere, so that the peer keeping the site
 * and the others show it (log, /api/mesh, status page) before the later peer is gone.
 */
export const siteNameTakenAfterDeadTimes = 3;

/**
 * Which of two peers claiming one site keeps it: the one started first (the incarnation is the start date
 * in ms, or a counter above it), then the lower PeerId. Both peers read the same two heartbeats, so both
 * agree which one must stop.
 */
export function sitePrecedence(
  a: { readonly incarnation: number; readonly peerId: string },
  b: { readonly incarnation: number; readonly peerId: string },
): number {
  return a.incarnation !== b.incarnation ? a.incarnation - b.incarnation : byPeerId(a, b);
}

/**
 * Of two peers claiming one site name, whether `claimant` keeps it against `other`: they are at different
 * DICOM addresses (one address is one place: a restart, not a conflict), not both told the site has several
 * peers on purpose, and the claimant has precedence. The pairwise form of siteConflictsOf's rule (see
 * siteKeeperAgainst).
 */
export function keepsSiteAgainst(
  claimant: Pick<MemberRecord, 'incarnation' | 'peerId' | 'addresses' | 'siteShared'>,
  other: Pick<MemberRecord, 'incarnation' | 'peerId' | 'addresses' | 'siteShared'>,
): boolean {
  return claimant.addresses.dicom !== other.addresses.dicom && !(claimant.siteShared === true && other.siteShared === true) && sitePrecedence(claimant, other) < 0;
}

/**
 * The alive member that keeps `siteName` against `claimant` (keepsSiteAgainst), its claim confirmed: alive
 * for `confirmMs` without a break (a dead predecessor's late heartbeats make it alive for moments only).
 * Custody's count of an acknowledgement and the roster's copied --site both ask this.
 */
export function siteKeeperAgainst(members: readonly MemberRecord[], claimant: MemberRecord, siteName: string, nowMs: number, confirmMs: number): MemberRecord | undefined {
  return members.find(
    (k) => k.peerId !== claimant.peerId && k.status === 'alive' && k.siteName === siteName && nowMs - k.statusSinceMs >= confirmMs && keepsSiteAgainst(k, claimant),
  );
}

/**
 * Live peers claiming one site name at two or more DICOM addresses, unless every one of them says the
 * site has several peers on purpose: copies are counted by site, so two places under one name count as
 * one site, and a copy owed to the site goes to either. Self counts at once; another peer once confirmed.
 */
export function siteConflictsOf(members: readonly MemberRecord[], selfPeerId: string, nowMs: number, confirmMs: number): SiteConflict[] {
  const bySite = new Map<string, MemberRecord[]>();
  for (const m of members) {
    if (m.status !== 'alive' || (m.peerId !== selfPeerId && nowMs - m.statusSinceMs < confirmMs)) continue;
    const peers = bySite.get(m.siteName);
    if (peers === undefined) bySite.set(m.siteName, [m]);
    else peers.push(m);
  }
  const conflicts: SiteConflict[] = [];
  for (const [siteName, peers] of bySite) {
    if (new Set(peers.map((p) => p.addresses.dicom)).size < 2 || peers.every((p) => p.siteShared === true)) continue;
    const ordered = [...peers].sort(sitePrecedence);
    conflicts.push({ siteName, peers: ordered.map((p) => ({ peerId: p.peerId, dicom: p.addresses.dicom, incarnation: p.incarnation })) });
  }
  return conflicts.sort((a, b) => (a.siteName < b.siteName ? -1 : a.siteName > b.siteName ? 1 : 0));
}

/** The conflicts reported again when they changed, and siteNameTaken once a peer with precedence holds this peer's site. */
function checkSiteConflicts(state: MembershipState, nowMs: number, effects: MembershipEffect[]): MembershipState {
  const c = state.config;
  const conflicts = siteConflictsOf(viewMembers(state, nowMs), c.peerId, nowMs, siteConflictConfirmAfterDeadTimes * c.deadAfterMs);
  let next = state;
  if (conflictsKey(conflicts) !== conflictsKey(state.siteConflicts)) {
    next = { ...next, siteConflicts: conflicts };
    effects.push({ type: 'siteConflictsChanged', conflicts });
  }
  // A peer told its site has several peers never stops for another: a heartbeat without siteShared is also
  // what a peer of an earlier version sends, and a rolling upgrade must not stop the peers restarted last.
  // The conflict is still reported where the other claims the site alone.
  if (next.siteNameTakenBy !== null || c.siteShared === true) return next;
  const own = conflicts.find((conflict) => conflict.siteName === c.siteName);
  const self = { peerId: c.peerId, incarnation: c.incarnation };
  const takenAfterMs = siteNameTakenAfterDeadTimes * c.deadAfterMs;
  const holder = own?.peers.find((p) => {
    const record = next.members.get(p.peerId);
    if (record === undefined || p.dicom === c.addresses.dicom || sitePrecedence(p, self) >= 0) return false;
    return nowMs - record.statusSinceMs >= takenAfterMs;
  });
  if (holder === undefined) return next;
  effects.push({ type: 'siteNameTaken', siteName: c.siteName, byPeerId: holder.peerId, byDicom: holder.dicom });
  return { ...next, siteNameTakenBy: holder.peerId };
}

function conflictsKey(conflicts: readonly SiteConflict[]): string {
  return conflicts.map((conflict) => `${conflict.siteName}\n${conflict.peers.map((p) => `${p.peerId}@${p.dicom}`).join(' ')}`).join('\n');
}

/** This peer's heartbeat; `sentAtMs` (now, when published) goes with its tombstones. */
function heartbeatOf(state: MembershipState, sentAtMs?: number): Heartbeat {
  const c = state.config;
  return {
    type: 'heartbeat',
    peerId: c.peerId,
    siteName: c.siteName,
    incarnation: c.incarnation,
    sequence: state.heartbeatSequence,
    priority: c.priority,
    electable: state.selfElectable,
    addresses: c.addresses,
    load: state.selfLoad,
    instanceCount: state.selfInstanceCount,
    digestRoot: state.selfDigestRoot,
    ...(c.siteShared === true ? { siteShared: true } : {}),
    ...(c.build !== undefined ? { build: c.build } : {}),
    ...(state.selfForgottenSites.length > 0
      ? { forgottenSites: tombstonePage(state.selfForgottenSites, state.heartbeatSequence), ...(sentAtMs !== undefined ? { sentAtMs } : {}) }
      : {}),
  };
}

/**
 * The tombstones one heartbeat carries: a page of heartbeatForgottenSitesMax, the next page in the next
 * heartbeat, so that every one reaches a peer that starts later within a few heartbeats (with only the
 * newest, a restored peer missed a site forgotten before 16 others: helper 52).
 */
function tombstonePage(tombstones: readonly ForgottenSite[], sequence: number): readonly ForgottenSite[] {
  if (tombstones.length <= heartbeatForgottenSitesMax) return tombstones;
  const pages = Math.ceil(tombstones.length / heartbeatForgottenSitesMax);
  const start = (sequence % pages) * heartbeatForgottenSitesMax;
  return tombstones.slice(start, start + heartbeatForgottenSitesMax);
}

function onHeartbeat(state: MembershipState, hb: Heartbeat, nowMs: number): MembershipStep {
  // Our own heartbeat echoed by gossip, or another process using our id: never a member record.
  if (hb.peerId === state.config.peerId) return { state, effects: [] };
  // Our predecessor (this site and DICOM address, another PeerId: the process before an empty-disk
  // restore): its last heartbeats linger in gossip caches, and one relayed to us made it look alive for a
  // few seconds, a member to send repair exchanges to that would never answer.
  const c = state.config;
  if (hb.siteName === c.siteName && hb.addresses.dicom === c.addresses.dicom) return { state, effects: [] };
  const known = state.members.get(hb.peerId);
  // (incarnation, sequence) orders heartbeats: an old incarnation or a delayed duplicate changes nothing.
  // Except a lower incarnation of a peer dead here for long (see reincarnatedBelowAfterDeadTimes).
  if (known && compareVersion(hb, known) <= 0 && !reincarnatedBelow(state, known, hb, nowMs)) return { state, effects: [] };
  const record = aliveRecordOf(hb, nowMs, known && known.status === 'alive' ? known.statusSinceMs : nowMs, nowMs);
  const members = new Map(state.members);
  members.set(hb.peerId, record);
  const pruned = pruneDead(members, state.config.membersMax);
  // A table full of members not dead has no place for a new peer until one dies: pruneDead only forgets
  // dead records, and each signing key is a member, so one insider made the table (and the learnt roster,
  // and the routing table announced) as large as it liked (helper 97).
  if (!known && pruned.size > state.config.membersMax) return { state, effects: [] };
  const next: MembershipState = { ...state, members: pruned };
  const effects: MembershipEffect[] = [];
  if (!known || known.status !== 'alive' || known.incarnation !== hb.incarnation) {
    effects.push(statusChanged(record, known ? known.status : 'unknown', 'alive'));
  }
  if (known && known.siteName !== hb.siteName) {
    effects.push({ type: 'memberSiteRenamed', peerId: hb.peerId, fromSite: known.siteName, toSite: hb.siteName });
  }
  effects.push({ type: 'viewChanged', members: viewMembers(next, nowMs) });
  return { state: next, effects };
}

/**
 * Data from a peer counts as hearing from it: on a slow link its heartbeats wait behind the bulk copies it
 * sends (helper 65: over 3 s at 3 Mbit/s, then a dead verdict, dropped connections and copies sent again).
 * It only keeps a record from going silent: a dead peer comes back, and a suspect one turns alive, by a
 * heartbeat (its incarnation says whether it restarted).
 */
function onActive(state: MembershipState, peerId: string, nowMs: number): MembershipStep {
  const known = state.members.get(peerId);
  if (!known || known.status === 'dead' || known.lastHeardAtMs >= nowMs) return { state, effects: [] };
  const members = new Map(state.members);
  members.set(peerId, { ...known, lastHeardAtMs: nowMs });
  return { state: { ...state, members }, effects: [] };
}

function onDisconnected(state: MembershipState, peerId: string, nowMs: number): MembershipStep {
  const known = state.members.get(peerId);
  if (!known || known.status === 'dead') return { state, effects: [] };
  // The transport saw the connection close: waiting out deadAfterMs would only route work into a void.
  // Unless this process has just stood still: the others closed connections to a peer that did not
  // answer, and reconnect within moments. Suspect until then (out of elections; a retrieve answers 0xA701
  // rather than Success from the local copies alone), dead by silence if it does not come back.
  // (Also when the stall is still being found out: connection-close events can run before the first tick.)
  const afterOwnStall = stalledMsAt(state, nowMs) > 0 || (state.lastStallAtMs !== null && nowMs - state.lastStallAtMs < state.config.deadAfterMs);
  const status: MemberStatus = afterOwnStall ? 'suspect' : 'dead';
  if (known.status === status) return { state, effects: [] };
  const record: MemberRecord = { ...known, status, statusSinceMs: nowMs };
  const members = new Map(state.members);
  members.set(peerId, record);
  const next: MembershipState = { ...state, members };
  return {
    state: next,
    effects: [statusChanged(known, known.status, status), { type: 'viewChanged', members: viewMembers(next, nowMs) }],
  };
}

/**
 * How long a peer must have been dead here before a heartbeat of a lower incarnation brings it back, in
 * deadAfterMs: a late or relayed heartbeat of a process that has since restarted arrives within moments
 * (gossip keeps messages for a few seconds), not this long after its successor died.
 */
export const reincarnatedBelowAfterDeadTimes = 10;

/**
 * A restarted peer whose incarnation is below the one remembered here: the incarnation is the previous
 * one + 1 or the date in ms if larger, so a peer that once ran with its wall clock ahead (a day, a year)
 * and was then restored from a backup taken before, or lost its incarnation file, starts below the value
 * its run ahead announced. Its heartbeats were ignored as stale and the others kept it dead for as long
 * as its clock had been ahead, while it saw them alive (hunt 72: a day, one run with the clock a day
 * ahead). Accepted once the record has been dead for reincarnatedBelowAfterDeadTimes x deadAfterMs.
 */
function reincarnatedBelow(state: MembershipState, known: MemberRecord, hb: Heartbeat, nowMs: number): boolean {
  return known.status === 'dead' && hb.incarnation < known.incarnation && nowMs - known.statusSinceMs >= reincarnatedBelowAfterDeadTimes * state.config.deadAfterMs;
}

function compareVersion(
  a: { readonly incarnation: number; readonly sequence: number },
  b: { readonly incarnation: number; readonly sequence: number },
): number {
  return a.incarnation !== b.incarnation ? a.incarnation - b.incarnation : a.sequence - b.sequence;
}

/**
 * Dead records whose site now answers at the same DICOM address under another, alive PeerId (a site
 * restored on an empty disk gets a new identity), or, with none alive there, all but the one heard last:
 * the table keeps them to fence stale heartbeats, but an operator's view (/api/mesh) leaves them out, or
 * each restore would add a dead member for good (a site restored twice, then down, was listed three times).
 */
export function supersededMembers(members: readonly MemberRecord[]): Set<string> {
  const placeOf = (m: MemberRecord): string => `${m.siteName}\n${m.addresses.dicom}`;
  const aliveAt = new Set(members.filter((m) => m.status === 'alive').map(placeOf));
  const lastDeadAt = new Map<string, MemberRecord>();
  for (const m of members) {
    if (m.status !== 'dead') continue;
    const last = lastDeadAt.get(placeOf(m));
    if (last === undefined || m.lastHeardAtMs > last.lastHeardAtMs) lastDeadAt.set(placeOf(m), m);
  }
  return new Set(members.filter((m) => m.status === 'dead' && (aliveAt.has(placeOf(m)) || lastDeadAt.get(placeOf(m)) !== m)).map((m) => m.peerId));
}

/** Keeps the table within membersMax by forgetting the longest-dead records (they fence stale heartbeats). */
function pruneDead(members: Map<string, MemberRecord>, membersMax: number): Map<string, MemberRecord> {
  if (members.size <= membersMax) return members;
  const dead = [...members.values()]
    .filter((m) => m.status === 'dead')
    .sort((a, b) => a.statusSinceMs - b.statusSinceMs || byPeerId(a, b));
  for (const record of dead) {
    if (members.size <= membersMax) break;
    members.delete(record.peerId);
  }
  return members;
}

function statusChanged(record: MemberRecord, from: MemberStatus | 'unknown', to: MemberStatus): MembershipEffect {
  return {
    type: 'memberStatusChanged',
    peerId: record.peerId,
    siteName: record.siteName,
    incarnation: record.incarnation,
    from,
    to,
  };
}

function byPeerId(a: { readonly peerId: string }, b: { readonly peerId: string }): number {
  return a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0;
}

function assertNever(value: never): never {
  throw new Error(`unhandled membership input: ${JSON.stringify(value)}`);
}
