import '../../polyfill.ts';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { generateSwarmKey } from '../../net/swarm-key.ts';
import { tunnelledClientOf } from '../../net/tunnel.ts';
import { silentLogger } from '../runtime/logger.ts';
import { createFrontDoor, type FrontDoor, type RouteResult } from './front-door.ts';
import type { BalancerService } from './actor.ts';
import { waitFor } from '../../../test/support/wait.ts';
import { loopbackAddress, testNodes } from '../../../test/support/mesh-nodes.ts';
import { suiteTeardown } from '../../../test/support/teardown.ts';

type Target = ReturnType<BalancerService['chooseTarget']>;

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}


/**
 * A DICOM port as the lead's listener will run it: route first; when 'local', serve here. The local
 * "association" answers `<name>:` + what it read, so the client sees who served it.
 */
async function dicomPort(name: string, door: () => FrontDoor): Promise<{ port: number; results: RouteResult[]; server: Server }> {
  const results: RouteResult[] = [];
  const server = createServer((socket: Socket) => {
    void door()
      .route(socket)
      .then(async (result) => {
        results.push(result);
        if (result === 'tunnelled') return;
        const client = await tunnelledClientOf(socket);
        socket.once('data', (data: Buffer) => socket.end(`${name}:${data.toString()}${client ? ` via ${client.viaPeerId.slice(-4)}` : ''}`));
      });
  });
  return { port: await listen(server), results, server };
}

function ask(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' }, () => socket.write(text));
    const parts: Buffer[] = [];
    socket.on('data', (c: Buffer) => parts.push(c));
    socket.on('end', () => resolve(Buffer.concat(parts).toString()));
    socket.on('error', reject);
  });
}

describe('front door', { timeout: 60_000 }, () => {
  const nodes = testNodes('pacs-mesh-door-');
  const node = nodes.node;
  // Each test's servers and sockets go when it ends; the nodes, and anything a timed-out test starts late, with the suite.
  const teardown = suiteTeardown(() => nodes.dispose());

  it('serves locally without a table, tunnels to the named peer, falls back when the target is unreachable', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const a = await node(key, []);
    const b = await node(key, [loopbackAddress(a)]);
    await waitFor('connected', () => a.connectedPeers().includes(b.peerId));

    let target: Target = 'local';
    const doorA = createFrontDoor({ balancer: { chooseTarget: () => target }, node: a, selfPeerId: a.peerId, log: silentLogger });
    // b's balancer would route to a: a tunnelled connection must still be served at b (no second hop).
    const doorB = createFrontDoor({ balancer: { chooseTarget: () => ({ peerId: a.peerId, dicom: 'x' }) }, node: b, selfPeerId: b.peerId, log: silentLogger });
    await teardown.add(() => doorA.stop(), () => doorB.stop());
    const portA = await dicomPort('a', () => doorA);
    const portB = await dicomPort('b', () => doorB);
    await teardown.add(() => void portA.server.close(), () => void portB.server.close());
    await doorB.serveInbound(portB.port);

    // No leader / no table: the balancer answers 'local'.
    assert.equal(await ask(portA.port, 'echo-1'), 'a:echo-1');
    assert.deepEqual(portA.results, ['local']);

    // The table names b: the bytes go through the tunnel, b serves them and sees a as the way in.
    target = { peerId: b.peerId, dicom: `127.0.0.1:${portB.port}` };
    assert.equal(await ask(portA.port, 'echo-2'), `b:echo-2 via ${a.peerId.slice(-4)}`);
    assert.deepEqual(portA.results, ['local', 'tunnelled']);
    assert.deepEqual(portB.results, ['local']);

    // A target that cannot be reached (not in the mesh at all): served here, nothing lost.
    target = { peerId: '12D3KooWGzBkPEdRuuXJbNm8ZWx5vz8W1ZHqA4rfFd6Af6hRiuX8', dicom: '127.0.0.1:1' };
    assert.equal(await ask(portA.port, 'echo-3'), 'a:echo-3');
    // A peer that does not serve tunnels: the protocol negotiation fails, served here.
    target = { peerId: b.peerId, dicom: 'x' };
    await doorB.stop();
    assert.equal(await ask(portA.port, 'echo-4'), 'a:echo-4');
    // A balancer that throws: served here.
    const doorC = createFrontDoor({ balancer: { chooseTarget: () => { throw new Error('boom'); } }, node: a, selfPeerId: a.peerId, log: silentLogger });
    const socketPair = await new Promise<Socket>((resolve) => {
      const s = createServer((sock) => resolve(sock));
      teardown.add(() => void s.close()).catch(() => undefined);
      void listen(s).then((port) => connect({ port, host: '127.0.0.1' }).on('error', () => undefined));
    });
    assert.equal(await doorC.route(socketPair), 'local');
    socketPair.destroy();
    const stats = doorA.stats();
    assert.deepEqual({ local: stats.local, tunnelled: stats.tunnelled, fallbacks: stats.fallbacks }, { local: 3, tunnelled: 1, fallbacks: 2 });
    // Routing's decisions, whether the tunnel opened or not: b twice (tunnelled, then refused), the unreachable peer once.
    assert.deepEqual(stats.routedTo, { [b.peerId]: 2, '12D3KooWGzBkPEdRuuXJbNm8ZWx5vz8W1ZHqA4rfFd6Af6hRiuX8': 1 });
    assert.deepEqual(portA.results, ['local', 'tunnelled', 'local', 'local']);
  });

  it('tells routing how many of its tunnels to each peer are still open, from the decision to the tunnel\'s end', { timeout: 20_000 }, async () => {
    const key = generateSwarmKey();
    const a = await node(key, []);
    const b = await node(key, [loopbackAddress(a)]);
    await waitFor('connected', () => a.connectedPeers().includes(b.peerId));
    const seen: Array<Record<string, number>> = [];
    const doorA = createFrontDoor({
      balancer: {
        chooseTarget: (_local, tunnelsOpenTo) => {
          seen.push(Object.fromEntries(tunnelsOpenTo ?? new Map()));
          return { peerId: b.peerId, dicom: 'x' };
        },
      },
      node: a,
      selfPeerId: a.peerId,
      log: silentLogger,
    });
    const doorB = createFrontDoor({ balancer: { chooseTarget: () => 'local' }, node: b, selfPeerId: b.peerId, log: silentLogger });
    await teardown.add(() => doorA.stop(), () => doorB.stop());
    const portA = await dicomPort('a', () => doorA);
    const portB = await dicomPort('b', () => doorB);
    await teardown.add(() => void portA.server.close(), () => void portB.server.close());
    await doorB.serveInbound(portB.port);

    // A client that has sent nothing yet keeps its tunnel to b open.
    const held = connect({ port: portA.port, host: '127.0.0.1' });
    held.on('error', () => undefined);
    await teardown.add(() => void held.destroy());
    await waitFor('first tunnel open', () => doorA.stats().tunnelsOpen === 1);
    assert.equal(await ask(portA.port, 'echo-1'), `b:echo-1 via ${a.peerId.slice(-4)}`);
    assert.deepEqual(seen, [{}, { [b.peerId]: 1 }], 'the second decision counts the first tunnel');
    const ended = new Promise((resolve) => held.once('close', resolve));
    held.write('echo-2');
    held.resume();
    await ended;
    await waitFor('both tunnels ended', () => doorA.stats().tunnelsOpen === 0);
    assert.equal(await ask(portA.port, 'echo-3'), `b:echo-3 via ${a.peerId.slice(-4)}`);
    assert.deepEqual(seen.at(-1), {}, 'ended tunnels no longer count');
  });
});
