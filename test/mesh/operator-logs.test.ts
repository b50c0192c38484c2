/**
 * What operators read in the peers' logs (warn level and above, as `--log-level warn` shows them) during
 * routine maintenance: a bootstrap site stopped for a while is no warning at peers that are in the mesh
 * through others (it warned "cannot reach a bootstrap peer" at every retry, black-box helper 40).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventually, startThreeSites } from './support.ts';

const bootstrapWarning = /cannot reach a bootstrap peer/;

test('a bootstrap site stopped for maintenance: no bootstrap warning at the sites still meshed through each other', { timeout: 90_000 }, async (t) => {
  const { a, b, c } = await startThreeSites(t);
  // b and c joined through a; they connect directly once they have heard each other's addresses.
  await new Promise((r) => setTimeout(r, 4000));
  await a.stop();
  await eventually(async () => (await b.status()).members?.find((m) => m.site === 'site-a')?.alive === false, 20_000, async () => JSON.stringify((await b.status()).members));
  // Long enough for several redials of a (the first at once, then 1-2 s apart).
  await new Promise((r) => setTimeout(r, 5000));
  assert.ok((await b.status()).members?.find((m) => m.site === 'site-c')?.alive, 'b and c still see each other');
  for (const peer of [b, c]) assert.doesNotMatch(peer.output(), bootstrapWarning, `${peer.site} warned:\n${peer.output().slice(-2000)}`);
});
