import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import type { DicomElement } from '../dicom-types.ts';
import { TransferSyntax } from '../dicom-types.ts';
import { Tags } from '../dictionary.ts';
import { DatasetEncodeError } from './errors.ts';
import { parseDataset } from './reader.ts';
import { encodeDataset } from './writer.ts';

const allSyntaxes = [
  TransferSyntax.ImplicitVrLittleEndian,
  TransferSyntax.ExplicitVrLittleEndian,
  TransferSyntax.ExplicitVrBigEndian,
  TransferSyntax.DeflatedExplicitVrLittleEndian,
];

/** Dictionary tags with their dictionary VRs, so implicit VR reads them back with the same VR. */
const identifier: DicomElement[] = [
  { tag: Tags.SpecificCharacterSet, vr: 'CS', value: 'ISO_IR 100' },
  { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
  { tag: Tags.RetrieveAETitle, vr: 'AE', value: 'PACS1' },
  { tag: Tags.StudyDate, vr: 'DA', value: '20240102' },
  { tag: Tags.StudyTime, vr: 'TM', value: '101112.5' },
  { tag: Tags.AccessionNumber, vr: 'SH', value: '' },
  { tag: Tags.ModalitiesInStudy, vr: 'CS', value: 'CT\\MR' },
  { tag: Tags.SOPClassesInStudy, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4' },
  { tag: Tags.TimezoneOffsetFromUTC, vr: 'SH', value: '+0100' },
  { tag: Tags.PatientName, vr: 'PN', value: 'M\xfcller^J\xfcrgen' },
  { tag: Tags.PatientID, vr: 'LO', value: 'ID 7' },
  { tag: Tags.PatientAge, vr: 'AS', value: '042Y' },
  { tag: Tags.PatientWeight, vr: 'DS', value: '71.5' },
  { tag: Tags.PatientComments, vr: 'LT', value: 'odd' },
  { tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.3' },
  { tag: Tags.NumberOfStudyRelatedInstances, vr: 'IS', value: '300' },
  { tag: Tags.Rows, vr: 'US', value: '512' },
  { tag: Tags.Columns, vr: 'US', value: '0\\65535' },
  { tag: Tags.RetrieveURL, vr: 'UR', value: 'https://pacs.example/studies/1.2.3' },
];

describe('encodeDataset', () => {
  for (const uid of allSyntaxes) {
    it(`round-trips through parseDataset in ${uid}`, () => {
      const shuffled = [...identifier].reverse();
      assert.deepEqual(parseDataset(encodeDataset(shuffled, uid), uid), {
        elements: [...identifier].sort((a, b) => a.tag - b.tag), specificCharacterSet: 'ISO_IR 100', reachedPixelData: false,
      });
    });
  }

  for (const uid of allSyntaxes.slice(1)) {
    it(`round-trips every text and numeric VR in explicit VR (${uid})`, () => {
      const elements: DicomElement[] = [
        ['AE', 'AET'], ['AS', '001D'], ['CS', 'A\\B'], ['DA', '19930430'], ['DS', '-1.5e3'], ['DT', '20200101120000.000000+0100'],
        ['IS', '-12'], ['LO', 'x'], ['LT', 'line1\r\nline2'], ['PN', 'A^B=C^D'], ['SH', 'sh'], ['ST', 'st'], ['TM', '235959'],
        ['UC', 'unlimited'], ['UI', '1.2.840'], ['UR', 'urn:x'], ['UT', 'text'],
        ['US', '1\\2'], ['SS', '-32768\\32767'], ['UL', '4294967295'], ['SL', '-2147483648'],
        ['FL', '0.10000000149011612\\-Infinity'], ['FD', '3.141592653589793\\NaN'], ['SV', '-9223372036854775808'],
        ['UV', '18446744073709551615'], ['AT', String(Tags.PatientName)],
      ].map(([vr, value], index) => ({ tag: 0x00091001 + index, vr: vr!, value: value! }));
      assert.deepEqual(parseDataset(encodeDataset(elements, uid), uid).elements, elements);
    });
  }

  it('writes sorted tags, even lengths, NUL-padded UIDs and space-padded text (explicit VR LE bytes)', () => {
    const bytes = encodeDataset([
      { tag: Tags.PatientID, vr: 'LO', value: 'ABC' },
      { tag: Tags.SOPInstanceUID, vr: 'UI', value: '1.2.3' },
      { tag: Tags.ReferencedStudySequence, vr: 'SQ', value: undefined },
    ], TransferSyntax.ExplicitVrLittleEndian);
    assert.deepEqual(Buffer.from(bytes).toString('hex'), [
      '08001800', '5549', '0600', Buffer.from('1.2.3\0').toString('hex'),
      '08001011', '5351', '0000', '00000000',
      '10002000', '4c4f', '0400', Buffer.from('ABC ').toString('hex'),
    ].join(''));
  });

  it('writes implicit VR and big endian headers', () => {
    const element: DicomElement[] = [{ tag: Tags.Rows, vr: 'US', value: '258' }];
    assert.equal(Buffer.from(encodeDataset(element, TransferSyntax.ImplicitVrLittleEndian)).toString('hex'), '28001000020000000201');
    assert.equal(Buffer.from(encodeDataset(element, TransferSyntax.ExplicitVrBigEndian)).toString('hex'), '0028001055530002' + '0102');
  });

  it('writes an SQ without value as an empty sequence, read back when skipped elements are listed', () => {
    const elements: DicomElement[] = [
      { tag: Tags.ReferencedStudySequence, vr: 'SQ', value: undefined },
      { tag: Tags.PatientID, vr: 'LO', value: '' },
    ];
    for (const uid of allSyntaxes.slice(1)) {
      assert.deepEqual(parseDataset(encodeDataset(elements, uid), uid, { includeSkippedElements: true }).elements,
        [elements[1], elements[0]].sort((a, b) => a!.tag - b!.tag));
    }
  });

  it('deflates with raw deflate', () => {
    const plain = encodeDataset(identifier, TransferSyntax.ExplicitVrLittleEndian);
    const deflated = encodeDataset(identifier, TransferSyntax.DeflatedExplicitVrLittleEndian);
    assert.deepEqual(new Uint8Array(zlib.inflateRawSync(deflated)), plain);
  });

  it('rejects invalid VRs, numbers out of range and values too long for their length field', () => {
    const rejects = (code: string, element: DicomElement) => assert.throws(
      () => encodeDataset([element], TransferSyntax.ExplicitVrLittleEndian),
      (error) => error instanceof DatasetEncodeError && error.name === 'DatasetEncodeError' && error.code === code);
    rejects('ERR_DATASET_ENCODE_VR', { tag: Tags.PatientID, vr: 'lo', value: 'x' });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: Tags.Rows, vr: 'US', value: '65536' });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: Tags.Rows, vr: 'US', value: 'abc' });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: Tags.Rows, vr: 'US', value: '1.5' });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: 0x00091001, vr: 'SV', value: '1.0' });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: Tags.PatientID, vr: 'LO', value: 'x'.repeat(70000) });
    rejects('ERR_DATASET_ENCODE_VALUE', { tag: Tags.PixelData, vr: 'OB', value: 'bytes?' });
  });
});
