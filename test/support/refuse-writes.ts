/** A file the kernel refuses to write, even through a descriptor opened before (tests of a disk refusing writes). */
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';

/**
 * Makes `path` immutable (chattr +i: ext4 and xfs refuse every write to it, through descriptors already
 * open too, with EPERM) and returns the undo, or undefined (the test is skipped) without the right to.
 * The undo must run before the file's directory is removed.
 */
export function refuseWritesOrSkip(t: TestContext, path: string): (() => void) | undefined {
  try {
    execFileSync('chattr', ['+i', path], { stdio: 'ignore' });
  } catch {
    t.skip('needs root and a file system with the immutable flag (chattr +i)');
    return undefined;
  }
  let undone = false;
  const undo = (): void => {
    if (undone) return;
    undone = true;
    execFileSync('chattr', ['-i', path], { stdio: 'ignore' });
  };
  t.after(undo);
  return undo;
}
