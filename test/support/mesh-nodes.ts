/** In-process libp2p mesh nodes on 127.0.0.1 for tests, and the address another node bootstraps from. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMeshNode, type MeshNode } from '../../src/net/node.ts';
import type { SwarmKey } from '../../src/net/swarm-key.ts';

/** A node's dialable loopback multiaddr (with /p2p/<peerId>). */
export function loopbackAddress(node: Pick<MeshNode, 'multiaddrs'>): string {
  const addrs = node.multiaddrs();
  const address = addrs.find((x) => x.startsWith('/ip4/127.0.0.1/'));
  assert.ok(address, `no loopback address in ${addrs.join(' ')}`);
  return address;
}

/**
 * Starts nodes in fresh data directories; `dispose` stops them (last first) and removes the directories. A node
 * started once disposed (by a test that timed out and runs on) is stopped at once: it kept the process alive.
 */
export function testNodes(dirPrefix: string): { node(key: SwarmKey, bootstrap: string[]): Promise<MeshNode>; dispose(): Promise<void> } {
  const nodes: MeshNode[] = [];
  const dirs: string[] = [];
  let disposed = false;
  return {
    async node(key, bootstrap) {
      const dataDir = await mkdtemp(join(tmpdir(), dirPrefix));
      dirs.push(dataDir);
      const n = await createMeshNode({ host: '127.0.0.1', p2pPort: 0, swarmKey: key, dataDir, bootstrap, tuning: { reconnectMinDelayMs: 100 } });
      if (disposed) {
        await n.stop();
        await rm(dataDir, { recursive: true, force: true });
        throw new Error('the test nodes are disposed: no new node');
      }
      nodes.push(n);
      return n;
    },
    async dispose() {
      disposed = true;
      for (const n of nodes.splice(0).reverse()) await n.stop().catch(() => undefined);
      await Promise.allSettled(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}
