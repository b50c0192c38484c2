import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { alreadyRepublished, decodeRecentForgets, forgetsNotOutlived, forgetsToRepublish, noteForgets, recentForgetLimits } from './recent-forgets.ts';
import { decodeRosterFile, encodeRosterFile } from './roster.ts';
import { encodeForgetMessage, parseForgetMessage } from './actor.ts';
import { ELECTION_MAX_BYTES } from './election-streams.ts';
import { decodeEnvelope } from '../../codec/envelope.ts';

const dayMs = 24 * 3600_000;

describe('recent forget-peers (republished for late peers)', () => {
  it('keeps one per peer (the later), puts future times at now, drops those past keepMs and the oldest past countMax', () => {
    const now = 10 * dayMs;
    assert.deepEqual(noteForgets([{ peerId: 'x', atMs: now - 5000 }], [{ peerId: 'x', atMs: now - 1000 }, { peerId: 'y', atMs: now + dayMs }], now), [
      { peerId: 'x', atMs: now - 1000 },
      { peerId: 'y', atMs: now },
    ]);
    assert.deepEqual(noteForgets([{ peerId: 'old', atMs: now - recentForgetLimits.keepMs }], [], now), []);
    const many = Array.from({ length: 100 }, (_, i) => ({ peerId: `p${i}`, atMs: now - 100 + i }));
    const kept = noteForgets([], many, now);
    assert.equal(kept.length, recentForgetLimits.countMax);
    assert.deepEqual(kept[0], { peerId: 'p36', atMs: now - 64 }, 'the oldest dropped');
    // A second forget of a peer that came back names its later incarnation; one without (an earlier build's) keeps the one named.
    assert.deepEqual(noteForgets([{ peerId: 'x', atMs: now - 5000, incarnation: 7 }], [{ peerId: 'x', atMs: now - 1000, incarnation: 9 }], now), [{ peerId: 'x', atMs: now - 1000, incarnation: 9 }]);
    assert.deepEqual(noteForgets([{ peerId: 'x', atMs: now - 5000, incarnation: 7 }], [{ peerId: 'x', atMs: now - 1000 }], now), [{ peerId: 'x', atMs: now - 1000, incarnation: 7 }]);
  });

  it('republishes in messages of at most 16, never a peer back in the roster, and each message fits an election frame', () => {
    const now = dayMs;
    // PeerIds as long as kept (a libp2p one is some 52 characters); a longer one is not kept.
    const longest = (i: number) => `12D3KooW${'x'.repeat(recentForgetLimits.peerIdMaxChars - 10)}${String(i).padStart(2, '0')}`;
    // Incarnations as a start writes them (the date in ms): 9 bytes each in a message.
    const recent = noteForgets([], [...Array.from({ length: 64 }, (_, i) => ({ peerId: longest(i), atMs: now - i, incarnation: 1_764_000_000_000 + i })), { peerId: `${longest(0)}x`, atMs: now }], now);
    assert.ok(recent.every((f) => f.peerId.length <= recentForgetLimits.peerIdMaxChars) && recent.length === 64);
    const messages = forgetsToRepublish(recent, new Set([recent[0]!.peerId]), now);
    assert.deepEqual(messages.map((m) => m.length), [16, 16, 16, 15]);
    assert.ok(!messages.flat().some((f) => f.peerId === recent[0]!.peerId));
    for (const m of messages) assert.ok(encodeForgetMessage(m, now).length <= ELECTION_MAX_BYTES / 2, `a message of ${m.length}: ${encodeForgetMessage(m, now).length} bytes`);
    console.log(`a republished forget-peer message of 16: ${encodeForgetMessage(messages[0]!, now).length} bytes`);
    assert.deepEqual(forgetsToRepublish(recent, new Set(), now + recentForgetLimits.keepMs), [], 'none after keepMs');
  });

  it('a forget heard republished by another peer is not sent again here, unless the one held here is newer (the peer came back and was forgotten again)', () => {
    const now = dayMs;
    const held = [{ peerId: 'x', atMs: now - 10_000 }, { peerId: 'y', atMs: now - 5000 }, { peerId: 'z', atMs: now - 1000 }];
    const heard = alreadyRepublished(held, [{ peerId: 'x', atMs: now - 10_100 }, { peerId: 'y', atMs: now - 5000 - 2 * recentForgetLimits.heardAskedEarlierMaxMs }, { peerId: 'w', atMs: now }]);
    assert.deepEqual(heard, ['x']);
    assert.deepEqual(forgetsToRepublish(held, new Set(), now, new Set(heard)).flat().map((f) => f.peerId), ['y', 'z']);
  });

  it('a forget applies only to a peer that did not come up here after it was asked', () => {
    const forgets = [{ peerId: 'back', atMs: 1000 }, { peerId: 'gone', atMs: 1000 }, { peerId: 'never', atMs: 1000 }];
    assert.deepEqual(forgetsNotOutlived(forgets, new Map([['back', 2000], ['gone', 1000]])).map((f) => f.peerId), ['gone', 'never']);
  });

  it('a forget does not apply to a peer first heard here after the ask at a higher incarnation than it names, even one never seen down here', () => {
    const forgets = ['restarted', 'same', 'unnamed', 'unheard', 'missed'].map((peerId) => ({ peerId, atMs: 1000, ...(peerId === 'unnamed' ? {} : { incarnation: 5 }) }));
    // 'missed': a life the asked peer did not hear (cut off from it), over before the ask: no return.
    const heard = new Map([['restarted', { incarnation: 6, sinceMs: 2000 }], ['same', { incarnation: 5, sinceMs: 2000 }], ['unnamed', { incarnation: 9, sinceMs: 2000 }], ['missed', { incarnation: 6, sinceMs: 900 }]]);
    assert.deepEqual(forgetsNotOutlived(forgets, new Map(), heard).map((f) => f.peerId), ['same', 'unnamed', 'unheard', 'missed']);
  });

  it('a republication delivered late (its time read as after the return) of a forget applied here does not take out the peer learnt again since at a higher incarnation', () => {
    // Applied here at 1000 (incarnation 5 named); x came back (incarnation 6, heard at 5000, in the roster again) and
    // went down. The same forget, sent at 1100 and delivered at 9000, reads as asked at 8900: after every return time.
    const late = { peerId: 'x', atMs: 8900, incarnation: 5 };
    const held = { forgets: [{ peerId: 'x', atMs: 1000, incarnation: 5 }], rosterPeerIds: new Set(['x']) };
    const cameUp = new Map([['x', 5000]]);
    const heard = new Map([['x', { incarnation: 6, sinceMs: 5000 }]]);
    assert.deepEqual(forgetsNotOutlived([late], cameUp, heard), [late], 'by its time alone it applies');
    assert.deepEqual(forgetsNotOutlived([late], cameUp, heard, held), [], 'a repeat of the forget held here, of a peer back since');
    // It applies where this peer did not learn x again, where x was heard at no higher incarnation (a stale record
    // learnt at a start), to a forget naming a later incarnation (asked again after the return), and to one asked
    // more than heardAskedEarlierMaxMs after the held one (the asked peer missed the return, which was over by then).
    assert.deepEqual(forgetsNotOutlived([late], cameUp, heard, { ...held, rosterPeerIds: new Set() }), [late]);
    assert.deepEqual(forgetsNotOutlived([late], new Map(), new Map([['x', { incarnation: 5, sinceMs: 5000 }]]), held), [late]);
    const askedAgain = { peerId: 'x', atMs: 8900, incarnation: 6 };
    assert.deepEqual(forgetsNotOutlived([askedAgain], new Map(), heard, held), [askedAgain]);
    const muchLater = { ...late, atMs: 1000 + recentForgetLimits.heardAskedEarlierMaxMs + 1 };
    assert.deepEqual(forgetsNotOutlived([muchLater], new Map(), heard, held), [muchLater]);
    // Nothing to compare without incarnations: the times decide, as before.
    assert.deepEqual(forgetsNotOutlived([{ peerId: 'x', atMs: 8900 }], cameUp, heard, { ...held, forgets: [{ peerId: 'x', atMs: 1000 }] }), [{ peerId: 'x', atMs: 8900 }]);
  });

  it('carries the incarnations in the message, null where none is named; anything else reads as none', () => {
    const forgets = [{ peerId: 'a', atMs: 5, incarnation: 1_764_000_000_000 }, { peerId: 'b', atMs: 6 }];
    assert.deepEqual(parseForgetMessage(decodeEnvelope(encodeForgetMessage(forgets, 9), { maxBytes: ELECTION_MAX_BYTES }), 9), forgets);
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['a', 'b'], forgottenAtMs: [5, 6], incarnations: [-1, 'x'] }, 9), [{ peerId: 'a', atMs: 5 }, { peerId: 'b', atMs: 6 }]);
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['a', 'b'], forgottenAtMs: [5, 6], incarnations: [3] }, 9), [{ peerId: 'a', atMs: 5 }, { peerId: 'b', atMs: 6 }], 'a length that does not match');
  });

  it('reads the times of a forget-peer message, or counts one of an earlier build as asked at its receipt', () => {
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['a', 'b'], forgottenAtMs: [5, 6] }, 9), [{ peerId: 'a', atMs: 5 }, { peerId: 'b', atMs: 6 }]);
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['a'] }, 9), [{ peerId: 'a', atMs: 9 }]);
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['a'], forgottenAtMs: ['x'] }, 9), [{ peerId: 'a', atMs: 9 }]);
    assert.equal(parseForgetMessage({ type: 'forgetPeers', peerIds: Array(17).fill('a') }, 9), null);
  });

  it("ages a forget by the sender's own count of the time since it was asked, whatever the two wall clocks say (hunt 182)", () => {
    const hourMs = 3600_000;
    const here = 20 * dayMs;
    // Asked 10 min before it was sent; x came up again here 5 min ago, so after the ask: it came back for real.
    const cameUp = new Map([['x', here - 5 * 60_000]]);
    for (const senderAheadMs of [3 * hourMs, -3 * hourMs, 8 * dayMs, -8 * dayMs]) {
      const sentAtMs = here + senderAheadMs;
      const forgets = parseForgetMessage(decodeEnvelope(encodeForgetMessage([{ peerId: 'x', atMs: sentAtMs - 10 * 60_000 }], sentAtMs), { maxBytes: ELECTION_MAX_BYTES }), here)!;
      assert.deepEqual(forgets, [{ peerId: 'x', atMs: here - 10 * 60_000 }], `sender ${senderAheadMs / hourMs} h ahead`);
      assert.deepEqual(forgetsNotOutlived(forgets, cameUp), [], `sender ${senderAheadMs / hourMs} h ahead: x came back after the ask, the forget must not apply`);
      assert.equal(noteForgets([], forgets, here).length, 1, `sender ${senderAheadMs / hourMs} h ahead: kept for 7 days from the ask, not dropped at once`);
    }
    // A time after the send (a sender's bug) counts as asked at the receipt; one 7 days old is old anywhere.
    assert.deepEqual(parseForgetMessage({ type: 'forgetPeers', peerIds: ['x'], forgottenAtMs: [here + dayMs], sentAtMs: here }, here), [{ peerId: 'x', atMs: here }]);
    assert.deepEqual(noteForgets([], parseForgetMessage({ type: 'forgetPeers', peerIds: ['x'], forgottenAtMs: [0], sentAtMs: recentForgetLimits.keepMs }, here)!, here), []);
  });

  it('persists in the roster file, which earlier builds read as before', () => {
    const peers = new Map([['p', { seenAtMs: 1, site: 's', dicom: 'h:1' }]]);
    const body = JSON.parse(encodeRosterFile(peers, [{ peerId: 'x', atMs: 7 }, { peerId: 'y', atMs: 8, incarnation: 3 }])) as { forgets: unknown };
    assert.deepEqual(decodeRecentForgets(body.forgets), [{ peerId: 'x', atMs: 7 }, { peerId: 'y', atMs: 8, incarnation: 3 }]);
    assert.deepEqual(decodeRecentForgets([{ peerId: 'y', atMs: 8, incarnation: 1.5 }]), [{ peerId: 'y', atMs: 8 }], 'a damaged incarnation reads as none');
    assert.deepEqual(decodeRosterFile(body), peers);
    assert.equal('forgets' in JSON.parse(encodeRosterFile(peers)), false, 'no field without forgets');
    assert.deepEqual(decodeRecentForgets([{ peerId: 'x' }, 7, null, { peerId: 'y', atMs: 3 }]), [{ peerId: 'y', atMs: 3 }]);
    assert.deepEqual(decodeRecentForgets(undefined), []);
  });
});
