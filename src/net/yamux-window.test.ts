import { test } from 'node:test';
import assert from 'node:assert/strict';
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import { windowUpdateDue } from './yamux-window.ts';

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

test('the library stream sends updates through the half-window rule', () => {
  const sent: Array<{ flag: number; length: number }> = [];
  const record = (header: { flag: number; length: number }): boolean => sent.push(header) > 0;
  const fields = {
    state: 3,
    recvWindow: 1024,
    recvWindowCapacity: 1024,
    maxStreamWindowSize: 4096,
    epochStart: 0,
    streamId: 7,
    getRTT: () => -1,
    getSendFlags: () => 0,
    sendFrame: record,
  };
  const sendWindowUpdate = (YamuxStream.prototype as unknown as { sendWindowUpdate(this: typeof fields): void }).sendWindowUpdate;
  fields.recvWindowCapacity = 700;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 0, 'a third of the window consumed: no update');
  fields.recvWindowCapacity = 400;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 1);
  assert.equal(sent[0]!.length, 624, 'the update restores the whole window');
  assert.equal(fields.recvWindowCapacity, 1024);
  fields.state = 5;
  fields.recvWindowCapacity = 0;
  sendWindowUpdate.call(fields);
  assert.equal(sent.length, 1, 'a paused stream sends nothing');
});

test('a stream without the fields this relies on gets the library behaviour', () => {
  const sendWindowUpdate = (YamuxStream.prototype as unknown as { sendWindowUpdate(this: object): void }).sendWindowUpdate;
  // No recvWindow fields: our rule would send nothing; the library's own code sends an update frame.
  let sentByLibrary = 0;
  const stream = { state: 3, streamId: 1, epochStart: 0, getRTT: () => -1, getSendFlags: () => 0, sendFrame: () => (sentByLibrary += 1) > 0 };
  sendWindowUpdate.call(stream);
  assert.equal(sentByLibrary, 1);
});
