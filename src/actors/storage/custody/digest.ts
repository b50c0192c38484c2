/**
 * Anti-entropy digest: 256 buckets chosen by the first byte of SHA-256(SOP Instance UID); each bucket is
 * the XOR of its members' item hashes, item hash = SHA-256(uid | sha256 of the bytes). XOR makes an add
 * O(1) and order-free, so two sites holding the same set always have the same buckets.
 * The digest also indexes keys per bucket, so listing a differing bucket costs that bucket, not the store.
 * Mutable: it is part of the custody state, which the custody reducer owns.
 */
import { createHash, hash } from 'node:crypto';
import type { InstanceKey } from './messages.ts';

export const digestBucketCount = 256;
const hashBytes = 32;

export interface Digest {
  /** bucketCount * 32 bytes of XOR accumulators. */
  readonly xor: Uint8Array;
  /** Per bucket: uid -> sha256 of the bytes. */
  readonly keys: readonly Map<string, string>[];
  size: number;
  /** Cached root; null when a bucket changed since it was computed. */
  root: string | null;
}

export function createDigest(): Digest {
  return {
    xor: new Uint8Array(digestBucketCount * hashBytes),
    keys: Array.from({ length: digestBucketCount }, () => new Map<string, string>()),
    size: 0,
    root: null,
  };
}

// One-shot crypto.hash: about twice as fast as createHash for these short inputs (start-up adds every
// held instance: 200,000 took ~1.9 s with createHash).
export function bucketOf(sopInstanceUid: string): number {
  return hash('sha256', sopInstanceUid, 'buffer')[0] as number;
}

function itemHash(sopInstanceUid: string, sha256: string): Buffer {
  return hash('sha256', `${sopInstanceUid}|${sha256}`, 'buffer');
}

export function digestHas(digest: Digest, sopInstanceUid: string): boolean {
  return digest.keys[bucketOf(sopInstanceUid)]!.has(sopInstanceUid);
}

/** The SHA-256 held for a UID, or undefined. */
export function digestSha256(digest: Digest, sopInstanceUid: string): string | undefined {
  return digest.keys[bucketOf(sopInstanceUid)]!.get(sopInstanceUid);
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
  const bucket = bucketOf(sopInstanceUid);
  const members = digest.keys[bucket]!;
  if (members.has(sopInstanceUid)) return false;
  // The digest keeps every held instance for the life of the process: only its own copies of the strings.
  members.set(ownString(sopInstanceUid), ownString(sha256));
  const h = itemHash(sopInstanceUid, sha256);
  const offset = bucket * hashBytes;
  for (let i = 0; i < hashBytes; i += 1) digest.xor[offset + i] = (digest.xor[offset + i] as number) ^ (h[i] as number);
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
    out.push(Buffer.from(digest.xor.subarray(b * hashBytes, (b + 1) * hashBytes)).toString('hex'));
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

/** This side's keys in the given buckets whose uid sorts after `afterUid`, sorted by uid, at most keysMax of them. */
export function keysInBuckets(digest: Digest, buckets: readonly number[], keysMax: number, afterUid = '', skip?: (sopInstanceUid: string) => boolean): InstanceKey[] {
  const out: InstanceKey[] = [];
  for (const b of buckets) {
    const members = digest.keys[b];
    if (members === undefined) continue;
    for (const [sopInstanceUid, sha256] of members) if (sopInstanceUid > afterUid && skip?.(sopInstanceUid) !== true) out.push({ sopInstanceUid, sha256 });
  }
  out.sort((a, b) => (a.sopInstanceUid < b.sopInstanceUid ? -1 : a.sopInstanceUid > b.sopInstanceUid ? 1 : 0));
  return out.slice(0, keysMax);
}

/** The other side's keys this side lacks: what to pull. */
export function missingKeys(digest: Digest, theirKeys: readonly InstanceKey[]): InstanceKey[] {
  return theirKeys.filter((k) => !digestHas(digest, k.sopInstanceUid));
}
