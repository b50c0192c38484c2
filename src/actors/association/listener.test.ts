import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startDicomListener, type DicomListenerInit } from './listener.ts';
import { silentLogger } from '../runtime/logger.ts';
import type { AssociationDeps } from './services/deps.ts';
import { waitFor } from '../../../test/support/wait.ts';

/** A listener on a free port whose front door routes by `route`, with no actor system or deps: serving a connection here throws. */
function listenerRouting(route: NonNullable<DicomListenerInit['frontDoor']>['route']) {
  return startDicomListener({ host: '127.0.0.1', port: 0, maxAssociations: 4, parent: undefined as never, deps: { log: silentLogger } as unknown as AssociationDeps, frontDoor: { route } });
}

describe('DICOM listener', () => {
  it('survives a connection reset while the front door routes it, and does not serve it after', { timeout: 10_000 }, async () => {
    let uncaught: unknown;
    const onUncaught = (error: unknown): void => {
      uncaught = error;
    };
    // A reset socket with no 'error' listener ends the process: caught here so that the test can say so.
    process.on('uncaughtException', onUncaught);
    let routed = 0;
    // A route that takes its time, as opening a tunnel does (or a connection queued behind one): then 'local'.
    const listener = await listenerRouting(
      () =>
        new Promise((resolve) =>
          setTimeout(() => {
            routed++;
            resolve('local');
          }, 300),
        ),
    );
    try {
      const socket = connect(listener.port, '127.0.0.1', () => {
        socket.write(Buffer.alloc(64));
        setTimeout(() => socket.resetAndDestroy(), 50);
      });
      socket.on('error', () => undefined);
      await waitFor('the route to end', () => routed === 1);
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(uncaught, undefined, `the peer would have crashed: ${String(uncaught)}`);
      // The connection is gone: no association is spawned for it (parent is no actor system: spawning would throw).
      assert.equal(listener.associationsServed(), 0);
    } finally {
      process.off('uncaughtException', onUncaught);
      await listener.stop(0);
    }
  });

  it('takes the next routing decision while a tunnel is being opened', { timeout: 10_000 }, async () => {
    const routedAt: number[] = [];
    const start = performance.now();
    let calls = 0;
    const listener = await listenerRouting(
      // The first connection goes to a peer whose tunnel takes 1.5 s to open (a stalled peer: up to the 2 s timeout).
      (socket, onTunnelling) => {
        const first = calls++ === 0;
        if (first) onTunnelling?.();
        return new Promise((resolve) =>
          setTimeout(
            () => {
              routedAt.push(Math.round(performance.now() - start));
              socket.destroy();
              resolve('tunnelled');
            },
            first ? 1500 : 10,
          ),
        );
      },
    );
    try {
      const sockets = [0, 1].map(() => connect(listener.port, '127.0.0.1').on('error', () => undefined));
      await waitFor('both routed', () => routedAt.length === 2);
      for (const socket of sockets) socket.destroy();
      assert.ok(routedAt[0]! < 1000, `the second connection waited for the first one's tunnel (routed after ${routedAt.join(', ')} ms)`);
    } finally {
      await listener.stop(0);
    }
  });

  it('goes on routing after a connection could not be served, and closes that one', { timeout: 10_000 }, async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    let routed = 0;
    const listener = // No actor system and no deps: serving here throws (as a bug in starting an association would).
    await listenerRouting(
      async () => {
        routed++;
        return 'local';
      },
    );
    try {
      const first = connect(listener.port, '127.0.0.1').on('error', () => undefined);
      const closed = new Promise((resolve) => first.once('close', resolve));
      await waitFor('first routed', () => routed === 1);
      const second = connect(listener.port, '127.0.0.1').on('error', () => undefined);
      await waitFor('second routed', () => routed === 2, 2000);
      await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the connection not served was left open')), 2000))]);
      second.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(unhandled.map(String), []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await listener.stop(0);
    }
  });
});
