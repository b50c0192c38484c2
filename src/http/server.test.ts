/** The operators' HTTP port: status codes by resource and method, and its bound on open connections. */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import type { ForgetPeerOutcome } from '../actors/balancer/actor.ts';
import { silentLogger } from '../actors/runtime/logger.ts';
import { recordingLogger, type RecordedLine } from '../../test/support/recording-logger.ts';
import { createDicomWebStats } from './dicomweb/context.ts';
import { startHttpServer } from './server.ts';
import { within } from '../../test/support/wait.ts';

test('a path that is no resource is 404 whatever the method; a resource asked with another method is 405 with Allow', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({ instances: 0 }), isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const base = `http://127.0.0.1:${server.port}`;
  assert.equal((await fetch(`${base}/nothing`, { method: 'POST' })).status, 404);
  assert.equal((await fetch(`${base}/`, { method: 'POST' })).status, 405, 'the status page is a resource');
  assert.equal((await fetch(`${base}/nothing`, { method: 'DELETE' })).status, 404);
  const wrong = await fetch(`${base}/healthz`, { method: 'DELETE' });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get('allow'), 'GET, HEAD');
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  assert.deepEqual(await (await fetch(`${base}/api/mesh`)).json(), { instances: 0 });
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200, 'GET / is the status page');
  assert.equal(page.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.match(await page.text(), /<td>0<\/td>/, 'the page shows the instance count');
  assert.equal((await fetch(`${base}/`, { method: 'HEAD' })).status, 200, 'HEAD / as GET');
  const metrics = await fetch(`${base}/metrics`);
  assert.equal(metrics.status, 200, 'GET /metrics: the same figures for Prometheus');
  assert.equal(metrics.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  const exposition = await metrics.text();
  assert.match(exposition, /^pacs_mesh_instances 0$/m);
  assert.match(exposition, /^process_resident_memory_bytes \d+$/m);
  assert.equal((await fetch(`${base}/metrics`, { method: 'POST' })).status, 405);
});

test('connections beyond maxConnections are closed at once, and served again once others close', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger, maxConnections: 2, maxConnectionsPerClient: 2 });
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

test('one client holds at most its share of the connections: beyond it a 503, while another address still gets in (hunt 85: slow uploads took them all)', async (t) => {
  let healthChecks = 0;
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => (healthChecks++, true), log: silentLogger, maxConnections: 8, maxConnectionsPerClient: 2 });
  t.after(() => server.stop());
  const held: Socket[] = [];
  t.after(() => held.forEach((socket) => socket.destroy()));
  for (let i = 0; i < 2; i++) {
    const socket = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
    await new Promise((resolve) => socket.once('connect', resolve));
    held.push(socket);
  }
  const third = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
  held.push(third);
  const answer = await new Promise<string>((resolve) => {
    let text = '';
    third.on('data', (chunk) => (text += chunk.toString()));
    third.on('close', () => resolve(text));
  });
  assert.match(answer, /^HTTP\/1\.1 503 /);
  assert.match(answer, /ERR_HTTP_TOO_MANY_CONNECTIONS/);
  // A client that ignores the half-close and goes on sending is cut, and what it sends is not served.
  const stubborn = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.2', allowHalfOpen: true });
  held.push(stubborn);
  let stubbornClosed = false;
  stubborn.on('error', () => undefined);
  stubborn.on('close', () => (stubbornClosed = true));
  await new Promise((resolve) => stubborn.once('connect', resolve));
  const healthChecksBefore = healthChecks;
  for (let i = 0; i < 5 && !stubbornClosed; i++) {
    stubborn.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 300));
  }
  assert.ok(stubbornClosed, 'the refused connection is closed both ways');
  assert.equal(healthChecks, healthChecksBefore, 'nothing it sent was served');
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/healthz`, { signal: AbortSignal.timeout(2000) })).status, 200, 'another address is served');
  held[0]!.destroy();
  await new Promise((r) => setTimeout(r, 100));
  const again = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.2' });
  held.push(again);
  await new Promise((resolve) => again.once('connect', resolve));
  again.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const served = await new Promise<string>((resolve) => {
    let text = '';
    again.on('data', (chunk) => (text += chunk.toString()));
    again.on('close', () => resolve(text));
  });
  assert.match(served, /^HTTP\/1\.1 200 /, 'a freed connection is its own again');
});

test('POST /api/forget-site?site=NAME: 200 with the debt dropped, 409 while the site is alive or without a mesh, 404 unknown, 400 unnamed', async (t) => {
  const forgot: string[] = [];
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => ({}),
    isHealthy: () => true,
    log: silentLogger,
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

  const alone = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger });
  t.after(() => alone.stop());
  const noMesh = await fetch(`http://127.0.0.1:${alone.port}/api/forget-site?site=site-gone`, { method: 'POST' });
  assert.equal(noMesh.status, 409);
  assert.equal(((await noMesh.json()) as { code: string }).code, 'ERR_NO_MESH');
});

test('POST /api/forget-peer?peer=PEERID: 200 forgotten, 409 up, self, pinned or without a mesh, 404 not in the roster, 400 malformed', async (t) => {
  const ghost = '12D3KooWGhostGhostGhostGhostGhostGhostGhostGhostGhost';
  const outcomes: Record<string, ForgetPeerOutcome> = { [ghost]: 'forgotten', '12D3KooWUpUpUpUpUpUpUpUpUpUpUp': 'up', '12D3KooWThisPeerThisPeerThisPeer': 'self', '12D3KooWPinnedPinnedPinned': 'pinned' };
  const asked: string[] = [];
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => ({}),
    isHealthy: () => true,
    log: silentLogger,
    forgetPeer: (peerId) => {
      asked.push(peerId);
      return outcomes[peerId] ?? 'unknown';
    },
  });
  t.after(() => server.stop());
  const post = (query: string) => fetch(`http://127.0.0.1:${server.port}/api/forget-peer${query}`, { method: 'POST' });
  const ok = await post(`?peer=${ghost}`);
  assert.equal(ok.status, 200);
  assert.match(((await ok.json()) as { status: string }).status, /leaves the election roster/);
  const codes: Array<[string, number, string]> = [];
  for (const peer of Object.keys(outcomes).slice(1).concat('12D3KooWSomebodyNewSomebodyNew')) {
    const r = await post(`?peer=${peer}`);
    codes.push([peer, r.status, ((await r.json()) as { code: string }).code]);
  }
  assert.deepEqual(codes.map(([, status, code]) => [status, code]), [[409, 'ERR_PEER_UP'], [409, 'ERR_PEER_SELF'], [409, 'ERR_ROSTER_PINNED'], [404, 'ERR_PEER_UNKNOWN']]);
  const askedBefore = asked.length;
  for (const bad of ['', '?peer=short', '?peer=12D3KooW0OIl0OIl0OIl0OIl', `?peer=${ghost}&peer=${ghost}`, `?peer=${'1'.repeat(200)}`]) assert.equal((await post(bad)).status, 400, bad);
  assert.equal(asked.length, askedBefore, 'malformed requests never reach the balancer');
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/api/forget-peer?peer=${ghost}`)).status, 405);

  const alone = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger });
  t.after(() => alone.stop());
  const noMesh = await fetch(`http://127.0.0.1:${alone.port}/api/forget-peer?peer=${ghost}`, { method: 'POST' });
  assert.equal(noMesh.status, 409);
  assert.equal(((await noMesh.json()) as { code: string }).code, 'ERR_NO_MESH');
});

/** What the server writes back to `request` sent as raw bytes on a connection of its own, until it closes it. */
function rawAnswer(port: number, request: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(request));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

test('requests the HTTP parser refuses get a status with a JSON body: headers over 16 KiB (431), an unknown method (400)', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const raw = (request: string) => rawAnswer(server.port, request);
  const oversized = await raw(`GET /dicom-web/studies?PatientName=${'x'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  assert.match(oversized, /^HTTP\/1\.1 431 /);
  assert.match(oversized, /"code":"ERR_HTTP_HEADERS_TOO_LARGE"/);
  const unknown = await raw('FOO / HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.match(unknown, /^HTTP\/1\.1 400 /);
  assert.match(unknown, /"code":"ERR_HTTP_MALFORMED"/);
});

test('resources are found by the path with its dot-segments removed, as they read it (hunt 196: /dicom-web/../../etc/passwd reached DICOMweb, which named "d" not found)', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const raw = (request: string) => rawAnswer(server.port, request);
  assert.match(await raw('GET /dicom-web/../healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
  const outside = await raw('GET /dicom-web/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.match(outside, /^HTTP\/1\.1 404 /);
  assert.match(outside, /no resource at \/etc\/passwd/);
  // A path starting with two slashes stays a path (its first segment is no host).
  assert.match(await raw('GET //healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 404 [\s\S]*no resource at \/\/healthz/);
});

test('requests pipelined before one the parser refuses are answered first, in order, then the refusal (hunt 191: only the refusal went out)', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({ self: { site: 's' } }), isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const raw = (request: string) => rawAnswer(server.port, request);
  const statusLines = (answer: string) => answer.match(/HTTP\/1\.1 \d+ [^\r]*/g) ?? [];
  const asks = (n: number) => 'GET /api/mesh HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(n);
  const garbage = await raw(`${asks(3)}GARBAGE\r\n\r\n`);
  assert.deepEqual(statusLines(garbage), ['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 400 Bad Request']);
  assert.match(garbage, /"code":"ERR_HTTP_MALFORMED"/);
  const oversized = await raw(`${asks(1)}GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(20_000)}\r\n\r\n`);
  assert.deepEqual(statusLines(oversized), ['HTTP/1.1 200 OK', 'HTTP/1.1 431 Request Header Fields Too Large']);
});

test('Host: none in HTTP/1.1, two, or one that is no host[:port] is a 400 with a JSON body; CONNECT a 405; an unknown Expect a 417 (hunt 191)', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const raw = (request: string) => rawAnswer(server.port, request);
  for (const [request, pattern] of [
    ['GET /healthz HTTP/1.1\r\n\r\n', /needs a Host header/],
    ['GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', /more than one Host header/],
    ['GET /healthz HTTP/1.1\r\nHost: <script>"x\r\n\r\n', /no host\[:port\]/],
  ] as const) {
    const answer = await raw(request);
    assert.match(answer, /^HTTP\/1\.1 400 /, request);
    assert.match(answer, /"code":"ERR_HTTP_HOST"/, request);
    assert.match(answer, pattern, request);
  }
  assert.match(await raw('GET /healthz HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 200 /, 'HTTP/1.0 needs none');
  assert.match(await raw('GET /healthz HTTP/1.1\r\nHost: pacs_mesh:8042\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /, 'a Docker service name');
  const proxied = await raw('CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n');
  assert.match(proxied, /^HTTP\/1\.1 405 /);
  assert.match(proxied, /"code":"ERR_HTTP_METHOD"/);
  const expecting = await raw('GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n');
  assert.match(expecting, /^HTTP\/1\.1 417 /);
  assert.match(expecting, /"code":"ERR_HTTP_EXPECTATION"/);
});

test('headers trickled past their timeout get a 408 and the connection is closed both ways, though the client goes on sending (hunt 185)', async (t) => {
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger, maxConnectionsPerClient: 1, headersTimeoutMs: 300 });
  t.after(() => server.stop());
  // One header line every 50 ms, never the blank line that ends them: the 408 came, but its half-close
  // was ignored and the connection stayed, holding its client's share of the connections for good.
  const trickler = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.5', allowHalfOpen: true });
  t.after(() => trickler.destroy());
  let answer = '';
  let closed = false;
  trickler.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
  trickler.on('error', () => undefined);
  trickler.on('close', () => (closed = true));
  await new Promise((resolve) => trickler.once('connect', resolve));
  trickler.write('GET /healthz HTTP/1.1\r\nhost: x\r\n');
  for (let i = 0; i < 60 && !closed; i++) {
    if (!trickler.destroyed) trickler.write(`x-line-${i}: y\r\n`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.match(answer, /^HTTP\/1\.1 408 /);
  assert.match(answer, /"code":"ERR_HTTP_REQUEST_TIMEOUT"/);
  assert.ok(closed, 'the connection was kept open while the client went on sending');
  // Its place is free again: the same address is served.
  const health = await new Promise<string>((resolve) => {
    const socket = connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.5' }, () => socket.end('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n'));
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    socket.on('close', () => resolve(text));
  });
  assert.match(health, /^HTTP\/1\.1 200 /);
});

test('a request that times out while its answer is being sent is cut, not followed by a 408 written into that answer', async (t) => {
  // A large status the client does not read yet: its response is under way when the request's body, announced
  // and never sent, times out.
  const bigStatus = { filler: 'x'.repeat(8 * 1024 * 1024) };
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => bigStatus, isHealthy: () => true, log: silentLogger, requestTimeoutMs: 300, headersTimeoutMs: 300 });
  t.after(() => server.stop());
  const socket = connect(server.port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /api/mesh HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n');
  socket.pause();
  await new Promise((r) => setTimeout(r, 1500));
  let answer = '';
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
  socket.resume();
  await within('the connection to close', 10_000, closed);
  assert.match(answer, /^HTTP\/1\.1 200 /);
  // Not assert.doesNotMatch: its failure would print the 8 MiB answer.
  assert.ok(!answer.includes('HTTP/1.1 408 '), `a 408 was written into the answer, ${answer.indexOf('HTTP/1.1 408 ')} bytes in`);
});

test('a stop refuses new connections and closes idle ones at once, lets a request in flight finish, and answers one more on its connection 503', async () => {
  let entered!: () => void;
  const inFlight = new Promise<void>((resolve) => (entered = resolve));
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => {
      entered();
      await gate;
      return { instances: 7 };
    },
    isHealthy: () => true,
    log: silentLogger,
  });
  const idle = connect(server.port, '127.0.0.1');
  idle.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
  await new Promise((resolve) => idle.once('data', resolve));
  const idleClosed = new Promise((resolve) => idle.once('close', resolve));
  const busy = connect(server.port, '127.0.0.1');
  let answers = '';
  busy.on('data', (chunk: Buffer) => (answers += chunk.toString('latin1')));
  const busyClosed = new Promise((resolve) => busy.once('close', resolve));
  busy.write('GET /api/mesh HTTP/1.1\r\nhost: x\r\n\r\n');
  await inFlight;
  const stopped = server.stop(10_000);
  await idleClosed;
  await assert.rejects(fetch(`http://127.0.0.1:${server.port}/healthz`, { signal: AbortSignal.timeout(2000) }));
  busy.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
  await new Promise((r) => setTimeout(r, 100));
  release();
  const started = Date.now();
  await busyClosed;
  await stopped;
  // Half the 10 s grace: a stop held for it is told apart, and a loaded machine's slow close is not.
  assert.ok(Date.now() - started < 5000, 'the stop waited for the grace period though nothing was in flight');
  const [first, second] = answers.split(/(?=HTTP\/1\.1 )/);
  assert.match(first ?? '', /^HTTP\/1\.1 200 /);
  assert.match(first ?? '', /"instances":7/);
  assert.match(second ?? '', /^HTTP\/1\.1 503 /);
  assert.match(second ?? '', /ERR_HTTP_STOPPING/);
  assert.match(second ?? '', /connection: close/i);
});

test('a request still in flight when the grace period ends is cut, and the stop returns', async () => {
  let entered!: () => void;
  const inFlight = new Promise<void>((resolve) => (entered = resolve));
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: () => {
      entered();
      return new Promise(() => undefined);
    },
    isHealthy: () => true,
    log: silentLogger,
  });
  const request = fetch(`http://127.0.0.1:${server.port}/api/mesh`);
  request.catch(() => undefined);
  await inFlight;
  const started = Date.now();
  await server.stop(300);
  assert.ok(Date.now() - started >= 250 && Date.now() - started < 2000);
  await assert.rejects(request);
});

test('a request sent on a kept-alive connection while the peer was held past the keep-alive timeout is answered, not reset', async (t) => {
  // Node destroys a socket whose keep-alive timeout fired in the loop's timers phase before it reads the bytes
  // that arrived meanwhile: a peer paused (SIGSTOP) or stalled for over 5 s reset requests its clients sent in time.
  // A keep-alive timeout of 2 s rather than the default 5 s: the same race, the loop held 1 s past it as before
  // (12 s a run, now 6). With a 1 s timeout held 1.5 s the test passed without the fix: keep the 1 s margin.
  const keepAliveTimeoutMs = 2000;
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger, keepAliveTimeoutMs });
  t.after(() => server.stop());
  const socket = connect(server.port, '127.0.0.1');
  let answers = '';
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.on('error', () => undefined);
  const secondAnswered = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      const first = answers === '';
      answers += chunk.toString('latin1');
      if (first) {
        // Once the server has set its keep-alive timer, the second request is sent and this process's loop
        // (the peer's, too) held past the keep-alive timeout, as a pause would; the hold ends in the loop's check phase,
        // so the timers phase comes before the server could read the request.
        setTimeout(() => setImmediate(() => {
          socket.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, keepAliveTimeoutMs + 1000);
        }), 100);
      }
      if ((answers.match(/HTTP\/1\.1 200 /g) ?? []).length === 2) resolve();
    });
  });
  socket.write('GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n');
  const outcome = await Promise.race([secondAnswered.then(() => 'answered'), closed.then(() => 'closed')]);
  assert.equal(outcome, 'answered', `the second request was not answered: ${JSON.stringify(answers)}`);
  // A connection on which nothing arrives is still closed by its keep-alive timeout.
  const idleClosed = await within('the idle connection to close', keepAliveTimeoutMs * 8, closed.then(() => true)).catch(() => false);
  socket.destroy();
  assert.equal(idleClosed, true, 'the idle connection was not closed by the keep-alive timeout');
});

test('requests pipelined on one connection are handled a few at a time: beyond, a 503 and the connection closes (one write of 20,000 searches took 500 MiB)', async (t) => {
  let running = 0;
  let runningMax = 0;
  let calls = 0;
  const meshStatus = async () => {
    calls++;
    running++;
    runningMax = Math.max(runningMax, running);
    await new Promise((resolve) => setTimeout(resolve, 200));
    running--;
    return {};
  };
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus, isHealthy: () => true, log: silentLogger });
  t.after(() => server.stop());
  const socket = connect(server.port, '127.0.0.1');
  t.after(() => socket.destroy());
  let text = '';
  socket.on('data', (chunk) => (text += chunk.toString('latin1')));
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.write('GET /api/mesh HTTP/1.1\r\nhost: x\r\n\r\n'.repeat(200));
  // Up to 3 s for the close; within() clears its timer (a bare one kept the file's process 2.7 s past its last test).
  await within('the connection to close', 3000, closed).catch(() => undefined);
  assert.ok(runningMax <= 16, `${runningMax} requests of one connection ran at once`);
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
  assert.ok(statuses.length > 0 && statuses.slice(0, runningMax).every((status) => status === 200), 'the first ones are answered');
  assert.equal(statuses.at(-1), 503);
  assert.match(text, /ERR_HTTP_PIPELINING/);
  assert.ok(calls <= 16);
});

test('every 500 this server answers is logged once, with what failed; a DICOMweb bug too, once', async (t) => {
  const lines: RecordedLine[] = [];
  const log = recordingLogger([], {}, lines);
  const broken = () => {
    throw new Error('a bug in the status');
  };
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => broken(),
    isHealthy: () => true,
    log,
    // Any use of this context is a bug DICOMweb does not expect (not a DicomWebError).
    dicomWeb: new Proxy({ stats: createDicomWebStats(), log, searchElsewhere: () => undefined, sitesDown: () => [] }, { get: (target, key) => (key in target ? target[key as keyof typeof target] : broken()) }) as never,
  });
  t.after(() => server.stop());
  for (const path of ['/', '/api/mesh', '/dicom-web/studies']) {
    const response = await fetch(`http://127.0.0.1:${server.port}${path}`);
    assert.equal(response.status, 500, path);
    assert.equal(((await response.json()) as { code: string }).code, 'ERR_HTTP_INTERNAL', path);
  }
  assert.deepEqual(
    lines.map((l) => [l.message, l.fields?.path, l.fields?.error]),
    [
      ['HTTP request failed: answered 500', '/', 'a bug in the status'],
      ['HTTP request failed: answered 500', '/api/mesh', 'a bug in the status'],
      ['HTTP request failed: answered 500', '/dicom-web/studies', 'a bug in the status'],
    ],
  );
});
