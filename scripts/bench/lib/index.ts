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

/** What a benchmark records of each server, before its own figures. */
export interface BenchServerResult {
  id: string;
  name: string;
  version?: string;
  status: 'ok' | 'skipped' | 'failed';
  message?: string;
}

/**
 * Starts the server of `result.id` on a fresh `dataDir` (Orthanc with `orthancConfig` over its defaults: it
 * answers C-FIND and C-GET only for declared modalities unless told otherwise). A server that cannot start
 * is skipped: said in one line, and recorded in `result` (undefined is returned).
 */
export async function startBenchServer(
  result: BenchServerResult,
  dataDir: string,
  orthancConfig: Record<string, unknown> = {},
): Promise<BenchServer | undefined> {
  const factory = SERVER_FACTORIES[result.id]!;
  try {
    return result.id === 'orthanc' ? await startOrthanc({ dataDir, config: orthancConfig }) : await factory.start({ dataDir });
  } catch (e) {
    result.status = 'skipped';
    result.message = `${factory.name} failed to start: ${(e as Error).message.split('\n')[0]}`;
    console.log(`!! SKIPPED ${result.message}`);
    return undefined;
  }
}
