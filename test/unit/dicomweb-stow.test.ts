/**
 * STOW-RS (PS3.18 10.5) against a real peer over HTTP: instances stored byte-identical through the
 * C-STORE's path, each refused part with its Failure Reason, 415 for what is not multipart/related of
 * application/dicom, damaged bodies that keep what was stored in full and nothing partial, and a fuzz
 * loop after which the peer still answers and holds exactly what it acknowledged.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { waitFor } from '../support/wait.ts';
import { startTestPeer, type TestPeer } from '../support/peer-fixture.ts';
import { recordingLogger } from '../support/recording-logger.ts';
import { makeInstanceWithInfo, newUid, TransferSyntax, uidGenerator, type InstanceOptions } from '../support/synthetic-dicom.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { Prng } from '../../src/sim/prng.ts';
import { startHttpServer } from '../../src/http/server.ts';
import { createReplicaStore } from '../../src/actors/storage/replica-store.ts';
import { systemClock } from '../../src/actors/runtime/clock.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { createDicomWebStats, type DicomWebContext } from '../../src/http/dicomweb/context.ts';
import { SearchCursors } from '../../src/http/dicomweb/search-cursors.ts';
import { createConcurrencyLimit } from '../../src/actors/runtime/concurrency-limit.ts';

const boundary = 'stow-test-boundary-0123456789';
const dicomMultipart = `multipart/related; type="application/dicom"; boundary=${boundary}`;

const Tag = {
  RetrieveURL: '00081190',
  WarningReason: '00081196',
  FailureReason: '00081197',
  FailedSOPSequence: '00081198',
  ReferencedSOPSequence: '00081199',
  OtherFailuresSequence: '0008119A',
  ReferencedSOPClassUID: '00081150',
  ReferencedSOPInstanceUID: '00081155',
} as const;

interface Part {
  contentType?: string;
  bytes: Uint8Array;
}

function multipart(parts: readonly Part[], options: { close?: boolean; boundary?: string } = {}): Buffer {
  const b = options.boundary ?? boundary;
  const pieces: Buffer[] = [];
  for (const part of parts) {
    const headers = part.contentType === undefined ? '' : `Content-Type: ${part.contentType}\r\n`;
    pieces.push(Buffer.from(`--${b}\r\n${headers}\r\n`, 'latin1'), Buffer.from(part.bytes), Buffer.from('\r\n', 'latin1'));
  }
  if (options.close ?? true) pieces.push(Buffer.from(`--${b}--\r\n`, 'latin1'));
  return Buffer.concat(pieces);
}

const dicomPart = (bytes: Uint8Array): Part => ({ contentType: 'application/dicom', bytes });

type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

interface StowAnswer {
  status: number;
  contentType: string | null;
  warning: string | null;
  retryAfter: string | null;
  body: DicomJson & { error?: string; code?: string };
}

async function stow(port: number, body: Uint8Array | ReadableStream<Uint8Array>, options: { contentType?: string | null; studyUid?: string; headers?: Record<string, string> } = {}): Promise<StowAnswer> {
  const headers: Record<string, string> = { ...options.headers };
  const contentType = options.contentType === undefined ? dicomMultipart : options.contentType;
  if (contentType !== null) headers['content-type'] = contentType;
  const path = options.studyUid === undefined ? '/dicom-web/studies' : `/dicom-web/studies/${options.studyUid}`;
  const init: RequestInit & { duplex?: 'half' } = { method: 'POST', headers, body: body as BodyInit, duplex: 'half' };
  const response = await fetch(`http://127.0.0.1:${port}${path}`, init);
  const text = await response.text();
  return { status: response.status, contentType: response.headers.get('content-type'), warning: response.headers.get('warning'), retryAfter: response.headers.get('retry-after'), body: text === '' ? {} : JSON.parse(text) };
}

function items(body: DicomJson, tag: string): DicomJson[] {
  return (body[tag]?.Value ?? []) as DicomJson[];
}

function referencedUids(body: DicomJson): string[] {
  return items(body, Tag.ReferencedSOPSequence).map((item) => item[Tag.ReferencedSOPInstanceUID]!.Value![0] as string);
}

function failures(body: DicomJson): Array<{ uid: string; reason: number }> {
  return items(body, Tag.FailedSOPSequence).map((item) => ({ uid: item[Tag.ReferencedSOPInstanceUID]!.Value![0] as string, reason: item[Tag.FailureReason]!.Value![0] as number }));
}

function otherFailureReasons(body: DicomJson): number[] {
  return items(body, Tag.OtherFailuresSequence).map((item) => item[Tag.FailureReason]!.Value![0] as number);
}

/** The data set of a Part 10 file: what the archive stores. */
function dataSetOf(file: Uint8Array): Buffer {
  return Buffer.from(file.subarray(splitPart10(file).datasetOffset));
}

async function storedBytes(peer: TestPeer, sopInstanceUid: string): Promise<Buffer | undefined> {
  const entry = await peer.store.getEntry(sopInstanceUid);
  if (entry === undefined) return undefined;
  const chunks: Uint8Array[] = [];
  for await (const chunk of peer.store.readInstance(entry)) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Keys in the blob database: chunks of an instance that was neither committed nor aborted would stay there. */
async function blobKeyCount(peer: TestPeer): Promise<number> {
  let count = 0;
  for await (const _key of peer.store.blobDb.keys()) count++;
  return count;
}

const small = (options: InstanceOptions = {}) => makeInstanceWithInfo({ rows: 8, columns: 8, ...options });

test('STOW-RS over HTTP', async (t) => {
  const peer = await startTestPeer([], 'stow');
  t.after(() => peer.dispose());
  const port = peer.httpPort;
  const baseUrl = `http://127.0.0.1:${port}/dicom-web`;

  await t.test('several instances in one request are stored byte-identical, with their retrieve URLs', async () => {
    const studyUid = newUid();
    const seriesUid = newUid();
    const files = [
      small({ study: { uid: studyUid }, series: { uid: seriesUid }, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }),
      small({ study: { uid: studyUid }, series: { uid: seriesUid }, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian, privateElements: true }),
      small({ study: { uid: studyUid }, series: { uid: seriesUid }, transferSyntaxUid: TransferSyntax.DeflatedExplicitVrLittleEndian }),
      small({ study: { uid: studyUid }, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian }),
    ];
    const answer = await stow(port, multipart(files.map((file) => dicomPart(file.bytes))));
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.contentType, 'application/dicom+json');
    assert.deepEqual(answer.body[Tag.RetrieveURL], { vr: 'UR', Value: [`${baseUrl}/studies/${studyUid}`] });
    assert.equal(answer.body[Tag.FailedSOPSequence], undefined);
    const referenced = items(answer.body, Tag.ReferencedSOPSequence);
    assert.equal(referenced.length, files.length);
    for (const [index, file] of files.entries()) {
      const { sopClassUid, sopInstanceUid, seriesInstanceUid } = file.resolved;
      assert.deepEqual(referenced[index], {
        [Tag.ReferencedSOPClassUID]: { vr: 'UI', Value: [sopClassUid] },
        [Tag.ReferencedSOPInstanceUID]: { vr: 'UI', Value: [sopInstanceUid] },
        [Tag.RetrieveURL]: { vr: 'UR', Value: [`${baseUrl}/studies/${studyUid}/series/${seriesInstanceUid}/instances/${sopInstanceUid}`] },
      });
      const stored = await storedBytes(peer, sopInstanceUid);
      assert.ok(stored?.equals(dataSetOf(file.bytes)), `instance ${index} stored as sent`);
      assert.equal((await peer.store.getEntry(sopInstanceUid))?.transferSyntaxUid, file.resolved.transferSyntaxUid);
    }
  });

  await t.test('behind a TLS proxy that says so (X-Forwarded-Proto, Forwarded proto), the URLs name https (hunt 191)', async () => {
    for (const headers of [{ 'x-forwarded-proto': 'https' }, { forwarded: 'for=10.0.0.1;proto=https;host=pacs.example' }] as Array<Record<string, string>>) {
      const file = small();
      const answer = await stow(port, multipart([dicomPart(file.bytes)]), { headers });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.deepEqual(answer.body[Tag.RetrieveURL], { vr: 'UR', Value: [`https://127.0.0.1:${port}/dicom-web/studies/${file.resolved.studyInstanceUid}`] }, JSON.stringify(headers));
    }
  });

  await t.test('the Content-Type may be written in any order and case, type quoted or not, parts without their own Content-Type', async () => {
    for (const contentType of [
      `Multipart/Related; BOUNDARY="${boundary}"; Type=application/dicom`,
      `multipart/related;boundary=${boundary};type="APPLICATION/DICOM"`,
      `multipart/related; boundary=${boundary}`,
    ]) {
      const file = small();
      const answer = await stow(port, multipart([{ bytes: file.bytes }]), { contentType });
      assert.equal(answer.status, 200, contentType);
      assert.deepEqual(referencedUids(answer.body), [file.resolved.sopInstanceUid]);
    }
  });

  await t.test('a duplicate is answered as stored (as a C-STORE is) and stored once', async () => {
    const file = small();
    const first = await stow(port, multipart([dicomPart(file.bytes)]));
    assert.equal(first.status, 200);
    const countBefore = await peer.store.countInstances();
    const again = await stow(port, multipart([dicomPart(file.bytes), dicomPart(file.bytes)]));
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.deepEqual(referencedUids(again.body), [file.resolved.sopInstanceUid, file.resolved.sopInstanceUid]);
    assert.equal(await peer.store.countInstances(), countBefore);
    // The same SOP Instance UID sent again under another study: the answer names where it is stored.
    const moved = small({ sopInstanceUid: file.resolved.sopInstanceUid, study: { uid: newUid() } });
    const renamed = await stow(port, multipart([dicomPart(moved.bytes)]));
    assert.equal(renamed.status, 200);
    const retrieveUrl = items(renamed.body, Tag.ReferencedSOPSequence)[0]![Tag.RetrieveURL]!.Value![0] as string;
    assert.match(retrieveUrl, new RegExp(`/studies/${file.resolved.studyInstanceUid}/series/${file.resolved.seriesInstanceUid}/instances/${file.resolved.sopInstanceUid}$`));
    assert.equal((await fetch(retrieveUrl)).status, 200, 'the URL answered leads to the stored copy');
  });

  await t.test('POST /studies/{study}: an instance of another study fails with A900 and is not stored; the others are stored (202)', async () => {
    const studyUid = newUid();
    const ours = small({ study: { uid: studyUid } });
    const other = small();
    const answer = await stow(port, multipart([dicomPart(ours.bytes), dicomPart(other.bytes)]), { studyUid });
    assert.equal(answer.status, 202);
    assert.deepEqual(answer.body[Tag.RetrieveURL], { vr: 'UR', Value: [`${baseUrl}/studies/${studyUid}`] });
    assert.deepEqual(referencedUids(answer.body), [ours.resolved.sopInstanceUid]);
    assert.deepEqual(failures(answer.body), [{ uid: other.resolved.sopInstanceUid, reason: 0xa900 }]);
    assert.deepEqual(items(answer.body, Tag.FailedSOPSequence)[0]![Tag.ReferencedSOPClassUID], { vr: 'UI', Value: [other.resolved.sopClassUid] });
    assert.match(answer.warning ?? '', /^299 pacs-mesh ".*0xA900.*not of the target study/);
    assert.equal(await peer.store.getEntry(other.resolved.sopInstanceUid), undefined);
    const blobKeysBefore = await blobKeyCount(peer);
    // Alone, it is a conflict (409): nothing was stored.
    const alone = await stow(port, multipart([dicomPart(small().bytes)]), { studyUid });
    assert.equal(alone.status, 409);
    assert.equal(failures(alone.body)[0]?.reason, 0xa900);
    assert.equal(await blobKeyCount(peer), blobKeysBefore);
  });

  await t.test('a SOP class that is not a storage class fails with 0122; an unknown transfer syntax with C122; a data set unlike its meta is stored under its own UIDs', async () => {
    const verification = small({ sopClassUid: '1.2.840.10008.1.1' });
    const answer = await stow(port, multipart([dicomPart(verification.bytes)]));
    assert.equal(answer.status, 409);
    assert.deepEqual(failures(answer.body), [{ uid: verification.resolved.sopInstanceUid, reason: 0x0122 }]);
    assert.equal(await peer.store.getEntry(verification.resolved.sopInstanceUid), undefined);

    const file = small();
    const split = splitPart10(file.bytes);
    const odd = Buffer.from(file.bytes);
    // Rewrites the meta's transfer syntax (1.2.840.10008.1.2.1) into one no codec here knows, of the same length.
    const tsAt = odd.indexOf(Buffer.from('1.2.840.10008.1.2.1\0', 'latin1'));
    assert.ok(tsAt > 0 && tsAt < split.datasetOffset);
    odd.write('1.2.840.10008.1.2.9\0', tsAt, 'latin1');
    const unknownSyntax = await stow(port, multipart([dicomPart(odd)]));
    assert.deepEqual(failures(unknownSyntax.body), [{ uid: file.resolved.sopInstanceUid, reason: 0xc122 }]);

    // The meta names another instance than the data set (3 corpus files do): stored under the data set's own
    // UID, as a C-STORE of the file from storescu and Orthanc's STOW-RS store it; nothing under the meta's.
    const mismatch = Buffer.from(file.bytes);
    const uidAt = mismatch.indexOf(Buffer.from(file.resolved.sopInstanceUid, 'latin1'));
    assert.ok(uidAt < split.datasetOffset);
    mismatch.write(mismatch[uidAt + 6] === 0x31 ? '2' : '1', uidAt + 6, 'latin1');
    const metaUid = mismatch.toString('latin1', uidAt, uidAt + file.resolved.sopInstanceUid.length);
    const mismatched = await stow(port, multipart([dicomPart(mismatch)]));
    assert.equal(mismatched.status, 200, JSON.stringify(mismatched.body));
    assert.deepEqual(referencedUids(mismatched.body), [file.resolved.sopInstanceUid], 'the response names the data set\'s UID');
    assert.deepEqual(await storedBytes(peer, file.resolved.sopInstanceUid), dataSetOf(file.bytes), 'the data set, byte for byte');
    assert.equal(await peer.store.getEntry(metaUid), undefined, 'nothing under the meta\'s UID');
  });

  await t.test('a part that is no Part 10 file, or not application/dicom, fails with C000 in the Other Failures Sequence; the others are stored', async () => {
    const good = small();
    const answer = await stow(
      port,
      multipart([
        dicomPart(Buffer.from('this is not a DICOM file at all, just some text that is long enough to hold a preamble and more. '.repeat(3))),
        dicomPart(dataSetOf(small().bytes)),
        { contentType: 'application/dicom+json', bytes: Buffer.from('[{}]') },
        dicomPart(good.bytes),
        dicomPart(new Uint8Array(0)),
      ]),
    );
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    assert.deepEqual(referencedUids(answer.body), [good.resolved.sopInstanceUid]);
    assert.deepEqual(otherFailureReasons(answer.body), [0xc000, 0xc000, 0xc000, 0xc000]);
    assert.match(answer.warning ?? '', /4 of 5 parts not stored/);
    const none = await stow(port, multipart([{ contentType: 'text/plain', bytes: Buffer.from('hello') }]));
    assert.equal(none.status, 409);
    assert.deepEqual(none.body[Tag.RetrieveURL], { vr: 'UR' });
  });

  await t.test('a truncated body: instances received in full before the cut are kept and named (202), the cut one is not stored; 400 when none was', async () => {
    const first = small();
    const second = small();
    const countBefore = await peer.store.countInstances();
    const whole = multipart([dicomPart(first.bytes), dicomPart(second.bytes)]);
    const cutAt = whole.indexOf(Buffer.from(second.bytes)) + Math.floor(second.bytes.length / 2);
    const cut = await stow(port, whole.subarray(0, cutAt));
    assert.equal(cut.status, 202, JSON.stringify(cut.body));
    assert.deepEqual(referencedUids(cut.body), [first.resolved.sopInstanceUid]);
    assert.deepEqual(failures(cut.body), [{ uid: second.resolved.sopInstanceUid, reason: 0xc000 }]);
    assert.match(cut.warning ?? '', /not valid multipart/);
    assert.equal(await peer.store.getEntry(second.resolved.sopInstanceUid), undefined);
    assert.equal(await peer.store.countInstances(), countBefore + 1);

    // All parts whole (each ended by its delimiter), but no close delimiter: they are stored, and the damage is told.
    const third = small();
    const unclosed = await stow(port, Buffer.concat([multipart([dicomPart(third.bytes)], { close: false }), Buffer.from(`--${boundary}`)]));
    assert.equal(unclosed.status, 202);
    assert.deepEqual(referencedUids(unclosed.body), [third.resolved.sopInstanceUid]);
    assert.deepEqual(otherFailureReasons(unclosed.body), [0xc000]);

    const fourth = small();
    const nothing = await stow(port, multipart([dicomPart(fourth.bytes)]).subarray(0, 300));
    assert.equal(nothing.status, 400);
    // A larger instance cut after some of its chunks were written: not one chunk of it remains.
    const blobKeysBefore = await blobKeyCount(peer);
    const large = makeInstanceWithInfo({ rows: 512, columns: 1024, bitsAllocated: 16, pixelPattern: 'gradient' });
    const largeCut = await stow(port, multipart([dicomPart(large.bytes)]).subarray(0, Math.floor(large.bytes.length * 0.8)));
    assert.equal(largeCut.status, 400);
    assert.equal(await peer.store.getEntry(large.resolved.sopInstanceUid), undefined);
    assert.equal(await blobKeyCount(peer), blobKeysBefore);
    assert.equal(nothing.body.code, 'ERR_STOW_MULTIPART');
    assert.match(nothing.body.error ?? '', /no instance was stored/);
    assert.equal(await peer.store.getEntry(fourth.resolved.sopInstanceUid), undefined);

    const empty = await stow(port, Buffer.from(`--${boundary}--\r\n`));
    assert.equal(empty.status, 400);
    assert.equal(empty.body.code, 'ERR_STOW_NO_PARTS');
    const otherBoundary = await stow(port, multipart([dicomPart(small().bytes)], { boundary: 'another' }));
    assert.equal(otherBoundary.status, 400);
  });

  await t.test('a chunked body whose chunk framing breaks after a whole instance: that instance is kept and named (202), not answered 400 as unread (hunt 191)', async () => {
    const first = small();
    const body = multipart([dicomPart(first.bytes), dicomPart(small().bytes)]);
    // Past the second part's delimiter line: the first part is known whole.
    const cutAt = body.indexOf(Buffer.from(`--${boundary}`), 10) + boundary.length + 4;
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.on('error', () => undefined);
    socket.write(`POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: ${dicomMultipart}\r\nTransfer-Encoding: chunked\r\n\r\n`);
    socket.write(Buffer.concat([Buffer.from(`${cutAt.toString(16)}\r\n`), body.subarray(0, cutAt), Buffer.from('\r\n')]));
    await waitFor('the first instance stored', async () => (await peer.store.getEntry(first.resolved.sopInstanceUid)) !== undefined);
    socket.write('zz-not-hex\r\nhello\r\n');
    await closed;
    assert.match(answer, /^HTTP\/1\.1 202 /, answer.slice(0, 300));
    assert.match(answer, /connection: close/i);
    assert.ok(answer.includes(first.resolved.sopInstanceUid), 'the stored instance is named');
    assert.ok(!answer.includes('ERR_HTTP_MALFORMED'), 'no refusal follows the answer');
  });

  await t.test('a body over the bounds of one request (10,000 parts, 16 KiB of headers in a part) is a 413 when nothing was stored', async () => {
    const manyParts = await stow(port, multipart(Array.from({ length: 10_001 }, () => ({ contentType: 'application/dicom', bytes: Buffer.from('not dicom') }))));
    assert.equal(manyParts.status, 413, JSON.stringify(manyParts.body).slice(0, 300));
    assert.equal(manyParts.body.code, 'ERR_STOW_TOO_LARGE');
    assert.match(manyParts.body.error ?? '', /more than 10000 parts/);
    const longHeaders = await stow(port, multipart([{ contentType: `application/dicom\r\nX-Pad: ${'a'.repeat(20_000)}`, bytes: small().bytes }]));
    assert.equal(longHeaders.status, 413);
    assert.equal(longHeaders.body.code, 'ERR_STOW_TOO_LARGE');
  });

  await t.test('an instance over one of the archive\'s bounds (16,384 top-level elements) fails with A700 and is a 409, not a 503 to retry (hunt 191)', async () => {
    const extraElements = [];
    for (let block = 0x10; block <= 0x50; block++) {
      extraElements.push({ tag: 0x00090000 | block, vr: 'LO', value: 'BOUNDS TEST' });
      for (let element = 0; element < 256; element++) extraElements.push({ tag: 0x00090000 | (block << 8) | element, vr: 'SH', value: 'A' });
    }
    const wide = small({ extraElements });
    const answer = await stow(port, multipart([dicomPart(wide.bytes)]));
    assert.equal(answer.status, 409, JSON.stringify(answer.body).slice(0, 300));
    assert.equal(answer.retryAfter, null);
    assert.deepEqual(failures(answer.body), [{ uid: wide.resolved.sopInstanceUid, reason: 0xa700 }]);
    assert.match(answer.warning ?? '', /beyond this archive's bounds: too many top-level elements/);
  });

  await t.test('a client that goes away mid-upload leaves nothing of the instance it was sending, and the peer serves on', async () => {
    const blobKeysBefore = await blobKeyCount(peer);
    const large = makeInstanceWithInfo({ rows: 512, columns: 1024, bitsAllocated: 16, pixelPattern: 'gradient' });
    const body = multipart([dicomPart(large.bytes)]);
    const socket = connect({ host: '127.0.0.1', port });
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(`POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: ${dicomMultipart}\r\nContent-Length: ${body.length}\r\n\r\n`);
    socket.write(body.subarray(0, Math.floor(body.length * 0.7)));
    // Some of its chunks are written before the client leaves.
    await waitFor('chunks of the upload in the blob database', async () => (await blobKeyCount(peer)) > blobKeysBefore);
    socket.destroy();
    await waitFor('the upload aborted', async () => (await blobKeyCount(peer)) === blobKeysBefore);
    assert.equal(await peer.store.getEntry(large.resolved.sopInstanceUid), undefined);
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    assert.equal((await stow(port, multipart([dicomPart(small().bytes)]))).status, 200);
  });

  await t.test('parts delivered in pieces of a few bytes are read as well as whole ones', async () => {
    const files = [small(), small({ transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian })];
    const body = multipart(files.map((file) => dicomPart(file.bytes)));
    const socket = connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    await new Promise((resolve) => socket.once('connect', resolve));
    const response = new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (data) => {
        text += data.toString('latin1');
        if (/\r\n\r\n[\s\S]*\}$/.test(text)) resolve(text);
      });
    });
    socket.write(`POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: ${dicomMultipart}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    // The first kilobytes (preamble, meta, delimiters) in pieces of 7 bytes, each its own TCP segment.
    for (let at = 0; at < 2048; at += 7) {
      socket.write(body.subarray(at, Math.min(at + 7, 2048)));
      await new Promise((resolve) => setImmediate(resolve));
    }
    socket.write(body.subarray(2048));
    const text = await response;
    socket.destroy();
    assert.match(text, /^HTTP\/1\.1 200 /);
    for (const file of files) assert.ok((await storedBytes(peer, file.resolved.sopInstanceUid))?.equals(dataSetOf(file.bytes)));
  });

  await t.test('Expect: 100-continue: a request refused on its headers gets its 415 and no 100, so its body is not sent in vain; an accepted one gets its 100 when its body is read', async () => {
    const exchange = async (contentType: string, body: Buffer): Promise<string> => {
      const socket = connect({ host: '127.0.0.1', port });
      await new Promise((resolve) => socket.once('connect', resolve));
      let text = '';
      let sent = false;
      const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()));
      socket.on('data', (data) => {
        text += data.toString('latin1');
        // The body only once told to go on, as curl and other clients do.
        if (text.startsWith('HTTP/1.1 100 Continue\r\n\r\n') && !sent) {
          sent = true;
          socket.write(body);
        }
      });
      socket.write(`POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: ${contentType}\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`);
      await ended;
      return text;
    };
    const file = small();
    const body = multipart([dicomPart(file.bytes)]);
    const refused = await exchange('text/plain', body);
    assert.match(refused, /^HTTP\/1\.1 415 /, 'no 100 before the refusal (Node sent one on arrival)');
    const accepted = await exchange(dicomMultipart, body);
    assert.match(accepted, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    assert.ok((await storedBytes(peer, file.resolved.sopInstanceUid))?.equals(dataSetOf(file.bytes)));
  });

  await t.test('what is not multipart/related of application/dicom parts is refused with 415, saying what is accepted', async () => {
    const body = multipart([dicomPart(small().bytes)]);
    const refused: Array<[string | null, RegExp]> = [
      [null, /no Content-Type/],
      ['application/dicom', /not application\/dicom$/],
      [`multipart/related; type="application/dicom+json"; boundary=${boundary}`, /metadata and bulk data/],
      [`multipart/related; type="application/dicom+xml"; boundary=${boundary}`, /not stored here/],
      ['multipart/related; type="application/dicom"', /no boundary/],
      [`multipart/related; type="application/dicom"; boundary="${'x'.repeat(201)}"`, /1 to 200/],
      [`multipart/mixed; boundary=${boundary}`, /not multipart\/mixed/],
      ['text/plain', /not text\/plain/],
      ['not a media type', /not a media type/],
    ];
    for (const [contentType, message] of refused) {
      const answer = await stow(port, body, { contentType });
      assert.equal(answer.status, 415, String(contentType));
      assert.equal(answer.body.code, 'ERR_STOW_MEDIA_TYPE');
      assert.match(answer.body.error ?? '', /STOW-RS takes Content-Type: multipart\/related; type="application\/dicom"/);
      assert.match(answer.body.error ?? '', message);
    }
    const gzip = await stow(port, body, { headers: { 'content-encoding': 'gzip' } });
    assert.equal(gzip.status, 415);
    assert.equal(gzip.body.code, 'ERR_STOW_CONTENT_ENCODING');
    const xmlOnly = await stow(port, body, { headers: { accept: 'application/dicom+xml' } });
    assert.equal(xmlOnly.status, 406);
    assert.equal((await stow(port, body, { headers: { accept: 'application/dicom+xml, application/dicom+json;q=0.5' } })).status, 200);
  });

  await t.test('a ~20 MB instance is streamed through in pieces and stored whole', async (tt) => {
    const big = makeInstanceWithInfo({ rows: 2560, columns: 4096, bitsAllocated: 16, pixelPattern: 'gradient' });
    assert.ok(big.bytes.length > 20_000_000);
    const body = multipart([dicomPart(big.bytes)]);
    const pieceBytes = 256 * 1024;
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= body.length) {
          controller.close();
          return;
        }
        controller.enqueue(body.subarray(sent, sent + pieceBytes));
        sent += pieceBytes;
      },
    });
    // Live memory, garbage collected first: what the client and the peer hold, not what they dropped.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const liveBytes = () => {
      gc();
      const usage = process.memoryUsage();
      return usage.heapUsed + usage.arrayBuffers;
    };
    const baselineBytes = liveBytes();
    let peakGrowthBytes = 0;
    let samples = 0;
    const sampler = setInterval(() => {
      peakGrowthBytes = Math.max(peakGrowthBytes, liveBytes() - baselineBytes);
      samples++;
    }, 20);
    const answer = await stow(port, stream).finally(() => clearInterval(sampler));
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    tt.diagnostic(`part of ${(big.bytes.length / 1e6).toFixed(1)} MB; live memory grew by at most ${(peakGrowthBytes / 1e6).toFixed(1)} MB over ${samples} samples during the upload`);
    // Holding the part whole would add its size; a few MB are pieces in flight to the store.
    assert.ok(samples >= 3, `${samples} samples`);
    assert.ok(peakGrowthBytes < big.bytes.length / 2, `live memory grew by ${peakGrowthBytes} bytes`);
    const stored = await storedBytes(peer, big.resolved.sopInstanceUid);
    assert.ok(stored?.equals(dataSetOf(big.bytes)));
  });

  await t.test('seeded fuzz: mutated multipart bodies never crash the peer, and it holds exactly the instances it acknowledged', async () => {
    const prng = new Prng(20261130);
    // Seeded UIDs too, so that a failing round is the same body on every run.
    const uid = uidGenerator('stow-fuzz');
    const acknowledged = new Set<string>();
    const attempted = new Set<string>();
    const countBefore = await peer.store.countInstances();
    const statuses = new Map<number, number>();
    for (let round = 0; round < 300; round++) {
      const files = Array.from({ length: 1 + prng.nextInt(3) }, () => small({ rows: 4, columns: 4, study: { uid: uid('study') }, series: { uid: uid('series') }, sopInstanceUid: uid('sop') }));
      for (const file of files) attempted.add(file.resolved.sopInstanceUid);
      let body: Buffer = multipart(files.map((file) => dicomPart(file.bytes)));
      const mutations = 1 + prng.nextInt(4);
      for (let m = 0; m < mutations; m++) body = mutate(body, prng);
      const answer = await stow(port, body);
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      assert.ok([200, 202, 400, 409].includes(answer.status), `round ${round}: status ${answer.status} ${JSON.stringify(answer.body)}`);
      if (answer.status === 200 || answer.status === 202) {
        assert.equal(answer.contentType, 'application/dicom+json');
        for (const uid of referencedUids(answer.body)) acknowledged.add(uid);
      }
    }
    tt_diagnostic(t, `statuses: ${JSON.stringify(Object.fromEntries(statuses))}; ${acknowledged.size} acknowledged of ${attempted.size}`);
    assert.ok(acknowledged.size > 0 && acknowledged.size < attempted.size, 'the mutations neither spared nor ruined every body');
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    // Mutated UIDs may name instances never attempted: the count says nothing else was stored.
    assert.equal(await peer.store.countInstances(), countBefore + acknowledged.size);
    const entries = await peer.store.getEntries([...acknowledged]);
    assert.ok(entries.every((entry) => entry !== undefined));
  });
});

function tt_diagnostic(t: { diagnostic(message: string): void }, message: string): void {
  t.diagnostic(message);
}

/** One random damage: flipped bytes, a cut, inserted bytes or CRLFs, a duplicated or removed stretch, a stray delimiter. */
function mutate(body: Buffer, prng: Prng): Buffer {
  const at = prng.nextInt(body.length);
  switch (prng.nextInt(7)) {
    case 0: {
      const copy = Buffer.from(body);
      for (let i = 0; i < 1 + prng.nextInt(8); i++) copy[prng.nextInt(copy.length)] = prng.nextInt(256);
      return copy;
    }
    case 1:
      return body.subarray(0, at);
    case 2:
      return Buffer.concat([body.subarray(0, at), Buffer.from(Array.from({ length: 1 + prng.nextInt(16) }, () => prng.nextInt(256))), body.subarray(at)]);
    case 3:
      return Buffer.concat([body.subarray(0, at), Buffer.from('\r\n'), body.subarray(at)]);
    case 4: {
      const length = prng.nextInt(200);
      return Buffer.concat([body.subarray(0, at), body.subarray(Math.max(0, at - length), at), body.subarray(at)]);
    }
    case 5:
      return Buffer.concat([body.subarray(0, at), body.subarray(Math.min(body.length, at + 1 + prng.nextInt(200)))]);
    default:
      return Buffer.concat([body.subarray(0, at), Buffer.from(prng.nextInt(2) === 0 ? `\r\n--${boundary}\r\n\r\n` : `\r\n--${boundary}--`), body.subarray(at)]);
  }
}

test('STOW-RS: a body of many parts not stored logs the first 10 one by one and a count, not a line a part (hunt 191: 10,000 lines)', async (t) => {
  const messages: string[] = [];
  const peer = await startTestPeer([], 'stow-log', recordingLogger(messages));
  t.after(() => peer.dispose());
  const answer = await stow(peer.httpPort, multipart(Array.from({ length: 40 }, () => ({ contentType: 'application/dicom', bytes: Buffer.from('not dicom') }))));
  assert.equal(answer.status, 409);
  assert.equal(items(answer.body, Tag.OtherFailuresSequence).length, 40, 'the response lists each');
  assert.equal(messages.filter((m) => m === 'STOW-RS part not stored').length, 10);
  assert.equal(messages.filter((m) => m === 'STOW-RS parts not stored, beyond those logged one by one').length, 1);
});

test('STOW-RS: a write quorum that is not reached fails the instance with A700, and nothing is acknowledged: 503 with Retry-After (worth retrying, not a conflict)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-stow-quorum-'));
  const store = createReplicaStore({ path: dir });
  await store.open();
  const dicomWeb: DicomWebContext = {
    store,
    retrieveSource: undefined as never,
    ingest: { beginWrite: () => store.beginWrite(), afterCommit: async () => ({ status: 0xa700, errorComment: 'write quorum not reached in time' }) },
    transcoder: undefined as never,
    clock: systemClock,
    log: silentLogger,
    stats: createDicomWebStats(),
    meshLookups: createConcurrencyLimit(4, 4),
    heldInstanceBytes: createConcurrencyLimit(1024 * 1024, 4),
    searchCursors: new SearchCursors(),
  };
  const server = await startHttpServer({ host: '127.0.0.1', port: 0, meshStatus: async () => ({}), isHealthy: () => true, log: silentLogger, dicomWeb });
  t.after(async () => {
    await server.stop();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const file = small();
  const answer = await stow(server.port, multipart([dicomPart(file.bytes)]));
  assert.equal(answer.status, 503);
  assert.equal(answer.retryAfter, '10');
  assert.deepEqual(failures(answer.body), [{ uid: file.resolved.sopInstanceUid, reason: 0xa700 }]);
  assert.match(answer.warning ?? '', /write quorum not reached/);
});
