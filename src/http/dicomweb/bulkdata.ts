/**
 * WADO-RS bulk data (PS3.18 10.4, "Retrieve Bulkdata"): `.../instances/{i}/bulkdata/{tag}` sends one
 * top-level binary value of an instance (an encapsulated document, an overlay, a private blob), the
 * resource the instance's metadata names in a BulkDataURI. The value goes out as one
 * application/octet-stream part (or as the body, asked so) in little endian (a big endian instance's words are swapped). Pixel Data
 * is served by the frames resource, not here.
 */
import { Tags } from '../../codec/dictionary.ts';
import { EXPLICIT_BE } from '../../codec/transcode-targets.ts';
import { acceptableRanges, parseAccept, prefersSinglePart } from './accept.ts';
import { DicomWebError, type DicomWebContext, type DicomWebExchange } from './context.ts';
import { selectInstances, streamInstance } from './instances.ts';
import { sendBody, startMultipart } from './multipart-writer.ts';
import type { DicomWebRoute } from './routes.ts';
import { inflatedChunks, instanceHeaderOf } from './wado.ts';
import { binaryVrs, layoutOf } from '../../codec/dataset/vr.ts';

type BulkDataRoute = Extract<DicomWebRoute, { type: 'bulkdata' }>;

/** Bytes per word of the binary VRs whose values a big endian syntax stores byte-swapped. */
const wordBytes: Readonly<Record<string, number>> = { OW: 2, OF: 4, OL: 4, OD: 8, OV: 8 };

export async function retrieveBulkData(ctx: DicomWebContext, exchange: DicomWebExchange, route: BulkDataRoute): Promise<void> {
  if (!acceptsOctetStream(exchange.req.headers.accept)) {
    throw new DicomWebError(406, 'ERR_DICOMWEB_NOT_ACCEPTABLE', `bulk data is sent as multipart/related; type="application/octet-stream" only (asked: ${(exchange.req.headers.accept ?? '').slice(0, 120)})`);
  }
  const tagText = route.tag.toString(16).toUpperCase().padStart(8, '0');
  if (route.tag === Tags.PixelData) {
    throw new DicomWebError(404, 'ERR_DICOMWEB_NO_BULK_DATA', `Pixel Data is served by the frames resource (.../instances/${route.instanceUid}/frames/1), not as bulk data`);
  }
  const [entry] = await selectInstances(ctx, { level: 'IMAGE', studyUid: route.studyUid, seriesUid: route.seriesUid, instanceUid: route.instanceUid });
  const header = await instanceHeaderOf(ctx, entry!);
  const element = header.elements.find((candidate) => candidate.tag === route.tag);
  if (element === undefined || element.valueOffset === undefined || element.valueLength === undefined || !binaryVrs.has(element.vr)) {
    throw new DicomWebError(404, 'ERR_DICOMWEB_NO_BULK_DATA', `instance ${route.instanceUid} has no top-level binary value (${tagText}) before its Pixel Data`);
  }
  const size = header.transferSyntaxUid === EXPLICIT_BE ? wordBytes[element.vr] : undefined;
  const cut = header.cuts.find((candidate) => candidate.tag === route.tag);
  let body: Uint8Array | AsyncIterable<Uint8Array>;
  if (cut === undefined) {
    const value = header.bytes.subarray(element.valueOffset, element.valueOffset + element.valueLength);
    body = size === undefined ? value : swapWords(value, size);
  } else {
    // A large value left out of the header: streamed from the stored copy (checked against its SHA-256 as it goes).
    const { chunks } = await streamInstance(ctx, header.entry);
    // A deflated instance's cuts are offsets in its inflated data set (see instanceHeaderOf).
    const dataSet = layoutOf(header.entry.transferSyntaxUid).deflated ? inflatedChunks(chunks) : chunks;
    const value = sliceOfStream(dataSet, cut.valueOffset, cut.valueLength);
    body = size === undefined ? value : swapWordsOfStream(value, size);
  }
  const location = `${exchange.baseUrl}/studies/${route.studyUid}/series/${route.seriesUid}/instances/${route.instanceUid}/bulkdata/${tagText}`;
  if (prefersSinglePart(exchange.req.headers.accept, 'octet-stream')) {
    // The value as the body (PS3.18 8.7.3.5.2): a client asking application/octet-stream alone got multipart (hunt 196).
    await sendBody(exchange.res, { 'content-type': 'application/octet-stream', 'content-length': String(element.valueLength), 'content-location': location }, body instanceof Uint8Array ? [body] : body);
    return;
  }
  const writer = startMultipart(exchange.res, { type: 'application/octet-stream' });
  await writer.writePart({ 'Content-Type': 'application/octet-stream', 'Content-Location': location }, body);
  writer.end();
}

/** Bytes `offset` to `offset + length` of a stream of chunks; the stream is read to its end (its check comes there). */
async function* sliceOfStream(chunks: AsyncIterable<Uint8Array>, offset: number, length: number): AsyncGenerator<Uint8Array> {
  let start = 0;
  for await (const chunk of chunks) {
    const end = start + chunk.byteLength;
    const from = Math.max(offset, start);
    const to = Math.min(offset + length, end);
    if (from < to) yield chunk.subarray(from - start, to - start);
    start = end;
  }
}

/** swapWords over a stream whose chunks may split words. */
async function* swapWordsOfStream(chunks: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let carry: Uint8Array = new Uint8Array(0);
  for await (const chunk of chunks) {
    const joined = carry.byteLength === 0 ? chunk : Buffer.concat([carry, chunk]);
    const whole = joined.byteLength - (joined.byteLength % size);
    if (whole > 0) yield swapWords(joined.subarray(0, whole), size);
    carry = joined.subarray(whole);
  }
  if (carry.byteLength > 0) yield carry;
}

/** Whether the Accept header takes an octet-stream part: absent, `*\/*`, multipart/related (of octet-stream), application/octet-stream. */
function acceptsOctetStream(accept: string | undefined): boolean {
  return acceptableRanges(parseAccept(accept)).some((range) => {
    const mediaType = `${range.type}/${range.subtype}`;
    if (mediaType === 'multipart/related') return (range.parameters.get('type') ?? 'application/octet-stream').toLowerCase() === 'application/octet-stream';
    return mediaType === '*/*' || mediaType === 'multipart/*' || mediaType === 'application/octet-stream' || mediaType === 'application/*';
  });
}

/** The value with each word's bytes reversed (big endian to little endian); a copy. */
function swapWords(value: Uint8Array, size: number): Uint8Array {
  const swapped = Buffer.from(value);
  for (let at = 0; at + size <= swapped.length; at += size) swapped.subarray(at, at + size).reverse();
  return swapped;
}
