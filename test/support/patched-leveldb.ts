/**
 * The classic-level package built from scripts/build-leveldb.js's patches, for the tests of those patches: the
 * installed one when npm install built it from the current patches (what peers load), else one built in a copy
 * under `scratch` (~1.5 min; the installed package is not touched).
 */
// @ts-expect-error a plain JS build script without types
import { buildPatchedCopy, cannotBuild, installedPatchedBuild } from '../../scripts/build-leveldb.js';

/** Why this machine cannot build the patched addon (the tests skip), or null. */
export const cannotBuildPatchedLevelDb = (cannotBuild as () => string | null)();

/** The patched package's directory, for `require` in a child process. */
export function patchedLevelDbPackage(scratch: string): string {
  return (installedPatchedBuild as () => string | null)() ?? (buildPatchedCopy as (dir: string) => string)(scratch);
}
