import assert from 'node:assert/strict';
import { test } from 'node:test';
import { takeNextSend } from './send-queue.ts';

test('custody sends: a destination with its streams all in flight is passed over, the next one goes; messages stay in order, bounded per stream', () => {
  const queue = [
    { to: 'slow', message: 1 },
    { to: 'fast', message: 2 },
    { to: 'slow', message: 3 },
    { to: 'fast', message: 4 },
    { to: 'fast', message: 5 },
  ];
  assert.deepEqual(takeNextSend(queue, new Map([['slow', 2]]), 2, 2), { to: 'fast', messages: [2, 4] });
  assert.deepEqual(queue.map((q) => q.message), [1, 3, 5]);
  assert.deepEqual(takeNextSend(queue, new Map([['slow', 1]]), 2, 64), { to: 'slow', messages: [1, 3] });
  assert.equal(takeNextSend(queue, new Map([['fast', 2]]), 2, 64), undefined, 'only a destination at its bound is left');
  assert.deepEqual(queue.map((q) => q.message), [5]);
});
