/**
 * Recent forget-peers, republished (hunt 180): an operator's forget-peer was published once, so a peer down or
 * cut off at that moment kept the forgotten voters in its roster and, lacking a roster majority, could withhold
 * its votes for good. The peer asked, and every peer that applied a forget, republishes its recent ones at a low
 * rate, as heartbeats carry custody's forgotten sites. Pure functions: the balancer actor does the I/O.
 */

/** A peer taken out of the roster on the operator's request, and when it was asked (the asked peer's clock). */
export interface RecentForget {
  readonly peerId: string;
  readonly atMs: number;
  /**
   * The forgotten peer's membership incarnation as last heard where it was asked (absent: never heard there, or an
   * earlier build's forget). Every start bumps it, so a peer first heard at a higher one after the ask came back since,
   * even where it was first seen on that return (a republication delivered late took it out again there: npm test, once).
   */
  readonly incarnation?: number;
}

export const recentForgetLimits = {
  /** As long as custody's site tombstones: a peer away longer is rebuilt from the others anyway, and learns a roster again. */
  keepMs: 7 * 24 * 3600_000,
  /** Oldest dropped past it: 64 forgets in 7 days is far beyond any decommissioning, and 4 messages a minute at most. */
  countMax: 64,
  /** The forget-peer message's own limit (parseForgetPeers), which keeps one within ELECTION_MAX_BYTES. */
  perMessageMax: 16,
  /**
   * Longer PeerIds are not kept (a libp2p PeerId is some 52 characters): 16 of this length and their times stay
   * within ELECTION_MAX_BYTES, so no entry (a damaged roster file) makes a whole message of them fail at every republication.
   */
  peerIdMaxChars: 100,
  /**
   * A late peer learns a forget within a minute of its return. Each forget goes out about once a minute in a
   * connected mesh, not once per peer holding it (heardFromOthers), so 64 are 4 messages of < 2 KB a minute.
   */
  republishIntervalMs: 60_000,
  /** A forget heard republished counts as this peer's own one if asked no more than this before it (transit and rounding). */
  heardAskedEarlierMaxMs: 60_000,
} as const;

/**
 * `recent` with `added` noted, one per peer (the later time kept: a second forget of a returned peer), times from
 * the future put at now (the roster file's, after a clock set back: it must not lengthen the forget's life), those
 * older than keepMs, of a PeerId longer than peerIdMaxChars, and the oldest past countMax dropped; sorted oldest first.
 * Also how the roster file's are read at a start, so a file holding more, or damaged, sends no more than that.
 */
export function noteForgets(recent: readonly RecentForget[], added: readonly RecentForget[], nowMs: number, limits: { keepMs: number; countMax: number; peerIdMaxChars: number } = recentForgetLimits): RecentForget[] {
  const byPeer = new Map<string, RecentForget>();
  for (const f of [...recent, ...added]) {
    const atMs = Math.min(f.atMs, nowMs);
    if (nowMs - atMs >= limits.keepMs || f.peerId.length > limits.peerIdMaxChars) continue;
    const held = byPeer.get(f.peerId);
    // The highest incarnation named: a second forget (the peer came back and was forgotten again) names a later one.
    const incarnations = [held?.incarnation, f.incarnation].filter((i): i is number => i !== undefined);
    byPeer.set(f.peerId, { peerId: f.peerId, atMs: Math.max(atMs, held?.atMs ?? atMs), ...(incarnations.length > 0 ? { incarnation: Math.max(...incarnations) } : {}) });
  }
  const sorted = [...byPeer.values()].sort((a, b) => a.atMs - b.atMs || (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0));
  return sorted.slice(Math.max(0, sorted.length - limits.countMax));
}

/**
 * The forgets to republish now, in messages of at most perMessageMax: those still kept whose peer is not in
 * `rosterPeerIds` (one learnt again came back for real after its forget: republishing it would take it out again),
 * nor in `heardFromOthers` (republished by another peer since this one last did: every peer its gossip reaches got it,
 * and sent by each holder, 20 peers holding 64 forgets flooded 80 messages a minute to each of them).
 */
export function forgetsToRepublish(
  recent: readonly RecentForget[],
  rosterPeerIds: ReadonlySet<string>,
  nowMs: number,
  heardFromOthers: ReadonlySet<string> = new Set(),
  limits: { keepMs: number; perMessageMax: number } = recentForgetLimits,
): RecentForget[][] {
  const due = recent.filter((f) => nowMs - Math.min(f.atMs, nowMs) < limits.keepMs && !rosterPeerIds.has(f.peerId) && !heardFromOthers.has(f.peerId));
  const messages: RecentForget[][] = [];
  for (let i = 0; i < due.length; i += limits.perMessageMax) messages.push(due.slice(i, i + limits.perMessageMax));
  return messages;
}

/**
 * The peers of `heard` (a republication from another peer, on this clock) whose forget `held` here is not newer
 * (asked at most heardAskedEarlierMaxMs after it): sending it too adds nothing. A newer one (the peer came back
 * and was forgotten again) is still sent, as the older may not apply where it came back between the two.
 */
export function alreadyRepublished(held: readonly RecentForget[], heard: readonly RecentForget[], limits: { heardAskedEarlierMaxMs: number } = recentForgetLimits): string[] {
  const heldAtMs = new Map(held.map((f) => [f.peerId, f.atMs]));
  return heard.filter((f) => {
    const atMs = heldAtMs.get(f.peerId);
    return atMs !== undefined && atMs - f.atMs <= limits.heardAskedEarlierMaxMs;
  }).map((f) => f.peerId);
}

/** The highest membership incarnation of a peer heard here, and when (this peer's clock) it was first heard. */
export interface IncarnationSeen {
  readonly incarnation: number;
  readonly sinceMs: number;
}

/**
 * The forgets that may apply here: not of a peer that came back for real, which is kept: one that came up here after
 * the forget was asked (`cameUpAtMs`: alive after it was seen dead, in this process's run), or one first heard here,
 * after the ask, at a higher incarnation than the forget names (`incarnations`: it restarted since, even if this peer
 * first saw it on that return). An incarnation heard before the ask is a life the asked peer missed (cut off from it),
 * over before the operator asked: no return. The roster's last-seen times cannot tell: they are moved on at a start,
 * and a peer seen alive until it died, later here than where the forget was asked, did not come back. Nor one that
 * repeats a forget applied `here` of a peer learnt again since and heard at a higher incarnation (repeatsHeldForget).
 */
export function forgetsNotOutlived(
  forgets: readonly RecentForget[],
  cameUpAtMs: ReadonlyMap<string, number>,
  incarnations: ReadonlyMap<string, IncarnationSeen> = new Map(),
  here: ForgetsHeldHere = { forgets: [], rosterPeerIds: new Set() },
  limits: { heardAskedEarlierMaxMs: number } = recentForgetLimits,
): RecentForget[] {
  return forgets.filter((f) => {
    if ((cameUpAtMs.get(f.peerId) ?? Number.NEGATIVE_INFINITY) > f.atMs) return false;
    const seen = incarnations.get(f.peerId);
    if (f.incarnation !== undefined && seen !== undefined && seen.incarnation > f.incarnation && repeatsHeldForget(f, here, limits)) return false;
    return f.incarnation === undefined || seen === undefined || seen.incarnation <= f.incarnation || seen.sinceMs <= f.atMs;
  });
}

/** What forgetsNotOutlived needs of this peer's roster: the forgets it applied (or was asked) and the peers it holds now. */
export interface ForgetsHeldHere {
  readonly forgets: readonly RecentForget[];
  readonly rosterPeerIds: ReadonlySet<string>;
}

/**
 * Whether `f` repeats a forget applied here (same peer, no later incarnation named, asked at most heardAskedEarlierMaxMs
 * after it) of a peer learnt again since (back in this roster). With a higher incarnation heard here, that peer came
 * back after the forget, whatever `f`'s time says: a republication's time is its age when sent counted back from its
 * arrival, so one delivered late (gossip's lazy pull, a stalled process) reads as asked later than it was, and could
 * pass the time of the return.
 */
function repeatsHeldForget(f: RecentForget, here: ForgetsHeldHere, limits: { heardAskedEarlierMaxMs: number }): boolean {
  if (!here.rosterPeerIds.has(f.peerId)) return false;
  return here.forgets.some((h) => h.peerId === f.peerId && h.incarnation !== undefined && f.incarnation !== undefined && f.incarnation <= h.incarnation && f.atMs - h.atMs <= limits.heardAskedEarlierMaxMs);
}

/** A membership incarnation as a forget carries it (a file or a message): anything else reads as none named. */
export function isIncarnation(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** The `forgets` field of the roster file (optional: earlier builds ignore it); malformed entries are skipped, as a forget lost is only republished less. */
export function decodeRecentForgets(value: unknown): RecentForget[] {
  if (!Array.isArray(value)) return [];
  return value.flatMap((x: unknown) => {
    if (typeof x !== 'object' || x === null) return [];
    const e = x as Record<string, unknown>;
    if (typeof e.peerId !== 'string' || e.peerId.length === 0 || typeof e.atMs !== 'number' || !Number.isFinite(e.atMs)) return [];
    return [{ peerId: e.peerId, atMs: e.atMs, ...(isIncarnation(e.incarnation) ? { incarnation: e.incarnation } : {}) }];
  });
}
