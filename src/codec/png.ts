/**
 * A PNG (ISO/IEC 15948) of an 8-bit grey or RGB image: IHDR, one zlib IDAT of filter-0 rows, IEND. Lossless,
 * for rendered images asked as image/png; deflate's fastest level (a 512 x 512 CT took 20 ms at level 6).
 */
import { deflateSync } from 'node:zlib';

const signature = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export function encodePng(pixels: Uint8Array, columns: number, rows: number, samplesPerPixel: 1 | 3): Buffer {
  const rowBytes = columns * samplesPerPixel;
  if (pixels.length < rowBytes * rows) throw new RangeError(`${pixels.length} bytes for ${columns} x ${rows} x ${samplesPerPixel}`);
  const header = Buffer.alloc(13);
  header.writeUInt32BE(columns, 0);
  header.writeUInt32BE(rows, 4);
  header[8] = 8; // bits a sample
  header[9] = samplesPerPixel === 1 ? 0 : 2; // colour type: grey, or truecolour
  // Compression, filter method and interlace: 0 (deflate, adaptive filtering with type 0 rows, none).
  const raw = Buffer.alloc((rowBytes + 1) * rows);
  for (let row = 0; row < rows; row++) raw.set(pixels.subarray(row * rowBytes, (row + 1) * rowBytes), row * (rowBytes + 1) + 1);
  return Buffer.concat([signature, chunk('IHDR', header), chunk('IDAT', deflateSync(raw, { level: 1 })), chunk('IEND', Buffer.alloc(0))]);
}

function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

const crcTable = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of bytes) c = crcTable[(c ^ byte) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
