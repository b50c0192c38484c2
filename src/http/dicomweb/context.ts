/**
 * What the DICOMweb services (PS3.18) need from the peer: the same ports the DICOM associations use, so
 * a study stored over STOW-RS is replicated like a C-STORE, and QIDO-RS and WADO-RS see what C-FIND and
 * C-GET see, at any site of the mesh.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { DicomJsonMediaType } from './accept.ts';
import { sendJson } from '../respond.ts';
import type { IngestPort } from '../../actors/association/services/deps.ts';
import type { RetrieveSource } from '../../actors/association/services/query-retrieve.ts';
import type { ReplicaStore } from '../../actors/storage/replica-store.ts';
import type { Clock } from '../../actors/runtime/clock.ts';
import type { ConcurrencyLimit } from '../../actors/runtime/concurrency-limit.ts';
import type { Logger } from '../../actors/runtime/logger.ts';
import type { Transcoder } from '../../codec/transcode-pool.ts';
import type { SearchCursors } from './search-cursors.ts';

export interface DicomWebContext {
  store: ReplicaStore;
  /** Where retrieves find instances (in a mesh: at every alive site), and whether searches may be answered now. */
  retrieveSource: RetrieveSource;
  /** Where STOW-RS instances go: the C-STORE's path, write quorum included. */
  ingest: IngestPort;
  /** Converts instances for clients that do not accept the stored transfer syntax. */
  transcoder: Transcoder;
  clock: Clock;
  log: Logger;
  /** Counted here, shown in GET /api/mesh (`dicomweb`). */
  stats: DicomWebStats;
  /**
   * Bounds the lookups and pulls that go to other sites (a mesh protocol takes 64 streams at once): a
   * flood of requests waits its turn rather than failing as "peers did not answer".
   */
  meshLookups: ConcurrencyLimit;
  /**
   * Set on the context of a request's later instances, once its response is under way: their mesh lookups
   * and their holds in heldInstanceBytes wait their turn rather than be refused for a full queue (which could
   * only cut the response).
   */
  responseUnderWay?: boolean;
  /**
   * Bounds the bytes of instances held whole at once (frames read from an instance read whole, and
   * conversions, which decode it), weighted by each instance's size: parallel requests of a large cine wait
   * their turn rather than exhaust memory.
   */
  heldInstanceBytes: ConcurrencyLimit;
  /** Where this site's recent QIDO-RS pages ended, for the next page to resume there (search-cursors.ts). */
  searchCursors: SearchCursors;
  /**
   * Where a search should go instead while this site is refilling (its catalog far behind the fullest
   * site's): a whole site's HTTP address, or none known. Undefined when searches may be answered here.
   */
  searchElsewhere?: () => { reason: string; httpAddress?: string } | undefined;
  /** The other known sites with no peer alive: an instance found nowhere may be there (named in a 404). */
  sitesDown?: () => readonly string[];
}

/** Requests by service, and how they ended: what an operator reads to see whether viewers are served. */
export interface DicomWebStats {
  searches: number;
  retrieves: number;
  metadata: number;
  frames: number;
  stores: number;
  /** Answered 4xx (or 503: retry), or refused by the router. */
  refused: number;
  /** Answered 500. */
  failed: number;
  /** Ended before the response was whole: the client left, or a read failed after the headers went out. */
  cutShort: number;
}

/** Lookups and pulls at other sites running at once for DICOMweb, and waiting; beyond, 503. */
export const meshLookupsRunningMax = 16;
export const meshLookupsQueuedMax = 1024;
/** Instance bytes held whole at once (weighed several times each: chunks, the whole, what is made of it); beyond, requests wait. */
export const heldInstanceBytesMax = 1024 * 1024 * 1024;
export const heldInstanceRequestsQueuedMax = 256;
/** A request waits this long at most for its turn to hold an instance; then 503 (before the idle timeout closes it). */
export const heldInstanceWaitMaxMs = 60_000;

export function createDicomWebStats(): DicomWebStats {
  return { searches: 0, retrieves: 0, metadata: 0, frames: 0, stores: 0, refused: 0, failed: 0, cutShort: 0 };
}

/** One request, as the services see it: the base URL of this service names the resources in responses. */
export interface DicomWebExchange {
  req: IncomingMessage;
  res: ServerResponse;
  /** The query string's parameters. */
  query: URLSearchParams;
  /** `http://host:port/dicom-web`, from the request's Host header: what RetrieveURL and BulkDataURI start with. */
  baseUrl: string;
}

/** An error answer: an HTTP status and a message, with a stable code as on the rest of this port. */
export class DicomWebError extends Error {
  override readonly name = 'DicomWebError';
  constructor(
    readonly httpStatus: number,
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Ends the response with `body` and settles once it is all handed to the kernel, or the connection is gone:
 * what is held whole for a response stays counted (in ctx.heldInstanceBytes) while a client is slow to read it.
 */
export function endAndDrain(res: ServerResponse, body?: Uint8Array): Promise<void> {
  if (res.destroyed) return Promise.resolve();
  const sent = new Promise<void>((resolve) => {
    res.once('finish', resolve);
    res.once('close', resolve);
  });
  res.end(body);
  return sent;
}

/** PS3.18 8.7.3: DICOM JSON (labelled application/json when the client asked for that only: requireDicomJson). */
export function sendDicomJson(res: ServerResponse, status: number, body: unknown, mediaType: DicomJsonMediaType = 'application/dicom+json'): void {
  sendJson(res, status, body, mediaType);
}
