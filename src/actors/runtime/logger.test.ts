import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRepeatLimiter, errorText, type Logger } from './logger.ts';

test('errorText says what failed for Errors, plain values and the DOM Events some streams reject with', () => {
  assert.equal(errorText(new Error('boom')), 'boom');
  assert.equal(errorText('text'), 'text');
  assert.equal(errorText(undefined), 'undefined');
  assert.equal(errorText(new Event('abort')), 'abort event', 'not "[object Event]"');
  const withError = Object.assign(new Event('error'), { error: new Error('stream reset') });
  assert.equal(errorText(withError), 'stream reset');
});

test('a repeated warning is logged once per interval per key, with the count of those not logged', () => {
  const lines: Array<{ message: string; fields?: Record<string, unknown> }> = [];
  const log: Logger = { info: () => {}, error: () => {}, warn: (message, fields) => lines.push({ message, fields }), child: () => log };
  let nowMs = 0;
  const limiter = createRepeatLimiter(log, 5_000, () => nowMs, 2);
  for (let i = 0; i < 40; i++) limiter.warn('stream failed peer-b', 'custody stream failed', { peer: 'peer-b' });
  limiter.warn('stream failed peer-c', 'custody stream failed', { peer: 'peer-c' });
  nowMs = 5_000;
  limiter.warn('stream failed peer-b', 'custody stream failed', { peer: 'peer-b' });
  assert.deepEqual(lines, [
    { message: 'custody stream failed', fields: { peer: 'peer-b' } },
    { message: 'custody stream failed', fields: { peer: 'peer-c' } },
    { message: 'custody stream failed', fields: { peer: 'peer-b', repeatsNotLogged: 39 } },
  ]);
});

test('a repeated notice keeps its level: info lines are limited the same way', () => {
  const lines: string[] = [];
  const log: Logger = { info: (m) => lines.push(`info ${m}`), error: () => {}, warn: (m) => lines.push(`warn ${m}`), child: () => log };
  const limiter = createRepeatLimiter(log, 5_000, () => 0);
  for (let i = 0; i < 10; i++) limiter.info('push peer-b', 'push failed');
  limiter.warn('replicate peer-b', 'replication failed');
  assert.deepEqual(lines, ['info push failed', 'warn replication failed']);
});
