/**
 * Where the other mesh peers were last seen: `<dataDir>/known-peers.json`, the dialable addresses (each
 * ending in /p2p/<PeerId>) of the peers this one has been connected to, the most recently connected last,
 * bounded (maxPeers, maxAddrsPerPeer). A restarted site dials them (quietly: see the reconnect loop in
 * node.ts), so a site moved to another host or --p2p-port without --bootstrap finds the others itself, as
 * long as one of them is still where it was; before, only the others' redials of its old address could
 * bring it back, and a moved site served alone (helper 91, helper 93).
 *
 * Written like the peer key (a temporary file, fsync, rename, fsync of the directory), a moment after a
 * change and then at most every `writeIntervalMs`, and at stop. Each entry says when its peer was last
 * connected (`seenAtMs`) and the file when it was written (`writtenAtMs`): an entry whose peer has not been
 * connected for `forgetAfterMs` (24 h, the learnt roster's rosterForgetAfterMs) of this peer's run time
 * with another peer connected (meshTimeMs: a site cut off, or the only one up, keeps every address) is
 * dropped, as is one the operator forgot (POST /api/forget-peer, /api/forget-site: see forget). Before, the
 * address of a peer gone for good (decommissioned, restored under a new PeerId) stayed until 64 others had
 * connected, and every start dialled it. A damaged or unreadable file is reported
 * through `onProblem` and ignored (the peer starts as it would without it), as is a file that cannot be
 * written (reported once until a write succeeds again): the file is a hint, never a reason to stop.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { writeFileDurably } from '../durable-file.ts';
import { systemClock, type Clock } from '../actors/runtime/clock.ts';
import { siteNamePattern } from '../config.ts';

export const KNOWN_PEERS_FILE = 'known-peers.json';
const KNOWN_PEERS_VERSION = 1;
const MAX_FILE_BYTES = 256 * 1024;
const MAX_ADDR_CHARS = 512;
const P2P_CODE = 421;

export interface KnownPeer {
  readonly peerId: string;
  /** Dialable addresses, each ending in /p2p/<peerId>. */
  readonly addrs: readonly string[];
  /** Its site, once the mesh said (noteSite): its entry goes when the site is forgotten (forgetSites). */
  readonly site?: string;
}

/** A saved peer as read at a start: how long it had not been connected while this peer ran. */
export interface SavedPeer extends KnownPeer {
  readonly absentMs: number;
}

/** A saved peer not connected this long, counted while this peer runs, is dropped: the learnt roster's rosterForgetAfterMs. */
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
  /** A peer not connected this long (ms) while this peer runs is dropped. Default knownPeerForgetAfterMsDefault. */
  forgetAfterMs?: number;
  /** nowMs for absences, dateMs for the times in the file. Default systemClock. */
  clock?: Pick<Clock, 'nowMs' | 'dateMs'>;
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
  /** By PeerId, the most recently connected last: addresses, and when (meshTimeMs) last connected. */
  private readonly peers = new Map<string, { addrs: string[]; seenAtMs: number; site?: string }>();
  /** Peers connected now (with addresses worth saving or not): seen now, never dropped for absence. */
  private readonly connected = new Set<string>();
  /** Time run with no peer connected, in spells ended (ms), and the clock's nowMs when the current one began. */
  private isolatedMs = 0;
  private isolatedSinceMs: number | undefined;
  private readonly maxPeers: number;
  private readonly maxAddrs: number;
  private readonly writeDelayMs: number;
  private readonly writeIntervalMs: number;
  private readonly forgetAfterMs: number;
  private readonly clock: Pick<Clock, 'nowMs' | 'dateMs'>;
  private dirty = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
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
    // No peer is connected yet: a start is isolated until the first connects.
    this.isolatedSinceMs = this.clock.nowMs();
    const meshNowMs = this.meshTimeMs();
    for (const p of initial) this.peers.set(p.peerId, { addrs: [...p.addrs], seenAtMs: meshNowMs - p.absentMs, ...(p.site === undefined ? {} : { site: p.site }) });
  }

  /**
   * The clock absences are counted on: this peer's run time while at least one peer is connected. Alone (its
   * link cut, every other site down) it learns nothing of the others' fate, and the saved addresses are all it
   * has to find them: a site cut off for more than a day that then restarted dialled no one (hunt 166).
   */
  private meshTimeMs(): number {
    const nowMs = this.clock.nowMs();
    return nowMs - this.isolatedMs - (this.isolatedSinceMs === undefined ? 0 : nowMs - this.isolatedSinceMs);
  }

  /** The peers kept, the most recently connected last; those absent for forgetAfterMs are dropped first. */
  list(): KnownPeer[] {
    this.dropAbsent();
    return [...this.peers].map(([peerId, { addrs, site }]) => ({ peerId, addrs: [...addrs], ...(site === undefined ? {} : { site }) }));
  }

  /** The mesh says which site a peer belongs to (its heartbeats): kept with its entry, if it has one. */
  noteSite(peerId: string, site: string): void {
    const entry = this.peers.get(peerId);
    if (entry === undefined || entry.site === site || !siteNamePattern.test(site)) return;
    entry.site = site;
    this.markDirty();
  }

  /** Sites forgotten (POST /api/forget-site, or its tombstone): their peers' entries go. Returns those peers. */
  forgetSites(sites: ReadonlySet<string>): string[] {
    const peerIds = [...this.peers].filter(([, entry]) => entry.site !== undefined && sites.has(entry.site)).map(([peerId]) => peerId);
    this.forget(peerIds);
    return peerIds;
  }

  /**
   * Peers gone for good (the operator forgot them, or their site): their addresses are not kept, nor dialled
   * at the next start. A peer that connects again is saved again.
   */
  forget(peerIds: Iterable<string>): void {
    let changed = false;
    for (const peerId of peerIds) changed = this.peers.delete(peerId) || changed;
    if (changed) this.markDirty();
  }

  /** The peer's last connection closed: its absence counts from now (written with the next change, or at stop). */
  noteDisconnected(peerId: string): void {
    if (!this.connected.delete(peerId)) return;
    const entry = this.peers.get(peerId);
    if (entry !== undefined) entry.seenAtMs = this.meshTimeMs();
    if (this.connected.size === 0) this.isolatedSinceMs = this.clock.nowMs();
  }

  private dropAbsent(): void {
    const meshNowMs = this.meshTimeMs();
    for (const [peerId, entry] of this.peers) {
      if (!this.connected.has(peerId) && meshNowMs - entry.seenAtMs >= this.forgetAfterMs) this.peers.delete(peerId);
    }
  }

  /**
   * A peer connected and said where it listens: kept as the most recent (a write follows if its addresses
   * are new). Addresses without /p2p/ get the peer's; those naming another peer, and this peer, are left out.
   */
  noteConnected(peerId: string, addrs: readonly string[]): void {
    if (this.stopped || peerId === this.selfPeerId) return;
    // Connected, even without an address worth saving (one reached through a tunnel): this peer is in the
    // mesh, and that peer's saved entry, if any, is seen.
    this.connected.add(peerId);
    if (this.isolatedSinceMs !== undefined) {
      this.isolatedMs += this.clock.nowMs() - this.isolatedSinceMs;
      this.isolatedSinceMs = undefined;
    }
    const named = validAddrs(addrs.map((a) => (/\/p2p\//.test(a) ? a : `${a}/p2p/${peerId}`)), peerId, this.maxAddrs);
    if (named.length === 0) return;
    const { addrs: before, site } = this.peers.get(peerId) ?? {};
    this.peers.delete(peerId);
    this.peers.set(peerId, { addrs: named, seenAtMs: this.meshTimeMs(), ...(site === undefined ? {} : { site }) });
    const changed = before === undefined || before.length !== named.length || before.some((a, i) => a !== named[i]);
    while (this.peers.size > this.maxPeers) this.peers.delete(this.peers.keys().next().value!);
    if (changed) this.markDirty();
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

  private write(): Promise<void> {
    if (this.writing !== undefined) return this.writing;
    this.dirty = false;
    this.writtenAtMs = performance.now();
    this.dropAbsent();
    // Times as dates, to be read by a later run; a peer connected now was seen now.
    // Absences are on the mesh clock (meshTimeMs), so writtenAtMs - seenAtMs at the next start is one too.
    const [meshNowMs, dateMs] = [this.meshTimeMs(), this.clock.dateMs()];
    const peers = [...this.peers].map(([peerId, { addrs, seenAtMs, site }]) => ({ peerId, addrs, ...(site === undefined ? {} : { site }), seenAtMs: dateMs - (this.connected.has(peerId) ? 0 : meshNowMs - seenAtMs) }));
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
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.writing !== undefined) await this.writing;
    if (this.dirty || this.peers.size > 0) await this.write();
  }
}
