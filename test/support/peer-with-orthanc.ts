/**
 * A test peer and a throwaway Orthanc that know each other: the peer's move destination (and Storage
 * Commitment report address) ORTHANC is that Orthanc, whose modality `pacs` is the peer. Both end with the test.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { startOrthanc, type OrthancServer } from '../../scripts/bench/lib/orthanc.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import type { PeerOptions } from '../../src/peer.ts';
import { getFreePort } from './dicom-tools.ts';
import { startTestPeer, type TestPeer } from './peer-fixture.ts';

export async function peerWithOrthanc(t: TestContext, site: string, peerOptions: PeerOptions = {}): Promise<{ peer: TestPeer; orthanc: OrthancServer }> {
  const orthancPort = await getFreePort();
  const peer = await startTestPeer(['--move-dest', `ORTHANC=127.0.0.1:${orthancPort}`], site, silentLogger, peerOptions);
  const orthancDir = mkdtempSync(join(tmpdir(), 'pacs-orthanc-'));
  let started: OrthancServer | undefined;
  t.after(async () => {
    await started?.stop();
    await peer.dispose();
    rmSync(orthancDir, { recursive: true, force: true });
  });
  started = await startOrthanc({ dicomPort: orthancPort, dataDir: orthancDir, config: { DicomModalities: { pacs: ['PACSMESH', '127.0.0.1', peer.dicomPort] } } });
  return { peer, orthanc: started };
}
