/**
 * Balancer protocol (issue 4): leader election over the membership view, and the leader's routing table.
 * Closed unions: every input, mesh message and effect of the balancer reducer is listed here.
 */
import type { MemberRecord } from '../membership/messages.ts';

export const routingTopic = 'pacs-mesh/routing/1';
/** At most this many PeerIds in a refusal's rosterMissing: a candidate learns the rest at its next refusal. */
export const rosterMissingMax = 32;
/**
 * At most this many admitted voters (hunt 184): a list travels whole in a request for votes (roster), a refusal and
 * the election record, each held to 4 KiB (ELECTION_MAX_BYTES, the record's slot), where some 70 PeerIds of 52
 * characters fit; a leader admits nobody past it (logic.ts, nextVotersChange) and a list longer is refused as input.
 */
export const votersMax = 64;
/**
 * An operator's POST /api/forget-peer at one peer, passed on to every other so that all rosters drop the ghost;
 * republished once a minute for 7 days for the peers away then (recent-forgets.ts).
 */
export const forgetPeerTopic = 'pacs-mesh/forget-peer/1';

/** One peer's share of new associations, as the leader computed it from the heartbeats' load figures. */
export interface RoutingEntry {
  readonly peerId: string;
  readonly siteName: string;
  readonly dicomAddress: string;
  /** The called AE title the peer answers (see PeerAddresses.aeTitle). */
  readonly aeTitle: string;
  /** See PeerAddresses.accessDigest; '' when the peer announces none. */
  readonly accessDigest: string;
  /** Relative share of new associations; 0 when saturated or refilling. */
  readonly weight: number;
  readonly saturated: boolean;
  /**
   * It holds far fewer instances than the fullest peer (restored from an empty disk, back from a long
   * absence, a site's new peer): a query there would miss studies, so new associations go to a whole peer while it refills.
   * Absent in announcements of pacs-mesh versions before it (read as false).
   */
  readonly refilling: boolean;
}

export interface RoutingTable {
  readonly term: number;
  readonly leaderId: string;
  /** Sorted by peerId. */
  readonly entries: readonly RoutingEntry[];
}

/**
 * Which change of the admitted voters (see Voters) a list is: compared by term, then seq. A leader makes at most
 * one list per (term, seq), so two lists of one version are the same list.
 */
export interface VotersVersion {
  readonly term: number;
  readonly seq: number;
}

/**
 * The admitted voters (hunt 168): a leader admits one peer at a time, the next only once a majority of the list
 * holds the last (Raft's single-server membership change; see logic.ts); forgotten peers leave at once.
 */
export interface Voters extends VotersVersion {
  /** Sorted PeerIds. */
  readonly peers: readonly string[];
}

/** Messages between balancers (votes are point to point, announcements go over gossip). */
export type BalancerMessage =
  /**
   * `roster`: the candidate's roster (sorted PeerIds), sent since hunt 159; a voter grants only a candidate whose
   * roster holds every peer of its own (see logic.ts, rosterMissingFrom). Absent from peers of earlier versions.
   * `voters`: the version of the candidate's admitted voters (its `roster` then), sent since hunt 168: a voter
   * holding admitted voters grants only a candidate whose version is not older than its own.
   */
  | { readonly type: 'requestVote'; readonly term: number; readonly candidateId: string; readonly roster?: readonly string[]; readonly voters?: VotersVersion }
  /**
   * `rosterMissing`: on a refusal for want of them, peers of the voter's roster missing from the candidate's
   * (at most rosterMissingMax), which the candidate adds to its next candidacy's roster (hunt 159).
   * `voters`: on a refusal, the voter's admitted voters when newer than the candidate's, which it adopts (hunt 168).
   */
  | { readonly type: 'vote'; readonly term: number; readonly voterId: string; readonly granted: boolean; readonly rosterMissing?: readonly string[]; readonly voters?: Voters }
  /**
   * `voters`: the leader's admitted voters (hunt 168), `committed` once a majority of them holds this version;
   * a follower adopts a newer version and acknowledges it with votersHeld while it is not committed.
   */
  | { readonly type: 'announce'; readonly term: number; readonly leaderId: string; readonly table: RoutingTable; readonly voters?: Voters & { readonly committed: boolean } }
  /**
   * The sender's admitted voters, sent while it has no leader to the peer its rule names (hunt 168): a peer
   * admitted by a leader that fell before telling it never ran, and the others waited for it. A joiner whose list is
   * empty sends it to every peer alive in its view: the founder leads once it has heard a majority's terms (hunt 186).
   */
  | { readonly type: 'voters'; readonly term: number; readonly voters: Voters }
  /**
   * A follower holds (persisted) the leader's voters of this version: counted towards committing it (hunt 168). From a
   * peer outside the list (sent at every announcement): it runs admitted mode, and only such a peer is admitted (hunt 186).
   */
  | { readonly type: 'votersHeld'; readonly term: number; readonly voterId: string; readonly voters: VotersVersion }
  /** Answer to an announcement of an older term, so that a leader cut off from a newer election steps down. */
  | { readonly type: 'newerTerm'; readonly term: number };

/** What survives a restart; persisted before any vote or claim leaves the peer. */
export interface ElectionDurable {
  readonly currentTerm: number;
  /** Whom this peer voted for in currentTerm (itself when it ran); null if nobody yet. */
  readonly votedFor: string | null;
  /**
   * A peer started with --bootstrap PeerIds (BalancerConfig.bootstrapPeerIds): false until one of them has been
   * in its roster (or it followed a leader), and it neither runs nor votes meanwhile. Absent: a record of a peer
   * that never had bootstrap PeerIds, or of a version before hunt 164; either way the ordinary rules apply.
   */
  readonly meshMet?: boolean;
  /**
   * The admitted voters (BalancerConfig.votersThroughLeader): whose votes count, instead of rosterPeerIds.
   * Absent: the learnt or pinned roster counts, as before hunt 168.
   */
  readonly voters?: Voters;
  /**
   * Voters this peer's roster forgot (peersForgotten by 'roster'), which as leader it takes out one change at a time
   * (logic.ts, nextVotersChange): peers of `voters` only, so at most votersMax. Persisted (hunt 186): kept in memory
   * only, a restart between the forgetting and leading left the ghost in the list. Absent: none.
   */
  readonly votersLeaving?: readonly string[];
}

export interface RoutingLimits {
  /** Active associations at which a peer counts as saturated. */
  readonly associationsPerPeerMax: number;
  /** Queued custody work at which a peer counts as saturated. */
  readonly custodyQueueMax: number;
  /** Below this much free disk a peer takes no new associations. */
  readonly freeDiskBytesMin: number;
  /**
   * A peer holding this many instances fewer than the fullest peer counts as refilling. Well above what
   * replication lags behind under load (copies arrive within a second), so only a real gap moves work.
   */
  readonly refillLagInstancesMin: number;
}

export interface BalancerConfig {
  readonly selfPeerId: string;
  /**
   * The voters: every peer of every configured site. A leader needs votes from a strict majority of this
   * fixed list, which is what makes two leaders of one term impossible (see logic.ts).
   */
  readonly rosterPeerIds: readonly string[];
  /**
   * How long a candidate waits for votes before it asks again in its term (doubling each time, up to 8x);
   * after a refusal it runs again with a higher term.
   */
  readonly voteTimeoutMs: number;
  /** How often the leader publishes (term, leaderId, table). */
  readonly announceIntervalMs: number;
  /** A follower forgets a leader it has not heard from for this long. */
  readonly leaderSilenceMaxMs: number;
  /**
   * A leader hands over to a better-ranked peer when that peer asks for votes, or once the peer has been
   * alive in its view this long without asking (a returning peer's balancer starts after its heartbeats, and
   * settles before it runs). 0 or absent: at the peer's first heartbeat.
   */
  readonly handOverGraceMs?: number;
  /**
   * A gap longer than this between two inputs means this process stood still (SIGSTOP, a long GC pause, a
   * frozen VM; ticks come every 100 ms wired): its leader's silence is credited by the gap, and it runs no
   * candidacy for settleAfterStallMs. Absent: no stall is detected.
   */
  readonly stallMinMs?: number;
  /**
   * After a stall, no candidacy for this long, as after a start: the connections the others dropped meanwhile
   * come back one by one, and a view in which the leader is still suspect while another peer is alive again
   * made the second-ranked peer run (terms 6 -> 9 and the leader unseated by its newerTerm, hunt 110).
   */
  readonly settleAfterStallMs?: number;
  /**
   * The PeerIds of this peer's --bootstrap addresses (their /p2p/ parts). While none of them has been in its
   * roster (ElectionDurable.meshMet), it neither runs nor votes: a joiner that could not reach its bootstrap peer
   * and met only later joiners elected with them in a term the mesh used (hunt 164). Absent or empty: no such rule.
   */
  readonly bootstrapPeerIds?: readonly string[];
  /**
   * Voters enter only through the leader (hunt 168, ElectionDurable.voters): rosterPeerIds (learnt) is what the
   * leader admits, one peer at a time. A first start with bootstrap PeerIds begins with no voters (admitted by the
   * mesh's leader), a first start without them with itself alone, a record of an earlier version with none (its
   * rosterPeerIds count, as before, until it adopts the list a leader stamped). Absent or false: rosterPeerIds are
   * the voters (a pinned roster, the mesh simulation, the actor unless --election-voters admitted: see docs/mesh-algorithms.md, "Admitted
   * voters").
   */
  readonly votersThroughLeader?: boolean;
  /**
   * With votersThroughLeader, whether a first start (an empty record) founds the voters as their only member
   * (`--found-mesh yes|no`) or joins with none until the mesh's leader admits it. Absent (`--found-mesh auto`, the
   * default): a first start founds them unless --bootstrap names another peer (bootstrapsElsewhere; the same list
   * given to every site makes every site a joiner, and none founds the list: docs/mesh-algorithms.md, "Admitted
   * voters", founding), and a record of learnt rosters keeps no list until a leader stamps its roster as one.
   */
  readonly foundsVoters?: boolean;
  /**
   * Whether --bootstrap names a peer other than this one, by PeerId or by an address without one (the actor judges
   * the latter against its own --p2p-port): what a first start without foundsVoters joins by. Absent: judged from
   * bootstrapPeerIds alone.
   */
  readonly bootstrapsElsewhere?: boolean;
  readonly routing: RoutingLimits;
}

export type BalancerInput =
  | { readonly type: 'tick'; readonly nowMs: number }
  /**
   * Peers taken out of the roster for good, already out of rosterPeerIds: they leave the admitted voters too (hunt
   * 168). `by: 'operator'` (forget-peer): at once, at every peer it reaches. `by: 'roster'` (learnRoster's: forget-site,
   * a successor's replacement, a lost site name, rosterForgetAfterMs): through the leader, one peer at a time once a
   * majority holds the last change, as it admits (hunt 184; removing at once let two lists two changes apart elect).
   */
  | { readonly type: 'peersForgotten'; readonly peerIds: readonly string[]; readonly by: 'operator' | 'roster'; readonly nowMs: number }
  | { readonly type: 'viewChanged'; readonly members: readonly MemberRecord[]; readonly nowMs: number }
  | {
      readonly type: 'messageReceived';
      readonly from: string;
      readonly message: BalancerMessage;
      readonly nowMs: number;
    };

export type BalancerEffect =
  | { readonly type: 'persist'; readonly key: 'election'; readonly value: ElectionDurable }
  | { readonly type: 'send'; readonly to: string; readonly message: BalancerMessage }
  | { readonly type: 'publish'; readonly topic: typeof routingTopic; readonly message: BalancerMessage }
  /** The leader this peer follows changed (null: none known, the front door serves locally). */
  | { readonly type: 'leaderChanged'; readonly term: number; readonly leaderId: string | null }
  /** This peer won the election of `term` (for logs and for the simulation's checker). */
  | { readonly type: 'claimedLeadership'; readonly term: number }
  | { readonly type: 'routingTableChanged'; readonly table: RoutingTable | null };
