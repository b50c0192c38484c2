/**
 * Timers are messages: a ticker posts one `tick` to an actor's mailbox after a delay, and never queues
 * a second one while the first waits to be handled (a slow actor gets fewer ticks, not a backlog).
 */
import type { Clock, TimerHandle } from './clock.ts';
import { errorText, type Logger } from './logger.ts';
import type { CrashDecision } from './nact.ts';

export interface Ticker {
  /** Posts a tick after `delayMs`, unless one is already scheduled or waiting in the mailbox. */
  schedule(delayMs: number): void;
  /** Posts a tick now (at start). */
  postNow(): void;
  /** The actor took the tick out of its mailbox. */
  handled(): void;
  /** After a crash: forget the tick in flight and start again at once. */
  restart(): void;
  stop(): void;
}

export function createTicker(clock: Clock, postTick: () => void, isStopped: () => boolean): Ticker {
  let pending = false;
  let timer: TimerHandle | undefined;
  const post = () => {
    pending = true;
    postTick();
  };
  const ticker: Ticker = {
    schedule(delayMs) {
      if (isStopped() || timer !== undefined) return;
      timer = clock.setTimeout(() => {
        timer = undefined;
        if (isStopped() || pending) return;
        post();
      }, delayMs);
    },
    postNow: post,
    handled() {
      pending = false;
    },
    restart() {
      pending = false;
      clock.clearTimeout(timer);
      timer = undefined;
      ticker.schedule(0);
    },
    stop() {
      clock.clearTimeout(timer);
      timer = undefined;
    },
  };
  return ticker;
}

/**
 * The supervision of a ticking actor's crash: logged, decided by `decide` (default 'reset'), and when the
 * actor lives on its tick chain starts again (the crashed message may have been the tick).
 */
export async function onTickingActorCrash(
  ticker: Ticker,
  log: Logger,
  actorName: string,
  error: unknown,
  decide: ((error: unknown) => CrashDecision | Promise<CrashDecision>) | undefined,
): Promise<CrashDecision> {
  log.error(`${actorName} actor crashed`, { error: errorText(error) });
  const decision = decide ? await decide(error) : 'reset';
  if (decision === 'reset' || decision === 'resume') ticker.restart();
  return decision;
}
