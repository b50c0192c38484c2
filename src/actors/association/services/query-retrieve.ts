/**
 * C-FIND, C-GET and C-MOVE as an SCP (PS3.4 annex C). Matching lives in the storage query engine;
 * this file speaks DIMSE: identifiers in, pending responses out, sub-operations counted and reported.
 */
import { CommandField, Status, isWarningStatus, type DimseCommand } from '../../../codec/dimse.ts';
import { parseDataset } from '../../../codec/dataset/reader.ts';
import { parseDatasetTree, type TreeElement } from '../../../codec/dataset/tree.ts';
import { encodeDataset } from '../../../codec/dataset/writer.ts';
import { Tags, vrOf } from '../../../codec/dictionary.ts';
import { binaryVrs } from '../../../codec/dataset/vr.ts';
import { TransferSyntax, type DicomElement } from '../../../codec/dicom-types.ts';
import type { CatalogEntry } from '../../storage/catalog-types.ts';
import { isCatalogDamage } from '../../storage/catalog.ts';
import { errorText } from '../../runtime/logger.ts';
import { QueryError, findMatches, resolveRetrieve, validateQuery, validateRetrieve, type QueryRefusal, type QueryRequest, type QueryValidation } from '../../storage/query/query.ts';
import type { QueryLevel, QueryRoot } from '../../storage/query/attribute-levels.ts';
import type { ReplicaStore } from '../../storage/replica-store.ts';
import { checkedStream, checkedWhole, checkedWholeBytesMax } from '../../storage/checked-read.ts';
import type { Transcoder } from '../../../codec/transcode-pool.ts';
import { TranscodeError } from '../../../codec/transcode-error.ts';
import { canTranscode, canTranscodeInstance, needsEncoding } from '../../../codec/transcode-targets.ts';
import { estimateTranscodeBytes } from '../../../codec/transcode-estimate.ts';
import type { Clock, TimerHandle } from '../../runtime/clock.ts';

/** Sends one DIMSE message on the association that carries the request. */
export type SendMessage = (command: DimseCommand, dataSet?: Uint8Array) => Promise<void>;

export interface QueryContext {
  root: QueryRoot;
  transferSyntaxUid: string;
  command: DimseCommand;
  identifier: Uint8Array;
  send: SendMessage;
  isCancelled(): boolean;
  /** This archive's AE title: where every match can be retrieved from (C-FIND responses carry it). */
  retrieveAeTitle: string;
}

/** (0008,0058) Failed SOP Instance UID List, returned in the final C-GET/C-MOVE response. */
const failedSopInstanceUidListTag = 0x00080058;

/** A retrieve cannot promise more instances than this in one request (the list is held in memory). */
export const maxRetrieveInstances = 100_000;

type ParsedQuery = { ok: true; request: QueryRequest } | QueryRefusal;

export function parseQueryIdentifier(
  root: QueryRoot,
  identifier: Uint8Array,
  transferSyntaxUid: string,
  validate: (request: QueryRequest) => QueryValidation,
): ParsedQuery {
  let elements: DicomElement[];
  try {
    // Every value kept, however long (the identifier is in memory already, at most maxIdentifierBytes): a
    // key over the reader's default 64 KiB came through without its value, so a list of 2,000 UIDs
    // matched as universal and answered with the whole archive (black-box helper 39).
    elements = parseDataset(identifier, transferSyntaxUid, { includeSkippedElements: true, maxValueBytes: Math.max(identifier.byteLength, 1) }).elements;
  } catch (error) {
    return { ok: false, status: Status.CannotUnderstand, comment: `cannot parse identifier: ${errorText(error)}` };
  }
  const levelElement = elements.find((e) => e.tag === Tags.QueryRetrieveLevel);
  const level = levelElement?.value?.trim().toUpperCase();
  if (level !== 'PATIENT' && level !== 'STUDY' && level !== 'SERIES' && level !== 'IMAGE') {
    return {
      ok: false,
      status: Status.IdentifierDoesNotMatchSopClass,
      comment: `missing or invalid QueryRetrieveLevel "${level ?? ''}"`,
      offendingTags: [Tags.QueryRetrieveLevel],
    };
  }
  const request: QueryRequest = { root, level: level as QueryLevel, keys: elements.filter((e) => e.tag !== Tags.QueryRetrieveLevel && (e.tag & 0xffff) !== 0) };
  const validation = validate(request);
  if (!validation.ok) return validation;
  return { ok: true, request };
}

/** A private data element (gggg,xxxx) of an odd group past its creators' (gggg,0010-00FF): never matched here. */
function isPrivateDataElement(tag: number): boolean {
  return (tag >>> 16) % 2 === 1 && (tag & 0xffff) > 0x00ff;
}

/**
 * Whether the identifier holds a key this archive does not support as asked (PS3.4 C.4.1.1.4: its matches
 * then go out as Pending 0xFF01, "one or more Optional Keys were not supported for existence and/or
 * matching", not 0xFF00, which says every key was): a sequence (the catalog keeps none: never matched,
 * returned empty), or a private or binary key holding a value to match (never matched). Before, such keys
 * were ignored under 0xFF00, so a viewer filtering on a code in ProcedureCodeSequence or a private tag took
 * every match for a filtered list.
 */
export function hasUnsupportedOptionalKeys(identifier: Uint8Array, transferSyntaxUid: string): boolean {
  let elements: TreeElement[];
  try {
    elements = parseDatasetTree(identifier, transferSyntaxUid);
  } catch {
    // parseQueryIdentifier has read it already; what only the whole-tree reader refuses is left to matching.
    return false;
  }
  return elements.some((element) => {
    // A standard attribute sent as UN is matched by its dictionary VR (parseQueryIdentifier reads it so):
    // only its sequences and binary values are not supported (hunt 192: every UN key counted as unsupported).
    const dictionaryVr = element.vr === 'UN' && !isPrivateDataElement(element.tag) ? vrOf(element.tag) : undefined;
    if (element.vr === 'SQ' || dictionaryVr === 'SQ') return true;
    if (dictionaryVr !== undefined && !binaryVrs.has(dictionaryVr)) return false;
    const holdsValue = element.value !== undefined ? element.value !== '' : (element.valueLength ?? 0) > 0;
    return holdsValue && (isPrivateDataElement(element.tag) || element.value === undefined);
  });
}

function findResponse(command: DimseCommand, status: number, errorComment?: string, offendingElements?: readonly number[]): DimseCommand {
  return {
    commandField: CommandField.CFindRsp,
    messageIdBeingRespondedTo: command.messageId,
    affectedSopClassUid: command.affectedSopClassUid,
    status,
    errorComment,
    offendingElements,
    hasDataSet: false,
  };
}

/**
 * PS3.4 C.4.1.1.3.2: each C-FIND response names where its entity can be retrieved, Retrieve AE Title
 * (0008,0054), asked for or not; here that is this archive itself, which serves every match.
 */
function withRetrieveAeTitle(identifier: readonly DicomElement[], aeTitle: string): DicomElement[] {
  const located = identifier.filter((element) => element.tag !== Tags.RetrieveAETitle);
  located.push({ tag: Tags.RetrieveAETitle, vr: 'AE', value: aeTitle });
  return located.sort((a, b) => a.tag - b.tag);
}

/** C-FIND responses sent between two turns of the event loop (when a C-CANCEL-RQ can be read). */
const findMatchesPerIoTurn = 16;

export async function runFind(ctx: QueryContext, store: ReplicaStore, source?: Pick<RetrieveSource, 'searchRefusal'>): Promise<void> {
  const parsed = parseQueryIdentifier(ctx.root, ctx.identifier, ctx.transferSyntaxUid, validateQuery);
  if (!parsed.ok) {
    await ctx.send(findResponse(ctx.command, parsed.status, parsed.comment, parsed.offendingTags));
    return;
  }
  // A catalog known to be incomplete (a site just restored on an empty disk) answers "retry", not Success
  // with part of the matches (PS3.4 C.4.1.1.4: 0xA700 Refused: Out of Resources).
  const refusal = source?.searchRefusal?.();
  if (refusal !== undefined) {
    await ctx.send(findResponse(ctx.command, Status.OutOfResources, refusal));
    return;
  }
  const pendingStatus = hasUnsupportedOptionalKeys(ctx.identifier, ctx.transferSyntaxUid) ? Status.PendingWarning : Status.Pending;
  try {
    let matches = 0;
    for await (const identifier of findMatches(store.db, parsed.request, { stopped: ctx.isCancelled })) {
      // Each response is written at once while the socket takes it, so without a turn of the event loop now
      // and then a C-CANCEL-RQ would not be read before the whole result had gone out (one turn per match
      // made a 5,000-match C-FIND ~1.8x slower).
      if (++matches % findMatchesPerIoTurn === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      if (ctx.isCancelled()) {
        await ctx.send(findResponse(ctx.command, Status.Cancel));
        return;
      }
      await ctx.send(findResponse(ctx.command, pendingStatus), encodeDataset(withRetrieveAeTitle(identifier, ctx.retrieveAeTitle), ctx.transferSyntaxUid));
    }
  } catch (error) {
    if (isCatalogDamage(error)) store.reportCatalogDamage(`C-FIND: ${errorText(error)}`);
    await ctx.send(findResponse(ctx.command, Status.UnableToProcess, `query failed: ${errorText(error)}`));
    return;
  }
  await ctx.send(findResponse(ctx.command, ctx.isCancelled() ? Status.Cancel : Status.Success));
}

/** Where C-STORE sub-operations go: back over the same association (C-GET) or to a move destination. */
export interface SubOperationTarget {
  /** A presentation context for the instance: its stored syntax if accepted there, else one to transcode to. */
  pickContext(entry: CatalogEntry): { presentationContextId: number; transferSyntaxUid: string } | undefined;
  /** Whether the receiver accepted any context for the SOP class (when pickContext finds none: why). */
  acceptsSopClass?(sopClassUid: string): boolean;
  /**
   * C-GET: a context for the SOP class was accepted, but the requestor did not take the SCP role for it
   * (no SCP/SCU Role Selection item, or SCP role 0: PS3.7 D.3.3.4), so no C-STORE may go to it there.
   */
  lacksScpRole?(sopClassUid: string): boolean;
  /** Sends C-STORE-RQ with the data set and resolves with the C-STORE-RSP status. */
  store(presentationContextId: number, command: DimseCommand, dataSet: Uint8Array | AsyncIterable<Uint8Array>): Promise<number>;
}

export interface SubOperationCounts {
  remaining: number;
  completed: number;
  failed: number;
  warning: number;
  failedUids: string[];
}

export interface RetrieveContext extends QueryContext {
  kind: 'get' | 'move';
  /**
   * C-MOVE: a new association to the destination; C-GET: the same association. A C-CANCEL must stop a
   * destination that takes its time (rejecting the opening at once, cutting a C-STORE it sits on).
   */
  openTarget(entries: readonly CatalogEntry[]): Promise<SubOperationTarget & { close(): Promise<void> }>;
  callingAeTitle: string;
  /**
   * The requestor asked to release the association with this C-GET under way: the sub-operations not yet
   * sent are not attempted and count as failed (they are not a C-CANCEL the requestor never sent).
   */
  isReleasing?(): boolean;
  /**
   * The peer is stopping: the sub-operations not yet sent are not attempted, count as failed and are listed
   * (the requestor retries them elsewhere or later), and the final response follows the one in flight.
   */
  isStopping?(): boolean;
  /** Why sub-operations failed, each reason with how many, once at the end (the response has room for none). */
  onSubOperationFailures?(reasons: Record<string, number>): void;
  /** For receivers that refuse the stored syntax (in the peer: a worker thread, off the event loop). */
  transcoder: Transcoder;
  /** Aborted when the requestor is gone (the association aborted, a C-CANCEL): pending transcodes stop. */
  signal?: AbortSignal;
  /**
   * While one sub-operation takes longer than `intervalMs` (a transcode waiting its turn, a pull from
   * another site), a Pending response with the same counts every `intervalMs`: requestors give up an
   * association silent for long (DCMTK's tools after 60 s: helper 54).
   */
  pendingKeepAlive?: { clock: Clock; intervalMs: number };
}

/** The failure reason of sub-operations a stopping peer did not attempt. */
const peerStoppingReason = 'not attempted: the peer is stopping';
/** Why a C-GET's sub-operations not sent yet failed once its requestor asked to release the association. */
export const requestorReleasingReason = 'not sent: the requestor asked to release the association';

/** Distinct failure reasons kept per retrieve; more are counted under one. */
const failureReasonsMax = 8;

function retrieveResponse(
  ctx: RetrieveContext,
  status: number,
  counts?: SubOperationCounts,
  errorComment?: string,
  offendingElements?: readonly number[],
): DimseCommand {
  const pending = status === Status.Pending;
  return {
    commandField: ctx.kind === 'get' ? CommandField.CGetRsp : CommandField.CMoveRsp,
    messageIdBeingRespondedTo: ctx.command.messageId,
    affectedSopClassUid: ctx.command.affectedSopClassUid,
    status,
    errorComment,
    offendingElements,
    // PS3.4 C.4.2.1.6: remaining is only meaningful in pending (and cancel) responses.
    remainingSubOperations: counts && (pending || status === Status.Cancel) ? counts.remaining : undefined,
    completedSubOperations: counts?.completed,
    failedSubOperations: counts?.failed,
    warningSubOperations: counts?.warning,
    hasDataSet: false,
  };
}

/** Explicit VR gives UI a 16-bit length (even): about 1,150 UIDs. */
const explicitVrUiBytesMax = 65534;

/**
 * The Failed SOP Instance UID List, as many UIDs as its one value can hold in the identifier's syntax (the
 * counts say how many failed). A longer list could not be encoded in explicit VR, and the final response
 * was lost: a C-MOVE of 1,200 instances to a destination that is down ended in an abort (helper 43).
 */
export function failedUidIdentifier(counts: Pick<SubOperationCounts, 'failedUids'>, transferSyntaxUid: string): Uint8Array | undefined {
  if (counts.failedUids.length === 0) return undefined;
  const bytesMax = transferSyntaxUid === TransferSyntax.ImplicitVrLittleEndian ? Number.POSITIVE_INFINITY : explicitVrUiBytesMax;
  let bytes = -1;
  let listed = 0;
  for (const uid of counts.failedUids) {
    // Each UID and its backslash; UIDs are ASCII, and an odd total gets one byte of padding.
    const next = bytes + 1 + uid.length;
    if (next + (next % 2) > bytesMax) break;
    bytes = next;
    listed++;
  }
  return encodeDataset([{ tag: failedSopInstanceUidListTag, vr: 'UI', value: counts.failedUids.slice(0, listed).join('\\') }], transferSyntaxUid);
}

export async function runRetrieve(ctx: RetrieveContext, store: ReplicaStore, source: RetrieveSource): Promise<void> {
  const parsed = parseQueryIdentifier(ctx.root, ctx.identifier, ctx.transferSyntaxUid, validateRetrieve);
  if (!parsed.ok) {
    await ctx.send(retrieveResponse(ctx, parsed.status, undefined, parsed.comment, parsed.offendingTags));
    return;
  }
  let entries: CatalogEntry[];
  try {
    const resolved = await source.resolve(parsed.request, maxRetrieveInstances);
    if (resolved.truncated) {
      await ctx.send(retrieveResponse(ctx, Status.OutOfResourcesSubOps, undefined, `more than ${maxRetrieveInstances} instances: narrow the request`));
      return;
    }
    if (resolved.peersMissed !== undefined && resolved.peersMissed.length > 0) {
      // Sending what is here and answering Success would pass a partial study off as the whole one. (The
      // comment must fit the 64 characters of an Error Comment; peers not asked yet count as silent.)
      const comment = `${resolved.peersMissed.length} peer(s) that may hold matches did not answer: retry`;
      await ctx.send(retrieveResponse(ctx, Status.OutOfResourcesMatches, undefined, comment));
      return;
    }
    entries = resolved.entries;
  } catch (error) {
    if (isCatalogDamage(error)) store.reportCatalogDamage(`retrieve: ${errorText(error)}`);
    const status = error instanceof QueryError ? error.status : Status.UnableToProcess;
    const offending = error instanceof QueryError ? error.offendingTags : undefined;
    await ctx.send(retrieveResponse(ctx, status, undefined, `retrieve lookup failed: ${errorText(error)}`, offending));
    return;
  }
  const counts: SubOperationCounts = { remaining: entries.length, completed: 0, failed: 0, warning: 0, failedUids: [] };
  if (entries.length === 0) {
    await ctx.send(retrieveResponse(ctx, Status.Success, counts));
    return;
  }
  // A C-MOVE of more SOP classes than one association has contexts for goes over several, one after the other.
  const groups = ctx.kind === 'move' ? moveAssociationGroups(entries) : [entries];
  entries = groups.flat();
  const failureReasons = new Map<string, number>();
  /**
   * Failures counted by what the final response's Error Comment would say of them: a reason's shorter form,
   * where it has one, shared by reasons that differ only in what the comment has no room for (the SOP class).
   */
  const failureComments = new Map<string, number>();
  const countFailures = (reason: string, failed: number, shortReason?: string) => {
    const keep = (counted: Map<string, number>, key: string) => {
      const kept = counted.has(key) || counted.size < failureReasonsMax ? key : 'other reasons';
      counted.set(kept, (counted.get(kept) ?? 0) + failed);
    };
    keep(failureReasons, reason);
    keep(failureComments, shortReason ?? reason);
  };
  /** Counts and lists the sub-operations not attempted yet as failed: how many they were. */
  const failNotAttempted = () => {
    const notSent = entries.slice(entries.length - counts.remaining);
    counts.failed += notSent.length;
    counts.failedUids.push(...notSent.map((e) => e.sopInstanceUid));
    counts.remaining = 0;
    return notSent.length;
  };
  /** The peer stopping, or a C-GET's requestor releasing: the sub-operations not attempted yet fail, and no more go out. */
  const endsHere = () => {
    const stopping = ctx.isStopping?.() === true;
    if (!stopping && ctx.isReleasing?.() !== true) return false;
    // Each with its reason: without one, the comment named the one sub-operation that had one (hunt 195).
    if (stopping) countFailures(peerStoppingReason, counts.remaining, 'the archive is stopping, retry');
    else countFailures(requestorReleasingReason, counts.remaining);
    failNotAttempted();
    return true;
  };
  for (const [groupIndex, group] of groups.entries()) {
    // Checked before each association too: a stop between two of a move's opened the next one only to send nothing.
    if (ctx.isCancelled() || counts.remaining === 0 || endsHere()) break;
    let target: SubOperationTarget & { close(): Promise<void> };
    try {
      // Opening a C-MOVE destination's association can take up to its timeout (30 s): Pending meanwhile.
      target = await withPendingKeepAlive(ctx, counts, ctx.openTarget(group));
    } catch (error) {
      // A C-CANCEL stopped the opening (the target's signal): no sub-operation of it was initiated, so they
      // remain (PS3.4 C.4.2.3.1: "Remaining ... not initiated due to the C-CANCEL"); none failed. Hunt 85
      // saw the cancel ignored until the negotiation timed out, and all of them counted failed.
      if (ctx.isCancelled()) break;
      // The sub-operations not sent failed before they began: counted and listed as such, so the client knows what was not sent.
      const notSent = failNotAttempted();
      if (groupIndex === 0) {
        await ctx.send(
          retrieveResponse(ctx, Status.OutOfResourcesSubOps, counts, `cannot reach the destination: ${errorText(error)}`),
          failedUidIdentifier(counts, ctx.transferSyntaxUid),
        );
        return;
      }
      // A later association of the move (over 128 classes).
      countFailures(`cannot reach the destination again for association ${groupIndex + 1} of ${groups.length}: ${errorText(error)}`, notSent, 'cannot reach the destination again');
      break;
    }
    try {
      for (const entry of group) {
        if (ctx.isCancelled() || endsHere()) break;
        const { status, reason, comment: shortReason, cancelledBeforeSending } = await subOperation(ctx, target, store, source, entry, (work) => withPendingKeepAlive(ctx, counts, work));
        // Cancelled while it waited (its transcode stopped): not sent, so it stays remaining, as the Cancel
        // response says of the ones not attempted, rather than a failure the requestor asked for (helper 55).
        // One that was sent and not answered is a failure, whatever ended the association.
        if (cancelledBeforeSending && ctx.isCancelled()) break;
        counts.remaining--;
        if (status === Status.Success) counts.completed++;
        // Helper 66: 0001, 0107 and 0116 are warnings too; they were counted (and listed) as failures.
        else if (isWarningStatus(status)) counts.warning++;
        else {
          counts.failed++;
          counts.failedUids.push(entry.sopInstanceUid);
          countFailures(reason ?? 'unknown', 1, shortReason);
        }
        // A C-MOVE's last sub-operation gets its Pending response too, before the destination's release, as
        // DCMTK's dcmqrscp sends it: gdcmscu --move reads its C-STORE receiver's association (and so answers our
        // A-RELEASE-RQ there) only after a Pending response; without one each C-MOVE waited out our 2 s release
        // wait (hunt 155).
        if (counts.remaining > 0 || ctx.kind === 'move') await ctx.send(retrieveResponse(ctx, Status.Pending, counts));
      }
    } finally {
      await target.close();
    }
  }
  if (failureReasons.size > 0) ctx.onSubOperationFailures?.(Object.fromEntries(failureReasons));
  if (ctx.isCancelled() && counts.remaining > 0) {
    await ctx.send(retrieveResponse(ctx, Status.Cancel, counts), failedUidIdentifier(counts, ctx.transferSyntaxUid));
    return;
  }
  // PS3.4 C.4.2.3.1 / C.4.3.3.1: Warning (B000) when some sub-operations completed or warned and some
  // failed; Failure when every one failed (A702, as dcm4che answers); the failed UIDs listed either way.
  const everyOneFailed = counts.failed > 0 && counts.completed + counts.warning === 0;
  const finalStatus = everyOneFailed ? Status.OutOfResourcesSubOps : counts.failed + counts.warning > 0 ? Status.SubOpsCompleteWithFailures : Status.Success;
  // The most frequent reason, cut at the comment's 64 characters (all of them are in the log).
  // Not "other reasons" while a comment of its own is as frequent: nine classes without a context, each its
  // own reason in the log, made a C-MOVE's comment "30 failed: other reasons" (hunt 160).
  const [topComment] = [...failureComments].sort((a, b) => b[1] - a[1] || Number(a[0] === 'other reasons') - Number(b[0] === 'other reasons'))[0] ?? [];
  const comment = counts.failed === 0 ? undefined : `${everyOneFailed ? 'all ' : ''}${counts.failed} failed${topComment === undefined ? '' : `: ${topComment}`}`;
  await ctx.send(retrieveResponse(ctx, finalStatus, counts, comment), failedUidIdentifier(counts, ctx.transferSyntaxUid));
}

/** Sub-operation statuses of our own making, for instances we could not even send. */
const NoContextForInstance = 0xa702;

/** A sub-operation's status, with why when it failed before or at the receiver. */
interface SubOperationOutcome {
  status: number;
  reason?: string;
  /** Failed reading or checking the local copy, before any of it was sent. */
  localCopyUnreadable?: boolean;
  /** What the final response's Error Comment says of this failure, when `reason` is too long for it. */
  comment?: string;
  /** Stopped because the requestor is gone or cancelled (its transcode, or before its C-STORE-RQ): nothing of it was sent. */
  cancelledBeforeSending?: boolean;
}

/** The local copy could not be read or did not match its SHA-256 before anything was sent. */
class LocalCopyUnreadable extends Error {
  constructor(cause: unknown) {
    super(errorText(cause), { cause });
  }
}

/** The requestor cancelled before the sub-operation's C-STORE-RQ went out. */
class CancelledBeforeSending extends Error {
  readonly code = 'ERR_SUBOPERATION_CANCELLED';
  constructor() {
    super('cancelled before its C-STORE-RQ was sent');
  }
}

/**
 * What a sub-operation waits for on our side (a pull from another site, a transcode waiting its turn, a
 * C-MOVE destination storing), with Pending responses meanwhile. Not the C-GET requestor's own answer:
 * writes to a requestor that has hung would look like progress to the idle rule (helper 42).
 */
type WhileOurs = <T>(work: Promise<T>) => Promise<T>;

async function subOperation(ctx: RetrieveContext, target: SubOperationTarget, store: ReplicaStore, source: RetrieveSource, entry: CatalogEntry, whileOurs: WhileOurs): Promise<SubOperationOutcome> {
  // In a mesh the instance may live only at another site: pull it here first (its local entry names the local bytes).
  let local: CatalogEntry | undefined;
  try {
    // With the retrieve's signal: a C-CANCEL, or the requestor gone, during a pull from a hung or slow site
    // waited for that pull (up to the transfer's stall timeout), and held the association's end meanwhile.
    local = await whileOurs(source.ensureLocal(entry, ctx.signal));
  } catch (error) {
    // Peers that cannot send it make ensureLocal answer undefined: a failure is this site's own store
    // failing to say whether it holds the instance (a fault, a damaged catalog), not a missing instance.
    if (isCatalogDamage(error)) store.reportCatalogDamage(`retrieve: ${errorText(error)}`);
    return { status: Status.UnableToProcess, reason: `cannot look the instance up in the store here: ${errorText(error)}`, comment: 'the store here failed (see the log)' };
  }
  // Stopped waiting for the pull: nothing of it was sent (the pull goes on for the store's sake).
  if (!local && ctx.signal?.aborted === true) return { status: Status.Cancel, cancelledBeforeSending: true };
  if (!local) return { status: Status.UnableToProcess, reason: 'not here, and no peer could send it (or it holds other bytes here: a UID conflict)' };
  const outcome = await sendOne(ctx, target, store, local, whileOurs);
  // The copy here is damaged and nothing of it went out: a peer's good copy replaces it, and it is sent
  // once more (a site restored from a copy taken while it ran failed retrieves the other sites could
  // serve until its scrub came by: helper 48).
  if (outcome.localCopyUnreadable && source.repairCopy !== undefined) {
    const repaired = await whileOurs(source.repairCopy(local).catch(() => undefined));
    if (repaired !== undefined) return sendOne(ctx, target, store, repaired, whileOurs);
  }
  return outcome;
}

/** `work`, with Pending responses every ctx.pendingKeepAlive.intervalMs until it settles. */
async function withPendingKeepAlive<T>(ctx: RetrieveContext, counts: SubOperationCounts, work: Promise<T>): Promise<T> {
  const keepAlive = ctx.pendingKeepAlive;
  if (keepAlive === undefined) return work;
  let settled = false;
  let timer: TimerHandle | undefined;
  const arm = () => {
    timer = keepAlive.clock.setTimeout(() => {
      // Sent between whole messages (the association sends one at a time), with the counts as they stand.
      void ctx
        .send(retrieveResponse(ctx, Status.Pending, counts))
        .catch(() => undefined)
        .finally(() => {
          if (!settled) arm();
        });
    }, keepAlive.intervalMs);
  };
  arm();
  try {
    return await work;
  } finally {
    settled = true;
    keepAlive.clock.clearTimeout(timer);
  }
}

/** `read`, with a failure marked as the local copy's. */
async function readLocal<T>(read: Promise<T>): Promise<T> {
  try {
    return await read;
  } catch (error) {
    throw new LocalCopyUnreadable(error);
  }
}

async function sendOne(ctx: RetrieveContext, target: SubOperationTarget, store: ReplicaStore, entry: CatalogEntry, whileOurs: WhileOurs): Promise<SubOperationOutcome> {
  // Cancelled while its copy was pulled from another site or repaired: not initiated, so it remains.
  if (ctx.isCancelled()) return { status: Status.Cancel, cancelledBeforeSending: true };
  const picked = target.pickContext(entry);
  // The stored syntax first: the final response's Error Comment keeps 64 characters of the reason, and a
  // context for the class may well be accepted, in a syntax this instance cannot be converted into.
  if (!picked && target.acceptsSopClass?.(entry.sopClassUid) === false && target.lacksScpRole?.(entry.sopClassUid) === true) {
    // A getscu-like requestor configured without role selection: "no context" sent its operator looking at
    // the presentation contexts, which were there (hunt 89).
    return {
      status: NoContextForInstance,
      reason: `the requestor did not take the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4) for SOP class ${entry.sopClassUid}, whose context it proposed`,
      comment: 'requestor took no SCP role for SOP class',
    };
  }
  if (!picked && target.acceptsSopClass?.(entry.sopClassUid) === false) {
    // No context for the class at all: "stored as ...: not convertible" read as a transcoding failure (hunt
    // 85). It fits the comment's 64 characters after "all 100000 failed: "; the log has the class.
    return {
      status: NoContextForInstance,
      reason: `the receiver accepted no presentation context for SOP class ${entry.sopClassUid}`,
      comment: 'receiver accepted no context for SOP class',
    };
  }
  if (!picked) return { status: NoContextForInstance, reason: `stored as ${entry.transferSyntaxUid}: not convertible to a syntax accepted for ${entry.sopClassUid}` };
  const command: DimseCommand = {
    commandField: CommandField.CStoreRq,
    affectedSopClassUid: entry.sopClassUid,
    affectedSopInstanceUid: entry.sopInstanceUid,
    priority: 0,
    hasDataSet: true,
    moveOriginatorAeTitle: ctx.kind === 'move' ? ctx.callingAeTitle : undefined,
    moveOriginatorMessageId: ctx.kind === 'move' ? ctx.command.messageId : undefined,
  };
  try {
    const asStored = picked.transferSyntaxUid === entry.transferSyntaxUid;
    let status: number;
    // A C-MOVE destination's answer is ours to wait for; a C-GET requestor's is its own.
    const storeAt = (dataSet: Uint8Array | AsyncIterable<Uint8Array>) => {
      // A C-CANCEL read while the copy was read or converted: its C-STORE is not initiated, so it remains.
      if (ctx.isCancelled()) throw new CancelledBeforeSending();
      const stored = target.store(picked.presentationContextId, command, dataSet);
      return ctx.kind === 'move' ? whileOurs(stored) : stored;
    };
    if (asStored && entry.byteLength > checkedWholeBytesMax) {
      status = await storeAt(await readLocal(checkedStream(store, entry)));
    } else if (asStored) {
      status = await storeAt(await readLocal(checkedWhole(store, entry)));
    } else {
      // Only when the receiver refuses the stored syntax. Transcoding needs the whole instance in memory; it is
      // read when the transcoder takes the job, so that a job waiting its turn holds no bytes.
      const source = { byteLength: entry.byteLength, read: () => readLocal(checkedWhole(store, entry)) };
      // Weighed, and refused over its bound, by what the conversion holds, not by the stored size (hunt 85).
      const estimatedBytes = estimateTranscodeBytes(entry, picked.transferSyntaxUid);
      const transcoded = await whileOurs(ctx.transcoder.transcode(source, entry.transferSyntaxUid, [picked.transferSyntaxUid], { signal: ctx.signal, estimatedBytes }));
      // The output counts in the transcoder's budget until the receiver has answered for it.
      try {
        status = await storeAt(transcoded.bytes);
      } finally {
        transcoded.release?.();
      }
    }
    return status === Status.Success ? { status } : { status, reason: `the receiver answered 0x${status.toString(16).padStart(4, '0')}` };
  } catch (error) {
    return {
      status: Status.UnableToProcess,
      reason: errorText(error),
      localCopyUnreadable: error instanceof LocalCopyUnreadable,
      cancelledBeforeSending: error instanceof CancelledBeforeSending || (error instanceof TranscodeError && error.code === 'ERR_TRANSCODE_CANCELLED'),
    };
  }
}

/**
 * Where a converted copy goes best, first to last: explicit VR LE (it keeps every VR, private ones too),
 * implicit VR LE, the other syntaxes we only decode into (big endian, deflated), then those we compress into.
 */
function conversionRank(transferSyntaxUid: string): number {
  if (transferSyntaxUid === TransferSyntax.ExplicitVrLittleEndian) return 0;
  if (transferSyntaxUid === TransferSyntax.ImplicitVrLittleEndian) return 1;
  return needsEncoding(transferSyntaxUid) ? 3 : 2;
}

/**
 * Picks a context among accepted ones: the stored syntax first, then one we only need to decode into (little
 * endian before big endian and deflated), then one we would compress into (a C-MOVE destination that took
 * both a JPEG Lossless context and explicit VR LE gets a JPEG 2000 instance decoded, not re-compressed).
 */
export function pickContextFor(
  entry: CatalogEntry,
  contexts: Iterable<{ id: number; abstractSyntaxUid: string; transferSyntaxUid: string }>,
): { presentationContextId: number; transferSyntaxUid: string } | undefined {
  const candidates = [...contexts].filter((c) => c.abstractSyntaxUid === entry.sopClassUid);
  const exact = candidates.find((c) => c.transferSyntaxUid === entry.transferSyntaxUid);
  if (exact) return { presentationContextId: exact.id, transferSyntaxUid: exact.transferSyntaxUid };
  // Ranked, not in the order accepted: a destination that took a class's big endian context (for the instances
  // stored so) and its little endian fallback got the class's other instances converted into big endian
  // (retired, PS3.5 A.3; read by fewer receivers), and a big endian one into implicit VR, losing its VRs.
  const [chosen] = candidates.filter((c) => canTranscodeInstance(entry, c.transferSyntaxUid)).sort((a, b) => conversionRank(a.transferSyntaxUid) - conversionRank(b.transferSyntaxUid));
  return chosen ? { presentationContextId: chosen.id, transferSyntaxUid: chosen.transferSyntaxUid } : undefined;
}

/**
 * Lossless syntaxes a C-MOVE offers for a class beside the uncompressed fallback, for a destination that
 * takes compressed data only (helper 49: it got none of the instances stored uncompressed). JPEG 2000 is
 * left out: it is encoded for monochrome images only.
 */
const compressedFallbackSyntaxes = ['1.2.840.10008.1.2.4.70', '1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.5'];

/** Presentation context IDs are odd numbers 1..255: an association has at most 128 contexts (PS3.8 9.3.2.2). */
export const maxPresentationContexts = 128;

/** Uncompressed syntaxes: an instance stored in one goes losslessly and cheaply into the fallback context's. */
const uncompressedSyntaxes: ReadonlySet<string> = new Set([TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian]);

/** The instances of each SOP class by stored syntax, classes and syntaxes in the order the entries first name them. */
function instancesByClassAndSyntax(entries: readonly CatalogEntry[]): Map<string, Map<string, number>> {
  const classes = new Map<string, Map<string, number>>();
  for (const entry of entries) {
    const syntaxes = classes.get(entry.sopClassUid) ?? new Map<string, number>();
    syntaxes.set(entry.transferSyntaxUid, (syntaxes.get(entry.transferSyntaxUid) ?? 0) + 1);
    classes.set(entry.sopClassUid, syntaxes);
  }
  return classes;
}

/**
 * What a C-MOVE proposes to its destination: each SOP class in its stored syntaxes, one context each, then
 * an uncompressed fallback, plus (while the 128 contexts allow one for each class) a lossless compressed one.
 * When the stored syntaxes do not all fit beside the fallbacks (42 classes stored in 3 syntaxes each need
 * 168 contexts), those that fit are proposed, those we cannot decode first, then the other compressed ones
 * (converting them costs most), then the most frequent; an instance whose syntax was left out goes converted
 * into the fallback's. Before, the list was cut at 128 and the last classes were not proposed at all: their
 * instances failed as "receiver accepted no context" (hunt 160). At most 128 classes (moveAssociationGroups).
 */
export function proposalsForMove(entries: readonly CatalogEntry[]): Array<{ abstractSyntaxUid: string; transferSyntaxUids: string[] }> {
  const classes = instancesByClassAndSyntax(entries);
  const stored = [...classes].flatMap(([sopClassUid, syntaxes], classIndex) => [...syntaxes].map(([transferSyntaxUid, instances]) => ({ sopClassUid, transferSyntaxUid, instances, classIndex })));
  // Room for stored syntaxes beside a fallback for every class: first those we cannot decode (left out, their
  // instances could go in no context: an MPEG-2 clip among 100 classes stored in two decodable syntaxes failed,
  // hunt 165), then the other compressed ones, then the most frequent.
  const room = Math.max(maxPresentationContexts - classes.size, 0);
  const rank = ({ transferSyntaxUid }: { transferSyntaxUid: string }) =>
    !canTranscode(transferSyntaxUid, TransferSyntax.ExplicitVrLittleEndian) ? 0 : uncompressedSyntaxes.has(transferSyntaxUid) ? 2 : 1;
  const chosen = stored.length <= room ? stored : [...stored].sort((a, b) => rank(a) - rank(b) || b.instances - a.instances || a.classIndex - b.classIndex).slice(0, room);
  const kept = new Set(chosen.map((s) => `${s.sopClassUid} ${s.transferSyntaxUid}`));
  const proposals: Array<{ abstractSyntaxUid: string; transferSyntaxUids: string[] }> = [];
  for (const [sopClassUid, syntaxes] of classes) {
    // One context per stored syntax, so the destination can accept each one as it is.
    for (const ts of syntaxes.keys()) if (kept.has(`${sopClassUid} ${ts}`)) proposals.push({ abstractSyntaxUid: sopClassUid, transferSyntaxUids: [ts] });
    // The fallback after them: a GDCM receiver reads every data set in the syntax of the last context it
    // accepted (destination-quirks.ts), and it takes this one in implicit VR LE, the syntax it reads best.
    proposals.push({ abstractSyntaxUid: sopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian] });
  }
  if (proposals.length + classes.size <= maxPresentationContexts) {
    for (const sopClassUid of classes.keys()) proposals.push({ abstractSyntaxUid: sopClassUid, transferSyntaxUids: [...compressedFallbackSyntaxes] });
  }
  return proposals.slice(0, maxPresentationContexts);
}

/**
 * A C-MOVE's instances split into groups of at most 128 SOP classes, one association each (a class needs a
 * context at least), in the order the classes first come. Several associations are the last resort: gdcmscu
 * 3.0.21's receiver takes one association per C-MOVE and refused the connection of a second (hunt 160).
 */
export function moveAssociationGroups(entries: readonly CatalogEntry[]): CatalogEntry[][] {
  const groupOfClass = new Map<string, number>();
  for (const sopClassUid of instancesByClassAndSyntax(entries).keys()) groupOfClass.set(sopClassUid, Math.floor(groupOfClass.size / maxPresentationContexts));
  const grouped: CatalogEntry[][] = [];
  for (const entry of entries) (grouped[groupOfClass.get(entry.sopClassUid)!] ??= []).push(entry);
  return grouped;
}

/** Where C-GET and C-MOVE find instances: the local catalog, or in a mesh every alive site's. */
export interface RetrieveSource {
  /**
   * The instances a retrieve request names, at most `limit` (truncated says there were more); peersMissed
   * names the peers that did not answer while they may hold matches not here. Throws QueryError.
   */
  resolve(request: QueryRequest, limit: number): Promise<{ entries: CatalogEntry[]; truncated: boolean; peersMissed?: readonly string[] }>;
  /**
   * The local entry of an instance, pulled from a peer first when only a peer holds it; undefined when nobody
   * does, or at once when `signal` aborts (the requestor cancelled or left; the pull may go on).
   */
  ensureLocal(entry: CatalogEntry, signal?: AbortSignal): Promise<CatalogEntry | undefined>;
  /**
   * A local copy that could not be read whole or checked (lost chunks, other bytes) replaced by a peer's
   * good one now, rather than after the scrub: its local entry, or undefined when no peer could. Absent
   * without a mesh.
   */
  repairCopy?(entry: CatalogEntry): Promise<CatalogEntry | undefined>;
  /** Why a C-FIND should not be answered from the local catalog now (an Error Comment); absent or undefined: answer. */
  searchRefusal?(): string | undefined;
}

export function localRetrieveSource(store: ReplicaStore): RetrieveSource {
  return {
    async resolve(request, limit) {
      const entries: CatalogEntry[] = [];
      for await (const entry of resolveRetrieve(store.db, request)) {
        if (entries.length >= limit) return { entries, truncated: true };
        entries.push(entry);
      }
      return { entries, truncated: false };
    },
    ensureLocal: async (entry) => entry,
  };
}
