/**
 * Reads of a stored copy for a client, checked against the SHA-256 its catalog entry recorded: shared by
 * C-GET / C-MOVE sub-operations and DICOMweb retrieves.
 */
import { createHash } from 'node:crypto';
import type { CatalogEntry } from './catalog-types.ts';
import { StoreError, type ReplicaStore } from './replica-store.ts';

/**
 * What a sub-operation sends is checked against the SHA-256 the catalog recorded for it: a copy the disk
 * damaged never goes out as Success, and is reported suspect (the scrub replaces it from another site).
 * Instances up to this size are read and checked whole before their C-STORE-RQ goes out, so a damaged
 * one fails its sub-operation alone; larger ones stream (see checkedStream).
 */
export const checkedWholeBytesMax = 4 * 1024 * 1024;

/** The whole instance, read through checkedStream: it throws before returning a damaged copy. */
export async function checkedWhole(store: ReplicaStore, entry: CatalogEntry): Promise<Buffer> {
  return Buffer.concat(await checkedChunks(store, entry));
}

/** The whole instance as its stored chunks (no copy into one buffer), checked as checkedWhole does. */
export async function checkedChunks(store: ReplicaStore, entry: CatalogEntry): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of await checkedStream(store, entry)) chunks.push(chunk);
  return chunks;
}

/**
 * A large instance as it is read, hashed on the way. Its first chunk is read before this returns, so a
 * copy that cannot be read at all fails before its C-STORE-RQ; a mismatch is thrown after the last chunk
 * was read and before it is sent (AssociationCore.sendMessage holds one back; DICOMweb ends its response
 * unfinished), so the receiver never gets a whole damaged data set.
 */
export async function checkedStream(store: ReplicaStore, entry: CatalogEntry): Promise<AsyncIterable<Uint8Array>> {
  const chunks = store.readInstance(entry);
  const first = await chunks.next();
  const hash = createHash('sha256');
  return (async function* () {
    if (first.done !== true) {
      hash.update(first.value);
      yield first.value;
      for await (const chunk of chunks) {
        hash.update(chunk);
        yield chunk;
      }
    }
    const sha256 = hash.digest('hex');
    if (sha256 === entry.sha256) return;
    const reason = `read for a retrieve: SHA-256 ${sha256.slice(0, 16)}..., catalog says ${entry.sha256.slice(0, 16)}...`;
    store.reportSuspectCopy(entry.sopInstanceUid, reason);
    throw new StoreError('ERR_STORE_CORRUPT', `the stored copy of ${entry.sopInstanceUid} is damaged (${reason})`);
  })();
}
