import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DicomElement } from './dicom-types.ts';
import { decodedPixelBytes, estimateTranscodeBytes, transcodeJobBytesMax, transcodeTooLarge } from './transcode-estimate.ts';

const EXPLICIT = '1.2.840.10008.1.2.1';
const IMPLICIT = '1.2.840.10008.1.2';
const DEFLATED = '1.2.840.10008.1.2.1.99';
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';
const JPEG_LS = '1.2.840.10008.1.2.4.80';
const MB = 1024 * 1024;

/** A catalog entry's Image Pixel attributes, as the catalog keeps them (text values). */
function image(rows: number, columns: number, frames: number, samples: number, bitsAllocated: number): DicomElement[] {
  return [
    { tag: 0x00280002, vr: 'US', value: String(samples) },
    { tag: 0x00280008, vr: 'IS', value: String(frames) },
    { tag: 0x00280010, vr: 'US', value: String(rows) },
    { tag: 0x00280011, vr: 'US', value: String(columns) },
    { tag: 0x00280100, vr: 'US', value: String(bitsAllocated) },
  ];
}

test('the 17 MB JPEG cine of hunt 85 weighs what decoding it holds (~1.7 GB), not its stored size', () => {
  const cine = { byteLength: 17 * MB, transferSyntaxUid: JPEG_BASELINE, attributes: image(480, 640, 600, 3, 8) };
  assert.equal(decodedPixelBytes(cine.attributes), 600 * 480 * 640 * 3);
  assert.equal(estimateTranscodeBytes(cine, EXPLICIT), 17 * MB + 3 * 600 * 480 * 640 * 3);
  assert.equal(transcodeTooLarge(estimateTranscodeBytes(cine, EXPLICIT)), undefined, 'under the bound: converted, one at a time');
});

test('a native instance converted to another native syntax weighs 3x its size; 1.5 GB is over the bound, 600 MB is not', () => {
  const big = (mb: number) => ({ byteLength: mb * MB, transferSyntaxUid: EXPLICIT, attributes: image(512, 512, 1, 1, 16) });
  assert.equal(estimateTranscodeBytes(big(600), IMPLICIT), 3 * 600 * MB);
  assert.equal(transcodeTooLarge(estimateTranscodeBytes(big(600), IMPLICIT)), undefined);
  const refusal = transcodeTooLarge(estimateTranscodeBytes(big(1500), IMPLICIT));
  assert.equal(refusal?.slice(0, 50), 'conversion needs ~4500 MiB, over 2048 MiB: refused', 'what a 64-character Error Comment keeps after "all 1 failed: "');
  assert.match(refusal!, /sent as stored/);
  assert.equal(transcodeTooLarge(transcodeJobBytesMax), undefined, 'at the bound: runs');
});

test('as stored weighs nothing; compressing weighs the decoded size; a deflated or compressed source without its size is guessed from the stored one', () => {
  const ct = { byteLength: 100 * MB, transferSyntaxUid: EXPLICIT, attributes: image(512, 512, 200, 1, 16) };
  assert.equal(estimateTranscodeBytes(ct, EXPLICIT), 0);
  assert.equal(estimateTranscodeBytes(ct, JPEG_LS), 100 * MB + 3 * 100 * MB);
  const deflated = { byteLength: 10 * MB, transferSyntaxUid: DEFLATED, attributes: image(512, 512, 200, 1, 16) };
  assert.equal(estimateTranscodeBytes(deflated, EXPLICIT), 10 * MB + 2 * 512 * 512 * 200 * 2, 'inflated (its pixels) and the output');
  const unknown = { byteLength: 10 * MB, transferSyntaxUid: JPEG_LS, attributes: [] };
  assert.equal(estimateTranscodeBytes(unknown, EXPLICIT), 10 * MB + 3 * 40 * MB);
  assert.equal(decodedPixelBytes(image(10, 10, 1, 1, 1)), 13, '1-bit pixels');
});
