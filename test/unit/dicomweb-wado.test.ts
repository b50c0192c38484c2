/**
 * WADO-RS against a real peer over HTTP: instances of a study, series or one instance as Part 10 parts,
 * byte for byte as stored or converted to the syntax asked for, their metadata as DICOM JSON, and the
 * requests that cannot be served.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Status } from '../../src/codec/dimse.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { parseDataset } from '../../src/codec/dataset/reader.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { corpusDirectory, corpusSkip } from '../../src/codec/dataset/test-fixtures.ts';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { openStoreClient, startTestPeer, storeDataset, type TestPeer } from '../support/peer-fixture.ts';
import { parseMultipart } from '../support/multipart.ts';
import { waitFor } from '../support/wait.ts';
import { oversizedJpegInstance } from '../support/oversized-jpeg.ts';
import { TransferSyntax, makeInstanceWithInfo, type InstanceOptions } from '../support/synthetic-dicom.ts';

const study = '1.2.826.0.1.3680043.10.1453.201.1';
const series1 = `${study}.1`;
const series2 = `${study}.2`;

let peer: TestPeer;
let base: string;
/** The data set bytes each instance was stored with, by SOP Instance UID. */
const storedDataSets = new Map<string, Buffer>();

const instanceOptions = (n: number, more: Partial<InstanceOptions> = {}): InstanceOptions => ({
  patient: { id: 'WADO-1', name: 'Łukasz^Żółw' },
  specificCharacterSet: 'ISO_IR 192',
  study: { uid: study, description: 'retrieve me' },
  series: { uid: n <= 2 ? series1 : series2, modality: 'CT', number: n <= 2 ? 1 : 2 },
  sopInstanceUid: `${n <= 2 ? series1 : series2}.${n}`,
  // Stored out of order: the response orders by series, then Instance Number.
  instanceNumber: n,
  rows: 16,
  columns: 16,
  bitsAllocated: 16,
  ...more,
});

before(async () => {
  peer = await startTestPeer([], 'wado');
  base = `http://127.0.0.1:${peer.httpPort}/dicom-web`;
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  // Instance 3 is over 4 MiB: it is streamed from the store rather than read whole.
  for (const [n, more] of [[2, {}], [1, {}], [3, { rows: 1600, columns: 1600 }]] as const) {
    const options = instanceOptions(n, more);
    const { bytes } = makeInstanceWithInfo({ ...options, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
    storedDataSets.set(options.sopInstanceUid!, Buffer.from(bytes.subarray(splitPart10(bytes).datasetOffset)));
    assert.equal((await store.storeInstance(options)).command.status, Status.Success);
  }
  await store.client.release();
});

after(() => peer.dispose());

async function retrieve(path: string, accept?: string): Promise<{ status: number; contentType: string; body: Buffer }> {
  const response = await fetch(`${base}${path}`, accept === undefined ? {} : { headers: { accept } });
  return { status: response.status, contentType: response.headers.get('content-type') ?? '', body: Buffer.from(await response.arrayBuffer()) };
}

describe('WADO-RS', () => {
  it('sends a study as stored with transfer-syntax=*, each part a Part 10 file, in series and instance order', async () => {
    const { status, contentType, body } = await retrieve(`/studies/${study}`, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.equal(status, 200);
    assert.match(contentType, /^multipart\/related; type="application\/dicom"; boundary=/);
    const parts = parseMultipart(body, contentType);
    assert.deepEqual(parts.map((part) => part.headers['content-location']!.split('/').at(-1)), [`${series1}.1`, `${series1}.2`, `${series2}.3`]);
    for (const part of parts) {
      assert.equal(part.headers['content-type'], `application/dicom; transfer-syntax=${TransferSyntax.ExplicitVrLittleEndian}`);
      const split = splitPart10(part.body);
      const uid = split.metaElements.find((element) => element.tag === Tags.MediaStorageSOPInstanceUID)!.value!.replace(/\0$/, '');
      assert.equal(split.transferSyntaxUid, TransferSyntax.ExplicitVrLittleEndian);
      assert.ok(part.body.subarray(split.datasetOffset).equals(storedDataSets.get(uid)!), `${uid}: the data set as stored`);
    }
    // HEAD: the headers of a GET (RFC 9110 9.3.2), a boundary included, and no body.
    const head = await fetch(`${base}/studies/${study}`, { method: 'HEAD', headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' } });
    assert.equal(head.status, 200);
    assert.match(head.headers.get('content-type') ?? '', /^multipart\/related; type="application\/dicom"; boundary=[0-9a-f]{32}$/);
    assert.equal((await head.arrayBuffer()).byteLength, 0);
  });

  it('sends an instance resource asked as application/dicom as a single part, its Part 10 file (hunt 196: multipart, which such a client cannot read); a study so asked stays multipart', async () => {
    const dataSetOf = (body: Buffer) => body.subarray(splitPart10(body).datasetOffset);
    const instance = `/studies/${study}/series/${series1}/instances/${series1}.1`;
    for (const [accept, syntax] of [
      ['application/dicom', TransferSyntax.ExplicitVrLittleEndian],
      ['application/dicom; transfer-syntax=*', TransferSyntax.ExplicitVrLittleEndian],
      [`application/dicom; transfer-syntax=${TransferSyntax.ImplicitVrLittleEndian}`, TransferSyntax.ImplicitVrLittleEndian],
      ['application/dicom;q=0.9, multipart/related; type="application/dicom";q=0.5', TransferSyntax.ExplicitVrLittleEndian],
    ] as const) {
      const single = await retrieve(instance, accept);
      assert.equal(single.status, 200, accept);
      assert.equal(single.contentType, `application/dicom; transfer-syntax=${syntax}`, accept);
      assert.equal(splitPart10(single.body).transferSyntaxUid, syntax);
      if (syntax === TransferSyntax.ExplicitVrLittleEndian) assert.ok(dataSetOf(single.body).equals(storedDataSets.get(`${series1}.1`)!), accept);
    }
    const head = await fetch(`${base}${instance}`, { method: 'HEAD', headers: { accept: 'application/dicom; transfer-syntax=*' } });
    assert.equal(Number(head.headers.get('content-length')), (await retrieve(instance, 'application/dicom; transfer-syntax=*')).body.length);
    for (const accept of ['*/*', 'multipart/related; type="application/dicom"', 'multipart/related; type="application/dicom", application/dicom;q=0.5']) {
      assert.match((await retrieve(instance, accept)).contentType, /^multipart\/related/, accept);
    }
    assert.match((await retrieve(`/studies/${study}`, 'application/dicom; transfer-syntax=*')).contentType, /^multipart\/related/);
  });

  it('says Vary: Accept on every search and retrieve, whose answer depends on it (hunt 196: only frames and rendered images did), not on WADO-URI', async () => {
    for (const path of [`/studies/${study}`, `/studies/${study}/metadata`, `/studies/${study}/series/${series1}/instances/${series1}.1`, '/studies', `/studies/${study}/series`, `/studies/${study}/instances`]) {
      const response = await fetch(`${base}${path}`, { headers: { accept: '*/*' } });
      await response.arrayBuffer();
      assert.equal(response.headers.get('vary'), 'Accept', path);
    }
    const uri = await fetch(`http://127.0.0.1:${peer.httpPort}/wado?requestType=WADO&studyUID=${study}&seriesUID=${series1}&objectUID=${series1}.1&contentType=application/dicom`);
    await uri.arrayBuffer();
    assert.equal(uri.headers.get('vary'), null);
  });

  it('sends Explicit VR Little Endian by default, and converts to a syntax asked for', async () => {
    const defaulted = await retrieve(`/studies/${study}/series/${series1}`);
    assert.equal(defaulted.status, 200);
    assert.equal(parseMultipart(defaulted.body, defaulted.contentType).length, 2);

    const implicit = await retrieve(`/studies/${study}/series/${series1}/instances/${series1}.1`, `multipart/related; type="application/dicom"; transfer-syntax=${TransferSyntax.ImplicitVrLittleEndian}`);
    assert.equal(implicit.status, 200);
    const [part] = parseMultipart(implicit.body, implicit.contentType);
    assert.equal(part!.headers['content-type'], `application/dicom; transfer-syntax=${TransferSyntax.ImplicitVrLittleEndian}`);
    const split = splitPart10(part!.body);
    assert.equal(split.transferSyntaxUid, TransferSyntax.ImplicitVrLittleEndian);
    const converted = parseDataset(part!.body.subarray(split.datasetOffset), TransferSyntax.ImplicitVrLittleEndian).elements;
    const original = parseDataset(storedDataSets.get(`${series1}.1`)!, TransferSyntax.ExplicitVrLittleEndian).elements;
    assert.equal(converted.find((e) => e.tag === Tags.PatientName)?.value, original.find((e) => e.tag === Tags.PatientName)?.value);
    assert.equal(converted.find((e) => e.tag === Tags.SOPInstanceUID)?.value, `${series1}.1`);
  });

  it('counts a converted instance in the transcoder until its part is written: none held after a whole response, nor after a client that leaves halfway', async () => {
    const implicitStudy = `multipart/related; type="application/dicom"; transfer-syntax=${TransferSyntax.ImplicitVrLittleEndian}`;
    const outputsHeld = async () => ((await (await fetch(`http://127.0.0.1:${peer.httpPort}/api/mesh`)).json()) as { transcoder: { outputsHeld: number } }).transcoder.outputsHeld;
    const whole = await retrieve(`/studies/${study}`, implicitStudy);
    assert.equal(parseMultipart(whole.body, whole.contentType).length, 3);
    assert.equal(await outputsHeld(), 0);
    // Gone after the first bytes: the part being written and the one prepared ahead are given back.
    const leaving = new AbortController();
    const response = await fetch(`${base}/studies/${study}`, { headers: { accept: implicitStudy }, signal: leaving.signal });
    await response.body!.getReader().read();
    leaving.abort();
    await waitFor('every converted output released', async () => (await outputsHeld()) === 0, 5000);
  });

  it('returns metadata as DICOM JSON, one object per instance, Unicode names and no binary values', async () => {
    const response = await fetch(`${base}/studies/${study}/metadata`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'application/dicom+json');
    const instances = (await response.json()) as Array<Record<string, { vr: string; Value?: unknown[] }>>;
    assert.deepEqual(instances.map((instance) => instance['00080018']!.Value![0]), [`${series1}.1`, `${series1}.2`, `${series2}.3`]);
    assert.deepEqual(instances[0]!['00100010']!.Value![0], { Alphabetic: 'Łukasz^Żółw' });
    assert.deepEqual(instances[0]!['00080005'], { vr: 'CS', Value: ['ISO_IR 192'] }, 'the JSON is Unicode whatever the stored set');
    assert.equal(instances[2]!['00280010']!.Value![0], 1600);
    assert.ok(instances.every((instance) => instance['7FE00010'] === undefined), 'Pixel Data is not in metadata');
    const one = (await (await fetch(`${base}/studies/${study}/series/${series2}/instances/${series2}.3/metadata`)).json()) as unknown[];
    assert.equal(one.length, 1);
  });

  it('decodes the metadata of an instance stored in another set than UTF-8 from that set (helper 98: Latin-1 names came out as U+FFFD)', async () => {
    const latinStudy = '1.2.826.0.1.3680043.10.1453.201.98';
    const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
    const reply = await store.storeInstance({
      ...instanceOptions(1),
      patient: { id: 'WADO-98', name: 'Müller^Zoë' },
      specificCharacterSet: 'ISO_IR 100',
      study: { uid: latinStudy, description: 'Études' },
      series: { uid: `${latinStudy}.1`, modality: 'CT', number: 1 },
      sopInstanceUid: `${latinStudy}.1.1`,
    });
    await store.client.release();
    assert.equal(reply.command.status, Status.Success);
    const [instance] = (await (await fetch(`${base}/studies/${latinStudy}/metadata`)).json()) as Array<Record<string, { vr: string; Value?: unknown[] }>>;
    assert.deepEqual(instance!['00100010']!.Value![0], { Alphabetic: 'Müller^Zoë' });
    assert.deepEqual(instance!['00081030']!.Value, ['Études']);
    assert.deepEqual(instance!['00080005'], { vr: 'CS', Value: ['ISO_IR 192'] });
  });

  it('sends a study\'s metadata to a slow reader without a listener left per wait for the socket (helper 98: MaxListenersExceededWarning, one per instance)', async () => {
    const slowStudy = '1.2.826.0.1.3680043.10.1453.201.99';
    const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
    const longText = (tag: number, letter: string) => ({ tag, vr: 'LT', value: letter.repeat(10_000) });
    for (let n = 1; n <= 30; n++) {
      const reply = await store.storeInstance({ ...instanceOptions(n), study: { uid: slowStudy }, series: { uid: `${slowStudy}.1`, modality: 'CT', number: 1 }, sopInstanceUid: `${slowStudy}.1.${n}`, extraElements: [longText(0x00204000, 'x'), longText(0x00324000, 'y'), longText(0x001021b0, 'z')] });
      assert.equal(reply.command.status, Status.Success);
    }
    await store.client.release();
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`);
    process.on('warning', onWarning);
    try {
      const client = connect({ host: '127.0.0.1', port: peer.httpPort });
      client.pause();
      client.write(`GET /dicom-web/studies/${slowStudy}/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      let received = 0;
      const ended = new Promise<void>((resolve) => client.on('close', () => resolve()));
      // 2 KB every 5 ms: the peer waits for the socket many times.
      const reader = setInterval(() => (received += client.read(2048)?.length ?? 0), 5);
      await ended;
      clearInterval(reader);
      assert.ok(received > 30 * 30_000, `${received} bytes received`);
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(warnings.filter((warning) => warning.includes('MaxListeners')), []);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('sends the metadata of a deflated instance larger inflated than the 64 MiB header bound: inflated up to its Pixel Data only (helper 98: 500)', async () => {
    const deflatedStudy = '1.2.826.0.1.3680043.10.1453.201.100';
    const sopInstanceUid = `${deflatedStudy}.1.1`;
    const { bytes, resolved } = makeInstanceWithInfo({
      transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian,
      patient: { id: 'WADO-100', name: 'Deflated^Large' },
      study: { uid: deflatedStudy },
      series: { uid: `${deflatedStudy}.1` },
      sopInstanceUid,
      // 72 MB of pixels inflated, 70 KB deflated.
      rows: 6000,
      columns: 6000,
      bitsAllocated: 16,
      pixelPattern: 'zero',
    });
    await storeDataset(peer.dicomPort, resolved.sopClassUid, sopInstanceUid, bytes.subarray(splitPart10(bytes).datasetOffset), TransferSyntax.DeflatedExplicitVrLittleEndian);
    const response = await fetch(`${base}/studies/${deflatedStudy}/metadata`);
    assert.equal(response.status, 200);
    const [instance] = (await response.json()) as Array<Record<string, { vr: string; Value?: unknown[] }>>;
    assert.deepEqual(instance!['00100010']!.Value, [{ Alphabetic: 'Deflated^Large' }]);
    assert.deepEqual(instance!['00280010']!.Value, [6000]);
    assert.equal(instance!['7FE00010'], undefined);
  });

  it('a deflated instance\'s large binary value before Pixel Data is named by its BulkDataURI and sent inflated (helper 98: over the 64 MiB header bound its metadata was a 500)', async () => {
    const deflatedStudy = '1.2.826.0.1.3680043.10.1453.201.101';
    const sopInstanceUid = `${deflatedStudy}.1.1`;
    const document = Buffer.alloc(65 * 1024 * 1024 + 2);
    for (let at = 0; at + 4 <= document.length; at += 4096) document.writeUInt32LE(at, at);
    const { bytes, resolved } = makeInstanceWithInfo({
      transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian,
      study: { uid: deflatedStudy },
      series: { uid: `${deflatedStudy}.1` },
      sopInstanceUid,
      rows: 4,
      columns: 4,
      extraElements: [{ tag: 0x00420011, vr: 'OB', value: document }],
    });
    await storeDataset(peer.dicomPort, resolved.sopClassUid, sopInstanceUid, bytes.subarray(splitPart10(bytes).datasetOffset), TransferSyntax.DeflatedExplicitVrLittleEndian);
    const metadata = await retrieve(`/studies/${deflatedStudy}/metadata`);
    assert.equal(metadata.status, 200, metadata.body.toString().slice(0, 300));
    const [instance] = JSON.parse(metadata.body.toString()) as Array<Record<string, { vr: string; BulkDataURI?: string; Value?: unknown[] }>>;
    const uri = instance!['00420011']!.BulkDataURI!;
    assert.match(uri, /\/bulkdata\/00420011$/);
    assert.deepEqual(instance!['00280010']!.Value, [4]);
    const bulk = await retrieve(uri.slice(base.length));
    assert.equal(bulk.status, 200, bulk.body.toString().slice(0, 300));
    const [part] = parseMultipart(bulk.body, bulk.contentType);
    assert.ok(part!.body.equals(document), `the document inflated, ${part!.body.length} bytes`);
  });

  it('names top-level binary values in metadata with a BulkDataURI, and sends each one as stored (little endian)', async () => {
    const bulkStudy = '1.2.826.0.1.3680043.10.1453.201.2';
    const overlay = Uint8Array.from([0x01, 0x02, 0x03, 0x04]);
    const privateBlob = Uint8Array.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
    // One explicit VR little endian, one big endian (its OW words stored swapped), both over STOW-RS.
    const files = [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian].map((transferSyntaxUid, index) =>
      makeInstanceWithInfo({
        transferSyntaxUid,
        study: { uid: bulkStudy },
        series: { uid: `${bulkStudy}.1` },
        sopInstanceUid: `${bulkStudy}.1.${index + 1}`,
        instanceNumber: index + 1,
        rows: 4,
        columns: 4,
        privateElements: true,
        extraElements: [{ tag: 0x60003000, vr: 'OW', value: overlay }],
      }).bytes,
    );
    const body = Buffer.concat([...files.flatMap((file) => [Buffer.from('--b\r\nContent-Type: application/dicom\r\n\r\n'), Buffer.from(file), Buffer.from('\r\n')]), Buffer.from('--b--\r\n')]);
    const stored = await fetch(`${base}/studies`, { method: 'POST', body, headers: { 'content-type': 'multipart/related; type="application/dicom"; boundary=b' } });
    assert.equal(stored.status, 200, await stored.text());
    for (const index of [1, 2]) {
      const instanceUrl = `${base}/studies/${bulkStudy}/series/${bulkStudy}.1/instances/${bulkStudy}.1.${index}`;
      const [metadata] = (await (await fetch(`${instanceUrl}/metadata`)).json()) as Array<Record<string, { vr: string; BulkDataURI?: string }>>;
      assert.deepEqual(metadata!['00091003'], { vr: 'OB', BulkDataURI: `${instanceUrl}/bulkdata/00091003` });
      assert.deepEqual(metadata!['60003000'], { vr: 'OW', BulkDataURI: `${instanceUrl}/bulkdata/60003000` });
      for (const [tag, expected] of [['00091003', privateBlob], ['60003000', overlay]] as const) {
        const response = await retrieve(`/studies/${bulkStudy}/series/${bulkStudy}.1/instances/${bulkStudy}.1.${index}/bulkdata/${tag}`);
        assert.equal(response.status, 200);
        const [part] = parseMultipart(response.body, response.contentType);
        assert.deepEqual([...part!.body], [...expected], `instance ${index}, ${tag}`);
        // Asked as application/octet-stream alone: the value as the body (hunt 196: multipart).
        const single = await retrieve(`/studies/${bulkStudy}/series/${bulkStudy}.1/instances/${bulkStudy}.1.${index}/bulkdata/${tag}`, 'application/octet-stream');
        assert.equal(single.contentType, 'application/octet-stream');
        assert.deepEqual([...single.body], [...expected], `instance ${index}, ${tag}, single part`);
      }
    }
    const refusals: Array<[string, string | undefined, number, RegExp]> = [
      ['/bulkdata/7FE00010', undefined, 404, /frames resource/],
      ['/bulkdata/00100010', undefined, 404, /no top-level binary value/],
      ['/bulkdata/0010001', undefined, 400, /8 hex digits/],
      ['/bulkdata/00091003', 'image/jpeg', 406, /application\/octet-stream" only/],
    ];
    for (const [suffix, accept, status, message] of refusals) {
      const response = await retrieve(`/studies/${bulkStudy}/series/${bulkStudy}.1/instances/${bulkStudy}.1.1${suffix}`, accept);
      assert.equal(response.status, status, `${suffix}: ${response.body.toString()}`);
      assert.match((JSON.parse(response.body.toString()) as { error: string }).error, message);
    }
  });

  it('a large binary value before Pixel Data (an encapsulated document over the 64 MiB header bound) is named by its BulkDataURI and streamed, its study\'s metadata whole (hunt 85: 500, or cut mid-JSON)', async () => {
    const bigStudy = '1.2.826.0.1.3680043.10.1453.201.3';
    const document = Buffer.alloc(65 * 1024 * 1024 + 2);
    for (let at = 0; at + 4 <= document.length; at += 4096) document.writeUInt32LE(at, at);
    // Over the 1 MiB a header keeps, in big endian (stored swapped): its OW words are swapped back as they stream.
    const overlay = Buffer.alloc(3 * 1024 * 1024 + 6);
    for (let at = 0; at + 2 <= overlay.length; at += 2) overlay.writeUInt16LE(at & 0xffff, at);
    const files = [
      makeInstanceWithInfo({ transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, study: { uid: bigStudy }, series: { uid: `${bigStudy}.1` }, sopInstanceUid: `${bigStudy}.1.1`, instanceNumber: 1, rows: 4, columns: 4, extraElements: [{ tag: 0x00420011, vr: 'OB', value: document }] }).bytes,
      makeInstanceWithInfo({ transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian, study: { uid: bigStudy }, series: { uid: `${bigStudy}.1` }, sopInstanceUid: `${bigStudy}.1.2`, instanceNumber: 2, rows: 4, columns: 4, extraElements: [{ tag: 0x60003000, vr: 'OW', value: overlay }] }).bytes,
    ];
    const body = Buffer.concat([...files.flatMap((file) => [Buffer.from('--b\r\nContent-Type: application/dicom\r\n\r\n'), Buffer.from(file), Buffer.from('\r\n')]), Buffer.from('--b--\r\n')]);
    const stored = await fetch(`${base}/studies`, { method: 'POST', body, headers: { 'content-type': 'multipart/related; type="application/dicom"; boundary=b' } });
    assert.equal(stored.status, 200, await stored.text());
    const studyMetadata = await retrieve(`/studies/${bigStudy}/metadata`);
    assert.equal(studyMetadata.status, 200, studyMetadata.body.toString().slice(0, 300));
    const instances = JSON.parse(studyMetadata.body.toString()) as Array<Record<string, { vr: string; BulkDataURI?: string; Value?: unknown[] }>>;
    assert.equal(instances.length, 2);
    const instanceUrl = (n: number) => `${base}/studies/${bigStudy}/series/${bigStudy}.1/instances/${bigStudy}.1.${n}`;
    assert.deepEqual(instances[0]!['00420011'], { vr: 'OB', BulkDataURI: `${instanceUrl(1)}/bulkdata/00420011` });
    assert.deepEqual(instances[1]!['60003000'], { vr: 'OW', BulkDataURI: `${instanceUrl(2)}/bulkdata/60003000` });
    assert.deepEqual(instances[0]!['00080018']?.Value, [`${bigStudy}.1.1`], 'the attributes after it are read too');
    for (const [n, tag, expected] of [[1, '00420011', document], [2, '60003000', overlay]] as const) {
      const response = await retrieve(`/studies/${bigStudy}/series/${bigStudy}.1/instances/${bigStudy}.1.${n}/bulkdata/${tag}`);
      assert.equal(response.status, 200);
      const [part] = parseMultipart(response.body, response.contentType);
      assert.ok(Buffer.from(part!.body).equals(expected), `${tag}: ${part!.body.length} bytes, expected ${expected.length}, as stored in little endian`);
    }
    // The frames of an instance with such a value before its Pixel Data are still found.
    assert.equal((await retrieve(`/studies/${bigStudy}/series/${bigStudy}.1/instances/${bigStudy}.1.1/frames/1`)).status, 200);
  });

  it('answers 406 for an instance that cannot be converted as asked, and sends it as stored', { skip: corpusSkip }, async () => {
    // A JPEG baseline file of the corpus whose codestream lost its start marker: it cannot be decoded.
    const file = Buffer.from(readFileSync(join(corpusDirectory, 'public', 'pydicom__SC_rgb_jpeg_dcmtk.dcm')));
    const split = splitPart10(file);
    const soi = file.indexOf(Buffer.from([0xff, 0xd8, 0xff]), split.datasetOffset);
    file[soi] = 0x00;
    file[soi + 1] = 0x00;
    const uidOf = (tag: number) => split.metaElements.find((element) => element.tag === tag)!.value!.replace(/\0$/, '');
    const body = Buffer.concat([Buffer.from('--b\r\nContent-Type: application/dicom\r\n\r\n'), file, Buffer.from('\r\n--b--\r\n')]);
    const stored = await fetch(`${base}/studies`, { method: 'POST', body, headers: { 'content-type': 'multipart/related; type="application/dicom"; boundary=b' } });
    assert.equal(stored.status, 200, await stored.text());
    const elements = parseDataset(file.subarray(split.datasetOffset), split.transferSyntaxUid).elements;
    const valueOf = (tag: number) => elements.find((element) => element.tag === tag)!.value!.replace(/\0$/, '');
    const path = `/studies/${valueOf(Tags.StudyInstanceUID)}/series/${valueOf(Tags.SeriesInstanceUID)}/instances/${uidOf(Tags.MediaStorageSOPInstanceUID)}`;
    const refused = await retrieve(path);
    assert.equal(refused.status, 406, refused.body.toString());
    assert.match((JSON.parse(refused.body.toString()) as { error: string }).error, /cannot be converted to 1\.2\.840\.10008\.1\.2\.1: .*as stored \(transfer-syntax=\*\)/);
    const asStored = await retrieve(path, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.equal(asStored.status, 200);
    const [part] = parseMultipart(asStored.body, asStored.contentType);
    assert.ok(part!.body.subarray(splitPart10(part!.body).datasetOffset).equals(file.subarray(split.datasetOffset)));
  });

  it('sends the instances it can convert as asked with 206 and a Warning naming the others; 406 when it can convert none (PS3.18 10.4.3)', async () => {
    // A colour instance cannot be had in JPEG 2000 (its encoder takes one sample per pixel); a monochrome one can.
    const mixedStudy = '1.2.826.0.1.3680043.10.1453.201.9';
    const rgb = [
      { tag: Tags.SamplesPerPixel, vr: 'US', value: [3] },
      { tag: Tags.PhotometricInterpretation, vr: 'CS', value: 'RGB' },
      { tag: 0x00280006, vr: 'US', value: [0] },
      { tag: Tags.PixelData, vr: 'OB', value: new Uint8Array(4 * 4 * 3) },
    ];
    const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
    for (const [n, extraElements] of [[1, []], [2, rgb]] as const) {
      const reply = await store.storeInstance({ study: { uid: mixedStudy }, series: { uid: `${mixedStudy}.1` }, sopInstanceUid: `${mixedStudy}.1.${n}`, instanceNumber: n, rows: 4, columns: 4, bitsAllocated: 8, extraElements: [...extraElements] });
      assert.equal(reply.command.status, Status.Success);
    }
    await store.client.release();
    const jpeg2000 = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90';
    const response = await fetch(`${base}/studies/${mixedStudy}`, { headers: { accept: jpeg2000 } });
    assert.equal(response.status, 206);
    assert.match(response.headers.get('warning') ?? '', /^299 pacs-mesh "1 of 2 instances cannot be converted to 1\.2\.840\.10008\.1\.2\.4\.90 .*transfer-syntax=\* .*1\.2\.826\.0\.1\.3680043\.10\.1453\.201\.9\.1\.2"$/);
    const parts = parseMultipart(Buffer.from(await response.arrayBuffer()), response.headers.get('content-type') ?? '');
    assert.equal(parts.length, 1);
    assert.equal(splitPart10(parts[0]!.body).transferSyntaxUid, '1.2.840.10008.1.2.4.90');
    // A range that serves every instance is preferred to one that serves some; none at all is a 406.
    const whole = await retrieve(`/studies/${mixedStudy}`, `${jpeg2000}, multipart/related; type="application/dicom"; q=0.5`);
    assert.equal(whole.status, 200);
    assert.equal(parseMultipart(whole.body, whole.contentType).length, 2);
    const refused = await retrieve(`/studies/${mixedStudy}/series/${mixedStudy}.1/instances/${mixedStudy}.1.2`, jpeg2000);
    assert.equal(refused.status, 406);
  });

  it('answers 413 naming the bound for an instance whose conversion would hold too much, leaves it out of a study (206), and sends it as stored (hunt 85)', { skip: corpusSkip }, async () => {
    // Its header claims 65535 x 65535 RGB: decoding it would hold ~38 GB. Weighed by its stored size, it was decoded.
    const big = oversizedJpegInstance('86413');
    const body = Buffer.concat([Buffer.from('--b\r\nContent-Type: application/dicom\r\n\r\n'), big.file, Buffer.from('\r\n--b--\r\n')]);
    const stored = await fetch(`${base}/studies`, { method: 'POST', body, headers: { 'content-type': 'multipart/related; type="application/dicom"; boundary=b' } });
    assert.equal(stored.status, 200, await stored.text());
    const path = `/studies/${big.studyUid}/series/${big.seriesUid}/instances/${big.sopInstanceUid}`;
    const refused = await retrieve(path);
    assert.equal(refused.status, 413, refused.body.toString());
    const error = JSON.parse(refused.body.toString()) as { error: string; code?: string };
    assert.equal(error.code, 'ERR_DICOMWEB_TOO_LARGE');
    assert.match(error.error, /is not converted to 1\.2\.840\.10008\.1\.2\.1: conversion needs ~\d+ MiB, over 2048 MiB: refused.*transfer-syntax=\* or 1\.2\.840\.10008\.1\.2\.4\.50/);
    const asStored = await retrieve(path, 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.equal(asStored.status, 200);
    const [part] = parseMultipart(asStored.body, asStored.contentType);
    assert.equal(splitPart10(part!.body).transferSyntaxUid, '1.2.840.10008.1.2.4.50');
    // Beside an instance that converts: a 206 sending that one, with a Warning naming the other.
    const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
    assert.equal((await store.storeInstance({ study: { uid: big.studyUid }, series: { uid: big.seriesUid }, rows: 4, columns: 4, bitsAllocated: 8 })).command.status, Status.Success);
    await store.client.release();
    const some = await retrieve(`/studies/${big.studyUid}`);
    assert.equal(some.status, 206);
    assert.equal(parseMultipart(some.body, some.contentType).length, 1);
  });

  it('WADO-URI: sends an instance as a DICOM file at /wado (and under /dicom-web), Explicit VR Little Endian by default, as stored with transferSyntax=*', async () => {
    const root = `http://127.0.0.1:${peer.httpPort}`;
    const uri = (objectUid: string, more = '') => `requestType=WADO&studyUID=${study}&seriesUID=${objectUid.startsWith(series1) ? series1 : series2}&objectUID=${objectUid}${more}`;
    const dataSetOf = (body: Buffer) => body.subarray(splitPart10(body).datasetOffset);
    for (const path of ['/wado', '/dicom-web/wado']) {
      const response = await fetch(`${root}${path}?${uri(`${series1}.1`, '&contentType=application%2Fdicom')}`);
      assert.equal(response.status, 200, path);
      assert.equal(response.headers.get('content-type'), 'application/dicom');
      const body = Buffer.from(await response.arrayBuffer());
      assert.equal(splitPart10(body).transferSyntaxUid, TransferSyntax.ExplicitVrLittleEndian);
      assert.ok(dataSetOf(body).equals(storedDataSets.get(`${series1}.1`)!), path);
    }
    // Over 4 MiB: streamed from the store, whole.
    const large = await fetch(`${root}/wado?${uri(`${series2}.3`, '&contentType=application/dicom&transferSyntax=*')}`);
    assert.equal(large.status, 200);
    assert.ok(dataSetOf(Buffer.from(await large.arrayBuffer())).equals(storedDataSets.get(`${series2}.3`)!));
    // Converted as asked.
    const implicit = await fetch(`${root}/wado?${uri(`${series1}.2`, `&contentType=application/dicom&transferSyntax=${TransferSyntax.ImplicitVrLittleEndian}`)}`);
    assert.equal(implicit.status, 200);
    const converted = Buffer.from(await implicit.arrayBuffer());
    assert.equal(splitPart10(converted).transferSyntaxUid, TransferSyntax.ImplicitVrLittleEndian);
    const { elements } = parseDataset(dataSetOf(converted), TransferSyntax.ImplicitVrLittleEndian);
    assert.equal(elements.find((element) => element.tag === Tags.SOPInstanceUID)?.value, `${series1}.2`);
    const head = await fetch(`${root}/wado?${uri(`${series1}.1`, '&contentType=application/dicom')}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-disposition'), `attachment; filename="${series1}.1.dcm"`);
    // As stored, GET's length too, without reading the instance (HEAD had neither).
    for (const objectUid of [`${series1}.1`, `${series2}.3`]) {
      const asStored = uri(objectUid, '&contentType=application/dicom&transferSyntax=*');
      const [headAsStored, getAsStored] = [await fetch(`${root}/wado?${asStored}`, { method: 'HEAD' }), await fetch(`${root}/wado?${asStored}`)];
      assert.equal(Number(headAsStored.headers.get('content-length')), (await getAsStored.arrayBuffer()).byteLength, objectUid);
      assert.equal(headAsStored.headers.get('content-disposition'), getAsStored.headers.get('content-disposition'));
    }
    // What it cannot serve: each a status and a message.
    const cases: Array<[string, number, RegExp]> = [
      [uri(`${series1}.1`, '&contentType=image/gif'), 406, /application\/dicom, image\/jpeg or image\/png, not image\/gif/],
      [uri(`${series1}.1`, '&contentType=application/dicom&rows=64'), 400, /rows apply to rendered images/],
      [uri(`${series1}.1`, '&contentType=application/dicom&anonymize=yes'), 400, /anonymize is not supported/],
      [uri(`${series1}.1`, '&contentType=application/dicom').replace('requestType=WADO', 'requestType=WADO-RS'), 400, /requestType must be WADO/],
      [uri(`${series1}.1`, '&contentType=application/dicom').replace(`objectUID=${series1}.1`, 'objectUID=1.2.x'), 400, /objectUID is not a valid UID/],
      [uri(`${series1}.9`, '&contentType=application/dicom'), 404, /no instance/],
    ];
    for (const [query, status, message] of cases) {
      const response = await fetch(`${root}/wado?${query}`);
      const text = await response.text();
      assert.equal(response.status, status, `${query}: ${text}`);
      assert.match((JSON.parse(text) as { error: string }).error, message, query);
    }
  });

  it('answers 404, 406 and 400 with a message for what it cannot serve, and survives a client that leaves', async () => {
    const cases: Array<[string, string | undefined, number, RegExp]> = [
      ['/studies/1.2.3.4.5', undefined, 404, /no instance of study 1\.2\.3\.4\.5/],
      [`/studies/${study}/series/1.2.3`, undefined, 404, /no instance of series/],
      [`/studies/${study}`, 'application/dicom+json', 406, /transfer-syntax=\*/],
      [`/studies/${study}`, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50', 406, /as stored/],
      [`/studies/${study}/metadata`, 'multipart/related; type="application/dicom+xml"', 406, /application\/dicom\+json only/],
      ['/studies/1..2', undefined, 400, /not a valid UID/],
    ];
    for (const [path, accept, status, message] of cases) {
      const response = await retrieve(path, accept);
      assert.equal(response.status, status, `${path} ${accept ?? ''}: ${response.body.toString()}`);
      assert.match((JSON.parse(response.body.toString()) as { error: string }).error, message);
    }
    // A client that goes away in the middle of the large instance.
    const abort = new AbortController();
    const response = await fetch(`${base}/studies/${study}/series/${series2}`, { signal: abort.signal, headers: { accept: '*/*; transfer-syntax=*' } });
    const reader = response.body!.getReader();
    await reader.read();
    abort.abort();
    await reader.read().catch(() => undefined);
    assert.equal((await fetch(`http://127.0.0.1:${peer.httpPort}/healthz`)).status, 200);
    assert.equal((await retrieve(`/studies/${study}`, '*/*')).status, 200);
  });
});

it('a retrieve in flight when the peer stops is sent whole; new connections are refused meanwhile', async () => {
  // The drain ends once the retrieve is sent: a grace of 30 s, not the fixture's 1 s, lets it be sent on a
  // loaded machine too (18 MB at a fraction of a CPU was cut: 'terminated').
  const stopping = await startTestPeer([], 'wado-stop', silentLogger, { shutdownGraceMs: 30_000 });
  const options = instanceOptions(1, { rows: 3000, columns: 3000 });
  const store = await openStoreClient(stopping.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  assert.equal((await store.storeInstance(options)).command.status, Status.Success);
  await store.client.release();
  const { bytes } = makeInstanceWithInfo({ ...options, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
  const stopBase = `http://127.0.0.1:${stopping.httpPort}/dicom-web`;
  const response = await fetch(`${stopBase}/studies/${study}`, { headers: { accept: '*/*; transfer-syntax=*' } });
  const reader = response.body!.getReader();
  const chunks: Uint8Array[] = [];
  const first = await reader.read();
  chunks.push(first.value!);
  const stopped = stopping.dispose();
  await new Promise((r) => setTimeout(r, 200));
  await assert.rejects(fetch(`${stopBase}/studies/${study}`, { signal: AbortSignal.timeout(2000) }));
  for (let next = await reader.read(); !next.done; next = await reader.read()) chunks.push(next.value);
  await stopped;
  const [part, ...more] = parseMultipart(Buffer.concat(chunks), response.headers.get('content-type') ?? '');
  assert.equal(more.length, 0);
  assert.ok(part!.body.subarray(splitPart10(part!.body).datasetOffset).equals(Buffer.from(bytes.subarray(splitPart10(bytes).datasetOffset))));
});
