/**
 * Retrieve anywhere: C-GET/C-MOVE at a site serve instances that have not reached it yet by asking alive
 * peers which instances an identifier selects (/pacs-mesh/query/1) and pulling the missing ones
 * (/pacs-mesh/fetch/1) into the local store, verified and durable, before sending them.
 *
 * Call from the C-GET/C-MOVE path (instead of iterating resolveRetrieve on the local db):
 *   const { entries } = await retrieve.resolveRetrieveEverywhere(request, { limit: maxRetrieveInstances });
 *   for (const e of entries) { const local = await retrieve.ensureLocal(e); if (!local) { failed++; continue }
 *     ... send store.readInstance(local) ... }
 * ensureLocal returns the LOCAL entry (its blobId is this store's), so always read through what it returns.
 *
 * Bounded: at most `peersAskedMax` peers per resolution, `limit` entries per peer, one pull per UID at a
 * time (concurrent callers share it), a bounded memory of which peer reported which UID.
 */
import type { MeshNode } from '../../net/node.ts';
import { systemClock, type Clock } from '../runtime/clock.ts';
import { untilAborted } from '../runtime/deadline.ts';
import { errorText, type Logger } from '../runtime/logger.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { ownString } from './custody/digest.ts';
import { resolveRetrieve, retrieveInstanceUids, type QueryRequest } from './query/query.ts';
import type { PartialCopies } from './partial-copies.ts';
import type { ReplicaStore } from './replica-store.ts';
import { fetchFrom, queryPeer, repairFrom, type ReplicationLimits } from './replication.ts';

export interface RemoteRetrieveInit {
  node: MeshNode;
  store: ReplicaStore;
  log: Logger;
  /** Alive peers to ask (self excluded), best first. */
  peers(): string[];
  /**
   * True when a peer holds nothing this peer lacks, as far as this peer knows (its last advertised digest
   * root equals ours), so that it not answering cannot hide a match. Absent: never known.
   */
  holdsNothingMore?(peerId: string): boolean;
  /**
   * Peers that may hold instances but cannot be asked now (suspect ones, and, while the view settles
   * after a start, sites known here but not heard yet, as `site:<name>`): a resolution counts them as
   * missed, so a retrieve answers 0xA701 rather than Success with part of a study. Absent: none.
   */
  peersUnreachable?(): string[];
  /**
   * Whether some of those will soon be one way or the other (a suspect peer: alive again, or dead and so a
   * lost site the others serve without): a resolution first waits for that, up to settleWaitMaxMs, rather
   * than count them as missed. Absent: never.
   */
  peersSettling?(): boolean;
  /** Longest wait for peersSettling to turn false. Default 2000 ms. */
  settleWaitMaxMs?: number;
  /** Times that wait. Default: the system clock. */
  clock?: Clock;
  /** A copy pulled here is durable: custody adds it to its digest and acknowledges the source. */
  onFetched?(entry: CatalogEntry, fromPeerId: string): void;
  limits?: Partial<ReplicationLimits>;
  /** Parts kept of cut transfers (the replication server's, once it runs): a pull cut by its deadline resumes from there. */
  partialCopies?(): PartialCopies | undefined;
  /** Aborts every transfer (shutdown). */
  signal?: AbortSignal;
  /** Peers asked per resolution. Default 8. */
  peersAskedMax?: number;
  /** Remembered UID -> peer hints. Default 100,000. */
  hintsMax?: number;
}

export interface ResolveOptions {
  /** Most entries returned (and asked of each peer). Default 100,000. */
  limit?: number;
  signal?: AbortSignal;
}

export interface ResolveResult {
  /** Local matches first, then those only peers hold, each UID once. */
  entries: CatalogEntry[];
  /** More matched than `limit` (here or at a peer). */
  truncated: boolean;
  /** Peers that did not answer (their instances may be missing from `entries`). */
  peersFailed: string[];
  /**
   * Those of peersFailed, and of the unreachable ones, that may hold instances this peer does not (see
   * holdsNothingMore): `entries` may lack some.
   */
  peersMissed: string[];
}

export interface RemoteRetrieve {
  /**
   * The local entry of an instance, pulling it from an alive peer first when it is not here yet.
   * undefined when no alive peer has it, or when, given the entry a peer matched, the copy here or the
   * one pulled holds other bytes (a UID conflict).
   */
  ensureLocal(entryOrUid: CatalogEntry | string, options?: { signal?: AbortSignal }): Promise<CatalogEntry | undefined>;
  /**
   * Replaces a damaged local copy (`corrupt`, its entry) with a good one from the first alive peer that
   * has it (the scrub's repair): 'unavailable' when none could.
   */
  repairCopy(corrupt: CatalogEntry): Promise<'repaired' | 'changed' | 'unavailable'>;
  /** resolveRetrieve over the local catalog and every alive peer's, merged. Throws QueryError like resolveRetrieve. */
  resolveRetrieveEverywhere(request: QueryRequest, options?: ResolveOptions): Promise<ResolveResult>;
}

/** How often a resolution looks again at peers settling. */
const settlePollMs = 50;

export function createRemoteRetrieve(init: RemoteRetrieveInit): RemoteRetrieve {
  const { node, store, log } = init;
  const peersAskedMax = init.peersAskedMax ?? 8;
  const hintsMax = init.hintsMax ?? 100_000;
  const settleWaitMaxMs = init.settleWaitMaxMs ?? 2000;
  const clock = init.clock ?? systemClock;
  /** uid -> peer that reported it in a resolution: asked first by ensureLocal. */
  const hints = new Map<string, string>();
  const pulls = new Map<string, Promise<CatalogEntry | undefined>>();

  const remember = (uid: string, peerId: string): void => {
    hints.delete(uid);
    // Its own copy: a UID sliced from a peer's answer would keep the whole answer alive as long as the hint.
    hints.set(ownString(uid), peerId);
    if (hints.size > hintsMax) hints.delete(hints.keys().next().value!);
  };

  const signalOf = (signal?: AbortSignal): AbortSignal | undefined =>
    signal && init.signal ? AbortSignal.any([signal, init.signal]) : (signal ?? init.signal);

  /**
   * Asks `peers` in turn until one answers something other than undefined (it does not hold the instance);
   * a peer that fails is logged as `what` and the next one asked.
   */
  async function firstAnswer<T>(peers: readonly string[], uid: string, what: string, ask: (peerId: string) => Promise<T | undefined>): Promise<T | undefined> {
    for (const peerId of peers) {
      try {
        const answer = await ask(peerId);
        if (answer !== undefined) return answer;
      } catch (error) {
        log.warn(what, { sopInstanceUid: uid, from: peerId, error: errorText(error) });
      }
    }
    return undefined;
  }

  async function pull(uid: string, signal?: AbortSignal): Promise<CatalogEntry | undefined> {
    const hinted = hints.get(uid);
    const alive = init.peers();
    // The hint only orders alive peers: a holder that died or hung since it answered would hold every pull of it for the exchange deadline.
    const candidates = hinted !== undefined && alive.includes(hinted) ? [hinted, ...alive.filter((peerId) => peerId !== hinted)] : alive;
    return firstAnswer(candidates, uid, 'remote retrieve: pull failed', async (peerId) => {
      const partials = init.partialCopies?.();
      const result = await fetchFrom(node, peerId, store, uid, { limits: init.limits, signal, ...(partials !== undefined && { partials }) });
      if (result === undefined) return undefined;
      if (result.outcome === 'stored') init.onFetched?.(result.entry, peerId);
      hints.delete(uid);
      return result.entry;
    });
  }

  return {
    async ensureLocal(entryOrUid, options = {}) {
      const uid = typeof entryOrUid === 'string' ? entryOrUid : entryOrUid.sopInstanceUid;
      let local = await store.getEntry(uid);
      if (local === undefined) {
        let running = pulls.get(uid);
        if (running === undefined) {
          // Shared by every caller, so not cut off by one caller's signal (a cancelled C-GET left another
          // requestor's sub-operation failed); only shutdown stops it, and each caller stops waiting on its own.
          running = pull(uid, init.signal).finally(() => pulls.delete(uid));
          pulls.set(uid, running);
        }
        local = await untilAborted(running, options.signal);
      }
      // Two instances sent under one UID (a UID conflict): the copy here, or the one pulled, may be another
      // instance than the one a peer matched, of another study or patient. Sending it would answer a
      // retrieve with the wrong image (helper 43); the sub-operation fails instead.
      if (local !== undefined && typeof entryOrUid !== 'string' && local.sha256 !== entryOrUid.sha256) {
        log.warn('retrieve: this site holds other bytes under a matched SOP Instance UID (a UID conflict): that sub-operation fails', {
          sopInstanceUid: uid,
          studyInstanceUid: entryOrUid.studyInstanceUid,
          heldStudyInstanceUid: local.studyInstanceUid,
        });
        return undefined;
      }
      return local;
    },

    async repairCopy(corrupt) {
      const outcome = await firstAnswer(init.peers(), corrupt.sopInstanceUid, 'repair: copy from a peer failed', (peerId) =>
        repairFrom(node, peerId, store, corrupt, { limits: init.limits, signal: init.signal }),
      );
      return outcome ?? 'unavailable';
    },

    async resolveRetrieveEverywhere(request, options = {}) {
      const limit = options.limit ?? 100_000;
      const signal = signalOf(options.signal);
      const byUid = new Map<string, CatalogEntry>();
      let truncated = false;
      for await (const entry of resolveRetrieve(store.db, request)) {
        if (byUid.size >= limit) {
          truncated = true;
          break;
        }
        byUid.set(entry.sopInstanceUid, entry);
      }
      // Every instance an IMAGE-level retrieve names is here: no peer can add a match, so a paused or silent
      // one must not turn it into 0xA701 / 503 (the soak of helper 75 saw that for instances held here).
      const named = retrieveInstanceUids(request);
      if (!truncated && named !== undefined && named.every((uid) => byUid.has(uid))) return { entries: [...byUid.values()], truncated, peersFailed: [], peersMissed: [] };
      // A pause of a second at another site made it suspect, and the retrieve answered 0xA701 (retry) though
      // the site came back moments later: a short wait serves the viewer instead.
      for (const until = clock.nowMs() + settleWaitMaxMs; init.peersSettling?.() === true && clock.nowMs() < until && signal?.aborted !== true; ) {
        await new Promise<void>((resolve) => clock.setTimeout(resolve, settlePollMs));
      }
      const peers = init.peers().slice(0, peersAskedMax);
      const answers = await Promise.allSettled(peers.map((peerId) => queryPeer(node, peerId, request, limit, { limits: init.limits, signal })));
      const peersFailed: string[] = [];
      answers.forEach((answer, i) => {
        const peerId = peers[i]!;
        if (answer.status === 'rejected') {
          peersFailed.push(peerId);
          log.warn('remote retrieve: peer did not resolve', { peer: peerId, error: errorText(answer.reason) });
          return;
        }
        truncated ||= answer.value.truncated;
        for (const entry of answer.value.entries) {
          if (byUid.has(entry.sopInstanceUid)) continue;
          if (byUid.size >= limit) {
            truncated = true;
            return;
          }
          byUid.set(entry.sopInstanceUid, entry);
          remember(entry.sopInstanceUid, peerId);
        }
      });
      // Read after the answers: a peer that answered and turned suspect meanwhile (a busy moment, with queries
      // waiting for a slot) hid nothing, and counted as silent it refused a whole retrieve (helper 46).
      const answered = new Set(peers.filter((_, i) => answers[i]!.status === 'fulfilled'));
      const unreachable = (init.peersUnreachable?.() ?? []).filter((peerId) => !answered.has(peerId));
      const peersMissed = [...peersFailed, ...unreachable].filter((peerId) => !(init.holdsNothingMore?.(peerId) ?? false));
      // The retrieve's 0xA701 only counts them: the operator sees which (a suspect one logs no failure).
      if (peersMissed.length > 0) log.warn('remote retrieve: peers that may hold matches were not heard', { peersMissed, peersFailed, unreachable });
      return { entries: [...byUid.values()], truncated, peersFailed, peersMissed };
    },
  };
}
