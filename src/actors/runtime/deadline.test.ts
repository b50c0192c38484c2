import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { startDeadline, withDeadline } from './deadline.ts';

/** Timers alive now (unref'd ones too, which process.getActiveResourcesInfo leaves out). */
const liveTimers = new Set<number>();
createHook({
  init: (id, type) => void (type === 'Timeout' && liveTimers.add(id)),
  destroy: (id) => void liveTimers.delete(id),
}).enable();

/** How many timers `work` created that are still alive after it. */
async function timersLeftBy(work: () => Promise<void>): Promise<number> {
  const before = new Set(liveTimers);
  await work();
  // An immediate, not a timer of its own: destroy hooks of cleared timers have run by then.
  await new Promise((resolve) => setImmediate(resolve));
  return [...liveTimers].filter((id) => !before.has(id)).length;
}

test('a deadline aborts with a TimeoutError once its time is up', async () => {
  const deadline = startDeadline(10, undefined, 'no answer in 10 ms');
  await sleep(40);
  assert.equal(deadline.signal.aborted, true);
  assert.equal((deadline.signal.reason as DOMException).name, 'TimeoutError');
  assert.equal((deadline.signal.reason as DOMException).message, 'no answer in 10 ms');
});

test('a cleared deadline never fires, and its timer is gone at once', async () => {
  let deadline = startDeadline(1);
  const left = await timersLeftBy(async () => {
    deadline = startDeadline(60_000);
    deadline.clear();
  });
  // An AbortSignal.timeout's would still be alive here, for its whole minute.
  assert.equal(left, 0);
  assert.equal(deadline.signal.aborted, false);
  const short = startDeadline(10);
  short.clear();
  await sleep(40);
  assert.equal(short.signal.aborted, false);
});

test('the parent aborts it with its own reason', () => {
  const parent = new AbortController();
  const deadline = startDeadline(60_000, parent.signal);
  parent.abort(new Error('peer stopping'));
  assert.equal((deadline.signal.reason as Error).message, 'peer stopping');
  deadline.clear();
});

test('withDeadline clears the timer whether the work succeeds or fails', async () => {
  const left = await timersLeftBy(async () => {
    assert.equal(await withDeadline(60_000, undefined, async () => 7), 7);
    await assert.rejects(withDeadline(60_000, undefined, async () => { throw new Error('refused'); }), /refused/);
  });
  assert.equal(left, 0);
});
