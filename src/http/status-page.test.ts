/** The status page at GET /: what it shows of /api/mesh, and that nothing from a peer becomes markup. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { statusPageHtml } from './status-page.ts';

const meshStatus = {
  self: { site: 'site-a', aeTitle: 'PACSMESH', dicom: { host: '127.0.0.1', port: 11112 }, peerId: '12D3KooWAAA', version: { package: '0.1.0', storeFormat: 1, implementationVersionName: 'PACSMESH_01' } },
  instances: 42,
  activeAssociations: 1,
  dimse: { 'C-STORE': { success: 40, warning: 1, failure: 2, cancel: 0 } },
  leader: { peerId: '12D3KooWBBB', site: 'site-b', term: 7 },
  members: [
    { peerId: '12D3KooWAAA', site: 'site-a', status: 'alive', dicom: '127.0.0.1:11112', http: '127.0.0.1:8042', instances: 42, load: 0.1 },
    { peerId: '12D3KooWBBB', site: 'site-b', status: 'alive', dicom: '127.0.0.1:11113', http: '127.0.0.1:8043', instances: 42, load: { activeAssociations: 0, queuedCustodyWork: 0, freeDiskBytes: 0, freeDiskUnknown: true }, build: '0.1.0' },
    { peerId: '12D3KooWCCC', site: 'site-c', status: 'dead', dicom: '127.0.0.1:11114', http: '127.0.0.1:8044', instances: 30, load: { activeAssociations: 2, queuedCustodyWork: 5, freeDiskBytes: 75_085_082_624 } },
  ],
  custody: { debtEntries: 12, knownSites: [{ site: 'site-b', debtEntries: 0 }, { site: 'site-c', debtEntries: 12 }] },
};

test('the page shows this site, the leader, every member with its status and a link to its own page, and the copies owed', () => {
  const page = statusPageHtml(meshStatus, true);
  assert.match(page, /<meta http-equiv="refresh" content="2">/, 'the page reloads itself');
  assert.match(page, /<h1>site-a<\/h1>/, 'the site is the heading');
  assert.match(page, /<th>leader<\/th><td>site-b \(term 7\)<\/td>/, 'the leader and its term');
  assert.match(page, /<tr class="dead"><td>site-c<\/td><td>dead<\/td><td>30<\/td><td>2<\/td><td>5<\/td><td>75\.1 GB<\/td>/, 'a dead member is marked so, with its count and last load');
  assert.match(page, /<td>site-b \(leader\)<\/td>/, 'the leader is marked among the members');
  assert.match(page, /<td>0<\/td><td>0<\/td><td>unknown<\/td>/, 'a free disk the peer could not measure is unknown, not 0.0 GB');
  assert.match(page, /<a href="http:\/\/127\.0\.0\.1:8044\/">/, 'a link to each member\'s page');
  assert.match(page, /<th>copies owed to other sites<\/th><td>12<\/td>/, 'the debt in all');
  assert.match(page, /<tr><td>site-c<\/td><td>12<\/td><\/tr>/, 'the debt by site');
  assert.match(page, /<th>DICOM<\/th><td>127\.0\.0\.1:11112<\/td>/, 'its DICOM address');
  assert.match(page, /<th>C-STOREs answered since start<\/th><td>40 success, 1 warning, 2 failure<\/td>/, 'what the modalities were told');
  assert.match(page, /<a href="\/metrics">\/metrics<\/a>/, 'a link to the same figures for Prometheus');
  assert.match(page, /<th>build<\/th><td>pacs-mesh 0\.1\.0 \(store format 1\)<\/td>/, 'its build, as pacs-mesh --version names it');
  assert.match(page, /:8043<\/a><\/td><td>0\.1\.0<\/td><td><code>12D3KooWBBB/, "a member's build, as its heartbeats say (empty from builds before the field)");
});

test('a peer outside a mesh, or one not healthy, says so', () => {
  const page = statusPageHtml({ self: { site: 'alone' }, instances: 3, leader: null, members: [] }, false);
  assert.match(page, /none: this peer is not in a mesh/, 'no members table');
  assert.match(page, /<th>leader<\/th><td>none<\/td>/, 'no leader');
  assert.match(page, /\/healthz 503/, 'not healthy');
  assert.doesNotMatch(page, /Copies owed, by site/, 'no debt table without custody');
});

test('a mesh site\'s data directory run alone on purpose (--standalone yes) says so, with the sites it knows and the copies it owes (hunt 163)', () => {
  const page = statusPageHtml({ self: { site: 'alone' }, instances: 3, leader: null, members: [], standalone: { otherSites: ['site-b', 'site-c'], debtEntries: 2 } }, true);
  assert.match(page, /<th>standalone on purpose<\/th><td>was a mesh site knowing site-b, site-c; 2 copies owed, sent once started with --swarm-key again<\/td>/);
  assert.doesNotMatch(statusPageHtml({ self: { site: 'alone' }, instances: 3, leader: null, members: [] }, true), /standalone/, 'not on a site that never was in a mesh');
  // Past the debt keys a start reads (hunt 169), the figure is a lower bound.
  const owingMore = statusPageHtml({ self: { site: 'alone' }, instances: 3, leader: null, members: [], standalone: { otherSites: ['site-b'], debtEntries: 10000, debtEntriesMore: true } }, true);
  assert.match(owingMore, /was a mesh site knowing site-b; at least 10000 copies owed,/);
});

test('a count of instances the catalog could not make says unknown, and why (hunt 183: the cell was empty)', () => {
  const page = statusPageHtml({ self: { site: 'alone' }, instances: null, instancesUnknown: 'Corruption: bad block', leader: null, members: [] }, true);
  assert.match(page, /<th>instances here<\/th><td>unknown: Corruption: bad block<\/td>/);
});

test('values heard from other peers are escaped: a site name cannot inject markup', () => {
  const hostile = '<script>alert(1)</script>"\'&';
  const page = statusPageHtml({ ...meshStatus, members: [{ ...meshStatus.members[0], site: hostile, http: '"><img src=x>', build: '<img src=y>' }], custody: { knownSites: [{ site: hostile, debtEntries: 1 }] } }, true);
  assert.doesNotMatch(page, /<script>|<img/, 'no markup from a peer');
  assert.match(page, /&lt;script&gt;alert\(1\)&lt;\/script&gt;&quot;&#39;&amp;/, 'shown as text');
});

test('live peers claiming one site name at several addresses are named above everything while it lasts', () => {
  const conflict = { site: 'site-a', peers: [{ peerId: '12D3KooWAAA', dicom: '127.0.0.1:11112' }, { peerId: '12D3KooWTWIN', dicom: '10.0.0.9:104' }] };
  const page = statusPageHtml({ ...meshStatus, siteConflicts: [conflict] }, true);
  assert.match(page, /<p class="conflict">Site name site-a is claimed by live peers at several DICOM addresses: 12D3KooWAAA at 127\.0\.0\.1:11112, 12D3KooWTWIN at 10\.0\.0\.9:104\./, 'the site, each peer and its address');
  assert.match(page, /give each site its own --site/, 'the way out');
  assert.doesNotMatch(statusPageHtml(meshStatus, true), /class="conflict"/, 'nothing without a conflict');
});

test('a peer that cannot elect a leader says why: no strict majority of its roster alive, or no --bootstrap peer met yet', () => {
  const lacking = statusPageHtml({ ...meshStatus, leader: null, balancer: { role: 'follower', term: 2, votedFor: null, lacksRosterMajority: { alive: 1, voters: 3 } } }, true);
  assert.match(lacking, /<th>leader<\/th><td>none: 1 of 3 voters alive, no strict majority \(forget the sites gone for good: POST \/api\/forget-site or \/api\/forget-peer\)<\/td>/);
  const waiting = statusPageHtml({ ...meshStatus, leader: null, balancer: { role: 'follower', term: 0, votedFor: null, waitsToMeetBootstrapPeers: true } }, true);
  assert.match(waiting, /<th>leader<\/th><td>none: waits to meet one of its --bootstrap peers<\/td>/);
});

test('a known site not heard since this start is listed as such, with when the roster last saw it (hunt 187)', () => {
  const unheard = { peerId: '12D3KooWC', site: 'site-c', alive: false, status: 'not heard', heardSinceStart: false, lastSeenAt: '2026-12-03T09:00:00.000Z', dicom: '127.0.0.1:11114', http: null, instances: null, load: null, connected: false };
  const page = statusPageHtml({ ...meshStatus, members: [...meshStatus.members, unheard] }, true);
  assert.match(page, /<tr class="dead"><td>site-c<\/td><td>not heard since this start; last seen 2026-12-03T09:00:00.000Z<\/td><td><\/td>/);
  const neverRecorded = statusPageHtml({ ...meshStatus, members: [{ ...unheard, peerId: null, lastSeenAt: null, dicom: null }] }, true);
  assert.match(neverRecorded, /<td>not heard since this start<\/td>/);
});
