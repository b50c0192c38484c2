/**
 * Retrieve anywhere while the only site holding the instances dies (hunt 136): site-a stores a study alone,
 * site-c joins and is asked for it with getscu at once (it pulls what it lacks from site-a, beside its own
 * refill), and site-a is killed (SIGKILL) once the first instance has reached getscu. The C-GET must end,
 * with every instance counted completed or failed and the failed ones listed, not hang or abort.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { spawnManaged } from '../support/dicom-tools.ts';
import { uidFromSeed, writeSeriesToDir } from '../support/synthetic-dicom.ts';
import { eventually, newCluster } from './support.ts';
import { runTool } from '../support/dicom-tools.ts';

const studyUid = uidFromSeed('hunt-136 retrieve while the holder dies');
const instanceCount = 120;

test('a C-GET at a site pulling from the only site that holds the study, killed mid-retrieve: every instance counted, the failed ones listed, no hang', { timeout: 240_000 }, async (t) => {
  const cluster = await newCluster(t);
  const series = await writeSeriesToDir(join(cluster.root, 'study'), { count: instanceCount, rows: 512, columns: 512, study: { uid: studyUid }, patient: { id: 'DIES1', name: 'HOLDER^DIES' } });
  const a = await cluster.start('site-a');
  const stored = await runTool('storescu', ['-aec', 'PACSMESH', '127.0.0.1', String(a.dicomPort), ...series.files], { timeoutMs: 120_000, env: { TCP_NODELAY: '1' } });
  assert.equal(stored.code, 0, stored.stderr);
  const c = await cluster.start('site-c');
  await eventually(async () => (await c.status()).members?.some((m) => m.site === 'site-a' && m.alive) === true, 30_000, async () => JSON.stringify((await c.status()).members));

  const dir = join(cluster.root, 'got');
  mkdirSync(dir);
  const getter = spawnManaged('getscu', ['-v', '-S', '-aec', 'PACSMESH', '-od', dir, '-k', 'QueryRetrieveLevel=STUDY', '-k', `StudyInstanceUID=${studyUid}`, '127.0.0.1', String(c.dicomPort)], { env: { ...process.env, TCP_NODELAY: '1' } });
  let output = '';
  getter.child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  getter.child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
  while (readdirSync(dir).length === 0 && !getter.hasExited) await new Promise((resolve) => setTimeout(resolve, 5));
  const heldByCWhenKilled = (await c.status()).instances;
  await a.kill9();
  const killedAt = Date.now();
  const exit = await getter.exitedWithin(120_000);
  if (exit === 'running') await getter.stop(0);
  assert.notEqual(exit, 'running', `getscu still running 120 s after site-a was killed:\n${output.slice(-2000)}`);

  const final = [...output.matchAll(/Received C-GET Response \(([^)]*)\)/g)].at(-1)?.[1];
  const count = (label: string) => Number([...output.matchAll(new RegExp(`Number of ${label} Suboperations\\s*:\\s*(\\d+)`, 'g'))].at(-1)?.[1] ?? NaN);
  const [completed, failed] = [count('Completed'), count('Failed')];
  const received = readdirSync(dir).length;
  t.diagnostic(`site-c held ${heldByCWhenKilled} of ${instanceCount} when site-a was killed; final ${final} ${Date.now() - killedAt} ms after: ${completed} completed, ${failed} failed`);
  assert.ok(final === 'Success' || final === 'Warning: SubOperationsCompleteOneOrMoreFailures' || final === 'Refused: OutOfResourcesSubOperations', `final response: ${final}\n${output.slice(-2000)}`);
  assert.equal(completed + failed, instanceCount, output.slice(-2000));
  assert.equal(completed, received, 'every instance counted completed reached getscu');
  assert.equal(final === 'Success', failed === 0);
  assert.doesNotMatch(c.output(), /ERR_UNHANDLED_REJECTION|query\/retrieve task failed/);
});
