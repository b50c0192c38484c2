/**
 * libp2p's AdaptiveTimeout (`@libp2p/utils`: the connection monitor's ping deadline, among others) on the
 * monotonic clock. The library times each operation with Date.now() and feeds the durations, stamped with
 * Date.now() too, to exponential moving averages. A wall clock stepped back while a ping was in flight (an
 * NTP correction, an operator setting the date) gave a negative duration of about the step and a negative
 * gap since the previous sample: the average became NaN (Infinity when the previous RTT was not 0 ms), it
 * never recovers, and with NaN every later `getTimeoutSignal` threw (AbortSignal.timeout(NaN)), which the
 * connection monitor takes for a failed ping: it aborted every connection of the peer every ping interval,
 * for as long as the process ran (hunt 72: a site stepped back 1 h was declared dead and alive again by
 * the others every 2 s, and the election ran term after term). Same fields, same arithmetic, except that
 * durations and sample times come from performance.now(), which never steps. Replaced once per process,
 * on import of this module.
 */
import { AdaptiveTimeout } from '@libp2p/utils';

interface Average {
  push(value: number, time?: number): void;
}

interface AdaptiveFields {
  success: Average;
  failure: Average;
  next: Average;
  failureMultiplier: number;
  metric?: { update(values: Record<string, number>): void };
}

type TimedSignal = AbortSignal & { start: number; timeout: number; clear(): void };

const prototype = AdaptiveTimeout.prototype as unknown as {
  getTimeoutSignal: (this: AdaptiveFields, options?: unknown) => TimedSignal;
  cleanUp: (this: AdaptiveFields, signal: TimedSignal) => void;
};
const libraryGetTimeoutSignal = prototype.getTimeoutSignal;

prototype.getTimeoutSignal = function getTimeoutSignal(this: AdaptiveFields, options?: unknown): TimedSignal {
  const signal = libraryGetTimeoutSignal.call(this, options);
  signal.start = performance.now();
  return signal;
};

prototype.cleanUp = function cleanUp(this: AdaptiveFields, signal: TimedSignal): void {
  signal.clear();
  const now = performance.now();
  const time = Math.max(0, now - signal.start);
  if (signal.aborted) {
    this.failure.push(time, now);
    this.next.push(time * this.failureMultiplier, now);
    this.metric?.update({ failure: time });
  } else {
    this.success.push(time, now);
    this.next.push(time, now);
    this.metric?.update({ success: time });
  }
};
