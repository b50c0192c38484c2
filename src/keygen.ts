/** `pacs-mesh keygen --out FILE`: writes a new swarm key (the private mesh's shared secret). */
import { stat } from 'node:fs/promises';
import { ConfigError } from './config.ts';
import { writeSwarmKeyFile } from './net/swarm-key.ts';

/** The FILE of `--out FILE` or `--out=FILE` (as `start` takes its options), or undefined for anything else. */
function outFile(args: readonly string[]): string | undefined {
  if (args.length === 2 && args[0] === '--out') return args[1];
  if (args.length === 1 && args[0]!.startsWith('--out=')) return args[0]!.slice('--out='.length);
  return undefined;
}

export async function runKeygen(args: readonly string[]): Promise<number> {
  const file = outFile(args);
  if (file === undefined || file.trim() === '') throw new ConfigError('usage: pacs-mesh keygen --out FILE');
  // The key file is created 0600 and never overwrites an existing key by accident.
  await writeSwarmKeyFile(file).catch(async (error: NodeJS.ErrnoException) => {
    // A folder "exists" too: "remove it first" was the answer to `keygen --out /etc/pacs-mesh` (hunt 162).
    if ((error.code === 'EEXIST' || error.code === 'EISDIR') && (await stat(file).then((s) => s.isDirectory(), () => false))) {
      throw new ConfigError(`${file} is a directory: give the path of the key file to create in it, e.g. --out ${file.replace(/\/+$/, '')}/swarm.key`);
    }
    if (error.code === 'EEXIST') throw new ConfigError(`${file} already exists; remove it first to make a new key`);
    // A missing or unwritable folder is the operator's to fix: one line, no stack trace.
    throw new ConfigError(`cannot write the swarm key to ${file}: ${error.code === undefined ? error.message : `${error.code} (${error.message.replace(/^\w+: /, '')})`}`);
  });
  process.stdout.write(`wrote a swarm key to ${file}\n`);
  return 0;
}
