/**
 * STOW-RS (PS3.18 10.5): POST /studies[/{study}] with multipart/related; type="application/dicom", one
 * DICOM Part 10 file per part. Each part's data set goes to the store as it arrives, through the very
 * path a C-STORE takes (IncomingStore: the same checks, durable before success, the write quorum in a
 * mesh), so memory stays bounded whatever the instance size and back-pressure reaches the client.
 *
 * Conformance, where PS3.18 leaves a choice:
 * - The response (a Store Instances Response Module, annex I, as application/dicom+json) is sent once the
 *   whole body was read: 200 when every instance was stored, 202 when some were and others failed or
 *   carry a warning, 409 when none was (10.5.3, table 10.5.3-1), 503 with Retry-After when none was for
 *   want of resources alone (A7xx: no write quorum in time, a full disk), which is worth retrying.
 * - A body that stops being valid multipart (no close delimiter, cut short, a malformed part header) ends
 *   the reading there. Instances stored in full before the damage stay stored: then the answer is 202,
 *   naming them in the Referenced SOP Sequence and the damage in the Failed SOP Sequence (or the Other
 *   Failures Sequence when the damaged part could not be identified); 400, which says that no instance
 *   was stored (table 10.5.3-1), only when none was.
 * - Failure reasons (I.2.2) are the C-STORE's statuses (PS3.4 B.2.3: A7xx out of resources, quorum
 *   included; A9xx; Cxxx), plus 0122 for a SOP class that is not a storage class, C122 for a transfer
 *   syntax this archive cannot parse, and A900 for an instance of another study than the target
 *   resource's (10.5.1.1: /studies/{study} stores instances of that study only; I.2.2 defines no code
 *   for it and A900 is what STOW-RS servers commonly use). A part that is not a Part 10 file, or whose
 *   Content-Type is not application/dicom, fails with C000 ("cannot understand").
 * - A failed part whose SOP Class and Instance UIDs could not be read goes in the Other Failures Sequence
 *   (0008,119A): the Failed SOP Sequence's items must name the instance (Type 1 in the SOP Instance
 *   Reference Macro). Why each part failed is logged, and the first few reasons go in a Warning header.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { continueNow } from '../respond.ts';
import { duplicateWithOtherBytesMessage, IncomingStore, type StoreIdentity } from '../../actors/association/services/store.ts';
import { isStorableTransferSyntax, isStorageSopClass } from '../../actors/association/negotiation.ts';
import { DatasetParseError } from '../../codec/dataset/errors.ts';
import { DatasetHeaderReader } from '../../codec/dataset/reader.ts';
import { toDicomJson, type JsonSourceElement } from '../../codec/dataset/dicom-json.ts';
import { splitPart10 } from '../../codec/dataset/part10.ts';
import { longLengthVrs } from '../../codec/dataset/vr.ts';
import { Tags } from '../../codec/dictionary.ts';
import { isWarningStatus } from '../../codec/dimse.ts';
import { isAcceptableUid, normalizeUidValue } from '../../codec/uid.ts';
import { DicomWebError, sendDicomJson, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { parseMediaType, requireDicomJson } from './accept.ts';
import { MultipartError, type MultipartErrorCode } from './multipart-error.ts';
import { boundaryMaxChars, defaultMultipartLimits, isValidBoundary, printable, readMultipart, type MultipartLimits, type MultipartPart } from './multipart-reader.ts';
import type { DicomWebRoute } from './routes.ts';

type StoreRoute = Extract<DicomWebRoute, { type: 'store' }>;

/** Retry-After of a STOW-RS refused for want of resources: about a write quorum's wait. */
const stowRetryAfterSeconds = 10;

/** Failure Reason (0008,1197) values this service gives beyond the C-STORE statuses (PS3.18 I.2.2). */
export const StowFailure = {
  SopClassNotSupported: 0x0122,
  TransferSyntaxNotSupported: 0xc122,
  CannotUnderstand: 0xc000,
  StudyMismatch: 0xa900,
} as const;

/** Tags of the Store Instances Response Module (PS3.18 I.1), the codec's dictionary's and two it lacks. */
const ResponseTags = {
  RetrieveURL: Tags.RetrieveURL,
  WarningReason: 0x00081196,
  FailureReason: Tags.FailureReason,
  FailedSOPSequence: Tags.FailedSOPSequence,
  ReferencedSOPSequence: Tags.ReferencedSOPSequence,
  OtherFailuresSequence: 0x0008119a,
  ReferencedSOPClassUID: Tags.ReferencedSOPClassUID,
  ReferencedSOPInstanceUID: Tags.ReferencedSOPInstanceUID,
} as const;

/** Preamble, "DICM" and group 0002 together: the meta is a few hundred bytes; more is no Part 10 file this archive takes. */
const part10HeadMaxBytes = 64 * 1024;
/** Parts read whole whose commit and write quorum are awaited while the next part is read. */
const finishesInFlightMax = 16;
/** Reasons quoted in the Warning header: enough to tell a client what went wrong, never an unbounded header. */
const warningReasonsMax = 5;

/** 10,000 parts of 16 KiB of headers at most: bounds on one request, not on the instances' sizes. */
const stowLimits: MultipartLimits = defaultMultipartLimits;

/** The reader's refusals of a body over the bounds of one request (stowLimits), answered 413 when nothing was stored. */
const overRequestBounds: ReadonlySet<MultipartErrorCode> = new Set(['ERR_MULTIPART_TOO_MANY_PARTS', 'ERR_MULTIPART_HEADER_TOO_LARGE']);

const accepted = 'STOW-RS takes Content-Type: multipart/related; type="application/dicom"; boundary=... (one DICOM Part 10 file per part)';

interface SopReference {
  sopClassUid: string;
  sopInstanceUid: string;
}

/** What became of one part. */
type PartOutcome =
  | { type: 'stored'; reference: SopReference; identity: StoreIdentity; warningReason?: number }
  /** `reference` is undefined when the part's UIDs could not be read (or are not UIDs). */
  | { type: 'failed'; reference: SopReference | undefined; failureReason: number; why: string; beyondBounds?: true };

export async function storeInstances(ctx: DicomWebContext, exchange: DicomWebExchange, route: StoreRoute): Promise<void> {
  const { req, res } = exchange;
  const boundary = requestBoundary(req);
  const answerType = requireDicomJson(req.headers.accept, 'STOW-RS answers are');

  // Each part's outcome, in order: a part read whole waits for its commit and write quorum while the next
  // part is read, at most finishesInFlightMax at once (a mesh's quorum wait would otherwise add up).
  const finishing: Array<Promise<PartOutcome>> = [];
  let damage: MultipartError | undefined;
  /** Whether the damage was inside a part, so that part's outcome already tells of it. */
  let damageInPart = false;
  const log = ctx.log.child({ service: 'stow-rs' });
  let partsLogged = 0;
  try {
    for await (const part of readMultipart(requestBody(req, res), boundary, stowLimits)) {
      const { outcome, damage: partDamage } = await storePart(ctx, route, part);
      finishing.push(
        Promise.resolve(outcome).then((settled) => {
          // The first few of a request: 10,000 junk parts in one body wrote 10,000 lines (hunt 191); the
          // request's own line counts them all, and the response lists each.
          if (settled.type === 'failed' && ++partsLogged <= stowPartWarningsMax) {
            log.warn('STOW-RS part not stored', { part: part.index + 1, failureReason: hex(settled.failureReason), why: settled.why, sopInstanceUid: settled.reference?.sopInstanceUid, ...(partsLogged === stowPartWarningsMax ? { more: 'later parts not stored are counted in the request line only' } : {}) });
          }
          return settled;
        }),
      );
      if (finishing.length > finishesInFlightMax) await finishing[finishing.length - 1 - finishesInFlightMax];
      if (partDamage !== undefined) {
        damage = partDamage;
        damageInPart = true;
        break;
      }
    }
  } catch (error) {
    if (error instanceof RequestBodyError) {
      // The client is gone (or its connection broke): nobody can read an answer; what it sent in full is stored.
      const gone = await Promise.all(finishing);
      log.warn('STOW-RS request body broken off', { error: error.message, storedCount: gone.filter((o) => o.type === 'stored').length });
      res.destroy();
      return;
    }
    if (!(error instanceof MultipartError)) throw error;
    damage = error;
  } finally {
    // Whatever is left of the body is read and dropped (not left to stall the connection).
    if (!req.readableEnded) req.resume();
  }
  const outcomes = await Promise.all(finishing);

  const stored = outcomes.filter((outcome): outcome is Extract<PartOutcome, { type: 'stored' }> => outcome.type === 'stored');
  if (!req.complete) res.setHeader('connection', 'close');
  if (damage !== undefined) {
    log.warn('STOW-RS body is not valid multipart', { code: damage.code, error: damage.message, parts: outcomes.length, storedCount: stored.length });
    // Over a bound on one request (parts, a part's headers) is the request's size, not its form (RFC 9110 15.5.14).
    if (stored.length === 0 && overRequestBounds.has(damage.code)) throw new DicomWebError(413, 'ERR_STOW_TOO_LARGE', `the body is over a bound of one request: ${damage.message}; no instance was stored: send the parts in several requests`);
    if (stored.length === 0) throw new DicomWebError(400, 'ERR_STOW_MULTIPART', `the body is not valid multipart/related: ${damage.message}; no instance was stored`);
    // Damage found between parts names no instance: the failure then belongs to the body.
    if (!damageInPart) outcomes.push({ type: 'failed', reference: undefined, failureReason: StowFailure.CannotUnderstand, why: `the body is not valid multipart/related after part ${outcomes.length}: ${damage.message}` });
  }
  if (outcomes.length === 0) throw new DicomWebError(400, 'ERR_STOW_NO_PARTS', 'the multipart body holds no part: nothing to store');

  const failures = outcomes.filter((outcome): outcome is Extract<PartOutcome, { type: 'failed' }> => outcome.type === 'failed');
  const hasWarnings = stored.some((outcome) => outcome.warningReason !== undefined);
  // PS3.18 table 10.5.3-1: 200 all stored; 202 some stored with failures or warnings; 409 none stored;
  // 503 (busy) when none was for want of resources alone (A7xx: the write quorum, a full disk), which a
  // client may retry, where 409 says that the request itself conflicts; an instance over one of this
  // archive's bounds (A700 too) meets it again at every retry: 409 (hunt 191: 503 and Retry-After before).
  const outOfResources = failures.length > 0 && failures.every((failure) => (failure.failureReason & 0xff00) === 0xa700 && failure.beyondBounds !== true);
  const status = stored.length === 0 ? (outOfResources ? 503 : 409) : failures.length > 0 || hasWarnings ? 202 : 200;
  if (status === 503) res.setHeader('retry-after', String(stowRetryAfterSeconds));
  if (failures.length > 0) res.setHeader('warning', warningHeader(failures, outcomes.length));
  log.info('STOW-RS request', { httpStatus: status, parts: outcomes.length, storedCount: stored.length, failedCount: failures.length });
  if (failures.length > stowPartWarningsMax) log.warn('STOW-RS parts not stored, beyond those logged one by one', { failedCount: failures.length, logged: stowPartWarningsMax });
  sendDicomJson(res, status, responseModule(outcomes, exchange.baseUrl), answerType);
}

/** Parts not stored that one request logs one by one. */
const stowPartWarningsMax = 10;

/** The boundary of a request whose media type is multipart/related of application/dicom parts; 415 otherwise. */
function requestBoundary(req: IncomingMessage): string {
  const contentType = req.headers['content-type'];
  if (contentType === undefined) throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}; the request has no Content-Type`);
  const encoding = req.headers['content-encoding'];
  // RFC 7694 3: a content coding the server cannot decode is a 415.
  if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') {
    throw new DicomWebError(415, 'ERR_STOW_CONTENT_ENCODING', `Content-Encoding "${printable(encoding)}" is not supported: send the body unencoded`);
  }
  const media = parseMediaType(contentType);
  if (media === undefined) throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}; "${printable(contentType)}" is not a media type`);
  if (media.essence !== 'multipart/related') throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}, not ${media.essence}`);
  const type = media.parameters.get('type');
  // Without a type parameter (RFC 2387 requires one, some clients omit it) each part's own Content-Type decides.
  if (type !== undefined && type.trim().toLowerCase() !== 'application/dicom') {
    throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}; parts of type "${printable(type)}" (such as metadata and bulk data) are not stored here`);
  }
  const boundary = media.parameters.get('boundary');
  if (boundary === undefined) throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}; the Content-Type has no boundary parameter`);
  if (!isValidBoundary(boundary)) throw new DicomWebError(415, 'ERR_STOW_MEDIA_TYPE', `${accepted}; the boundary must be 1 to ${boundaryMaxChars} characters of RFC 2046 5.1.1`);
  return boundary;
}

/** An error of the request stream itself (the client went away), told apart from a malformed body. */
class RequestBodyError extends Error {
  override readonly name = 'RequestBodyError';
}

/** The request's bytes, read only when asked for; returning leaves the request paused, not destroyed (the answer is still to be sent). */
async function* requestBody(req: IncomingMessage, res: ServerResponse): AsyncGenerator<Uint8Array> {
  continueNow(res);
  try {
    for await (const chunk of req.iterator({ destroyOnReturn: false })) yield chunk as Buffer;
  } catch (error) {
    throw new RequestBodyError(error instanceof Error ? error.message : String(error));
  }
}

/**
 * Reads one part and stores its data set: `outcome` settles once it is committed and at its write quorum
 * (or failed); `damage` when the multipart body broke inside it (nothing of it is stored).
 */
async function storePart(ctx: DicomWebContext, route: StoreRoute, part: MultipartPart): Promise<{ outcome: PartOutcome | Promise<PartOutcome>; damage?: MultipartError }> {
  const failed = (reference: SopReference | undefined, failureReason: number, why: string): PartOutcome => ({ type: 'failed', reference, failureReason, why });
  const contentType = part.headers.get('content-type');
  if (contentType !== undefined && parseMediaType(contentType)?.essence !== 'application/dicom') {
    return { outcome: failed(undefined, StowFailure.CannotUnderstand, `Content-Type "${printable(contentType)}", not application/dicom`) };
  }
  const body = part.body[Symbol.asyncIterator]();
  let head: Buffer = Buffer.alloc(0);
  let ended = false;
  try {
    while (part10HeadState(head) === 'more') {
      if (head.length > part10HeadMaxBytes) return { outcome: failed(undefined, StowFailure.CannotUnderstand, `no end of the file meta information in the first ${part10HeadMaxBytes} bytes`) };
      const next = await body.next();
      if (next.done) {
        ended = true;
        break;
      }
      head = head.length === 0 ? Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength) : Buffer.concat([head, next.value]);
    }
  } catch (error) {
    if (error instanceof MultipartError) return { outcome: failed(undefined, StowFailure.CannotUnderstand, `the body is not valid multipart inside this part: ${error.message}`), damage: error };
    throw error;
  }

  const meta = describePart10(head);
  if (meta.type === 'invalid') return { outcome: failed(meta.reference, StowFailure.CannotUnderstand, meta.why) };
  const metaReference = isAcceptableUid(meta.sopClassUid) && isAcceptableUid(meta.sopInstanceUid) ? { sopClassUid: meta.sopClassUid, sopInstanceUid: meta.sopInstanceUid } : undefined;
  if (!isStorableTransferSyntax(meta.transferSyntaxUid)) return { outcome: failed(metaReference, StowFailure.TransferSyntaxNotSupported, `Transfer Syntax ${printable(meta.transferSyntaxUid)} is not one this archive stores`) };

  // The data set's own SOP Class and Instance UIDs name the instance, as in a C-STORE of the file (storescu
  // reads them from the data set), and as Orthanc's STOW-RS stores it: a meta that names others is a flaw of
  // the file's wrapper, which is not stored (3 corpus files; they were refused, 0xC002).
  const dataSetStart: Uint8Array[] = [head.subarray(meta.dataSetOffset)];
  let own: { sopClassUid: string; sopInstanceUid: string } | undefined;
  try {
    const read = await readDataSetUids(dataSetStart, ended ? undefined : body, meta.transferSyntaxUid);
    ended ||= read.ended;
    own = read.uids;
  } catch (error) {
    if (error instanceof MultipartError) return { outcome: failed(metaReference, StowFailure.CannotUnderstand, `the body is not valid multipart inside this part: ${error.message}`), damage: error };
    throw error;
  }
  const file = own === undefined || (own.sopClassUid === meta.sopClassUid && own.sopInstanceUid === meta.sopInstanceUid) ? meta : { ...meta, ...own };
  if (file !== meta) ctx.log.warn('STOW-RS part stored under its data set\'s UIDs, not those of its file meta information', { metaSopInstanceUid: meta.sopInstanceUid, sopInstanceUid: file.sopInstanceUid, metaSopClassUid: meta.sopClassUid, sopClassUid: file.sopClassUid });
  const reference = isAcceptableUid(file.sopClassUid) && isAcceptableUid(file.sopInstanceUid) ? { sopClassUid: file.sopClassUid, sopInstanceUid: file.sopInstanceUid } : undefined;
  if (!isStorageSopClass(file.sopClassUid)) return { outcome: failed(reference, StowFailure.SopClassNotSupported, `SOP Class ${printable(file.sopClassUid)} is not a storage SOP class`) };

  const targetStudyUid = route.studyUid;
  const store = IncomingStore.ofPart10File(file, ctx.ingest, () => ctx.clock.dateMs(), {
    checkIdentity:
      targetStudyUid === undefined
        ? undefined
        : (identity) => (identity.studyInstanceUid === targetStudyUid ? undefined : { status: StowFailure.StudyMismatch, errorComment: `instance of study ${identity.studyInstanceUid}, not of the target study ${targetStudyUid}` }),
  });
  let finished = false;
  try {
    // The head was read into its own buffer and the chunks are never reused: the writer may keep them.
    for (const chunk of dataSetStart) if (chunk.length > 0) await store.push(chunk);
    while (!ended) {
      const next = await body.next();
      if (next.done) break;
      await store.push(next.value);
    }
    finished = true;
  } catch (error) {
    if (error instanceof MultipartError) return { outcome: failed(reference, StowFailure.CannotUnderstand, `the body is not valid multipart inside this part: ${error.message}`), damage: error };
    throw error;
  } finally {
    if (!finished) await store.cancel();
  }
  const committed = store.finish().then((result): PartOutcome => {
    const otherBytes = store.duplicateWithOtherBytes;
    if (otherBytes !== undefined) ctx.log.warn(duplicateWithOtherBytesMessage, { sopInstanceUid: store.identity?.sopInstanceUid, via: 'STOW-RS', ...otherBytes });
    if (result.status === 0x0000 || isWarningStatus(result.status)) {
      // A duplicate's URLs name the copy stored before, under its own study and series (helper 60).
      const stored = store.storedEntry;
      const identity = stored === undefined ? store.identity! : { ...store.identity!, studyInstanceUid: stored.studyInstanceUid, seriesInstanceUid: stored.seriesInstanceUid };
      return { type: 'stored', reference: { sopClassUid: identity.sopClassUid, sopInstanceUid: identity.sopInstanceUid }, identity, warningReason: isWarningStatus(result.status) ? result.status : undefined };
    }
    const why = result.errorComment ?? `C-STORE status ${hex(result.status)}`;
    return result.beyondBounds ? { type: 'failed', reference, failureReason: result.status, why, beyondBounds: true } : failed(reference, result.status, why);
  });
  return { outcome: committed };
}

/** How much of a data set's start is read for its SOP Class and Instance UIDs: they lead it (group 0008). */
const dataSetUidsBytesMax = 64 * 1024;

/**
 * The data set's own SOP Class and Instance UIDs (0008,0016 and 0008,0018), from `start` and as many more
 * chunks of `body` as it takes, each appended to `start` (at most dataSetUidsBytesMax in all). Undefined
 * when they are not both there and valid, or the start cannot be read: the store's own reading then
 * decides (and says why).
 */
async function readDataSetUids(start: Uint8Array[], body: AsyncIterator<Uint8Array> | undefined, transferSyntaxUid: string): Promise<{ uids?: { sopClassUid: string; sopInstanceUid: string }; ended: boolean }> {
  const reader = new DatasetHeaderReader({ transferSyntaxUid, maxValueBytes: dataSetUidsBytesMax });
  const pastUids = () => (reader.elementsRead.at(-1)?.tag ?? 0) > Tags.SOPInstanceUID || reader.isComplete;
  let ended = body === undefined;
  let bytes = 0;
  try {
    for (const chunk of start) {
      reader.push(chunk);
      bytes += chunk.length;
    }
    while (!ended && !pastUids() && bytes < dataSetUidsBytesMax) {
      const next = await body!.next();
      if (next.done === true) ended = true;
      else {
        start.push(next.value);
        bytes += next.value.length;
        reader.push(next.value);
      }
    }
  } catch (error) {
    if (error instanceof DatasetParseError) return { ended };
    throw error;
  } finally {
    reader.abandon();
  }
  const valueOf = (tag: number) => normalizeUidValue(reader.elementsRead.find((element) => element.tag === tag)?.value ?? '');
  const sopClassUid = valueOf(Tags.SOPClassUID);
  const sopInstanceUid = valueOf(Tags.SOPInstanceUID);
  return isAcceptableUid(sopClassUid) && isAcceptableUid(sopInstanceUid) ? { uids: { sopClassUid, sopInstanceUid }, ended } : { ended };
}

/**
 * Whether `head` holds the whole preamble, "DICM" and group 0002 (plus the first element after it, which
 * ends the group: as splitPart10 reads it, whatever (0002,0000) says): 'more' while it may not, 'done'
 * once it does or cannot be a Part 10 file at all (splitPart10 then says why).
 */
function part10HeadState(head: Buffer): 'more' | 'done' {
  if (head.length < 132) return 'more';
  if (head.toString('latin1', 128, 132) !== 'DICM') return 'done';
  for (let at = 132; ; ) {
    if (head.length < at + 8) return 'more';
    if (head.readUInt16LE(at) !== 0x0002) return 'done';
    const vr = head.toString('latin1', at + 4, at + 6);
    const isLong = longLengthVrs.has(vr);
    if (isLong && head.length < at + 12) return 'more';
    const valueLength = isLong ? head.readUInt32LE(at + 8) : head.readUInt16LE(at + 6);
    const valueEnd = at + (isLong ? 12 : 8) + valueLength;
    if (valueEnd > part10HeadMaxBytes) return 'done';
    if (head.length < valueEnd) return 'more';
    at = valueEnd;
  }
}

type Part10Head =
  | { type: 'valid'; sopClassUid: string; sopInstanceUid: string; transferSyntaxUid: string; dataSetOffset: number }
  | { type: 'invalid'; reference: SopReference | undefined; why: string };

/** The meta information of a part (PS3.10 7.1): what it says of the data set, or why it is no Part 10 file. */
function describePart10(head: Buffer): Part10Head {
  let split: ReturnType<typeof splitPart10>;
  try {
    split = splitPart10(head);
  } catch (error) {
    const why = error instanceof DatasetParseError ? error.message : String(error);
    return { type: 'invalid', reference: undefined, why: `not a DICOM Part 10 file: ${why}` };
  }
  const valueOf = (tag: number) => normalizeUidValue(split.metaElements.find((element) => element.tag === tag)?.value ?? '');
  const sopClassUid = valueOf(Tags.MediaStorageSOPClassUID);
  const sopInstanceUid = valueOf(Tags.MediaStorageSOPInstanceUID);
  if (sopClassUid === '' || sopInstanceUid === '') {
    return { type: 'invalid', reference: undefined, why: 'the file meta information lacks Media Storage SOP Class UID (0002,0002) or Media Storage SOP Instance UID (0002,0003)' };
  }
  return { type: 'valid', sopClassUid, sopInstanceUid, transferSyntaxUid: split.transferSyntaxUid, dataSetOffset: split.datasetOffset };
}

/** The Store Instances Response Module (PS3.18 annex I, table I.1-1). */
function responseModule(outcomes: readonly PartOutcome[], baseUrl: string): unknown {
  const uid = (tag: number, value: string): JsonSourceElement => ({ tag, vr: 'UI', value });
  const referenced: JsonSourceElement[][] = [];
  const failed: JsonSourceElement[][] = [];
  const otherFailures: JsonSourceElement[][] = [];
  const studies = new Set<string>();
  for (const outcome of outcomes) {
    switch (outcome.type) {
      case 'stored': {
        const { studyInstanceUid, seriesInstanceUid, sopInstanceUid } = outcome.identity;
        studies.add(studyInstanceUid);
        const item = [
          uid(ResponseTags.ReferencedSOPClassUID, outcome.reference.sopClassUid),
          uid(ResponseTags.ReferencedSOPInstanceUID, outcome.reference.sopInstanceUid),
          { tag: ResponseTags.RetrieveURL, vr: 'UR', value: `${baseUrl}/studies/${studyInstanceUid}/series/${seriesInstanceUid}/instances/${sopInstanceUid}` },
        ];
        if (outcome.warningReason !== undefined) item.push({ tag: ResponseTags.WarningReason, vr: 'US', value: String(outcome.warningReason) });
        referenced.push(item);
        break;
      }
      case 'failed': {
        const reason: JsonSourceElement = { tag: ResponseTags.FailureReason, vr: 'US', value: String(outcome.failureReason) };
        if (outcome.reference === undefined) otherFailures.push([reason]);
        else failed.push([uid(ResponseTags.ReferencedSOPClassUID, outcome.reference.sopClassUid), uid(ResponseTags.ReferencedSOPInstanceUID, outcome.reference.sopInstanceUid), reason]);
        break;
      }
      default: {
        const unreachable: never = outcome;
        throw new Error(`unhandled outcome ${JSON.stringify(unreachable)}`);
      }
    }
  }
  // Type 2: the study's URL when the stored instances are of one study (where they are stored: a duplicate's
  // copy may be filed under another study than the path named, helper 62), else empty.
  const studyUid = studies.size === 1 ? [...studies][0]! : undefined;
  const elements: JsonSourceElement[] = [{ tag: ResponseTags.RetrieveURL, vr: 'UR', value: studyUid === undefined ? undefined : `${baseUrl}/studies/${studyUid}` }];
  if (failed.length > 0) elements.push({ tag: ResponseTags.FailedSOPSequence, vr: 'SQ', value: undefined, items: failed });
  if (referenced.length > 0) elements.push({ tag: ResponseTags.ReferencedSOPSequence, vr: 'SQ', value: undefined, items: referenced });
  if (otherFailures.length > 0) elements.push({ tag: ResponseTags.OtherFailuresSequence, vr: 'SQ', value: undefined, items: otherFailures });
  return toDicomJson(elements);
}

/** RFC 9111 5.5 (299: a persistent warning): the first reasons as text, with quotes and controls taken out. */
function warningHeader(failures: ReadonlyArray<Extract<PartOutcome, { type: 'failed' }>>, parts: number): string {
  const reasons = failures.slice(0, warningReasonsMax).map((failure) => `${hex(failure.failureReason)} ${failure.reference?.sopInstanceUid ?? '(unidentified part)'}: ${failure.why}`);
  const more = failures.length > warningReasonsMax ? `; and ${failures.length - warningReasonsMax} more` : '';
  const text = `${failures.length} of ${parts} parts not stored: ${reasons.join('; ')}${more}`;
  return `299 pacs-mesh "${text.slice(0, 2000).replace(/[^\x20-\x7e]|["\\]/g, "'")}"`;
}

function hex(status: number): string {
  return `0x${status.toString(16).toUpperCase().padStart(4, '0')}`;
}
