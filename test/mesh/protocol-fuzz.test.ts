/**
 * A peer survives whatever another holder of the swarm key sends it: a seeded fuzz of every mesh stream
 * protocol and gossip topic against a real peer process. Each round opens one stream (or publishes one
 * gossip message) with frames built from the protocols' own message shapes, some of them mutated
 * (flipped bytes, cut short, lengths inflated), then random bytes, a half-close or a reset. Every 50
 * rounds the peer must still answer /healthz; at the end, with the fuzzer gone, it must store, find and
 * answer C-ECHO as before, and its log must show no unhandled rejection.
 *   MESH_FUZZ_SEED=<n> (default 1, printed on failure)   MESH_FUZZ_ROUNDS=<n> (default 400)
 */
import '../../src/polyfill.ts';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pack } from 'msgpackr';
import { ENVELOPE_VERSION } from '../../src/codec/envelope.ts';
import { readSwarmKeyFile } from '../../src/net/swarm-key.ts';
import { PEERS_TOPIC, type MeshNode } from '../../src/net/node.ts';
import { TUNNEL_PROTOCOL } from '../../src/net/tunnel.ts';
import { Prng } from '../../src/sim/prng.ts';
import { PUSH_PROTOCOL } from '../../src/actors/storage/push.ts';
import { CUSTODY_PROTOCOL, FETCH_BATCH_PROTOCOL, FETCH_PROTOCOL, QUERY_PROTOCOL, REPLICATE_BATCH_PROTOCOL } from '../../src/actors/storage/replication.ts';
import { ELECTION_PROTOCOL, ELECTION_STREAM_PROTOCOL } from '../../src/actors/balancer/actor.ts';
import { membershipTopic } from '../../src/actors/membership/messages.ts';
import { forgetPeerTopic, routingTopic } from '../../src/actors/balancer/messages.ts';
import { makeInstanceWithInfo } from '../support/synthetic-dicom.ts';
import { runTool } from '../support/dicom-tools.ts';
import { testNodes } from '../support/mesh-nodes.ts';
import { MeshCluster, eventually, type PeerProcess } from './support.ts';

const seed = Number(process.env.MESH_FUZZ_SEED ?? 1);
const rounds = Number(process.env.MESH_FUZZ_ROUNDS ?? 400);
const PROTOCOLS = [PUSH_PROTOCOL, REPLICATE_BATCH_PROTOCOL, FETCH_BATCH_PROTOCOL, FETCH_PROTOCOL, CUSTODY_PROTOCOL, QUERY_PROTOCOL, ELECTION_PROTOCOL, ELECTION_STREAM_PROTOCOL, TUNNEL_PROTOCOL, '/pacs-mesh/identity-conflict/1'];
const TOPICS = [membershipTopic, routingTopic, forgetPeerTopic, PEERS_TOPIC];
/** Message types of the mesh protocols and a few strangers, so that decoders get past their `type` check. */
const TYPES = [
  'push', 'end', 'abort', 'offerBatch', 'want', 'batchResult', 'fetchBatch', 'fetch', 'instance', 'missing', 'query', 'entries',
  'repairDigest', 'repairKeys', 'replicaAck', 'heartbeat', 'announce', 'requestVote', 'vote', 'peer-addrs', 'open', 'conflict',
  'stored', 'have', 'refused', 'x', '__proto__', 'constructor',
];
const FIELDS = [
  'type', 'sopInstanceUid', 'entries', 'entry', 'uids', 'indices', 'buckets', 'keys', 'afterUid', 'replyWanted', 'term', 'candidate',
  'peerId', 'site', 'siteName', 'dicom', 'http', 'incarnation', 'instances', 'digestRoot', 'addrs', 'members', 'stored', 'failed',
  'level', 'root', 'identifier', 'limit', 'byteLength', 'sha256', 'attributes', 'priority', 'electable', 'leader', 'table',
];
const UIDS = ['1.2.3', '1.2.3.4.5', '', '1..2', 'x', '1.2.' + '3'.repeat(80), '1.2.3\u0000', '../../etc'];

/** A catalog entry close to a real one, some fields replaced by random values. */
function catalogEntry(prng: Prng): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    sopInstanceUid: prng.pick(UIDS),
    sopClassUid: '1.2.840.10008.5.1.4.1.1.2',
    studyInstanceUid: prng.pick(UIDS),
    seriesInstanceUid: prng.pick(UIDS),
    patientId: 'P1',
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    byteLength: prng.pick([0, 10, 1e15, -1, 2 ** 53, Number.NaN]),
    sha256: prng.pick(['ab'.repeat(32), 'zz', '']),
    storedAtMs: prng.pick([1, -1, Number.POSITIVE_INFINITY]),
    blobId: 'b',
    attributes: prng.chance(0.8) ? [{ tag: 0x00100010, vr: 'PN', value: 'Doe^John' }] : randomValue(prng, 2),
  };
  for (let i = prng.nextInt(3); i > 0; i--) entry[prng.pick(Object.keys(entry))] = randomValue(prng, 1);
  return entry;
}

function randomString(prng: Prng): string {
  switch (prng.nextInt(5)) {
    case 0: return prng.pick(UIDS);
    case 1: return 'A'.repeat(prng.pick([1, 64, 65, 1000, 100_000]));
    case 2: return String.fromCodePoint(...Array.from({ length: prng.nextInt(20) }, () => prng.nextInt(0x10ffff)).filter((c) => c < 0xd800 || c > 0xdfff));
    case 3: return prng.pick(['/ip4/127.0.0.1/tcp/1', '127.0.0.1:1', '12D3KooWInvalid', 'site-a', '']);
    default: return prng.pick(FIELDS);
  }
}

function randomValue(prng: Prng, depth: number): unknown {
  switch (prng.nextInt(depth > 0 ? 9 : 6)) {
    case 0: return randomString(prng);
    case 1: return prng.pick([0, -1, 1, 2 ** 31, 2 ** 32 + 1, 2 ** 53 + 2, 1.5, Number.NaN, Number.NEGATIVE_INFINITY]);
    case 2: return prng.chance(0.5);
    case 3: return null;
    case 4: return new Uint8Array(prng.pick([0, 1, 32, 4096]));
    case 5: return prng.nextInt(1000);
    case 6: return Array.from({ length: prng.pick([0, 1, 3, 300]) }, () => randomValue(prng, depth - 1));
    case 7: return catalogEntry(prng);
    default: return randomMessage(prng, depth - 1);
  }
}

function randomMessage(prng: Prng, depth: number): Record<string, unknown> {
  const message: Record<string, unknown> = { type: prng.pick(TYPES) };
  for (let i = prng.nextInt(5); i > 0; i--) message[prng.pick(FIELDS)] = randomValue(prng, depth);
  if (prng.chance(0.2)) message.type = randomValue(prng, 0);
  return message;
}

/** `[version, message]` in MessagePack as the mesh's envelopes are, the version now and then another. */
function envelope(prng: Prng): Uint8Array {
  return pack([prng.chance(0.9) ? ENVELOPE_VERSION : randomValue(prng, 0), randomMessage(prng, 2)]);
}

/** A uint32 BE length-prefixed envelope (the mesh's frame), sometimes mutated. */
function frame(prng: Prng): Uint8Array {
  const payload = envelope(prng);
  const bytes = new Uint8Array(4 + payload.byteLength);
  new DataView(bytes.buffer).setUint32(0, prng.chance(0.05) ? prng.pick([0xffffffff, payload.byteLength + 1000, 64 * 1024 * 1024]) : payload.byteLength);
  bytes.set(payload, 4);
  for (let flips = prng.chance(0.3) ? prng.between(1, 4) : 0; flips > 0; flips--) bytes[prng.nextInt(bytes.length)] = prng.nextInt(256);
  return prng.chance(0.1) ? bytes.subarray(0, prng.nextInt(bytes.length)) : bytes;
}

/** Stream content: frames, then maybe a u64-length record of data (push and fetch bodies), then maybe noise. */
function streamBytes(prng: Prng): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let n = prng.between(0, 3); n > 0; n--) parts.push(frame(prng));
  if (prng.chance(0.3)) {
    const record = new Uint8Array(8 + prng.pick([0, 16, 1000]));
    new DataView(record.buffer).setBigUint64(0, prng.chance(0.5) ? BigInt(record.length - 8) : prng.pick([2n ** 63n, 2n ** 40n, 0n]));
    parts.push(record);
    if (prng.chance(0.5)) parts.push(frame(prng));
  }
  if (prng.chance(0.2)) parts.push(Uint8Array.from({ length: prng.pick([1, 7, 300, 70_000]) }, () => prng.nextInt(256)));
  return parts;
}

async function healthy(peer: PeerProcess): Promise<boolean> {
  const response = await fetch(`http://127.0.0.1:${peer.httpPort}/healthz`, { signal: AbortSignal.timeout(3000) }).catch(() => undefined);
  return response?.ok === true;
}

describe(`mesh protocol fuzz (MESH_FUZZ_SEED=${seed}, MESH_FUZZ_ROUNDS=${rounds})`, { timeout: 180_000 }, () => {
  const cluster = new MeshCluster();
  const nodes = testNodes('pacs-fuzz-');
  let peer: PeerProcess;
  let fuzzer: MeshNode;

  before(async () => {
    await cluster.init();
    // Write quorum 1: a fuzzed heartbeat may briefly make a site of the fuzzer; the final store must not wait on it.
    // Its searches wait for no other site beyond the 5 s after its start (15 s by default): see the C-FIND below.
    peer = await cluster.start('target', { extraArgs: ['--write-quorum', '1'], joinWaitAfterStartMs: 0 });
    const address = (await peer.status()).self.multiaddrs![0]!;
    fuzzer = await nodes.node(await readSwarmKeyFile(cluster.swarmKeyFile), [address]);
    const target = address.split('/p2p/')[1]!;
    await eventually(async () => fuzzer.connectedPeers().includes(target), 15_000, () => 'the fuzzer did not connect');
  });

  after(async () => {
    await nodes.dispose();
    await cluster.dispose();
  });

  it('the peer keeps serving, and serves DICOM as before once the fuzzer is gone', async () => {
    const prng = new Prng(seed);
    const target = (await peer.status()).self.peerId!;
    const context = (round: number): string => `seed ${seed} (MESH_FUZZ_SEED), round ${round}\n${peer.output().slice(-3000)}`;
    for (let round = 1; round <= rounds; round++) {
      if (prng.chance(0.15)) {
        const topic = prng.pick(TOPICS);
        const data = prng.chance(0.7) ? envelope(prng) : frame(prng).subarray(4);
        await fuzzer.publish(topic, data).catch(() => undefined);
      } else {
        const protocol = prng.pick(PROTOCOLS);
        const parts = streamBytes(prng);
        const ending = prng.pick(['closeWrite', 'abort', 'leave'] as const);
        try {
          const stream = await fuzzer.openStream(target, protocol, { signal: AbortSignal.timeout(5000) });
          for (const part of parts) await stream.writer.write(part, { signal: AbortSignal.timeout(2000) });
          if (ending === 'closeWrite') await stream.closeWrite({ signal: AbortSignal.timeout(2000) });
          if (ending !== 'abort') {
            // Whatever the peer answers (a refusal, a reset, nothing), for a moment.
            await stream.reader.read(1024 * 1024, { signal: AbortSignal.timeout(100) }).catch(() => undefined);
          }
          stream.abort(new Error('fuzz round over'));
        } catch {
          // the peer refused or reset the stream: what it should do
        }
      }
      if (round % 50 === 0 || round === rounds) {
        assert.ok(!peer.process.hasExited, `the peer exited: ${context(round)}`);
        assert.ok(await healthy(peer), `the peer stopped answering /healthz: ${context(round)}`);
      }
    }

    await nodes.dispose();
    await eventually(async () => (await peer.status()).members?.every((m) => m.peerId === target || !m.alive) ?? true, 15_000, async () => JSON.stringify(await peer.status()));
    const env = { TCP_NODELAY: '1' };
    const echo = await runTool('echoscu', ['-aec', 'PACSMESH', '127.0.0.1', String(peer.dicomPort)], { env, timeoutMs: 20_000 });
    assert.equal(echo.code, 0, `C-ECHO after the fuzz: ${echo.stderr}\n${context(rounds)}`);
    const { bytes, resolved } = makeInstanceWithInfo({ rows: 8, columns: 8 });
    const file = join(cluster.root, 'after-fuzz.dcm');
    writeFileSync(file, bytes);
    const store = await runTool('storescu', ['-aec', 'PACSMESH', '127.0.0.1', String(peer.dicomPort), file], { env, timeoutMs: 30_000 });
    assert.equal(store.code, 0, store.stderr);
    assert.doesNotMatch(store.stderr + store.stdout, /E:/, `C-STORE after the fuzz: ${store.stderr}`);
    // A peer that has heard no other site answers C-FIND "joining the mesh: retry" for its first 5 s (the
    // view's settle time; by default up to 15 s, joinWaitAfterStartMs, here 0): the fuzz may be over sooner,
    // now that the peer closes the streams the fuzzer leaves open at once (hunt 100), where each round
    // waited for the fuzzer's read to time out.
    let find: Awaited<ReturnType<typeof runTool>> | undefined;
    await eventually(async () => {
      find = await runTool('findscu', ['-S', '-aec', 'PACSMESH', '-k', 'QueryRetrieveLevel=IMAGE', '-k', `SOPInstanceUID=${resolved.sopInstanceUid}`, '127.0.0.1', String(peer.dicomPort)], { env, timeoutMs: 20_000 });
      return find.code === 0 && (find.stderr + find.stdout).includes(resolved.sopInstanceUid);
    }, 30_000, () => `C-FIND after the fuzz: ${find?.code} ${find?.stderr}`);
    assert.match(find!.stderr + find!.stdout, new RegExp(resolved.sopInstanceUid.replaceAll('.', '\\.')), 'the instance stored after the fuzz is found');
    assert.equal((await peer.status()).instances, 1, 'nothing the fuzzer sent was stored');
  });
});
