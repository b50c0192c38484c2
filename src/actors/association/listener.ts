/**
 * The DICOM port: a plain `net` server bound to the configured host (dcmjs-dimse's Server cannot bind
 * one address, STACK.md trap 8). Each connection becomes one association actor.
 */
import { listenOn } from '../runtime/listen.ts';
import { createServer, type Server, type Socket } from 'node:net';
import type { Ref } from '../runtime/nact.ts';
import { dispatch } from '../runtime/nact.ts';
import { spawnAssociation, type SpawnedAssociation } from './actor.ts';
import type { AssociationDeps } from './services/deps.ts';

export interface DicomListenerInit {
  host: string;
  port: number;
  maxAssociations: number;
  parent: Ref<any>;
  deps: AssociationDeps;
  /**
   * The balancer's front door (issue 4): may hand the connection to another peer through a tunnel.
   * Without one, or when it answers 'local', the association is served here.
   */
  frontDoor?: { route(socket: Socket): Promise<'local' | 'tunnelled'> };
}

export interface DicomListener {
  port: number;
  activeAssociations(): number;
  /** Associations served here since start (tunnelled-in ones included, tunnelled-out ones not). */
  associationsServed(): number;
  /** Stops accepting; waits up to `graceMs` for associations to end, then aborts the rest. */
  stop(graceMs: number): Promise<void>;
}

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
    served++;
    // Asked by the connection's own session when its A-ASSOCIATE-RQ arrives (it is in Sta3 then, and counts).
    const congested = () => associationCount() > init.maxAssociations;
    const association = spawnAssociation(init.parent, `association-${++sequence}`, socket, init.deps, congested);
    active.add(association);
    void association.finished.then(() => active.delete(association));
  };
  // Routing decisions are taken one at a time, so each sees the associations the previous one started here.
  let routing: Promise<void> = Promise.resolve();
  const server: Server = createServer((socket: Socket) => {
    const frontDoor = init.frontDoor;
    if (!frontDoor) return serveHere(socket);
    // Until a handler reads it, the socket buffers what the modality sends, so nothing is lost while routing.
    routing = routing.then(() =>
      frontDoor.route(socket).then(
        (decision) => {
          if (decision === 'local') serveHere(socket);
        },
        (error: unknown) => {
          init.deps.log.warn('front door failed: serving here', { error: String(error) });
          serveHere(socket);
        },
      ),
    );
  });
  // A bound on descriptors: connections that have not associated yet (closed by ARTIM after 30 s) and
  // those waiting to be closed come on top of the associations, up to this.
  server.maxConnections = init.maxAssociations * 4;
  let dropped = 0;
  server.on('drop', () => {
    // Said at the 1st refusal and every 100th after it: an operator sees why modalities cannot connect.
    if (dropped++ % 100 === 0) {
      init.deps.log.warn('DICOM connection refused: too many connections open (4x --max-associations); those that never associate close after 30 s (ARTIM)', { refused: dropped });
    }
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
      const timedOut = await Promise.race([all.then(() => false), new Promise<boolean>((r) => setTimeout(() => r(true), graceMs).unref())]);
      if (timedOut) {
        for (const association of active) dispatch(association.ref, { type: 'shutdown' });
        await Promise.race([all, new Promise((r) => setTimeout(r, 2000).unref())]);
      }
    },
  };
}
