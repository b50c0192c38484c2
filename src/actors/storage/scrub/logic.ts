/**
 * The scrub reducer: pure, driven by ticks (with the clock's time and whether associations are active)
 * and by the results of the reads it asks for. One read-back at a time, paced by a byte budget that
 * refills at the configured rate (less while the archive is busy), one catalog page at a time.
 */
import type { CatalogEntry } from '../catalog-types.ts';
import type { RepairOutcome, ScrubConfig, ScrubEffect, ScrubInput, ScrubStats } from './messages.ts';

export const defaultScrubConfig: ScrubConfig = {
  bytesPerSecond: 16_000_000,
  busyRateShare: 1 / 8,
  pageEntriesMax: 64,
  startDelayMs: 60_000,
  passPauseMs: 60_000,
  repairsInFlightMax: 4,
  suspectsQueuedMax: 64,
  unrepairableQuietMs: 600_000,
};

/**
 * A new instance stored this recently keeps the archive busy: copies pushed or sent by other sites, repairs
 * and STOW-RS arrive with no association here, and a site receiving a mesh ingest read back 16 MB/s of
 * older copies beside it (hunt 141).
 */
export const storedRecentlyMs = 2_000;

/** Whether the scrub reads at its busy share: an association is active, or an instance was stored lately. */
export function archiveBusy(activeAssociations: number, lastStoredAtMs: number | undefined, nowMs: number): boolean {
  return activeAssociations > 0 || (lastStoredAtMs !== undefined && nowMs - lastStoredAtMs < storedRecentlyMs);
}

/** Copies remembered as unrepairable at most (the oldest are forgotten first). */
const unrepairableRememberedMax = 1024;

export interface ScrubState {
  readonly config: ScrubConfig;
  /** waiting: until nextAtMs; listing: a page read is out; verifying: working through `page`. */
  phase: 'waiting' | 'listing' | 'verifying';
  nextAtMs: number;
  /** A pass is under way (a failed page read resumes it from the cursor instead of starting over). */
  passRunning: boolean;
  cursor: string;
  page: CatalogEntry[];
  pageIsLast: boolean;
  /** The entry being read back (its repair needs it). */
  verifying: CatalogEntry | null;
  /** Whether that one was a suspect (not the pass's). */
  verifyingSuspect: boolean;
  /** Suspect copies to read back first, by UID, in arrival order. */
  suspects: Map<string, CatalogEntry>;
  /** UID -> until when a copy no site could repair is not taken as a suspect again. */
  unrepairable: Map<string, number>;
  /** Bytes that may be read now; may go below zero by one instance (a large one is not starved). */
  budgetBytes: number;
  budgetAtMs: number;
  busy: boolean;
  repairing: Set<string>;
  /** The counters of ScrubStats (its cursor is the state's). */
  stats: { -readonly [K in Exclude<keyof ScrubStats, 'cursor' | 'busy'>]: ScrubStats[K] };
}

export interface ScrubStep {
  state: ScrubState;
  effects: ScrubEffect[];
}

/** `resumeAfterUid`: the cursor saved by a previous run ('' = none): its pass goes on from there. */
export function initScrub(config: ScrubConfig, nowMs: number, resumeAfterUid = ''): ScrubState {
  return {
    config,
    phase: 'waiting',
    nextAtMs: nowMs + config.startDelayMs,
    passRunning: resumeAfterUid !== '',
    cursor: resumeAfterUid,
    page: [],
    pageIsLast: false,
    verifying: null,
    verifyingSuspect: false,
    suspects: new Map(),
    unrepairable: new Map(),
    budgetBytes: 0,
    budgetAtMs: nowMs,
    busy: false,
    repairing: new Set(),
    stats: {
      passesCompleted: 0,
      instancesVerified: 0,
      suspectsVerified: 0,
      bytesVerified: 0,
      badCopiesFound: 0,
      copiesRepaired: 0,
      copiesUnrepaired: 0,
      lastPassCompletedAtMs: null,
    },
  };
}

export function scrubStats(state: ScrubState): ScrubStats {
  return { ...state.stats, cursor: state.cursor, busy: state.busy };
}

function rateBytesPerSecond(state: ScrubState): number {
  return state.config.bytesPerSecond * (state.busy ? state.config.busyRateShare : 1);
}

/** Refills the budget for the time since the last refill, up to one second's worth. */
function refill(state: ScrubState, nowMs: number): void {
  const rate = rateBytesPerSecond(state);
  const elapsedMs = Math.max(0, nowMs - state.budgetAtMs);
  state.budgetBytes = Math.min(rate, state.budgetBytes + (elapsedMs * rate) / 1000);
  state.budgetAtMs = nowMs;
}

/** Starts whatever may start now: a pass, a page read, or the next read-back. */
function advance(state: ScrubState, nowMs: number, effects: ScrubEffect[]): void {
  if (state.config.bytesPerSecond <= 0) return;
  if (state.verifying === null && state.budgetBytes > 0) {
    const suspect = state.suspects.values().next().value;
    if (suspect !== undefined) {
      state.suspects.delete(suspect.sopInstanceUid);
      state.verifying = suspect;
      state.verifyingSuspect = true;
      state.budgetBytes -= suspect.byteLength;
      effects.push({ type: 'verify', entry: suspect });
      return;
    }
  }
  if (state.phase === 'waiting') {
    if (nowMs < state.nextAtMs) return;
    if (!state.passRunning) {
      state.passRunning = true;
      state.cursor = '';
    }
    state.phase = 'listing';
    effects.push({ type: 'list', afterUid: state.cursor, limit: state.config.pageEntriesMax });
    return;
  }
  if (state.phase !== 'verifying' || state.verifying !== null || state.budgetBytes <= 0) return;
  const next = state.page.shift();
  if (next !== undefined) {
    state.verifying = next;
    state.verifyingSuspect = false;
    state.budgetBytes -= next.byteLength;
    effects.push({ type: 'verify', entry: next });
    return;
  }
  if (!state.pageIsLast) {
    state.phase = 'listing';
    // Every copy of the page is read back: a restart may resume after it.
    effects.push({ type: 'saveCursor', afterUid: state.cursor }, { type: 'list', afterUid: state.cursor, limit: state.config.pageEntriesMax });
    return;
  }
  state.passRunning = false;
  state.cursor = '';
  effects.push({ type: 'saveCursor', afterUid: '' });
  state.phase = 'waiting';
  state.nextAtMs = nowMs + state.config.passPauseMs;
  state.stats.passesCompleted += 1;
  state.stats.lastPassCompletedAtMs = nowMs;
  effects.push({
    type: 'report',
    level: 'info',
    message: 'scrub pass completed',
    fields: { passes: state.stats.passesCompleted, instancesVerified: state.stats.instancesVerified, badCopiesFound: state.stats.badCopiesFound },
  });
}

const repairReports: Record<RepairOutcome, { level: 'info' | 'warn' | 'error'; message: string } | null> = {
  repaired: { level: 'info', message: 'scrub: damaged copy replaced by a good one from another site' },
  changed: null,
  unavailable: { level: 'error', message: 'scrub: no reachable site has a good copy; the damaged one is kept and checked again next pass' },
  noPeers: { level: 'error', message: 'scrub: damaged copy and no other site to repair it from (single-site archive); it is kept and checked again next pass' },
};

export function stepScrub(previous: ScrubState, input: ScrubInput): ScrubStep {
  // The steps below change the state in place: on a copy, so that the state given stays as it was.
  const state: ScrubState = {
    ...previous,
    page: [...previous.page],
    suspects: new Map(previous.suspects),
    unrepairable: new Map(previous.unrepairable),
    repairing: new Set(previous.repairing),
    stats: { ...previous.stats },
  };
  const effects: ScrubEffect[] = [];
  switch (input.type) {
    case 'tick':
      refill(state, input.nowMs);
      state.busy = input.busy;
      break;
    case 'startNow':
      if (state.phase === 'waiting') state.nextAtMs = Math.min(state.nextAtMs, input.nowMs);
      break;
    case 'suspected': {
      const uid = input.entry.sopInstanceUid;
      // Being read back or repaired already, or queued: once is enough.
      if (state.verifying?.sopInstanceUid === uid || state.repairing.has(uid) || state.suspects.has(uid)) break;
      if ((state.unrepairable.get(uid) ?? Number.NEGATIVE_INFINITY) > input.nowMs) break;
      if (state.suspects.size >= state.config.suspectsQueuedMax) break;
      state.suspects.set(uid, input.entry);
      effects.push({ type: 'report', level: 'warn', message: 'scrub: copy reported suspect; reading it back', fields: { sopInstanceUid: uid, reason: input.reason } });
      break;
    }
    case 'listed': {
      if (state.phase !== 'listing') break;
      state.page = [...input.entries];
      state.pageIsLast = input.end;
      if (input.lastUid !== undefined) state.cursor = input.lastUid;
      state.phase = 'verifying';
      refill(state, input.nowMs);
      break;
    }
    case 'listFailed':
      if (state.phase !== 'listing') break;
      state.phase = 'waiting';
      state.nextAtMs = input.nowMs + state.config.passPauseMs;
      effects.push({ type: 'report', level: 'error', message: 'scrub: reading the catalog failed; retrying later from the same place', fields: { error: input.error, cursor: state.cursor } });
      break;
    case 'verified': {
      const entry = state.verifying;
      if (entry === null || entry.sopInstanceUid !== input.sopInstanceUid) break;
      state.verifying = null;
      refill(state, input.nowMs);
      if (input.outcome === 'gone') break;
      state.stats.instancesVerified += 1;
      if (state.verifyingSuspect) state.stats.suspectsVerified += 1;
      state.stats.bytesVerified += entry.byteLength;
      if (input.outcome === 'ok') break;
      state.stats.badCopiesFound += 1;
      const canRepair = state.repairing.size < state.config.repairsInFlightMax && !state.repairing.has(entry.sopInstanceUid);
      effects.push({ type: 'report', level: 'error', message: 'scrub: damaged copy found', fields: { sopInstanceUid: entry.sopInstanceUid, reason: input.reason ?? '', repairing: canRepair } });
      if (canRepair) {
        state.repairing.add(entry.sopInstanceUid);
        effects.push({ type: 'repair', entry });
      }
      break;
    }
    case 'repairEnded': {
      if (!state.repairing.delete(input.sopInstanceUid)) break;
      if (input.outcome === 'repaired') state.stats.copiesRepaired += 1;
      if (input.outcome === 'unavailable' || input.outcome === 'noPeers') {
        state.stats.copiesUnrepaired += 1;
        state.unrepairable.delete(input.sopInstanceUid);
        state.unrepairable.set(input.sopInstanceUid, input.nowMs + state.config.unrepairableQuietMs);
        if (state.unrepairable.size > unrepairableRememberedMax) state.unrepairable.delete(state.unrepairable.keys().next().value!);
      } else {
        state.unrepairable.delete(input.sopInstanceUid);
      }
      const report = repairReports[input.outcome];
      if (report !== null) effects.push({ type: 'report', ...report, fields: { sopInstanceUid: input.sopInstanceUid } });
      break;
    }
    default: {
      const unreachable: never = input;
      throw new Error(`unknown scrub input ${JSON.stringify(unreachable)}`);
    }
  }
  advance(state, input.nowMs, effects);
  return { state, effects };
}
