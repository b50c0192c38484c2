/**
 * The commitment reducer: pure, driven by ticks and by the results of the look-ups and deliveries it
 * asks for. An instance counts as committed once this site holds it (its catalog entry exists only
 * after the synced commit, and custody copies it to every site); one not found is looked for again for
 * `checkWaitMs`, since a modality may ask one site about instances it stored at another. Then the report
 * goes out, and is retried until delivered or past its lifetime. Also here: reading the N-ACTION's data
 * set and writing the N-EVENT-REPORT's, both pure.
 */
import { Status } from '../../codec/dimse.ts';
import type { TreeElement } from '../../codec/dataset/tree.ts';
import { findElement } from '../../codec/dataset/tree.ts';
import type { WritableElement } from '../../codec/dataset/writer.ts';
import { Tags } from '../../codec/dictionary.ts';
import { isAcceptableUid } from '../../codec/uid.ts';
import {
  FailureReason,
  StorageCommitment,
  type CommitmentConfig,
  type CommitmentEffect,
  type CommitmentInput,
  type CommitmentOutcome,
  type CommitmentRecord,
  type CommitmentReference,
  type CommitmentStats,
  type FailedReference,
} from './messages.ts';

export const defaultCommitmentConfig: CommitmentConfig = {
  checkWaitMs: 30_000,
  checkIntervalMs: 1_000,
  checkIntervalMaxMs: 8_000,
  retryDelaysMs: [5_000, 30_000, 120_000, 600_000, 900_000],
  reportLifetimeMs: 24 * 3600_000,
  transactionsMax: 1_000,
  referencesMax: 200_000,
};

/** References one request may hold: a large study's instances, with room to spare. */
export const referencesPerRequestMax = 20_000;

interface Transaction {
  record: CommitmentRecord;
  /** This admission's number (see CommitmentInput). */
  generation: number;
  checksDone: number;
  phase: 'checking' | 'delivering';
  /** A check or delivery is out; its result comes back as an input. */
  inFlight: boolean;
  nextAtMs: number;
  checkUntilMs: number;
  committed: CommitmentReference[];
  failed: FailedReference[];
  /** SOP Instance UIDs not found yet -> the class the requestor named. */
  missing: Map<string, string>;
  /** Of `missing`, those held here but below the write quorum at the last look-up (their failure, at the end, says so). */
  belowQuorum: ReadonlySet<string>;
  attempts: number;
}

export interface CommitmentState {
  readonly config: CommitmentConfig;
  transactions: Map<string, Transaction>;
  nextGeneration: number;
  stats: { -readonly [K in Exclude<keyof CommitmentStats, 'pending'>]: CommitmentStats[K] };
}

export interface CommitmentStep {
  state: CommitmentState;
  effects: CommitmentEffect[];
}

export function initCommitments(config: CommitmentConfig = defaultCommitmentConfig): CommitmentState {
  return { config, transactions: new Map(), nextGeneration: 1, stats: { reportsDelivered: 0, reportsDropped: 0, instancesCommitted: 0, instancesFailed: 0 } };
}

export function commitmentStats(state: CommitmentState): CommitmentStats {
  return { pending: state.transactions.size, ...state.stats };
}

/**
 * Why one more transaction of `referenceCount` references does not fit, or undefined when it does (a
 * repeated Transaction UID replaces its own). `admitting`: requests admitted but not yet stepped in.
 */
export function admissionRefusal(
  state: CommitmentState,
  transactionUid: string,
  referenceCount: number,
  admitting: { transactions: number; references: number } = { transactions: 0, references: 0 },
): string | undefined {
  const replaced = state.transactions.get(transactionUid);
  if (!replaced && state.transactions.size + admitting.transactions >= state.config.transactionsMax) return `${state.config.transactionsMax} commitment requests are waiting already`;
  let references = admitting.references + referenceCount - (replaced?.record.references.length ?? 0);
  for (const t of state.transactions.values()) references += t.record.references.length;
  if (references > state.config.referencesMax) return `over ${state.config.referencesMax} instances in commitment requests waiting`;
  return undefined;
}

/**
 * Why a request reusing the Transaction UID of another requestor's pending request is refused: taken in its
 * place, the first requestor's report was never sent, and its record, left on disk, was reported after a
 * restart. The same requestor asking again (it gave up waiting) replaces its own request.
 */
export function transactionUidTaken(state: CommitmentState, transactionUid: string, requestorAeTitle: string): string | undefined {
  const pending = state.transactions.get(transactionUid);
  if (pending === undefined || pending.record.requestorAeTitle === requestorAeTitle) return undefined;
  return `Transaction UID ${transactionUid} is that of a request of another AE still waiting for its report: use a new one`;
}

export function stepCommitments(state: CommitmentState, input: CommitmentInput): CommitmentStep {
  const effects: CommitmentEffect[] = [];
  const transactions = new Map(state.transactions);
  const next: CommitmentState = { ...state, transactions, stats: { ...state.stats } };
  const { config } = state;

  const admit = (record: CommitmentRecord, nowMs: number) => {
    const missing = new Map(record.references.map((r) => [r.sopInstanceUid, r.sopClassUid]));
    const generation = next.nextGeneration++;
    transactions.set(record.transactionUid, {
      record,
      generation,
      checksDone: 0,
      phase: 'checking',
      inFlight: true,
      nextAtMs: nowMs,
      checkUntilMs: nowMs + config.checkWaitMs,
      committed: [],
      failed: [],
      missing,
      belowQuorum: new Set(),
      attempts: 0,
    });
    effects.push({ type: 'check', transactionUid: record.transactionUid, generation, sopInstanceUids: [...missing.keys()] });
  };
  /** Changes the transaction (undefined ends it); a result of an admission since replaced changes nothing. */
  const update = (transactionUid: string, generation: number, change: (t: Transaction) => Transaction | undefined) => {
    const current = transactions.get(transactionUid);
    if (!current || current.generation !== generation) return;
    const changed = change({ ...current });
    if (changed) transactions.set(transactionUid, changed);
    else transactions.delete(transactionUid);
  };
  const deliver = (t: Transaction): Transaction => {
    effects.push({ type: 'deliver', record: t.record, generation: t.generation, outcome: { committed: t.committed, failed: t.failed } });
    return { ...t, phase: 'delivering', inFlight: true, attempts: t.attempts + 1 };
  };
  /**
   * 'lifetime': a report owed to a modality in the AE directory that never took it (an error). 'unreachable':
   * one for a modality outside it that did not wait on its association (a configuration matter, logged once
   * a minute per modality however many requests it sends).
   */
  const drop = (t: Transaction, why: string, kind: 'lifetime' | 'unreachable', nowMs: number): undefined => {
    next.stats.reportsDropped++;
    effects.push({ type: 'forget', record: t.record });
    effects.push({
      type: 'report',
      level: kind === 'lifetime' ? 'error' : 'warn',
      message: 'storage commitment report dropped',
      fields: { transactionUid: t.record.transactionUid, requestor: t.record.requestorAeTitle, why, attempts: t.attempts, ageMs: nowMs - t.record.receivedAtMs },
      ...(kind === 'unreachable' ? { repeatKey: `unreachable:${t.record.requestorAeTitle}` } : {}),
    });
    return undefined;
  };
  /** The failed instances a log line names (the report itself holds them all). */
  const failedNamedMax = 10;

  switch (input.type) {
    case 'accepted':
      admit(input.record, input.nowMs);
      break;
    case 'loaded':
      for (const record of input.records) if (!transactions.has(record.transactionUid)) admit(record, input.nowMs);
      break;
    case 'checked':
      update(input.transactionUid, input.generation, (t) => {
        if (t.phase !== 'checking') return t;
        const missing = new Map(t.missing);
        const committed = [...t.committed];
        const failed = [...t.failed];
        const belowQuorum = new Set<string>();
        for (const [sopInstanceUid, sopClassUid] of t.missing) {
          const storedClass = input.found.get(sopInstanceUid);
          if (storedClass === undefined) continue;
          // Held here alone while the write quorum asks for more sites: a modality told "committed" deletes
          // its copy, and the one site holding it is then all there is (helper 90: committed after 0xA700).
          if (storedClass === sopClassUid && input.belowQuorum?.has(sopInstanceUid) === true) {
            belowQuorum.add(sopInstanceUid);
            continue;
          }
          missing.delete(sopInstanceUid);
          // PS3.4 J.3.2.1.1: an instance held under another class is not the one the requestor means.
          if (storedClass === sopClassUid) committed.push({ sopClassUid, sopInstanceUid });
          else failed.push({ sopClassUid, sopInstanceUid, failureReason: FailureReason.ClassInstanceConflict });
        }
        // Looked up again less and less often: a large request for instances that never come costs a few look-ups, not thirty.
        const checksDone = t.checksDone + 1;
        const intervalMs = Math.min(config.checkIntervalMs * 2 ** (checksDone - 1), config.checkIntervalMaxMs);
        const checked = { ...t, missing, belowQuorum, committed, failed, checksDone, inFlight: false, nextAtMs: Math.min(input.nowMs + intervalMs, t.checkUntilMs) };
        if (missing.size > 0 && input.nowMs < t.checkUntilMs) return checked;
        for (const [sopInstanceUid, sopClassUid] of missing) {
          failed.push({ sopClassUid, sopInstanceUid, failureReason: belowQuorum.has(sopInstanceUid) ? FailureReason.ResourceLimitation : FailureReason.NoSuchObjectInstance });
        }
        next.stats.instancesCommitted += committed.length;
        next.stats.instancesFailed += failed.length;
        return deliver({ ...checked, missing: new Map() });
      });
      break;
    case 'checkFailed':
      update(input.transactionUid, input.generation, (t) => {
        effects.push({ type: 'report', level: 'warn', message: 'storage commitment: looking up instances failed; trying again', fields: { transactionUid: t.record.transactionUid, error: input.error } });
        return { ...t, inFlight: false, nextAtMs: input.nowMs + config.checkIntervalMs, checkUntilMs: Math.max(t.checkUntilMs, input.nowMs + config.checkIntervalMs) };
      });
      break;
    case 'deliveryEnded':
      if (input.outcome === 'delivered' && transactions.get(input.transactionUid)?.generation !== input.generation) {
        // The report of a request since replaced by one reusing its Transaction UID: delivered all the same.
        next.stats.reportsDelivered++;
        effects.push({ type: 'report', level: 'info', message: 'storage commitment report delivered (its Transaction UID was asked again since)', fields: { transactionUid: input.transactionUid } });
        break;
      }
      update(input.transactionUid, input.generation, (t) => {
        if (input.outcome === 'delivered') {
          next.stats.reportsDelivered++;
          effects.push({ type: 'forget', record: t.record });
          effects.push({
            type: 'report',
            level: 'info',
            message: 'storage commitment report delivered',
            fields: {
              transactionUid: t.record.transactionUid,
              requestor: t.record.requestorAeTitle,
              committed: t.committed.length,
              failed: t.failed.length,
              ...(t.failed.length > 0 ? { failedInstances: t.failed.slice(0, failedNamedMax).map((f) => `${f.sopInstanceUid} (0x${f.failureReason.toString(16).padStart(4, '0')})`) } : {}),
              via: t.record.deliverVia,
            },
          });
          return undefined;
        }
        if (input.outcome === 'unreachable') return drop(t, input.error ?? 'no way to reach the requestor', 'unreachable', input.nowMs);
        if (input.nowMs - t.record.receivedAtMs >= config.reportLifetimeMs) return drop(t, `not delivered within ${config.reportLifetimeMs} ms: ${input.error ?? ''}`, 'lifetime', input.nowMs);
        const delayMs = config.retryDelaysMs[Math.min(t.attempts - 1, config.retryDelaysMs.length - 1)] ?? config.checkIntervalMs;
        effects.push({
          type: 'report',
          level: 'warn',
          message: 'storage commitment report not delivered; trying again',
          fields: { transactionUid: t.record.transactionUid, requestor: t.record.requestorAeTitle, attempt: t.attempts, retryInMs: delayMs, error: input.error },
        });
        return { ...t, inFlight: false, nextAtMs: input.nowMs + delayMs };
      });
      break;
    case 'tick':
      for (const [transactionUid, t] of state.transactions) {
        if (t.inFlight || input.nowMs < t.nextAtMs) continue;
        update(transactionUid, t.generation, (current) => {
          if (current.phase === 'delivering') return deliver(current);
          effects.push({ type: 'check', transactionUid, generation: current.generation, sopInstanceUids: [...current.missing.keys()] });
          return { ...current, inFlight: true };
        });
      }
      break;
    default: {
      const unreachable: never = input;
      throw new Error(`unhandled commitment input ${JSON.stringify(unreachable)}`);
    }
  }
  return { state: next, effects };
}

/** An N-ACTION data set that cannot be taken: the N-ACTION-RSP status and its Error Comment. */
export interface CommitmentRequestRefusal {
  status: number;
  errorComment: string;
}

/**
 * The Transaction UID and the references of an N-ACTION's data set (PS3.4 J.3.2.1.1), or why it is
 * refused. A reference named twice counts once.
 */
export function readCommitmentRequest(elements: readonly TreeElement[]): { transactionUid: string; references: CommitmentReference[] } | CommitmentRequestRefusal {
  const invalid = (errorComment: string): CommitmentRequestRefusal => ({ status: Status.InvalidArgumentValue, errorComment });
  const transactionUid = uidValue(findElement(elements, Tags.TransactionUID));
  if (transactionUid === '') return invalid('no Transaction UID');
  if (transactionUid === undefined || !isAcceptableUid(transactionUid)) return invalid('Transaction UID is not a valid UID');
  const sequence = findElement(elements, Tags.ReferencedSOPSequence);
  if (!sequence?.items || sequence.items.length === 0) return invalid('no Referenced SOP Sequence item');
  if (sequence.items.length > referencesPerRequestMax) {
    return { status: Status.ResourceLimitation, errorComment: `over ${referencesPerRequestMax} references in one request` };
  }
  const references = new Map<string, CommitmentReference>();
  for (const [index, item] of sequence.items.entries()) {
    const sopClassUid = uidValue(findElement(item, Tags.ReferencedSOPClassUID));
    const sopInstanceUid = uidValue(findElement(item, Tags.ReferencedSOPInstanceUID));
    if (sopClassUid === undefined || sopInstanceUid === undefined || !isAcceptableUid(sopClassUid) || !isAcceptableUid(sopInstanceUid)) {
      return invalid(`Referenced SOP item ${index + 1}: missing or invalid UID`);
    }
    references.set(sopInstanceUid, { sopClassUid, sopInstanceUid });
  }
  return { transactionUid, references: [...references.values()] };
}

/**
 * A UID element's value: '' when absent, undefined when not of VR UI (a number sent as US would pass for a
 * UID). Leading zeros in a component are taken, as C-STORE takes them (real devices send such UIDs).
 */
function uidValue(element: TreeElement | undefined): string | undefined {
  if (element === undefined) return '';
  return element.vr === 'UI' ? (element.value ?? '') : undefined;
}

/** The N-EVENT-REPORT's Event Type ID and data set elements (PS3.4 J.3.3.1). */
export function commitmentReport(transactionUid: string, outcome: CommitmentOutcome, retrieveAeTitle: string): { eventTypeId: number; elements: WritableElement[] } {
  const referenceItem = (r: CommitmentReference): WritableElement[] => [
    { tag: Tags.ReferencedSOPClassUID, vr: 'UI', value: r.sopClassUid },
    { tag: Tags.ReferencedSOPInstanceUID, vr: 'UI', value: r.sopInstanceUid },
  ];
  const elements: WritableElement[] = [
    { tag: Tags.RetrieveAETitle, vr: 'AE', value: retrieveAeTitle },
    { tag: Tags.TransactionUID, vr: 'UI', value: transactionUid },
  ];
  if (outcome.committed.length > 0) elements.push({ tag: Tags.ReferencedSOPSequence, vr: 'SQ', value: undefined, items: outcome.committed.map(referenceItem) });
  if (outcome.failed.length > 0) {
    elements.push({
      tag: Tags.FailedSOPSequence,
      vr: 'SQ',
      value: undefined,
      items: outcome.failed.map((f) => [...referenceItem(f), { tag: Tags.FailureReason, vr: 'US', value: String(f.failureReason) }]),
    });
  }
  return { eventTypeId: outcome.failed.length > 0 ? StorageCommitment.eventTypeFailuresExist : StorageCommitment.eventTypeAllCommitted, elements };
}
