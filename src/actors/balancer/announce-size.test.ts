/**
 * The balancer actor with a stub node and a stub membership: what a view the announcement cannot carry does
 * to the leader (helper 97). Heartbeats' strings may be 256 characters each (parseHeartbeat), so ~230 alive
 * members make a table over ANNOUNCE_MAX_BYTES: encoding it threw inside the actor, the leader crashed, was
 * restarted, led again after its settle time and crashed again, until its restart budget was spent and the
 * peer stopped; then the next-ranked peer led, and went the same way.
 */
import '../../polyfill.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MeshNode } from '../../net/node.ts';
import type { MembershipService } from '../membership/actor.ts';
import type { MemberRecord } from '../membership/messages.ts';
import { memberRecord } from '../membership/fixtures/member-record.ts';
import { startActorSystem, stopActor } from '../runtime/nact.ts';
import { recordingLogger } from '../../../test/support/recording-logger.ts';
import { waitFor } from '../../../test/support/wait.ts';
import { startBalancer } from './actor.ts';

function stubNode(peerId: string, published: Uint8Array[]): MeshNode {
  const node = {
    peerId,
    publish: async (_topic: string, data: Uint8Array) => {
      published.push(data);
      return 0;
    },
    subscribe: () => () => undefined,
    handle: async () => undefined,
    unhandle: async () => undefined,
    openStream: async () => {
      throw new Error('no peers');
    },
  };
  return node as unknown as MeshNode;
}

function stubMembership(members: MemberRecord[]): MembershipService {
  const membership = {
    members: () => members,
    liveMembers: () => members.filter((m) => m.status === 'alive'),
    onViewChanged: () => undefined,
    updateLocalStats: () => undefined,
    siteConflicts: () => [],
    siteClaimConfirmMs: 6000,
    setElectable: () => undefined,
    incarnation: 1,
    crashForTest: () => undefined,
    stop: async () => undefined,
  };
  return membership as unknown as MembershipService;
}

test('a leader whose table is too large to announce logs it and keeps leading: it does not crash at every announcement', { timeout: 20_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-announce-'));
  const system = startActorSystem('announce-size');
  const self = '12D3KooWself';
  const long = (c: string) => c.repeat(256);
  // Self first in rank (priority 0); 240 others with every string as long as a heartbeat may carry.
  const members = [
    memberRecord(self, { priority: 0 }),
    ...Array.from({ length: 240 }, (_, i) =>
      memberRecord(`12D3KooWother${String(i).padStart(4, '0')}`, {
        priority: 1,
        siteName: long('s'),
        addresses: { dicom: long('d'), http: 'h:1', aeTitle: long('a'), accessDigest: long('x') },
      }),
    ),
  ];
  const published: Uint8Array[] = [];
  const messages: string[] = [];
  const crashes: unknown[] = [];
  const balancer = await startBalancer({
    node: stubNode(self, published),
    peerId: self,
    dataDir: dir,
    membership: stubMembership(members),
    clock: { nowMs: () => Date.now(), dateMs: () => Date.now(), setTimeout: (f, ms) => ({ id: setTimeout(f, ms) }), clearTimeout: (h) => clearTimeout(h?.id as NodeJS.Timeout) },
    log: recordingLogger(messages),
    parent: system,
    roster: [],
    settleMs: 0,
    onCrash: (error) => {
      crashes.push(error);
      return 'reset';
    },
  });
  try {
    await waitFor('leadership', () => balancer.status().role === 'leader' || crashes.length > 0, 5000, 10);
    // Several announce intervals (500 ms).
    await new Promise((resolve) => setTimeout(resolve, 1600));
    assert.deepEqual(crashes.map((e) => (e as Error).message), [], 'the balancer actor crashed');
    assert.equal(balancer.status().role, 'leader');
    assert.ok(messages.some((m) => m.includes('announcement')), `the failure is logged: ${messages.join(' | ')}`);
  } finally {
    await balancer.stop();
    stopActor(system);
    await rm(dir, { recursive: true, force: true });
  }
});
