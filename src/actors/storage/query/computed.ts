/**
 * What a C-FIND response needs about one entity (patient, study, series or instance) beyond the stored
 * attributes: the counts and summaries of PS3.4 C.3 (Number of ... Related ..., Modalities in Study,
 * SOP Classes in Study), gathered while its instances are read. Pure.
 */
import type { DicomElement, Tag } from '../../../codec/dicom-types.ts';
import type { CatalogEntry } from '../catalog-types.ts';
import { isNewerInstance } from '../catalog.ts';
import { normalizeValue } from './matching.ts';
import { Tags } from '../../../codec/dictionary.ts';
import type { QueryLevel } from './attribute-levels.ts';

export interface EntityAggregate {
  /**
   * The most recently stored instance (largest storedAtMs; of those stored in one millisecond, the smallest
   * SOPInstanceUID): the source of the entity's attributes, the one the catalog's newest index names first.
   */
  latest: CatalogEntry | undefined;
  studyInstanceUids: Set<string>;
  seriesInstanceUids: Set<string>;
  instanceCount: number;
  /** Distinct non-empty Modality values (only when entries were read, not from keys alone). */
  modalities: Set<string>;
  sopClassUids: Set<string>;
  /**
   * Every PatientID among the entity's instances: a study filed under two IDs (seen in real data) must
   * be found from either patient, not only from the ID of its latest instance.
   */
  patientIds: Set<string>;
  /**
   * For each attribute, the value of the newest instance that has one (not empty): a later instance that
   * leaves an attribute out (a key object without the birth date) does not blank it for the entity.
   */
  newestValues: Map<Tag, { element: DicomElement; entry: CatalogEntry }>;
}

export function createAggregate(): EntityAggregate {
  return {
    latest: undefined,
    newestValues: new Map(),
    studyInstanceUids: new Set(),
    seriesInstanceUids: new Set(),
    instanceCount: 0,
    modalities: new Set(),
    sopClassUids: new Set(),
    patientIds: new Set(),
  };
}

/** Counts one instance known from an index key only (no entry read). */
export function addInstanceKey(aggregate: EntityAggregate, studyInstanceUid: string, seriesInstanceUid: string): void {
  aggregate.studyInstanceUids.add(studyInstanceUid);
  aggregate.seriesInstanceUids.add(seriesInstanceUid);
  aggregate.instanceCount++;
}

export function addInstance(aggregate: EntityAggregate, entry: CatalogEntry): void {
  addInstanceKey(aggregate, entry.studyInstanceUid, entry.seriesInstanceUid);
  aggregate.sopClassUids.add(entry.sopClassUid);
  aggregate.patientIds.add(entry.patientId);
  const modality = entry.attributes.find((element) => element.tag === Tags.Modality)?.value;
  if (modality !== undefined) {
    const normalized = normalizeValue('CS', modality);
    if (normalized !== '') aggregate.modalities.add(normalized);
  }
  if (aggregate.latest === undefined || isNewerInstance(entry, aggregate.latest)) aggregate.latest = entry;
  for (const element of entry.attributes) {
    if (element.value === undefined || element.value === '' || catalogFieldTags.has(element.tag)) continue;
    const known = aggregate.newestValues.get(element.tag);
    if (known === undefined || isNewerInstance(entry, known.entry)) aggregate.newestValues.set(element.tag, { element, entry });
  }
}

/** Attributes the catalog entry holds as fields (identity), and the character set: never taken from another instance. */
const catalogFieldTags: ReadonlySet<Tag> = new Set([Tags.SpecificCharacterSet, Tags.PatientID, Tags.StudyInstanceUID, Tags.SeriesInstanceUID, Tags.SOPInstanceUID, Tags.SOPClassUID]);

/**
 * An entity's attributes: its newest instance's, with those it lacks or has empty taken from the newest
 * instance that has them (an absent value is unknown, not changed: PS3.4 C.2.2.1.2's sense of zero length).
 * A value in another character set than the newest instance's is taken only when it is plain ASCII.
 */
export function entityAttributes(aggregate: EntityAggregate): Map<Tag, DicomElement> {
  const byTag = attributesByTag(aggregate.latest!);
  const characterSet = byTag.get(Tags.SpecificCharacterSet)?.value ?? '';
  for (const [tag, { element, entry }] of aggregate.newestValues) {
    const own = byTag.get(tag);
    if (own !== undefined && own.value !== undefined && own.value !== '') continue;
    const sameCharacterSet = (entry.attributes.find((e) => e.tag === Tags.SpecificCharacterSet)?.value ?? '') === characterSet;
    if (sameCharacterSet || !/[\x1b\x80-\xff]/.test(element.value!)) byTag.set(tag, element);
  }
  return byTag;
}

/** The attributes of an instance by tag; the catalog's own fields win over the attribute list. */
export function attributesByTag(entry: CatalogEntry): Map<Tag, DicomElement> {
  const byTag = new Map<Tag, DicomElement>();
  for (const element of entry.attributes) byTag.set(element.tag, element);
  const fields: Array<[Tag, string, string]> = [
    [Tags.PatientID, 'LO', entry.patientId],
    [Tags.StudyInstanceUID, 'UI', entry.studyInstanceUid],
    [Tags.SeriesInstanceUID, 'UI', entry.seriesInstanceUid],
    [Tags.SOPInstanceUID, 'UI', entry.sopInstanceUid],
    [Tags.SOPClassUID, 'UI', entry.sopClassUid],
  ];
  for (const [tag, vr, value] of fields) byTag.set(tag, { tag, vr: byTag.get(tag)?.vr ?? vr, value });
  return byTag;
}

export interface ComputedAttribute {
  /** The level of the entity the value describes (a study for ModalitiesInStudy). */
  level: Exclude<QueryLevel, 'IMAGE'> | 'ANY';
  /** Whether the value needs the entries (not only the index keys) of that entity. */
  needsEntries: boolean;
  compute(aggregate: EntityAggregate): string;
}

const sortedJoin = (values: Set<string>): string => [...values].sort().join('\\');

export const COMPUTED_ATTRIBUTES: ReadonlyMap<Tag, ComputedAttribute> = new Map<Tag, ComputedAttribute>([
  [Tags.NumberOfPatientRelatedStudies, { level: 'PATIENT', needsEntries: false, compute: (a) => String(a.studyInstanceUids.size) }],
  [Tags.NumberOfPatientRelatedSeries, { level: 'PATIENT', needsEntries: false, compute: (a) => String(a.seriesInstanceUids.size) }],
  [Tags.NumberOfPatientRelatedInstances, { level: 'PATIENT', needsEntries: false, compute: (a) => String(a.instanceCount) }],
  [Tags.NumberOfStudyRelatedSeries, { level: 'STUDY', needsEntries: false, compute: (a) => String(a.seriesInstanceUids.size) }],
  [Tags.NumberOfStudyRelatedInstances, { level: 'STUDY', needsEntries: false, compute: (a) => String(a.instanceCount) }],
  [Tags.ModalitiesInStudy, { level: 'STUDY', needsEntries: true, compute: (a) => sortedJoin(a.modalities) }],
  [Tags.SOPClassesInStudy, { level: 'STUDY', needsEntries: true, compute: (a) => sortedJoin(a.sopClassUids) }],
  [Tags.NumberOfSeriesRelatedInstances, { level: 'SERIES', needsEntries: false, compute: (a) => String(a.instanceCount) }],
  // Every cataloged instance has its bytes in the local store.
  [Tags.InstanceAvailability, { level: 'ANY', needsEntries: false, compute: () => 'ONLINE' }],
]);
