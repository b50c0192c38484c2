/**
 * C-FIND matching and C-GET/C-MOVE resolution over the catalog (see ../catalog.ts for the key layout).
 *
 * Search model: hierarchical (PS3.4 C.4.1.2.1) with two lenient extensions, both harmless:
 * - the unique keys of the levels above the requested one are optional (absent = universal) and may be
 *   UID lists; when present they narrow the search;
 * - non-unique keys of upper levels (e.g. PatientName in a SERIES-level query) are accepted and matched
 *   against the entity's own (inherited) attributes. In Study Root at STUDY level the patient attributes are
 *   ordinary keys, as the standard says.
 * Keys of lower levels (PS3.4 C.4.1.2.1: an SCU shall not send them) are refused with status 0xA900
 * (Identifier does not match SOP Class) and a comment when they carry a value to match or are a unique key;
 * an empty one is returned zero-length (a third leniency: viewers add extra columns to a study list).
 * A level that the root does not have (PATIENT in Study Root) or a missing/unknown level: 0xA900.
 * A malformed DA/TM/DT key (range or single value): 0xC001 with a comment.
 * Private attributes (odd groups) are never matched (PS3.4 C.2.2.1.3 leaves that to the SCP): at IMAGE
 * level they come back as stored, above it zero-length, whatever value the key holds.
 * Character sets: see matching.ts. A response whose values use characters beyond ASCII carries the
 * entity's Specific Character Set (0008,0005) even when the key was not asked for (PS3.4 C.4.1.1.3.2).
 *
 * Execution: first the candidate entities (their unique key values) are listed from ONE index, reading keys
 * only, then each candidate entity is loaded completely from its own hierarchy index (its instances' catalog
 * entries, read with getMany) and matched against every key. The index is chosen in this order:
 *   SOPInstanceUID (IMAGE level)            -> direct gets of c!i!<uid>
 *   SeriesInstanceUID (SERIES, IMAGE)       -> x!series!<uid>!
 *   StudyInstanceUID (STUDY and below)      -> x!study!<uid>!
 *   AccessionNumber (STUDY and below)       -> x!acc!<hex>! (without a PatientID key to look up)
 *   PatientID (any level)                   -> x!pid!<hex>!
 * when that key uses single value or UID list matching (no wildcard, not universal), then
 *   PatientName (STUDY, PATIENT)            -> x!name!<hex of its literal start> (ranges)
 * when each of its values starts with something other than a wildcard (`SMITH*`, `Doe^John`: see
 * personNamePrefixes), then
 *   StudyDate (STUDY)                       -> x!da!<from> to x!da!<to> (ranges)
 * for a date or a range (open or closed) of dates, then
 *   ModalitiesInStudy (STUDY), Modality (SERIES, IMAGE) -> x!mod!<hex>!
 * for values without wildcards, then
 *   AccessionNumber (STUDY and below)       -> x!acc!<hex of its literal start> (ranges)
 *   PatientID (any level)                   -> x!pid!<hex of its literal start> (ranges)
 * for a printable-ASCII pattern whose values each start with something other than a wildcard (`PID42*`).
 * These lists hold every instance's names, dates and identifiers, so they name every entity that can
 * match, whichever instance its attributes come from; respond() decides.
 * Any other query is a full scan of the requested level. At STUDY and PATIENT level, when it has a key to
 * match on that is not computed (`*MITH`, a description...) and no PatientID key to match, the scan goes
 * through the newest index (x!newest!): one entry read per patient, or per study and PatientID in it, the
 * newest, whose attributes are the entity's (or that patient's part's); only an entity whose newest entry
 * matches those keys, or has no value for one, is then read whole (counts, modalities).
 * Otherwise every instance entry of the level is read once (x!pid!, x!study!, x!series!, c!i!).
 * Matches to skip (a QIDO-RS offset, FindOptions.skip) of a request with no key to match are passed on that
 * full scan's keys: an instance on its c!i! key, an entity on one field of the entry of its first key (not
 * decoded: catalogRecordText), with no response built.
 *
 * Entity attributes: those of the entity's most recently stored instance (largest storedAtMs; see
 * isNewerInstance for ties), each one it lacks taken from the newest instance that has it (entityAttributes).
 * A study or series filed under several PatientIDs that does not match so matches by any one patient's
 * part (its latest instance's attributes) when that part does: see respond().
 * A PATIENT entity is identified by its PatientID alone (IssuerOfPatientID is not considered); instances
 * without PatientID form one patient with an empty ID.
 */
import type { DicomElement, Tag } from '../../../codec/dicom-types.ts';
import type { CatalogEntry } from '../catalog-types.ts';
import {
  ACCESSION_INDEX_PREFIX,
  CATALOG_ENTRY_PREFIX,
  NEWEST_OF_PATIENT_PREFIX,
  NEWEST_OF_STUDY_PATIENT_PREFIX,
  PATIENT_INDEX_PREFIX,
  PERSON_NAME_INDEX_PREFIX,
  STUDY_DATE_INDEX_PREFIX,
  SERIES_INDEX_PREFIX,
  STUDY_INDEX_PREFIX,
  MODALITY_INDEX_PREFIX,
  UNKNOWN_ACCESSION_INDEX_PREFIX,
  UNKNOWN_MODALITY_INDEX_PREFIX,
  UNKNOWN_STUDY_DATE_INDEX_PREFIX,
  accessionIndexPrefix,
  catalogKeysOf,
  encodeKeyText,
  modalityIndexPrefix,
  getCatalogEntries,
  getCatalogEntryRecords,
  catalogRecordText,
  decodeCatalogEntry,
  type CatalogRecordTextField,
  isValidUid,
  keyBatches,
  newestIndexAge,
  newestInstances,
  entityFirstKeys,
  normalizeIdentifierText,
  patientIndexPrefix,
  studyPatientId,
  personNameIndexPrefix,
  prefixRange,
  seriesIndexPrefix,
  studyDateIndexRange,
  studyIndexPrefix,
  type CatalogDb,
  type NewestInstance,
} from '../catalog.ts';
import { Tags, vrOf } from '../../../codec/dictionary.ts';
import {
  LEVEL_DEPTH,
  QUERY_LEVELS_OF_ROOT,
  REQUIRED_KEYS_MATCHING_UNKNOWN,
  UNIQUE_KEY_OF_LEVEL,
  attributeLevelOf,
  formatTag,
  isQueryLevel,
  isQueryRoot,
  type AttributeLevel,
  type QueryLevel,
  type QueryRoot,
} from './attribute-levels.ts';
import { compileKeyMatcher, isUnknownValue, literalPrefixes, normalizeValue, splitValues, type ValueMatcher } from './matching.ts';
import { splitValueBytes } from '../../../codec/character-sets.ts';
import {
  COMPUTED_ATTRIBUTES,
  addInstance,
  addInstanceKey,
  attributesByTag,
  entityAttributes,
  createAggregate,
  type ComputedAttribute,
  type EntityAggregate,
} from './computed.ts';

export type { QueryLevel, QueryRoot } from './attribute-levels.ts';

export interface QueryRequest {
  root: QueryRoot;
  level: QueryLevel;
  /** The identifier minus QueryRetrieveLevel (a QueryRetrieveLevel element here is ignored). */
  keys: DicomElement[];
}

/**
 * A refusal names the keys at fault where there are some: they go out as Offending Element (0000,0901),
 * which PS3.7 C.4.1.1.4 / C.4.2.1.x list beside the Error Comment for these statuses.
 */
export type QueryRefusal = { ok: false; status: number; comment: string; offendingTags?: readonly Tag[] };
export type QueryValidation = { ok: true } | QueryRefusal;

export const QueryStatus = {
  /** Level missing or not in the root, key of a lower level, retrieve without its unique key. */
  IdentifierDoesNotMatchSopClass: 0xa900,
  /** Unable to process: a DA/TM/DT matching key (range or single value) is malformed. */
  MalformedMatchingKey: 0xc001,
  /** Unable to process: a C-GET/C-MOVE unique key holds a wildcard or an invalid UID. */
  InvalidUniqueKey: 0xc002,
} as const;

export class QueryError extends Error {
  override readonly name = 'QueryError';
  readonly code: 'INVALID_QUERY' | 'INVALID_RETRIEVE';
  readonly status: number;
  readonly offendingTags: readonly Tag[] | undefined;
  constructor(code: 'INVALID_QUERY' | 'INVALID_RETRIEVE', refusal: QueryRefusal) {
    super(refusal.comment);
    this.code = code;
    this.status = refusal.status;
    this.offendingTags = refusal.offendingTags;
  }
}

/** Instrumentation: what a query read. Pass one in the options; it is filled in place. */
export interface QueryStats {
  /** How candidates were found, e.g. "index x!pid! (PatientID)" or "full scan x!study!". */
  plan: string;
  indexKeysRead: number;
  /** Catalog entries read and decoded. */
  entriesRead: number;
  entitiesExamined: number;
  /** Entity ids a scan of several index ranges remembered to skip the ones it met before (see candidateIds). */
  candidateIdsRemembered: number;
  /** Matches passed for `skip` without their entity read whole or a response built. */
  matchesPassedUnread: number;
  /** Catalog entries read for one field without being decoded (a match passed for `skip`). */
  entryFieldsRead: number;
}

export function createQueryStats(): QueryStats {
  return { plan: '', indexKeysRead: 0, entriesRead: 0, entitiesExamined: 0, candidateIdsRemembered: 0, matchesPassedUnread: 0, entryFieldsRead: 0 };
}

export interface FindOptions {
  /** Stop after this many responses (absent or <= 0: no limit). */
  limit?: number;
  stats?: QueryStats;
  /**
   * False: a search that no unique-key index serves reads every instance, without the name, date and
   * newest indexes (as before they existed; tests compare the two).
   */
  searchIndexes?: boolean;
  /**
   * True once the requestor no longer wants the answer (a C-CANCEL-RQ, an aborted association, an HTTP
   * client gone): the search ends at its next entity or index key, matching or not. A scan that matched
   * nothing went on to the end of the level, its association held open meanwhile (helper 98).
   */
  stopped?: () => boolean;
  /** Entity ids a scan of several index ranges remembers (default candidateIdsRememberedMax; tests lower it). */
  candidateIdsRememberedMax?: number;
  /** Go on after the match this cursor was given with, by a search of the same request (see findMatchesWithCursors). */
  after?: QueryCursor;
  /**
   * Pass this many matches before yielding (a QIDO-RS offset; `limit` counts the yielded ones). A request with
   * no key to match passes them without building their responses, and on a full scan of its level without
   * reading their entities whole: a cold page at offset 19,900 built 19,900 responses it dropped (hunt 128).
   */
  skip?: number;
}

/**
 * Where a search stood at one of its matches: the same request searched again from it goes on with the next
 * match, reading from there (a QIDO-RS page at offset 100,000 read and dropped 100,000 matches first).
 * `plan` is the plan's description, checked on resuming. Keyset order: matches the scan has passed are not
 * met again, even if the archive changed in between.
 */
export type QueryCursor =
  /** The position in a plan's list of SOPInstanceUIDs. */
  | { type: 'listed'; plan: string; index: number }
  /** The first index key of the entity's run in one of the plan's ranges. */
  | { type: 'indexed'; plan: string; rangeIndex: number; key: string; entityId: string }
  /** The entity's id in the newest index (key order is the order of these ids). */
  | { type: 'newest'; plan: string; indexedId: string };

/**
 * Entity ids a scan of several index ranges remembers, so that an entity met again (under another name form,
 * date or modality) is skipped at once; past it, a repeat is told from the entity's own entries instead (see
 * candidateIds). An id cut from its index key costs 85-240 bytes of heap (measured): at most ~4 MB a search.
 */
export const candidateIdsRememberedMax = 16_384;

// ---------------------------------------------------------------------------------------------------
// Compilation and validation

/** Keys that describe the request rather than select entities (PS3.4 C.2.2.2: never matched). */
const NEVER_MATCHED_TAGS = new Set<Tag>([
  Tags.SpecificCharacterSet,
  Tags.TimezoneOffsetFromUTC,
  Tags.RetrieveAETitle,
  0x00080053, // Query/Retrieve View
]);
/** VRs the codec does not decode (value undefined). */
const UNDECODED_VRS = new Set(['SQ', 'OB', 'OW', 'OF', 'OD', 'OL', 'OV', 'UN']);
const GET_MANY_BATCH_SIZE = 256;
/** Index keys read at a time by a pass over a full scan's entities before a seek past the last one (see entityFirstKeys). */
const PASS_KEYS_PER_READ = 256;

/** The levels' unique keys: one of a level below the query's is refused even when empty. */
const UNIQUE_KEYS = new Set<Tag>(Object.values(UNIQUE_KEY_OF_LEVEL));

interface CompiledKey {
  element: DicomElement;
  level: AttributeLevel;
  computed: ComputedAttribute | undefined;
  matcher: ValueMatcher;
  /** An empty key of a level below the query's: returned zero-length. */
  returnedEmpty: boolean;
  /** False for universal matching and never-matched keys: nothing to check. */
  isMatching: boolean;
}

type Compiled = { ok: true; keys: CompiledKey[] } | QueryRefusal;

function checkRootAndLevel(request: QueryRequest): QueryValidation {
  if (!isQueryRoot(request.root)) {
    return { ok: false, status: QueryStatus.IdentifierDoesNotMatchSopClass, comment: `unknown query root "${String(request.root)}"` };
  }
  if (!isQueryLevel(request.level)) {
    return {
      ok: false,
      status: QueryStatus.IdentifierDoesNotMatchSopClass,
      comment: `QueryRetrieveLevel (0008,0052) missing or invalid: "${String(request.level ?? '')}"`,
      offendingTags: [Tags.QueryRetrieveLevel],
    };
  }
  if (!QUERY_LEVELS_OF_ROOT[request.root].includes(request.level)) {
    return {
      ok: false,
      status: QueryStatus.IdentifierDoesNotMatchSopClass,
      comment: `QueryRetrieveLevel ${request.level} is not valid for the ${request.root === 'STUDY' ? 'Study' : 'Patient'} Root information model`,
      offendingTags: [Tags.QueryRetrieveLevel],
    };
  }
  return { ok: true };
}

function compileQuery(request: QueryRequest): Compiled {
  const rootAndLevel = checkRootAndLevel(request);
  if (!rootAndLevel.ok) return rootAndLevel;
  const keyCharacterSet = request.keys.find((element) => element.tag === Tags.SpecificCharacterSet)?.value;
  // PS3.4 C.2.2.2.5.1: the query's Timezone Offset From UTC is the offset of its DT values that carry none.
  const keyTimezone = request.keys.find((element) => element.tag === Tags.TimezoneOffsetFromUTC)?.value;
  const keys: CompiledKey[] = [];
  const seenTags = new Set<Tag>();
  for (const sent of request.keys) {
    if (sent.tag === Tags.QueryRetrieveLevel || (sent.tag & 0xffff) === 0) continue;
    // The matching type follows the attribute's VR (PS3.6), not the one the requestor wrote in an explicit
    // VR identifier: a StudyInstanceUID key sent as LO with `1.3*` was wildcard-matched (hunt 85), where UI
    // takes no wildcards (PS3.4 C.2.2.2.4). The response carries the attribute's VR too. Private keys
    // (never matched) and attributes of several possible VRs keep the one sent.
    const dictionaryVr = (sent.tag >>> 16) % 2 === 1 ? undefined : vrOf(sent.tag);
    const element = dictionaryVr === undefined || dictionaryVr === sent.vr ? sent : { ...sent, vr: dictionaryVr };
    // Command (0000) and File Meta (0002) elements are not data set attributes: neither matched nor returned
    // (Orthanc 1.10 sends (0002,0002) in IMAGE-level queries, which then matched nothing: helper 47).
    const group = element.tag >>> 16;
    if (group === 0x0000 || group === 0x0002) continue;
    if (seenTags.has(element.tag)) continue;
    seenTags.add(element.tag);
    const computed = COMPUTED_ATTRIBUTES.get(element.tag);
    const isPrivate = (element.tag >>> 16) % 2 === 1;
    const level = computed?.level ?? (isPrivate ? 'IMAGE' : attributeLevelOf(element.tag));
    const compiledMatcher = compileKeyMatcher(element.vr, element.value, keyCharacterSet, keyTimezone);
    if (!compiledMatcher.ok) {
      return { ok: false, status: QueryStatus.MalformedMatchingKey, comment: `key ${formatTag(element.tag)}: ${compiledMatcher.comment}`, offendingTags: [element.tag] };
    }
    const isMatching =
      !isPrivate && !NEVER_MATCHED_TAGS.has(element.tag) && compiledMatcher.matcher.type !== 'universal' && compiledMatcher.matcher.type !== 'sequence';
    const matcher = isMatching && REQUIRED_KEYS_MATCHING_UNKNOWN.has(element.tag) ? matchingUnknown(compiledMatcher.matcher, element.vr) : compiledMatcher.matcher;
    if (level !== 'ANY' && LEVEL_DEPTH[level] > LEVEL_DEPTH[request.level]) {
      // An empty key of a lower level is a return key that an entity of this level has no one value for:
      // it comes back zero-length, rather than failing a viewer's whole study list over one extra column.
      // A lower level's unique key, or a value to match on, cannot be answered here: refused.
      if (isMatching || UNIQUE_KEYS.has(element.tag)) {
        return {
          ok: false,
          status: QueryStatus.IdentifierDoesNotMatchSopClass,
          comment: `key ${formatTag(element.tag)} is a ${level}-level attribute, not allowed ${UNIQUE_KEYS.has(element.tag) ? '' : 'with a value '}in a ${request.level}-level query`,
          offendingTags: [element.tag],
        };
      }
      keys.push({ element, level, computed: undefined, matcher, isMatching: false, returnedEmpty: true });
      continue;
    }
    keys.push({ element, level, computed, matcher, isMatching, returnedEmpty: false });
  }
  return { ok: true, keys };
}

/** The matcher of a Required Key that also matches an unknown (zero-length) value: PS3.4 C.2.2.1.2. */
function matchingUnknown(matcher: ValueMatcher, vr: string): ValueMatcher {
  return { ...matcher, matches: (stored, storedCharacterSet, storedTimezone) => isUnknownValue(vr, stored) || matcher.matches(stored, storedCharacterSet, storedTimezone) };
}

/** Checks a C-FIND request; on failure gives the C-FIND status and an Error Comment. */
export function validateQuery(request: QueryRequest): QueryValidation {
  const compiled = compileQuery(request);
  return compiled.ok ? { ok: true } : compiled;
}

// ---------------------------------------------------------------------------------------------------
// Index access

interface IndexedInstance {
  patientHex?: string;
  studyInstanceUid?: string;
  seriesInstanceUid?: string;
  sopInstanceUid: string;
}

function parseIndexKey(key: string): IndexedInstance | undefined {
  const parts = key.split('!');
  if (key.startsWith(PATIENT_INDEX_PREFIX) && parts.length === 6) {
    return { patientHex: parts[2]!, studyInstanceUid: parts[3]!, seriesInstanceUid: parts[4]!, sopInstanceUid: parts[5]! };
  }
  if (key.startsWith(STUDY_INDEX_PREFIX) && parts.length === 5) {
    return { studyInstanceUid: parts[2]!, seriesInstanceUid: parts[3]!, sopInstanceUid: parts[4]! };
  }
  if (key.startsWith(SERIES_INDEX_PREFIX) && parts.length === 4) {
    return { seriesInstanceUid: parts[2]!, sopInstanceUid: parts[3]! };
  }
  if ((key.startsWith(ACCESSION_INDEX_PREFIX) || key.startsWith(MODALITY_INDEX_PREFIX)) && parts.length === 6) {
    return { studyInstanceUid: parts[3]!, seriesInstanceUid: parts[4]!, sopInstanceUid: parts[5]! };
  }
  if ((key.startsWith(PERSON_NAME_INDEX_PREFIX) || key.startsWith(STUDY_DATE_INDEX_PREFIX)) && parts.length === 6) {
    return { patientHex: parts[3]!, studyInstanceUid: parts[4]!, sopInstanceUid: parts[5]! };
  }
  if (key.startsWith(CATALOG_ENTRY_PREFIX) && parts.length === 3) return { sopInstanceUid: parts[2]! };
  return undefined;
}

/** A level no case handles: a compile error where a switch misses one (QueryLevel grew). */
function unhandledLevel(level: never): never {
  throw new Error(`unhandled query level ${String(level)}`);
}

/** The entity id at `level`: hex PatientID, StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID. */
function entityIdAt(level: QueryLevel, indexed: IndexedInstance): string | undefined {
  switch (level) {
    case 'PATIENT':
      return indexed.patientHex;
    case 'STUDY':
      return indexed.studyInstanceUid;
    case 'SERIES':
      return indexed.seriesInstanceUid;
    case 'IMAGE':
      return indexed.sopInstanceUid;
    default:
      return unhandledLevel(level);
  }
}

async function* scanIndex(db: CatalogDb, prefix: string | { gte: string; lt: string }, stats: QueryStats): AsyncGenerator<IndexedInstance & { key: string }> {
  for await (const keys of keyBatches(db, prefix)) {
    stats.indexKeysRead += keys.length;
    for (const key of keys) {
      const indexed = parseIndexKey(key);
      if (indexed) yield { ...indexed, key };
    }
  }
}

async function readEntries(db: CatalogDb, sopInstanceUids: string[], stats: QueryStats): Promise<CatalogEntry[]> {
  const entries: CatalogEntry[] = [];
  for (const entry of await getCatalogEntries(db, sopInstanceUids)) {
    if (entry === undefined) continue; // index key without entry (being deleted): skip
    stats.entriesRead++;
    entries.push(entry);
  }
  return entries;
}

/** The entry field an entity id at each level is made of (a PATIENT's hex-encoded: encodeKeyText). */
const ENTITY_ID_FIELD: Record<QueryLevel, CatalogRecordTextField> = {
  PATIENT: 'patientId',
  STUDY: 'studyInstanceUid',
  SERIES: 'seriesInstanceUid',
  IMAGE: 'sopInstanceUid',
};

function entityIdOfFieldValue(level: QueryLevel, value: string): string {
  return level === 'PATIENT' ? encodeKeyText(value) : value;
}

function entryBelongsTo(level: QueryLevel, id: string, entry: CatalogEntry): boolean {
  return entityIdOfFieldValue(level, entry[ENTITY_ID_FIELD[level]]) === id;
}

/** entryBelongsTo for an encoded entry, reading the one field it needs (the whole entry when that fails). */
function recordBelongsTo(level: QueryLevel, id: string, record: Uint8Array): boolean {
  const value = catalogRecordText(record, ENTITY_ID_FIELD[level]);
  return value === undefined ? entryBelongsTo(level, id, decodeCatalogEntry(record)) : entityIdOfFieldValue(level, value) === id;
}

function hierarchyPrefixOf(level: Exclude<QueryLevel, 'IMAGE'>, id: string): string {
  switch (level) {
    case 'PATIENT':
      return `${PATIENT_INDEX_PREFIX}${id}!`; // id is already hex
    case 'STUDY':
      return studyIndexPrefix(id);
    case 'SERIES':
      return seriesIndexPrefix(id);
    default:
      return unhandledLevel(level);
  }
}

/**
 * Every instance of one patient/study/series, from its own hierarchy index; with `patientIds`, only those
 * of these patients, with `studyInstanceUids` only those of these studies (entries are then read). With
 * `withEntries` false only the index keys are read (enough for the counts). Index keys whose entry disagrees
 * are skipped.
 */
async function loadAggregate(
  db: CatalogDb,
  level: Exclude<QueryLevel, 'IMAGE'>,
  id: string,
  withEntries: boolean,
  stats: QueryStats,
  patientIds?: ReadonlySet<string>,
  onEntry?: (entry: CatalogEntry) => void,
  keysCounted?: EntityAggregate,
  studyInstanceUids?: ReadonlySet<string>,
): Promise<EntityAggregate> {
  const aggregate = createAggregate();
  let pending: string[] = [];
  const flush = async (): Promise<void> => {
    for (const entry of await readEntries(db, pending, stats)) {
      if (
        entryBelongsTo(level, id, entry) &&
        (patientIds === undefined || patientIds.has(entry.patientId)) &&
        (studyInstanceUids === undefined || studyInstanceUids.has(entry.studyInstanceUid))
      ) {
        addInstance(aggregate, entry);
        onEntry?.(entry);
      }
    }
    pending = [];
  };
  for await (const indexed of scanIndex(db, hierarchyPrefixOf(level, id), stats)) {
    if (keysCounted !== undefined) addInstanceKey(keysCounted, indexed.studyInstanceUid ?? '', indexed.seriesInstanceUid ?? '');
    if (!withEntries && patientIds === undefined && studyInstanceUids === undefined) {
      addInstanceKey(aggregate, indexed.studyInstanceUid ?? '', indexed.seriesInstanceUid ?? '');
      continue;
    }
    pending.push(indexed.sopInstanceUid);
    if (pending.length >= GET_MANY_BATCH_SIZE) await flush();
  }
  await flush();
  return aggregate;
}

// ---------------------------------------------------------------------------------------------------
// Planning

type Plan =
  | { kind: 'nothing'; description: string }
  | { kind: 'instances'; sopInstanceUids: string[]; description: string }
  /** Index keys under each prefix, or in each range (a key range of the date index). */
  | { kind: 'prefixes'; prefixes: Array<string | { gte: string; lt: string }>; contiguous: boolean; description: string }
  /** Entities whose newest entry matches `checkedKeys` (stored attributes only) are read whole. */
  | { kind: 'newest'; prefix: string; checkedKeys: CompiledKey[]; description: string };

/** The distinct values of a key usable for an exact index lookup, or undefined (wildcard, universal...). */
function lookupValues(key: CompiledKey | undefined): string[] | undefined {
  if (!key || !key.isMatching || key.element.value === undefined) return undefined;
  if (key.matcher.type !== 'single-value' && key.matcher.type !== 'uid-list') return undefined;
  const { vr, value } = key.element;
  const values = splitValues(vr, normalizeValue(vr, value)).filter((item) => item !== '');
  return values.length === 0 ? undefined : [...new Set(values)];
}

/**
 * PatientID / AccessionNumber values for an index lookup: only printable ASCII ones. The indexes hold each
 * value's bytes, so a key with other characters (which another instance may encode in other bytes, and
 * whose two-byte characters may hold a 0x5C that is no delimiter) is matched as characters by scanning the
 * level instead: slower, but it finds what the matching rules say.
 */
function identifierLookupValues(key: CompiledKey | undefined): string[] | undefined {
  const values = lookupValues(key);
  return values && /^[ -~]*$/.test(key!.element.value!) ? values : undefined;
}

/**
 * The literal starts of a PatientID / AccessionNumber key with wildcards (`PID42*`, `A1?3`), when each of
 * its values has one and the key is printable ASCII (see identifierLookupValues): every value it matches
 * starts with one of them, byte for byte, so the index range of each start lists every entity to examine.
 */
function identifierLiteralStarts(key: CompiledKey | undefined): string[] | undefined {
  if (!key || !key.isMatching || key.matcher.type !== 'wildcard' || key.element.value === undefined) return undefined;
  const { vr, value } = key.element;
  if (!/^[ -~]*$/.test(value)) return undefined;
  const starts = literalPrefixes(splitValues(vr, normalizeValue(vr, value)));
  return starts && [...new Set(starts)];
}

function planQuery(level: QueryLevel, keys: CompiledKey[], searchIndexes: boolean): Plan {
  const keyOf = (tag: Tag): CompiledKey | undefined => keys.find((key) => key.element.tag === tag);
  const depth = LEVEL_DEPTH[level];
  const uidLookup = (tag: Tag, minimumDepth: number): string[] | undefined => {
    const key = keyOf(tag);
    if (depth < minimumDepth || key?.element.vr !== 'UI') return undefined;
    return lookupValues(key)?.filter(isValidUid);
  };

  const sopUids = uidLookup(Tags.SOPInstanceUID, LEVEL_DEPTH.IMAGE);
  if (sopUids) {
    return sopUids.length === 0
      ? { kind: 'nothing', description: 'no valid SOPInstanceUID' }
      : { kind: 'instances', sopInstanceUids: sopUids, description: 'direct c!i! (SOPInstanceUID)' };
  }
  const uidIndexes: Array<[Tag, number, (uid: string) => string, string]> = [
    [Tags.SeriesInstanceUID, LEVEL_DEPTH.SERIES, seriesIndexPrefix, 'index x!series! (SeriesInstanceUID)'],
    [Tags.StudyInstanceUID, LEVEL_DEPTH.STUDY, studyIndexPrefix, 'index x!study! (StudyInstanceUID)'],
  ];
  for (const [tag, minimumDepth, prefixOf, description] of uidIndexes) {
    const uids = uidLookup(tag, minimumDepth);
    if (!uids) continue;
    if (uids.length === 0) return { kind: 'nothing', description: `no valid ${description}` };
    return { kind: 'prefixes', prefixes: uids.map(prefixOf), contiguous: false, description };
  }
  const patientIds = identifierLookupValues(keyOf(Tags.PatientID));
  const accessionNumbers = depth >= LEVEL_DEPTH.STUDY ? identifierLookupValues(keyOf(Tags.AccessionNumber)) : undefined;
  // With a PatientID too, that patient's index: the accession index's list of studies whose AccessionNumber
  // is unknown (they match it) grows with the archive, and none of them is that patient's but by chance (a
  // RIS asking for its order by PatientID and AccessionNumber read every such study: helper 98).
  if (accessionNumbers && !patientIds) {
    return {
      kind: 'prefixes',
      // With the studies whose AccessionNumber is unknown: they match (C.2.2.1.2).
      prefixes: [...accessionNumbers.map(accessionIndexPrefix), UNKNOWN_ACCESSION_INDEX_PREFIX],
      contiguous: false,
      description: 'index x!acc! (AccessionNumber)',
    };
  }
  if (patientIds) {
    return {
      kind: 'prefixes',
      prefixes: patientIds.map(patientIndexPrefix),
      contiguous: false,
      description: 'index x!pid! (PatientID)',
    };
  }
  const namePrefixes = keyOf(Tags.PatientName)?.matcher.personNamePrefixes;
  if (searchIndexes && namePrefixes && (level === 'STUDY' || level === 'PATIENT')) {
    return {
      kind: 'prefixes',
      prefixes: [...new Set(namePrefixes)].map(personNameIndexPrefix),
      contiguous: false,
      description: 'index x!name! (PatientName)',
    };
  }
  const dateIntervals = keyOf(Tags.StudyDate)?.matcher.dateIntervals;
  if (searchIndexes && dateIntervals && level === 'STUDY') {
    return {
      kind: 'prefixes',
      prefixes: [...dateIntervals.map(({ from, to }) => studyDateIndexRange(from, to)), UNKNOWN_STUDY_DATE_INDEX_PREFIX],
      contiguous: false,
      description: 'index x!da! (StudyDate)',
    };
  }
  // ModalitiesInStudy (STUDY) or Modality (SERIES, IMAGE) values without wildcards: the modality index.
  // Modality is a Required Key, so series whose modality is unknown match too (C.2.2.1.2); ModalitiesInStudy
  // is none, and a study matches by the modalities it has.
  const modalityKey = level === 'STUDY' ? keyOf(Tags.ModalitiesInStudy) : depth >= LEVEL_DEPTH.SERIES ? keyOf(Tags.Modality) : undefined;
  const modalities = searchIndexes && modalityKey?.element.value !== undefined && /^[ -~]*$/.test(modalityKey.element.value) ? lookupValues(modalityKey) : undefined;
  if (modalities) {
    return {
      kind: 'prefixes',
      prefixes: [...modalities.map(modalityIndexPrefix), ...(level === 'STUDY' ? [] : [UNKNOWN_MODALITY_INDEX_PREFIX])],
      contiguous: false,
      description: 'index x!mod! (Modality)',
    };
  }
  // A PatientID or AccessionNumber pattern with a literal start (`PID42*`): the index range of that start.
  const identifierRanges: Array<[Tag, number, string, string, string[]]> = [
    [Tags.PatientID, LEVEL_DEPTH.PATIENT, PATIENT_INDEX_PREFIX, 'PatientID', []],
    [Tags.AccessionNumber, LEVEL_DEPTH.STUDY, ACCESSION_INDEX_PREFIX, 'AccessionNumber', [UNKNOWN_ACCESSION_INDEX_PREFIX]],
  ];
  for (const [tag, minimumDepth, indexPrefix, name, unknown] of identifierRanges) {
    const starts = searchIndexes && depth >= minimumDepth ? identifierLiteralStarts(keyOf(tag)) : undefined;
    if (starts) {
      return { kind: 'prefixes', prefixes: [...starts.map((start) => indexPrefix + encodeKeyText(start)), ...unknown], contiguous: false, description: `range ${indexPrefix} (${name} literal start)` };
    }
  }
  if (searchIndexes && (level === 'STUDY' || level === 'PATIENT')) {
    // A matched PatientID may name a patient other than the newest instance's (a study under two IDs):
    // then the response's attributes are not the newest entry's, which the newest scan cannot tell.
    const matchesPatientId = keys.some((key) => key.element.tag === Tags.PatientID && key.isMatching);
    const checkedKeys = keys.filter((key) => key.isMatching && !key.computed);
    if (!matchesPatientId && checkedKeys.length > 0) {
      const prefix = level === 'STUDY' ? NEWEST_OF_STUDY_PATIENT_PREFIX : NEWEST_OF_PATIENT_PREFIX;
      return { kind: 'newest', prefix, checkedKeys, description: `newest ${prefix}` };
    }
  }
  // Full scan of the level's own index: its entities are contiguous in key order.
  const fullScanPrefix: Record<QueryLevel, string> = {
    PATIENT: PATIENT_INDEX_PREFIX,
    STUDY: STUDY_INDEX_PREFIX,
    SERIES: SERIES_INDEX_PREFIX,
    IMAGE: CATALOG_ENTRY_PREFIX,
  };
  const prefix = fullScanPrefix[level];
  return { kind: 'prefixes', prefixes: [prefix], contiguous: true, description: `full scan ${prefix}` };
}

/** The key ranges of a plan's prefixes, in scan order (what metFirstIn compares an entity's keys with). */
type ScanRanges = ReadonlyArray<{ readonly gte: string; readonly lt: string }>;

function scanRangesOf(plan: Exclude<Plan, { kind: 'newest' }>): ScanRanges {
  return plan.kind === 'prefixes' ? plan.prefixes.map((prefix) => (typeof prefix === 'string' ? prefixRange(prefix) : prefix)) : [];
}

/** Index keys met in a row that name one entity, in one of the plan's ranges. */
interface ScanRun {
  readonly rangeIndex: number;
  readonly firstKey: string;
  lastKey: string;
}

/** A candidate entity; `run` is set when the scan no longer remembers ids: whether to read it is for metFirstIn. */
interface Candidate {
  readonly id: string;
  readonly run?: ScanRun;
  readonly cursor: QueryCursor;
}

/** A loaded candidate entity, and the cursor a search resumed after it starts from. */
interface CandidateEntity {
  readonly aggregate: EntityAggregate;
  readonly cursor: QueryCursor;
}

/** The cursor to resume `plan` from, checked against it; undefined to start at the beginning. */
function resumeCursorOf(plan: Plan, after: QueryCursor | undefined): QueryCursor | undefined {
  if (after === undefined) return undefined;
  const fits =
    after.plan === plan.description &&
    (after.type === 'listed' ? plan.kind === 'instances' : after.type === 'indexed' ? plan.kind === 'prefixes' && after.rangeIndex < plan.prefixes.length : plan.kind === 'newest');
  if (!fits) throw new Error(`a ${after.type} cursor of plan "${after.plan}" cannot resume plan "${plan.description}"`);
  return after;
}

/**
 * Candidate entity ids at `level`, each once, from the plan's index (keys only). In a plan of several ranges
 * an entity is met once per run of its keys (its name forms, dates, modalities); the first
 * `rememberedMax` ids are remembered, and an entity met past that comes with its run (see metFirstIn).
 */
async function* candidateIds(
  db: CatalogDb,
  level: QueryLevel,
  plan: Exclude<Plan, { kind: 'newest' }>,
  stats: QueryStats,
  stopped: () => boolean,
  rememberedMax: number,
  after: QueryCursor | undefined,
): AsyncGenerator<Candidate> {
  if (plan.kind === 'nothing') return;
  const description = plan.description;
  if (plan.kind === 'instances') {
    const first = after?.type === 'listed' ? after.index + 1 : 0;
    for (const [index, id] of plan.sopInstanceUids.entries()) if (index >= first) yield { id, cursor: { type: 'listed', plan: description, index } };
    return;
  }
  const start = after?.type === 'indexed' ? after : undefined;
  const seen = new Set<string>();
  let pending: Candidate | undefined;
  for (const [rangeIndex, prefix] of plan.prefixes.entries()) {
    if (start !== undefined && rangeIndex < start.rangeIndex) continue;
    const resumedHere = start?.rangeIndex === rangeIndex;
    // From the cursor's entity's first key on, passing the rest of its run.
    let previous: string | undefined = resumedHere ? start.entityId : undefined;
    const range = resumedHere ? { gte: start.key, lt: (typeof prefix === 'string' ? prefixRange(prefix) : prefix).lt } : prefix;
    for await (const indexed of scanIndex(db, range, stats)) {
      if (stopped()) return;
      const id = entityIdAt(level, indexed);
      if (id === undefined) continue;
      if (id === previous) {
        if (pending?.run !== undefined) pending.run.lastKey = indexed.key;
        continue;
      }
      previous = id;
      if (pending !== undefined) yield pending;
      pending = undefined;
      const cursor: QueryCursor = { type: 'indexed', plan: description, rangeIndex, key: indexed.key, entityId: id };
      if (!plan.contiguous) {
        if (seen.has(id)) continue;
        const remembered = seen.size < rememberedMax;
        if (remembered) {
          seen.add(id);
          stats.candidateIdsRemembered = Math.max(stats.candidateIdsRemembered, seen.size);
        }
        // Resumed, an entity may have been met before the cursor: its own keys tell (metFirstIn), once.
        if (!remembered || start !== undefined) {
          // Yielded once the run has ended: the entity's first key in the plan may lie anywhere in it.
          pending = { id, run: { rangeIndex, firstKey: indexed.key, lastKey: indexed.key }, cursor };
          continue;
        }
      }
      yield { id, cursor };
    }
    if (pending !== undefined) yield pending;
    pending = undefined;
  }
}

/**
 * Whether `run` is where the scan meets the entity of `entries` first: the run holding the first of their
 * index keys in the plan's ranges, in scan order. An entity none of whose entries has a key there (index keys
 * left stale) is read at every run, as the entries decide whether it matches. Exact for an archive that does
 * not change during the scan; an instance stored meanwhile under a key the scan had passed can hide its
 * entity from this search (past candidateIdsRememberedMax ids only).
 */
function metFirstIn(ranges: ScanRanges, run: ScanRun, entries: Iterable<CatalogEntry>): boolean {
  let first: { rangeIndex: number; key: string } | undefined;
  for (const entry of entries) {
    for (const key of catalogKeysOf(entry)) {
      const rangeIndex = ranges.findIndex((range) => key >= range.gte && key < range.lt);
      if (rangeIndex < 0) continue;
      if (first === undefined || rangeIndex < first.rangeIndex || (rangeIndex === first.rangeIndex && key < first.key)) first = { rangeIndex, key };
    }
  }
  return first === undefined || (first.rangeIndex === run.rangeIndex && first.key >= run.firstKey && first.key <= run.lastKey);
}

/**
 * Matches a search still has to pass before its first response; `unread`: every entity that has an instance
 * matches, so a full scan may pass one on its index key (and one entry) alone, without yielding it.
 */
interface SkipBudget {
  remaining: number;
  readonly unread: boolean;
}

/** The SOPInstanceUID of the first index key of a candidate's run (its cursor's key), or undefined. */
function firstInstanceOf(candidate: Candidate): string | undefined {
  return candidate.cursor.type === 'indexed' ? parseIndexKey(candidate.cursor.key)?.sopInstanceUid : undefined;
}

/** Loaded candidate entities: for IMAGE one entry each (read in batches), otherwise the whole entity. */
async function* candidateEntities(
  db: CatalogDb,
  level: QueryLevel,
  plan: Plan,
  stats: QueryStats,
  stopped: () => boolean,
  rememberedMax: number,
  after: QueryCursor | undefined,
  skip: SkipBudget,
): AsyncGenerator<CandidateEntity> {
  if (plan.kind === 'newest') {
    if (level === 'IMAGE') throw new Error('a newest-index plan is for STUDY and PATIENT level only');
    yield* newestMatchingEntities(db, level, plan, stats, stopped, after?.type === 'newest' ? after.indexedId : undefined);
    return;
  }
  // A full scan of the level names each entity once, in order, with no run to check: one to skip is passed unread.
  const passUnread = (): boolean => skip.unread && skip.remaining > 0 && plan.kind === 'prefixes' && plan.contiguous;
  // Computed once: only candidates met past the remembered ids (those with a run) are checked against them.
  const ranges = scanRangesOf(plan);
  if (level !== 'IMAGE') {
    const loaded = async function* ({ id, run, cursor }: Candidate): AsyncGenerator<CandidateEntity> {
      const entries: CatalogEntry[] = [];
      const aggregate = await loadAggregate(db, level, id, true, stats, undefined, run === undefined ? undefined : (entry) => entries.push(entry));
      if (run !== undefined && !metFirstIn(ranges, run, entries)) return;
      if (aggregate.latest) yield { aggregate, cursor };
    };
    // Candidates to pass: the entry of each one's first index key says it has an instance (read in batches,
    // one field of each: decoding whole entries was most of a cold deep page).
    let toPass: Candidate[] = [];
    const pass = async function* (): AsyncGenerator<CandidateEntity> {
      // Called before every candidate not passed: with none held, no await per entity.
      if (toPass.length === 0) return;
      const records = await getCatalogEntryRecords(db, toPass.map((candidate) => firstInstanceOf(candidate) ?? ''));
      for (const [i, candidate] of toPass.entries()) {
        const record = records[i];
        if (record !== undefined) stats.entryFieldsRead++;
        if (skip.remaining > 0 && record !== undefined && recordBelongsTo(level, candidate.id, record)) {
          skip.remaining--;
          stats.matchesPassedUnread++;
          continue;
        }
        // A stale first key: the entity's own entries decide, as without skipping.
        yield* loaded(candidate);
      }
      toPass = [];
    };
    // Matches to pass on a full scan: one key of each entity is enough, the rest of its keys are passed by a
    // seek (a cold deep QIDO-RS page read every instance's key before the offset). The scan goes on from the last one.
    let resumeAfter = after;
    if (passUnread() && plan.kind === 'prefixes' && typeof plan.prefixes[0] === 'string') {
      const isIndexKey = (_rest: string, key: string): boolean => parseIndexKey(key) !== undefined;
      const afterEntityId = after?.type === 'indexed' ? after.entityId : undefined;
      for await (const { entityId, key } of entityFirstKeys(db, plan.prefixes[0], isIndexKey, afterEntityId, PASS_KEYS_PER_READ, 'entity-filled-read')) {
        if (stopped()) return;
        stats.indexKeysRead++;
        const candidate: Candidate = { id: entityId, cursor: { type: 'indexed', plan: plan.description, rangeIndex: 0, key, entityId } };
        resumeAfter = candidate.cursor;
        toPass.push(candidate);
        if (toPass.length >= GET_MANY_BATCH_SIZE || toPass.length >= skip.remaining) yield* pass();
        if (!passUnread()) break;
      }
      yield* pass();
    }
    for await (const candidate of candidateIds(db, level, plan, stats, stopped, rememberedMax, resumeAfter)) {
      if (passUnread() && toPass.length < skip.remaining) {
        toPass.push(candidate);
        if (toPass.length >= GET_MANY_BATCH_SIZE || toPass.length >= skip.remaining) yield* pass();
        continue;
      }
      yield* pass();
      yield* loaded(candidate);
    }
    yield* pass();
    return;
  }
  let batch: Candidate[] = [];
  const emit = async function* (): AsyncGenerator<CandidateEntity> {
    // Not readEntries, which drops missing entries: each entry must stay beside the candidate (and run) it was read for.
    const entries = await getCatalogEntries(db, batch.map((candidate) => candidate.id));
    for (const [i, candidate] of batch.entries()) {
      const entry = entries[i];
      if (entry === undefined) continue; // index key without entry (being deleted): skip
      stats.entriesRead++;
      if (candidate.run !== undefined && !metFirstIn(ranges, candidate.run, [entry])) continue;
      const aggregate = createAggregate();
      addInstance(aggregate, entry);
      yield { aggregate, cursor: candidate.cursor };
    }
    batch = [];
  };
  for await (const candidate of candidateIds(db, level, plan, stats, stopped, rememberedMax, after)) {
    // The scan's own key c!i!<uid> says the entry is there: nothing else decides a match to pass.
    if (batch.length === 0 && passUnread() && plan.kind === 'prefixes' && plan.prefixes[0] === CATALOG_ENTRY_PREFIX) {
      skip.remaining--;
      stats.matchesPassedUnread++;
      continue;
    }
    batch.push(candidate);
    if (batch.length >= GET_MANY_BATCH_SIZE) yield* emit();
  }
  yield* emit();
}

/**
 * The entities of a newest-index plan whose newest entry matches its checked keys, each read whole. An
 * index key that its entry does not confirm (stale: the entry changed since) gets its entity read whole
 * too, so that respond() decides as it would without the index.
 */
async function* newestMatchingEntities(
  db: CatalogDb,
  level: Exclude<QueryLevel, 'IMAGE'>,
  plan: Extract<Plan, { kind: 'newest' }>,
  stats: QueryStats,
  stopped: () => boolean,
  afterIndexedId: string | undefined,
): AsyncGenerator<CandidateEntity> {
  let batch: NewestInstance[] = [];
  // At STUDY level the index names each study's part under each PatientID (contiguous per study): the
  // study is examined whole when any part's newest entry matches, once.
  const entityOf = (indexedId: string): string => (level === 'STUDY' ? indexedId.slice(0, indexedId.indexOf(':')) : indexedId);
  const indexedIdOf = (entry: CatalogEntry): string => (level === 'STUDY' ? studyPatientId(entry.studyInstanceUid, entry.patientId) : entityIdOf(level, entry));
  // Resumed: the cursor's entity (every part of it, at STUDY level) was examined.
  let lastExamined: string | undefined = afterIndexedId === undefined ? undefined : entityOf(afterIndexedId);
  const emit = async function* (): AsyncGenerator<CandidateEntity> {
    const entries = await getCatalogEntries(db, batch.map((newest) => newest.sopInstanceUid));
    for (const [i, newest] of batch.entries()) {
      const entityId = entityOf(newest.entityId);
      if (entityId === lastExamined) continue;
      const entry = entries[i];
      if (entry !== undefined) stats.entriesRead++;
      const confirmed = entry !== undefined && indexedIdOf(entry) === newest.entityId && newestIndexAge(entry) === newest.age;
      if (confirmed && !mayMatchNewestAttributes(plan.checkedKeys, attributesByTag(entry))) continue;
      lastExamined = entityId;
      const aggregate = await loadAggregate(db, level, entityId, true, stats);
      if (aggregate.latest) yield { aggregate, cursor: { type: 'newest', plan: plan.description, indexedId: newest.entityId } };
    }
    batch = [];
  };
  // Resumed, the index is read from the entity after the cursor's (a seek: the keys before it are not read at all).
  for await (const newest of newestInstances(db, plan.prefix, afterIndexedId)) {
    if (stopped()) return;
    stats.indexKeysRead++;
    batch.push(newest);
    if (batch.length >= GET_MANY_BATCH_SIZE) yield* emit();
  }
  yield* emit();
}

// ---------------------------------------------------------------------------------------------------
// Matching entities and building responses

/** Whether an entity whose newest instance has these attributes may match every one of `keys` (not computed): one it has no value for may come from an older instance. */
function mayMatchNewestAttributes(keys: CompiledKey[], stored: Map<Tag, DicomElement>): boolean {
  const characterSet = stored.get(Tags.SpecificCharacterSet)?.value;
  const timezone = stored.get(Tags.TimezoneOffsetFromUTC)?.value;
  return keys.every((key) => {
    const value = stored.get(key.element.tag)?.value;
    return value === undefined || value === '' || key.matcher.matches(value, characterSet, timezone);
  });
}

class UpperAggregateCache {
  private readonly cache = new Map<string, EntityAggregate>();
  constructor(
    private readonly db: CatalogDb,
    private readonly stats: QueryStats,
  ) {}

  /**
   * The entity `id` at `level`, or only its instances of `patientIds` (see narrowToMatchedPatients), or of
   * `studyInstanceUids` (a series, see narrowToMatchedStudies).
   */
  async get(
    level: Exclude<QueryLevel, 'IMAGE'>,
    id: string,
    withEntries: boolean,
    patientIds?: ReadonlySet<string>,
    studyInstanceUids?: ReadonlySet<string>,
  ): Promise<EntityAggregate> {
    const setKey = (values: ReadonlySet<string> | undefined): string => (values === undefined ? '' : JSON.stringify([...values].sort()));
    const cacheKeyOf = (entries: boolean): string => `${level}|${entries}|${id}|${setKey(patientIds)}|${setKey(studyInstanceUids)}`;
    const cacheKey = cacheKeyOf(withEntries);
    let aggregate = this.cache.get(cacheKey);
    if (!aggregate) {
      if (this.cache.size >= 1000) this.cache.clear();
      // Read with its entries, the entity's keys give its key counts too: an instance's study was scanned twice
      // (ModalitiesInStudy, then NumberOfStudyRelatedSeries/Instances) for every QIDO-RS /instances result.
      const keysCounted = withEntries && patientIds === undefined && studyInstanceUids === undefined && !this.cache.has(cacheKeyOf(false)) ? createAggregate() : undefined;
      aggregate = await loadAggregate(this.db, level, id, withEntries, this.stats, patientIds, undefined, keysCounted, studyInstanceUids);
      this.cache.set(cacheKey, aggregate);
      if (keysCounted !== undefined) this.cache.set(cacheKeyOf(false), keysCounted);
    }
    return aggregate;
  }
}

function entityIdOf(level: Exclude<QueryLevel, 'IMAGE'>, entry: CatalogEntry): string {
  if (level === 'PATIENT') return encodeKeyText(entry.patientId);
  return level === 'STUDY' ? entry.studyInstanceUid : entry.seriesInstanceUid;
}

async function computedValueOf(
  computed: ComputedAttribute,
  entityLevel: QueryLevel,
  aggregate: EntityAggregate,
  upper: UpperAggregateCache,
  patientIds: ReadonlySet<string> | undefined,
): Promise<string> {
  if (computed.level === 'ANY' || computed.level === entityLevel) return computed.compute(aggregate);
  const upperAggregate = await upper.get(computed.level, entityIdOf(computed.level, aggregate.latest!), computed.needsEntries, patientIds);
  return computed.compute(upperAggregate);
}

/**
 * Which of an entity's several `values` (its PatientIDs, a series' studies) the matching key on `tag` takes:
 * null when none, undefined when there is no such key, the entity holds fewer than two values, or all match.
 */
function valuesMatched(keys: CompiledKey[], tag: Tag, values: ReadonlySet<string>, characterSet?: string): Set<string> | undefined | null {
  if (values.size < 2) return undefined;
  const key = keys.find((k) => k.element.tag === tag && k.isMatching && !k.computed);
  if (key === undefined) return undefined;
  const matched = new Set([...values].filter((value) => key.matcher.matches(value, characterSet)));
  if (matched.size === 0) return null;
  return matched.size === values.size ? undefined : matched;
}

/**
 * A study or series filed under several PatientIDs (seen in real data: merges, registration errors) that a
 * PatientID key matched for some of them: the part of it that belongs to those patients, so that the
 * response names one patient with that patient's own attributes (not those of another patient's latest
 * instance). undefined when no narrowing applies; null when no PatientID of the entity matches.
 */
async function narrowToMatchedPatients(
  level: QueryLevel,
  keys: CompiledKey[],
  aggregate: EntityAggregate,
  characterSet: string | undefined,
  upper: UpperAggregateCache,
  studyInstanceUids: ReadonlySet<string> | undefined,
): Promise<{ entity: EntityAggregate; patientIds: ReadonlySet<string> } | undefined | null> {
  if (level === 'IMAGE') return undefined;
  const matched = valuesMatched(keys, Tags.PatientID, aggregate.patientIds, characterSet);
  if (matched === null || matched === undefined) return matched;
  const entity = await upper.get(level, entityIdOf(level, aggregate.latest!), true, matched, studyInstanceUids);
  return entity.latest === undefined ? null : { entity, patientIds: matched };
}

/**
 * A series whose SeriesInstanceUID is found under several studies (a modality or anonymiser that reused it),
 * queried with a StudyInstanceUID key: the part of it in the matched studies, so that a series listed under
 * a study names that study and counts the instances a retrieve with the same keys delivers (hunt 192: the
 * series was answered with its newest instance's study, so it was missing from the other study's series and
 * counted the other study's instances in this one's). undefined when no narrowing applies; null when no
 * study of the series matches.
 */
async function narrowToMatchedStudies(
  level: QueryLevel,
  keys: CompiledKey[],
  aggregate: EntityAggregate,
  upper: UpperAggregateCache,
): Promise<{ entity: EntityAggregate; studyInstanceUids: ReadonlySet<string> } | undefined | null> {
  if (level !== 'SERIES') return undefined;
  const matched = valuesMatched(keys, Tags.StudyInstanceUID, aggregate.studyInstanceUids);
  if (matched === null || matched === undefined) return matched;
  const entity = await upper.get(level, entityIdOf(level, aggregate.latest!), true, undefined, matched);
  return entity.latest === undefined ? null : { entity, studyInstanceUids: matched };
}

/** An entity's PatientIDs as the indexes tell patients apart (padding removed), each with the values it stands for. */
function patientParts(aggregate: EntityAggregate): Map<string, Set<string>> {
  const parts = new Map<string, Set<string>>();
  for (const raw of aggregate.patientIds) {
    const patientId = normalizeIdentifierText(raw);
    const values = parts.get(patientId) ?? new Set<string>();
    parts.set(patientId, values.add(raw));
  }
  return parts;
}

/**
 * Whether `stored` (an entity's attributes) matches every key that is not computed. Above IMAGE level an
 * entity may hold instances of several PatientIDs: a PatientID key matches any of them, and the response
 * then names the one that did (`stored` is updated).
 */
function matchesStoredKeys(keys: CompiledKey[], stored: Map<Tag, DicomElement>, aggregate: EntityAggregate): boolean {
  const storedCharacterSet = stored.get(Tags.SpecificCharacterSet)?.value;
  const storedTimezone = stored.get(Tags.TimezoneOffsetFromUTC)?.value;
  for (const key of keys) {
    if (key.computed || !key.isMatching) continue;
    if (key.matcher.matches(stored.get(key.element.tag)?.value, storedCharacterSet, storedTimezone)) continue;
    const otherPatientId = key.element.tag === Tags.PatientID ? [...aggregate.patientIds].find((id) => key.matcher.matches(id, storedCharacterSet)) : undefined;
    if (otherPatientId === undefined) return false;
    stored.set(Tags.PatientID, { tag: Tags.PatientID, vr: 'LO', value: otherPatientId });
  }
  return true;
}

/**
 * A study or series filed under several PatientIDs matches by any one patient's part too (its own newest
 * instance's attributes): `RA^ALPHA` finds the study whose later instances are RB's (black-box helper 39;
 * Orthanc lists it under each patient). The attributes of the first other part that matches, in PatientID
 * order; the caller keeps the whole entity's counts, what a retrieve with the same keys (no PatientID)
 * delivers. undefined for other levels, an entity of one patient, or no part matching.
 */
async function firstMatchingPatientPart(
  level: QueryLevel,
  keys: CompiledKey[],
  whole: EntityAggregate,
  upper: UpperAggregateCache,
  studyInstanceUids: ReadonlySet<string> | undefined,
): Promise<Map<Tag, DicomElement> | undefined> {
  if ((level !== 'STUDY' && level !== 'SERIES') || whole.patientIds.size < 2) return undefined;
  const parts = patientParts(whole);
  if (parts.size < 2) return undefined;
  const newestPart = normalizeIdentifierText(whole.latest!.patientId);
  for (const [patientId, patients] of [...parts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (patientId === newestPart) continue;
    const part = await upper.get(level, entityIdOf(level, whole.latest!), true, patients, studyInstanceUids);
    if (part.latest === undefined) continue;
    const partStored = entityAttributes(part);
    if (matchesStoredKeys(keys, partStored, part)) return partStored;
  }
  return undefined;
}

/**
 * The response identifier for an entity, or undefined if it does not match every key. In Patient Root a
 * study or series narrowed to the matched patients is counted as that part (what a C-GET with the same
 * keys retrieves); in Study Root the PatientID is an attribute of the study, which is counted whole.
 */
async function respond(
  root: QueryRoot,
  level: QueryLevel,
  keys: CompiledKey[],
  entity: EntityAggregate,
  upper: UpperAggregateCache,
): Promise<DicomElement[] | undefined> {
  const studyPart = await narrowToMatchedStudies(level, keys, entity, upper);
  if (studyPart === null) return undefined;
  const whole = studyPart?.entity ?? entity;
  const studyInstanceUids = studyPart?.studyInstanceUids;
  const wholeStored = entityAttributes(whole);
  const narrowed = await narrowToMatchedPatients(level, keys, whole, wholeStored.get(Tags.SpecificCharacterSet)?.value, upper, studyInstanceUids);
  if (narrowed === null) return undefined;
  const aggregate = narrowed !== undefined && root === 'PATIENT' ? narrowed.entity : whole;
  const countedPatients = narrowed !== undefined && root === 'PATIENT' ? narrowed.patientIds : undefined;
  let stored = narrowed === undefined ? wholeStored : entityAttributes(narrowed.entity);
  if (!matchesStoredKeys(keys, stored, aggregate)) {
    // Not narrowed to a patient by its keys: one patient's part of the entity may match instead.
    const partStored = narrowed === undefined ? await firstMatchingPatientPart(level, keys, whole, upper, studyInstanceUids) : undefined;
    if (partStored === undefined) return undefined;
    stored = partStored;
  }
  const storedCharacterSet = stored.get(Tags.SpecificCharacterSet)?.value;
  const computedValues = new Map<Tag, string>();
  for (const key of keys) {
    if (!key.computed) continue;
    const value = await computedValueOf(key.computed, level, aggregate, upper, countedPatients);
    if (key.isMatching && !key.matcher.matches(value)) return undefined;
    computedValues.set(key.element.tag, value);
  }
  const response: DicomElement[] = keys.map(({ element, returnedEmpty }) => {
    if (returnedEmpty) return { tag: element.tag, vr: element.vr, value: UNDECODED_VRS.has(element.vr) ? undefined : '' };
    const storedElement = stored.get(element.tag);
    const vr = element.vr === 'UN' ? (storedElement?.vr ?? 'UN') : element.vr;
    const computedValue = computedValues.get(element.tag);
    if (computedValue !== undefined) return { tag: element.tag, vr, value: computedValue };
    if (vr === 'SQ') return { tag: element.tag, vr, value: undefined }; // sequences: returned empty
    const value = storedElement?.value ?? (UNDECODED_VRS.has(vr) ? undefined : '');
    return { tag: element.tag, vr, value };
  });
  response.push({ tag: Tags.QueryRetrieveLevel, vr: 'CS', value: level });
  const beyondAscii = response.some((element) => element.value !== undefined && /[\x1b\x80-\xff]/.test(element.value));
  const askedCharacterSet = response.findIndex((element) => element.tag === Tags.SpecificCharacterSet);
  if (askedCharacterSet < 0) {
    if (beyondAscii && storedCharacterSet) response.push({ tag: Tags.SpecificCharacterSet, vr: 'CS', value: storedCharacterSet });
  } else if (!beyondAscii) {
    // It names the response's own encoding (PS3.4 C.4.1.1.3.2): plain ASCII needs none. An instance's
    // multi-valued set made Orthanc 1.10 fail the whole query over ASCII answers (helper 47).
    response[askedCharacterSet] = { tag: Tags.SpecificCharacterSet, vr: 'CS', value: '' };
  }
  return response.sort((a, b) => a.tag - b.tag);
}

/**
 * C-FIND: yields one response identifier per matching entity at the requested level: the requested keys
 * (same tags and VRs; values from the entity, zero-length when unknown; computed attributes computed),
 * plus QueryRetrieveLevel (and Specific Character Set where values need it), in ascending tag order.
 * Throws QueryError (with the status) for a request that validateQuery refuses.
 */
export async function* findMatches(db: CatalogDb, request: QueryRequest, options: FindOptions = {}): AsyncGenerator<DicomElement[]> {
  for await (const { identifier } of findMatchesWithCursors(db, request, options)) yield identifier;
}

/**
 * findMatches, each match with the cursor a search of the same request resumes after it from
 * (`options.after`): the matches that follow it, in the same order, reading only from there.
 */
export async function* findMatchesWithCursors(
  db: CatalogDb,
  request: QueryRequest,
  options: FindOptions = {},
): AsyncGenerator<{ identifier: DicomElement[]; cursor: QueryCursor }> {
  const compiled = compileQuery(request);
  if (!compiled.ok) throw new QueryError('INVALID_QUERY', compiled);
  const stats = options.stats ?? createQueryStats();
  const limit = options.limit !== undefined && options.limit > 0 ? options.limit : Infinity;
  const plan = planQuery(request.level, compiled.keys, options.searchIndexes ?? true);
  stats.plan = plan.description;
  const upper = new UpperAggregateCache(db, stats);
  const stopped = options.stopped ?? (() => false);
  let responses = 0;
  const after = resumeCursorOf(plan, options.after);
  const rememberedMax = options.candidateIdsRememberedMax ?? candidateIdsRememberedMax;
  // Without a key to match, respond() answers every entity that has an instance: a match to skip needs no response.
  const everyEntityMatches = compiled.keys.every((key) => !key.isMatching);
  const skip: SkipBudget = { remaining: options.skip !== undefined && options.skip > 0 ? options.skip : 0, unread: everyEntityMatches };
  for await (const { aggregate, cursor } of candidateEntities(db, request.level, plan, stats, stopped, rememberedMax, after, skip)) {
    stats.entitiesExamined++;
    if (everyEntityMatches && skip.remaining > 0) {
      skip.remaining--;
      continue;
    }
    const response = await respond(request.root, request.level, compiled.keys, aggregate, upper);
    if (stopped()) return;
    if (!response) continue;
    if (skip.remaining > 0) {
      skip.remaining--;
      continue;
    }
    yield { identifier: response, cursor };
    if (++responses >= limit) return;
  }
}

// ---------------------------------------------------------------------------------------------------
// C-GET / C-MOVE

function uniqueKeyValues(request: QueryRequest, tag: Tag): string[] | undefined {
  const element = request.keys.find((key) => key.tag === tag);
  if (element?.value === undefined) return undefined;
  const vr = tag === Tags.PatientID ? 'LO' : 'UI';
  const characterSet = request.keys.find((key) => key.tag === Tags.SpecificCharacterSet)?.value;
  const values = splitValueBytes(normalizeValue(vr, element.value), characterSet)
    .map((value) => normalizeValue(vr, value))
    .filter((value) => value !== '');
  return values.length === 0 ? undefined : [...new Set(values)];
}

function invalidUniqueValue(tag: Tag, value: string): boolean {
  if (tag === Tags.PatientID) return value.includes('*') || value.includes('?');
  return !isValidUid(value);
}

/** Printable ASCII: the same bytes in every character set, so such a PatientID key can be compared byte for byte. */
const PRINTABLE_ASCII = /^[ -~]*$/;

/**
 * A Patient Root retrieve's PatientID key as C-FIND matches it: as characters, the key decoded with the
 * identifier's Specific Character Set and each instance's PatientID with its own. Compared byte for byte, a
 * Latin-1 key missed the patient whose PatientID a UTF-8 instance holds, which the C-FIND with the same key
 * had just listed, and the retrieve answered Success with no sub-operation (hunt 143).
 */
function patientIdMatcherOf(request: QueryRequest): ValueMatcher | undefined {
  const element = request.keys.find((key) => key.tag === Tags.PatientID);
  if (element?.value === undefined || uniqueKeyValues(request, Tags.PatientID) === undefined) return undefined;
  const characterSet = request.keys.find((key) => key.tag === Tags.SpecificCharacterSet)?.value;
  const compiled = compileKeyMatcher('LO', element.value, characterSet);
  return compiled.ok ? compiled.matcher : undefined;
}

function characterSetOfEntry(entry: CatalogEntry): string | undefined {
  return entry.attributes.find((element) => element.tag === Tags.SpecificCharacterSet)?.value;
}

/**
 * The stored PatientIDs (their bytes, as the patient index keys them) a PATIENT-level retrieve names: a
 * printable ASCII value is its own; any other is looked for as a PATIENT-level C-FIND with that key looks
 * for it (patientIdMatcherOf).
 */
async function storedPatientIds(db: CatalogDb, request: QueryRequest, values: readonly string[]): Promise<string[]> {
  const ids = new Set(values.filter((value) => PRINTABLE_ASCII.test(value)));
  const characterSetKeys = request.keys.filter((key) => key.tag === Tags.SpecificCharacterSet);
  for (const value of values.filter((value) => !PRINTABLE_ASCII.test(value))) {
    const search: QueryRequest = { root: 'PATIENT', level: 'PATIENT', keys: [...characterSetKeys, { tag: Tags.PatientID, vr: 'LO', value }] };
    for await (const identifier of findMatches(db, search)) {
      const stored = identifier.find((element) => element.tag === Tags.PatientID)?.value;
      if (stored !== undefined && stored !== '') ids.add(stored);
    }
  }
  return [...ids];
}

/**
 * A PATIENT-level C-MOVE/C-GET on a Study Root context is served as Patient Root: Orthanc 1.10 sends its
 * patient-level retrieves that way (it proposes no Patient Root MOVE), and Orthanc as an archive accepts
 * them (helper 47). PS3.4 C.6.2 would answer 0xA900; a PATIENT-level C-FIND on Study Root still is.
 */
function retrieveModelOf(request: QueryRequest): QueryRequest {
  return request.root === 'STUDY' && request.level === 'PATIENT' ? { ...request, root: 'PATIENT' } : request;
}

/** The SOP Instance UIDs an IMAGE-level retrieve names (its unique key), or undefined at any other level. */
export function retrieveInstanceUids(asked: QueryRequest): string[] | undefined {
  const request = retrieveModelOf(asked);
  return request.level === 'IMAGE' ? uniqueKeyValues(request, UNIQUE_KEY_OF_LEVEL.IMAGE) : undefined;
}

/**
 * Checks a C-GET/C-MOVE identifier (PS3.4 C.4.2.2.1): the level's unique key must be present and non-empty
 * (a list for UIDs); the unique keys of upper levels may be present; no wildcard anywhere in them.
 */
export function validateRetrieve(asked: QueryRequest): QueryValidation {
  const request = retrieveModelOf(asked);
  const rootAndLevel = checkRootAndLevel(request);
  if (!rootAndLevel.ok) return rootAndLevel;
  const uniqueTag = UNIQUE_KEY_OF_LEVEL[request.level];
  if (!uniqueKeyValues(request, uniqueTag)) {
    return {
      ok: false,
      status: QueryStatus.IdentifierDoesNotMatchSopClass,
      comment: `a ${request.level}-level retrieve needs a value for ${formatTag(uniqueTag)}`,
      offendingTags: [uniqueTag],
    };
  }
  // The unique keys of this root's levels only: a PatientID in a Study Root retrieve is ignored, whatever it holds.
  for (const level of QUERY_LEVELS_OF_ROOT[request.root]) {
    if (LEVEL_DEPTH[level] > LEVEL_DEPTH[request.level]) break;
    const tag = UNIQUE_KEY_OF_LEVEL[level];
    const invalid = uniqueKeyValues(request, tag)?.find((value) => invalidUniqueValue(tag, value));
    if (invalid !== undefined) {
      return {
        ok: false,
        status: QueryStatus.InvalidUniqueKey,
        comment: `unique key ${formatTag(tag)} holds an invalid value or a wildcard: "${invalid}"`,
        offendingTags: [tag],
      };
    }
  }
  return { ok: true };
}

/**
 * C-GET/C-MOVE: every instance selected by the identifier's unique keys, each once. Upper-level unique keys
 * of the root's model, when present, must agree with the instance. Other keys are ignored. Throws QueryError for an identifier
 * that validateRetrieve refuses (never "everything" for a missing key).
 */
export async function* resolveRetrieve(
  db: CatalogDb,
  asked: QueryRequest,
  options: { stats?: QueryStats } = {},
): AsyncGenerator<CatalogEntry> {
  const request = retrieveModelOf(asked);
  const validation = validateRetrieve(request);
  if (!validation.ok) throw new QueryError('INVALID_RETRIEVE', validation);
  const stats = options.stats ?? createQueryStats();
  const level = request.level;
  const keyValues = uniqueKeyValues(request, UNIQUE_KEY_OF_LEVEL[level])!;
  const ids = level === 'PATIENT' ? await storedPatientIds(db, request, keyValues) : keyValues;

  const filters: Array<(entry: CatalogEntry) => boolean> = [];
  const upperFilter = (tag: Tag, field: (entry: CatalogEntry) => string): void => {
    const values = uniqueKeyValues(request, tag);
    if (values) filters.push((entry) => values.includes(normalizeValue('LO', field(entry))));
  };
  // Study Root has no patient level: PatientID is not one of its retrieve keys (PS3.4 C.4.2.1.4.1), and
  // filtering by it sent part of a study filed under two PatientIDs with Success (helper 47).
  const patientIdMatcher = request.root === 'PATIENT' && LEVEL_DEPTH[level] > LEVEL_DEPTH.PATIENT ? patientIdMatcherOf(request) : undefined;
  if (patientIdMatcher) filters.push((entry) => patientIdMatcher.matches(entry.patientId, characterSetOfEntry(entry)));
  if (LEVEL_DEPTH[level] > LEVEL_DEPTH.STUDY) upperFilter(Tags.StudyInstanceUID, (entry) => entry.studyInstanceUid);
  if (LEVEL_DEPTH[level] > LEVEL_DEPTH.SERIES) upperFilter(Tags.SeriesInstanceUID, (entry) => entry.seriesInstanceUid);

  const seen = new Set<string>();
  const accept = (entry: CatalogEntry, id: string, entityLevel: QueryLevel): boolean => {
    const entityId = entityLevel === 'PATIENT' ? encodeKeyText(id) : id;
    if (!entryBelongsTo(entityLevel, entityId, entry) || seen.has(entry.sopInstanceUid)) return false;
    if (!filters.every((filter) => filter(entry))) return false;
    seen.add(entry.sopInstanceUid);
    return true;
  };

  if (level === 'IMAGE') {
    for (let start = 0; start < ids.length; start += GET_MANY_BATCH_SIZE) {
      const batch = ids.slice(start, start + GET_MANY_BATCH_SIZE);
      for (const entry of await readEntries(db, batch, stats)) {
        if (batch.includes(entry.sopInstanceUid) && accept(entry, entry.sopInstanceUid, 'IMAGE')) yield entry;
      }
    }
    stats.plan = 'direct c!i! (SOPInstanceUID)';
    return;
  }
  const [prefixOf, indexName] =
    level === 'PATIENT'
      ? [patientIndexPrefix, PATIENT_INDEX_PREFIX]
      : level === 'STUDY'
        ? [studyIndexPrefix, STUDY_INDEX_PREFIX]
        : [seriesIndexPrefix, SERIES_INDEX_PREFIX];
  stats.plan = `index ${indexName}`;
  for (const id of ids) {
    let pending: string[] = [];
    const flush = async function* (): AsyncGenerator<CatalogEntry> {
      for (const entry of await readEntries(db, pending, stats)) if (accept(entry, id, level)) yield entry;
      pending = [];
    };
    for await (const indexed of scanIndex(db, prefixOf(id), stats)) {
      pending.push(indexed.sopInstanceUid);
      if (pending.length >= GET_MANY_BATCH_SIZE) yield* flush();
    }
    yield* flush();
  }
}
