/**
 * One accepted association: the PS3.8 machine (through AssociationCore), negotiation, and the DIMSE
 * services. The actor feeds it one mailbox message at a time; everything here that awaits (store
 * writes, commits) therefore holds back the next PDUs of this association, which is the back-pressure.
 */
import type { Socket } from 'node:net';
import { countDimseResponse, serviceNames } from './dimse-stats.ts';
import { CommandField, DimseError, Status, isPendingStatus, isResponseField, responseFieldFor, type DimseCommand } from '../../codec/dimse.ts';
import { AbortReason, RejectReason, RejectResult, RejectSource, associateBytesMax, type Pdu } from '../../codec/pdu.ts';
import type { CatalogEntry } from '../storage/catalog-types.ts';
import { AssociationCore, DicomConnection, GatheredDataSet } from './connection.ts';
import { AssociationClosedError, DicomClientAssociation } from './client.ts';
import { DimseProtocolError, type DimseEvent } from './dimse-assembler.ts';
import { contextsReceiverReads } from './destination-quirks.ts';
import { SopClass, negotiate, type NegotiatedContext, type NegotiationResult } from './negotiation.ts';
import type { AssociationDeps } from './services/deps.ts';
import { pickContextFor, proposalsForMove, requestorReleasingReason, runFind, runRetrieve, type SubOperationTarget } from './services/query-retrieve.ts';
import { duplicateWithOtherBytesMessage, IncomingStore, storeResponse } from './services/store.ts';
import type { UlIndication } from './state-machine.ts';
import { DatasetParseError } from '../../codec/dataset/errors.ts';
import { parseDatasetTree } from '../../codec/dataset/tree.ts';
import { encodeDataset } from '../../codec/dataset/writer.ts';
import type { ReportChannel } from '../commitment/actor.ts';
import { readCommitmentRequest } from '../commitment/logic.ts';
import { StorageCommitment } from '../commitment/messages.ts';
import type { Logger } from '../runtime/logger.ts';
import type { TimerHandle } from '../runtime/clock.ts';

/** A C-FIND/C-GET/C-MOVE identifier larger than this is refused (it is held whole in memory). */
const maxIdentifierBytes = 1024 * 1024;
/** Query/retrieve operations one association may run at once (no async window is negotiated, so 1 is normal). */
const maxConcurrentTasks = 4;
/** How long at most a Storage Commitment report owed over an association holds off its idle abort: the look-up (30 s) and a margin. */
const commitmentReportOwedMaxMs = 60_000;

/** What a C-GET sub-operation waiter gets when the association ends before the requestor's C-STORE-RSP. */
const noAnswer = -1;

/** A Storage Commitment request's data set larger than this is refused (20,000 references take ~2.4 MB). */
const maxCommitmentRequestBytes = 4 * 1024 * 1024;


/**
 * Events one association handles before it lets the event loop serve the others: a requestor sending tiny
 * PDVs (6 bytes each, up to 43,690 a PDU) held every other association while its PDUs went through (one
 * such requestor put others' C-ECHOs at ~0.7 s, four at 2-4 s). A C-STORE in DCMTK's 128 KiB PDVs yields every ~16 MB.
 */
const eventsPerTurnMax = 256;

interface IdentifierBuffer {
  command: DimseCommand;
  context: NegotiatedContext;
  dataSet: GatheredDataSet;
}

interface Task {
  /**
   * Aborted on a C-CANCEL-RQ or when the association aborts (a release is `releaseRequested`: see
   * endOperations): the operation stops, and so does what waits for the requestor's sake (a transcode).
   */
  cancel: AbortController;
  done: Promise<void>;
}

/** How long an idle expiry may wait in the mailbox behind a stalled write before the connection is cut (see armIdleTimer). */
const stalledCutGraceMs = 2000;

/**
 * How long a C-CANCEL lets the C-STORE in flight at a C-MOVE destination be answered before that
 * association is aborted (see moveTarget): long for a destination that answers, short beside a hung one.
 */
const cancelGraceMs = 1000;

/**
 * How long a C-MOVE's final response waits for the destination to confirm the release of its association
 * (see moveTarget): ample for one that answers (milliseconds), short beside one that never does.
 */
const releaseWaitMs = 2000;

/**
 * The last part of a stopping peer's drain, in which the C-GETs and C-MOVEs still running send no more
 * sub-operations and end with a final response (the one in flight answered, the rest counted failed and
 * listed) and requestors may release, before what is still open is aborted (listener.ts, onShutdown).
 * Room for a sub-operation in flight at a destination that takes a second per instance, and its release.
 */
export const shutdownAnswerMs = 2500;

/** A requestor answered in the last moments of the drain gets this long to release before it is aborted. */
const releaseAfterFinalAnswerMs = 500;

/** A retrieve whose sub-operation takes longer sends a Pending response meanwhile (see runRetrieve). */
const retrievePendingIntervalMs = 10_000;

export interface SessionCallbacks {
  /** Route an ARTIM expiry through the actor's mailbox. */
  artimExpired(): void;
  /** Route an idle-timer expiry through the actor's mailbox. */
  idleExpired(): void;
  /** Route the end of the final responses' time at a shutdown through the actor's mailbox (see onShutdown). */
  shutdownExpired(): void;
  /** Route the end of the operations under way at an A-RELEASE-RQ through the actor's mailbox (see onOperationsEndedAfterRelease). */
  operationsEndedAfterRelease(): void;
  /** The association is over (transport closed): the actor stops. */
  finished(): void;
}

export class AcceptorSession {
  readonly core: AssociationCore;
  readonly connection: DicomConnection;
  readonly log: Logger;
  private contexts = new Map<number, NegotiatedContext>();
  private callingAeTitle = '';
  /** Events handled since this association last let the event loop serve others (see eventsPerTurnMax). */
  private eventsSinceYield = 0;
  private pendingEvents: Array<{ kind: 'indication'; indication: UlIndication } | { kind: 'dimse'; event: DimseEvent }> = [];
  private store: IncomingStore | undefined;
  private identifier: IdentifierBuffer | undefined;
  /** Data set of a request we answered at its command (wrong context): its fragments are dropped. */
  private discardingDataSet = false;
  private readonly tasks = new Map<number, Task>();
  /** Storage Commitment reports owed over this association (their channels), and until when at most (see requestCommitment). */
  private readonly reportsOwed = new Set<ReportChannel>();
  private reportsOwedUntilMs = 0;
  private readonly subOperationWaiters = new Map<number, { resolve: (status: number) => void }>();
  private sendChain: Promise<void> = Promise.resolve();
  private ended = false;
  /** The requestor asked to release: it may not send P-DATA any more (PS3.8 Sta7), so no C-GET sub-operation can be answered. */
  private releaseRequested = false;
  /** The peer is stopping: retrieves send no more sub-operations and end with their final response (see onShutdown). */
  private stopping = false;
  /** When an operation last ended, and whether a stop gave its requestor releaseAfterFinalAnswerMs (see onShutdownExpired). */
  private lastTaskEndedMs: number | undefined;
  private releaseGraceGiven = false;
  private idleTimer: TimerHandle | undefined;
  /** See armIdleTimer: the cut of a connection whose actor is stuck writing to a requestor that reads nothing. */
  private stalledCut: TimerHandle | undefined;
  /** The last PDU received or DIMSE message written: the requestor's silence counts from its turn, not from ours. */
  private lastActivityMs = 0;

  constructor(
    /**
     * Asked when the A-ASSOCIATE-RQ arrives: over the association limit, the request is answered with a
     * transient rejection. (Asked then, not at the connection: connections that never ask count for nothing.)
     */
    private readonly congested: () => boolean,
    socket: Socket,
    private readonly deps: AssociationDeps,
    private readonly callbacks: SessionCallbacks,
    routeToActor: { received(pdus: Pdu[], bytes: number): void; invalid(reason: number, detail: string): void; closed(): void },
  ) {
    this.connection = new DicomConnection(
      {
        socket,
        limits: { maxPDataBytes: deps.config.maxPduLength + 64, maxAssociateBytes: associateBytesMax },
        maxUnprocessedBytes: deps.maxUnprocessedBytes,
        clock: deps.clock,
      },
      {
        onPdus: (pdus, bytes) => routeToActor.received(pdus, bytes),
        onInvalidPdu: (error) => routeToActor.invalid(error.abortReason, error.message),
        onClosed: () => routeToActor.closed(),
      },
    );
    // Through a tunnel the socket comes from loopback: log the modality's real address and its entry peer.
    const tunnelled = deps.tunnelledClientOf?.(socket);
    this.log = deps.log.child(
      tunnelled
        ? { association: `${tunnelled.clientAddress}:${tunnelled.clientPort}`, via: tunnelled.viaPeerId }
        : { association: this.connection.remoteAddress },
    );
    this.core = new AssociationCore(
      { connection: this.connection, clock: deps.clock, artimTimeoutMs: deps.artimTimeoutMs, isRequestor: false },
      {
        onIndication: (indication) => this.pendingEvents.push({ kind: 'indication', indication }),
        onDimse: (event) => this.pendingEvents.push({ kind: 'dimse', event }),
        onArtimExpired: () => callbacks.artimExpired(),
        onRefused: (event, state) => this.log.warn('state machine refused a local primitive', { event, state }),
      },
    );
    void this.core.fire({ type: 'transportIndication' });
    this.lastActivityMs = deps.clock.nowMs();
    this.armIdleTimer();
  }

  /**
   * A modality that keeps an association open and silent must not hold a slot for ever. One timer runs at
   * a time; received PDUs only move `lastActivityMs`, so the per-read path sets no timers.
   */
  private armIdleTimer(delayMs = this.deps.idleTimeoutMs): void {
    this.deps.clock.clearTimeout(this.idleTimer);
    this.deps.clock.clearTimeout(this.stalledCut);
    if (this.ended) return;
    this.idleTimer = this.deps.clock.setTimeout(() => {
      // Judged after this turn's reads: timers run before the loop reads its sockets, so a process that stood
      // still past the timeout (a loaded machine) took a request already in the socket for silence (hunt 114).
      setImmediate(() => this.callbacks.idleExpired());
      // The expiry waits in the actor's mailbox behind what the actor is doing, and that may be a write to a
      // requestor that reads nothing (an answer it awaits: a C-ECHO-RSP, a refusal), which never ends: the
      // association then held its slot for good (hunt 79). If the expiry is still not handled a moment
      // later and the write still stalls, the connection is cut here, which ends the write.
      this.armStalledCut(stalledCutGraceMs);
    }, delayMs);
  }

  /**
   * See armIdleTimer; checked again until the actor handles the expiry (onIdleExpired clears it), since an
   * actor stuck in a write arms nothing. Also when the expiry came while no write waited: the actor, busy
   * between writes or yielding to others, may block in one before it gets to the expiry (held for good).
   */
  private armStalledCut(delayMs: number): void {
    if (this.ended || this.connection.isClosed) return;
    this.stalledCut = this.deps.clock.setTimeout(() => {
      if (this.ended || this.connection.isClosed) return;
      if (!this.connection.writeBlocked) return this.armStalledCut(stalledCutGraceMs);
      const stalledMs = this.deps.clock.nowMs() - Math.max(this.lastActivityMs, this.connection.lastWriteProgressMs);
      // The requestor read a little lately: wait until it has been silent for the whole idle timeout.
      if (stalledMs < this.deps.idleTimeoutMs) return this.armStalledCut(this.deps.idleTimeoutMs - stalledMs);
      this.log.warn('aborting association', { why: `no PDU and nothing read for ${stalledMs} ms while an answer waits to be written: connection closed` });
      this.connection.destroy();
    }, delayMs);
  }

  /**
   * An association, asked for or under way. Not one: a connection that has not sent its A-ASSOCIATE-RQ
   * yet (Sta2: idle connections must not use up the limit; ARTIM closes them), nor one over on our side,
   * ended or released, rejected or aborted and waiting for the peer to close the transport (Sta13). Those
   * neither count against the limit nor get an idle abort.
   */
  get holdsAssociationSlot(): boolean {
    const state = this.core.machine.state;
    return !this.ended && state !== 'Sta2' && state !== 'Sta13' && state !== 'Sta1';
  }

  async onIdleExpired(): Promise<void> {
    this.deps.clock.clearTimeout(this.stalledCut);
    if (!this.holdsAssociationSlot) return;
    const silentMs = this.deps.clock.nowMs() - this.lastActivityMs;
    // Activity since the timer was set, or a running C-FIND/C-GET/C-MOVE (the peer may have nothing to say).
    // Not a C-STORE data set still arriving: the peer owes its bytes, and one that went silent mid-instance
    // (power or network lost) held its slot until the peer restarted; the half-received instance is discarded.
    if (silentMs < this.deps.idleTimeoutMs) return this.armIdleTimer(this.deps.idleTimeoutMs - silentMs);
    if (this.tasks.size > 0) {
      // Waiting on the requestor (a C-GET sub-operation it has not answered, responses it does not read):
      // it must make progress, or a hung viewer holds its slot for good (helper 42). Otherwise the work is
      // ours (a long search, a pull from another site), and the requestor may rightly say nothing.
      const waitingOnRequestor = this.subOperationWaiters.size > 0 || this.connection.writeBlocked;
      if (!waitingOnRequestor) return this.armIdleTimer();
      const stalledMs = this.deps.clock.nowMs() - Math.max(this.lastActivityMs, this.connection.lastWriteProgressMs);
      if (stalledMs < this.deps.idleTimeoutMs) return this.armIdleTimer(this.deps.idleTimeoutMs - stalledMs);
      const waitingFor = this.subOperationWaiters.size > 0 ? 'a C-STORE sub-operation answer' : 'the requestor to read our responses';
      await this.abort(`no PDU and nothing read for ${this.deps.idleTimeoutMs} ms while waiting for ${waitingFor}`);
      return;
    }
    // A Storage Commitment report owed over this association is our next message, as a long search's is: the
    // requestor keeping it open may rightly say nothing (hunt 194: with --idle-timeout 3 the report, due after
    // the 30 s look-up, was dropped, the association aborted under a requestor still waiting for it).
    const reportWaitMs = this.reportsOwedUntilMs - this.deps.clock.nowMs();
    if (this.reportsOwed.size > 0 && reportWaitMs > 0) return this.armIdleTimer(Math.min(this.deps.idleTimeoutMs, reportWaitMs));
    await this.abort(`no PDU for ${this.deps.idleTimeoutMs} ms`);
  }

  async onPdus(pdus: Pdu[], bytes: number): Promise<void> {
    this.lastActivityMs = this.deps.clock.nowMs();
    try {
      for (const pdu of pdus) {
        if (this.ended) break;
        void this.core.fire({ type: 'pduReceived', pdu });
        await this.drain();
      }
    } catch (error) {
      // Well-formed PDUs carrying a malformed DIMSE message are the peer's fault, not ours: a warning and
      // an A-ABORT saying the parameter was invalid; anything else is a crash of this association's actor.
      if (!(error instanceof DimseProtocolError || error instanceof DimseError)) throw error;
      await this.onInvalidPdu(AbortReason.InvalidPduParameterValue, error.message, 'malformed DIMSE message');
    } finally {
      this.connection.consumed(bytes);
    }
  }

  async onInvalidPdu(reason: number, detail: string, what = 'invalid PDU'): Promise<void> {
    this.log.warn(`${what}: aborting the association`, { detail });
    await this.core.fire({ type: 'invalidPdu', reason, detail });
    // Nothing more from this stream can be trusted: close once the A-ABORT is flushed, without waiting for ARTIM.
    await this.terminateAndClose();
  }

  async onTransportClosed(): Promise<void> {
    await this.core.fire({ type: 'transportClosed' });
    await this.terminate();
    this.callbacks.finished();
  }

  async onArtimExpired(): Promise<void> {
    await this.core.fire({ type: 'artimExpired' });
  }

  /**
   * The peer stops and its drain nears its end (`answerMs` left). An established association is not cut at
   * once: a C-GET or C-MOVE sends no more sub-operations, and its final response (PS3.4 C.4.2.3.1 /
   * C.4.3.3.1: 0xB000, or 0xA702 when none completed, the ones not sent counted failed and listed) goes out
   * once the sub-operation in flight is answered; the requestor then releases (it has its answer). What is
   * still open after `answerMs` is aborted, as everything was at the drain's end before (a requestor of a
   * retrieve got no final response).
   */
  async onShutdown(drainEndMs: number): Promise<void> {
    if (this.ended) return;
    const answerMs = drainEndMs - this.deps.clock.nowMs();
    // Sta8: a C-MOVE goes on after an A-RELEASE-RQ, and its final response may still be sent (PS3.8 AR-7).
    const state = this.core.machine.state;
    if (answerMs <= 0 || !(state === 'Sta6' || (state === 'Sta8' && this.tasks.size > 0))) return this.abort('peer shutting down');
    this.stopping = true;
    if (this.tasks.size > 0) this.log.warn('peer shutting down: the retrieves under way send their final responses', { operations: this.tasks.size, waitMs: answerMs });
    this.deps.clock.setTimeout(() => this.callbacks.shutdownExpired(), answerMs);
  }

  /** The operations under way at an A-RELEASE-RQ have ended: the release is answered, unless the association ended meanwhile. */
  async onOperationsEndedAfterRelease(): Promise<void> {
    if (this.ended || this.core.machine.state !== 'Sta8') return;
    await this.core.fire({ type: 'releaseResponse' });
  }

  async onShutdownExpired(): Promise<void> {
    if (this.ended || this.core.machine.state === 'Sta1' || this.core.machine.state === 'Sta13') return;
    if (this.tasks.size > 0) return this.abort('peer shutting down: an operation did not end in time');
    // Answered just now (its final response in the last moments): a moment more for the requestor's release.
    if (this.lastTaskEndedMs !== undefined && this.deps.clock.nowMs() - this.lastTaskEndedMs < releaseAfterFinalAnswerMs && !this.releaseGraceGiven) {
      this.releaseGraceGiven = true;
      this.deps.clock.setTimeout(() => this.callbacks.shutdownExpired(), releaseAfterFinalAnswerMs);
      return;
    }
    await this.abort('peer shutting down: the requestor did not release');
  }

  /** Our side gives up on this association: A-ABORT, then close. Used on shutdown and after a crash. */
  async abort(why: string): Promise<void> {
    this.log.warn('aborting association', { why });
    if (this.core.machine.state !== 'Sta1' && this.core.machine.state !== 'Sta13') this.core.abort(AbortReason.NotSpecified);
    await this.terminateAndClose();
  }

  /** Closed before the operations are awaited: one blocked writing to a requestor that reads nothing only returns once the socket closes. */
  private async terminateAndClose(): Promise<void> {
    const terminated = this.terminate();
    this.connection.close();
    await terminated;
  }

  private async drain(): Promise<void> {
    // Taken by position and removed together: a P-DATA-TF of many PDVs queues an event for each, and
    // shift() moved the rest of the queue for every one (hunt 79: a PDU of 43,690 empty PDVs took 0.7 s of
    // one thread, and a flood of them held C-ECHOs of other associations for 20 s).
    let taken = 0;
    try {
      while (taken < this.pendingEvents.length) {
        const next = this.pendingEvents[taken++]!;
        if (next.kind === 'indication') await this.onIndication(next.indication);
        else await this.onDimse(next.event);
        if (++this.eventsSinceYield >= eventsPerTurnMax) {
          this.eventsSinceYield = 0;
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
    } finally {
      this.pendingEvents.splice(0, taken);
    }
  }

  private async onIndication(indication: UlIndication): Promise<void> {
    switch (indication.type) {
      case 'associateRequested': {
        const result: NegotiationResult = this.congested()
          ? {
              outcome: 'reject',
              rj: { type: 'associateRj', result: RejectResult.Transient, source: RejectSource.ServiceProviderPresentation, reason: RejectReason.TemporaryCongestion },
              why: 'too many associations',
            }
          : negotiate(indication.rq, this.deps.config);
        this.callingAeTitle = indication.rq.callingAeTitle;
        if (result.outcome === 'reject') {
          this.log.warn('association rejected', { why: result.why, calling: indication.rq.callingAeTitle });
          await this.core.fire({ type: 'associateReject', rj: result.rj });
          return;
        }
        this.contexts = result.contexts;
        for (const [id, context] of result.contexts) {
          this.core.acceptedContexts.set(id, { abstractSyntaxUid: context.abstractSyntaxUid, transferSyntaxUid: context.transferSyntaxUid });
        }
        this.core.peerMaxPduLength = result.peerMaxPduLength;
        await this.core.fire({ type: 'associateAccept', ac: result.ac });
        return;
      }
      case 'pData':
        this.core.deliverPData(indication);
        return;
      case 'releaseRequested':
        // PS3.8 lets us send P-DATA until the A-RELEASE-RP (Sta8): operations under way end as they would
        // have, rather than with a Cancel status nobody asked for.
        // Not awaited here: a C-MOVE may run for minutes in Sta8, and the mailbox must stay open meanwhile for
        // an A-ABORT, a closed transport or a stop (hunt 146: each waited for the C-MOVE's end).
        this.releaseRequested = true;
        void this.endOperations('release')
          .then(() => this.sendChain)
          .catch((error: unknown) => this.log.error('ending the operations at a release failed', { error: String(error) }))
          .then(() => this.callbacks.operationsEndedAfterRelease());
        return;
      case 'aborted':
      case 'providerAborted':
        await this.terminate();
        return;
      case 'associateAccepted':
      case 'associateRejected':
      case 'releaseConfirmed':
        return; // requestor-side indications: the machine does not produce them for an acceptor
      default: {
        const unreachable: never = indication;
        throw new Error(`unknown indication ${JSON.stringify(unreachable)}`);
      }
    }
  }

  private send(presentationContextId: number, command: DimseCommand, dataSet?: Uint8Array | AsyncIterable<Uint8Array>): Promise<void> {
    // DIMSE messages must not interleave on the wire: one at a time, in order.
    const sending = this.sendChain.then(async () => {
      await this.core.sendMessage(presentationContextId, command, dataSet);
      if (this.deps.dimseStats !== undefined) countDimseResponse(this.deps.dimseStats, command.commandField, command.status);
      // A requestor awaiting an answer says nothing until it has it: a C-STORE whose quorum took longer than
      // the idle timeout had its association aborted just after its Success went out (review 83).
      this.lastActivityMs = this.deps.clock.nowMs();
    });
    this.sendChain = sending.catch(() => undefined);
    return sending;
  }

  private async onDimse(event: DimseEvent): Promise<void> {
    if (event.type === 'dataFragment') {
      await this.onDataFragment(event);
      return;
    }
    const { command, presentationContextId } = event;
    const context = this.contexts.get(presentationContextId)!;
    if (isResponseField(command.commandField)) {
      this.onResponse(command);
      return;
    }
    // PS3.7 9.3: every request carries its Message ID (a C-CANCEL-RQ the one it cancels); no response could
    // name a request without one (it was answered Success with no MessageIDBeingRespondedTo).
    if (command.commandField !== CommandField.CCancelRq && command.messageId === undefined) {
      throw new DimseError('ERR_DIMSE_MISSING_FIELD', `request (command field 0x${command.commandField.toString(16)}) has no MessageID`);
    }
    switch (command.commandField) {
      case CommandField.CEchoRq:
        // PS3.7 9.3.5: Verification only, on its own context (0x0122), and without a data set (0x0212).
        if (context.service !== 'verification' || command.affectedSopClassUid !== context.abstractSyntaxUid) {
          return this.refuse(presentationContextId, command, Status.SopClassNotSupported, `C-ECHO is for ${SopClass.Verification} (Verification) only`);
        }
        if (command.hasDataSet) return this.refuse(presentationContextId, command, Status.MistypedArgument, 'C-ECHO-RQ with a data set');
        await this.send(presentationContextId, { commandField: CommandField.CEchoRsp, messageIdBeingRespondedTo: command.messageId, affectedSopClassUid: command.affectedSopClassUid, status: Status.Success, hasDataSet: false });
        return;
      case CommandField.CStoreRq:
        if (context.service !== 'storage') return this.refuse(presentationContextId, command, Status.SopClassNotSupported, 'C-STORE on a context that is not a storage SOP class');
        if (!command.hasDataSet) return this.refuse(presentationContextId, command, Status.CannotUnderstand, 'C-STORE-RQ without a data set');
        this.store = new IncomingStore(command, context, this.deps.ingest, () => this.deps.clock.dateMs());
        return;
      case CommandField.CFindRq:
      case CommandField.CGetRq:
      case CommandField.CMoveRq: {
        const expected = command.commandField === CommandField.CFindRq ? 'find' : command.commandField === CommandField.CGetRq ? 'get' : 'move';
        if (context.service !== expected || command.affectedSopClassUid !== context.abstractSyntaxUid) {
          return this.refuse(presentationContextId, command, Status.SopClassNotSupported, `request does not match the presentation context's SOP class ${context.abstractSyntaxUid}`);
        }
        if (!command.hasDataSet) return this.refuse(presentationContextId, command, Status.IdentifierDoesNotMatchSopClass, 'request without an identifier');
        this.identifier = { command, context, dataSet: new GatheredDataSet(maxIdentifierBytes) };
        return;
      }
      case CommandField.NActionRq: {
        // PS3.4 J.3.2.1: the Storage Commitment Push Model class, its well-known instance, action type 1.
        const nActionRefusal: [number, string] | undefined =
          context.service !== 'commitment' || command.requestedSopClassUid !== StorageCommitment.sopClassUid
            ? [Status.NoSuchSopClass, `N-ACTION is for ${StorageCommitment.sopClassUid}, on its own context`]
            : command.requestedSopInstanceUid !== StorageCommitment.sopInstanceUid
              ? [Status.NoSuchSopInstance, `Requested SOP Instance must be ${StorageCommitment.sopInstanceUid}`]
              : command.actionTypeId !== StorageCommitment.actionTypeRequest
                ? [Status.NoSuchAction, `N-ACTION type ${command.actionTypeId ?? '(none)'}: only 1 (Request Storage Commitment)`]
                : !command.hasDataSet
                  ? [Status.InvalidArgumentValue, 'N-ACTION-RQ without a data set']
                  : undefined;
        if (nActionRefusal) {
          this.discardingDataSet = command.hasDataSet;
          return this.answerNAction(presentationContextId, command, ...nActionRefusal);
        }
        this.identifier = { command, context, dataSet: new GatheredDataSet(maxCommitmentRequestBytes) };
        return;
      }
      case CommandField.CCancelRq: {
        const task = command.messageIdBeingRespondedTo === undefined ? undefined : this.tasks.get(command.messageIdBeingRespondedTo);
        if (task) task.cancel.abort();
        return;
      }
      default:
        // PS3.7 C.5.3 (0x0211): a service we do not provide; the response field mirrors the request.
        return this.refuse(presentationContextId, command, Status.UnrecognizedOperation, `command field 0x${command.commandField.toString(16)} is not supported`);
    }
  }

  private async refuse(presentationContextId: number, command: DimseCommand, status: number, errorComment: string): Promise<void> {
    this.discardingDataSet = command.hasDataSet;
    this.log.warn('request refused', { status: `0x${status.toString(16)}`, errorComment });
    await this.send(presentationContextId, {
      commandField: responseFieldFor(command.commandField),
      messageIdBeingRespondedTo: command.messageId,
      affectedSopClassUid: command.affectedSopClassUid,
      affectedSopInstanceUid: command.affectedSopInstanceUid,
      status,
      errorComment,
      hasDataSet: false,
    });
  }

  private onResponse(command: DimseCommand): void {
    const waiter = command.messageIdBeingRespondedTo === undefined ? undefined : this.subOperationWaiters.get(command.messageIdBeingRespondedTo);
    // A protocol error, as DCMTK treats it: ignored, it left a C-GET sub-operation waiting out the idle timeout.
    if (!waiter) throw new DimseProtocolError('ERR_DIMSE_UNEXPECTED_RESPONSE', `a response to message ${command.messageIdBeingRespondedTo ?? '(none)'}, which is no request of ours`);
    this.subOperationWaiters.delete(command.messageIdBeingRespondedTo!);
    waiter.resolve(command.status ?? Status.UnableToProcess);
  }

  private async onDataFragment(event: Extract<DimseEvent, { type: 'dataFragment' }>): Promise<void> {
    if (this.store) {
      const store = this.store;
      await store.push(event.data);
      if (!event.isLast) return;
      this.store = undefined;
      const result = await store.finish();
      if (result.status !== Status.Success) this.log.warn('C-STORE failed', { sopInstanceUid: store.command.affectedSopInstanceUid, ...result, status: `0x${result.status.toString(16)}` });
      const otherBytes = store.duplicateWithOtherBytes;
      if (otherBytes !== undefined) this.log.warn(duplicateWithOtherBytesMessage, { sopInstanceUid: store.command.affectedSopInstanceUid, requestor: this.callingAeTitle, ...otherBytes });
      await this.send(event.presentationContextId, storeResponse(store.command, result));
      return;
    }
    if (this.identifier) {
      const buffer = this.identifier;
      const { dataSet } = buffer;
      dataSet.add(event.data);
      if (!event.isLast) return;
      this.identifier = undefined;
      if (buffer.command.commandField === CommandField.NActionRq) {
        if (dataSet.overLimit) return this.answerNAction(event.presentationContextId, buffer.command, Status.ResourceLimitation, `data set over ${dataSet.limitBytes} bytes`);
        return this.requestCommitment(event.presentationContextId, buffer);
      }
      if (dataSet.overLimit) {
        return this.refuse(event.presentationContextId, buffer.command, outOfResourcesFor(buffer.command), `identifier over ${dataSet.limitBytes} bytes`);
      }
      await this.startTask(event.presentationContextId, buffer);
      return;
    }
    if (this.discardingDataSet) {
      if (event.isLast) this.discardingDataSet = false;
      return;
    }
    throw new DimseProtocolError('ERR_DIMSE_SEQUENCE', 'data set fragment with no operation to receive it');
  }

  /** The N-ACTION-RSP (PS3.7 10.1.4.1): it names the class and instance as the affected ones. */
  private async answerNAction(presentationContextId: number, command: DimseCommand, status: number, errorComment?: string): Promise<void> {
    if (status !== Status.Success) this.deps.commitments.refused(this.callingAeTitle, status, errorComment ?? '');
    await this.send(presentationContextId, {
      commandField: CommandField.NActionRsp,
      messageIdBeingRespondedTo: command.messageId,
      affectedSopClassUid: command.requestedSopClassUid,
      affectedSopInstanceUid: command.requestedSopInstanceUid,
      ...(status === Status.Success ? { actionTypeId: command.actionTypeId } : {}),
      status,
      ...(errorComment === undefined ? {} : { errorComment }),
      hasDataSet: false,
    });
  }

  /** A whole N-ACTION data set: read, handed to the commitment service, answered; the report follows later. */
  private async requestCommitment(presentationContextId: number, buffer: IdentifierBuffer): Promise<void> {
    const { command, context } = buffer;
    // Full already: refused before the data set is read (reading a large one costs tens of milliseconds).
    const full = this.deps.commitments.full();
    if (full !== undefined) return this.answerNAction(presentationContextId, command, Status.ResourceLimitation, full);
    let request: ReturnType<typeof readCommitmentRequest>;
    try {
      request = readCommitmentRequest(parseDatasetTree(buffer.dataSet.concat(), context.transferSyntaxUid));
    } catch (error) {
      if (!(error instanceof DatasetParseError)) throw error;
      return this.answerNAction(presentationContextId, command, Status.InvalidArgumentValue, `data set cannot be read: ${error.message}`);
    }
    if ('status' in request) return this.answerNAction(presentationContextId, command, request.status, request.errorComment);
    const channel: ReportChannel = {
      send: async (eventTypeId, elements) => {
        this.reportsOwed.delete(channel);
        if (this.ended || this.releaseRequested) throw new Error('the N-ACTION\'s association is over');
        return this.requestOfRequestor(
          presentationContextId,
          { commandField: CommandField.NEventReportRq, affectedSopClassUid: StorageCommitment.sopClassUid, affectedSopInstanceUid: StorageCommitment.sopInstanceUid, eventTypeId, hasDataSet: true },
          encodeDataset(elements, context.transferSyntaxUid),
        );
      },
    };
    const admission = await this.deps.commitments.admit(request, this.callingAeTitle, channel);
    if (!admission.admitted) return this.answerNAction(presentationContextId, command, admission.status, admission.errorComment);
    if (admission.reportOnAssociation) {
      // Owed within the commitment's look-up (30 s) and a moment; past that the idle rule applies again, so a
      // report the service dropped (a transaction replaced) cannot hold the association for good.
      this.reportsOwed.add(channel);
      this.reportsOwedUntilMs = Math.max(this.reportsOwedUntilMs, this.deps.clock.nowMs() + commitmentReportOwedMaxMs);
    }
    try {
      await this.answerNAction(presentationContextId, command, Status.Success);
      this.log.info('storage commitment requested', { transactionUid: request.transactionUid, instances: request.references.length, requestor: this.callingAeTitle });
    } finally {
      // Whatever became of the response, the admitted request goes on (its record may be on disk already).
      admission.begin();
    }
  }

  /**
   * Starts the operation (not awaited: it runs beside the next requests), or answers its refusal, awaited as
   * every other answer is: not awaited, a requestor that read nothing while it sent requests an operation
   * still running refused queued an answer each, without bound (hunt 79: 1.85 million in 40 s, 2.7 GB).
   */
  private async startTask(presentationContextId: number, buffer: IdentifierBuffer): Promise<void> {
    const { command, context } = buffer;
    const messageId = command.messageId ?? 0;
    if (this.tasks.has(messageId)) return this.refuse(presentationContextId, command, Status.DuplicateInvocation, `message ID ${messageId} is that of an operation still in progress`);
    if (this.tasks.size >= maxConcurrentTasks) return this.refuse(presentationContextId, command, outOfResourcesFor(command), 'too many operations in progress on this association');
    if (context.service === 'move' && !this.deps.resolveMoveDestination(command.moveDestination ?? '')) {
      return this.refuse(presentationContextId, command, Status.MoveDestinationUnknown, `unknown move destination "${command.moveDestination ?? ''}"`);
    }
    const identifier = buffer.dataSet.concat();
    const task: Task = { cancel: new AbortController(), done: Promise.resolve() };
    const send = (rsp: DimseCommand, dataSet?: Uint8Array) => {
      // The client sees the status; the operator sees it here (a C-MOVE whose destination is down, say).
      if (this.ended && rsp.status !== undefined && !isPendingStatus(rsp.status)) {
        // Aborted, or its connection closed: nobody reads this answer, and no C-CANCEL asked for it.
        this.log.info(`${serviceNames[context.service]} stopped: the association ended`, {
          ...(rsp.failedSubOperations !== undefined ? { completed: rsp.completedSubOperations, failed: rsp.failedSubOperations, remaining: rsp.remainingSubOperations } : {}),
        });
        return this.send(presentationContextId, rsp, dataSet);
      }
      if (rsp.status === Status.Cancel) {
        // What the requestor asked for (a viewer scrolling past a series): no warning for the operator.
        this.log.info(`${serviceNames[context.service]} cancelled by the requestor`, {
          ...(rsp.completedSubOperations !== undefined ? { completed: rsp.completedSubOperations, failed: rsp.failedSubOperations, remaining: rsp.remainingSubOperations } : {}),
        });
      } else if (rsp.status !== undefined && rsp.status !== Status.Success && !isPendingStatus(rsp.status)) {
        this.log.warn(`${serviceNames[context.service]} answered with a failure or warning`, {
          status: `0x${rsp.status.toString(16)}`,
          errorComment: rsp.errorComment,
          ...(context.service === 'move' ? { moveDestination: command.moveDestination } : {}),
          ...(rsp.failedSubOperations !== undefined ? { completed: rsp.completedSubOperations, failed: rsp.failedSubOperations, warning: rsp.warningSubOperations } : {}),
        });
      }
      return this.send(presentationContextId, rsp, dataSet);
    };
    const common = {
      root: context.root!,
      transferSyntaxUid: context.transferSyntaxUid,
      command,
      identifier,
      send,
      isCancelled: () => task.cancel.signal.aborted,
      retrieveAeTitle: this.deps.config.aeTitle,
    };
    const run =
      context.service === 'find'
        ? runFind(common, this.deps.store, this.deps.retrieveSource)
        : runRetrieve(
            {
              ...common,
              kind: context.service === 'get' ? 'get' : 'move',
              callingAeTitle: this.callingAeTitle,
              isReleasing: () => context.service === 'get' && this.releaseRequested,
              isStopping: () => this.stopping,
              onSubOperationFailures: (reasons) => this.log.warn(`${serviceNames[context.service]} sub-operations failed`, { reasons }),
              transcoder: this.deps.transcoder,
              signal: task.cancel.signal,
              pendingKeepAlive: { clock: this.deps.clock, intervalMs: retrievePendingIntervalMs },
              openTarget: (entries) =>
                context.service === 'get'
                  ? this.getTarget()
                  : this.moveTarget(command, entries, task.cancel.signal).catch((error: unknown) => {
                      // A C-CANCEL that stopped the opening is no fault of the destination's.
                      if (task.cancel.signal.aborted) this.log.info('C-MOVE cancelled while its destination\'s association was being opened', { moveDestination: command.moveDestination });
                      // The response's comment holds 64 characters: the whole reason goes to the log.
                      else this.log.warn('C-MOVE destination unreachable', { moveDestination: command.moveDestination, error: String(error) });
                      throw error;
                    }),
            },
            this.deps.store,
            this.deps.retrieveSource,
          );
    task.done = run
      .catch((error: unknown) => this.log.error('query/retrieve task failed', { error: String(error) }))
      .finally(() => {
        this.tasks.delete(messageId);
        this.lastTaskEndedMs = this.deps.clock.nowMs();
      });
    this.tasks.set(messageId, task);
  }

  /** C-GET: sub-operations travel back over this association, to contexts where the requestor is SCP. */
  private async getTarget(): Promise<SubOperationTarget & { close(): Promise<void> }> {
    const usable = [...this.contexts.values()].filter((c) => c.requestorIsScp);
    return {
      pickContext: (entry) => pickContextFor(entry, usable),
      acceptsSopClass: (sopClassUid) => usable.some((c) => c.abstractSyntaxUid === sopClassUid),
      lacksScpRole: (sopClassUid) => [...this.contexts.values()].some((c) => c.abstractSyntaxUid === sopClassUid && !c.requestorIsScp),
      store: async (presentationContextId, command, dataSet) => {
        // Failed with the reason, not with a status the requestor never sent ("the receiver answered 0xc001": hunt 195).
        if (this.releaseRequested) throw new Error(requestorReleasingReason);
        return this.requestOfRequestor(presentationContextId, command, dataSet);
      },
      close: async () => undefined,
    };
  }

  /**
   * A request of ours to the requestor (a C-GET sub-operation's C-STORE, a commitment report), resolved with
   * the status of its response. Rejects when the association ends or is released first (the idle rule
   * aborts one whose requestor neither answers nor reads): not the requestor's answer, and the failure's
   * reason in the log says so (helper 45).
   */
  private async requestOfRequestor(presentationContextId: number, command: DimseCommand, dataSet?: Uint8Array | AsyncIterable<Uint8Array>): Promise<number> {
    // Ended already (a C-GET's instance was still being read when the requestor left): endOperations has
    // answered every waiter, and a new one would wait for good, holding the association's end (helper 101).
    if (this.ended) throw new AssociationClosedError('ERR_ASSOCIATION_ABORTED', 'the association ended before the request was sent');
    const messageId = this.core.allocateMessageId();
    const answered = new Promise<number>((resolve) => this.subOperationWaiters.set(messageId, { resolve }));
    await this.send(presentationContextId, { ...command, messageId }, dataSet);
    const status = await answered;
    if (status === noAnswer) throw new Error('the association ended or was released before the requestor answered');
    return status;
  }

  /**
   * C-MOVE: a new association from us to the destination AE. `cancelled` (a C-CANCEL, or the requestor's
   * association ending) interrupts it, as PS3.4 C.4.2.3.1 asks of a cancelled C-MOVE: an opening under way
   * is dropped at once (nothing was sent; hunt 85 saw a cancel wait out the 30 s negotiation timeout), and
   * a C-STORE in flight gets cancelGraceMs to be answered (a destination that answers stores in
   * milliseconds keeps the instance it was storing, counted completed), then the association is aborted
   * and that sub-operation fails (it was initiated, so it is not "remaining"). Between sub-operations
   * nothing is cut: the retrieve stops sending and releases the association.
   */
  private async moveTarget(command: DimseCommand, entries: readonly CatalogEntry[], cancelled: AbortSignal): Promise<SubOperationTarget & { close(): Promise<void> }> {
    const destinationAe = command.moveDestination ?? '';
    const destination = this.deps.resolveMoveDestination(destinationAe);
    if (!destination) throw new MoveDestinationUnknownError(destinationAe);
    const clock = this.deps.clock;
    const interrupt = new AbortController();
    let opened = false;
    let storing = false;
    let grace: TimerHandle | undefined;
    const onCancel = () => {
      if (!opened) interrupt.abort();
      else if (storing && grace === undefined) grace = clock.setTimeout(() => interrupt.abort(), cancelGraceMs);
    };
    const stopWatching = () => {
      cancelled.removeEventListener('abort', onCancel);
      clock.clearTimeout(grace);
      grace = undefined;
    };
    cancelled.addEventListener('abort', onCancel, { once: true });
    let client: DicomClientAssociation;
    try {
      if (cancelled.aborted) throw new Error('C-CANCEL before the destination was called');
      client = await DicomClientAssociation.open({
        host: destination.host,
        port: destination.port,
        callingAeTitle: this.deps.config.aeTitle,
        calledAeTitle: destinationAe,
        presentationContexts: proposalsForMove(entries),
        clock,
        signal: interrupt.signal,
      });
    } catch (error) {
      stopWatching();
      throw error;
    }
    opened = true;
    // Only the contexts the destination reads as they say (a GDCM receiver reads one syntax: destination-quirks.ts).
    const usable = contextsReceiverReads(client.contexts, client.acceptorImplementation);
    return {
      pickContext: (entry) => pickContextFor(entry, usable),
      acceptsSopClass: (sopClassUid) => usable.some((c) => c.abstractSyntaxUid === sopClassUid),
      store: async (presentationContextId, storeCommand, dataSet) => {
        storing = true;
        if (cancelled.aborted) onCancel();
        try {
          const reply = await client.request(presentationContextId, storeCommand, dataSet);
          return reply.command.status ?? Status.UnableToProcess;
        } catch (error) {
          // The reason the operator reads in the log (the response's comment has no room for it).
          if (interrupt.signal.aborted) throw new Error(`C-CANCEL: the destination had not answered its C-STORE within ${cancelGraceMs} ms; association aborted`, { cause: error });
          throw error;
        } finally {
          storing = false;
          clock.clearTimeout(grace);
          grace = undefined;
        }
      },
      close: () => {
        stopWatching();
        const released = client.release().catch(() => client.abort());
        // The retrieve's outcome is known once its last C-STORE is answered: a destination that never
        // answers the A-RELEASE-RQ must not hold the final C-MOVE response for the release timeout (30 s).
        // The release goes on behind it and ends in an A-ABORT at that timeout.
        return new Promise<void>((resolve) => {
          const waited = clock.setTimeout(resolve, releaseWaitMs);
          void released.then(() => {
            clock.clearTimeout(waited);
            resolve();
          });
        });
      },
    };
  }

  /**
   * Abort: running operations stop. Release: C-FIND and C-MOVE finish, a C-GET stops sending sub-operations
   * (the requestor has said it is done). Either way a half-received instance is discarded.
   */
  private async endOperations(how: 'abort' | 'release' = 'abort'): Promise<void> {
    if (how === 'abort') for (const task of this.tasks.values()) task.cancel.abort();
    for (const [messageId, waiter] of this.subOperationWaiters) {
      this.subOperationWaiters.delete(messageId);
      waiter.resolve(noAnswer);
    }
    const store = this.store;
    this.store = undefined;
    await store?.cancel();
    await Promise.all([...this.tasks.values()].map((t) => t.done));
  }

  private async terminate(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.deps.clock.clearTimeout(this.idleTimer);
    this.deps.clock.clearTimeout(this.stalledCut);
    await this.endOperations();
    // Not ARTIM in Sta13 (AA-8: an unexpected PDU was answered with an A-ABORT): it bounds the wait for the
    // requestor to close, and cleared here a requestor that never did held its connection for good, each one
    // of the listener's connections (hunt 96: eight of them refused every association of a peer of two).
    if (this.core.machine.state !== 'Sta13') this.core.stopTimers();
  }
}

/**
 * "Refused: Out of Resources" as the request's service spells it: 0xA700 for C-FIND (PS3.4 C.4.1.1.4);
 * C-GET and C-MOVE have no 0xA700 (PS3.4 C.4.2.1.5, C.4.3.1.4), and a refusal before any matching is
 * 0xA701, unable to calculate the number of matches (DCMTK's getscu/movescu print 0xA700 as unknown).
 */
function outOfResourcesFor(command: DimseCommand): number {
  return command.commandField === CommandField.CGetRq || command.commandField === CommandField.CMoveRq ? Status.OutOfResourcesMatches : Status.OutOfResources;
}

export class MoveDestinationUnknownError extends Error {
  override readonly name = 'MoveDestinationUnknownError';
  readonly code = 'ERR_MOVE_DESTINATION_UNKNOWN';
  constructor(readonly aeTitle: string) {
    super(`unknown move destination "${aeTitle}"`);
  }
}
