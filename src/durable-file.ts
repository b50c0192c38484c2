/**
 * Small state files (peer key, incarnation, election record, known peers, AE directory) written so that a
 * crash or a power cut leaves the old content or the new, never half of either.
 */
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * Writes `data` to `path` through `<path>.tmp` (one writer per data directory: its lock), fsyncs it,
 * renames it into place and fsyncs the directory so that the rename itself survives a power cut. A
 * failure leaves no temporary file behind (a full disk would otherwise keep one).
 */
export async function writeFileDurably(path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
  const directory = dirname(path);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  const handle = await open(tmp, 'w', options.mode ?? 0o666);
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
  } catch (error) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw error;
  }
  const dir = await open(directory, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
