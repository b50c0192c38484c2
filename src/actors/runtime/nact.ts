/**
 * The one place that touches nact (STACK.md trap 6: upstream is quiet, named exports of values fail at
 * run time, so everything goes through the default export here).
 */
import nact from 'nact';
import type { ActorSystemRef, Ref, SupervisionActorFunc } from 'nact';

export type { Ref } from 'nact';
export type ActorSystem = ActorSystemRef;

export type CrashDecision = 'stop' | 'resume' | 'reset' | 'escalate';

export interface ActorSpec<State, Msg> {
  name?: string;
  initialState: State;
  handle: (state: State, message: Msg, self: Ref<Msg>) => State | Promise<State>;
  /** Called when `handle` throws; the decision is carried out by nact. Default: stop. */
  onCrash?: (error: unknown, message: Msg | undefined) => CrashDecision | Promise<CrashDecision>;
  afterStop?: (state: State) => void | Promise<void>;
}

export function startActorSystem(name: string): ActorSystem {
  return nact.start({ name } as unknown as Parameters<typeof nact.start>[0]) as ActorSystem;
}

export function stopActor(ref: Ref<unknown>): void {
  nact.stop(ref);
}

export function dispatch<Msg>(ref: Ref<Msg>, message: Msg): void {
  nact.dispatch(ref, message);
}

export function spawnActor<State, Msg>(parent: Ref<any>, spec: ActorSpec<State, Msg>): Ref<Msg> {
  const onCrash: SupervisionActorFunc<Msg, Ref<any>, Ref<any>> = async (message, error, ctx) => {
    const decision = spec.onCrash ? await spec.onCrash(error, message) : 'stop';
    switch (decision) {
      case 'stop':
        return ctx.stop;
      case 'resume':
        return ctx.resume;
      case 'reset':
        return ctx.reset;
      case 'escalate':
        return ctx.escalate;
      default: {
        const unreachable: never = decision;
        throw new Error(`unknown crash decision ${String(unreachable)}`);
      }
    }
  };
  return nact.spawn(parent, (state: State, message: Msg, ctx: { self: Ref<Msg> }) => spec.handle(state, message, ctx.self), spec.name, {
    initialState: spec.initialState,
    onCrash,
    afterStop: spec.afterStop ? (state: State) => spec.afterStop!(state) : undefined,
  });
}
