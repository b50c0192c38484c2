/** A clock whose timers fire only when the test moves it on (for code that takes an injected Clock). */
import type { Clock, TimerHandle } from '../../src/actors/runtime/clock.ts';

export interface ManualClock extends Clock {
  /** Moves time on by `ms` and runs the timers then due, earliest first. */
  advance(ms: number): void;
  /** Timers set and not yet run or cleared. */
  pending(): number;
}

export function isManualClock(clock: Clock): clock is ManualClock {
  return 'advance' in clock;
}

export function manualClock(startMs = 0): ManualClock {
  const timers = new Map<number, { callback: () => void; dueMs: number }>();
  let nowMs = startMs;
  let nextId = 1;
  return {
    nowMs: () => nowMs,
    dateMs: () => nowMs,
    setTimeout(callback, delayMs) {
      const id = nextId++;
      timers.set(id, { callback, dueMs: nowMs + delayMs });
      return { id };
    },
    clearTimeout(handle: TimerHandle | undefined) {
      if (handle) timers.delete(handle.id as number);
    },
    advance(ms) {
      nowMs += ms;
      const due = [...timers].filter(([, t]) => t.dueMs <= nowMs).sort(([, a], [, b]) => a.dueMs - b.dueMs);
      for (const [id, timer] of due) {
        timers.delete(id);
        timer.callback();
      }
    },
    pending: () => timers.size,
  };
}
