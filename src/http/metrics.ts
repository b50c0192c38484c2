/**
 * GET /metrics: /api/mesh's object in the Prometheus text format (0.0.4), so that a hospital's monitoring scrapes
 * every site without a JSON exporter. Made here from the same object as the status page, so the two never disagree;
 * the names are a contract with operators' dashboards and alerts: add, never rename.
 */
import { list, record, text } from './status-fields.ts';

/** What the process adds beside /api/mesh's object (passed in, so that the text is a pure function of its inputs). */
export interface ProcessFigures {
  readonly residentMemoryBytes: number;
  readonly heapUsedBytes: number;
  readonly startTimeSeconds: number;
}

export const metricsContentType = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Readonly<Record<string, string>>;
interface Sample {
  readonly labels: Labels;
  readonly value: number;
}
interface Family {
  readonly name: string;
  readonly type: 'counter' | 'gauge';
  readonly help: string;
  readonly samples: readonly Sample[];
}

/** The exposition of `status` (/api/mesh's object), `healthy` (/healthz's answer) and the process's figures. */
export function metricsText(status: Record<string, unknown>, healthy: boolean, processFigures: ProcessFigures): string {
  const self = record(status.self);
  const version = record(self.version);
  const balancer = record(status.balancer);
  const custody = record(status.custody);
  const families: Family[] = [
    gauge('pacs_mesh_build_info', 'The build this peer runs (pacs-mesh --version); always 1.', [
      { labels: { version: text(version.package), store_format: text(version.storeFormat), site: text(self.site) }, value: 1 },
    ]),
    gauge('pacs_mesh_healthy', '1 while /healthz answers 200 (serving), 0 while starting, stopping or failed.', one(healthy ? 1 : 0)),
    gauge('pacs_mesh_instances', 'Instances stored at this peer (absent while the catalog cannot count them).', one(status.instances)),
    gauge('pacs_mesh_store_fault', '1 while stores are refused after an I/O error (see /api/mesh storeFault).', one(status.storeFault === undefined ? 0 : 1)),
    gauge('pacs_mesh_associations_active', 'DICOM associations open at this peer.', one(status.activeAssociations)),
    counter('pacs_mesh_associations_served_total', 'Association requests answered at this peer since its start.', one(status.associationsServed)),
    counter(
      'pacs_mesh_dimse_responses_total',
      'Final DIMSE responses sent since start, by service and class (success, warning, failure, cancel).',
      Object.entries(record(status.dimse)).flatMap(([service, outcomes]) => Object.entries(record(outcomes)).flatMap(([outcome, count]) => sampleOf({ service, outcome }, count))),
    ),
    ...sectionFamilies('pacs_mesh_scrub', record(status.scrub), {
      passesCompleted: ['counter', 'passes_completed_total', 'Scrub passes completed since start.'],
      instancesVerified: ['counter', 'instances_verified_total', 'Stored copies read back and checked.'],
      bytesVerified: ['counter', 'bytes_verified_total', 'Bytes read back and checked.'],
      badCopiesFound: ['counter', 'bad_copies_found_total', 'Stored copies found damaged.'],
      copiesRepaired: ['counter', 'copies_repaired_total', 'Damaged copies replaced from another peer.'],
      copiesUnrepaired: ['counter', 'copies_unrepaired_total', 'Damaged copies no peer could replace.'],
      busy: ['gauge', 'busy', '1 while the scrub reads at its slower, busy rate.'],
    }),
    ...sectionFamilies('pacs_mesh_transcoder', record(status.transcoder), {
      jobsQueued: ['gauge', 'jobs_queued', 'Transcoding jobs waiting.'],
      jobsRunning: ['gauge', 'jobs_running', 'Transcoding jobs running.'],
      bytesHeld: ['gauge', 'bytes_held', 'Transcoded bytes held for sending.'],
      jobsDone: ['counter', 'jobs_done_total', 'Transcoding jobs done.'],
      jobsFailed: ['counter', 'jobs_failed_total', 'Transcoding jobs failed.'],
      jobsCancelled: ['counter', 'jobs_cancelled_total', 'Transcoding jobs cancelled.'],
    }),
    ...sectionFamilies('pacs_mesh_commitment', record(status.commitment), {
      pending: ['gauge', 'reports_pending', 'Storage Commitment reports owed to modalities.'],
      reportsDelivered: ['counter', 'reports_delivered_total', 'Storage Commitment reports delivered.'],
      reportsDropped: ['counter', 'reports_dropped_total', 'Storage Commitment reports given up on.'],
      instancesCommitted: ['counter', 'instances_committed_total', 'Instances reported committed.'],
      instancesFailed: ['counter', 'instances_failed_total', 'Instances reported failed.'],
    }),
    counter(
      'pacs_mesh_dicomweb_requests_total',
      'DICOMweb requests by kind, and those refused, failed or cut short.',
      ['searches', 'retrieves', 'metadata', 'frames', 'stores', 'refused', 'failed', 'cutShort'].flatMap((kind) => sampleOf({ kind }, record(status.dicomweb)[kind])),
    ),
    counter(
      'pacs_mesh_actor_restarts_total',
      'Restarts of each supervised mesh actor since start.',
      Object.entries(record(status.supervision)).flatMap(([actor, value]) => sampleOf({ actor }, record(value).restarts)),
    ),
    gauge(
      'pacs_mesh_actor_escalated',
      '1 once a supervised mesh actor gave up (the peer then stops).',
      Object.entries(record(status.supervision)).flatMap(([actor, value]) => sampleOf({ actor }, record(value).escalated === true ? 1 : 0)),
    ),
  ];
  if (status.members !== undefined) families.push(...meshFamilies(status, balancer, custody));
  families.push(
    gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', one(processFigures.residentMemoryBytes)),
    gauge('process_start_time_seconds', 'Start time of the process since the Unix epoch in seconds.', one(processFigures.startTimeSeconds)),
    gauge('nodejs_heap_used_bytes', "V8's heap in use, in bytes.", one(processFigures.heapUsedBytes)),
  );
  return families
    .filter((family) => family.samples.length > 0)
    .map((family) => [`# HELP ${family.name} ${family.help}`, `# TYPE ${family.name} ${family.type}`, ...family.samples.map((sample) => `${family.name}${labelText(sample.labels)} ${sample.value}`)].join('\n'))
    .join('\n')
    .concat('\n');
}

/** The mesh's part: members, the leader, what custody owes and holds queued. */
function meshFamilies(status: Record<string, unknown>, balancer: Record<string, unknown>, custody: Record<string, unknown>): Family[] {
  const members = list(status.members).map(record);
  const memberLabels = (member: Record<string, unknown>): Labels => ({ site: text(member.site), peer_id: text(member.peerId) });
  return [
    gauge('pacs_mesh_member_alive', 'Each member this peer knows of: 1 alive, 0 suspect, dead or not heard.', members.flatMap((m) => sampleOf(memberLabels(m), m.alive === true ? 1 : 0))),
    gauge('pacs_mesh_member_instances', 'Instances each member said it holds in its last heartbeat.', members.flatMap((m) => sampleOf(memberLabels(m), m.instances))),
    gauge('pacs_mesh_leader_known', '1 while this peer knows a leader of the balancer.', one(status.leader === null || status.leader === undefined ? 0 : 1)),
    gauge('pacs_mesh_is_leader', '1 while this peer is the leader.', one(balancer.role === 'leader' ? 1 : 0)),
    gauge('pacs_mesh_election_term', "The balancer's current election term at this peer.", one(balancer.term)),
    gauge('pacs_mesh_replication_debt_entries', 'Copies this peer owes to other sites (replication debt).', one(custody.debtEntries)),
    gauge(
      'pacs_mesh_replication_debt_entries_by_site',
      'Copies this peer owes, by the site they are owed to.',
      list(custody.knownSites).flatMap((value) => sampleOf({ site: text(record(value).site) }, record(value).debtEntries)),
    ),
    gauge('pacs_mesh_custody_queued_work', 'Copies owed to alive sites plus pulls waiting.', one(custody.queuedWork)),
    counter('pacs_mesh_uid_conflicts_total', 'UIDs found holding other bytes at another peer since start.', one(custody.uidConflicts)),
  ];
}

/** Families for the numeric keys named in `keys` of one /api/mesh section, under `prefix`. */
function sectionFamilies(prefix: string, section: Record<string, unknown>, keys: Record<string, readonly ['counter' | 'gauge', string, string]>): Family[] {
  return Object.entries(keys).map(([key, [type, suffix, help]]) => {
    const value = typeof section[key] === 'boolean' ? (section[key] ? 1 : 0) : section[key];
    return { name: `${prefix}_${suffix}`, type, help, samples: one(value) };
  });
}

function gauge(name: string, help: string, samples: readonly Sample[]): Family {
  return { name, type: 'gauge', help, samples };
}

function counter(name: string, help: string, samples: readonly Sample[]): Family {
  return { name, type: 'counter', help, samples };
}

/** One unlabelled sample, or none when the value is not a finite number (a figure /api/mesh could not give). */
function one(value: unknown): Sample[] {
  return sampleOf({}, value);
}

function sampleOf(labels: Labels, value: unknown): Sample[] {
  return typeof value === 'number' && Number.isFinite(value) ? [{ labels, value }] : [];
}

/** `{a="x",b="y"}`, values escaped as the format asks (backslash, double quote, line feed). */
function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([name, value]) => `${name}="${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}
