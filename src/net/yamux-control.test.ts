import { test } from 'node:test';
import assert from 'node:assert/strict';
import { yamux } from '@chainsafe/libp2p-yamux';
import { defaultLogger } from '@libp2p/logger';
import { AbstractMultiaddrConnection } from '@libp2p/utils';
import type { Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { bulkTurnBytes, congestedAfter, dataFrameBytesMax, dataFrameBytesMaxFor, congestedFullMs, controlBurstBytes, controlRefillBytesPerSecond, controlRoom, drainOrder, lightStreamBytes, spendControl, type ControlBucket } from './yamux-control.ts';
import { DEFAULT_WRITE_CHUNK, MeshStream } from './stream.ts';
// The receiver's windows as a mesh node has them (node.ts loads both patches).
import './yamux-window.ts';

test('a stream is control until it has sent its burst, then bulk until quiet long enough to have it all back', () => {
  const bucket: ControlBucket = { tokens: controlBurstBytes, atMs: 0, bulk: false, pending: false };
  assert.equal(controlRoom(bucket, 0), controlBurstBytes, 'a new stream: the whole burst');
  spendControl(bucket, 1000);
  assert.equal(controlRoom(bucket, 0), controlBurstBytes - 1000, 'what is left of it');
  spendControl(bucket, controlBurstBytes);
  assert.equal(controlRoom(bucket, 0), 0, 'used up: bulk');
  const halfRefillMs = (controlBurstBytes / 2 / controlRefillBytesPerSecond) * 1000;
  assert.equal(controlRoom(bucket, halfRefillMs), 0, 'half refilled: still bulk (a copy keeps it from filling)');
  assert.equal(controlRoom(bucket, 2 * halfRefillMs), controlBurstBytes, 'quiet for a whole refill: control again');
  spendControl(bucket, controlBurstBytes);
  bucket.pending = true;
  assert.equal(controlRoom(bucket, 10 * halfRefillMs), 0, 'held with bytes to send all that time: waiting is not being quiet');
  const held = [
    { name: 'copy served last', sentBytesTotal: 50_000_000, lastTurn: 9 },
    { name: 'copy served first', sentBytesTotal: 3 * lightStreamBytes, lastTurn: 4 },
    { name: 'custody tail', sentBytesTotal: controlBurstBytes, lastTurn: 8 },
    { name: 'new copy', sentBytesTotal: lightStreamBytes - 1, lastTurn: undefined },
  ];
  const names = (drains: number): string[] => [...held].sort(drainOrder(drains)).map((stream) => stream.name);
  assert.deepEqual(names(10), ['custody tail', 'new copy', 'copy served first', 'copy served last'], 'even drains: light streams first, fewest bytes first');
  assert.deepEqual(names(11), ['new copy', 'copy served first', 'custody tail', 'copy served last'], 'odd drains: least recently served first (no copy waits for ever)');
  assert.equal(congestedAfter(congestedFullMs - 1), false, 'drained quickly: a fast link');
  assert.equal(congestedAfter(congestedFullMs), true, 'full for long: a slow link');
});

/**
 * One direction of a link whose socket is held: `send` takes everything but reports full past
 * `capacityBytes` queued; the test moves the bytes on (`deliver`) and says when it drained (`drain`).
 */
class HeldLink extends AbstractMultiaddrConnection {
  peer: AbstractMultiaddrConnection | undefined;
  /** Bytes the muxer handed to this connection (what it queued in front of the socket included). */
  handedBytes = 0;
  /** The largest piece the socket was given at once (a frame, with its header). */
  largestWriteBytes = 0;
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private full = false;

  constructor(direction: 'inbound' | 'outbound', public capacityBytes: number) {
    super({ direction, remoteAddr: multiaddr('/ip4/127.0.0.1/tcp/1'), log: defaultLogger().forComponent(`test:held-link:${direction}`) });
  }

  override send(data: Parameters<AbstractMultiaddrConnection['send']>[0]): boolean {
    this.handedBytes += data.byteLength;
    return super.send(data);
  }

  sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): { sentBytes: number; canSendMore: boolean } {
    this.queue.push(data.subarray());
    this.queuedBytes += data.byteLength;
    this.largestWriteBytes = Math.max(this.largestWriteBytes, data.byteLength);
    if (this.queuedBytes > this.capacityBytes) this.full = true;
    return { sentBytes: data.byteLength, canSendMore: !this.full };
  }

  /** The bytes queued so far reach the other side (the socket is still full: no drain). */
  deliver(): void {
    for (const bytes of this.queue.splice(0)) this.peer?.onData(bytes);
    this.queuedBytes = 0;
  }

  /** Everything queued reaches the other side and the socket reports it drained. */
  drain(): void {
    this.deliver();
    if (!this.full) return;
    this.full = false;
    this.safeDispatchEvent('drain');
  }

  sendReset(): void {}
  async sendClose(): Promise<void> {}
  sendPause(): void {}
  sendResume(): void {}
}

/** The other direction, never full: bytes reach the other side on the next turn of the event loop. */
class OpenLink extends HeldLink {
  override sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): { sentBytes: number; canSendMore: boolean } {
    const bytes = data.subarray();
    setImmediate(() => this.peer?.onData(bytes));
    return { sentBytes: bytes.byteLength, canSendMore: true };
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20));

interface Received {
  bytes: number;
  ended: boolean;
}

interface HeldPair {
  aToB: HeldLink;
  a: ReturnType<ReturnType<ReturnType<typeof yamux>>['createStreamMuxer']>;
  received: Map<number, Received>;
  /** Aborted when the test is over: copies in flight stop. */
  stop: AbortController;
}

/** Runs `body` with two muxers joined by a held link (a to b) and an open one (b to a), then takes them down. */
async function behindHeldLink(body: (pair: HeldPair) => Promise<void>): Promise<void> {
  const { close, ...pair } = await pairBehindHeldLink();
  const stop = new AbortController();
  try {
    await body({ ...pair, stop });
  } finally {
    stop.abort();
    close();
  }
}

async function pairBehindHeldLink(): Promise<{ aToB: HeldLink; a: HeldPair['a']; received: Map<number, Received>; close(): void }> {
  // 16 KiB: a Node socket's high-water mark.
  const aToB = new HeldLink('outbound', 16 * 1024);
  const bToA = new OpenLink('inbound', 16 * 1024);
  aToB.peer = bToA;
  bToA.peer = aToB;
  // Windows as a mesh node has them (node.ts): the library's 16 MiB cap is past a stream's 4 MB read buffer.
  const options = { enableKeepAlive: false, streamOptions: { initialStreamWindowSize: 256 * 1024, maxStreamWindowSize: 4 * 1024 * 1024 } };
  const a = yamux(options)().createStreamMuxer(aToB);
  const b = yamux(options)().createStreamMuxer(bToA);
  // By the first byte a stream carries: bulk streams send 0xff, small ones a frame length (0x00 first).
  const received = new Map<number, Received>();
  b.addEventListener('stream', (event: { detail: unknown }) => {
    const stream = new MeshStream(event.detail as Stream, 'a');
    void (async () => {
      let record: Received | undefined;
      for (;;) {
        const chunk = await stream.reader.read(1024 * 1024).catch(() => null);
        if (chunk === null) break;
        if (record === undefined) {
          record = received.get(chunk[0]!) ?? { bytes: 0, ended: false };
          received.set(chunk[0]!, record);
        }
        record.bytes += chunk.byteLength;
      }
      if (record !== undefined) record.ended = true;
    })();
  });
  return {
    aToB,
    a,
    received,
    close: () => {
      a.abort(new Error('test over'));
      b.abort(new Error('test over'));
    },
  };
}

test('on a connection kept full by a copy, a small stream hands over its bytes and half-close without waiting for a drain', { timeout: 20_000 }, async () => {
  await behindHeldLink(async ({ aToB, a, received, stop }) => {
    const bulk = new MeshStream((await a.createStream()) as Stream, 'b');
    const copy = bulk.writer.write(new Uint8Array(4 * 1024 * 1024).fill(0xff), { signal: stop.signal }).catch(() => undefined);
    // A few drains: the copy uses up its control allowance and is bulk, the connection full again.
    for (let i = 0; i < 8; i++) {
      await settle();
      aToB.drain();
    }
    await settle();
    assert.ok((received.get(0xff)?.bytes ?? 0) > controlBurstBytes, 'the copy is under way');

    const small = new MeshStream((await a.createStream()) as Stream, 'b');
    for (let i = 0; i < 5; i++) await small.writer.stageFrame(new Uint8Array(18).fill(0x20));
    // No drain from here: the library held the half-close until the connection drained.
    const closed = await Promise.race([small.closeWrite({ signal: stop.signal }).then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 2000))]);
    assert.equal(closed, true, 'the half-close was handed over while the connection stayed full');
    // They wait in the connection's queue, in front of the copy's next turn: the next drain sends them.
    aToB.drain();
    await settle();
    aToB.deliver();
    await settle();
    assert.deepEqual(received.get(0x00), { bytes: 5 * (4 + 18), ended: true }, 'the small exchange arrived whole');
    stop.abort();
    await copy;
  });
});

test('a copy on a full connection is not woken by window updates: it waits for the drain', { timeout: 20_000 }, async () => {
  await behindHeldLink(async ({ aToB, a, stop }) => {
    // Room for a whole send window first: the copy uses its window up (256 KiB, nothing read yet) and
    // keeps the rest of a piece queued in its stream.
    aToB.capacityBytes = 1024 * 1024;
    const bulk = new MeshStream((await a.createStream()) as Stream, 'b');
    const copy = bulk.writer.write(new Uint8Array(4 * 1024 * 1024).fill(0xff), { signal: stop.signal }).catch(() => undefined);
    await settle();
    // Then the socket is full, and the muxer learns it at its next frame (a stream opened).
    aToB.capacityBytes = 16 * 1024;
    await a.createStream();
    await settle();
    const handedWhenFull = aToB.handedBytes;
    // The window's bytes reach the other side, whose window update comes back; the socket has not drained.
    aToB.deliver();
    await settle();
    const handedWhileFull = aToB.handedBytes - handedWhenFull;
    // The library let the window update wake the copy, which refilled the full connection with a frame.
    assert.ok(handedWhileFull < 1024, `the copy handed over ${handedWhileFull} bytes while the connection was full (window updates only)`);
    stop.abort();
    await copy;
  });
});

test('on a slow link copies hand over a turn at a time after each drain, and take turns', { timeout: 30_000 }, async () => {
  await behindHeldLink(async ({ aToB, a, received, stop }) => {
    const copies = [0xff, 0xfe].map(async (fill) => {
      const bulk = new MeshStream((await a.createStream()) as Stream, 'b');
      await bulk.writer.write(new Uint8Array(8 * 1024 * 1024).fill(fill), { signal: stop.signal }).catch(() => undefined);
    });
    for (let i = 0; i < 10; i++) {
      await settle();
      aToB.drain();
    }
    // Full for longer than congestedFullMs before each drain: a slow link.
    const handedPerDrain: number[] = [];
    const receivedBefore = [0xff, 0xfe].map((fill) => received.get(fill)?.bytes ?? 0);
    for (let i = 0; i < 10; i++) {
      await new Promise((resolve) => setTimeout(resolve, congestedFullMs + 20));
      const before = aToB.handedBytes;
      aToB.drain();
      await settle();
      handedPerDrain.push(aToB.handedBytes - before);
    }
    const turns = handedPerDrain.slice(1);
    // A turn and the frame headers and window updates around it; the library handed over a whole window's frame.
    assert.ok(Math.max(...turns) <= bulkTurnBytes + 1024, `bytes handed over per drain: ${handedPerDrain.join(', ')}`);
    assert.ok(Math.min(...turns) > 0, `every drain lets a copy go on: ${handedPerDrain.join(', ')}`);
    aToB.deliver();
    await settle();
    const movedPerCopy = [0xff, 0xfe].map((fill, i) => (received.get(fill)?.bytes ?? 0) - receivedBefore[i]!);
    assert.ok(Math.min(...movedPerCopy) >= 3 * bulkTurnBytes, `both copies move on (bytes per copy over the 10 drains: ${movedPerCopy.join(', ')})`);
    stop.abort();
    await Promise.all(copies);
  });
});

test('once the remote has granted a large window, a copy on a fast link sends frames as large as its writes (up to half the grant), not one Noise message each', { timeout: 20_000 }, async () => {
  await behindHeldLink(async ({ aToB, a, received, stop }) => {
    // A socket that never fills (loopback): bytes reach the other side whenever the test delivers them.
    aToB.capacityBytes = 64 * 1024 * 1024;
    const bulk = new MeshStream((await a.createStream()) as Stream, 'b');
    const copyBytes = 16 * 1024 * 1024;
    const copy = bulk.writer.write(new Uint8Array(copyBytes).fill(0xff), { signal: stop.signal }).catch(() => undefined);
    for (let i = 0; i < 1000 && (received.get(0xff)?.bytes ?? 0) < copyBytes; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      aToB.deliver();
    }
    assert.equal(received.get(0xff)?.bytes, copyBytes, 'the copy arrived');
    // Its first 256 KiB go in frames of dataFrameBytesMax; the grant that follows is the receiver's whole
    // window (4 MiB), so the writer's 256 KiB pieces (DEFAULT_WRITE_CHUNK) go as they are.
    assert.ok(aToB.largestWriteBytes >= DEFAULT_WRITE_CHUNK, `largest frame ${aToB.largestWriteBytes} bytes`);
    assert.equal(dataFrameBytesMaxFor(undefined), dataFrameBytesMax, 'no grant yet: one Noise message');
    assert.equal(dataFrameBytesMaxFor(50_000), dataFrameBytesMax, 'a slow link\'s grant: still one Noise message');
    assert.equal(dataFrameBytesMaxFor(4 * 1024 * 1024), 2 * 1024 * 1024, 'a fast link\'s: half of it');
    await copy;
  });
});
