/** The frame every benchmark script shares: its work directory, the load check, and the exit code. */
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { which } from '../../../test/support/dicom-tools.ts';
import { hostInfo, loadWarning } from './stats.ts';

export interface BenchStart {
  workDir: string;
  startedAt: string;
  hostAtStart: Record<string, unknown>;
}

/**
 * Checks storescu is installed (undefined when not, after saying so), makes a fresh work directory under
 * `--tmp` (or the system temp dir) removed at exit unless `--keep`, and warns when the machine is busy.
 */
export async function startBench(name: string, args: Map<string, string | true>): Promise<BenchStart | undefined> {
  if (which('storescu') === undefined) {
    console.error('storescu (DCMTK) is not installed: apt-get install dcmtk');
    return undefined;
  }
  const tmpBase = typeof args.get('tmp') === 'string' ? resolve(String(args.get('tmp'))) : tmpdir();
  const workDir = await mkdtemp(join(tmpBase, `pacs-mesh-bench-${name}-`));
  const keep = args.has('keep');
  process.on('exit', () => {
    if (!keep) rmSync(workDir, { recursive: true, force: true });
  });
  const hostAtStart = hostInfo();
  const busy = loadWarning();
  if (busy !== undefined) console.log(busy);
  return { workDir, startedAt: new Date().toISOString(), hostAtStart };
}

/** Runs a benchmark's main and exits with its code (1 on an unexpected error). */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
