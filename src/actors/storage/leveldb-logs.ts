/**
 * LevelDB 1.20, as classic-level ships it, closes a full log file without an fsync when it starts the next
 * one (`MakeRoomForWrite`; google/leveldb#193): a synced write then makes the new log durable, not the
 * records still unsynced at the end of the old one, which a power cut loses until the memtable they are in
 * has been written to a (synced) table file, ~50 ms later. A commit whose earlier chunks went into the old
 * log, or a checkpoint whose catalog entries did, was durable without them (hunt 95).
 */
import { readdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';

/** fsyncs one file (a test counts the calls). */
export type SyncFile = (path: string) => Promise<void>;

async function fsyncFile(path: string): Promise<void> {
  // Linux syncs a file's dirty pages through a read-only descriptor too.
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** LevelDB's log files in `dir`, by file number, oldest first. */
function logFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((name) => /^\d+\.log$/.test(name))
    .sort((a, b) => Number.parseInt(a, 10) - Number.parseInt(b, 10));
}

/**
 * Returns a function that fsyncs the log files of the LevelDB in `dir` older than its newest (each once):
 * called after a synced write, everything written before that write is then durable, in whichever log,
 * whichever addon is loaded (the LevelDB `npm install` builds syncs a full log itself: see
 * scripts/build-leveldb.js). A directory listing per call: for the catalog's checkpoint (once a second),
 * not for every commit of the blob database, whose directory holds a table file per 2 MiB of images.
 */
export function createOlderLogSync(dir: string, syncFile: SyncFile = fsyncFile): () => Promise<void> {
  // Logs synced already: only those still listed are kept, so it holds a few names at most.
  let synced = new Set<string>();
  return async () => {
    const logs = logFiles(dir);
    if (logs.length <= 1) {
      if (synced.size > 0) synced = new Set();
      return;
    }
    const older = logs.slice(0, -1);
    for (const name of older) {
      if (synced.has(name)) continue;
      try {
        await syncFile(join(dir, name));
      } catch (error) {
        // Gone meanwhile: its memtable reached a synced table file, and LevelDB deleted it.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        // An I/O error as LevelDB's own are coded, so that the store faults on it as on theirs.
        throw Object.assign(new Error(`IO error: ${join(dir, name)}: ${(error as Error).message}`, { cause: error }), { code: 'LEVEL_IO_ERROR' });
      }
    }
    synced = new Set(older);
  };
}
