/**
 * The mesh half of a peer (issues 3 and 4): the libp2p node, membership, replica custody and the
 * balancer, wired to each other. The peer composes it only when it has a swarm key; without one it is a
 * single-site archive.
 */
import { defaultRoutingLimits } from './actors/balancer/logic.ts';
import type { ForgottenSite, MemberRecord, PeerAddresses } from './actors/membership/messages.ts';
import type { LocalStats, MembershipServiceInit } from './actors/membership/actor.ts';
import { supersededMembers } from './actors/membership/logic.ts';
import type { PeerConfig } from './config.ts';
import { ConfigError } from './config.ts';
import { createMeshNode, type MeshNode } from './net/node.ts';
import { readSwarmKeyFile } from './net/swarm-key.ts';
import { SwarmKeyError } from './net/errors.ts';
import { createFrontDoor, type FrontDoor } from './actors/balancer/front-door.ts';
import { balancerTimings, bootstrapPeerIdsOf, type BalancerService, type RosterMember } from './actors/balancer/actor.ts';
import type { RetrieveSource } from './actors/association/services/query-retrieve.ts';
import { startCustody, type CustodyService, type CustodyStats } from './actors/storage/custody/actor.ts';
import type { IngestPort } from './actors/association/services/deps.ts';
import type { ReplicaStore } from './actors/storage/replica-store.ts';
import type { CatalogEntry } from './actors/storage/catalog-types.ts';
import type { Clock } from './actors/runtime/clock.ts';
import { errorText, type Logger } from './actors/runtime/logger.ts';
import type { SiteSupervisor } from './actors/supervisor/site-supervisor.ts';
import { queryPeer } from './actors/storage/replication.ts';
import { Tags } from './codec/dictionary.ts';
import { createConcurrencyLimit, type ConcurrencyLimit } from './actors/runtime/concurrency-limit.ts';
import { withDeadline } from './actors/runtime/deadline.ts';
import type { QueryRequest } from './actors/storage/query/query.ts';
import { statfs } from 'node:fs/promises';
import { buildVersion } from './version.ts';

export interface MeshInit {
  config: PeerConfig;
  dataDir: string;
  store: ReplicaStore;
  clock: Clock;
  log: Logger;
  /** Spawns the mesh children (membership, balancer) under its restart policy; custody uses its policy too. */
  supervisor: Pick<SiteSupervisor, 'system' | 'startMesh' | 'crashHandler'>;
  /** host:port others use to reach this peer's DICOM and HTTP ports. */
  addresses: PeerAddresses;
  /** The bound DICOM port: tunnels from other peers are connected to it. */
  localDicomPort: number;
  activeAssociations(): number;
  /** See MembershipServiceInit.onSiteNameTaken: the peer must stop. */
  onSiteNameTaken?: MembershipServiceInit['onSiteNameTaken'];
  /**
   * A start that fails stops what it had started under a deadline this long (the peer's stop deadline):
   * custody's work still running then is not waited for, as at a peer's stop.
   */
  stopDeadlineMs: number;
}

export interface Mesh {
  node: MeshNode;
  ingest: IngestPort;
  retrieveSource: RetrieveSource;
  frontDoor: FrontDoor;
  /** The scrub's repair: a damaged local copy replaced by a good one from an alive peer. */
  repairCopy(corrupt: CatalogEntry): Promise<'repaired' | 'changed' | 'unavailable'>;
  status(): Record<string, unknown>;
  /** See CustodyService.forgetSite; the site's peers also leave the learnt election roster. */
  forgetSite: CustodyService['forgetSite'];
  /** See BalancerService.forgetPeer. */
  forgetPeer: BalancerService['forgetPeer'];
  /**
   * While the leader's table marks this site refilling (far fewer instances than the fullest site), where
   * an HTTP search goes instead: a whole site's HTTP address, when one is alive. DICOM associations are
   * sent there by the front door; an HTTP request can only be redirected. Undefined when this site is whole.
   */
  searchElsewhere(): { reason: string; httpAddress?: string } | undefined;
  /** The other sites this peer knows of (copies are owed to them) with no peer alive now. */
  sitesDown(): string[];
  /**
   * For Storage Commitment: at how many sites (this one included) each of these local instances is held
   * with the same bytes, asked of every alive peer (one that does not answer counts as not holding), and
   * the write quorum a store would need now.
   */
  sitesHolding(entries: readonly CatalogEntry[]): Promise<{ quorum: number; sitesHolding: Map<string, number> }>;
  /** Cuts the copies arriving and this site's pulls, which keep what arrived until `deadline` (CustodyService.cutTransfers). */
  cutTransfers(deadline: AbortSignal): Promise<void>;
  /** Stops; custody waits for its work until `deadline` at most (CustodyService.stop). */
  stop(deadline?: AbortSignal): Promise<void>;
}

/** SOP Instance UIDs asked of a peer in one query by sitesHolding (a UID list key of ~65 KB). */
const sitesHoldingUidsPerQuery = 1000;

/**
 * Query rounds of sitesHolding in flight at once (a round: one query/1 stream to each other peer). Every
 * commitment transaction checks at once (all records loaded at a start, a burst of requests): unbounded,
 * 65 of them opened more query/1 streams than libp2p lets out to one peer ("Too many outbound protocol
 * streams"), which failed the user's own C-GET/C-MOVE/DICOMweb look-ups at other sites, and counted the
 * instances as held here alone (committed late, or failed 0x0213: helper 94).
 */
const sitesHoldingRoundsMax = 8;

export interface SitesHoldingDeps {
  site: string;
  /** The write quorum a C-STORE accepted now must reach (CustodyService.writeQuorumNow). */
  quorum: number;
  /** The alive peers of the other sites. */
  others: ReadonlyArray<{ peerId: string; siteName: string }>;
  query(peerId: string, request: QueryRequest, limit: number): Promise<{ entries: CatalogEntry[] }>;
  /** Shared by every call: bounds the query rounds in flight. */
  limit: ConcurrencyLimit;
}

/** Mesh.sitesHolding: at how many sites each local instance is held with its bytes, and the quorum now. */
export async function sitesHoldingOf(deps: SitesHoldingDeps, entries: readonly CatalogEntry[]): Promise<{ quorum: number; sitesHolding: Map<string, number> }> {
  const { others } = deps;
  const { quorum } = deps;
  const holders = new Map(entries.map((entry) => [entry.sopInstanceUid, new Set([deps.site])]));
  if (quorum > 1) {
    const bytesOf = new Map(entries.map((entry) => [entry.sopInstanceUid, entry.sha256]));
    for (let first = 0; first < entries.length; first += sitesHoldingUidsPerQuery) {
      const uids = entries.slice(first, first + sitesHoldingUidsPerQuery).map((entry) => entry.sopInstanceUid);
      const request: QueryRequest = { root: 'STUDY', level: 'IMAGE', keys: [{ tag: Tags.SOPInstanceUID, vr: 'UI', value: uids.join('\\') }] };
      // Waits its turn however many wait: the callers (commitment checks) are bounded by the transactions admitted.
      const answers = await deps.limit.run(() => Promise.allSettled(others.map((m) => deps.query(m.peerId, request, uids.length))), 1, undefined, true);
      answers.forEach((answer, i) => {
        if (answer.status === 'rejected') return;
        for (const held of answer.value.entries) if (bytesOf.get(held.sopInstanceUid) === held.sha256) holders.get(held.sopInstanceUid)?.add(others[i]!.siteName);
      });
    }
  }
  return { quorum, sitesHolding: new Map([...holders].map(([uid, sites]) => [uid, sites.size])) };
}

/**
 * A peer started without --bootstrap that knows other sites but has no connection this long after its start
 * warns (the others redial a restarted peer's old address within ~5 s, and it dials the addresses it saved,
 * each at least once by then: a dial gives up after 5 s), and again at this interval. PeerConfig.isolationCheckMs
 * (tests only) replaces both.
 */
const isolationFirstCheckMs = 15_000;
const isolationRecheckMs = 10 * 60_000;

/** What two processes with one identity cost, and the way out: said by the peers that see them and by the twins. */
const twinAdvice =
  'elections stall and copies go astray until one stops; each peer needs its own data directory (start the second one on an empty directory)';

/**
 * The forgotten sites whose peers leave the election roster and the saved addresses at once: the operator's
 * only. A site forgotten by a week's silence may be cut off by a partition; its peers go by the roster's own
 * absence rule, counted only while a majority is seen (review 178: both sides of a 7-day partition forgot each
 * other and elected apart), and its addresses by known-peers.json's, counted only while another peer of that
 * site is connected (dropped with the tombstone, the two sides never redialled each other when the cut healed).
 */
export function operatorForgottenSiteNames(tombstones: readonly ForgottenSite[]): string[] {
  return tombstones.filter((f) => f.byOperator === true).map((f) => f.siteName);
}

/**
 * Whether --bootstrap names a peer other than this one (`--found-mesh auto`: a first start then joins rather than
 * founds): the same list given to every site names each site itself too, by its PeerId or, without one, by its
 * --p2p-port at its --host (on 0.0.0.0, at a loopback address only: other sites likely use the same port).
 */
export function bootstrapsElsewhere(config: Pick<PeerConfig, 'bootstrap' | 'host' | 'p2pPort'>, selfPeerId: string): boolean {
  return config.bootstrap.some((address) => {
    const [peerId] = bootstrapPeerIdsOf([address]);
    if (peerId !== undefined) return peerId !== selfPeerId;
    const parts = address.split('/');
    const own = parts[4] === String(config.p2pPort) && (parts[2] === config.host || (config.host === '0.0.0.0' && parts[1] === 'ip4' && parts[2]!.startsWith('127.')));
    return !own;
  });
}

/**
 * A known site (copies are owed to it) of which no peer has been heard since this start, as /api/mesh lists
 * it among the members: what the election roster recorded of its peers when they were last seen, if anything.
 */
export interface UnheardMemberView {
  peerId: string | null;
  site: string;
  alive: false;
  status: 'not heard';
  heardSinceStart: false;
  /** ISO time the roster last saw the peer alive (an earlier run of this peer), or null. */
  lastSeenAt: string | null;
  dicom: string | null;
  http: null;
  instances: null;
  load: null;
  connected: false;
}

/**
 * The members /api/mesh adds for the known sites not among the listed ones (hunt 187: down when this peer
 * started, they were left out, and 2 members stood beside 3 known sites with no explanation): one per
 * roster peer of the site, or one without a PeerId when the roster has none (pinned, or not recorded).
 */
export function unheardKnownSiteMembers(knownSites: readonly string[], listedSites: ReadonlySet<string>, roster: readonly RosterMember[]): UnheardMemberView[] {
  return knownSites
    .filter((site) => !listedSites.has(site))
    .sort()
    .flatMap((site) => {
      const peers = roster.filter((r) => r.site === site);
      const seen = peers.length > 0 ? peers.map((r) => ({ peerId: r.peerId, lastSeenAt: r.lastSeenAt, dicom: r.dicom })) : [{ peerId: null, lastSeenAt: null, dicom: null }];
      return seen.map((p) => ({ ...p, site, alive: false as const, status: 'not heard' as const, heardSinceStart: false as const, http: null, instances: null, load: null, connected: false as const }));
    });
}

/** What a peer started without --bootstrap knows when it checks whether it serves alone (see startMesh). */
export interface IsolationState {
  /** Sites its data directory knows of. */
  knownSites: readonly string[];
  connectedPeers: number;
  /** The last peer that connected since the start, if any did. */
  lastConnectedPeer: string | undefined;
  savedPeers: number;
  savedDialCauses: ReadonlyArray<{ cause: string; peers: number }>;
}

/** The warning of a peer that serves alone, or undefined: none when it knows no other site or has a peer. */
export function isolationWarningOf(state: IsolationState): { message: string; fields: Record<string, unknown> } | undefined {
  if (state.knownSites.length === 0 || state.connectedPeers > 0) return undefined;
  const knownSites = state.knownSites.slice(0, 16);
  // What the saved peers' dials met says more than "down or moved": a peer answering and refusing the handshake holds another swarm key.
  const lastDials = state.savedDialCauses.length > 0 ? ` Their last dials: ${state.savedDialCauses.map((c) => `${c.peers} peer(s): ${c.cause}`).join('; ')}.` : '';
  // Found once, so its address is known to the others: what failed since is they or the network, not where it listens.
  if (state.lastConnectedPeer !== undefined) {
    return {
      message: `every other site has disconnected from this peer: it serves alone. They are down, or the network between them and this host is cut; they are redialled all along.${lastDials}`,
      fields: { knownSites, lastConnectedPeer: state.lastConnectedPeer },
    };
  }
  const saved = state.savedPeers > 0 ? `none of the ${state.savedPeers} peer(s) whose addresses it saved answers, and ` : 'it saved no address of another peer, and ';
  return {
    message: `no other site has connected to this peer: it serves alone. Its data directory knows other sites; ${saved}none has dialled it: they are down, or moved, or dial the address it had before. If this site moved (another host or --p2p-port), start it with --bootstrap <a running site's /api/mesh self.multiaddrs>.${lastDials}`,
    fields: { knownSites, savedPeers: state.savedPeers, bootstrap: 'none' },
  };
}

export async function startMesh(init: MeshInit): Promise<Mesh> {
  const { config, log } = init;
  if (!config.swarmKeyFile) throw new ConfigError('the mesh needs --swarm-key FILE');
  const swarmKey = await readSwarmKeyFile(config.swarmKeyFile).catch((error: unknown) => {
    // A key that is not there yet: say how a mesh gets one (one key, made once, the same file at every site).
    const missing = (error as { cause?: { code?: unknown } } | undefined)?.cause?.code === 'ENOENT';
    const wayOut = missing ? ': make one with pacs-mesh keygen --out FILE at the first site and copy that file to every other site' : '';
    // A SwarmKeyError names the file already.
    const reason = error instanceof SwarmKeyError ? error.message : `${config.swarmKeyFile}: ${error instanceof Error ? error.message : String(error)}`;
    throw new ConfigError(`cannot use --swarm-key ${reason}${wayOut}`);
  });
  if (swarmKey.permissionsTooOpen) {
    log.warn('the swarm key file can be read by other users: anyone holding it can join the mesh and read every instance (chmod 600 it)', { file: config.swarmKeyFile });
  }
  const node = await createMeshNode({
    dataDir: init.dataDir,
    host: config.host,
    p2pPort: config.p2pPort,
    swarmKey,
    bootstrap: config.bootstrap,
    // A saved address goes after the absence a roster vote goes after, counted only while another peer of its site is connected.
    tuning: { knownPeersForgetAfterMs: balancerTimings.rosterForgetAfterMs },
    onBootstrapUnreachable: (failure) =>
      // Joined through other peers, this is a bootstrap site restarting (routine), not a wrong address.
      failure.connectedPeers > 0
        ? log.info('a bootstrap peer is not reachable now (this peer is in the mesh through others)', { ...failure })
        : log.warn(`cannot reach a bootstrap peer: ${failure.likelyCause}`, { ...failure }),
    onBootstrapIdentityChanged: (change) =>
      change.ownAddress
        ? log.warn("a --bootstrap address is this peer's own --p2p-port but names another PeerId: a wrong port? (nothing to dial there); correct --bootstrap", { ...change })
        : log.warn('a bootstrap address answers under another PeerId (the site there restored on an empty disk?): dialling the address without its /p2p/ part from now on; update --bootstrap', { ...change }),
    onIdentityConflict: (conflict) =>
      log.error(`two processes use one peer identity (a copied data directory?): ${twinAdvice}`, { peer: conflict.peerId, addresses: conflict.addresses }),
    onIdentityTwinAddress: (twin) =>
      twin.bootstrap
        ? log.error(`another process runs with this peer identity at a --bootstrap address (a copied data directory?); this peer cannot join through it and may be serving alone: ${twinAdvice}`, { address: twin.address })
        : log.error(`another process runs with this peer identity at an address learnt from the mesh (a copied data directory?): ${twinAdvice}`, { address: twin.address }),
    // A hint only: the peer starts as it would without it (and finds the others with --bootstrap, or by being dialled).
    onKnownPeersProblem: (problem) =>
      problem.operation === 'read'
        ? log.warn('the saved addresses of other peers cannot be read: ignored (this start dials only --bootstrap addresses, and is found by the others redialling it)', { ...problem })
        : log.warn('the addresses of other peers cannot be saved: a restart on another host or --p2p-port without --bootstrap will not find them', { ...problem }),
    onIdentityConflictNotice: (notice) =>
      log.error(`another process runs with this peer identity (a copied data directory?), says a peer that sees both: ${twinAdvice}`, {
        reportedBy: notice.reportedBy,
        addresses: notice.addresses,
      }),
  });
  const stopping: Array<(deadline?: AbortSignal) => Promise<void>> = [() => node.stop()];
  // A step that fails is logged and the others still run: the node must stop, or its port stays bound.
  const stopStarted = async (deadline?: AbortSignal): Promise<void> => {
    for (const stop of stopping) await stop(deadline).catch((error: unknown) => log.warn('mesh stop step failed', { error: String(error) }));
  };
  try {
    const custody: CustodyService = await startCustody({
      node,
      store: init.store,
      siteName: config.site,
      peerId: node.peerId,
      writeQuorum: config.writeQuorum ?? 'auto',
      clock: init.clock,
      log: log.child({ component: 'custody' }),
      parent: init.supervisor.system,
      // Told where others are, or a new identity: a new site, or one restored on an empty disk that the
      // others reconnect to within a second or two (its old address); a mesh's very first site waits too.
      expectsOtherSites: (config.bootstrap?.length ?? 0) > 0 || node.identityCreated,
      tuning: {
        ...(config.joinWaitAfterStartMs === undefined ? {} : { joinWaitAfterStartMs: config.joinWaitAfterStartMs }),
        ...(config.repairKeysMax === undefined ? {} : { repairKeysMax: config.repairKeysMax }),
      },
      onCrash: init.supervisor.crashHandler('custody'),
    });
    stopping.unshift((deadline) => custody.stop(deadline));
    // Free disk is part of the load the balancer routes by (a full peer gets no new associations).
    const freeBytesAt = freeDiskProbe(init.dataDir, log);
    let freeDiskBytes = await freeBytesAt();
    const freeDisk = (): Pick<LocalStats['load'], 'freeDiskBytes' | 'freeDiskUnknown'> =>
      // A store refusing writes (see ReplicaStore.writeFault) counts as full until it has reopened.
      init.store.writeFault !== undefined ? { freeDiskBytes: 0 } : freeDiskBytes === undefined ? { freeDiskBytes: 0, freeDiskUnknown: true } : { freeDiskBytes };
    const localStats = (): LocalStats => {
      const stats = custody.stats();
      return {
        load: { activeAssociations: init.activeAssociations(), queuedCustodyWork: stats.queuedWork, ...freeDisk() },
        instanceCount: stats.instanceCount,
        digestRoot: stats.digestRoot,
        forgottenSites: stats.forgottenSites,
      };
    };
    const children = await init.supervisor.startMesh({
      node,
      peerId: node.peerId,
      siteName: config.site,
      ...(config.sitePeers === 'several' ? { siteShared: true } : {}),
      build: buildVersion().package,
      ...(init.onSiteNameTaken !== undefined ? { onSiteNameTaken: init.onSiteNameTaken } : {}),
      // Taken for dead, this site was owed copies as debt from then on, not sent: its catalog misses them
      // until it catches up again. Taken for suspect, copies still came (read on resuming).
      onSelfStalled: (stall) => {
        if (stall.seenAs === 'dead') custody.noteSelfStalled();
      },
      priority: config.priority,
      dataDir: init.dataDir,
      addresses: init.addresses,
      localStats: localStats(),
      balancer: {
        routing: { associationsPerPeerMax: config.associationsPerPeer, custodyQueueMax: 1000, freeDiskBytesMin: 1024 ** 3, refillLagInstancesMin: defaultRoutingLimits.refillLagInstancesMin },
        ...(config.roster.length > 0 ? { roster: config.roster } : {}),
        joinsMesh: config.bootstrap.length > 0,
        bootstrapPeerIds: bootstrapPeerIdsOf(config.bootstrap),
        ...(config.electionVoters === 'admitted' ? { votersThroughLeader: true, ...(config.foundMesh === 'auto' ? { bootstrapsElsewhere: bootstrapsElsewhere(config, node.peerId) } : { foundsVoters: config.foundMesh === 'yes' }) } : {}),
        random: lowDiscrepancyDraws(),
        ...(config.forgetRepublishIntervalMs === undefined ? {} : { forgetRepublishIntervalMs: config.forgetRepublishIntervalMs }),
        ...(config.aloneJoinWaitMs === undefined ? {} : { aloneJoinWaitMs: config.aloneJoinWaitMs }),
        // A forget-peer (asked here or passed on) that took a peer out, by the balancer's rules: gone for good, its
        // saved address goes too, and it is not redialled (before, it was dialled at every start: the file kept it).
        onPeersForgotten: (peerIds) => node.forgetPeers(peerIds),
      },
    });
    stopping.unshift(() => children.stop());
    const { membership, balancer } = children;
    const publishStats = () => membership.updateLocalStats(localStats());
    // A site the operator forgot has its peers leave the election roster too: counted as voters, a site that
    // is gone for good could leave the others short of a majority (see operatorForgottenSiteNames).
    // Custody's stats change with every store; its tombstones are the same array until they change.
    let tombstonesInRoster: CustodyStats['forgottenSites'] | undefined;
    const forgetSitesInRoster = () => {
      const tombstones = custody.stats().forgottenSites;
      if (tombstones === tombstonesInRoster) return;
      tombstonesInRoster = tombstones;
      const sites = new Set(operatorForgottenSiteNames(tombstones));
      balancer.setForgottenSites([...sites]);
      // Nor are their addresses kept and dialled at the next start: the saved ones recorded with the site, and
      // the peers this view or the roster know of it (entries without a site: files of earlier builds); those
      // still up go by absence.
      node.forgetSites(sites);
      const ofSites = [
        ...membership.members().filter((m) => m.status === 'dead' && sites.has(m.siteName)).map((m) => m.peerId),
        ...balancer.rosterMembers().filter((m) => !m.up && m.site !== null && sites.has(m.site)).map((m) => m.peerId),
      ];
      if (ofSites.length > 0) node.forgetPeers([...new Set(ofSites)]);
    };
    custody.onStatsChanged(() => {
      publishStats();
      forgetSitesInRoster();
    });
    forgetSitesInRoster();
    membership.onViewChanged((members) => {
      custody.onViewChanged(members);
      for (const m of members) if (m.status === 'alive') node.noteSiteOf(m.peerId, m.siteName);
    });
    custody.onViewChanged(membership.members());
    publishStats();
    const frontDoor = createFrontDoor({
      balancer,
      node,
      selfPeerId: node.peerId,
      log: log.child({ component: 'front-door' }),
      localActiveAssociations: init.activeAssociations,
    });
    stopping.unshift(() => frontDoor.stop());
    await frontDoor.serveInbound(init.localDicomPort, config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host);
    // Load figures change with every association: refresh what the next heartbeat says once a second.
    const statsTimer = setInterval(() => {
      void freeBytesAt().then((bytes) => (freeDiskBytes = bytes));
      publishStats();
    }, 1000);
    statsTimer.unref();
    stopping.unshift(async () => clearInterval(statsTimer));
    // Without --bootstrap, a peer finds the others at the addresses it saved (known-peers.json), and is
    // found by them redialling the address they knew it at. A site that moved (another host or --p2p-port)
    // while every site it saved moved or is down too is found by nobody: it served alone, every C-STORE
    // acknowledged on its one copy, and said nothing (helper 91). Its data directory says which sites it
    // belongs with: none connected by now is worth a warning, again every 10 minutes while so.
    if (config.bootstrap.length === 0) {
      let isolationTimer: ReturnType<Clock['setTimeout']> | undefined;
      let lastConnectedPeer: string | undefined;
      const stopWatchingConnects = node.onPeerConnected((peerId) => (lastConnectedPeer = peerId));
      stopping.unshift(async () => stopWatchingConnects());
      const checkIsolation = (): void => {
        const warning = isolationWarningOf({
          knownSites: custody.knownSites().map((k) => k.site),
          connectedPeers: node.connectedPeers().length,
          lastConnectedPeer,
          savedPeers: node.savedPeers,
          savedDialCauses: node.savedDialCauses(),
        });
        if (warning) log.warn(warning.message, warning.fields);
        isolationTimer = init.clock.setTimeout(checkIsolation, config.isolationCheckMs ?? isolationRecheckMs);
      };
      isolationTimer = init.clock.setTimeout(checkIsolation, config.isolationCheckMs ?? isolationFirstCheckMs);
      stopping.unshift(async () => init.clock.clearTimeout(isolationTimer));
    }
    const sitesHoldingQueries = createConcurrencyLimit(sitesHoldingRoundsMax, 0);
    return {
      node,
      ingest: custody.ingest,
      retrieveSource: {
        resolve: (request, limit) => custody.retrieve.resolveRetrieveEverywhere(request, { limit }),
        ensureLocal: (entry, signal) => custody.retrieve.ensureLocal(entry, { signal }),
        repairCopy: async (entry) => {
          const outcome = await custody.retrieve.repairCopy(entry);
          // The scrub's figures do not count these: the log says what became of the copy (helper 49).
          log.info(outcome === 'unavailable' ? 'retrieve: a damaged copy here could not be replaced from any peer' : 'retrieve: a damaged copy here was replaced from a peer', { sopInstanceUid: entry.sopInstanceUid, outcome });
          return outcome === 'unavailable' ? undefined : init.store.getEntry(entry.sopInstanceUid);
        },
        searchRefusal: () => custody.searchRefusal(),
      },
      frontDoor,
      repairCopy: (corrupt) => custody.retrieve.repairCopy(corrupt),
      forgetSite: (siteName) => custody.forgetSite(siteName),
      forgetPeer: (peerId) => balancer.forgetPeer(peerId),
      sitesHolding: (entries) =>
        sitesHoldingOf(
          {
            site: config.site,
            quorum: custody.writeQuorumNow(),
            others: membership.members().filter((m) => m.status === 'alive' && m.peerId !== node.peerId && m.siteName !== config.site),
            query: (peerId, request, limit) => queryPeer(node, peerId, request, limit),
            limit: sitesHoldingQueries,
          },
          entries,
        ),
      sitesDown: () => {
        const alive = new Set(membership.members().filter((m) => m.status === 'alive').map((m) => m.siteName));
        return custody.knownSites().map((known) => known.site).filter((site) => !alive.has(site));
      },
      searchElsewhere: () => {
        const table = balancer.table();
        if (!(table?.entries.some((e) => e.peerId === node.peerId && e.refilling) ?? false)) return undefined;
        const alive = new Map(membership.members().filter((m) => m.status === 'alive').map((m) => [m.peerId, m]));
        // A whole site, the least loaded first (as the front door picks one for an association).
        const whole = (table?.entries ?? [])
          .filter((e) => !e.refilling && e.peerId !== node.peerId && alive.has(e.peerId))
          .sort((a, b) => Number(a.saturated) - Number(b.saturated) || b.weight - a.weight)[0];
        const fullest = Math.max(0, ...[...alive.values()].map((m) => m.instanceCount));
        return {
          reason: `this site is refilling: ${custody.stats().instanceCount} of ${fullest} instances here`,
          httpAddress: whole === undefined ? undefined : alive.get(whole.peerId)!.addresses.http,
        };
      },
      status: () => {
        const leader = balancer.leader();
        const members = membership.members();
        const superseded = supersededMembers(members);
        const stats = custody.stats();
        // A dead peer the operator took out (its site forgotten, or itself out of a learnt roster) is
        // not listed: membership keeps its record only to fence its stale heartbeats (helper 64).
        const forgottenSiteNames = new Set(stats.forgottenSites.map((site) => site.siteName));
        const voters = new Set(balancer.roster());
        const connected = new Set(node.connectedPeers());
        const decommissioned = (m: MemberRecord): boolean => forgottenSiteNames.has(m.siteName) || (config.roster.length === 0 && !voters.has(m.peerId));
        const listed = members.filter((m) => !superseded.has(m.peerId) && !(m.status === 'dead' && decommissioned(m)));
        const knownSites = custody.knownSites();
        return {
          balancer: {
            ...balancer.status(),
            roster: balancer.roster().length,
            rosterMembers: balancer.rosterMembers(),
            // Sites whose new associations the leader sends to a whole site while they refill.
            refillingSites: [...new Set((balancer.table()?.entries ?? []).filter((e) => e.refilling).map((e) => e.siteName))].sort(),
          },
          frontDoor: frontDoor.stats(),
          peerId: node.peerId,
          multiaddrs: node.multiaddrs(),
          leader: leader ?? null,
          // Live peers claiming one site name at several DICOM addresses (a copied --site), while it lasts.
          siteConflicts: membership.siteConflicts().map((conflict) => ({ site: conflict.siteName, peers: conflict.peers.map((p) => ({ peerId: p.peerId, dicom: p.dicom })) })),
          members: [
            ...listed.map((m) => ({
              peerId: m.peerId,
              site: m.siteName,
              alive: m.status === 'alive',
              status: m.status,
              dicom: m.addresses.dicom,
              http: m.addresses.http,
              instances: m.instanceCount,
              load: m.load,
              // Its package version (pacs-mesh --version), absent from builds before the field.
              ...(m.build !== undefined ? { build: m.build } : {}),
              // False while the peer cannot record a vote (a full disk): passed over in elections.
              electable: m.electable,
              // Whether this peer holds a connection of its own to it (absent for itself): gossip between two
              // peers without one passes through others, and stops with them.
              ...(m.peerId === node.peerId ? {} : { connected: connected.has(m.peerId) }),
              // Membership holds records only of peers heard (directly or through gossip) since this start.
              heardSinceStart: true,
            })),
            ...unheardKnownSiteMembers(
              knownSites.map((known) => known.site).filter((site) => !forgottenSiteNames.has(site)),
              new Set([config.site, ...listed.map((m) => m.siteName)]),
              balancer.rosterMembers(),
            ),
          ],
          custody: { ...stats, knownSites },
        };
      },
      cutTransfers: (deadline) => custody.cutTransfers(deadline),
      stop: stopStarted,
    };
  } catch (error) {
    // Under a deadline, as a peer's stop: custody's stop waited for its work without one, so a pull or a
    // write on a store that does not answer held a failed start (and the command's exit) for ever.
    await withDeadline(init.stopDeadlineMs, undefined, stopStarted, init.clock);
    throw error;
  }
}

/** Distinct statfs failure causes logged per failure streak; past it, new causes are not logged. */
const freeDiskCausesLoggedMax = 16;

/**
 * Measures the free bytes of the file system holding `path`; undefined when statfs fails (unknown, not a
 * full disk: 0 sent every association of this site elsewhere, silently). A failure is logged once per
 * cause until a measurement succeeds again, which is logged too.
 */
export function freeDiskProbe(path: string, log: Logger): () => Promise<number | undefined> {
  const causesLogged = new Set<string>();
  return async () => {
    try {
      const stats = await statfs(path);
      if (causesLogged.size > 0) {
        causesLogged.clear();
        log.info('free disk space measured again', { path });
      }
      return stats.bavail * stats.bsize;
    } catch (error) {
      const cause = (error as NodeJS.ErrnoException).code ?? errorText(error);
      if (!causesLogged.has(cause) && causesLogged.size < freeDiskCausesLoggedMax) {
        causesLogged.add(cause);
        log.warn('free disk space unknown: statfs of the data directory failed; the balancer does not count this peer as full meanwhile', { path, cause, error: errorText(error) });
      }
      return undefined;
    }
  };
}

/**
 * Draws for the weighted route choice: the golden-ratio sequence covers [0, 1) evenly, so a burst of
 * associations at one front door splits in proportion to the weights instead of by luck.
 */
function lowDiscrepancyDraws(): () => number {
  let draw = 0;
  return () => {
    draw = (draw + 0.6180339887498949) % 1;
    return draw;
  };
}
