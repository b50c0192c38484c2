/**
 * DICOM UID checks (PS3.5 9.1). The archive uses UIDs as LevelDB key parts, so even the lenient check
 * guarantees a string made only of digits and single dots, 1 to 64 characters long.
 */

export const maxUidLength = 64;

const strictUidPattern = /^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$/;
const lenientUidPattern = /^[0-9]+(?:\.[0-9]+)*$/;

/** True when `s` is a conformant UID: 1-64 chars, digits and dots, non-empty components without leading zeros. */
export function isValidUid(s: string): boolean {
  return s.length >= 1 && s.length <= maxUidLength && strictUidPattern.test(s);
}

/**
 * True when `s` is safe to store even if not conformant: like `isValidUid` but a multi-digit component may
 * start with zero, because real devices emit UIDs such as `1.2.246.352.91.0000217...`.
 */
export function isAcceptableUid(s: string): boolean {
  return s.length >= 1 && s.length <= maxUidLength && lenientUidPattern.test(s);
}

/** Removes the single trailing NUL (or space, from non-conformant senders) that pads a UI value to even length. */
export function normalizeUidValue(raw: string): string {
  const last = raw.charCodeAt(raw.length - 1);
  return last === 0x00 || last === 0x20 ? raw.slice(0, -1) : raw;
}
