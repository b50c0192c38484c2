import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Status } from '../../codec/dimse.ts';
import { systemClock } from '../runtime/clock.ts';
import { silentLogger } from '../runtime/logger.ts';
import { startActorSystem, stopActor } from '../runtime/nact.ts';
import type { ReplicaStore } from '../storage/replica-store.ts';
import { startCommitments, type ReportChannel } from './actor.ts';
import type { CommitmentRecord } from './messages.ts';
import { startReportReceiver } from '../../../test/support/report-receiver.ts';
import { waitFor } from '../../../test/support/wait.ts';

/** The store's commitment records in memory, each write taking `writeMs` (a synced write on a slow disk). */
function slowStore(writeMs: number): ReplicaStore {
  const records = new Map<string, CommitmentRecord>();
  const twin: Pick<ReplicaStore, 'putCommitment' | 'deleteCommitment' | 'listCommitments' | 'getEntries'> = {
    putCommitment: async (record) => {
      await new Promise((resolve) => setTimeout(resolve, writeMs));
      records.set(record.transactionUid, record);
    },
    deleteCommitment: async (transactionUid) => void records.delete(transactionUid),
    listCommitments: async () => [...records.values()],
    getEntries: async (uids) => uids.map(() => undefined),
  };
  return twin as ReplicaStore;
}

const noChannel: ReportChannel = { send: () => Promise.reject(new Error('no association')) };

test('admissions under way count against the bounds: requests that arrive together cannot pass them between them (helper 57)', async (t) => {
  const system = startActorSystem('commitment-test');
  const service = startCommitments({
    store: slowStore(20),
    clock: systemClock,
    log: silentLogger,
    parent: system,
    aeTitle: 'PACSMESH',
    resolveAe: () => ({ host: '127.0.0.1', port: 9 }),
    config: { checkWaitMs: 60_000, referencesMax: 10 },
  });
  t.after(async () => {
    await service.stop();
    stopActor(system);
  });
  const request = (i: number) => ({ transactionUid: `1.2.${i}`, references: [1, 2, 3, 4, 5].map((n) => ({ sopClassUid: '1.2.840.10008.5.1.4.1.1.2', sopInstanceUid: `1.3.${i}.${n}` })) });
  // All twenty are checked while the first records are still being written.
  const admissions = await Promise.all(Array.from({ length: 20 }, (_, i) => service.admit(request(i), 'MODALITY', noChannel)));
  for (const admission of admissions) if (admission.admitted) admission.begin();
  assert.equal(admissions.filter((a) => a.admitted).length, 2);
  assert.deepEqual(new Set(admissions.filter((a) => !a.admitted).map((a) => !a.admitted && a.status)), new Set([Status.ResourceLimitation]));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(service.stats().pending, 2);
  // Stepped in, the two still hold their places; a third waits for one to end.
  assert.equal((await service.admit(request(21), 'MODALITY', noChannel)).admitted, false);
});

test('a service at its bounds says so before any request is read', async (t) => {
  const system = startActorSystem('commitment-full');
  const service = startCommitments({ store: slowStore(0), clock: systemClock, log: silentLogger, parent: system, aeTitle: 'PACSMESH', resolveAe: () => undefined, config: { checkWaitMs: 60_000, transactionsMax: 1 } });
  t.after(async () => {
    await service.stop();
    stopActor(system);
  });
  assert.equal(service.full(), undefined);
  const admission = await service.admit({ transactionUid: '1.2.1', references: [{ sopClassUid: '1.2.3', sopInstanceUid: '1.3.1' }] }, 'MODALITY', noChannel);
  assert.ok(admission.admitted);
  assert.equal(service.full(), '1 commitment requests are waiting already');
});

test('a request reusing a Transaction UID keeps its record on disk when the earlier request\'s report is delivered meanwhile', { timeout: 20_000 }, async (t) => {
  const receiver = await startReportReceiver('MODALITY');
  const records = new Map<string, CommitmentRecord>();
  // Look-ups take their time, so that the first report is delivered after the second request's record is written.
  const store: Pick<ReplicaStore, 'putCommitment' | 'deleteCommitment' | 'listCommitments' | 'getEntries'> = {
    putCommitment: async (record) => void records.set(record.transactionUid, record),
    deleteCommitment: async (transactionUid) => void records.delete(transactionUid),
    listCommitments: async () => [...records.values()],
    getEntries: async (uids) => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      return uids.map(() => undefined);
    },
  };
  const system = startActorSystem('commitment-reuse');
  const service = startCommitments({
    store: store as ReplicaStore,
    clock: systemClock,
    log: silentLogger,
    parent: system,
    aeTitle: 'PACSMESH',
    resolveAe: () => ({ host: '127.0.0.1', port: receiver.port }),
    config: { checkWaitMs: 0 },
  });
  t.after(async () => {
    await service.stop();
    stopActor(system);
    await receiver.close();
  });
  const request = { transactionUid: '1.2.77', references: [{ sopClassUid: '1.2.840.10008.5.1.4.1.1.2', sopInstanceUid: '1.3.77.1' }] };
  const first = await service.admit(request, 'MODALITY', noChannel);
  assert.ok(first.admitted);
  first.begin();
  // The modality asks again under the same Transaction UID (it gave up waiting): its record is kept, and the
  // N-ACTION-RSP goes out; the first report is delivered before the session calls begin().
  const second = await service.admit(request, 'MODALITY', noChannel);
  assert.ok(second.admitted);
  assert.ok(records.has(request.transactionUid));
  await receiver.waitFor(1, 5_000);
  await waitFor('the first report counted', () => service.stats().reportsDelivered === 1, 5_000);
  second.begin();
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.ok(records.has(request.transactionUid), 'the second request\'s record, promised by its N-ACTION-RSP, was deleted with the first one\'s: a restart would not deliver it');
});

test('owed reports LevelDB cannot read at start (a damaged table) mark the catalog, which the next start rebuilds; the service runs on without them (hunt 172)', async (t) => {
  const reasons: string[] = [];
  const corruption = Object.assign(new Error('Corruption: corrupted compressed block contents'), { code: 'LEVEL_CORRUPTION' });
  const store = { ...slowStore(0), listCommitments: () => Promise.reject(corruption), reportCatalogDamage: (reason: string) => void reasons.push(reason) } as ReplicaStore;
  const system = startActorSystem('commitment-damaged');
  const service = startCommitments({ store, clock: systemClock, log: silentLogger, parent: system, aeTitle: 'PACSMESH', resolveAe: () => undefined, config: { checkWaitMs: 60_000 } });
  t.after(async () => {
    await service.stop();
    stopActor(system);
  });
  // Unmarked, the reports were dropped with an error line and the damaged table stayed for the next read or compaction.
  await waitFor('the damage reported', () => reasons.length > 0);
  assert.deepEqual(reasons, ['commitment load: Corruption: corrupted compressed block contents']);
  assert.equal((await service.admit({ transactionUid: '1.2.1', references: [{ sopClassUid: '1.2.3', sopInstanceUid: '1.3.1' }] }, 'MODALITY', noChannel)).admitted, true);
});

test('a Transaction UID of another AE\'s request still waiting is refused (0x0110), not taken in its place: the first report is still sent, and no record is left behind (hunt 194)', { timeout: 20_000 }, async (t) => {
  const receiver = await startReportReceiver('MODALITY');
  const store = slowStore(0);
  const system = startActorSystem('commitment-taken');
  const service = startCommitments({
    store,
    clock: systemClock,
    log: silentLogger,
    parent: system,
    aeTitle: 'PACSMESH',
    resolveAe: (aeTitle) => (aeTitle === 'MODALITY' ? { host: '127.0.0.1', port: receiver.port } : undefined),
    config: { checkWaitMs: 300 },
  });
  t.after(async () => {
    await service.stop();
    stopActor(system);
    await receiver.close();
  });
  const request = { transactionUid: '1.2.78', references: [{ sopClassUid: '1.2.840.10008.5.1.4.1.1.2', sopInstanceUid: '1.3.78.1' }] };
  const first = await service.admit(request, 'MODALITY', noChannel);
  assert.ok(first.admitted);
  first.begin();
  await waitFor('the first request pending', () => service.stats().pending === 1);
  const other = await service.admit(request, 'OTHER', noChannel);
  assert.equal(other.admitted, false, 'taken in place of the first request, whose report was then never sent');
  assert.ok(!other.admitted && other.status === Status.ProcessingFailure && /another AE/.test(other.errorComment ?? ''));
  await receiver.waitFor(1, 5_000);
  await waitFor('the delivered record deleted', async () => (await store.listCommitments()).length === 0, 5_000);
  // The other AE with a Transaction UID of its own is served.
  const again = await service.admit({ ...request, transactionUid: '1.2.79' }, 'OTHER', noChannel);
  assert.ok(again.admitted);
});
