// Whether the bundle in dist/ is newer than every source file: the command then runs it, otherwise the
// TypeScript sources through tsx (see pacs-mesh.js). Benchmarks name which one their peers run.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

function newestMtimeMs(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtimeMs(path) : statSync(path).mtimeMs);
  }
  return newest;
}

/** True when `root`/dist holds a bundle built after the last change under `root`/src (and PACS_MESH_FROM_SOURCE is not 1). */
export function buildIsCurrent(root) {
  if (process.env.PACS_MESH_FROM_SOURCE === '1') return false;
  try {
    const { startedAtMs } = JSON.parse(readFileSync(join(root, 'dist', 'build-info.json'), 'utf8'));
    return typeof startedAtMs === 'number' && newestMtimeMs(join(root, 'src')) < startedAtMs;
  } catch {
    return false;
  }
}
