/** GET /metrics's text: the Prometheus format (0.0.4), from /api/mesh's object, with nothing from a peer breaking a line. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { metricsText } from './metrics.ts';

const processFigures = { residentMemoryBytes: 150_000_000, heapUsedBytes: 40_000_000, startTimeSeconds: 1_796_000_000 };

const meshStatus = {
  self: { site: 'site-a', aeTitle: 'PACSMESH', peerId: '12D3KooWAAA', version: { package: '0.1.0', storeFormat: 1, implementationVersionName: 'PACSMESH_01' } },
  instances: 42,
  activeAssociations: 2,
  associationsServed: 17,
  dimse: { 'C-ECHO': { success: 3, warning: 0, failure: 0, cancel: 0 }, 'C-STORE': { success: 40, warning: 0, failure: 2, cancel: 0 } },
  scrub: { passesCompleted: 3, instancesVerified: 120, bytesVerified: 63_000_000, badCopiesFound: 1, copiesRepaired: 1, copiesUnrepaired: 0, busy: true, cursor: '1.2.3' },
  transcoder: { workerRunning: false, jobsQueued: 0, jobsRunning: 0, bytesHeld: 0, jobsDone: 5, jobsFailed: 0, jobsCancelled: 0 },
  commitment: { pending: 1, reportsDelivered: 4, reportsDropped: 0, instancesCommitted: 9, instancesFailed: 0 },
  dicomweb: { searches: 6, retrieves: 2, metadata: 1, frames: 0, stores: 3, refused: 0, failed: 0, cutShort: 0 },
  supervision: { membership: { restarts: 0, escalated: false }, custody: { restarts: 2, escalated: false } },
  leader: { peerId: '12D3KooWBBB', site: 'site-b', term: 7 },
  balancer: { role: 'follower', term: 7 },
  members: [
    { peerId: '12D3KooWAAA', site: 'site-a', alive: true, instances: 42 },
    { peerId: '12D3KooWBBB', site: 'site-b', alive: true, instances: 42 },
    { peerId: null, site: 'site-c', alive: false, status: 'not heard', instances: null },
  ],
  custody: { debtEntries: 12, queuedWork: 3, uidConflicts: 0, knownSites: [{ site: 'site-b', debtEntries: 0 }, { site: 'site-c', debtEntries: 12 }] },
};

/** Every line a HELP, a TYPE or a sample of the family announced last; each family announced once. */
function parseExposition(text: string): Map<string, { type: string; samples: string[] }> {
  assert.ok(text.endsWith('\n'), 'ends with a line feed');
  const families = new Map<string, { type: string; samples: string[] }>();
  let current: string | undefined;
  for (const line of text.slice(0, -1).split('\n')) {
    const help = /^# HELP ([a-z_:][a-z0-9_:]*) \S.*$/.exec(line);
    const type = /^# TYPE ([a-z_:][a-z0-9_:]*) (counter|gauge)$/.exec(line);
    if (help) {
      assert.ok(!families.has(help[1]!), `${help[1]} announced once`);
      current = help[1];
      continue;
    }
    if (type) {
      assert.equal(type[1], current, 'TYPE follows its HELP');
      families.set(type[1]!, { type: type[2]!, samples: [] });
      continue;
    }
    const sample = /^([a-z_:][a-z0-9_:]*)(\{(?:[a-z_][a-z0-9_]*="(?:[^"\\\n]|\\["\\n])*",?)*\})? (-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$/.exec(line);
    assert.ok(sample, `a sample line: ${line}`);
    assert.equal(sample[1], current, `${line} belongs to the family announced last`);
    families.get(current!)!.samples.push(line);
  }
  for (const [name, family] of families) {
    assert.ok(family.samples.length > 0, `${name} has samples`);
    if (family.type === 'counter') assert.match(name, /_total$/, `counter ${name} ends in _total`);
  }
  return families;
}

test('a mesh peer: build, health, instances, associations, members, leader, debt, scrub, commitment, DICOMweb and restarts', () => {
  const text = metricsText(meshStatus, true, processFigures);
  const families = parseExposition(text);
  for (const line of [
    'pacs_mesh_build_info{version="0.1.0",store_format="1",site="site-a"} 1',
    'pacs_mesh_healthy 1',
    'pacs_mesh_instances 42',
    'pacs_mesh_store_fault 0',
    'pacs_mesh_associations_active 2',
    'pacs_mesh_associations_served_total 17',
    'pacs_mesh_dimse_responses_total{service="C-STORE",outcome="failure"} 2',
    'pacs_mesh_dimse_responses_total{service="C-ECHO",outcome="success"} 3',
    'pacs_mesh_member_alive{site="site-b",peer_id="12D3KooWBBB"} 1',
    'pacs_mesh_member_alive{site="site-c",peer_id=""} 0',
    'pacs_mesh_member_instances{site="site-a",peer_id="12D3KooWAAA"} 42',
    'pacs_mesh_leader_known 1',
    'pacs_mesh_is_leader 0',
    'pacs_mesh_election_term 7',
    'pacs_mesh_replication_debt_entries 12',
    'pacs_mesh_replication_debt_entries_by_site{site="site-c"} 12',
    'pacs_mesh_custody_queued_work 3',
    'pacs_mesh_scrub_busy 1',
    'pacs_mesh_scrub_bytes_verified_total 63000000',
    'pacs_mesh_commitment_reports_pending 1',
    'pacs_mesh_dicomweb_requests_total{kind="searches"} 6',
    'pacs_mesh_actor_restarts_total{actor="custody"} 2',
    'pacs_mesh_actor_escalated{actor="membership"} 0',
    'process_resident_memory_bytes 150000000',
    'process_start_time_seconds 1796000000',
  ]) assert.ok(text.split('\n').includes(line), `${line} in:\n${text}`);
  assert.equal(families.get('pacs_mesh_member_instances')?.samples.length, 2, 'a member whose count is unknown has no sample');
});

test('a single site has no mesh figures; a figure /api/mesh could not give has no sample; an unhealthy peer says 0', () => {
  const single = { self: { site: 'alone', version: { package: '0.1.0', storeFormat: 1 } }, instances: null, instancesUnknown: 'Corruption: bad block', storeFault: 'EIO', activeAssociations: 0, associationsServed: 0 };
  const families = parseExposition(metricsText(single, false, processFigures));
  for (const name of ['pacs_mesh_member_alive', 'pacs_mesh_leader_known', 'pacs_mesh_replication_debt_entries', 'pacs_mesh_instances', 'pacs_mesh_scrub_busy']) assert.equal(families.has(name), false, name);
  assert.deepEqual(families.get('pacs_mesh_healthy')?.samples, ['pacs_mesh_healthy 0']);
  assert.deepEqual(families.get('pacs_mesh_store_fault')?.samples, ['pacs_mesh_store_fault 1']);
});

test('label values from other peers are escaped: a site name cannot add a line or a sample', () => {
  const hostile = 'x"} 1\npacs_mesh_healthy 0\n\\';
  const text = metricsText({ ...meshStatus, members: [{ peerId: 'p', site: hostile, alive: true, instances: 1 }], custody: { ...meshStatus.custody, knownSites: [{ site: hostile, debtEntries: 1 }] } }, true, processFigures);
  parseExposition(text);
  assert.ok(text.includes('pacs_mesh_member_alive{site="x\\"} 1\\npacs_mesh_healthy 0\\n\\\\",peer_id="p"} 1'), text);
  assert.equal(text.split('\n').filter((line) => line.startsWith('pacs_mesh_healthy ')).length, 1);
});

test("Prometheus's own linter (promtool check metrics, where installed) finds nothing to say of the text", (t) => {
  if (spawnSync('promtool', ['--version']).status !== 0) {
    t.skip('promtool is not installed (Debian package prometheus)');
    return;
  }
  const hostile = { ...meshStatus, members: [...meshStatus.members, { peerId: 'p', site: 'x"y\\z', alive: false, instances: 2 }] };
  const checked = spawnSync('promtool', ['check', 'metrics'], { input: metricsText(hostile, true, processFigures), encoding: 'utf8' });
  assert.equal(checked.status, 0, checked.stdout + checked.stderr);
  assert.equal((checked.stdout + checked.stderr).trim(), '', 'no lint warning');
});
