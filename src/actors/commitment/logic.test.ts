import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Status } from '../../codec/dimse.ts';
import { parseDatasetTree } from '../../codec/dataset/tree.ts';
import { encodeDataset, type WritableElement } from '../../codec/dataset/writer.ts';
import { TransferSyntax } from '../../codec/dicom-types.ts';
import { Tags } from '../../codec/dictionary.ts';
import { admissionRefusal, commitmentReport, commitmentStats, defaultCommitmentConfig, initCommitments, readCommitmentRequest, stepCommitments, type CommitmentState } from './logic.ts';
import { FailureReason, StorageCommitment, type CommitmentEffect, type CommitmentInput, type CommitmentRecord } from './messages.ts';
import { runSteps } from '../runtime/run-steps.ts';

const ct = '1.2.840.10008.5.1.4.1.1.2';
const mr = '1.2.840.10008.5.1.4.1.1.4';
const config = { ...defaultCommitmentConfig, checkWaitMs: 3_000, checkIntervalMs: 1_000, checkIntervalMaxMs: 8_000, retryDelaysMs: [5_000, 60_000], reportLifetimeMs: 600_000, transactionsMax: 2, referencesMax: 5 };

function record(transactionUid: string, uids: string[], deliverVia: CommitmentRecord['deliverVia'] = 'directory'): CommitmentRecord {
  return { transactionUid, requestorAeTitle: 'MODALITY', references: uids.map((sopInstanceUid) => ({ sopClassUid: ct, sopInstanceUid })), receivedAtMs: 0, deliverVia };
}

const run = (state: CommitmentState, ...inputs: CommitmentInput[]) => runSteps(stepCommitments, state, inputs);

const deliveries = (effects: CommitmentEffect[]) => effects.filter((e): e is Extract<CommitmentEffect, { type: 'deliver' }> => e.type === 'deliver');

test('instances this site holds are committed at once, and the delivered report ends the transaction', () => {
  let { state, effects } = run(initCommitments(config), { type: 'accepted', record: record('9.1', ['1.1', '1.2']), nowMs: 0 });
  assert.deepEqual(effects, [{ type: 'check', transactionUid: '9.1', generation: 1, sopInstanceUids: ['1.1', '1.2'] }]);
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.1', generation: 1, found: new Map([['1.1', ct], ['1.2', ct]]), nowMs: 10 }));
  assert.equal(deliveries(effects).length, 1);
  assert.deepEqual(deliveries(effects)[0]!.outcome, { committed: [{ sopClassUid: ct, sopInstanceUid: '1.1' }, { sopClassUid: ct, sopInstanceUid: '1.2' }], failed: [] });
  ({ state, effects } = run(state, { type: 'tick', nowMs: 5_000 }));
  assert.deepEqual(effects, [], 'nothing more while the delivery is out');
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.1', generation: 1, outcome: 'delivered', nowMs: 20 }));
  assert.deepEqual(effects.map((e) => e.type), ['forget', 'report']);
  assert.deepEqual(commitmentStats(state), { pending: 0, reportsDelivered: 1, reportsDropped: 0, instancesCommitted: 2, instancesFailed: 0 });
});

test('an instance not here yet is looked for again until checkWaitMs; one that never comes fails with No such object instance', () => {
  let { state, effects } = run(initCommitments(config), { type: 'accepted', record: record('9.2', ['1.1', '1.2', '1.3']), nowMs: 0 });
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.2', generation: 1, found: new Map([['1.1', ct]]), nowMs: 5 }));
  assert.deepEqual(effects, [], 'waits for the others');
  ({ state, effects } = run(state, { type: 'tick', nowMs: 500 }));
  assert.deepEqual(effects, [], 'not before checkIntervalMs');
  ({ state, effects } = run(state, { type: 'tick', nowMs: 1_005 }));
  assert.deepEqual(effects, [{ type: 'check', transactionUid: '9.2', generation: 1, sopInstanceUids: ['1.2', '1.3'] }], 'only the missing ones');
  // 1.2 arrived meanwhile (another site's copy), under another class than the requestor named.
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.2', generation: 1, found: new Map([['1.2', mr]]), nowMs: 1_010 }));
  assert.deepEqual(effects, []);
  ({ state, effects } = run(state, { type: 'tick', nowMs: 3_010 }, { type: 'checked', transactionUid: '9.2', generation: 1, found: new Map(), nowMs: 3_011 }));
  const [delivery] = deliveries(effects);
  assert.ok(delivery, 'past checkWaitMs the report goes out');
  assert.deepEqual(delivery.outcome.committed.map((r) => r.sopInstanceUid), ['1.1']);
  assert.deepEqual(delivery.outcome.failed, [
    { sopClassUid: ct, sopInstanceUid: '1.2', failureReason: FailureReason.ClassInstanceConflict },
    { sopClassUid: ct, sopInstanceUid: '1.3', failureReason: FailureReason.NoSuchObjectInstance },
  ]);
  assert.equal(commitmentStats(state).instancesFailed, 2);
});

test('an instance held here below the write quorum waits like a missing one: committed once at quorum, else failed 0x0213 (helper 90)', () => {
  let { state, effects } = run(initCommitments(config), { type: 'accepted', record: record('9.9', ['1.1', '1.2', '1.3']), nowMs: 0 });
  const held = new Map([['1.1', ct], ['1.2', ct], ['1.3', mr]]);
  // 1.3 is held under another class: a conflict whatever its copies.
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.9', generation: 1, found: held, belowQuorum: new Set(['1.1', '1.2', '1.3']), nowMs: 5 }));
  assert.deepEqual(effects, [], 'no report while copies are on their way');
  ({ state, effects } = run(state, { type: 'tick', nowMs: 1_005 }));
  assert.deepEqual(effects, [{ type: 'check', transactionUid: '9.9', generation: 1, sopInstanceUids: ['1.1', '1.2'] }]);
  // 1.1 reached another site meanwhile; 1.2 never does.
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.9', generation: 1, found: held, belowQuorum: new Set(['1.2']), nowMs: 1_010 }));
  assert.deepEqual(effects, []);
  ({ state, effects } = run(state, { type: 'tick', nowMs: 3_010 }, { type: 'checked', transactionUid: '9.9', generation: 1, found: held, belowQuorum: new Set(['1.2']), nowMs: 3_011 }));
  const [delivery] = deliveries(effects);
  assert.ok(delivery);
  assert.deepEqual(delivery.outcome.committed.map((r) => r.sopInstanceUid), ['1.1']);
  assert.deepEqual(delivery.outcome.failed, [
    { sopClassUid: ct, sopInstanceUid: '1.3', failureReason: FailureReason.ClassInstanceConflict },
    { sopClassUid: ct, sopInstanceUid: '1.2', failureReason: FailureReason.ResourceLimitation },
  ]);
});

test('a failed delivery is retried on the configured delays, and dropped past the report lifetime', () => {
  let { state, effects } = run(initCommitments(config), { type: 'accepted', record: record('9.3', ['1.1']), nowMs: 0 }, { type: 'checked', transactionUid: '9.3', generation: 1, found: new Map([['1.1', ct]]), nowMs: 0 });
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.3', generation: 1, outcome: 'failed', error: 'ECONNREFUSED', nowMs: 100 }));
  assert.equal(effects[0]?.type, 'report');
  ({ state, effects } = run(state, { type: 'tick', nowMs: 5_099 }));
  assert.equal(deliveries(effects).length, 0);
  ({ state, effects } = run(state, { type: 'tick', nowMs: 5_100 }));
  assert.equal(deliveries(effects).length, 1, 'second attempt after 5 s');
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.3', generation: 1, outcome: 'failed', nowMs: 5_200 }, { type: 'tick', nowMs: 65_199 }));
  assert.equal(deliveries(effects).length, 0);
  ({ state, effects } = run(state, { type: 'tick', nowMs: 65_200 }));
  assert.equal(deliveries(effects).length, 1, 'third attempt after 60 s');
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.3', generation: 1, outcome: 'failed', nowMs: 125_200 }, { type: 'tick', nowMs: 185_200 }));
  assert.equal(deliveries(effects).length, 1, 'the last delay repeats');
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.3', generation: 1, outcome: 'failed', nowMs: 600_000 }));
  assert.deepEqual(effects.map((e) => e.type), ['forget', 'report']);
  assert.equal(commitmentStats(state).reportsDropped, 1);
  assert.equal(commitmentStats(state).pending, 0);
});

test('a report that can only go back on its ended association is dropped at once', () => {
  let { state } = run(initCommitments(config), { type: 'accepted', record: record('9.4', ['1.1'], 'association'), nowMs: 0 }, { type: 'checked', transactionUid: '9.4', generation: 1, found: new Map(), nowMs: 4_000 });
  const step = stepCommitments(state, { type: 'deliveryEnded', transactionUid: '9.4', generation: 1, outcome: 'unreachable', error: 'the association ended', nowMs: 4_001 });
  state = step.state;
  assert.deepEqual(step.effects.map((e) => e.type), ['forget', 'report']);
  assert.equal(commitmentStats(state).pending, 0);
});

test('transactions and their references are bounded (a repeated Transaction UID replaces its own), and records from disk are checked again', () => {
  const { state } = run(initCommitments(config), { type: 'accepted', record: record('9.5', ['1.1']), nowMs: 0 }, { type: 'accepted', record: record('9.6', ['1.1']), nowMs: 0 });
  assert.equal(admissionRefusal(state, '9.7', 1), '2 commitment requests are waiting already');
  assert.equal(admissionRefusal(state, '9.5', 4), undefined, 'replaces its own one reference: 5 in all');
  assert.equal(admissionRefusal(state, '9.5', 5), 'over 5 instances in commitment requests waiting');
  assert.equal(admissionRefusal(initCommitments(config), '9.7', 6), 'over 5 instances in commitment requests waiting');
  const loaded = run(initCommitments(config), { type: 'loaded', records: [record('9.5', ['1.1']), record('9.6', ['1.2'])], nowMs: 0 });
  assert.deepEqual(loaded.effects.map((e) => e.type), ['check', 'check']);
});

const requestElements = (items: WritableElement[][], transactionUid = '1.2.3.4'): WritableElement[] => [
  { tag: Tags.TransactionUID, vr: 'UI', value: transactionUid },
  { tag: Tags.ReferencedSOPSequence, vr: 'SQ', value: undefined, items },
];
const item = (sopClassUid: string, sopInstanceUid: string): WritableElement[] => [
  { tag: Tags.ReferencedSOPClassUID, vr: 'UI', value: sopClassUid },
  { tag: Tags.ReferencedSOPInstanceUID, vr: 'UI', value: sopInstanceUid },
];
const read = (elements: WritableElement[]) => readCommitmentRequest(parseDatasetTree(encodeDataset(elements, TransferSyntax.ImplicitVrLittleEndian), TransferSyntax.ImplicitVrLittleEndian));

test('the N-ACTION data set: its references, once each; a missing or invalid part is refused 0x0115', () => {
  assert.deepEqual(read(requestElements([item(ct, '1.1'), item(ct, '1.2'), item(ct, '1.1')])), {
    transactionUid: '1.2.3.4',
    references: [{ sopClassUid: ct, sopInstanceUid: '1.1' }, { sopClassUid: ct, sopInstanceUid: '1.2' }],
  });
  assert.deepEqual(read(requestElements([item(ct, '1.1')], '')), { status: Status.InvalidArgumentValue, errorComment: 'no Transaction UID' });
  assert.deepEqual(read(requestElements([item(ct, '1.1')], 'x.1')), { status: Status.InvalidArgumentValue, errorComment: 'Transaction UID is not a valid UID' });
  assert.deepEqual(read(requestElements([])), { status: Status.InvalidArgumentValue, errorComment: 'no Referenced SOP Sequence item' });
  assert.deepEqual(read([{ tag: Tags.TransactionUID, vr: 'UI', value: '1.2' }]), { status: Status.InvalidArgumentValue, errorComment: 'no Referenced SOP Sequence item' });
  assert.deepEqual(read(requestElements([item(ct, '1.1'), item(ct, '1..2')])), { status: Status.InvalidArgumentValue, errorComment: 'Referenced SOP item 2: missing or invalid UID' });
  // Of another VR than UI (helper 56: a Transaction UID sent as US 7 was taken as the UID "7").
  const explicit = (elements: WritableElement[]) => readCommitmentRequest(parseDatasetTree(encodeDataset(elements, TransferSyntax.ExplicitVrLittleEndian), TransferSyntax.ExplicitVrLittleEndian));
  const [transaction, sequence] = requestElements([item(ct, '1.1')]);
  assert.deepEqual(explicit([{ tag: Tags.TransactionUID, vr: 'US', value: '7' }, sequence!]), { status: Status.InvalidArgumentValue, errorComment: 'Transaction UID is not a valid UID' });
  const loItem: WritableElement[] = [{ tag: Tags.ReferencedSOPClassUID, vr: 'LO', value: ct }, { tag: Tags.ReferencedSOPInstanceUID, vr: 'UI', value: '1.1' }];
  assert.deepEqual(explicit([transaction!, { ...sequence!, items: [loItem] }]), { status: Status.InvalidArgumentValue, errorComment: 'Referenced SOP item 1: missing or invalid UID' });
});

test('the N-EVENT-REPORT data set: event type 1 when all are committed, 2 with the failures and their reasons', () => {
  const allCommitted = commitmentReport('1.2.3', { committed: [{ sopClassUid: ct, sopInstanceUid: '1.1' }], failed: [] }, 'PACSMESH');
  assert.equal(allCommitted.eventTypeId, StorageCommitment.eventTypeAllCommitted);
  assert.equal(allCommitted.elements.some((e) => e.tag === Tags.FailedSOPSequence), false);
  const withFailures = commitmentReport('1.2.3', { committed: [], failed: [{ sopClassUid: ct, sopInstanceUid: '1.2', failureReason: FailureReason.NoSuchObjectInstance }] }, 'PACSMESH');
  assert.equal(withFailures.eventTypeId, StorageCommitment.eventTypeFailuresExist);
  const tree = parseDatasetTree(encodeDataset(withFailures.elements, TransferSyntax.ExplicitVrLittleEndian), TransferSyntax.ExplicitVrLittleEndian);
  assert.deepEqual(tree.map((e) => e.tag), [Tags.RetrieveAETitle, Tags.TransactionUID, Tags.FailedSOPSequence]);
  assert.deepEqual(tree[2]!.items![0]!.map((e) => e.value), [ct, '1.2', String(0x0112)]);
});

test('a request reusing a pending Transaction UID replaces it: the first one\'s late results close nothing (helper 56)', () => {
  let { state, effects } = run(initCommitments(config), { type: 'accepted', record: record('9.8', ['1.1']), nowMs: 0 }, { type: 'checked', transactionUid: '9.8', generation: 1, found: new Map([['1.1', ct]]), nowMs: 1 });
  assert.equal(deliveries(effects).length, 1, 'the first report is on its way');
  ({ state, effects } = run(state, { type: 'accepted', record: record('9.8', ['1.1', '1.2']), nowMs: 2 }));
  assert.deepEqual(effects, [{ type: 'check', transactionUid: '9.8', generation: 2, sopInstanceUids: ['1.1', '1.2'] }]);
  // The first delivery ends now: it neither ends the second transaction nor deletes its record.
  ({ state, effects } = run(state, { type: 'deliveryEnded', transactionUid: '9.8', generation: 1, outcome: 'delivered', nowMs: 3 }, { type: 'checked', transactionUid: '9.8', generation: 1, found: new Map(), nowMs: 3 }));
  assert.deepEqual(effects.map((e) => e.type), ['report'], 'a log line, no forget');
  assert.equal(commitmentStats(state).pending, 1);
  ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.8', generation: 2, found: new Map([['1.1', ct], ['1.2', ct]]), nowMs: 4 }));
  assert.deepEqual(deliveries(effects).map((d) => [d.generation, d.outcome.committed.length]), [[2, 2]], 'the second request gets its own report');
});

test('instances still missing are looked up again less and less often, and once more at the end of the wait', () => {
  let { state } = run(initCommitments({ ...config, checkWaitMs: 30_000 }), { type: 'accepted', record: record('9.9', ['1.1']), nowMs: 0 }, { type: 'checked', transactionUid: '9.9', generation: 1, found: new Map(), nowMs: 0 });
  const checksAt = [0];
  for (let nowMs = 100; nowMs <= 31_000; nowMs += 100) {
    let effects: CommitmentEffect[];
    ({ state, effects } = run(state, { type: 'tick', nowMs }));
    if (!effects.some((e) => e.type === 'check')) continue;
    checksAt.push(nowMs);
    ({ state, effects } = run(state, { type: 'checked', transactionUid: '9.9', generation: 1, found: new Map(), nowMs }));
    if (deliveries(effects).length > 0) break;
  }
  assert.deepEqual(checksAt, [0, 1_000, 3_000, 7_000, 15_000, 23_000, 30_000]);
});

test('requests admitted but not stepped in yet count against the bounds', () => {
  const state = run(initCommitments(config), { type: 'accepted', record: record('9.10', ['1.1']), nowMs: 0 }).state;
  assert.equal(admissionRefusal(state, '9.11', 2, { transactions: 0, references: 2 }), undefined, '1 + 2 + 2 of 5');
  assert.equal(admissionRefusal(state, '9.11', 2, { transactions: 0, references: 3 }), 'over 5 instances in commitment requests waiting');
  assert.equal(admissionRefusal(state, '9.11', 1, { transactions: 1, references: 0 }), '2 commitment requests are waiting already');
});

test('the delivered report of a request since replaced is counted and logged, and closes nothing', () => {
  let { state } = run(initCommitments(config), { type: 'accepted', record: record('9.12', ['1.1']), nowMs: 0 }, { type: 'checked', transactionUid: '9.12', generation: 1, found: new Map([['1.1', ct]]), nowMs: 0 });
  ({ state } = run(state, { type: 'accepted', record: record('9.12', ['1.1']), nowMs: 1 }));
  const step = stepCommitments(state, { type: 'deliveryEnded', transactionUid: '9.12', generation: 1, outcome: 'delivered', nowMs: 2 });
  assert.deepEqual(step.effects.map((e) => e.type), ['report']);
  assert.deepEqual(commitmentStats(step.state), { ...commitmentStats(state), reportsDelivered: 1 });
  assert.equal(commitmentStats(step.state).pending, 1);
});
