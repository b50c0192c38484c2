/**
 * The IngestPort of a mesh peer: a C-STORE goes through custody admission, the local durable commit, and
 * waits for the write quorum before its status is answered.
 *
 * Order, following the custody reducer: `storeRequested` (admission: pending-store and debt bounds) ->
 * `writeLocal` (the association's own writer commits: one synced batch) -> `localWriteDone` -> copies
 * offered to every site -> `ackStore` (Success once `quorum` sites hold it durably, 0xA700 on timeout).
 * The writer handed to the association is wrapped so that its `commit` runs only when custody admitted the
 * store: a refused store leaves nothing behind (the commit throws, the association answers 0xA700).
 *
 * A duplicate (UID already stored) keeps the stored copy (the store drops the new bytes) and still goes
 * through custody: it is answered Success only once the quorum holds for it. Sites that already hold it
 * answer the replicate offer with 'have' at once, so no bytes travel again.
 *
 * Cut-through: when the gate can push (push.ts), every piece also goes to every other live site as it
 * arrives, and the catalog entry follows as soon as custody admits the store, so the other sites commit
 * while we do. Custody's replicate effect for a site then waits for that push instead of starting a
 * transfer; a push that fails leaves custody to replicate the stored copy as before.
 */
import { createHash, type Hash } from 'node:crypto';
import type { IngestPort } from '../association/services/deps.ts';
import type { CatalogEntry } from './catalog-types.ts';
import type { CommitInfo, CommitResult, InstanceWriter, ReplicaStore } from './replica-store.ts';

export interface StoreAnswer {
  status: number;
  errorComment?: string;
}

/** A store submitted to custody. */
export interface StoreTicket {
  /** true once `writeLocal` ran and committed; false when custody refused before writing or the write failed. */
  readonly written: Promise<boolean>;
  /** The C-STORE status custody decided. */
  readonly answer: Promise<StoreAnswer>;
}

/** What the ingest needs from custody (the custody actor implements it). */
export interface CustodyGate {
  /**
   * Submits a store: custody admits it, then calls `writeLocal` (which must make the instance durable and
   * resolve true, or resolve false), then answers once the quorum holds or cannot.
   */
  submitStore(sopInstanceUid: string, sha256: string, writeLocal: () => Promise<boolean>): StoreTicket;
  /** Starts pushing an instance to every other live site while it arrives (see push.ts); optional. */
  startPushes?(sopInstanceUid: string): readonly InstancePush[];
}

/** What the ingest needs of one cut-through push (ReplicaPush implements it). */
export interface InstancePush {
  write(bytes: Uint8Array): Promise<void>;
  end(entry: CatalogEntry): void;
  abort(): void;
}

export type MeshIngestErrorCode = 'ERR_INGEST_REFUSED';

export class MeshIngestError extends Error {
  static readonly NAME = 'MeshIngestError';
  override readonly name = MeshIngestError.NAME;
  constructor(
    readonly code: MeshIngestErrorCode,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** Bound on commits whose answer afterCommit has not collected yet (one per association at most, in practice). */
const unclaimedAnswersMax = 4096;

export function createMeshIngest(store: ReplicaStore, gate: CustodyGate): IngestPort {
  // The association passes the entry returned by commit() to afterCommit(): identity links the two.
  const answers = new Map<CatalogEntry, Promise<StoreAnswer>>();

  class CustodyWriter implements InstanceWriter {
    private readonly hash: Hash | undefined;

    constructor(
      private readonly inner: InstanceWriter,
      private readonly pushes: readonly InstancePush[],
    ) {
      // Hash here only for writers that cannot tell their running hash (the LevelDB writer can).
      this.hash = inner.sha256SoFar ? undefined : createHash('sha256');
    }

    get bytesWritten(): number {
      return this.inner.bytesWritten;
    }

    async write(data: Uint8Array): Promise<void> {
      this.hash?.update(data);
      if (this.pushes.length === 0) return this.inner.write(data);
      await Promise.all([this.inner.write(data), ...this.pushes.map((push) => push.write(data))]);
    }

    abort(): Promise<void> {
      for (const push of this.pushes) push.abort();
      return this.inner.abort();
    }

    /** Sends the entry to the pushed sites (their blob id is their own), so they commit while we do. */
    private endPushes(buildEntry: (info: CommitInfo) => CatalogEntry, sha256: string): void {
      if (this.pushes.length === 0) return;
      let entry: CatalogEntry;
      try {
        entry = buildEntry({ byteLength: this.inner.bytesWritten, sha256, blobId: '' });
      } catch {
        for (const push of this.pushes) push.abort();
        return;
      }
      for (const push of this.pushes) push.end(entry);
    }

    async commit(sopInstanceUid: string, buildEntry: (info: CommitInfo) => CatalogEntry): Promise<CommitResult> {
      const sha256 = this.hash ? this.hash.digest('hex') : this.inner.sha256SoFar!();
      let committed: CommitResult | undefined;
      let failure: unknown;
      const ticket = gate.submitStore(sopInstanceUid, sha256, async () => {
        // A UID held here with other bytes is a duplicate: this site keeps its copy and drops these bytes,
        // so no other site may store them either (a site that lacked the UID, refilling, kept them for good:
        // one UID, two data sets in the mesh). Custody replicates the stored copy once the pushes fail.
        const held = this.pushes.length === 0 ? undefined : await store.getEntry(sopInstanceUid).catch(() => null);
        if (held === undefined || held?.sha256 === sha256) this.endPushes(buildEntry, sha256);
        else for (const push of this.pushes) push.abort();
        try {
          committed = await this.inner.commit(sopInstanceUid, buildEntry);
          return true;
        } catch (error) {
          failure = error;
          return false;
        }
      });
      await ticket.written;
      if (committed === undefined) {
        // Refused before writing: the pushes never got their entry (ended pushes ignore this).
        for (const push of this.pushes) push.abort();
        await this.inner.abort();
        if (failure !== undefined) throw failure;
        const answer = await ticket.answer;
        throw new MeshIngestError('ERR_INGEST_REFUSED', answer.errorComment ?? 'custody refused the store', answer.status);
      }
      if (answers.size >= unclaimedAnswersMax) {
        // Only a caller that never calls afterCommit gets here; forget the oldest rather than grow.
        const oldest = answers.keys().next().value;
        if (oldest !== undefined) answers.delete(oldest);
      }
      answers.set(committed.entry, ticket.answer);
      return committed;
    }
  }

  return {
    beginWrite: (sopInstanceUid) => new CustodyWriter(store.beginWrite(), sopInstanceUid !== undefined && gate.startPushes ? gate.startPushes(sopInstanceUid) : []),
    async afterCommit(entry, outcome) {
      void outcome;
      const answer = answers.get(entry);
      if (answer !== undefined) {
        answers.delete(entry);
        return answer;
      }
      // Committed by a writer we did not hand out: custody still has to reach the quorum for it.
      return gate.submitStore(entry.sopInstanceUid, entry.sha256, async () => true).answer;
    },
    newestStoredAtOfPatient: (patientId) => store.newestStoredAtOfPatient(patientId),
  };
}
