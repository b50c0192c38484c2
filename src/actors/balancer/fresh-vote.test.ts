/**
 * The balancer actor with a stub node and a stub membership: a request for votes that is the first message a
 * fresh balancer handles (after a restart by its supervisor, or after a state file it could not write) must be
 * judged on the membership view, as every later one is (helper 97). It was stepped with the reducer's empty
 * initial view, in which every candidate is the rule's winner: the vote went to whoever asked first.
 */
import '../../polyfill.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MeshNode, StreamHandler } from '../../net/node.ts';
import type { MeshStream } from '../../net/stream.ts';
import type { MembershipService } from '../membership/actor.ts';
import { memberRecord } from '../membership/fixtures/member-record.ts';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import { startActorSystem, stopActor } from '../runtime/nact.ts';
import { recordingLogger } from '../../../test/support/recording-logger.ts';
import { waitFor } from '../../../test/support/wait.ts';
import { ELECTION_PROTOCOL, startBalancer } from './actor.ts';
import type { BalancerMessage } from './messages.ts';

test('a request for votes handled first by a fresh balancer (after a restart) is judged on the view: a candidate ranked below the rule winner is refused', { timeout: 20_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-fresh-vote-'));
  const system = startActorSystem('fresh-vote');
  // peer-a ranks best and is alive: peer-c is not the rule's winner in this peer's (peer-b's) view.
  const members = [memberRecord('peer-a'), memberRecord('peer-b'), memberRecord('peer-c')];
  const sent: Array<{ to: string; message: BalancerMessage }> = [];
  const handlers = new Map<string, StreamHandler>();
  const node = {
    peerId: 'peer-b',
    publish: async () => 0,
    subscribe: () => () => undefined,
    handle: async (protocol: string, handler: StreamHandler) => {
      handlers.set(protocol, handler);
    },
    unhandle: async () => undefined,
    // A kept election stream (or one per message): open, and every frame written on it is sent.
    openStream: async (to: string) => ({
      raw: { status: 'open', writeStatus: 'writable', addEventListener: () => undefined },
      reader: { done: false },
      writer: { writeFrame: async (frame: Uint8Array) => void sent.push({ to, message: decodeEnvelope<BalancerMessage>(frame, { maxBytes: 4096 }) }) },
      close: async () => undefined,
      abort: () => undefined,
    }),
  } as unknown as MeshNode;
  const membership = {
    members: () => members,
    liveMembers: () => members,
    onViewChanged: () => undefined,
    setElectable: () => undefined,
    siteClaimConfirmMs: 6000,
  } as unknown as MembershipService;
  const requestFrom = (candidateId: string, term: number): void => {
    const stream = {
      remotePeer: candidateId,
      reader: { readFrame: async () => encodeEnvelope({ type: 'requestVote', term, candidateId }) },
      close: async () => undefined,
      abort: () => undefined,
    } as unknown as MeshStream;
    void handlers.get(ELECTION_PROTOCOL)!(stream);
  };
  const messages: string[] = [];
  const balancer = await startBalancer({
    node,
    peerId: 'peer-b',
    dataDir: dir,
    membership,
    clock: { nowMs: () => Date.now(), dateMs: () => Date.now(), setTimeout: (f, ms) => ({ id: setTimeout(f, ms) }), clearTimeout: (h) => clearTimeout(h?.id as NodeJS.Timeout) },
    log: recordingLogger(messages),
    parent: system,
    roster: ['peer-a', 'peer-c'],
    onCrash: () => 'reset',
  });
  try {
    // A running balancer refuses peer-c.
    requestFrom('peer-c', 5);
    await waitFor('an answer', () => sent.length >= 1, 5000, 5);
    assert.deepEqual(sent[0], { to: 'peer-c', message: { type: 'vote', term: 5, voterId: 'peer-b', granted: false } });
    // Restarted (a crash), with the request next in its mailbox.
    balancer.crashForTest('test');
    requestFrom('peer-c', 6);
    await waitFor('an answer', () => sent.length >= 2, 5000, 5);
    assert.deepEqual(sent[1], { to: 'peer-c', message: { type: 'vote', term: 6, voterId: 'peer-b', granted: false } }, 'the fresh balancer voted for a peer its view ranks below the rule winner');
  } finally {
    await balancer.stop();
    stopActor(system);
    await rm(dir, { recursive: true, force: true });
  }
});
