import './polyfill.ts';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

function dependantCount(signal: AbortSignal): number {
  const key = Object.getOwnPropertySymbols(signal).find((symbol) => symbol.description === 'kDependantSignals');
  const set = key === undefined ? undefined : (signal as unknown as Record<symbol, unknown>)[key];
  const size = (set as { size?: unknown } | undefined)?.size;
  assert.equal(typeof size, 'number', "Node's set of dependant signals is where this test looks for it");
  return size as number;
}

test('AbortSignal.any leaves no trace on a long-lived source once its signals are gone, and still aborts', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const stop = new AbortController();
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 500; i++) AbortSignal.any([stop.signal, new AbortController().signal]);
    await turn();
    gc();
  }
  const kept = AbortSignal.any([stop.signal, new AbortController().signal]);
  // At most about twice as many as were alive at once (500): the set is pruned each time it doubles.
  assert.ok(dependantCount(stop.signal) <= 1001, `${dependantCount(stop.signal)} dependants kept for 1 live signal after 10,000 calls`);
  stop.abort(new Error('stopping'));
  assert.equal(kept.aborted, true);
  assert.equal((kept.reason as Error).message, 'stopping');
});
