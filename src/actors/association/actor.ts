/**
 * The nact wiring of one association: a thin actor that feeds its mailbox into the session, and on a
 * crash aborts this association alone (A-ABORT) and stops, leaving every other association untouched.
 */
import type { Socket } from 'node:net';
import { dispatch, spawnActor, stopActor, type Ref } from '../runtime/nact.ts';
import type { AssociationMsg } from './messages.ts';
import type { AssociationDeps } from './services/deps.ts';
import { AcceptorSession } from './session.ts';

export interface SpawnedAssociation {
  ref: Ref<AssociationMsg>;
  /** Resolves once the association is over and its actor stopped. */
  finished: Promise<void>;
  /** See AcceptorSession.holdsAssociationSlot: false while a connection only waits to be closed. */
  holdsAssociationSlot(): boolean;
}

export function spawnAssociation(parent: Ref<any>, name: string, socket: Socket, deps: AssociationDeps, congested: () => boolean): SpawnedAssociation {
  let markFinished!: () => void;
  const finished = new Promise<void>((resolve) => {
    markFinished = resolve;
  });
  // The ref exists only after spawn returns, so early socket events are queued here until it does.
  let ref: Ref<AssociationMsg> | undefined;
  const early: AssociationMsg[] = [];
  let stopped = false;
  const post = (message: AssociationMsg) => {
    if (stopped) return;
    if (ref) dispatch(ref, message);
    else early.push(message);
  };
  const stop = (stopTheActor: boolean) => {
    if (stopped) return;
    stopped = true;
    if (ref && stopTheActor) stopActor(ref);
    socket.destroy();
    markFinished();
  };
  const session = new AcceptorSession(
    congested,
    socket,
    deps,
    {
      artimExpired: () => post({ type: 'artimExpired' }),
      idleExpired: () => post({ type: 'idleExpired' }),
      shutdownExpired: () => post({ type: 'shutdownExpired' }),
      operationsEndedAfterRelease: () => post({ type: 'operationsEndedAfterRelease' }),
      finished: () => queueMicrotask(() => stop(true)),
    },
    {
      received: (pdus, bytes) => post({ type: 'received', pdus, bytes }),
      invalid: (reason, detail) => post({ type: 'invalidPdu', reason, detail }),
      closed: () => post({ type: 'transportClosed' }),
    },
  );
  ref = spawnActor<AcceptorSession, AssociationMsg>(parent, {
    name,
    initialState: session,
    handle: async (state, message) => {
      switch (message.type) {
        case 'received':
          await state.onPdus(message.pdus, message.bytes);
          return state;
        case 'invalidPdu':
          await state.onInvalidPdu(message.reason, message.detail);
          return state;
        case 'transportClosed':
          await state.onTransportClosed();
          return state;
        case 'artimExpired':
          await state.onArtimExpired();
          return state;
        case 'idleExpired':
          await state.onIdleExpired();
          return state;
        case 'shutdown':
          await state.onShutdown(message.drainEndMs);
          return state;
        case 'shutdownExpired':
          await state.onShutdownExpired();
          return state;
        case 'operationsEndedAfterRelease':
          await state.onOperationsEndedAfterRelease();
          return state;
        case 'crash':
          throw new Error(`crash requested: ${message.why}`);
        default: {
          const unreachable: never = message;
          throw new Error(`unknown message ${JSON.stringify(unreachable)}`);
        }
      }
    },
    onCrash: async (error) => {
      session.log.error('association actor crashed: aborting this association', { error: error instanceof Error ? error.message : String(error) });
      await session.abort('internal error').catch(() => undefined);
      stop(false); // nact stops the actor itself on the 'stop' decision
      return 'stop' as const;
    },
  });
  for (const message of early.splice(0)) dispatch(ref, message);
  return { ref, finished, holdsAssociationSlot: () => session.holdsAssociationSlot };
}
