/**
 * The local replica store: instance bytes in chunks plus the catalog, in one LevelDB.
 *
 * Durability contract: `commit()` resolves only after one `sync: true` batch that holds the last chunk
 * and the catalog entry. LevelDB applies writes in order through one log, so that sync also makes every
 * earlier chunk of the instance durable. An instance is visible (to C-FIND, C-GET, counts) only through
 * its catalog entry, so an upload that dies half way is invisible, and its chunks are deleted at the
 * next open (each upload leaves a marker key until it commits or aborts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { Level } from 'level';
import { pack, unpack } from 'msgpackr';
import type { CatalogEntry } from './catalog-types.ts';
import { catalogWriteOps, countInstances, getCatalogEntry, prefixRange } from './catalog.ts';
import type { DebtEntry } from './custody/messages.ts';

export type StoreDb = Level<string, Uint8Array>;

export type StoreErrorCode =
  | 'ERR_STORE_CLOSED'
  | 'ERR_STORE_WRITER_STATE'
  | 'ERR_STORE_CORRUPT'
  /** putReplica: the bytes received do not match the byteLength or SHA-256 of the entry they came with. */
  | 'ERR_STORE_REPLICA_MISMATCH';

export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface ReplicaStoreInit {
  /** Directory of the LevelDB database. */
  path: string;
  /** Size of the pieces instance bytes are cut into; reads and writes stream one piece at a time. */
  chunkBytes?: number;
  /** How many unsynced chunk writes one upload may have in flight before `write` makes the caller wait. */
  maxChunkWritesInFlight?: number;
}

export interface CommitInfo {
  byteLength: number;
  sha256: string;
  blobId: string;
}

export type CommitResult = { outcome: 'stored'; entry: CatalogEntry } | { outcome: 'duplicate'; entry: CatalogEntry };

/** One instance being received. Call `write` for each piece, then exactly one of `commit` or `abort`. */
export interface InstanceWriter {
  readonly bytesWritten: number;
  /**
   * Resolves at once unless too many chunk writes are in flight: await it to apply back-pressure.
   * The writer keeps a reference to `data` until it is flushed: callers must not reuse the buffer.
   */
  write(data: Uint8Array): Promise<void>;
  /**
   * Makes the instance durable. `buildEntry` turns the byte facts into the catalog entry; when the SOP
   * Instance UID is already stored, nothing is written and the stored entry comes back as a duplicate.
   */
  commit(sopInstanceUid: string, buildEntry: (info: CommitInfo) => CatalogEntry): Promise<CommitResult>;
  abort(): Promise<void>;
  /**
   * SHA-256 (hex) of the bytes written so far, without ending the writer: lets custody admit a store
   * (which needs the hash) before the commit, without hashing every byte twice. Optional for other writers.
   */
  sha256SoFar?(): string;
}

export interface ReplicaStore {
  readonly db: StoreDb;
  open(): Promise<void>;
  close(): Promise<void>;
  beginWrite(): InstanceWriter;
  getEntry(sopInstanceUid: string): Promise<CatalogEntry | undefined>;
  /** The stored bytes of an instance, chunk by chunk, in order. */
  readInstance(entry: CatalogEntry): AsyncGenerator<Uint8Array>;
  countInstances(): Promise<number>;
  /**
   * Stores a copy received from another site: the bytes go into chunks as they arrive, and the one synced
   * commit happens only after their byteLength and SHA-256 matched `entry` (a mismatch stores nothing and
   * throws StoreError ERR_STORE_REPLICA_MISMATCH). The entry's catalog data is kept as sent (the catalog
   * travels with the instance); only `blobId` is local. 'duplicate' when the UID is already stored: then
   * `bytes` may not have been read at all (the caller drains or drops its source).
   */
  putReplica(entry: CatalogEntry, bytes: AsyncIterable<Uint8Array>): Promise<'stored' | 'duplicate'>;
  /** Replication debt, durable (`sync: true`), in one batch: puts first, then deletes. */
  updateDebt(puts: readonly DebtEntry[], deletes: readonly { sopInstanceUid: string; siteName: string }[]): Promise<void>;
  /** Every persisted debt entry, in key order. */
  listDebt(): Promise<DebtEntry[]>;
}

const blobPrefix = 'b!';
const uploadMarkerPrefix = 'u!';
/** d!<SOPInstanceUID>!<siteName> -> msgpack(DebtEntry). UIDs hold no '!', so the key is unambiguous. */
const debtPrefix = 'd!';

function debtKeyOf(sopInstanceUid: string, siteName: string): string {
  return `${debtPrefix}${sopInstanceUid}!${siteName}`;
}

function chunkKey(blobId: string, sequence: number): string {
  return `${blobPrefix}${blobId}!${sequence.toString(16).padStart(8, '0')}`;
}

export function createReplicaStore(init: ReplicaStoreInit): ReplicaStore {
  return new LevelReplicaStore(init);
}

class LevelReplicaStore implements ReplicaStore {
  readonly db: StoreDb;
  readonly chunkBytes: number;
  readonly maxChunkWritesInFlight: number;
  /** Commits of one UID are serialised so that two concurrent stores of it keep one copy. */
  private readonly commitsInProgress = new Map<string, Promise<unknown>>();

  constructor(init: ReplicaStoreInit) {
    // Pixel data rarely compresses and Snappy costs CPU on every byte; a larger write buffer means fewer
    // memtable flushes and compactions while instances stream in (both measured: ~2x per synced instance).
    this.db = new Level<string, Uint8Array>(init.path, {
      keyEncoding: 'utf8',
      valueEncoding: 'view',
      compression: false,
      writeBufferSize: 32 * 1024 * 1024,
    });
    this.chunkBytes = init.chunkBytes ?? 1024 * 1024;
    this.maxChunkWritesInFlight = init.maxChunkWritesInFlight ?? 4;
  }

  async open(): Promise<void> {
    await this.db.open();
    await this.deleteAbandonedUploads();
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  private async deleteAbandonedUploads(): Promise<void> {
    const abandoned: string[] = [];
    for await (const key of this.db.keys({ gte: uploadMarkerPrefix, lt: `${uploadMarkerPrefix}~` })) {
      abandoned.push(key.slice(uploadMarkerPrefix.length));
    }
    for (const blobId of abandoned) await this.deleteBlob(blobId, true);
  }

  async deleteBlob(blobId: string, sync: boolean): Promise<void> {
    const batch = this.db.batch();
    for await (const key of this.db.keys({ gte: `${blobPrefix}${blobId}!`, lt: `${blobPrefix}${blobId}!~` })) batch.del(key);
    batch.del(`${uploadMarkerPrefix}${blobId}`);
    await batch.write({ sync });
  }

  beginWrite(): InstanceWriter {
    return new LevelInstanceWriter(this);
  }

  async getEntry(sopInstanceUid: string): Promise<CatalogEntry | undefined> {
    return getCatalogEntry(this.db, sopInstanceUid);
  }

  async *readInstance(entry: CatalogEntry): AsyncGenerator<Uint8Array> {
    let expectedSequence = 0;
    let total = 0;
    for await (const [key, value] of this.db.iterator({ gte: `${blobPrefix}${entry.blobId}!`, lt: `${blobPrefix}${entry.blobId}!~` })) {
      const sequence = Number.parseInt(key.slice(key.lastIndexOf('!') + 1), 16);
      if (sequence !== expectedSequence) {
        throw new StoreError('ERR_STORE_CORRUPT', `instance ${entry.sopInstanceUid} misses chunk ${expectedSequence}`);
      }
      expectedSequence++;
      total += value.length;
      yield value;
    }
    if (total !== entry.byteLength) {
      throw new StoreError('ERR_STORE_CORRUPT', `instance ${entry.sopInstanceUid} has ${total} bytes, catalog says ${entry.byteLength}`);
    }
  }

  async countInstances(): Promise<number> {
    return countInstances(this.db);
  }

  async putReplica(entry: CatalogEntry, bytes: AsyncIterable<Uint8Array>): Promise<'stored' | 'duplicate'> {
    if (await this.getEntry(entry.sopInstanceUid)) return 'duplicate';
    const writer = this.beginWrite();
    try {
      for await (const piece of bytes) {
        if (writer.bytesWritten + piece.byteLength > entry.byteLength) {
          throw new StoreError('ERR_STORE_REPLICA_MISMATCH', `replica of ${entry.sopInstanceUid} has more than the ${entry.byteLength} bytes announced`);
        }
        // The writer keeps the buffer until it is flushed, and transports may reuse theirs: copy.
        await writer.write(new Uint8Array(piece));
      }
      const result = await writer.commit(entry.sopInstanceUid, (info) => {
        if (info.byteLength !== entry.byteLength || info.sha256 !== entry.sha256) {
          throw new StoreError(
            'ERR_STORE_REPLICA_MISMATCH',
            `replica of ${entry.sopInstanceUid} does not match its entry: ${info.byteLength} bytes sha256 ${info.sha256}, expected ${entry.byteLength} bytes sha256 ${entry.sha256}`,
          );
        }
        return { ...entry, blobId: info.blobId };
      });
      return result.outcome;
    } catch (error) {
      await writer.abort();
      throw error;
    }
  }

  async updateDebt(puts: readonly DebtEntry[], deletes: readonly { sopInstanceUid: string; siteName: string }[]): Promise<void> {
    if (puts.length === 0 && deletes.length === 0) return;
    const ops: Array<{ type: 'put'; key: string; value: Uint8Array } | { type: 'del'; key: string }> = [];
    for (const d of puts) {
      const entry: DebtEntry = { sopInstanceUid: d.sopInstanceUid, siteName: d.siteName, sinceMs: d.sinceMs };
      ops.push({ type: 'put', key: debtKeyOf(d.sopInstanceUid, d.siteName), value: new Uint8Array(pack(entry)) });
    }
    for (const d of deletes) ops.push({ type: 'del', key: debtKeyOf(d.sopInstanceUid, d.siteName) });
    // Not synced: a process crash keeps these writes (the OS has them), and what a power cut could take
    // back is only a hint, since anti-entropy repair finds every missing copy anyway. An fsync here would
    // sit on every C-STORE's path twice (owed, then paid).
    await this.db.batch(ops, { sync: false });
  }

  async listDebt(): Promise<DebtEntry[]> {
    const out: DebtEntry[] = [];
    for await (const value of this.db.values(prefixRange(debtPrefix))) out.push(unpack(value) as DebtEntry);
    return out;
  }

  /** Runs `task` after any other commit of the same UID has finished. */
  async serialiseCommit<T>(sopInstanceUid: string, task: () => Promise<T>): Promise<T> {
    const previous = this.commitsInProgress.get(sopInstanceUid) ?? Promise.resolve();
    const run = previous.then(task, task);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.commitsInProgress.set(sopInstanceUid, settled);
    try {
      return await run;
    } finally {
      if (this.commitsInProgress.get(sopInstanceUid) === settled) this.commitsInProgress.delete(sopInstanceUid);
    }
  }
}

class LevelInstanceWriter implements InstanceWriter {
  private readonly blobId = `${Date.now().toString(36)}${randomBytes(6).toString('hex')}`;
  private readonly hash = createHash('sha256');
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private sequence = 0;
  private markerWritten = false;
  private inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private state: 'open' | 'committed' | 'aborted' = 'open';
  bytesWritten = 0;

  constructor(private readonly store: LevelReplicaStore) {}

  async write(data: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new StoreError('ERR_STORE_WRITER_STATE', `write after ${this.state}`);
    if (this.failure) throw this.failure;
    this.hash.update(data);
    this.bytesWritten += data.length;
    // Received PDUs are never overwritten (the framer allocates afresh), so a view is safe to keep until the flush copies it.
    this.pending.push(data);
    this.pendingBytes += data.length;
    if (this.pendingBytes >= this.store.chunkBytes) this.flushChunk();
    while (this.inFlight.size >= this.store.maxChunkWritesInFlight) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
  }

  sha256SoFar(): string {
    return this.hash.copy().digest('hex');
  }

  private takePending(): Uint8Array {
    const chunk = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return chunk;
  }

  private flushChunk(): void {
    const batch: Array<{ type: 'put'; key: string; value: Uint8Array }> = [];
    if (!this.markerWritten) {
      batch.push({ type: 'put', key: `${uploadMarkerPrefix}${this.blobId}`, value: new Uint8Array(0) });
      this.markerWritten = true;
    }
    batch.push({ type: 'put', key: chunkKey(this.blobId, this.sequence++), value: this.takePending() });
    const write: Promise<void> = this.store.db.batch(batch).then(
      () => {
        this.inFlight.delete(write);
      },
      (error: unknown) => {
        this.inFlight.delete(write);
        this.failure ??= error;
      },
    );
    this.inFlight.add(write);
  }

  async commit(sopInstanceUid: string, buildEntry: (info: CommitInfo) => CatalogEntry): Promise<CommitResult> {
    if (this.state !== 'open') throw new StoreError('ERR_STORE_WRITER_STATE', `commit after ${this.state}`);
    await Promise.all(this.inFlight);
    if (this.failure) {
      await this.abort();
      throw this.failure;
    }
    return this.store.serialiseCommit(sopInstanceUid, async () => {
      const existing = await this.store.getEntry(sopInstanceUid);
      if (existing) {
        await this.abort();
        return { outcome: 'duplicate', entry: existing } as const;
      }
      const entry = buildEntry({ byteLength: this.bytesWritten, sha256: this.hash.digest('hex'), blobId: this.blobId });
      const ops: Array<{ type: 'put'; key: string; value: Uint8Array } | { type: 'del'; key: string }> = [];
      if (this.pendingBytes > 0 || this.sequence === 0) {
        ops.push({ type: 'put', key: chunkKey(this.blobId, this.sequence++), value: this.takePending() });
      }
      ops.push(...catalogWriteOps(entry));
      if (this.markerWritten) ops.push({ type: 'del', key: `${uploadMarkerPrefix}${this.blobId}` });
      this.state = 'committed';
      await this.store.db.batch(ops, { sync: true });
      return { outcome: 'stored', entry } as const;
    });
  }

  async abort(): Promise<void> {
    if (this.state === 'aborted') return;
    this.state = 'aborted';
    this.pending = [];
    this.pendingBytes = 0;
    await Promise.all(this.inFlight);
    if (this.markerWritten) await this.store.deleteBlob(this.blobId, false);
  }
}
