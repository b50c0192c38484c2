/** Starts in-process peers on loopback with throwaway data directories, for tests. */
import '../../src/polyfill.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseStartArgs } from '../../src/config.ts';
import { startPeer, type Peer } from '../../src/peer.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';

export interface TestPeer extends Peer {
  dataDir: string;
  /** Stops the peer and deletes its data directory. */
  dispose(): Promise<void>;
}

export async function startTestPeer(extraArgs: string[] = [], site = 'test'): Promise<TestPeer> {
  const dataDir = mkdtempSync(join(tmpdir(), `pacs-${site}-`));
  const config = parseStartArgs(['--site', site, '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', '0', '--http-port', '0', '--log-level', 'silent', ...extraArgs]);
  const peer = await startPeer(config, { log: silentLogger, shutdownGraceMs: 1000 });
  return {
    ...peer,
    dataDir,
    dispose: async () => {
      await peer.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
