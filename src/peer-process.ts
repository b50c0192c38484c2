/**
 * How a peer runs as its own process: the installed command and the V8 flags it needs. Scripts and tests
 * that start peers use these, so they run exactly what an operator runs.
 */
import { fileURLToPath } from 'node:url';

/**
 * V8 flags of every peer process. Left alone, V8 sizes the old generation from the small heap of a fresh
 * peer, and with the 16 MiB young generation in front of it starts a full mark-compact every ~150 ms
 * while instances stream through (measured: site A of a three-site mesh spent 31-38 ms of CPU per 0.5 MB
 * instance, 19-20 ms with this flag; 64 and 256 did as well as 128). bin/pacs-mesh.js carries the same
 * flags in its #! line, which test/unit/launcher.test.ts keeps in step with this list.
 */
export const peerNodeFlags: readonly string[] = ['--initial-old-space-size=128'];

/** The installed command (dist/ when built and current, else src/ through tsx). */
export const pacsMeshBin = fileURLToPath(new URL('../bin/pacs-mesh.js', import.meta.url));

/** Arguments for `process.execPath` that run `pacs-mesh <args>` with the peer's flags. */
export function peerProcessArgs(args: readonly string[]): string[] {
  return [...peerNodeFlags, pacsMeshBin, ...args];
}
