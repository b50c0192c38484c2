/**
 * An in-process round trip of all five services against a real peer, driven by an independent DICOM
 * implementation (dcmjs-dimse's Client), plus a byte-exact check with our own client.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dimse from 'dcmjs-dimse';
import { startTestPeer, storeDataset } from '../support/peer-fixture.ts';
import { longLengthVrs } from '../../src/codec/dataset/vr.ts';
import { duplicateWithOtherBytesMessage } from '../../src/actors/association/services/store.ts';
import { recordingLogger, type RecordedLine } from '../support/recording-logger.ts';
import { createHash } from 'node:crypto';
import { makeInstanceWithInfo, TransferSyntax } from '../support/synthetic-dicom.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { DicomClientAssociation } from '../../src/actors/association/client.ts';
import { CommandField } from '../../src/codec/dimse.ts';

const { Client } = dimse;
const { CEchoRequest, CFindRequest, CStoreRequest, CGetRequest, CMoveRequest } = dimse.requests;
const { CStoreResponse } = dimse.responses;

type AnyResponse = { getStatus(): number; hasDataset(): boolean; getDataset(): { getElement(tag: string): unknown } | undefined; getCompleted?(): number; getFailures?(): number };

/** Sends requests on one dcmjs-dimse association and collects every response. */
function run(port: number, requests: Array<InstanceType<typeof CEchoRequest>>, onStore?: (dataset: unknown) => void): Promise<AnyResponse[][]> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    const responses: AnyResponse[][] = requests.map(() => []);
    requests.forEach((request, index) => {
      request.on('response', (response: AnyResponse) => responses[index]!.push(response));
      client.addRequest(request);
    });
    client.on('cStoreRequest', (request: any, callback: (r: unknown) => void) => {
      onStore?.(request.getDataset());
      const response = CStoreResponse.fromRequest(request);
      response.setStatus(0);
      callback(response);
    });
    client.on('networkError', reject);
    client.on('associationRejected', (e: unknown) => reject(new Error(`rejected ${JSON.stringify(e)}`)));
    client.on('closed', () => resolve(responses));
    client.send('127.0.0.1', port, 'DIMSETEST', 'PACSMESH');
  });
}

test('C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE round trip with dcmjs-dimse', async (t) => {
  const destination = await startTestPeer(['--ae-title', 'PEERB'], 'dest');
  const peer = await startTestPeer(['--move-dest', `PEERB=127.0.0.1:${destination.dicomPort}`], 'source');
  const dir = mkdtempSync(join(tmpdir(), 'pacs-rt-'));
  t.after(async () => {
    await peer.dispose();
    await destination.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  const studies = ['1.2.826.0.1.3680043.10.1453.99.1', '1.2.826.0.1.3680043.10.1453.99.2'];
  const files = [0, 1, 2].map((i) => {
    const { bytes, resolved } = makeInstanceWithInfo({
      transferSyntaxUid: i === 1 ? TransferSyntax.ImplicitVrLittleEndian : TransferSyntax.ExplicitVrLittleEndian,
      patient: { id: `PAT${i === 2 ? 2 : 1}`, name: i === 2 ? 'Doe^Jane' : 'Roe^Richard' },
      study: { uid: studies[i === 2 ? 1 : 0]!, date: '20260101', accession: `ACC${i}` },
      sopInstanceUid: `1.2.826.0.1.3680043.10.1453.99.1.${i + 1}`,
      instanceNumber: i + 1,
      rows: 64,
      columns: 64,
      privateElements: true,
    });
    const path = join(dir, `${i}.dcm`);
    writeFileSync(path, bytes);
    return { path, resolved, bytes };
  });

  const [echo, ...stores] = await run(peer.dicomPort, [new CEchoRequest(), ...files.map((f) => new CStoreRequest(f.path))]);
  assert.equal(echo![0]!.getStatus(), 0);
  for (const responses of stores) assert.equal(responses[0]!.getStatus(), 0);
  assert.equal(await peer.store.countInstances(), 3);

  const [found] = await run(peer.dicomPort, [CFindRequest.createStudyFindRequest({ PatientID: 'PAT1', StudyInstanceUID: '', NumberOfStudyRelatedInstances: '' })]);
  const pending = found!.filter((r) => r.getStatus() === 0xff00);
  assert.equal(pending.length, 1);
  assert.equal(pending[0]!.getDataset()!.getElement('StudyInstanceUID'), studies[0]);
  assert.equal(String(pending[0]!.getDataset()!.getElement('NumberOfStudyRelatedInstances')), '2');
  // Where to retrieve it from (PS3.4 C.4.1.1.3.2), though the query did not ask.
  assert.equal(pending[0]!.getDataset()!.getElement('RetrieveAETitle'), 'PACSMESH');
  assert.equal(found!.at(-1)!.getStatus(), 0);

  const received: string[] = [];
  const [got] = await run(peer.dicomPort, [CGetRequest.createStudyGetRequest(studies[0]!)], (dataset) => {
    received.push(String((dataset as { getElement(tag: string): unknown }).getElement('SOPInstanceUID')));
  });
  assert.equal(got!.at(-1)!.getStatus(), 0);
  assert.deepEqual(received.sort(), [files[0]!.resolved.sopInstanceUid, files[1]!.resolved.sopInstanceUid].sort());

  const [moved] = await run(peer.dicomPort, [CMoveRequest.createStudyMoveRequest('PEERB', studies[1]!)]);
  const final = moved!.at(-1)!;
  assert.equal(final.getStatus(), 0);
  assert.equal(final.getCompleted!(), 1);
  const original = await peer.store.getEntry(files[2]!.resolved.sopInstanceUid);
  const copy = await destination.store.getEntry(files[2]!.resolved.sopInstanceUid);
  assert.ok(original && copy);
  assert.equal(copy.sha256, original.sha256, 'C-MOVE delivered the stored bytes unchanged');
});

test('C-STORE is byte-faithful: the stored bytes are exactly the data set sent', async (t) => {
  const peer = await startTestPeer();
  t.after(() => peer.dispose());
  for (const transferSyntaxUid of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian]) {
    const { bytes, resolved } = makeInstanceWithInfo({ transferSyntaxUid, privateElements: true, specificCharacterSet: 'ISO_IR 100', patient: { name: 'Müller^Jürgen' } });
    const part10 = splitPart10(bytes);
    const dataSet = bytes.subarray(part10.datasetOffset);
    const client = await DicomClientAssociation.open({
      host: '127.0.0.1',
      port: peer.dicomPort,
      callingAeTitle: 'BYTES',
      calledAeTitle: 'PACSMESH',
      presentationContexts: [{ abstractSyntaxUid: resolved.sopClassUid, transferSyntaxUids: [transferSyntaxUid] }],
      maxPduLength: 16384,
    });
    const reply = await client.request(client.contexts[0]!.id, { commandField: CommandField.CStoreRq, affectedSopClassUid: resolved.sopClassUid, affectedSopInstanceUid: resolved.sopInstanceUid, priority: 0, hasDataSet: true }, dataSet);
    await client.release();
    assert.equal(reply.command.status, 0, `${transferSyntaxUid}: ${reply.command.errorComment ?? ''}`);
    const entry = await peer.store.getEntry(resolved.sopInstanceUid);
    assert.ok(entry);
    assert.equal(entry.transferSyntaxUid, transferSyntaxUid);
    const chunks: Uint8Array[] = [];
    for await (const chunk of peer.store.readInstance(entry)) chunks.push(chunk);
    assert.ok(Buffer.concat(chunks).equals(Buffer.from(dataSet)), `${transferSyntaxUid}: stored bytes differ from the sent data set`);
  }
});

test("C-STORE of a data set with a legacy writer's VR of two spaces (CTN 3.2): stored as sent, as DCMTK takes it (was 0xC000)", async (t) => {
  const peer = await startTestPeer();
  t.after(() => peer.dispose());
  const { bytes, resolved } = makeInstanceWithInfo({ transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, patient: { id: 'CTN-1' } });
  const original = bytes.subarray(splitPart10(bytes).datasetOffset);
  // Before the first element past (0009,0010): a private creator CTN's dictionary lacks, VR "  ", 2-byte length.
  const view = new DataView(original.buffer, original.byteOffset, original.byteLength);
  let at = 0;
  while (((view.getUint16(at, true) << 16) | view.getUint16(at + 2, true)) >>> 0 <= 0x00090010) {
    const vr = String.fromCharCode(original[at + 4]!, original[at + 5]!);
    at += longLengthVrs.has(vr) ? 12 + view.getUint32(at + 8, true) : 8 + view.getUint16(at + 6, true);
  }
  const legacy = Buffer.from([0x09, 0x00, 0x10, 0x00, 0x20, 0x20, 0x04, 0x00, ...Buffer.from('CTN ')]);
  const dataSet = Buffer.concat([original.subarray(0, at), legacy, original.subarray(at)]);
  await storeDataset(peer.dicomPort, resolved.sopClassUid, resolved.sopInstanceUid, dataSet, TransferSyntax.ExplicitVrLittleEndian);
  const entry = await peer.store.getEntry(resolved.sopInstanceUid);
  assert.equal(entry?.patientId, 'CTN-1', 'indexed as any other');
  const chunks: Uint8Array[] = [];
  for await (const chunk of peer.store.readInstance(entry!)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(dataSet), 'stored bytes differ from the sent data set');
});

test('a SOP Instance UID stored again with other bytes: Success, the first copy kept, and a warning naming both SHA-256 (hunt 85: dropped without a word)', async (t) => {
  const lines: RecordedLine[] = [];
  const peer = await startTestPeer([], 'dup', recordingLogger([], {}, lines));
  t.after(() => peer.dispose());
  const uid = '1.2.826.0.1.3680043.10.1453.85.7';
  const dataSetOf = (name: string) => {
    const { bytes, resolved } = makeInstanceWithInfo({ transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, sopInstanceUid: uid, patient: { name } });
    return { dataSet: bytes.subarray(splitPart10(bytes).datasetOffset), sopClassUid: resolved.sopClassUid };
  };
  const first = dataSetOf('FIRST^SENT');
  const corrected = dataSetOf('CORRECTED^NAME');
  for (const { dataSet, sopClassUid } of [first, first, corrected]) await storeDataset(peer.dicomPort, sopClassUid, uid, dataSet, TransferSyntax.ExplicitVrLittleEndian);
  const entry = await peer.store.getEntry(uid);
  const chunks: Uint8Array[] = [];
  for await (const chunk of peer.store.readInstance(entry!)) chunks.push(chunk);
  assert.ok(Buffer.concat(chunks).equals(Buffer.from(first.dataSet)), 'the copy stored first is kept');
  const warnings = lines.filter((l) => l.message === duplicateWithOtherBytesMessage);
  assert.equal(warnings.length, 1, 'the same bytes again say nothing; other bytes are logged');
  assert.equal(warnings[0]!.fields?.storedSha256, entry!.sha256);
  assert.equal(warnings[0]!.fields?.sentSha256, createHash('sha256').update(corrected.dataSet).digest('hex'));
});
