/**
 * The socket edge of one DICOM association, for either end: framing PDUs off the TCP stream, writing
 * with back-pressure, the ARTIM timer, and read back-pressure (the socket pauses while more than
 * `maxUnprocessedBytes` of received PDUs wait to be handled).
 *
 * On top of it, `AssociationCore` runs the PS3.8 state machine, carries out its effects, assembles DIMSE
 * messages and sends commands and data sets. Both the acceptor actor and the outbound client use it.
 */
import type { Socket } from 'node:net';
import { encodeCommand, isPendingStatus, isResponseField, type DimseCommand } from '../../codec/dimse.ts';
import {
  AbortReason,
  PduError,
  PduFramer,
  encodePDataCommandAndDataSet,
  encodePDataCommandThenDataSet,
  pDataFragmentBatches,
  evenChunks,
  encodePdu,
  type Pdu,
  type PduLimits,
} from '../../codec/pdu.ts';
import { DimseAssembler, type DimseEvent } from './dimse-assembler.ts';
import { initialMachine, step, type UlEffect, type UlEvent, type UlIndication, type UlMachine } from './state-machine.ts';
import type { Clock, TimerHandle } from '../runtime/clock.ts';

/**
 * What one received PDV holds in memory until it is handled, beyond its bytes (its PDU's, its own and its
 * DIMSE event's objects, a view into the PDU): counted towards `maxUnprocessedBytes` with the bytes, or a
 * stream of 6-byte PDVs queues 27 times the bound (hunt 79: 4 MiB of them held 113 MB, an association).
 */
export const heldBytesPerPdv = 256;

/**
 * A data set received whole before it is handled (an identifier, an N-ACTION's, a reply's), its fragments
 * copied out of their PDUs. Bounded in bytes and, apart, in fragments (each holds heldBytesPerPdv beside
 * its bytes: as many as limitBytes pays for): empty or 2-byte PDVs cannot grow the list without bound, and
 * a legal data set in small PDUs is not refused for its fragments (an N-ACTION of 3.9 MiB in 4 KiB PDUs
 * was, against 4 MiB). Once over its bound nothing more is kept.
 */
export class GatheredDataSet {
  private readonly parts: Uint8Array[] = [];
  private bytes = 0;
  private fragments = 0;

  constructor(readonly limitBytes: number) {}

  /** Takes one fragment, empty ones too (copied: the PDU it came in is not kept). */
  add(data: Uint8Array): void {
    this.bytes += data.length;
    this.fragments += 1;
    if (!this.overLimit && data.length > 0) this.parts.push(Uint8Array.from(data));
  }

  get overLimit(): boolean {
    return this.bytes > this.limitBytes || this.fragments * heldBytesPerPdv > this.limitBytes;
  }

  /** The data set's bytes, while within its bound. */
  concat(): Buffer {
    return Buffer.concat(this.parts, this.bytes);
  }
}

export interface ConnectionEvents {
  onPdus(pdus: Pdu[], bytes: number): void;
  onInvalidPdu(error: PduError): void;
  onClosed(): void;
}

export interface ConnectionInit {
  socket: Socket;
  limits: PduLimits;
  maxUnprocessedBytes: number;
  /** The association's clock: `lastWriteProgressMs`, and the bound on a half-closed socket's wait (see close). */
  clock: Clock;
}

/** How long a half-closed socket waits for the peer to close its side before it is destroyed. */
export const halfCloseGraceMs = 2000;

/**
 * Destroys a half-closed `socket` if its peer has not closed its side within halfCloseGraceMs of `clock`
 * (the timer cleared when it closes): a peer that never closes must not keep the socket alive forever.
 */
export function destroyUnlessClosedInGrace(socket: Socket, clock: Clock): void {
  const timer = clock.setTimeout(() => socket.destroy(), halfCloseGraceMs);
  socket.once('close', () => clock.clearTimeout(timer));
}

export class DicomConnection {
  private readonly framer: PduFramer;
  private unprocessedBytes = 0;
  private paused = false;
  private closed = false;
  /** Writes waiting for the kernel buffer to drain: the peer is not reading (or is slow to). */
  private writesWaiting = 0;
  /** When a write last went into the kernel buffer, or the buffer last drained. */
  private writeProgressMs: number;
  /** Set by close(), once: the socket is destroyed if the peer has not closed its side within the grace. */
  private halfCloseArmed = false;
  /** A framing error was reported: reading stays paused and nothing more is framed or reported. */
  private framingFailed = false;
  readonly remoteAddress: string;

  constructor(
    private readonly init: ConnectionInit,
    private readonly events: ConnectionEvents,
  ) {
    this.framer = new PduFramer(init.limits);
    this.writeProgressMs = init.clock.nowMs();
    const socket = init.socket;
    socket.setNoDelay(true);
    this.remoteAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      if (this.closed) return;
      this.closed = true;
      this.events.onClosed();
    });
  }

  private onData(chunk: Buffer): void {
    if (this.framingFailed) return;
    let pdus: Pdu[];
    try {
      pdus = this.framer.push(chunk);
    } catch (error) {
      this.onFramingError(error);
      return;
    }
    if (pdus.length === 0) return;
    let held = chunk.length;
    for (const pdu of pdus) held += (pdu.type === 'pData' ? pdu.values.length : 1) * heldBytesPerPdv;
    this.unprocessedBytes += held;
    if (this.unprocessedBytes > this.init.maxUnprocessedBytes && !this.paused) {
      this.paused = true;
      this.init.socket.pause();
    }
    this.events.onPdus(pdus, held);
    // Bad bytes after those PDUs in the same chunk: reported after them, as if they had come in the next one.
    if (this.framer.failure !== undefined) this.onFramingError(this.framer.failure);
  }

  private onFramingError(error: unknown): void {
    // After a framing error nothing else on this stream can be trusted.
    this.framingFailed = true;
    this.init.socket.pause();
    this.events.onInvalidPdu(error instanceof PduError ? error : new PduError('ERR_PDU_MALFORMED', String(error)));
  }

  /** The handler finished with what onPdus was given (`bytes` as it said): resume reading once under half the bound. */
  consumed(bytes: number): void {
    this.unprocessedBytes -= bytes;
    // Not after a framing error: PDUs ahead of the bad bytes in one chunk may have paused reading for the bound.
    if (this.paused && !this.framingFailed && this.unprocessedBytes < this.init.maxUnprocessedBytes / 2) {
      this.paused = false;
      this.init.socket.resume();
    }
  }

  /** Writes; resolves when the kernel buffer has room again, so senders cannot outrun the peer. */
  write(bytes: Uint8Array): Promise<void> {
    if (this.closed || this.init.socket.destroyed) return Promise.resolve();
    const accepted = this.init.socket.write(bytes);
    this.writeProgressMs = this.init.clock.nowMs();
    if (accepted) return Promise.resolve();
    this.writesWaiting++;
    return new Promise((resolve) => {
      const done = () => {
        this.init.socket.off('drain', done);
        this.init.socket.off('close', done);
        this.writesWaiting--;
        this.writeProgressMs = this.init.clock.nowMs();
        resolve();
      };
      this.init.socket.once('drain', done);
      this.init.socket.once('close', done);
    });
  }

  /** A write waits for the peer to read. */
  get writeBlocked(): boolean {
    return this.writesWaiting > 0;
  }

  /** When bytes last moved towards the peer (a write taken by the kernel, or its buffer drained). */
  get lastWriteProgressMs(): number {
    return this.writeProgressMs;
  }

  /** Half-close after flushing: the peer sees the end of the stream. */
  close(): void {
    this.init.socket.end();
    if (this.init.socket.destroyed || this.halfCloseArmed) return;
    this.halfCloseArmed = true;
    destroyUnlessClosedInGrace(this.init.socket, this.init.clock);
  }

  destroy(): void {
    this.init.socket.destroy();
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

/** Bytes an association writes before it lets the event loop serve the others (see sendFragments). */
const yieldEveryBytes = 1024 * 1024;

export interface CoreHandlers {
  onIndication(indication: UlIndication): void;
  onDimse(event: DimseEvent): void;
  /** ARTIM fired: owners that serialise events (actors) route it through their mailbox; default: fire at once. */
  onArtimExpired?(): void;
  /** A local primitive refused by the state machine: a bug worth a log line. */
  onRefused?(event: UlEvent['type'], state: string): void;
}

export interface AssociationCoreInit {
  connection: DicomConnection;
  clock: Clock;
  artimTimeoutMs: number;
  isRequestor: boolean;
}

export class AssociationCore {
  machine: UlMachine;
  private artim: TimerHandle | undefined;
  readonly assembler: DimseAssembler;
  /** Presentation context ID -> accepted transfer syntax; filled once the association is established. */
  acceptedContexts = new Map<number, { abstractSyntaxUid: string; transferSyntaxUid: string }>();
  peerMaxPduLength = 16384;
  private nextMessageId = 1;
  /** Bytes written since this association last let the event loop serve the others (see sendFragments). */
  private bytesSinceYield = 0;

  constructor(
    private readonly init: AssociationCoreInit,
    private readonly handlers: CoreHandlers,
  ) {
    this.machine = initialMachine(init.isRequestor);
    this.assembler = new DimseAssembler((id) => this.acceptedContexts.has(id));
  }

  get connection(): DicomConnection {
    return this.init.connection;
  }

  get isEstablished(): boolean {
    return this.machine.state === 'Sta6';
  }

  allocateMessageId(): number {
    const id = this.nextMessageId;
    this.nextMessageId = (this.nextMessageId % 0xffff) + 1;
    return id;
  }

  /** Feeds one event into the state machine and carries out its effects; returns the write to await, if any. */
  fire(event: UlEvent): Promise<void> {
    const { machine, effects } = step(this.machine, event);
    this.machine = machine;
    let lastWrite: Promise<void> = Promise.resolve();
    for (const effect of effects) {
      const write = this.perform(effect);
      if (write) lastWrite = write;
    }
    return lastWrite;
  }

  private perform(effect: UlEffect): Promise<void> | undefined {
    switch (effect.type) {
      case 'connectTransport':
        return undefined; // the client connects its socket before creating the core
      case 'sendPdu':
        return this.init.connection.write(effect.pdu instanceof Uint8Array ? effect.pdu : encodePdu(effect.pdu));
      case 'startArtim':
        this.init.clock.clearTimeout(this.artim);
        this.artim = this.init.clock.setTimeout(() => {
          this.artim = undefined;
          if (this.handlers.onArtimExpired) this.handlers.onArtimExpired();
          else void this.fire({ type: 'artimExpired' });
        }, this.init.artimTimeoutMs);
        return undefined;
      case 'stopArtim':
        this.init.clock.clearTimeout(this.artim);
        this.artim = undefined;
        return undefined;
      case 'closeTransport':
        this.init.connection.close();
        return undefined;
      case 'indicate':
        this.handlers.onIndication(effect.indication);
        return undefined;
      case 'primitiveRefused':
        this.handlers.onRefused?.(effect.event, effect.state);
        return undefined;
      default: {
        const unreachable: never = effect;
        throw new Error(`unknown effect ${JSON.stringify(unreachable)}`);
      }
    }
  }

  /** Splits received P-DATA into DIMSE events for the handler. Throws on a broken DIMSE sequence. */
  deliverPData(indication: Extract<UlIndication, { type: 'pData' }>): void {
    for (const pdv of indication.pdu.values) {
      for (const event of this.assembler.push(pdv)) this.handlers.onDimse(event);
    }
  }

  /** Sends a command and, if given, its data set as a series of chunks (streamed, never concatenated). */
  async sendMessage(presentationContextId: number, command: DimseCommand, dataSet?: Uint8Array | AsyncIterable<Uint8Array>): Promise<void> {
    const commandBytes = encodeCommand({ ...command, hasDataSet: dataSet !== undefined });
    if (dataSet instanceof Uint8Array && dataSet.length > 0) {
      // A final response's small data set (a retrieve's Failed SOP Instance UID List) goes in the command's
      // PDU: PixelMed reads a final response's identifier only from there. Requests (C-STORE sub-operations)
      // and pending responses (C-FIND matches) put theirs in PDUs of its own, as DCMTK does: GDCM reads a
      // data set only from the PDUs after its command's, and took the next match, or the final response,
      // for it (hunt 155: gdcmscu found every other match, hung on an odd count, and never stored a sub-operation).
      // Either way a small message is one write.
      const whole =
        (isFinalResponse(command) ? encodePDataCommandAndDataSet(presentationContextId, commandBytes, dataSet, this.peerMaxPduLength) : undefined) ??
        encodePDataCommandThenDataSet(presentationContextId, commandBytes, dataSet, this.peerMaxPduLength);
      if (whole) {
        await this.sendFragments([whole]);
        return;
      }
    }
    if (!(await this.sendFragments(pDataFragmentBatches(presentationContextId, true, commandBytes, this.peerMaxPduLength)))) return;
    if (dataSet === undefined) return;
    if (dataSet instanceof Uint8Array) {
      await this.sendFragments(pDataFragmentBatches(presentationContextId, false, dataSet, this.peerMaxPduLength));
      return;
    }
    // One chunk of look-ahead tells which fragment is the last one.
    let previous: Uint8Array | undefined;
    try {
      for await (const chunk of evenChunks(dataSet)) {
        if (previous && !(await this.sendFragments(pDataFragmentBatches(presentationContextId, false, previous, this.peerMaxPduLength, false)))) return;
        previous = chunk;
      }
    } catch (error) {
      // The data set cannot be read to its end (a damaged copy) while part of it is out: the receiver
      // is mid-message and DIMSE has no way to take it back, so the association ends here (A-ABORT).
      this.abort(AbortReason.NotSpecified);
      throw error;
    }
    await this.sendFragments(pDataFragmentBatches(presentationContextId, false, previous ?? new Uint8Array(0), this.peerMaxPduLength, true));
  }

  /**
   * Sends P-DATA PDUs while the association can carry them (Sta6, or Sta8 before answering a release);
   * false once it cannot: it ended (its indication tells how), and reading the rest of a data set from
   * disk for nobody would only waste the time.
   */
  private async sendFragments(pdus: Iterable<Uint8Array>): Promise<boolean> {
    for (const pdu of pdus) {
      if (this.machine.state !== 'Sta6' && this.machine.state !== 'Sta8') return false;
      await this.fire({ type: 'pDataRequest', pdu });
      // A reader that keeps up takes every write at once, and awaiting a write that went through never leaves
      // the microtask queue: a large data set (a requestor announcing a tiny maximum PDU length made it 7
      // times larger on the wire) held every other association and the mesh until its last byte was out.
      this.bytesSinceYield += pdu.length;
      if (this.bytesSinceYield >= yieldEveryBytes) {
        this.bytesSinceYield = 0;
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    return true;
  }

  abort(reason: number = AbortReason.NotSpecified): void {
    void this.fire({ type: 'abortRequest', reason });
  }

  stopTimers(): void {
    this.init.clock.clearTimeout(this.artim);
    this.artim = undefined;
  }
}

/** A response that is not Pending: the last of its operation. */
function isFinalResponse(command: DimseCommand): boolean {
  return isResponseField(command.commandField) && !isPendingStatus(command.status ?? 0);
}
