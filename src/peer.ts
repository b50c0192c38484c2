/**
 * The composition root of one pacs-mesh peer: opens the store, starts the actor tree, the DICOM port
 * and the HTTP port, and stops them in the reverse order.
 */
import { constants } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { accessDigestOf, loadAeDirectory } from './ae-directory.ts';
import { ConfigError, type PeerConfig } from './config.ts';
import { createDimseStats } from './actors/association/dimse-stats.ts';
import { startDicomListener, type DicomListener } from './actors/association/listener.ts';
import { localIngest, type IngestPort } from './actors/association/services/deps.ts';
import { startMesh, type Mesh } from './mesh.ts';
import { meshStateText, readMeshState, sitesOfSavedPeers, startedWithoutSwarmKeyError, wasMeshSite, withSitesOfSavedPeers, type MeshState } from './mesh-state.ts';
import { tunnelledClientOfSync } from './net/tunnel.ts';
import { networkInterfaces } from 'node:os';
import { localRetrieveSource, type RetrieveSource } from './actors/association/services/query-retrieve.ts';
import { createReplicaStore, type ReplicaStore } from './actors/storage/replica-store.ts';
import type { CatalogEntry } from './actors/storage/catalog-types.ts';
import { startSiteSupervisor, type MeshChildName } from './actors/supervisor/site-supervisor.ts';
import { startScrub, type ScrubService } from './actors/storage/scrub/actor.ts';
import { archiveBusy } from './actors/storage/scrub/logic.ts';
import { startCommitments } from './actors/commitment/actor.ts';
import type { CommitmentConfig } from './actors/commitment/messages.ts';
import { implementationClassUid, implementationVersionName } from './actors/association/implementation.ts';
import { startHttpServer, type RunningHttpServer } from './http/server.ts';
import { SearchCursors } from './http/dicomweb/search-cursors.ts';
import { createDicomWebStats, heldInstanceRequestsQueuedMax, heldInstanceBytesMax, meshLookupsQueuedMax, meshLookupsRunningMax } from './http/dicomweb/context.ts';
import { createConcurrencyLimit, type ConcurrencyLimit } from './actors/runtime/concurrency-limit.ts';
import { startTranscoderPool } from './codec/transcode-pool.ts';
import { systemClock, type Clock } from './actors/runtime/clock.ts';
import { startDeadline, untilAborted, withDeadline } from './actors/runtime/deadline.ts';
import { halfCloseGraceMs } from './actors/association/connection.ts';
import { createLogger, errorText, type Logger } from './actors/runtime/logger.ts';
import { createStopSteps, type StopSteps } from './actors/runtime/stop-steps.ts';
import { buildVersion } from './version.ts';

/**
 * What open associations and HTTP requests get at a stop before they are aborted (a C-GET or C-MOVE
 * still running shutdownAnswerMs before that ends with a final response: see AcceptorSession.onShutdown).
 */
const shutdownGraceMsDefault = 5000;

/**
 * From the grace's end to the stop's deadline: aborted associations close their sockets (halfCloseGraceMs),
 * and the copies arriving and this site's pulls, cut then at the latest, keep what arrived (a flush and a
 * synced marker each: milliseconds on a healthy disk), all at once.
 */
const keepAfterCutMs = halfCloseGraceMs;

/**
 * A stop's whole drain ends by this, whatever is stuck: under Docker's default stop grace of 10 s (before
 * its SIGKILL), with 3 s left for what follows (the mesh node's and the store's close, the exit).
 */
export const stopDeadlineMs = shutdownGraceMsDefault + keepAfterCutMs;

export interface Peer {
  config: PeerConfig;
  dicomPort: number;
  httpPort: number;
  store: ReplicaStore;
  /**
   * Settles when a supervised child (membership, balancer, custody) has exhausted its restart budget: the
   * peer is no working mesh member without it, so the command stops it and exits 1 for its service
   * manager to restart it whole. Never rejects; pending while all is well.
   */
  failed: Promise<PeerFailure>;
  /** Test hook: a mesh child throws on its next message (its supervision then applies). */
  crashChildForTest(child: MeshChildName): void;
  stop(): Promise<void>;
}

export interface PeerFailure {
  /** childFailed: a supervised child past its budget (exit 1); siteNameTaken: a copied --site (exit 2, a restart would not cure it). */
  readonly kind: 'childFailed' | 'siteNameTaken';
  readonly child: string;
  readonly error: string;
}

export class PeerError extends Error {
  static readonly NAME = 'PeerError';
  override readonly name = PeerError.NAME;
  constructor(
    readonly code: 'ERR_CHILD_FAILED',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** What a failed child's escalation says to an operator. */
export function failureText(failure: PeerFailure): string {
  return failure.kind === 'siteNameTaken' ? failure.error : `the ${failure.child} actor kept failing (${failure.error})`;
}

export interface PeerOptions {
  log?: Logger;
  clock?: Clock;
  /** How long a stop waits for running associations and HTTP requests before aborting them; its deadline is keepAfterCutMs later. */
  shutdownGraceMs?: number;
  /** Tests: another transcoder thread script (one that holds its jobs, say). */
  transcoderWorkerUrl?: URL;
  /** Tests: shorter Storage Commitment waits and retries. */
  commitment?: Partial<CommitmentConfig>;
  /** Tests: the DICOMweb budget of bytes held until read (one that records what each response weighs). */
  heldInstanceBytes?: ConcurrencyLimit;
  /** Tests: awaited after each local commit, before its quorum is asked for (a commit that takes as long as the test wants). */
  afterCommitGate?: () => Promise<void>;
}


/**
 * `mkdir -p`. Node's recursive mkdir spins forever at full CPU on a path it cannot create but whose
 * parent exists (under /proc: ENOENT and EEXIST in turn); this one gives up with the error.
 */
async function makeDirectory(path: string): Promise<void> {
  const existsAsDirectory = async (error: NodeJS.ErrnoException): Promise<void> => {
    if (error.code !== 'EEXIST') throw error;
    if (!(await stat(path)).isDirectory()) throw error;
  };
  try {
    await mkdir(path);
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') return existsAsDirectory(error as NodeJS.ErrnoException);
  }
  const parent = dirname(path);
  if (parent === path) throw Object.assign(new Error(`cannot create ${path}`), { code: 'ENOENT' });
  await makeDirectory(parent);
  await mkdir(path).catch(existsAsDirectory);
}

export async function startPeer(config: PeerConfig, options: PeerOptions = {}): Promise<Peer> {
  const log = options.log ?? createLogger({ site: config.site }, config.logLevel);
  const clock = options.clock ?? systemClock;
  const graceMs = options.shutdownGraceMs ?? shutdownGraceMsDefault;
  // What a stop waits for at most: the drain's grace, then the cut copies' keeps (stopDeadlineMs by default).
  const deadlineMs = graceMs + keepAfterCutMs;
  const dataDir = resolve(config.dataDir);
  const unusableDataDir = (why: string) => new ConfigError(`--data ${config.dataDir} cannot be used as the data directory: ${why}`);
  await makeDirectory(dataDir).catch((error: NodeJS.ErrnoException) => {
    const why =
      error.code === 'EEXIST' || error.code === 'ENOTDIR'
        ? 'a file is in the way of that directory'
        : error.code === 'ENOENT'
          ? 'a directory on its path cannot be created there (a dangling symbolic link, or a file system such as /proc)'
          : error.message;
    throw unusableDataDir(why);
  });
  // Checked here, by name: the store's own directory creation reported a read-only file system as ENOENT.
  await access(dataDir, constants.W_OK).catch((error: NodeJS.ErrnoException) => {
    throw unusableDataDir(error.code === 'EROFS' ? 'it is on a read-only file system' : `this user cannot write there (${error.code ?? error.message})`);
  });
  const aeDirectory = await loadAeDirectory(dataDir, config.moveDestinations);
  const store = createReplicaStore({ path: join(dataDir, 'store'), blobWriteBufferBytes: config.ingestBufferBytes, onOpenNotice: (message, fields) => log.warn(message, fields) });
  await store.open();
  // A mesh site's data directory started without its key would run alone by mistake: refused unless
  // --standalone yes says it is meant (hunt 163); a lone site that never met another knows no site.
  let standaloneMeshState: MeshState | undefined;
  if (!config.swarmKeyFile) {
    const storeMeshState = await readMeshState(store, config.site, join(dataDir, 'store')).catch(async (error: unknown) => {
      await store.close();
      throw error;
    });
    const meshState = withSitesOfSavedPeers(storeMeshState, await sitesOfSavedPeers(dataDir), config.site);
    if (wasMeshSite(meshState) && !config.standalone) {
      await store.close();
      throw startedWithoutSwarmKeyError(config.dataDir, config.site, meshState);
    }
    if (wasMeshSite(meshState)) {
      standaloneMeshState = meshState;
      log.warn(`standalone on purpose (--standalone yes) on a data directory that was a mesh site: ${meshStateText(meshState)}; C-STOREs are acknowledged on this site's one copy, and what it owes waits until it starts with --swarm-key again`, { ...meshState });
    }
  }
  const stopLoggingCatalogDamage = store.onCatalogDamage((reason) =>
    log.error('the catalog is damaged: restart the peer to rebuild it from the instances\' commit records (until then C-FIND and retrieves that meet the damage fail, and every store once LevelDB refuses the catalog\'s writes)', { reason }),
  );
  const stopLoggingBlobDamage = store.onBlobDamage((reason) =>
    log.error("the instance database (blobs/) is damaged: restart the peer to have LevelDB repair it at the start, which lists the instances it lost (until then what meets the damage fails, and every store once LevelDB refuses its writes)", { reason }),
  );
  const stopLoggingFaults = store.onWriteFault((event) => {
    switch (event.type) {
      case 'faulted':
        log.error('the store stopped writing: stores are refused with 0xA700 until it reopens (on a full disk, free space; a deleted data directory needs a restart)', { error: event.error });
        break;
      case 'reopenFailed':
        log.error('the store could not reopen yet', { error: event.error, nextTryInMs: event.nextTryInMs });
        break;
      case 'reopened':
        log.warn('the store reopened and writes again', { faultedForMs: event.faultedForMs });
        break;
      default: {
        const unreachable: never = event;
        throw new Error(`unhandled store fault event ${JSON.stringify(unreachable)}`);
      }
    }
  });
  const failed = Promise.withResolvers<PeerFailure>();
  let healthy = false;
  // The escalation, once one came: what `failed` resolves with, readable at once during the start.
  let failure: PeerFailure | undefined;
  const supervisor = startSiteSupervisor(config.site, {
    clock,
    log,
    onEscalate: (child, error) => {
      failure ??= { kind: 'childFailed', child, error: error instanceof Error ? error.message : String(error) };
      healthy = false;
      failed.resolve(failure);
    },
  });
  let dicom: DicomListener | undefined;
  let http: RunningHttpServer | undefined;
  let mesh: Mesh | undefined;
  let scrub: ScrubService | undefined;
  // The DICOM port must be bound before the mesh can announce it, and the mesh supplies the ingest port:
  // a store arriving in between waits for the mesh rather than being acknowledged without its quorum.
  let markMeshReady!: () => void;
  const meshReady = new Promise<void>((resolve) => (markMeshReady = resolve));
  const local = { ingest: localIngest(store), retrieveSource: localRetrieveSource(store) };
  const current = () => mesh ?? local;
  const ingest: IngestPort = {
    beginWrite: (sopInstanceUid) => current().ingest.beginWrite(sopInstanceUid),
    afterCommit: async (entry, outcome) => {
      await options.afterCommitGate?.();
      await meshReady;
      return current().ingest.afterCommit(entry, outcome);
    },
    newestStoredAtOfPatient: (patientId) => store.newestStoredAtOfPatient(patientId),
  };
  // C-GET, C-MOVE and DICOMweb find instances here: before the mesh is up, the local catalog alone could
  // pass part of the archive off as all of it.
  const retrieveSource: RetrieveSource = {
    resolve: async (request, limit) => {
      await meshReady;
      return current().retrieveSource.resolve(request, limit);
    },
    ensureLocal: async (entry, signal) => {
      await meshReady;
      return current().retrieveSource.ensureLocal(entry, signal);
    },
    repairCopy: async (entry) => current().retrieveSource.repairCopy?.(entry),
    searchRefusal: () => (config.swarmKeyFile && mesh === undefined ? 'starting: not joined to the mesh yet: retry' : current().retrieveSource.searchRefusal?.()),
  };
  const dicomWebStats = createDicomWebStats();
  const dimseStats = createDimseStats();
  // Started with the peer, its worker only with the first transcode.
  const transcoder = startTranscoderPool({ clock, log: log.child({ component: 'transcoder' }), workerUrl: options.transcoderWorkerUrl });
  const commitments = startCommitments({
    store,
    clock,
    log,
    parent: supervisor.system,
    aeTitle: config.aeTitle,
    resolveAe: (aeTitle) => aeDirectory.resolve(aeTitle),
    config: options.commitment,
    // Committed only at the write quorum's sites: before the mesh is up, no other site is counted.
    ...(config.swarmKeyFile ? { sitesHolding: async (entries: readonly CatalogEntry[]) => (await meshReady, mesh ? mesh.sitesHolding(entries) : { quorum: 1, sitesHolding: new Map() }) } : {}),
  });
  // The last steps of a stop, and of a failed start's clean-up: the store closes last, whatever failed before.
  const closeTheRest = async (steps: StopSteps): Promise<void> => {
    await steps.step('transcoder', () => transcoder.stop());
    await steps.step('actor system', () => supervisor.stop());
    stopLoggingFaults();
    stopLoggingCatalogDamage();
    stopLoggingBlobDamage();
    await steps.step('store', () => store.close());
  };
  try {
    dicom = await startDicomListener({
      host: config.host,
      port: config.dicomPort,
      maxAssociations: config.maxAssociations,
      parent: supervisor.associations,
      frontDoor: { route: (socket, onTunnelling) => (mesh ? mesh.frontDoor.route(socket, onTunnelling) : Promise.resolve('local')) },
      deps: {
        config: {
          aeTitle: config.aeTitle,
          allowedCallingAeTitles: config.allowedCallingAeTitles,
          maxPduLength: config.maxPduLength,
          implementationClassUid,
          implementationVersionName,
        },
        store,
        ingest,
        retrieveSource,
        resolveMoveDestination: (aeTitle) => aeDirectory.resolve(aeTitle),
        transcoder,
        commitments,
        clock,
        log,
        artimTimeoutMs: 30_000,
        idleTimeoutMs: config.idleTimeoutMs,
        maxUnprocessedBytes: 4 * 1024 * 1024,
        tunnelledClientOf: (socket) => (mesh ? tunnelledClientOfSync(socket) : undefined),
        dimseStats,
      },
    });
    const listener = dicom;
    http = await startHttpServer({
      host: config.host,
      port: config.httpPort,
      ...(config.httpConnectionsPerClient === undefined ? {} : { maxConnectionsPerClient: config.httpConnectionsPerClient === 0 ? Number.POSITIVE_INFINITY : config.httpConnectionsPerClient }),
      isHealthy: () => healthy,
      log: log.child({ component: 'http' }),
      dicomWeb: {
        store,
        retrieveSource,
        ingest,
        transcoder,
        clock,
        log: log.child({ component: 'dicomweb' }),
        stats: dicomWebStats,
        meshLookups: createConcurrencyLimit(meshLookupsRunningMax, meshLookupsQueuedMax),
        heldInstanceBytes: options.heldInstanceBytes ?? createConcurrencyLimit(heldInstanceBytesMax, heldInstanceRequestsQueuedMax),
        searchCursors: new SearchCursors(),
        searchElsewhere: () => mesh?.searchElsewhere(),
        sitesDown: () => mesh?.sitesDown() ?? [],
      },
      scrubNow: () => {
        scrub?.startNow();
        return scrub?.stats();
      },
      forgetSite: config.swarmKeyFile ? (siteName) => mesh?.forgetSite(siteName) ?? { outcome: 'unknown' } : undefined,
      forgetPeer: config.swarmKeyFile ? (peerId) => mesh?.forgetPeer(peerId) ?? 'unknown' : undefined,
      meshStatus: async () => {
        const meshStatus = mesh?.status();
        return {
          self: {
            site: config.site,
            aeTitle: config.aeTitle,
            dicom: { host: config.host, port: listener.port },
            version: buildVersion(),
            ...(mesh ? { peerId: mesh.node.peerId, multiaddrs: mesh.node.multiaddrs() } : {}),
          },
          // A count the catalog's damage fails is unknown, said why (it was a 500 for the whole answer).
          ...(await store.countInstances().then(
            (instances) => ({ instances }),
            (error: unknown) => ({ instances: null, instancesUnknown: errorText(error) }),
          )),
          ...(store.writeFault !== undefined ? { storeFault: store.writeFault } : {}),
          ...(store.blobRepair !== undefined ? { blobRepair: store.blobRepair } : {}),
          ...(scrub ? { scrub: scrub.stats() } : {}),
          transcoder: transcoder.stats(),
          commitment: commitments.stats(),
          dicomweb: { ...dicomWebStats },
          // Final DIMSE responses sent since start, by service and class (success, warning, failure, cancel).
          dimse: structuredClone(dimseStats),
          // Restarts per supervised mesh actor since start, and whether one gave up (the peer then stops).
          ...(mesh ? { supervision: Object.fromEntries(['membership', 'balancer', 'custody'].map((child) => [child, supervisor.supervision(child)])) } : {}),
          // Run alone on purpose on a mesh site's data directory: what it knows of the mesh, as read at start.
          ...(standaloneMeshState ? { standalone: standaloneMeshState } : {}),
          activeAssociations: listener.activeAssociations(),
          associationsServed: listener.associationsServed(),
          leader: null,
          members: [],
          ...(meshStatus ? (({ peerId: _peerId, multiaddrs: _multiaddrs, ...rest }) => rest)(meshStatus) : {}),
        };
      },
    });
    if (config.swarmKeyFile) {
      const advertised = advertiseHost(config.host);
      mesh = await startMesh({
        config,
        dataDir,
        store,
        clock,
        log,
        supervisor,
        addresses: {
          dicom: `${advertised}:${listener.port}`,
          http: `${advertised}:${http.port}`,
          aeTitle: config.aeTitle,
          accessDigest: accessDigestOf(aeDirectory.entries(), config.allowedCallingAeTitles),
        },
        localDicomPort: listener.port,
        activeAssociations: () => listener.activeAssociations(),
        stopDeadlineMs: deadlineMs,
        // A copied --site: the peer stops (the command exits 2) rather than count as the site it is not.
        onSiteNameTaken: (taken) => {
          failure ??= { kind: 'siteNameTaken', child: 'membership', error: taken.message };
          healthy = false;
          failed.resolve(failure);
        },
      });
    }
    markMeshReady();
    if (config.scrubMbPerS > 0) {
      // The store and the scrub live and stop together: the listener is never removed.
      let lastStoredAtMs: number | undefined;
      store.onInstanceStored(() => {
        lastStoredAtMs = clock.nowMs();
      });
      scrub = startScrub({
        store,
        clock,
        log,
        parent: supervisor.system,
        config: { bytesPerSecond: config.scrubMbPerS * 1_000_000 },
        busy: () => archiveBusy(listener.activeAssociations(), lastStoredAtMs, clock.nowMs()),
        repair: (entry) => (mesh ? mesh.repairCopy(entry) : Promise.resolve('noPeers')),
      });
    }
  } catch (caught) {
    // A child that kept failing while the mesh started: say which one, in one line (the cause is its error).
    const error = failure ? new PeerError('ERR_CHILD_FAILED', `the mesh could not start: ${failureText(failure)}`, { cause: caught }) : caught;
    // What had started stops, each step guarded as at a stop: before, one that threw skipped the rest, left the
    // ports bound and the store's lock held (a next start in this process failed), and hid the start's error.
    const cleanUp = createStopSteps(log, 'the clean-up of a failed start');
    // The mesh's work under the stop's deadline too (a mesh that failed to start has stopped itself under it).
    await cleanUp.step('scrub and mesh', () =>
      withDeadline(
        deadlineMs,
        undefined,
        async (deadline) => {
          await cleanUp.step('scrub', () => scrub?.stop(deadline));
          await cleanUp.step('mesh', () => mesh?.stop(deadline));
        },
        clock,
      ),
    );
    await cleanUp.step('DICOM listener', () => dicom?.stop(0));
    await cleanUp.step('storage commitment', () => commitments.stop());
    await cleanUp.step('HTTP server', () => http?.stop());
    await closeTheRest(cleanUp);
    throw error;
  }
  healthy = failure === undefined;
  // The PeerId and addresses are what other sites' --bootstrap needs: said once where operators look first.
  log.info('peer started', { aeTitle: config.aeTitle, dicomPort: dicom.port, httpPort: http.port, dataDir, ...(mesh ? { peerId: mesh.node.peerId, multiaddrs: mesh.node.multiaddrs() } : {}) });
  await aeDirectory.persist().catch((error: unknown) =>
    log.error('--move-dest destinations not saved: they work until this peer stops, not after a restart', { error: errorText(error) }),
  );
  const [runningDicom, runningHttp] = [dicom, http];
  let stopping: Promise<void> | undefined;
  return {
    config,
    dicomPort: runningDicom.port,
    httpPort: runningHttp.port,
    store,
    failed: failed.promise,
    crashChildForTest: (child) => supervisor.crashChild(child),
    stop: () =>
      (stopping ??= (async () => {
        healthy = false;
        log.info('peer stopping: new associations and HTTP connections refused, open ones drain', { graceMs, deadlineMs });
        const deadline = startDeadline(deadlineMs, undefined, `the stop's deadline of ${deadlineMs} ms passed`, clock);
        // A step that throws (none does today: a bug) is logged and the rest still runs: the store must close,
        // or the next start finds its LevelDB locks held; the error is thrown once everything has stopped.
        const steps = createStopSteps(log, 'the stop');
        const step = steps.step;
        await step('drain', async () => {
          // Both drain before the mesh stops: a C-STORE or a STOW-RS in flight still needs its write quorum.
          const drained = Promise.all([runningDicom.stop(graceMs), runningHttp.stop(graceMs)]);
          // Background work serving no one: stopped at once, its read-back or repair waited for until the deadline at most.
          const scrubStopped = scrub?.stop(deadline.signal);
          // Copies arriving and this site's pulls serve them until they end or the grace does; cut then, they
          // keep what arrived while aborted sockets close: the waits overlap, under one deadline (hunt 149).
          const graceEnd = startDeadline(graceMs, undefined, undefined, clock);
          await untilAborted(drained, graceEnd.signal);
          graceEnd.clear();
          // A cut that fails (a bug) must not keep the store from closing: the mesh's stop cuts what is left.
          const transfersCut = mesh?.cutTransfers(deadline.signal).catch((error: unknown) => log.warn('cutting copies arriving and pulls at the stop failed', { error: errorText(error) }));
          await Promise.all([drained, scrubStopped, transfersCut]);
        });
        // Its look-ups get a moment (2 s) but not past the deadline: their records stay on disk, due at the next start.
        await step('storage commitment', () => untilAborted(commitments.stop(), deadline.signal));
        await step('mesh', () => mesh?.stop(deadline.signal));
        deadline.clear();
        await closeTheRest(steps);
        const failure = steps.firstFailure();
        if (failure !== undefined) throw failure.error;
        log.info('peer stopped');
      })()),
  };
}

/** The address other peers use to reach this one: the bind address, or the first external IPv4 when bound to all. */
function advertiseHost(host: string): string {
  if (host !== '0.0.0.0' && host !== '::') return host;
  for (const addresses of Object.values(networkInterfaces())) {
    const external = addresses?.find((a) => a.family === 'IPv4' && !a.internal);
    if (external) return external.address;
  }
  return '127.0.0.1';
}
