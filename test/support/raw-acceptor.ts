/** A raw TCP DICOM acceptor that misbehaves on purpose, for tests of the requestor side (C-MOVE, clients). */
import { createServer, type Socket } from 'node:net';
import { DicomApplicationContext, PduFramer, encodePdu } from '../../src/codec/pdu.ts';

/**
 * Accepts every association (its first presentation context, with the first transfer syntax proposed),
 * then closes the connection without an A-ABORT as soon as the first P-DATA PDU arrives: a destination
 * that dies mid-transfer.
 */
export async function acceptorThatHangsUpMidRequest(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    const framer = new PduFramer();
    socket.on('error', () => undefined);
    socket.on('data', (chunk) => {
      for (const pdu of framer.push(chunk)) {
        if (pdu.type === 'associateRq') {
          socket.write(
            encodePdu({
              type: 'associateAc',
              protocolVersion: 1,
              calledAeTitle: pdu.calledAeTitle,
              callingAeTitle: pdu.callingAeTitle,
              applicationContextName: DicomApplicationContext,
              presentationContexts: pdu.presentationContexts.slice(0, 1).map((pc) => ({ id: pc.id, result: 0, transferSyntaxUid: pc.transferSyntaxUids[0]! })),
              userInformation: { maxPduLength: 16384, implementationClassUid: '1.2.3', roleSelections: [] },
            }),
          );
        } else if (pdu.type === 'pData') {
          socket.destroy();
          return;
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    port: address.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
