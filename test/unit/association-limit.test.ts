/**
 * `--max-associations` counts associations, not connections: one released, rejected or aborted that only
 * waits for the requestor to close its socket (Sta13, bounded by ARTIM) leaves its slot at once, and one
 * that has not asked for an association yet (Sta2) takes none.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { associateRqBytes, startTestPeer, type TestPeer } from '../support/peer-fixture.ts';
import { PduFramer, RejectReason, RejectResult, RejectSource, encodePdu, type Pdu } from '../../src/codec/pdu.ts';

let peer: TestPeer;

before(async () => {
  peer = await startTestPeer(['--max-associations', '2']);
});

after(async () => {
  await peer.dispose();
});

/** A raw connection that reads PDUs one at a time and closes only when told to. */
class RawRequestor {
  private readonly framer = new PduFramer();
  private readonly received: Pdu[] = [];
  private waiter: (() => void) | undefined;
  private constructor(private readonly socket: Socket) {
    socket.on('data', (data) => {
      this.received.push(...this.framer.push(data));
      this.waiter?.();
    });
    socket.on('error', () => undefined);
  }

  static async open(port: number): Promise<RawRequestor> {
    const socket = connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawRequestor(socket);
  }

  async next(): Promise<Pdu> {
    const deadline = Date.now() + 5000;
    while (this.received.length === 0) {
      if (Date.now() > deadline) throw new Error('no PDU within 5 s');
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 100);
      });
    }
    return this.received.shift()!;
  }

  async associate(): Promise<Pdu> {
    this.socket.write(associateRqBytes());
    return this.next();
  }

  async release(): Promise<Pdu> {
    this.socket.write(encodePdu({ type: 'releaseRq' }));
    return this.next();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

async function activeAssociations(): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`);
  return ((await response.json()) as { activeAssociations: number }).activeAssociations;
}

test('idle connections, and released and rejected ones left open by the requestor, do not count against --max-associations', async () => {
  const requestors: RawRequestor[] = [];
  const open = async () => {
    const requestor = await RawRequestor.open(peer.dicomPort);
    requestors.push(requestor);
    return requestor;
  };
  try {
    // Connections that never send an A-ASSOCIATE-RQ (idle, or slow on purpose) take no slot.
    for (let i = 0; i < 3; i++) await open();
    assert.equal(await activeAssociations(), 0, 'idle connections are no associations');

    const released = await open();
    assert.equal((await released.associate()).type, 'associateAc');
    assert.equal((await released.release()).type, 'releaseRp');
    assert.equal(await activeAssociations(), 0, 'released, socket still open');

    const first = await open();
    const second = await open();
    assert.equal((await first.associate()).type, 'associateAc');
    assert.equal((await second.associate()).type, 'associateAc');
    assert.equal(await activeAssociations(), 2);

    const overLimit = await open();
    assert.deepEqual(await overLimit.associate(), { type: 'associateRj', result: RejectResult.Transient, source: RejectSource.ServiceProviderPresentation, reason: RejectReason.TemporaryCongestion });
    assert.equal(await activeAssociations(), 2, 'the rejected connection, still open, is no association');

    // One association ends: its slot is free for the next requestor, though the rejected socket stays open.
    second.destroy();
    const deadline = Date.now() + 5000;
    while ((await activeAssociations()) > 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    const next = await open();
    assert.equal((await next.associate()).type, 'associateAc');
  } finally {
    for (const requestor of requestors) requestor.destroy();
  }
});

test('a connection over the cap (4x --max-associations) is told why: A-ASSOCIATE-RJ, transient, local limit exceeded; not a bare close', async () => {
  const requestors: RawRequestor[] = [];
  try {
    // Idle connections (or ones tunnelled to other peers) fill the cap: 4 x 2.
    for (let i = 0; i < 8; i++) requestors.push(await RawRequestor.open(peer.dicomPort));
    const over = await RawRequestor.open(peer.dicomPort);
    requestors.push(over);
    assert.deepEqual(await over.associate(), { type: 'associateRj', result: RejectResult.Transient, source: RejectSource.ServiceProviderPresentation, reason: RejectReason.LocalLimitExceeded });
    // Room again once one of them closes.
    requestors[0]!.destroy();
    let accepted: Pdu | undefined;
    for (const deadline = Date.now() + 5000; accepted?.type !== 'associateAc' && Date.now() < deadline; ) {
      const next = await RawRequestor.open(peer.dicomPort);
      requestors.push(next);
      accepted = await next.associate();
    }
    assert.equal(accepted?.type, 'associateAc');
  } finally {
    for (const requestor of requestors) requestor.destroy();
  }
});
