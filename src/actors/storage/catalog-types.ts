import type { DicomElement } from '../../codec/dicom-types.ts';

/**
 * What the archive knows about one stored instance without reading its bytes. It travels with the
 * instance between sites (issue 3), so it must stay plain data that msgpackr can encode.
 */
export interface CatalogEntry {
  sopInstanceUid: string;
  sopClassUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  /** Empty string when the instance has no PatientID (allowed by some IODs, seen in the corpus). */
  patientId: string;
  /** The transfer syntax the bytes are stored in (the one the sender used). */
  transferSyntaxUid: string;
  /** Size of the stored dataset bytes (no Part 10 meta header). */
  byteLength: number;
  /** SHA-256 of the stored dataset bytes, lower-case hex. */
  sha256: string;
  /** Wall clock at the first site that stored it, in milliseconds since the epoch. */
  storedAtMs: number;
  /** Where the bytes live in the local store (opaque to everyone but the store). */
  blobId: string;
  /**
   * Top-level, non-bulk attributes from the dataset header (text and numeric VRs, no sequences),
   * used to answer C-FIND. Tags absent here are returned empty when a query asks for them.
   */
  attributes: DicomElement[];
}
