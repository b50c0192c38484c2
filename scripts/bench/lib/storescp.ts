/**
 * DCMTK storescp as a benchmark server: the practical upper limit of one C-STORE association on this
 * machine (it writes each received dataset to a file, no index, no fsync).
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { getFreePort, runTool, startStorescp, which } from '../../../test/support/dicom-tools.ts';
import type { BenchServer, BenchServerFactory, BenchServerStartOptions } from './server.ts';

export async function storescpVersion(): Promise<string | undefined> {
  if (which('storescp') === undefined) return undefined;
  const r = await runTool('storescp', ['--version'], { timeoutMs: 10_000 });
  return /\$dcmtk: (.*?) \$/.exec(r.stdout)?.[1] ?? (r.stdout.split('\n')[0]?.trim() || undefined);
}

export async function startStorescpServer(opts: BenchServerStartOptions): Promise<BenchServer> {
  if (which('storescp') === undefined) throw new Error('storescp (DCMTK) is not installed (apt-get install dcmtk)');
  const outDir = join(opts.dataDir, 'received');
  await mkdir(outDir, { recursive: true });
  const port = opts.dicomPort ?? (await getFreePort());
  const h = await startStorescp({ port, outDir, aeTitle: opts.aeTitle ?? 'STORESCP', timeoutMs: opts.startTimeoutMs });
  return {
    name: 'storescp',
    aeTitle: h.aeTitle,
    host: '127.0.0.1',
    dicomPort: port,
    pid: h.pid,
    dataDir: opts.dataDir,
    process: h.process,
    output: h.output,
    async countStored() {
      const entries = await readdir(outDir, { withFileTypes: true });
      return entries.filter((e) => e.isFile()).length;
    },
    stop: () => h.stop(),
  };
}

export const storescpFactory: BenchServerFactory = {
  id: 'storescp',
  name: 'storescp',
  version: storescpVersion,
  start: startStorescpServer,
};
