/**
 * Scrub protocol: every stored copy is read back and checked against its catalog entry (length and
 * SHA-256), slowly and forever, so that a copy the disk damaged is found before anyone needs it, and
 * replaced from another site that holds a good one. Closed unions of the scrub reducer's inputs and effects.
 */
import type { CatalogEntry } from '../catalog-types.ts';

export interface ScrubConfig {
  /** Bytes read back per second while no DICOM association is active; 0 turns the scrub off. */
  readonly bytesPerSecond: number;
  /** Share of that rate while associations are active: the archive's own work comes first. */
  readonly busyRateShare: number;
  /** Catalog entries read per page (the cursor moves a page at a time). */
  readonly pageEntriesMax: number;
  /** Wait after start before the first pass (start-up and catch-up come first). */
  readonly startDelayMs: number;
  /** Pause between the end of one pass and the start of the next, and before retrying a failed page read. */
  readonly passPauseMs: number;
  /** Bad copies being repaired at once; more found meanwhile are reported and found again next pass. */
  readonly repairsInFlightMax: number;
  /** Suspect copies waiting to be read back; more are dropped (the pass still reaches them). */
  readonly suspectsQueuedMax: number;
  /**
   * A copy no site could repair is not read back again as a suspect for this long (each read of it would
   * otherwise re-read and re-log it); passes still check it.
   */
  readonly unrepairableQuietMs: number;
}

/** How a repair ended: 'unavailable' when no reachable site had a good copy, 'noPeers' without a mesh. */
export type RepairOutcome = 'repaired' | 'changed' | 'unavailable' | 'noPeers';

export type ScrubInput =
  | { readonly type: 'tick'; readonly nowMs: number; readonly busy: boolean }
  /** An operator asks for a pass now (POST /api/scrub): the wait before the next pass ends. */
  | { readonly type: 'startNow'; readonly nowMs: number }
  /**
   * A copy that may be damaged (a read failed on it, a peer refused its bytes): read back before anything
   * else, within the same byte budget, pass or no pass.
   */
  | { readonly type: 'suspected'; readonly entry: CatalogEntry; readonly reason: string; readonly nowMs: number }
  /** A page of entries after the cursor; `lastUid`: the last one read (decodable or not); `end` when the catalog has no more. */
  | { readonly type: 'listed'; readonly entries: readonly CatalogEntry[]; readonly lastUid: string | undefined; readonly end: boolean; readonly nowMs: number }
  | { readonly type: 'listFailed'; readonly error: string; readonly nowMs: number }
  /** 'gone': the entry was replaced or removed while it was read (nothing to say about it). */
  | { readonly type: 'verified'; readonly sopInstanceUid: string; readonly outcome: 'ok' | 'bad' | 'gone'; readonly reason?: string; readonly nowMs: number }
  | { readonly type: 'repairEnded'; readonly sopInstanceUid: string; readonly outcome: RepairOutcome; readonly nowMs: number };

export type ScrubEffect =
  | { readonly type: 'list'; readonly afterUid: string; readonly limit: number }
  | { readonly type: 'verify'; readonly entry: CatalogEntry }
  | { readonly type: 'repair'; readonly entry: CatalogEntry }
  /**
   * Where a restarted peer resumes the pass: after `afterUid` (every copy up to it was read back), or
   * from the start when ''. A pass over a large archive outlasts a peer's uptime; without this, copies
   * late in UID order would never be read.
   */
  | { readonly type: 'saveCursor'; readonly afterUid: string }
  | { readonly type: 'report'; readonly level: 'info' | 'warn' | 'error'; readonly message: string; readonly fields: Readonly<Record<string, unknown>> };

export interface ScrubStats {
  /** Passes finished since start. */
  readonly passesCompleted: number;
  readonly instancesVerified: number;
  /** Of those, copies read back because they were reported suspect. */
  readonly suspectsVerified: number;
  readonly bytesVerified: number;
  /** Copies found damaged (a copy found again in a later pass counts again). */
  readonly badCopiesFound: number;
  readonly copiesRepaired: number;
  /** Bad copies no reachable site could replace (kept as they are, found again next pass). */
  readonly copiesUnrepaired: number;
  /** Where the current pass is (the last UID listed), '' between passes. */
  readonly cursor: string;
  readonly lastPassCompletedAtMs: number | null;
  /** The archive was busy at the last tick (the scrub reads at its busy share of the rate). */
  readonly busy: boolean;
}
