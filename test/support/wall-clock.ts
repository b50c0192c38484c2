/**
 * Steps this process's wall clock (Date.now) by offsetMs, as an NTP correction or an operator setting the
 * date would; returns the undo. Everything that reads Date.now sees the step, libp2p included.
 */
export function stepWallClock(offsetMs: number): () => void {
  const real = Date.now;
  Date.now = () => real() + offsetMs;
  return () => {
    Date.now = real;
  };
}
