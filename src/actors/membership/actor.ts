/**
 * The membership actor: the nact wiring around the pure reducer in logic.ts.
 *
 * Inputs become messages (timers are messages too): `tick` every tickIntervalMs, heartbeats from the
 * gossip topic, `peerDisconnected` from the mesh node, coalesced local stats. Effects are performed in
 * order: heartbeats are published (envelope, size-limited), the view goes to listeners.
 *
 * Timings (why not the 1 s / 3 s / 6 s of docs/mesh-algorithms.md): a killed peer is seen at once through
 * `peer:disconnect` (6-13 ms), but a hung peer is only seen by silence. The balancer must fail over in
 * ~2 s, so the defaults here are heartbeat 500 ms, suspect 1500 ms (three missed heartbeats: one lost
 * gossip message does not flap the view; a suspect is already out of election and routing) and dead 3000 ms.
 * A peer dead by silence while still connected is dropped (its streams fail at once); the node's own
 * ping monitor waits 5-10 s, since a ping 2 s late on a loaded machine cost every stream of a connection.
 *
 * Incarnation: kept in `<dataDir>/membership-incarnation`, bumped (fsync + rename) on every start AND on
 * every restart of this actor after a crash (a restarted actor starts its heartbeat sequence at 1 again,
 * which peers would ignore as old news within the same incarnation); at least the date in ms, so a lost or
 * damaged file does not send it back to 1 (see bumpIncarnation).
 *
 * Bounds: one tick in flight at a time, local stats coalesced to the latest, and at most
 * `mailboxMax` heartbeats queued (more are dropped: the next heartbeat carries the same news).
 */
import { readFile } from 'node:fs/promises';
import { writeFileDurably } from '../../durable-file.ts';
import { join } from 'node:path';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import type { MeshNode, GossipMessage } from '../../net/node.ts';
import { createTicker, onTickingActorCrash } from '../runtime/ticker.ts';
import type { Clock } from '../runtime/clock.ts';
import { createRepeatLimiter, type Logger } from '../runtime/logger.ts';
import { actorSender, type CrashDecision, type Ref, spawnActor, stopActor } from '../runtime/nact.ts';
import { initMembership, liveView, siteConflictConfirmAfterDeadTimes, stepMembership, viewMembers, type MembershipState } from './logic.ts';
import { heartbeatForgottenSitesMax, membershipTopic, type ForgottenSite, type Heartbeat, type MemberRecord, type MembershipEffect, type PeerAddresses, type PeerLoad, type SiteConflict } from './messages.ts';

export const membershipTimings = {
  heartbeatIntervalMs: 500,
  suspectAfterMs: 1500,
  deadAfterMs: 3000,
  tickIntervalMs: 100,
} as const;

/** Largest heartbeat envelope sent or accepted (a heartbeat is ~300 bytes; 16 tombstones of 64-character site names add ~1.5 KiB). */
export const HEARTBEAT_MAX_BYTES = 8 * 1024;
const STRING_MAX_CHARS = 256;
/** A package version ("0.1.0", "1.2.3-rc.1+build.5") is far shorter. */
const buildMaxChars = 64;
const INCARNATION_FILE = 'membership-incarnation';

export type MembershipErrorCode = 'ERR_MEMBERSHIP_CRASH_TEST' | 'ERR_MEMBERSHIP_STOPPED';

export class MembershipError extends Error {
  static readonly NAME = 'MembershipError';
  override readonly name = MembershipError.NAME;
  readonly code: MembershipErrorCode;
  constructor(code: MembershipErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export interface MembershipServiceInit {
  node: MeshNode;
  peerId: string;
  siteName: string;
  /** The operator runs several peers under this site name on purpose (`--site-peers several`). */
  siteShared?: boolean;
  /** This build's package version, for the others' views (Heartbeat.build). */
  build?: string;
  /**
   * Another live peer with precedence claims this site name at another DICOM address (a copied --site):
   * the peer must stop. Called once, after the error is logged.
   */
  onSiteNameTaken?: (taken: SiteNameTaken) => void;
  /** This process stood still long enough for the others to take it for suspect or dead (see custody's noteSelfStalled). */
  onSelfStalled?: (stall: { stalledMs: number; seenAs: 'suspect' | 'dead' }) => void;
  priority: number;
  /** Holds the incarnation. */
  dataDir: string;
  addresses: PeerAddresses;
  clock: Clock;
  log: Logger;
  parent: Ref<any>;
  heartbeatIntervalMs?: number;
  suspectAfterMs?: number;
  deadAfterMs?: number;
  tickIntervalMs?: number;
  /**
   * What the first heartbeats say about this peer. Without it they say no instances, no digest and no
   * free disk until updateLocalStats: a site that others heard so (a full site looking empty and out of
   * disk) was routed around and asked for repair exchanges it did not need.
   */
  localStats?: LocalStats;
  /** Heartbeats queued for the actor beyond this are dropped. Default 256. */
  mailboxMax?: number;
  membersMax?: number;
  /** Actor name under `parent`. Default 'membership'. */
  name?: string;
  /** Supervision: what to do when the actor throws (the site supervisor passes its policy). Default: reset. */
  onCrash?: (error: unknown) => CrashDecision | Promise<CrashDecision>;
}

/** Who holds this peer's site name, and what to tell the operator. */
export interface SiteNameTaken {
  readonly siteName: string;
  readonly byPeerId: string;
  readonly byDicom: string;
  /** One line naming the site, the other peer, its address and the way out. */
  readonly message: string;
}

/** The operator's way out of a site-name conflict, said by every peer that sees one. */
const siteConflictAdvice = 'give each site its own --site (or, for several peers of one site on purpose, --site-peers several at each of them)';

/** One line for the peer that must stop: the site, who holds it, where, and the way out. */
export function siteNameTakenMessage(siteName: string, byPeerId: string, byDicom: string): string {
  return `site name "${siteName}" is already held by peer ${byPeerId} at DICOM address ${byDicom}, which started first: two live peers under one --site would count as one site for replica counts, so this peer stops; ${siteConflictAdvice}`;
}

/** This peer's figures that its heartbeats carry. */
export interface LocalStats {
  load: PeerLoad;
  instanceCount: number;
  digestRoot: string;
  /** Custody's tombstones (see Heartbeat.forgottenSites); absent or empty when none. */
  forgottenSites?: readonly ForgottenSite[];
}

export interface MembershipService {
  /** Every known member, self included, sorted by peerId. */
  members(): MemberRecord[];
  /** Alive members, self included, sorted by peerId. */
  liveMembers(): MemberRecord[];
  onViewChanged(listener: (members: readonly MemberRecord[]) => void): void;
  updateLocalStats(stats: LocalStats): void;
  /** Live peers claiming one site name at several DICOM addresses now (see SiteConflict). */
  siteConflicts(): readonly SiteConflict[];
  /** How long a peer must have been alive without a break before its claim on a site name counts against another's. */
  readonly siteClaimConfirmMs: number;
  /** Whether this peer may be elected (the balancer says no while it cannot record a vote). */
  setElectable(electable: boolean): void;
  /** The current incarnation (grows on every start and every actor restart). */
  readonly incarnation: number;
  /** Test hook: the actor throws while handling its next message (supervision then applies). */
  crashForTest(reason?: string): void;
  stop(): Promise<void>;
}

type MembershipMsg =
  | { readonly type: 'tick' }
  | { readonly type: 'heartbeat'; readonly heartbeat: Heartbeat }
  | { readonly type: 'peerDisconnected'; readonly peerId: string }
  | { readonly type: 'peerActive'; readonly peerId: string }
  | { readonly type: 'localStats' }
  | { readonly type: 'electability'; readonly electable: boolean }
  | { readonly type: 'peerSubscribed' }
  | { readonly type: 'crash'; readonly reason: string };

/**
 * Reads, bumps and durably writes the incarnation; returns the new value: the previous one + 1, or the
 * date in ms when that is larger. Peers ignore heartbeats of an incarnation not above the one they hold,
 * so a peer whose file was lost or damaged must not start again from 1: the date is above any earlier
 * start's (unless the wall clock went back by more than the time down), and the counter covers that case
 * while the file is intact. A damaged file is reported through `warn` and replaced; a file that cannot be
 * written (a full disk) is reported too, and the value is used all the same: the date alone keeps it
 * above every earlier one.
 */
export async function bumpIncarnation(
  dataDir: string,
  dateMs: number = Date.now(),
  warn: (reason: string) => void = () => undefined,
): Promise<number> {
  const path = join(dataDir, INCARNATION_FILE);
  let previous = 0;
  try {
    const text = (await readFile(path, 'utf8')).trim();
    const value = Number(text);
    if (text === '' || !Number.isSafeInteger(value) || value < 0) warn(`${path} holds "${text.slice(0, 40)}", not a counter: starting from the date`);
    else previous = value;
  } catch (err) {
    // Unreadable (a directory in its place, no permission): the date is a valid incarnation too.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn(`cannot read ${path} (${(err as Error).message}): starting from the date`);
  }
  const next = Math.max(previous + 1, Math.floor(dateMs));
  await writeFileDurably(path, `${next}\n`).catch((error: unknown) => warn(`cannot write ${path} (${(error as Error).message}): incarnation ${next} kept in memory only`));
  return next;
}

/** Validates a decoded heartbeat field by field; null for anything malformed. */
export function parseHeartbeat(value: unknown): Heartbeat | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  const str = (x: unknown): x is string => typeof x === 'string' && x.length <= STRING_MAX_CHARS;
  const count = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
  if (v.type !== 'heartbeat' || !str(v.peerId) || v.peerId.length === 0 || !str(v.siteName)) return null;
  if (!count(v.incarnation) || !count(v.sequence) || !finite(v.priority) || !count(v.instanceCount) || !str(v.digestRoot)) return null;
  // Absent in heartbeats of peers from before the field: they run whenever they rank best, as before.
  if (v.electable !== undefined && typeof v.electable !== 'boolean') return null;
  const addresses = v.addresses as Record<string, unknown> | null;
  if (typeof addresses !== 'object' || addresses === null || !str(addresses.dicom) || !str(addresses.http) || !str(addresses.aeTitle)) return null;
  if (addresses.accessDigest !== undefined && !str(addresses.accessDigest)) return null;
  const load = v.load as Record<string, unknown> | null;
  if (typeof load !== 'object' || load === null) return null;
  if (!count(load.activeAssociations) || !count(load.queuedCustodyWork) || !count(load.freeDiskBytes)) return null;
  if (load.freeDiskUnknown !== undefined && typeof load.freeDiskUnknown !== 'boolean') return null;
  // Absent in heartbeats of peers from before the field.
  const forgotten = v.forgottenSites ?? [];
  if (!Array.isArray(forgotten) || forgotten.length > heartbeatForgottenSitesMax) return null;
  const forgottenSites: ForgottenSite[] = [];
  for (const f of forgotten as unknown[]) {
    const site = f as Record<string, unknown> | null;
    if (typeof site !== 'object' || site === null || !str(site.siteName) || site.siteName.length === 0 || !finite(site.forgottenAtMs)) return null;
    // Absent in tombstones of peers from before the field, and in forgettings by silence.
    if (site.byOperator !== undefined && typeof site.byOperator !== 'boolean') return null;
    forgottenSites.push({ siteName: site.siteName, forgottenAtMs: site.forgottenAtMs, ...(site.byOperator === true ? { byOperator: true as const } : {}) });
  }
  // Absent in heartbeats of peers from before the field (and without tombstones).
  if (v.sentAtMs !== undefined && !finite(v.sentAtMs)) return null;
  // Absent in heartbeats of peers from before the field: they claim their site alone.
  if (v.siteShared !== undefined && typeof v.siteShared !== 'boolean') return null;
  return {
    type: 'heartbeat',
    peerId: v.peerId,
    siteName: v.siteName,
    incarnation: v.incarnation,
    sequence: v.sequence,
    priority: v.priority,
    electable: v.electable ?? true,
    addresses: {
      dicom: addresses.dicom,
      http: addresses.http,
      aeTitle: addresses.aeTitle,
      ...(addresses.accessDigest !== undefined ? { accessDigest: addresses.accessDigest } : {}),
    },
    load: {
      activeAssociations: load.activeAssociations,
      queuedCustodyWork: load.queuedCustodyWork,
      freeDiskBytes: load.freeDiskBytes,
      ...(load.freeDiskUnknown === true ? { freeDiskUnknown: true } : {}),
    },
    instanceCount: v.instanceCount,
    digestRoot: v.digestRoot,
    ...(forgottenSites.length > 0 ? { forgottenSites } : {}),
    ...(forgottenSites.length > 0 && v.sentAtMs !== undefined ? { sentAtMs: v.sentAtMs as number } : {}),
    ...(v.siteShared === true ? { siteShared: true } : {}),
    // Shown to operators, never decides anything: one that is not a short string is left out, the heartbeat kept.
    ...(str(v.build) && v.build.length <= buildMaxChars ? { build: v.build } : {}),
  };
}

export async function startMembership(init: MembershipServiceInit): Promise<MembershipService> {
  const { node, clock, log } = init;
  const timings = {
    heartbeatIntervalMs: init.heartbeatIntervalMs ?? membershipTimings.heartbeatIntervalMs,
    suspectAfterMs: init.suspectAfterMs ?? membershipTimings.suspectAfterMs,
    deadAfterMs: init.deadAfterMs ?? membershipTimings.deadAfterMs,
  };
  const tickIntervalMs = init.tickIntervalMs ?? membershipTimings.tickIntervalMs;
  const mailboxMax = init.mailboxMax ?? 256;
  const listeners = new Set<(members: readonly MemberRecord[]) => void>();

  let current: MembershipState | null = null;
  // What the reducer last reported; an actor restart starts from none, as its new state does.
  let siteConflicts: readonly SiteConflict[] = [];
  let incarnation = 0;
  let stopped = false;
  let queuedHeartbeats = 0;
  /** Peers with a peerActive message in the mailbox: one each at a time. */
  const activityQueued = new Set<string>();
  let statsPending = false;
  let latestStats: LocalStats | null = init.localStats ?? null;
  // Survives an actor restart, as the stats do: only the balancer changes it.
  let electable = true;
  let droppedHeartbeats = 0;
  /** A peer that sends bad heartbeats sends one every interval: one line per sender each 10 s. */
  const malformed = createRepeatLimiter(log, 10_000);
  let publishFailures = 0;
  const ready = Promise.withResolvers<void>();

  const send = actorSender(() => ref, () => stopped, log, 'membership');

  const ticker = createTicker(clock, () => send({ type: 'tick' }), () => stopped);

  const initialize = async (): Promise<MembershipState> => {
    incarnation = await bumpIncarnation(init.dataDir, clock.dateMs(), (reason) => log.warn('membership incarnation file', { reason }));
    siteConflicts = [];
    let state = initMembership({
      peerId: init.peerId,
      siteName: init.siteName,
      incarnation,
      priority: init.priority,
      addresses: init.addresses,
      ...timings,
      membersMax: init.membersMax ?? 256,
      ...(init.siteShared === true ? { siteShared: true } : {}),
      ...(init.build !== undefined ? { build: init.build } : {}),
    });
    if (latestStats) state = stepMembership(state, { type: 'localStatsChanged', ...latestStats }).state;
    if (!electable) state = stepMembership(state, { type: 'electabilityChanged', electable }).state;
    log.info('membership started', { incarnation, ...timings });
    ready.resolve();
    return state;
  };

  const perform = (effects: readonly MembershipEffect[]): void => {
    for (const effect of effects) {
      switch (effect.type) {
        case 'publish': {
          const bytes = encodeEnvelope(effect.message, { maxBytes: HEARTBEAT_MAX_BYTES });
          node.publish(membershipTopic, bytes).catch((err: Error) => {
            // Early publishes (before subscriptions are exchanged) fail; the next heartbeat repeats the news.
            if (publishFailures++ % 100 === 0) log.warn('heartbeat publish failed', { error: err.message, failures: publishFailures });
          });
          break;
        }
        case 'memberStatusChanged':
          log.info('member status changed', { peer: effect.peerId, memberSite: effect.siteName, incarnation: effect.incarnation, from: effect.from, to: effect.to });
          break;
        case 'dropConnections':
          node.dropPeer(effect.peerId, `peer ${effect.peerId} silent for ${timings.deadAfterMs / 1000} s`);
          break;
        case 'memberSiteRenamed':
          log.warn('a peer now serves another site: copies owed to the old site wait until it returns (POST /api/forget-site?site=<old> if it is gone)', {
            peer: effect.peerId,
            fromSite: effect.fromSite,
            toSite: effect.toSite,
          });
          break;
        case 'siteConflictsChanged':
          for (const conflict of effect.conflicts) {
            log.error(`live peers claim site "${conflict.siteName}" at several DICOM addresses: copies are counted by site, so they count as one site; ${siteConflictAdvice}`, {
              memberSite: conflict.siteName,
              peers: conflict.peers.map((p) => `${p.peerId}@${p.dicom}`),
            });
          }
          if (effect.conflicts.length === 0) log.info('no site name is claimed at several DICOM addresses any more');
          siteConflicts = effect.conflicts;
          break;
        case 'siteNameTaken': {
          const message = siteNameTakenMessage(effect.siteName, effect.byPeerId, effect.byDicom);
          log.error(message, { memberSite: effect.siteName, byPeer: effect.byPeerId, byDicom: effect.byDicom });
          init.onSiteNameTaken?.({ siteName: effect.siteName, byPeerId: effect.byPeerId, byDicom: effect.byDicom, message });
          break;
        }
        case 'selfStalled':
          log.warn(`this process stood still for ${(effect.stalledMs / 1000).toFixed(1)} s (stopped, a frozen VM or an overloaded host): the other peers heard nothing from it and took it for ${effect.seenAs} meanwhile`, {
            stalledMs: effect.stalledMs,
            seenAs: effect.seenAs,
          });
          init.onSelfStalled?.({ stalledMs: effect.stalledMs, seenAs: effect.seenAs });
          break;
        case 'viewChanged':
          for (const listener of listeners) {
            try {
              listener(effect.members);
            } catch (err) {
              log.error('view listener threw', { error: (err as Error).message });
            }
          }
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(`unhandled membership effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
  };

  const handle = async (state: MembershipState | null, message: MembershipMsg): Promise<MembershipState | null> => {
    if (message.type === 'heartbeat') queuedHeartbeats--;
    if (message.type === 'peerActive') activityQueued.delete(message.peerId);
    if (message.type === 'tick') ticker.handled();
    if (message.type === 'localStats') statsPending = false;
    if (stopped) return state;
    if (message.type === 'crash') {
      throw new MembershipError('ERR_MEMBERSHIP_CRASH_TEST', `membership actor crashed on request: ${message.reason}`);
    }
    let s = state ?? (await initialize());
    const nowMs = clock.nowMs();
    let step;
    switch (message.type) {
      case 'tick':
        step = stepMembership(s, { type: 'tick', nowMs });
        break;
      case 'heartbeat':
        step = stepMembership(s, { type: 'heartbeatReceived', heartbeat: message.heartbeat, nowMs });
        break;
      case 'peerDisconnected':
        step = stepMembership(s, { type: 'peerDisconnected', peerId: message.peerId, nowMs });
        break;
      case 'peerActive':
        step = stepMembership(s, { type: 'peerActive', peerId: message.peerId, nowMs });
        break;
      case 'localStats':
        step = latestStats ? stepMembership(s, { type: 'localStatsChanged', ...latestStats }) : { state: s, effects: [] };
        break;
      case 'electability':
        step = stepMembership(s, { type: 'electabilityChanged', electable: message.electable });
        break;
      case 'peerSubscribed':
        subscribedPending = false;
        step = stepMembership(s, { type: 'peerSubscribed' });
        break;
      default: {
        const unreachable: never = message;
        throw new Error(`unhandled membership message ${JSON.stringify(unreachable)}`);
      }
    }
    s = step.state;
    current = s;
    perform(step.effects);
    if (message.type === 'tick') ticker.schedule(tickIntervalMs);
    return s;
  };

  const ref: Ref<MembershipMsg> = spawnActor<MembershipState | null, MembershipMsg>(init.parent, {
    name: init.name ?? 'membership',
    // null: (re)initialize on the next message; nact's 'reset' brings the actor back to this.
    initialState: null,
    handle,
    onCrash: async (error) => {
      const decision = await onTickingActorCrash(ticker, log, 'membership', error, init.onCrash);
      // Stopped before it ever started: the start fails with the cause instead of waiting for ever.
      if (decision === 'stop' || decision === 'escalate') ready.reject(error);
      return decision;
    },
  });

  const unsubscribe = node.subscribe(membershipTopic, (m: GossipMessage) => {
    let heartbeat: Heartbeat | null;
    try {
      heartbeat = parseHeartbeat(decodeEnvelope<Heartbeat>(m.data, { maxBytes: HEARTBEAT_MAX_BYTES }));
    } catch (err) {
      malformed.warn(`${m.from}`, 'dropped malformed heartbeat', { from: m.from, error: (err as Error).message });
      return;
    }
    if (heartbeat === null) {
      malformed.warn(`${m.from}`, 'dropped malformed heartbeat', { from: m.from, error: 'invalid fields' });
      return;
    }
    // Gossip is signed: a peer may only speak for itself.
    if (m.from !== heartbeat.peerId) {
      malformed.warn(`forged ${m.from}`, 'dropped heartbeat signed by another peer', { from: m.from, claims: heartbeat.peerId });
      return;
    }
    if (queuedHeartbeats >= mailboxMax) {
      if (droppedHeartbeats++ % 100 === 0) log.warn('membership mailbox full, heartbeat dropped', { dropped: droppedHeartbeats });
      return;
    }
    queuedHeartbeats++;
    send({ type: 'heartbeat', heartbeat });
  });
  const offDisconnect = node.onPeerDisconnected((peerId) => send({ type: 'peerDisconnected', peerId }));
  // Throttled by the node (a few per second per peer), and one message per peer queued at a time.
  const offActivity = node.onPeerActivity((peerId) => {
    if (activityQueued.has(peerId)) return;
    activityQueued.add(peerId);
    send({ type: 'peerActive', peerId });
  });
  // Several peers subscribing in one tick need one heartbeat: one message queued at a time.
  let subscribedPending = false;
  const offSubscribed = node.onTopicJoined(membershipTopic, () => {
    if (subscribedPending) return;
    subscribedPending = true;
    send({ type: 'peerSubscribed' });
  });

  ticker.postNow();
  await ready.promise;

  return {
    members: () => (current ? viewMembers(current, clock.nowMs()) : []),
    liveMembers: () => (current ? liveView(current, clock.nowMs()) : []),
    siteConflicts: () => siteConflicts,
    siteClaimConfirmMs: siteConflictConfirmAfterDeadTimes * timings.deadAfterMs,
    onViewChanged(listener) {
      listeners.add(listener);
    },
    updateLocalStats(stats) {
      latestStats = stats;
      if (statsPending) return;
      statsPending = true;
      send({ type: 'localStats' });
    },
    setElectable(value) {
      // Sent on changes only: the mailbox sees one message per failure-to-recovery turn at most.
      if (value === electable) return;
      electable = value;
      send({ type: 'electability', electable: value });
    },
    get incarnation() {
      return incarnation;
    },
    crashForTest(reason = 'test') {
      send({ type: 'crash', reason });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      ticker.stop();
      unsubscribe();
      offDisconnect();
      offActivity();
      offSubscribed();
      listeners.clear();
      try {
        stopActor(ref);
      } catch {
        // already stopped by its supervisor
      }
    },
  };
}
