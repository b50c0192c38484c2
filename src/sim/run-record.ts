/**
 * What a simulation run keeps for its report: the violations found, and a bounded trace whose tail is frozen at
 * the first violation (the lines after it only describe the damage). Shared by the mesh and election simulations.
 */
export interface RunRecord {
  readonly violations: readonly string[];
  log(line: string): void;
  violate(what: string): void;
  /** The last trace lines before the first violation (or the end, when none). */
  traceTail(): readonly string[];
}

/** `nowMs` reads the run's simulated time for each line. */
export function createRunRecord(traceLinesMax: number, nowMs: () => number): RunRecord {
  const violations: string[] = [];
  const trace: string[] = [];
  let traceFrozen: string[] | null = null;
  return {
    violations,
    log(line) {
      trace.push(`${nowMs()}ms ${line}`);
      if (trace.length > traceLinesMax) trace.shift();
    },
    violate(what) {
      violations.push(`t=${nowMs()}ms ${what}`);
      traceFrozen ??= [...trace];
    },
    traceTail: () => traceFrozen ?? trace,
  };
}

/** What every simulation run reports, beside its own figures. */
export interface SimRunReport {
  readonly seed: number;
  /** No invariant broken. */
  readonly ok: boolean;
  readonly violations: readonly string[];
  /** The last trace lines before the first violation (or the end), for diagnosis. */
  readonly traceTail: readonly string[];
  /** One line per peer at the end. */
  readonly finalPeers: readonly string[];
}
