/**
 * The steps of a stop, run in turn, each guarded: one that throws (a bug) is logged and the others still
 * run, so that ports are freed and the store closes (or the next start finds its LevelDB lock held). The
 * first error is kept for the caller: a stop throws it once everything has stopped; the clean-up of a
 * failed start only logs it, the start's own error saying what went wrong.
 */
import { errorText, type Logger } from './logger.ts';

export interface StopSteps {
  /** Runs `run` and waits for it; what it throws, at once or later, is logged and kept, not thrown. */
  step(name: string, run: () => unknown): Promise<void>;
  /** The first error a step threw, or undefined while none did. */
  firstFailure(): { readonly error: unknown } | undefined;
}

/** `stopName` names the whole in the log ("the stop", "the clean-up of a failed start"). */
export function createStopSteps(log: Pick<Logger, 'error'>, stopName: string): StopSteps {
  let failure: { readonly error: unknown } | undefined;
  return {
    async step(name, run) {
      try {
        await run();
      } catch (error) {
        failure ??= { error };
        log.error(`${stopName}: its step "${name}" failed; the others still run`, { error: errorText(error) });
      }
    },
    firstFailure: () => failure,
  };
}
