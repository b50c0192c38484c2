/** A small filesystem of a test's own, to fill up (tests of a full disk). */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

/** A fresh tmpfs of `bytes` and its unmount, or undefined (the test is skipped) without the right to mount. */
export function tmpfsOrSkip(t: TestContext, bytes: number): { mountPoint: string; unmount(): void } | undefined {
  const mountPoint = mkdtempSync(join(tmpdir(), 'pacs-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', mountPoint], { stdio: 'ignore' });
  } catch {
    rmSync(mountPoint, { recursive: true, force: true });
    t.skip('needs root to mount a small tmpfs');
    return undefined;
  }
  return {
    mountPoint,
    unmount: () => {
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    },
  };
}
