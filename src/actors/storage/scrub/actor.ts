/**
 * The scrub actor: a thin nact shell around the scrub reducer (logic.ts). It reads catalog pages and
 * reads copies back through the store, asks `repair` (the mesh: another site's good copy) to replace a
 * damaged one, and logs what the reducer reports. Timers are messages: a tick every `tickIntervalMs`
 * carries the clock and whether associations are active. Runs in a single-site archive too (it then
 * reports damage it cannot repair).
 */
import type { Clock } from '../../runtime/clock.ts';
import { untilAborted } from '../../runtime/deadline.ts';
import { createRepeatLimiter, errorText, type Logger } from '../../runtime/logger.ts';
import { actorSender, type CrashDecision, type Ref, spawnActor, stopActor } from '../../runtime/nact.ts';
import { createTicker, onTickingActorCrash } from '../../runtime/ticker.ts';
import { catalogPage, decodeCatalogEntry, isCatalogDamage } from '../catalog.ts';
import type { CatalogEntry } from '../catalog-types.ts';
import type { ReplicaStore } from '../replica-store.ts';
import { validateCatalogEntry } from '../replication.ts';
import { defaultScrubConfig, initScrub, scrubStats, stepScrub, type ScrubState } from './logic.ts';
import type { RepairOutcome, ScrubConfig, ScrubEffect, ScrubInput, ScrubStats } from './messages.ts';

export interface ScrubServiceInit {
  store: ReplicaStore;
  clock: Clock;
  log: Logger;
  /** nact parent of the scrub actor. */
  parent: Ref<any>;
  config?: Partial<ScrubConfig>;
  /** Default 250 ms. */
  tickIntervalMs?: number;
  /** Whether the archive is busy now (an association active, or an instance stored lately: archiveBusy): the scrub slows down to its busy share. */
  busy(): boolean;
  /** Replaces a damaged copy from elsewhere; 'noPeers' where there is nowhere to take one from. */
  repair(entry: CatalogEntry): Promise<RepairOutcome>;
  onCrash?: (error: unknown) => CrashDecision | Promise<CrashDecision>;
}

export interface ScrubService {
  stats(): ScrubStats;
  /** Starts a pass now unless one is running (an operator's request, e.g. after a disk incident). */
  startNow(): void;
  /** Stops; a read-back or a repair (a pull from another site) still running at `deadline` is not waited for. */
  stop(deadline?: AbortSignal): Promise<void>;
}

type ScrubMsg = { readonly type: 'tick' } | { readonly type: 'input'; readonly input: ScrubInput };

/** The pass's saved cursor, in the catalog database beside the store's own `m!` records. */
const cursorKey = 'm!scrub-cursor';

// Checked like an entry a peer sends: a damaged catalog record is named and skipped, not half-used.
const decodeChecked = (bytes: Uint8Array): CatalogEntry => validateCatalogEntry(decodeCatalogEntry(bytes));

export function startScrub(init: ScrubServiceInit): ScrubService {
  const { store, clock } = init;
  const log = init.log.child({ component: 'scrub' });
  const config: ScrubConfig = { ...defaultScrubConfig, ...init.config };
  const tickIntervalMs = init.tickIntervalMs ?? 250;
  let stopped = false;
  let current: ScrubStats = scrubStats(initScrub(config, clock.nowMs()));
  const tasks = new Set<Promise<void>>();

  const send = actorSender(() => ref, () => stopped, log, 'scrub');
  const input = (i: ScrubInput): void => send({ type: 'input', input: i });
  const track = (t: Promise<void>): void => {
    tasks.add(t);
    void t.finally(() => tasks.delete(t));
  };
  const run = (task: () => Promise<ScrubInput>): void =>
    track(
      task().then(
        (result) => input(result),
        (error: unknown) => log.error('scrub task failed', { error: errorText(error) }),
      ),
    );

  async function list(afterUid: string, limit: number): Promise<ScrubInput> {
    try {
      const page = await catalogPage(store.db, afterUid, limit, decodeChecked);
      for (const uid of page.undecodable) log.error('scrub: catalog record does not decode to a valid entry; skipped', { sopInstanceUid: uid });
      if (page.undecodable.length > 0) store.reportCatalogDamage(`scrub: ${page.undecodable.length} catalog record(s) damaged, e.g. ${page.undecodable[0]}`);
      return { type: 'listed', entries: page.entries, lastUid: page.lastUid, end: page.end, nowMs: clock.nowMs() };
    } catch (error) {
      if (isCatalogDamage(error)) store.reportCatalogDamage(`scrub: ${errorText(error)}`);
      return { type: 'listFailed', error: errorText(error), nowMs: clock.nowMs() };
    }
  }

  async function verify(entry: CatalogEntry): Promise<ScrubInput> {
    const verified = (outcome: 'ok' | 'bad' | 'gone', reason?: string): ScrubInput => ({
      type: 'verified',
      sopInstanceUid: entry.sopInstanceUid,
      outcome,
      ...(reason === undefined ? {} : { reason }),
      nowMs: clock.nowMs(),
    });
    try {
      const result = await store.verifyInstance(entry);
      if (result.ok) return verified('ok');
      // Replaced (a repair, or stored again) while it was read: the copy read is no longer the one served.
      const now = await store.getEntry(entry.sopInstanceUid);
      return now?.blobId === entry.blobId ? verified('bad', result.reason) : verified('gone');
    } catch (error) {
      log.warn('scrub: read-back failed', { sopInstanceUid: entry.sopInstanceUid, error: errorText(error) });
      return verified('gone');
    }
  }

  async function repair(entry: CatalogEntry): Promise<ScrubInput> {
    let outcome: RepairOutcome;
    try {
      outcome = await init.repair(entry);
    } catch (error) {
      log.warn('scrub: repair failed', { sopInstanceUid: entry.sopInstanceUid, error: errorText(error) });
      outcome = 'unavailable';
    }
    return { type: 'repairEnded', sopInstanceUid: entry.sopInstanceUid, outcome, nowMs: clock.nowMs() };
  }

  // A full disk fails every save (about ten a minute): one line a minute.
  const cursorFailures = createRepeatLimiter(log, 60_000);
  function perform(effects: readonly ScrubEffect[]): void {
    for (const effect of effects) {
      switch (effect.type) {
        case 'list':
          run(() => list(effect.afterUid, effect.limit));
          break;
        case 'verify':
          run(() => verify(effect.entry));
          break;
        case 'repair':
          run(() => repair(effect.entry));
          break;
        case 'report':
          log[effect.level](effect.message, effect.fields);
          break;
        case 'saveCursor':
          // Not synced: a cursor lost in a power cut only means re-reading a few pages.
          void store.db.put(cursorKey, Buffer.from(effect.afterUid, 'utf8')).catch((error: unknown) => cursorFailures.warn('cursor', 'scrub: saving the cursor failed', { error: errorText(error) }));
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(`unhandled scrub effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
  }

  const ticker = createTicker(clock, () => send({ type: 'tick' }), () => stopped);

  async function initialState(): Promise<ScrubState> {
    let resumeAfterUid = '';
    try {
      const saved = await store.db.get(cursorKey);
      if (saved !== undefined) resumeAfterUid = Buffer.from(saved).toString('utf8');
    } catch (error) {
      log.warn('scrub: reading the saved cursor failed; starting a new pass', { error: errorText(error) });
    }
    if (resumeAfterUid !== '') log.info('scrub: resuming the pass a previous run left', { afterUid: resumeAfterUid });
    return initScrub(config, clock.nowMs(), resumeAfterUid);
  }

  const ref: Ref<ScrubMsg> = spawnActor<ScrubState | null, ScrubMsg>(init.parent, {
    name: 'scrub',
    // null: (re)start from the saved cursor after the start delay, on the next message; nact's 'reset' comes back here.
    initialState: null,
    async handle(state, message) {
      if (message.type === 'tick') ticker.handled();
      const s = state ?? (await initialState());
      let step;
      switch (message.type) {
        case 'tick':
          step = stepScrub(s, { type: 'tick', nowMs: clock.nowMs(), busy: init.busy() });
          ticker.schedule(tickIntervalMs);
          break;
        case 'input':
          step = stepScrub(s, message.input);
          break;
        default: {
          const unreachable: never = message;
          throw new Error(`unhandled scrub message ${JSON.stringify(unreachable)}`);
        }
      }
      perform(step.effects);
      current = scrubStats(step.state);
      return step.state;
    },
    onCrash: (error) => onTickingActorCrash(ticker, log, 'scrub', error, init.onCrash),
  });

  // Reads that found a copy damaged (here or at a peer that refused its bytes) send it to the front.
  const unsubscribe = store.onSuspectCopy((sopInstanceUid, reason) => {
    if (stopped) return;
    track(
      store.getEntry(sopInstanceUid).then(
        (entry) => {
          if (entry !== undefined) input({ type: 'suspected', entry, reason, nowMs: clock.nowMs() });
        },
        (error: unknown) => log.warn('scrub: looking up a suspect copy failed', { sopInstanceUid, error: errorText(error) }),
      ),
    );
  });

  ticker.postNow();
  let stopping: Promise<void> | undefined;
  return {
    stats: () => current,
    startNow: () => input({ type: 'startNow', nowMs: clock.nowMs() }),
    stop: (deadline) =>
      (stopping ??= (async () => {
        stopped = true;
        unsubscribe();
        ticker.stop();
        stopActor(ref);
        // A repair runs on custody's shutdown signal, which its stop aborts later: not waited for past the deadline.
        await untilAborted(Promise.allSettled([...tasks]), deadline);
      })()),
  };
}
