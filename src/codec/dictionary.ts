/**
 * A small DICOM data dictionary: the attributes a PACS indexes, queries and needs to walk a dataset, with
 * keywords. The VRs of the rest of the PS3.6 registry come from dcmjs's copy of it, loaded on first need
 * (~0.1 s, once): an implicit VR data set or query key with an attribute outside this list must get the
 * same VR as in explicit VR, or the same attribute would match and be returned differently.
 */
import { createRequire } from 'node:module';
import type { Tag, Vr } from './dicom-types.ts';

/** [keyword, tag, vr]; vr is undefined for the item and delimitation tags, which carry no VR. */
const entries = [
  // File meta information (group 0002, always explicit VR little endian).
  ['FileMetaInformationGroupLength', 0x00020000, 'UL'],
  ['FileMetaInformationVersion', 0x00020001, 'OB'],
  ['MediaStorageSOPClassUID', 0x00020002, 'UI'],
  ['MediaStorageSOPInstanceUID', 0x00020003, 'UI'],
  ['TransferSyntaxUID', 0x00020010, 'UI'],
  ['ImplementationClassUID', 0x00020012, 'UI'],
  ['ImplementationVersionName', 0x00020013, 'SH'],
  ['SourceApplicationEntityTitle', 0x00020016, 'AE'],
  // SOP common and general study / series / equipment.
  ['SpecificCharacterSet', 0x00080005, 'CS'],
  ['ImageType', 0x00080008, 'CS'],
  ['InstanceCreationDate', 0x00080012, 'DA'],
  ['InstanceCreationTime', 0x00080013, 'TM'],
  ['InstanceCreatorUID', 0x00080014, 'UI'],
  ['SOPClassUID', 0x00080016, 'UI'],
  ['SOPInstanceUID', 0x00080018, 'UI'],
  ['StudyDate', 0x00080020, 'DA'],
  ['SeriesDate', 0x00080021, 'DA'],
  ['AcquisitionDate', 0x00080022, 'DA'],
  ['ContentDate', 0x00080023, 'DA'],
  ['AcquisitionDateTime', 0x0008002a, 'DT'],
  ['StudyTime', 0x00080030, 'TM'],
  ['SeriesTime', 0x00080031, 'TM'],
  ['AcquisitionTime', 0x00080032, 'TM'],
  ['ContentTime', 0x00080033, 'TM'],
  ['AccessionNumber', 0x00080050, 'SH'],
  ['IssuerOfAccessionNumberSequence', 0x00080051, 'SQ'],
  ['QueryRetrieveLevel', 0x00080052, 'CS'],
  ['RetrieveAETitle', 0x00080054, 'AE'],
  ['InstanceAvailability', 0x00080056, 'CS'],
  ['Modality', 0x00080060, 'CS'],
  ['ModalitiesInStudy', 0x00080061, 'CS'],
  ['SOPClassesInStudy', 0x00080062, 'UI'],
  ['ConversionType', 0x00080064, 'CS'],
  ['Manufacturer', 0x00080070, 'LO'],
  ['InstitutionName', 0x00080080, 'LO'],
  ['ReferringPhysicianName', 0x00080090, 'PN'],
  ['TimezoneOffsetFromUTC', 0x00080201, 'SH'],
  ['StationName', 0x00081010, 'SH'],
  ['StudyDescription', 0x00081030, 'LO'],
  ['ProcedureCodeSequence', 0x00081032, 'SQ'],
  ['SeriesDescription', 0x0008103e, 'LO'],
  ['InstitutionalDepartmentName', 0x00081040, 'LO'],
  ['PhysiciansOfRecord', 0x00081048, 'PN'],
  ['PerformingPhysicianName', 0x00081050, 'PN'],
  ['NameOfPhysiciansReadingStudy', 0x00081060, 'PN'],
  ['OperatorsName', 0x00081070, 'PN'],
  ['AdmittingDiagnosesDescription', 0x00081080, 'LO'],
  ['ManufacturerModelName', 0x00081090, 'LO'],
  ['ReferencedStudySequence', 0x00081110, 'SQ'],
  ['ReferencedSeriesSequence', 0x00081115, 'SQ'],
  ['ReferencedSOPClassUID', 0x00081150, 'UI'],
  ['ReferencedSOPInstanceUID', 0x00081155, 'UI'],
  ['RetrieveURL', 0x00081190, 'UR'],
  ['TransactionUID', 0x00081195, 'UI'],
  ['FailureReason', 0x00081197, 'US'],
  ['FailedSOPSequence', 0x00081198, 'SQ'],
  ['ReferencedSOPSequence', 0x00081199, 'SQ'],
  // Patient.
  ['PatientName', 0x00100010, 'PN'],
  ['PatientID', 0x00100020, 'LO'],
  ['IssuerOfPatientID', 0x00100021, 'LO'],
  ['TypeOfPatientID', 0x00100022, 'CS'],
  ['IssuerOfPatientIDQualifiersSequence', 0x00100024, 'SQ'],
  ['PatientBirthDate', 0x00100030, 'DA'],
  ['PatientBirthTime', 0x00100032, 'TM'],
  ['PatientSex', 0x00100040, 'CS'],
  ['OtherPatientIDs', 0x00101000, 'LO'],
  ['OtherPatientNames', 0x00101001, 'PN'],
  ['OtherPatientIDsSequence', 0x00101002, 'SQ'],
  ['PatientAge', 0x00101010, 'AS'],
  ['PatientSize', 0x00101020, 'DS'],
  ['PatientWeight', 0x00101030, 'DS'],
  ['EthnicGroup', 0x00102160, 'SH'],
  ['PatientComments', 0x00104000, 'LT'],
  ['PatientIdentityRemoved', 0x00120062, 'CS'],
  // Acquisition.
  ['BodyPartExamined', 0x00180015, 'CS'],
  ['SliceThickness', 0x00180050, 'DS'],
  ['DeviceSerialNumber', 0x00181000, 'LO'],
  ['SoftwareVersions', 0x00181020, 'LO'],
  ['ProtocolName', 0x00181030, 'LO'],
  // Relationship.
  ['StudyInstanceUID', 0x0020000d, 'UI'],
  ['SeriesInstanceUID', 0x0020000e, 'UI'],
  ['StudyID', 0x00200010, 'SH'],
  ['SeriesNumber', 0x00200011, 'IS'],
  ['AcquisitionNumber', 0x00200012, 'IS'],
  ['InstanceNumber', 0x00200013, 'IS'],
  ['PatientOrientation', 0x00200020, 'CS'],
  ['ImagePositionPatient', 0x00200032, 'DS'],
  ['ImageOrientationPatient', 0x00200037, 'DS'],
  ['FrameOfReferenceUID', 0x00200052, 'UI'],
  ['Laterality', 0x00200060, 'CS'],
  ['NumberOfPatientRelatedStudies', 0x00201200, 'IS'],
  ['NumberOfPatientRelatedSeries', 0x00201202, 'IS'],
  ['NumberOfPatientRelatedInstances', 0x00201204, 'IS'],
  ['NumberOfStudyRelatedSeries', 0x00201206, 'IS'],
  ['NumberOfStudyRelatedInstances', 0x00201208, 'IS'],
  ['NumberOfSeriesRelatedInstances', 0x00201209, 'IS'],
  // Image pixel.
  ['SamplesPerPixel', 0x00280002, 'US'],
  ['PhotometricInterpretation', 0x00280004, 'CS'],
  ['NumberOfFrames', 0x00280008, 'IS'],
  ['Rows', 0x00280010, 'US'],
  ['Columns', 0x00280011, 'US'],
  ['PixelSpacing', 0x00280030, 'DS'],
  ['BitsAllocated', 0x00280100, 'US'],
  ['BitsStored', 0x00280101, 'US'],
  ['HighBit', 0x00280102, 'US'],
  ['PixelRepresentation', 0x00280103, 'US'],
  ['WindowCenter', 0x00281050, 'DS'],
  ['WindowWidth', 0x00281051, 'DS'],
  ['RescaleIntercept', 0x00281052, 'DS'],
  ['RescaleSlope', 0x00281053, 'DS'],
  ['LossyImageCompression', 0x00282110, 'CS'],
  // Request and performed procedure step.
  ['RequestingPhysician', 0x00321032, 'PN'],
  ['RequestedProcedureDescription', 0x00321060, 'LO'],
  ['PerformedStationAETitle', 0x00400241, 'AE'],
  ['PerformedProcedureStepStartDate', 0x00400244, 'DA'],
  ['PerformedProcedureStepStartTime', 0x00400245, 'TM'],
  ['PerformedProcedureStepID', 0x00400253, 'SH'],
  ['PerformedProcedureStepDescription', 0x00400254, 'LO'],
  ['RequestAttributesSequence', 0x00400275, 'SQ'],
  // Structured reports and encapsulated documents.
  ['ConceptNameCodeSequence', 0x0040a043, 'SQ'],
  ['CompletionFlag', 0x0040a491, 'CS'],
  ['VerificationFlag', 0x0040a493, 'CS'],
  ['ContentSequence', 0x0040a730, 'SQ'],
  ['EncapsulatedDocument', 0x00420011, 'OB'],
  ['MIMETypeOfEncapsulatedDocument', 0x00420012, 'LO'],
  ['IconImageSequence', 0x00880200, 'SQ'],
  // Pixel data and structural tags.
  ['FloatPixelData', 0x7fe00008, 'OF'],
  ['DoubleFloatPixelData', 0x7fe00009, 'OD'],
  ['PixelData', 0x7fe00010, 'OW'],
  ['DataSetTrailingPadding', 0xfffcfffc, 'OB'],
  ['Item', 0xfffee000, undefined],
  ['ItemDelimitationItem', 0xfffee00d, undefined],
  ['SequenceDelimitationItem', 0xfffee0dd, undefined],
] as const satisfies ReadonlyArray<readonly [string, number, Vr | undefined]>;

type Keyword = (typeof entries)[number][0];

/** Tag constants by keyword, e.g. `Tags.PatientName === 0x00100010`. */
export const Tags = Object.freeze(
  Object.fromEntries(entries.map(([keyword, tag]) => [keyword, tag])) as { readonly [K in Keyword]: Tag },
);

const vrByTag = new Map<Tag, Vr>();
const keywordByTag = new Map<Tag, string>();
const tagByKeyword = new Map<string, Tag>();
for (const [keyword, tag, vr] of entries) {
  if (vr !== undefined) vrByTag.set(tag, vr);
  keywordByTag.set(tag, keyword);
  tagByKeyword.set(keyword, tag);
}

/** dcmjs's codes for attributes whose VR the data set decides: US or SS (xs), OB or OW (ox), US or OW (lt), US or UL (up). */
type AmbiguousVr = 'xs' | 'ox' | 'lt' | 'up';
const ambiguousVrs: ReadonlySet<string> = new Set<AmbiguousVr>(['xs', 'ox', 'lt', 'up']);

interface Registry {
  vrByTag: Map<Tag, Vr>;
  ambiguousVrByTag: Map<Tag, AmbiguousVr>;
  tagByKeyword: Map<string, Tag>;
}

let registry: Registry | undefined;

/** The PS3.6 registry from dcmjs's copy of it, read once. */
function loadRegistry(): Registry {
  if (registry === undefined) {
    registry = { vrByTag: new Map(), ambiguousVrByTag: new Map(), tagByKeyword: new Map() };
    try {
      type RegistryEntry = { tag: string; vr: string; name?: string };
      const dcmjs = createRequire(import.meta.url)('dcmjs') as { data: { DicomMetaDictionary: { nameMap: Record<string, RegistryEntry> } } };
      for (const [keyword, { tag: text, vr }] of Object.entries(dcmjs.data.DicomMetaDictionary.nameMap)) {
        // `US or SS` (xs), `OB or OW` (ox) and repeating groups (60xx,...) have no single VR for a tag.
        const match = /^\(([0-9A-F]{4}),([0-9A-F]{4})\)$/i.exec(text);
        if (!match) continue;
        const tag = parseInt(match[1]! + match[2]!, 16) >>> 0;
        registry.tagByKeyword.set(keyword, tag);
        if (/^[A-Z]{2}$/.test(vr)) registry.vrByTag.set(tag, vr);
        else if (ambiguousVrs.has(vr)) registry.ambiguousVrByTag.set(tag, vr as AmbiguousVr);
      }
    } catch {
      // Without dcmjs the small dictionary alone: other implicit VR attributes are read as UN.
    }
  }
  return registry;
}

/** The VR of a standard attribute in the PS3.6 registry; attributes with several possible VRs are left out. */
function registryVrOf(tag: Tag): Vr | undefined {
  return loadRegistry().vrByTag.get(tag);
}

/**
 * The VR of a tag, or undefined when neither this dictionary nor the registry knows it. Group lengths
 * (gggg,0000) are UL and private creator elements (odd group, element 0010-00FF) are LO, as PS3.5 7.8.1
 * defines them; other private elements have no VR here.
 */
export function vrOf(tag: Tag): Vr | undefined {
  tag = tag >>> 0;
  const known = vrByTag.get(tag);
  if (known !== undefined) return known;
  const group = tag >>> 16;
  const element = tag & 0xffff;
  if (element === 0x0000 && group !== 0xfffe) return 'UL';
  if ((group & 1) === 1) return group > 0x0008 && element >= 0x0010 && element <= 0x00ff ? 'LO' : undefined;
  return registryVrOf(tag);
}

/**
 * The VR of a tag read in implicit VR: vrOf's, or for an attribute whose VR the data set decides, the one PS3.5
 * A.1 gives it there: US or SS by the Pixel Representation of its data set (`pixelRepresentation()`, asked only
 * then: 1 is signed), OB or OW and US or OW as OW, US or UL as UL. Read as UN, Smallest/Largest Image Pixel Value and Pixel Padding
 * Value of implicit VR instances reached DICOMweb clients as binary without a value (hunt 196).
 */
export function implicitVrOf(tag: Tag, pixelRepresentation: () => string | undefined): Vr | undefined {
  const known = vrOf(tag);
  if (known !== undefined) return known;
  switch (loadRegistry().ambiguousVrByTag.get(tag >>> 0)) {
    case 'xs':
      return pixelRepresentation()?.trim() === '1' ? 'SS' : 'US';
    case 'ox':
    case 'lt':
      return 'OW';
    case 'up':
      return 'UL';
    case undefined:
      return undefined;
  }
}

/** The keyword of a tag in this dictionary ("PatientName"), or undefined. */
export function keywordOf(tag: Tag): string | undefined {
  return keywordByTag.get(tag >>> 0);
}

/** The tag of a keyword in this dictionary, or undefined (keywords are case-sensitive, as in PS3.6). */
export function tagOf(keyword: string): Tag | undefined {
  return tagByKeyword.get(keyword);
}

/** The tag of any PS3.6 keyword ("BodyPartExamined"), this dictionary first, then the registry; undefined when neither knows it. */
export function registryTagOf(keyword: string): Tag | undefined {
  return tagByKeyword.get(keyword) ?? loadRegistry().tagByKeyword.get(keyword);
}
