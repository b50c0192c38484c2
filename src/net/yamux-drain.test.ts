import { test } from 'node:test';
import assert from 'node:assert/strict';
import { yamux } from '@chainsafe/libp2p-yamux';
import { defaultLogger } from '@libp2p/logger';
import { AbstractMultiaddrConnection } from '@libp2p/utils';
import type { Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { mustWaitForDrain, smallWriteBytesMax } from './yamux-drain.ts';
import { MeshStream } from './stream.ts';

test('a stream waits for the connection to drain only with bytes of its own queued or its budget handed over', () => {
  assert.equal(mustWaitForDrain(0, 0), false, 'nothing queued, nothing sent');
  assert.equal(mustWaitForDrain(0, smallWriteBytesMax - 1), false, 'under the budget');
  assert.equal(mustWaitForDrain(0, smallWriteBytesMax), true, 'the budget handed over');
  assert.equal(mustWaitForDrain(1, 0), true, 'bytes still queued in the stream');
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
  let smallEndedAt: (ms: number) => void = () => undefined;
  const smallEnded = new Promise<number>((resolve) => (smallEndedAt = resolve));
  b.addEventListener('stream', (event: { detail: unknown }) => {
    const stream = new MeshStream(event.detail as Stream, 'a');
    void (async () => {
      const first = await stream.reader.readFrameOrEnd(1024 * 1024).catch(() => null);
      if (first === null || first.byteLength > 64) {
        // bulk: read on until the end
        while ((await stream.reader.read(1024 * 1024).catch(() => null)) !== null);
        return;
      }
      while ((await stream.reader.readFrameOrEnd(1024)) !== null);
      smallEndedAt(performance.now());
    })();
  });
  const stop = new AbortController();
  try {
    // Three copies flowing at once (three associations pushing at one site).
    const piece = new Uint8Array(256 * 1024);
    const bulk = [1, 2, 3].map(async () => {
      const stream = new MeshStream((await a.createStream()) as Stream, 'b');
      try {
        await stream.writer.writeFrame(piece, { signal: stop.signal });
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
    const endedMs = (await Promise.race([smallEnded, new Promise<number>((resolve) => setTimeout(() => resolve(Number.POSITIVE_INFINITY), 20_000))])) - startedAt;
    stop.abort();
    await Promise.allSettled(bulk);
    // Behind what the socket and the copies' windows hold (~6 s here). Held until the connection drained,
    // the half-close alone waited ~9 s.
    assert.ok(closedWriteMs < 1000, `the half-close took ${Math.round(closedWriteMs)} ms`);
    assert.ok(endedMs < 15_000, `the small exchange reached the other side after ${Math.round(endedMs)} ms`);
  } finally {
    stop.abort();
    aToB.stop();
    bToA.stop();
    a.abort(new Error('test over'));
    b.abort(new Error('test over'));
  }
});
