/**
 * C-STORE as an SCP (PS3.4 annex B), on the raw byte path: the data set fragments go to the replica
 * store exactly as received while a streaming reader picks the attributes to index from the header and
 * checks the data set's structure to its end (a cut-off one must not be acknowledged: it could never be
 * retrieved). Success is answered only after the instance and its catalog entry are durable.
 */
import { CommandField, Status, type DimseCommand } from '../../../codec/dimse.ts';
import { DatasetParseError, type DatasetParseErrorCode } from '../../../codec/dataset/errors.ts';
import { DatasetHeaderReader } from '../../../codec/dataset/reader.ts';
import { Tags } from '../../../codec/dictionary.ts';
import { isAcceptableUid } from '../../../codec/uid.ts';
import type { DicomElement } from '../../../codec/dicom-types.ts';
import type { CatalogEntry } from '../../storage/catalog-types.ts';
import { storageErrorText, type InstanceWriter } from '../../storage/replica-store.ts';
import type { NegotiatedContext } from '../negotiation.ts';
import type { IngestPort } from './deps.ts';

/**
 * Failure statuses we answer (PS3.4 B.2.3: A7xx out of resources, A9xx data set does not match SOP
 * class, Cxxx cannot understand). The error comment always says which check failed.
 */
export const StoreFailure = {
  OutOfResources: Status.OutOfResources,
  SopClassMismatch: 0xa900,
  CannotParse: 0xc000,
  InvalidUid: 0xc001,
  UidMismatch: 0xc002,
} as const;

/** Logged (a warning) when a store finds its UID held with other bytes: see IncomingStore.duplicateWithOtherBytes. */
export const duplicateWithOtherBytesMessage = 'a SOP Instance UID already stored came again with other bytes: the stored copy is kept, the new bytes dropped (Success, as for any duplicate)';

/** Values bigger than this are not kept in the catalog (they are never useful as query keys). */
const catalogValueMaxBytes = 1024;

export interface StoreResult {
  status: number;
  errorComment?: string;
  /** An 0xA700 that a retry of the same data set meets again: over one of this archive's bounds. */
  beyondBounds?: true;
}

/**
 * A data set the reader refused: 0xC000, except one beyond this archive's bounds (header bytes before
 * Pixel Data, top-level elements): legal data this archive does not take, which 0xC000 ("cannot
 * understand") would have the modality take for corrupt (helper 44).
 */
function readerRefusal(error: unknown): StoreResult {
  // The comment holds 64 characters: the bound in short.
  const bound = error instanceof DatasetParseError ? boundsExceeded[error.code] : undefined;
  if (bound !== undefined) return { status: StoreFailure.OutOfResources, errorComment: `beyond this archive's bounds: ${bound}`, beyondBounds: true };
  return { status: StoreFailure.CannotParse, errorComment: `cannot parse data set: ${messageOf(error)}` };
}

const boundsExceeded: Partial<Record<DatasetParseErrorCode, string>> = {
  ERR_DATASET_TOO_LARGE_HEADER: 'over 16 MiB of headers',
  ERR_DATASET_TOO_MANY_ELEMENTS: 'too many top-level elements',
  ERR_DATASET_TOO_DEEP: 'sequences nested too deep',
};

/** The store could not take the instance (a full disk, a store refusing writes): the modality may retry. */
function storageFailure(error: unknown): StoreResult {
  return { status: StoreFailure.OutOfResources, errorComment: `storage failed: ${storageErrorText(error)}` };
}

export interface IncomingStoreOptions {
  /** What announced the UIDs the data set must carry, as error comments name it. Default "the command's". */
  announcer?: string;
  /**
   * A check of the data set's identity beyond the C-STORE's own, run after the whole data set was read and
   * before anything is committed (STOW-RS: the study its target resource names).
   */
  checkIdentity?: (identity: StoreIdentity) => StoreResult | undefined;
}

/** What a Part 10 file's meta information says of its data set (PS3.10 7.1): what a C-STORE command says. */
export interface Part10Description {
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
}

/** One C-STORE in progress on an association: created at the command, fed fragments, finished at the last one. */
export class IncomingStore {
  private readonly reader: DatasetHeaderReader | undefined;
  private readonly writer: InstanceWriter | undefined;
  private refusal: StoreResult | undefined;
  private receivedBytes = 0;
  private readIdentity: StoreIdentity | undefined;
  private committedEntry: CatalogEntry | undefined;
  /** The newest-of-patient read (see storedAtMs), started once the data set's Patient ID is final. */
  private newestOfPatient: { patientId: string; newestMs: Promise<number | undefined> } | undefined;
  private otherBytes: { storedSha256: string; sentSha256: string } | undefined;

  /**
   * The store of a Part 10 file's data set (STOW-RS), through exactly the C-STORE's checks: its meta
   * information stands in for the command and the presentation context. The caller has checked what
   * negotiation checks for an association: a storage SOP class and a storable transfer syntax.
   */
  static ofPart10File(file: Part10Description, ingest: IngestPort, dateMs: () => number, options: IncomingStoreOptions = {}): IncomingStore {
    const command: DimseCommand = { commandField: CommandField.CStoreRq, messageId: 0, affectedSopClassUid: file.sopClassUid, affectedSopInstanceUid: file.sopInstanceUid, priority: 0, hasDataSet: true };
    const context: NegotiatedContext = { id: 0, abstractSyntaxUid: file.sopClassUid, transferSyntaxUid: file.transferSyntaxUid, service: 'storage', requestorIsScp: false };
    return new IncomingStore(command, context, ingest, dateMs, { announcer: "the file meta information's", ...options });
  }

  constructor(
    readonly command: DimseCommand,
    private readonly context: NegotiatedContext,
    private readonly ingest: IngestPort,
    private readonly dateMs: () => number,
    private readonly options: IncomingStoreOptions = {},
  ) {
    this.refusal = this.checkCommand();
    if (!this.refusal) {
      this.reader = new DatasetHeaderReader({ transferSyntaxUid: context.transferSyntaxUid, maxValueBytes: catalogValueMaxBytes, wholeDataset: true });
      this.writer = ingest.beginWrite(command.affectedSopInstanceUid);
    }
  }

  private checkCommand(): StoreResult | undefined {
    const { affectedSopClassUid, affectedSopInstanceUid } = this.command;
    if (!affectedSopInstanceUid || !isAcceptableUid(affectedSopInstanceUid)) {
      return { status: StoreFailure.InvalidUid, errorComment: `invalid Affected SOP Instance UID "${affectedSopInstanceUid ?? ''}"` };
    }
    if (affectedSopClassUid !== this.context.abstractSyntaxUid) {
      return { status: Status.SopClassNotSupported, errorComment: `SOP Class ${affectedSopClassUid ?? '(none)'} sent on a context for ${this.context.abstractSyntaxUid}` };
    }
    return undefined;
  }

  /** Feeds one fragment; awaits when the store applies back-pressure. */
  async push(data: Uint8Array): Promise<void> {
    // An empty PDV carries nothing to read or store.
    if (this.refusal || !this.reader || !this.writer || data.length === 0) return;
    this.receivedBytes += data.length;
    try {
      this.reader.push(data);
    } catch (error) {
      this.refusal = readerRefusal(error);
      await this.writer.abort();
      return;
    }
    if (this.newestOfPatient === undefined) this.readNewestOncePatientIdIsFinal(this.reader.elementsRead);
    try {
      await this.writer.write(data);
    } catch (error) {
      this.refusal = storageFailure(error);
      await this.writer.abort();
    }
  }

  /** Called after the last fragment: commits or discards, and gives the status to answer. */
  async finish(): Promise<StoreResult> {
    if (this.refusal || !this.reader || !this.writer) return this.refusal ?? { status: StoreFailure.CannotParse };
    let elements: DicomElement[];
    try {
      elements = this.reader.end().elements;
    } catch (error) {
      await this.writer.abort();
      return readerRefusal(error);
    }
    // Values, and so data sets, are of even length (PS3.5 7.1), as is every PDV (PS3.8 E.2): DCMTK aborts on
    // one, so a Success here would be an instance no viewer could retrieve (helper 44). A deflated data set
    // is checked inflated too: transcoded for a receiver, it goes out at that length (helper 45).
    const oddLength = [this.receivedBytes, this.reader.bytesRead].find((bytes) => bytes % 2 === 1);
    if (oddLength !== undefined) {
      await this.writer.abort();
      return { status: StoreFailure.CannotParse, errorComment: `data set of odd length (${oddLength} bytes): an odd value` };
    }
    const identity = identify(elements);
    this.readIdentity = identity;
    const problem = this.checkIdentity(identity) ?? this.options.checkIdentity?.(identity);
    if (problem) {
      await this.writer.abort();
      return problem;
    }
    try {
      const storedAtMs = await this.storedAtMs(identity.patientId);
      const result = await this.writer.commit(identity.sopInstanceUid, (info): CatalogEntry => ({
        sopInstanceUid: identity.sopInstanceUid,
        sopClassUid: identity.sopClassUid,
        studyInstanceUid: identity.studyInstanceUid,
        seriesInstanceUid: identity.seriesInstanceUid,
        patientId: identity.patientId,
        transferSyntaxUid: this.context.transferSyntaxUid,
        byteLength: info.byteLength,
        sha256: info.sha256,
        storedAtMs,
        blobId: info.blobId,
        attributes: elements.filter((e) => e.value !== undefined && (e.tag & 0xffff) !== 0 && e.tag >>> 16 !== 0x0002),
      }));
      this.committedEntry = result.entry;
      if (result.outcome === 'duplicate' && result.sentSha256 !== result.entry.sha256) this.otherBytes = { storedSha256: result.entry.sha256, sentSha256: result.sentSha256 };
      return await this.ingest.afterCommit(result.entry, result.outcome);
    } catch (error) {
      return storageFailure(error);
    }
  }

  /**
   * When this instance is stored, as the newest-instance order sees it: now, or just after the newest
   * instance of the same patient held here if that is later. Sites' clocks disagree, and the newest
   * instance's attributes are the patient's and study's in C-FIND and QIDO: a correction stored at a site
   * whose clock ran behind the one that stored the original lost to it (hunt 72: a day behind, every site
   * answered the old name). A hybrid logical clock: a store comes after everything it could have seen.
   * Read early (readNewestOncePatientIdIsFinal), or here when the data set ends before; a failed read leaves the date alone.
   */
  private async storedAtMs(patientId: string): Promise<number> {
    const early = this.newestOfPatient?.patientId === patientId ? this.newestOfPatient.newestMs : undefined;
    const newestMs = await (early ?? this.readNewestOfPatient(patientId));
    return Math.max(this.dateMs(), newestMs === undefined ? 0 : newestMs + 1);
  }

  /**
   * Starts the newest-of-patient read as soon as a top-level element after Patient ID has been read (top-level
   * elements come in tag order): the read then overlaps the rest of the data set instead of standing between
   * the last fragment and the commit (0.5 ms of the ~5 ms a 0.5 MB C-STORE takes here, docs/performance.md).
   * "Everything it could have seen" is then what was stored before the data set's header arrived.
   */
  private readNewestOncePatientIdIsFinal(elements: readonly DicomElement[]): void {
    const last = elements.at(-1);
    if (last === undefined || last.tag <= Tags.PatientID) return;
    // As identify() reads it, so that finish() finds the same Patient ID and takes this read.
    const patientId = elements.find((e) => e.tag === Tags.PatientID)?.value ?? '';
    this.newestOfPatient = { patientId, newestMs: this.readNewestOfPatient(patientId) };
  }

  /** Never rejects: a failed read leaves the date alone. */
  private readNewestOfPatient(patientId: string): Promise<number | undefined> {
    return this.ingest.newestStoredAtOfPatient?.(patientId).catch(() => undefined) ?? Promise.resolve(undefined);
  }

  /**
   * The catalog entry of what is stored under the data set's SOP Instance UID once finish() committed it:
   * for a duplicate, the copy stored before (its study and series, whatever this data set says).
   */
  get storedEntry(): CatalogEntry | undefined {
    return this.committedEntry;
  }

  /**
   * Set when finish() found the UID stored already with other bytes: the stored copy is kept and the
   * answer is Success (a UID names one instance), but the requestor's bytes are dropped, which the
   * operator must hear of (a corrected re-send under the old UID went unnoticed: hunt 85).
   */
  get duplicateWithOtherBytes(): { storedSha256: string; sentSha256: string } | undefined {
    return this.otherBytes;
  }

  /** The data set's own UIDs, once finish() has read them (undefined when it could not). */
  get identity(): StoreIdentity | undefined {
    return this.readIdentity;
  }

  /** The association ended before the last fragment: nothing of this instance may remain. */
  async cancel(): Promise<void> {
    await this.writer?.abort();
  }

  private checkIdentity(id: StoreIdentity): StoreResult | undefined {
    for (const [name, uid] of [
      ['SOP Instance UID', id.sopInstanceUid],
      ['SOP Class UID', id.sopClassUid],
      ['Study Instance UID', id.studyInstanceUid],
      ['Series Instance UID', id.seriesInstanceUid],
    ] as const) {
      if (!isAcceptableUid(uid)) return { status: StoreFailure.InvalidUid, errorComment: `data set has an invalid or missing ${name} "${uid}"` };
    }
    if (id.sopInstanceUid !== this.command.affectedSopInstanceUid) {
      return { status: StoreFailure.UidMismatch, errorComment: `data set SOP Instance UID ${id.sopInstanceUid} differs from ${this.options.announcer ?? "the command's"}` };
    }
    if (id.sopClassUid !== this.command.affectedSopClassUid) {
      return { status: StoreFailure.SopClassMismatch, errorComment: `data set SOP Class UID ${id.sopClassUid} differs from ${this.options.announcer ?? "the command's"}` };
    }
    return undefined;
  }
}

export interface StoreIdentity {
  sopInstanceUid: string;
  sopClassUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  patientId: string;
}

function identify(elements: readonly DicomElement[]): StoreIdentity {
  const valueOf = (tag: number) => elements.find((e) => e.tag === tag)?.value ?? '';
  return {
    sopInstanceUid: valueOf(Tags.SOPInstanceUID),
    sopClassUid: valueOf(Tags.SOPClassUID),
    studyInstanceUid: valueOf(Tags.StudyInstanceUID),
    seriesInstanceUid: valueOf(Tags.SeriesInstanceUID),
    patientId: valueOf(Tags.PatientID),
  };
}

export function storeResponse(command: DimseCommand, result: StoreResult): DimseCommand {
  return {
    commandField: CommandField.CStoreRsp,
    messageIdBeingRespondedTo: command.messageId,
    affectedSopClassUid: command.affectedSopClassUid,
    affectedSopInstanceUid: command.affectedSopInstanceUid,
    status: result.status,
    errorComment: result.errorComment,
    hasDataSet: false,
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
