import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { initPolicy, stepPolicy, type PolicyState, type RestartPolicy } from './policy.ts';

const policy: RestartPolicy = {
  maxRestarts: 3,
  windowMs: 10_000,
  backoffInitialMs: 100,
  backoffMaxMs: 1000,
  backoffMultiplier: 2,
  stableAfterMs: 5000,
};

function crash(state: PolicyState, nowMs: number) {
  return stepPolicy(state, { type: 'crashed', nowMs });
}

describe('restart policy', () => {
  it('backs off exponentially with a cap', () => {
    let s = initPolicy({ ...policy, maxRestarts: 100, windowMs: 1 });
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      const step = crash(s, 1000 + i * 10);
      s = step.state;
      assert.equal(step.decision.type, 'restart');
      if (step.decision.type === 'restart') delays.push(step.decision.delayMs);
    }
    assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  });

  it('escalates on the crash past the budget within the window', () => {
    let s = initPolicy(policy);
    for (let i = 0; i < 3; i++) {
      const step = crash(s, i * 100);
      assert.equal(step.decision.type, 'restart');
      s = step.state;
    }
    const fourth = crash(s, 400);
    assert.deepEqual(fourth.decision, { type: 'escalate', crashesInWindow: 4 });
    // Escalation is final: a late report does not restart a stopped child.
    assert.equal(crash(fourth.state, 60_000).decision.type, 'escalate');
    // Until a reset by hand.
    const reset = stepPolicy(fourth.state, { type: 'reset' }).state;
    assert.equal(crash(reset, 60_000).decision.type, 'restart');
  });

  it('forgets crashes older than the window', () => {
    let s = initPolicy(policy);
    for (let i = 0; i < 3; i++) s = crash(s, i * 100).state;
    const later = crash(s, 20_000);
    assert.equal(later.decision.type, 'restart');
    assert.equal(later.state.crashesAtMs.length, 1);
  });

  it('a stable run resets the back-off', () => {
    let s = initPolicy({ ...policy, maxRestarts: 10, windowMs: 100_000 });
    s = crash(s, 0).state;
    s = crash(s, 100).state;
    const afterStable = crash(s, 100 + policy.stableAfterMs);
    assert.deepEqual(afterStable.decision, { type: 'restart', delayMs: 100, attempt: 1 });
  });

  it('keeps its crash list bounded', () => {
    let s = initPolicy({ ...policy, maxRestarts: 2, windowMs: 1_000_000 });
    for (let i = 0; i < 50; i++) s = crash(s, i).state;
    assert.ok(s.crashesAtMs.length <= 3);
  });

  it('rejects nonsense policies', () => {
    assert.throws(() => initPolicy({ ...policy, backoffMaxMs: 1 }), { name: 'RestartPolicyError', code: 'ERR_RESTART_POLICY' });
  });
});
