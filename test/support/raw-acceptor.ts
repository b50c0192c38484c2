/** A raw TCP DICOM acceptor that misbehaves on purpose, for tests of the requestor side (C-MOVE, clients). */
import { createServer, type Socket } from 'node:net';
import { Status, decodeCommand, encodeCommand, responseFieldFor, type DimseCommand } from '../../src/codec/dimse.ts';
import { DicomApplicationContext, PduFramer, encodePdu, type AcceptedPresentationContext, type AssociateRqPdu, type PDataPdu } from '../../src/codec/pdu.ts';

interface RawAcceptor {
  port: number;
  close: () => Promise<void>;
  /** Resolves once every connection accepted so far has closed (none left open by the requestor). */
  allClosed: () => Promise<void>;
  /** What has arrived so far, for a test to act at a point of the exchange rather than after a guessed time. */
  seen: Readonly<Seen>;
}

interface Seen {
  connections: number;
  /** P-DATA PDUs handed to a raw acceptor's handler (none for an acceptor that reads nothing). */
  pDataPdus: number;
}

/**
 * Accepts every association (its first presentation context, with the first transfer syntax proposed) and
 * hands each P-DATA PDU to `onPData`.
 */
function rawAcceptor(onPData: (socket: Socket, pdu: PDataPdu) => void, answersRelease = false): Promise<RawAcceptor> {
  return tcpAcceptor((socket, seen) => {
    const framer = new PduFramer();
    socket.on('data', (chunk) => {
      for (const pdu of framer.push(chunk)) {
        if (socket.destroyed) return;
        if (pdu.type === 'associateRq') {
          socket.write(associateAc(pdu, pdu.presentationContexts.slice(0, 1).map((pc) => ({ id: pc.id, result: 0, transferSyntaxUid: pc.transferSyntaxUids[0]! }))));
        } else if (pdu.type === 'pData') {
          seen.pDataPdus++;
          onPData(socket, pdu);
        } else if (pdu.type === 'releaseRq' && answersRelease) {
          socket.end(encodePdu({ type: 'releaseRp' }));
        }
      }
    });
  });
}

/** The A-ASSOCIATE-AC answering `rq` with `presentationContexts`, under implementation `identity` (a test's own by default). */
function associateAc(
  rq: AssociateRqPdu,
  presentationContexts: AcceptedPresentationContext[],
  identity: { implementationClassUid: string; implementationVersionName?: string } = { implementationClassUid: '1.2.3' },
): Uint8Array {
  return encodePdu({
    type: 'associateAc',
    protocolVersion: 1,
    calledAeTitle: rq.calledAeTitle,
    callingAeTitle: rq.callingAeTitle,
    applicationContextName: DicomApplicationContext,
    presentationContexts,
    userInformation: { maxPduLength: 16384, ...identity, roleSelections: [] },
  });
}

/**
 * A TCP server on a free loopback port handing each connection to `onConnection`; close() destroys them all.
 * After `connectionsAccepted` connections it stops listening (the next connection is refused).
 */
async function tcpAcceptor(onConnection: (socket: Socket, seen: Seen) => void, connectionsAccepted = Number.POSITIVE_INFINITY): Promise<RawAcceptor> {
  const sockets = new Set<Socket>();
  const closings: Array<Promise<void>> = [];
  const seen: Seen = { connections: 0, pDataPdus: 0 };
  const server = createServer((socket) => {
    sockets.add(socket);
    closings.push(new Promise((resolve) => socket.once('close', () => resolve())));
    socket.on('error', () => undefined);
    if (++seen.connections >= connectionsAccepted) server.close();
    onConnection(socket, seen);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    port: address.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        if (server.listening) server.close(() => resolve());
        else resolve();
      }),
    allClosed: async () => void (await Promise.all(closings)),
    seen,
  };
}

/** Accepts the association, then never answers a request (a C-STORE waits for its response for ever). */
export function acceptorNeverAnswering(): Promise<RawAcceptor> {
  return rawAcceptor(() => undefined);
}

/** Accepts TCP connections and never answers anything, not even the A-ASSOCIATE-RQ. */
export function silentTcpAcceptor(): Promise<RawAcceptor> {
  return tcpAcceptor(() => undefined);
}

/** Closes the connection without an A-ABORT as soon as the first P-DATA PDU arrives: a destination that dies mid-transfer. */
export function acceptorThatHangsUpMidRequest(): Promise<RawAcceptor> {
  return rawAcceptor((socket) => socket.destroy());
}

/**
 * Answers each request (once its data set, if any, has arrived) with Success for a Message ID one above
 * the request's: a destination whose answers match no request of ours.
 */
export function acceptorAnsweringWrongMessageId(): Promise<RawAcceptor> {
  return acceptorAnsweringSuccess(1);
}

/**
 * Answers each request with Success and never answers an A-RELEASE-RQ (nor closes): a destination that
 * keeps its association open once the requestor is done.
 */
export function acceptorNeverReleasing(): Promise<RawAcceptor> {
  return acceptorAnsweringSuccess(0);
}

/** Answers each request `delayMs` after its data set has arrived, with Success, and answers the A-RELEASE-RQ: a slow destination. */
export function acceptorAnsweringSlowly(delayMs: number): Promise<RawAcceptor> {
  return acceptorAnsweringSuccess(0, delayMs, true);
}

/** Answers each request, once its data set (if any) has arrived, with Success for its Message ID plus `messageIdShift`. */
function acceptorAnsweringSuccess(messageIdShift: number, delayMs = 0, answersRelease = false): Promise<RawAcceptor> {
  const awaitingDataSet = new WeakMap<Socket, DimseCommand>();
  return rawAcceptor((socket, pdu) => {
    for (const value of pdu.values) {
      if (!value.isLast) continue;
      let command: DimseCommand | undefined;
      if (value.isCommand) {
        command = decodeCommand(value.data);
        if (command.hasDataSet) {
          awaitingDataSet.set(socket, command);
          continue;
        }
      } else {
        command = awaitingDataSet.get(socket);
        awaitingDataSet.delete(socket);
      }
      if (!command) continue;
      const response = encodeCommand({
        commandField: responseFieldFor(command.commandField),
        messageIdBeingRespondedTo: (command.messageId ?? 0) + messageIdShift,
        affectedSopClassUid: command.affectedSopClassUid,
        affectedSopInstanceUid: command.affectedSopInstanceUid,
        status: Status.Success,
        hasDataSet: false,
      });
      const answer = encodePdu({ type: 'pData', values: [{ presentationContextId: value.presentationContextId, isCommand: true, isLast: true, data: response }] });
      if (delayMs === 0) socket.write(answer);
      else setTimeout(() => socket.destroyed || socket.write(answer), delayMs);
    }
  }, answersRelease);
}

/**
 * Answers each request without a data set with Success announcing one, then sends `emptyPdvs` data set PDVs
 * of no bytes, none of them the last: a destination that makes a requestor gather fragments for ever.
 */
export function acceptorAnsweringWithEmptyPdvs(emptyPdvs: number): Promise<RawAcceptor> {
  return rawAcceptor((socket, pdu) => {
    for (const value of pdu.values) {
      if (!value.isCommand || !value.isLast) continue;
      const command = decodeCommand(value.data);
      const response = encodeCommand({
        commandField: responseFieldFor(command.commandField),
        messageIdBeingRespondedTo: command.messageId,
        affectedSopClassUid: command.affectedSopClassUid,
        status: Status.Success,
        hasDataSet: true,
      });
      const id = value.presentationContextId;
      socket.write(encodePdu({ type: 'pData', values: [{ presentationContextId: id, isCommand: true, isLast: true, data: response }] }));
      const perPdu = 2048;
      for (let sent = 0; sent < emptyPdvs; sent += perPdu) {
        const values = Array.from({ length: Math.min(perPdu, emptyPdvs - sent) }, () => ({ presentationContextId: id, isCommand: false, isLast: false, data: new Uint8Array(0) }));
        socket.write(encodePdu({ type: 'pData', values }));
      }
    }
  });
}

/** What a GDCM-like receiver got: each C-STORE data set, with the syntax of the context that carried it. */
export interface GdcmLikeDelivery {
  contextTransferSyntaxUid: string;
  dataSet: Uint8Array;
}

const implicitVrLittleEndian = '1.2.840.10008.1.2';
const explicitVrLittleEndian = '1.2.840.10008.1.2.1';

/** How a GDCM-like receiver meets the associations after the ones it accepts, and which ones it sits on. */
export interface GdcmLikeOptions {
  /** Associations accepted; the later ones are refused, as `refusal` says. */
  associationsAccepted?: number;
  /** 'reject': A-ASSOCIATE-RJ (transient, local limit exceeded); 'stop listening': their connection is refused. */
  refusal?: 'reject' | 'stop listening';
  /** Whether the `index`th A-ASSOCIATE-RQ (1-based) is left unanswered, for ever (a receiver slow to accept). */
  holdsAssociation?: (index: number) => boolean;
}

/**
 * A C-STORE receiver that behaves as GDCM's (gdcmscu --move, 3.0.21: ULActionAE6): it announces GDCM's
 * Implementation Class UID, accepts each context in implicit VR LE when proposed, else explicit VR LE, else
 * refuses it (transfer syntaxes not supported), reads every data set in one syntax, that of the last
 * context it accepted, and only from the PDUs after its command's. A data set sent on a context of another
 * syntax, or in its command's PDU, is misread or never seen: the connection is closed (gdcmscu aborts, or
 * waits). Others are answered Success and kept in `deliveries`.
 *
 * With `associationsAccepted`, the associations after that many are rejected (transient, by the presentation
 * provider: local limit exceeded), as a receiver at its limit of associations does, or their connection is
 * refused. gdcmscu's receiver takes one per C-MOVE (3.0.21 refused the connection of a second: hunt 160).
 */
export async function acceptorLikeGdcm({ associationsAccepted = Number.POSITIVE_INFINITY, refusal = 'reject', holdsAssociation = () => false }: GdcmLikeOptions = {}): Promise<
  RawAcceptor & { deliveries: GdcmLikeDelivery[]; associations: AssociateRqPdu['presentationContexts'][]; aborts: number[] }
> {
  const deliveries: GdcmLikeDelivery[] = [];
  /** The presentation contexts each association proposed, in the order they came. */
  const associations: AssociateRqPdu['presentationContexts'][] = [];
  /** The associations (1-based, in the order they came) whose requestor sent an A-ABORT. */
  const aborts: number[] = [];
  const acceptor = await tcpAcceptor((socket) => {
    const framer = new PduFramer();
    const accepted = new Map<number, string>();
    let readSyntax = implicitVrLittleEndian;
    let command: DimseCommand | undefined;
    let dataSet: Uint8Array[] = [];
    let index = 0;
    socket.on('data', (chunk) => {
      for (const pdu of framer.push(chunk)) {
        if (socket.destroyed) return;
        if (pdu.type === 'associateRq') {
          index = associations.push(pdu.presentationContexts);
          if (index > associationsAccepted) {
            socket.end(encodePdu({ type: 'associateRj', result: 2, source: 3, reason: 2 }));
            return;
          }
          if (holdsAssociation(index)) continue;
          const presentationContexts = pdu.presentationContexts.map((pc) => {
            const syntax = [implicitVrLittleEndian, explicitVrLittleEndian].find((ts) => pc.transferSyntaxUids.includes(ts));
            if (syntax === undefined) return { id: pc.id, result: 4, transferSyntaxUid: '' };
            accepted.set(pc.id, syntax);
            readSyntax = syntax;
            return { id: pc.id, result: 0, transferSyntaxUid: syntax };
          });
          socket.write(associateAc(pdu, presentationContexts, { implementationClassUid: '1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.21', implementationVersionName: 'GDCM 3.0.21' }));
        } else if (pdu.type === 'pData') {
          let commandEndedHere = false;
          for (const value of pdu.values) {
            if (value.isCommand) {
              if (value.isLast) command = decodeCommand(value.data);
              commandEndedHere ||= value.isLast;
              continue;
            }
            // GDCM reads a data set only from the PDUs after its command's: one that shares it is never
            // seen, and gdcmscu waits for it (the requestor, for its response) until a timeout.
            if (commandEndedHere) {
              socket.destroy();
              return;
            }
            dataSet.push(value.data);
            if (!value.isLast || command === undefined) continue;
            const contextTransferSyntaxUid = accepted.get(value.presentationContextId) ?? '';
            if (contextTransferSyntaxUid !== readSyntax) {
              socket.destroy();
              return;
            }
            deliveries.push({ contextTransferSyntaxUid, dataSet: Buffer.concat(dataSet) });
            dataSet = [];
            const response = encodeCommand({
              commandField: responseFieldFor(command.commandField),
              messageIdBeingRespondedTo: command.messageId,
              affectedSopClassUid: command.affectedSopClassUid,
              affectedSopInstanceUid: command.affectedSopInstanceUid,
              status: Status.Success,
              hasDataSet: false,
            });
            socket.write(encodePdu({ type: 'pData', values: [{ presentationContextId: value.presentationContextId, isCommand: true, isLast: true, data: response }] }));
          }
        } else if (pdu.type === 'releaseRq') {
          socket.end(encodePdu({ type: 'releaseRp' }));
        } else if (pdu.type === 'abort') {
          aborts.push(index);
        }
      }
    });
  }, refusal === 'stop listening' ? associationsAccepted : Number.POSITIVE_INFINITY);
  return { ...acceptor, deliveries, associations, aborts };
}
