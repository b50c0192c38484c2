/**
 * What tells builds apart for an operator upgrading one site at a time (`pacs-mesh --version`, `/api/mesh`
 * `self.version`): the package's version, the store format this build reads and writes, and the name it gives in
 * association negotiation.
 */
import { readFileSync } from 'node:fs';
import { implementationVersionName } from './actors/association/implementation.ts';
import { STORE_FORMAT } from './actors/storage/replica-store.ts';

export interface BuildVersion {
  readonly package: string;
  readonly storeFormat: number;
  readonly implementationVersionName: string;
}

let read: BuildVersion | undefined;

/** Read once: package.json is one directory up from both src/version.ts and the bundle, dist/pacs-mesh.js. */
export function buildVersion(): BuildVersion {
  read ??= {
    package: (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version,
    storeFormat: STORE_FORMAT,
    implementationVersionName,
  };
  return read;
}

/** The line `pacs-mesh --version` prints. */
export function versionText(): string {
  const v = buildVersion();
  return `pacs-mesh ${v.package} (store format ${v.storeFormat}, implementation version name ${v.implementationVersionName}, node ${process.version})`;
}
