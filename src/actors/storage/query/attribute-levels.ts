/**
 * Which Query/Retrieve level an attribute belongs to (PS3.4 C.6.1.1 / C.6.2.1), for the few dozen
 * attributes that C-FIND SCUs commonly send, by their tags in the data dictionary (src/codec/dictionary.ts).
 * Anything not listed is an instance (IMAGE) attribute, except the special keys that are allowed at every
 * level (ANY).
 */
import type { Tag } from '../../../codec/dicom-types.ts';
import { Tags } from '../../../codec/dictionary.ts';

export type QueryRoot = 'PATIENT' | 'STUDY';
export type QueryLevel = 'PATIENT' | 'STUDY' | 'SERIES' | 'IMAGE';
export type AttributeLevel = QueryLevel | 'ANY';

export const QUERY_LEVELS_OF_ROOT: Readonly<Record<QueryRoot, readonly QueryLevel[]>> = {
  PATIENT: ['PATIENT', 'STUDY', 'SERIES', 'IMAGE'],
  STUDY: ['STUDY', 'SERIES', 'IMAGE'],
};

/** 0 = PATIENT ... 3 = IMAGE. */
export const LEVEL_DEPTH: Readonly<Record<QueryLevel, number>> = { PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3 };


/** The unique key of each level (PS3.4 C.6.1.1.1). */
/**
 * Required Keys (PS3.4 C.6.1.1, C.6.2.1) that an entity may hold with zero length: such a value is unknown,
 * and matching against it succeeds (C.2.2.1.2), so a search by date, accession number or series number
 * does not hide the studies, series and images whose value is not known. Not the patient's name and ID
 * (Required Keys at STUDY level in Study Root): a search for one patient must not list the studies of
 * unknown patients (a wrong-patient risk). See docs/conformance.md.
 */
export const REQUIRED_KEYS_MATCHING_UNKNOWN: ReadonlySet<Tag> = new Set<Tag>([
  Tags.StudyDate,
  Tags.StudyTime,
  Tags.AccessionNumber,
  Tags.StudyID,
  Tags.Modality,
  Tags.SeriesNumber,
  Tags.InstanceNumber,
]);

export const UNIQUE_KEY_OF_LEVEL: Readonly<Record<QueryLevel, Tag>> = {
  PATIENT: Tags.PatientID,
  STUDY: Tags.StudyInstanceUID,
  SERIES: Tags.SeriesInstanceUID,
  IMAGE: Tags.SOPInstanceUID,
};

const ANY_LEVEL_TAGS = new Set<Tag>([
  Tags.SpecificCharacterSet,
  Tags.QueryRetrieveLevel,
  Tags.RetrieveAETitle,
  Tags.InstanceAvailability,
  Tags.TimezoneOffsetFromUTC,
  0x00080053, // Query/Retrieve View
]);

const PATIENT_TAGS = new Set<Tag>([
  Tags.NumberOfPatientRelatedStudies,
  Tags.NumberOfPatientRelatedSeries,
  Tags.NumberOfPatientRelatedInstances,
]);

/** Group 0x0010 attributes that belong to the Patient Study module (study level), not to the patient. */
const STUDY_TAGS_IN_PATIENT_GROUP = new Set<Tag>([
  Tags.PatientAge,
  0x00101020, // Patient's Size
  0x00101030, // Patient's Weight
  0x00102180, // Occupation
  0x001021b0, // Additional Patient History
]);

const STUDY_TAGS = new Set<Tag>([
  Tags.StudyDate,
  Tags.StudyTime,
  Tags.AccessionNumber,
  0x00080051, // Issuer of Accession Number Sequence
  Tags.ModalitiesInStudy,
  Tags.SOPClassesInStudy,
  0x00080063, // Anatomic Regions in Study Code Sequence
  Tags.ReferringPhysicianName,
  Tags.StudyDescription,
  0x00081032, // Procedure Code Sequence
  0x00081048, // Physician(s) of Record
  0x00081060, // Name of Physician(s) Reading Study
  0x00081080, // Admitting Diagnoses Description
  Tags.StudyInstanceUID,
  Tags.StudyID,
  0x00201070, // Other Study Numbers
  Tags.NumberOfStudyRelatedSeries,
  Tags.NumberOfStudyRelatedInstances,
  0x00321032, // Requesting Physician
  0x00321060, // Requested Procedure Description
  0x00324000, // Study Comments
]);

const SERIES_TAGS = new Set<Tag>([
  Tags.SeriesDate,
  Tags.SeriesTime,
  Tags.Modality,
  0x00080070, // Manufacturer
  0x00080080, // Institution Name
  0x00081010, // Station Name
  Tags.SeriesDescription,
  0x00081040, // Institutional Department Name
  0x00081050, // Performing Physician's Name
  0x00081070, // Operators' Name
  0x00081090, // Manufacturer's Model Name
  0x00180015, // Body Part Examined
  0x00181030, // Protocol Name
  Tags.SeriesInstanceUID,
  Tags.SeriesNumber,
  0x00200052, // Frame of Reference UID
  0x00200060, // Laterality
  Tags.NumberOfSeriesRelatedInstances,
  0x00400244, // Performed Procedure Step Start Date
  0x00400245, // Performed Procedure Step Start Time
  0x00400253, // Performed Procedure Step ID
  0x00400254, // Performed Procedure Step Description
  0x00400275, // Request Attributes Sequence
]);

export function attributeLevelOf(tag: Tag): AttributeLevel {
  if (ANY_LEVEL_TAGS.has(tag) || (tag & 0xffff) === 0) return 'ANY'; // (gggg,0000) group lengths
  if (PATIENT_TAGS.has(tag)) return 'PATIENT';
  if (tag >>> 16 === 0x0010) return STUDY_TAGS_IN_PATIENT_GROUP.has(tag) ? 'STUDY' : 'PATIENT';
  if (STUDY_TAGS.has(tag)) return 'STUDY';
  if (SERIES_TAGS.has(tag)) return 'SERIES';
  return 'IMAGE';
}

export function isQueryRoot(value: unknown): value is QueryRoot {
  return value === 'PATIENT' || value === 'STUDY';
}

export function isQueryLevel(value: unknown): value is QueryLevel {
  return value === 'PATIENT' || value === 'STUDY' || value === 'SERIES' || value === 'IMAGE';
}

/** "(0008,0060)" */
export function formatTag(tag: Tag): string {
  const hex = (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
  return `(${hex.slice(0, 4)},${hex.slice(4)})`;
}
