/**
 * The instances a WADO-RS request names, found as a C-GET finds them (in a mesh: at every alive site),
 * and each one's stored bytes, pulled here first when only a peer holds it and checked against its SHA-256.
 */
import { maxRetrieveInstances } from '../../actors/association/services/query-retrieve.ts';
import { checkedChunks, checkedStream, checkedWhole } from '../../actors/storage/checked-read.ts';
import type { CatalogEntry } from '../../actors/storage/catalog-types.ts';
import { isCatalogDamage } from '../../actors/storage/catalog.ts';
import { QueryError } from '../../actors/storage/query/query.ts';
import { errorText } from '../../actors/runtime/logger.ts';
import { ConcurrencyLimitError } from '../../actors/runtime/concurrency-limit.ts';
import { Tags } from '../../codec/dictionary.ts';
import { DatasetHeaderReader } from '../../codec/dataset/reader.ts';
import { binaryVrs } from '../../codec/dataset/vr.ts';
import type { DicomElement } from '../../codec/dicom-types.ts';
import { DicomWebError, heldInstanceWaitMaxMs, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { TranscodeError } from '../../codec/transcode-error.ts';
import type { TranscodeResult } from '../../codec/transcode-pool.ts';
import type { SearchLevel } from './routes.ts';

export interface InstanceSelector {
  level: SearchLevel;
  studyUid: string;
  seriesUid?: string;
  instanceUid?: string;
}

/**
 * The selected instances in study, series and instance number order. Throws DicomWebError: 404 when none
 * is known, 503 when a peer that may hold some did not answer (a partial study must not pass for the
 * whole one), 413 beyond what one retrieve may hold.
 */
export async function selectInstances(ctx: DicomWebContext, selector: InstanceSelector): Promise<CatalogEntry[]> {
  const keys: DicomElement[] = [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: selector.studyUid }];
  if (selector.seriesUid !== undefined) keys.push({ tag: Tags.SeriesInstanceUID, vr: 'UI', value: selector.seriesUid });
  if (selector.instanceUid !== undefined) keys.push({ tag: Tags.SOPInstanceUID, vr: 'UI', value: selector.instanceUid });
  let resolved: Awaited<ReturnType<DicomWebContext['retrieveSource']['resolve']>>;
  try {
    resolved = await meshWork(ctx, () => ctx.retrieveSource.resolve({ root: 'STUDY', level: selector.level, keys }, maxRetrieveInstances));
  } catch (error) {
    if (error instanceof DicomWebError) throw error;
    if (isCatalogDamage(error)) ctx.store.reportCatalogDamage(`DICOMweb retrieve: ${errorText(error)}`);
    if (error instanceof QueryError) throw new DicomWebError(400, 'ERR_DICOMWEB_QUERY', error.message);
    throw new DicomWebError(500, 'ERR_DICOMWEB_LOOKUP', `retrieve lookup failed: ${errorText(error)}`);
  }
  if (resolved.truncated) throw new DicomWebError(413, 'ERR_DICOMWEB_TOO_MANY', `more than ${maxRetrieveInstances} instances: ask for a series or an instance`);
  if (resolved.peersMissed !== undefined && resolved.peersMissed.length > 0) {
    throw new DicomWebError(503, 'ERR_DICOMWEB_PEERS_SILENT', `${resolved.peersMissed.length} peer(s) that may hold matches did not answer: retry`);
  }
  if (resolved.entries.length === 0) {
    // Not found among the sites up; one that is down may hold it (stored there alone, under a quorum of 1).
    const down = ctx.sitesDown?.() ?? [];
    const hint = down.length === 0 ? '' : `; ${down.length} known site(s) are down and may hold it (${down.slice(0, 3).join(', ')}${down.length > 3 ? ', ...' : ''})`;
    throw new DicomWebError(404, 'ERR_DICOMWEB_NOT_FOUND', `${selector.instanceUid === undefined ? 'no instance of ' : 'no instance '}${describe(selector)} is stored at the sites up${hint}`);
  }
  return resolved.entries.sort(compareEntries);
}

function describe(selector: InstanceSelector): string {
  if (selector.instanceUid !== undefined) return `${selector.instanceUid} in series ${selector.seriesUid ?? ''} of study ${selector.studyUid}`;
  if (selector.seriesUid !== undefined) return `series ${selector.seriesUid} of study ${selector.studyUid}`;
  return `study ${selector.studyUid}`;
}

function instanceNumberOf(entry: CatalogEntry): number {
  const value = entry.attributes.find((element) => element.tag === Tags.InstanceNumber)?.value;
  const number = value === undefined ? NaN : Number(value.trim());
  return Number.isFinite(number) ? number : Number.MAX_SAFE_INTEGER;
}

/** Series together, each in Instance Number order, as a viewer loads them. */
function compareEntries(a: CatalogEntry, b: CatalogEntry): number {
  if (a.studyInstanceUid !== b.studyInstanceUid) return a.studyInstanceUid < b.studyInstanceUid ? -1 : 1;
  if (a.seriesInstanceUid !== b.seriesInstanceUid) return a.seriesInstanceUid < b.seriesInstanceUid ? -1 : 1;
  return instanceNumberOf(a) - instanceNumberOf(b) || (a.sopInstanceUid < b.sopInstanceUid ? -1 : a.sopInstanceUid > b.sopInstanceUid ? 1 : 0);
}

/** `work` (a lookup or pull at other sites) within ctx.meshLookups; 503 when too many already wait. */
async function meshWork<T>(ctx: DicomWebContext, work: () => Promise<T>): Promise<T> {
  try {
    return await ctx.meshLookups.run(work, 1, undefined, ctx.responseUnderWay === true);
  } catch (error) {
    if (error instanceof ConcurrencyLimitError) throw new DicomWebError(503, 'ERR_DICOMWEB_BUSY', `too many DICOMweb requests wait for other sites (${error.message}): retry`);
    throw error;
  }
}

/** Pauses before asking peers again for an instance none could send (a busy peer, a stream cut): then 503. */
const pullRetryDelaysMs = [200, 1000];

/** The local entry of an instance, pulled from a peer first when only a peer holds it. */
async function localEntryOf(ctx: DicomWebContext, entry: CatalogEntry): Promise<CatalogEntry> {
  for (let attempt = 0; ; attempt++) {
    let local: CatalogEntry | undefined;
    try {
      local = await meshWork(ctx, () => ctx.retrieveSource.ensureLocal(entry));
    } catch (error) {
      // Peers that cannot send it make ensureLocal answer undefined: a failure is this site's own store (a
      // fault, a damaged catalog), which asking the peers again cannot mend.
      if (error instanceof DicomWebError) throw error;
      if (isCatalogDamage(error)) ctx.store.reportCatalogDamage(`DICOMweb retrieve: ${errorText(error)}`);
      throw new DicomWebError(500, 'ERR_DICOMWEB_LOOKUP', `instance ${entry.sopInstanceUid} cannot be looked up in the store here: ${errorText(error)}`);
    }
    if (local !== undefined) return local;
    const delayMs = pullRetryDelaysMs[attempt];
    if (delayMs === undefined) throw new DicomWebError(503, 'ERR_DICOMWEB_UNAVAILABLE', `instance ${entry.sopInstanceUid} is not here, and no peer could send it: retry`);
    await new Promise<void>((resolve) => ctx.clock.setTimeout(resolve, delayMs));
  }
}

/**
 * A checked read of the instance's data set: `read` gets the local entry (whose transfer syntax and length
 * describe the bytes). A local copy that cannot be read or checked before anything was taken from it is
 * replaced by a peer's good one and read once more, as a C-GET does.
 */
async function withLocalCopy<T>(ctx: DicomWebContext, entry: CatalogEntry, read: (local: CatalogEntry) => Promise<T>): Promise<T> {
  const local = await localEntryOf(ctx, entry);
  try {
    return await read(local);
  } catch (error) {
    const repaired = await ctx.retrieveSource.repairCopy?.(local).catch(() => undefined);
    if (repaired === undefined) throw new DicomWebError(500, 'ERR_DICOMWEB_COPY_DAMAGED', `the stored copy of ${entry.sopInstanceUid} cannot be read: ${errorText(error)}`);
    return read(repaired);
  }
}

/** The whole data set in memory (for a transcode, or a small instance), checked. */
export function readWholeInstance(ctx: DicomWebContext, entry: CatalogEntry): Promise<{ entry: CatalogEntry; bytes: Buffer }> {
  return withLocalCopy(ctx, entry, async (local) => ({ entry: local, bytes: await checkedWhole(ctx.store, local) }));
}

/** The whole data set as its stored chunks, checked: for sending as stored, without a copy into one buffer. */
export function readInstanceChunks(ctx: DicomWebContext, entry: CatalogEntry): Promise<{ entry: CatalogEntry; chunks: Uint8Array[] }> {
  return withLocalCopy(ctx, entry, async (local) => ({ entry: local, chunks: await checkedChunks(ctx.store, local) }));
}

/**
 * The data set as it is read, hashed on the way: its first chunk is read before this returns; a mismatch
 * throws after the last chunk, before the caller ends its part, so the client sees a broken response.
 */
export function streamInstance(ctx: DicomWebContext, entry: CatalogEntry): Promise<{ entry: CatalogEntry; chunks: AsyncIterable<Uint8Array> }> {
  return withLocalCopy(ctx, entry, async (local) => ({ entry: local, chunks: await checkedStream(ctx.store, local) }));
}

/**
 * The data set from its start, `chunksPerRead` chunks per store read (1 for a reader of its header, which
 * stops early), not checked against its SHA-256 (that needs every byte). A copy that cannot be read is
 * replaced as above.
 */
export function streamInstanceHead(ctx: DicomWebContext, entry: CatalogEntry, chunksPerRead = 1): Promise<{ entry: CatalogEntry; chunks: AsyncGenerator<Uint8Array> }> {
  return withLocalCopy(ctx, entry, async (local) => {
    // The first chunk is read now, so a copy that cannot be read at all is found (and repaired) here; a
    // reader that stops early ends the store's read too.
    return { entry: local, chunks: await withFirstReady(ctx.store.readInstance(local, { chunksPerRead })) };
  });
}

/**
 * `prepare(item, index)` of each item in order, the next one started while the caller uses the current one
 * (one ahead at most): reading instance n+1 from the store, or transcoding it, overlaps sending instance n.
 * `prepare` must hold nothing but memory (no open store iterator): a prepared item the caller never takes
 * is dropped, its failure ignored.
 */
export async function* preparedAhead<T, R>(items: readonly T[], prepare: (item: T, index: number) => Promise<R>, discard?: (prepared: R) => void): AsyncGenerator<R> {
  let next: Promise<R> | undefined = items.length > 0 ? prepare(items[0]!, 0) : undefined;
  try {
    for (let index = 0; index < items.length; index++) {
      const current = await next!;
      next = index + 1 < items.length ? prepare(items[index + 1]!, index + 1) : undefined;
      yield current;
    }
  } finally {
    // A prepared item never taken gives back what it holds (a converted instance's place in the transcoder's budget).
    next?.then((dropped) => discard?.(dropped), () => undefined);
  }
}

/**
 * The instance converted to `toSyntax` in the transcoder's thread, stopped if the client goes away. The
 * bytes move to the thread when the job starts: this side keeps no copy. A conversion that cannot be done
 * is a 406 saying the instance can be had as stored; a transcoder too busy, a 503.
 */
export async function convertInstance(
  ctx: DicomWebContext,
  exchange: DicomWebExchange,
  input: Uint8Array | { byteLength: number; read(): Promise<Uint8Array> },
  fromSyntax: string,
  toSyntax: string,
  instanceUid: string,
  options: { renderedJpegQuality?: number; estimatedBytes?: number } = {},
): Promise<TranscodeResult> {
  const cancel = new AbortController();
  const onClose = () => cancel.abort();
  exchange.res.once('close', onClose);
  let held: Uint8Array | undefined = input instanceof Uint8Array ? input : undefined;
  // Bytes given are handed over when the job starts; a reader given reads then (nothing held while waiting).
  const source =
    input instanceof Uint8Array
      ? {
          byteLength: input.byteLength,
          read: async () => {
            const taken = held!;
            held = undefined;
            return taken;
          },
        }
      : input;
  try {
    // Its wait for the transcoder is bounded as the wait for held bytes is (hunt 191: unbounded, a rendering
    // waited behind outputs held for clients that did not read until its client gave up).
    return await ctx.transcoder.transcode(source, fromSyntax, [toSyntax], { signal: cancel.signal, startWithinMs: heldInstanceWaitMaxMs, ...options });
  } catch (error) {
    if (!(error instanceof TranscodeError)) throw error;
    switch (error.code) {
      case 'ERR_TRANSCODE_UNAVAILABLE':
        throw new DicomWebError(503, 'ERR_DICOMWEB_TRANSCODER_BUSY', `instance ${instanceUid} cannot be converted now: ${error.message}`);
      case 'ERR_TRANSCODE_CANCELLED':
        throw new DicomWebError(499, 'ERR_DICOMWEB_CLIENT_GONE', 'the client closed the connection during the conversion');
      case 'ERR_TRANSCODE_TOO_LARGE':
        throw new DicomWebError(413, 'ERR_DICOMWEB_TOO_LARGE', `instance ${instanceUid} (stored as ${fromSyntax}) is not converted to ${toSyntax}: ${error.message} (transfer-syntax=* or ${fromSyntax})`);
      case 'ERR_TRANSCODE_UNSUPPORTED':
      case 'ERR_TRANSCODE_FAILED':
        ctx.log.warn('DICOMweb: an instance could not be converted', { instanceUid, from: fromSyntax, to: toSyntax, error: errorText(error) });
        throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_CONVERTIBLE', `instance ${instanceUid} (stored as ${fromSyntax}) cannot be converted to ${toSyntax}: ${error.message}; it can be had as stored (transfer-syntax=*)`, { cause: error });
      default: {
        const unreachable: never = error.code;
        throw new Error(`unhandled transcode error ${String(unreachable)}`);
      }
    }
  } finally {
    held = undefined;
    exchange.res.off('close', onClose);
  }
}

/**
 * The instances of one response, each prepared one ahead (preparedAhead), the first had before the status
 * goes out (withFirstReady). The first decides whether the request gets in; the later ones are prepared with
 * their lookups at other sites admitted: they wait their turn rather than be refused for a full queue,
 * which after the status could only cut the response (DicomWebContext.responseUnderWay).
 */
export function responseInstances<R>(
  ctx: DicomWebContext,
  entries: readonly CatalogEntry[],
  prepare: (entry: CatalogEntry, ctx: DicomWebContext) => Promise<R>,
  discard?: (prepared: R) => void,
): Promise<AsyncGenerator<R>> {
  const admitted: DicomWebContext = { ...ctx, responseUnderWay: true };
  return withFirstReady(preparedAhead(entries, (entry, index) => prepare(entry, index === 0 ? ctx : admitted), discard));
}

/**
 * `items` with its first item already had: awaited before a response's status goes out, so that a failure
 * to get it is still a status (a 503, a 406), not a cut response. The rest follow as they come.
 */
export async function withFirstReady<T>(items: AsyncGenerator<T>): Promise<AsyncGenerator<T>> {
  const first = await items.next();
  return (async function* () {
    try {
      if (first.done === true) return;
      yield first.value;
      yield* items;
    } finally {
      // A caller that stops at the first item never reached yield*, which would have passed its return on:
      // `items` is ended here (an item prepared ahead discarded: its converted output stayed counted in the
      // transcoder's budget for 10 minutes, helper 94; a store read closed).
      await items.return(undefined);
    }
  })();
}

/**
 * `work`, which holds an instance whole (read, decoded), within ctx.heldInstanceBytes, weighing `weight`
 * bytes. The wait ends when the client leaves (its place is given up, nothing is read for it) or after
 * heldInstanceWaitMaxMs (503); a queue already full is a 503 at once, unless the response is under way
 * (ctx.responseUnderWay: a later instance of it).
 */
export async function holdingInstance<T>(ctx: DicomWebContext, exchange: DicomWebExchange, weight: number, work: () => Promise<T>): Promise<T> {
  const waiting = new AbortController();
  const onClose = () => waiting.abort(new DicomWebError(499, 'ERR_DICOMWEB_CLIENT_GONE', 'the client closed the connection while its request waited'));
  exchange.res.once('close', onClose);
  const timer = ctx.clock.setTimeout(
    () => waiting.abort(new DicomWebError(503, 'ERR_DICOMWEB_BUSY', `waited ${heldInstanceWaitMaxMs / 1000} s for other requests holding large instances: retry`)),
    heldInstanceWaitMaxMs,
  );
  try {
    return await ctx.heldInstanceBytes.run(
      async () => {
        ctx.clock.clearTimeout(timer);
        return work();
      },
      weight,
      waiting.signal,
      // A later instance of a response under way waits its turn beyond the queue's bound: refused, it could
      // only cut the response (see responseInstances).
      ctx.responseUnderWay === true,
    );
  } catch (error) {
    if (error instanceof ConcurrencyLimitError) throw new DicomWebError(503, 'ERR_DICOMWEB_BUSY', `too many requests wait to hold large instances (${error.message}): retry`);
    throw error;
  } finally {
    ctx.clock.clearTimeout(timer);
    exchange.res.off('close', onClose);
  }
}

/**
 * `read`'s result, counted in ctx.heldInstanceBytes at `weight` (see holdingInstance) from before it is read
 * until `release` is called: for what a response holds until the client has taken it, not only while it is
 * made. `release` must be called once the result is written or dropped.
 */
export function holdingUntilReleased<T>(ctx: DicomWebContext, exchange: DicomWebExchange, weight: number, read: () => Promise<T>): Promise<{ value: T; release: () => void }> {
  return new Promise((resolve, reject) => {
    let release!: () => void;
    const released = new Promise<void>((resolveReleased) => (release = resolveReleased));
    holdingInstance(ctx, exchange, weight, async () => {
      resolve({ value: await read(), release });
      await released;
    }).catch(reject);
  });
}

/** A header beyond this (before Pixel Data, without the values cut as bulk data) is not read for metadata or frames. */
export const headerBytesMax = 64 * 1024 * 1024;

/** A top-level binary value left out of a header read for metadata (see readToPixelData): where it is in the stored data set. */
export interface BulkValueCut {
  tag: number;
  vr: string;
  /** Offset of the value in the stored data set, and its length. */
  valueOffset: number;
  valueLength: number;
}

/**
 * The data set's bytes from `chunks` up to its Pixel Data and `bytesPastPixelData` more (the element's own
 * header, say), or to its end when it has none; `chunks` is left open at the next chunk. `pixelDataOffset`
 * is undefined without Pixel Data, and `overBound` true when none came within headerBytesMax.
 * With `cutValuesFromBytes`, top-level binary values (OB, OW, UN...) that long or longer are left out of
 * `head` as they stream by, their length fields set to 0, and listed in `cuts`: a 70 MB encapsulated PDF
 * (or a large private blob) made its study's metadata a 500 and held its bytes per request (hunt 85).
 * Offsets in `head` (pixelDataOffset among them) are then those of the data set without the cut values.
 */
export async function readToPixelData(
  chunks: AsyncIterator<Uint8Array>,
  transferSyntaxUid: string,
  bytesPastPixelData = 0,
  cutValuesFromBytes = Number.POSITIVE_INFINITY,
): Promise<{ head: Buffer; pixelDataOffset: number | undefined; overBound: boolean; cuts: BulkValueCut[] }> {
  const cuts: BulkValueCut[] = [];
  let cutBytes = 0;
  const reader = new DatasetHeaderReader({
    transferSyntaxUid,
    onTopLevelValueSkipped: (skipped) => {
      if (skipped.valueLength < cutValuesFromBytes || !skipped.lengthFieldOf4Bytes || !binaryVrs.has(skipped.vr)) return;
      cuts.push({ tag: skipped.tag, vr: skipped.vr, valueOffset: skipped.valueOffset, valueLength: skipped.valueLength });
      cutBytes += skipped.valueLength;
    },
  });
  const kept: Uint8Array[] = [];
  let keptBytes = 0;
  const keep = (bytes: Uint8Array) => {
    if (bytes.byteLength === 0) return;
    kept.push(bytes);
    keptBytes += bytes.byteLength;
  };
  let pixelDataOffset: number | undefined;
  let streamOffset = 0;
  let nextCut = 0;
  const head = () => {
    if (cuts.length === 0 && kept.length === 1) return Buffer.from(kept[0]!.buffer, kept[0]!.byteOffset, kept[0]!.byteLength);
    const joined = Buffer.concat(kept);
    // Each cut value's 4-byte length field, just before it, moved back by the values cut before it.
    let cutBefore = 0;
    for (const cut of cuts) {
      const at = cut.valueOffset - 4 - cutBefore;
      if (at + 4 <= joined.length) joined.fill(0, at, at + 4);
      cutBefore += cut.valueLength;
    }
    return joined;
  };
  while (pixelDataOffset === undefined || keptBytes < pixelDataOffset + bytesPastPixelData) {
    const next = await chunks.next();
    if (next.done === true) break;
    const chunk = next.value;
    const start = streamOffset;
    streamOffset += chunk.byteLength;
    if (pixelDataOffset === undefined) {
      reader.push(chunk);
      // In head's offsets: every cut comes before Pixel Data.
      if (reader.isComplete) pixelDataOffset = reader.end().pixelDataOffset! - cutBytes;
    }
    // The chunk without the cut values in it (all known by now: a value's header comes before it).
    for (let at = start; at < streamOffset;) {
      while (nextCut < cuts.length && cuts[nextCut]!.valueOffset + cuts[nextCut]!.valueLength <= at) nextCut++;
      const cut = cuts[nextCut];
      const keepUntil = cut === undefined ? streamOffset : Math.min(streamOffset, cut.valueOffset);
      if (keepUntil > at) keep(chunk.subarray(at - start, keepUntil - start));
      at = cut === undefined || keepUntil === streamOffset ? streamOffset : Math.min(streamOffset, cut.valueOffset + cut.valueLength);
    }
    // Most headers fit in the first chunk: no copy then.
    if (pixelDataOffset === undefined && keptBytes > headerBytesMax) return { head: head(), pixelDataOffset: undefined, overBound: true, cuts };
  }
  // Read to its end without Pixel Data: the reader checks what it read is whole.
  if (!reader.isComplete) reader.end();
  return { head: head(), pixelDataOffset, overBound: false, cuts };
}
