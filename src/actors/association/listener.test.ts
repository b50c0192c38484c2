import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startDicomListener } from './listener.ts';
import { silentLogger } from '../runtime/logger.ts';
import type { AssociationDeps } from './services/deps.ts';
import { waitFor } from '../../../test/support/wait.ts';

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
    const listener = await startDicomListener({
      host: '127.0.0.1',
      port: 0,
      maxAssociations: 4,
      parent: undefined as never,
      deps: { log: silentLogger } as unknown as AssociationDeps,
      frontDoor: {
        route: () =>
          new Promise((resolve) =>
            setTimeout(() => {
              routed++;
              resolve('local');
            }, 300),
          ),
      },
    });
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
});
