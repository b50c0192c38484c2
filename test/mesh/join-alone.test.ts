/**
 * A new site that meets nobody at first does not elect itself in a term the mesh used: site-c starts with
 * --bootstrap of site-a while site-a is stopped (SIGSTOP). With only the 2 s settle time, site-c (its roster
 * itself alone) led term 1 two seconds after its start, a term site-a had led: two leaders in one term (the
 * chaos test, seeds 6 and 8, where a loaded machine made a newcomer hear nobody for its first seconds).
 * Now it waits up to 15 s to learn a peer, and follows site-a once site-a is back.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventually, newCluster, type MeshStatus } from './support.ts';

type Status = MeshStatus & { balancer?: { role?: string; term?: number } };

test('a site joining through a stopped site does not lead a term of its own meanwhile, and follows the mesh once it is back', { timeout: 120_000 }, async (t) => {
  const cluster = await newCluster(t);
  const a = await cluster.start('site-a');
  t.after(() => {
    a.process.child.kill('SIGCONT');
  });
  await eventually(async () => (await a.status()).leader?.site === 'site-a', 20_000, async () => JSON.stringify((await a.status()).leader));
  const aStatus = (await a.status()) as Status;
  a.process.child.kill('SIGSTOP');
  const c = await cluster.start('site-c', { bootstrap: aStatus.self.multiaddrs!.slice(0, 1) });
  // Well past the settle time (2 s), well within the wait to meet the mesh (15 s).
  const watchUntilMs = Date.now() + 6000;
  while (Date.now() < watchUntilMs) {
    const seen = (await c.status()) as Status;
    assert.notEqual(seen.balancer?.role, 'leader', `site-c elected itself alone in term ${seen.balancer?.term} while site-a (leader of term ${aStatus.leader?.term}) was stopped`);
    await new Promise((r) => setTimeout(r, 200));
  }
  a.process.child.kill('SIGCONT');
  await eventually(
    async () => {
      const [atA, atC] = (await Promise.all([a.status(), c.status()])) as Status[];
      return atA!.leader != null && atC!.leader?.peerId === atA!.leader.peerId && atC!.leader.term === atA!.leader.term;
    },
    30_000,
    async () => `site-a: ${JSON.stringify((await a.status()).leader)}, site-c: ${JSON.stringify((await c.status()).leader)}`,
  );
});
