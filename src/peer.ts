/**
 * The composition root of one pacs-mesh peer: opens the store, starts the actor tree, the DICOM port
 * and the HTTP port, and stops them in the reverse order.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadAeDirectory } from './ae-directory.ts';
import type { PeerConfig } from './config.ts';
import { startDicomListener, type DicomListener } from './actors/association/listener.ts';
import { localIngest } from './actors/association/services/deps.ts';
import { localRetrieveSource } from './actors/association/services/query-retrieve.ts';
import { createReplicaStore, type ReplicaStore } from './actors/storage/replica-store.ts';
import { startSiteSupervisor } from './actors/supervisor/site-supervisor.ts';
import { implementationClassUid, implementationVersionName } from './actors/association/implementation.ts';
import { startHttpServer, type RunningHttpServer } from './http/server.ts';
import { systemClock, type Clock } from './actors/runtime/clock.ts';
import { createLogger, type Logger } from './actors/runtime/logger.ts';

export interface Peer {
  config: PeerConfig;
  dicomPort: number;
  httpPort: number;
  store: ReplicaStore;
  stop(): Promise<void>;
}

export interface PeerOptions {
  log?: Logger;
  clock?: Clock;
  /** How long shutdown waits for running associations before aborting them. */
  shutdownGraceMs?: number;
}


export async function startPeer(config: PeerConfig, options: PeerOptions = {}): Promise<Peer> {
  const log = options.log ?? createLogger({ site: config.site }, config.logLevel);
  const clock = options.clock ?? systemClock;
  const dataDir = resolve(config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const aeDirectory = await loadAeDirectory(dataDir, config.moveDestinations);
  const store = createReplicaStore({ path: join(dataDir, 'store') });
  await store.open();
  const supervisor = startSiteSupervisor(config.site);
  let healthy = false;
  let dicom: DicomListener | undefined;
  let http: RunningHttpServer | undefined;
  try {
    dicom = await startDicomListener({
      host: config.host,
      port: config.dicomPort,
      maxAssociations: config.maxAssociations,
      parent: supervisor.associations,
      deps: {
        config: {
          aeTitle: config.aeTitle,
          allowedCallingAeTitles: config.allowedCallingAeTitles,
          maxPduLength: config.maxPduLength,
          implementationClassUid,
          implementationVersionName,
        },
        store,
        ingest: localIngest(store),
        retrieveSource: localRetrieveSource(store),
        resolveMoveDestination: (aeTitle) => aeDirectory.resolve(aeTitle),
        clock,
        log,
        artimTimeoutMs: 30_000,
        maxUnprocessedBytes: 4 * 1024 * 1024,
      },
    });
    const listener = dicom;
    http = await startHttpServer({
      host: config.host,
      port: config.httpPort,
      isHealthy: () => healthy,
      meshStatus: async () => ({
        self: { site: config.site, aeTitle: config.aeTitle, dicom: { host: config.host, port: listener.port } },
        instances: await store.countInstances(),
        activeAssociations: listener.activeAssociations(),
      }),
    });
  } catch (error) {
    await dicom?.stop(0);
    supervisor.stop();
    await store.close();
    throw error;
  }
  healthy = true;
  log.info('peer started', { aeTitle: config.aeTitle, dicomPort: dicom.port, httpPort: http.port, dataDir });
  const [runningDicom, runningHttp] = [dicom, http];
  let stopping: Promise<void> | undefined;
  return {
    config,
    dicomPort: runningDicom.port,
    httpPort: runningHttp.port,
    store,
    stop: () =>
      (stopping ??= (async () => {
        healthy = false;
        await runningDicom.stop(options.shutdownGraceMs ?? 5000);
        await runningHttp.stop();
        supervisor.stop();
        await store.close();
        log.info('peer stopped');
      })()),
  };
}
