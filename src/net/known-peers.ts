/**
 * Where the other mesh peers were last seen: `<dataDir>/known-peers.json`, the dialable addresses (each
 * ending in /p2p/<PeerId>) of the peers this one has been connected to, the most recently connected last,
 * bounded (maxPeers, maxAddrsPerPeer). A restarted site dials them (quietly: see the reconnect loop in
 * node.ts), so a site moved to another host or --p2p-port without --bootstrap finds the others itself, as
 * long as one of them is still where it was; before, only the others' redials of its old address could
 * bring it back, and a moved site served alone (helper 91, helper 93).
 *
 * Written like the peer key (a temporary file, fsync, rename, fsync of the directory), a moment after a
 * change and then at most every `writeIntervalMs`, and at stop; at once when the operator forgets a peer;
 * hourly while an absence counts, and when an entry has been absent `forgetAfterMs` (checkpointAbsences).
 * Each entry says how long its peer had been absent (`seenAtMs`, against the file's `writtenAtMs`), counted
 * only while another peer of its own site was connected (absenceCounts): an entry absent `forgetAfterMs`
 * (24 h) so is dropped, as is one the operator forgot (POST /api/forget-peer, /api/forget-site: see forget).
 * Before, the address of a peer gone for good (decommissioned, restored under a new PeerId) stayed until 64
 * others had connected, and every start dialled it; then (hunt 161/166) absence counted while any peer was
 * connected, and groups of sites cut apart for a day forgot each other's addresses (hunt 171). A damaged or
 * unreadable file is reported through `onProblem` and ignored (the peer starts as it would without it), as
 * is a file that cannot be written (reported once until a write succeeds again): the file is a hint, never a
 * reason to stop.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { writeFileDurably } from '../durable-file.ts';
import { systemClock, type Clock, type TimerHandle } from '../actors/runtime/clock.ts';
import { siteNamePattern } from '../config.ts';

export const KNOWN_PEERS_FILE = 'known-peers.json';
const KNOWN_PEERS_VERSION = 1;
const MAX_FILE_BYTES = 256 * 1024;
const MAX_ADDR_CHARS = 512;
const P2P_CODE = 421;
/** Longest a counted absence goes unwritten: what a process killed (not stopped) loses of it (see checkpointAbsences). */
const ABSENCE_CHECKPOINT_MS = 3600_000;

export interface KnownPeer {
  readonly peerId: string;
  /** Dialable addresses, each ending in /p2p/<peerId>. */
  readonly addrs: readonly string[];
  /** Its site, once the mesh said (noteSite): its entry goes when the site is forgotten (forgetSites). */
  readonly site?: string;
}

/** A saved peer as read at a start: its absence as counted (absenceCounts) while this peer ran. */
export interface SavedPeer extends KnownPeer {
  readonly absentMs: number;
}

/** A saved peer absent this long, counted while another peer of its site is connected (absenceCounts), is dropped. */
export const knownPeerForgetAfterMsDefault = 24 * 3600_000;

export interface KnownPeersOptions {
  /** Peers kept (the most recently connected). Default 64. */
  maxPeers?: number;
  /** Addresses kept per peer. Default 8. */
  maxAddrsPerPeer?: number;
  /** Delay of the first write after a change (ms). Default 1000. */
  writeDelayMs?: number;
  /** Least time between two writes (ms). Default 30000. */
  writeIntervalMs?: number;
  /** A peer absent this long (ms), counted as absenceCounts says, is dropped. Default knownPeerForgetAfterMsDefault. */
  forgetAfterMs?: number;
  /** nowMs for absences, dateMs for the times in the file, timers for the absence checkpoints. Default systemClock. */
  clock?: Clock;
}

/** A saved peer's absence so far: the time counted in spells ended, and the nowMs the current spell began (none while it does not count). */
export interface Absence {
  readonly countedMs: number;
  readonly sinceMs?: number;
}

/**
 * Whether a saved peer's absence counts now: only while it is not connected and another peer of its own site
 * is (its successor under a new PeerId, or another peer of a site with several). Its site is reachable then,
 * so this PeerId is down or gone, not cut off. Sites cut apart from each other for days (a WAN outage), or a
 * site alone, keep each other's addresses, and find each other again at the next start; so does an entry
 * whose site is not known yet (a file of an earlier build). A site gone for good leaves by forget-site.
 */
export function absenceCounts(peer: { readonly site?: string | undefined; readonly connected: boolean }, connectedSites: ReadonlySet<string>): boolean {
  return !peer.connected && peer.site !== undefined && connectedSites.has(peer.site);
}

/** The absence counted by `nowMs`. */
export function absentMsAt(absence: Absence, nowMs: number): number {
  return absence.countedMs + (absence.sinceMs === undefined ? 0 : Math.max(0, nowMs - absence.sinceMs));
}

/** The absence at `nowMs`, its current spell ended, and a new one begun if it `counts` from now on. */
export function recountedAbsence(absence: Absence, counts: boolean, nowMs: number): Absence {
  const countedMs = absentMsAt(absence, nowMs);
  return counts ? { countedMs, sinceMs: nowMs } : { countedMs };
}

/** The file could not be read (damaged, unreadable: ignored) or written (kept in memory until it can). */
export interface KnownPeersProblem {
  readonly path: string;
  readonly operation: 'read' | 'write';
  readonly error: string;
}

/** The addresses of `value` that name `peerId` in their last /p2p/ part, at most `max`. */
function validAddrs(value: unknown, peerId: string, max: number): string[] {
  if (!Array.isArray(value)) return [];
  const addrs: string[] = [];
  for (const text of value) {
    if (typeof text !== 'string' || text.length > MAX_ADDR_CHARS) continue;
    try {
      const named = multiaddr(text).getComponents().findLast((c) => c.code === P2P_CODE)?.value;
      if (named === peerId && !addrs.includes(text)) addrs.push(text);
    } catch {
      // not a multiaddr: left out
    }
    if (addrs.length >= max) break;
  }
  return addrs;
}

/** A time in the file: a whole, non-negative number of milliseconds, or undefined. */
function timeMs(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/**
 * Parses the file's text: the valid entries (a bad entry among good ones is left out), or an error for a
 * file that is not a known-peers file at all. `absentMs` counts only the time this peer ran (as the roster
 * does at a start): the time since the file was written is left out, so a mesh down for days together finds
 * itself again; an entry "seen" after the file was written (the clock was set back), or one without times
 * (written before they were), counts as seen then. Entries absent for forgetAfterMs are left out.
 */
export function parseKnownPeers(text: string, selfPeerId: string, opts: KnownPeersOptions = {}): { peers: SavedPeer[]; error?: string } {
  const maxPeers = opts.maxPeers ?? 64;
  const forgetAfterMs = opts.forgetAfterMs ?? knownPeerForgetAfterMsDefault;
  const maxAddrs = opts.maxAddrsPerPeer ?? 8;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { peers: [], error: `not JSON (${(err as Error).message})` };
  }
  const v = value as { version?: unknown; writtenAtMs?: unknown; peers?: unknown } | null;
  if (typeof v !== 'object' || v === null || v.version !== KNOWN_PEERS_VERSION || !Array.isArray(v.peers)) {
    return { peers: [], error: `not a version ${KNOWN_PEERS_VERSION} known-peers file` };
  }
  const writtenAtMs = timeMs(v.writtenAtMs);
  const byId = new Map<string, SavedPeer>();
  for (const entry of v.peers.slice(-maxPeers * 2)) {
    const e = entry as { peerId?: unknown; addrs?: unknown; seenAtMs?: unknown; site?: unknown } | null;
    if (typeof e !== 'object' || e === null || typeof e.peerId !== 'string' || e.peerId === selfPeerId) continue;
    try {
      peerIdFromString(e.peerId);
    } catch {
      continue;
    }
    const addrs = validAddrs(e.addrs, e.peerId, maxAddrs);
    if (addrs.length === 0) continue;
    const seenAtMs = timeMs(e.seenAtMs);
    const absentMs = writtenAtMs === undefined || seenAtMs === undefined ? 0 : Math.max(0, writtenAtMs - seenAtMs);
    byId.delete(e.peerId);
    // A site as --site takes it: forgetSites drops by it, so a damaged one must not name another site.
    const site = typeof e.site === 'string' && siteNamePattern.test(e.site) ? { site: e.site } : {};
    if (absentMs < forgetAfterMs) byId.set(e.peerId, { peerId: e.peerId, addrs, absentMs, ...site });
  }
  return { peers: [...byId.values()].slice(-maxPeers) };
}

/** Reads `<dataDir>/known-peers.json`: no file is no peers; a damaged or unreadable one is a problem and no peers. */
export async function readKnownPeers(dataDir: string, selfPeerId: string, opts: KnownPeersOptions = {}): Promise<{ peers: SavedPeer[]; problem?: KnownPeersProblem }> {
  const path = join(dataDir, KNOWN_PEERS_FILE);
  let text: string;
  try {
    const st = await stat(path);
    if (st.size > MAX_FILE_BYTES) return { peers: [], problem: { path, operation: 'read', error: `${st.size} bytes: too large for a known-peers file` } };
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { peers: [] };
    return { peers: [], problem: { path, operation: 'read', error: (err as Error).message } };
  }
  const { peers, error } = parseKnownPeers(text, selfPeerId, opts);
  return error === undefined ? { peers } : { peers, problem: { path, operation: 'read', error } };
}

/** The list kept in memory and written to the data directory now and then (see the header comment). */
export class KnownPeersFile {
  readonly path: string;
  /** By PeerId, the most recently connected last: addresses, site, and absence (on the clock's nowMs). */
  private readonly peers = new Map<string, { addrs: string[]; absence: Absence; site?: string }>();
  /** Peers connected now (with addresses worth saving or not): never absent. */
  private readonly connected = new Set<string>();
  /** The site of each peer the mesh named (noteSite), entry or not, the most recent last: bounded (4 * maxPeers). */
  private readonly sites = new Map<string, string>();
  /** Peers forgotten while connected: not saved again until they connect anew (see forget). */
  private readonly forgottenWhileConnected = new Set<string>();
  private readonly maxPeers: number;
  private readonly maxAddrs: number;
  private readonly writeDelayMs: number;
  private readonly writeIntervalMs: number;
  private readonly forgetAfterMs: number;
  private readonly clock: Clock;
  private dirty = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** On the clock: the next absence checkpoint (see checkpointAbsences). */
  private checkpointTimer: TimerHandle | undefined;
  private writing: Promise<void> | undefined;
  /** performance.now() of the last write begun. */
  private writtenAtMs = Number.NEGATIVE_INFINITY;
  private failing = false;
  private stopped = false;

  constructor(
    dataDir: string,
    private readonly selfPeerId: string,
    initial: readonly SavedPeer[],
    opts: KnownPeersOptions = {},
    private readonly onProblem: (problem: KnownPeersProblem) => void = () => undefined,
  ) {
    this.path = join(dataDir, KNOWN_PEERS_FILE);
    this.maxPeers = opts.maxPeers ?? 64;
    this.maxAddrs = opts.maxAddrsPerPeer ?? 8;
    this.writeDelayMs = opts.writeDelayMs ?? 1000;
    this.writeIntervalMs = opts.writeIntervalMs ?? 30_000;
    this.forgetAfterMs = opts.forgetAfterMs ?? knownPeerForgetAfterMsDefault;
    this.clock = opts.clock ?? systemClock;
    // No peer is connected yet: no absence counts until one of a saved peer's site connects.
    for (const p of initial) this.peers.set(p.peerId, { addrs: [...p.addrs], absence: { countedMs: p.absentMs }, ...(p.site === undefined ? {} : { site: p.site }) });
  }

  /**
   * Ends each entry's current spell of absence and begins the next where absenceCounts says so: called after
   * every change of who is connected or of a site, the only times the answer can change.
   */
  private recount(): void {
    const nowMs = this.clock.nowMs();
    const connectedSites = new Set([...this.connected].flatMap((peerId) => this.sites.get(peerId) ?? this.peers.get(peerId)?.site ?? []));
    for (const [peerId, entry] of this.peers) {
      entry.absence = recountedAbsence(entry.absence, absenceCounts({ site: entry.site, connected: this.connected.has(peerId) }, connectedSites), nowMs);
    }
    this.checkpointAbsences();
  }

  /**
   * While an absence counts, the file is written when the first entry reaches forgetAfterMs (it goes then),
   * and at least hourly: before, only a change of addresses wrote it, so in a mesh that stood still the file
   * kept the absence of its last change, and a process killed rather than stopped counted again from there
   * at its next start (one killed more often than daily never dropped an entry).
   */
  private checkpointAbsences(): void {
    this.clock.clearTimeout(this.checkpointTimer);
    this.checkpointTimer = undefined;
    if (this.stopped) return;
    const nowMs = this.clock.nowMs();
    const leftMs = [...this.peers.values()].filter((e) => e.absence.sinceMs !== undefined).map((e) => this.forgetAfterMs - absentMsAt(e.absence, nowMs));
    if (leftMs.length === 0) return;
    this.checkpointTimer = this.clock.setTimeout(() => {
      this.checkpointTimer = undefined;
      // Dropped now, so the next checkpoint is a later one.
      this.dropAbsent();
      this.markDirty();
      this.checkpointAbsences();
    }, Math.max(0, Math.min(ABSENCE_CHECKPOINT_MS, ...leftMs)));
  }

  /** The peers kept, the most recently connected last; those absent for forgetAfterMs are dropped first. */
  list(): KnownPeer[] {
    this.dropAbsent();
    return [...this.peers].map(([peerId, { addrs, site }]) => ({ peerId, addrs: [...addrs], ...(site === undefined ? {} : { site }) }));
  }

  /**
   * The mesh says which site a peer belongs to (its heartbeats): kept with its entry, if it has one, and for
   * its connections (one without an entry, reached through a tunnel, still counts for its site).
   */
  noteSite(peerId: string, site: string): void {
    if (!siteNamePattern.test(site)) return;
    const known = this.sites.get(peerId);
    this.sites.delete(peerId);
    this.sites.set(peerId, site);
    if (this.sites.size > this.maxPeers * 4) this.sites.delete(this.sites.keys().next().value!);
    const entry = this.peers.get(peerId);
    if (entry !== undefined && entry.site !== site) {
      entry.site = site;
      this.markDirty();
    } else if (known === site) return;
    this.recount();
  }

  /** Sites forgotten (POST /api/forget-site, or its tombstone): their peers' entries go. Returns those peers. */
  forgetSites(sites: ReadonlySet<string>): string[] {
    const peerIds = [...this.peers].filter(([, entry]) => entry.site !== undefined && sites.has(entry.site)).map(([peerId]) => peerId);
    void this.forget(peerIds);
    return peerIds;
  }

  /**
   * Peers gone for good (the operator forgot them, or their site): their addresses are not kept, nor dialled
   * at the next start. Written at once, not at the next write interval: a process killed meanwhile dialled
   * them at its next start. One forgotten while connected is not saved again on that stay (another of its
   * connections identified re-saved it, and a stop wrote it back): only once it has disconnected and
   * connects again. Resolves once the file is written (a failed write is reported through onProblem).
   */
  forget(peerIds: Iterable<string>): Promise<void> {
    let changed = false;
    for (const peerId of peerIds) {
      if (this.connected.has(peerId)) this.forgottenWhileConnected.add(peerId);
      changed = this.peers.delete(peerId) || changed;
    }
    return changed ? this.writeNow() : Promise.resolve();
  }

  /** The peer's last connection closed: its absence, and its site's other peers', count as absenceCounts says from now. */
  noteDisconnected(peerId: string): void {
    if (!this.connected.delete(peerId)) return;
    this.forgottenWhileConnected.delete(peerId);
    this.recount();
  }

  private dropAbsent(): void {
    const nowMs = this.clock.nowMs();
    for (const [peerId, entry] of this.peers) {
      if (!this.connected.has(peerId) && absentMsAt(entry.absence, nowMs) >= this.forgetAfterMs) this.peers.delete(peerId);
    }
  }

  /**
   * A peer connected and said where it listens: kept as the most recent (a write follows if its addresses
   * are new). Addresses without /p2p/ get the peer's; those naming another peer, and this peer, are left out.
   */
  noteConnected(peerId: string, addrs: readonly string[]): void {
    if (this.stopped || peerId === this.selfPeerId) return;
    // Connected, even without an address worth saving (one reached through a tunnel): its site's other
    // peers' absence counts, and its own saved entry, if any, is seen.
    const before = this.peers.get(peerId);
    const wasConnected = this.connected.has(peerId);
    this.connected.add(peerId);
    const named = validAddrs(addrs.map((a) => (/\/p2p\//.test(a) ? a : `${a}/p2p/${peerId}`)), peerId, this.maxAddrs);
    if (named.length > 0 && !this.forgottenWhileConnected.has(peerId)) {
      this.peers.delete(peerId);
      const site = before?.site ?? this.sites.get(peerId);
      this.peers.set(peerId, { addrs: named, absence: { countedMs: 0 }, ...(site === undefined ? {} : { site }) });
      while (this.peers.size > this.maxPeers) this.peers.delete(this.peers.keys().next().value!);
      if (before === undefined || before.addrs.length !== named.length || before.addrs.some((a, i) => a !== named[i])) this.markDirty();
    } else if (before !== undefined) {
      before.absence = { countedMs: 0 };
    }
    if (!wasConnected) this.recount();
  }

  private markDirty(): void {
    this.dirty = true;
    if (this.timer !== undefined || this.writing !== undefined || this.stopped) return;
    const delay = Math.max(this.writeDelayMs, this.writtenAtMs + this.writeIntervalMs - performance.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.write();
    }, delay);
    this.timer.unref();
  }

  /** The list written now, after a write under way if there is one (see forget). */
  private async writeNow(): Promise<void> {
    this.dirty = true;
    if (this.writing !== undefined) await this.writing;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    // A stop writes what is left itself.
    if (this.dirty && !this.stopped) await this.write();
  }

  private write(): Promise<void> {
    if (this.writing !== undefined) return this.writing;
    this.dirty = false;
    this.writtenAtMs = performance.now();
    this.dropAbsent();
    // Times as dates, to be read by a later run: writtenAtMs - seenAtMs at the next start is the absence counted.
    const [nowMs, dateMs] = [this.clock.nowMs(), this.clock.dateMs()];
    const peers = [...this.peers].map(([peerId, { addrs, absence, site }]) => ({ peerId, addrs, ...(site === undefined ? {} : { site }), seenAtMs: dateMs - absentMsAt(absence, nowMs) }));
    const textOf = () => `${JSON.stringify({ version: KNOWN_PEERS_VERSION, writtenAtMs: dateMs, peers }, null, 1)}\n`;
    let text = textOf();
    // Never more than a start reads (64 peers of 8 long addresses could be): the least recently connected go.
    while (Buffer.byteLength(text) > MAX_FILE_BYTES && peers.length > 0) {
      peers.shift();
      text = textOf();
    }
    this.writing = writeFileDurably(this.path, text, { mode: 0o600 })
      .then(() => {
        this.failing = false;
      })
      .catch((err: Error) => {
        // Kept in memory; tried again after writeIntervalMs and at stop. Said once until a write succeeds.
        this.dirty = true;
        if (this.failing) return;
        this.failing = true;
        this.onProblem({ path: this.path, operation: 'write', error: err.message });
      })
      .finally(() => {
        this.writing = undefined;
        if (this.dirty && !this.stopped) this.markDirty();
      });
    return this.writing;
  }

  /**
   * Writes the list, and stops writing: always, when there is one, so that the file says when this peer
   * stopped (the time until its next start is not the others' absence).
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clock.clearTimeout(this.checkpointTimer);
    this.checkpointTimer = undefined;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.writing !== undefined) await this.writing;
    if (this.dirty || this.peers.size > 0) await this.write();
  }
}
