/**
 * Splits a DICOM Part 10 file into its file meta information and the dataset bytes that follow it, so a
 * file can be fed to the dataset reader exactly as a C-STORE would deliver it.
 */
import type { DicomElement } from '../dicom-types.ts';
import { tagHex } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { normalizeUidValue } from '../uid.ts';
import { encodeDataset } from './writer.ts';
import { DatasetParseError } from './errors.ts';
import { decodeNumbers, decodeText, longLengthVrs, numericVrSizes, textVrs } from './vr.ts';

export interface Part10Split {
  /** The group 0002 elements; OB values (the meta version) are undefined. */
  metaElements: DicomElement[];
  /** (0002,0010) without its padding. */
  transferSyntaxUid: string;
  /** Where the dataset starts in the file. */
  datasetOffset: number;
}

const preambleBytes = 128;
const magicOffset = preambleBytes;
const firstMetaOffset = preambleBytes + 4;
/** The meta group is a few hundred bytes; this bounds what a corrupt length field can make us decode. */
const maxMetaValueBytes = 64 * 1024;

/**
 * Parses the 128-byte preamble, "DICM" and the group 0002 elements (always explicit VR LE). The meta
 * ends at the first element outside group 0002, which also copes with a wrong (0002,0000) group length.
 */
export function splitPart10(bytes: Uint8Array): Part10Split {
  if (bytes.length < firstMetaOffset
    || bytes[magicOffset] !== 0x44 || bytes[magicOffset + 1] !== 0x49
    || bytes[magicOffset + 2] !== 0x43 || bytes[magicOffset + 3] !== 0x4d) {
    throw new DatasetParseError('ERR_PART10_MALFORMED', 'not a Part 10 file: no "DICM" after the 128-byte preamble');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const metaElements: DicomElement[] = [];
  let at = firstMetaOffset;
  while (at + 8 <= bytes.length && view.getUint16(at, true) === 0x0002) {
    const tag = ((0x0002 << 16) | view.getUint16(at + 2, true)) >>> 0;
    const vr = String.fromCharCode(bytes[at + 4]!, bytes[at + 5]!);
    if (!/^[A-Z]{2}$/.test(vr)) {
      throw new DatasetParseError('ERR_PART10_MALFORMED', `file meta element (${tagHex(tag)}) has no explicit VR`, at);
    }
    let valueOffset: number;
    let valueLength: number;
    if (longLengthVrs.has(vr)) {
      if (at + 12 > bytes.length) break;
      valueLength = view.getUint32(at + 8, true);
      valueOffset = at + 12;
    } else {
      valueLength = view.getUint16(at + 6, true);
      valueOffset = at + 8;
    }
    if (valueLength > maxMetaValueBytes || valueOffset + valueLength > bytes.length) {
      throw new DatasetParseError('ERR_PART10_MALFORMED', `file meta element (${tagHex(tag)}) length ${valueLength} runs past the end`, at);
    }
    let value: string | undefined;
    if (textVrs.has(vr)) value = decodeText(bytes, valueOffset, valueOffset + valueLength);
    else if (numericVrSizes.has(vr)) value = decodeNumbers(bytes, valueOffset, valueLength, vr, true);
    metaElements.push({ tag, vr, value });
    at = valueOffset + valueLength;
  }
  const transferSyntax = metaElements.find((element) => element.tag === Tags.TransferSyntaxUID)?.value;
  if (transferSyntax === undefined || transferSyntax === '') {
    throw new DatasetParseError('ERR_PART10_MALFORMED', 'file meta information has no Transfer Syntax UID (0002,0010)');
  }
  return { metaElements, transferSyntaxUid: normalizeUidValue(transferSyntax), datasetOffset: at };
}

export interface Part10HeaderFields {
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
  implementationClassUid: string;
  implementationVersionName: string;
}

/**
 * The preamble, "DICM" and File Meta Information (PS3.10 7.1) of a file whose data set follows as is:
 * what a DICOMweb application/dicom part is made of. Group 0002 is always explicit VR little endian.
 */
export function encodePart10Header(fields: Part10HeaderFields): Uint8Array {
  const rest = encodeDataset(
    [
      { tag: Tags.MediaStorageSOPClassUID, vr: 'UI', value: fields.sopClassUid },
      { tag: Tags.MediaStorageSOPInstanceUID, vr: 'UI', value: fields.sopInstanceUid },
      { tag: Tags.TransferSyntaxUID, vr: 'UI', value: fields.transferSyntaxUid },
      { tag: Tags.ImplementationClassUID, vr: 'UI', value: fields.implementationClassUid },
      { tag: Tags.ImplementationVersionName, vr: 'SH', value: fields.implementationVersionName },
    ],
    '1.2.840.10008.1.2.1',
  );
  // (0002,0001) OB 00\01, written here: the writer carries text and numbers only.
  const version = Uint8Array.of(0x02, 0x00, 0x01, 0x00, 0x4f, 0x42, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01);
  const groupLength = version.length + rest.length;
  const header = new Uint8Array(128 + 4 + 12 + groupLength);
  const view = new DataView(header.buffer);
  header.set([0x44, 0x49, 0x43, 0x4d], 128);
  // (0002,0000) UL, 4 bytes: the length of the rest of the group.
  header.set([0x02, 0x00, 0x00, 0x00, 0x55, 0x4c, 0x04, 0x00], 132);
  view.setUint32(140, groupLength, true);
  header.set(version, 144);
  header.set(rest, 144 + version.length);
  return header;
}
