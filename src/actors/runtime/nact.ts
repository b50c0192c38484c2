/**
 * The one place that touches nact (STACK.md trap 6: upstream is quiet, named exports of values fail at
 * run time, so everything goes through the default export here).
 */
import nact from 'nact';
import type { ActorSystemRef, Ref, SupervisionActorFunc } from 'nact';
import nactActorModule, { type NactActorInternals } from 'nact/lib/actor.js';
import type { Logger } from './logger.ts';

export type { Ref } from 'nact';
export type ActorSystem = ActorSystemRef;

export type CrashDecision = 'stop' | 'resume' | 'reset' | 'escalate';

/**
 * Messages one actor handles in a row before it lets the event loop run I/O again. nact itself handles
 * each message in its own setImmediate, i.e. one message per event-loop turn: on a busy peer (turns of
 * 30-100 ms) the custody actor's mailbox then waited seconds while the actor was idle most of the time,
 * and C-STOREs ran into their quorum timeout (0xA700) with every site alive.
 */
export const messagesPerTurnMax = 32;

/**
 * Replaces nact's Actor.handleMessage (lib/actor.js, 7.6) with one that, after a message, takes the next
 * from the mailbox in the same turn, up to messagesPerTurnMax; everything else (busy flag, supervision
 * through handleFault, the stop check, the idle timeout) is what nact's own handleMessage and processNext do.
 */
function handleMessagesInTurns(actorPrototype: NactActorInternals): void {
  for (const method of ['handleMessage', 'processNext', 'handleFault', 'createContext', 'afterMessage', 'setTimeout'] as const) {
    if (typeof actorPrototype[method] !== 'function') throw new Error(`nact's Actor has no ${method}(): ./nact.ts was written for nact 7.6`);
  }
  const runTurn = async (actor: NactActorInternals, message: unknown, sender: unknown): Promise<void> => {
    for (let handled = 1; ; handled++) {
      try {
        const ctx = actor.createContext(sender);
        actor.state = await Promise.resolve(actor.f.call(ctx, actor.state, message, ctx));
        actor.afterMessage();
      } catch (error) {
        void actor.handleFault(message, sender, error);
        return;
      }
      if (actor.stopped) return;
      const next = actor.mailbox.shift();
      if (next === undefined) {
        actor.busy = false;
        actor.setTimeout();
        return;
      }
      if (handled >= messagesPerTurnMax) {
        actor.handleMessage(next.message, next.sender);
        return;
      }
      ({ message, sender } = next);
    }
  };
  actorPrototype.handleMessage = function (this: NactActorInternals, message: unknown, sender: unknown) {
    this.busy = true;
    this.immediate = setImmediate(() => void runTurn(this, message, sender));
  };
}
handleMessagesInTurns(nactActorModule.Actor.prototype);

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

/**
 * Sends to an actor from outside it (timers, streams, store callbacks), which have nobody to catch a
 * throw: nothing once `isStopped`, and a warning when nact refuses because it stopped the actor itself
 * (escalated by its supervisor: nact asserts on a stopped actor).
 */
export function actorSender<Msg>(refOf: () => Ref<Msg>, isStopped: () => boolean, log: Logger, actorName: string): (message: Msg) => void {
  return (message) => {
    if (isStopped()) return;
    try {
      nact.dispatch(refOf(), message);
    } catch (error) {
      log.warn(`${actorName} actor unavailable`, { error: (error as Error).message });
    }
  };
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
