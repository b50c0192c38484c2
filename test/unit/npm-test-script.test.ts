/**
 * package.json's `npm test` runs the type check alongside the tests (sh, as npm runs scripts): it must fail
 * when either fails, and say at its end when the type check did, since tsc's errors land among thousands of
 * lines of test output. Run with stand-ins for tsc and node on PATH (the real ones are not run).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const script = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.test!;

function runWith(typecheckStatus: number, testsStatus: number): { status: number | null; stderr: string } {
  const bin = mkdtempSync(join(tmpdir(), 'pacs-npm-test-'));
  try {
    writeFileSync(join(bin, 'tsc'), `#!/bin/sh\necho "src/x.ts(1,1): error TS2322"\nexit ${typecheckStatus}\n`);
    writeFileSync(join(bin, 'node'), `#!/bin/sh\necho "# fail ${testsStatus === 0 ? 0 : 1}"\nexit ${testsStatus}\n`);
    chmodSync(join(bin, 'tsc'), 0o755);
    chmodSync(join(bin, 'node'), 0o755);
    const run = spawnSync('sh', ['-c', script], { cwd: root, encoding: 'utf8', env: { ...process.env, PATH: `${bin}:/usr/bin:/bin` } });
    return { status: run.status, stderr: run.stderr };
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
}

test('npm test fails when the type check or the tests fail, and says at its end when the type check did', () => {
  assert.deepEqual(runWith(0, 0), { status: 0, stderr: '' });
  assert.equal(runWith(0, 1).status, 1);
  const typecheckFailed = runWith(2, 0);
  assert.equal(typecheckFailed.status, 2);
  assert.match(typecheckFailed.stderr, /npm test: the type check \(tsc --noEmit -p \.\) failed with status 2/);
  assert.notEqual(runWith(2, 1).status, 0);
});
