/**
 * GET /: the state of this peer and its mesh as a page that reloads itself, so that an operator who kills
 * a site can watch the others mark it dead, elect a leader and drain the copies owed to it. It is made
 * here from /api/mesh's object (no script, nothing fetched from elsewhere); every value is escaped.
 */
import { list, record, text } from './status-fields.ts';

/** How often the page reloads itself. */
export const statusPageRefreshSeconds = 2;

interface MemberRow {
  site: string;
  peerId: string;
  status: string;
  instances: string;
  dicom: string;
  http: string;
  activeAssociations: string;
  queuedCustodyWork: string;
  freeDisk: string;
  build: string;
}

/** /api/mesh `dimse`'s C-STORE counts in a few words; empty without them. */
function storesAnswered(counts: Record<string, unknown>): string {
  if (counts.success === undefined) return '';
  return `${text(counts.success)} success, ${text(counts.warning)} warning, ${text(counts.failure)} failure`;
}

/** `self.version` as `pacs-mesh --version` words it (without node's version); empty when absent. */
function buildText(version: Record<string, unknown>): string {
  return version.package === undefined ? '' : `pacs-mesh ${text(version.package)} (store format ${text(version.storeFormat)})`;
}

/** The page for /api/mesh's object `status`; `healthy` is /healthz's answer. */
export function statusPageHtml(status: Record<string, unknown>, healthy: boolean): string {
  const self = record(status.self);
  const site = text(self.site) || 'pacs-mesh';
  const leader = record(status.leader);
  const leaderPeerId = text(leader.peerId);
  const custody = record(status.custody);
  const members: MemberRow[] = list(status.members).map((value) => {
    const member = record(value);
    const load = record(member.load);
    return {
      site: text(member.site),
      peerId: text(member.peerId),
      // A known site none of whose peers was heard since this start (down then): no status of its own to show.
      status: member.heardSinceStart === false ? `not heard since this start${member.lastSeenAt ? `; last seen ${text(member.lastSeenAt)}` : ''}` : text(member.status),
      instances: text(member.instances),
      dicom: text(member.dicom),
      http: text(member.http),
      activeAssociations: text(load.activeAssociations),
      queuedCustodyWork: text(load.queuedCustodyWork),
      freeDisk: load.freeDiskUnknown === true ? 'unknown' : typeof load.freeDiskBytes === 'number' ? `${(load.freeDiskBytes / 1e9).toFixed(1)} GB` : '',
      build: text(member.build),
    };
  });
  members.sort((a, b) => (a.site < b.site ? -1 : a.site > b.site ? 1 : 0));
  const facts: Array<[string, string]> = [
    ['site', site],
    ['health', healthy ? 'serving' : 'starting, stopping or failed (/healthz 503)'],
    ['AE title', text(self.aeTitle)],
    ['DICOM', addressOf(self.dicom)],
    ['PeerId', text(self.peerId) || 'none (not in a mesh)'],
    ['build', buildText(record(self.version))],
    // null when the catalog's damage failed the count (/api/mesh instancesUnknown, hunt 183): an empty cell read as none.
    ['instances here', status.instances === null ? `unknown: ${text(status.instancesUnknown)}` : text(status.instances)],
    ['associations open', text(status.activeAssociations)],
    ['C-STOREs answered since start', storesAnswered(record(record(status.dimse)['C-STORE']))],
    ['leader', leaderPeerId ? `${text(leader.site)} (term ${text(leader.term)})` : `none${noLeaderReason(record(status.balancer))}`],
  ];
  if (status.storeFault !== undefined) facts.push(['store fault', text(status.storeFault)]);
  if (status.custody !== undefined) facts.push(['copies owed to other sites', text(custody.debtEntries)]);
  // --standalone yes on a mesh site's data directory: the page must not pass it off as a site of its own.
  if (status.standalone !== undefined) {
    const standalone = record(status.standalone);
    const sites = list(standalone.otherSites).map(text).join(', ');
    facts.push(['standalone on purpose', `was a mesh site knowing ${sites}; ${standalone.debtEntriesMore === true ? 'at least ' : ''}${text(standalone.debtEntries)} copies owed, sent once started with --swarm-key again`]);
  }
  const memberRows = members
    .map((m) => {
      const link = m.http ? `<a href="http://${escapeHtml(m.http)}/">${escapeHtml(m.http)}</a>` : '';
      const leaderMark = m.peerId !== '' && m.peerId === leaderPeerId ? ' (leader)' : '';
      return `<tr class="${statusClass(m.status)}"><td>${escapeHtml(m.site)}${leaderMark}</td><td>${escapeHtml(m.status)}</td><td>${escapeHtml(m.instances)}</td><td>${escapeHtml(m.activeAssociations)}</td><td>${escapeHtml(m.queuedCustodyWork)}</td><td>${escapeHtml(m.freeDisk)}</td><td>${escapeHtml(m.dicom)}</td><td>${link}</td><td>${escapeHtml(m.build)}</td><td><code>${escapeHtml(m.peerId)}</code></td></tr>`;
    })
    .join('\n');
  // A copied --site: shown above everything while it lasts, since copies counted by site then mislead.
  const siteConflicts = list(status.siteConflicts)
    .map((value) => {
      const conflict = record(value);
      const peers = list(conflict.peers).map((peer) => `${text(record(peer).peerId)} at ${text(record(peer).dicom)}`);
      return `<p class="conflict">Site name ${escapeHtml(text(conflict.site))} is claimed by live peers at several DICOM addresses: ${escapeHtml(peers.join(', '))}. Copies are counted by site, so these count as one site; give each site its own --site (the peer started later stops, unless its site runs several peers on purpose: --site-peers several).</p>`;
    })
    .join('\n');
  const debtRows = list(custody.knownSites)
    .map((value) => {
      const known = record(value);
      return `<tr><td>${escapeHtml(text(known.site))}</td><td>${escapeHtml(text(known.debtEntries))}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="${statusPageRefreshSeconds}">
<title>${escapeHtml(site)} · pacs-mesh</title>
<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
p.conflict{color:#b00;font-weight:bold}tr.alive td:nth-child(2){color:#060}tr.suspect td:nth-child(2){color:#a60}tr.dead td:nth-child(2){color:#b00;font-weight:bold}code{font-size:.85em}</style>
</head><body>
<h1>${escapeHtml(site)}</h1>
${siteConflicts}
<table>${facts.map(([name, value]) => `<tr><th>${escapeHtml(name)}</th><td>${escapeHtml(value)}</td></tr>`).join('')}</table>
<h2>Members, as this peer sees them</h2>
${members.length > 0 ? `<table><tr><th>site</th><th>status</th><th>instances</th><th>associations</th><th>copies and pulls queued</th><th>free disk</th><th>DICOM</th><th>HTTP</th><th>build</th><th>PeerId</th></tr>\n${memberRows}</table>` : '<p>none: this peer is not in a mesh</p>'}
${debtRows !== '' ? `<h2>Copies owed, by site</h2>\n<table><tr><th>site</th><th>copies owed</th></tr>\n${debtRows}</table>` : ''}
<p>Reloads every ${statusPageRefreshSeconds} s. The same as JSON: <a href="/api/mesh">/api/mesh</a>; for Prometheus: <a href="/metrics">/metrics</a>.</p>
</body></html>
`;
}

/** Why no leader can be elected here, from /api/mesh's balancer fields, so that a leaderless mesh is not taken for a network fault. */
function noLeaderReason(balancer: Record<string, unknown>): string {
  const lack = record(balancer.lacksRosterMajority);
  if (balancer.lacksRosterMajority !== undefined) {
    return `: ${text(lack.alive)} of ${text(lack.voters)} voters alive, no strict majority (forget the sites gone for good: POST /api/forget-site or /api/forget-peer)`;
  }
  if (balancer.waitsToMeetBootstrapPeers === true) return ': waits to meet one of its --bootstrap peers';
  return '';
}

function statusClass(status: string): string {
  return status === 'alive' || status === 'suspect' || status === 'dead' ? status : status.startsWith('not heard') ? 'dead' : 'unknown';
}

function addressOf(value: unknown): string {
  const address = record(value);
  return address.host !== undefined ? `${text(address.host)}:${text(address.port)}` : text(value);
}

const htmlEscapes: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Site names, addresses and faults come from other peers' heartbeats: none may become markup. */
function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => htmlEscapes[c]!);
}
