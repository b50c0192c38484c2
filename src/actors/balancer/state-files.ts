/**
 * The balancer's files in the data directory: the election record (`balancer-election.rec`, two slots
 * written in place, see openTwoSlotFile) and the learnt roster (`balancer-roster.json`).
 *
 * The election record is written before every vote or candidacy leaves, so it is on every election's
 * critical path: in place it costs one pwrite and one fdatasync on a file kept open, where the temporary
 * file, fsync, rename and fsync of the directory cost nine file-system calls (0.1-2.4 s each write on a
 * loaded machine, hunt 117). `balancer-election.json`, the record of earlier builds, is read once when
 * there is no `.rec` yet and then replaced by a marker that those builds refuse to start on (rather than
 * start with no vote record and vote twice in a term).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeEnvelope, encodeEnvelope } from '../../codec/envelope.ts';
import { createTwoSlotFile, openTwoSlotFile, SLOT_PAYLOAD_MAX_BYTES, SlotFileError, type TwoSlotFile, writeFileDurably } from '../../durable-file.ts';
import { decodeRosterFile, type RosterPeer } from './roster.ts';
import { decodeRecentForgets, type RecentForget } from './recent-forgets.ts';
import { votersMax, type ElectionDurable } from './messages.ts';
import { parseVoters } from './voters-codec.ts';

export const ELECTION_RECORD_FILE = 'balancer-election.rec';
/** The election record of builds before the two-slot file; now only a marker pointing to it. */
export const LEGACY_ELECTION_FILE = 'balancer-election.json';
export const ROSTER_FILE = 'balancer-roster.json';

export type BalancerErrorCode = 'ERR_BALANCER_CRASH_TEST' | 'ERR_BALANCER_STATE_FILE' | 'ERR_BALANCER_STATE_WRITE';

export class BalancerError extends Error {
  static readonly NAME = 'BalancerError';
  override readonly name = BalancerError.NAME;
  readonly code: BalancerErrorCode;
  constructor(code: BalancerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

const NO_VOTE_RECORD =
  'start with no vote record (safe unless an election is under way: the peer could vote twice in its term; it learns the current term from the others)';

/** What an operator can do about a damaged file, by file (the message names the file and what is wrong). */
const WAY_OUT = {
  [ELECTION_RECORD_FILE]: `restore it, or move it and ${LEGACY_ELECTION_FILE} away to ${NO_VOTE_RECORD}`,
  [LEGACY_ELECTION_FILE]: `restore it, or move it away to ${NO_VOTE_RECORD}`,
  [ROSTER_FILE]: 'restore it, or move it away: the peer learns the roster again from the peers it sees alive',
} as const;

type StateFile = keyof typeof WAY_OUT;

function damaged(dataDir: string, file: StateFile, what: string): BalancerError {
  return new BalancerError('ERR_BALANCER_STATE_FILE', `${join(dataDir, file)} is damaged (${what}): ${WAY_OUT[file]}`);
}

function unreadable(path: string, err: unknown): BalancerError {
  return new BalancerError('ERR_BALANCER_STATE_FILE', `cannot read ${path}: ${(err as Error).message}`, { cause: err });
}

async function readJson(dataDir: string, file: StateFile): Promise<unknown> {
  const path = join(dataDir, file);
  try {
    return JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    if (err instanceof SyntaxError) throw damaged(dataDir, file, err.message);
    throw unreadable(path, err);
  }
}

/** The learnt roster and the recent forget-peers kept beside it (see encodeRosterFile). */
export async function loadRoster(dataDir: string): Promise<{ peers: Map<string, RosterPeer>; forgets: RecentForget[] }> {
  const v = await readJson(dataDir, ROSTER_FILE);
  if (v === null) return { peers: new Map(), forgets: [] };
  try {
    return { peers: decodeRosterFile(v), forgets: decodeRecentForgets((v as { forgets?: unknown }).forgets) };
  } catch (err) {
    throw damaged(dataDir, ROSTER_FILE, (err as Error).message);
  }
}

/** What `balancer-election.json` holds once the record lives in the two-slot file. */
const movedMarker = {
  movedTo: ELECTION_RECORD_FILE,
  note: 'the election record is in balancer-election.rec; builds that read this file instead refuse to start here',
} as const;

/**
 * What `balancer-election.json` holds while the two-slot file is being created: earlier builds already refuse it
 * (a crash here followed by a downgrade must not start them from an older record), and this build starts from
 * `recordBeforeMove` when the crash left no `.rec`.
 */
function movingMarker(recordBeforeMove: ElectionDurable) {
  return { movedTo: ELECTION_RECORD_FILE, recordBeforeMove, note: movedMarker.note };
}

function isMovedMarker(v: unknown): boolean {
  return typeof v === 'object' && v !== null && (v as Record<string, unknown>).movedTo === ELECTION_RECORD_FILE;
}

function isMovingMarker(v: unknown): v is Record<string, unknown> & { recordBeforeMove: ElectionDurable } {
  if (!isMovedMarker(v)) return false;
  const before = (v as Record<string, unknown>).recordBeforeMove;
  return typeof before === 'object' && before !== null && isElectionDurable(before as Record<string, unknown>);
}

function isElectionDurable(v: Record<string, unknown>): boolean {
  return Number.isSafeInteger(v.currentTerm) && (v.currentTerm as number) >= 0 && (v.votedFor === null || typeof v.votedFor === 'string');
}

/** A record of earlier builds; the marker without its `.rec` is a record lost, not a record of none. */
async function loadLegacyElection(dataDir: string): Promise<ElectionDurable | null> {
  const v = (await readJson(dataDir, LEGACY_ELECTION_FILE)) as Record<string, unknown> | null;
  if (v === null) return null;
  if (isMovingMarker(v)) return { currentTerm: v.recordBeforeMove.currentTerm, votedFor: v.recordBeforeMove.votedFor };
  if (isMovedMarker(v)) throw damaged(dataDir, ELECTION_RECORD_FILE, `missing, though ${LEGACY_ELECTION_FILE} says the record moved there`);
  // Guessing a term could let this peer vote twice in one: refuse to start instead.
  if (typeof v !== 'object' || !isElectionDurable(v)) throw damaged(dataDir, LEGACY_ELECTION_FILE, 'not an election record');
  return { currentTerm: v.currentTerm as number, votedFor: v.votedFor as string | null };
}

function encodeElectionRecord(durable: ElectionDurable): Uint8Array {
  const meshMet = durable.meshMet !== undefined ? { meshMet: durable.meshMet } : {};
  const voters = durable.voters !== undefined ? { voters: { peers: durable.voters.peers, term: durable.voters.term, seq: durable.voters.seq } } : {};
  // As positions in the list, so that a full list and all of it leaving still fit the slot; one no longer listed is moot.
  const leavingAt = (durable.votersLeaving ?? []).map((peerId) => durable.voters?.peers.indexOf(peerId) ?? -1).filter((i) => i >= 0);
  const leaving = leavingAt.length > 0 ? { votersLeavingAt: leavingAt } : {};
  return encodeEnvelope({ type: 'electionRecord', currentTerm: durable.currentTerm, votedFor: durable.votedFor, ...meshMet, ...voters, ...leaving }, { maxBytes: SLOT_PAYLOAD_MAX_BYTES });
}

function decodeElectionRecord(dataDir: string, payload: Uint8Array): ElectionDurable {
  let v: Record<string, unknown>;
  try {
    v = decodeEnvelope(payload, { maxBytes: SLOT_PAYLOAD_MAX_BYTES });
  } catch (err) {
    throw damaged(dataDir, ELECTION_RECORD_FILE, `not an election record: ${(err as Error).message}`);
  }
  if (v.type !== 'electionRecord' || !isElectionDurable(v)) throw damaged(dataDir, ELECTION_RECORD_FILE, 'not an election record');
  // Versions before hunt 164 write no meshMet (and ignore it when they read a record of a later one).
  if (v.meshMet !== undefined && typeof v.meshMet !== 'boolean') throw damaged(dataDir, ELECTION_RECORD_FILE, 'not an election record');
  // Versions before hunt 184 write no voters, and drop them when they write a record read from a later one.
  const voters = v.voters === undefined ? undefined : parseVoters(v.voters);
  if (voters === null) throw damaged(dataDir, ELECTION_RECORD_FILE, `admitted voters that are not a list of at most ${votersMax} PeerIds`);
  // Versions before hunt 186 write no votersLeavingAt (kept in memory only), and drop it as they drop voters.
  const leaving = v.votersLeavingAt === undefined ? [] : parseLeavingAt(v.votersLeavingAt, voters?.peers ?? []);
  if (leaving === null) throw damaged(dataDir, ELECTION_RECORD_FILE, 'voters leaving that are not distinct positions in the admitted voters');
  return {
    currentTerm: v.currentTerm as number,
    votedFor: v.votedFor as string | null,
    ...(typeof v.meshMet === 'boolean' ? { meshMet: v.meshMet } : {}),
    ...(voters !== undefined ? { voters } : {}),
    ...(leaving.length > 0 ? { votersLeaving: leaving } : {}),
  };
}

/** ElectionDurable.votersLeaving from its positions in the list (sorted, as the reducer keeps it); null when malformed. */
function parseLeavingAt(value: unknown, peers: readonly string[]): string[] | null {
  if (!Array.isArray(value) || value.length > votersMax || new Set(value).size !== value.length) return null;
  if (!value.every((i): i is number => Number.isSafeInteger(i) && i >= 0 && i < peers.length)) return null;
  return value.map((i) => peers[i] as string).sort();
}

/**
 * This peer's term and vote: read once at start, then written before anything that depends on them leaves.
 * One writer, one write at a time (the balancer actor awaits each).
 */
export interface ElectionRecord {
  /** As last made durable (or read at start): what a restarted balancer starts from. */
  readonly durable: ElectionDurable;
  /** Makes `durable` the record before it resolves; a failure is ERR_BALANCER_STATE_WRITE and changes nothing. */
  write(durable: ElectionDurable): Promise<void>;
  close(): Promise<void>;
}

/**
 * Reads the election record (a damaged one is ERR_BALANCER_STATE_FILE, naming the file and the way out) and
 * keeps its file open for the writes. Without a `.rec` the file is created at the first write (a start on a
 * full disk is not refused: the peer only cannot vote, as before), from the legacy record when there is one.
 */
export async function openElectionRecord(dataDir: string): Promise<ElectionRecord> {
  const path = join(dataDir, ELECTION_RECORD_FILE);
  let file: TwoSlotFile | null = null;
  let durable: ElectionDurable;
  try {
    file = await openTwoSlotFile(path);
  } catch (err) {
    if (err instanceof SlotFileError && err.code === 'ERR_SLOT_FILE_DAMAGED') throw damaged(dataDir, ELECTION_RECORD_FILE, err.message);
    throw unreadable(path, err);
  }
  if (file !== null) {
    try {
      durable = decodeElectionRecord(dataDir, file.payload);
    } catch (err) {
      await file.close();
      throw err;
    }
  } else {
    durable = (await loadLegacyElection(dataDir)) ?? { currentTerm: 0, votedFor: null };
  }
  // Retried at each write until it holds: a marker left holding the record from before the move would let a lost `.rec` go unnoticed.
  let markerFinal = file !== null && (await markMoved(dataDir));
  let closed = false;
  /** The write creating the file, while it runs: close waits for it as the file's own close waits for its writes. */
  let creating: Promise<unknown> | undefined;
  const create = async (payload: Uint8Array): Promise<void> => {
    // The marker goes first and must succeed: with the `.rec` but the old record beside it, a downgrade would start from that record.
    await writeFileDurably(join(dataDir, LEGACY_ELECTION_FILE), `${JSON.stringify(movingMarker(durable))}\n`);
    file = await createTwoSlotFile(path, payload);
    markerFinal = await markMoved(dataDir);
  };
  return {
    get durable() {
      return durable;
    },
    async write(next) {
      try {
        const payload = encodeElectionRecord(next);
        if (closed) throw new SlotFileError('ERR_SLOT_FILE_CLOSED', 'the balancer stopped');
        if (file === null) {
          const done = create(payload);
          creating = done.catch(() => undefined);
          try {
            await done;
          } finally {
            creating = undefined;
          }
        } else {
          await file.write(payload);
          if (!markerFinal) markerFinal = await markMoved(dataDir);
        }
      } catch (err) {
        throw new BalancerError('ERR_BALANCER_STATE_WRITE', `cannot write ${ELECTION_RECORD_FILE}: ${(err as Error).message}`, { cause: err });
      }
      durable = next;
    },
    async close() {
      closed = true;
      // A close during the first write found no file yet, and the file that write then opened stayed open.
      await creating;
      await file?.close();
    },
  };
}

/** The record as on disk now, for tests and tools (the same damage checks as a start). */
export async function readElectionRecord(dataDir: string): Promise<ElectionDurable> {
  const record = await openElectionRecord(dataDir);
  await record.close();
  return record.durable;
}

/**
 * Whether the record in `dataDir` holds admitted voters naming a peer: a founded mesh's list (a founder's, or an
 * admitted peer's). A joiner's list is empty until a leader admits it, and tells of no founding: counted as one, a
 * founder killed before its founding was durable was never told to found again, and the mesh never had a leader.
 */
export async function holdsFoundedVoters(dataDir: string): Promise<boolean> {
  return ((await readElectionRecord(dataDir)).voters?.peers.length ?? 0) > 0;
}

/**
 * Leaves earlier builds a legacy file they refuse to start on, without the record from before the move; best
 * effort (the record itself is durable): whether the marker is in place.
 */
async function markMoved(dataDir: string): Promise<boolean> {
  try {
    const v: unknown = JSON.parse(await readFile(join(dataDir, LEGACY_ELECTION_FILE), 'utf8'));
    if (isMovedMarker(v) && !isMovingMarker(v)) return true;
  } catch {
    // Absent or unreadable: write the marker.
  }
  return writeFileDurably(join(dataDir, LEGACY_ELECTION_FILE), `${JSON.stringify(movedMarker)}\n`).then(
    () => true,
    () => false,
  );
}
