/**
 * The parts of nact 7.6's internal Actor class that ./nact.ts replaces or calls (lib/actor.js has no types).
 */
declare module 'nact/lib/actor.js' {
  export interface NactQueuedMessage {
    message: unknown;
    sender: unknown;
  }

  export interface NactActorInternals {
    busy: boolean;
    stopped: boolean;
    immediate: ReturnType<typeof setImmediate> | undefined;
    state: unknown;
    mailbox: { shift(): NactQueuedMessage | undefined };
    f: (this: unknown, state: unknown, message: unknown, ctx: unknown) => unknown;
    createContext(sender: unknown): unknown;
    afterMessage(): void;
    setTimeout(): void;
    processNext(): void;
    handleFault(message: unknown, sender: unknown, error: unknown): unknown;
    handleMessage(message: unknown, sender: unknown): void;
  }

  const actorModule: { Actor: { prototype: NactActorInternals } };
  export default actorModule;
}
