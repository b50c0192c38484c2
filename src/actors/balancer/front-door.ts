/**
 * The front door: for each new DICOM connection, serve it here or tunnel it to the peer the routing
 * table names. Routing never loses an association: no leader or table, an unknown or unreachable target,
 * or a tunnel that fails to open all answer 'local', with the client socket still unread.
 *
 * A connection that itself arrived through a tunnel is always served locally (no second hop, no loop).
 */
import type { Socket } from 'node:net';
import { countDown, countUp } from '../../keyed-counts.ts';
import type { MeshNode } from '../../net/node.ts';
import { openTunnel, startTunnelServer, tunnelledClientOf, watchTunnelledAcceptor, type TunnelClient, type TunnelServer } from '../../net/tunnel.ts';
import type { Logger } from '../runtime/logger.ts';
import type { BalancerService } from './actor.ts';

export interface FrontDoorInit {
  balancer: Pick<BalancerService, 'chooseTarget'>;
  node: MeshNode;
  selfPeerId: string;
  log: Logger;
  /** Associations this peer serves right now (live, unlike the routing table's heartbeat figures). */
  localActiveAssociations?: () => number;
  /** Bound on opening a tunnel before serving locally instead. Default 2000. */
  tunnelOpenTimeoutMs?: number;
}

export type RouteResult = 'local' | 'tunnelled';

export interface FrontDoorStats {
  local: number;
  tunnelled: number;
  /** Tunnels that failed to open (the association was then served locally). */
  fallbacks: number;
  /** Outgoing tunnels still carrying bytes. */
  tunnelsOpen: number;
  /**
   * Connections routing sent to each other peer (by PeerId), whether their tunnel opened or fell back: the
   * balancer's spread, which a tunnel slow to open (a loaded peer) does not change. At most routedToPeersMax peers.
   */
  routedTo: Record<string, number>;
}

/** Peers counted in FrontDoorStats.routedTo: a mesh has at most 256 members; later ones are not counted. */
const routedToPeersMax = 256;

export interface FrontDoor {
  /**
   * Call before spawning a local association; 'tunnelled' means the socket now belongs to a tunnel.
   * `onTunnelling` is called when the decision is to tunnel, before the tunnel is opened (which may take up to
   * tunnelOpenTimeoutMs): the caller need not hold its next decision for that.
   */
  route(socket: Socket, onTunnelling?: () => void): Promise<RouteResult>;
  /** The real client of a connection, when it came through a tunnel (for logs and access control). */
  clientOf(socket: Socket): Promise<TunnelClient | undefined>;
  /** Accept tunnels from other peers, connecting each to this peer's DICOM port. */
  serveInbound(localDicomPort: number, localHost?: string): Promise<void>;
  stats(): FrontDoorStats;
  stop(): Promise<void>;
}

export function createFrontDoor(init: FrontDoorInit): FrontDoor {
  const { balancer, node, log } = init;
  const stats: Omit<FrontDoorStats, 'routedTo'> = { local: 0, tunnelled: 0, fallbacks: 0, tunnelsOpen: 0 };
  const routedTo = new Map<string, number>();
  const outgoing = new Set<Socket>();
  // Tunnels still open per target peer: routing counts them against the target's limit (the table lags).
  const tunnelsOpenTo = new Map<string, number>();
  let server: TunnelServer | null = null;
  let stopped = false;

  const local = (): RouteResult => {
    stats.local++;
    return 'local';
  };

  return {
    async route(socket, onTunnelling) {
      if (stopped) return local();
      if ((await tunnelledClientOf(socket)) !== undefined) {
        watchTunnelledAcceptor(socket);
        return local();
      }
      let target: ReturnType<BalancerService['chooseTarget']>;
      try {
        target = balancer.chooseTarget(init.localActiveAssociations?.(), tunnelsOpenTo);
      } catch (err) {
        log.warn('front door: routing failed, serving locally', { error: (err as Error).message });
        return local();
      }
      if (target === 'local' || target.peerId === init.selfPeerId) return local();
      const client = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`;
      const targetPeerId = target.peerId;
      if (routedTo.has(targetPeerId) || routedTo.size < routedToPeersMax) countUp(routedTo, targetPeerId);
      // Counted from the decision on: the next decision must not send more to a target this one may fill.
      countUp(tunnelsOpenTo, targetPeerId);
      const tunnelEnded = (): void => countDown(tunnelsOpenTo, targetPeerId);
      onTunnelling?.();
      try {
        const tunnel = await openTunnel(node, target.peerId, socket, { timeoutMs: init.tunnelOpenTimeoutMs ?? 2000 });
        stats.tunnelled++;
        stats.tunnelsOpen++;
        outgoing.add(socket);
        void tunnel.finished.then((bytes) => {
          stats.tunnelsOpen--;
          tunnelEnded();
          outgoing.delete(socket);
          log.info('front door: tunnel finished', { client, to: target.peerId, ...bytes });
        });
        log.info('front door: association tunnelled', { client, to: target.peerId, dicom: target.dicom });
        return 'tunnelled';
      } catch (err) {
        tunnelEnded();
        stats.fallbacks++;
        log.warn('front door: tunnel failed, serving locally', { client, to: target.peerId, error: (err as Error).message });
        return local();
      }
    },
    clientOf: (socket) => tunnelledClientOf(socket),
    async serveInbound(localDicomPort, localHost) {
      if (server !== null) return;
      server = await startTunnelServer({ node, localPort: localDicomPort, ...(localHost ? { localHost } : {}), log });
    },
    stats: () => ({ ...stats, routedTo: Object.fromEntries(routedTo) }),
    async stop() {
      stopped = true;
      await server?.stop();
      for (const socket of outgoing) socket.destroy();
    },
  };
}
