/**
 * The root of one peer's actor tree. Children: the association supervisor (parent of one actor per
 * DICOM association) and, once `startMesh` ran, the mesh children membership and balancer (custody and
 * http join in later issues).
 *
 * Supervision: a mesh child that throws is restarted per the pure restart policy (policy.ts): after the
 * back-off delay nact resets it, and the child re-initializes from its data directory (a new incarnation,
 * the persisted term and vote, the learnt roster). Beyond the budget the child is stopped and
 * `onEscalate` runs: the default logs an error; a peer (src/peer.ts) fails there, and the command stops it
 * and exits 1 so that its service manager restarts it whole (a child that cannot stay up in-process will
 * not be cured by more retries).
 * While a child waits out its back-off, nact queues its messages; the children bound what they enqueue.
 */
import type { PeerAddresses } from '../membership/messages.ts';
import type { MeshNode } from '../../net/node.ts';
import { startBalancer, type BalancerService, type BalancerServiceInit } from '../balancer/actor.ts';
import { startMembership, type LocalStats, type MembershipService, type MembershipServiceInit } from '../membership/actor.ts';
import { systemClock, type Clock } from '../runtime/clock.ts';
import { silentLogger, type Logger } from '../runtime/logger.ts';
import { spawnActor, startActorSystem, stopActor, type ActorSystem, type CrashDecision, type Ref } from '../runtime/nact.ts';
import { defaultRestartPolicy, initPolicy, stepPolicy, type PolicyState, type RestartPolicy } from './policy.ts';

type SupervisorMsg = { type: 'noop' };

export class SiteSupervisorError extends Error {
  static readonly NAME = 'SiteSupervisorError';
  override readonly name = SiteSupervisorError.NAME;
  readonly code = 'ERR_NO_SUCH_CHILD' as const;
}

export type MeshChildName = 'membership' | 'balancer';

export interface SiteSupervisorOptions {
  policy?: RestartPolicy;
  clock?: Clock;
  log?: Logger;
  /** A child exhausted its restart budget and was stopped. */
  onEscalate?: (child: string, error: unknown) => void;
}

export interface MeshChildrenInit {
  node: MeshNode;
  peerId: string;
  siteName: string;
  /** See MembershipServiceInit.siteShared, build, onSiteNameTaken and onSelfStalled. */
  siteShared?: boolean;
  build?: string;
  onSiteNameTaken?: MembershipServiceInit['onSiteNameTaken'];
  onSelfStalled?: MembershipServiceInit['onSelfStalled'];
  priority: number;
  dataDir: string;
  addresses: PeerAddresses;
  /** Membership timings (see membership/actor.ts for the defaults and why). */
  heartbeatIntervalMs?: number;
  suspectAfterMs?: number;
  deadAfterMs?: number;
  /** What the first heartbeats say about this peer (see MembershipServiceInit.localStats). */
  localStats?: LocalStats;
  /** Balancer options passed through (pinned roster, timings, routing limits). */
  balancer?: Omit<BalancerServiceInit, 'node' | 'peerId' | 'dataDir' | 'membership' | 'clock' | 'log' | 'parent' | 'onCrash' | 'name'>;
}

export interface MeshChildren {
  membership: MembershipService;
  balancer: BalancerService;
  stop(): Promise<void>;
}

export interface SiteSupervisor {
  system: ActorSystem;
  associations: Ref<SupervisorMsg>;
  /** Starts membership then balancer under a 'mesh' group, both supervised by the restart policy. */
  startMesh(init: MeshChildrenInit): Promise<MeshChildren>;
  /** The crash handler a supervised child passes to its actor (policy + back-off + escalation). */
  crashHandler(child: string): (error: unknown) => Promise<CrashDecision>;
  /** Test hook: make a child throw on its next message. */
  crashChild(child: MeshChildName): void;
  /** Restarts performed per child so far, and whether it escalated. */
  supervision(child: string): { restarts: number; escalated: boolean };
  stop(): void;
}

export function startSiteSupervisor(site: string, options: SiteSupervisorOptions = {}): SiteSupervisor {
  const clock = options.clock ?? systemClock;
  const log = (options.log ?? silentLogger).child({ component: 'supervisor' });
  const policy = options.policy ?? defaultRestartPolicy;
  const system = startActorSystem(`pacs-mesh-${site}`);
  // Association actors decide their own fate on a crash (abort and stop); this parent only groups them.
  const associations = spawnActor<null, SupervisorMsg>(system, { name: 'associations', initialState: null, handle: (state) => state });
  const policies = new Map<string, PolicyState>();
  const crashHooks = new Map<string, () => void>();
  let stopped = false;

  const crashHandler = (child: string) => async (error: unknown): Promise<CrashDecision> => {
    const step = stepPolicy(policies.get(child) ?? initPolicy(policy), { type: 'crashed', nowMs: clock.nowMs() });
    policies.set(child, step.state);
    const decision = step.decision;
    if (decision.type === 'restart') {
      log.warn('restarting child', { child, delayMs: decision.delayMs, attempt: decision.attempt, error: (error as Error)?.message });
      await new Promise<void>((resolve) => clock.setTimeout(resolve, decision.delayMs));
      return stopped ? 'stop' : 'reset';
    }
    log.error('child exhausted its restart budget: stopped', { child, error: (error as Error)?.message });
    try {
      options.onEscalate?.(child, error);
    } catch (err) {
      log.error('onEscalate threw', { error: (err as Error).message });
    }
    return 'stop';
  };

  return {
    system,
    associations,
    crashHandler,
    async startMesh(init) {
      const mesh = spawnActor<null, SupervisorMsg>(system, { name: 'mesh', initialState: null, handle: (state) => state });
      const childLog = options.log ?? silentLogger;
      const membership = await startMembership({
        node: init.node,
        peerId: init.peerId,
        siteName: init.siteName,
        ...(init.siteShared === true ? { siteShared: true } : {}),
        ...(init.build !== undefined ? { build: init.build } : {}),
        ...(init.onSiteNameTaken !== undefined ? { onSiteNameTaken: init.onSiteNameTaken } : {}),
        ...(init.onSelfStalled !== undefined ? { onSelfStalled: init.onSelfStalled } : {}),
        priority: init.priority,
        dataDir: init.dataDir,
        addresses: init.addresses,
        clock,
        log: childLog.child({ component: 'membership' }),
        parent: mesh,
        ...(init.heartbeatIntervalMs !== undefined ? { heartbeatIntervalMs: init.heartbeatIntervalMs } : {}),
        ...(init.suspectAfterMs !== undefined ? { suspectAfterMs: init.suspectAfterMs } : {}),
        ...(init.deadAfterMs !== undefined ? { deadAfterMs: init.deadAfterMs } : {}),
        ...(init.localStats !== undefined ? { localStats: init.localStats } : {}),
        onCrash: crashHandler('membership'),
      });
      let balancer: BalancerService;
      try {
        balancer = await startBalancer({
          ...init.balancer,
          node: init.node,
          peerId: init.peerId,
          dataDir: init.dataDir,
          membership,
          clock,
          log: childLog.child({ component: 'balancer' }),
          parent: mesh,
          onCrash: crashHandler('balancer'),
        });
      } catch (err) {
        await membership.stop();
        throw err;
      }
      crashHooks.set('membership', () => membership.crashForTest('crashChild'));
      crashHooks.set('balancer', () => balancer.crashForTest('crashChild'));
      return {
        membership,
        balancer,
        async stop() {
          crashHooks.delete('membership');
          crashHooks.delete('balancer');
          await balancer.stop();
          await membership.stop();
          try {
            stopActor(mesh);
          } catch {
            // the actor system is already stopped
          }
        },
      };
    },
    crashChild(child) {
      const hook = crashHooks.get(child);
      if (hook === undefined) throw new SiteSupervisorError(`no running child named ${child}`);
      hook();
    },
    supervision(child) {
      const state = policies.get(child);
      return { restarts: state?.restartsTotal ?? 0, escalated: state?.escalated ?? false };
    },
    stop: () => {
      stopped = true;
      stopActor(system);
    },
  };
}
