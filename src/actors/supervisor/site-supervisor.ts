/**
 * The root of one peer's actor tree. Children: the association supervisor (parent of one actor per
 * DICOM association); the mesh children (membership, balancer, custody) join here in later issues.
 */
import { spawnActor, startActorSystem, stopActor, type ActorSystem, type Ref } from '../runtime/nact.ts';

type SupervisorMsg = { type: 'noop' };

export interface SiteSupervisor {
  system: ActorSystem;
  associations: Ref<SupervisorMsg>;
  stop(): void;
}

export function startSiteSupervisor(site: string): SiteSupervisor {
  const system = startActorSystem(`pacs-mesh-${site}`);
  // Association actors decide their own fate on a crash (abort and stop); this parent only groups them.
  const associations = spawnActor<null, SupervisorMsg>(system, { name: 'associations', initialState: null, handle: (state) => state });
  return {
    system,
    associations,
    stop: () => stopActor(system),
  };
}
