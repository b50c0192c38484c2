import { test } from 'node:test';
import assert from 'node:assert/strict';
import { errorText } from './logger.ts';

test('errorText says what failed for Errors, plain values and the DOM Events some streams reject with', () => {
  assert.equal(errorText(new Error('boom')), 'boom');
  assert.equal(errorText('text'), 'text');
  assert.equal(errorText(undefined), 'undefined');
  assert.equal(errorText(new Event('abort')), 'abort event', 'not "[object Event]"');
  const withError = Object.assign(new Event('error'), { error: new Error('stream reset') });
  assert.equal(errorText(withError), 'stream reset');
});
