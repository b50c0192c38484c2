/**
 * Every timer goes through one replaceable clock, so tests and the simulation can drive time.
 */
export type TimerHandle = { readonly id: unknown };

export interface Clock {
  nowMs(): number;
  setTimeout(callback: () => void, delayMs: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
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
