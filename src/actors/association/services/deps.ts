/**
 * What an association needs from the rest of the peer, as narrow ports so the association code does
 * not know whether an instance is kept at one site or replicated to many.
 */
import type { DimseStats } from '../dimse-stats.ts';
import type { Socket } from 'node:net';
import type { CatalogEntry } from '../../storage/catalog-types.ts';
import type { InstanceWriter, ReplicaStore } from '../../storage/replica-store.ts';
import type { Clock } from '../../runtime/clock.ts';
import type { Logger } from '../../runtime/logger.ts';
import type { AcceptorConfig } from '../negotiation.ts';
import type { RetrieveSource } from './query-retrieve.ts';
import type { Transcoder } from '../../../codec/transcode-pool.ts';
import type { CommitmentService } from '../../commitment/actor.ts';

export interface IngestPort {
  /**
   * `sopInstanceUid`: the C-STORE command's (already validated), so that a mesh can start copying the
   * instance to other sites while it arrives; the commit still checks the data set's own UID.
   */
  beginWrite(sopInstanceUid?: string): InstanceWriter;
  /**
   * Runs after the local commit: a single site answers at once; the mesh waits for its write quorum
   * here (issue 3). Returns the C-STORE status to send.
   */
  afterCommit(entry: CatalogEntry, outcome: 'stored' | 'duplicate'): Promise<{ status: number; errorComment?: string }>;
  /** The storedAtMs of the newest instance of a patient held here (undefined when none, or not known). */
  newestStoredAtOfPatient?(patientId: string): Promise<number | undefined>;
}

export interface MoveDestination {
  host: string;
  port: number;
}

export interface AssociationDeps {
  config: AcceptorConfig;
  store: ReplicaStore;
  ingest: IngestPort;
  /** Where C-GET/C-MOVE find instances (in a mesh: at every alive site). */
  retrieveSource: RetrieveSource;
  /** AE title -> where C-MOVE sends instances; undefined for an unknown destination (0xA801). */
  resolveMoveDestination(aeTitle: string): MoveDestination | undefined;
  /** Converts instances for C-GET / C-MOVE receivers that refuse the stored transfer syntax. */
  transcoder: Transcoder;
  /** Storage Commitment: takes N-ACTION requests and delivers their reports. */
  commitments: CommitmentService;
  clock: Clock;
  log: Logger;
  /** How long an association may stay silent in Sta2/Sta13 (ARTIM) before we close it. */
  artimTimeoutMs: number;
  /** How long an established association may send nothing while no operation runs before we abort it. */
  idleTimeoutMs: number;
  /** Bound on received bytes waiting to be handled before the socket pauses. */
  maxUnprocessedBytes: number;
  /** For a connection that came through a tunnel: the modality's real address and the peer it entered by. */
  tunnelledClientOf?(socket: Socket): { clientAddress: string; clientPort: number; viaPeerId: string } | undefined;
  /** Where the final responses sent are counted (/api/mesh `dimse`); none counted without it. */
  dimseStats?: DimseStats;
}

/** The single-site ingest: commit locally, answer Success (a duplicate too: the instance is safely stored). */
export function localIngest(store: ReplicaStore): IngestPort {
  return {
    beginWrite: () => store.beginWrite(),
    afterCommit: async () => ({ status: 0x0000 }),
    newestStoredAtOfPatient: (patientId) => store.newestStoredAtOfPatient(patientId),
  };
}
