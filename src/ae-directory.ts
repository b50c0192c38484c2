/**
 * The AE directory: where C-MOVE may send instances. Persisted as JSON in the data directory so that
 * destinations given once on the command line survive restarts; a bad file is an error, not a reset.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, parseAeAddress, type AeAddress } from './config.ts';
import { writeFileDurably } from './durable-file.ts';

export interface AeDirectory {
  resolve(aeTitle: string): AeAddress | undefined;
  entries(): Record<string, AeAddress>;
  /**
   * Writes the destinations given on the command line beside those of the file. Called once the peer has
   * started: a start refused (the data directory in use, a port taken) must not change what the running
   * peer, or the next start, finds there.
   */
  persist(): Promise<void>;
}

/**
 * A short digest of what decides how this peer answers a calling AE: its C-MOVE destinations and its
 * calling AE allow-list. Peers route associations only to peers with the same digest, so a C-MOVE never
 * meets a peer that lacks the destination (0xA801) or refuses the caller.
 */
export function accessDigestOf(moveDestinations: Record<string, AeAddress>, allowedCallingAeTitles: readonly string[]): string {
  const destinations = Object.entries(moveDestinations)
    .map(([aeTitle, a]) => `${aeTitle.trim()}=${a.host}:${a.port}`)
    .sort();
  const calling = [...new Set(allowedCallingAeTitles.map((t) => t.trim()))].sort();
  return createHash('sha256').update(JSON.stringify({ destinations, calling })).digest('hex').slice(0, 16);
}

export async function loadAeDirectory(dataDir: string, fromCommandLine: Record<string, AeAddress>): Promise<AeDirectory> {
  const file = join(dataDir, 'ae-directory.json');
  // A Map, not an object: looked up in an object, a Move Destination "constructor" or "toString" found the
  // members every object has (0xA702 "cannot reach the destination" rather than 0xA801 unknown), and a
  // "__proto__" entry of the file set its prototype instead of naming a destination.
  const persisted = new Map<string, AeAddress>();
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    // A file this user cannot read (or a folder in its place) is not "not a valid AE directory": say what stops it.
    const reason = error.code === undefined ? error.message : `${error.message.replace(/^\w+: |, \w+( '.*')?$/gs, '')} (${error.code})`;
    throw new ConfigError(`cannot read ${file}: ${reason}: give the peer's user access to it, or move it away (C-MOVE destinations come from --move-dest alone then)`);
  });
  try {
    const parsed: unknown = text === undefined ? {} : JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
    for (const [aeTitle, address] of Object.entries(parsed as Record<string, unknown>)) {
      const a = address as { host?: unknown; port?: unknown } | null;
      if (typeof a?.host !== 'string' || typeof a.port !== 'number') throw new Error(`entry "${aeTitle}" must be {"host": "<host>", "port": <number>}`);
      const host = a.host.includes(':') ? `[${a.host}]` : a.host;
      const parsedAddress = parseAeAddress(`${aeTitle}=${host}:${a.port}`, 'entry');
      persisted.set(parsedAddress.aeTitle, parsedAddress.address);
    }
  } catch (error) {
    throw new ConfigError(`${file} is not a valid AE directory: ${error instanceof Error ? error.message : String(error)}`);
  }
  const merged = new Map([...persisted, ...Object.entries(fromCommandLine)]);
  // fromEntries defines each key (never assigns it), so "__proto__" stays an AE title like any other.
  const entries = (): Record<string, AeAddress> => Object.fromEntries(merged);
  return {
    resolve: (aeTitle) => merged.get(aeTitle.trim()),
    entries,
    async persist() {
      if (Object.keys(fromCommandLine).length === 0) return;
      await writeFileDurably(file, `${JSON.stringify(entries(), null, 2)}\n`);
    },
  };
}
