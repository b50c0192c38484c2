/**
 * A JPEG Baseline instance of the corpus whose header claims 65535 x 65535 RGB pixels: 12.9 GB decoded,
 * far over what a conversion may hold (transcode-estimate.ts). Stored as received (the archive does not
 * decode on the way in), it tests the refusal without a large file. Its UIDs are the corpus file's with
 * `mark` (5 digits) in place of 35989, so that each test stores its own instance.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { corpusDirectory } from '../../src/codec/dataset/test-fixtures.ts';

export function oversizedJpegInstance(mark: string): { file: Buffer; studyUid: string; seriesUid: string; sopInstanceUid: string; sopClassUid: string } {
  return resizedJpegInstance(mark, 0xffff);
}

/** The same corpus instance (256 x 256 in its JPEG header) with Rows and Columns both `side`. */
export function resizedJpegInstance(mark: string, side: number): { file: Buffer; studyUid: string; seriesUid: string; sopInstanceUid: string; sopClassUid: string } {
  if (!/^\d{5}$/.test(mark)) throw new Error('mark: 5 digits');
  const latin1 = readFileSync(join(corpusDirectory, 'public', 'pydicom__SC_jpeg_no_color_transform.dcm')).toString('latin1').replaceAll('35989.1606514566', `${mark}.1606514566`);
  const file = Buffer.from(latin1, 'latin1');
  // Rows (0028,0010) and Columns (0028,0011), explicit VR LE: tag, 'US', length 2, value.
  for (const element of [0x10, 0x11]) {
    const at = file.indexOf(Buffer.from([0x28, 0x00, element, 0x00, 0x55, 0x53, 0x02, 0x00]));
    if (at < 0) throw new Error('no Rows/Columns in the corpus file');
    file.writeUInt16LE(side, at + 8);
  }
  const uid = (kind: number, tail: string) => `1.2.276.0.7230010.3.1.${kind}.0.${mark}.1606514566.${tail}`;
  return { file, studyUid: uid(2, '150780'), seriesUid: uid(3, '150779'), sopInstanceUid: uid(4, '150781'), sopClassUid: '1.2.840.10008.5.1.4.1.1.7' };
}
