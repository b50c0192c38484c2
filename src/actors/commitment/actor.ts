/**
 * The commitment actor: a thin nact shell around the commitment reducer (logic.ts). It admits the
 * N-ACTIONs associations hand it (keeping a 'directory' record on disk before the N-ACTION-RSP goes out),
 * looks the asked instances up in the catalog, and delivers each report: back on the N-ACTION's own
 * association when the requestor is not in the AE directory, otherwise over a new association to the
 * requestor (PS3.4 J.3.3; IHE RAD-10's asynchronous mode), with this archive in the SCP role.
 */
import { CommandField, Status } from '../../codec/dimse.ts';
import { TransferSyntax } from '../../codec/dicom-types.ts';
import { encodeDataset, type WritableElement } from '../../codec/dataset/writer.ts';
import { DicomClientAssociation } from '../association/client.ts';
import type { MoveDestination } from '../association/services/deps.ts';
import type { Clock, TimerHandle } from '../runtime/clock.ts';
import { createRepeatLimiter, errorText, type Logger } from '../runtime/logger.ts';
import { actorSender, type CrashDecision, type Ref, spawnActor, stopActor } from '../runtime/nact.ts';
import { createTicker, onTickingActorCrash } from '../runtime/ticker.ts';
import type { ReplicaStore } from '../storage/replica-store.ts';
import type { CatalogEntry } from '../storage/catalog-types.ts';
import { isCatalogDamage } from '../storage/catalog.ts';
import { admissionRefusal, transactionUidTaken, commitmentReport, commitmentStats, defaultCommitmentConfig, initCommitments, stepCommitments, type CommitmentState } from './logic.ts';
import {
  StorageCommitment,
  type CommitmentConfig,
  type CommitmentEffect,
  type CommitmentInput,
  type CommitmentOutcome,
  type CommitmentRecord,
  type CommitmentReference,
  type CommitmentStats,
} from './messages.ts';

/** The N-ACTION's association, while it lasts: the way back for a requestor not in the AE directory. */
export interface ReportChannel {
  /** Sends the N-EVENT-REPORT; resolves with the requestor's status, rejects once the association is over. */
  send(eventTypeId: number, elements: WritableElement[]): Promise<number>;
}

/** `reportOnAssociation`: the report goes over the N-ACTION's association (its requestor is not in the AE directory). */
export type Admission = { readonly admitted: true; readonly reportOnAssociation: boolean; begin(): void } | { readonly admitted: false; readonly status: number; readonly errorComment: string };

export interface CommitmentService {
  /**
   * Takes an N-ACTION's request: 'admitted' once its record is safe, then the caller sends the
   * N-ACTION-RSP and calls begin() (so the report cannot overtake that response).
   */
  admit(request: { transactionUid: string; references: readonly CommitmentReference[] }, requestorAeTitle: string, channel: ReportChannel): Promise<Admission>;
  /** Why no request at all would be admitted now (the bounds are reached), so that one need not even be read. */
  full(): string | undefined;
  /** Logs an N-ACTION refused (once a minute per requestor and status: a flood of them is one line). */
  refused(requestorAeTitle: string, status: number, errorComment: string): void;
  stats(): CommitmentStats;
  stop(): Promise<void>;
}

export interface CommitmentServiceInit {
  store: ReplicaStore;
  clock: Clock;
  log: Logger;
  parent: Ref<any>;
  /** This archive's AE title: the calling AE of report associations and the reports' Retrieve AE Title. */
  aeTitle: string;
  /** The AE directory (`--move-dest`): where a requestor listens for its reports. */
  resolveAe(aeTitle: string): MoveDestination | undefined;
  config?: Partial<CommitmentConfig>;
  /**
   * In a mesh: at how many sites (this one included) each of these instances is held with these bytes,
   * and how many the write quorum asks for now. An instance is committed only at that many sites.
   */
  sitesHolding?(entries: readonly CatalogEntry[]): Promise<{ quorum: number; sitesHolding: ReadonlyMap<string, number> }>;
  /** Default 250 ms. */
  tickIntervalMs?: number;
  /** Bound on connecting, negotiating and each answer of a report association. Default 30 s. */
  deliveryTimeoutMs?: number;
  onCrash?: (error: unknown) => CrashDecision | Promise<CrashDecision>;
}

type CommitmentMsg = { readonly type: 'tick' } | { readonly type: 'input'; readonly input: CommitmentInput };

const reportTransferSyntaxes = [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian];
/** How long a stop waits for look-ups and deliveries under way. */
const stopWaitMs = 2_000;

export function startCommitments(init: CommitmentServiceInit): CommitmentService {
  const { store, clock } = init;
  const log = init.log.child({ component: 'commitment' });
  const config: CommitmentConfig = { ...defaultCommitmentConfig, ...init.config };
  const tickIntervalMs = init.tickIntervalMs ?? 250;
  const deliveryTimeoutMs = init.deliveryTimeoutMs ?? 30_000;
  let stopped = false;
  let current: CommitmentState = initCommitments(config);
  /** By record, not Transaction UID: a request reusing a UID must not take the earlier one's way back. */
  const channels = new WeakMap<CommitmentRecord, ReportChannel>();
  const tasks = new Set<Promise<void>>();
  /** A stop aborts the report associations under way, connecting or open (their records stay on disk for the next start). */
  const halt = new AbortController();
  /**
   * Requests admitted, not yet stepped in by the actor: counted by admissions meanwhile (helper 57: 47 of
   * them passed a bound of 10). Each admission ends in its 'accepted' input (the session calls begin()
   * whatever becomes of its response), or, when its record cannot be kept, is not admitted after all.
   */
  const admitting = { transactions: 0, references: 0 };
  const reserve = (references: number, sign: 1 | -1) => {
    admitting.transactions += sign;
    admitting.references += sign * references;
  };
  /**
   * Transaction UIDs of 'directory' requests whose record is (being) written but not yet stepped in: an
   * earlier request under the same UID that ends meanwhile must not delete that record (same key) with its own.
   */
  const recordsAdmitting = new Map<string, number>();
  const recordAdmitting = (transactionUid: string, sign: 1 | -1) => {
    const count = (recordsAdmitting.get(transactionUid) ?? 0) + sign;
    if (count > 0) recordsAdmitting.set(transactionUid, count);
    else recordsAdmitting.delete(transactionUid);
  };

  const send = actorSender(() => ref, () => stopped, log, 'commitment');
  const input = (i: CommitmentInput): void => send({ type: 'input', input: i });
  const run = (task: () => Promise<CommitmentInput>): void => {
    const t = task().then(input, (error: unknown) => log.error('commitment task failed', { error: errorText(error) }));
    tasks.add(t);
    void t.finally(() => tasks.delete(t));
  };

  async function check(transactionUid: string, generation: number, sopInstanceUids: readonly string[]): Promise<CommitmentInput> {
    try {
      const entries = (await store.getEntries(sopInstanceUids)).filter((entry) => entry !== undefined);
      const found = new Map<string, string>();
      for (const entry of entries) found.set(entry.sopInstanceUid, entry.sopClassUid);
      if (init.sitesHolding === undefined || entries.length === 0) return { type: 'checked', transactionUid, generation, found, nowMs: clock.nowMs() };
      const { quorum, sitesHolding } = await init.sitesHolding(entries);
      const belowQuorum = new Set(entries.filter((entry) => (sitesHolding.get(entry.sopInstanceUid) ?? 1) < quorum).map((entry) => entry.sopInstanceUid));
      return { type: 'checked', transactionUid, generation, found, belowQuorum, nowMs: clock.nowMs() };
    } catch (error) {
      return { type: 'checkFailed', transactionUid, generation, error: errorText(error), nowMs: clock.nowMs() };
    }
  }

  async function deliver(record: CommitmentRecord, generation: number, outcome: CommitmentOutcome): Promise<CommitmentInput> {
    const ended = (result: 'delivered' | 'failed' | 'unreachable', error?: string): CommitmentInput => ({
      type: 'deliveryEnded',
      transactionUid: record.transactionUid,
      generation,
      outcome: result,
      ...(error === undefined ? {} : { error }),
      nowMs: clock.nowMs(),
    });
    const report = commitmentReport(record.transactionUid, outcome, init.aeTitle);
    // What the operator can do about an undeliverable report: tell the archive where the modality listens.
    const notInDirectory = `"${record.requestorAeTitle}" is not in the AE directory (--move-dest ${record.requestorAeTitle}=host:port)`;
    if (record.deliverVia === 'association') {
      const channel = channels.get(record);
      if (!channel) return ended('unreachable', `the N-ACTION's association is over and ${notInDirectory}`);
      try {
        const status = await channel.send(report.eventTypeId, report.elements);
        return status === Status.Success ? ended('delivered') : ended('unreachable', `the requestor answered the N-EVENT-REPORT with 0x${status.toString(16)}`);
      } catch (error) {
        return ended('unreachable', `${errorText(error)}; ${notInDirectory}`);
      }
    }
    const destination = init.resolveAe(record.requestorAeTitle);
    if (!destination) return ended('failed', notInDirectory);
    let client: DicomClientAssociation | undefined;
    try {
      client = await DicomClientAssociation.open({
        host: destination.host,
        port: destination.port,
        callingAeTitle: init.aeTitle,
        calledAeTitle: record.requestorAeTitle,
        presentationContexts: [{ abstractSyntaxUid: StorageCommitment.sopClassUid, transferSyntaxUids: reportTransferSyntaxes }],
        // PS3.4 J.3.3: on an association of its own, the SCP proposes to take the SCP role.
        roleSelections: [{ sopClassUid: StorageCommitment.sopClassUid, scuRole: false, scpRole: true }],
        timeoutMs: deliveryTimeoutMs,
        clock,
        signal: halt.signal,
      });
      const context = client.contexts[0];
      if (!context) return ended('failed', `${record.requestorAeTitle} refused the Storage Commitment presentation context`);
      // An answer that withholds the SCP role is a refusal (PS3.7 D.3.3.4); no answer at all is taken as
      // consent, as many modalities leave role selection unanswered and still take the report.
      const role = client.acceptedRoles.find((r) => r.sopClassUid === StorageCommitment.sopClassUid);
      if (role && !role.scpRole) return ended('failed', `${record.requestorAeTitle} refused this archive the SCP role for Storage Commitment`);
      const reply = await client.request(
        context.id,
        {
          commandField: CommandField.NEventReportRq,
          affectedSopClassUid: StorageCommitment.sopClassUid,
          affectedSopInstanceUid: StorageCommitment.sopInstanceUid,
          eventTypeId: report.eventTypeId,
          hasDataSet: true,
        },
        encodeDataset(report.elements, context.transferSyntaxUid),
      );
      const status = reply.command.status ?? Status.ProcessingFailure;
      return status === Status.Success ? ended('delivered') : ended('failed', `${record.requestorAeTitle} answered the N-EVENT-REPORT with 0x${status.toString(16)}`);
    } catch (error) {
      return ended('failed', errorText(error));
    } finally {
      await client?.release().catch(() => client?.abort());
    }
  }

  function perform(effects: readonly CommitmentEffect[]): void {
    for (const effect of effects) {
      switch (effect.type) {
        case 'check':
          run(() => check(effect.transactionUid, effect.generation, effect.sopInstanceUids));
          break;
        case 'deliver':
          run(() => deliver(effect.record, effect.generation, effect.outcome));
          break;
        case 'forget':
          channels.delete(effect.record);
          if (effect.record.deliverVia === 'directory' && !recordsAdmitting.has(effect.record.transactionUid)) {
            void store.deleteCommitment(effect.record.transactionUid).catch((error: unknown) => log.warn('commitment: deleting a delivered record failed', { transactionUid: effect.record.transactionUid, error: errorText(error) }));
          }
          break;
        case 'report':
          if (effect.repeatKey !== undefined && effect.level !== 'error') repeats[effect.level](effect.repeatKey, effect.message, effect.fields);
          else log[effect.level](effect.message, effect.fields);
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(`unhandled commitment effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
  }

  const repeats = createRepeatLimiter(log, 60_000, () => clock.nowMs());
  const ticker = createTicker(clock, () => send({ type: 'tick' }), () => stopped);

  async function initialState(): Promise<CommitmentState> {
    const records = await store.listCommitments((key) => log.error('commitment: a stored record is damaged; skipped', { key })).catch((error: unknown) => {
      log.error('commitment: reading the owed reports failed', { error: errorText(error) });
      // A damaged table stays until the catalog is rebuilt: marked, the next start does it.
      if (isCatalogDamage(error)) store.reportCatalogDamage(`commitment load: ${errorText(error)}`);
      return [];
    });
    if (records.length > 0) log.info('commitment: reports a previous run owed are sent again', { transactions: records.length });
    return stepAndPerform(initCommitments(config), { type: 'loaded', records, nowMs: clock.nowMs() });
  }

  function stepAndPerform(state: CommitmentState, i: CommitmentInput): CommitmentState {
    const step = stepCommitments(state, i);
    perform(step.effects);
    current = step.state;
    return step.state;
  }

  const ref: Ref<CommitmentMsg> = spawnActor<CommitmentState | null, CommitmentMsg>(init.parent, {
    name: 'commitment',
    // null: (re)load the owed reports from disk on the next message; nact's 'reset' comes back here.
    initialState: null,
    async handle(state, message) {
      if (message.type === 'tick') ticker.handled();
      const s = state ?? (await initialState());
      switch (message.type) {
        case 'tick':
          ticker.schedule(tickIntervalMs);
          return stepAndPerform(s, { type: 'tick', nowMs: clock.nowMs() });
        case 'input':
          // Given back before the step: a step that throws must not keep the place for ever.
          if (message.input.type === 'accepted') {
            reserve(message.input.record.references.length, -1);
            if (message.input.record.deliverVia === 'directory') recordAdmitting(message.input.record.transactionUid, -1);
          }
          return stepAndPerform(s, message.input);
        default: {
          const unreachable: never = message;
          throw new Error(`unhandled commitment message ${JSON.stringify(unreachable)}`);
        }
      }
    },
    onCrash: (error) => onTickingActorCrash(ticker, log, 'commitment', error, init.onCrash),
  });
  ticker.postNow();

  let stopping: Promise<void> | undefined;
  return {
    async admit(request, requestorAeTitle, channel) {
      if (stopped) return { admitted: false, status: Status.ResourceLimitation, errorComment: 'the archive is stopping' };
      const taken = transactionUidTaken(current, request.transactionUid, requestorAeTitle);
      if (taken !== undefined) return { admitted: false, status: Status.ProcessingFailure, errorComment: taken };
      const refusal = admissionRefusal(current, request.transactionUid, request.references.length, admitting);
      if (refusal !== undefined) return { admitted: false, status: Status.ResourceLimitation, errorComment: refusal };
      reserve(request.references.length, 1);
      const deliverVia = init.resolveAe(requestorAeTitle) ? 'directory' : 'association';
      const record: CommitmentRecord = { transactionUid: request.transactionUid, requestorAeTitle, references: request.references, receivedAtMs: clock.nowMs(), deliverVia };
      if (deliverVia === 'directory') {
        recordAdmitting(record.transactionUid, 1);
        try {
          await store.putCommitment(record);
        } catch (error) {
          reserve(request.references.length, -1);
          recordAdmitting(record.transactionUid, -1);
          log.error('commitment: keeping the request failed', { transactionUid: record.transactionUid, error: errorText(error) });
          return { admitted: false, status: Status.ProcessingFailure, errorComment: `the request could not be kept: ${errorText(error)}` };
        }
      } else {
        channels.set(record, channel);
      }
      return { admitted: true, reportOnAssociation: deliverVia === 'association', begin: () => input({ type: 'accepted', record, nowMs: clock.nowMs() }) };
    },
    full: () => (stopped ? 'the archive is stopping' : admissionRefusal(current, '', 1, admitting)),
    refused(requestorAeTitle, status, errorComment) {
      repeats.warn(`refused:${requestorAeTitle}:${status}`, 'storage commitment request refused', { requestor: requestorAeTitle, status: `0x${status.toString(16)}`, errorComment });
    },
    stats: () => commitmentStats(current),
    stop: () =>
      (stopping ??= (async () => {
        stopped = true;
        ticker.stop();
        stopActor(ref);
        halt.abort();
        // Deliveries under way are aborted above (their records stay on disk, due at the next start); what
        // is left, look-ups in the store, gets a moment, so that nothing holds a stop for a timeout.
        let timer: TimerHandle | undefined;
        const moment = new Promise<void>((resolve) => (timer = clock.setTimeout(resolve, stopWaitMs)));
        await Promise.race([Promise.allSettled([...tasks]), moment]);
        clock.clearTimeout(timer);
      })()),
  };
}
