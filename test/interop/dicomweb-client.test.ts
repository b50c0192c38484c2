/**
 * Interop: `dicomweb-client`, the DICOMweb library of the OHIF viewer, against a pacs-mesh peer holding
 * the corpus (stored with DCMTK's storescu). It does what a viewer does to open a study: search studies,
 * series and instances, read each instance's metadata, fetch frames (decoded, and as stored the way OHIF
 * asks for them), retrieve instances and whole studies; and it stores instances with STOW-RS. The original
 * files are read with the interop suite's own walker, not this archive's codec. Needs DCMTK (`.ci/run`
 * installs it).
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import XMLHttpRequest from 'xhr2';
import { startTestPeer, type TestPeer } from '../support/peer-fixture.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { TS, compareInstances, datasetText, flattenFile } from './compare.ts';
import { groupBy, loadCorpus, storeWithStorescu, type Instance } from './harness.ts';

// dicomweb-client speaks XMLHttpRequest, as in a browser.
(globalThis as { XMLHttpRequest?: unknown }).XMLHttpRequest = XMLHttpRequest;
const { api } = await import('dicomweb-client');

type Json = Record<string, { vr: string; Value?: unknown[] }>;
type MediaType = { mediaType: string; transferSyntaxUID?: string };
type Uids = { studyInstanceUID: string; seriesInstanceUID?: string; sopInstanceUID?: string };

/** The calls a viewer makes, typed as the library behaves (its bundled declarations are looser than its code). */
interface ViewerClient {
  searchForStudies(): Promise<Json[]>;
  searchForSeries(options: Uids): Promise<Json[]>;
  searchForInstances(options: Uids): Promise<Json[]>;
  retrieveInstanceMetadata(options: Uids): Promise<Json[]>;
  retrieveInstanceFrames(options: Uids & { frameNumbers: number[]; mediaTypes?: MediaType[] }): Promise<ArrayBuffer[]>;
  retrieveInstance(options: Uids): Promise<ArrayBuffer>;
  retrieveStudy(options: Uids): Promise<ArrayBuffer[]>;
  retrieveBulkData(options: { BulkDataURI: string }): Promise<ArrayBuffer[]>;
  /** One image, as the only item of an array (the client reads every response as multipart when configured so). */
  retrieveInstanceRendered(options: Uids & { mediaTypes?: MediaType[]; queryParams?: Record<string, string> }): Promise<ArrayBuffer[]>;
  retrieveInstanceThumbnail(options: Uids & { mediaTypes?: MediaType[] }): Promise<ArrayBuffer[]>;
  storeInstances(options: { datasets: ArrayBuffer[]; studyInstanceUID?: string }): Promise<unknown>;
}

let peer: TestPeer;
let corpus: Instance[];
let client: ViewerClient;

/** The original file's image attributes, read by the interop suite's own walker (not this archive's codec). */
function imageOf(instance: Instance): { rows: number; columns: number; samplesPerPixel: number; bitsAllocated: number; frames: number; photometric: string } | undefined {
  const { flat } = flattenFile(instance.bytes);
  const us = (tag: string) => {
    const value = flat.get(tag);
    return value?.kind === 'value' && value.bytes.length >= 2 ? value.bytes[0]! | (value.bytes[1]! << 8) : undefined;
  };
  const rows = us('(0028,0010)');
  if (rows === undefined || !flat.has('(7FE0,0010)')) return undefined;
  return {
    rows,
    columns: us('(0028,0011)')!,
    samplesPerPixel: us('(0028,0002)') ?? 1,
    bitsAllocated: us('(0028,0100)')!,
    frames: Number(datasetText(flat, 0x00280008) ?? 1),
    photometric: datasetText(flat, 0x00280004) ?? '',
  };
}

const uidsOf = (instance: Instance) => ({ studyInstanceUID: instance.studyUid, seriesInstanceUID: instance.seriesUid, sopInstanceUID: instance.sopInstanceUid });

describe('dicomweb-client (OHIF) as a viewer of pacs-mesh', () => {
  before(async () => {
    corpus = loadCorpus();
    peer = await startTestPeer([], 'dicomweb-client');
    await storeWithStorescu(peer.dicomPort, corpus);
    client = new api.DICOMwebClient({ url: `http://127.0.0.1:${peer.httpPort}/dicom-web`, singlepart: false }) as unknown as ViewerClient;
  });

  after(() => peer?.dispose());

  it('searches studies, series and instances', async () => {
    const studies = await client.searchForStudies();
    const byStudy = groupBy(corpus, (instance) => instance.studyUid);
    assert.deepEqual(studies.map((study) => study['0020000D']!.Value![0]).sort(), [...byStudy.keys()].sort());
    for (const [studyInstanceUID, instances] of byStudy) {
      const series = await client.searchForSeries({ studyInstanceUID });
      assert.equal(series.length, groupBy(instances, (instance) => instance.seriesUid).size);
      for (const one of series) {
        const seriesInstanceUID = one['0020000E']!.Value![0] as string;
        const listed = await client.searchForInstances({ studyInstanceUID, seriesInstanceUID });
        assert.deepEqual(
          listed.map((instance) => instance['00080018']!.Value![0]).sort(),
          instances.filter((instance) => instance.seriesUid === seriesInstanceUID).map((instance) => instance.sopInstanceUid).sort(),
        );
      }
    }
  });

  it('reads every instance\'s metadata, and the binary values it names', async () => {
    let bulkValues = 0;
    for (const instance of corpus) {
      const [metadata] = await client.retrieveInstanceMetadata(uidsOf(instance));
      assert.equal(metadata!['00080018']!.Value![0], instance.sopInstanceUid, instance.name);
      assert.equal(metadata!['00080016']!.Value![0], instance.sopClassUid, instance.name);
      assert.equal(metadata!['7FE00010'], undefined, `${instance.name}: no Pixel Data in metadata`);
      if (metadata!['00080005'] !== undefined) assert.deepEqual(metadata!['00080005'].Value, ['ISO_IR 192'], `${instance.name}: the JSON's values are Unicode`);
      // Each binary value the metadata names comes back as the original file holds it.
      const { flat } = flattenFile(instance.bytes);
      for (const [tag, attribute] of Object.entries(metadata!)) {
        const uri = (attribute as { BulkDataURI?: string }).BulkDataURI;
        if (uri === undefined) continue;
        const [value] = await client.retrieveBulkData({ BulkDataURI: uri });
        const original = flat.get(`(${tag.slice(0, 4)},${tag.slice(4)})`);
        assert.ok(original?.kind === 'value', `${instance.name} ${tag}`);
        assert.deepEqual(Buffer.from(value!), Buffer.from(original.bytes), `${instance.name}: bulk data ${tag}`);
        bulkValues++;
      }
    }
    assert.ok(bulkValues >= 3, `bulk data values fetched: ${bulkValues}`);
  });

  it('fetches frames decoded by default, and as stored when asked the way OHIF asks', async () => {
    let decodedChecked = 0;
    for (const instance of corpus) {
      const image = imageOf(instance);
      if (image === undefined) continue;
      const frameNumbers = image.frames > 1 ? [image.frames, 1] : [1];
      const decoded = await client.retrieveInstanceFrames({ ...uidsOf(instance), frameNumbers });
      assert.equal(decoded.length, frameNumbers.length, instance.name);
      if (image.photometric.startsWith('MONOCHROME') || image.photometric === 'PALETTE COLOR') {
        const frameBytes = (image.rows * image.columns * image.samplesPerPixel * image.bitsAllocated) / 8;
        for (const frame of decoded) assert.equal(frame.byteLength, frameBytes, `${instance.name}: a decoded frame's size`);
        decodedChecked++;
      } else {
        for (const frame of decoded) assert.ok(frame.byteLength > 0, instance.name);
      }
      // OHIF's request for frames as the archive holds them, compressed or not.
      const asStored = await client.retrieveInstanceFrames({
        ...uidsOf(instance),
        frameNumbers: [1],
        mediaTypes: [{ mediaType: 'application/octet-stream', transferSyntaxUID: '*' }, { mediaType: 'image/jpeg', transferSyntaxUID: '*' }, { mediaType: 'image/x-dicom-rle', transferSyntaxUID: '*' }],
      });
      assert.equal(asStored.length, 1, instance.name);
      assert.ok(asStored[0]!.byteLength > 0, instance.name);
    }
    assert.ok(decodedChecked >= 10, `decoded frames checked for ${decodedChecked} instances`);
  });

  it('gets every image rendered as JPEG and PNG (a palette in colour), and its thumbnail', async () => {
    let rendered = 0;
    for (const instance of corpus) {
      const image = imageOf(instance);
      if (image === undefined) continue;
      const [jpeg] = (await client.retrieveInstanceRendered({ ...uidsOf(instance), mediaTypes: [{ mediaType: 'image/jpeg' }], queryParams: { viewport: '256,256' } })).map((part) => Buffer.from(part));
      assert.equal(jpeg?.readUInt16BE(0), 0xffd8, `${instance.name}: a JPEG`);
      const [png] = (await client.retrieveInstanceRendered({ ...uidsOf(instance), mediaTypes: [{ mediaType: 'image/png' }] })).map((part) => Buffer.from(part));
      assert.equal(png?.subarray(1, 4).toString('latin1'), 'PNG', `${instance.name}: a PNG`);
      assert.deepEqual([png!.readUInt32BE(16), png!.readUInt32BE(20)], [image.columns, image.rows], `${instance.name}: the image's size`);
      assert.equal(png![25], image.samplesPerPixel === 3 || image.photometric === 'PALETTE COLOR' ? 2 : 0, `${instance.name}: a colour PNG for colour, grey for grey`);
      const [thumbnail] = (await client.retrieveInstanceThumbnail({ ...uidsOf(instance), mediaTypes: [{ mediaType: 'image/jpeg' }] })).map((part) => Buffer.from(part));
      assert.equal(thumbnail?.readUInt16BE(0), 0xffd8, `${instance.name}: a JPEG thumbnail`);
      rendered++;
    }
    assert.ok(rendered >= 10, `${rendered} instances rendered`);
  });

  it('stores instances with STOW-RS, which then come back as sent', async () => {
    const study = '1.2.826.0.1.3680043.10.1453.204.1';
    const files = [1, 2].map((n) => makeInstanceWithInfo({ study: { uid: study }, series: { uid: `${study}.1` }, sopInstanceUid: `${study}.1.${n}`, instanceNumber: n, rows: 16, columns: 16 }).bytes);
    const response = (await client.storeInstances({ datasets: files.map((bytes) => bytes.slice().buffer as ArrayBuffer), studyInstanceUID: study })) as string;
    const answer = (typeof response === 'string' ? JSON.parse(response) : response) as Json;
    assert.equal(answer['00081199']!.Value!.length, 2, JSON.stringify(answer));
    for (const [index, bytes] of files.entries()) {
      const copy = new Uint8Array(await client.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: `${study}.1`, sopInstanceUID: `${study}.1.${index + 1}` }));
      const comparison = compareInstances(bytes, copy);
      assert.notEqual(comparison.identity, 'different', JSON.stringify(comparison).slice(0, 600));
    }
  });

  it('stores every corpus file with STOW-RS as storescu stored it: under its data set\'s UIDs, whatever its file meta says', async () => {
    // Three corpus files name another SOP Instance UID in their meta than in their data set (they were refused,
    // 0xC002); Orthanc's STOW-RS stores them as storescu does. Already held here: each counts as stored.
    // Copies: a small file read by readFileSync is a view into a shared pool, whose .buffer holds others too.
    const response = (await client.storeInstances({ datasets: corpus.map((instance) => Uint8Array.from(instance.bytes).buffer) })) as string;
    const answer = (typeof response === 'string' ? JSON.parse(response) : response) as Json;
    assert.equal(answer['00081198'], undefined, `no failed instance: ${JSON.stringify(answer['00081198'] ?? null).slice(0, 800)}`);
    const stored = (answer['00081199']?.Value ?? []) as Json[];
    assert.deepEqual(stored.map((item) => item['00081155']!.Value![0]).sort(), corpus.map((instance) => instance.sopInstanceUid).sort(), 'every data set\'s own SOP Instance UID (one file\'s twice: two corpus files share it)');
  });

  it('retrieves instances (the default: Explicit VR Little Endian) and whole studies', async () => {
    // dicomweb-client 0.11 cannot ask for instances in a transfer syntax (its media type check rejects
    // application/dicom), so it gets the default: uncompressed ones element-identical, compressed ones decoded.
    for (const instance of corpus) {
      const copy = new Uint8Array(await client.retrieveInstance(uidsOf(instance)));
      const { part10, flat } = flattenFile(copy);
      assert.equal(part10.transferSyntaxUid, TS.ExplicitLE, instance.name);
      assert.equal(datasetText(flat, 0x00080018), instance.sopInstanceUid, instance.name);
      if (instance.transferSyntaxUid === TS.ImplicitLE || instance.transferSyntaxUid === TS.ExplicitLE) {
        const comparison = compareInstances(instance.bytes, copy);
        assert.notEqual(comparison.identity, 'different', `${instance.name}: ${JSON.stringify(comparison).slice(0, 600)}`);
      } else {
        const pixels = flat.get('(7FE0,0010)');
        assert.equal(pixels?.kind, 'value', `${instance.name}: native Pixel Data after decoding`);
      }
    }
    for (const [studyInstanceUID, instances] of groupBy(corpus, (instance) => instance.studyUid)) {
      const parts = await client.retrieveStudy({ studyInstanceUID });
      assert.equal(parts.length, instances.length, studyInstanceUID);
    }
  });
});
