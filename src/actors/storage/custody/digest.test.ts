import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { encodeEnvelope, decodeEnvelope } from '../../../codec/envelope.ts';
import { bucketOf, createDigest, diffBuckets, diffLeaves, digestAdd, digestBuckets, digestLeafHashes, digestRoot, keysInBuckets, keysInLeaves, leafOf, missingKeys } from './digest.ts';

const keys = Array.from({ length: 1000 }, (_, i) => ({ sopInstanceUid: `1.2.826.0.1.${i}`, sha256: `sha${i}` }));

test('the digest does not depend on insertion order, and an add is incremental', () => {
  const a = createDigest();
  const b = createDigest();
  for (const k of keys) digestAdd(a, k.sopInstanceUid, k.sha256);
  for (const k of [...keys].reverse()) digestAdd(b, k.sopInstanceUid, k.sha256);
  assert.equal(digestRoot(a), digestRoot(b));
  assert.equal(digestAdd(a, keys[0]!.sopInstanceUid, keys[0]!.sha256), false, 'a repeated add changes nothing');
  assert.equal(digestRoot(a), digestRoot(b));
  const before = digestBuckets(a);
  digestAdd(a, '9.9.9', 'x');
  const after = digestBuckets(a);
  assert.deepEqual(
    after.map((h, i) => (h !== before[i] ? i : -1)).filter((i) => i >= 0),
    [bucketOf('9.9.9')],
  );
});

test('the digest of a set is pinned: sites running different versions compare the same roots', () => {
  const d = createDigest();
  for (const k of keys) digestAdd(d, k.sopInstanceUid, k.sha256);
  // Computed with the incremental createHash implementation this replaced (same bytes hashed).
  assert.equal(digestRoot(d), 'fb71c5178fefe50ce491aae28d0238f86a6c45cbac8e469169c9236eb289de8b');
});

test('the bytes on the wire are pinned: buckets, leaf hashes (also of a bucket holding no key) and root, as before leaves were kept per bucket (58bc108)', () => {
  const sha = (bytes: Uint8Array | string): string => createHash('sha256').update(bytes).digest('hex');
  const all = Array.from({ length: 256 }, (_, b) => b);
  const full = createDigest();
  for (const k of keys) digestAdd(full, k.sopInstanceUid, k.sha256);
  // Computed with the one 2 MiB leaf array this replaced (commit 4c286a4): a mixed-version mesh compares these bytes.
  assert.equal(sha(digestBuckets(full).join('')), 'd821f2dc7087a452509556e09c860a1e34778758a87a4d7dc422637aa6f1bacd');
  assert.equal(sha(digestLeafHashes(full, all)), '0f716c9a829f1c60eb3421344f9074df892dfd8a713fea3ac08391291500843d');
  // 40 keys leave most buckets without one (0 among them): their leaf hashes are zeros, in the order asked for.
  const sparse = createDigest();
  for (const k of keys.slice(0, 40)) digestAdd(sparse, k.sopInstanceUid, k.sha256);
  assert.ok(!keys.slice(0, 40).some((k) => bucketOf(k.sopInstanceUid) === 0), 'bucket 0 holds none of the 40');
  const asked = [8, 0, 20, 255, 0];
  const leafHashes = digestLeafHashes(sparse, asked);
  assert.equal(sha(leafHashes), '4344dcbedc511a052a32850ff8d32fb60ecb7446eb287a1bfcd9a2920ca9477a');
  assert.ok(leafHashes.subarray(8192, 2 * 8192).every((byte) => byte === 0), "an empty bucket's leaves are zeros");
  assert.equal(digestRoot(sparse), '5c664924306900cd6b3b6840c80ed79dbd87d92bb84bc2c29951c3961e492c88');
});

test('leaves: a bucket this side never created compares as all-zero leaves, both ways', () => {
  const holder = createDigest();
  const empty = createDigest();
  const inOneBucket = keys.filter((k) => bucketOf(k.sopInstanceUid) === bucketOf(keys[0]!.sopInstanceUid));
  for (const k of inOneBucket) digestAdd(holder, k.sopInstanceUid, k.sha256);
  const bucket = [bucketOf(keys[0]!.sopInstanceUid)];
  const heldLeaves = [...new Set(inOneBucket.map((k) => leafOf(k.sopInstanceUid)))].sort((x, y) => x - y);
  // The side without the bucket finds every leaf the other holds a key in, and lists nothing of its own there.
  assert.deepEqual(diffLeaves(empty, bucket, digestLeafHashes(holder, bucket)), heldLeaves);
  assert.deepEqual(keysInLeaves(empty, heldLeaves, 100), []);
  // The holder, sent the other's zeros, finds the same leaves; two sides without it find none.
  assert.deepEqual(diffLeaves(holder, bucket, digestLeafHashes(empty, bucket)), heldLeaves);
  assert.deepEqual(diffLeaves(empty, bucket, digestLeafHashes(createDigest(), bucket)), []);
});

test('diff finds exactly the missing keys, in both directions', () => {
  const mine = createDigest();
  const theirs = createDigest();
  const missingHere = new Set(['1.2.826.0.1.7', '1.2.826.0.1.500', '1.2.826.0.1.999']);
  const missingThere = new Set(['1.2.826.0.1.42']);
  for (const k of keys) {
    if (!missingHere.has(k.sopInstanceUid)) digestAdd(mine, k.sopInstanceUid, k.sha256);
    if (!missingThere.has(k.sopInstanceUid)) digestAdd(theirs, k.sopInstanceUid, k.sha256);
  }
  const buckets = diffBuckets(mine, digestBuckets(theirs));
  assert.ok(buckets.length <= 4);
  const toPullHere = missingKeys(mine, keysInBuckets(theirs, buckets, 10_000)).map((k) => k.sopInstanceUid);
  assert.deepEqual(new Set(toPullHere), missingHere);
  const toPullThere = missingKeys(theirs, keysInBuckets(mine, buckets, 10_000)).map((k) => k.sopInstanceUid);
  assert.deepEqual(toPullThere, ['1.2.826.0.1.42']);
  assert.deepEqual(diffBuckets(mine, digestBuckets(mine)), []);
});

test('a changed sha256 for the same uid shows up as a differing bucket', () => {
  const a = createDigest();
  const b = createDigest();
  digestAdd(a, '1.2.3', 'one');
  digestAdd(b, '1.2.3', 'two');
  assert.deepEqual(diffBuckets(a, digestBuckets(b)), [bucketOf('1.2.3')]);
});

test('the digest keeps no received message alive through the UIDs it holds', () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const attributes = Array.from({ length: 40 }, (_, i) => ({ tag: 0x00100010 + i, vr: 'LO', value: `VALUE ${i} `.repeat(4) }));
  const digest = createDigest();
  gc();
  const before = process.memoryUsage().heapUsed;
  const count = 20_000;
  for (let i = 0; i < count; i++) {
    // A push's end message as a peer receives it: the entry's UID and SHA-256 come out of a ~2 KB message.
    const bytes = encodeEnvelope({ type: 'end', entry: { sopInstanceUid: `2.25.${1e15 + i}${'7'.repeat(20)}`, sha256: 'ab'.repeat(32), attributes } });
    const message = decodeEnvelope<{ type: 'end'; entry: { sopInstanceUid: string; sha256: string } }>(bytes, { maxBytes: 1 << 20 });
    digestAdd(digest, message.entry.sopInstanceUid, message.entry.sha256);
  }
  gc();
  const perKey = (process.memoryUsage().heapUsed - before) / count;
  assert.equal(digest.size, count);
  assert.ok(perKey < 600, `${perKey.toFixed(0)} bytes of heap per key held (a whole message each would be ~2,000)`);
});

test('leaves: a bucket that differs is narrowed to the leaves that differ, whose keys alone are listed', () => {
  const a = createDigest();
  const b = createDigest();
  for (const k of keys) {
    digestAdd(a, k.sopInstanceUid, k.sha256);
    digestAdd(b, k.sopInstanceUid, k.sha256);
  }
  const extra = { sopInstanceUid: '1.2.826.0.9.1', sha256: 'x' };
  digestAdd(a, extra.sopInstanceUid, extra.sha256);
  const buckets = diffBuckets(a, digestBuckets(b));
  assert.deepEqual(buckets, [bucketOf(extra.sopInstanceUid)]);
  assert.equal(leafOf(extra.sopInstanceUid) >> 8, bucketOf(extra.sopInstanceUid));
  const leaves = diffLeaves(a, buckets, digestLeafHashes(b, buckets));
  assert.deepEqual(leaves, [leafOf(extra.sopInstanceUid)]);
  assert.deepEqual(keysInLeaves(a, leaves, 100).map((k) => k.sopInstanceUid), keys.filter((k) => leafOf(k.sopInstanceUid) === leaves[0]).map((k) => k.sopInstanceUid).concat(extra.sopInstanceUid).sort());
  assert.ok(keysInBuckets(a, buckets, 100).length > keysInLeaves(a, leaves, 100).length, 'a leaf lists less than its bucket');
  assert.deepEqual(diffLeaves(b, buckets, digestLeafHashes(b, buckets)), [], 'equal leaves');
});
