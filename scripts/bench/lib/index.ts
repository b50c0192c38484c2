/** The benchmark servers by id, for `--servers a,b,c` options. */
import { orthancFactory } from './orthanc.ts';
import { pacsMeshFactory } from './pacs-mesh.ts';
import type { BenchServerFactory } from './server.ts';
import { storescpFactory } from './storescp.ts';

export * from './server.ts';
export { orthancFactory, startOrthanc, type OrthancServer } from './orthanc.ts';
export { pacsMeshFactory, startPacsMesh, type PacsMeshServer, REPO_ROOT } from './pacs-mesh.ts';
export { storescpFactory, startStorescpServer } from './storescp.ts';

export const SERVER_FACTORIES: Record<string, BenchServerFactory> = {
  storescp: storescpFactory,
  orthanc: orthancFactory,
  'pacs-mesh': pacsMeshFactory,
};
