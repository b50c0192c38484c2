import { test } from 'node:test';
import assert from 'node:assert/strict';
import { yamux } from '@chainsafe/libp2p-yamux';
import { defaultLogger } from '@libp2p/logger';
import { AbstractMultiaddrConnection } from '@libp2p/utils';
import type { Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { roomWhileFull, smallWriteBytesMax } from './yamux-drain.ts';
import { MeshStream } from './stream.ts';

test('while the connection is full a stream may hand over a few bytes until it drains', () => {
  assert.equal(roomWhileFull(false, 0), Number.POSITIVE_INFINITY, 'a connection with room: no limit of ours');
  assert.equal(roomWhileFull(true, 0), smallWriteBytesMax, 'full: the budget');
  assert.equal(roomWhileFull(true, smallWriteBytesMax - 100), 100, 'what is left of it');
  assert.equal(roomWhileFull(true, smallWriteBytesMax + 5), 0, 'passed (one write cut to the budget)');
});

/**
 * One direction of a slow link with a socket's semantics: `send` takes everything but answers false past
 * `capacityBytes` queued, and 'drain' comes only once the queue is empty (as a Node socket's).
 */
class SlowConnection extends AbstractMultiaddrConnection {
  peer: SlowConnection | undefined;
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private needsDrain = false;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(direction: 'inbound' | 'outbound', bytesPerSecond: number, private readonly capacityBytes: number) {
    super({ direction, remoteAddr: multiaddr('/ip4/127.0.0.1/tcp/1'), log: defaultLogger().forComponent(`test:slow-connection:${direction}`) });
    const tickMs = 10;
    this.timer = setInterval(() => {
      let budget = (bytesPerSecond * tickMs) / 1000;
      while (budget > 0 && this.queue.length > 0) {
        const head = this.queue[0]!;
        const piece = head.subarray(0, budget);
        budget -= piece.byteLength;
        this.queuedBytes -= piece.byteLength;
        if (piece.byteLength === head.byteLength) this.queue.shift();
        else this.queue[0] = head.subarray(piece.byteLength);
        this.peer?.onData(piece);
      }
      if (this.queue.length === 0 && this.needsDrain) {
        this.needsDrain = false;
        this.safeDispatchEvent('drain');
      }
    }, tickMs);
  }

  sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): { sentBytes: number; canSendMore: boolean } {
    this.queue.push(data.subarray());
    this.queuedBytes += data.byteLength;
    if (this.queuedBytes > this.capacityBytes) this.needsDrain = true;
    return { sentBytes: data.byteLength, canSendMore: !this.needsDrain };
  }

  sendReset(): void {}
  async sendClose(): Promise<void> {}
  sendPause(): void {}
  sendResume(): void {}

  stop(): void {
    clearInterval(this.timer);
  }
}

test('a small exchange on a connection kept full by bulk streams waits behind the queued bytes, not for the connection to drain', { timeout: 60_000 }, async () => {
  // 125 KB/s (1 Mbit/s) with 64 KiB of socket buffer from a to b, and back.
  const aToB = new SlowConnection('outbound', 125_000, 64 * 1024);
  const bToA = new SlowConnection('inbound', 125_000, 64 * 1024);
  aToB.peer = bToA;
  bToA.peer = aToB;
  const a = yamux({ enableKeepAlive: false })().createStreamMuxer(aToB);
  const b = yamux({ enableKeepAlive: false })().createStreamMuxer(bToA);
  const bulkBytes: number[] = [];
  let smallEndedAt: (ms: number) => void = () => undefined;
  const smallEnded = new Promise<number>((resolve) => (smallEndedAt = resolve));
  b.addEventListener('stream', (event: { detail: unknown }) => {
    const stream = new MeshStream(event.detail as Stream, 'a');
    void (async () => {
      // A copy's bytes are all 0xff; the small exchange is a frame whose length starts with 0.
      const first = await stream.reader.read(1024 * 1024).catch(() => null);
      if (first === null) return;
      if (first[0] === 0xff) {
        const at = bulkBytes.push(first.byteLength) - 1;
        for (;;) {
          const chunk = await stream.reader.read(1024 * 1024).catch(() => null);
          if (chunk === null) break;
          bulkBytes[at]! += chunk.byteLength;
        }
        return;
      }
      while ((await stream.reader.read(1024)) !== null);
      smallEndedAt(performance.now());
    })();
  });
  const stop = new AbortController();
  try {
    // Three copies flowing at once (three associations pushing at one site).
    const piece = new Uint8Array(256 * 1024).fill(0xff);
    const bulk = [1, 2, 3].map(async () => {
      const stream = new MeshStream((await a.createStream()) as Stream, 'b');
      try {
        while (!stop.signal.aborted) await stream.writer.write(piece, { signal: stop.signal });
      } catch {
        // stopped
      }
      stream.abort(new Error('test over'));
    });
    await new Promise((resolve) => setTimeout(resolve, 2000));

    const startedAt = performance.now();
    const small = new MeshStream((await a.createStream()) as Stream, 'b');
    await small.writer.stageFrame(new TextEncoder().encode('{"type":"custody"}'));
    await small.closeWrite({ signal: AbortSignal.any([stop.signal, AbortSignal.timeout(20_000)]) });
    const closedWriteMs = performance.now() - startedAt;
    const bulkStartedAt = performance.now() - 2000;
    const endedMs = (await Promise.race([smallEnded, new Promise<number>((resolve) => setTimeout(() => resolve(Number.POSITIVE_INFINITY), 20_000))])) - startedAt;
    const bulkMs = performance.now() - bulkStartedAt;
    const bulkReceived = [...bulkBytes];
    stop.abort();
    await Promise.allSettled(bulk);
    // ~1 s here, behind the socket's buffer and one copy's piece. Held until the connection drained, the
    // half-close alone waited ~9 s; with copies still refilling the connection at each window update, the
    // exchange arrived after ~6 s.
    assert.ok(closedWriteMs < 1000, `the half-close took ${Math.round(closedWriteMs)} ms`);
    assert.ok(endedMs < 4000, `the small exchange reached the other side after ${Math.round(endedMs)} ms`);
    // The copies keep the link busy meanwhile (the oldest stream first: it sends after each drain).
    const linkBytes = (125_000 * bulkMs) / 1000;
    assert.ok(bulkReceived.reduce((sum, bytes) => sum + bytes, 0) > 0.7 * linkBytes, `copies moved ${bulkReceived.join(', ')} bytes in ${Math.round(bulkMs)} ms`);
  } finally {
    stop.abort();
    aToB.stop();
    bToA.stop();
    a.abort(new Error('test over'));
    b.abort(new Error('test over'));
  }
});
