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
  /** The peer is shutting down: abort the association. */
  | { type: 'shutdown' }
  /** Test hook: makes the handler throw, to show that a crash takes down this association alone. */
  | { type: 'crash'; why: string };
