import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { dispatch, messagesPerTurnMax, spawnActor, startActorSystem, stopActor, type CrashDecision } from './nact.ts';
import { waitFor } from '../../../test/support/wait.ts';

type Msg = { type: 'work'; n: number } | { type: 'fail'; n: number };

/** Counts event-loop turns: each check phase moves it on, as long as the test runs. */
function turnCounter(): { now(): number; stop(): void } {
  let turns = 0;
  let running = true;
  const next = (): void => {
    if (!running) return;
    turns++;
    setImmediate(next);
  };
  setImmediate(next);
  return { now: () => turns, stop: () => void (running = false) };
}

function spawnRecorder(decision: CrashDecision) {
  const system = startActorSystem(`nact-test-${Math.random().toString(36).slice(2, 8)}`);
  const counter = turnCounter();
  const handled: Array<{ n: number; turn: number }> = [];
  const crashes: number[] = [];
  let settle!: () => void;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  let expected = 0;
  const ref = spawnActor<number, Msg>(system, {
    initialState: 0,
    handle: async (count, message) => {
      // An await inside the handler, as the real actors have: the next message still waits for it.
      await Promise.resolve();
      if (message.type === 'fail') throw new Error(`failing on ${message.n}`);
      handled.push({ n: message.n, turn: counter.now() });
      if (handled.length === expected) settle();
      return count + 1;
    },
    onCrash: (_error, message) => {
      if (message !== undefined) crashes.push(message.n);
      return decision;
    },
  });
  return {
    ref,
    handled,
    crashes,
    settledAfter(count: number): Promise<void> {
      expected = count;
      return settled;
    },
    stop(): void {
      counter.stop();
      stopActor(ref);
      stopActor(system);
    },
  };
}

/** Sends messages 0..9, the one numbered 4 failing in the handler. */
function dispatchFailingAtFour(ref: ReturnType<typeof spawnRecorder>['ref']): void {
  for (let n = 0; n < 10; n++) dispatch(ref, n === 4 ? { type: 'fail', n } : { type: 'work', n });
}

describe('actors on nact', () => {
  it(`handle up to ${messagesPerTurnMax} queued messages per event-loop turn, in order (nact alone: one per turn)`, async () => {
    const actor = spawnRecorder('stop');
    try {
      const count = 200;
      for (let n = 0; n < count; n++) dispatch(actor.ref, { type: 'work', n });
      await actor.settledAfter(count);
      assert.deepEqual(
        actor.handled.map((h) => h.n),
        Array.from({ length: count }, (_, n) => n),
      );
      const turnsUsed = new Set(actor.handled.map((h) => h.turn)).size;
      assert.ok(turnsUsed <= Math.ceil(count / messagesPerTurnMax) + 1, `${count} messages took ${turnsUsed} turns`);
      assert.ok(turnsUsed >= Math.ceil(count / messagesPerTurnMax), `${count} messages in ${turnsUsed} turns: the actor must let I/O run between turns`);
    } finally {
      actor.stop();
    }
  });

  it('a crash goes to supervision with the failing message; resume goes on with the rest of the mailbox', async () => {
    const actor = spawnRecorder('resume');
    try {
      dispatchFailingAtFour(actor.ref);
      await actor.settledAfter(9);
      assert.deepEqual(actor.crashes, [4]);
      assert.deepEqual(
        actor.handled.map((h) => h.n),
        [0, 1, 2, 3, 5, 6, 7, 8, 9],
      );
    } finally {
      actor.stop();
    }
  });

  it('stop on a crash handles nothing more', async () => {
    const actor = spawnRecorder('stop');
    try {
      dispatchFailingAtFour(actor.ref);
      // The crash first (late on a loaded machine: 50 ms were not always enough), then a moment for anything after it.
      await waitFor('the crash at message 4', () => actor.crashes.length > 0, 5000, 5);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(actor.crashes, [4]);
      assert.deepEqual(
        actor.handled.map((h) => h.n),
        [0, 1, 2, 3],
      );
    } finally {
      actor.stop();
    }
  });
});
