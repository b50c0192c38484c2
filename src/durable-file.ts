/**
 * Small state files written so that a crash or a power cut leaves the old content or the new, never half of
 * either: rarely written ones (peer key, incarnation, roster, known peers, AE directory) through a temporary
 * file and a rename; the election record, written before every vote leaves, in place in one of two slots.
 */
import { type FileHandle, mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';

/**
 * Writes `data` to `path` through `<path>.tmp` (one writer per data directory: its lock), fsyncs it,
 * renames it into place and fsyncs the directory so that the rename itself survives a power cut. A
 * failure leaves no temporary file behind (a full disk would otherwise keep one).
 */
export async function writeFileDurably(path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
  const directory = dirname(path);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  const handle = await open(tmp, 'w', options.mode ?? 0o666);
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
  } catch (error) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw error;
  }
  const dir = await open(directory, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Bytes of one slot: a file-system block each, so that writing one slot never rewrites the other's block. */
export const SLOT_BYTES = 4096;
/** 'PMS1': a pacs-mesh slot, layout 1. */
const SLOT_MAGIC = 0x504d5331;
/** Magic (4), sequence (8), payload length (2), CRC-32 of the sequence, length and payload (4). */
const SLOT_HEADER_BYTES = 18;
export const SLOT_PAYLOAD_MAX_BYTES = SLOT_BYTES - SLOT_HEADER_BYTES;

export type SlotFileErrorCode = 'ERR_SLOT_FILE_DAMAGED' | 'ERR_SLOT_FILE_CLOSED' | 'ERR_SLOT_PAYLOAD_TOO_LARGE';

export class SlotFileError extends Error {
  static readonly NAME = 'SlotFileError';
  override readonly name = SlotFileError.NAME;
  readonly code: SlotFileErrorCode;
  constructor(code: SlotFileErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * A small record rewritten often (the election record), kept in one file opened once: two fixed slots, each
 * with a sequence number and a CRC-32. A write overwrites the slot that does not hold the newest record
 * (one pwrite and one fdatasync, against nine calls through a temporary file); a crash mid-write tears at
 * most that slot, and the read takes the whole slot with the highest sequence.
 */
export interface TwoSlotFile {
  /** The payload of the newest whole slot: the last write that succeeded (or the one read at open). */
  readonly payload: Uint8Array;
  /** Makes `payload` durable, or throws and leaves the previous one the newest. Writes run one at a time. */
  write(payload: Uint8Array): Promise<void>;
  /** Waits for a write in flight; later writes throw ERR_SLOT_FILE_CLOSED. */
  close(): Promise<void>;
}

function encodeSlot(sequence: number, payload: Uint8Array): Uint8Array {
  if (payload.length > SLOT_PAYLOAD_MAX_BYTES) {
    throw new SlotFileError('ERR_SLOT_PAYLOAD_TOO_LARGE', `a slot holds ${SLOT_PAYLOAD_MAX_BYTES} bytes, the payload is ${payload.length}`);
  }
  const slot = new Uint8Array(SLOT_HEADER_BYTES + payload.length);
  const view = new DataView(slot.buffer);
  view.setUint32(0, SLOT_MAGIC);
  view.setBigUint64(4, BigInt(sequence));
  view.setUint16(12, payload.length);
  slot.set(payload, SLOT_HEADER_BYTES);
  view.setUint32(14, slotCrc(slot, payload.length));
  return slot;
}

/** CRC-32 of what a slot's checksum covers: sequence, length and payload (the magic only says what the file is). */
function slotCrc(slot: Uint8Array, payloadBytes: number): number {
  return crc32(slot.subarray(SLOT_HEADER_BYTES, SLOT_HEADER_BYTES + payloadBytes), crc32(slot.subarray(4, 14)));
}

/** A whole slot's sequence and payload; null for a slot never written, torn or otherwise damaged. */
function decodeSlot(slot: Uint8Array): { sequence: number; payload: Uint8Array } | null {
  if (slot.length < SLOT_HEADER_BYTES) return null;
  const view = new DataView(slot.buffer, slot.byteOffset, slot.length);
  if (view.getUint32(0) !== SLOT_MAGIC) return null;
  const length = view.getUint16(12);
  if (SLOT_HEADER_BYTES + length > slot.length) return null;
  if (view.getUint32(14) !== slotCrc(slot, length)) return null;
  const sequence = view.getBigUint64(4);
  if (sequence > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return { sequence: Number(sequence), payload: slot.slice(SLOT_HEADER_BYTES, SLOT_HEADER_BYTES + length) };
}

/** Creates the two-slot file at `path` holding `payload`, through writeFileDurably (a crash leaves no file, never one without a whole slot), and opens it. */
export async function createTwoSlotFile(path: string, payload: Uint8Array): Promise<TwoSlotFile> {
  const image = new Uint8Array(2 * SLOT_BYTES);
  image.set(encodeSlot(1, payload), 0);
  await writeFileDurably(path, image);
  const file = await openTwoSlotFile(path);
  if (file === null) throw new SlotFileError('ERR_SLOT_FILE_DAMAGED', 'gone right after it was created');
  return file;
}

/**
 * Opens the two-slot file at `path` (null when there is none). A file with no whole slot is
 * ERR_SLOT_FILE_DAMAGED: the caller decides what that costs.
 */
export async function openTwoSlotFile(path: string): Promise<TwoSlotFile | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r+');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    // Read at most the two slots: a file grown by something else is not read whole.
    const image = new Uint8Array(2 * SLOT_BYTES);
    const { bytesRead } = await handle.read(image, 0, image.length, 0);
    const slots = [decodeSlot(image.subarray(0, Math.min(bytesRead, SLOT_BYTES))), decodeSlot(image.subarray(SLOT_BYTES, Math.max(SLOT_BYTES, bytesRead)))];
    const newest = slots[0] !== null && (slots[1] === null || slots[0].sequence > slots[1].sequence) ? 0 : slots[1] !== null ? 1 : null;
    if (newest === null) throw new SlotFileError('ERR_SLOT_FILE_DAMAGED', 'neither of its two slots is whole');
    return twoSlotFile(handle, newest, slots[newest]!);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}

function twoSlotFile(handle: FileHandle, newestSlot: number, newest: { sequence: number; payload: Uint8Array }): TwoSlotFile {
  let slot = newestSlot;
  let sequence = newest.sequence;
  let payload = newest.payload;
  let closed = false;
  /** The write in flight: writes are chained so that two never pick the same slot. */
  let last: Promise<unknown> = Promise.resolve();
  const writeOnce = async (next: Uint8Array): Promise<void> => {
    if (closed) throw new SlotFileError('ERR_SLOT_FILE_CLOSED', 'the file is closed');
    // The other slot, always: after a failed write too, so the newest whole slot is never the one written.
    const target = 1 - slot;
    const bytes = encodeSlot(sequence + 1, next);
    await handle.write(bytes, 0, bytes.length, target * SLOT_BYTES);
    await handle.datasync();
    slot = target;
    sequence += 1;
    payload = next.slice();
  };
  return {
    get payload() {
      return payload;
    },
    write(next) {
      const done = last.then(() => writeOnce(next));
      last = done.catch(() => undefined);
      return done;
    },
    async close() {
      if (closed) return;
      closed = true;
      await last;
      await handle.close();
    },
  };
}
