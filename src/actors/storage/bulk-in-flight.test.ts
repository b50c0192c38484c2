/** The copies in flight per peer (bulk-in-flight.ts): what a custody message to that peer waits behind. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BulkInFlight } from './bulk-in-flight.ts';

test('copies in flight: drained "now" while one is in flight, at the last end after, -Infinity for a peer never sent to; each tracker its own', () => {
  const bulk = new BulkInFlight();
  assert.equal(bulk.drainedAtMs('peer-a'), Number.NEGATIVE_INFINITY);
  const first = bulk.started('peer-a');
  const second = bulk.started('peer-a');
  first();
  first();
  const whileOneLeft = bulk.drainedAtMs('peer-a');
  assert.ok(whileOneLeft >= performance.now() - 1, 'one copy is still in flight (ending twice counts once)');
  second();
  const endedAtMs = bulk.drainedAtMs('peer-a');
  assert.ok(endedAtMs <= performance.now());
  assert.equal(bulk.drainedAtMs('peer-a'), endedAtMs, 'stays at the last end');
  assert.equal(new BulkInFlight().drainedAtMs('peer-a'), Number.NEGATIVE_INFINITY, 'another node tracks its own copies');
  bulk.stop();
  assert.equal(bulk.peerCount, 0);
  assert.equal(bulk.drainedAtMs('peer-a'), Number.NEGATIVE_INFINITY, 'forgotten once stopped');
});
