/**
 * Custody protocol (issue 3): local durable store -> replicas offered to every site -> write quorum ->
 * C-STORE status; copies still owed become persistent, bounded replication debt; anti-entropy repair.
 * Closed unions: every input, mesh message and effect of the custody reducer is listed here.
 */
import type { ForgottenSite, MemberRecord } from '../../membership/messages.ts';

/** C-STORE-RSP statuses custody decides (PS3.4 Annex B). */
export const StoreStatus = {
  Success: 0x0000,
  /** Refused: out of resources. The modality keeps the instance and retries later. */
  OutOfResources: 0xa700,
} as const;
export type StoreStatus = (typeof StoreStatus)[keyof typeof StoreStatus];

/** One copy owed to one site: persisted until that site acknowledges a durable copy. */
export interface DebtEntry {
  readonly sopInstanceUid: string;
  readonly siteName: string;
  readonly sinceMs: number;
}

/**
 * A site this peer has heard from, persisted so that copies are owed to it from the first store after a
 * restart, before its heartbeats arrive again (the membership view starts empty).
 */
export interface KnownSite {
  readonly siteName: string;
  /** When one of its peers was last heard (the time of the custody step that saw it alive). */
  readonly lastHeardMs: number;
  /**
   * Learnt from a peer of it not yet alive for forgottenSiteReturnAliveMs (perhaps a heartbeat read late,
   * sent before the site went down): copies are owed to it, but its time is no news against a forgetting
   * at another peer until one of its peers settles. Absent in records of older builds: settled.
   */
  readonly unsettled?: true;
}

/** A key of the repair exchange: an instance and the SHA-256 of its bytes. */
export interface InstanceKey {
  readonly sopInstanceUid: string;
  readonly sha256: string;
}

export interface CustodyConfig {
  readonly selfPeerId: string;
  readonly selfSiteName: string;
  /**
   * Distinct sites that must hold a durable copy before Success. 'auto': 2 when two or more sites are
   * alive, 1 when this site is alone (availability first; the owed copies are kept as debt).
   */
  readonly writeQuorum: number | 'auto';
  /** How long a store may wait for its quorum before the modality gets 0xA700. */
  readonly quorumTimeoutMs: number;
  /** Bound on persisted debt entries; stores that would exceed it are refused with 0xA700. */
  readonly debtEntriesMax: number;
  /** Bound on stores being written locally or waiting for their quorum. */
  readonly pendingStoresMax: number;
  /** Bound on replica transfers in flight from this peer. */
  readonly replicationsInFlightMax: number;
  /** A transfer with no answer after this long may be tried again. */
  readonly replicationRetryMs: number;
  /** How often this peer starts a repair exchange with the next peer whose digest root differs. */
  readonly repairIntervalMs: number;
  /** Bound on keys in one repair message; the rest waits for the next round. */
  readonly repairKeysMax: number;
  /**
   * A repair partner holding at least this many keys per differing bucket (when at most
   * repairLeafBucketsMax buckets differ) answers with those buckets' leaf hashes instead of their keys, so
   * that only the keys of the differing leaves are listed (default repairLeavesKeysPerBucketMinDefault).
   */
  readonly repairLeavesKeysPerBucketMin?: number;
  /** Bound on repair pulls in flight. */
  readonly fetchesInFlightMax: number;
  /**
   * While copies pushed by other sites keep arriving (the last one less than this long ago), this peer
   * starts no repair pulls: a returning site would otherwise pull what its peers are already pushing to it
   * (measured: ~20% of a catch-up). Repair resumes once the pushes stop, so it still finds what they miss;
   * under an ingest that never stops it waits at most repairQuietOverrideFactor times this long.
   */
  readonly repairQuietMs: number;
  /**
   * A known site not heard from for this long is forgotten, and the copies owed to it with it (a
   * decommissioned site must not fill the debt table; if it returns, repair brings it what it misses).
   * Also how long a tombstone is passed on: a peer restored from an older backup forgets such a site by itself.
   */
  readonly knownSiteForgetAfterMs: number;
  /** Bound on known sites; beyond it the one silent for longest is forgotten. */
  readonly knownSitesMax: number;
  /**
   * A forgotten site is known again once one of its peers has been alive this long, not at its first
   * heartbeat: a late or relayed heartbeat of a site that is gone makes it alive for a moment only (until
   * membership's suspectAfterMs), and undid the operator's forgetting (the simulation found it).
   */
  readonly forgottenSiteReturnAliveMs: number;
  /**
   * How long a peer claiming another's site name must have been alive before it outranks that peer's
   * acknowledgements (see ackCountsForSite): a dead predecessor's late heartbeats make it alive for
   * moments only. Default siteClaimConfirmMsDefault (membership's own wait: 2 x deadAfterMs wired).
   */
  readonly siteClaimConfirmMs?: number;
  /**
   * For this long after a start (from the first view), the known sites not heard yet count as up for the
   * write quorum: a store in the first moments waits for them instead of an 'auto' quorum of 1 acknowledging
   * it on the one copy here while they are alive, or an explicit quorum refusing it 0xA700 before they are
   * heard. Once it is over, a store still waiting gets what the sites really up can give. Default
   * storeSettleAfterStartMsDefault.
   */
  readonly storeSettleAfterStartMs?: number;
  /**
   * A peer that does not speak the replication protocol (another version, during a rolling upgrade) is sent
   * no copies for this long after the first refusal, twice as long after each refusal that follows, up to
   * replicationBackOffMaxMs, until it restarts (a new incarnation) or acknowledges a copy. Defaults
   * replicationBackOffMinMsDefault and replicationBackOffMaxMsDefault.
   */
  readonly replicationBackOffMinMs?: number;
  readonly replicationBackOffMaxMs?: number;
}

/** See CustodyConfig.replicationBackOffMinMs. */
export const replicationBackOffMinMsDefault = 1_000;
/** See CustodyConfig.replicationBackOffMaxMs: a minute between attempts at a peer of another version. */
export const replicationBackOffMaxMsDefault = 60_000;

/** See CustodyConfig.siteClaimConfirmMs. */
export const siteClaimConfirmMsDefault = 6000;

/** See CustodyConfig.storeSettleAfterStartMs: heartbeats every 500 ms, a known peer redialled at once, the view settled within a second or two. */
export const storeSettleAfterStartMsDefault = 5000;

/** Most buckets a repairLeaves message carries the leaf hashes of (8 KiB each); with more differing, keys are listed by bucket. */
export const repairLeafBucketsMax = 32;
/**
 * Leaf hashes cost 8 KiB a bucket and a round trip; a key listed ~130 bytes: below ~64 keys a bucket
 * (archives under ~16,000 instances) the keys themselves are cheaper.
 */
export const repairLeavesKeysPerBucketMinDefault = 64;

/** Custody messages between peers (the bytes themselves travel on the replicate and fetch streams). */
export type CustodyMessage =
  /** The sender holds sopInstanceUid durably at siteName. */
  | { readonly type: 'replicaAck'; readonly sopInstanceUid: string; readonly siteName: string }
  /**
   * Repair step 1: all 256 bucket hashes (hex), and where this round's window of keys starts: only UIDs
   * after `afterUid` are listed (absent: from the first), so a difference larger than one message is
   * worked through window by window instead of listing the same first keys every round.
   */
  | {
      readonly type: 'repairDigest';
      readonly buckets: readonly string[];
      readonly afterUid?: string;
      /** The sender takes a repairLeaves answer (peers that predate leaves leave it out, and get keys). */
      readonly leaves?: boolean;
    }
  /**
   * Repair step 2 when the differing buckets hold many keys: their leaf hashes (digestLeafHashes, 8 KiB a
   * bucket, at most repairLeafBucketsMax buckets). The first peer answers with its keys in the leaves that
   * differ (repairKeys with `leaves`, replyWanted), the second with its own (replyWanted false).
   */
  | { readonly type: 'repairLeaves'; readonly buckets: readonly number[]; readonly leafHashes: Uint8Array; readonly afterUid?: string }
  /**
   * Repair step 2 (and 3, with replyWanted false): the sender's keys in the buckets that differ, after
   * afterUid; with `leaves`, in those leaves instead (and `buckets` empty).
   */
  | {
      readonly type: 'repairKeys';
      readonly buckets: readonly number[];
      readonly leaves?: readonly number[];
      readonly keys: readonly InstanceKey[];
      readonly replyWanted: boolean;
      readonly afterUid?: string;
    };

/** A copy received from another peer, verified (SHA-256) and durably written. */
export interface StoredCopy {
  readonly sopInstanceUid: string;
  readonly sha256: string;
  readonly fromPeerId: string;
}

export type CustodyInput =
  | { readonly type: 'tick'; readonly nowMs: number }
  /**
   * Forget the partners caught up with (reconciledPeers) and the exchanges awaited: this process stood
   * still long enough for the others to take it for dead, and they stored on meanwhile (searches wait for
   * a new catch-up, as after a start). `generation` names this forgetting (CustodyState.reconciledGeneration).
   */
  | { readonly type: 'reconciliationsForgotten'; readonly generation: number }
  | { readonly type: 'viewChanged'; readonly members: readonly MemberRecord[]; readonly nowMs: number }
  /** A modality sent an instance; its bytes are staged under requestId, not yet durable. */
  | {
      readonly type: 'storeRequested';
      readonly requestId: string;
      readonly sopInstanceUid: string;
      readonly sha256: string;
      readonly nowMs: number;
    }
  /** The caller finished the writeLocal effect (ok: bytes and catalog entry are durable). */
  | { readonly type: 'localWriteDone'; readonly requestId: string; readonly ok: boolean; readonly nowMs: number }
  /** The caller received, verified (SHA-256) and durably wrote a copy from another peer. */
  | {
      readonly type: 'replicaStored';
      readonly sopInstanceUid: string;
      readonly sha256: string;
      readonly fromPeerId: string;
      readonly nowMs: number;
    }
  /**
   * Several copies stored at once (those whose synced commits settled together), as one step: the figures
   * for the heartbeat (a digest root is a SHA-256 of 8 KiB) are worked out once for them, not once per copy.
   */
  | { readonly type: 'replicasStored'; readonly copies: readonly StoredCopy[]; readonly nowMs: number }
  /**
   * Sites acknowledged durable copies we sent them (the outcome of a replicate-batch), as one step: the
   * transfer slots they free are refilled once, not after each acknowledgement (each refill walks the
   * copies in flight and the debt owed to each alive site).
   */
  | { readonly type: 'replicasAcknowledged'; readonly fromPeerId: string; readonly acks: readonly { readonly sopInstanceUid: string; readonly siteName: string }[]; readonly nowMs: number }
  /**
   * Another peer offered us copies we lack (replicate-batch/1) and their bytes are on their way (repeated,
   * with those still to come, while they flow). Repair waits as for copies arriving (repairQuietMs), and
   * those UIDs are not pulled until stored or no longer said to come (incomingCopyForgetMs): pulling them
   * too sent each copy twice over the link (hunt 67: sites catching up over 10 Mbit/s pulled from each
   * other, once a due repair stopped waiting, copies the returning site was still sending them).
   */
  | { readonly type: 'copiesOffered'; readonly sopInstanceUids: readonly string[]; readonly nowMs: number }
  /**
   * A replicate transfer failed (the copy stays owed): it is offered again at the next drain, or, with
   * `retryLater` (this site's own copy could not be read, or the receiver refused its bytes), only after
   * replicationRetryMs, so that it does not come back in every batch.
   */
  | {
      readonly type: 'replicationFailed';
      readonly sopInstanceUid: string;
      readonly toSiteName: string;
      readonly retryLater?: boolean;
      readonly nowMs: number;
    }
  /**
   * A peer refused the replication protocol itself (it speaks another version: multistream-select found no
   * match), so every copy to it fails at once: no copies go to it for a back-off that doubles with each
   * refusal (see CustodyConfig.replicationBackOffMinMs). Before, the drain offered them again at every tick,
   * ~6 streams a second per peer for as long as the versions differed.
   */
  | { readonly type: 'peerLacksProtocol'; readonly peerId: string; readonly nowMs: number }
  /**
   * The operator decommissioned a site (POST /api/forget-site): forget it now, with the copies owed to it,
   * as knownSiteForgetAfterMs of silence would. Ignored while one of its peers is alive (it would be
   * learnt again at once).
   */
  | { readonly type: 'forgetSiteRequested'; readonly siteName: string; readonly nowMs: number }
  /** A repair pull failed (the peer no longer answers, or does not have it). */
  | { readonly type: 'fetchFailed'; readonly sopInstanceUid: string; readonly nowMs: number }
  /**
   * The local store refuses writes (a full disk: writable false) or takes them again. While it refuses,
   * this peer starts no repair exchange and no pull: each would fetch bytes only to drop them.
   */
  | { readonly type: 'storeWritableChanged'; readonly writable: boolean; readonly nowMs: number }
  | {
      readonly type: 'messageReceived';
      readonly from: string;
      readonly message: CustodyMessage;
      readonly nowMs: number;
    };

export type CustodyEffect =
  /** Make the staged bytes and catalog entry of requestId durable, then answer with localWriteDone. */
  | { readonly type: 'writeLocal'; readonly requestId: string; readonly sopInstanceUid: string }
  /** Send the C-STORE-RSP. quorum and sitesHolding say what the status rests on. */
  | {
      readonly type: 'ackStore';
      readonly requestId: string;
      readonly sopInstanceUid: string;
      readonly status: StoreStatus;
      readonly quorum: number;
      readonly sitesHolding: readonly string[];
      /** Set when refused before the deadline: the quorum cannot be reached, only this many sites are up (alive or suspect). */
      readonly sitesUp?: number;
    }
  | { readonly type: 'persistDebt'; readonly entry: DebtEntry }
  /**
   * Record sites heard from (new, or heard again) and turn forgotten ones into tombstones; a lost write
   * only costs a hint.
   */
  | {
      readonly type: 'persistKnownSites';
      readonly seen: readonly KnownSite[];
      /** Those of `seen` not known before (for the log). */
      readonly learnt: readonly string[];
      /** Known sites forgotten now (here, or at the peer whose heartbeat said so): their tombstones. */
      readonly forgotten: readonly ForgottenSite[];
      /** Tombstones of sites not known here, taken from other peers' heartbeats to pass on in ours. */
      readonly tombstonesAdopted: readonly ForgottenSite[];
      /** Tombstones too old to pass on, or beyond the bound. */
      readonly tombstonesDropped: readonly string[];
      /** Sites known after the change, this one included (a forgotten site may leave a --write-quorum out of reach). */
      readonly sitesKnown: number;
    }
  | { readonly type: 'removeDebt'; readonly sopInstanceUid: string; readonly siteName: string }
  /** Stream the stored instance to a peer of another site; its custody answers with replicaAck. */
  | { readonly type: 'replicate'; readonly toPeerId: string; readonly toSiteName: string; readonly sopInstanceUid: string }
  /** Pull an instance from a peer; on success feed replicaStored, else fetchFailed. */
  | { readonly type: 'fetch'; readonly fromPeerId: string; readonly sopInstanceUid: string }
  | { readonly type: 'send'; readonly to: string; readonly message: CustodyMessage }
  /**
   * A peer holds other bytes under a SOP Instance UID than this peer (a modality sent two instances under
   * one UID, each to another site): each keeps the one it stored first; reported once per UID.
   */
  | { readonly type: 'uidConflict'; readonly sopInstanceUid: string; readonly localSha256: string; readonly peerSha256: string; readonly peerId: string };
