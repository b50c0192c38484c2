/**
 * The final DIMSE responses this peer sent since its start, by service and by PS3.7 Annex C class, for the
 * operators (/api/mesh `dimse`, /metrics): a rise of C-STORE failures (0xA700 while a quorum is out of reach, say)
 * is what a modality sees first. Pending responses are not counted: each operation counts once, by its end.
 */
import { CommandField, isPendingStatus, isWarningStatus, Status } from '../../codec/dimse.ts';
import type { ServiceKind } from './negotiation.ts';

/** Each negotiated service by the name of its DIMSE operation: the log's words and the counts' keys. */
export const serviceNames = { verification: 'C-ECHO', find: 'C-FIND', get: 'C-GET', move: 'C-MOVE', storage: 'C-STORE', commitment: 'N-ACTION' } as const satisfies Record<ServiceKind, string>;

export type DimseService = (typeof serviceNames)[ServiceKind];

export type DimseOutcome = 'success' | 'warning' | 'failure' | 'cancel';

/** Service name -> outcome -> count; the services are a fixed set, so the object is bounded. */
export type DimseStats = Record<DimseService, Record<DimseOutcome, number>>;

/** The response that ends each service's operation (a request's response field is the request's | 0x8000). */
const serviceOfResponse: Readonly<Record<number, ServiceKind>> = {
  [CommandField.CEchoRsp]: 'verification',
  [CommandField.CStoreRsp]: 'storage',
  [CommandField.CFindRsp]: 'find',
  [CommandField.CGetRsp]: 'get',
  [CommandField.CMoveRsp]: 'move',
  [CommandField.NActionRsp]: 'commitment',
};

export function createDimseStats(): DimseStats {
  return Object.fromEntries(Object.values(serviceNames).map((name) => [name, { success: 0, warning: 0, failure: 0, cancel: 0 }])) as DimseStats;
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
  const kind = serviceOfResponse[commandField];
  const outcome = status === undefined ? undefined : dimseOutcome(status);
  if (kind !== undefined && outcome !== undefined) stats[serviceNames[kind]][outcome] += 1;
}
