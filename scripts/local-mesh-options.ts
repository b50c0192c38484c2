/**
 * The options of `npm start` (scripts/local-mesh.ts), read strictly: an option it does not know, one without
 * its value, or `--base-port=N` read as nothing, started the mesh on the default ports as if it had not been
 * given (hunt 162). Takes `--name value` and `--name=value`, as `pacs-mesh start` does.
 */
export interface LocalMeshOptions {
  /** Where the sites' data directories and the swarm key go; undefined: .data/ in the repository. */
  dataRoot?: string;
  siteCount: number;
  /** DICOM ports from here, HTTP from +100, libp2p from +200; undefined: 11112.., 8042.., 4001... */
  basePort?: number;
}

export class LocalMeshOptionError extends Error {
  override readonly name = 'LocalMeshOptionError';
  readonly code = 'ERR_LOCAL_MESH_OPTION';
}

export const localMeshUsage = 'npm start -- [--sites N (1-5)] [--data DIR] [--base-port N (1024-65000)]';

const names = ['--sites', '--data', '--base-port'] as const;

export function parseLocalMeshOptions(args: readonly string[]): LocalMeshOptions {
  const given = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const equals = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = equals > 0 ? arg.slice(0, equals) : arg;
    if (!(names as readonly string[]).includes(name)) throw new LocalMeshOptionError(`unknown option "${arg}"`);
    const value = equals > 0 ? arg.slice(equals + 1) : args[++i];
    if (value === undefined || value.trim() === '' || (equals < 0 && value.startsWith('--'))) throw new LocalMeshOptionError(`option ${name} needs a value`);
    if (given.has(name)) throw new LocalMeshOptionError(`option ${name} given twice: give it once`);
    given.set(name, value);
  }
  const whole = (name: string, min: number, max: number): number | undefined => {
    const value = given.get(name);
    if (value === undefined) return undefined;
    if (!/^\d{1,6}$/.test(value) || Number(value) < min || Number(value) > max) throw new LocalMeshOptionError(`${name} must be ${min}-${max}, not "${value}"`);
    return Number(value);
  };
  const options: LocalMeshOptions = { siteCount: whole('--sites', 1, 5) ?? 3 };
  const basePort = whole('--base-port', 1024, 65000);
  if (basePort !== undefined) options.basePort = basePort;
  const dataRoot = given.get('--data');
  if (dataRoot !== undefined) options.dataRoot = dataRoot;
  return options;
}
