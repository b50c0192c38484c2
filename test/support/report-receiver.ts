/**
 * A modality's Storage Commitment SCU side, for tests: it listens on loopback and takes the
 * N-EVENT-REPORTs an archive sends on associations of its own (PS3.4 J.3.3), recording each one with the
 * association's proposed role selection. Built on the project's PS3.8 machine as an acceptor.
 */
import { createServer, type Socket } from 'node:net';
import { CommandField, Status, type DimseCommand } from '../../src/codec/dimse.ts';
import { DicomApplicationContext, PresentationContextResult, type RoleSelection } from '../../src/codec/pdu.ts';
import { AssociationCore, DicomConnection } from '../../src/actors/association/connection.ts';
import type { DimseEvent } from '../../src/actors/association/dimse-assembler.ts';
import type { UlIndication } from '../../src/actors/association/state-machine.ts';
import { systemClock } from '../../src/actors/runtime/clock.ts';
import { parseDatasetTree, type TreeElement } from '../../src/codec/dataset/tree.ts';
import { waitFor } from './wait.ts';

export interface ReceivedReport {
  callingAeTitle: string;
  roleSelections: RoleSelection[];
  command: DimseCommand;
  elements: TreeElement[];
}

export interface ReportReceiver {
  port: number;
  reports: ReceivedReport[];
  /** Associations accepted so far. */
  associations(): number;
  /** Resolves once `count` reports have arrived. */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** `refuseScpRole`: the A-ASSOCIATE-AC answers every proposed role selection with the SCP role withheld. */
export async function startReportReceiver(aeTitle = 'MODALITY', port = 0, options: { refuseScpRole?: boolean } = {}): Promise<ReportReceiver> {
  const reports: ReceivedReport[] = [];
  let associations = 0;
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    let callingAeTitle = '';
    let roleSelections: RoleSelection[] = [];
    let pending: { command: DimseCommand; contextId: number; parts: Uint8Array[] } | undefined;
    const connection = new DicomConnection(
      { socket, limits: { maxPDataBytes: 1024 * 1024, maxAssociateBytes: 64 * 1024 }, maxUnprocessedBytes: 8 * 1024 * 1024, clock: systemClock },
      {
        onPdus: (pdus, bytes) => {
          for (const pdu of pdus) void core.fire({ type: 'pduReceived', pdu });
          connection.consumed(bytes);
        },
        onInvalidPdu: () => socket.destroy(),
        onClosed: () => void core.fire({ type: 'transportClosed' }),
      },
    );
    const answer = (contextId: number, command: DimseCommand) =>
      void core.sendMessage(contextId, {
        commandField: CommandField.NEventReportRsp,
        messageIdBeingRespondedTo: command.messageId,
        affectedSopClassUid: command.affectedSopClassUid,
        affectedSopInstanceUid: command.affectedSopInstanceUid,
        eventTypeId: command.eventTypeId,
        status: Status.Success,
        hasDataSet: false,
      });
    const core: AssociationCore = new AssociationCore(
      { connection, clock: systemClock, artimTimeoutMs: 10_000, isRequestor: false },
      {
        onIndication: (indication: UlIndication) => {
          switch (indication.type) {
            case 'associateRequested': {
              const rq = indication.rq;
              associations++;
              callingAeTitle = rq.callingAeTitle;
              roleSelections = rq.userInformation.roleSelections;
              const answers = rq.presentationContexts.map((pc) => ({ id: pc.id, result: PresentationContextResult.Acceptance, transferSyntaxUid: pc.transferSyntaxUids[0]! }));
              for (const pc of rq.presentationContexts) core.acceptedContexts.set(pc.id, { abstractSyntaxUid: pc.abstractSyntaxUid, transferSyntaxUid: pc.transferSyntaxUids[0]! });
              void core.fire({
                type: 'associateAccept',
                ac: {
                  type: 'associateAc',
                  protocolVersion: 1,
                  calledAeTitle: aeTitle,
                  callingAeTitle: rq.callingAeTitle,
                  applicationContextName: DicomApplicationContext,
                  presentationContexts: answers,
                  userInformation: {
                    maxPduLength: 65536,
                    implementationClassUid: '1.2.3.4',
                    roleSelections: rq.userInformation.roleSelections.map((r) => (options.refuseScpRole ? { ...r, scpRole: false } : r)),
                  },
                },
              });
              return;
            }
            case 'pData':
              core.deliverPData(indication);
              return;
            case 'releaseRequested':
              void core.fire({ type: 'releaseResponse' });
              return;
            default:
              return;
          }
        },
        onDimse: (event: DimseEvent) => {
          if (event.type === 'command') {
            pending = { command: event.command, contextId: event.presentationContextId, parts: [] };
            if (!event.command.hasDataSet) pending = undefined;
            return;
          }
          if (!pending) return;
          pending.parts.push(Uint8Array.from(event.data));
          if (!event.isLast) return;
          const { command, contextId, parts } = pending;
          pending = undefined;
          const transferSyntaxUid = core.acceptedContexts.get(contextId)!.transferSyntaxUid;
          reports.push({ callingAeTitle, roleSelections, command, elements: parseDatasetTree(Buffer.concat(parts), transferSyntaxUid) });
          answer(contextId, command);
        },
      },
    );
    void core.fire({ type: 'transportIndication' });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    port: address.port,
    reports,
    associations: () => associations,
    waitFor: async (count, timeoutMs = 20_000) => {
      await waitFor(`${count} commitment reports`, () => reports.length >= count, timeoutMs);
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
