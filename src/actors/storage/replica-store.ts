/**
 * The local replica store: the catalog in one LevelDB (`<path>/catalog`) and the instance bytes, in
 * chunks, in another (`<path>/blobs`).
 *
 * Why two databases: blob keys are `b!<blobId>!<seq>` with time-ordered blob ids, so each memtable flush
 * of the blob database covers a key range after the previous one and LevelDB moves those files down the
 * levels without rewriting them. Mixed with the catalog's random UID keys, every flush overlapped every
 * other and compaction rewrote the pixel data again and again (measured: ~10 ms of CPU per 0.5 MB
 * instance after 600 instances, growing with the archive; ~2.5 ms with the split).
 *
 * Durability contract: `commit()` resolves only after one `sync: true` batch in the blob database that
 * holds the last chunk and a commit record (`b!<blobId>!~`, the catalog entry); commits running at once
 * share that batch (see BatchCombiner). LevelDB writes one log in
 * order, so that sync also makes every earlier chunk durable, in the log it syncs and, with the LevelDB
 * that `npm install` builds, in the full logs before it, synced at each switch (scripts/build-leveldb.js;
 * the prebuilt addon closes them unsynced: see leveldb-logs.ts). At open, a commit record whose chunks have
 * a gap (a switch a power cut undid) is deleted unless the catalog lists it, which the scrub then repairs.
 * The catalog entry is then written to the
 * catalog database without a sync of its own: a process crash keeps it (the OS has the write), and after a
 * power cut `open()` re-applies every commit record newer than the last catalog checkpoint. A checkpoint
 * is a synced write of the oldest blob id that may still lack its catalog entry, made every
 * `checkpointIntervalMs` after commits and at close, so recovery reads seconds of blobs, not the archive.
 *
 * An instance is visible (to C-FIND, C-GET, counts) only through its catalog entry, so an upload that dies
 * half way is invisible; `open()` deletes the chunks of every blob newer than the checkpoint that has no
 * commit record (every upload open at a crash is newer than the last checkpoint: blob ids only grow; so is
 * every aborted one whose unsynced delete no synced blob write has followed yet: see abortsNotDurable),
 * except the part of a cut copy kept for a resume (partial-copies.ts), whose marker `p!<blobId>` (in the
 * catalog database) names its first chunks: those survive a restart until the marker's time is up (see PartialCopyRecord).
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { access, open, readdir, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { pack, unpack } from 'msgpackr';
import { errorText } from '../runtime/logger.ts';
import { BatchCombiner } from './batch-combiner.ts';
import { createOlderLogSync } from './leveldb-logs.ts';
import { NewestOfPatientCache } from './newest-of-patient.ts';
import type { CatalogEntry } from './catalog-types.ts';
import { CATALOG_ENTRY_PREFIX, HELD_INDEX_PREFIX, buildHeldIndex, buildSearchIndexes, catalogDeleteOps, clearLegacySearchIndexes, searchIndexOps, isCatalogDamage, catalogWriteOpsEncoded, countInstances, decodeCatalogEntry, encodeCatalogEntry, getCatalogEntries, getCatalogEntryRecords, getCatalogEntry, newestStoredAtOfPatient, isValidUid, prefixRange, readAcrossReopen } from './catalog.ts';
import type { DebtEntry, KnownSite } from './custody/messages.ts';
import type { ForgottenSite } from '../membership/messages.ts';
import type { CommitmentRecord } from '../commitment/messages.ts';

export type StoreDb = Level<string, Uint8Array>;

export type StoreErrorCode =
  | 'ERR_STORE_CLOSED'
  | 'ERR_STORE_WRITER_STATE'
  | 'ERR_STORE_CORRUPT'
  /** The directory holds a store in the pre-release single-database layout. */
  | 'ERR_STORE_LAYOUT'
  /** The store is of a format newer than this build reads (a newer pacs-mesh wrote it: a downgrade). */
  | 'ERR_STORE_FORMAT'
  /** Another process (or another store in this one) has the databases open. */
  | 'ERR_STORE_LOCKED'
  /** The databases could not be opened or recovered (a full disk, damaged files ...): the message says why. */
  | 'ERR_STORE_OPEN'
  /** A start found the catalog damaged and marked it (reportCatalogDamage): the next open rebuilds it. */
  | 'ERR_STORE_CATALOG_DAMAGED'
  /** putReplica: the bytes received do not match the byteLength or SHA-256 of the entry they came with. */
  | 'ERR_STORE_REPLICA_MISMATCH'
  /** A write failed with an I/O error (a full disk): writes are refused until the store has reopened itself. */
  | 'ERR_STORE_FAULTED'
  /** LevelDB refused a write to the blob database as corrupt: the next start repairs it (reportBlobDamage). */
  | 'ERR_STORE_DAMAGED';

export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface ReplicaStoreInit {
  /** Directory holding the two LevelDB databases (`catalog/` and `blobs/`). */
  path: string;
  /** Size of the pieces instance bytes are cut into; reads and writes stream one piece at a time. */
  chunkBytes?: number;
  /** How many unsynced chunk writes one upload may have in flight before `write` makes the caller wait. */
  maxChunkWritesInFlight?: number;
  /** How often, at most, the catalog is synced after commits (bounds the recovery work after a power cut). */
  checkpointIntervalMs?: number;
  /** After a write fault, the first reopening is tried after this long, then at doubling intervals up to 30 s. */
  reopenAfterFaultMs?: number;
  /** Told what `open()` had to mend (a catalog rebuilt ...), for the operator's log. */
  onOpenNotice?: (message: string, fields: Record<string, unknown>) => void;
  /** The bytes free to this process on the disk holding `path` (statfs); replaceable so tests can fill the disk. */
  freeDiskBytesOf?: (path: string) => Promise<number>;
  /** The blob database's memtable (LevelDB write_buffer_size). Default blobWriteBufferBytesDefault. */
  blobWriteBufferBytes?: number;
  /** With no instance stored for this long, a memtable holding more than blobIdleFlushMinBytes is written to its table. Default 2 s. */
  blobIdleFlushAfterMs?: number;
}

/**
 * The blob database's memtable (`--ingest-buffer-mib`). A burst of instances up to its size is written to the
 * disk once, into the synced log, while it arrives, and its table (LevelDB's second write of every byte) when
 * the ingest pauses (blobIdleFlushAfterMs), not in the middle of the burst, where each flush slows the commits
 * waiting on their fdatasync. The cost is memory, up to twice this while a full memtable is written out: at
 * 256 MiB a burst of 300 x 0.5 MB was stored in 0.91x the time, with a peak RSS of 266 MiB against 150, and a
 * 300 MB instance grew the peer's memory by 380 MiB against 164 (docs/performance.md, "The memtable sized for a
 * burst"): the default keeps memory flat whatever the instance size, as issue 2 asks.
 */
export const blobWriteBufferBytesDefault = 32 * 1024 * 1024;
/** Below this, an idle memtable stays: a trickle of instances would otherwise leave a table per pause. */
const blobIdleFlushMinBytes = 16 * 1024 * 1024;

/**
 * The outcome of a repair of the blob database at open: the instances the catalog listed whose bytes the
 * repair did not keep whole (missing chunks, a wrong SHA-256, a block still unreadable), which left the
 * catalog, and the file that lists them (undefined when none was lost).
 */
export interface BlobRepairReport {
  atMs: number;
  instancesChecked: number;
  instancesLost: number;
  lostListFile: string | undefined;
  /** Commit records the repair lost whose instance is whole: written again from the catalog entry. */
  commitRecordsRestored: number;
}

/** What the store says about write faults (see ReplicaStore.onWriteFault). */
export type StoreFaultEvent = { type: 'faulted'; error: string } | { type: 'reopened'; faultedForMs: number } | { type: 'reopenFailed'; error: string; nextTryInMs: number };

const reopenAfterFaultMaxMs = 30_000;
/** Free space wanted beyond the logs' size before a faulted store is closed to reopen (new MANIFEST, log, tables). */
const reopenSpareBytes = 16 * 1024 * 1024;

/**
 * What went wrong in a few words, for a DICOM Error Comment (64 characters at most): LevelDB's I/O errors
 * name the file first ("IO error: <path>: No space left on device"), which would leave no room for why.
 */
export function storageErrorText(error: unknown): string {
  const text = errorText(error);
  return /^IO error: \/.*: ([^:]+)$/.exec(text)?.[1] ?? text;
}

/** Why a store could not open, for the operator: abstract-level's "Database failed to open" says why only in its cause. */
function openError(path: string, error: unknown): StoreError {
  const cause = (error as { cause?: unknown })?.cause;
  const why = cause === undefined ? errorText(error) : errorText(cause);
  return new StoreError('ERR_STORE_OPEN', `cannot open the store in ${path}: ${why}${whatToDoAbout(why)}`, { cause: error });
}

/**
 * A read that a start needs and LevelDB refused (a damaged table read only then, past the open): the same
 * one line as an open that failed, naming what was read (hunt 167: it was LevelDB's bare "Corruption: ..."),
 * with `wayOut` instead of an open's when the caller knows better.
 */
export function startReadError(path: string, what: string, error: unknown, wayOut?: string): StoreError {
  const why = errorText(error);
  return new StoreError('ERR_STORE_OPEN', `cannot read ${what} in ${path}: ${why}${wayOut === undefined ? whatToDoAbout(why) : `; ${wayOut}`}`, { cause: error });
}

/**
 * A read that a start needs and that found the catalog damaged, once reportCatalogDamage has marked it: the
 * way out is another start, which rebuilds it, not startReadError's empty directory, which would drop the
 * copies this site alone holds (those it owes) along with the damage (hunt 169).
 */
export function catalogDamagedAtStartError(path: string, what: string, error: unknown): StoreError {
  return new StoreError(
    'ERR_STORE_CATALOG_DAMAGED',
    `cannot read ${what} in ${path}: ${errorText(error)}; its catalog is marked damaged: start the peer again to rebuild it from the instances' commit records (nothing stored is lost; the sites it knew and the copies it owes them are learnt again in the mesh, from heartbeats and repair)`,
    { cause: error },
  );
}

/** The way out of a store error LevelDB gave as `why`, after a '; ' ('' when there is none to say). */
function whatToDoAbout(why: string): string {
  // LevelDB's own word for damaged files (a truncated MANIFEST, a bad table), or a MANIFEST lost (a copy
  // taken while the peer ran: helper 48): say what to do as well.
  return /^Corruption:/.test(why) || isMissingFileText(why) || isCutShortFileText(why)
    ? '; its database files are damaged: move the data directory away and start on an empty one (in a mesh the other sites refill it)'
    : // The operator's to fix, not damage: files of another user (a directory copied as root), or a full disk.
      /: Permission denied$/.test(why)
      ? "; this user may not read or write the store's files: run the peer as the user that owns the data directory, or give it to this one (chown -R)"
      : /: No space left on device$/.test(why)
        ? '; free space on that disk (opening turns the logs into tables, which needs room), or move the data directory to a larger one'
        : '';
}

/** LevelDB's words for files it finds damaged (see whatToDoAbout): a database that LevelDB's repair, or a rebuild, may mend. */
function isDatabaseDamageText(text: string): boolean {
  return /Corruption:/.test(text) || isMissingFileText(text) || isCutShortFileText(text);
}

/**
 * LevelDB's open error when CURRENT names a file that is not there (a MANIFEST lost, or CURRENT itself
 * damaged into naming something else: helper 50): the directory itself is created when missing.
 */
function isMissingFileText(text: string): boolean {
  return /IO error: .*: No such file or directory/.test(text);
}

/** LevelDB's open error for a table file cut short (a copy interrupted, a truncated file: helper 64). */
function isCutShortFileText(text: string): boolean {
  return /IO error: .*\.ldb: Invalid argument/.test(text);
}

/**
 * LevelDB opens a directory whose CURRENT file is lost as a new, empty database beside the old tables,
 * so a blob database damaged that way would start with every instance's bytes gone and nothing said.
 * (A catalog damaged that way is set aside and rebuilt from the blobs' commit records; the bytes cannot be.)
 */
async function refuseDatabaseWithoutCurrent(dir: string): Promise<void> {
  const data = await databaseFilesWithoutCurrent(dir);
  if (data.length === 0) return;
  throw new StoreError(
    'ERR_STORE_OPEN',
    `cannot open the store in ${dir}: it holds database files (${data.slice(0, 3).join(', ')}${data.length > 3 ? ' ...' : ''}) but no CURRENT file, so the instance bytes cannot be found; move the data directory away and start on an empty one (in a mesh the other sites refill it)`,
  );
}

/** The LevelDB files in `dir` when it has no CURRENT file; [] when it has one, or none, or is not there. */
async function databaseFilesWithoutCurrent(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return []; // not there yet: a new store
  }
  return names.includes('CURRENT') ? [] : names.filter((n) => /^(MANIFEST-\d+|\d+\.(ldb|log|sst))$/.test(n));
}

/**
 * Flushes the memtable into a table (classic-level's compactRange: LevelDB's CompactRange flushes it first),
 * then compacts the tables holding `key`, the store-format marker. Right after the open the memtable holds the
 * marker alone, which so goes into a table of its own: had it ('m!', after every 'b!' blob key) gone into the
 * first table with blobs, that table's range would take in every blob written later, so no later table could
 * be moved down the levels untouched, and every 32 MiB of instance bytes was rewritten once or twice by
 * compactions (hunt 135: ~240 MB rewritten per 315 MB stored, against none with the marker alone). Later (the
 * idle flush) the marker's table is the only one in its range, already at the lowest level with files: the
 * flush is all the work.
 */
async function flushMemtable(db: StoreDb, markerKey: string): Promise<void> {
  // level's types omit compactRange.
  const compactRange = (db as unknown as { compactRange?: (start: string, end: string) => Promise<void> }).compactRange;
  if (typeof compactRange === 'function') await compactRange.call(db, markerKey, markerKey);
}

/** A LevelDB property (`leveldb.sstables`, `leveldb.approximate-memory-usage`) of `db`: level's types omit getProperty. */
export function leveldbProperty(db: StoreDb, name: string): string | undefined {
  return (db as unknown as { getProperty?: (name: string) => string }).getProperty?.(name);
}

/** A time for a file name: ISO 8601 without ':' or '.', so that names sort by time. */
function fileTimeStamp(date: Date): string {
  return date.toISOString().replace(/[:.]/g, '-');
}

/** A value in one field of a tab-separated line (a reason quotes LevelDB, which may say anything). */
function tsvField(value: string): string {
  return value.replace(/[\t\r\n]/g, ' ');
}

/** LevelDB's Corruption status (a damaged block or file), not a record of ours failing its check. */
function isLevelCorruption(error: unknown): boolean {
  const e = error as { code?: unknown; cause?: { code?: unknown } } | undefined;
  return e?.code === 'LEVEL_CORRUPTION' || e?.cause?.code === 'LEVEL_CORRUPTION';
}

/**
 * A damage mark: a file beside the databases that the next open acts on, written at once (the peer may be
 * about to stop), and listeners told once; later reports are ignored until `reported` is reset.
 */
class DamageMark {
  reported = false;
  private readonly listeners = new Set<(reason: string) => void>();
  constructor(private readonly file: string) {}

  mark(reason: string): void {
    writeFileSync(this.file, `${reason}\n`);
  }

  report(reason: string): void {
    if (this.reported) return;
    this.reported = true;
    try {
      this.mark(reason);
    } catch {
      // Unwritable (a full disk): the listeners still say what is wrong and what to do.
    }
    callEach(this.listeners, reason);
  }

  listen(listener: (reason: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

/** Calls every listener; one that throws does not keep the others, or the reporting caller, from going on. */
function callEach<A extends unknown[]>(listeners: Iterable<(...args: A) => void>, ...args: A): void {
  for (const listener of listeners) {
    try {
      listener(...args);
    } catch {
      // A listener's failure is its own.
    }
  }
}

/** LevelDB's I/O errors (ENOSPC, EIO ...), as classic-level reports them. */
function isIoError(error: unknown): boolean {
  const e = error as { code?: unknown; cause?: { code?: unknown } } | undefined;
  return e?.code === 'LEVEL_IO_ERROR' || e?.cause?.code === 'LEVEL_IO_ERROR';
}

export interface CommitInfo {
  byteLength: number;
  sha256: string;
  blobId: string;
}

/** 'duplicate': the UID was stored already; `entry` is that copy, `sentSha256` the hash of the bytes just written (and dropped). */
export type CommitResult = { outcome: 'stored'; entry: CatalogEntry } | { outcome: 'duplicate'; entry: CatalogEntry; sentSha256: string };

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
   * Whether bytes written from here on could still commit: open, no write failed, and the store has not
   * faulted since the writer began (its reopening deletes the chunks of open uploads). What partial-copies.ts
   * keeps for a resume; optional for other writers.
   */
  resumable?(): boolean;
  /**
   * Makes the bytes written so far survive a restart as a kept part (partial-copies.ts): flushes them, then
   * writes, synced, a marker naming them; the store's next open offers them back (restoredPartials) until
   * `keptUntilDateMs`. Bytes written after this are not part of it. Optional for other writers.
   */
  persistPartial?(record: { sopInstanceUid: string; fromPeerId: string; keptUntilDateMs: number }): Promise<void>;
  /**
   * Names the chunks flushed so far in a kept-part marker written without a sync (no short chunk is
   * flushed): a process killed (SIGKILL) keeps them for its next open, as a cut would (PartialCopies.progressWriter).
   * A power cut may lose them or the marker; the open's checks then delete what does not match. Optional.
   */
  markProgress?(record: { sopInstanceUid: string; fromPeerId: string; keptUntilDateMs: number }): Promise<void>;
  /**
   * SHA-256 (hex) of the bytes written so far, without ending the writer: lets custody admit a store
   * (which needs the hash) before the commit, without hashing every byte twice. Optional for other writers.
   */
  sha256SoFar?(): string;
}

export interface ReplicaStore {
  /** The store's directory (DATA/store), which errors about it name. */
  readonly path: string;
  /** The catalog database (entries, indexes, debt, the recovery checkpoint). */
  readonly db: StoreDb;
  /** The instance bytes: chunks and commit records, keyed by blob id. */
  readonly blobDb: StoreDb;
  open(): Promise<void>;
  close(): Promise<void>;
  beginWrite(): InstanceWriter;
  getEntry(sopInstanceUid: string): Promise<CatalogEntry | undefined>;
  /** Several entries in one read, in order (undefined where not stored). */
  getEntries(sopInstanceUids: readonly string[]): Promise<Array<CatalogEntry | undefined>>;
  /** The storedAtMs of the newest instance of a patient held here (undefined when none). */
  newestStoredAtOfPatient(patientId: string): Promise<number | undefined>;
  /**
   * The stored bytes of an instance, chunk by chunk, in order; never more than its byteLength (else
   * ERR_STORE_CORRUPT). `chunksPerRead` 1 reads a chunk at a time, for a reader that wants the start only
   * (a data set's header); by default a few are read per call.
   */
  readInstance(entry: CatalogEntry, options?: { chunksPerRead?: number }): AsyncGenerator<Uint8Array>;
  /**
   * The bytes of many instances, in order, for a sender that sends one after another: small instances are
   * read many per native call, and the next group while the caller sends the current one. Each `chunks`
   * must be consumed (or dropped) before the next item is asked for.
   */
  readInstances(entries: readonly CatalogEntry[]): AsyncGenerator<{ entry: CatalogEntry; chunks: AsyncIterable<Uint8Array> | readonly Uint8Array[] }>;
  /** Instances stored: counted once from when the store opened (in the background), then kept (GET /api/mesh asks it often). */
  countInstances(): Promise<number>;
  /**
   * Stores a copy received from another site: the bytes go into chunks as they arrive, and the one synced
   * commit happens only after their byteLength and SHA-256 matched `entry` (a mismatch stores nothing and
   * throws StoreError ERR_STORE_REPLICA_MISMATCH). The entry's catalog data is kept as sent (the catalog
   * travels with the instance); only `blobId` is local. 'duplicate' when the UID is already stored: then
   * `bytes` may not have been read at all (the caller drains or drops its source). The pieces are kept until
   * flushed, so the source must not write to a buffer it has yielded.
   */
  putReplica(entry: CatalogEntry, bytes: AsyncIterable<Uint8Array>): Promise<'stored' | 'duplicate'>;
  /**
   * Reads a stored copy whole and checks it against its entry (length, SHA-256): what a scrub does. A copy
   * that cannot be read whole (StoreError ERR_STORE_CORRUPT) is reported, not thrown.
   */
  verifyInstance(entry: CatalogEntry): Promise<{ ok: true } | { ok: false; reason: string }>;
  /**
   * Replaces a copy that failed verification with good bytes from elsewhere: `bytes` must have the
   * entry's byteLength and SHA-256 (else ERR_STORE_REPLICA_MISMATCH and nothing changes). The catalog
   * entry keeps its fields and points at the new copy (one synced batch, as a commit); the bad copy's
   * chunks are then deleted. 'changed' (nothing written) when the entry no longer names the bad copy.
   */
  repairCopy(corrupt: CatalogEntry, bytes: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<'repaired' | 'changed'>;
  /**
   * A copy that may be damaged: a read found it short, too long or missing a chunk (reported by the store
   * itself, except for verifyInstance's reads), or a peer refused its bytes. The scrub listens and reads it
   * back at once instead of at its next pass.
   */
  reportSuspectCopy(sopInstanceUid: string, reason: string): void;
  /** Listens to reportSuspectCopy; returns the unsubscribe function. */
  onSuspectCopy(listener: (sopInstanceUid: string, reason: string) => void): () => void;
  /**
   * The catalog itself is damaged (a record failed its check, LevelDB reported corruption): marks the
   * store so that its next open sets the catalog aside and rebuilds it from the commit records, and tells
   * the onCatalogDamage listeners, once; later reports are ignored.
   */
  reportCatalogDamage(reason: string): void;
  /** Listens to reportCatalogDamage (called at most once); returns the unsubscribe function. */
  onCatalogDamage(listener: (reason: string) => void): () => void;
  /**
   * The blob database (the instance bytes) is damaged: LevelDB answered a read or write of it with a
   * Corruption. Marks the store so that its next open has LevelDB repair it and reconciles the catalog
   * with what the repair kept, and tells the onBlobDamage listeners, once; later reports are ignored.
   */
  reportBlobDamage(reason: string): void;
  /** Listens to reportBlobDamage (called at most once); returns the unsubscribe function. */
  onBlobDamage(listener: (reason: string) => void): () => void;
  /** What the last repair of the blob database at open found (see BlobRepairReport), or undefined when none ran. */
  readonly blobRepair: BlobRepairReport | undefined;
  /** The write fault writes are refused for (message), or undefined while the store writes. */
  readonly writeFault: string | undefined;
  /** Listens to write faults and the reopenings that end them; returns the unsubscribe function. */
  onWriteFault(listener: (event: StoreFaultEvent) => void): () => void;
  /**
   * Listens to instances newly stored here, by any path (an ingest, a copy pushed, batched or pulled): the
   * UID once its commit is durable (not a duplicate, nor a repaired copy); returns the unsubscribe function.
   */
  onInstanceStored(listener: (sopInstanceUid: string) => void): () => void;
  /**
   * The kept parts this open found (see InstanceWriter.persistPartial), each once: the caller resumes or
   * drops each. One not asked for is dropped at its keptUntilDateMs. Optional for other stores.
   */
  restoredPartials?(): RestoredPartial[];
  /**
   * Replication debt, in one batch: puts first, then deletes (not synced; see the implementation). Calls
   * land in call order, those made while one is written together in one batch, so the last op on a key wins.
   */
  updateDebt(puts: readonly DebtEntry[], deletes: readonly { sopInstanceUid: string; siteName: string }[]): Promise<void>;
  /**
   * Every persisted debt entry, in key order. A record that is not a debt entry is skipped and named to
   * `onDamaged`: debt is a hint that anti-entropy repair backs up, so it must not stop custody.
   */
  listDebt(onDamaged?: (key: string) => void): Promise<DebtEntry[]>;
  /**
   * The site each debt key names ('' for a key naming none), in key order, from the keys alone and at most
   * `limit` of them: a start without --swarm-key (mesh-state.ts) reads the first few of a table that may hold millions.
   */
  debtSiteNames(limit: number): AsyncIterable<string>;
  /**
   * Custody's known sites and tombstones, in the same write order as updateDebt (not synced): `seen` written,
   * `forgotten` turned from known sites into tombstones, `tombstonesDropped` deleted.
   */
  updateKnownSites(seen: readonly KnownSite[], forgotten: readonly ForgottenSite[], tombstonesDropped?: readonly string[]): Promise<void>;
  /** Every persisted known site; a damaged record is skipped and named to `onDamaged` (the site is learnt again when heard). */
  listKnownSites(onDamaged?: (key: string) => void): Promise<KnownSite[]>;
  /** Every persisted tombstone (see ForgottenSite); a damaged record is skipped and named to `onDamaged`. */
  listForgottenSites(onDamaged?: (key: string) => void): Promise<ForgottenSite[]>;
  /**
   * A Storage Commitment transaction whose report is still owed, synced: the N-ACTION-RSP that follows
   * promises the report, which must survive a power cut. Replaces a record of the same Transaction UID.
   */
  putCommitment(record: CommitmentRecord): Promise<void>;
  deleteCommitment(transactionUid: string): Promise<void>;
  /** Every persisted commitment record; a damaged one is skipped and named to `onDamaged`. */
  listCommitments(onDamaged?: (key: string) => void): Promise<CommitmentRecord[]>;
}

/** A kept part found at open: resumed into an open writer (its SHA-256 read back from its chunks), or dropped. */
export interface RestoredPartial {
  readonly sopInstanceUid: string;
  readonly fromPeerId: string;
  readonly bytes: number;
  readonly keptUntilDateMs: number;
  resume(): Promise<InstanceWriter>;
  drop(): Promise<void>;
}

/**
 * The marker of a kept part, `p!<blobId>` in the catalog database (in the blob database it made the tables
 * written with it span every later blob key, and compactions rewrite pixel data again: see flushMemtable):
 * its blob's first `chunks` chunks hold
 * `bytes` bytes of `sopInstanceUid` from `fromPeerId`. Never an instance (no commit record, no catalog
 * entry); an earlier build ignores the key (and its recovery deletes the chunks: the marker is then dropped).
 */
interface PartialCopyRecord {
  v: 1;
  sopInstanceUid: string;
  fromPeerId: string;
  chunks: number;
  bytes: number;
  keptUntilDateMs: number;
}

const partialRecordPrefix = 'p!';
/** A kept part's marker whose time is further away than this is from a clock stepped back: dropped. */
const partialKeptHorizonMs = 60 * 60_000;

function decodePartialRecord(value: Uint8Array): PartialCopyRecord | undefined {
  try {
    const r = unpack(value) as Partial<PartialCopyRecord> | null;
    if (r === null || typeof r !== 'object' || r.v !== 1) return undefined;
    if (typeof r.sopInstanceUid !== 'string' || !isValidUid(r.sopInstanceUid) || typeof r.fromPeerId !== 'string' || r.fromPeerId.length > 256) return undefined;
    if (!Number.isSafeInteger(r.chunks) || r.chunks! <= 0 || !Number.isSafeInteger(r.bytes) || r.bytes! <= 0 || !Number.isFinite(r.keptUntilDateMs)) return undefined;
    return r as PartialCopyRecord;
  } catch {
    return undefined;
  }
}

/**
 * The store format this build writes, and the newest it reads (docs/compatibility.md). Raised only by a
 * change an earlier build would misread; a change it ignores safely (a key of its own, an index with its
 * own marker like searchIndexedBeforeKey) keeps it, so that a rollback to that build still works.
 */
export const STORE_FORMAT = 1;
/** In the blob database (the catalog is rebuilt from it): the format of the store, as decimal text. */
const storeFormatKey = 'm!store-format';
const blobPrefix = 'b!';
/** Sorts after every chunk sequence number of its blob (hex digits). */
const commitRecordSuffix = '~';
/** The oldest blob id whose catalog entry may not be durable yet (see the checkpoint in the header comment). */
const recoveryFromKey = 'm!recovery-from';
/** Written synced before a checkpoint, so that every catalog write before it is in a synced log. */
const logBarrierKey = 'm!log-barrier';
/** A file beside the databases: the catalog was found damaged, so the next open rebuilds it. */
const catalogDamagedMarker = 'catalog-damaged';
/** A file beside the databases: the blob database was found damaged, so the next open repairs it (see repairBlobs). */
const blobsDamagedMarker = 'blobs-damaged';
/** The catalogs set aside (`catalog.damaged-<time>`) kept: older ones are deleted, on a disk that keeps failing they would fill it. */
const catalogsSetAsideKept = 3;
/** Present once every catalog entry has its held-index key (stores older than that index get it at open). */
const heldIndexBuiltKey = 'm!held-index';
/**
 * The blob id from which catalog entries may lack their search-index keys (newest, name, date): this build
 * writes them with every entry, but a build before them, run on this data directory in between (a rollback),
 * did not. Blob ids only grow, and that build wrote no entry without a blob at or after the recovery
 * checkpoint, so the entries of those blobs are indexed again at open. Absent: index every entry.
 * It holds the same value as recoveryFromKey, written in the same batch, but only by this build: the
 * earlier one moves the recovery checkpoint on past the blobs it leaves unindexed.
 * The key names the index format: earlier builds used legacySearchIndexedBeforeKey (and the indexes that
 * clearLegacySearchIndexes deletes). Such a build indexes every entry again when it finds its own key
 * absent, and this one deletes that key (and those indexes) whenever it finds it, so each build's search
 * indexes stay whole across rollbacks in either direction. Format 3 added the entries of unknown StudyDate
 * and AccessionNumber values, format 4 the modality index (catalog.ts attributeIndexKeys): a store of an
 * earlier format is indexed whole once; its key stays, so a build of that format run again indexes from
 * its own (older) checkpoint, as after any rollback, and writes nothing this build lacks.
 */
const searchIndexedBeforeKey = 'm!search-indexes!4';
const legacySearchIndexedBeforeKey = 'm!search-indexes';
/** Entries indexed per catalog batch by indexEntriesFrom. */
const blobsPerIndexBatch = 256;
/** d!<SOPInstanceUID>!<siteName> -> msgpack(DebtEntry). UIDs hold no '!', so the key is unambiguous. */
const debtPrefix = 'd!';
/** k!<siteName> -> msgpack(KnownSite). */
const knownSitePrefix = 'k!';
/** f!<siteName> -> msgpack(ForgottenSite): a site forgotten lately, which custody's heartbeats gossip. */
const forgottenSitePrefix = 'f!';
/** s!<transactionUid> -> msgpack(CommitmentRecord): a Storage Commitment report still owed. */
const commitmentPrefix = 's!';
/** Blob ids start with a strictly increasing tick (milliseconds when the clock allows), fixed width. */
const blobTickDigits = 9;
/** Chunks read by one call at most (each holds chunkBytes plus at most one received piece). */
const chunksPerReadMax = 4;
/**
 * Bytes of instance data readInstances reads in one call at most; it holds two such groups at once, so a
 * sending stream holds at most 2 MiB read ahead (16 fetch-batch streams served at once: 32 MiB).
 */
const readGroupBytesMax = 1024 * 1024;
/** Keys readInstances reads in one call at most. */
const readGroupKeysMax = 256;
/** Commits combined into one LevelDB batch at most (each adds at most one chunk: <= 4 MiB per batch). */
const commitsPerBatchMax = 64;

type Op = { type: 'put'; key: string; value: Uint8Array } | { type: 'del'; key: string };

function debtKeyOf(sopInstanceUid: string, siteName: string): string {
  return `${debtPrefix}${sopInstanceUid}!${siteName}`;
}

function tickPrefix(tick: number): string {
  return tick.toString(36).padStart(blobTickDigits, '0');
}

/**
 * How many chunk keys cover an instance written with this chunk size: every chunk but the last holds at
 * least chunkBytes (fewer keys than that only for a blob written with smaller chunks).
 */
function chunksAtMost(byteLength: number, chunkBytes: number): number {
  return Math.max(1, Math.ceil(byteLength / chunkBytes));
}

/** Entries read together: the chunk keys of each (none for one too large to read ahead). */
type ReadGroup = { entries: CatalogEntry[]; keyCounts: number[]; keys: string[] };

/** Cuts entries, in order, into groups of at most readGroupBytesMax / readGroupKeysMax; a larger one stands alone, unread. */
function readGroups(entries: readonly CatalogEntry[], chunkBytes: number): ReadGroup[] {
  const groups: ReadGroup[] = [];
  let current: ReadGroup = { entries: [], keyCounts: [], keys: [] };
  let currentBytes = 0;
  const close = (): void => {
    if (current.entries.length > 0) groups.push(current);
    current = { entries: [], keyCounts: [], keys: [] };
    currentBytes = 0;
  };
  for (const entry of entries) {
    const keyCount = chunksAtMost(entry.byteLength, chunkBytes);
    if (entry.byteLength > readGroupBytesMax || keyCount > readGroupKeysMax) {
      close();
      groups.push({ entries: [entry], keyCounts: [0], keys: [] });
      continue;
    }
    if (currentBytes + entry.byteLength > readGroupBytesMax || current.keys.length + keyCount > readGroupKeysMax) close();
    current.entries.push(entry);
    current.keyCounts.push(keyCount);
    for (let s = 0; s < keyCount; s++) current.keys.push(chunkKey(entry.blobId, s));
    currentBytes += entry.byteLength;
  }
  close();
  return groups;
}

/** The chunks that make up exactly byteLength bytes, or undefined when they do not (a gap, other chunk sizes). */
function wholeInstance(values: ReadonlyArray<Uint8Array | undefined>, byteLength: number): Uint8Array[] | undefined {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (const value of values) {
    if (value === undefined) return undefined;
    chunks.push(value);
    total += value.length;
    if (total >= byteLength) break;
  }
  return total === byteLength ? chunks : undefined;
}

type Settled<T> = { value: T } | { error: unknown };

function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
}

function unsettle<T>(settled: Settled<T>): T {
  if ('error' in settled) throw settled.error;
  return settled.value;
}

function tickOf(blobId: string): number {
  return Number.parseInt(blobId.slice(0, blobTickDigits), 36) || 0;
}

function blobIdOfKey(key: string): string {
  return key.slice(blobPrefix.length, key.indexOf('!', blobPrefix.length));
}

function chunkKey(blobId: string, sequence: number): string {
  return `${blobPrefix}${blobId}!${sequence.toString(16).padStart(8, '0')}`;
}

function partialRecordKey(blobId: string): string {
  return `${partialRecordPrefix}${blobId}`;
}

async function freeDiskBytesOf(path: string): Promise<number> {
  const fs = await statfs(path);
  return fs.bavail * fs.bsize;
}

/**
 * A LevelDB directory's logs (all of them) and, with `largestTable`, its largest table, in bytes (0 without:
 * the blob database holds a table per few MiB of images, each a stat).
 */
async function databaseFileSizes(dir: string, largestTable: boolean): Promise<{ logBytes: number; largestTableBytes: number }> {
  let logBytes = 0;
  let largestTableBytes = 0;
  for (const name of await readdir(dir)) {
    if (name.endsWith('.log')) logBytes += (await stat(join(dir, name))).size;
    else if (largestTable && (name.endsWith('.ldb') || name.endsWith('.sst'))) largestTableBytes = Math.max(largestTableBytes, (await stat(join(dir, name))).size);
  }
  return { logBytes, largestTableBytes };
}

function commitRecordKey(blobId: string): string {
  return `${blobPrefix}${blobId}!${commitRecordSuffix}`;
}

/** The chunks of one blob (not its commit record). */
function chunkRange(blobId: string): { gte: string; lt: string } {
  return { gte: `${blobPrefix}${blobId}!`, lt: commitRecordKey(blobId) };
}

/**
 * The `buildEntry` of a copy received from another site: the catalog data is kept as sent, only the blob
 * id is local, and bytes that do not match the sent byteLength and SHA-256 throw ERR_STORE_REPLICA_MISMATCH
 * (so the commit stores nothing).
 */
export function replicaEntryBuilder(entry: CatalogEntry): (info: CommitInfo) => CatalogEntry {
  return (info) => {
    if (info.byteLength !== entry.byteLength || info.sha256 !== entry.sha256) {
      throw new StoreError(
        'ERR_STORE_REPLICA_MISMATCH',
        `replica of ${entry.sopInstanceUid} does not match its entry: ${info.byteLength} bytes sha256 ${info.sha256}, expected ${entry.byteLength} bytes sha256 ${entry.sha256}`,
      );
    }
    return { ...entry, blobId: info.blobId };
  };
}

export function createReplicaStore(init: ReplicaStoreInit): ReplicaStore {
  return new LevelReplicaStore(init);
}

class LevelReplicaStore implements ReplicaStore {
  readonly db: StoreDb;
  readonly blobDb: StoreDb;
  readonly chunkBytes: number;
  readonly maxChunkWritesInFlight: number;
  private readonly checkpointIntervalMs: number;
  /** Commits of one UID are serialised so that two concurrent stores of it keep one copy. */
  private readonly commitsInProgress = new Map<string, Promise<unknown>>();
  /** Blob ids of uploads not yet committed or aborted: a checkpoint may not pass the oldest. */
  readonly openUploads = new Set<string>();
  /**
   * Aborted uploads whose chunks were deleted without a sync: a power cut can undo that delete (their
   * chunks may be durable already), so a checkpoint may not pass them until a synced blob write follows it.
   */
  private readonly abortsNotDurable = new Set<string>();
  /** The tick of the last blob id handed out: ids only grow, whatever the clock does. */
  private lastTick = 0;
  /**
   * Instances stored when the store opened, counted in the background from a snapshot taken then (a mesh
   * peer need not wait for it: 200,000 instances take ~0.35 s), and those stored since; see countInstances.
   */
  private countAtOpen: Promise<number> = Promise.resolve(0);
  private storedSinceOpen = 0;
  private checkpointTimer: NodeJS.Timeout | undefined;
  private checkpointRunning: Promise<void> | undefined;
  private readonly blobIdleFlushAfterMs: number;
  /** Restarted at every upload's end (stored or not): fires once the ingest has paused (flushBlobMemtableWhenIdle). */
  private blobIdleTimer: NodeJS.Timeout | undefined;
  private blobIdleFlushing: Promise<void> | undefined;
  /** Drawn once per process: with the strictly increasing tick it keeps blob ids unique across restarts. */
  private readonly blobIdSuffix = randomBytes(4).toString('hex');
  private readonly suspectListeners = new Set<(sopInstanceUid: string, reason: string) => void>();
  private readonly faultListeners = new Set<(event: StoreFaultEvent) => void>();
  private readonly storedListeners = new Set<(sopInstanceUid: string) => void>();
  /**
   * The I/O error a write failed with. LevelDB refuses every later write once a log sync or a compaction
   * has failed, until the database is reopened: `reopenAfterFault` does that, and writes are refused
   * meanwhile (ERR_STORE_FAULTED), so that a full disk costs refused stores, not a peer restart.
   */
  private fault: { error: unknown; sinceMs: number } | undefined;
  /** Each recent patient's newest storedAtMs, raised by commits' catalog writes and forgotten when the catalog is reloaded. */
  readonly newestOfPatient = new NewestOfPatientCache();
  /** Counts faults: an upload begun before the last one never commits (the reopening deleted its chunks). */
  faultEpoch = 0;
  private readonly reopenAfterFaultMs: number;
  private readonly freeDiskBytesOf: (path: string) => Promise<number>;
  private reopening: Promise<void> | undefined;
  private wakeReopening: (() => void) | undefined;
  private closing = false;
  /**
   * Commits running at once share one synced blob batch and one duplicate read; each gets back the entry
   * already stored under its UID, if any. A commit's ops are its last chunk and its commit record.
   */
  readonly blobCommits = new BatchCombiner<{ sopInstanceUid: string; blobOps: Op[]; faultEpoch: number }, { existing: CatalogEntry | undefined } | { refused: unknown }>(async (all) => {
    // An upload cut off by a fault may have lost chunks to the reopening: its commit record must not follow.
    // Refused alone: the commits batched with it began after the reopening and are written (they were
    // all refused with it, told their upload began before the reopening).
    const refusals = all.map((commit) => {
      try {
        this.assertWritable(commit.faultEpoch);
        return undefined;
      } catch (error) {
        return error;
      }
    });
    const commits = all.filter((_, index) => refusals[index] === undefined);
    if (commits.length === 0) return refusals.map((refused) => ({ refused }));
    // Written to the log before this synced batch, so its sync makes those deletes durable too.
    const abortsCovered = [...this.abortsNotDurable];
    const [found, synced, present] = await Promise.allSettled([
      this.existingEntries(commits.map((commit) => commit.sopInstanceUid)),
      this.blobWritten(this.blobDb.batch(commits.flatMap((commit) => commit.blobOps), { sync: true })),
      // A data directory deleted under a running peer takes synced writes into files no open will find
      // again (LevelDB notices only when it next creates a file): refused and faulted, not acknowledged.
      // Looked at beside the batch, not after it (a synchronous stat there stood before every answer).
      this.written(this.assertDataDirectoryPresent()),
    ]);
    // All settle first: a writer that aborts deletes its blob, which must not overtake the batch writing it.
    if (synced.status === 'rejected') throw synced.reason;
    for (const blobId of abortsCovered) this.abortsNotDurable.delete(blobId);
    if (found.status === 'rejected') throw found.reason;
    if (present.status === 'rejected') throw present.reason;
    const existing = found.value[Symbol.iterator]();
    return refusals.map((refused) => {
      if (refused !== undefined) return { refused };
      const read = existing.next().value!;
      return 'error' in read ? { refused: read.error } : { existing: read.value };
    });
  }, commitsPerBatchMax);

  /**
   * The entries stored under these UIDs (a commit's duplicate check), each read on its own: a record that
   * fails its check refuses the commit of its UID only (and is reported), not every commit batched with it.
   */
  private async existingEntries(sopInstanceUids: readonly string[]): Promise<Array<Settled<CatalogEntry | undefined>>> {
    const records = await getCatalogEntryRecords(this.db, sopInstanceUids);
    return records.map((bytes, index) => {
      if (bytes === undefined) return { value: undefined };
      try {
        return { value: decodeCatalogEntry(bytes) };
      } catch (error) {
        if (isCatalogDamage(error)) this.reportCatalogDamage(`commit of ${sopInstanceUids[index]}: ${errorText(error)}`);
        return { error };
      }
    });
  }

  /** Rejects (an I/O error) when the blob database's CURRENT file cannot be reached (as existsSync: any error says so). */
  private async assertDataDirectoryPresent(): Promise<void> {
    await access(join(this.path, 'blobs', 'CURRENT')).catch(() => {
      const error = new Error(`IO error: ${this.path}: the data directory was deleted or moved while the peer ran; restart the peer`);
      throw Object.assign(error, { code: 'LEVEL_IO_ERROR' });
    });
  }
  /** Unsynced catalog writes (commits' entries, see the header comment; debt), one batch for those waiting. */
  readonly catalogWrites = new BatchCombiner<Op[], void>(async (writes) => {
    await this.catalogWritten(this.db.batch(writes.flat()));
    return writes.map(() => undefined);
  }, commitsPerBatchMax);

  readonly path: string;
  /** After a synced write: the catalog's log files it did not sync made durable too (see leveldb-logs.ts). */
  private readonly syncOlderCatalogLogs: () => Promise<void>;
  private readonly onOpenNotice: NonNullable<ReplicaStoreInit['onOpenNotice']>;

  constructor(init: ReplicaStoreInit) {
    this.path = init.path;
    this.catalogDamage = new DamageMark(join(init.path, catalogDamagedMarker));
    this.blobDamage = new DamageMark(join(init.path, blobsDamagedMarker));
    // Pixel data rarely compresses and Snappy costs CPU on every byte; the write buffer holds a burst
    // (blobWriteBufferBytesDefault).
    this.db = new Level<string, Uint8Array>(join(init.path, 'catalog'), { keyEncoding: 'utf8', valueEncoding: 'view' });
    this.syncOlderCatalogLogs = createOlderLogSync(join(init.path, 'catalog'));
    this.blobDb = new Level<string, Uint8Array>(join(init.path, 'blobs'), {
      keyEncoding: 'utf8',
      valueEncoding: 'view',
      compression: false,
      writeBufferSize: init.blobWriteBufferBytes ?? blobWriteBufferBytesDefault,
    });
    // abstract-level opens a database by itself on the next microtask, creating files where CURRENT is
    // missing and the directory where it is gone, before open() has looked at them: cancelled here (a
    // close before that microtask), so open() decides (a catalog deleted was rebuilt without a word:
    // helper 49; a lost CURRENT was caught only because open() usually read the directory first).
    void this.db.close();
    void this.blobDb.close();
    this.chunkBytes = init.chunkBytes ?? 64 * 1024;
    this.maxChunkWritesInFlight = init.maxChunkWritesInFlight ?? 16;
    this.checkpointIntervalMs = init.checkpointIntervalMs ?? 1000;
    this.blobIdleFlushAfterMs = init.blobIdleFlushAfterMs ?? 2000;
    this.reopenAfterFaultMs = init.reopenAfterFaultMs ?? 1000;
    this.freeDiskBytesOf = init.freeDiskBytesOf ?? freeDiskBytesOf;
    this.onOpenNotice = init.onOpenNotice ?? (() => {});
  }

  /**
   * Opens both databases and recovers. A catalog LevelDB finds corrupt on the way is set aside and
   * rebuilt from the commit records (once): otherwise every start failed the same way and the site stayed
   * down. Not when the blob database failed (its open, or recovery's scan of it): setting the catalog aside,
   * with the debt and known sites only it holds, cannot mend that, and the second attempt failed as the first.
   */
  async open(): Promise<void> {
    const marked = this.blobsDamageMark();
    if (marked !== undefined) {
      await this.repairBlobs(marked);
      return this.openMendingCatalog(true);
    }
    try {
      await this.openMendingCatalog(false);
    } catch (error) {
      // Blob tables LevelDB finds damaged at the open (a table cut short, a damaged block read by recovery):
      // repaired in place and reconciled, rather than a start that fails the same way every time (hunt 183).
      if (!this.blobOpenFailed || !isDatabaseDamageText(errorText(error))) throw error;
      const reason = `at open: ${errorText(error)}`;
      this.blobDamage.mark(reason);
      await this.repairBlobs(reason);
      await this.openMendingCatalog(true);
    }
  }

  /** The start of open(): the catalog set aside and rebuilt once when LevelDB finds it corrupt. */
  private async openMendingCatalog(blobsRepaired: boolean): Promise<void> {
    try {
      await this.openOnce(blobsRepaired);
    } catch (error) {
      const cause = error instanceof StoreError && error.code === 'ERR_STORE_OPEN' && !this.blobOpenFailed ? error.cause : undefined;
      // A catalog whose MANIFEST is gone, or with a table cut short, is damage too: it can be rebuilt
      // (helpers 48 and 64: the start was refused).
      const causeText = cause === undefined ? '' : errorText((cause as { cause?: unknown }).cause ?? cause);
      if (!isCatalogDamage(cause) && !isDatabaseDamageText(causeText)) throw error;
      this.catalogDamage.mark(`at open: ${errorText(error)}`);
      try {
        await this.openOnce(blobsRepaired);
      } catch (retryError) {
        throw new StoreError('ERR_STORE_OPEN', `${errorText(error)}; with the catalog set aside: ${errorText(retryError)}`, { cause: error });
      }
    }
  }

  /** The last openOnce failed opening or reading the blob database: setting the catalog aside cannot mend that. */
  private blobOpenFailed = false;

  /** A read of the blob database during an open; a failure is the blobs' (see blobOpenFailed). */
  private async readingBlobs<T>(read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (error) {
      this.blobOpenFailed = true;
      throw error;
    }
  }

  /** `blobsRepaired`: LevelDB's repair just ran on the blob database; the catalog is reconciled with what it kept. */
  private async openOnce(blobsRepaired = false): Promise<void> {
    if (existsSync(join(this.path, 'CURRENT'))) {
      throw new StoreError('ERR_STORE_LAYOUT', `${this.path} holds a store in the old single-database layout; start with an empty data directory (the mesh refills it)`);
    }
    await refuseDatabaseWithoutCurrent(join(this.path, 'blobs'));
    // Read before the blob database's open creates it: a catalog missing beside blobs that were there is news.
    const blobsExisted = existsSync(join(this.path, 'blobs', 'CURRENT'));
    this.blobOpenFailed = false;
    try {
      this.blobOpenFailed = true;
      await this.blobDb.open();
      // Before anything changes the directory (the catalog set aside, recovery, indexing): a store of a
      // newer format is left exactly as it was, for the build that wrote it.
      await this.checkStoreFormat();
      this.blobOpenFailed = false;
      await this.setAsideCatalogWithoutCurrent(blobsExisted);
      await this.db.open();
    } catch (error) {
      if (this.blobDb.status === 'open') await this.blobDb.close();
      if (error instanceof StoreError) throw error;
      if ((error as { cause?: { code?: unknown } }).cause?.code === 'LEVEL_LOCKED') {
        throw new StoreError('ERR_STORE_LOCKED', `${this.path} is in use by another process: one pacs-mesh peer per data directory`);
      }
      throw openError(this.path, error);
    }
    try {
      await this.readingBlobs(async () => {
        for await (const key of this.blobDb.keys({ gte: blobPrefix, lt: `${blobPrefix}~`, reverse: true, limit: 1 })) this.lastTick = tickOf(blobIdOfKey(key));
      });
      if (!blobsRepaired && this.lastTick === 0 && (await this.db.keys({ gte: HELD_INDEX_PREFIX, lt: `${HELD_INDEX_PREFIX}~`, limit: 1 }).all()).length > 0) {
        // The catalog lists instances whose bytes are all gone (the blob database deleted or replaced):
        // serving would answer every C-FIND and fail every retrieve.
        throw new StoreError(
          'ERR_STORE_OPEN',
          'the catalog lists instances but the blob database holds no bytes (blobs/ deleted or replaced?); move the data directory away and start on an empty one (in a mesh the other sites refill it)',
        );
      }
      // Kept parts are open uploads from here on (the checkpoint below must not pass them), not unfinished ones.
      await this.recover(await this.findKeptPartials(), blobsRepaired);
      if (blobsRepaired) {
        await this.reconcileWithRepairedBlobs();
        await rm(join(this.path, blobsDamagedMarker), { force: true });
      }
      // Without this record the catalog is new or was rebuilt by recover() just now (with every key): the
      // search-index notice below is for stores of an earlier version only.
      const heldIndexBuilt = (await this.db.get(heldIndexBuiltKey)) !== undefined;
      if (!heldIndexBuilt) {
        await buildHeldIndex(this.db);
        await this.db.put(heldIndexBuiltKey, new Uint8Array(0), { sync: true });
      }
      const indexedBefore = await this.db.get(searchIndexedBeforeKey);
      if (indexedBefore === undefined || indexedBefore.length === 0) {
        if (heldIndexBuilt && (await this.db.keys({ ...prefixRange(CATALOG_ENTRY_PREFIX), limit: 1 }).all()).length > 0) {
          this.onOpenNotice('writing the C-FIND search indexes of every catalog entry, once (a store of an earlier version): the peer serves when done, ~8 s per 100,000 instances', {});
        }
        await this.timedIndexing('every catalog entry', () => buildSearchIndexes(this.db));
      } else {
        await this.timedIndexing('entries stored since the last checkpoint', () => this.indexEntriesFrom(Buffer.from(indexedBefore).toString('utf8')));
      }
      if ((await this.db.get(legacySearchIndexedBeforeKey)) !== undefined) {
        await clearLegacySearchIndexes(this.db);
        await this.db.del(legacySearchIndexedBeforeKey, { sync: true });
      }
      await this.checkpoint();
    } catch (error) {
      await this.blobDb.close();
      await this.db.close();
      throw openError(this.path, error);
    }
    this.countFromNow();
  }

  /**
   * Refuses a store of a format newer than STORE_FORMAT (a downgrade: this build could misread it) and
   * marks one without a format (new, or written before the marker) with this build's, synced.
   */
  private async checkStoreFormat(): Promise<void> {
    const marker = await this.blobDb.get(storeFormatKey);
    const text = marker === undefined ? undefined : Buffer.from(marker).toString('utf8');
    const format = text !== undefined && /^[0-9]{1,9}$/.test(text) ? Number(text) : undefined;
    if (text !== undefined && (format === undefined || format > STORE_FORMAT)) {
      throw new StoreError(
        'ERR_STORE_FORMAT',
        `${this.path} holds a store of format ${JSON.stringify(text.slice(0, 20))}, written by a newer pacs-mesh; this build reads format ${STORE_FORMAT} and earlier: run the newer build on it (a downgrade is not supported), or start this one on an empty data directory (in a mesh the other sites refill it)`,
      );
    }
    if (format !== STORE_FORMAT) {
      await this.blobDb.put(storeFormatKey, Buffer.from(String(STORE_FORMAT), 'utf8'), { sync: true });
      await flushMemtable(this.blobDb, storeFormatKey);
    }
  }

  /**
   * Counts what the catalog holds now, in the background (see countAtOpen); commits from here on add to it.
   * Called once the catalog is (re)loaded, which is also when remembered newest-of-patient dates are forgotten.
   */
  private countFromNow(): void {
    this.newestOfPatient.forget();
    this.countAtOpen = countInstances(this.db);
    // Rejections surface to countInstances' callers; this copy only must not go unhandled.
    this.countAtOpen.catch(() => undefined);
    this.storedSinceOpen = 0;
  }

  async close(): Promise<void> {
    this.closing = true;
    this.wakeReopening?.();
    await this.reopening;
    clearTimeout(this.checkpointTimer);
    this.checkpointTimer = undefined;
    clearTimeout(this.blobIdleTimer);
    this.blobIdleTimer = undefined;
    await this.blobIdleFlushing;
    if (this.db.status === 'open') await this.checkpoint().catch(() => undefined);
    await this.countAtOpen.catch(() => undefined);
    await this.blobDb.close();
    await this.db.close();
  }

  /**
   * A catalog that lost its CURRENT file would open as a new database that replays the old log, recovery
   * checkpoint included, so recovery would skip every commit record and the archive would look empty (and
   * LevelDB would delete the old tables). Moved aside whole instead, the catalog is rebuilt from the blobs'
   * commit records; what only the catalog held (debt, known sites) the mesh's repair makes good.
   */
  private async setAsideCatalogWithoutCurrent(blobsExisted: boolean): Promise<void> {
    const catalogDir = join(this.path, 'catalog');
    const markerPath = join(this.path, catalogDamagedMarker);
    const markedDamaged = existsSync(markerPath);
    if (!existsSync(catalogDir)) {
      // Instances without a catalog (catalog/ deleted, or left out of a copy): rebuilt, and said so (helper 49).
      if (blobsExisted) this.onOpenNotice("the catalog was missing: rebuilt from the instances' commit records", { catalogDir });
    } else {
      // A file where the catalog belongs (an EEXIST from mkdir before: helper 50) is set aside like damage.
      const why = !statSync(catalogDir).isDirectory()
        ? 'was a file, not a directory'
        : markedDamaged
          ? 'was found damaged'
          : (await databaseFilesWithoutCurrent(catalogDir)).length > 0
            ? 'had lost its CURRENT file'
            : undefined;
      if (why !== undefined) {
        const setAsideDir = `${catalogDir}.damaged-${fileTimeStamp(new Date())}`;
        await rename(catalogDir, setAsideDir);
        await this.deleteOldCatalogsSetAside();
        // A report about the catalog set aside (a write refused during this open) must not silence those about the new one.
        this.catalogDamage.reported = false;
        const reason = markedDamaged ? readFileSync(markerPath, 'utf8').trim().slice(0, 300) : undefined;
        this.onOpenNotice(`the catalog ${why}: set aside, rebuilt from the instances' commit records`, { setAsideDir, ...(reason && { reason }) });
      }
    }
    await rm(markerPath, { force: true });
  }

  /** Keeps the newest catalogsSetAsideKept catalogs set aside: each is a copy of the catalog, and a failing disk sets one aside at every start. */
  private async deleteOldCatalogsSetAside(): Promise<void> {
    const setAside = (await readdir(this.path)).filter((name) => name.startsWith('catalog.damaged-')).sort();
    const deleted = setAside.slice(0, Math.max(0, setAside.length - catalogsSetAsideKept));
    for (const name of deleted) await rm(join(this.path, name), { recursive: true, force: true });
    if (deleted.length > 0) this.onOpenNotice(`deleted the oldest catalogs set aside: the newest ${catalogsSetAsideKept} are kept`, { deleted });
  }

  /**
   * For every blob newer than the last checkpoint: a commit record whose catalog entry is missing gets it
   * back; chunks without a commit record belonged to an upload that never finished and are deleted.
   */
  private async recover(keptPartials: ReadonlySet<string> = new Set(), everyBlob = false): Promise<void> {
    // After a repair of the blob database, every blob: what it salvaged may be older than the checkpoint.
    const from = everyBlob ? undefined : await this.db.get(recoveryFromKey);
    const fromBlobId = from === undefined ? '' : Buffer.from(from).toString('utf8');
    const committed: string[] = [];
    const unfinished: string[] = [];
    /** Committed, but a chunk is missing: written before a LevelDB log switch that a power cut undid (see leveldb-logs.ts). */
    const chunksLost: string[] = [];
    let blobId: string | undefined;
    let hasCommitRecord = false;
    let nextChunk = 0;
    let chunksWhole = true;
    const endBlob = () => {
      if (blobId !== undefined) (!hasCommitRecord ? unfinished : chunksWhole ? committed : chunksLost).push(blobId);
    };
    await this.readingBlobs(async () => {
      for await (const key of this.blobDb.keys({ gte: `${blobPrefix}${fromBlobId}`, lt: `${blobPrefix}~` })) {
        const id = blobIdOfKey(key);
        if (id !== blobId) {
          endBlob();
          blobId = id;
          hasCommitRecord = false;
          nextChunk = 0;
          chunksWhole = true;
        }
        if (key.endsWith(`!${commitRecordSuffix}`)) {
          hasCommitRecord = true;
          continue;
        }
        // Chunks are numbered from 0 without a gap, the last one in the commit's own batch.
        const chunk = Number.parseInt(key.slice(key.lastIndexOf('!') + 1), 16);
        if (chunk !== nextChunk) chunksWhole = false;
        nextChunk = chunk + 1;
      }
    });
    endBlob();
    // After a repair a blob without a commit record may be a listed instance whose record the repair lost: kept for
    // reconcileWithRepairedBlobs, which writes the record again when its bytes are whole and drops it when not.
    const listedBlobIds = everyBlob && unfinished.length > 0 ? await this.listedBlobIds() : new Set<string>();
    for (const id of unfinished) if (!keptPartials.has(id) && !listedBlobIds.has(id)) await this.deleteBlob(id, true);
    for (const id of chunksLost) {
      const listed = await this.listedEntryOf(id);
      // Never acknowledged with the LevelDB npm install builds (a full log is synced before the next): deleted,
      // the sender retries. One the catalog lists was acknowledged: kept for the scrub, which replaces it from
      // a peer. (With the prebuilt addon an acknowledged one can lose its chunks and its unsynced catalog entry
      // to a power cut: its bytes are gone either way, and the other sites hold copies.)
      if (listed === undefined) await this.deleteBlob(id, true);
      this.onOpenNotice(
        listed === undefined ? 'a commit found without all of its chunks (a power cut): deleted, the sender is to send it again' : 'a listed instance is missing chunks: the scrub replaces it from another site',
        { blobId: id, ...(listed ? { sopInstanceUid: listed.sopInstanceUid } : {}) },
      );
    }
    for (const id of committed) {
      const bytes = await this.blobDb.get(commitRecordKey(id));
      if (bytes === undefined) continue;
      let entry: CatalogEntry;
      try {
        entry = decodeCatalogEntry(bytes);
      } catch (error) {
        // Its instance cannot be listed; the other sites' repair brings a good copy back.
        this.onOpenNotice('a commit record is damaged: its instance is not listed', { blobId: id, error: errorText(error) });
        continue;
      }
      const current = await this.getEntry(entry.sopInstanceUid);
      if (current === undefined) await this.db.batch(catalogWriteOpsEncoded(entry, bytes), { sync: true });
      // Committed, lost its catalog entry in a power cut, and stored again since: keep one copy.
      else if (current.blobId !== entry.blobId) await this.deleteBlob(entry.blobId, true);
    }
  }

  /** Kept parts found by the last open, not yet asked for (restoredPartials), each dropped at its time. */
  private readonly restored = new Map<string, { partial: RestoredPartial; timer: NodeJS.Timeout }>();

  /**
   * The kept parts of cut copies whose marker is valid (see PartialCopyRecord): their blob ids, now open
   * uploads, offered by restoredPartials. A marker of a committed blob is deleted (the part became the
   * instance); one damaged, out of time, or whose first chunks are not all there is deleted with its
   * chunks; chunks after those it names (written by a resume the restart cut) are deleted.
   */
  private async findKeptPartials(): Promise<Set<string>> {
    this.forgetRestored();
    const kept = new Set<string>();
    const nowMs = Date.now();
    for await (const [key, value] of this.db.iterator({ gte: partialRecordPrefix, lt: `${partialRecordPrefix}~` })) {
      const blobId = key.slice(partialRecordPrefix.length);
      if ((await this.blobDb.get(commitRecordKey(blobId))) !== undefined) {
        await this.db.del(key, { sync: true });
        continue;
      }
      const record = decodePartialRecord(value);
      let chunks = 0;
      const surplus: string[] = [];
      if (record !== undefined) {
        for await (const chunk of this.blobDb.keys(chunkRange(blobId))) {
          const sequence = Number.parseInt(chunk.slice(chunk.lastIndexOf('!') + 1), 16);
          if (sequence === chunks && chunks < record.chunks) chunks++;
          else if (sequence >= record.chunks) surplus.push(chunk);
        }
      }
      if (record === undefined || chunks !== record.chunks || record.keptUntilDateMs <= nowMs || record.keptUntilDateMs > nowMs + partialKeptHorizonMs) {
        await this.deleteKeptPart(blobId, true);
        continue;
      }
      if (surplus.length > 0) await this.blobDb.batch(surplus.map((chunk) => ({ type: 'del' as const, key: chunk })), { sync: true });
      kept.add(blobId);
      this.openUploads.add(blobId);
      const partial: RestoredPartial = {
        sopInstanceUid: record.sopInstanceUid,
        fromPeerId: record.fromPeerId,
        bytes: record.bytes,
        keptUntilDateMs: record.keptUntilDateMs,
        resume: () => this.resumePartial(blobId, record),
        drop: async () => {
          await this.deleteKeptPart(blobId, false).catch(() => undefined);
          this.endUpload(blobId, 'abortedUnsynced');
        },
      };
      const timer = setTimeout(() => {
        this.restored.delete(blobId);
        void partial.drop();
      }, record.keptUntilDateMs - nowMs);
      timer.unref();
      this.restored.set(blobId, { partial, timer });
    }
    return kept;
  }

  /** A kept part's chunks read back (their SHA-256 so far, their length checked) into an open writer. */
  private async resumePartial(blobId: string, record: PartialCopyRecord): Promise<InstanceWriter> {
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of this.blobDb.values({ gte: chunkKey(blobId, 0), lt: chunkKey(blobId, record.chunks) })) {
      hash.update(chunk);
      bytes += chunk.byteLength;
    }
    if (bytes !== record.bytes) throw new StoreError('ERR_STORE_CORRUPT', `the kept part of ${record.sopInstanceUid} holds ${bytes} bytes, its marker says ${record.bytes}`);
    return new LevelInstanceWriter(this, { blobId, sequence: record.chunks, bytesWritten: bytes, hash });
  }

  restoredPartials(): RestoredPartial[] {
    const partials = [...this.restored.values()].map(({ partial }) => partial);
    this.forgetRestored();
    return partials;
  }

  private forgetRestored(): void {
    for (const { timer } of this.restored.values()) clearTimeout(timer);
    this.restored.clear();
  }

  /** The blob ids of every catalog entry (a read of the whole catalog: only after a repair of the blob database). */
  private async listedBlobIds(): Promise<Set<string>> {
    const ids = new Set<string>();
    for await (const bytes of this.db.values(prefixRange(CATALOG_ENTRY_PREFIX))) {
      try {
        ids.add(decodeCatalogEntry(bytes).blobId);
      } catch {
        // the catalog's own damage: its reads report it (reportCatalogDamage)
      }
    }
    return ids;
  }

  /** The catalog entry that points at this blob, if its commit record can be read and the catalog lists it. */
  private async listedEntryOf(blobId: string): Promise<CatalogEntry | undefined> {
    const bytes = await this.blobDb.get(commitRecordKey(blobId));
    if (bytes === undefined) return undefined;
    try {
      const current = await this.getEntry(decodeCatalogEntry(bytes).sopInstanceUid);
      return current?.blobId === blobId ? current : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Runs an indexing step of the open; one that took a while (a first open after an upgrade reads every
   * entry: ~8 s per 100,000 instances) is logged, as the peer is not ready meanwhile.
   */
  private async timedIndexing(what: string, index: () => Promise<number>): Promise<void> {
    const startedAtMs = performance.now();
    const indexed = await index();
    const elapsedMs = Math.round(performance.now() - startedAtMs);
    if (elapsedMs >= 1000) this.onOpenNotice(`C-FIND search indexes written for ${what}`, { entries: indexed, elapsedMs });
  }

  /**
   * Writes the search-index keys of the entries stored in blobs from `fromBlobId` on (see
   * searchIndexedBeforeKey), a batch per blobsPerIndexBatch: after a rollback that range holds whatever the
   * earlier build stored.
   */
  private async indexEntriesFrom(fromBlobId: string): Promise<number> {
    let indexed = 0;
    let uids: string[] = [];
    const flush = async (): Promise<void> => {
      // The catalog's entries, not the commit records: an entry may have moved to a newer blob since.
      const entries = (await this.getEntries(uids)).filter((entry) => entry !== undefined);
      if (entries.length > 0) await this.db.batch(entries.flatMap(searchIndexOps));
      indexed += entries.length;
      uids = [];
    };
    for await (const key of this.blobDb.keys({ gte: `${blobPrefix}${fromBlobId}`, lt: `${blobPrefix}~` })) {
      if (!key.endsWith(`!${commitRecordSuffix}`)) continue;
      try {
        uids.push(decodeCatalogEntry((await this.blobDb.get(key))!).sopInstanceUid);
      } catch {
        continue; // recover() has named it; its instance is not listed
      }
      if (uids.length >= blobsPerIndexBatch) await flush();
    }
    await flush();
    return indexed;
  }

  /** Deletes a blob's chunks and commit record. */
  async deleteBlob(blobId: string, sync: boolean): Promise<void> {
    const ops: Op[] = [];
    for await (const key of this.blobDb.keys(chunkRange(blobId))) ops.push({ type: 'del', key });
    ops.push({ type: 'del', key: commitRecordKey(blobId) });
    await this.blobWritten(this.blobDb.batch(ops, { sync }));
  }

  /** Deletes a kept part: its chunks, then its marker (a marker left without its chunks is deleted at open). */
  async deleteKeptPart(blobId: string, sync: boolean): Promise<void> {
    await this.deleteBlob(blobId, sync);
    await this.catalogWritten(this.db.del(partialRecordKey(blobId), { sync }));
  }

  get writeFault(): string | undefined {
    return this.fault === undefined ? undefined : errorText(this.fault.error);
  }

  onInstanceStored(listener: (sopInstanceUid: string) => void): () => void {
    this.storedListeners.add(listener);
    return () => this.storedListeners.delete(listener);
  }

  /** A writer's commit stored a new instance (see onInstanceStored). */
  instanceStored(sopInstanceUid: string): void {
    callEach(this.storedListeners, sopInstanceUid);
  }

  onWriteFault(listener: (event: StoreFaultEvent) => void): () => void {
    this.faultListeners.add(listener);
    return () => this.faultListeners.delete(listener);
  }

  /** Throws while writes are refused, or for an upload begun before the last fault (`epoch`). */
  assertWritable(epoch: number): void {
    if (this.blobWritesRefused) throw new StoreError('ERR_STORE_DAMAGED', 'instance store damaged: restart the peer');
    if (this.fault !== undefined) {
      throw new StoreError('ERR_STORE_FAULTED', `"${storageErrorText(this.fault.error)}": writes refused until the store reopens`);
    }
    if (epoch !== this.faultEpoch) throw new StoreError('ERR_STORE_FAULTED', 'this upload began before the store reopened after an I/O error');
  }

  /** Every database write goes through here: an I/O error faults the store (see `fault`). */
  async written<T>(write: Promise<T>): Promise<T> {
    try {
      return await write;
    } catch (error) {
      if (isIoError(error) && this.fault === undefined && !this.closing) {
        this.fault = { error, sinceMs: performance.now() };
        this.faultEpoch++;
        this.emitFault({ type: 'faulted', error: errorText(error) });
        this.reopening = this.reopenAfterFault();
      }
      throw error;
    }
  }

  /**
   * A write to the catalog database, through `written`. A Corruption LevelDB answers it with (a compaction
   * met a damaged table: every later write fails the same way until a reopen, and a reopened catalog's next
   * compaction meets the table again) marks the catalog, which the next start rebuilds.
   */
  async catalogWritten<T>(write: Promise<T>): Promise<T> {
    try {
      return await this.written(write);
    } catch (error) {
      if (isCatalogDamage(error)) this.reportCatalogDamage(`catalog write: ${errorText(error)}`);
      throw error;
    }
  }

  /**
   * A write to the blob database, through `written`. A Corruption LevelDB answers it with (a compaction met
   * a damaged table: every later write fails the same way, also after a reopen, whose compaction meets the
   * table again) marks the blob database for a repair at the next start, and refuses the write with a
   * short reason the C-STORE's Error Comment (64 characters) can carry.
   */
  async blobWritten<T>(write: Promise<T>): Promise<T> {
    try {
      return await this.written(write);
    } catch (error) {
      if (!isLevelCorruption(error)) throw error;
      this.blobWritesRefused = true;
      this.reportBlobDamage(`instance write: ${errorText(error)}`);
      throw new StoreError('ERR_STORE_DAMAGED', 'instance store damaged: restart the peer', { cause: error });
    }
  }

  private emitFault(event: StoreFaultEvent): void {
    for (const listener of this.faultListeners) listener(event);
  }

  /**
   * Reopens both databases, at growing intervals until it works (space was freed), then recovers as
   * `open` does: the chunks of uploads the fault cut off are deleted, and a commit whose catalog write
   * failed after its synced commit record gets its catalog entry.
   */
  private async reopenAfterFault(): Promise<void> {
    for (let delayMs = this.reopenAfterFaultMs; ; delayMs = Math.min(delayMs * 2, reopenAfterFaultMaxMs)) {
      // A close that came during an attempt must not wait out the next delay.
      if (this.closing) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delayMs);
        timer.unref();
        this.wakeReopening = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeReopening = undefined;
      if (this.closing) return;
      try {
        // Closed, the databases cannot be read either: stay open (reads work) until a reopening can succeed.
        const missingBytes = await this.spaceMissingToReopen();
        if (missingBytes > 0) throw new StoreError('ERR_STORE_FAULTED', `${Math.ceil(missingBytes / 1024 ** 2)} MiB more free space needed to reopen`);
        // Reads refused while the databases are closed wait for them to open again (readAcrossReopen).
        await this.blobDb.close();
        await this.db.close();
        await this.db.open();
        await this.blobDb.open();
        await this.recover();
        await this.checkpoint();
        // Recovery may have completed commits that were answered as failed: count afresh.
        this.countFromNow();
        const faultedForMs = Math.round(performance.now() - this.fault!.sinceMs);
        this.fault = undefined;
        this.reopening = undefined;
        this.emitFault({ type: 'reopened', faultedForMs });
        return;
      } catch (error) {
        this.emitFault({ type: 'reopenFailed', error: openError(this.path, error).message, nextTryInMs: Math.min(delayMs * 2, reopenAfterFaultMaxMs) });
      }
    }
  }

  /**
   * Opening turns each database's log (up to its write buffer) into a table before the old log goes, so it
   * needs about the logs' size free, plus room for new files: how many bytes short of that the disk is.
   */
  private async spaceMissingToReopen(): Promise<number> {
    const [catalog, blobs] = [await databaseFileSizes(join(this.path, 'catalog'), false), await databaseFileSizes(join(this.path, 'blobs'), false)];
    return Math.max(0, catalog.logBytes + blobs.logBytes + reopenSpareBytes - (await this.freeDiskBytesOf(this.path)));
  }

  /**
   * LevelDB's RepairDB turns the logs into tables and copies what it can read of a damaged table into a new one
   * before the old goes: about the logs and the largest table free, plus room for new files. Run short, it can
   * stop half way and leave tables archived in `lost/` that it never copied.
   */
  private async spaceMissingToRepairBlobs(dir: string): Promise<number> {
    const blobs = await databaseFileSizes(dir, true);
    return Math.max(0, blobs.logBytes + blobs.largestTableBytes + reopenSpareBytes - (await this.freeDiskBytesOf(this.path)));
  }

  beginWrite(): InstanceWriter {
    return new LevelInstanceWriter(this);
  }

  newUpload(): string {
    this.lastTick = Math.max(this.lastTick + 1, Date.now());
    const blobId = `${tickPrefix(this.lastTick)}${this.blobIdSuffix}`;
    this.openUploads.add(blobId);
    return blobId;
  }

  /**
   * An upload ends: 'stored' is a new instance, 'replaced' a repaired copy (a duplicate's upload is aborted);
   * 'abortedUnsynced' deleted chunks without a sync, 'aborted' wrote none (or could not delete them).
   */
  endUpload(blobId: string, outcome: 'stored' | 'replaced' | 'aborted' | 'abortedUnsynced'): void {
    this.openUploads.delete(blobId);
    // Moved over at once: no checkpoint can see the upload in neither set.
    if (outcome === 'abortedUnsynced') this.abortsNotDurable.add(blobId);
    // A duplicate's chunks filled the memtable too (and their deletes): a resent study pauses like any burst.
    this.restartBlobIdleTimer();
    if (outcome === 'aborted' || outcome === 'abortedUnsynced') return;
    if (outcome === 'stored') this.storedSinceOpen++;
    this.checkpointTimer ??= setTimeout(() => {
      this.checkpointTimer = undefined;
      void this.checkpoint().catch(() => undefined);
    }, this.checkpointIntervalMs);
    this.checkpointTimer.unref();
  }

  private restartBlobIdleTimer(): void {
    if (this.blobIdleTimer !== undefined) this.blobIdleTimer.refresh();
    else {
      this.blobIdleTimer = setTimeout(() => {
        this.blobIdleTimer = undefined;
        this.blobIdleFlushing ??= this.flushBlobMemtableWhenIdle().finally(() => {
          this.blobIdleFlushing = undefined;
        });
      }, this.blobIdleFlushAfterMs);
      this.blobIdleTimer.unref();
    }
  }

  /**
   * The blob memtable written to its table once the ingest has paused, if it holds more than
   * blobIdleFlushMinBytes: the burst's second write happens while nobody waits, the memory goes back, and a
   * restart has a short log to replay. Never throws: a write fault here shows at the next write as any other.
   */
  private async flushBlobMemtableWhenIdle(): Promise<void> {
    if (this.closing || this.reopening !== undefined || this.blobDb.status !== 'open') return;
    try {
      const usage = Number(leveldbProperty(this.blobDb, 'leveldb.approximate-memory-usage'));
      if (!(usage > blobIdleFlushMinBytes)) return;
      await flushMemtable(this.blobDb, storeFormatKey);
    } catch {
      // See above: nothing waits on this flush.
    }
  }

  /**
   * Syncs the catalog and records from which blob recovery must look. Every commit that finished before
   * this call has its catalog write ahead of this synced write in the log; every later one belongs to an
   * upload open now (its id is >= the oldest open) or created later (its id is > every id so far).
   */
  private async checkpoint(): Promise<void> {
    if (this.checkpointRunning) return this.checkpointRunning;
    let from = tickPrefix(this.lastTick + 1);
    for (const blobId of this.openUploads) if (blobId < from) from = blobId;
    for (const blobId of this.abortsNotDurable) if (blobId < from) from = blobId;
    const checkpoint = Buffer.from(from, 'utf8');
    const ops = [recoveryFromKey, searchIndexedBeforeKey].map((key) => ({ type: 'put' as const, key, value: checkpoint }));
    this.checkpointRunning = (async () => {
      // The catalog entries before it durable first, in whichever log they went to: a synced write, then the
      // logs LevelDB closed unsynced before it (see leveldb-logs.ts). Only then may recovery start after them.
      await this.catalogWritten(this.db.put(logBarrierKey, new Uint8Array(0), { sync: true }));
      await this.catalogWritten(this.syncOlderCatalogLogs());
      await this.catalogWritten(this.db.batch(ops, { sync: true }));
    })().finally(() => {
      this.checkpointRunning = undefined;
    });
    return this.checkpointRunning;
  }

  async getEntry(sopInstanceUid: string): Promise<CatalogEntry | undefined> {
    return getCatalogEntry(this.db, sopInstanceUid);
  }

  newestStoredAtOfPatient(patientId: string): Promise<number | undefined> {
    return this.newestOfPatient.newestStoredAtMs(patientId, () => newestStoredAtOfPatient(this.db, patientId));
  }

  getEntries(sopInstanceUids: readonly string[]): Promise<Array<CatalogEntry | undefined>> {
    return getCatalogEntries(this.db, sopInstanceUids);
  }

  readInstance(entry: CatalogEntry, options: { chunksPerRead?: number } = {}): AsyncGenerator<Uint8Array> {
    return this.readChunks(entry, true, Math.max(1, Math.min(options.chunksPerRead ?? chunksPerReadMax, chunksPerReadMax)));
  }

  reportSuspectCopy(sopInstanceUid: string, reason: string): void {
    callEach(this.suspectListeners, sopInstanceUid, reason);
  }

  onSuspectCopy(listener: (sopInstanceUid: string, reason: string) => void): () => void {
    this.suspectListeners.add(listener);
    return () => this.suspectListeners.delete(listener);
  }

  /** The catalog's damage: the mark makes the next open set it aside and rebuild it from the commit records. */
  private readonly catalogDamage: DamageMark;
  /** The blob database's damage: the mark makes the next open repair it (repairBlobs). */
  private readonly blobDamage: DamageMark;
  /** LevelDB refused a blob write as corrupt: it refuses every later one too, so uploads are refused from their start. */
  private blobWritesRefused = false;
  blobRepair: BlobRepairReport | undefined;

  reportCatalogDamage(reason: string): void {
    this.catalogDamage.report(reason);
  }

  onCatalogDamage(listener: (reason: string) => void): () => void {
    return this.catalogDamage.listen(listener);
  }

  reportBlobDamage(reason: string): void {
    this.blobDamage.report(reason);
  }

  onBlobDamage(listener: (reason: string) => void): () => void {
    return this.blobDamage.listen(listener);
  }

  /** The reason the blob database was marked damaged, or undefined when it is not. */
  private blobsDamageMark(): string | undefined {
    try {
      return readFileSync(join(this.path, blobsDamagedMarker), 'utf8').trim().slice(0, 300) || 'marked damaged';
    } catch {
      return undefined;
    }
  }

  /**
   * LevelDB's RepairDB on the blob database: it keeps every record it can read from the logs and tables
   * (a table it cannot use goes to `blobs/lost/`) and writes a new MANIFEST. The mark stays until the
   * catalog has been reconciled with what it kept (reconcileWithRepairedBlobs), so a crash in between
   * repairs again at the next start.
   */
  private async repairBlobs(reason: string): Promise<void> {
    const dir = join(this.path, 'blobs');
    this.onOpenNotice("the instance database (blobs/) is damaged: LevelDB repairs it now, then every instance the catalog lists is read back and checked (the start takes about as long as reading the archive once)", { reason });
    if (this.blobDb.status === 'open') await this.blobDb.close();
    // Refused before it starts, the mark stays and the next start tries again once there is room.
    const missingBytes = await this.spaceMissingToRepairBlobs(dir);
    if (missingBytes > 0) {
      throw new StoreError('ERR_STORE_OPEN', `cannot repair the instance database in ${dir}: ${Math.ceil(missingBytes / 1024 ** 2)} MiB more free space needed (its logs and its largest table, plus 16 MiB); free some space on that disk and start the peer again`);
    }
    try {
      await (Level as unknown as { repair(location: string): Promise<void> }).repair(dir);
    } catch (error) {
      throw new StoreError('ERR_STORE_OPEN', `cannot repair the instance database in ${dir}: ${errorText(error)}; move the data directory away and start on an empty one (in a mesh the other sites refill it)`, { cause: error });
    }
  }

  /**
   * After repairBlobs: every catalog entry is read back whole and checked against its SHA-256. One whose
   * bytes the repair did not keep whole leaves the catalog (with its debt: this site no longer holds it),
   * so that in a mesh repair pulls it again from a site that holds it, and is listed in
   * `lost-instances-<time>.tsv` beside the databases for the operator (a single site has no other copy). A
   * whole one whose commit record was lost gets it back, so that a later rebuild of the catalog keeps it.
   */
  private async reconcileWithRepairedBlobs(): Promise<void> {
    const startedMs = Date.now();
    const lostListFile = join(this.path, `lost-instances-${fileTimeStamp(new Date(startedMs))}.tsv`);
    let list: FileHandle | undefined;
    let instancesChecked = 0;
    let instancesLost = 0;
    let commitRecordsRestored = 0;
    // The reads below expect damage: what they meet is reported in the list, not marked for another repair.
    this.blobDamage.reported = true;
    try {
      for await (const [, bytes] of this.db.iterator(prefixRange(CATALOG_ENTRY_PREFIX))) {
        let entry: CatalogEntry;
        try {
          entry = decodeCatalogEntry(bytes);
        } catch {
          continue; // the catalog's own damage: its reads report it (reportCatalogDamage)
        }
        instancesChecked++;
        const verdict = await this.verifyInstance(entry).catch((error: unknown) => ({ ok: false as const, reason: errorText(error) }));
        if (verdict.ok) {
          if ((await this.blobDb.get(commitRecordKey(entry.blobId))) === undefined) {
            await this.blobDb.put(commitRecordKey(entry.blobId), bytes, { sync: true });
            commitRecordsRestored++;
          }
          continue;
        }
        if (list === undefined) {
          list = await open(lostListFile, 'wx');
          await list.write('sopInstanceUid\tstudyInstanceUid\tseriesInstanceUid\tpatientId\tstoredAt\treason\n');
        }
        await list.write(`${[entry.sopInstanceUid, entry.studyInstanceUid, entry.seriesInstanceUid, entry.patientId, new Date(entry.storedAtMs).toISOString(), verdict.reason].map(tsvField).join('\t')}\n`);
        instancesLost++;
        const debtKeys = await this.db.keys(prefixRange(`${debtPrefix}${entry.sopInstanceUid}!`)).all();
        await this.db.batch([...catalogDeleteOps(entry), ...debtKeys.map((key) => ({ type: 'del' as const, key }))], { sync: true });
        // What is left of its bytes: a chunk list the damage still breaks stays for LevelDB's compactions to drop.
        await this.deleteBlob(entry.blobId, false).catch(() => undefined);
      }
      await list?.sync();
    } finally {
      this.blobDamage.reported = false;
      await list?.close();
    }
    this.blobRepair = { atMs: startedMs, instancesChecked, instancesLost, lostListFile: instancesLost > 0 ? lostListFile : undefined, commitRecordsRestored };
    this.onOpenNotice(
      instancesLost === 0
        ? `the instance database was repaired: all ${instancesChecked} instances are whole`
        : `the instance database was repaired: ${instancesLost} of ${instancesChecked} instances were lost and left the catalog (listed in ${lostListFile}); in a mesh repair brings back those another site holds, the others must be sent again from their source`,
      { ...this.blobRepair },
    );
  }

  /** readInstance; `report` false (verifying): a damaged copy is not reported suspect, and the cache is left alone. */
  /** A read of the blob database: a Corruption LevelDB answers with marks it for a repair (reportBlobDamage). */
  private async blobRead<T>(read: Promise<T>): Promise<T> {
    try {
      return await read;
    } catch (error) {
      if (isLevelCorruption(error)) this.reportBlobDamage(`instance read: ${errorText(error)}`);
      throw error;
    }
  }

  /** readChunksOf; a Corruption LevelDB answers with marks the blob database for a repair (reportBlobDamage). */
  private async *readChunks(entry: CatalogEntry, report: boolean, chunksPerRead = chunksPerReadMax): AsyncGenerator<Uint8Array> {
    try {
      yield* this.readChunksOf(entry, report, chunksPerRead);
    } catch (error) {
      if (isLevelCorruption(error)) this.reportBlobDamage(`read of ${entry.sopInstanceUid}: ${errorText(error)}`);
      throw error;
    }
  }

  private async *readChunksOf(entry: CatalogEntry, report: boolean, chunksPerRead: number): AsyncGenerator<Uint8Array> {
    const damaged = (message: string): StoreError => {
      if (report) this.reportSuspectCopy(entry.sopInstanceUid, message);
      return new StoreError('ERR_STORE_CORRUPT', message);
    };
    let expectedSequence = 0;
    let total = 0;
    // Never a byte beyond byteLength, checked before a chunk is yielded: callers send what they get on
    // protocols that announce the length first.
    const surplus = (): StoreError => damaged(`instance ${entry.sopInstanceUid} has more than the ${entry.byteLength} bytes the catalog says`);
    // Chunks are read by key, a few per call: one native call for a small instance where an iterator
    // costs four (open, two reads, close), each a thread hand-off. What these keys leave (a blob written
    // with smaller chunks, or a gap) is read with an iterator, which also names a missing chunk.
    const keysAtMost = chunksAtMost(entry.byteLength, this.chunkBytes);
    direct: while (expectedSequence < keysAtMost && total < entry.byteLength) {
      const keys: string[] = [];
      for (let s = expectedSequence; s < Math.min(keysAtMost, expectedSequence + chunksPerRead); s++) keys.push(chunkKey(entry.blobId, s));
      // A scrub's reads (report false) would only push the copies being served out of LevelDB's cache.
      for (const value of await readAcrossReopen(this.blobDb, () => this.blobDb.getMany(keys, { fillCache: report }))) {
        if (value === undefined) break direct;
        if (total + value.length > entry.byteLength) throw surplus();
        expectedSequence++;
        total += value.length;
        yield value;
      }
    }
    if (total === entry.byteLength) return;
    for await (const [key, value] of this.blobDb.iterator({ gte: chunkKey(entry.blobId, expectedSequence), lt: commitRecordKey(entry.blobId) })) {
      const sequence = Number.parseInt(key.slice(key.lastIndexOf('!') + 1), 16);
      if (sequence !== expectedSequence) {
        throw damaged(`instance ${entry.sopInstanceUid} misses chunk ${expectedSequence}`);
      }
      if (total + value.length > entry.byteLength) throw surplus();
      expectedSequence++;
      total += value.length;
      yield value;
    }
    if (total !== entry.byteLength) {
      throw damaged(`instance ${entry.sopInstanceUid} has ${total} bytes, catalog says ${entry.byteLength}`);
    }
  }

  async *readInstances(entries: readonly CatalogEntry[]): AsyncGenerator<{ entry: CatalogEntry; chunks: AsyncIterable<Uint8Array> | readonly Uint8Array[] }> {
    const groups = readGroups(entries, this.chunkBytes);
    // Settled promises only: a read ahead that fails while the caller stops early must not go unhandled.
    const readAhead = (group: ReadGroup | undefined) =>
      group === undefined || group.keys.length === 0 ? undefined : settle(this.blobRead(readAcrossReopen(this.blobDb, () => this.blobDb.getMany(group.keys))));
    let next = readAhead(groups[0]);
    for (let g = 0; g < groups.length; g++) {
      const group = groups[g]!;
      const values = next === undefined ? undefined : unsettle(await next);
      next = readAhead(groups[g + 1]);
      let offset = 0;
      for (const [index, entry] of group.entries.entries()) {
        const keyCount = group.keyCounts[index]!;
        const whole = values === undefined ? undefined : wholeInstance(values.slice(offset, offset + keyCount), entry.byteLength);
        offset += keyCount;
        // Not read ahead (too large), or written in other chunk sizes: streamed, with readInstance's checks.
        yield { entry, chunks: whole ?? this.readInstance(entry) };
      }
    }
  }

  async countInstances(): Promise<number> {
    try {
      return (await this.countAtOpen) + this.storedSinceOpen;
    } catch (error) {
      // The held index's table is damaged (on a single site nothing else reads it whole): the next start rebuilds the catalog.
      if (isCatalogDamage(error)) this.reportCatalogDamage(`count of the instances held: ${errorText(error)}`);
      throw error;
    }
  }

  async putReplica(entry: CatalogEntry, bytes: AsyncIterable<Uint8Array>): Promise<'stored' | 'duplicate'> {
    if (await this.getEntry(entry.sopInstanceUid)) return 'duplicate';
    return this.writeCopyOf(entry, bytes, async (writer) => (await writer.commit(entry.sopInstanceUid, replicaEntryBuilder(entry))).outcome);
  }

  /**
   * Writes bytes that must be `entry`'s (a copy from elsewhere) into a new writer, then `finish`es it; more
   * bytes than the entry's throw ERR_STORE_REPLICA_MISMATCH at once. The writer is aborted on any failure.
   */
  private async writeCopyOf<T>(
    entry: CatalogEntry,
    bytes: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    finish: (writer: LevelInstanceWriter) => Promise<T>,
  ): Promise<T> {
    const writer = new LevelInstanceWriter(this);
    try {
      for await (const piece of bytes) {
        if (writer.bytesWritten + piece.byteLength > entry.byteLength) {
          throw new StoreError('ERR_STORE_REPLICA_MISMATCH', `copy of ${entry.sopInstanceUid} has more than the ${entry.byteLength} bytes of its entry`);
        }
        await writer.write(piece);
      }
      return await finish(writer);
    } catch (error) {
      await writer.abort();
      throw error;
    }
  }

  async verifyInstance(entry: CatalogEntry): Promise<{ ok: true } | { ok: false; reason: string }> {
    const hash = createHash('sha256');
    let length = 0;
    try {
      for await (const chunk of this.readChunks(entry, false)) {
        hash.update(chunk);
        length += chunk.byteLength;
      }
    } catch (error) {
      if (error instanceof StoreError && error.code === 'ERR_STORE_CORRUPT') return { ok: false, reason: error.message };
      throw error;
    }
    const sha256 = hash.digest('hex');
    if (sha256 !== entry.sha256) return { ok: false, reason: `the ${length} bytes of ${entry.sopInstanceUid} have SHA-256 ${sha256}, the catalog says ${entry.sha256}` };
    return { ok: true };
  }

  async repairCopy(corrupt: CatalogEntry, bytes: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<'repaired' | 'changed'> {
    return this.writeCopyOf(corrupt, bytes, async (writer) => {
      const outcome = await writer.replace(corrupt);
      if (outcome === 'changed') await writer.abort();
      return outcome;
    });
  }

  async updateDebt(puts: readonly DebtEntry[], deletes: readonly { sopInstanceUid: string; siteName: string }[]): Promise<void> {
    if (puts.length === 0 && deletes.length === 0) return;
    const ops: Op[] = [];
    for (const d of puts) {
      const entry: DebtEntry = { sopInstanceUid: d.sopInstanceUid, siteName: d.siteName, sinceMs: d.sinceMs };
      ops.push({ type: 'put', key: debtKeyOf(d.sopInstanceUid, d.siteName), value: new Uint8Array(pack(entry)) });
    }
    for (const d of deletes) ops.push({ type: 'del', key: debtKeyOf(d.sopInstanceUid, d.siteName) });
    // Not synced: a process crash keeps these writes (the OS has them), and what a power cut could take
    // back is only a hint, since anti-entropy repair finds every missing copy anyway. An fsync here would
    // sit on every C-STORE's path twice (owed, then paid). Combined with the other unsynced catalog writes:
    // during a mesh ingest every instance costs ~3 debt updates at the entry site.
    await this.catalogWrites.submit(ops);
  }

  async listDebt(onDamaged: (key: string) => void = () => undefined): Promise<DebtEntry[]> {
    // A record under another key than its own (a damaged key) is damaged too: paying it would delete its own key, never this one.
    return this.listRecords(debtPrefix, onDamaged, (key, d: Partial<DebtEntry>) =>
      typeof d.sopInstanceUid === 'string' && isValidUid(d.sopInstanceUid) && typeof d.siteName === 'string' && d.siteName !== '' && key === debtKeyOf(d.sopInstanceUid, d.siteName) && Number.isFinite(d.sinceMs)
        ? { sopInstanceUid: d.sopInstanceUid, siteName: d.siteName, sinceMs: d.sinceMs as number }
        : undefined,
    );
  }

  async *debtSiteNames(limit: number): AsyncIterable<string> {
    for await (const key of this.db.keys({ ...prefixRange(debtPrefix), limit })) {
      // d!<uid>!<site>: the site follows the second '!' (UIDs hold none); a key without one names no site.
      const separator = key.indexOf('!', debtPrefix.length);
      yield separator < 0 ? '' : key.slice(separator + 1);
    }
  }

  async updateKnownSites(seen: readonly KnownSite[], forgotten: readonly ForgottenSite[], tombstonesDropped: readonly string[] = []): Promise<void> {
    if (seen.length === 0 && forgotten.length === 0 && tombstonesDropped.length === 0) return;
    const ops: Op[] = [];
    for (const k of seen) {
      const site: KnownSite = { siteName: k.siteName, lastHeardMs: k.lastHeardMs, ...(k.unsettled === true ? { unsettled: true as const } : {}) };
      ops.push({ type: 'put', key: `${knownSitePrefix}${k.siteName}`, value: new Uint8Array(pack(site)) });
    }
    for (const f of forgotten) {
      const tombstone: ForgottenSite = { siteName: f.siteName, forgottenAtMs: f.forgottenAtMs, ...(f.byOperator === true ? { byOperator: true as const } : {}) };
      ops.push({ type: 'del', key: `${knownSitePrefix}${f.siteName}` });
      ops.push({ type: 'put', key: `${forgottenSitePrefix}${f.siteName}`, value: new Uint8Array(pack(tombstone)) });
    }
    for (const siteName of tombstonesDropped) ops.push({ type: 'del', key: `${forgottenSitePrefix}${siteName}` });
    // Not synced, like debt: a site lost by a power cut is learnt again from its next heartbeat, a
    // tombstone lost so from the next heartbeat of a peer that forgot it too.
    await this.catalogWrites.submit(ops);
  }

  async listKnownSites(onDamaged: (key: string) => void = () => undefined): Promise<KnownSite[]> {
    return this.listRecords(knownSitePrefix, onDamaged, (key, k: Partial<KnownSite>) =>
      typeof k.siteName === 'string' && key === `${knownSitePrefix}${k.siteName}` && Number.isFinite(k.lastHeardMs)
        ? { siteName: k.siteName, lastHeardMs: k.lastHeardMs as number, ...(k.unsettled === true ? { unsettled: true as const } : {}) }
        : undefined,
    );
  }

  async listForgottenSites(onDamaged: (key: string) => void = () => undefined): Promise<ForgottenSite[]> {
    return this.listRecords(forgottenSitePrefix, onDamaged, (key, f: Partial<ForgottenSite>) =>
      typeof f.siteName === 'string' && key === `${forgottenSitePrefix}${f.siteName}` && Number.isFinite(f.forgottenAtMs)
        ? { siteName: f.siteName, forgottenAtMs: f.forgottenAtMs as number, ...(f.byOperator === true ? { byOperator: true as const } : {}) }
        : undefined,
    );
  }

  async putCommitment(record: CommitmentRecord): Promise<void> {
    await this.catalogWritten(this.db.put(`${commitmentPrefix}${record.transactionUid}`, new Uint8Array(pack(record)), { sync: true }));
  }

  async deleteCommitment(transactionUid: string): Promise<void> {
    // Not synced: a record back after a power cut only sends its report once more.
    await this.catalogWritten(this.db.del(`${commitmentPrefix}${transactionUid}`));
  }

  async listCommitments(onDamaged: (key: string) => void = () => undefined): Promise<CommitmentRecord[]> {
    return this.listRecords(commitmentPrefix, onDamaged, (key, r: Partial<CommitmentRecord>) =>
      typeof r.transactionUid === 'string' &&
      key === `${commitmentPrefix}${r.transactionUid}` &&
      typeof r.requestorAeTitle === 'string' &&
      Number.isFinite(r.receivedAtMs) &&
      Array.isArray(r.references) &&
      r.references.every((ref: Partial<CommitmentRecord['references'][number]>) => typeof ref?.sopClassUid === 'string' && typeof ref.sopInstanceUid === 'string')
        ? { transactionUid: r.transactionUid, requestorAeTitle: r.requestorAeTitle, references: r.references, receivedAtMs: r.receivedAtMs as number, deliverVia: 'directory' }
        : undefined,
    );
  }

  /** The MessagePack records under prefix that `parse` accepts; the others are named to onDamaged. */
  private async listRecords<T, R>(prefix: string, onDamaged: (key: string) => void, parse: (key: string, record: Partial<R>) => T | undefined): Promise<T[]> {
    const out: T[] = [];
    for await (const [key, value] of this.db.iterator(prefixRange(prefix))) {
      let record: T | undefined;
      try {
        const unpacked = unpack(value) as unknown;
        record = typeof unpacked === 'object' && unpacked !== null ? parse(key, unpacked as Partial<R>) : undefined;
      } catch {
        record = undefined;
      }
      if (record === undefined) onDamaged(key);
      else out.push(record);
    }
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

/**
 * Pieces smaller than this are copied into the writer's own buffer (of smallPiecesBufferBytes) rather than
 * kept as views until a chunk fills: each view keeps the whole buffer it came in (a PDU, a decrypted
 * message), and a sender of 2-byte or empty pieces (PDVs, stream frames) made a writer keep one per piece,
 * and its PDU: two associations took a 512 MB heap out of memory in 2 minutes (hunt 79). Real senders'
 * pieces are PDU- or frame-sized, and go as views.
 */
const smallPieceMaxBytes = 4096;
const smallPiecesBufferBytes = 64 * 1024;

class LevelInstanceWriter implements InstanceWriter {
  private readonly blobId: string;
  private readonly hash: Hash;
  /** Views and copies in order, `pendingBytes` in all with the small pieces not yet taken from `small`. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** Small pieces copied together (see smallPieceMaxBytes): its first `smallBytes` bytes, after `pending`. */
  private small: Buffer | undefined;
  private smallBytes = 0;
  private sequence = 0;
  /** A marker of this upload as a kept part was written (or is on its way): the commit deletes it. */
  private persisted = false;
  private inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private state: 'open' | 'committed' | 'aborted' = 'open';
  /** The store's fault epoch at the start: an upload that a fault cut off must not commit (see assertWritable). */
  private readonly faultEpoch: number;
  bytesWritten = 0;

  /** With `resumed`, the writer of a kept part found at open (already an open upload), its chunks read back. */
  constructor(
    private readonly store: LevelReplicaStore,
    resumed?: { blobId: string; sequence: number; bytesWritten: number; hash: Hash },
  ) {
    this.blobId = resumed?.blobId ?? store.newUpload();
    this.hash = resumed?.hash ?? createHash('sha256');
    this.sequence = resumed?.sequence ?? 0;
    this.bytesWritten = resumed?.bytesWritten ?? 0;
    this.persisted = resumed !== undefined;
    this.faultEpoch = store.faultEpoch;
  }

  async persistPartial(record: { sopInstanceUid: string; fromPeerId: string; keptUntilDateMs: number }): Promise<void> {
    if (this.state !== 'open' || this.failure !== undefined || this.bytesWritten === 0) return;
    this.store.assertWritable(this.faultEpoch);
    if (this.pendingBytes > 0) this.flushChunk();
    const marker: PartialCopyRecord = { v: 1, ...record, chunks: this.sequence, bytes: this.bytesWritten };
    this.persisted = true;
    await Promise.all(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
    // Committed or aborted meanwhile: no marker (one that lands after either is dropped at the next open).
    if (this.state !== 'open') return;
    // The chunks are made durable by one synced write to their log (one log, in order: its last chunk put again),
    // before the marker names them: a marker in the blob database made a table span from blob keys to it.
    // In flight like a chunk write: an abort or commit waits for it, so it cannot put back a chunk an abort deleted.
    let failure: unknown;
    const synced = this.putLastChunkAgainSynced(chunkKey(this.blobId, marker.chunks - 1)).catch((error: unknown) => {
      failure = error ?? new Error('sync failed');
    });
    this.inFlight.add(synced);
    await synced;
    this.inFlight.delete(synced);
    if (failure !== undefined) throw failure;
    if (this.state !== 'open') return;
    await this.store.catalogWritten(this.store.db.put(partialRecordKey(this.blobId), new Uint8Array(pack(marker)), { sync: true }));
  }

  async markProgress(record: { sopInstanceUid: string; fromPeerId: string; keptUntilDateMs: number }): Promise<void> {
    if (this.state !== 'open' || this.failure !== undefined || this.sequence === 0) return;
    // Read together: the chunks flushed so far and their bytes (what is pending is not in them).
    const marker: PartialCopyRecord = { v: 1, ...record, chunks: this.sequence, bytes: this.bytesWritten - this.pendingBytes };
    // The chunks it names reach LevelDB before the marker does (another database: no order between them).
    await Promise.all(this.inFlight);
    if (this.state !== 'open' || this.failure !== undefined) return;
    this.persisted = true;
    await this.store.catalogWritten(this.store.db.put(partialRecordKey(this.blobId), new Uint8Array(pack(marker))));
  }

  private async putLastChunkAgainSynced(key: string): Promise<void> {
    const value = await this.store.blobDb.get(key);
    if (value === undefined) throw new StoreError('ERR_STORE_CORRUPT', `kept part ${this.blobId} lost its last chunk`);
    await this.store.blobWritten(this.store.blobDb.put(key, value, { sync: true }));
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new StoreError('ERR_STORE_WRITER_STATE', `write after ${this.state}`);
    if (this.failure) throw this.failure;
    this.store.assertWritable(this.faultEpoch);
    this.hash.update(data);
    this.bytesWritten += data.length;
    if (data.length < smallPieceMaxBytes) {
      if (this.smallBytes + data.length > smallPiecesBufferBytes) this.takeSmall();
      this.small ??= Buffer.allocUnsafe(smallPiecesBufferBytes);
      this.small.set(data, this.smallBytes);
      this.smallBytes += data.length;
    } else {
      this.takeSmall();
      // Received PDUs are never overwritten (the framer allocates afresh), so a view is safe to keep until the
      // flush copies it; but one much smaller than its buffer (a PDV among empty ones in a large PDU) would
      // keep that buffer alive: copied.
      this.pending.push(data.length * 4 < data.buffer.byteLength ? Buffer.from(data) : data);
    }
    this.pendingBytes += data.length;
    if (this.pendingBytes >= this.store.chunkBytes) this.flushChunk();
    while (this.inFlight.size >= this.store.maxChunkWritesInFlight) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
  }

  sha256SoFar(): string {
    return this.hash.copy().digest('hex');
  }

  resumable(): boolean {
    if (this.state !== 'open' || this.failure !== undefined) return false;
    try {
      this.store.assertWritable(this.faultEpoch);
      return true;
    } catch {
      return false;
    }
  }

  /** The small pieces so far go to `pending`, in a copy of their own (the buffer is reused). */
  private takeSmall(): void {
    if (this.smallBytes === 0 || this.small === undefined) return;
    this.pending.push(Buffer.from(this.small.subarray(0, this.smallBytes)));
    this.smallBytes = 0;
  }

  private takePending(): Uint8Array {
    this.takeSmall();
    const chunk = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return chunk;
  }

  private flushChunk(): void {
    const key = chunkKey(this.blobId, this.sequence++);
    const value = this.takePending();
    const write: Promise<void> = this.store.blobWritten(this.store.blobDb.put(key, value)).then(
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
      const entry = buildEntry({ byteLength: this.bytesWritten, sha256: this.hash.digest('hex'), blobId: this.blobId });
      const encoded = encodeCatalogEntry(entry);
      const blobOps = this.lastBlobOps(encoded);
      // The duplicate check runs beside the synced write, off the critical path: duplicates are rare, and
      // the copy written for one is deleted again below (recovery deletes it too if a crash comes first).
      let existing: CatalogEntry | undefined;
      let catalogOps: Settled<Op[]>;
      try {
        const committing = this.store.blobCommits.submit({ sopInstanceUid, blobOps, faultEpoch: this.faultEpoch });
        // Built while the synced batch is on its way: after it, its ~0.14 ms stood between the fsync and the answer.
        // A failure waits for the batch, so that the abort's delete cannot overtake the batch writing the blob.
        try {
          catalogOps = { value: catalogWriteOpsEncoded(entry, encoded) };
        } catch (error) {
          catalogOps = { error };
        }
        const result = await committing;
        if ('refused' in result) throw result.refused;
        if ('error' in catalogOps) throw catalogOps.error;
        existing = result.existing;
      } catch (error) {
        await this.abort();
        throw error;
      }
      if (existing !== undefined) {
        await this.abort();
        return { outcome: 'duplicate', entry: existing, sentSha256: entry.sha256 } as const;
      }
      try {
        // Durable from here on: the commit record is in the synced blob log (recovery re-applies it).
        // A kept part that became the instance is no part any more (a marker written after this is deleted at open).
        const markerOps: Op[] = this.persisted ? [{ type: 'del', key: partialRecordKey(this.blobId) }] : [];
        await this.store.catalogWrites.submit(markerOps.length === 0 ? catalogOps.value : [...catalogOps.value, ...markerOps]);
        // Once readers can see the entry: a catalog read begun before then, and answered without it, is not kept.
        this.store.newestOfPatient.committed(entry.patientId, entry.storedAtMs);
      } catch (error) {
        await this.abort();
        throw error;
      }
      this.state = 'committed';
      this.store.endUpload(this.blobId, 'stored');
      this.store.instanceStored(sopInstanceUid);
      return { outcome: 'stored', entry } as const;
    });
  }

  /** The last chunk (also of an empty instance) and the commit record: what the synced batch writes. */
  private lastBlobOps(encodedEntry: Uint8Array): Op[] {
    const ops: Op[] = [];
    if (this.pendingBytes > 0 || this.sequence === 0) ops.push({ type: 'put', key: chunkKey(this.blobId, this.sequence++), value: this.takePending() });
    ops.push({ type: 'put', key: commitRecordKey(this.blobId), value: encodedEntry });
    return ops;
  }

  /** ReplicaStore.repairCopy's commit: these bytes become the copy `corrupt`'s entry points at. */
  async replace(corrupt: CatalogEntry): Promise<'repaired' | 'changed'> {
    if (this.state !== 'open') throw new StoreError('ERR_STORE_WRITER_STATE', `replace after ${this.state}`);
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
    // The same check as a replica's: these bytes must be the entry's (ERR_STORE_REPLICA_MISMATCH).
    const entry = replicaEntryBuilder(corrupt)({ byteLength: this.bytesWritten, sha256: this.hash.digest('hex'), blobId: this.blobId });
    return this.store.serialiseCommit(corrupt.sopInstanceUid, async () => {
      this.store.assertWritable(this.faultEpoch);
      const current = await this.store.getEntry(corrupt.sopInstanceUid);
      if (current === undefined || current.blobId !== corrupt.blobId) return 'changed';
      const encoded = encodeCatalogEntry(entry);
      // Rare, so both writes are synced and not combined: the bad copy is deleted only once the catalog
      // points at the new one for good. A power cut before that leaves the entry on the bad copy, and
      // recovery deletes the new one (its commit record names a UID stored under another blob).
      await this.store.blobWritten(this.store.blobDb.batch(this.lastBlobOps(encoded), { sync: true }));
      await this.store.catalogWritten(this.store.db.batch(catalogWriteOpsEncoded(entry, encoded), { sync: true }));
      this.state = 'committed';
      this.store.endUpload(this.blobId, 'replaced');
      // Synced: the bad copy lies below the recovery checkpoint, so no open would find it again after a power cut.
      await this.store.deleteBlob(corrupt.blobId, true);
      return 'repaired';
    });
  }

  /** Never throws: chunks it cannot delete (a write fault) are deleted by the recovery that ends the fault. */
  async abort(): Promise<void> {
    if (this.state === 'aborted' || this.state === 'committed') return;
    this.state = 'aborted';
    this.pending = [];
    this.pendingBytes = 0;
    await Promise.all(this.inFlight);
    // sequence > 0: chunks (or a commit that failed or found a duplicate) were written. Not synced (a
    // duplicate's abort would cost a second fsync): the checkpoint waits for the next synced blob write instead.
    if (this.sequence === 0) return this.store.endUpload(this.blobId, 'aborted');
    await (this.persisted ? this.store.deleteKeptPart(this.blobId, false) : this.store.deleteBlob(this.blobId, false)).catch(() => undefined);
    this.store.endUpload(this.blobId, 'abortedUnsynced');
  }
}
