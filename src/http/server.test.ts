/** The operators' HTTP port: status codes by resource and method, and its bound on open connections. */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { startHttpServer } from './server.ts';

test('a path that is no resource is 404 whatever the method; a resource asked with another method is 405 with Allow', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({ instances: 0 }), isHealthy: () => true });
  t.after(() => server.stop());
  const base = `http://127.0.0.1:${server.port}`;
  assert.equal((await fetch(`${base}/`, { method: 'POST' })).status, 404);
  assert.equal((await fetch(`${base}/nothing`, { method: 'DELETE' })).status, 404);
  const wrong = await fetch(`${base}/healthz`, { method: 'DELETE' });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get('allow'), 'GET, HEAD');
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  assert.deepEqual(await (await fetch(`${base}/api/mesh`)).json(), { instances: 0 });
});

test('connections beyond maxConnections are closed at once, and served again once others close', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, maxConnections: 2 });
  t.after(() => server.stop());
  const idle: Socket[] = [];
  for (let i = 0; i < 2; i++) {
    const socket = connect(server.port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    idle.push(socket);
  }
  await new Promise((r) => setTimeout(r, 100));
  await assert.rejects(fetch(`http://127.0.0.1:${server.port}/healthz`, { signal: AbortSignal.timeout(2000) }));
  for (const socket of idle) socket.destroy();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/healthz`, { signal: AbortSignal.timeout(2000) })).status, 200);
});
