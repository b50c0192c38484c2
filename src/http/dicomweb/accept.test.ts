import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { acceptsDicomJson, parseAccept } from './accept.ts';
import { instanceSyntaxFor } from './wado.ts';
import { chooseFrameRepresentation, offeredRepresentations, describeRepresentation, type FrameOffers } from './pixel-media-types.ts';

const jpegLs = '1.2.840.10008.1.2.4.80';
const explicitLe = '1.2.840.10008.1.2.1';

describe('parseAccept', () => {
  it('absent or empty: one */* range', () => {
    for (const header of [undefined, '', '  ']) assert.deepEqual(parseAccept(header), [{ type: '*', subtype: '*', parameters: new Map(), q: 1 }]);
  });

  it('several ranges with parameters, quoted values (commas and semicolons inside quotes) and q', () => {
    const ranges = parseAccept('multipart/related; type="application/octet-stream"; transfer-syntax=*, Multipart/Related;TYPE="image/jls";q=0.5 , */*;q=0.1, x/y; name="a,b;c\\"d"');
    assert.deepEqual(ranges.map((r) => [r.type, r.subtype, Object.fromEntries(r.parameters), r.q]), [
      ['multipart', 'related', { type: 'application/octet-stream', 'transfer-syntax': '*' }, 1],
      ['multipart', 'related', { type: 'image/jls' }, 0.5],
      ['*', '*', {}, 0.1],
      ['x', 'y', { name: 'a,b;c"d' }, 1],
    ]);
  });

  it('leaves out malformed ranges and keeps the rest', () => {
    const ranges = parseAccept('garbage, text/html;q=2, a/b;q=0.1234, */html, a/b;=x, a/b;p="open, multipart/related;type=image/jls');
    // The unclosed quote swallows the rest of the header into one (malformed) range.
    assert.deepEqual(ranges, []);
    assert.deepEqual(parseAccept('garbage, multipart/related;type=image/jls').map((r) => r.parameters.get('type')), ['image/jls']);
  });

  it('is bounded: at most 64 ranges from at most 8 KiB', () => {
    assert.equal(parseAccept(Array.from({ length: 200 }, () => 'a/b').join(',')).length, 64);
    assert.equal(parseAccept(`${'x'.repeat(9000)}/y, a/b`).length, 0);
  });

  it('joins a header sent more than once', () => {
    assert.equal(parseAccept(['a/b', 'c/d']).length, 2);
  });
});

describe('chooseFrameRepresentation', () => {
  const compressed: FrameOffers = { storedTransferSyntaxUid: jpegLs, storedEncapsulated: true, asStored: true, native: true };
  const uncompressed: FrameOffers = { storedTransferSyntaxUid: explicitLe, storedEncapsulated: false, asStored: false, native: true };
  const choose = (accept: string | undefined, offers: FrameOffers) => {
    const chosen = chooseFrameRepresentation(parseAccept(accept), offers);
    return chosen === undefined ? undefined : `${chosen.kind} ${chosen.mediaType} ${chosen.transferSyntaxUid}`;
  };

  it('the default (no Accept, */*, multipart/related with or without octet-stream) is uncompressed', () => {
    for (const accept of [undefined, '*/*', 'multipart/related', 'multipart/*', 'multipart/related; type="application/octet-stream"', `multipart/related; type=application/octet-stream; transfer-syntax=${explicitLe}`]) {
      assert.equal(choose(accept, compressed), `native application/octet-stream ${explicitLe}`, String(accept));
    }
  });

  it('transfer-syntax=* or the stored syntax sends the frames as stored, in the media type asked for', () => {
    assert.equal(choose('multipart/related; type="application/octet-stream"; transfer-syntax=*', compressed), `stored application/octet-stream ${jpegLs}`);
    assert.equal(choose(`multipart/related; type="application/octet-stream"; transfer-syntax=${jpegLs}`, compressed), `stored application/octet-stream ${jpegLs}`);
    assert.equal(choose('multipart/related; type="image/jls"', compressed), `stored image/jls ${jpegLs}`);
    assert.equal(choose('multipart/related; type="image/x-jls"', compressed), `stored image/x-jls ${jpegLs}`);
    assert.equal(choose(`multipart/related; type="image/jls"; transfer-syntax=${jpegLs}`, compressed), `stored image/jls ${jpegLs}`);
    assert.equal(choose('multipart/related; type="image/*"', compressed), `stored image/jls ${jpegLs}`);
    // An uncompressed instance: * means the uncompressed frames.
    assert.equal(choose('multipart/related; type="application/octet-stream"; transfer-syntax=*', uncompressed), `native application/octet-stream ${explicitLe}`);
  });

  it('video frames as stored go under the video media types (PS3.18 8.7.3.5), never under image/*', () => {
    const mpeg2: FrameOffers = { storedTransferSyntaxUid: '1.2.840.10008.1.2.4.100', storedEncapsulated: true, asStored: true, native: false };
    const hevc: FrameOffers = { ...mpeg2, storedTransferSyntaxUid: '1.2.840.10008.1.2.4.107' };
    assert.equal(choose('multipart/related; type="video/mpeg"', mpeg2), 'stored video/mpeg 1.2.840.10008.1.2.4.100');
    assert.equal(choose('multipart/related; type="video/*"', mpeg2), 'stored video/mpeg 1.2.840.10008.1.2.4.100');
    assert.equal(choose('multipart/related; type="video/h265"', hevc), 'stored video/H265 1.2.840.10008.1.2.4.107');
    assert.equal(choose('multipart/related; type="image/*"', mpeg2), undefined);
    assert.equal(choose('multipart/related; type="video/*"', compressed), undefined);
    assert.deepEqual(offeredRepresentations(mpeg2).map(describeRepresentation), ['multipart/related; type="video/mpeg"; transfer-syntax=1.2.840.10008.1.2.4.100']);
  });

  it('frames that cannot be told apart fall back to decoding under transfer-syntax=*, and nothing else', () => {
    const opaque: FrameOffers = { ...compressed, asStored: false };
    assert.equal(choose('multipart/related; type="application/octet-stream"; transfer-syntax=*', opaque), `native application/octet-stream ${explicitLe}`);
    assert.equal(choose('multipart/related; type="image/jls"', opaque), undefined);
  });

  it('q orders the ranges, then the order sent; q=0 is never chosen', () => {
    assert.equal(choose('multipart/related; type="application/octet-stream"; q=0.5, multipart/related; type="image/jls"', compressed), `stored image/jls ${jpegLs}`);
    assert.equal(choose('multipart/related; type="image/jls"; q=0, */*;q=0.1', compressed), `native application/octet-stream ${explicitLe}`);
    assert.equal(choose('multipart/related; type="image/jp2", multipart/related; type="image/jls"; q=0.2, */*; q=0.1', compressed), `stored image/jls ${jpegLs}`);
  });

  it('nothing acceptable: undefined, and the offers say what can be sent', () => {
    for (const accept of ['multipart/related; type="image/jp2"', 'image/jls', 'application/dicom', `multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81`, 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2']) {
      assert.equal(choose(accept, compressed), undefined, accept);
    }
    assert.equal(choose('multipart/related; type="image/jls"', uncompressed), undefined);
    assert.equal(choose('*/*', { ...compressed, native: false }), undefined);
    assert.deepEqual(offeredRepresentations(compressed).map(describeRepresentation), [
      `multipart/related; type="application/octet-stream"; transfer-syntax=${explicitLe}`,
      `multipart/related; type="image/jls"; transfer-syntax=${jpegLs}`,
    ]);
  });
});

describe('instance and JSON negotiation', () => {
  it('negotiates the instances\' transfer syntax (PS3.18 8.7.3.5)', () => {
    const jpegLs = [{ transferSyntaxUid: '1.2.840.10008.1.2.4.80', attributes: [] }];
    assert.equal(instanceSyntaxFor(parseAccept(undefined), jpegLs), '1.2.840.10008.1.2.1', 'the default is Explicit VR LE');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=*'), jpegLs), '*');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'), jpegLs), '1.2.840.10008.1.2.4.80');
    assert.equal(instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'), jpegLs), undefined, 'no lossy re-encoding');
    assert.equal(instanceSyntaxFor(parseAccept('application/dicom+json'), jpegLs), undefined);
    assert.equal(
      instanceSyntaxFor(parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, multipart/related; type="application/dicom";q=0.5'), jpegLs),
      '1.2.840.10008.1.2.1',
      'the next range when the first cannot be served',
    );
    // A colour instance is not encoded into JPEG 2000 (our encoder takes one sample per pixel); a monochrome one is.
    const rgb = [{ transferSyntaxUid: '1.2.840.10008.1.2.1', attributes: [{ tag: 0x00280002, vr: 'US', value: '3' }] }];
    const j2k = parseAccept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90');
    assert.equal(instanceSyntaxFor(j2k, rgb), undefined);
    assert.equal(instanceSyntaxFor(j2k, [{ transferSyntaxUid: '1.2.840.10008.1.2.1', attributes: [{ tag: 0x00280002, vr: 'US', value: '1' }] }]), '1.2.840.10008.1.2.4.90');
  });

  it('takes DICOM JSON where a range covers it', () => {
    for (const header of [undefined, '*/*', 'application/dicom+json', 'application/json;q=0.2, text/html', 'application/*', 'application/*;q=0, application/dicom+json', 'application/dicom+json;q=0, application/json']) assert.equal(acceptsDicomJson(header), true, String(header));
    for (const header of ['multipart/related; type="application/dicom+xml"', 'application/dicom+json;q=0', 'text/*', 'application/dicom+json;q=0, application/json;q=0, */*', 'application/*;q=0, */*', 'application/dicom+json;q=0, application/*']) assert.equal(acceptsDicomJson(header), false, header);
  });
});
