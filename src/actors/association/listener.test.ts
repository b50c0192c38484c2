import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { startDicomListener, type DicomListenerInit } from './listener.ts';
import { silentLogger } from '../runtime/logger.ts';
import { systemClock } from '../runtime/clock.ts';
import type { AssociationDeps } from './services/deps.ts';
import { runTimeSignal, waitFor, within } from '../../../test/support/wait.ts';
import { manualClock } from '../../../test/support/manual-clock.ts';
import { startTestPeer } from '../../../test/support/peer-fixture.ts';
import { halfCloseGraceMs } from './connection.ts';
import { AssociationClosedError, DicomClientAssociation } from './client.ts';
import { CommandField } from '../../codec/dimse.ts';
import { PduFramer, type Pdu } from '../../codec/pdu.ts';

/** A listener on a free port whose front door routes by `route`, with no actor system or deps: serving a connection here throws. */
function listenerRouting(route: NonNullable<DicomListenerInit['frontDoor']>['route']) {
  return startDicomListener({ host: '127.0.0.1', port: 0, maxAssociations: 4, parent: undefined as never, deps: { log: silentLogger, clock: systemClock } as unknown as AssociationDeps, frontDoor: { route } });
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
      await within('the connection not served to be closed (it was left open)', 2000, closed);
      second.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(unhandled.map(String), []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await listener.stop(0);
    }
  });

  it('closes a refused connection (over the cap) that never closes its side after halfCloseGraceMs of its clock, not before', { timeout: 10_000 }, async () => {
    const clock = manualClock(1_000_000);
    // One association allowed, so four connections: the front door holds four (as tunnels to other peers), the fifth is refused.
    const held: Socket[] = [];
    const listener = await startDicomListener({
      host: '127.0.0.1',
      port: 0,
      maxAssociations: 1,
      parent: undefined as never,
      deps: { log: silentLogger, clock } as unknown as AssociationDeps,
      frontDoor: { route: async (socket) => (held.push(socket), 'tunnelled') },
    });
    const others = [0, 1, 2, 3].map(() => connect(listener.port, '127.0.0.1').on('error', () => undefined));
    await waitFor('four connections held', () => held.length === 4);
    const socket = connect({ port: listener.port, host: '127.0.0.1', allowHalfOpen: true });
    try {
      let closed = false;
      socket.on('error', () => undefined);
      socket.on('close', () => (closed = true));
      const framer = new PduFramer();
      const pdus: Pdu[] = [];
      socket.on('data', (chunk) => pdus.push(...framer.push(chunk)));
      const ended = new Promise((resolve) => socket.once('end', resolve));
      await ended;
      assert.deepEqual(pdus.map((pdu) => pdu.type), ['associateRj']);
      // Its side stays open: what it sends is read and dropped while the listener's side is open, and reset once that is closed.
      const probe = () => (socket.write(Buffer.alloc(1)), closed);
      clock.advance(halfCloseGraceMs - 1);
      for (let i = 0; i < 5; i++) {
        probe();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.equal(closed, false, 'the refused connection may still read its answer');
      clock.advance(1);
      await waitFor('the refused connection closed', probe, 2000);
    } finally {
      for (const other of [socket, ...others, ...held]) other.destroy();
      await listener.stop(0);
    }
  });

  it('counts an association when it is asked for, not a connection that never asks (a tunnel given up on before it was ready)', { timeout: 20_000 }, async (t) => {
    const peer = await startTestPeer([], 'listener-served');
    t.after(() => peer.dispose());
    const served = async (): Promise<number> =>
      ((await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`, { signal: runTimeSignal(5000) })).json()) as { associationsServed: number }).associationsServed;
    // What the serving end of a tunnel sees when the entry peer's open times out after this end connected: a
    // connection that closes without a byte (the entry peer then serves the association itself, and counts it).
    const silent = await new Promise<Socket>((resolve, reject) => {
      const socket = connect(peer.dicomPort, '127.0.0.1', () => resolve(socket)).once('error', reject);
    });
    // Accepted after the silent one, so the silent one is being served here by the time this association ends.
    const client = await DicomClientAssociation.open({ host: '127.0.0.1', port: peer.dicomPort, callingAeTitle: 'CHECK', calledAeTitle: 'PACSMESH', presentationContexts: [{ abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: ['1.2.840.10008.1.2'] }] });
    assert.equal((await client.request(client.contexts[0]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: '1.2.840.10008.1.1', hasDataSet: false })).command.status, 0);
    await client.release();
    const closed = new Promise((resolve) => silent.once('close', resolve));
    silent.end();
    await closed;
    assert.equal(await served(), 1, 'the C-ECHO association only (the silent connection was counted too: each abandoned tunnel counted twice in a mesh)');
  });

  it('counts the final responses sent, by service and class: /api/mesh dimse', { timeout: 20_000 }, async (t) => {
    const peer = await startTestPeer([], 'listener-dimse');
    t.after(() => peer.dispose());
    const ct = '1.2.840.10008.5.1.4.1.1.2';
    const client = await DicomClientAssociation.open({
      host: '127.0.0.1',
      port: peer.dicomPort,
      callingAeTitle: 'CHECK',
      calledAeTitle: 'PACSMESH',
      presentationContexts: [
        { abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: ['1.2.840.10008.1.2'] },
        { abstractSyntaxUid: ct, transferSyntaxUids: ['1.2.840.10008.1.2'] },
      ],
    });
    for (let i = 0; i < 2; i++) assert.equal((await client.request(client.contexts[0]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: '1.2.840.10008.1.1', hasDataSet: false })).command.status, 0);
    // A data set that cannot be read far enough to be indexed: a failure (0xC000 range), counted as one.
    const refused = await client.request(client.contexts[1]!.id, { commandField: CommandField.CStoreRq, affectedSopClassUid: ct, affectedSopInstanceUid: '1.2.826.0.1.3680043.8.498.1', priority: 0, hasDataSet: true }, new Uint8Array([8, 0, 5, 0, 200, 0, 0, 0]));
    assert.equal(refused.command.status! >> 12, 0xc, `0x${refused.command.status!.toString(16)}`);
    await client.release();
    const dimse = ((await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`, { signal: runTimeSignal(5000) })).json()) as { dimse: Record<string, Record<string, number>> }).dimse;
    assert.deepEqual(dimse['C-ECHO'], { success: 2, warning: 0, failure: 0, cancel: 0 });
    assert.deepEqual(dimse['C-STORE'], { success: 0, warning: 0, failure: 1, cancel: 0 });
    assert.deepEqual(dimse['C-FIND'], { success: 0, warning: 0, failure: 0, cancel: 0 });
  });

  it('stop(graceMs): associations get the grace on the association clock, then are aborted', { timeout: 20_000 }, async (t) => {
    const clock = manualClock(1_000_000);
    const peer = await startTestPeer([], 'listener-stop', silentLogger, { clock, shutdownGraceMs: 60_000 });
    let stopped = false;
    t.after(async () => {
      clock.advance(60_000);
      await peer.dispose();
    });
    const client = await DicomClientAssociation.open({ host: '127.0.0.1', port: peer.dicomPort, callingAeTitle: 'CHECK', calledAeTitle: 'PACSMESH', presentationContexts: [{ abstractSyntaxUid: '1.2.840.10008.1.1', transferSyntaxUids: ['1.2.840.10008.1.2'] }] });
    const echo = () => client.request(client.contexts[0]!.id, { commandField: CommandField.CEchoRq, affectedSopClassUid: '1.2.840.10008.1.1', hasDataSet: false });
    assert.equal((await echo()).command.status, 0);
    void peer.stop().then(() => (stopped = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(stopped, false, 'the open association has its grace');
    clock.advance(59_999);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(stopped, false, 'still within the grace');
    clock.advance(1);
    await waitFor('the peer stopped once the grace ended', () => stopped, 5000);
    await assert.rejects(echo(), (error: unknown) => error instanceof AssociationClosedError && error.code === 'ERR_ASSOCIATION_ABORTED', 'the association was aborted at the end of the grace');
  });
});
