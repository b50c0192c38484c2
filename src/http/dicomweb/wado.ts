/**
 * WADO-RS (PS3.18 10.4): the instances of a study, series or one instance as application/dicom parts of
 * a multipart/related response, and their metadata as DICOM JSON. Instances go out as stored when the
 * client takes that syntax (`transfer-syntax=*`, or the stored one), else converted by the transcoder,
 * which C-GET uses too.
 */
import { once } from 'node:events';
import { createInflateRaw } from 'node:zlib';
import { checkedWholeBytesMax } from '../../actors/storage/checked-read.ts';
import type { CatalogEntry } from '../../actors/storage/catalog-types.ts';
import { implementationClassUid, implementationVersionName } from '../../actors/association/implementation.ts';
import { errorText } from '../../actors/runtime/logger.ts';
import { jsonTag, toDicomJson, type JsonSourceElement } from '../../codec/dataset/dicom-json.ts';
import { encodePart10Header } from '../../codec/dataset/part10.ts';
import { parseDatasetTree, type TreeElement } from '../../codec/dataset/tree.ts';
import { binaryVrs, layoutOf } from '../../codec/dataset/vr.ts';
import { Tags } from '../../codec/dictionary.ts';
import { EXPLICIT_LE, canTranscodeInstance } from '../../codec/transcode-targets.ts';
import { estimateTranscodeBytes, transcodeJobBytesMax, transcodeTooLarge } from '../../codec/transcode-estimate.ts';
import { acceptableRanges, parseAccept, prefersSinglePart, requireDicomJson, type MediaRange } from './accept.ts';
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { convertInstance, headerBytesMax, holdingInstance, holdingUntilReleased, readInstanceChunks, readToPixelData, readWholeInstance, responseInstances, selectInstances, streamInstance, streamInstanceHead, type BulkValueCut } from './instances.ts';
import { byteLengthOf, inMemoryChunks, isClientGone, responseBodyWriter, sendBody, startMultipart } from './multipart-writer.ts';
import type { DicomWebRoute } from './routes.ts';

type RetrieveRoute = Extract<DicomWebRoute, { type: 'retrieve' }>;

/** `*`: each instance as stored; else the one syntax every part is sent in. */
type InstanceSyntax = '*' | string;

/** The syntaxes the Accept header's ranges ask application/dicom in, best first (`*`: as stored). */
function dicomSyntaxesAsked(ranges: readonly MediaRange[]): string[] {
  const asked: string[] = [];
  for (const range of acceptableRanges(ranges)) {
    const mediaType = `${range.type}/${range.subtype}`;
    const partType = mediaType === 'multipart/related' ? (range.parameters.get('type') ?? 'application/dicom').toLowerCase() : mediaType;
    const servesDicom = partType === 'application/dicom' || mediaType === '*/*' || mediaType === 'multipart/*';
    if (servesDicom) asked.push(range.parameters.get('transfer-syntax') ?? EXPLICIT_LE);
  }
  return asked;
}

/**
 * The transfer syntax to send the instances in, from the Accept header's ranges (PS3.18 8.7.3.5): the
 * first range, best first, that names application/dicom (or any type) with a syntax every instance can be
 * sent in. Without a transfer-syntax parameter that is Explicit VR Little Endian, application/dicom's
 * default (PS3.18 8.7.3.5.2); `*` keeps each instance as stored. undefined when no range can be served.
 */
export function instanceSyntaxFor(ranges: readonly MediaRange[], entries: ReadonlyArray<Pick<CatalogEntry, 'transferSyntaxUid' | 'attributes'>>): InstanceSyntax | undefined {
  // Helper 60: an RGB instance asked in JPEG 2000 got a cut connection.
  return dicomSyntaxesAsked(ranges).find((asked) => asked === '*' || entries.every((entry) => canTranscodeInstance(entry, asked)));
}

/**
 * When no range serves every instance: the first one, best first, that serves some, and those it serves
 * (a 206 Partial Content, PS3.18 10.4.3: one video instance no longer makes a whole study 406).
 */
export function instanceSyntaxForSome<E extends Pick<CatalogEntry, 'transferSyntaxUid' | 'attributes'>>(ranges: readonly MediaRange[], entries: readonly E[]): { syntax: string; served: E[] } | undefined {
  for (const asked of dicomSyntaxesAsked(ranges)) {
    const served = entries.filter((entry) => canTranscodeInstance(entry, asked));
    if (served.length > 0) return { syntax: asked, served };
  }
  return undefined;
}

export async function retrieveInstances(ctx: DicomWebContext, exchange: DicomWebExchange, route: RetrieveRoute): Promise<void> {
  const selected = await selectInstances(ctx, route);
  const ranges = parseAccept(exchange.req.headers.accept);
  let entries = selected;
  let syntax = instanceSyntaxFor(ranges, selected);
  const headers: Record<string, string> = {};
  if (syntax === undefined) {
    const some = instanceSyntaxForSome(ranges, selected);
    if (some === undefined) {
      const storedSyntaxes = new Set(selected.map((entry) => entry.transferSyntaxUid));
      throw new DicomWebError(
        406,
        'ERR_DICOMWEB_NOT_ACCEPTABLE',
        `instances are sent as multipart/related; type="application/dicom" with transfer-syntax=* (as stored: ${[...storedSyntaxes].join(', ')}) or one they can be converted to (asked: ${(exchange.req.headers.accept ?? '').slice(0, 160)})`,
      );
    }
    ({ syntax, served: entries } = some);
    const served = new Set(entries);
    const left = selected.filter((entry) => !served.has(entry));
    const leftSyntaxes = [...new Set(left.map((entry) => entry.transferSyntaxUid))].join(', ');
    headers.warning = `299 pacs-mesh "${left.length} of ${selected.length} instances cannot be converted to ${syntax} (stored as ${leftSyntaxes}) and are left out; transfer-syntax=* sends every one as stored. First left out: ${left[0]!.sopInstanceUid}"`;
  }
  if (syntax !== '*') {
    // Instances too large to convert are left out (a 206 saying why) rather than cut the response when
    // their turn comes; when none is left, the first one's 413.
    const target = syntax;
    const fits = entries.filter((entry) => transcodeTooLarge(estimateTranscodeBytes(entry, target)) === undefined);
    if (fits.length === 0) refuseTooLargeConversion(entries[0]!, target, estimateTranscodeBytes(entries[0]!, target));
    if (fits.length < entries.length) {
      const first = entries.find((entry) => !fits.includes(entry))!;
      const tooLarge = `299 pacs-mesh "${entries.length - fits.length} of ${selected.length} instances would hold more than ${transcodeJobBytesMax} bytes converted to ${target} and are left out; transfer-syntax=* sends them as stored. First left out: ${first.sopInstanceUid}"`;
      headers.warning = headers.warning === undefined ? tooLarge : `${headers.warning}, ${tooLarge}`;
      entries = fits;
    }
  }
  const status = entries.length < selected.length ? 206 : 200;
  const { res } = exchange;
  if (route.instanceUid !== undefined && prefersSinglePart(exchange.req.headers.accept, 'dicom')) {
    await sendSinglePart(ctx, exchange, entries[0]!, syntax, headers);
    return;
  }
  if (exchange.req.method === 'HEAD') {
    // The headers a GET would have (its Content-Type names a boundary), and no part read.
    startMultipart(res, { type: 'application/dicom', status, headers }).end();
    return;
  }
  const prepare = async (entry: CatalogEntry, entryCtx: DicomWebContext): Promise<{ headers: Record<string, string>; body: readonly Uint8Array[] | AsyncIterable<Uint8Array>; release?: () => void }> => {
    const file = await part10File(entryCtx, exchange, entry, syntax === '*' ? entry.transferSyntaxUid : syntax);
    return {
      headers: {
        'content-type': `application/dicom; transfer-syntax=${file.transferSyntaxUid}`,
        'content-location': `${exchange.baseUrl}/studies/${entry.studyInstanceUid}/series/${entry.seriesInstanceUid}/instances/${entry.sopInstanceUid}`,
      },
      body: file.body,
      ...(file.release === undefined ? {} : { release: file.release }),
    };
  };
  // The first instance is had before the status goes out: a retrieve that cannot get it (no peer could
  // send it) is a 503, not a cut connection. A later one that fails can only cut the response.
  const parts = await responseInstances(ctx, entries, prepare, (part) => part.release?.());
  const writer = startMultipart(res, { type: 'application/dicom', status, headers });
  try {
    for await (const part of parts) {
      try {
        await writer.writePart(part.headers, part.body);
      } finally {
        part.release?.();
      }
    }
  } catch (error) {
    // The client went away (a conversion under way stopped with it): nobody is left to answer.
    if (isClientGone(error, res)) return;
    throw error;
  }
  writer.end();
}

/**
 * An instance resource asked as a single part: its Part 10 file as the body (it was sent as multipart/related,
 * which a client asking application/dicom cannot read: hunt 196), read before the status goes out as a
 * multipart answer's first part is.
 */
async function sendSinglePart(ctx: DicomWebContext, exchange: DicomWebExchange, entry: CatalogEntry, syntax: InstanceSyntax, headers: Record<string, string>): Promise<void> {
  const target = syntax === '*' ? entry.transferSyntaxUid : syntax;
  const fileHeaders = {
    ...headers,
    'content-type': `application/dicom; transfer-syntax=${target}`,
    'content-location': `${exchange.baseUrl}/studies/${entry.studyInstanceUid}/series/${entry.seriesInstanceUid}/instances/${entry.sopInstanceUid}`,
  };
  await sendPart10File(exchange, fileHeaders, entry, target, () => part10File(ctx, exchange, entry, target));
}

/**
 * A 200 whose body is an instance's Part 10 file in `target`, read by `read` (its length when it is in memory),
 * released once written or once the client has gone; to HEAD the same headers, the length when sent as stored.
 */
export async function sendPart10File(
  exchange: DicomWebExchange,
  headers: Record<string, string>,
  entry: CatalogEntry,
  target: string,
  read: () => Promise<{ body: readonly Uint8Array[] | AsyncIterable<Uint8Array>; release?: () => void }>,
): Promise<void> {
  const { res } = exchange;
  if (exchange.req.method === 'HEAD') {
    res.writeHead(200, { ...headers, ...(target === entry.transferSyntaxUid ? { 'content-length': String(part10LengthAsStored(entry)) } : {}) });
    res.end();
    return;
  }
  const file = await read();
  const inMemory = inMemoryChunks(file.body);
  try {
    await sendBody(res, { ...headers, ...(inMemory === undefined ? {} : { 'content-length': String(byteLengthOf(inMemory)) }) }, file.body);
  } finally {
    file.release?.();
  }
}

/** The byte length of the Part 10 file of an instance sent as stored (part10File's, without reading it). */
function part10LengthAsStored(entry: CatalogEntry): number {
  return part10Header(entry, entry.transferSyntaxUid).byteLength + entry.byteLength;
}

function part10Header(entry: CatalogEntry, transferSyntaxUid: string): Uint8Array {
  return encodePart10Header({ sopClassUid: entry.sopClassUid, sopInstanceUid: entry.sopInstanceUid, transferSyntaxUid, implementationClassUid, implementationVersionName });
}

/**
 * One instance as a Part 10 file in `target`: as stored (streamed when large, opened only when its turn
 * comes, so an open read does not wait ahead) or converted (holding a share of the budget: a conversion
 * decodes the whole instance, several times its size). The caller has checked that it can be converted.
 */
export async function part10File(
  ctx: DicomWebContext,
  exchange: DicomWebExchange,
  entry: CatalogEntry,
  target: string,
): Promise<{ transferSyntaxUid: string; body: readonly Uint8Array[] | AsyncIterable<Uint8Array>; release?: () => void }> {
  const header = (transferSyntaxUid: string) => part10Header(entry, transferSyntaxUid);
  if (target === entry.transferSyntaxUid && entry.byteLength > checkedWholeBytesMax) {
    return {
      transferSyntaxUid: target,
      body: (async function* () {
        const { chunks } = await streamInstance(ctx, entry);
        yield header(target);
        yield* chunks;
      })(),
    };
  }
  if (target === entry.transferSyntaxUid) {
    // Read whole, and counted in the budget of bytes held at once until the caller has written it (release):
    // clients that did not read held the part being written and the one prepared ahead outside every bound
    // (helper 98: 40 of them held 113 MiB of 3 MiB instances; 1,024 connections, 8 GiB).
    const { value: chunks, release } = await holdingUntilReleased(ctx, exchange, entry.byteLength, async () => (await readInstanceChunks(ctx, entry)).chunks);
    return { transferSyntaxUid: target, body: [header(target), ...chunks], release };
  }
  // Weighed by what the conversion holds (a 17 MB JPEG cine decodes to 553 MB), the same estimate the
  // transcoder admits it by; one it would refuse is refused here before anything is read or waited for.
  const estimatedBytes = estimateTranscodeBytes(entry, target);
  refuseTooLargeConversion(entry, target, estimatedBytes);
  // The instance is read when the transcoder takes the job, not before: read here, it was held while the
  // job waited behind C-GET / C-MOVE conversions (the two budgets are apart).
  const source = {
    byteLength: entry.byteLength,
    read: async () => {
      const { entry: local, bytes } = await readWholeInstance(ctx, entry);
      if (local.transferSyntaxUid !== entry.transferSyntaxUid) {
        throw new DicomWebError(503, 'ERR_DICOMWEB_UNAVAILABLE', `the copy of ${entry.sopInstanceUid} read is stored as ${local.transferSyntaxUid}, not ${entry.transferSyntaxUid}: retry`);
      }
      return bytes;
    },
  };
  const transcoded = await holdingInstance(ctx, exchange, estimatedBytes, () => convertInstance(ctx, exchange, source, entry.transferSyntaxUid, target, entry.sopInstanceUid, { estimatedBytes }));
  // The output stays counted in the transcoder's budget until the caller has written it (release).
  return { transferSyntaxUid: transcoded.transferSyntaxUid, body: [header(transcoded.transferSyntaxUid), transcoded.bytes], ...(transcoded.release === undefined ? {} : { release: transcoded.release }) };
}

/** A 413 naming the bound and how to have the instance (as stored) when converting it would hold too much. */
function refuseTooLargeConversion(entry: CatalogEntry, target: string, estimatedBytes: number): void {
  const tooLarge = transcodeTooLarge(estimatedBytes);
  if (tooLarge === undefined) return;
  throw new DicomWebError(
    413,
    'ERR_DICOMWEB_TOO_LARGE',
    `instance ${entry.sopInstanceUid} (stored as ${entry.transferSyntaxUid}, ${entry.byteLength} bytes) is not converted to ${target}: ${tooLarge} (transfer-syntax=* or ${entry.transferSyntaxUid}); a conversion may hold at most ${transcodeJobBytesMax} bytes`,
  );
}

export async function retrieveMetadata(ctx: DicomWebContext, exchange: DicomWebExchange, route: RetrieveRoute): Promise<void> {
  const answerType = requireDicomJson(exchange.req.headers.accept, 'metadata is');
  const entries = await selectInstances(ctx, route);
  const { res } = exchange;
  if (exchange.req.method === 'HEAD') {
    res.writeHead(200, { 'content-type': answerType });
    res.end();
    return;
  }
  // One instance's metadata at a time: a study of thousands of instances is never held whole. The first
  // is read before the status goes out, so an instance no peer could send is a 503, not a cut response.
  const headers = await responseInstances(ctx, entries, async (entry, entryCtx) => [entry, await instanceHeaderOf(entryCtx, entry)] as const);
  res.writeHead(200, { 'content-type': answerType });
  // Each wait for the socket takes its listeners off again (a 'close' one left per wait gave a slow
  // reader's response one listener per instance, with a MaxListenersExceededWarning: helper 98).
  const body = responseBodyWriter(res);
  // Instances' JSON goes out in pieces of metadataPieceChars or more: written one by one, a study of 300 took
  // 300 socket writes (each a chunk of the chunked encoding); a warm peer answers 300 in ~72 ms this way, ~79 that.
  const pending: string[] = [];
  let pendingChars = 0;
  let first = true;
  const flush = async (): Promise<void> => {
    const text = pending.join('');
    pending.length = 0;
    pendingChars = 0;
    await body.write(text);
  };
  try {
    for await (const [entry, header] of headers) {
      const instanceUrl = `${exchange.baseUrl}/studies/${entry.studyInstanceUid}/series/${entry.seriesInstanceUid}/instances/${entry.sopInstanceUid}`;
      // Decoded from the set the instance was stored in: forMetadata renames it UTF-8's for the JSON it becomes
      // (decoding by that name made every Latin-1 or ISO 2022 name U+FFFD: helper 98).
      const storedCharacterSet = header.elements.find((element) => element.tag === Tags.SpecificCharacterSet)?.value;
      const text = `${first ? '[' : ','}${JSON.stringify(toDicomJson(forMetadata(header.elements, instanceUrl), storedCharacterSet ?? ''))}`;
      first = false;
      pending.push(text);
      pendingChars += text.length;
      if (pendingChars >= metadataPieceChars) await flush();
    }
    pending.push(first ? '[]' : ']');
    await flush();
  } catch (error) {
    if (isClientGone(error, res)) return;
    throw error;
  }
  res.end();
}

/** The JSON of a study's instances is written in pieces of at least this many characters (see retrieveMetadata). */
const metadataPieceChars = 64 * 1024;

/**
 * A deflated data set's stored chunks inflated as they are read; returning ends the store's read too. A zlib
 * stream, not codec/dataset/inflater.ts's StreamingInflater: that one hands over all of one input chunk's
 * output before it can stop (a 64 KiB chunk of deflated zeros is ~64 MB), this one waits for its reader.
 */
export async function* inflatedChunks(chunks: AsyncGenerator<Uint8Array> | AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const inflater = createInflateRaw();
  const source = (async () => {
    for await (const chunk of chunks) if (!inflater.write(chunk)) await once(inflater, 'drain');
    inflater.end();
  })();
  // A failure to read is the inflater's, so that its reader sees it; once it is ended, nobody is left to.
  source.catch((error: unknown) => inflater.destroy(error instanceof Error ? error : new Error(String(error))));
  try {
    for await (const chunk of inflater) yield chunk as Uint8Array;
  } finally {
    inflater.destroy();
    // The store's read, stopped where it is (an early end leaves the source waiting for 'drain': no more comes).
    if (Symbol.asyncIterator in chunks && 'return' in chunks) await (chunks as AsyncGenerator<Uint8Array>).return(undefined).catch(() => undefined);
  }
}

/** An instance's attributes up to Pixel Data, and the bytes they were read from (values are sliced from them). */
export interface InstanceHeader {
  elements: TreeElement[];
  bytes: Uint8Array;
  /** The syntax of `bytes`: the stored one, or explicit VR little endian for a deflated instance (inflated). */
  transferSyntaxUid: string;
  /** Top-level binary values of bulkValueBytesMin or more, left out of `bytes` (zero-length in `elements`): where they are stored. */
  cuts: BulkValueCut[];
  /** The catalog entry of the copy read (this site's, or one just fetched from another). */
  entry: CatalogEntry;
}

/**
 * Top-level binary values this long or longer are not read into an instance's header: a viewer gets them
 * by their BulkDataURI, streamed from the store (a 70 MB encapsulated PDF was held whole per request).
 */
export const bulkValueBytesMin = 1024 * 1024;

/**
 * The attributes of an instance, sequences included, up to its Pixel Data: the bytes before it are read
 * (the rest of a large instance is not, nor large binary values before it), or the whole data set when it
 * is deflated.
 */
export async function instanceHeaderOf(ctx: DicomWebContext, entry: CatalogEntry): Promise<InstanceHeader> {
  const describeFailure = (error: unknown) => new DicomWebError(500, 'ERR_DICOMWEB_METADATA', `the attributes of ${entry.sopInstanceUid} cannot be read: ${errorText(error)}`);
  try {
    if (layoutOf(entry.transferSyntaxUid).deflated) {
      // Inflated as it is read, up to Pixel Data only, its large binary values cut as for the other syntaxes
      // (the bulk data resource inflates the stored bytes again for them): inflated whole, a data set over
      // headerBytesMax (its pixels: a 6000 x 6000 image; a large document) was a 500 (helper 98).
      const { entry: local, chunks } = await streamInstanceHead(ctx, entry);
      const inflated = inflatedChunks(chunks);
      let read: Awaited<ReturnType<typeof readToPixelData>>;
      try {
        read = await readToPixelData(inflated, EXPLICIT_LE, 0, bulkValueBytesMin);
      } finally {
        await inflated.return(undefined);
      }
      if (read.overBound) throw new Error(`more than ${headerBytesMax} bytes before Pixel Data`);
      const head = read.pixelDataOffset === undefined ? read.head : read.head.subarray(0, read.pixelDataOffset);
      return { elements: parseDatasetTree(head, EXPLICIT_LE), bytes: head, transferSyntaxUid: EXPLICIT_LE, cuts: read.cuts, entry: local };
    }
    const { entry: local, chunks } = await streamInstanceHead(ctx, entry);
    let read: Awaited<ReturnType<typeof readToPixelData>>;
    try {
      read = await readToPixelData(chunks, local.transferSyntaxUid, 0, bulkValueBytesMin);
    } finally {
      // The store's read ends here when the header was had before the last chunk.
      await chunks.return(undefined);
    }
    if (read.overBound) throw new Error(`more than ${headerBytesMax} bytes before Pixel Data`);
    const bytes = read.pixelDataOffset === undefined ? read.head : read.head.subarray(0, read.pixelDataOffset);
    return { elements: parseDatasetTree(bytes, local.transferSyntaxUid), bytes, transferSyntaxUid: local.transferSyntaxUid, cuts: read.cuts, entry: local };
  } catch (error) {
    if (error instanceof DicomWebError) throw error;
    throw describeFailure(error);
  }
}

/**
 * Binary values (PS3.18 F.2.7): a top-level one is named by a BulkDataURI (its bulkdata resource); one
 * inside a sequence is left out rather than shown empty, and so is Pixel Data, which a viewer takes from
 * the frames resource or the instance.
 */
function forMetadata(elements: readonly TreeElement[], instanceUrl: string | undefined): JsonSourceElement[] {
  const kept: JsonSourceElement[] = [];
  for (const element of elements) {
    if (element.tag === Tags.PixelData) continue;
    // The values are Unicode in JSON, whatever set they were stored in: the set named is UTF-8's.
    if (element.tag === Tags.SpecificCharacterSet && (element.value ?? '') !== '') {
      kept.push({ ...element, value: 'ISO_IR 192' });
      continue;
    }
    if (element.items !== undefined) kept.push({ ...element, items: element.items.map((item) => forMetadata(item, undefined)) });
    else if (element.value !== undefined || !binaryVrs.has(element.vr)) kept.push(element);
    else if (instanceUrl !== undefined) kept.push({ tag: element.tag, vr: element.vr, value: undefined, bulkDataUri: `${instanceUrl}/bulkdata/${jsonTag(element.tag)}` });
  }
  return kept;
}

