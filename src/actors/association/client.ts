/**
 * The requestor side of an association (PS3.8 as association-requestor), used for C-MOVE
 * sub-operations and by tests. Requests are sent one at a time (no asynchronous operations window).
 */
import { connect, type Socket } from 'node:net';
import { CommandField, Status, isPendingStatus, responseFieldFor, type DimseCommand } from '../../codec/dimse.ts';
import {
  AbortReason,
  DicomApplicationContext,
  PresentationContextResult,
  defaultPduLimits,
  describeRejection,
  type AssociateRjPdu,
  type RoleSelection,
} from '../../codec/pdu.ts';
import { systemClock, type Clock, type TimerHandle } from '../runtime/clock.ts';
import { AssociationCore, DicomConnection, GatheredDataSet, heldBytesPerPdv } from './connection.ts';
import type { DimseEvent } from './dimse-assembler.ts';
import type { UlIndication } from './state-machine.ts';
import type { AcceptorImplementation } from './destination-quirks.ts';
import { implementationClassUid, implementationVersionName } from './implementation.ts';

export class AssociationRejectedError extends Error {
  override readonly name = 'AssociationRejectedError';
  readonly code = 'ERR_ASSOCIATION_REJECTED';
  constructor(readonly rj: AssociateRjPdu) {
    super(`association rejected (${describeRejection(rj)})`);
  }
}

export class AssociationClosedError extends Error {
  override readonly name = 'AssociationClosedError';
  constructor(
    readonly code: 'ERR_ASSOCIATION_ABORTED' | 'ERR_ASSOCIATION_TIMEOUT' | 'ERR_CONNECT' | 'ERR_UNEXPECTED_RESPONSE' | 'ERR_REPLY_TOO_LARGE',
    message: string,
  ) {
    super(message);
  }
}

export interface ClientInit {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  presentationContexts: Array<{ abstractSyntaxUid: string; transferSyntaxUids: string[] }>;
  roleSelections?: RoleSelection[];
  /**
   * C-STORE sub-operations of our C-GET (we take the SCP role for their SOP classes in `roleSelections`):
   * answered with the status this returns. Without it they are refused (0x0122).
   */
  onIncomingStore?: (command: DimseCommand, dataSet: Uint8Array | undefined) => number;
  /** N-EVENT-REPORT requests the acceptor sends (a Storage Commitment report): answered with the status this returns. */
  onIncomingEventReport?: (command: DimseCommand, dataSet: Uint8Array | undefined) => number;
  maxPduLength?: number;
  /** Bound on connecting plus negotiating, and on waiting for any one response. */
  timeoutMs?: number;
  /** Aborts the association (or the connection under way): a stopping owner need not wait for the timeouts. */
  signal?: AbortSignal;
  clock?: Clock;
}

export interface AcceptedContext {
  id: number;
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
}

export interface DimseReply {
  command: DimseCommand;
  dataSet?: Uint8Array;
}

interface Waiter {
  messageId: number;
  onPending?: (reply: DimseReply) => void;
  resolve(reply: DimseReply): void;
  reject(error: Error): void;
}

/** Identifiers and C-STORE data sets a client accepts in one response; bigger replies are refused. */
const maxReplyDataSetBytes = 64 * 1024 * 1024;

/** PS3.8 9.3.8: who sent an A-ABORT. */
const abortSourceNames: Record<number, string> = { 0: 'service user', 1: 'reserved', 2: 'service provider' };

export class DicomClientAssociation {
  readonly contexts: AcceptedContext[] = [];
  /** The acceptor's answers to our role selections (PS3.7 D.3.3.4); a class it did not answer keeps the default roles. */
  readonly acceptedRoles: RoleSelection[] = [];
  /** Who accepted: its A-ASSOCIATE-AC's Implementation Class UID and Version Name (undefined until then). */
  acceptorImplementation: AcceptorImplementation | undefined;
  private waiter: Waiter | undefined;
  /** The request being sent: a cancel must not cut in between its PDUs. */
  private requestSent: Promise<void> = Promise.resolve();
  private replyCommand: DimseCommand | undefined;
  private replyContextId = 0;
  private reply = new GatheredDataSet(maxReplyDataSetBytes);
  private closedError: Error | undefined;
  private settleOpen!: { resolve: () => void; reject: (e: Error) => void };
  private settleRelease: (() => void) | undefined;
  private readonly core: AssociationCore;
  private readonly clock: Clock;
  private readonly timeoutMs: number;

  private constructor(
    socket: Socket,
    private readonly init: ClientInit,
  ) {
    this.clock = init.clock ?? systemClock;
    this.timeoutMs = init.timeoutMs ?? 30_000;
    const connection = new DicomConnection(
      { socket, limits: { ...defaultPduLimits, maxPDataBytes: (init.maxPduLength ?? 256 * 1024) + 64 }, maxUnprocessedBytes: 8 * 1024 * 1024, clock: this.clock },
      {
        onPdus: (pdus, bytes) => {
          try {
            for (const pdu of pdus) void this.core.fire({ type: 'pduReceived', pdu });
          } catch (error) {
            this.fail(error instanceof Error ? error : new Error(String(error)));
            this.core.abort(AbortReason.NotSpecified);
          }
          connection.consumed(bytes);
        },
        onInvalidPdu: (error) => {
          void this.core.fire({ type: 'invalidPdu', reason: error.abortReason, detail: error.message });
          this.fail(error);
        },
        onClosed: () => {
          void this.core.fire({ type: 'transportClosed' });
          this.fail(new AssociationClosedError('ERR_ASSOCIATION_ABORTED', 'connection closed'));
          this.settleRelease?.();
        },
      },
    );
    this.core = new AssociationCore(
      { connection, clock: this.clock, artimTimeoutMs: 10_000, isRequestor: true },
      { onIndication: (i) => this.onIndication(i), onDimse: (e) => this.onDimse(e) },
    );
  }

  static async open(init: ClientInit): Promise<DicomClientAssociation> {
    const timeoutMs = init.timeoutMs ?? 30_000;
    const clock = init.clock ?? systemClock;
    const aborted = () => new AssociationClosedError('ERR_ASSOCIATION_ABORTED', 'aborted by its owner');
    if (init.signal?.aborted) throw aborted();
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: init.host, port: init.port });
      const onAbort = () => {
        settled();
        s.destroy();
        reject(aborted());
      };
      // Removed once connected or failed: a long-lived owner's signal must not gather one per association.
      const settled = () => {
        clock.clearTimeout(timer);
        init.signal?.removeEventListener('abort', onAbort);
      };
      init.signal?.addEventListener('abort', onAbort, { once: true });
      const timer = clock.setTimeout(() => {
        settled();
        s.destroy();
        reject(new AssociationClosedError('ERR_CONNECT', `connect to ${init.host}:${init.port} timed out`));
      }, timeoutMs);
      s.once('connect', () => {
        settled();
        resolve(s);
      });
      s.once('error', (error) => {
        settled();
        reject(new AssociationClosedError('ERR_CONNECT', `connect to ${init.host}:${init.port}: ${error.message}`));
      });
    });
    const association = new DicomClientAssociation(socket, init);
    const abort = () => {
      association.fail(aborted());
      association.settleOpen?.reject(aborted());
      association.abort();
    };
    init.signal?.addEventListener('abort', abort, { once: true });
    socket.once('close', () => init.signal?.removeEventListener('abort', abort));
    await association.negotiate();
    return association;
  }

  private negotiate(): Promise<void> {
    const opened = new Promise<void>((resolve, reject) => {
      this.settleOpen = { resolve, reject };
    });
    const presentationContexts = this.init.presentationContexts.map((pc, index) => ({ id: index * 2 + 1, ...pc }));
    void this.core.fire({
      type: 'associateRequest',
      rq: {
        type: 'associateRq',
        protocolVersion: 1,
        calledAeTitle: this.init.calledAeTitle,
        callingAeTitle: this.init.callingAeTitle,
        applicationContextName: DicomApplicationContext,
        presentationContexts,
        userInformation: {
          maxPduLength: this.init.maxPduLength ?? 256 * 1024,
          implementationClassUid,
          implementationVersionName,
          roleSelections: this.init.roleSelections ?? [],
        },
      },
    });
    void this.core.fire({ type: 'transportConnected' });
    return this.withTimeout(opened, 'association negotiation');
  }

  private withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        const error = new AssociationClosedError('ERR_ASSOCIATION_TIMEOUT', `${what} timed out after ${this.timeoutMs} ms`);
        // The association ends here: later requests fail with why, not "connection closed" (or "one request
        // at a time", asked before the close was seen), which a C-MOVE's Error Comment then named (hunt 136).
        this.fail(error);
        reject(error);
        this.core.abort();
        this.core.connection.destroy();
      }, this.timeoutMs);
      promise.then(
        (v) => {
          this.clock.clearTimeout(timer);
          resolve(v);
        },
        (e: unknown) => {
          this.clock.clearTimeout(timer);
          reject(e instanceof Error ? e : new Error(String(e)));
        },
      );
    });
  }

  private onIndication(indication: UlIndication): void {
    switch (indication.type) {
      case 'associateAccepted': {
        const proposed = new Map(this.init.presentationContexts.map((pc, index) => [index * 2 + 1, pc]));
        for (const pc of indication.ac.presentationContexts) {
          const asked = proposed.get(pc.id);
          const abstractSyntaxUid = asked?.abstractSyntaxUid;
          // A syntax not proposed for the context would label our bytes as something they are not (PS3.8
          // 9.3.3.2): such a context counts as not accepted, and its instances fail as having none.
          if (pc.result === PresentationContextResult.Acceptance && abstractSyntaxUid && asked.transferSyntaxUids.includes(pc.transferSyntaxUid)) {
            this.contexts.push({ id: pc.id, abstractSyntaxUid, transferSyntaxUid: pc.transferSyntaxUid });
            this.core.acceptedContexts.set(pc.id, { abstractSyntaxUid, transferSyntaxUid: pc.transferSyntaxUid });
          }
        }
        this.core.peerMaxPduLength = indication.ac.userInformation.maxPduLength;
        this.acceptedRoles.push(...indication.ac.userInformation.roleSelections);
        this.acceptorImplementation = { classUid: indication.ac.userInformation.implementationClassUid, versionName: indication.ac.userInformation.implementationVersionName };
        this.settleOpen.resolve();
        return;
      }
      case 'associateRejected':
        this.settleOpen.reject(new AssociationRejectedError(indication.rj));
        return;
      case 'pData':
        this.core.deliverPData(indication);
        return;
      case 'releaseConfirmed':
        this.settleRelease?.();
        return;
      case 'releaseRequested':
        // We never expect the acceptor to release; answer it anyway (PS3.8 allows either side).
        void this.core.fire({ type: 'releaseResponse' });
        return;
      case 'aborted':
      case 'providerAborted': {
        // Words an operator reads in a C-MOVE's Error Comment (64 characters, after "all 40 failed: "), not the indication as JSON.
        const why = indication.type === 'aborted' ? `A-ABORT by the acceptor (source ${indication.source}: ${abortSourceNames[indication.source] ?? 'unknown'})` : `association aborted: ${indication.detail}`;
        const error = new AssociationClosedError('ERR_ASSOCIATION_ABORTED', why);
        this.settleOpen.reject(error);
        this.fail(error);
        return;
      }
      case 'associateRequested':
        return; // impossible for a requestor: the state machine never indicates it in these states
      default: {
        const unreachable: never = indication;
        throw new Error(`unknown indication ${JSON.stringify(unreachable)}`);
      }
    }
  }

  private onDimse(event: DimseEvent): void {
    if (event.type === 'command') {
      this.replyCommand = event.command;
      this.replyContextId = event.presentationContextId;
      this.reply = new GatheredDataSet(maxReplyDataSetBytes);
      if (!event.command.hasDataSet) this.completeReply();
      return;
    }
    this.reply.add(event.data);
    if (this.reply.overLimit) throw new AssociationClosedError('ERR_REPLY_TOO_LARGE', `reply data set over ${maxReplyDataSetBytes} bytes (or over ${maxReplyDataSetBytes / heldBytesPerPdv} fragments): association aborted`);
    if (event.isLast) this.completeReply();
  }

  private completeReply(): void {
    const command = this.replyCommand;
    if (command && (command.commandField === CommandField.CStoreRq || command.commandField === CommandField.NEventReportRq)) {
      // A request from the acceptor (a C-GET sub-operation, a commitment report), not a reply to ours.
      this.replyCommand = undefined;
      const dataSet = command.hasDataSet ? this.reply.concat() : undefined;
      const handler = command.commandField === CommandField.CStoreRq ? this.init.onIncomingStore : this.init.onIncomingEventReport;
      const status = handler?.(command, dataSet) ?? Status.SopClassNotSupported;
      void this.core.sendMessage(this.replyContextId, {
        commandField: responseFieldFor(command.commandField),
        messageIdBeingRespondedTo: command.messageId,
        affectedSopClassUid: command.affectedSopClassUid,
        affectedSopInstanceUid: command.affectedSopInstanceUid,
        ...(command.eventTypeId === undefined ? {} : { eventTypeId: command.eventTypeId }),
        status,
        hasDataSet: false,
      });
      return;
    }
    if (!command) return;
    const waiter = this.waiter;
    if (!waiter || command.messageIdBeingRespondedTo !== waiter.messageId) {
      // A response to no request of ours is a protocol error (DCMTK aborts likewise): ignoring it left the
      // request waiting out the whole response timeout, 30 s per C-MOVE (helper 69).
      this.replyCommand = undefined;
      const expected = waiter === undefined ? 'no request outstanding' : `awaiting message ${waiter.messageId}`;
      this.fail(new AssociationClosedError('ERR_UNEXPECTED_RESPONSE', `the acceptor answered message ${command.messageIdBeingRespondedTo ?? '(none)'} (${expected}): association aborted`));
      this.abort();
      return;
    }
    const reply: DimseReply = { command, dataSet: command.hasDataSet ? this.reply.concat() : undefined };
    this.replyCommand = undefined;
    if (command.status !== undefined && isPendingStatus(command.status)) {
      waiter.onPending?.(reply);
      return;
    }
    this.waiter = undefined;
    waiter.resolve(reply);
  }

  private fail(error: Error): void {
    this.closedError ??= error;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(error);
  }

  /** Sends a request and resolves with its final response; pending responses go to `onPending`. */
  async request(
    presentationContextId: number,
    command: DimseCommand,
    dataSet?: Uint8Array | AsyncIterable<Uint8Array>,
    onPending?: (reply: DimseReply) => void,
  ): Promise<DimseReply> {
    if (this.closedError) throw this.closedError;
    if (this.waiter) throw new Error('one request at a time: no asynchronous operations were negotiated');
    const messageId = this.core.allocateMessageId();
    const replied = new Promise<DimseReply>((resolve, reject) => {
      this.waiter = { messageId, onPending, resolve, reject };
    });
    // The association can end while the request is still being sent, before anyone awaits the reply:
    // that rejection is handled (below, once sent), not an unhandled one that ends the process.
    replied.catch(() => undefined);
    this.requestSent = this.core.sendMessage(presentationContextId, { ...command, messageId }, dataSet);
    await this.whileSendingProgresses(this.requestSent, `message ${messageId}`);
    return this.withTimeout(replied, `response to message ${messageId}`);
  }

  /**
   * `sending`, with the association aborted once the acceptor has read nothing of it for the timeout: the
   * timeout bounded the wait for a response only, and an acceptor that stopped reading in the middle of a
   * data set (a hung process, a full disk) held the C-MOVE sending to it for good, Pending after Pending to
   * its requestor (hunt 96). Only a write that waits counts: a slow data set source is not the acceptor's.
   */
  private async whileSendingProgresses(sending: Promise<void>, what: string): Promise<void> {
    const connection = this.core.connection;
    let timer: TimerHandle | undefined;
    const watch = (delayMs: number) => {
      timer = this.clock.setTimeout(() => {
        const stalledMs = this.clock.nowMs() - connection.lastWriteProgressMs;
        if (!connection.writeBlocked || stalledMs < this.timeoutMs) return watch(connection.writeBlocked ? this.timeoutMs - stalledMs : this.timeoutMs);
        this.fail(new AssociationClosedError('ERR_ASSOCIATION_TIMEOUT', `sending ${what}: the acceptor read nothing for ${stalledMs} ms; association aborted`));
        // Destroyed, the connection ends the write that waits, and with it the sending.
        this.abort();
      }, delayMs);
    };
    watch(this.timeoutMs);
    try {
      await sending;
    } finally {
      this.clock.clearTimeout(timer);
    }
  }

  /**
   * Asks the SCP to stop the request in progress (C-CANCEL-RQ, PS3.7 9.3.2.3, for C-FIND, C-GET and
   * C-MOVE); the request's final response then says Cancel, unless it had finished first.
   */
  async cancel(presentationContextId: number): Promise<void> {
    const waiter = this.waiter;
    if (waiter === undefined || this.closedError) return;
    await this.requestSent.catch(() => undefined);
    await this.core.sendMessage(presentationContextId, { commandField: CommandField.CCancelRq, messageIdBeingRespondedTo: waiter.messageId, hasDataSet: false });
  }

  async release(): Promise<void> {
    if (this.closedError || !this.core.isEstablished) {
      this.core.connection.destroy();
      return;
    }
    const released = new Promise<void>((resolve) => {
      this.settleRelease = resolve;
    });
    await this.core.fire({ type: 'releaseRequest' });
    try {
      await this.withTimeout(released, 'release');
    } finally {
      this.core.connection.destroy();
      this.core.stopTimers();
    }
  }

  abort(): void {
    this.core.abort();
    this.core.connection.destroy();
    this.core.stopTimers();
  }
}
