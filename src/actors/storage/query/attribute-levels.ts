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
  0x00101021, // Patient's Size Code Sequence
  0x00101022, // Patient's Body Mass Index
  0x00101023, // Measured AP Dimension
  0x00101024, // Measured Lateral Dimension
  0x001021a0, // Smoking Status
  0x001021c0, // Pregnancy Status
  0x001021d0, // Last Menstrual Date
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
  // General Study and Patient Study modules (PS3.3 C.7.2.1, C.7.2.2): study attributes too (helper 98).
  0x00080096, // Referring Physician Identification Sequence
  0x0008009c, // Consulting Physician's Name
  0x00081049, // Physician(s) of Record Identification Sequence
  0x00081062, // Physician(s) Reading Study Identification Sequence
  0x00081084, // Admitting Diagnoses Code Sequence
  0x00081110, // Referenced Study Sequence
  0x00321033, // Requesting Service
  0x00321034, // Requesting Service Code Sequence
  0x00321066, // Reason for Visit
  0x00380010, // Admission ID
  0x00380014, // Issuer of Admission ID Sequence
  0x00380060, // Service Episode ID
  0x00380062, // Service Episode Description
  0x00380500, // Patient State
  0x00401012, // Reason For Performed Procedure Code Sequence
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
  // The rest of the General Series, General Equipment and Frame of Reference modules (PS3.3 C.7.3.1,
  // C.7.5.1, C.7.4.1): series attributes, asked at SERIES level (PatientPosition was an IMAGE attribute:
  // zero-length when asked, 0xA900 when matched: helper 98).
  0x00080081, // Institution Address
  0x0008103f, // Series Description Code Sequence
  0x00081041, // Institutional Department Type Code Sequence
  0x00081052, // Performing Physician Identification Sequence
  0x00081072, // Operator Identification Sequence
  0x00081111, // Referenced Performed Procedure Step Sequence
  0x00081250, // Related Series Sequence
  0x00181000, // Device Serial Number
  0x00181008, // Gantry ID
  0x0018100a, // UDI Sequence
  0x0018100b, // Manufacturer's Device Class UID
  0x00181020, // Software Versions
  0x00181050, // Spatial Resolution
  0x00181200, // Date of Last Calibration
  0x00181201, // Time of Last Calibration
  0x00185100, // Patient Position
  0x00201040, // Position Reference Indicator
  0x00280108, // Smallest Pixel Value in Series
  0x00280109, // Largest Pixel Value in Series
  0x00400250, // Performed Procedure Step End Date
  0x00400251, // Performed Procedure Step End Time
  0x00400260, // Performed Protocol Code Sequence
  0x00400280, // Comments on the Performed Procedure Step
  0x300a0700, // Treatment Session UID
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
