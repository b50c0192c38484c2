/**
 * Anti-entropy digest: 256 buckets chosen by the first byte of SHA-256(SOP Instance UID); each bucket is
 * the XOR of its members' item hashes, item hash = SHA-256(uid | sha256 of the bytes). XOR makes an add
 * O(1) and order-free, so two sites holding the same set always have the same buckets.
 * Each bucket is split the same way into 256 leaves by the second byte, with their own XORs: two sites
 * whose buckets differ compare those leaves, then list only the keys of the leaves that differ, so the
 * keys listed grow with the difference, not with the archive (a bucket holds 1/256 of it, a leaf 1/65,536).
 * The digest indexes keys per leaf, so listing a differing leaf or bucket costs that leaf or bucket.
 * Mutable: it is part of the custody state, which the custody reducer owns.
 */
import { createHash, hash } from 'node:crypto';
import type { InstanceKey } from './messages.ts';

export const digestBucketCount = 256;
/** Leaves per bucket. */
export const digestLeavesPerBucket = 256;
export const digestHashBytes = 32;

export interface Digest {
  /** bucketCount * 32 bytes of XOR accumulators. */
  readonly xor: Uint8Array;
  /** `xor` as 32-bit words, for digestAdd (byte order does not matter to XOR). */
  readonly xorWords: Uint32Array;
  /**
   * Per bucket, created with its first key: the XOR accumulators of its 256 leaves as 32-bit words (8 KiB;
   * leaf l is word (l & 255) * 8 of bucket l >> 8). Not one 2 MiB array: the simulation starts thousands of
   * small digests, whose 2 MiB each were a third of its CPU (hunt 150); a large archive fills them all.
   */
  readonly leafXorWords: Array<Uint32Array | undefined>;
  /** Per leaf that holds a key: uid -> sha256 of the bytes (a Map, not a 65,536-slot array: see leafXorWords). */
  readonly keys: Map<number, Map<string, string>>;
  size: number;
  /** Cached root; null when a bucket changed since it was computed. */
  root: string | null;
}

export function createDigest(): Digest {
  const xor = new Uint8Array(digestBucketCount * digestHashBytes);
  return {
    xor,
    xorWords: new Uint32Array(xor.buffer),
    leafXorWords: new Array<Uint32Array | undefined>(digestBucketCount),
    keys: new Map(),
    size: 0,
    root: null,
  };
}

// One-shot crypto.hash: about twice as fast as createHash for these short inputs (start-up adds every
// held instance: 200,000 took ~1.9 s with createHash).
/** The leaf of a UID, 0..65535: the first two bytes of SHA-256(uid); its bucket is `leaf >> 8`. */
export function leafOf(sopInstanceUid: string): number {
  const h = hash('sha256', sopInstanceUid, 'buffer');
  return ((h[0] as number) << 8) | (h[1] as number);
}

export function bucketOf(sopInstanceUid: string): number {
  return leafOf(sopInstanceUid) >> 8;
}

const wordsPerHash = digestHashBytes / 4;
/** Scratch for one item hash, as bytes and as words (digestAdd copies each hash here: one allocation per process). */
const itemHashWords = new Uint32Array(wordsPerHash);
const itemHashBytes = new Uint8Array(itemHashWords.buffer);

function itemHash(sopInstanceUid: string, sha256: string): Buffer {
  return hash('sha256', `${sopInstanceUid}|${sha256}`, 'buffer');
}

export function digestHas(digest: Digest, sopInstanceUid: string): boolean {
  return digest.keys.get(leafOf(sopInstanceUid))?.has(sopInstanceUid) === true;
}

/** The SHA-256 held for a UID, or undefined. */
export function digestSha256(digest: Digest, sopInstanceUid: string): string | undefined {
  return digest.keys.get(leafOf(sopInstanceUid))?.get(sopInstanceUid);
}

/**
 * A copy of `text` that shares no memory with the string it came from. msgpackr's native string extractor
 * returns the strings of a decoded message as slices of one string of the whole message, so a UID kept
 * from a received message kept all of it alive (~2 KB per pushed instance in the digest: helper 75's soak).
 */
export function ownString(text: string): string {
  return text.length < 13 ? text : (' ' + text).slice(1);
}

/** Adds a key; returns false (and changes nothing) when it is already there, since XOR would cancel it. */
export function digestAdd(digest: Digest, sopInstanceUid: string, sha256: string): boolean {
  const leaf = leafOf(sopInstanceUid);
  let members = digest.keys.get(leaf);
  if (members === undefined) digest.keys.set(leaf, (members = new Map()));
  if (members.has(sopInstanceUid)) return false;
  // The digest keeps every held instance for the life of the process: only its own copies of the strings.
  members.set(ownString(sopInstanceUid), ownString(sha256));
  // XOR by 32-bit words: start-up adds every held instance.
  itemHashBytes.set(itemHash(sopInstanceUid, sha256));
  const bucket = leaf >> 8;
  const bucketAt = bucket * wordsPerHash;
  const leaves = (digest.leafXorWords[bucket] ??= new Uint32Array(digestLeavesPerBucket * wordsPerHash));
  const leafAt = (leaf & (digestLeavesPerBucket - 1)) * wordsPerHash;
  for (let i = 0; i < wordsPerHash; i += 1) {
    digest.xorWords[bucketAt + i] = (digest.xorWords[bucketAt + i] as number) ^ (itemHashWords[i] as number);
    leaves[leafAt + i] = (leaves[leafAt + i] as number) ^ (itemHashWords[i] as number);
  }
  digest.size += 1;
  digest.root = null;
  return true;
}

/** A digest holding `keys`. */
export function digestOf(keys: Iterable<InstanceKey>): Digest {
  const digest = createDigest();
  for (const k of keys) digestAdd(digest, k.sopInstanceUid, k.sha256);
  return digest;
}

export function digestBuckets(digest: Digest): string[] {
  const out: string[] = [];
  for (let b = 0; b < digestBucketCount; b += 1) {
    out.push(Buffer.from(digest.xor.subarray(b * digestHashBytes, (b + 1) * digestHashBytes)).toString('hex'));
  }
  return out;
}

/** One hash over all buckets, carried in heartbeats: equal roots mean (with overwhelming odds) equal sets. */
export function digestRoot(digest: Digest): string {
  if (digest.root === null) digest.root = createHash('sha256').update(digest.xor).digest('hex');
  return digest.root;
}

/** Indexes of buckets whose hash differs from the other side's (a malformed list counts as all differing). */
export function diffBuckets(digest: Digest, theirBuckets: readonly string[]): number[] {
  const mine = digestBuckets(digest);
  const differing: number[] = [];
  for (let b = 0; b < digestBucketCount; b += 1) if (mine[b] !== theirBuckets[b]) differing.push(b);
  return differing;
}

/** The leaf hashes of `buckets`, 256 x 32 bytes each, in the order given (what a repairLeaves message carries). */
export function digestLeafHashes(digest: Digest, buckets: readonly number[]): Uint8Array {
  const out = new Uint8Array(buckets.length * digestLeavesPerBucket * digestHashBytes);
  const bucketBytes = digestLeavesPerBucket * digestHashBytes;
  buckets.forEach((b, i) => {
    const leaves = leafBytesOf(digest, b);
    if (leaves !== undefined) out.set(leaves, i * bucketBytes);
  });
  return out;
}

/** The leaves of `buckets` whose hash differs from the other side's `theirLeafHashes` (digestLeafHashes of the same buckets). */
export function diffLeaves(digest: Digest, buckets: readonly number[], theirLeafHashes: Uint8Array): number[] {
  const differing: number[] = [];
  buckets.forEach((b, i) => {
    const leaves = leafBytesOf(digest, b);
    for (let l = 0; l < digestLeavesPerBucket; l += 1) {
      const leaf = b * digestLeavesPerBucket + l;
      const mine = l * digestHashBytes;
      const theirs = (i * digestLeavesPerBucket + l) * digestHashBytes;
      for (let k = 0; k < digestHashBytes; k += 1) {
        if ((leaves?.[mine + k] ?? 0) !== theirLeafHashes[theirs + k]) {
          differing.push(leaf);
          break;
        }
      }
    }
  });
  return differing;
}

/** Bucket `b`'s 256 leaf hashes as bytes, or undefined while it holds no key (all zero). */
function leafBytesOf(digest: Digest, b: number): Uint8Array | undefined {
  const words = digest.leafXorWords[b];
  return words === undefined ? undefined : new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
}

/** The leaves of the given buckets. */
export function leavesOfBuckets(buckets: readonly number[]): number[] {
  return buckets.flatMap((b) => Array.from({ length: digestLeavesPerBucket }, (_, l) => b * digestLeavesPerBucket + l));
}

/** Keys held in `buckets` (each leaf's count, without listing them). */
export function keyCountInBuckets(digest: Digest, buckets: readonly number[]): number {
  let n = 0;
  for (const leaf of leavesOfBuckets(buckets)) n += digest.keys.get(leaf)?.size ?? 0;
  return n;
}

/** This side's keys in the given leaves whose uid sorts after `afterUid`, sorted by uid, at most keysMax of them. */
export function keysInLeaves(digest: Digest, leaves: readonly number[], keysMax: number, afterUid = '', skip?: (sopInstanceUid: string) => boolean): InstanceKey[] {
  const out: InstanceKey[] = [];
  for (const leaf of leaves) {
    const members = digest.keys.get(leaf);
    if (members === undefined) continue;
    for (const [sopInstanceUid, sha256] of members) if (sopInstanceUid > afterUid && skip?.(sopInstanceUid) !== true) out.push({ sopInstanceUid, sha256 });
  }
  out.sort((a, b) => (a.sopInstanceUid < b.sopInstanceUid ? -1 : a.sopInstanceUid > b.sopInstanceUid ? 1 : 0));
  return out.slice(0, keysMax);
}

/** This side's keys in the given buckets whose uid sorts after `afterUid`, sorted by uid, at most keysMax of them. */
export function keysInBuckets(digest: Digest, buckets: readonly number[], keysMax: number, afterUid = '', skip?: (sopInstanceUid: string) => boolean): InstanceKey[] {
  return keysInLeaves(digest, leavesOfBuckets(buckets), keysMax, afterUid, skip);
}

/** The other side's keys this side lacks: what to pull. */
export function missingKeys(digest: Digest, theirKeys: readonly InstanceKey[]): InstanceKey[] {
  return theirKeys.filter((k) => !digestHas(digest, k.sopInstanceUid));
}
