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

test('POST /api/forget-site?site=NAME: 200 with the debt dropped, 409 while the site is alive or without a mesh, 404 unknown, 400 unnamed', async (t) => {
  const forgot: string[] = [];
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => ({}),
    isHealthy: () => true,
    forgetSite: (site) => {
      if (site === 'site-up') return { outcome: 'alive' };
      if (site !== 'site-gone') return { outcome: 'unknown' };
      forgot.push(site);
      return { outcome: 'forgotten', debtEntriesDropped: 12 };
    },
  });
  t.after(() => server.stop());
  const post = (query: string) => fetch(`http://127.0.0.1:${server.port}/api/forget-site${query}`, { method: 'POST' });
  const ok = await post('?site=site-gone');
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { status: 'site site-gone forgotten', debtEntriesDropped: 12 });
  assert.deepEqual(forgot, ['site-gone']);
  assert.equal((await post('?site=site-up')).status, 409);
  assert.equal((await post('?site=site-x')).status, 404);
  assert.equal((await post('')).status, 400);
  assert.equal((await post('?site=a%20b')).status, 400);
  assert.equal((await post('?site=site-gone&site=site-x')).status, 400, 'one site at a time');
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/api/forget-site?site=site-gone`)).status, 405);

  const alone = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true });
  t.after(() => alone.stop());
  const noMesh = await fetch(`http://127.0.0.1:${alone.port}/api/forget-site?site=site-gone`, { method: 'POST' });
  assert.equal(noMesh.status, 409);
  assert.equal(((await noMesh.json()) as { code: string }).code, 'ERR_NO_MESH');
});
