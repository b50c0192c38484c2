/**
 * The custody actor: a thin nact actor around the pure custody reducer (logic.ts). It feeds the reducer
 * its inputs (ticks, membership views, stores from the ingest port, replicas and custody messages from the
 * stream protocols of ../replication.ts) and performs the effects:
 *   writeLocal      -> the association's writer commits (see ../mesh-ingest.ts), then localWriteDone
 *   ackStore        -> the waiting C-STORE gets its status, once the debt of the same step is durable
 *   persistDebt / removeDebt -> ReplicaStore.updateDebt per step; the store keeps call order and combines
 *                      the calls that wait into one batch (unsynced: see updateDebt)
 *   persistKnownSites -> ReplicaStore.updateKnownSites (same write order; a failure is only logged)
 *   replicate       -> the cut-through push of that instance to that site if one ran (push.ts), else
 *                      /pacs-mesh/replicate-batch/1 with the other copies queued for that peer;
 *                      'stored' or 'have' is the site's replicaAck
 *   fetch           -> /pacs-mesh/fetch-batch/1 (with the other pulls queued for that peer) into the
 *                      store, then replicaStored (which acks the source)
 *   send            -> /pacs-mesh/custody/1 through a bounded queue (a dropped message is repeated or repaired)
 * The reducer bounds replications and fetches in flight; this file bounds the send queue.
 *
 * Timers are messages: a tick every `tickIntervalMs` drives quorum timeouts, retries, debt drain and repair.
 *
 * Supervision: everything acknowledged is durable before its ack (instances by the store's synced commit,
 * debt by the synced batch that precedes the ack), so a crash loses only volatile work. The actor's state
 * is `null` until loaded; nact's 'reset' brings it back to `null`, and the next message reloads the durable
 * state (catalog -> held set, debt table) and the last membership view. Stores waiting at the time of a
 * crash are answered 0xA700 (the modality retries; a retry of a stored instance is a duplicate).
 */
import { randomUUID } from 'node:crypto';
import type { IngestPort } from '../../association/services/deps.ts';
import type { MemberRecord } from '../../membership/messages.ts';
import type { Clock, TimerHandle } from '../../runtime/clock.ts';
import { untilAborted } from '../../runtime/deadline.ts';
import { createRepeatLimiter, errorText, type Logger } from '../../runtime/logger.ts';
import { actorSender, type CrashDecision, type Ref, spawnActor, stopActor } from '../../runtime/nact.ts';
import type { CatalogEntry } from '../catalog-types.ts';
import { heldInstanceBatches, isCatalogDamage } from '../catalog.ts';
import { createMeshIngest, type CustodyGate, type StoreAnswer, type StoreTicket } from '../mesh-ingest.ts';
import { createRemoteRetrieve, type RemoteRetrieve } from '../remote-retrieve.ts';
import { catalogDamagedAtStartError, type ReplicaStore, type StoreError } from '../replica-store.ts';
import { PushStreams, ReplicaPush, defaultPushLimits, type PushOutcome } from '../push.ts';
import { BulkInFlight } from '../bulk-in-flight.ts';
import { takeNextSend } from './send-queue.ts';
import {
  CUSTODY_PROTOCOL,
  FETCH_BATCH_PROTOCOL,
  REPLICATE_BATCH_PROTOCOL,
  ReplicationError,
  defaultReplicationLimits,
  fetchBatchFrom,
  replicateBatchTo,
  sendCustodyMessages,
  serveReplication,
  type ReplicationLimits,
  type FetchBatchOutcome,
  type ReplicationServer,
} from '../replication.ts';
import { PeerBatches } from './peer-batches.ts';
import type { MeshNode } from '../../../net/node.ts';
import { createDigest, digestAdd } from './digest.ts';
import { aliveReplicaTargets, replicationBackedOff, custodyStats, effectiveWriteQuorum, holdsNothingMore, initCustody, sameHeartbeatFigures, sitesKnown, stepCustody, writeQuorumAboveSitesKnown, writeQuorumNow, type CustodyState, type HeartbeatFigures } from './logic.ts';
import { StoreStatus, type CustodyConfig, type CustodyEffect, type CustodyInput, type CustodyMessage, type DebtEntry, type StoredCopy } from './messages.ts';

/** The heartbeat's figures (forgottenSites: the tombstones, newest first, that the heartbeats pass on), and two more for /api/mesh. */
export interface CustodyStats extends HeartbeatFigures {
  readonly debtEntries: number;
  /** UIDs found holding other bytes at another peer since this process started (see the uidConflict effect). */
  readonly uidConflicts: number;
}

export interface CustodyTuning extends Partial<Omit<CustodyConfig, 'selfPeerId' | 'selfSiteName' | 'writeQuorum' | 'quorumTimeoutMs'>> {
  /** Period of the tick message. Default 250 ms. */
  tickIntervalMs?: number;
  /** Custody messages waiting to be sent; beyond it new ones are dropped (they are repeated or repaired). */
  sendsQueuedMax?: number;
  /** Custody message streams open at once. */
  sendsInFlightMax?: number;
  /**
   * ...to one peer: a message to a peer with copies in flight waits behind them (sendCustodyMessages), so
   * one slow link must not hold every stream while messages to the other sites wait.
   */
  sendsInFlightPerPeerMax?: number;
  /** Cut-through push results kept for custody's replicate effects (oldest forgotten first). */
  pushesRememberedMax?: number;
  /** Replication batches and pull batches of one peer whose bytes flow at once (see PeerBatches). */
  batchesFlowingPerPeerMax?: number;
  /** ...and running at once in any phase. */
  batchesPerPeerMax?: number;
  /** After a start, how long retrieves and searches wait for the known sites to be heard. Default 5 s. */
  viewSettleAfterStartMs?: number;
  /** A site expecting others (a new identity, or --bootstrap) that heard none: how long searches wait for one. Default 15 s. */
  joinWaitAfterStartMs?: number;
  /** Instances behind the fullest site from which a search just after a start is refused. Default 1. */
  searchLagInstancesMax?: number;
}

export interface CustodyServiceInit {
  node: MeshNode;
  store: ReplicaStore;
  siteName: string;
  peerId: string;
  writeQuorum: number | 'auto';
  quorumTimeoutMs?: number;
  clock: Clock;
  log: Logger;
  /** nact parent of the custody actor. */
  parent: Ref<any>;
  /**
   * Whether this peer was told of other sites (bootstrap addresses): knowing no site yet, a C-FIND in the
   * first moments after the start is refused until one is heard (searchRefusal). Default false.
   */
  expectsOtherSites?: boolean;
  tuning?: CustodyTuning;
  limits?: Partial<ReplicationLimits>;
  /** Supervision decision on a crash of the custody actor. Default 'reset' (durable state reloaded). */
  onCrash?: (error: unknown) => CrashDecision | Promise<CrashDecision>;
}

export interface CustodyService {
  /** For the association actors (C-STORE). */
  readonly ingest: IngestPort;
  /** Retrieve anywhere: ensureLocal / resolveRetrieveEverywhere (see ../remote-retrieve.ts). */
  readonly retrieve: RemoteRetrieve;
  /** Called by the peer whenever membership changes (the whole view, self included). */
  onViewChanged(members: readonly MemberRecord[]): void;
  /**
   * Membership found that this process stood still long enough for the others to take it for suspect or
   * dead (SIGSTOP, a frozen VM): searches wait, as after a start, until every alive peer has been heard
   * since and this peer has caught up again by anti-entropy with those holding more (hunt 193: a site
   * resumed after others stored 300 instances answered C-FIND with Success and none of them).
   */
  noteSelfStalled(): void;
  /**
   * Why a C-FIND here would answer from a catalog known to be incomplete, as an Error Comment (at most 64
   * characters); undefined when it may answer. Only in the first viewSettleAfterStartMs after a start: known
   * sites not heard yet (or none at all though bootstrap addresses were given: a site restored on an empty
   * disk), a connected peer not heard yet (one that reconnected to a site restored without --bootstrap), or
   * this site searchLagInstancesMax or more instances behind the fullest alive one. Also in the same window
   * after a site is first heard since the start, while this site is behind it (one that was alone, restored
   * on an empty disk while the others were down). After that, until this peer has caught up by anti-entropy
   * with every alive peer holding more (refillRefusal); the leader's table also routes new associations away
   * from a site 200 or more behind.
   */
  searchRefusal(): string | undefined;
  stats(): CustodyStats;
  /** The other sites copies are owed to, present or absent (see KnownSite), with the copies owed now, by name. */
  knownSites(): Array<{ site: string; debtEntries: number }>;
  /** The write quorum a C-STORE accepted now must reach (Storage Commitment counts copies against it). */
  writeQuorumNow(): number;
  /**
   * Decommissions a site by hand: it is forgotten with the copies owed to it ('forgotten', and how many),
   * unless one of its peers is alive ('alive') or it is not known here ('unknown').
   */
  forgetSite(siteName: string): { outcome: 'forgotten'; debtEntriesDropped: number } | { outcome: 'alive' | 'unknown' };
  /** Feeds membership heartbeats; returns the unsubscribe function. */
  onStatsChanged(listener: (stats: CustodyStats) => void): () => void;
  /** Makes the actor throw on its next message (supervision tests). */
  crashForTest(reason?: string): void;
  /** Cuts the copies arriving and this site's pulls; waits until `deadline` for them to keep what arrived (ReplicationServer.cut). */
  cutTransfers(deadline: AbortSignal): Promise<void>;
  /**
   * Stops; with a `deadline`, its work still running then (a pull or push on a store that does not answer)
   * is no longer waited for. Debt handed to the store is waited for whatever the deadline.
   */
  stop(deadline?: AbortSignal): Promise<void>;
}

export type CustodyErrorCode = 'ERR_CUSTODY_CRASH_TEST' | 'ERR_CUSTODY_STOPPED' | 'ERR_CUSTODY_DEBT_WRITE';

export class CustodyError extends Error {
  static readonly NAME = 'CustodyError';
  override readonly name = CustodyError.NAME;
  constructor(
    readonly code: CustodyErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

type CustodyMsg =
  | { readonly type: 'load' }
  | { readonly type: 'tick' }
  /** `viaStream`: replicas pushed to us, already acknowledged on their streams: no replicaAck message. */
  | { readonly type: 'input'; readonly input: CustodyInput; readonly viaStream?: boolean }
  /** A whole batch's outcomes in one turn, so the slots they free are refilled together (one next batch). */
  | { readonly type: 'inputs'; readonly inputs: readonly CustodyInput[] }
  | { readonly type: 'crash'; readonly reason: string };

export const defaultCustodyTuning = {
  debtEntriesMax: 1_000_000,
  pendingStoresMax: 256,
  // Copies to one peer travel in batches of up to batchEntriesMax (replicate-batch/1): room for four
  // full batches per peer (batchesPerPeerMax), so the next batches are queued when one finishes instead
  // of waiting for its acks to pass through the reducer. Catch-up of 1,000 from ready with batches of 64:
  // 1.35-2.07 s with 128 (a noisy hour), 1.22-1.36 s with 256. Batches are 128 now, so 512.
  replicationsInFlightMax: 512,
  replicationRetryMs: 30_000,
  repairIntervalMs: 2_000,
  repairQuietMs: 1_000,
  repairKeysMax: 2_000,
  // Repair pulls travel the same way (fetch-batch/1).
  fetchesInFlightMax: 512,
  tickIntervalMs: 250,
  // A catch-up acknowledges every pulled instance to its source: room for a few batches of them.
  sendsQueuedMax: 2048,
  sendsInFlightMax: 8,
  sendsInFlightPerPeerMax: 2,
  pushesRememberedMax: 1024,
  // Catch-up of 1,000 instances: medians 3.0 s with one batch per peer at a time, 2.8 s with two at
  // once (opening, flowing and waiting in step). Pipelined, two flowing and four in all: see PeerBatches.
  batchesFlowingPerPeerMax: 2,
  batchesPerPeerMax: 4,
  // A site down for a long weekend is still owed its copies; one gone for a week is taken as decommissioned.
  knownSiteForgetAfterMs: 7 * 24 * 3600_000,
  knownSitesMax: 256,
  // Several times membership's suspectAfterMs (1.5 s).
  forgottenSiteReturnAliveMs: 10_000,
  // After a start, retrieves wait this long for the known sites (or, knowing none, any peer) to be heard
  // before trusting a view without them: heartbeats every 500 ms, a connection in well under a second.
  viewSettleAfterStartMs: 5_000,
  // A site with a new identity told of no other site (restored on an empty disk without --bootstrap) hears
  // the others only once they redial its address and find the new identity there (their back-off reaches
  // 5 s): searches wait this long for a first site before it answers alone (an empty catalog answered
  // Success with none of a study's 40 instances when they came at 5.5 s).
  joinWaitAfterStartMs: 15_000,
  // Just after its start, a site holding fewer instances than the fullest alive one is still catching up:
  // any lag, not only the balancer's refilling threshold (a site restored on an empty disk of a small
  // archive answered Success with part of the matches, black-box helper 40). Heartbeats may be up to an
  // interval old, so under a steady ingest elsewhere this may refuse for the whole window: clients retry.
  searchLagInstancesMax: 1,
  // A retrieve waits up to this long for suspect peers to be alive again or dead (membership: 1.5 s between).
  suspectSettleWaitMs: 2_000,
} as const;

interface StoreWaiter {
  readonly sopInstanceUid: string;
  readonly writeLocal: () => void;
  readonly answer: (answer: StoreAnswer) => void;
}

/** The peers whose copies a step takes (replicaStored, replicasStored): none for other inputs. */
function streamSenders(i: CustodyInput): ReadonlySet<string> | undefined {
  if (i.type === 'replicaStored') return new Set([i.fromPeerId]);
  if (i.type === 'replicasStored') return new Set(i.copies.map((copy) => copy.fromPeerId));
  return undefined;
}

/**
 * A peer heard alive through another's gossip before this peer has an address for it (it joined, or
 * this one restarted on another port, through a third): routine, the copy is owed and goes once the two
 * have connected. Logged as a warning, it was a handful of them at every site at each such restart (helper 91).
 */
function notDialableYet(error: unknown): boolean {
  return (error as Error | undefined)?.name === 'NoValidAddressesError' || /no valid addresses for peer/.test(errorText(error));
}

/** How long after a refused protocol the peer must still be connected for the refusal to be reported. */
export const protocolRefusalLogDelayMs = 5_000;

/** libp2p's multistream-select found no protocol both ends speak: the peer runs another version of it. */
function protocolUnsupported(error: unknown): boolean {
  return (error as Error | undefined)?.name === 'UnsupportedProtocolError';
}

export async function startCustody(init: CustodyServiceInit): Promise<CustodyService> {
  const { node, store, clock } = init;
  const log = init.log.child({ component: 'custody' });
  const tuning = { ...defaultCustodyTuning, ...init.tuning };
  const config: CustodyConfig = {
    selfPeerId: init.peerId,
    selfSiteName: init.siteName,
    writeQuorum: init.writeQuorum,
    quorumTimeoutMs: init.quorumTimeoutMs ?? 10_000,
    debtEntriesMax: tuning.debtEntriesMax,
    pendingStoresMax: tuning.pendingStoresMax,
    replicationsInFlightMax: tuning.replicationsInFlightMax,
    replicationRetryMs: tuning.replicationRetryMs,
    repairIntervalMs: tuning.repairIntervalMs,
    repairQuietMs: tuning.repairQuietMs,
    repairKeysMax: tuning.repairKeysMax,
    fetchesInFlightMax: tuning.fetchesInFlightMax,
    knownSiteForgetAfterMs: tuning.knownSiteForgetAfterMs,
    knownSitesMax: tuning.knownSitesMax,
    forgottenSiteReturnAliveMs: tuning.forgottenSiteReturnAliveMs,
  };

  let stopped = false;
  const shutdown = new AbortController();
  let members: readonly MemberRecord[] = [];
  const waiters = new Map<string, StoreWaiter>();
  const tasks = new Set<Promise<unknown>>();
  /** The last step's debt write (the store writes them in call order); acks of a step wait for it. */
  let debtChain: Promise<boolean> = Promise.resolve(true);
  let current: CustodyStats = { instanceCount: 0, digestRoot: '', queuedWork: 0, debtEntries: 0, uidConflicts: 0, forgottenSites: [] };
  const statsListeners = new Set<(stats: CustodyStats) => void>();
  const sendQueue: Array<{ to: string; message: CustodyMessage }> = [];
  let sendsInFlight = 0;
  /** Custody message streams open per peer (entries removed at 0: bounded by the peers sent to at once). */
  const sendsInFlightTo = new Map<string, number>();
  const ready = Promise.withResolvers<void>();
  let loadedOnce = false;
  /** The reducer's state as of its last step, read only (known sites and debt per site for /api/mesh). */
  let lastState: CustodyState | null = null;

  const send = actorSender(() => ref, () => stopped, log, 'custody');
  // Debt writes that failed while the store refused writes: the state reloads once, when it writes again,
  // instead of crashing at every failed write meanwhile (acknowledgements of a catch-up arrive in batches,
  // and each would crash custody again, past its restart budget).
  let reloadWhenStoreReopens = false;
  const stopWatchingStoreFaults = store.onWriteFault((event) => {
    if (event.type === 'faulted') input({ type: 'storeWritableChanged', writable: false, nowMs: clock.nowMs() });
    if (event.type !== 'reopened') return;
    if (!reloadWhenStoreReopens) {
      input({ type: 'storeWritableChanged', writable: true, nowMs: clock.nowMs() });
      return;
    }
    // The reload reads the store as it is now: writable.
    reloadWhenStoreReopens = false;
    send({ type: 'crash', reason: 'debt writes failed while the store refused writes' });
  });
  const input = (i: CustodyInput, viaStream = false): void => send({ type: 'input', input: i, viaStream });
  const inputs = (all: CustodyInput[]): void => {
    if (all.length > 0) send({ type: 'inputs', inputs: all });
  };
  /**
   * Copies stored through replicate-batch/1 and push/1, gathered until the event loop's next turn and
   * taken in one step ('replicasStored'): the commits of a received batch settle together (they share
   * synced LevelDB batches), and a step per copy worked out the heartbeat's figures (a SHA-256 of the
   * digest's 8 KiB) and the stats listeners' for every copy: ~5 % of a catching-up site's CPU (helper 84).
   */
  let storedViaStream: StoredCopy[] = [];
  const takeStoredViaStream = (): void => {
    const copies = storedViaStream;
    storedViaStream = [];
    input({ type: 'replicasStored', copies, nowMs: clock.nowMs() }, true);
  };
  const copyStoredViaStream = (copy: StoredCopy): void => {
    storedViaStream.push(copy);
    if (storedViaStream.length === 1) setImmediate(takeStoredViaStream);
  };
  const track = <T>(p: Promise<T>): void => {
    const t = p.then(
      () => undefined,
      () => undefined,
    );
    tasks.add(t);
    void t.finally(() => tasks.delete(t));
  };

  /**
   * The durable state; a table LevelDB cannot read (the held index, the debt, the known sites: a damaged
   * block fails the whole read, not one record) marks the catalog, which the next start rebuilds, and
   * fails with one line saying so: this start cannot go on without the rest of the table (hunt 169: the
   * debt's failed 6 restarts with LevelDB's bare error, and unmarked, every start after it the same way).
   */
  async function loadDurable(): Promise<CustodyState> {
    try {
      return await readDurable();
    } catch (error) {
      if (!isCatalogDamage(error)) throw error;
      store.reportCatalogDamage(`custody load: ${errorText(error)}`);
      throw catalogDamagedAtStartError(store.path, "custody's records (instances held, copies owed, known sites)", error);
    }
  }

  async function readDurable(): Promise<CustodyState> {
    // Hashing each batch into the digest while the next one is read (200,000 instances: ~0.8 s of each).
    const digest = createDigest();
    const damagedHeld: string[] = [];
    for await (const batch of heldInstanceBatches(store.db, (key) => damagedHeld.push(key))) for (const key of batch) digestAdd(digest, key.sopInstanceUid, key.sha256);
    if (damagedHeld.length > 0) store.reportCatalogDamage(`${damagedHeld.length} damaged held-index record(s), e.g. ${JSON.stringify(damagedHeld[0]!.slice(0, 80))}`);
    const damaged: string[] = [];
    const debt: DebtEntry[] = await store.listDebt((key) => damaged.push(key));
    if (damaged.length > 0) log.warn('damaged debt records skipped (repair finds the copies they owed)', { count: damaged.length, keys: damaged.slice(0, 10) });
    const damagedSites: string[] = [];
    const knownSites = await store.listKnownSites((key) => damagedSites.push(key));
    const forgottenSites = await store.listForgottenSites((key) => damagedSites.push(key));
    if (damagedSites.length > 0) log.warn('damaged known-site records skipped (those sites are learnt again when heard from)', { keys: damagedSites.slice(0, 10) });
    log.info('custody loaded', { instances: digest.size, debtEntries: debt.length, knownSites: knownSites.map((k) => k.siteName) });
    const state = initCustody(config, { digest, debt, knownSites, forgottenSites }, reconciledGeneration);
    warnIfWriteQuorumAboveSitesKnown(sitesKnown(state));
    return state;
  }

  // Every store's 0xA700 says so too; this line tells the operator before the first modality does.
  function warnIfWriteQuorumAboveSitesKnown(sitesKnownCount: number): void {
    if (!writeQuorumAboveSitesKnown(config, sitesKnownCount)) return;
    log.warn('--write-quorum is above the sites this peer knows of: every C-STORE is answered 0xA700 until that many sites are alive (start the other sites, or lower --write-quorum)', {
      writeQuorum: config.writeQuorum,
      sitesKnown: sitesKnownCount,
    });
  }

  function publishStats(state: CustodyState): void {
    lastState = state;
    const s = custodyStats(state);
    const next: CustodyStats = { ...s, debtEntries: state.debt.size, uidConflicts: state.uidConflicts.size };
    if (sameHeartbeatFigures(next, current) && next.debtEntries === current.debtEntries && next.uidConflicts === current.uidConflicts) {
      return;
    }
    current = next;
    for (const listener of statsListeners) {
      try {
        listener(next);
      } catch (error) {
        log.warn('stats listener threw', { error: String(error) });
      }
    }
  }

  /** `viaStreamFrom`: the senders of the copies this step took that were acknowledged on their streams. */
  function perform(effects: readonly CustodyEffect[], viaStreamFrom: ReadonlySet<string> | undefined): void {
    const puts: DebtEntry[] = [];
    const dels: Array<{ sopInstanceUid: string; siteName: string }> = [];
    const acks: Array<Extract<CustodyEffect, { type: 'ackStore' }>> = [];
    for (const e of effects) {
      switch (e.type) {
        case 'writeLocal': {
          const waiter = waiters.get(e.requestId);
          if (waiter === undefined) input({ type: 'localWriteDone', requestId: e.requestId, ok: false, nowMs: clock.nowMs() });
          else waiter.writeLocal();
          break;
        }
        case 'ackStore':
          acks.push(e);
          break;
        case 'persistDebt':
          puts.push(e.entry);
          break;
        case 'removeDebt':
          dels.push({ sopInstanceUid: e.sopInstanceUid, siteName: e.siteName });
          break;
        case 'persistKnownSites': {
          for (const f of e.forgotten) {
            // The step's removeDebt effects come before this one: how many copies the forgetting dropped.
            const debtEntriesDropped = dels.filter((d) => d.siteName === f.siteName).length;
            log.warn('site forgotten: no copies are owed to it any more (repair brings them if it returns)', { memberSite: f.siteName, forgottenAt: new Date(f.forgottenAtMs).toISOString(), debtEntriesDropped });
          }
          if (e.tombstonesAdopted.length > 0) log.info('tombstones taken in from other peers\' heartbeats (sites not known here), passed on in ours', { memberSites: e.tombstonesAdopted.map((f) => f.siteName) });
          for (const siteName of e.learnt) log.info('site known: copies are owed to it from now on, across restarts', { memberSite: siteName });
          if (e.forgotten.length > 0) warnIfWriteQuorumAboveSitesKnown(e.sitesKnown);
          // A lost write only means the site is learnt again from its next heartbeat after a restart.
          track(store.updateKnownSites(e.seen, [...e.forgotten, ...e.tombstonesAdopted], e.tombstonesDropped).catch((error: unknown) => log.warn('known sites not written', { error: errorText(error) })));
          break;
        }
        case 'replicate':
          track(replicate(e.toPeerId, e.toSiteName, e.sopInstanceUid));
          break;
        case 'fetch':
          track(pull(e.fromPeerId, e.sopInstanceUid));
          break;
        case 'send':
          if (viaStreamFrom !== undefined && viaStreamFrom.has(e.to) && e.message.type === 'replicaAck') break;
          enqueueSend(e.to, e.message);
          break;
        case 'uidConflict':
          log.error('a SOP Instance UID holds other bytes at another peer: a modality sent two different instances under one UID; each site keeps the one it stored first', {
            sopInstanceUid: e.sopInstanceUid,
            peer: e.peerId,
            localSha256: e.localSha256,
            peerSha256: e.peerSha256,
          });
          break;
        default: {
          const unreachable: never = e;
          throw new Error(`unhandled custody effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
    if (puts.length > 0 || dels.length > 0) {
      // The store writes debt in call order, so this step's write settles after every earlier one.
      debtChain = store.updateDebt(puts, dels).then(
        () => true,
        (error: unknown) => {
          log.error('debt write failed', { error: errorText(error) });
          // The reducer believes the debt is durable: reload it from disk by crashing the actor (now, or
          // once a store that refuses writes has reopened). Debt is a hint: repair finds what it misses.
          if (store.writeFault !== undefined) reloadWhenStoreReopens = true;
          else send({ type: 'crash', reason: 'debt write failed' });
          return false;
        },
      );
    }
    if (acks.length > 0) {
      const durable = debtChain;
      track(
        durable.then((ok) => {
          for (const a of acks) {
            const waiter = waiters.get(a.requestId);
            if (waiter === undefined) continue;
            if (!ok && a.status === StoreStatus.Success) {
              waiter.answer({ status: StoreStatus.OutOfResources, errorComment: 'replication debt could not be made durable' });
            } else if (a.status === StoreStatus.Success) {
              waiter.answer({ status: a.status });
            } else {
              waiter.answer({
                status: a.status,
                errorComment:
                  a.quorum === 0
                    ? 'custody busy: too many stores pending or replication debt at its bound'
                    : a.sitesUp !== undefined
                      ? `write quorum ${a.quorum} cannot be reached: ${a.sitesUp} site(s) up (held at ${a.sitesHolding.join(', ') || 'no site'})`
                      : `write quorum ${a.quorum} not reached in time (held at ${a.sitesHolding.join(', ') || 'no site'})`,
              });
            }
          }
        }),
      );
    }
  }

  /** Push results by `${sopInstanceUid} ${peerId}`, taken by the replicate effect of that copy. */
  const pushResults = new Map<string, Promise<PushOutcome>>();
  // The copies this node sends to each peer, pushes and batches, which custody messages to it wait behind.
  const bulkInFlight = new BulkInFlight();
  const pushStreams = new PushStreams(node, defaultPushLimits, bulkInFlight);
  const pushLimits = { ...defaultPushLimits, frameBytesMax: init.limits?.frameBytesMax ?? defaultPushLimits.frameBytesMax };
  const pushKey = (sopInstanceUid: string, peerId: string): string => `${sopInstanceUid} ${peerId}`;

  function startPushes(sopInstanceUid: string): ReplicaPush[] {
    if (stopped) return [];
    const nowMs = clock.nowMs();
    // A peer backed off for another version gets no push either: its copy waits as debt (see peerLacksProtocol).
    const targets = aliveReplicaTargets(members, init.siteName).filter(({ peerId }) => lastState === null || !replicationBackedOff(lastState, peerId, nowMs));
    return targets.map(({ peerId }) => {
      const push = new ReplicaPush(pushStreams, peerId, sopInstanceUid, pushLimits, shutdown.signal);
      while (pushResults.size >= tuning.pushesRememberedMax) pushResults.delete(pushResults.keys().next().value!);
      pushResults.set(pushKey(sopInstanceUid, peerId), push.result);
      return push;
    });
  }

  // A peer whose store refuses everything (a full disk) fails each copy: one line per 5 s per peer, not thousands.
  const transferFailures = createRepeatLimiter(log, 5_000);
  /**
   * `${peerId} ${protocol}` of peers that refused a protocol, logged once each until the peer restarts
   * (onViewChanged) or takes a copy again: a rolling upgrade may leave two versions side by side for hours.
   * The value tells a refusal's check whether it was forgotten meanwhile.
   */
  const protocolsRefused = new Map<string, object>();
  /** One per refusal not yet logged (bounded like protocolsRefused: a peer and protocol at a time). */
  const refusalChecks = new Set<TimerHandle>();
  const noteProtocolRefused = (peerId: string, protocol: string, error: unknown): void => {
    const key = `${peerId} ${protocol}`;
    if (stopped || protocolsRefused.has(key)) return;
    const refusal = {};
    protocolsRefused.set(key, refusal);
    // A peer that is stopping gives up its protocols before its connections: said only if it is still
    // connected a while later (hunt 115: every graceful stop of a site was reported as another version),
    // and the same process: a stopping peer restarted within that time is connected again, and was reported
    // (hunt 156's chaos run, seed 3624577); its restart, seen in the view, forgot the refusal (onViewChanged).
    const check = clock.setTimeout(() => {
      refusalChecks.delete(check);
      if (stopped || protocolsRefused.get(key) !== refusal) return;
      if (!node.connectedPeers().includes(peerId)) {
        protocolsRefused.delete(key);
        return;
      }
      log.warn('a peer does not speak this protocol (another pacs-mesh version?): copies to it wait as debt, tried again after a back-off up to a minute, and at once when it restarts', { peer: peerId, protocol, error: errorText(error) });
    }, protocolRefusalLogDelayMs);
    refusalChecks.add(check);
  };
  const forgetProtocolsRefusedBy = (peerId: string): void => {
    for (const key of protocolsRefused.keys()) if (key.startsWith(`${peerId} `)) protocolsRefused.delete(key);
  };
  async function replicate(toPeerId: string, toSiteName: string, sopInstanceUid: string): Promise<void> {
    const pushed = pushResults.get(pushKey(sopInstanceUid, toPeerId));
    if (pushed !== undefined) {
      pushResults.delete(pushKey(sopInstanceUid, toPeerId));
      try {
        const result = await pushed;
        input({ type: 'messageReceived', from: toPeerId, message: { type: 'replicaAck', sopInstanceUid, siteName: result.siteName }, nowMs: clock.nowMs() });
        return;
      } catch (error) {
        if (!stopped) transferFailures.info(`push ${toPeerId}`, 'push failed: replicating the stored copy', { sopInstanceUid, to: toPeerId, error: errorText(error) });
      }
    }
    await replications.enqueue(toPeerId, { sopInstanceUid, toSiteName });
  }

  const batchEntriesMax = init.limits?.batchEntriesMax ?? defaultReplicationLimits.batchEntriesMax;
  const custodyMessagesPerStreamMax = init.limits?.custodyMessagesPerStreamMax ?? defaultReplicationLimits.custodyMessagesPerStreamMax;
  const batchLimits = { flowingMax: tuning.batchesFlowingPerPeerMax, runningMax: tuning.batchesPerPeerMax };
  /** Copies of stored instances, per peer, over replicate-batch/1. */
  const replications = new PeerBatches<{ sopInstanceUid: string; toSiteName: string }>(batchEntriesMax, async (peerId, batch, phases) => {
    const outcomes: CustodyInput[] = [];
    const failed = (item: { sopInstanceUid: string; toSiteName: string }, error: unknown): void => {
      if (protocolUnsupported(error)) {
        // Logged once (noteProtocolRefused); the reducer backs off from this peer.
        outcomes.push({ type: 'replicationFailed', sopInstanceUid: item.sopInstanceUid, toSiteName: item.toSiteName, nowMs: clock.nowMs() });
        return;
      }
      const unreadable = error instanceof ReplicationError && error.code === 'ERR_REPLICATION_SOURCE_UNREADABLE';
      // The receiver's SHA-256 check refused the bytes we sent: our copy may be damaged (the scrub checks it).
      const refused = error instanceof ReplicationError && error.code === 'ERR_REPLICATION_MISMATCH';
      if (refused) store.reportSuspectCopy(item.sopInstanceUid, `refused by ${peerId}: ${error.message}`);
      if (!stopped) {
        const fields = { sopInstanceUid: item.sopInstanceUid, to: peerId, toSite: item.toSiteName, error: errorText(error) };
        if (unreadable || refused) log.error(`replication failed: the local copy is ${unreadable ? 'unreadable' : 'refused'}; retried after replicationRetryMs`, fields);
        else if (notDialableYet(error)) transferFailures.info(`replicate ${peerId}`, 'replication deferred: no address known for the peer yet', fields);
        else transferFailures.warn(`replicate ${peerId}`, 'replication failed', fields);
      }
      // Sending the same bytes again at once would fail the same way: back off until the scrub had a look.
      outcomes.push({ type: 'replicationFailed', sopInstanceUid: item.sopInstanceUid, toSiteName: item.toSiteName, retryLater: unreadable || refused, nowMs: clock.nowMs() });
    };
    const items: typeof batch = [];
    const entries: CatalogEntry[] = [];
    try {
      const held = await store.getEntries(batch.map((item) => item.sopInstanceUid));
      for (const [index, item] of batch.entries()) {
        const entry = held[index];
        if (entry === undefined) failed(item, new Error(`${item.sopInstanceUid} is not stored here`));
        else {
          items.push(item);
          entries.push(entry);
        }
      }
      if (entries.length > 0) {
        const results = await replicateBatchTo(node, peerId, store, entries, { limits: init.limits, signal: shutdown.signal, phases, bulkInFlight });
        // The batch's acknowledgements in one step: the slots they free are refilled together.
        const acks: Array<{ sopInstanceUid: string; siteName: string }> = [];
        for (const [index, result] of results.entries()) {
          const item = items[index]!;
          if ('error' in result) failed(item, result.error);
          else acks.push({ sopInstanceUid: item.sopInstanceUid, siteName: result.siteName });
        }
        if (acks.length > 0) outcomes.push({ type: 'replicasAcknowledged', fromPeerId: peerId, acks, nowMs: clock.nowMs() });
      }
    } catch (error) {
      if (protocolUnsupported(error)) {
        noteProtocolRefused(peerId, REPLICATE_BATCH_PROTOCOL, error);
        outcomes.unshift({ type: 'peerLacksProtocol', peerId, nowMs: clock.nowMs() });
      }
      for (const item of items) failed(item, error);
    }
    if (outcomes.some((o) => o.type === 'replicasAcknowledged')) forgetProtocolsRefusedBy(peerId);
    inputs(outcomes);
    // A copy offered again by the reducer while its batch still runs is not queued a second time.
  }, batchLimits, (item) => item.sopInstanceUid);

  // A peer that cannot serve pulls (its store faulted) fails several batches a second: one line per 5 s.
  const pullFailures = createRepeatLimiter(log, 5_000);
  /** Repair pulls, per peer, over fetch-batch/1. */
  const pulls = new PeerBatches<string>(batchEntriesMax, async (peerId, uids, phases) => {
    let outcomes: FetchBatchOutcome[];
    let batchFailed = false;
    try {
      // A pull cut (its deadline, a lost connection) keeps what arrived, and the next one from that peer resumes.
      outcomes = await fetchBatchFrom(node, peerId, store, uids, { limits: init.limits, signal: shutdown.signal, phases, ...(server !== undefined && { partials: server.partialCopies }) });
    } catch (error) {
      if (protocolUnsupported(error)) noteProtocolRefused(peerId, FETCH_BATCH_PROTOCOL, error);
      else if (!stopped) pullFailures.warn(peerId, 'repair pull failed', { instances: uids.length, from: peerId, error: errorText(error) });
      outcomes = uids.map((sopInstanceUid) => ({ sopInstanceUid, error }));
      batchFailed = true;
    }
    const results: CustodyInput[] = [];
    // The batch's stored copies in one step (see copyStoredViaStream), before its failures.
    const copies: StoredCopy[] = [];
    for (const outcome of outcomes) {
      if ('entry' in outcome) {
        copies.push({ sopInstanceUid: outcome.sopInstanceUid, sha256: outcome.entry.sha256, fromPeerId: peerId });
        continue;
      }
      if ('error' in outcome && !batchFailed && !stopped) pullFailures.warn(peerId, 'repair pull failed', { sopInstanceUid: outcome.sopInstanceUid, from: peerId, error: errorText(outcome.error) });
      results.push({ type: 'fetchFailed', sopInstanceUid: outcome.sopInstanceUid, nowMs: clock.nowMs() });
    }
    if (copies.length > 0) results.unshift({ type: 'replicasStored', copies, nowMs: clock.nowMs() });
    inputs(results);
    // A pull started again by the reducer (its retry time passed) while its batch still runs is not queued twice.
  }, batchLimits, (uid) => uid);

  function pull(fromPeerId: string, sopInstanceUid: string): Promise<void> {
    return pulls.enqueue(fromPeerId, sopInstanceUid);
  }

  function enqueueSend(to: string, message: CustodyMessage): void {
    if (sendQueue.length >= tuning.sendsQueuedMax) {
      log.warn('custody send queue full: message dropped', { to, type: message.type });
      return;
    }
    sendQueue.push({ to, message });
    pumpSends();
  }

  function pumpSends(): void {
    while (!stopped && sendsInFlight < tuning.sendsInFlightMax && sendQueue.length > 0) {
      // Everything queued for the first destination with a stream to spare goes in one stream (in order).
      const next = takeNextSend(sendQueue, sendsInFlightTo, tuning.sendsInFlightPerPeerMax, custodyMessagesPerStreamMax);
      if (next === undefined) return;
      const { to, messages } = next;
      sendsInFlight++;
      sendsInFlightTo.set(to, (sendsInFlightTo.get(to) ?? 0) + 1);
      track(
        sendCustodyMessages(node, to, messages, { limits: init.limits, signal: shutdown.signal, bulkInFlight })
          .catch((error: unknown) => {
            if (protocolUnsupported(error)) noteProtocolRefused(to, CUSTODY_PROTOCOL, error);
            else if (!stopped) log[notDialableYet(error) ? 'info' : 'warn']('custody messages not delivered', { to, messages: messages.length, error: errorText(error) });
          })
          .finally(() => {
            sendsInFlight--;
            const left = (sendsInFlightTo.get(to) ?? 1) - 1;
            if (left > 0) sendsInFlightTo.set(to, left);
            else sendsInFlightTo.delete(to);
            pumpSends();
          }),
      );
    }
  }

  function failWaiters(comment: string): void {
    for (const [requestId, waiter] of [...waiters]) {
      waiters.delete(requestId);
      waiter.answer({ status: StoreStatus.OutOfResources, errorComment: comment });
    }
  }

  async function reload(): Promise<CustodyState> {
    let state = await loadDurable();
    const initial: CustodyInput[] = [{ type: 'viewChanged', members, nowMs: clock.nowMs() }];
    if (store.writeFault !== undefined) initial.unshift({ type: 'storeWritableChanged', writable: false, nowMs: clock.nowMs() });
    for (const i of initial) {
      const step = stepCustody(state, i);
      state = step.state;
      perform(step.effects, undefined);
    }
    publishStats(state);
    return state;
  }

  const ref: Ref<CustodyMsg> = spawnActor<CustodyState | null, CustodyMsg>(init.parent, {
    name: 'custody',
    // null: load the durable state on the next message; nact's 'reset' brings the actor back to it.
    initialState: null,
    async handle(state, message) {
      if (message.type === 'crash') throw new CustodyError('ERR_CUSTODY_CRASH_TEST', `custody actor crashed on request: ${message.reason}`);
      const s = state ?? (await reload());
      if (message.type === 'load') {
        loadedOnce = true;
        ready.resolve();
        return s;
      }
      let next = s;
      const stepAndPerform = (i: CustodyInput, viaStream: boolean): void => {
        const step = stepCustody(next, i);
        perform(step.effects, viaStream ? streamSenders(i) : undefined);
        next = step.state;
      };
      switch (message.type) {
        case 'tick':
          stepAndPerform({ type: 'tick', nowMs: clock.nowMs() }, false);
          break;
        case 'input':
          stepAndPerform(message.input, message.viaStream === true);
          break;
        case 'inputs':
          for (const i of message.inputs) stepAndPerform(i, false);
          break;
        default: {
          const unreachable: never = message;
          throw new Error(`unhandled custody message ${JSON.stringify(unreachable)}`);
        }
      }
      publishStats(next);
      return next;
    },
    onCrash: async (error) => {
      // A catalog marked damaged before the first load reads the same at every restart: the start fails at once, its line this error.
      const damagedAtStart = !loadedOnce && (error as StoreError | undefined)?.code === 'ERR_STORE_CATALOG_DAMAGED';
      if (!damagedAtStart) log.error('custody actor crashed', { error: errorText(error) });
      // Volatile work is lost with the state: answer the stores still waiting (the modality retries).
      failWaiters('custody restarted while the store waited for its quorum');
      const decision = damagedAtStart ? 'stop' : init.onCrash ? await init.onCrash(error) : 'reset';
      if (decision === 'reset') log.info('custody actor reset: durable state reloads on its next message');
      // Before its first load nothing else would send it a message (ticks start once it has loaded).
      if (decision === 'reset' && !loadedOnce) send({ type: 'load' });
      // Stopped before it ever loaded: the start fails with the cause instead of waiting for ever.
      if (decision === 'stop' || decision === 'escalate') ready.reject(error);
      return decision;
    },
  });

  const gate: CustodyGate = {
    submitStore(sopInstanceUid, sha256, writeLocal): StoreTicket {
      let resolveWritten!: (ok: boolean) => void;
      let resolveAnswer!: (answer: StoreAnswer) => void;
      const written = new Promise<boolean>((resolve) => (resolveWritten = resolve));
      const answer = new Promise<StoreAnswer>((resolve) => (resolveAnswer = resolve));
      if (stopped) {
        resolveWritten(false);
        resolveAnswer({ status: StoreStatus.OutOfResources, errorComment: 'custody is stopped' });
        return { written, answer };
      }
      const requestId = randomUUID();
      let writeStarted = false;
      waiters.set(requestId, {
        sopInstanceUid,
        writeLocal: () => {
          writeStarted = true;
          track(
            writeLocal().then((ok) => {
              resolveWritten(ok);
              input({ type: 'localWriteDone', requestId, ok, nowMs: clock.nowMs() });
            }),
          );
        },
        answer: (a) => {
          waiters.delete(requestId);
          // A store answered before its write started (refused) never writes; a running write settles itself.
          if (!writeStarted) resolveWritten(false);
          resolveAnswer(a);
        },
      });
      input({ type: 'storeRequested', requestId, sopInstanceUid, sha256, nowMs: clock.nowMs() });
      return { written, answer };
    },
    startPushes,
  };

  const peersToAsk = (): string[] =>
    members
      .filter((m) => m.status === 'alive' && m.peerId !== init.peerId)
      .slice()
      .sort((a, b) => b.instanceCount - a.instanceCount)
      .map((m) => m.peerId);

  // Sites heard alive since this start: until each known one is (or the settle time is over), a retrieve
  // cannot tell "not here yet" from "nowhere": a restarted or emptied site answered Success with nothing.
  const startedAtMs = clock.nowMs();
  const sitesHeardSinceStart = new Set<string>();
  const suspectPeers = (): string[] => members.filter((m) => m.status === 'suspect' && m.peerId !== init.peerId).map((m) => m.peerId);
  const settlingAfterStart = (): boolean => clock.nowMs() - startedAtMs < tuning.viewSettleAfterStartMs;
  /** When a site was last heard for the first time since this start. */
  let siteFirstHeardAtMs = Number.NEGATIVE_INFINITY;
  /** Searches wait while this site holds searchLagInstancesMax or more instances fewer than the fullest alive one. */
  const lagRefusal = (): string | undefined => {
    const fullest = Math.max(0, ...members.filter((m) => m.status === 'alive' && m.peerId !== init.peerId).map((m) => m.instanceCount));
    return fullest - current.instanceCount >= tuning.searchLagInstancesMax ? `refilling: ${current.instanceCount} of ${fullest} instances here: retry` : undefined;
  };
  /** Peers caught up with since this start (CustodyState.reconciledPeers, kept here across a reset of the actor). */
  const reconciledSinceStart = new Set<string>();
  /** Which forgetting of reconciledPeers was asked last (noteSelfStalled): the reducer's set counts once of it. */
  let reconciledGeneration = 0;
  /** After a stall: each alive peer's incarnation and heartbeat sequence then, until every one is heard again. */
  let heardBeforeStall: Map<string, string> | undefined;
  const heartbeatMark = (m: MemberRecord): string => `${m.incarnation}:${m.sequence}`;
  /** Alive peers not heard since this process stood still: their figures (instances, digest) are from before it. */
  const staleSinceStall = (): string | undefined => {
    if (heardBeforeStall === undefined) return undefined;
    const before = heardBeforeStall;
    const unheard = members.filter((m) => m.status === 'alive' && m.peerId !== init.peerId && before.get(m.peerId) === heartbeatMark(m)).length;
    if (unheard === 0) {
      heardBeforeStall = undefined;
      return undefined;
    }
    return `catching up: this process stood still; ${unheard} peer(s) not heard since: retry`;
  };
  /**
   * After the first moments, searches wait until this peer has caught up with every alive peer holding
   * more instances (a refill: an empty or long-absent store), by anti-entropy rather than by counts, which
   * trail under a steady ingest elsewhere: a peer already caught up with since its start answers at once.
   */
  const refillRefusal = (): string | undefined => {
    if (lastState?.reconciledGeneration === reconciledGeneration) for (const peerId of lastState.reconciledPeers) reconciledSinceStart.add(peerId);
    const ahead = members.filter(
      (m) => m.status === 'alive' && m.peerId !== init.peerId && m.instanceCount > current.instanceCount && m.digestRoot !== current.digestRoot && !reconciledSinceStart.has(m.peerId),
    );
    if (ahead.length === 0) return undefined;
    return `refilling: ${current.instanceCount} of ${Math.max(...ahead.map((m) => m.instanceCount))} instances here: retry`;
  };
  /** Told there are other sites (--bootstrap, or a new identity), and none heard since the start. */
  const noSiteHeardYet = (): boolean => sitesHeardSinceStart.size === 0 && (init.expectsOtherSites ?? false);
  const knownSitesNotHeard = (): string[] =>
    [...(lastState?.knownSites.keys() ?? [])].filter((site) => site !== init.siteName && !sitesHeardSinceStart.has(site));
  const peersUnreachable = (): string[] => {
    const unreachable = suspectPeers();
    if (!settlingAfterStart()) return unreachable;
    const unheard = knownSitesNotHeard();
    unreachable.push(...unheard.map((site) => `site:${site}`));
    if (unheard.length === 0 && sitesHeardSinceStart.size === 0) unreachable.push('site:(none heard yet)');
    return unreachable;
  };

  const retrieve = createRemoteRetrieve({
    node,
    store,
    log,
    peers: peersToAsk,
    peersUnreachable,
    // A suspect peer is alive again, or dead, within membership's dead-after less its suspect-after (1.5 s).
    peersSettling: () => suspectPeers().length > 0,
    settleWaitMaxMs: tuning.suspectSettleWaitMs,
    clock,
    holdsNothingMore: (peerId) => holdsNothingMore(members, peerId, current.digestRoot),
    limits: init.limits,
    signal: shutdown.signal,
    partialCopies: () => server?.partialCopies,
    onFetched: (entry: CatalogEntry, fromPeerId: string) =>
      input({ type: 'replicaStored', sopInstanceUid: entry.sopInstanceUid, sha256: entry.sha256, fromPeerId, nowMs: clock.nowMs() }),
  });

  let server: ReplicationServer | undefined;
  let timer: TimerHandle | undefined;
  try {
    send({ type: 'load' });
    await ready.promise;
    server = await serveReplication({
      node,
      store,
      siteName: init.siteName,
      log,
      limits: init.limits,
      onReplicaStored: (entry, fromPeerId) => copyStoredViaStream({ sopInstanceUid: entry.sopInstanceUid, sha256: entry.sha256, fromPeerId }),
      onCustodyMessage: (from, message) => input({ type: 'messageReceived', from, message, nowMs: clock.nowMs() }),
      onCopiesOffered: (sopInstanceUids) => input({ type: 'copiesOffered', sopInstanceUids, nowMs: clock.nowMs() }),
    });
  } catch (error) {
    stopped = true;
    stopWatchingStoreFaults();
    stopActor(ref);
    throw error;
  }

  const scheduleTick = (): void => {
    timer = clock.setTimeout(() => {
      if (stopped) return;
      send({ type: 'tick' });
      scheduleTick();
    }, tuning.tickIntervalMs);
  };
  scheduleTick();

  let stopping: Promise<void> | undefined;
  return {
    ingest: createMeshIngest(store, gate),
    retrieve,
    searchRefusal() {
      const noSiteHeard = 'joining the mesh: no other site heard yet: retry';
      const stale = staleSinceStall();
      if (stale !== undefined) return stale;
      if (!settlingAfterStart()) {
        if (noSiteHeardYet() && clock.nowMs() - startedAtMs < tuning.joinWaitAfterStartMs) return noSiteHeard;
        // A site first heard lately that holds more: this site, alone until then (restored on an empty disk
        // while the others were down), is behind it until the leader's table says it refills (helper 62).
        return clock.nowMs() - siteFirstHeardAtMs < tuning.viewSettleAfterStartMs ? lagRefusal() : refillRefusal();
      }
      const unheard = knownSitesNotHeard().length;
      if (unheard > 0) return `joining the mesh: ${unheard} site(s) not heard yet: retry`;
      // Every known site heard, and none heard: none known, though bootstrap addresses said there are some.
      if (noSiteHeardYet()) return noSiteHeard;
      const heard = new Set(members.filter((m) => m.status === 'alive').map((m) => m.peerId));
      if (node.connectedPeers().some((peerId) => !heard.has(peerId))) return 'joining the mesh: a connected peer not heard yet: retry';
      return lagRefusal();
    },
    noteSelfStalled() {
      reconciledGeneration += 1;
      reconciledSinceStart.clear();
      heardBeforeStall = new Map(members.filter((m) => m.status === 'alive' && m.peerId !== init.peerId).map((m) => [m.peerId, heartbeatMark(m)]));
      input({ type: 'reconciliationsForgotten', generation: reconciledGeneration });
    },
    onViewChanged(view) {
      // A peer restarted (maybe upgraded) or gone: what it refused is logged again if it still does.
      for (const key of protocolsRefused.keys()) {
        const [peerId] = key.split(' ');
        if (!view.some((m) => m.peerId === peerId && members.some((old) => old.peerId === peerId && old.incarnation === m.incarnation))) protocolsRefused.delete(key);
      }
      members = view;
      for (const m of view) {
        if (m.status !== 'alive' || m.peerId === init.peerId || sitesHeardSinceStart.has(m.siteName)) continue;
        sitesHeardSinceStart.add(m.siteName);
        siteFirstHeardAtMs = clock.nowMs();
      }
      input({ type: 'viewChanged', members: view, nowMs: clock.nowMs() });
    },
    stats: () => ({ ...current }),
    // Sites owed copies but not known (debt written before known sites were) are listed too.
    // Before the reducer's first step, the most a store could ask for.
    writeQuorumNow: () => (lastState ? writeQuorumNow(lastState, clock.nowMs()) : effectiveWriteQuorum(config, Number.POSITIVE_INFINITY)),
    knownSites: () => {
      const known = lastState?.knownSites ?? new Map<string, number>();
      const debtBySite = lastState?.debtBySite ?? new Map<string, ReadonlyMap<string, DebtEntry>>();
      return [...new Set([...known.keys(), ...debtBySite.keys()])].sort().map((site) => ({ site, debtEntries: debtBySite.get(site)?.size ?? 0 }));
    },
    forgetSite: (siteName) => {
      if (members.some((m) => m.siteName === siteName && m.status === 'alive')) return { outcome: 'alive' };
      const owed = lastState?.debtBySite.get(siteName);
      if (siteName === init.siteName || (!lastState?.knownSites.has(siteName) && owed === undefined)) return { outcome: 'unknown' };
      const debtEntriesDropped = owed?.size ?? 0;
      log.warn('site forgotten by the operator', { memberSite: siteName, debtEntriesDropped });
      input({ type: 'forgetSiteRequested', siteName, nowMs: clock.nowMs() });
      return { outcome: 'forgotten', debtEntriesDropped };
    },
    onStatsChanged(listener) {
      statsListeners.add(listener);
      return () => statsListeners.delete(listener);
    },
    crashForTest(reason = 'test') {
      send({ type: 'crash', reason });
    },
    cutTransfers: async (deadline) => server?.cut(deadline),
    stop: (deadline) =>
      (stopping ??= (async () => {
        stopped = true;
        stopWatchingStoreFaults();
        clock.clearTimeout(timer);
        for (const check of refusalChecks) clock.clearTimeout(check);
        await server?.stop(deadline);
        shutdown.abort(new CustodyError('ERR_CUSTODY_STOPPED', 'custody stopped'));
        pushStreams.stop();
        bulkInFlight.stop();
        stopActor(ref);
        failWaiters('custody stopped');
        sendQueue.length = 0;
        if ((await untilAborted(Promise.allSettled([...tasks]), deadline)) === undefined) log.warn('custody work still running at the stop deadline is not waited for', { tasks: tasks.size });
        // Debt already handed to the store must reach the disk before the store closes.
        await debtChain;
      })()),
  };
}
