/**
 * The DICOM port: a plain `net` server bound to the configured host (dcmjs-dimse's Server cannot bind
 * one address, STACK.md trap 8). Each connection becomes one association actor.
 */
import { listenOn } from '../runtime/listen.ts';
import { createServer, type Server, type Socket } from 'node:net';
import type { Ref } from '../runtime/nact.ts';
import { dispatch } from '../runtime/nact.ts';
import { spawnAssociation, type SpawnedAssociation } from './actor.ts';
import { shutdownAnswerMs } from './session.ts';
import { destroyUnlessClosedInGrace, halfCloseGraceMs } from './connection.ts';
import type { AssociationDeps } from './services/deps.ts';
import { RejectReason, RejectResult, RejectSource, encodePdu } from '../../codec/pdu.ts';

export interface DicomListenerInit {
  host: string;
  port: number;
  maxAssociations: number;
  parent: Ref<any>;
  deps: AssociationDeps;
  /**
   * The balancer's front door (issue 4): may hand the connection to another peer through a tunnel.
   * Without one, or when it answers 'local', the association is served here. `onTunnelling` is called once the
   * decision is to open a tunnel, before it is opened.
   */
  frontDoor?: { route(socket: Socket, onTunnelling?: () => void): Promise<'local' | 'tunnelled'> };
}

export interface DicomListener {
  port: number;
  activeAssociations(): number;
  /**
   * Associations served here since start: A-ASSOCIATE-RQs this peer answered (tunnelled-in ones included,
   * tunnelled-out ones not; connections that never asked for one, such as a tunnel its entry peer gave up
   * on before it was ready, not at all).
   */
  associationsServed(): number;
  /** Stops accepting; waits up to `graceMs` for associations to end, then aborts the rest. */
  stop(graceMs: number): Promise<void>;
}

/** The answer to a connection over the cap: A-ASSOCIATE-RJ, transient, service provider, local limit exceeded. */
const overCapRejection = encodePdu({ type: 'associateRj', result: RejectResult.Transient, source: RejectSource.ServiceProviderPresentation, reason: RejectReason.LocalLimitExceeded });

export async function startDicomListener(init: DicomListenerInit): Promise<DicomListener> {
  const active = new Set<SpawnedAssociation>();
  let sequence = 0;
  let served = 0;
  // Connections that have not asked for an association, or only wait to be closed, are not associations.
  const associationCount = () => {
    let count = 0;
    for (const association of active) if (association.holdsAssociationSlot()) count++;
    return count;
  };
  const serveHere = (socket: Socket) => {
    // Asked by the connection's own session once, when its A-ASSOCIATE-RQ arrives (it is in Sta3 then, and
    // counts). Counted there, not at the connection: the entry peer serves the association itself when a
    // tunnel times out after this peer's end connected, and both peers counted it (hunt 145: 40 for 30).
    const associationRequested = (): boolean => {
      served++;
      return associationCount() > init.maxAssociations;
    };
    const association = spawnAssociation(init.parent, `association-${++sequence}`, socket, init.deps, associationRequested);
    active.add(association);
    void association.finished.then(() => active.delete(association));
  };
  // Routing decisions are taken one at a time, so each sees the associations the previous one started here;
  // a tunnel being opened (up to 2 s to a slow or stalled peer) does not hold the next decision.
  let routing: Promise<void> = Promise.resolve();
  // A bound on descriptors: connections that have not associated yet (closed by ARTIM after 30 s), those
  // waiting to be closed and those tunnelled to another peer come on top of the associations, up to this.
  const connectionsMax = init.maxAssociations * 4;
  let connections = 0;
  // Over it a connection is told why before it closes (a bare close read as "peer aborted association" at the
  // modality). Those still open for that, a second or two each, are bounded too; beyond, they are just closed.
  let rejecting = 0;
  let refused = 0;
  const refuse = (socket: Socket): void => {
    // Said at the 1st refusal and every 100th after it: an operator sees why modalities cannot connect.
    if (refused++ % 100 === 0) {
      init.deps.log.warn('DICOM connection refused: too many connections open (4x --max-associations: associations here, those tunnelled to other peers, and connections not associated yet, closed after 30 s by ARTIM)', { refused });
    }
    if (rejecting >= connectionsMax) {
      socket.destroy();
      return;
    }
    rejecting++;
    socket.on('error', () => undefined);
    socket.once('close', () => rejecting--);
    // Sent before the A-ASSOCIATE-RQ is read (the requestor reads it after sending its own); what it sends is
    // read and dropped, so the close does not reset the connection before it reads the answer.
    socket.end(overCapRejection);
    socket.resume();
    destroyUnlessClosedInGrace(socket, init.deps.clock);
  };
  const server: Server = createServer((socket: Socket) => {
    if (connections >= connectionsMax) return refuse(socket);
    connections++;
    socket.once('close', () => connections--);
    const frontDoor = init.frontDoor;
    if (!frontDoor) return serveHere(socket);
    // Until the association or the tunnel listens, a reset by the modality (an 'error' with no listener)
    // would end the process; the socket is destroyed all the same, and not served below.
    socket.on('error', () => undefined);
    // Until a handler reads it, the socket buffers what the modality sends, so nothing is lost while routing.
    routing = routing.then(
      () =>
        new Promise<void>((decided) => {
          frontDoor
            .route(socket, decided)
            .then(
              (decision) => {
                if (decision === 'local' && !socket.destroyed) serveHere(socket);
              },
              (error: unknown) => {
                init.deps.log.warn('front door failed: serving here', { error: String(error) });
                if (!socket.destroyed) serveHere(socket);
              },
            )
            // A connection that could not be served (a bug) is closed: it neither holds the routing of the next
            // ones nor stays open unread.
            .catch((error: unknown) => {
              init.deps.log.error('DICOM connection not served', { error: String(error) });
              socket.destroy();
            })
            .finally(decided);
        }),
    );
  });
  /** Whether `finished` settles within `waitMs` of the association clock (a timer of its that keeps nothing alive). */
  const finishedWithin = (finished: Promise<unknown>, waitMs: number): Promise<boolean> =>
    new Promise((resolve) => {
      const timer = init.deps.clock.setTimeout(() => resolve(false), waitMs);
      void finished.then(() => {
        init.deps.clock.clearTimeout(timer);
        resolve(true);
      });
    });
  const port = await listenOn(server, init.port, init.host);
  return {
    port,
    activeAssociations: associationCount,
    associationsServed: () => served,
    async stop(graceMs) {
      // close() only stops accepting here; its callback would wait for every connection to end.
      server.close();
      const all = Promise.all([...active].map((a) => a.finished));
      // The drain's last part is for retrieves to end with a final response (see AcceptorSession.onShutdown).
      const answerMs = Math.min(shutdownAnswerMs, graceMs);
      const drainEndMs = init.deps.clock.nowMs() + graceMs;
      if (await finishedWithin(all, graceMs - answerMs)) return;
      for (const association of active) dispatch(association.ref, { type: 'shutdown', drainEndMs });
      // An aborted association closes its socket within halfCloseGraceMs (see DicomConnection.close); a stuck actor does not hold the stop.
      await finishedWithin(all, Math.max(0, drainEndMs - init.deps.clock.nowMs()) + halfCloseGraceMs);
    },
  };
}
