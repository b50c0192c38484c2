/**
 * Every timer goes through one replaceable clock, so tests and the simulation can drive time.
 */
export type TimerHandle = { readonly id: unknown };

export interface Clock {
  /**
   * Milliseconds for durations, deadlines and failure detection: never steps, whatever the wall clock
   * does (an NTP correction or an operator setting the date must not make live peers look dead, or
   * hold a deadline for an hour). Close to the date, but not a timestamp to store.
   */
  nowMs(): number;
  /** The calendar date in milliseconds, for timestamps that are stored or compared across sites; it can step. */
  dateMs(): number;
  setTimeout(callback: () => void, delayMs: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

export const systemClock: Clock = {
  // performance.now() is the monotonic clock libuv's timers run on; timeOrigin makes it read like a date,
  // and whole milliseconds like Date.now() (values end up in logs and the roster file).
  nowMs: () => Math.floor(performance.timeOrigin + performance.now()),
  dateMs: () => Date.now(),
  setTimeout(callback, delayMs) {
    const id = setTimeout(callback, delayMs);
    // Timers alone must not keep a process alive during shutdown.
    id.unref();
    return { id };
  },
  clearTimeout(handle) {
    if (handle) clearTimeout(handle.id as ReturnType<typeof setTimeout>);
  },
};
