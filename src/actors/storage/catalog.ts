/**
 * The catalog: one record per stored instance plus the indexes that make the common C-FIND lookups
 * prefix scans. Everything here lives in the store's single LevelDB, under two prefixes:
 *
 *   c!i!<SOPInstanceUID>                                            -> msgpack(CatalogEntry)
 *   x!pid!<hex(PatientID)>!<StudyUID>!<SeriesUID>!<SOPInstanceUID>  -> empty  (patient hierarchy)
 *   x!study!<StudyUID>!<SeriesUID>!<SOPInstanceUID>                 -> empty  (study hierarchy)
 *   x!series!<SeriesUID>!<SOPInstanceUID>                           -> empty
 *   x!acc!<hex(AccessionNumber)>!<StudyUID>!<SeriesUID>!<SOPInstanceUID> -> empty (non-empty accession only)
 *   x!newest!studypid!<StudyUID>:<hex(PatientID)>!<age>!<SOPInstanceUID> -> empty (newest instance first)
 *   x!newest!pid!<hex(PatientID)>!<age>!<SOPInstanceUID>            -> empty  (newest instance first)
 *   x!name!<hex(utf8(form))>!<hex(PatientID)>!<StudyUID>!<SOPInstanceUID> -> empty (each PatientName form)
 *   x!da!<YYYYMMDD>!<hex(PatientID)>!<StudyUID>!<SOPInstanceUID>    -> empty  (each StudyDate)
 *   h!<SOPInstanceUID>                                              -> sha256 of the bytes (64 hex chars)
 *
 * `h!` is the held index: what custody loads at start-up and what the store counts. Without it both read
 * and decoded every full entry (200,000 instances: ~10 s and ~640 MB of heap garbage to load, 0.7 s to
 * count, against ~100 bytes a record here).
 *
 * UIDs only contain digits and dots, and PatientID / AccessionNumber are hex-encoded (of their latin1
 * bytes, leading and trailing spaces removed as they are not significant for LO/SH), so `!` never occurs
 * inside a component: every prefix ending in `!` selects exactly one entity, and the instances of one
 * patient / study / series are contiguous in key order.
 *
 * The index values are empty: the index keys carry the whole hierarchy, so counts (studies of a patient,
 * instances of a series) need keys only, and entries are read from `c!i!` with getMany.
 *
 * `x!newest!` names the newest instance (the one whose attributes a C-FIND answers with) of each patient,
 * and of each study's part under each PatientID (a study filed under two patients matches by either
 * one's attributes), by its first key: `<age>` is a fixed-width complement of storedAtMs, so the newest
 * sorts first, and among instances stored in the same millisecond the smallest SOPInstanceUID. A search
 * by a key no other index serves (`*MITH`, a description) reads one entry per study part there, seeking
 * from one to the next, and reads the study's instances only when that entry matches (one key per
 * instance, so no read-modify-write of a summary record: commits of one study may run concurrently).
 *
 * `x!name!` holds every form of every instance's PatientName that a key is compared with (personNameForms:
 * decoded with the instance's character set, case folded, trailing empty components removed, whole and
 * per component group). A PatientName key with a literal start (`SMITH*`, `Doe^John`) lists the
 * studies or patients to examine from the range of that start: every instance's names are there, so
 * whichever instance an entity's attributes come from, a match is among them (respond() decides).
 * `x!da!` does the same for StudyDate (each value as a date key compares it, dateIndexForms): a date or a
 * range lists the studies to examine (a day's worklist reads that day's studies, not the archive).
 * Builds before this one kept ASCII-folded name forms under `x!pn!` and one newest entry per study under
 * `x!newest!study!`: a store they wrote gets the indexes above at open and loses those
 * (clearLegacySearchIndexes).
 *
 * Replacing an instance whose indexed fields changed: put `catalogDeleteOps(oldEntry)` before
 * `catalogWriteOps(newEntry)` in the same batch (LevelDB applies a batch in order). Stale index keys are
 * harmless for correctness anyway: readers check every index hit against the entry it points to.
 */
import { crc32 } from 'node:zlib';
import { pack, unpack } from 'msgpackr';
import type { Level } from 'level';
import type { CatalogEntry } from './catalog-types.ts';
import { dateIndexForms, isUnknownValue, personNameForms, splitValues } from './query/matching.ts';
import { isAcceptableUid } from '../../codec/uid.ts';

export type CatalogDb = Level<string, Uint8Array>;

export type CatalogPut = { type: 'put'; key: string; value: Uint8Array };
export type CatalogDel = { type: 'del'; key: string };

export const CATALOG_ENTRY_PREFIX = 'c!i!';
export const PATIENT_INDEX_PREFIX = 'x!pid!';
export const STUDY_INDEX_PREFIX = 'x!study!';
export const SERIES_INDEX_PREFIX = 'x!series!';
export const ACCESSION_INDEX_PREFIX = 'x!acc!';
export const HELD_INDEX_PREFIX = 'h!';
/** Per study and PatientID (a study may hold instances of several): entity `<StudyUID>:<hex(PatientID)>`. */
export const NEWEST_OF_STUDY_PATIENT_PREFIX = 'x!newest!studypid!';
export const NEWEST_OF_PATIENT_PREFIX = 'x!newest!pid!';
export const PERSON_NAME_INDEX_PREFIX = 'x!name!';
/**
 * Indexes of earlier builds that this one replaced: the name index that folded ASCII letters only, and the
 * newest index per study without its patients (see the header comment).
 */
const LEGACY_SEARCH_INDEX_PREFIXES = ['x!pn!', 'x!newest!study!'];
export const STUDY_DATE_INDEX_PREFIX = 'x!da!';
/** x!mod!<hex Modality>!<study>!<series>!<sop>: each instance under its series' Modality. */
export const MODALITY_INDEX_PREFIX = 'x!mod!';
/** The index entries of instances whose AccessionNumber / StudyDate / Modality is unknown (see attributeIndexKeys). */
export const UNKNOWN_ACCESSION_INDEX_PREFIX = 'x!acc!!';
export const UNKNOWN_STUDY_DATE_INDEX_PREFIX = 'x!da!!';
export const UNKNOWN_MODALITY_INDEX_PREFIX = 'x!mod!!';

const ACCESSION_NUMBER_TAG = 0x00080050;
const PATIENT_NAME_TAG = 0x00100010;
const STUDY_DATE_TAG = 0x00080020;
const MODALITY_TAG = 0x00080060;
const SPECIFIC_CHARACTER_SET_TAG = 0x00080005;
const EMPTY_VALUE = new Uint8Array(0);
const ITERATOR_BATCH_SIZE = 1000;
/**
 * Keys newestInstances reads at a time. Measured (median of 7, ms to scan 1,256 studies of 3 instances / 1,000
 * of 100): 1 key 74 / 68, 4 keys 66 / 62, 16 keys 30 / 119. Small studies gain from longer reads, large ones
 * lose (the seek after a long read costs more); 4 is even on both.
 */
const NEWEST_KEYS_PER_READ = 4;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export class CatalogKeyError extends Error {
  override readonly name = 'CatalogKeyError';
  readonly code = 'CATALOG_INVALID_UID';
  constructor(message: string) {
    super(message);
  }
}

/**
 * A UID safe as a key part: the check the C-STORE applies (1-64 digits and single dots). Before, a check of
 * its own here took any run of digits and dots of any length ("1..2", 10,000 characters) for the copies,
 * debt records and query keys a peer or a client sends, where the callers had to remember the length.
 */
export const isValidUid = isAcceptableUid;

/** Leading/trailing spaces are padding for LO and SH (PatientID, AccessionNumber). */
export function normalizeIdentifierText(value: string): string {
  return value.replace(/^[ \0]+|[ \0]+$/g, '');
}

/** Hex of the latin1 bytes of an identifier: [0-9a-f]* only, so it can never break the key structure. */
export function encodeKeyText(value: string): string {
  return Buffer.from(normalizeIdentifierText(value), 'latin1').toString('hex');
}

export function decodeKeyText(hex: string): string {
  return Buffer.from(hex, 'hex').toString('latin1');
}

export function catalogEntryKey(sopInstanceUid: string): string {
  return CATALOG_ENTRY_PREFIX + sopInstanceUid;
}

export function patientIndexPrefix(patientId: string): string {
  return `${PATIENT_INDEX_PREFIX}${encodeKeyText(patientId)}!`;
}

export function studyIndexPrefix(studyInstanceUid: string): string {
  return `${STUDY_INDEX_PREFIX}${studyInstanceUid}!`;
}

export function seriesIndexPrefix(seriesInstanceUid: string): string {
  return `${SERIES_INDEX_PREFIX}${seriesInstanceUid}!`;
}

export function accessionIndexPrefix(accessionNumber: string): string {
  return `${ACCESSION_INDEX_PREFIX}${encodeKeyText(accessionNumber)}!`;
}

/** LevelDB range selecting every key that starts with `prefix`. */
export function prefixRange(prefix: string): { gte: string; lt: string } {
  const last = prefix.charCodeAt(prefix.length - 1);
  return { gte: prefix, lt: prefix.slice(0, -1) + String.fromCharCode(last + 1) };
}

export function accessionNumberOf(entry: CatalogEntry): string {
  const element = entry.attributes.find((attribute) => attribute.tag === ACCESSION_NUMBER_TAG);
  return normalizeIdentifierText(element?.value ?? '');
}

function assertUids(entry: CatalogEntry): void {
  for (const [field, uid] of [
    ['sopInstanceUid', entry.sopInstanceUid],
    ['studyInstanceUid', entry.studyInstanceUid],
    ['seriesInstanceUid', entry.seriesInstanceUid],
  ] as const) {
    if (!isValidUid(uid)) throw new CatalogKeyError(`${field} is not a valid UID: ${JSON.stringify(uid)}`);
  }
}

export function heldIndexKey(sopInstanceUid: string): string {
  return HELD_INDEX_PREFIX + sopInstanceUid;
}

/** The held index's value: the SHA-256 hex as bytes (heldInstanceBatches reads it back). */
function heldIndexValue(entry: CatalogEntry): Uint8Array {
  return Buffer.from(entry.sha256, 'latin1');
}

/** storedAtMs as the newest index orders it: anything but a non-negative safe integer counts as 0. */
function storedAtRank(entry: CatalogEntry): number {
  return Number.isSafeInteger(entry.storedAtMs) && entry.storedAtMs >= 0 ? entry.storedAtMs : 0;
}

/** The `<age>` of a newest-index key: ascending age is descending storedAtRank. */
export function newestIndexAge(entry: CatalogEntry): string {
  return String(Number.MAX_SAFE_INTEGER - storedAtRank(entry)).padStart(16, '0');
}

/** The storedAtMs rank a newest-index key's `<age>` stands for (newestIndexAge read back); undefined when not one. */
function storedAtOfNewestIndexAge(age: string): number | undefined {
  const value = /^[0-9]{16}$/.test(age) ? Number(age) : NaN;
  return Number.isSafeInteger(value) ? Number.MAX_SAFE_INTEGER - value : undefined;
}

/** Whether `entry` is the newer of the two by the newest index's order (the one an entity's attributes come from). */
export function isNewerInstance(entry: CatalogEntry, than: CatalogEntry): boolean {
  const difference = storedAtRank(entry) - storedAtRank(than);
  return difference > 0 || (difference === 0 && entry.sopInstanceUid < than.sopInstanceUid);
}

/** The name index's range for names whose form starts with `prefix` (a personNamePrefixes text). */
export function personNameIndexPrefix(prefix: string): string {
  return PERSON_NAME_INDEX_PREFIX + Buffer.from(prefix, 'utf8').toString('hex');
}

/** The date index's range for StudyDate values from `from` to `to` (YYYYMMDD, inclusive; absent: open). */
export function studyDateIndexRange(from: string | undefined, to: string | undefined): { gte: string; lt: string } {
  return { gte: STUDY_DATE_INDEX_PREFIX + (from ?? ''), lt: to === undefined ? prefixRange(STUDY_DATE_INDEX_PREFIX).lt : `${STUDY_DATE_INDEX_PREFIX}${to}"` };
}

/**
 * The name, date and modality index keys of `entry`: one per name form, per StudyDate value and per
 * Modality value; an unknown (zero-length) StudyDate, AccessionNumber or Modality under the empty value
 * (`x!da!!...`, `x!acc!!...`, `x!mod!!...`), which every search by that key also reads: unknown Required
 * Keys match (PS3.4 C.2.2.1.2).
 */
function attributeIndexKeys(entry: CatalogEntry): string[] {
  const attribute = (tag: number): string | undefined => entry.attributes.find((element) => element.tag === tag)?.value;
  const suffix = `!${encodeKeyText(entry.patientId)}!${entry.studyInstanceUid}!${entry.sopInstanceUid}`;
  const hierarchy = `${entry.studyInstanceUid}!${entry.seriesInstanceUid}!${entry.sopInstanceUid}`;
  const studyDate = attribute(STUDY_DATE_TAG);
  const dates = isUnknownValue('DA', studyDate) ? [''] : dateIndexForms(studyDate);
  return [
    ...personNameForms(attribute(PATIENT_NAME_TAG), attribute(SPECIFIC_CHARACTER_SET_TAG)).map((form) => personNameIndexPrefix(form) + suffix),
    ...dates.map((date) => STUDY_DATE_INDEX_PREFIX + date + suffix),
    ...(accessionNumberOf(entry) === '' ? [`${UNKNOWN_ACCESSION_INDEX_PREFIX}${hierarchy}`] : []),
    ...modalityIndexValues(attribute(MODALITY_TAG)).map((modality) => `${modalityIndexPrefix(modality)}${hierarchy}`),
  ];
}

/** The values a stored Modality is indexed under: each of its values, or the empty one when unknown. */
function modalityIndexValues(modality: string | undefined): string[] {
  const values = modality === undefined ? [] : splitValues('CS', modality).filter((value) => value !== '');
  return values.length === 0 ? [''] : [...new Set(values)];
}

export function modalityIndexPrefix(modality: string): string {
  return `${MODALITY_INDEX_PREFIX}${encodeKeyText(modality)}!`;
}

function newestIndexKeys(entry: CatalogEntry): string[] {
  const suffix = `!${newestIndexAge(entry)}!${entry.sopInstanceUid}`;
  return [`${NEWEST_OF_STUDY_PATIENT_PREFIX}${studyPatientId(entry.studyInstanceUid, entry.patientId)}${suffix}`, `${NEWEST_OF_PATIENT_PREFIX}${encodeKeyText(entry.patientId)}${suffix}`];
}

/** The entity of NEWEST_OF_STUDY_PATIENT_PREFIX: a study's part under one PatientID (`:` is in neither). */
export function studyPatientId(studyInstanceUid: string, patientId: string): string {
  return `${studyInstanceUid}:${encodeKeyText(patientId)}`;
}

/** The keys of the indexes for searches without a unique key: the newest instance, the names, the dates. */
function searchIndexKeys(entry: CatalogEntry): string[] {
  return [...newestIndexKeys(entry), ...attributeIndexKeys(entry)];
}

/** Every key that records `entry` (the entry itself first, its held-index key second). */
export function catalogKeysOf(entry: CatalogEntry): string[] {
  assertUids(entry);
  const { sopInstanceUid: sop, studyInstanceUid: study, seriesInstanceUid: series } = entry;
  const keys = [
    catalogEntryKey(sop),
    heldIndexKey(sop),
    `${patientIndexPrefix(entry.patientId)}${study}!${series}!${sop}`,
    `${studyIndexPrefix(study)}${series}!${sop}`,
    `${seriesIndexPrefix(series)}${sop}`,
    ...searchIndexKeys(entry),
  ];
  const accessionNumber = accessionNumberOf(entry);
  if (accessionNumber !== '') keys.push(`${accessionIndexPrefix(accessionNumber)}${study}!${series}!${sop}`);
  return keys;
}

/** The puts that record `entry` (pure). */
export function catalogWriteOps(entry: CatalogEntry): CatalogPut[] {
  return catalogWriteOpsEncoded(entry, encodeCatalogEntry(entry));
}

/** catalogWriteOps for a caller that already holds the entry's encoding (the store's commit record). */
export function catalogWriteOpsEncoded(entry: CatalogEntry, encoded: Uint8Array): CatalogPut[] {
  const [entryKey, heldKey, ...indexKeys] = catalogKeysOf(entry);
  return [
    { type: 'put', key: entryKey!, value: encoded },
    { type: 'put', key: heldKey!, value: heldIndexValue(entry) },
    ...indexKeys.map((key): CatalogPut => ({ type: 'put', key, value: EMPTY_VALUE })),
  ];
}

/** The deletes that remove every trace of `entry` (the exact entry that was written). Pure. */
export function catalogDeleteOps(entry: CatalogEntry): CatalogDel[] {
  return catalogKeysOf(entry).map((key): CatalogDel => ({ type: 'del', key }));
}

/**
 * A checked record starts with 0xC1, a byte msgpack never uses, then the CRC-32 of the msgpack that
 * follows. The classic-level addon reads LevelDB without verifying its block checksums, so a flipped byte
 * in a table file came back as a C-FIND answer (a UID with a stray character) with Success; records
 * written before the checksum (plain msgpack) are read as they are.
 */
const CHECKED_RECORD_MARKER = 0xc1;
const CHECKED_RECORD_HEADER_BYTES = 5;

export class CatalogRecordError extends Error {
  override readonly name = 'CatalogRecordError';
  readonly code = 'ERR_CATALOG_RECORD_DAMAGED';
  constructor(message: string) {
    super(message);
  }
}

/** Whether a catalog read failed because the catalog is damaged: a record's own check, or LevelDB's. */
export function isCatalogDamage(error: unknown): boolean {
  const e = error as { name?: unknown; code?: unknown; cause?: { code?: unknown } } | undefined;
  return e?.name === 'CatalogRecordError' || e?.code === 'LEVEL_CORRUPTION' || e?.cause?.code === 'LEVEL_CORRUPTION';
}

/** The entry as a checked record (marker, CRC-32, msgpack), in a buffer of its own. */
export function encodeCatalogEntry(entry: CatalogEntry): Uint8Array {
  const packed = pack(entry);
  const record = new Uint8Array(CHECKED_RECORD_HEADER_BYTES + packed.length);
  record[0] = CHECKED_RECORD_MARKER;
  new DataView(record.buffer).setUint32(1, crc32(packed));
  record.set(packed, CHECKED_RECORD_HEADER_BYTES);
  return record;
}

/** Throws CatalogRecordError when a checked record's bytes no longer match their CRC-32. */
export function decodeCatalogEntry(bytes: Uint8Array): CatalogEntry {
  return unpack(checkedRecordPayload(bytes)) as CatalogEntry;
}

/** The msgpack of a record: a checked record's after its CRC-32 is verified (throws CatalogRecordError), a plain one as it is. */
function checkedRecordPayload(bytes: Uint8Array): Uint8Array {
  if (bytes[0] !== CHECKED_RECORD_MARKER) return bytes;
  const packed = bytes.subarray(CHECKED_RECORD_HEADER_BYTES);
  if (bytes.length < CHECKED_RECORD_HEADER_BYTES || new DataView(bytes.buffer, bytes.byteOffset).getUint32(1) !== crc32(packed)) {
    throw new CatalogRecordError('a catalog record is damaged (checksum mismatch): its file changed on disk');
  }
  return packed;
}

/** The top-level text fields of an entry that catalogRecordText reads. */
export type CatalogRecordTextField = 'sopInstanceUid' | 'studyInstanceUid' | 'seriesInstanceUid' | 'patientId';

/**
 * One text field of an encoded entry, read without decoding the rest: passing a QIDO-RS offset checks one
 * field of one entry per study, and decoding each whole entry (its attributes) was about a third of a cold deep page.
 * Checks the record's CRC-32 as decodeCatalogEntry does (throws CatalogRecordError). Undefined when the
 * record is not a msgpack map holding that field as a string: the caller decodes the entry instead.
 */
export function catalogRecordText(bytes: Uint8Array, field: CatalogRecordTextField): string | undefined {
  const reader = new MsgpackReader(checkedRecordPayload(bytes));
  const fieldCount = reader.mapLength();
  if (fieldCount === undefined) return undefined;
  for (let i = 0; i < fieldCount; i++) {
    const key = reader.text();
    if (key === undefined) return undefined;
    if (key === field) return reader.text();
    if (!reader.skip()) return undefined;
  }
  return undefined;
}

/** Just enough msgpack to find one top-level field: headers are read, every value it does not need is skipped. */
class MsgpackReader {
  private at = 0;
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  mapLength(): number | undefined {
    const type = this.byte();
    if (type === undefined) return undefined;
    if (type >= 0x80 && type <= 0x8f) return type & 0x0f;
    if (type === 0xde) return this.unsigned(2);
    if (type === 0xdf) return this.unsigned(4);
    return undefined;
  }

  text(): string | undefined {
    const type = this.byte();
    if (type === undefined) return undefined;
    const length = type >= 0xa0 && type <= 0xbf ? type & 0x1f : type === 0xd9 ? this.unsigned(1) : type === 0xda ? this.unsigned(2) : type === 0xdb ? this.unsigned(4) : undefined;
    if (length === undefined || this.at + length > this.bytes.length) return undefined;
    const text = Buffer.from(this.bytes.buffer, this.bytes.byteOffset + this.at, length).toString('utf8');
    this.at += length;
    return text;
  }

  /** Passes one value of any type; false when the bytes end first or hold a reserved type. */
  skip(): boolean {
    let pending = 1;
    while (pending > 0) {
      pending--;
      const type = this.byte();
      if (type === undefined) return false;
      let bodyBytes = 0;
      if (type <= 0x7f || type >= 0xe0 || type === 0xc0 || type === 0xc2 || type === 0xc3) bodyBytes = 0;
      else if (type <= 0x8f) pending += 2 * (type & 0x0f);
      else if (type <= 0x9f) pending += type & 0x0f;
      else if (type <= 0xbf) bodyBytes = type & 0x1f;
      else if (type === 0xc4 || type === 0xd9) bodyBytes = this.unsigned(1) ?? -1;
      else if (type === 0xc5 || type === 0xda) bodyBytes = this.unsigned(2) ?? -1;
      else if (type === 0xc6 || type === 0xdb) bodyBytes = this.unsigned(4) ?? -1;
      else if (type === 0xc7) bodyBytes = (this.unsigned(1) ?? -2) + 1;
      else if (type === 0xc8) bodyBytes = (this.unsigned(2) ?? -2) + 1;
      else if (type === 0xc9) bodyBytes = (this.unsigned(4) ?? -2) + 1;
      else if (type === 0xca) bodyBytes = 4;
      else if (type === 0xcb) bodyBytes = 8;
      else if (type >= 0xcc && type <= 0xcf) bodyBytes = 1 << (type - 0xcc);
      else if (type >= 0xd0 && type <= 0xd3) bodyBytes = 1 << (type - 0xd0);
      else if (type >= 0xd4 && type <= 0xd8) bodyBytes = (1 << (type - 0xd4)) + 1;
      else if (type === 0xdc) pending += this.unsigned(2) ?? Number.NaN;
      else if (type === 0xdd) pending += this.unsigned(4) ?? Number.NaN;
      else if (type === 0xde) pending += 2 * (this.unsigned(2) ?? Number.NaN);
      else if (type === 0xdf) pending += 2 * (this.unsigned(4) ?? Number.NaN);
      else return false; // 0xc1: never used by msgpack
      if (bodyBytes < 0 || Number.isNaN(pending) || this.at + bodyBytes > this.bytes.length) return false;
      this.at += bodyBytes;
    }
    return true;
  }

  private byte(): number | undefined {
    return this.at < this.bytes.length ? this.bytes[this.at++] : undefined;
  }

  private unsigned(byteCount: 1 | 2 | 4): number | undefined {
    if (this.at + byteCount > this.bytes.length) return undefined;
    const value = byteCount === 1 ? this.view.getUint8(this.at) : byteCount === 2 ? this.view.getUint16(this.at) : this.view.getUint32(this.at);
    this.at += byteCount;
    return value;
  }
}

export async function getCatalogEntry(db: CatalogDb, sopInstanceUid: string): Promise<CatalogEntry | undefined> {
  if (!isValidUid(sopInstanceUid)) return undefined;
  const bytes = await readAcrossReopen(db, () => db.get(catalogEntryKey(sopInstanceUid)));
  return bytes === undefined ? undefined : decodeCatalogEntry(bytes);
}

/** How long a read that met a closed database waits for it to open again (a faulted store reopening). */
const reopenWaitMaxMs = 5_000;

/**
 * A read the database refused because it was closed under it: a store reopening after a write fault
 * (ReplicaStore) closes and opens its databases within moments, and readers should not fail for it.
 */
function closedUnderUs(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return code === 'LEVEL_DATABASE_NOT_OPEN' || code === 'LEVEL_ITERATOR_NOT_OPEN';
}

/** Resolves once `db` is open, or rejects with `cause` after reopenWaitMaxMs (a database closed for good). */
async function reopened(db: CatalogDb, cause: unknown): Promise<void> {
  if (db.status === 'open') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      db.off('open', onOpen);
      reject(cause);
    }, reopenWaitMaxMs);
    const onOpen = (): void => {
      clearTimeout(timer);
      resolve();
    };
    db.once('open', onOpen);
  });
}

/** `read`, once more after the database has reopened if it was closed under it (either of a store's databases). */
export async function readAcrossReopen<T>(db: CatalogDb, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (error) {
    if (!closedUnderUs(error)) throw error;
    await reopened(db, error);
    return read();
  }
}

/**
 * The storedAtMs of the newest instance of `patientId` held here (the first key of its newest index),
 * undefined when none: a store of the same patient is dated after it (see IncomingStore.finish).
 */
export async function newestStoredAtOfPatient(db: CatalogDb, patientId: string): Promise<number | undefined> {
  const prefix = `${NEWEST_OF_PATIENT_PREFIX}${encodeKeyText(patientId)}!`;
  const [key] = await readAcrossReopen(db, () => db.keys({ ...prefixRange(prefix), limit: 1 }).all());
  return key === undefined ? undefined : storedAtOfNewestIndexAge(key.slice(prefix.length, prefix.length + 16));
}

/** The entries of several instances in one read (getMany), in order: undefined where none is stored. */
export async function getCatalogEntries(db: CatalogDb, sopInstanceUids: readonly string[]): Promise<Array<CatalogEntry | undefined>> {
  return (await getCatalogEntryRecords(db, sopInstanceUids)).map((bytes) => (bytes === undefined ? undefined : decodeCatalogEntry(bytes)));
}

/** The encoded catalog entries of these UIDs, in order (undefined: none, or not a valid UID), for callers that decode each on its own. */
export async function getCatalogEntryRecords(db: CatalogDb, sopInstanceUids: readonly string[]): Promise<Array<Uint8Array | undefined>> {
  const valid = sopInstanceUids.filter(isValidUid);
  const values = valid.length === 0 ? [] : await readAcrossReopen(db, () => db.getMany(valid.map(catalogEntryKey)));
  const byUid = new Map<string, Uint8Array | undefined>(valid.map((uid, i) => [uid, values[i]]));
  return sopInstanceUids.map((uid) => byUid.get(uid));
}

export async function hasInstance(db: CatalogDb, sopInstanceUid: string): Promise<boolean> {
  if (!isValidUid(sopInstanceUid)) return false;
  return db.has(catalogEntryKey(sopInstanceUid));
}

/**
 * Number of cataloged instances, by a keys-only scan of the held index (compact: no entry is read).
 * A maintained counter was rejected: catalogWriteOps must stay pure (it cannot read-modify-write a counter
 * inside the store's batch), concurrent batches would race on it, and re-storing an existing instance would
 * count it twice. The store counts once at open and keeps its own count from there. The scan reads the
 * snapshot taken when this is called (the iterator is created before it returns): later writes are not in it.
 */
export function countInstances(db: CatalogDb): Promise<number> {
  const batches = keyBatches(db, HELD_INDEX_PREFIX);
  // A generator's first next() runs its body up to the first await: the iterator exists when this returns.
  const first = batches.next();
  return (async () => {
    let count = 0;
    for (let batch = await first; batch.done !== true; batch = await batches.next()) count += batch.value.length;
    return count;
  })();
}

/**
 * Every held instance (UID and SHA-256), in UID key order, in batches, from the held index alone. The next
 * batch is read while the caller works on the current one. A record whose UID or SHA-256 is not well formed
 * (damaged on disk) is passed to `onDamaged` and skipped: compared with a peer's copy, a damaged hash
 * looked like two instances sent under one UID, at every site.
 */
export async function* heldInstanceBatches(
  db: CatalogDb,
  onDamaged: (key: string) => void = () => {},
): AsyncGenerator<Array<{ sopInstanceUid: string; sha256: string }>> {
  const iterator = db.iterator(prefixRange(HELD_INDEX_PREFIX));
  let next = iterator.nextv(ITERATOR_BATCH_SIZE);
  try {
    for (;;) {
      const records = await next;
      if (records.length === 0) return;
      next = iterator.nextv(ITERATOR_BATCH_SIZE);
      const batch: Array<{ sopInstanceUid: string; sha256: string }> = [];
      for (const [key, value] of records) {
        const sopInstanceUid = key.slice(HELD_INDEX_PREFIX.length);
        const sha256 = Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('latin1');
        if (isValidUid(sopInstanceUid) && SHA256_HEX.test(sha256)) batch.push({ sopInstanceUid, sha256 });
        else onDamaged(key);
      }
      yield batch;
    }
  } finally {
    // A read still running (the caller stopped early) must settle before the iterator closes.
    await next.catch(() => undefined);
    await iterator.close();
  }
}

/**
 * Writes the held index of every entry that lacks it: stores written before the index existed. Returns
 * how many were added. Runs once per store (the store records that it ran); reads every entry.
 */
export function buildHeldIndex(db: CatalogDb): Promise<number> {
  return writeForEveryEntry(db, (entry) => [{ type: 'put', key: heldIndexKey(entry.sopInstanceUid), value: heldIndexValue(entry) }]);
}

/** Writes the newest, name and date indexes of every entry (see buildHeldIndex): stores written before they existed. */
export function buildSearchIndexes(db: CatalogDb): Promise<number> {
  return writeForEveryEntry(db, searchIndexOps);
}

/** Deletes the search indexes an earlier build wrote that this one replaced (see the header comment). */
export async function clearLegacySearchIndexes(db: CatalogDb): Promise<void> {
  for (const prefix of LEGACY_SEARCH_INDEX_PREFIXES) await db.clear(prefixRange(prefix));
}

/** The puts of `entry`'s newest, name and date index keys (none for an entry whose UIDs are not valid). */
export function searchIndexOps(entry: CatalogEntry): CatalogPut[] {
  if (!isValidUid(entry.studyInstanceUid) || !isValidUid(entry.sopInstanceUid)) return [];
  return searchIndexKeys(entry).map((key) => ({ type: 'put', key, value: EMPTY_VALUE }));
}

/** Puts `opsOf(entry)` for every catalog entry, in batches; returns how many entries got ops. */
async function writeForEveryEntry(db: CatalogDb, opsOf: (entry: CatalogEntry) => CatalogPut[]): Promise<number> {
  let added = 0;
  let ops: CatalogPut[] = [];
  for await (const entry of iterateCatalog(db)) {
    const entryOps = opsOf(entry);
    if (entryOps.length === 0) continue;
    ops.push(...entryOps);
    added++;
    if (ops.length >= ITERATOR_BATCH_SIZE) {
      await db.batch(ops);
      ops = [];
    }
  }
  if (ops.length > 0) await db.batch(ops);
  return added;
}

/** Every catalog entry, in SOPInstanceUID key order. */
export async function* iterateCatalog(db: CatalogDb): AsyncGenerator<CatalogEntry> {
  const iterator = db.values(prefixRange(CATALOG_ENTRY_PREFIX));
  try {
    for (;;) {
      const values = await iterator.nextv(ITERATOR_BATCH_SIZE);
      if (values.length === 0) return;
      for (const bytes of values) yield decodeCatalogEntry(bytes);
    }
  } finally {
    await iterator.close();
  }
}

/**
 * Up to `limit` entries with a UID after `afterUid` ('' = from the first), in UID order: a scrub's page.
 * A record that `decode` refuses (it throws) is named in `undecodable` and skipped; `lastUid` is the last
 * UID read.
 */
export async function catalogPage(
  db: CatalogDb,
  afterUid: string,
  limit: number,
  decode: (bytes: Uint8Array) => CatalogEntry = decodeCatalogEntry,
): Promise<{ entries: CatalogEntry[]; undecodable: string[]; lastUid: string | undefined; end: boolean }> {
  const range = prefixRange(CATALOG_ENTRY_PREFIX);
  const records = await db.iterator({ ...(afterUid === '' ? { gte: range.gte } : { gt: catalogEntryKey(afterUid) }), lt: range.lt, limit: limit + 1 }).all();
  const page = records.slice(0, limit);
  const entries: CatalogEntry[] = [];
  const undecodable: string[] = [];
  for (const [key, value] of page) {
    const uid = key.slice(CATALOG_ENTRY_PREFIX.length);
    try {
      entries.push(decode(value));
    } catch {
      undecodable.push(uid);
    }
  }
  const last = page.at(-1);
  return { entries, undecodable, lastUid: last?.[0].slice(CATALOG_ENTRY_PREFIX.length), end: records.length <= limit };
}

/**
 * The keys under `prefix` (or in a range), in order, in batches. nextv() is used rather than `for await` over the
 * iterator: measured here ~5x faster (20,000 keys: ~20 ms against ~100 ms).
 */
export async function* keyBatches(db: CatalogDb, prefixOrRange: string | { gte: string; lt: string }, batchSize = ITERATOR_BATCH_SIZE): AsyncGenerator<string[]> {
  const range = typeof prefixOrRange === 'string' ? prefixRange(prefixOrRange) : prefixOrRange;
  let after: string | undefined;
  // Closed under us (a reopening store): go on after the last key handed out, once it is open again.
  for (let attempt = 0; ; attempt++) {
    let close: (() => Promise<void>) | undefined;
    try {
      // Throws at once while the database is closed.
      const iterator = db.keys(after === undefined ? range : { gt: after, lt: range.lt });
      close = () => iterator.close();
      for (;;) {
        const keys = await iterator.nextv(batchSize);
        if (keys.length === 0) return;
        after = keys[keys.length - 1];
        yield keys;
      }
    } catch (error) {
      if (!closedUnderUs(error) || attempt >= 1) throw error;
      await reopened(db, error);
    } finally {
      await close?.().catch(() => undefined);
    }
  }
}

/** An entity's newest instance as the newest index names it (entityId: StudyInstanceUID or hex PatientID). */
export interface NewestInstance {
  entityId: string;
  age: string;
  sopInstanceUid: string;
}

/**
 * The newest instance of every entity under `prefix` (NEWEST_OF_STUDY_PATIENT_PREFIX or NEWEST_OF_PATIENT_PREFIX),
 * in entity key order, from the entity after `afterEntityId` when given (a seek: the keys before it are not read).
 */
export async function* newestInstances(db: CatalogDb, prefix: string, afterEntityId?: string, keysPerRead = NEWEST_KEYS_PER_READ): AsyncGenerator<NewestInstance> {
  // `<age>!<SOPInstanceUID>`: a key of another shape (damaged) is passed over, its entity's other keys still count.
  const isNewestKey = (rest: string): boolean => rest.split('!').length === 2;
  for await (const { entityId, rest } of entityFirstKeys(db, prefix, isNewestKey, afterEntityId, keysPerRead)) {
    const [age, sopInstanceUid] = rest.split('!');
    yield { entityId, age: age!, sopInstanceUid: sopInstanceUid! };
  }
}

/**
 * The first key of every entity under `prefix` (the entity: the key's text up to its first `!` after the
 * prefix; `rest`: the text after that `!`), in key order, from the entity after `afterEntityId` when given.
 * Keys are read `keysPerRead` at a time, then a seek passes the rest of the last entity read: after every
 * read (`seekAfter` 'every-read': small entities share a read, a large one costs one read and one seek), or
 * only after a read that entity filled whole ('entity-filled-read': entities smaller than a read cost no seek,
 * larger ones one read or two and one seek). A key whose rest `isWellFormed` refuses (damaged) is passed
 * over: the entity's next key stands for it.
 */
export async function* entityFirstKeys(
  db: CatalogDb,
  prefix: string,
  isWellFormed: (rest: string, key: string) => boolean,
  afterEntityId?: string,
  keysPerRead = NEWEST_KEYS_PER_READ,
  seekAfter: 'every-read' | 'entity-filled-read' = 'every-read',
): AsyncGenerator<{ entityId: string; key: string; rest: string }> {
  const range = prefixRange(prefix);
  let lastEntityId: string | undefined = afterEntityId;
  // '"' sorts right after '!': `<prefix><id>"` is past every key of that entity and before the next one's.
  const pastLastEntity = (): string => (lastEntityId === undefined ? range.gte : `${prefix}${lastEntityId}"`);
  for (let attempt = 0; ; attempt++) {
    let close: (() => Promise<void>) | undefined;
    try {
      // Closed under us (a reopening store): go on after the last entity handed out.
      const iterator = db.keys({ gte: pastLastEntity(), lt: range.lt });
      close = () => iterator.close();
      for (;;) {
        const keys = await iterator.nextv(keysPerRead);
        let lastKeyIsEntity = false;
        let entityStartedInRead = false;
        for (const key of keys) {
          const separator = key.indexOf('!', prefix.length);
          const rest = key.slice(separator + 1);
          lastKeyIsEntity = separator >= 0 && isWellFormed(rest, key);
          if (!lastKeyIsEntity) continue;
          const entityId = key.slice(prefix.length, separator);
          if (entityId === lastEntityId) continue;
          lastEntityId = entityId;
          // An entity starting at the read's first key may still fill the read.
          entityStartedInRead ||= key !== keys[0];
          yield { entityId, key, rest };
        }
        // Not `keys.length < keysPerRead`: a read also stops short at the iterator's byte limit.
        if (keys.length === 0) return;
        if (lastKeyIsEntity && (seekAfter === 'every-read' || !entityStartedInRead)) iterator.seek(pastLastEntity());
      }
    } catch (error) {
      if (!closedUnderUs(error) || attempt >= 1) throw error;
      await reopened(db, error);
    } finally {
      await close?.().catch(() => undefined);
    }
  }
}
