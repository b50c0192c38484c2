/**
 * The learnt election roster as pure functions: which peers count as voters, kept in
 * `<dataDir>/balancer-roster.json` by the balancer actor (which does the file I/O).
 *
 * Each entry remembers where its peer was seen (site and DICOM address), so that:
 * - a site restored from an empty disk, which comes back under a new PeerId on the same DICOM address,
 *   replaces its old PeerId at once instead of leaving it as a ghost voter for rosterForgetAfterMs (three
 *   such restores left ghosts outnumbering the live peers, and the mesh leaderless);
 * - an operator can see which site a voter belongs to, and forget a site's peers even after they left the
 *   membership view.
 * Two live peers cannot share a DICOM address (one port, one listener; peers bound to all interfaces
 * advertise their machine's own address), so the same site at the same address is the same peer's successor.
 */
import { siteKeeperAgainst } from '../membership/logic.ts';
import type { MemberRecord } from '../membership/messages.ts';
import { siteClaimConfirmMsDefault } from '../storage/custody/messages.ts';
import type { RecentForget } from './recent-forgets.ts';

export interface RosterPeer {
  /**
   * Last time this peer was seen alive (the actor's clock.nowMs: the date at the process's start plus monotonic time, so a
   * wall clock step counts nothing while it runs, and one between runs is rosterAtStart's); moved on by this peer's
   * time away at a start.
   */
  readonly seenAtMs: number;
  /**
   * Its absence that counts (sawMajorityAlive), from seenAtMs to the roster's last update (self's seenAtMs); set on
   * every entry not seen alive at that update. Without it, the time from seenAtMs to that update counts (entries
   * seen alive then, and every entry of a file written before absences were counted).
   */
  readonly absentMs?: number;
  /** Its site and DICOM address when last seen; null in entries written before they were recorded. */
  readonly site: string | null;
  readonly dicom: string | null;
  /**
   * Set while it was last seen alive claiming its site name against a peer that keeps it (an earlier start
   * at another DICOM address: a copied --site): such a peer stops with exit 2 and never votes again.
   */
  readonly siteLostTo?: string;
}

export type RosterPeers = ReadonlyMap<string, RosterPeer>;

export interface RosterUpdate {
  readonly peers: RosterPeers;
  readonly learnt: readonly MemberRecord[];
  readonly forgotten: readonly { readonly peer: string; readonly absentMs: number }[];
  /** Old PeerIds of a site whose new PeerId took their DICOM address. */
  readonly replaced: readonly { readonly peer: string; readonly by: string; readonly site: string; readonly dicom: string }[];
  /** Peers taken out, once not up, because they had lost their site name to another peer (see RosterPeer.siteLostTo). */
  readonly ofLostSiteClaims: readonly { readonly peer: string; readonly site: string; readonly to: string }[];
  /** Peers taken out because their site was forgotten (see learnRoster's `forgottenSites`). */
  readonly ofForgottenSites: readonly { readonly peer: string; readonly site: string }[];
  /** A known peer's site or address changed: worth persisting now rather than at the next refresh. */
  readonly detailsChanged: boolean;
}

/**
 * Learns the peers alive in `members`, refreshes their last-seen time and whereabouts, replaces a peer's
 * predecessors, forgets peers absent for `forgetAfterMs` (counted while this peer saw a majority of the roster
 * alive: sawMajorityAlive; at most `countedGapMaxMs` between two updates), and takes out the peers of `forgottenSites`
 * (the operator's forget-site tombstones) that are not up. Self is always kept. The forgotten sites are applied at every
 * call, not once: a peer still suspect when its site was forgotten goes once it is dead, and a roster file
 * that missed the change (a crash) is put right at the next start.
 *
 * A peer seen alive losing its site name to another (membership's rule, keepsSiteAgainst, with the keeper
 * alive for `siteClaimConfirmMs` without a break, as siteConflictsOf counts a claim) is marked, and taken
 * out once it is not up (so is a dead one that loses it now, never marked: seen alive only before the
 * keeper's claim was confirmed here): it stops with exit 2 and never votes again, so leaving it out of some rosters and
 * not others lets no two majorities form (a majority of the roster with it, without its vote, is one of the
 * roster without it). Kept, it counted against the majority for rosterForgetAfterMs (hunt 109: three sites
 * and such a ghost in the rosters of some, and no leader after the leader's kill -9).
 */
export function learnRoster(
  peers: RosterPeers,
  members: readonly MemberRecord[],
  selfPeerId: string,
  nowMs: number,
  forgetAfterMs: number,
  forgottenSites: ReadonlySet<string> = new Set(),
  siteClaimConfirmMs: number = siteClaimConfirmMsDefault,
  countedGapMaxMs: number = Number.POSITIVE_INFINITY,
): RosterUpdate {
  const next = new Map(peers);
  const learnt: MemberRecord[] = [];
  const forgotten: Array<{ peer: string; absentMs: number }> = [];
  const replaced: Array<{ peer: string; by: string; site: string; dicom: string }> = [];
  let detailsChanged = false;
  const selfOld = next.get(selfPeerId);
  const lastUpdateMs = selfOld?.seenAtMs ?? nowMs;
  const seenNow = new Set([selfPeerId]);
  next.set(selfPeerId, { seenAtMs: nowMs, site: selfOld?.site ?? null, dicom: selfOld?.dicom ?? null });
  // Suspect peers may still be up: never replace or forget one.
  const up = new Set(members.filter((m) => m.status === 'alive' || m.status === 'suspect').map((m) => m.peerId));
  for (const m of members) {
    if (m.status !== 'alive') continue;
    const siteLostTo = siteKeeperOf(m, members, nowMs, siteClaimConfirmMs)?.peerId;
    const old = next.get(m.peerId);
    seenNow.add(m.peerId);
    if (old === undefined) learnt.push(m);
    else if (old.site !== m.siteName || old.dicom !== m.addresses.dicom || old.siteLostTo !== siteLostTo) detailsChanged = true;
    next.set(m.peerId, { seenAtMs: nowMs, site: m.siteName, dicom: m.addresses.dicom, ...(siteLostTo !== undefined ? { siteLostTo } : {}) });
  }
  for (const m of members) {
    if (m.status !== 'alive') continue;
    for (const [peerId, entry] of next) {
      if (peerId === m.peerId || peerId === selfPeerId || up.has(peerId)) continue;
      if (entry.site !== m.siteName || entry.dicom !== m.addresses.dicom) continue;
      next.delete(peerId);
      replaced.push({ peer: peerId, by: m.peerId, site: m.siteName, dicom: m.addresses.dicom });
    }
  }
  // The time since the last update counts only if both ends saw the majority: a view that shows it again (a heal)
  // ends a spell that did not count, and so does one an update not adopted (a disk refusing writes) hid.
  const majorityNow = [...next.keys()].filter((peerId) => seenNow.has(peerId)).length * 2 > next.size;
  // At most countedGapMaxMs of it: while a majority is seen, views come with every heartbeat, so a longer gap is this
  // process standing still (SIGSTOP, a paused VM; the view after it is the one from before) or updates not adopted.
  const countsMs = majorityNow && sawMajorityAlive(peers, selfPeerId, lastUpdateMs) ? Math.min(countedGapMaxMs, Math.max(0, nowMs - lastUpdateMs)) : 0;
  // A peer not up losing its claim now counts too: a peer that joined late can learn a stopped twin from its
  // last heartbeats, relayed after its stop, before the keeper's claim is confirmed in its own view.
  const lostSiteTo = new Map<string, string>();
  for (const m of members) {
    const keeper = m.status === 'dead' ? siteKeeperOf(m, members, nowMs, siteClaimConfirmMs) : undefined;
    if (keeper !== undefined) lostSiteTo.set(m.peerId, keeper.peerId);
  }
  const ofForgottenSites: Array<{ peer: string; site: string }> = [];
  const ofLostSiteClaims: Array<{ peer: string; site: string; to: string }> = [];
  for (const [peerId, entry] of next) {
    if (seenNow.has(peerId)) continue;
    const absentMs = countedAbsenceMs(entry, lastUpdateMs) + countsMs;
    next.set(peerId, { ...entry, absentMs });
    const lostTo = entry.siteLostTo ?? lostSiteTo.get(peerId);
    if (absentMs >= forgetAfterMs && !up.has(peerId)) {
      next.delete(peerId);
      forgotten.push({ peer: peerId, absentMs });
    } else if (lostTo !== undefined && !up.has(peerId)) {
      next.delete(peerId);
      ofLostSiteClaims.push({ peer: peerId, site: entry.site ?? '', to: lostTo });
    } else if (entry.site !== null && forgottenSites.has(entry.site) && !up.has(peerId)) {
      next.delete(peerId);
      ofForgottenSites.push({ peer: peerId, site: entry.site });
    }
  }
  return { peers: next, learnt, forgotten, replaced, ofLostSiteClaims, ofForgottenSites, detailsChanged };
}

/**
 * Whether the update of the roster `peers` at `atMs` saw a strict majority of it alive (self, and the entries seen
 * alive then): only then does absence count. A peer that sees a majority is on the only side of a partition that
 * can, so the peers it misses are gone or cut off in a minority, and a minority never forgets the majority's
 * peers (before, each side of a day-long partition forgot the other, and each elected alone in its own terms).
 * Time alone, or with the others down, does not count either.
 */
function sawMajorityAlive(peers: RosterPeers, selfPeerId: string, atMs: number): boolean {
  let alive = 0;
  for (const [peerId, entry] of peers) if (peerId === selfPeerId || (entry.absentMs === undefined && entry.seenAtMs >= atMs)) alive += 1;
  return alive * 2 > peers.size;
}

/** The voters this peer sees alive when they are no strict majority of its roster (null with one). */
export interface RosterMajorityLack {
  /** Self included. */
  readonly alive: number;
  readonly voters: number;
  /** The voters not seen alive, in roster order. */
  readonly absent: readonly string[];
}

/**
 * Whether this peer lacks a strict majority of its roster alive (itself included): then no leader can be elected
 * with it (it withholds its votes, logic.ts), nor does any absence count (sawMajorityAlive), so a mesh that lost
 * half or more of its voters for good stays leaderless until the operator takes them out.
 */
export function rosterMajorityLack(rosterPeerIds: readonly string[], alivePeerIds: ReadonlySet<string>, selfPeerId: string): RosterMajorityLack | null {
  const absent = rosterPeerIds.filter((peerId) => peerId !== selfPeerId && !alivePeerIds.has(peerId));
  const voters = new Set([...rosterPeerIds, selfPeerId]).size;
  const alive = voters - absent.length;
  return alive * 2 > voters ? null : { alive, voters, absent };
}

/** An entry's absence counted up to the roster's update at `lastUpdateMs` (see RosterPeer.absentMs). */
function countedAbsenceMs(entry: RosterPeer, lastUpdateMs: number): number {
  return entry.absentMs ?? Math.max(0, lastUpdateMs - entry.seenAtMs);
}

/**
 * The alive member, self included, that keeps `m`'s site name against it, when `m` will stop for it: as
 * membership's checkSiteConflicts decides, a peer told its site has several peers never stops.
 */
function siteKeeperOf(m: MemberRecord, members: readonly MemberRecord[], nowMs: number, confirmMs: number): MemberRecord | undefined {
  return m.siteShared === true ? undefined : siteKeeperAgainst(members, m, m.siteName, nowMs, confirmMs);
}

/**
 * A roster read at a start: each other peer's absence is the one counted up to the last update written (the
 * time this peer was away since, down or with its clock set ahead, is not the others' absence), and it counts
 * again only once this peer sees a majority (sawMajorityAlive: every entry is absent until seen). Last-seen
 * times are moved on by that time away, as before absences were counted (an earlier build reading the file
 * counts as it did), and entries seen "in the future" (the clock was set back) are put at now. Before, a
 * restart after a day down, or with the clock a day ahead, forgot every voter not yet heard (hunt 72: both,
 * with the clock two days ahead).
 */
export function rosterAtStart(peers: RosterPeers, selfPeerId: string, nowMs: number): Map<string, RosterPeer> {
  const selfSeenAtMs = peers.get(selfPeerId)?.seenAtMs ?? nowMs;
  const awayMs = Math.max(0, nowMs - selfSeenAtMs);
  const next = new Map<string, RosterPeer>();
  for (const [peerId, entry] of peers) {
    const seenAtMs = Math.min(nowMs, entry.seenAtMs + awayMs);
    next.set(peerId, peerId === selfPeerId ? { ...entry, seenAtMs } : { ...entry, seenAtMs, absentMs: countedAbsenceMs(entry, selfSeenAtMs) });
  }
  return next;
}

/** Takes `peerIds` out, except self and peers up (`upPeerIds`); `gone` lists those taken out. */
export function forgetRosterPeers(peers: RosterPeers, peerIds: readonly string[], upPeerIds: ReadonlySet<string>, selfPeerId: string): { peers: RosterPeers; gone: string[] } {
  const gone = [...new Set(peerIds)].filter((peerId) => peerId !== selfPeerId && !upPeerIds.has(peerId) && peers.has(peerId));
  if (gone.length === 0) return { peers, gone };
  const next = new Map(peers);
  for (const peerId of gone) next.delete(peerId);
  return { peers: next, gone };
}

/**
 * The voters leaving after a roster change: the peers the roster dropped, and for the operator's forget-peer also
 * the voters it names that the roster had dropped already (forgotten by absence, still voters while a leader takes
 * them out one at a time): without them a forget-peer of such a voter left it counting toward every majority.
 */
export function votersLeftByRosterChange(before: RosterPeers, after: RosterPeers, voters: readonly string[], operatorForgot: readonly string[], upPeerIds: ReadonlySet<string>, selfPeerId: string): string[] {
  const dropped = [...before.keys()].filter((peerId) => !after.has(peerId));
  const droppedEarlier = operatorForgot.filter((peerId) => peerId !== selfPeerId && !upPeerIds.has(peerId) && !before.has(peerId) && voters.includes(peerId));
  return [...new Set([...dropped, ...droppedEarlier])];
}

export const ROSTER_FILE_VERSION = 2;

/**
 * The file's body: `{version: 2, peers: {peerId: {seenAtMs, site, dicom, siteLostTo?, absentMs?}}, forgets?: [{peerId, atMs, incarnation?}]}`
 * (`forgets`: the recent forget-peers this peer republishes, recent-forgets.ts; earlier builds ignore it).
 */
export function encodeRosterFile(peers: RosterPeers, forgets: readonly RecentForget[] = []): string {
  return JSON.stringify({ version: ROSTER_FILE_VERSION, peers: Object.fromEntries(peers), ...(forgets.length > 0 ? { forgets } : {}) });
}

/**
 * Reads a roster file of version 2, or of version 1 (`{peerId: seenAtMs}`, no whereabouts). Throws an Error
 * naming what is wrong: a roster read short would shrink the majority, so nothing is guessed.
 */
export function decodeRosterFile(value: unknown): Map<string, RosterPeer> {
  const peers = new Map<string, RosterPeer>();
  if (typeof value !== 'object' || value === null) throw new Error('not a roster');
  const v = value as { version?: unknown; peers?: unknown };
  if (typeof v.peers !== 'object' || v.peers === null || Array.isArray(v.peers)) throw new Error('not a roster');
  if (v.version !== undefined && v.version !== 1 && v.version !== ROSTER_FILE_VERSION) throw new Error(`roster version ${String(v.version).slice(0, 20)} is newer than this pacs-mesh`);
  for (const [peerId, entry] of Object.entries(v.peers as Record<string, unknown>)) {
    const what = `peer ${peerId.slice(0, 60)}`;
    if (typeof entry === 'number') {
      if (!Number.isFinite(entry)) throw new Error(`${what} has no last-seen time`);
      peers.set(peerId, { seenAtMs: entry, site: null, dicom: null });
      continue;
    }
    if (typeof entry !== 'object' || entry === null) throw new Error(`${what} has no last-seen time`);
    const e = entry as Record<string, unknown>;
    if (typeof e.seenAtMs !== 'number' || !Number.isFinite(e.seenAtMs)) throw new Error(`${what} has no last-seen time`);
    const text = (x: unknown): string | null => (typeof x === 'string' ? x : null);
    // siteLostTo and absentMs are optional within version 2: a version without them reads the file and ignores them.
    const siteLostTo = text(e.siteLostTo);
    const absentMs = typeof e.absentMs === 'number' && Number.isFinite(e.absentMs) && e.absentMs >= 0 ? e.absentMs : undefined;
    peers.set(peerId, { seenAtMs: e.seenAtMs, site: text(e.site), dicom: text(e.dicom), ...(siteLostTo !== null ? { siteLostTo } : {}), ...(absentMs !== undefined ? { absentMs } : {}) });
  }
  return peers;
}
