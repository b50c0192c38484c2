import { test } from 'node:test';
import assert from 'node:assert/strict';
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import { receiveWindowMinBytes, receiveWindowQueueMs, tunedReceiveWindow, windowUpdateDue } from './yamux-window.ts';

test('a window update waits until half the receive window is consumed', () => {
  const window = 256 * 1024;
  assert.equal(windowUpdateDue(window, window, 0), false, 'nothing consumed');
  assert.equal(windowUpdateDue(window, window - 65_507, 0), false, 'one data frame');
  assert.equal(windowUpdateDue(window, window / 2 + 1, 0), false, 'just under half');
  assert.equal(windowUpdateDue(window, window / 2, 0), true, 'half');
  assert.equal(windowUpdateDue(window, 0, 0), true, 'all of it');
});

test('a frame with a flag (SYN or ACK) always goes out', () => {
  assert.equal(windowUpdateDue(256 * 1024, 256 * 1024, 1), true);
  assert.equal(windowUpdateDue(256 * 1024, 256 * 1024, 2), true);
});

test('a window becomes its last epoch\'s arrival rate times the queue time, within its bounds', () => {
  const maxBytes = 4 * 1024 * 1024;
  assert.equal(tunedReceiveWindow(128 * 1024, 1, maxBytes), maxBytes, 'half a window in a millisecond (loopback): the cap at once');
  assert.equal(tunedReceiveWindow(128 * 1024, 1310, maxBytes), Math.round((128 * 1024 * receiveWindowQueueMs) / 1310), '100 KB/s: a second of it');
  assert.equal(tunedReceiveWindow(50_000, 100, maxBytes), 500_000, 'a window that limits its stream grows by the queue time over the epoch');
  assert.equal(tunedReceiveWindow(1000, 60_000, maxBytes), receiveWindowMinBytes, 'an idle epoch: the floor');
  assert.equal(tunedReceiveWindow(1000, 0, maxBytes), 1_000_000, 'no time elapsed counts as a millisecond');
});

/** A library stream's fields as the window update reads them, at `nowMs` epoch start. */
function streamFields(recvWindow: number, epochStart: number) {
  const sent: Array<{ flag: number; length: number }> = [];
  const fields = {
    state: 3,
    recvWindow,
    recvWindowCapacity: recvWindow,
    maxStreamWindowSize: 4 * 1024 * 1024,
    epochStart,
    streamId: 7,
    getRTT: () => -1,
    getSendFlags: () => 0,
    sendFrame: (header: { flag: number; length: number }): boolean => sent.push(header) > 0,
  };
  return { fields, sent };
}

const sendWindowUpdate = (YamuxStream.prototype as unknown as { sendWindowUpdate(this: object): void }).sendWindowUpdate;

test('the library stream sends updates through the half-window rule, sized by the arrival rate', () => {
  const window = 256 * 1024;
  // Epochs a second long: the arrival rate in bytes per second is what arrived in it.
  const { fields, sent } = streamFields(window, Date.now() - 1000);
  fields.recvWindowCapacity = window - 80 * 1024;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 0, 'under half the window consumed: no update');
  fields.recvWindowCapacity = window - 200_000;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 1);
  assert.ok(Math.abs(fields.recvWindow - 200_000) < 2000, `200 KB in ~1 s: a window of ~200 KB (${fields.recvWindow})`);
  assert.equal(sent[0]!.length, fields.recvWindow - (window - 200_000), 'the update restores the whole (new) window');
  assert.equal(fields.recvWindowCapacity, fields.recvWindow);
  fields.state = 5;
  fields.recvWindowCapacity = 0;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 1, 'a paused stream sends nothing');
  fields.state = 3;
  fields.epochStart -= 10_000;
  const before = fields.recvWindow;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 2, 'resumed: the update goes out');
  assert.equal(fields.recvWindow, before, 'an epoch with a pause in it says nothing of the link: the window is kept');
});

test('a window larger than the link needs shrinks as its sender uses up what it was granted', () => {
  const window = 4 * 1024 * 1024;
  const { fields, sent } = streamFields(window, Date.now() - 21_000);
  // Half of it over 21 s (100 KB/s): the sender still holds 2 MiB, more than the new window.
  fields.recvWindowCapacity = window / 2;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 0, 'nothing granted while the sender holds more than the new window');
  assert.ok(fields.recvWindow < 120_000, `the window follows the rate (${fields.recvWindow})`);
  const shrunk = fields.recvWindow;
  // The sender uses up its credit at the same rate: once it holds half the new window, an update.
  fields.epochStart = Date.now() - 20_500;
  fields.recvWindowCapacity = Math.floor(shrunk / 2);
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 1);
  assert.ok(fields.recvWindowCapacity <= 120_000, `the sender holds ~a second of the link again (${fields.recvWindowCapacity})`);
});

/**
 * A stream at 100 KB/s after its first update: 60 KB of a 100 KB window in 0.6 s (not exactly half: a
 * millisecond more made the window 99,800 bytes, under twice what its sender had used, and no update went
 * out on a loaded machine). `steadyBytes`: its window then, about a second of the link.
 */
function steadySlowStream(): ReturnType<typeof streamFields> & { steadyBytes: number } {
  const stream = streamFields(100_000, Date.now() - 600);
  stream.fields.recvWindowCapacity = 40_000;
  sendWindowUpdate.call(stream.fields);
  assert.equal(stream.sent.length, 1);
  const steadyBytes = stream.fields.recvWindow;
  assert.ok(Math.abs(steadyBytes - 100_000) < 10_000, `a second of the link (${steadyBytes})`);
  return { ...stream, steadyBytes };
}

test('frames read back to back after a stall do not take a slow stream\'s window to the cap (hunt 127)', () => {
  const { fields, sent, steadyBytes } = steadySlowStream();
  // The event loop stalls 700 ms: the next half window arrives in 0.5 s and is read 0.7 s later ...
  fields.epochStart = Date.now() - 1200;
  fields.recvWindowCapacity -= steadyBytes / 2;
  sendWindowUpdate.call(fields);
  // ... and the half after it, already in the socket's buffer, at once.
  fields.recvWindowCapacity -= steadyBytes / 2;
  sendWindowUpdate.call(fields);
  // Over that last epoch alone this was the 4 MiB cap: ~40 s of the link handed to the sender's socket.
  assert.ok(fields.recvWindow <= steadyBytes, `the window stays about a second of the link (${fields.recvWindow})`);
  assert.ok(sent.every(({ length }) => length <= steadyBytes), `granted ${sent.map(({ length }) => length).join(', ')} bytes`);
});

test('on loopback the window reaches the cap at the first update, and again right after a stall', () => {
  const window = 256 * 1024;
  const { fields } = streamFields(window, Date.now());
  fields.recvWindowCapacity = window / 2;
  sendWindowUpdate.call(fields);
  assert.equal(fields.recvWindow, fields.maxStreamWindowSize, 'half a window within a millisecond or so');
  // A 2 s stall: the window follows that epoch down, then two quick epochs bring it back to the cap.
  fields.epochStart = Date.now() - 2000;
  fields.recvWindowCapacity -= fields.recvWindow / 2;
  sendWindowUpdate.call(fields);
  assert.ok(fields.recvWindow < fields.maxStreamWindowSize, `after the stall (${fields.recvWindow})`);
  for (let update = 0; update < 2; update++) {
    fields.recvWindowCapacity = 0;
    sendWindowUpdate.call(fields);
  }
  assert.equal(fields.recvWindow, fields.maxStreamWindowSize);
});

test('a stream without the fields this relies on gets the library behaviour', () => {
  // No recvWindow fields: our rule would send nothing; the library's own code sends an update frame.
  let sentByLibrary = 0;
  const stream = { state: 3, streamId: 1, epochStart: 0, getRTT: () => -1, getSendFlags: () => 0, sendFrame: () => (sentByLibrary += 1) > 0 };
  sendWindowUpdate.call(stream);
  assert.equal(sentByLibrary, 1);
});

test('an epoch the wall clock stepped back in keeps the window, and does not count in the next one', () => {
  const { fields, sent, steadyBytes } = steadySlowStream();
  // The system clock steps back a minute (NTP): the epoch looks 59.5 s shorter than nothing.
  fields.epochStart = Date.now() + 59_500;
  fields.recvWindowCapacity -= steadyBytes / 2;
  sendWindowUpdate.call(fields);
  assert.equal(fields.recvWindow, steadyBytes, 'no rate from a negative epoch: the window is kept');
  // The next 60 KB in 0.6 s, as before the step.
  fields.epochStart = Date.now() - 600;
  fields.recvWindowCapacity -= 60_000;
  sendWindowUpdate.call(fields);
  assert.ok(Math.abs(fields.recvWindow - 100_000) < 10_000, `a second of the link, not the cap (${fields.recvWindow})`);
  assert.ok(sent.every(({ length }) => length <= steadyBytes), `granted ${sent.map(({ length }) => length).join(', ')} bytes`);
});

test('a stream whose epoch start is not a number keeps its window (no NaN window)', () => {
  const { fields } = streamFields(256 * 1024, Date.now());
  (fields as { epochStart: unknown }).epochStart = undefined;
  fields.recvWindowCapacity = 0;
  sendWindowUpdate.call(fields);
  assert.equal(fields.recvWindow, 256 * 1024);
  assert.equal(fields.recvWindowCapacity, 256 * 1024);
});
