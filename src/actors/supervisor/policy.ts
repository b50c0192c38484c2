/**
 * Restart policy of the site supervisor, as a pure reducer over crash events (time comes in the input).
 *
 * Erlang/OTP style intensity + period, with exponential back-off between restarts:
 * - a crash is answered with `restart` after `delayMs`, where the delay doubles (x `backoffMultiplier`)
 *   with each crash in a row, from `backoffInitialMs` up to `backoffMaxMs`;
 * - a child that ran `stableAfterMs` without crashing starts again from the initial delay, so one crash a
 *   day never ends up waiting the maximum;
 * - more than `maxRestarts` crashes within `windowMs` is answered with `escalate`: the fault is not
 *   transient, and restarting faster or slower would only hide it. The caller stops the child and tells
 *   its parent (for the site root: log, mark unhealthy, let the service manager restart the process).
 */

export interface RestartPolicy {
  /** Restarts allowed within `windowMs`; one crash more escalates. */
  readonly maxRestarts: number;
  readonly windowMs: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly backoffMultiplier: number;
  /** Running this long without a crash resets the back-off to `backoffInitialMs`. */
  readonly stableAfterMs: number;
}

export const defaultRestartPolicy: RestartPolicy = {
  maxRestarts: 5,
  windowMs: 60_000,
  backoffInitialMs: 100,
  backoffMaxMs: 10_000,
  backoffMultiplier: 2,
  stableAfterMs: 30_000,
};

export interface PolicyState {
  readonly policy: RestartPolicy;
  /** Crash times within the current window, oldest first (at most maxRestarts + 1 entries). */
  readonly crashesAtMs: readonly number[];
  /** Crashes in a row without a stable period between them (drives the back-off exponent). */
  readonly consecutive: number;
  readonly lastCrashAtMs: number | null;
  readonly restartsTotal: number;
  readonly escalated: boolean;
}

export type PolicyInput =
  | { readonly type: 'crashed'; readonly nowMs: number }
  /** The operator (or the parent) restarted the child by hand: start from a clean budget. */
  | { readonly type: 'reset' };

export type PolicyDecision =
  | { readonly type: 'restart'; readonly delayMs: number; readonly attempt: number }
  | { readonly type: 'escalate'; readonly crashesInWindow: number }
  | { readonly type: 'none' };

export interface PolicyStep {
  readonly state: PolicyState;
  readonly decision: PolicyDecision;
}

export class RestartPolicyError extends Error {
  static readonly NAME = 'RestartPolicyError';
  override readonly name = RestartPolicyError.NAME;
  readonly code = 'ERR_RESTART_POLICY' as const;
}

export function initPolicy(policy: RestartPolicy = defaultRestartPolicy): PolicyState {
  if (
    !(Number.isInteger(policy.maxRestarts) && policy.maxRestarts >= 0) ||
    !(policy.windowMs > 0) ||
    !(policy.backoffInitialMs >= 0) ||
    !(policy.backoffMaxMs >= policy.backoffInitialMs) ||
    !(policy.backoffMultiplier >= 1) ||
    !(policy.stableAfterMs >= 0)
  ) {
    throw new RestartPolicyError(`invalid restart policy ${JSON.stringify(policy)}`);
  }
  return { policy, crashesAtMs: [], consecutive: 0, lastCrashAtMs: null, restartsTotal: 0, escalated: false };
}

export function stepPolicy(state: PolicyState, input: PolicyInput): PolicyStep {
  switch (input.type) {
    case 'reset':
      return { state: { ...initPolicy(state.policy), restartsTotal: state.restartsTotal }, decision: { type: 'none' } };
    case 'crashed':
      return onCrashed(state, input.nowMs);
    default:
      return assertNever(input);
  }
}

function onCrashed(state: PolicyState, nowMs: number): PolicyStep {
  const p = state.policy;
  // Once escalated the child is stopped; a late crash report must not resurrect it.
  if (state.escalated) return { state, decision: { type: 'escalate', crashesInWindow: state.crashesAtMs.length } };
  const inWindow = state.crashesAtMs.filter((t) => nowMs - t < p.windowMs);
  inWindow.push(nowMs);
  // Keep the list bounded: only the newest maxRestarts + 1 matter for the decision.
  const crashesAtMs = inWindow.slice(-(p.maxRestarts + 1));
  const stable = state.lastCrashAtMs === null || nowMs - state.lastCrashAtMs >= p.stableAfterMs;
  const consecutive = stable ? 0 : state.consecutive;
  if (inWindow.length > p.maxRestarts) {
    return {
      state: { ...state, crashesAtMs, consecutive: consecutive + 1, lastCrashAtMs: nowMs, escalated: true },
      decision: { type: 'escalate', crashesInWindow: inWindow.length },
    };
  }
  const delayMs = Math.min(p.backoffMaxMs, Math.round(p.backoffInitialMs * p.backoffMultiplier ** consecutive));
  const restartsTotal = state.restartsTotal + 1;
  return {
    state: { ...state, crashesAtMs, consecutive: consecutive + 1, lastCrashAtMs: nowMs, restartsTotal },
    decision: { type: 'restart', delayMs, attempt: consecutive + 1 },
  };
}

function assertNever(value: never): never {
  throw new RestartPolicyError(`unhandled policy input: ${JSON.stringify(value)}`);
}
