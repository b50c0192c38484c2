/**
 * Shared DICOM value types. A tag is a 32-bit number (group << 16 | element), e.g. 0x00100010 for
 * PatientName. Text values keep their original bytes as a latin1 string, so encoding them again with
 * latin1 gives back exactly the bytes that were sent, whatever the Specific Character Set.
 */
export type Tag = number;

/** Two-letter value representation ("PN", "UI", ...); "UN" when unknown (implicit VR, no dictionary entry). */
export type Vr = string;

export interface DicomElement {
  tag: Tag;
  vr: Vr;
  /**
   * Text VRs: the raw value as latin1 (multiple values separated by backslash, trailing padding removed).
   * Binary numeric VRs (US, UL, SS, SL, FL, FD, AT): decimal values joined by backslash.
   * Empty string for a zero-length element. Sequences and bulk data (OB, OW, UN, SQ ...) are not decoded:
   * `value` is undefined for them.
   */
  value: string | undefined;
}

export const TransferSyntax = {
  ImplicitVrLittleEndian: '1.2.840.10008.1.2',
  ExplicitVrLittleEndian: '1.2.840.10008.1.2.1',
  DeflatedExplicitVrLittleEndian: '1.2.840.10008.1.2.1.99',
  ExplicitVrBigEndian: '1.2.840.10008.1.2.2',
} as const;

/** Tag as the 8 upper-case hex digits used in keys and JSON ("0020000D"). */
export function tagHex(tag: Tag): string {
  return (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
}
