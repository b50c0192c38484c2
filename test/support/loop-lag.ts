/**
 * How late this process's event loop ran its timers: time in which no code here could run (the CPU given to
 * other processes on a busy machine, a long GC, a loop kept busy). A deadline on the wall clock plus this
 * lateness holds the code to the same bound on a quiet machine and on a loaded one.
 */
export interface LoopLag {
  /** Milliseconds the loop ran late since the tracker started (samples late by less than a sample do not count). */
  lateMs(): number;
  stop(): void;
}

export function trackLoopLag(sampleMs = 10): LoopLag {
  let lateMs = 0;
  let lastMs = performance.now();
  let stoppedAtMs: number | null = null;
  /** A gap over two samples counts, all of its excess: timer jitter of a few ms is not lateness. */
  const excessMs = (gapMs: number) => (gapMs > 2 * sampleMs ? gapMs - sampleMs : 0);
  const timer = setInterval(() => {
    const nowMs = performance.now();
    lateMs += excessMs(nowMs - lastMs);
    lastMs = nowMs;
  }, sampleMs);
  timer.unref();
  return {
    // The gap still open (the loop may be late right now) counts too, up to the stop.
    lateMs: () => Math.round(lateMs + excessMs((stoppedAtMs ?? performance.now()) - lastMs)),
    stop: () => {
      stoppedAtMs ??= performance.now();
      clearInterval(timer);
    },
  };
}
