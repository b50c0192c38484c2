/**
 * Two mesh nodes joined through a slow WAN link (test/support/throttle-proxy.ts: 100 KB/s each way, 25 ms
 * one way, a 64 KiB router queue): what a copy in flight does to the receiver's view of its sender.
 */
import '../polyfill.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo } from 'node:net';
import { startThrottleProxy } from '../../test/support/throttle-proxy.ts';

const linkBytesPerSecond = 100_000;

test('the throttle proxy passes bytes intact, in order, no faster than its rate', { timeout: 20_000 }, async () => {
  let received = Buffer.alloc(0);
  const done = Promise.withResolvers<void>();
  const sent = Buffer.alloc(300_000);
  for (let i = 0; i < sent.length; i++) sent[i] = i % 251;
  const target = createServer((socket) => {
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= sent.length) done.resolve();
    });
  });
  target.listen(0, '127.0.0.1');
  await once(target, 'listening');
  const proxy = await startThrottleProxy({ targetPort: (target.address() as AddressInfo).port, bytesPerSecond: 200_000, latencyMs: 20 });
  const client = connect(proxy.port, '127.0.0.1');
  try {
    await once(client, 'connect');
    const startedMs = performance.now();
    client.write(sent);
    await done.promise;
    const tookMs = performance.now() - startedMs;
    // 300 KB at 200 KB/s: 1.5 s, less the first piece (it leaves at once).
    assert.ok(tookMs >= 1400, `took ${Math.round(tookMs)} ms`);
    assert.ok(received.equals(sent), 'bytes intact and in order');
    assert.equal(proxy.stats.forwardBytes, sent.length);
    assert.deepEqual([proxy.stats.connectionsOpened, proxy.stats.connectionsClosed], [1, 0]);
  } finally {
    client.destroy();
    await proxy.close();
    target.close();
  }
});
