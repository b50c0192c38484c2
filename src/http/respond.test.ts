/** closeWithConnection: a response queued on a pipelining connection hears of the connection's end. */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { endAndDrain } from './dicomweb/context.ts';
import { closeWithConnection } from './respond.ts';

test('a response queued behind another on a pipelining connection settles its endAndDrain when the connection closes', async (t) => {
  const outcomes: string[] = [];
  let secondQueued!: () => void;
  const queued = new Promise<void>((resolve) => (secondQueued = resolve));
  const responses: ServerResponse[] = [];
  const server = createServer((req, res) => {
    closeWithConnection(req, res);
    responses.push(res);
    // The first never ends; the second is answered whole and waits to be sent (as a search's body does).
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-length': 10 });
      res.write('a');
      return;
    }
    void endAndDrain(res, new Uint8Array(5)).then(() => outcomes.push('settled'));
    secondQueued();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /queued HTTP/1.1\r\nhost: x\r\n\r\n');
  await queued;
  socket.destroy();
  for (let i = 0; i < 50 && outcomes.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(outcomes, ['settled'], 'the queued response never heard that its connection closed');
  assert.equal(responses.length, 2, 'both requests reached the handler');
});
