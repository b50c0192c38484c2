/**
 * Membership protocol (issue 3): heartbeats over gossip, a failure detector, incarnations.
 * Closed unions: every input and effect the membership reducer knows is listed here.
 */

export const membershipTopic = 'pacs-mesh/membership/1';

export type MemberStatus = 'alive' | 'suspect' | 'dead';

export interface PeerAddresses {
  /** host:port where this peer accepts DICOM associations. */
  readonly dicom: string;
  /** host:port of the HTTP endpoint (/healthz, /api/mesh). */
  readonly http: string;
  /** The called AE title this peer answers: associations are only routed between peers that answer the same. */
  readonly aeTitle: string;
  /**
   * Digest of its C-MOVE destinations and calling AE allow-list (accessDigestOf): associations are only
   * routed between peers with the same one. Absent from peers before the field, and from tests.
   */
  readonly accessDigest?: string;
}

export interface PeerLoad {
  readonly activeAssociations: number;
  /** Replication offers, debt drains and repair pulls waiting at this peer. */
  readonly queuedCustodyWork: number;
  readonly freeDiskBytes: number;
  /**
   * The peer could not measure its free disk (statfs failed): freeDiskBytes is 0 then, and is no reason to
   * route elsewhere. Absent when measured, and from peers before the field (their 0 reads as a full disk).
   */
  readonly freeDiskUnknown?: true;
}

/**
 * A site a peer forgot (an operator's POST /api/forget-site, or long silence), and when by that peer's clock:
 * carried in its heartbeats so that every peer forgets it, a peer restored from a backup taken before too.
 */
export interface ForgottenSite {
  readonly siteName: string;
  readonly forgottenAtMs: number;
  /**
   * The operator forgot it (POST /api/forget-site, here or at the peer it came from): only such a forgetting
   * takes the site's peers out of the election roster at once. Absent: by silence, and in tombstones of earlier
   * builds, whose roster then forgets those peers by its own majority rule (a partition must not forget them).
   */
  readonly byOperator?: true;
}

/** Bound on forgotten sites one heartbeat carries (a page of them); a heartbeat with more is malformed. */
export const heartbeatForgottenSitesMax = 16;

/** The heartbeat published every heartbeatIntervalMs on membershipTopic. */
export interface Heartbeat {
  readonly type: 'heartbeat';
  readonly peerId: string;
  readonly siteName: string;
  /** Grows on every restart (the caller persists a counter), so a restarted peer outranks its past. */
  readonly incarnation: number;
  /** Grows with every heartbeat within one incarnation, so a delayed heartbeat never counts as news. */
  readonly sequence: number;
  /** Election rank: lower wins (then lower peerId). */
  readonly priority: number;
  /**
   * False while this peer cannot record a term or a vote (a full disk): it could never win, and the
   * others must not wait for it as the best-ranked peer.
   */
  readonly electable: boolean;
  readonly addresses: PeerAddresses;
  readonly load: PeerLoad;
  readonly instanceCount: number;
  /** Root of the custody digest (hex), so peers can see cheaply whether repair has anything to do. */
  readonly digestRoot: string;
  /** A page of the sites this peer forgot lately (custody's tombstones); absent when none, and from older peers. */
  readonly forgottenSites?: readonly ForgottenSite[];
  /**
   * The sender's clock when it built this heartbeat, sent with forgottenSites: the receiver reads their
   * times on its own clock (forgottenAtMs + its now - sentAtMs), since the sites' wall clocks may disagree.
   * Absent from older peers (their tombstone times are then only kept from lying in the receiver's future).
   */
  readonly sentAtMs?: number;
  /**
   * True when the operator runs several peers under this site name on purpose (`--site-peers several`):
   * absent, the peer claims the site alone, and another live peer claiming it at another address is a
   * configuration error (a copied --site). Absent from older peers.
   */
  readonly siteShared?: boolean;
  /**
   * The sender's package version (`pacs-mesh --version`), so that an operator upgrading one site at a time sees
   * which build each site runs (/api/mesh members, the status page). Absent from older peers; never decides anything.
   */
  readonly build?: string;
}

/**
 * Live peers claiming one site name at different DICOM addresses, at least one of them claiming it alone:
 * custody counts copies by site name, so two places count as one. `peers` go by precedence, the first
 * keeps the site (see sitePrecedence in logic.ts).
 */
export interface SiteConflict {
  readonly siteName: string;
  readonly peers: readonly { readonly peerId: string; readonly dicom: string; readonly incarnation: number }[];
}

/** What one peer knows about another (or itself), the unit of the view. */
export interface MemberRecord {
  readonly peerId: string;
  readonly siteName: string;
  readonly incarnation: number;
  readonly sequence: number;
  readonly priority: number;
  readonly electable: boolean;
  readonly addresses: PeerAddresses;
  readonly load: PeerLoad;
  readonly instanceCount: number;
  readonly digestRoot: string;
  /** As in its last heartbeat. */
  readonly forgottenSites?: readonly ForgottenSite[];
  /** As in its last heartbeat (see Heartbeat.siteShared); absent when false. */
  readonly siteShared?: boolean;
  /** As in its last heartbeat (see Heartbeat.build). */
  readonly build?: string;
  readonly status: MemberStatus;
  /** Local receive time of the newest accepted heartbeat (never the sender's clock). */
  readonly lastHeardAtMs: number;
  readonly statusSinceMs: number;
}

export interface MembershipConfig {
  readonly peerId: string;
  readonly siteName: string;
  readonly incarnation: number;
  readonly priority: number;
  readonly addresses: PeerAddresses;
  readonly heartbeatIntervalMs: number;
  /** Silence after which a member is suspect: excluded from election, still offered replicas. */
  readonly suspectAfterMs: number;
  /** Silence after which a member is dead: its site's copies turn into debt that waits. */
  readonly deadAfterMs: number;
  /** Bound on remembered members; dead records are forgotten oldest first beyond it. */
  readonly membersMax: number;
  /** The operator runs several peers under this site name on purpose (`--site-peers several`). Default false. */
  readonly siteShared?: boolean;
  /** This build's package version, sent in heartbeats (Heartbeat.build). */
  readonly build?: string;
}

export type MembershipInput =
  | { readonly type: 'tick'; readonly nowMs: number }
  | { readonly type: 'heartbeatReceived'; readonly heartbeat: Heartbeat; readonly nowMs: number }
  | { readonly type: 'peerDisconnected'; readonly peerId: string; readonly nowMs: number }
  /** Data arrived from this peer on a mesh stream: it is alive now, whatever became of its heartbeats. */
  | { readonly type: 'peerActive'; readonly peerId: string; readonly nowMs: number }
  | {
      readonly type: 'localStatsChanged';
      readonly load: PeerLoad;
      readonly instanceCount: number;
      readonly digestRoot: string;
      readonly forgottenSites?: readonly ForgottenSite[];
    }
  | { readonly type: 'electabilityChanged'; readonly electable: boolean }
  /** A connected peer subscribed to the membership topic (it joined, or came back). */
  | { readonly type: 'peerSubscribed' };

export type MembershipEffect =
  | { readonly type: 'publish'; readonly topic: typeof membershipTopic; readonly message: Heartbeat }
  | {
      readonly type: 'memberStatusChanged';
      readonly peerId: string;
      readonly siteName: string;
      readonly incarnation: number;
      readonly from: MemberStatus | 'unknown';
      readonly to: MemberStatus;
    }
  /**
   * A known peer now heartbeats under another site name (restarted on its data directory with another
   * `--site`): copies owed to the old site wait for it, so the operator is told.
   */
  | { readonly type: 'memberSiteRenamed'; readonly peerId: string; readonly fromSite: string; readonly toSite: string }
  /**
   * A member went dead by silence: its connections, if any are still up (a hung process, a half-open
   * connection), are dropped so that streams to it fail now rather than at their own deadlines.
   */
  | { readonly type: 'dropConnections'; readonly peerId: string }
  /** The site-name conflicts seen now changed (appeared, ended, or other peers): the operator is told. */
  | { readonly type: 'siteConflictsChanged'; readonly conflicts: readonly SiteConflict[] }
  /**
   * Another live peer with precedence claims this peer's site name at another DICOM address: this peer
   * must stop (emitted once). Its acknowledged data stays in its data directory.
   */
  | { readonly type: 'siteNameTaken'; readonly siteName: string; readonly byPeerId: string; readonly byDicom: string }
  /**
   * This process stood still for `stalledMs` (SIGSTOP, a frozen VM, an overloaded host), long enough for the
   * others to take it for suspect or dead: the operator reading this site's log is told why they did.
   */
  | { readonly type: 'selfStalled'; readonly stalledMs: number; readonly seenAs: 'suspect' | 'dead' }
  /** The whole view (self included, sorted by peerId); emitted whenever a record changed. */
  | { readonly type: 'viewChanged'; readonly members: readonly MemberRecord[] };
