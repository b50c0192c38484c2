/**
 * Which Query/Retrieve level an attribute belongs to (PS3.4 C.6.1.1 / C.6.2.1), for the few dozen
 * attributes that C-FIND SCUs commonly send. Tags are defined here on purpose (no dependency on the
 * codec's dictionary). Anything not listed is an instance (IMAGE) attribute, except the special keys that
 * are allowed at every level (ANY).
 */
import type { Tag } from '../../../codec/dicom-types.ts';

export type QueryRoot = 'PATIENT' | 'STUDY';
export type QueryLevel = 'PATIENT' | 'STUDY' | 'SERIES' | 'IMAGE';
export type AttributeLevel = QueryLevel | 'ANY';

export const QUERY_LEVELS_OF_ROOT: Readonly<Record<QueryRoot, readonly QueryLevel[]>> = {
  PATIENT: ['PATIENT', 'STUDY', 'SERIES', 'IMAGE'],
  STUDY: ['STUDY', 'SERIES', 'IMAGE'],
};

/** 0 = PATIENT ... 3 = IMAGE. */
export const LEVEL_DEPTH: Readonly<Record<QueryLevel, number>> = { PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3 };

export const QueryTags = {
  SpecificCharacterSet: 0x00080005,
  SOPClassUID: 0x00080016,
  SOPInstanceUID: 0x00080018,
  StudyDate: 0x00080020,
  SeriesDate: 0x00080021,
  StudyTime: 0x00080030,
  SeriesTime: 0x00080031,
  AccessionNumber: 0x00080050,
  QueryRetrieveLevel: 0x00080052,
  RetrieveAETitle: 0x00080054,
  InstanceAvailability: 0x00080056,
  Modality: 0x00080060,
  ModalitiesInStudy: 0x00080061,
  SOPClassesInStudy: 0x00080062,
  ReferringPhysicianName: 0x00080090,
  TimezoneOffsetFromUTC: 0x00080201,
  StudyDescription: 0x00081030,
  SeriesDescription: 0x0008103e,
  PatientName: 0x00100010,
  PatientID: 0x00100020,
  PatientBirthDate: 0x00100030,
  PatientSex: 0x00100040,
  PatientAge: 0x00101010,
  StudyInstanceUID: 0x0020000d,
  SeriesInstanceUID: 0x0020000e,
  StudyID: 0x00200010,
  SeriesNumber: 0x00200011,
  InstanceNumber: 0x00200013,
  NumberOfPatientRelatedStudies: 0x00201200,
  NumberOfPatientRelatedSeries: 0x00201202,
  NumberOfPatientRelatedInstances: 0x00201204,
  NumberOfStudyRelatedSeries: 0x00201206,
  NumberOfStudyRelatedInstances: 0x00201208,
  NumberOfSeriesRelatedInstances: 0x00201209,
} as const satisfies Record<string, Tag>;

/** The unique key of each level (PS3.4 C.6.1.1.1). */
export const UNIQUE_KEY_OF_LEVEL: Readonly<Record<QueryLevel, Tag>> = {
  PATIENT: QueryTags.PatientID,
  STUDY: QueryTags.StudyInstanceUID,
  SERIES: QueryTags.SeriesInstanceUID,
  IMAGE: QueryTags.SOPInstanceUID,
};

const ANY_LEVEL_TAGS = new Set<Tag>([
  QueryTags.SpecificCharacterSet,
  QueryTags.QueryRetrieveLevel,
  QueryTags.RetrieveAETitle,
  QueryTags.InstanceAvailability,
  QueryTags.TimezoneOffsetFromUTC,
  0x00080053, // Query/Retrieve View
]);

const PATIENT_TAGS = new Set<Tag>([
  QueryTags.NumberOfPatientRelatedStudies,
  QueryTags.NumberOfPatientRelatedSeries,
  QueryTags.NumberOfPatientRelatedInstances,
]);

/** Group 0x0010 attributes that belong to the Patient Study module (study level), not to the patient. */
const STUDY_TAGS_IN_PATIENT_GROUP = new Set<Tag>([
  QueryTags.PatientAge,
  0x00101020, // Patient's Size
  0x00101030, // Patient's Weight
  0x00102180, // Occupation
  0x001021b0, // Additional Patient History
]);

const STUDY_TAGS = new Set<Tag>([
  QueryTags.StudyDate,
  QueryTags.StudyTime,
  QueryTags.AccessionNumber,
  0x00080051, // Issuer of Accession Number Sequence
  QueryTags.ModalitiesInStudy,
  QueryTags.SOPClassesInStudy,
  0x00080063, // Anatomic Regions in Study Code Sequence
  QueryTags.ReferringPhysicianName,
  QueryTags.StudyDescription,
  0x00081032, // Procedure Code Sequence
  0x00081048, // Physician(s) of Record
  0x00081060, // Name of Physician(s) Reading Study
  0x00081080, // Admitting Diagnoses Description
  QueryTags.StudyInstanceUID,
  QueryTags.StudyID,
  0x00201070, // Other Study Numbers
  QueryTags.NumberOfStudyRelatedSeries,
  QueryTags.NumberOfStudyRelatedInstances,
  0x00321032, // Requesting Physician
  0x00321060, // Requested Procedure Description
  0x00324000, // Study Comments
]);

const SERIES_TAGS = new Set<Tag>([
  QueryTags.SeriesDate,
  QueryTags.SeriesTime,
  QueryTags.Modality,
  0x00080070, // Manufacturer
  0x00080080, // Institution Name
  0x00081010, // Station Name
  QueryTags.SeriesDescription,
  0x00081040, // Institutional Department Name
  0x00081050, // Performing Physician's Name
  0x00081070, // Operators' Name
  0x00081090, // Manufacturer's Model Name
  0x00180015, // Body Part Examined
  0x00181030, // Protocol Name
  QueryTags.SeriesInstanceUID,
  QueryTags.SeriesNumber,
  0x00200052, // Frame of Reference UID
  0x00200060, // Laterality
  QueryTags.NumberOfSeriesRelatedInstances,
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
