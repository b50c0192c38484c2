/**
 * The requestor side (C-MOVE and C-GET sub-operations, tests) against a raw TCP acceptor that misbehaves.
 */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { CommandField } from '../../codec/dimse.ts';
import { TransferSyntax } from '../../codec/dicom-types.ts';
import { AssociationClosedError, DicomClientAssociation } from './client.ts';
import { acceptorThatHangsUpMidRequest } from '../../../test/support/raw-acceptor.ts';
import { startReportReceiver } from '../../../test/support/report-receiver.ts';

const ctImage = '1.2.840.10008.5.1.4.1.1.2';

test('the acceptor hangs up while a request is being sent: the request fails with ERR_ASSOCIATION_ABORTED, nothing is left unhandled', async (t) => {
  const acceptor = await acceptorThatHangsUpMidRequest();
  t.after(() => acceptor.close());
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));

  const client = await DicomClientAssociation.open({
    host: '127.0.0.1',
    port: acceptor.port,
    callingAeTitle: 'PACSMESH',
    calledAeTitle: 'DEST',
    presentationContexts: [{ abstractSyntaxUid: ctImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }],
    timeoutMs: 5000,
  });
  // Read as from the store, chunk by chunk across event-loop turns, so the connection closes while it is
  // still being sent; once it has, the rest is not read.
  let chunksRead = 0;
  async function* dataSet(): AsyncIterable<Uint8Array> {
    for (let i = 0; i < 512; i++) {
      await new Promise((r) => setImmediate(r));
      chunksRead++;
      yield new Uint8Array(64 * 1024);
    }
  }
  await assert.rejects(
    client.request(
      client.contexts[0]!.id,
      { commandField: CommandField.CStoreRq, affectedSopClassUid: ctImage, affectedSopInstanceUid: '1.2.3.4', priority: 0, hasDataSet: true },
      dataSet(),
    ),
    (e: unknown) => e instanceof AssociationClosedError && e.code === 'ERR_ASSOCIATION_ABORTED',
  );
  assert.ok(chunksRead < 512, `read ${chunksRead} of 512 chunks for a closed association`);
  // Whatever rejected while the request was still being sent must have had a handler.
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(unhandled.map((e) => (e instanceof AssociationClosedError ? e.code : String(e))), []);
  client.abort();
});

test('an owner\'s AbortSignal ends a negotiation under way at once, and keeps no listener from associations that ended', async (t) => {
  const receiver = await startReportReceiver('DEST');
  const silent = createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    await receiver.close();
    silent.close();
  });
  const owner = new AbortController();
  const open = (port: number) =>
    DicomClientAssociation.open({
      host: '127.0.0.1',
      port,
      callingAeTitle: 'PACSMESH',
      calledAeTitle: 'DEST',
      presentationContexts: [{ abstractSyntaxUid: ctImage, transferSyntaxUids: [TransferSyntax.ExplicitVrLittleEndian] }],
      timeoutMs: 30_000,
      signal: owner.signal,
    });
  for (let i = 0; i < 12; i++) await (await open(receiver.port)).release();
  await new Promise((resolve) => setTimeout(resolve, 50)); // the last socket's close event
  assert.equal(getEventListeners(owner.signal, 'abort').length, 0, 'one listener per association would pile up on a long-lived signal');
  // A peer that accepts the connection and never answers the A-ASSOCIATE-RQ.
  const pending = open((silent.address() as AddressInfo).port);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const startedMs = Date.now();
  owner.abort();
  await assert.rejects(pending, (error: unknown) => error instanceof AssociationClosedError && error.code === 'ERR_ASSOCIATION_ABORTED');
  assert.ok(Date.now() - startedMs < 5_000, 'not the 30 s negotiation timeout');
});
