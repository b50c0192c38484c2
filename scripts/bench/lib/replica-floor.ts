/**
 * Child program of the catch-up benchmark: what a site catching up spends storing alone. The instances of
 * `inputDir` are first stored in a source store (through the C-STORE code, untimed) and read back into
 * memory; then, timed, they are put as replicas (`putReplica`: SHA-256 and length checked, one synced
 * commit shared by the puts under way) into a fresh store, `--group` at a time as the batches of a
 * catch-up arrive (batches of 128, two flowing at once per peer). No network, no custody: no catch-up can finish sooner.
 *
 *   node --import tsx scripts/bench/lib/replica-floor.ts <work dir> <input dir> [--group 256]
 *
 * Prints one JSON line: { wallMs, stored }.
 */
import { join } from 'node:path';
import { catalogPage } from '../../../src/actors/storage/catalog.ts';
import { createReplicaStore } from '../../../src/actors/storage/replica-store.ts';
import { storeFilesThroughCStore } from './store-path.ts';

const [workDir, inputDir, groupFlag, groupValue] = process.argv.slice(2);
if (workDir === undefined || inputDir === undefined || (groupFlag !== undefined && groupFlag !== '--group')) {
  console.error('usage: replica-floor.ts <work dir> <input dir> [--group N]');
  process.exit(2);
}
const group = Number(groupValue ?? 256);

const source = createReplicaStore({ path: join(workDir, 'source') });
await source.open();
const filled = await storeFilesThroughCStore(source, inputDir);
const { entries } = await catalogPage(source.db, '', filled.stored + 1);
const bodies: Uint8Array[][] = [];
for (const entry of entries) {
  const chunks: Uint8Array[] = [];
  for await (const chunk of source.readInstance(entry)) chunks.push(chunk);
  bodies.push(chunks);
}
await source.close();

const target = createReplicaStore({ path: join(workDir, 'target') });
await target.open();
async function* bytesOf(chunks: Uint8Array[]): AsyncGenerator<Uint8Array> {
  yield* chunks;
}
let stored = 0;
const started = performance.now();
for (let i = 0; i < entries.length; i += group) {
  const outcomes = await Promise.all(entries.slice(i, i + group).map((entry, j) => target.putReplica(entry, bytesOf(bodies[i + j]!))));
  stored += outcomes.filter((o) => o === 'stored').length;
}
const wallMs = performance.now() - started;
await target.close();
console.log(JSON.stringify({ wallMs, stored }));
