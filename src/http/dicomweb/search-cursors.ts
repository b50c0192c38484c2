/**
 * Where recent QIDO-RS pages ended, so that the next page (offset = this page's offset + its results)
 * resumes the search there instead of walking and dropping every match before it: a viewer paging through
 * a large archive then pays for each page, not for all the pages before it.
 */
import { createHash } from 'node:crypto';
import type { QueryCursor, QueryRequest } from '../../actors/storage/query/query.ts';

/** Pages remembered at once, the least recently used forgotten first: each takes ~0.5 KB. */
export const searchCursorsMax = 256;
/** A page's end older than this is not resumed from: offsets then walk, as they did, after a long pause. */
export const searchCursorAgeMaxMs = 10 * 60_000;

interface SavedCursor {
  cursor: QueryCursor;
  savedAtMs: number;
}

export class SearchCursors {
  private readonly saved = new Map<string, SavedCursor>();

  constructor(
    private readonly entriesMax = searchCursorsMax,
    private readonly ageMaxMs = searchCursorAgeMaxMs,
  ) {}

  get size(): number {
    return this.saved.size;
  }

  /** The cursor after the match at `offset - 1` of this search, if a page ended there lately. */
  take(searchKey: string, offset: number, nowMs: number): QueryCursor | undefined {
    const key = `${offset}:${searchKey}`;
    const saved = this.saved.get(key);
    if (saved === undefined) return undefined;
    this.saved.delete(key);
    if (nowMs - saved.savedAtMs > this.ageMaxMs || nowMs < saved.savedAtMs) return undefined;
    // Kept, as the most recently used: a client may ask for the same page again.
    this.saved.set(key, saved);
    return saved.cursor;
  }

  /** Remembers that the match at `offset - 1` of this search has `cursor`. */
  put(searchKey: string, offset: number, cursor: QueryCursor, nowMs: number): void {
    const key = `${offset}:${searchKey}`;
    this.saved.delete(key);
    this.saved.set(key, { cursor, savedAtMs: nowMs });
    for (const oldest of this.saved.keys()) {
      if (this.saved.size <= this.entriesMax) break;
      this.saved.delete(oldest);
    }
  }
}

/** A search's identity whatever its page: the request (keys, level, root), hashed so that a long query takes 64 bytes. */
export function searchKeyOf(request: QueryRequest): string {
  return createHash('sha256').update(JSON.stringify([request.root, request.level, request.keys])).digest('hex');
}
