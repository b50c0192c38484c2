/**
 * Storage Commitment Push Model (PS3.4 annex J) as an SCP: a modality asks, by N-ACTION, whether this
 * archive takes responsibility for instances it sent; the answer comes later as an N-EVENT-REPORT. Closed
 * unions of the commitment reducer's inputs and effects.
 */

export const StorageCommitment = {
  /** The SOP class (PS3.4 J.3). */
  sopClassUid: '1.2.840.10008.1.20.1',
  /** Its well-known SOP instance, the one every N-ACTION and N-EVENT-REPORT names. */
  sopInstanceUid: '1.2.840.10008.1.20.1.1',
  /** N-ACTION Action Type ID: "Request Storage Commitment". */
  actionTypeRequest: 1,
  /** N-EVENT-REPORT Event Type IDs. */
  eventTypeAllCommitted: 1,
  eventTypeFailuresExist: 2,
} as const;

/** Failure Reason (0008,1197) values of a Failed SOP Sequence item (PS3.3 C.14.1.1). */
export const FailureReason = {
  ProcessingFailure: 0x0110,
  NoSuchObjectInstance: 0x0112,
  ClassInstanceConflict: 0x0119,
  /** Held here, but not at as many sites as the write quorum asks (the others down or still receiving it). */
  ResourceLimitation: 0x0213,
} as const;

export interface CommitmentReference {
  readonly sopClassUid: string;
  readonly sopInstanceUid: string;
}

export interface FailedReference extends CommitmentReference {
  readonly failureReason: number;
}

/** One N-ACTION's request, as kept until its report is delivered. */
export interface CommitmentRecord {
  readonly transactionUid: string;
  /** The calling AE title of the N-ACTION: where the report goes. */
  readonly requestorAeTitle: string;
  readonly references: readonly CommitmentReference[];
  readonly receivedAtMs: number;
  /**
   * 'association': the requestor is not in the AE directory, so the report can only go back on the
   * N-ACTION's own association (not kept on disk: nowhere to send it after that association).
   * 'directory': over a new association to the requestor's address from the AE directory.
   */
  readonly deliverVia: 'association' | 'directory';
}

export interface CommitmentOutcome {
  readonly committed: readonly CommitmentReference[];
  readonly failed: readonly FailedReference[];
}

export interface CommitmentConfig {
  /** How long an instance not found yet is looked for again (it may still be on its way from another site). */
  readonly checkWaitMs: number;
  /** The first look-up again after this; each later one waits twice as long, up to checkIntervalMaxMs. */
  readonly checkIntervalMs: number;
  readonly checkIntervalMaxMs: number;
  /** Waits before the 2nd, 3rd ... delivery attempt; the last one repeats. */
  readonly retryDelaysMs: readonly number[];
  /** A report not delivered within this time after its request is dropped (the modality will have asked again). */
  readonly reportLifetimeMs: number;
  /** Transactions held at once; an N-ACTION beyond is refused (0x0213). */
  readonly transactionsMax: number;
  /** References held at once over all transactions (each costs some 300 bytes and its look-ups); beyond, 0x0213. */
  readonly referencesMax: number;
}

/**
 * Results name the admission they belong to (`generation`): a request that reuses a Transaction UID
 * replaces the one before, whose late look-up or delivery results must not close the new one.
 */
export type CommitmentInput =
  | { readonly type: 'tick'; readonly nowMs: number }
  /** An N-ACTION accepted (a 'directory' record is already on disk). */
  | { readonly type: 'accepted'; readonly record: CommitmentRecord; readonly nowMs: number }
  /** Records a previous run left on disk. */
  | { readonly type: 'loaded'; readonly records: readonly CommitmentRecord[]; readonly nowMs: number }
  /**
   * SOP Instance UID -> SOP Class UID of each asked instance this site holds; `belowQuorum`: those of them
   * not held at as many sites as the write quorum asks (in a mesh), not committed yet.
   */
  | {
      readonly type: 'checked';
      readonly transactionUid: string;
      readonly generation: number;
      readonly found: ReadonlyMap<string, string>;
      readonly belowQuorum?: ReadonlySet<string>;
      readonly nowMs: number;
    }
  | { readonly type: 'checkFailed'; readonly transactionUid: string; readonly generation: number; readonly error: string; readonly nowMs: number }
  /** 'unreachable': it can never be delivered (the N-ACTION's association is over). */
  | { readonly type: 'deliveryEnded'; readonly transactionUid: string; readonly generation: number; readonly outcome: 'delivered' | 'failed' | 'unreachable'; readonly error?: string; readonly nowMs: number };

export type CommitmentEffect =
  | { readonly type: 'check'; readonly transactionUid: string; readonly generation: number; readonly sopInstanceUids: readonly string[] }
  | { readonly type: 'deliver'; readonly record: CommitmentRecord; readonly generation: number; readonly outcome: CommitmentOutcome }
  /** The transaction is over: its record leaves the disk. */
  | { readonly type: 'forget'; readonly record: CommitmentRecord }
  /** A log line; one with `repeatKey` is logged once a minute per key, the others counted (a flood of like requests). */
  | { readonly type: 'report'; readonly level: 'info' | 'warn' | 'error'; readonly message: string; readonly fields: Readonly<Record<string, unknown>>; readonly repeatKey?: string };

export interface CommitmentStats {
  /** Transactions whose report is not delivered yet. */
  readonly pending: number;
  readonly reportsDelivered: number;
  /** Reports dropped: undeliverable, or past their lifetime. */
  readonly reportsDropped: number;
  readonly instancesCommitted: number;
  readonly instancesFailed: number;
}
