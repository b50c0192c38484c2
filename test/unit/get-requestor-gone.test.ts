/**
 * A C-GET whose requestor goes away while an instance is being read from the store: the association must
 * still end. Its sub-operation started after the association's end had answered every waiter, so it waited
 * for the requestor's answer for good, the association's end waited for it, and the association (session,
 * actor, task, the instance's bytes) was never let go (helper 101: every getscu killed mid-retrieve in a
 * long run left one behind; a stop then waited its whole grace for them).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestPeer, openStoreClient } from '../support/peer-fixture.ts';
import { makeInstanceWithInfo, TransferSyntax } from '../support/synthetic-dicom.ts';
import { encodeDataset } from '../../src/codec/dataset/writer.ts';
import { Tags } from '../../src/codec/dictionary.ts';
import { CommandField, Status } from '../../src/codec/dimse.ts';
import { SopClass } from '../../src/actors/association/negotiation.ts';
import { DicomClientAssociation } from '../../src/actors/association/client.ts';
import { waitFor } from '../support/wait.ts';

test('a C-GET whose requestor aborts while an instance is read from the store: the association ends, and the peer stops without waiting for it', { timeout: 90_000 }, async () => {
  // Far above what a stop takes at load 20-30, so that only a stop held by the association comes near it.
  const graceMs = 30_000;
  const peer = await startTestPeer([], 'gone', undefined, { shutdownGraceMs: graceMs });
  let stopped = false;
  try {
    const studyInstanceUid = '1.2.826.0.1.3680043.10.1453.101.1';
    const { client: filler, storeInstance } = await openStoreClient(peer.dicomPort, 'FILLER', SopClass.Verification);
    assert.equal((await storeInstance({ rows: 8, columns: 8, study: { uid: studyInstanceUid } })).command.status, Status.Success);
    await filler.release();

    // The store's read of the instance waits until the requestor is gone.
    let reads = 0;
    let openGate!: () => void;
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    const readInstance = peer.store.readInstance.bind(peer.store);
    peer.store.readInstance = (entry, options) =>
      (async function* () {
        reads++;
        await gate;
        yield* readInstance(entry, options);
      })();

    const ct = makeInstanceWithInfo({ rows: 8, columns: 8 }).resolved.sopClassUid;
    const client = await DicomClientAssociation.open({
      host: '127.0.0.1',
      port: peer.dicomPort,
      callingAeTitle: 'GETTER',
      calledAeTitle: 'PACSMESH',
      presentationContexts: [
        { abstractSyntaxUid: SopClass.StudyRootGet, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
        { abstractSyntaxUid: ct, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] },
      ],
      roleSelections: [{ sopClassUid: ct, scuRole: false, scpRole: true }],
      onIncomingStore: () => Status.Success,
    });
    const identifier = encodeDataset(
      [
        { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
        { tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid },
      ],
      TransferSyntax.ExplicitVrLittleEndian,
    );
    const get = client.request(client.contexts[0]!.id, { commandField: CommandField.CGetRq, affectedSopClassUid: SopClass.StudyRootGet, priority: 0, hasDataSet: true }, identifier).catch(() => undefined);
    await waitFor('the instance to be read for the C-GET', () => reads === 1);
    client.abort();
    await get;
    // The peer has seen the transport close before the read completes.
    await new Promise((resolve) => setTimeout(resolve, 300));
    openGate();
    await new Promise((resolve) => setTimeout(resolve, 300));

    const start = performance.now();
    // The stop's own timers are unref'd: with nothing else left, a stop stuck on the association would end the test's event loop.
    const keepAlive = setInterval(() => undefined, 1000);
    try {
      await peer.dispose();
    } finally {
      clearInterval(keepAlive);
    }
    stopped = true;
    const stopMs = performance.now() - start;
    assert.ok(stopMs < graceMs / 2, `the stop waited ${Math.round(stopMs)} ms for an association whose requestor left (grace ${graceMs} ms)`);
  } finally {
    if (!stopped) await peer.dispose();
  }
});
