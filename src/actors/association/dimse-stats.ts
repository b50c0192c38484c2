/**
 * The final DIMSE responses this peer sent since its start, by service and by PS3.7 Annex C class, for the
 * operators (/api/mesh `dimse`, /metrics): a rise of C-STORE failures (0xA700 while a quorum is out of reach, say)
 * is what a modality sees first. Pending responses are not counted: each operation counts once, by its end.
 */
import { CommandField, isPendingStatus, isWarningStatus, Status } from '../../codec/dimse.ts';

export type DimseOutcome = 'success' | 'warning' | 'failure' | 'cancel';

/** Service name -> outcome -> count; the services are a fixed set, so the object is bounded. */
export type DimseStats = Record<DimseService, Record<DimseOutcome, number>>;

const serviceOfResponse = {
  [CommandField.CEchoRsp]: 'C-ECHO',
  [CommandField.CStoreRsp]: 'C-STORE',
  [CommandField.CFindRsp]: 'C-FIND',
  [CommandField.CGetRsp]: 'C-GET',
  [CommandField.CMoveRsp]: 'C-MOVE',
  [CommandField.NActionRsp]: 'N-ACTION',
} as const;

export type DimseService = (typeof serviceOfResponse)[keyof typeof serviceOfResponse];

export function createDimseStats(): DimseStats {
  const outcomes = (): Record<DimseOutcome, number> => ({ success: 0, warning: 0, failure: 0, cancel: 0 });
  return { 'C-ECHO': outcomes(), 'C-STORE': outcomes(), 'C-FIND': outcomes(), 'C-GET': outcomes(), 'C-MOVE': outcomes(), 'N-ACTION': outcomes() };
}

/** The class of a final status; undefined for a pending one, which ends nothing. */
export function dimseOutcome(status: number): DimseOutcome | undefined {
  if (isPendingStatus(status)) return undefined;
  if (status === Status.Success) return 'success';
  if (status === Status.Cancel) return 'cancel';
  return isWarningStatus(status) ? 'warning' : 'failure';
}

/** Counts a response sent with `commandField` and `status`; requests, pending responses and other services are left out. */
export function countDimseResponse(stats: DimseStats, commandField: number, status: number | undefined): void {
  const service = (serviceOfResponse as Record<number, DimseService | undefined>)[commandField];
  const outcome = status === undefined ? undefined : dimseOutcome(status);
  if (service !== undefined && outcome !== undefined) stats[service][outcome] += 1;
}
