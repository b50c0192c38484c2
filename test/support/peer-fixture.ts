/** Starts in-process peers on loopback with throwaway data directories, for tests. */
import '../../src/polyfill.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer, type Peer, type PeerOptions } from '../../src/peer.ts';
import { silentLogger, type Logger } from '../../src/actors/runtime/logger.ts';
import { DicomClientAssociation, type ClientInit, type DimseReply } from '../../src/actors/association/client.ts';
import { splitPart10 } from '../../src/codec/dataset/part10.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { DicomApplicationContext, encodePdu, type AssociateRqPdu } from '../../src/codec/pdu.ts';
import { isManualClock } from './manual-clock.ts';
import { makeInstanceWithInfo, newUid, TransferSyntax, type InstanceOptions } from './synthetic-dicom.ts';
import { createConcurrencyLimit, type ConcurrencyLimit } from '../../src/actors/runtime/concurrency-limit.ts';
import { heldInstanceBytesMax, heldInstanceRequestsQueuedMax } from '../../src/http/dicomweb/context.ts';

/** The bytes of an A-ASSOCIATE-RQ (one presentation context unless given), for tests that talk raw PDUs to a peer. */
export function associateRqBytes(
  calledAeTitle = 'PACSMESH',
  abstractSyntaxUid = '1.2.840.10008.1.1',
  transferSyntaxUid: string = TransferSyntax.ImplicitVrLittleEndian,
  callingAeTitle = 'FUZZER',
  presentationContexts: AssociateRqPdu['presentationContexts'] = [{ id: 1, abstractSyntaxUid, transferSyntaxUids: [transferSyntaxUid] }],
): Uint8Array {
  return encodePdu({
    type: 'associateRq',
    protocolVersion: 1,
    calledAeTitle,
    callingAeTitle,
    applicationContextName: DicomApplicationContext,
    presentationContexts,
    userInformation: { maxPduLength: 16384, implementationClassUid: '1.2.3', roleSelections: [] },
  });
}

export interface TestPeer extends Peer {
  dataDir: string;
  /** Stops the peer and deletes its data directory. */
  dispose(): Promise<void>;
}

export async function startTestPeer(extraArgs: string[] = [], site = 'test', log: Logger = silentLogger, options: PeerOptions = {}): Promise<TestPeer> {
  const dataDir = mkdtempSync(join(tmpdir(), `pacs-${site}-`));
  const config = parseStartArgs(['--site', site, '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent', ...extraArgs]);
  const peer = await startPeer(config, { log, shutdownGraceMs: 1000, ...options });
  return {
    ...peer,
    dataDir,
    dispose: async () => {
      const stopped = peer.stop();
      // A peer on a clock the test moves: its shutdown grace, and the wait for sockets to close, run on that clock.
      const clock = options.clock;
      if (clock !== undefined && isManualClock(clock)) {
        let done = false;
        void stopped.finally(() => (done = true));
        while (!done) {
          clock.advance(500);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
      await stopped;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface StoreClient {
  client: DicomClientAssociation;
  /** The presentation context of `otherSopClassUid`. */
  otherContextId: number;
  /** C-STORE of a synthetic CT instance (explicit VR little endian) made from `options`. */
  storeInstance(options: InstanceOptions): Promise<DimseReply>;
}

/** Our own client to a test peer (called AE PACSMESH on 127.0.0.1) proposing `presentationContexts`. */
export function openPeerClient(
  port: number,
  callingAeTitle: string,
  presentationContexts: ClientInit['presentationContexts'],
  more: Pick<ClientInit, 'roleSelections' | 'onIncomingStore'> = {},
): Promise<DicomClientAssociation> {
  return DicomClientAssociation.open({ host: '127.0.0.1', port, callingAeTitle, calledAeTitle: 'PACSMESH', presentationContexts, ...more });
}

/** Our own client to a peer, proposing CT Image Storage (explicit VR LE) and one other SOP class. */
export async function openStoreClient(port: number, callingAeTitle: string, otherSopClassUid: string): Promise<StoreClient> {
  const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port,
    callingAeTitle,
    calledAeTitle: 'PACSMESH',
    presentationContexts: [
      { abstractSyntaxUid: ct, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      { abstractSyntaxUid: otherSopClassUid, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian] },
    ],
  });
  return {
    client,
    otherContextId: client.contexts[1]!.id,
    storeInstance: (options) => {
      const { bytes, resolved } = makeInstanceWithInfo({ ...options, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
      const command = { commandField: CommandField.CStoreRq, affectedSopClassUid: resolved.sopClassUid, affectedSopInstanceUid: resolved.sopInstanceUid, priority: 0, hasDataSet: true };
      return client.request(client.contexts[0]!.id, command, bytes.subarray(splitPart10(bytes).datasetOffset));
    },
  };
}

/** C-STORE of one data set in `transferSyntaxUid` (a context proposing that syntax alone); fails unless Success. */
export async function storeDataset(port: number, sopClassUid: string, sopInstanceUid: string, dataset: Uint8Array, transferSyntaxUid: string): Promise<void> {
  const client = await openPeerClient(port, 'STORESCU', [{ abstractSyntaxUid: sopClassUid, transferSyntaxUids: [transferSyntaxUid] }]);
  try {
    if (client.contexts[0]?.transferSyntaxUid !== transferSyntaxUid) throw new Error(`the peer did not accept ${transferSyntaxUid} for ${sopClassUid}`);
    const reply = await client.request(client.contexts[0].id, { commandField: CommandField.CStoreRq, affectedSopClassUid: sopClassUid, affectedSopInstanceUid: sopInstanceUid, priority: 0, hasDataSet: true }, dataset);
    if (reply.command.status !== Status.Success) throw new Error(`C-STORE of ${sopInstanceUid}: status 0x${reply.command.status?.toString(16)}`);
  } finally {
    await client.release();
  }
}

/** Stores an object of `sopClassUid` without Pixel Data (a report, a Secondary Capture without pixels) in the series: its UID. */
export async function storeWithoutPixels(port: number, sopClassUid: string, studyInstanceUid: string, seriesInstanceUid: string): Promise<string> {
  const sopInstanceUid = newUid();
  const dataset = encodeDataset(
    [
      { tag: Tags.SOPClassUID, vr: 'UI', value: sopClassUid },
      { tag: Tags.SOPInstanceUID, vr: 'UI', value: sopInstanceUid },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
      { tag: Tags.SeriesInstanceUID, vr: 'UI', value: seriesInstanceUid },
    ],
    TransferSyntax.ExplicitVrLittleEndian,
  );
  await storeDataset(port, sopClassUid, sopInstanceUid, dataset, TransferSyntax.ExplicitVrLittleEndian);
  return sopInstanceUid;
}

/**
 * The peer's DICOMweb budget of bytes held until read, as it is, recording into `weights` what each
 * response weighs when it takes its hold (for PeerOptions.heldInstanceBytes).
 */
export function recordingHeldBytes(weights: number[]): ConcurrencyLimit {
  const budget = createConcurrencyLimit(heldInstanceBytesMax, heldInstanceRequestsQueuedMax);
  return {
    run: (work, weight, ...rest) => {
      weights.push(weight ?? 1);
      return budget.run(work, weight, ...rest);
    },
    stats: () => budget.stats(),
  };
}

