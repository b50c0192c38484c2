/** `pacs-mesh keygen --out FILE`: writes a new swarm key (the private mesh's shared secret). */
import { ConfigError } from './config.ts';
import { writeSwarmKeyFile } from './net/swarm-key.ts';

export async function runKeygen(args: readonly string[]): Promise<number> {
  if (args.length !== 2 || args[0] !== '--out' || args[1]!.trim() === '') throw new ConfigError('usage: pacs-mesh keygen --out FILE');
  // The key file is created 0600 and never overwrites an existing key by accident.
  await writeSwarmKeyFile(args[1]!).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'EEXIST') throw new ConfigError(`${args[1]} already exists; remove it first to make a new key`);
    // A missing or unwritable folder is the operator's to fix: one line, no stack trace.
    throw new ConfigError(`cannot write the swarm key to ${args[1]}: ${error.code === undefined ? error.message : `${error.code} (${error.message.replace(/^\w+: /, '')})`}`);
  });
  process.stdout.write(`wrote a swarm key to ${args[1]}\n`);
  return 0;
}
