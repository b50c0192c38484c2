/**
 * The transcoder's thread (see transcode-pool.ts): runs `transcodeDataset` for the pool, so that a codec
 * busy with a large frame (0.4-1.1 s for a 27 MB mammogram) never holds the peer's event loop, where
 * heartbeats and every other association run. The jobs it holds take their frames in turn (each yields
 * between frames), and a cancelled one stops at its next frame.
 */
import { parentPort } from 'node:worker_threads';
import { releaseCodecs, transcodeDataset } from './transcode.ts';
import { isTranscodeErrorCode } from './transcode-error.ts';
import { fillsItsBuffer, type TranscodeJob, type TranscodeReply, type TranscodeRequest } from './transcode-pool.ts';

if (!parentPort) throw new Error('transcode-worker.ts runs as a worker thread of the transcode pool');
const port = parentPort;
/** The jobs under way, by id: how to stop each. */
const running = new Map<number, AbortController>();

port.on('message', (message: TranscodeRequest) => {
  switch (message.type) {
    case 'transcode': {
      const controller = new AbortController();
      running.set(message.jobId, controller);
      void run(message, controller.signal).then(({ reply, transfer }) => {
        running.delete(message.jobId);
        port.postMessage(reply, transfer);
      });
      break;
    }
    case 'cancel':
      running.get(message.jobId)?.abort();
      break;
    case 'releaseCodecs':
      // The pool sends it with no job running; a job that arrived since keeps the codecs.
      if (running.size === 0) releaseCodecs();
      break;
    default: {
      const unknown: never = message;
      throw new Error(`unknown request to the transcoder thread: ${String((unknown as { type?: unknown }).type)}`);
    }
  }
});

async function run(job: TranscodeJob, signal: AbortSignal): Promise<{ reply: TranscodeReply; transfer: ArrayBuffer[] }> {
  try {
    const result = await transcodeDataset(job.bytes, job.fromTransferSyntaxUid, job.acceptableTransferSyntaxUids, { signal, renderedJpegQuality: job.renderedJpegQuality });
    // Moved, not copied, to the main thread; a view into a larger (pooled) buffer is cut out first.
    const bytes = fillsItsBuffer(result.bytes) ? result.bytes : new Uint8Array(result.bytes);
    return { reply: { type: 'transcoded', jobId: job.jobId, bytes, transferSyntaxUid: result.transferSyntaxUid }, transfer: [bytes.buffer as ArrayBuffer] };
  } catch (error) {
    const code = (error as { code?: unknown } | undefined)?.code;
    const message = error instanceof Error ? error.message : String(error);
    return { reply: { type: 'failed', jobId: job.jobId, code: isTranscodeErrorCode(code) ? code : 'ERR_TRANSCODE_FAILED', message }, transfer: [] };
  }
}
