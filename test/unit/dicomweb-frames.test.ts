/**
 * WADO-RS frames (PS3.18 10.4) from a real peer: instances stored by C-STORE in several syntaxes, their
 * frames fetched over HTTP and compared byte for byte with the pixels that were stored.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { recordingHeldBytes, startTestPeer, storeDataset, storeWithoutPixels, type TestPeer } from '../support/peer-fixture.ts';
import { parseMultipart, mediaTypeParameter, type ReceivedPart } from '../support/multipart.ts';
import { makeInstanceWithInfo, newUid, TransferSyntax, type InstanceOptions } from '../support/synthetic-dicom.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { framesOnlyDataset, readPixelData, readPixelDataHeader } from '../../src/codec/dataset/pixel-data.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encapsulated } from '../../src/codec/dataset/test-fixtures.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';

const ctImage = '1.2.840.10008.5.1.4.1.1.2';
const secondaryCapture = '1.2.840.10008.5.1.4.1.1.7';
const jpegLsLossless = '1.2.840.10008.1.2.4.80';
const jpegBaseline = '1.2.840.10008.1.2.4.50';
const explicitLe = TransferSyntax.ExplicitVrLittleEndian;

interface StoredImage {
  studyUid: string;
  seriesUid: string;
  instanceUid: string;
  /** The frames' pixels as stored, little endian. */
  frames: Buffer[];
}

let peer: TestPeer;
const studyUid = newUid();
const seriesUid = newUid();

/** C-STORE of a data set in `transferSyntaxUid` (a context proposing that syntax alone). */
const store = (sopClassUid: string, sopInstanceUid: string, dataset: Uint8Array, transferSyntaxUid: string) => storeDataset(peer.dicomPort, sopClassUid, sopInstanceUid, dataset, transferSyntaxUid);

/** A synthetic CT of `frameCount` frames of random pixels, stored in `transferSyntaxUid`. */
async function storeImage(options: { frameCount: number; rows: number; columns: number; bitsAllocated: 8 | 16; transferSyntaxUid: InstanceOptions['transferSyntaxUid'] }): Promise<StoredImage> {
  const frameBytes = options.rows * options.columns * (options.bitsAllocated / 8);
  const pixels = randomBytes(frameBytes * options.frameCount);
  if (options.bitsAllocated === 16) for (let at = 1; at < pixels.length; at += 2) pixels[at]! &= 0x0f; // 12 bits stored
  const extraElements: InstanceOptions['extraElements'] = [{ tag: Tags.PixelData, vr: options.bitsAllocated === 8 ? 'OB' : 'OW', value: pixels }];
  if (options.frameCount > 1) extraElements.push({ tag: Tags.NumberOfFrames, vr: 'IS', value: String(options.frameCount) });
  const { bytes, resolved } = makeInstanceWithInfo({
    transferSyntaxUid: options.transferSyntaxUid,
    study: { uid: studyUid },
    series: { uid: seriesUid },
    rows: options.rows,
    columns: options.columns,
    bitsAllocated: options.bitsAllocated,
    extraElements,
  });
  await store(resolved.sopClassUid, resolved.sopInstanceUid, bytes.subarray(splitPart10(bytes).datasetOffset), resolved.transferSyntaxUid);
  const frames = Array.from({ length: options.frameCount }, (_, index) => pixels.subarray(index * frameBytes, (index + 1) * frameBytes));
  return { studyUid, seriesUid, instanceUid: resolved.sopInstanceUid, frames };
}

interface FramesResponse {
  status: number;
  contentType: string;
  parts: ReceivedPart[];
  error?: { error: string; code: string };
}

async function getFrames(image: Pick<StoredImage, 'studyUid' | 'seriesUid' | 'instanceUid'>, frameList: string, accept?: string): Promise<FramesResponse> {
  const url = `http://127.0.0.1:${peer.httpPort}/dicom-web/studies/${image.studyUid}/series/${image.seriesUid}/instances/${image.instanceUid}/frames/${frameList}`;
  const response = await fetch(url, { headers: accept === undefined ? {} : { accept } });
  const body = Buffer.from(await response.arrayBuffer());
  const contentType = response.headers.get('content-type') ?? '';
  if (response.status !== 200) return { status: response.status, contentType, parts: [], error: JSON.parse(body.toString('utf8')) as { error: string; code: string } };
  return { status: response.status, contentType, parts: parseMultipart(body, contentType) };
}

function assertUncompressed(response: FramesResponse): void {
  assert.equal(response.status, 200, JSON.stringify(response.error));
  assert.match(response.contentType, /^multipart\/related;/);
  assert.equal(mediaTypeParameter(response.contentType, 'type'), 'application/octet-stream');
  assert.equal(mediaTypeParameter(response.contentType, 'transfer-syntax'), explicitLe);
  for (const part of response.parts) assert.equal(part.headers['content-type'], `application/octet-stream; transfer-syntax=${explicitLe}`);
}

/** What each response held within the peer's budget of bytes held until read weighed, in order. */
const heldWeights: number[] = [];

before(async () => {
  peer = await startTestPeer([], 'frames', silentLogger, { heldInstanceBytes: recordingHeldBytes(heldWeights) });
});

after(async () => {
  await peer.dispose();
});

describe('WADO-RS frames of uncompressed instances', () => {
  it('a single-frame image: its pixels, byte for byte, with a Content-Location', async () => {
    const image = await storeImage({ frameCount: 1, rows: 16, columns: 12, bitsAllocated: 16, transferSyntaxUid: explicitLe });
    const response = await getFrames(image, '1');
    assertUncompressed(response);
    assert.equal(response.parts.length, 1);
    assert.ok(response.parts[0]!.body.equals(image.frames[0]!));
    assert.match(response.parts[0]!.headers['content-location']!, new RegExp(`/dicom-web/studies/${image.studyUid}/series/${image.seriesUid}/instances/${image.instanceUid}/frames/1$`));
  });

  it('a multi-frame image (implicit VR LE, 8-bit): frames 2,1 and 3, in the order asked', async () => {
    const image = await storeImage({ frameCount: 3, rows: 10, columns: 7, bitsAllocated: 8, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
    const response = await getFrames(image, '2,1', 'multipart/related; type="application/octet-stream"');
    assertUncompressed(response);
    assert.deepEqual(response.parts.map((part) => part.body.toString('hex')), [image.frames[1]!, image.frames[0]!].map((frame) => frame.toString('hex')));
    assert.match(response.parts[0]!.headers['content-location']!, /\/frames\/2$/);
    const third = await getFrames(image, '3', '*/*');
    assertUncompressed(third);
    assert.ok(third.parts[0]!.body.equals(image.frames[2]!));
  });

  it('a large multi-frame image (over 8 MiB, explicit and implicit VR LE): frames read by range, byte for byte', async () => {
    for (const transferSyntaxUid of [explicitLe, TransferSyntax.ImplicitVrLittleEndian] as const) {
      const image = await storeImage({ frameCount: 40, rows: 384, columns: 384, bitsAllocated: 16, transferSyntaxUid });
      const response = await getFrames(image, '40,1,17,17');
      assertUncompressed(response);
      assert.deepEqual(
        response.parts.map((part) => part.body.toString('hex')),
        [image.frames[39]!, image.frames[0]!, image.frames[16]!, image.frames[16]!].map((frame) => frame.toString('hex')),
        transferSyntaxUid,
      );
      const beyond = await getFrames(image, '41');
      assert.equal(beyond.status, 404);
      assert.match(beyond.error!.error, /has 40 frame\(s\): there is no frame 41/);
      const asStored = await getFrames(image, '1', 'multipart/related; type="image/jls"');
      assert.equal(asStored.status, 406);
    }
  });

  it('a frame the list names many times is read and held once, not once a name (hunt 79: 100 names of a 32 MB frame took 4.8 GB)', async () => {
    // One frame of 9.4 MB: over 8 MiB, read by range.
    const image = await storeImage({ frameCount: 1, rows: 2048, columns: 2304, bitsAllocated: 16, transferSyntaxUid: explicitLe });
    const names = 60;
    const url = `http://127.0.0.1:${peer.httpPort}/dicom-web/studies/${image.studyUid}/series/${image.seriesUid}/instances/${image.instanceUid}/frames/${Array(names).fill('1').join(',')}`;
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 2);
    let received = 0;
    try {
      const response = await fetch(url);
      assert.equal(response.status, 200, 'the frames are sent');
      // Read and dropped as it comes: the client holds no more than a chunk.
      const reader = response.body!.getReader();
      for (let read = await reader.read(); !read.done; read = await reader.read()) received += read.value.byteLength;
    } finally {
      clearInterval(sampler);
    }
    assert.ok(received > names * image.frames[0]!.length, `every part sent: ${received} bytes`);
    const heldBytes = peak - baseline;
    assert.ok(heldBytes < 10 * image.frames[0]!.length, `${heldBytes} bytes held at the peak for ${names} names of one frame of ${image.frames[0]!.length} bytes`);
  });

  it('explicit VR big endian and deflated instances: converted to little endian frames', async () => {
    for (const transferSyntaxUid of [TransferSyntax.ExplicitVrBigEndian, TransferSyntax.DeflatedExplicitVrLittleEndian]) {
      const image = await storeImage({ frameCount: 2, rows: 8, columns: 6, bitsAllocated: 16, transferSyntaxUid });
      const response = await getFrames(image, '2,1');
      assertUncompressed(response);
      assert.deepEqual(response.parts.map((part) => part.body.toString('hex')), [image.frames[1]!, image.frames[0]!].map((frame) => frame.toString('hex')), transferSyntaxUid);
    }
  });

  it('a frame beyond Number of Frames: 404 naming the frame count; a malformed frame list: 400', async () => {
    const image = await storeImage({ frameCount: 2, rows: 4, columns: 4, bitsAllocated: 8, transferSyntaxUid: explicitLe });
    const beyond = await getFrames(image, '1,3');
    assert.equal(beyond.status, 404);
    assert.equal(beyond.error?.code, 'ERR_DICOMWEB_NO_SUCH_FRAME');
    assert.match(beyond.error!.error, /has 2 frame\(s\): there is no frame 3/);
    const malformed = await getFrames(image, '1,x');
    assert.equal(malformed.status, 400);
    assert.equal(malformed.error?.code, 'ERR_DICOMWEB_FRAMES');
  });

  it('an uncompressed instance asked for in a compressed media type only: 406 naming what can be sent', async () => {
    const image = await storeImage({ frameCount: 1, rows: 4, columns: 4, bitsAllocated: 8, transferSyntaxUid: explicitLe });
    const response = await getFrames(image, '1', 'multipart/related; type="image/jls", application/dicom');
    assert.equal(response.status, 406);
    assert.equal(response.error?.code, 'ERR_DICOMWEB_NOT_ACCEPTABLE');
    assert.match(response.error!.error, /multipart\/related; type="application\/octet-stream"; transfer-syntax=1\.2\.840\.10008\.1\.2\.1/);
  });

  it('an instance whose Pixel Data does not fit its attributes (too few bytes, Bits Allocated 12): 406 saying it can be had as stored, not a 500 (hunt 191)', async () => {
    const cases: Array<[string, NonNullable<InstanceOptions['extraElements']>]> = [
      ['too few bytes for its rows', [{ tag: Tags.PixelData, vr: 'OB', value: Buffer.alloc(10) }]],
      ['Bits Allocated 12', [{ tag: Tags.BitsAllocated, vr: 'US', value: [12] }, { tag: Tags.PixelData, vr: 'OB', value: Buffer.alloc(16) }]],
    ];
    for (const [what, extraElements] of cases) {
      const { bytes, resolved } = makeInstanceWithInfo({ study: { uid: studyUid }, series: { uid: seriesUid }, rows: 4, columns: 4, bitsAllocated: 8, extraElements });
      await store(resolved.sopClassUid, resolved.sopInstanceUid, bytes.subarray(splitPart10(bytes).datasetOffset), explicitLe);
      const response = await getFrames({ studyUid, seriesUid, instanceUid: resolved.sopInstanceUid }, '1');
      assert.equal(response.status, 406, what);
      assert.equal(response.error?.code, 'ERR_DICOMWEB_PIXEL_DATA', what);
      assert.match(response.error!.error, /can be had as stored \(transfer-syntax=\*\)$/, what);
    }
  });

  it('an instance without Pixel Data: 404', async () => {
    const instanceUid = await storeWithoutPixels(peer.dicomPort, secondaryCapture, studyUid, seriesUid);
    const response = await getFrames({ studyUid, seriesUid, instanceUid }, '1');
    assert.equal(response.status, 404);
    assert.equal(response.error?.code, 'ERR_DICOMWEB_NO_PIXEL_DATA');
  });
});

/** A CT of 3 frames of 12 x 10 random 12-bit pixels (with `extraElements`), compressed to JPEG-LS and stored. */
async function storeJpegLs(extraElements: NonNullable<InstanceOptions['extraElements']>) {
  const { transcodeDataset } = await import('../../src/codec/transcode.ts');
  const rows = 12;
  const columns = 10;
  const frameCount = 3;
  const pixels = randomBytes(rows * columns * 2 * frameCount);
  for (let at = 1; at < pixels.length; at += 2) pixels[at]! &= 0x0f;
  const { bytes, resolved } = makeInstanceWithInfo({
    study: { uid: studyUid },
    series: { uid: seriesUid },
    rows,
    columns,
    bitsAllocated: 16,
    extraElements: [{ tag: Tags.NumberOfFrames, vr: 'IS', value: String(frameCount) }, ...extraElements, { tag: Tags.PixelData, vr: 'OW', value: pixels }],
  });
  const compressed = await transcodeDataset(bytes.subarray(splitPart10(bytes).datasetOffset), explicitLe, [jpegLsLossless]);
  assert.equal(compressed.transferSyntaxUid, jpegLsLossless);
  await store(ctImage, resolved.sopInstanceUid, compressed.bytes, jpegLsLossless);
  return { compressed, resolved, pixels, rows, columns, frameCount };
}

describe('WADO-RS frames of a JPEG-LS instance', () => {
  let image: StoredImage;
  /** The stored codestream of each frame. */
  let codestreams: Buffer[];

  before(async () => {
    const { compressed, resolved, pixels, rows, columns, frameCount } = await storeJpegLs([]);
    const frameBytes = rows * columns * 2;
    image = { studyUid, seriesUid, instanceUid: resolved.sopInstanceUid, frames: Array.from({ length: frameCount }, (_, index) => pixels.subarray(index * frameBytes, (index + 1) * frameBytes)) };
    const pixel = readPixelData(compressed.bytes, jpegLsLossless);
    assert.equal(pixel.kind, 'encapsulated');
    codestreams = pixel.kind === 'encapsulated' ? pixel.fragments.map((fragment) => Buffer.from(fragment)) : [];
    assert.equal(codestreams.length, frameCount, 'one fragment per frame');
  });

  it('a frames-only data set (what a default request decodes) decodes to those frames alone', async () => {
    const { transcodeDataset } = await import('../../src/codec/transcode.ts');
    const stored = await (async () => {
      const entry = (await peer.store.getEntry(image.instanceUid))!;
      const chunks: Uint8Array[] = [];
      for await (const chunk of peer.store.readInstance(entry)) chunks.push(chunk);
      return Buffer.concat(chunks);
    })();
    const { elements } = readPixelDataHeader(stored, jpegLsLossless);
    const decoded = readPixelData((await transcodeDataset(framesOnlyDataset(elements, [codestreams[2]!, codestreams[0]!]), jpegLsLossless, [explicitLe])).bytes, explicitLe);
    assert.equal(decoded.kind, 'native');
    assert.equal(decoded.image.numberOfFrames, 2);
    assert.equal(Buffer.from(decoded.kind === 'native' ? decoded.value : []).toString('hex'), Buffer.concat([image.frames[2]!, image.frames[0]!]).toString('hex'));
  });

  it('by default: decoded to uncompressed frames, equal to the pixels that were compressed', async () => {
    const response = await getFrames(image, '3,1');
    assertUncompressed(response);
    assert.deepEqual(response.parts.map((part) => part.body.toString('hex')), [image.frames[2]!, image.frames[0]!].map((frame) => frame.toString('hex')));
  });

  it('transfer-syntax=*: each frame\'s codestream as stored, labelled with its syntax', async () => {
    const response = await getFrames(image, '2,3', 'multipart/related; type="application/octet-stream"; transfer-syntax=*');
    assert.equal(response.status, 200, JSON.stringify(response.error));
    assert.equal(mediaTypeParameter(response.contentType, 'transfer-syntax'), jpegLsLossless);
    assert.deepEqual(response.parts.map((part) => part.headers['content-type']), [`application/octet-stream; transfer-syntax=${jpegLsLossless}`, `application/octet-stream; transfer-syntax=${jpegLsLossless}`]);
    assert.deepEqual(response.parts.map((part) => part.body.toString('hex')), [codestreams[1]!, codestreams[2]!].map((codestream) => codestream.toString('hex')));
    // A JPEG-LS codestream: SOI first, EOI last (an odd one padded with one zero byte).
    for (const part of response.parts) {
      assert.equal(part.body.readUInt16BE(0), 0xffd8);
      assert.ok(part.body.subarray(-3).includes(0xd9));
    }
  });

  it('type="image/jls": the same codestreams, as image/jls', async () => {
    const response = await getFrames(image, '1', 'multipart/related; type="image/jls"');
    assert.equal(response.status, 200, JSON.stringify(response.error));
    assert.equal(mediaTypeParameter(response.contentType, 'type'), 'image/jls');
    assert.equal(response.parts[0]!.headers['content-type'], `image/jls; transfer-syntax=${jpegLsLossless}`);
    assert.ok(response.parts[0]!.body.equals(codestreams[0]!));
  });

  it('a media type it is not stored in (image/jp2): 406 naming octet-stream and image/jls', async () => {
    const response = await getFrames(image, '1', 'multipart/related; type="image/jp2"');
    assert.equal(response.status, 406);
    assert.equal(response.error?.code, 'ERR_DICOMWEB_NOT_ACCEPTABLE');
    assert.match(response.error!.error, /type="application\/octet-stream"; transfer-syntax=1\.2\.840\.10008\.1\.2\.1/);
    assert.match(response.error!.error, /type="image\/jls"; transfer-syntax=1\.2\.840\.10008\.1\.2\.4\.80/);
  });
});

describe('WADO-RS frames of large compressed instances (over 8 MiB: read by range)', () => {
  it('JPEG-LS: decoded by default, as stored with transfer-syntax=*, 404 beyond the frames', async () => {
    // A private element before Pixel Data makes the instance large; its frames stay small.
    const { compressed, resolved, pixels, rows, columns } = await storeJpegLs([
      { tag: 0x00090010, vr: 'LO', value: 'PACSMESH TEST' },
      { tag: 0x00091000, vr: 'OB', value: randomBytes(9 * 1024 * 1024) },
    ]);
    assert.ok(compressed.bytes.length > 9 * 1024 * 1024, `${compressed.bytes.length} bytes`);
    const image = { studyUid, seriesUid, instanceUid: resolved.sopInstanceUid };
    const frameBytes = rows * columns * 2;
    const framePixels = (frameNumber: number) => pixels.subarray((frameNumber - 1) * frameBytes, frameNumber * frameBytes).toString('hex');
    const stored = readPixelData(compressed.bytes, jpegLsLossless);
    const codestreams = stored.kind === 'encapsulated' ? stored.fragments : [];

    heldWeights.length = 0;
    const decoded = await getFrames(image, '3,1,3');
    assertUncompressed(decoded);
    assert.deepEqual(decoded.parts.map((part) => part.body.toString('hex')), [3, 1, 3].map(framePixels));
    // Held until read, each distinct frame once: its codestream and the pixels decoded from it.
    assert.deepEqual(heldWeights, [codestreams[2]!.length + codestreams[0]!.length + 2 * frameBytes], 'the decoded frames weigh their codestreams and pixels');
    const asStored = await getFrames(image, '2', 'multipart/related; type="application/octet-stream"; transfer-syntax=*');
    assert.equal(asStored.status, 200, JSON.stringify(asStored.error));
    assert.equal(mediaTypeParameter(asStored.contentType, 'transfer-syntax'), jpegLsLossless);
    assert.ok(asStored.parts[0]!.body.equals(codestreams[1]!), 'frame 2 as stored');
    const beyond = await getFrames(image, '4');
    assert.equal(beyond.status, 404);
    assert.match(beyond.error!.error, /has 3 frame\(s\): there is no frame 4/);
  });

  it('JPEG baseline cine of two fragments a frame, with an offset table: each frame\'s fragments joined, as stored', async () => {
    const frameCount = 12;
    // Stand-in codestreams (not decodable): SOI, 1 MiB, EOI, in two fragments each.
    const frames = Array.from({ length: frameCount }, (_, index) => {
      const codestream = Buffer.concat([Buffer.from([0xff, 0xd8]), Buffer.alloc(1024 * 1024, index + 1), Buffer.from([0xff, 0xd9])]);
      return [codestream.subarray(0, 100_000), codestream.subarray(100_000)];
    });
    const starts: number[] = [];
    let position = 0;
    for (const fragments of frames) {
      starts.push(position);
      for (const fragment of fragments) position += 8 + fragment.length;
    }
    const { bytes, resolved } = makeInstanceWithInfo({ study: { uid: studyUid }, series: { uid: seriesUid }, rows: 512, columns: 1024, bitsAllocated: 8, extraElements: [{ tag: Tags.NumberOfFrames, vr: 'IS', value: String(frameCount) }] });
    const dataset = bytes.subarray(splitPart10(bytes).datasetOffset);
    const { pixelDataOffset } = readPixelDataHeader(dataset, explicitLe);
    const instance = Buffer.concat([dataset.subarray(0, pixelDataOffset), encapsulated(starts, frames.flat())]);
    assert.ok(instance.length > 8 * 1024 * 1024, `${instance.length} bytes`);
    await store(ctImage, resolved.sopInstanceUid, instance, jpegBaseline);
    const image = { studyUid, seriesUid, instanceUid: resolved.sopInstanceUid };

    heldWeights.length = 0;
    const response = await getFrames(image, '5,2', 'multipart/related; type="image/jpeg"');
    assert.equal(response.status, 200, JSON.stringify(response.error));
    assert.deepEqual(heldWeights, [Buffer.concat(frames[4]!).length + Buffer.concat(frames[1]!).length], 'frames sent as stored weigh their codestreams');
    assert.deepEqual(response.parts.map((part) => part.headers['content-type']), [`image/jpeg; transfer-syntax=${jpegBaseline}`, `image/jpeg; transfer-syntax=${jpegBaseline}`]);
    assert.deepEqual(response.parts.map((part) => part.body.toString('hex')), [5, 2].map((frameNumber) => Buffer.concat(frames[frameNumber - 1]!).toString('hex')));
    const last = await getFrames(image, '12', 'multipart/related; type="application/octet-stream"; transfer-syntax=*');
    assert.equal(last.status, 200, JSON.stringify(last.error));
    assert.ok(last.parts[0]!.body.equals(Buffer.concat(frames[11]!)), 'frame 12 as stored');
  });
});
