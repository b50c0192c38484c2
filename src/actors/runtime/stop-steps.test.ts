import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createStopSteps } from './stop-steps.ts';

test('stop steps: one that throws, at once or later, is logged and the others still run; the first error is kept', async () => {
  const logged: string[] = [];
  const steps = createStopSteps({ error: (message, fields) => logged.push(`${message} ${String(fields?.error)}`) }, 'the stop');
  const ran: string[] = [];
  await steps.step('first', () => ran.push('first'));
  assert.equal(steps.firstFailure(), undefined);
  const thrown = new Error('at once');
  await steps.step('throws', () => {
    throw thrown;
  });
  await steps.step('rejects', async () => Promise.reject(new Error('later')));
  await steps.step('last', async () => ran.push('last'));
  assert.deepEqual(ran, ['first', 'last']);
  assert.equal(steps.firstFailure()?.error, thrown);
  assert.deepEqual(logged, ['the stop: its step "throws" failed; the others still run at once', 'the stop: its step "rejects" failed; the others still run later']);
});
