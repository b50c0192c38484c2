/** The association actor's protocol: everything that can happen to one DICOM association. */
import type { Pdu } from '../../codec/pdu.ts';

export type AssociationMsg =
  /** PDUs framed from one socket read; `bytes` is what to report as consumed afterwards (read back-pressure). */
  | { type: 'received'; pdus: Pdu[]; bytes: number }
  | { type: 'invalidPdu'; reason: number; detail: string }
  | { type: 'transportClosed' }
  | { type: 'artimExpired' }
  /** Nothing received for the idle timeout while no operation runs: the association is given up. */
  | { type: 'idleExpired' }
  /**
   * The peer is shutting down, its drain ending at `drainEndMs` (association clock): an established
   * association's C-GETs and C-MOVEs send no more sub-operations and end with their final responses, and
   * the requestor may release, until then; then (or at once, if not established) it is aborted (see onShutdown).
   */
  | { type: 'shutdown'; drainEndMs: number }
  /** The final responses' time is up: abort whatever is still open. */
  | { type: 'shutdownExpired' }
  /** The operations under way when the requestor asked to release have ended: answer the release. */
  | { type: 'operationsEndedAfterRelease' }
  /** Test hook: makes the handler throw, to show that a crash takes down this association alone. */
  | { type: 'crash'; why: string };
