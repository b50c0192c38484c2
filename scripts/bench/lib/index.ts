/** The benchmark servers by id, for `--servers a,b,c` options. */
import { orthancFactory, startOrthanc } from './orthanc.ts';
import { pacsMeshFactory } from './pacs-mesh.ts';
import type { BenchServer, BenchServerFactory } from './server.ts';
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

/**
 * Starts the server `id` on a fresh `dataDir` (Orthanc with `orthancConfig` over its defaults: it answers
 * C-FIND and C-GET only for declared modalities unless told otherwise). A server that cannot start is
 * skipped, said in one line: `skipped` holds why.
 */
export async function startBenchServer(id: string, dataDir: string, orthancConfig: Record<string, unknown> = {}): Promise<{ server: BenchServer } | { skipped: string }> {
  const factory = SERVER_FACTORIES[id]!;
  try {
    return { server: id === 'orthanc' ? await startOrthanc({ dataDir, config: orthancConfig }) : await factory.start({ dataDir }) };
  } catch (e) {
    const skipped = `${factory.name} failed to start: ${(e as Error).message.split('\n')[0]}`;
    console.log(`!! SKIPPED ${skipped}`);
    return { skipped };
  }
}
