/**
 * One site's libp2p node, behind a small facade ({@link MeshNode}) so libp2p types stay in src/net/.
 *
 * Stack: TCP on `/ip4/<host>/tcp/<p2pPort>` -> private network (our noble-xsalsa20 pnet protector) ->
 * noise -> yamux (stream window capped) ; services identify, ping, gossipsub (small-mesh settings).
 * The connection monitor pings every peer each `pingIntervalMs`. With the private network, a connection
 * ends when nothing at all has arrived on it for twice `pingTimeoutMs` of this process's run time (10 s: a
 * half-open connection, a peer standing still; time this process stood still does not count, see
 * RunTimeClock), whether or not its pings were answered (inbound-activity.ts: on a slow link pings
 * wait behind copies in flight, and the connection delivering them was aborted); the pings keep an idle
 * connection talking. Without it (tests), libp2p's rule: a ping over `pingTimeoutMs` (adaptive up to
 * twice that) aborts the connection. Not sooner: a peer on a loaded machine answered a ping 2 s late and
 * lost every stream of the connection with it (retrieves refused, pushes failed). A hung peer is
 * membership's to find, by its silence (3 s), which then drops it ({@link MeshNode.dropPeer}).
 *
 * Reconnect loop: every bootstrap address and every peer we have been connected to (bounded) is dialled
 * again while it is not connected, with exponential back-off (min..max delay, jittered), forever, since
 * operators stop and restart sites on purpose. A node with no bootstrap list is the first of its mesh.
 * Peers learnt from elsewhere (e.g. membership heartbeats carrying addresses) go in via `addKnownPeer`.
 * The addresses of the peers connected are saved in the data directory (known-peers.ts) and dialled at
 * the next start too, quietly, at the loop's back-off while no peer is connected and about once a minute
 * while one is (see Reconnector.tick): a site moved to another host or port without --bootstrap finds the
 * others itself (it served alone before: helper 91).
 */
import '../polyfill.ts';
import { networkInterfaces } from 'node:os';
import { createLibp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { bootstrap } from '@libp2p/bootstrap';
import { gossipsub } from '@libp2p/gossipsub';
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { decodeEnvelope, encodeEnvelope } from '../codec/envelope.ts';
import { MeshNodeError } from './errors.ts';
import { InboundActivity, RunTimeClock } from './inbound-activity.ts';
import { loadOrCreatePeerKey } from './peer-key.ts';
import { KnownPeersFile, readKnownPeers, type KnownPeersProblem } from './known-peers.ts';
import { pskProtector } from './protector.ts';
import './yamux-window.ts';
import './yamux-control.ts';
import './adaptive-timeout-clock.ts';
import { MeshStream } from './stream.ts';
import type { SwarmKey } from './swarm-key.ts';
import type { MeshStreamInit } from './stream.ts';
import type { Connection, Libp2p, Logger, PeerId, Stream } from '@libp2p/interface';
import type { GossipSub, Message } from '@libp2p/gossipsub';
import type { Multiaddr } from '@multiformats/multiaddr';

/** How often, at most, data from one peer is reported as a sign of life (MeshNode.onPeerActivity). */
export const peerActivityNoticeMs = 250;

/**
 * A stream whose handler is done waits this long at most for the remote's end (what it still sends is
 * read and dropped), then is reset (see MeshNode.handle).
 */
export const handledStreamCloseMs = 5000;

export interface MeshNodeTuning {
  /**
   * yamux per-stream receive window cap (bytes). Default 4 MiB: window updates go out every half window
   * (yamux-window.ts), each a frame and a socket write; 1 MiB gave catch-up from ready 1.55-1.62 s, 4 MiB
   * 1.33-1.48 s. A stream holds at most this plus readHighWaterMark (StreamReader).
   */
  maxStreamWindowSize?: number;
  /** StreamReader queue bound per stream (bytes). Default 1 MiB. */
  readHighWaterMark?: number;
  /**
   * Period (ms) of yamux's own keep-alive ping, whose round trip the library's window growth read (see
   * yamux-window.ts). Default the library's 30000; the slow-link tests shorten it to meet that ping sooner.
   */
  muxerKeepAliveIntervalMs?: number;
  /** Connection monitor ping period (ms). Default 2000. */
  pingIntervalMs?: number;
  /**
   * Ping timeout (ms); adaptive between this and 2x this. Default 5000. With the private network a
   * connection silent for 2x this ends instead (see the header comment).
   */
  pingTimeoutMs?: number;
  /** Reconnect back-off bounds (ms). Default 250 .. 5000. */
  reconnectMinDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** How many peers the reconnect loop remembers (bootstrap entries always kept). Default 64. */
  maxKnownPeers?: number;
  /** Dial timeout (ms). Default 5000. */
  dialTimeoutMs?: number;
  /** Largest gossip message accepted (bytes). Default 1 MiB. */
  maxGossipBytes?: number;
  /** known-peers.json: first write this long after a change, then at most every knownPeersWriteIntervalMs (ms). Defaults 1000, 30000. */
  knownPeersWriteDelayMs?: number;
  knownPeersWriteIntervalMs?: number;
  /** known-peers.json: a peer absent this long, counted while a peer of its site is connected, is dropped (ms). Default 24 h. */
  knownPeersForgetAfterMs?: number;
  /** Least time (ms) between two dials of a saved peer while this node is connected to another (see Reconnector.tick). Default 60000. */
  savedPeerInMeshRedialMs?: number;
  /**
   * Period (ms) of the built-in address announcement on {@link PEERS_TOPIC}, which lets peers that joined
   * through different bootstrap nodes find and dial each other (full mesh). 0 disables it. Default 5000.
   */
  peerAnnounceIntervalMs?: number;
  /**
   * Bytes one connection may hold for its peer (waiting for its socket) before it is aborted: a peer that
   * keeps its connection alive but reads nothing. Default 64 MiB. Private network only.
   */
  maxConnectionWriteBufferBytes?: number;
}

/** Gossip topic of the built-in address announcements: envelope `{ type: 'peer-addrs', peerId, addrs }`. */
export const PEERS_TOPIC = 'pacs-mesh/peers/1';
const MAX_ANNOUNCE_BYTES = 8 * 1024;
const MAX_ANNOUNCED_ADDRS = 16;
/** How soon a peer answers a newcomer's announcement or subscription with its own (announcements coalesce meanwhile). */
const announceReplyDelayMs = 100;
interface PeerAddrsMessage {
  type: 'peer-addrs';
  peerId: string;
  addrs: string[];
}

export interface MeshNodeInit {
  /** Holds `peer-key` (created on first start) and `known-peers.json` (see known-peers.ts). */
  dataDir: string;
  /** Interface to listen on. Default '0.0.0.0'. */
  host?: string;
  /** TCP port; 0 picks a free one. */
  p2pPort: number;
  /**
   * The private network key. `null` runs without a protector: only for tests showing that such a
   * node cannot join a protected mesh. There is no default on purpose.
   */
  swarmKey: SwarmKey | Uint8Array | null;
  /** Multiaddrs of peers to join through (repeatable `--bootstrap`); empty for the first node. */
  bootstrap?: string[];
  /** Addresses to announce instead of the listen addresses (NAT, 0.0.0.0). */
  announce?: string[];
  tuning?: MeshNodeTuning;
  /**
   * A `bootstrap` address could not be dialled: called at the 1st, 2nd, 4th, 8th ... failure in a row, so
   * that a mistyped address or a wrong swarm key is visible to the operator without a line per retry.
   */
  onBootstrapUnreachable?: (failure: BootstrapFailure) => void;
  /**
   * A `bootstrap` address with /p2p/ answered under another PeerId (the site there was restored on an empty
   * disk, which gives it a new identity): from then on the address is dialled without its /p2p/ part,
   * accepting whoever holds the swarm key there. Called once per address.
   */
  onBootstrapIdentityChanged?: (change: BootstrapIdentityChange) => void;
  /**
   * Two processes hold the identity of one peer (a copied data directory: `peer-key` is the identity): two
   * open connections to it report listen addresses with none in common. Such twins stall the election and
   * misdirect copies; called at most once a minute per peer.
   */
  onIdentityConflict?: (conflict: IdentityConflict) => void;
  /**
   * A peer connected to this one saw another process with this peer's identity and told both of them
   * (they cannot see each other: neither dials itself, and gossip never sends a peer what came from it).
   * Called at most once a minute.
   */
  onIdentityConflictNotice?: (notice: IdentityConflictNotice) => void;
  /**
   * A bootstrap address that is not this node's own answers with this node's identity (or names it in its
   * /p2p/ part): another process runs with this identity there, and this one, which cannot join through
   * it, may be serving alone (helper 48: a copy bootstrapped at its original said nothing). Once per address.
   */
  onIdentityTwinAddress?: (twin: IdentityTwinAddress) => void;
  /**
   * `known-peers.json` is damaged or unreadable (ignored: the node starts as without it), or cannot be
   * written (said once until a write succeeds; the list is kept in memory meanwhile).
   */
  onKnownPeersProblem?: (problem: KnownPeersProblem) => void;
}

/** An address where another process answers with this peer's identity. */
export interface IdentityTwinAddress {
  readonly address: string;
  /**
   * A --bootstrap address (this peer cannot join through it), or one learnt from the mesh (the original of
   * a copy dials its copy's address, gossiped by the others: it is in the mesh all the same).
   */
  readonly bootstrap: boolean;
}

export interface IdentityConflictNotice {
  /** The peer that saw both processes. */
  readonly reportedBy: string;
  /** The listen addresses each of the two processes reported to it. */
  readonly addresses: readonly [readonly string[], readonly string[]];
}

export interface IdentityConflict {
  readonly peerId: string;
  /** The listen addresses each of the two processes reported. */
  readonly addresses: readonly [readonly string[], readonly string[]];
}

/** How often, at most, one peer's identity conflict is reported. */
const IDENTITY_CONFLICT_REPORT_INTERVAL_MS = 60_000;
/** Carries one IdentityConflictMessage from the peer that saw twins to each of them, over each connection. */
const IDENTITY_CONFLICT_PROTOCOL = '/pacs-mesh/identity-conflict/1';
const IDENTITY_CONFLICT_MAX_BYTES = 8 * 1024;

interface IdentityConflictMessage {
  readonly type: 'identity-conflict';
  readonly addresses: readonly [readonly string[], readonly string[]];
}

/** Two lists of at most MAX_ANNOUNCED_ADDRS addresses of at most 512 characters, or null. */
function parseAddressPair(value: unknown): [string[], string[]] | null {
  if (!Array.isArray(value) || value.length !== 2) return null;
  const lists = value.map((list: unknown) =>
    Array.isArray(list) && list.length <= MAX_ANNOUNCED_ADDRS && list.every((a) => typeof a === 'string' && a.length <= 512) ? (list as string[]) : null,
  );
  return lists[0] && lists[1] ? [lists[0], lists[1]] : null;
}

export interface BootstrapFailure {
  readonly address: string;
  readonly attempts: number;
  readonly nextTryInMs: number;
  readonly error: string;
  /** What the error most likely means for the operator (see bootstrapFailureCause). */
  readonly likelyCause: string;
  /** Peers this node is connected to now: with some, it is in the mesh through others. */
  readonly connectedPeers: number;
}

/**
 * The likely cause of a failed dial, in an operator's words. A peer holding another swarm key accepts the
 * TCP connection and then fails the private-network handshake: the dial ends in a reset or a timeout,
 * which read like a network fault and made a wrong key hard to tell (black-box helper 40).
 */
export function bootstrapFailureCause(error: string, reachedBefore = false): string {
  if (/ECONNREFUSED/.test(error)) return 'nothing listens there: the site is down, or the address or port is wrong';
  // A peer this node was connected to there holds this swarm key: a paused or overloaded peer (SIGSTOP, a
  // long GC) accepts the TCP connection and answers nothing, which read as a wrong key (helper 75).
  if (reachedBefore && /ECONNRESET|EPIPE|timed? ?out|timeout|aborted/i.test(error)) {
    return 'no complete answer from the peer reached there before: it is paused, overloaded or restarting, or the host is cut off (or it now holds another swarm key)';
  }
  if (/ECONNRESET|EPIPE/.test(error)) {
    return 'something answers there but the private-network handshake did not complete: most likely another swarm key (or not a pacs-mesh libp2p port)';
  }
  // A peer with another swarm key never completes the handshake, and a link that drops every packet (a
  // partition, a firewall) never answers: both end at the dial timeout (helper 65 saw the first named for the second).
  if (/timed? ?out|timeout|aborted/i.test(error)) {
    return 'no complete answer in time: most likely another swarm key if a pacs-mesh peer listens there, else the host is cut off (a partition, a firewall dropping packets)';
  }
  if (/EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN/.test(error)) return 'the host cannot be reached or its name not resolved';
  // Another protocol answered (helper 64: the HTTP port gave "Missing newline", the DICOM port "pnet nonce
  // exchange failed: Unexpected EOF"), or a pacs-mesh peer with another swarm key.
  if (/Missing newline|length too long|varint|nonce exchange|Unexpected EOF|unexpected end|protocol selection/i.test(error)) {
    return "something else answers there: not a pacs-mesh peer's --p2p-port (its DICOM or HTTP port?), or another swarm key";
  }
  return 'see the error';
}

/** Characters of an unrecognised dial error an isolated peer quotes at most (its log line stays one line). */
const unrecognisedDialErrorCharsMax = 200;

/**
 * Failed dials' errors (chains) grouped by likely cause, with how many each. An error no rule names is quoted
 * (bounded): the isolation warning says these causes without the errors, so "see the error" named none.
 */
export function dialCauseCounts(failures: readonly string[]): Array<{ cause: string; peers: number }> {
  const counts = new Map<string, number>();
  for (const failure of failures) {
    const likely = bootstrapFailureCause(failure);
    const cause = likely === 'see the error' ? `unrecognised error "${failure.replace(/\s+/g, ' ').slice(0, unrecognisedDialErrorCharsMax)}"` : likely;
    counts.set(cause, (counts.get(cause) ?? 0) + 1);
  }
  return [...counts].map(([cause, peers]) => ({ cause, peers }));
}

export interface BootstrapIdentityChange {
  readonly address: string;
  /** The PeerId the address named. */
  readonly expectedPeerId: string;
  readonly error: string;
  /** The address is this peer's own --p2p-port, named with another's PeerId: a wrong port, no restored site. */
  readonly ownAddress?: true;
}

export interface GossipMessage {
  topic: string;
  data: Uint8Array;
  /** Signing peer (the originator) when known. */
  from: string | undefined;
}

export type GossipHandler = (message: GossipMessage) => void;
export type PeerHandler = (peerId: string) => void;
export type StreamHandler = (stream: MeshStream) => void | Promise<void>;

export interface HandleOptions {
  /** Concurrent inbound streams of this protocol per connection. Default 32. */
  maxInboundStreams?: number;
  /** Concurrent outbound streams of this protocol per connection. Default 64. */
  maxOutboundStreams?: number;
}

export interface OpenStreamOptions {
  signal?: AbortSignal;
}

/** The facade the rest of pacs-mesh uses. */
export interface MeshNode {
  readonly peerId: string;
  /** Whether this start created the identity (`peer-key`): a new site, or a data directory restored empty. */
  readonly identityCreated: boolean;
  /** Peers whose saved addresses (known-peers.json) this start dials (see Target.saved). */
  readonly savedPeers: number;
  /** The likely causes of those peers' last failed dials (see Reconnector.savedDialCauses). */
  savedDialCauses(): Array<{ cause: string; peers: number }>;
  /** Dialable addresses, each ending in /p2p/<peerId>. */
  multiaddrs(): string[];
  connectedPeers(): string[];
  /** Open connections to a peer: one per pair once the mesh has settled (see the reconnect loop). */
  connectionCount(peerId: string): number;
  /** Dials of the reconnect loop under way: with none at either end of a pair, no connection of theirs is still coming. */
  reconnectDialsInFlight(): number;
  /** Publish on a gossip topic; resolves to the number of peers it was sent to. */
  publish(topic: string, data: Uint8Array): Promise<number>;
  /** Subscribe; returns the unsubscribe function. Handler errors are logged, never thrown into gossip. */
  subscribe(topic: string, handler: GossipHandler): () => void;
  onPeerConnected(handler: PeerHandler): () => void;
  onPeerDisconnected(handler: PeerHandler): () => void;
  /**
   * Bytes arrived from a peer on one of the mesh's streams (at most every peerActivityNoticeMs per peer):
   * it is alive, however long its heartbeats wait behind the bulk data on a slow link.
   */
  onPeerActivity(handler: PeerHandler): () => void;
  /** A connected peer subscribed to `topic` (gossip published to the topic reaches it from now on). */
  onTopicJoined(topic: string, handler: PeerHandler): () => void;
  /**
   * Serve a stream protocol. If the handler throws or rejects, the stream is reset. Once it returns, the
   * stream is closed: our end, then the remote's awaited for handledStreamCloseMs at most, else reset.
   */
  handle(protocol: string, handler: StreamHandler, options?: HandleOptions): Promise<void>;
  unhandle(protocol: string): Promise<void>;
  openStream(peerId: string, protocol: string, options?: OpenStreamOptions): Promise<MeshStream>;
  /** Remember a peer (and its addresses) for the reconnect loop, and dial it soon. */
  addKnownPeer(peerId: string, multiaddrs?: string[]): Promise<void>;
  /** Dial a multiaddr now; resolves to the remote PeerId. */
  dial(address: string, options?: OpenStreamOptions): Promise<string>;
  /**
   * Aborts every connection to a peer (one gone silent while connected: its streams fail now, with
   * `reason`, instead of at their own deadlines). The reconnect loop dials it again as usual.
   */
  dropPeer(peerId: string, reason: string): void;
  /**
   * Peers gone for good (the operator forgot them, or their site): their saved addresses are dropped
   * (known-peers.json) and, while not connected, they are no longer redialled. One that connects again is
   * known again.
   */
  forgetPeers(peerIds: readonly string[]): void;
  /** Which site a peer belongs to (membership's view): its saved addresses go with the site (forgetSites). */
  noteSiteOf(peerId: string, site: string): void;
  /** Sites forgotten: their peers' saved addresses are dropped, and they are not redialled (see forgetPeers). */
  forgetSites(sites: ReadonlySet<string>): void;
  stop(): Promise<void>;
}

interface Target {
  key: string;
  /** Undefined for an address target (a bootstrap address without /p2p/, or a learnt peer's whose identity changed): see dial. */
  peerId: string | undefined;
  /** Such an address target: the PeerId that answered there last (connected to it means nothing to dial). */
  reachedPeerId?: string;
  addrs: Multiaddr[];
  bootstrap: boolean;
  /**
   * Read from the data directory's known-peers file at start (addresses saved at an earlier run): dialled
   * at the back-off while this node has no connection at all, else about every savedInMeshRedialMs (see
   * tick), without the bootstrap warnings (a peer that moved or is down is expected). Becomes an ordinary
   * learnt target once its peer connects or is announced.
   */
  saved: boolean;
  attempts: number;
  /** performance.now() of the next dial: a monotonic clock, so a wall clock stepped back does not stop redialling. */
  nextAt: number;
  dialing: boolean;
  lastSeen: number;
  /** performance.now() before which a saved target is not dialled while the node is in the mesh (see tick); unset while alone. */
  savedRestUntil?: number;
  /** The error of this target's last failed dial (its chain), for the likely cause an isolated peer reports. */
  lastFailure?: string;
}

const P2P_CODE = 421;

function peerIdOf(ma: Multiaddr): string | undefined {
  return ma.getComponents().findLast((c) => c.code === P2P_CODE)?.value;
}

function parsePeerId(id: string): PeerId {
  try {
    return peerIdFromString(id);
  } catch (err) {
    throw new MeshNodeError('ERR_INVALID_PEER_ID', `invalid peer id "${id.slice(0, 80)}"`, { cause: err });
  }
}

function parseMultiaddr(text: string): Multiaddr {
  try {
    return multiaddr(text);
  } catch (err) {
    throw new MeshNodeError('ERR_INVALID_MULTIADDR', `invalid multiaddr "${text.slice(0, 200)}": ${(err as Error).message}`, { cause: err });
  }
}

type Services = { identify: unknown; ping: unknown; pubsub: GossipSub };

/**
 * A target's addresses as one dial: libp2p refuses a list that mixes addresses with and without /p2p/
 * ("Multiaddrs must all have the same peer id"), so the addresses of a peer target all get its PeerId,
 * and those naming another peer are left out.
 */
function dialableAddrs(t: Target): Multiaddr[] {
  const peerId = t.peerId;
  if (peerId === undefined) return t.addrs;
  return t.addrs.flatMap((a) => {
    const named = peerIdOf(a);
    if (named === undefined) return [a.encapsulate(`/p2p/${peerId}`)];
    return named === peerId ? [a] : [];
  });
}

/** Addresses a reconnect target keeps (a peer's identify or announcement may list many). */
const reconnectAddrsMax = 8;

/** The higher PeerId of a pair waits this many reconnectMinDelayMs before dialling (see firstDialDelayTo). */
const higherPeerDialDelayFactor = 4;

/** Dials the reconnect loop has in flight at most. */
const reconnectDialsMax = 8;

/**
 * Of those, saved peers' at most: a saved address that hangs (a host across a cut) holds its slot until
 * libp2p's handshake timeout (~5 s); 8 or more of them, due at each round, kept the peers of this run from
 * being redialled at all (hunt 173).
 */
const savedDialsMax = reconnectDialsMax / 2;

/**
 * How long a saved peer rests before its next dial while the node is in the mesh: `redialMs` on average,
 * spread from half to one and a half times it, so that the saved peers of one start, and sites started
 * together, do not all dial at the same moment each minute (`random` in [0, 1)).
 */
export function savedRedialRestMs(redialMs: number, random: number): number {
  return redialMs * (0.5 + random);
}

/** The reconnect loop: keeps dialling bootstrap and known peers that are not connected. */
class Reconnector {
  private readonly targets = new Map<string, Target>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** performance.now() at which `timer` fires. */
  private timerAt = 0;
  private running = false;
  private readonly inflight = new Set<Promise<void>>();

  constructor(
    private readonly node: Libp2p<Services>,
    private readonly log: Logger,
    private readonly opts: { minDelayMs: number; maxDelayMs: number; maxKnown: number; dialTimeoutMs: number; savedInMeshRedialMs: number },
    private readonly selfPeerId: string,
    private readonly onBootstrapUnreachable: (failure: BootstrapFailure) => void = () => undefined,
    private readonly onBootstrapIdentityChanged: (change: BootstrapIdentityChange) => void = () => undefined,
    private readonly onIdentityTwinAddress: (twin: IdentityTwinAddress) => void = () => undefined,
  ) {}

  /**
   * Whether `ma` is where this node listens: one of its TCP ports on an address of this host (loopback,
   * an interface's, or a DNS name, which cannot be told apart here). Anything else that answers with this
   * node's identity is another process.
   */
  private isOwnAddress(ma: Multiaddr): boolean {
    const components = ma.getComponents();
    const port = components.find((c) => c.name === 'tcp')?.value;
    const ownPorts = new Set(this.node.getMultiaddrs().flatMap((a) => a.getComponents().filter((c) => c.name === 'tcp').map((c) => c.value)));
    if (port === undefined || !ownPorts.has(port)) return false;
    const host = components.find((c) => ['ip4', 'ip6', 'dns', 'dns4', 'dns6'].includes(c.name));
    if (host === undefined || host.name.startsWith('dns')) return true;
    return isThisHost(host.value ?? '');
  }

  get dialsInFlight(): number {
    return this.inflight.size;
  }

  start(): void {
    this.running = true;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await Promise.allSettled([...this.inflight]);
  }

  /**
   * The likely causes of the saved peers' last failed dials, with how many peers each: an isolated peer says
   * them, since those dials are quiet (a peer restarted with another swarm key was told only that the
   * others are down or moved, while they answered and refused its key).
   */
  savedDialCauses(): Array<{ cause: string; peers: number }> {
    return dialCauseCounts([...this.targets.values()].flatMap((t) => (t.saved && t.lastFailure !== undefined ? [t.lastFailure] : [])));
  }

  addBootstrap(ma: Multiaddr): void {
    this.addAddressTarget(ma, 'bootstrap');
  }

  /**
   * A peer's addresses saved at an earlier run (known-peers.json): dialled while this node has no
   * connection, quietly (see Target.saved). Nothing is added for this peer itself, for a peer already a
   * target (a --bootstrap address naming it), or for an address where this node listens now (the peer
   * moved away and this one took its port) or that a --bootstrap address already dials.
   */
  addSaved(peerId: string, addrs: readonly Multiaddr[]): boolean {
    if (peerId === this.selfPeerId || this.targets.has(peerId)) return false;
    const bootstrapAddrs = [...this.targets.values()].filter((t) => t.bootstrap).flatMap((t) => t.addrs.map((a) => a.decapsulateCode(P2P_CODE)));
    const usable = addrs.filter((a) => peerIdOf(a) === peerId && !this.isOwnAddress(a) && !bootstrapAddrs.some((b) => b.equals(a.decapsulateCode(P2P_CODE))));
    if (usable.length === 0) return false;
    const delay = this.firstDialDelayTo(peerId);
    this.targets.set(peerId, { key: peerId, peerId, addrs: usable.slice(0, reconnectAddrsMax), bootstrap: false, saved: true, attempts: 0, nextAt: performance.now() + delay, dialing: false, lastSeen: 0 });
    this.evict();
    this.scheduleWithin(delay);
    return true;
  }

  /**
   * A target dialled by its address: a --bootstrap one (kept for good), or a learnt or saved peer's after
   * its identity changed (dials whoever answers there; evictable like other learnt targets, and quiet
   * like other saved ones).
   */
  private addAddressTarget(ma: Multiaddr, kind: 'bootstrap' | 'learnt' | 'saved'): void {
    const bootstrap = kind === 'bootstrap';
    const peerId = peerIdOf(ma);
    // The same --bootstrap list given to every site names each site itself too: nothing to dial there.
    if (peerId === this.selfPeerId) {
      if (bootstrap && !this.isOwnAddress(ma)) this.onIdentityTwinAddress({ address: ma.toString(), bootstrap: true });
      return;
    }
    const key = peerId ?? ma.toString();
    const existing = this.targets.get(key);
    if (existing !== undefined) {
      existing.bootstrap ||= bootstrap;
      if (kind !== 'saved') existing.saved = false;
      if (!existing.addrs.some((a) => a.equals(ma))) existing.addrs.push(ma);
      return;
    }
    this.targets.set(key, { key, peerId, addrs: [ma], bootstrap, saved: kind === 'saved', attempts: 0, nextAt: 0, dialing: false, lastSeen: kind === 'learnt' ? performance.now() : 0 });
    if (!bootstrap) this.evict();
  }

  /**
   * Where `peerId` is dialled: its target's addresses, else those of the address targets it answered at
   * (with its PeerId); none for a peer the mesh does not know (or knows no address of).
   */
  addressesOf(peerId: string): Multiaddr[] {
    const t = this.targets.get(peerId);
    const own = t === undefined ? [] : dialableAddrs(t);
    if (own.length > 0) return own;
    return [...this.targets.values()]
      .filter((a) => a.peerId === undefined && a.reachedPeerId === peerId)
      .flatMap((a) => a.addrs.map((ma) => ma.encapsulate(`/p2p/${peerId}`)));
  }

  /** Whether `peerId` is a target already (learnt, saved, or connected once). */
  knows(peerId: string): boolean {
    return this.targets.has(peerId);
  }

  addPeer(peerId: string, addrs: Multiaddr[] = []): void {
    const existing = this.targets.get(peerId);
    if (existing !== undefined) {
      // A saved peer connected or announced: an ordinary learnt one from now on, dialled where it says it is.
      if (existing.saved && addrs.length > 0) existing.addrs = [];
      existing.saved = false;
      // The newest first, in the order given (savedAddressesOf's best first): the cut to 8 takes the oldest.
      existing.addrs = [...addrs, ...existing.addrs.filter((b) => !addrs.some((a) => a.equals(b)))].slice(0, reconnectAddrsMax);
      existing.lastSeen = performance.now();
      return;
    }
    const delay = this.firstDialDelayTo(peerId);
    this.targets.set(peerId, { key: peerId, peerId, addrs: addrs.slice(0, reconnectAddrsMax), bootstrap: false, saved: false, attempts: 0, nextAt: performance.now() + delay, dialing: false, lastSeen: performance.now() });
    this.evict();
    this.schedule(delay);
  }

  /**
   * How long to wait before dialling a peer this node has just learnt of or lost: both ends of a pair learn
   * of each other together (address announcements) and see a dropped connection together, and two dials
   * at once make two connections, one of which the duplicate sweeper closes seconds later (after moving gossip
   * off it, see createDuplicateSweeper). The peer with the lower PeerId dials first; the other only if still
   * not connected later (a peer it cannot reach from there).
   */
  private firstDialDelayTo(peerId: string): number {
    return this.selfPeerId < peerId ? this.opts.minDelayMs : this.opts.minDelayMs * higherPeerDialDelayFactor;
  }

  /** A peer connected: a bootstrap target dialled by address learns its PeerId here. */
  onConnected(peerId: string): void {
    this.addPeer(peerId);
    const t = this.targets.get(peerId);
    if (t !== undefined) t.attempts = 0;
  }

  /**
   * A connected peer said where it listens (identify): its target keeps those addresses, and an address
   * target there now knows who answers, so it counts as connected. Without the first, a peer that had
   * dialled this one was redialled through libp2p's peer store, whose addresses expire an hour after they
   * were first seen (by Date.now(), never refreshed while connected, so also at once after a forward wall
   * clock step): with no announcement from it, it was never redialled (hunt 119). Without the second, a peer
   * whose first dial of a --bootstrap address failed, and which the peer there then dialled, dialled that
   * address again once connected: two connections per pair.
   */
  onIdentified(peerId: string, listenAddrs: readonly Multiaddr[], remoteAddr: Multiaddr): void {
    const dialable = savedAddressesOf(listenAddrs, remoteAddr).map((a) => multiaddr(a).encapsulate(`/p2p/${peerId}`));
    if (dialable.length > 0 && peerId !== this.selfPeerId) this.addPeer(peerId, dialable);
    const listening = listenAddrs.map((a) => a.decapsulateCode(P2P_CODE));
    // Only where the peer is seen connecting from the target's host: a peer listening on 0.0.0.0 lists
    // 127.0.0.1 among its addresses, and a remote one on the same port would claim a loopback target (review).
    const fromHost = ipOf(remoteAddr);
    for (const t of this.targets.values()) {
      if (t.peerId !== undefined || !t.addrs.some((a) => ipOf(a) === fromHost && listening.some((l) => l.equals(a)))) continue;
      t.reachedPeerId = peerId;
      t.attempts = 0;
    }
  }

  /** A peer gone for good: not dialled again while not connected (see MeshNode.forgetPeers). */
  forget(peerId: string): void {
    const t = this.targets.get(peerId);
    if (t === undefined || t.bootstrap || this.isConnected(t)) return;
    this.targets.delete(peerId);
  }

  onDisconnected(peerId: string): void {
    const t = this.targets.get(peerId);
    if (t === undefined) return;
    t.attempts = 0;
    const delay = this.firstDialDelayTo(peerId);
    t.nextAt = performance.now() + delay;
    this.scheduleWithin(delay);
  }

  private evict(): void {
    const learnt = [...this.targets.values()].filter((t) => !t.bootstrap);
    let excess = this.targets.size - Math.max(this.opts.maxKnown, this.targets.size - learnt.length);
    if (excess <= 0) return;
    learnt.sort((a, b) => a.lastSeen - b.lastSeen);
    for (const t of learnt) {
      if (excess <= 0) break;
      if (t.peerId !== undefined && this.node.getConnections(parsePeerId(t.peerId)).length > 0) continue;
      this.targets.delete(t.key);
      excess--;
    }
  }

  private schedule(delay: number): void {
    if (!this.running) return;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
    }
    this.timerAt = performance.now() + delay;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.tick();
    }, delay);
  }

  /** A tick within `delay` at the latest (an earlier one already scheduled stays). */
  private scheduleWithin(delay: number): void {
    if (this.timer !== undefined && this.timerAt <= performance.now() + delay) return;
    this.schedule(delay);
  }

  private isConnected(t: Target): boolean {
    const peerId = t.peerId ?? t.reachedPeerId;
    if (peerId === undefined) return false;
    return this.node.getConnections(parsePeerId(peerId)).length > 0;
  }

  private tick(): void {
    if (!this.running) return;
    const now = performance.now();
    let next = this.opts.maxDelayMs;
    // Saved addresses bring a node back into the mesh; once in, the peers' announcements say where each
    // of its part of the mesh is now, and a saved peer still not heard of is across a cut, or gone: dialled
    // about once a minute (savedRedialRestMs), not at the loop's back-off. Before, they rested until this
    // node was alone again, and two groups of sites cut apart, each restarted meanwhile, never redialled
    // each other (hunt 171).
    const inMesh = this.node.getConnections().length > 0;
    const all = [...this.targets.values()];
    let savedDialing = all.filter((t) => t.saved && t.dialing).length;
    // The peers of this run first, then the saved ones most recently connected first (the file's order
    // reversed): a restarted site dialled its stale entries first, and met the live ones after (hunt 173).
    for (const t of [...all.filter((x) => !x.saved), ...all.filter((x) => x.saved).reverse()]) {
      if (t.dialing) continue;
      if (this.isConnected(t)) {
        t.attempts = 0;
        continue;
      }
      if (t.saved && inMesh) {
        t.savedRestUntil ??= now + savedRedialRestMs(this.opts.savedInMeshRedialMs, Math.random());
        if (t.savedRestUntil > now) {
          next = Math.min(next, t.savedRestUntil - now);
          continue;
        }
      } else {
        t.savedRestUntil = undefined;
      }
      if (t.nextAt > now) {
        next = Math.min(next, t.nextAt - now);
        continue;
      }
      if (this.inflight.size >= reconnectDialsMax || (t.saved && savedDialing >= savedDialsMax)) {
        next = Math.min(next, this.opts.minDelayMs);
        continue;
      }
      if (t.saved && inMesh) t.savedRestUntil = now + savedRedialRestMs(this.opts.savedInMeshRedialMs, Math.random());
      if (t.saved) savedDialing++;
      this.dial(t);
    }
    this.schedule(Math.max(50, next));
  }

  private dial(t: Target): void {
    t.dialing = true;
    const signal = AbortSignal.timeout(this.opts.dialTimeoutMs);
    // the target's addresses (bootstrap, addKnownPeer, identify); with none, whatever the peer store holds
    const addrs = t.peerId === undefined ? dialableAddrs(t) : this.addressesOf(t.peerId);
    const target = addrs.length > 0 || t.peerId === undefined ? addrs : parsePeerId(t.peerId);
    const p = this.node.dial(target, { signal })
      .then((conn) => {
        const remote = conn.remotePeer.toString();
        if (t.peerId === undefined) {
          // A bootstrap address without /p2p/ stays an address target: whoever answers there next (the
          // same site restarted, or one restored under a new PeerId) is dialled by it. The PeerId that
          // answered is a peer target of its own too.
          t.reachedPeerId = remote;
          this.addPeer(remote);
        }
        t.attempts = 0;
        this.log('connected to %s', remote);
      })
      .catch((err: Error) => {
        if (this.replacedAfterFailure(t, err)) return;
        t.lastFailure = errorChainText(err);
        t.attempts++;
        const backoff = Math.min(this.opts.maxDelayMs, this.opts.minDelayMs * 2 ** Math.min(t.attempts, 16));
        t.nextAt = performance.now() + backoff * (0.75 + Math.random() * 0.5);
        const nextTryInMs = Math.round(t.nextAt - performance.now());
        this.log('dial %s failed (attempt %d, next in %d ms): %s', t.key, t.attempts, nextTryInMs, err.message);
        // Powers of two: the first failures at once, then ever more rarely while it stays unreachable.
        if (t.bootstrap && (t.attempts & (t.attempts - 1)) === 0) {
          const error = errorChainText(err);
          this.onBootstrapUnreachable({
            address: t.addrs.map((a) => a.toString()).join(' '),
            attempts: t.attempts,
            nextTryInMs,
            error: err.message,
            likelyCause: bootstrapFailureCause(error, t.reachedPeerId !== undefined || t.lastSeen > 0),
            connectedPeers: this.node.getPeers().length,
          });
        }
      })
      .finally(() => {
        t.dialing = false;
        this.inflight.delete(p);
        // The tick that started this dial rescheduled itself for maxDelayMs; the backoff is usually shorter.
        if (this.targets.get(t.key) === t && !this.isConnected(t)) this.scheduleWithin(Math.max(50, t.nextAt - performance.now()));
      });
    this.inflight.add(p);
  }

  /**
   * A dial failure that says the target itself is wrong: an address of this very peer (dropped), or an
   * address whose /p2p/ names an identity no longer there (replaced by the bare address): a bootstrap one,
   * or a peer learnt from the mesh. The latter is a site restored on an empty disk under a new PeerId at
   * its old address: without this, a restored site not told --bootstrap was never dialled again by the
   * others and served alone, answering Success with nothing (black-box helper 41). Whoever holds the swarm
   * key there is accepted, as for a bootstrap address.
   */
  private replacedAfterFailure(t: Target, err: Error): boolean {
    const text = errorChainText(err);
    if (/dial(led)? self/i.test(text)) {
      this.targets.delete(t.key);
      this.log('dropped %s: it is this peer', t.key);
      const elsewhere = t.addrs.find((a) => !this.isOwnAddress(a));
      if (elsewhere !== undefined) this.onIdentityTwinAddress({ address: elsewhere.toString(), bootstrap: t.bootstrap });
      return true;
    }
    // A saved address answered by a site restored there under a new PeerId: dialled without its /p2p/ part,
    // still quietly, like a learnt one.
    // A target without addresses (a peer that left before it said where it listens) has nothing to replace
    // it by: it stays, an ordinary failure. Every other target holds the addresses it is dialled at (a peer
    // learnt from its own connection: those it gave in identify), so no lookup elsewhere can come back empty
    // after the target is gone (hunt 119: the peer store's could, and the peer was never dialled again).
    if (t.peerId === undefined || t.addrs.length === 0 || !/does not match expected remote identity key/.test(text)) return false;
    this.targets.delete(t.key);
    this.replaceByAddresses(t, t.peerId, t.addrs, err);
    return true;
  }

  /** Targets of `addrs` without their /p2p/ part, in place of `t`, whose identity is no longer there. */
  private replaceByAddresses(t: Target, expectedPeerId: string, addrs: readonly Multiaddr[], err: Error): void {
    for (const a of addrs) {
      const bare = a.decapsulateCode(P2P_CODE);
      if (t.bootstrap) {
        this.onBootstrapIdentityChanged({ address: a.toString(), expectedPeerId, error: err.message, ...(this.isOwnAddress(bare) ? { ownAddress: true as const } : {}) });
        this.addBootstrap(bare);
      } else {
        this.log('%s answers under another PeerId than %s: dialling the address', bare.toString(), expectedPeerId);
        this.addAddressTarget(bare, t.saved ? 'saved' : 'learnt');
      }
    }
    this.scheduleWithin(0);
  }
}

/** How long after a second connection to a peer opened the duplicates are looked at: identify and gossip have attached by then. */
export const duplicateSettleMs = 1000;

/** Protocols of short-lived streams any connection carries now and then: a connection with only these is idle. */
const transientProtocols = new Set(['/ipfs/id/1.0.0', '/ipfs/id/push/1.0.0', '/ipfs/ping/1.0.0']);

/**
 * The parts of gossipsub 17 that moving its stream needs: its d.ts marks them private (the registrar calls
 * onPeerConnected after each identify). If they change, nothing is moved (duplicates carrying gossip are kept,
 * as before hunt 148) and connections.test.ts's crossed-gossip test fails; its internals test shows nothing breaks.
 */
interface GossipSubInternals {
  readonly streamsOutbound: Map<string, { readonly rawStream?: Stream }>;
  onPeerConnected(peerId: PeerId, connection: Connection): void;
}

function gossipInternalsOf(pubsub: GossipSub): GossipSubInternals | undefined {
  const internals = pubsub as unknown as Partial<GossipSubInternals>;
  return internals.streamsOutbound instanceof Map && typeof internals.onPeerConnected === 'function' ? (internals as GossipSubInternals) : undefined;
}

/** The connection carrying this node's gossip stream to `peer` (gossipsub keeps one per peer), if any. */
export function gossipConnectionTo(node: Libp2p<Services>, peer: PeerId): Connection | undefined {
  const stream = gossipInternalsOf(node.services.pubsub)?.streamsOutbound.get(peer.toString())?.rawStream;
  return stream === undefined ? undefined : node.getConnections(peer).find((c) => c.streams.includes(stream));
}

/**
 * The one connection of a pair both ends agree to keep: the open one the lower PeerId dialled, when there is
 * exactly one (two dialled the same way cannot be told apart from both ends).
 */
function agreedConnectionTo(node: Libp2p<Services>, peer: PeerId): Connection | undefined {
  const dialledByLower = node.peerId.toString() < peer.toString() ? 'outbound' : 'inbound';
  const candidates = node.getConnections(peer).filter((c) => c.status === 'open' && c.direction === dialledByLower);
  return candidates.length === 1 ? candidates[0] : undefined;
}

/**
 * Puts this node's gossip stream to `peer` on `to`. One on another connection is moved: gossipsub opens a new
 * one on `to` (and sends its subscriptions on it; the peer takes a new inbound stream as the one from here),
 * then the old one is closed. Closed, not reset: a reset reaches the peer as a read error, on which gossipsub
 * forgets this node and its subscriptions, and its own stream here with them. Gossip published between the
 * two is lost (a round trip). With none (its opening failed), gossipsub is asked for one, as after identify.
 */
export async function placeGossipStream(node: Libp2p<Services>, peer: PeerId, to: Connection): Promise<'moved' | 'opened' | 'unchanged'> {
  const internals = gossipInternalsOf(node.services.pubsub);
  if (internals === undefined || to.status !== 'open') return 'unchanged';
  const old = internals.streamsOutbound.get(peer.toString());
  if (old === undefined) {
    internals.onPeerConnected(peer, to);
    return 'opened';
  }
  // An entry of another shape (a later gossipsub) is left alone: deleting it could not close its stream, and each check would open one more.
  const oldStream = old.rawStream;
  if (typeof oldStream?.close !== 'function' || to.streams.includes(oldStream)) return 'unchanged';
  internals.streamsOutbound.delete(peer.toString());
  internals.onPeerConnected(peer, to);
  await oldStream.close({ signal: AbortSignal.timeout(handledStreamCloseMs) }).catch((err: Error) => oldStream.abort(err));
  return 'moved';
}

/**
 * Two peers that dial each other at once (they learnt each other's addresses together, or share a
 * --bootstrap list) get two connections; libp2p keeps both (it only refuses a second dial of a connected
 * peer, and two connections to one address). gossipsub attaches each end's stream to whichever connection
 * it saw first, so each direction's gossip could ride a different one (hunt 145: 1 pair in 10 on a quiet
 * machine), and neither was idle. So both ends, duplicateSettleMs after a second connection opened and as
 * long as duplicates remain, move their own gossip stream onto the connection the lower PeerId dialled
 * (agreedConnectionTo). The other then stays idle, and is closed by the peer with the lower PeerId alone
 * (two peers deciding apart, each from its own view, could close both), once it was seen idle at two checks
 * duplicateSettleMs apart (a stream the other peer has just opened on it shows here a moment later). With
 * both idle, the one kept is the one the lower PeerId dialled. A connection carrying other streams than
 * identify, ping and gossip is never closed.
 */
function createDuplicateSweeper(node: Libp2p<Services>, log: Logger): { connectionOpened(peer: PeerId): void; connectionClosed(peer: PeerId): void; stop(): void } {
  const selfPeerId = node.peerId.toString();
  /** At most one check waiting per connected peer. */
  const pending = new Map<string, ReturnType<typeof setTimeout>>();
  /** Set by stop(): the node's own stop closes its connections, and a check scheduled then would outlive it. */
  let stopped = false;
  const inUse = (c: Connection): boolean => c.streams.some((stream) => stream.protocol === undefined || !transientProtocols.has(stream.protocol));
  /** The open connections to `peer` to close now: none unless there are two or more. */
  const idleDuplicates = (peer: PeerId): Connection[] => {
    const open = node.getConnections(peer).filter((c) => c.status === 'open');
    if (open.length < 2) return [];
    const busy = open.filter(inUse);
    const kept = busy.length > 0 ? busy : open.filter((c) => c.direction === 'outbound').slice(0, 1);
    if (kept.length === 0) return [];
    return open.filter((c) => !kept.includes(c));
  };
  const placeGossipOn = (peer: PeerId, to: Connection): void => {
    void placeGossipStream(node, peer, to).then(
      (done) => { if (done !== 'unchanged') log('gossip stream to %p %s on the %s connection', peer, done, to.direction); },
      (err: Error) => log.error('placing the gossip stream to %p failed - %e', peer, err),
    );
  };
  /** This node's gossip stream to `peer` onto the agreed connection, if on another or on none. */
  const placeGossip = (peer: PeerId): void => {
    const agreed = agreedConnectionTo(node, peer);
    if (agreed === undefined || gossipConnectionTo(node, peer) === agreed) return;
    placeGossipOn(peer, agreed);
  };
  /** A check of `peer`'s connections duplicateSettleMs from now; those in `seenIdleBefore` still idle then are closed. */
  const scheduleCheck = (peer: PeerId, seenIdleBefore: ReadonlySet<Connection>): void => {
    const id = peer.toString();
    if (stopped) return;
    const timer = setTimeout(() => {
      pending.delete(id);
      const open = node.getConnections(peer).filter((c) => c.status === 'open');
      if (open.length < 2) {
        // gossipsub opens its stream once per peer: one that closed with its connection (mid-move, or a duplicate
        // dropped) while another stays open was never replaced, and that direction's gossip stayed silent.
        if (open.length === 1 && gossipConnectionTo(node, peer) !== open[0]) placeGossipOn(peer, open[0]);
        return;
      }
      placeGossip(peer);
      if (selfPeerId > id) {
        scheduleCheck(peer, new Set());
        return;
      }
      const idle = idleDuplicates(peer);
      for (const c of idle) {
        if (!seenIdleBefore.has(c)) continue;
        log('closing an idle duplicate connection to %p (%s)', peer, c.direction);
        void c.close().catch((err: Error) => c.abort(err));
      }
      // Looked at again while duplicates remain: those idle now are closed if still idle then.
      scheduleCheck(peer, new Set(idle));
    }, duplicateSettleMs);
    timer.unref();
    pending.set(id, timer);
  };
  return {
    connectionOpened(peer) {
      if (pending.has(peer.toString()) || node.getConnections(peer).length < 2) return;
      scheduleCheck(peer, new Set());
    },
    connectionClosed(peer) {
      if (pending.has(peer.toString()) || !node.getConnections(peer).some((c) => c.status === 'open')) return;
      scheduleCheck(peer, new Set());
    },
    stop() {
      stopped = true;
      for (const timer of pending.values()) clearTimeout(timer);
      pending.clear();
    },
  };
}

/**
 * The addresses of a connected peer worth saving (known-peers.json): those it listens on (identify) over
 * TCP, on a host address (not 0.0.0.0), the ones on the address it was reached at first; loopback ones only
 * if it was reached over loopback (elsewhere they would name this host).
 */
function savedAddressesOf(listenAddrs: readonly Multiaddr[], remoteAddr: Multiaddr): string[] {
  const remoteIp = ipOf(remoteAddr);
  const remoteLoopback = remoteIp !== undefined && (remoteIp === '::1' || remoteIp.startsWith('127.'));
  const usable = listenAddrs.filter((a) => {
    const components = a.getComponents();
    if (!components.some((c) => c.name === 'tcp')) return false;
    const ip = ipOf(a);
    if (ip === '0.0.0.0' || ip === '::') return false;
    return remoteLoopback || ip === undefined || !(ip === '::1' || ip.startsWith('127.'));
  });
  return [...usable.filter((a) => ipOf(a) === remoteIp), ...usable.filter((a) => ipOf(a) !== remoteIp)].map((a) => a.toString());
}

/** The IP address of a multiaddr, or undefined (a DNS name, another transport). */
function ipOf(ma: Multiaddr): string | undefined {
  return ma.getComponents().find((c) => c.name === 'ip4' || c.name === 'ip6')?.value;
}

/** Whether `ip` names this host: unspecified, loopback, or one of its interfaces' addresses. */
function isThisHost(ip: string): boolean {
  if (ip === '0.0.0.0' || ip === '::' || ip === '::1' || ip.startsWith('127.')) return true;
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.address === ip));
}

/** The messages of an error and its causes, for matching what a library reports only in words. */
function errorChainText(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) parts.push(e.message);
  return parts.join(' | ');
}

/** Inbound connections still in their handshake at once (see the connection manager options). */
export const incomingPendingConnectionsMax = 128;

/** Bytes of gossip queued for one peer at most (see the gossipsub options): eight of the largest messages. */
export function gossipOutboundBufferBytes(maxGossipBytes: number): number {
  return 8 * maxGossipBytes;
}

/** Build and start a mesh node. */
export async function createMeshNode(init: MeshNodeInit): Promise<MeshNode> {
  if (init.swarmKey === undefined) {
    throw new MeshNodeError('ERR_NODE_CONFIG', 'swarmKey is required (null explicitly disables the private network)');
  }
  if (!Number.isInteger(init.p2pPort) || init.p2pPort < 0 || init.p2pPort > 65535) {
    throw new MeshNodeError('ERR_NODE_CONFIG', `invalid p2p port ${init.p2pPort}`);
  }
  const tuning = init.tuning ?? {};
  const host = init.host ?? '0.0.0.0';
  const bootstrapAddrs = (init.bootstrap ?? []).map(parseMultiaddr);
  const announce = (init.announce ?? []).map((a) => parseMultiaddr(a).toString());
  const pingTimeout = tuning.pingTimeoutMs ?? 5000;
  const pingIntervalMs = tuning.pingIntervalMs ?? 2000;
  const pingStreamsMax = Math.ceil((2 * pingTimeout) / pingIntervalMs) + 2;
  const connectionSilentMaxMs = 2 * pingTimeout;
  const silenceCheckIntervalMs = Math.min(pingIntervalMs, connectionSilentMaxMs / 4);
  // Silence counts the time this process could run: what arrived while it stood still is not read yet.
  const runTime = new RunTimeClock(silenceCheckIntervalMs);
  const inboundActivity = init.swarmKey === null ? undefined : new InboundActivity({ nowMs: () => runTime.nowMs() });
  const streamInit: MeshStreamInit = { highWaterMark: tuning.readHighWaterMark ?? 1024 * 1024 };
  // Data from a peer is proof of life (helper 65: on a 3 Mbit/s link its heartbeats waited over 3 s behind
  // bulk copies, the peer was declared dead, its connections dropped, and the copies sent again).
  const activityHandlers = new Set<PeerHandler>();
  const activityNotedAtMs = new Map<string, number>();
  const streamInitFor = (peerId: string): MeshStreamInit => ({
    ...streamInit,
    onData: () => {
      if (activityHandlers.size === 0) return;
      const nowMs = performance.now();
      if (nowMs - (activityNotedAtMs.get(peerId) ?? Number.NEGATIVE_INFINITY) < peerActivityNoticeMs) return;
      // One entry per peer with streams; bounded all the same (a mesh has far fewer peers).
      if (activityNotedAtMs.size >= 4096 && !activityNotedAtMs.has(peerId)) activityNotedAtMs.clear();
      activityNotedAtMs.set(peerId, nowMs);
      for (const handler of activityHandlers) handler(peerId);
    },
  });
  const maxStreamWindowSize = tuning.maxStreamWindowSize ?? 4 * 1024 * 1024;
  const maxGossipBytes = tuning.maxGossipBytes ?? 1024 * 1024;
  const { privateKey, created: identityCreated } = await loadOrCreatePeerKey(init.dataDir);
  const selfId = peerIdFromPrivateKey(privateKey).toString();
  const knownPeersOptions = {
    maxPeers: tuning.maxKnownPeers ?? 64,
    writeDelayMs: tuning.knownPeersWriteDelayMs,
    writeIntervalMs: tuning.knownPeersWriteIntervalMs,
    forgetAfterMs: tuning.knownPeersForgetAfterMs,
  };
  const saved = await readKnownPeers(init.dataDir, selfId, knownPeersOptions);

  const withPeerId = bootstrapAddrs.filter((ma) => peerIdOf(ma) !== undefined).map((ma) => ma.toString());

  const node = await createLibp2p({
    privateKey,
    addresses: {
      listen: [`/ip4/${host}/tcp/${init.p2pPort}`],
      announce,
    },
    transports: [tcp()],
    ...(init.swarmKey === null ? {} : { connectionProtector: pskProtector({ swarmKey: init.swarmKey, inboundActivity, maxWriteBufferBytes: tuning.maxConnectionWriteBufferBytes }) }),
    connectionEncrypters: [noise()],
    streamMuxers: [
      yamux({
        ...(tuning.muxerKeepAliveIntervalMs === undefined ? {} : { keepAliveInterval: tuning.muxerKeepAliveIntervalMs }),
        // A data frame holds up to the stream's send window (the library sizes frames by it and ignores the
        // muxer's maxMessageSize); Noise cuts a larger frame into 64 KiB messages on its own.
        streamOptions: {
          initialStreamWindowSize: 256 * 1024,
          maxStreamWindowSize: Math.max(256 * 1024, maxStreamWindowSize),
        },
      }),
    ],
    peerDiscovery: withPeerId.length > 0 ? [bootstrap({ list: withPeerId, timeout: 10 })] : [],
    connectionManager: {
      dialTimeout: tuning.dialTimeoutMs ?? 5000,
      // Connections that have not finished their handshake. libp2p's 10 were filled by anyone who reached
      // the port, without the swarm key: 10 TCP connections that never send the pnet nonce, reopened as its
      // 5 s timeout closes them (2 a second, under the 5 a second a host may open), kept every site out
      // (hunt 100). One host can now hold ~25 at most; the others still get in.
      maxIncomingPendingConnections: incomingPendingConnectionsMax,
    },
    connectionMonitor: {
      pingInterval: pingIntervalMs,
      pingTimeout: { minTimeout: pingTimeout, maxTimeout: pingTimeout * 2 },
      // Silence decides where bytes are seen (see the header comment); a late ping alone does not.
      abortConnectionOnPingFailure: inboundActivity === undefined,
    },
    services: {
      identify: identify(),
      // Pings every pingIntervalMs, each allowed up to twice the ping timeout: several in flight at once (one
      // outbound by default, and every ping over the limit aborted the connection as a failed one).
      ping: ping({ maxOutboundStreams: pingStreamsMax, maxInboundStreams: pingStreamsMax }),
      pubsub: gossipsub({
        D: 2,
        Dlo: 1,
        Dhi: 4,
        Dout: 0,
        floodPublish: true,
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        doPX: false,
        maxInboundDataLength: maxGossipBytes,
        // Gossipsub writes to a peer's stream without back-pressure: to a connected peer that reads
        // nothing (its pings still arrive, so it is not silent) every message published was queued, for
        // as long as it stayed connected (hunt 100: 50 MiB held for 50 MiB published). Past this the
        // stream is reset: that peer hears no more gossip from here, and its membership drops this peer
        // (then both reconnect) if it is alive at all.
        maxOutboundBufferSize: gossipOutboundBufferBytes(maxGossipBytes),
        // No penalty for many PeerIds behind one IP address. gossipsub's default scores each peer down by
        // the square of the PeerIds past 10 seen at its address, remembered for an hour after they leave:
        // a site restarted on empty data directories gets a new PeerId each time, so after about a dozen
        // restarts on one host (or behind one NAT) every peer there was graylisted and the still-connected
        // survivors stopped hearing each other for good. Only swarm-key holders join this mesh anyway.
        scoreParams: { IPColocationFactorWeight: 0 },
      }),
    },
  });

  const log = node.logger.forComponent('pacs-mesh:net');
  const pubsub = node.services.pubsub;
  const reconnector = new Reconnector(node, log, {
    minDelayMs: tuning.reconnectMinDelayMs ?? 250,
    maxDelayMs: tuning.reconnectMaxDelayMs ?? 5000,
    maxKnown: tuning.maxKnownPeers ?? 64,
    dialTimeoutMs: tuning.dialTimeoutMs ?? 5000,
    savedInMeshRedialMs: tuning.savedPeerInMeshRedialMs ?? 60_000,
  }, node.peerId.toString(), init.onBootstrapUnreachable, init.onBootstrapIdentityChanged, init.onIdentityTwinAddress);
  for (const ma of bootstrapAddrs) reconnector.addBootstrap(ma);
  const safeCall = <A>(fn: (arg: A) => void, arg: A, what: string): void => {
    try {
      fn(arg);
    } catch (err) {
      log.error('%s handler threw - %e', what, err);
    }
  };

  const onKnownPeersProblem = (problem: KnownPeersProblem): void => {
    log('known peers file: cannot %s %s: %s', problem.operation, problem.path, problem.error);
    if (init.onKnownPeersProblem) safeCall(init.onKnownPeersProblem, problem, 'known peers problem');
  };
  if (saved.problem !== undefined) onKnownPeersProblem(saved.problem);
  const knownPeers = new KnownPeersFile(init.dataDir, selfId, saved.peers, knownPeersOptions, onKnownPeersProblem);
  let savedPeers = 0;
  for (const peer of saved.peers) {
    if (reconnector.addSaved(peer.peerId, peer.addrs.map((a) => multiaddr(a)))) savedPeers++;
  }
  if (savedPeers > 0) log('dialling %d peer(s) saved in %s: at the back-off until one connects, then once a minute those not heard of', savedPeers, knownPeers.path);

  const connectedHandlers = new Set<PeerHandler>();
  const disconnectedHandlers = new Set<PeerHandler>();
  const topicHandlers = new Map<string, Set<GossipHandler>>();

  const topicJoinedHandlers = new Map<string, Set<PeerHandler>>();
  /** MeshNode.onTopicJoined, also for the built-in address announcements. */
  const onTopicJoined = (topic: string, handler: PeerHandler): (() => void) => {
    let handlers = topicJoinedHandlers.get(topic);
    if (handlers === undefined) topicJoinedHandlers.set(topic, (handlers = new Set()));
    handlers.add(handler);
    return () => {
      handlers.delete(handler);
      if (handlers.size === 0) topicJoinedHandlers.delete(topic);
    };
  };
  pubsub.addEventListener('subscription-change', (evt) => {
    const peerId = evt.detail.peerId.toString();
    for (const { topic, subscribe } of evt.detail.subscriptions) {
      if (!subscribe) continue;
      for (const h of topicJoinedHandlers.get(topic) ?? []) safeCall(h, peerId, `subscription to ${topic}`);
    }
  });
  node.addEventListener('peer:connect', (evt) => {
    const id = evt.detail.toString();
    reconnector.onConnected(id);
    for (const h of connectedHandlers) safeCall(h, id, 'peer:connect');
  });
  // Per connected peer: the listen addresses each of its open connections reported (identify); cleared
  // when the peer disconnects, so bounded by the connected peers. When each peer's conflict was last
  // reported is kept across disconnects (twins make their peer flap), for at most 256 peers.
  const identified = new Map<string, Map<string, string[]>>();
  const conflictReportedAtMs = new Map<string, number>();
  node.addEventListener('peer:identify', (evt) => {
    const { peerId, listenAddrs, connection } = evt.detail;
    const id = peerId.toString();
    reconnector.onIdentified(id, listenAddrs, connection.remoteAddr);
    knownPeers.noteConnected(id, savedAddressesOf(listenAddrs, connection.remoteAddr));
    const addresses = listenAddrs.map((a) => a.toString()).sort();
    const byConnection = identified.get(id) ?? new Map<string, string[]>();
    identified.set(id, byConnection);
    const open = new Set(node.getConnections(peerId).map((c) => c.id));
    for (const connectionId of byConnection.keys()) if (!open.has(connectionId)) byConnection.delete(connectionId);
    byConnection.set(connection.id, addresses);
    // One process reports the same addresses on every connection: none in common means two processes.
    const other = [...byConnection.entries()].find(([cid, theirs]) => cid !== connection.id && theirs.length > 0 && !theirs.some((a) => addresses.includes(a)));
    if (other === undefined || addresses.length === 0) return;
    // This peer's own report is once a minute per identity; the twins are told at every conflict seen (one
    // frame per new connection; each logs it once a minute): a copy started again within the minute (the
    // operator retrying under another --site) is a new process that has heard nothing yet, and serves
    // alone meanwhile (helper 91).
    const nowMs = performance.now();
    if (nowMs - (conflictReportedAtMs.get(id) ?? Number.NEGATIVE_INFINITY) >= IDENTITY_CONFLICT_REPORT_INTERVAL_MS) {
      conflictReportedAtMs.delete(id);
      conflictReportedAtMs.set(id, nowMs);
      if (conflictReportedAtMs.size > 256) conflictReportedAtMs.delete(conflictReportedAtMs.keys().next().value!);
      if (init.onIdentityConflict) safeCall(init.onIdentityConflict, { peerId: id, addresses: [other[1], addresses] }, 'identity conflict');
    }
    const notice: IdentityConflictMessage = { type: 'identity-conflict', addresses: [other[1].slice(0, MAX_ANNOUNCED_ADDRS), addresses.slice(0, MAX_ANNOUNCED_ADDRS)] };
    for (const twin of node.getConnections(peerId).filter((c) => c.id === other[0] || c.id === connection.id)) {
      void (async () => {
        const signal = AbortSignal.timeout(5000);
        const stream = new MeshStream(await twin.newStream(IDENTITY_CONFLICT_PROTOCOL, { signal }), id, streamInit);
        try {
          await stream.writer.writeFrame(encodeEnvelope(notice, { maxBytes: IDENTITY_CONFLICT_MAX_BYTES }), { signal });
          await stream.close({ signal });
        } catch (err) {
          stream.abort(err as Error);
          throw err;
        }
      })().catch((err: Error) => log('identity conflict notice to %s not sent: %s', id, err.message));
    }
  });
  let noticeReceivedAtMs = Number.NEGATIVE_INFINITY;
  // Peers only tell; a notice costs one frame of at most 8 KiB, read within 5 s.
  await node.handle(IDENTITY_CONFLICT_PROTOCOL, async (raw, connection) => {
    const stream = new MeshStream(raw, connection.remotePeer.toString(), streamInitFor(connection.remotePeer.toString()));
    const signal = AbortSignal.timeout(5000);
    let addresses: [string[], string[]] | null;
    try {
      const message = decodeEnvelope<IdentityConflictMessage>(await stream.reader.readFrame(IDENTITY_CONFLICT_MAX_BYTES, { signal }), { maxBytes: IDENTITY_CONFLICT_MAX_BYTES });
      addresses = message?.type === 'identity-conflict' ? parseAddressPair(message.addresses) : null;
      await stream.close({ signal });
    } catch (err) {
      stream.abort(err as Error);
      log('identity conflict notice from %s unreadable: %s', stream.remotePeer, (err as Error).message);
      return;
    }
    const nowMs = performance.now();
    if (addresses === null || nowMs - noticeReceivedAtMs < IDENTITY_CONFLICT_REPORT_INTERVAL_MS) return;
    noticeReceivedAtMs = nowMs;
    if (init.onIdentityConflictNotice) safeCall(init.onIdentityConflictNotice, { reportedBy: stream.remotePeer, addresses }, 'identity conflict notice');
  }, { maxInboundStreams: 4, maxOutboundStreams: 4 });
  const duplicates = createDuplicateSweeper(node, log);
  node.addEventListener('connection:open', (evt) => duplicates.connectionOpened(evt.detail.remotePeer));
  node.addEventListener('connection:close', (evt) => duplicates.connectionClosed(evt.detail.remotePeer));
  node.addEventListener('peer:disconnect', (evt) => {
    const id = evt.detail.toString();
    identified.delete(id);
    knownPeers.noteDisconnected(id);
    reconnector.onDisconnected(id);
    for (const h of disconnectedHandlers) safeCall(h, id, 'peer:disconnect');
  });
  pubsub.addEventListener('message', (evt) => {
    const msg: Message = evt.detail;
    const handlers = topicHandlers.get(msg.topic);
    if (handlers === undefined) return;
    const message: GossipMessage = { topic: msg.topic, data: msg.data, from: msg.type === 'signed' ? msg.from.toString() : undefined };
    for (const h of handlers) safeCall(h, message, `gossip ${msg.topic}`);
  });

  reconnector.start();
  let stopped = false;

  // Built-in address exchange: each peer announces where it listens; receivers remember it in the
  // reconnect loop (which dials it), so the mesh becomes complete whatever bootstrap each site used.
  const announceInterval = tuning.peerAnnounceIntervalMs ?? 5000;
  let announceTimer: ReturnType<typeof setInterval> | undefined;
  let announceSoon: ReturnType<typeof setTimeout> | undefined;
  if (announceInterval > 0) {
    const announce = (): void => {
      const addrs = node.getMultiaddrs().map((ma) => ma.toString()).slice(0, MAX_ANNOUNCED_ADDRS);
      const msg: PeerAddrsMessage = { type: 'peer-addrs', peerId: selfId, addrs };
      pubsub.publish(PEERS_TOPIC, encodeEnvelope(msg, { maxBytes: MAX_ANNOUNCE_BYTES })).catch((err: Error) => {
        log('peer announcement failed: %s', err.message);
      });
    };
    /** One announcement within announceReplyDelayMs, however many asked for it meanwhile. */
    const announceShortly = (): void => {
      if (announceSoon !== undefined || stopped) return;
      announceSoon = setTimeout(() => {
        announceSoon = undefined;
        if (!stopped) announce();
      }, announceReplyDelayMs);
    };
    topicHandlers.set(PEERS_TOPIC, new Set([(m: GossipMessage) => {
      let msg: PeerAddrsMessage;
      try {
        msg = decodeEnvelope<PeerAddrsMessage>(m.data, { maxBytes: MAX_ANNOUNCE_BYTES });
      } catch (err) {
        log('ignoring malformed peer announcement: %s', (err as Error).message);
        return;
      }
      // only a peer's own signed announcement counts
      if (msg.type !== 'peer-addrs' || msg.peerId !== m.from || msg.peerId === selfId || !Array.isArray(msg.addrs)) return;
      const addrs = msg.addrs.filter((a): a is string => typeof a === 'string' && a.length <= 512).slice(0, MAX_ANNOUNCED_ADDRS);
      // A peer heard of for the first time hears of this one at once too, not at the next period: a newcomer
      // that joined through one site must reach the others before that site can die (seen: two survivors
      // that had not met yet when their only common peer was killed 2 s after the join never found each other).
      const newcomer = !reconnector.knows(msg.peerId);
      facade.addKnownPeer(msg.peerId, addrs).catch((err: Error) => {
        log('ignoring peer announcement from %s: %s', msg.peerId, err.message);
      });
      if (newcomer) announceShortly();
    }]));
    pubsub.subscribe(PEERS_TOPIC);
    announceTimer = setInterval(announce, announceInterval);
    // A peer that has just subscribed to the announcements (a new connection) gets this one's at once.
    onTopicJoined(PEERS_TOPIC, announceShortly);
  }

  const silenceTimer =
    inboundActivity === undefined
      ? undefined
      : setInterval(() => {
          runTime.checked();
          for (const connection of node.getConnections()) {
            const silentForMs = inboundActivity.silentForMs(connection.remoteAddr.toString());
            if (silentForMs === undefined || silentForMs < connectionSilentMaxMs) continue;
            log('connection to %s silent for %d ms of run time: aborting it', connection.remotePeer.toString(), Math.round(silentForMs));
            connection.abort(new MeshNodeError('ERR_CONNECTION_SILENT', `nothing received on the connection for ${Math.round(silentForMs)} ms of this process's run time`));
          }
        }, silenceCheckIntervalMs);
  silenceTimer?.unref();

  const facade: MeshNode = {
    peerId: node.peerId.toString(),
    identityCreated,
    savedPeers,
    savedDialCauses: () => reconnector.savedDialCauses(),
    multiaddrs: () => node.getMultiaddrs().map((ma) => ma.toString()),
    connectedPeers: () => node.getPeers().map((p) => p.toString()),
    connectionCount: (peerId) => node.getConnections(parsePeerId(peerId)).filter((c) => c.status === 'open').length,
    reconnectDialsInFlight: () => reconnector.dialsInFlight,
    async publish(topic, data) {
      const result = await pubsub.publish(topic, data);
      return result.recipients.length;
    },
    subscribe(topic, handler) {
      let handlers = topicHandlers.get(topic);
      if (handlers === undefined) {
        handlers = new Set();
        topicHandlers.set(topic, handlers);
        pubsub.subscribe(topic);
      }
      handlers.add(handler);
      return () => {
        const set = topicHandlers.get(topic);
        if (set === undefined || !set.delete(handler)) return;
        if (set.size === 0) {
          topicHandlers.delete(topic);
          if (!stopped) pubsub.unsubscribe(topic);
        }
      };
    },
    onPeerConnected(handler) {
      connectedHandlers.add(handler);
      return () => connectedHandlers.delete(handler);
    },
    onPeerDisconnected(handler) {
      disconnectedHandlers.add(handler);
      return () => disconnectedHandlers.delete(handler);
    },
    onPeerActivity(handler) {
      activityHandlers.add(handler);
      return () => activityHandlers.delete(handler);
    },
    onTopicJoined,
    async handle(protocol, handler, options = {}) {
      await node.handle(protocol, async (stream, connection) => {
        const mesh = new MeshStream(stream, connection.remotePeer.toString(), streamInitFor(connection.remotePeer.toString()));
        try {
          await handler(mesh);
        } catch (err) {
          log.error('handler for %s threw - %e', protocol, err);
          mesh.abort(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        // The handler is done with the stream: it ends here. A remote that neither closed its end nor
        // reset the stream (a refused request, then more bytes) kept it open for good, each holding the
        // reader's high-water mark plus a stream window and a place in the protocol's stream limit (hunt
        // 100: 80 such streams from one peer held 470 MiB at the receiver, for as long as it liked).
        if (mesh.raw.status !== 'open') return;
        try {
          await mesh.close({ signal: AbortSignal.timeout(handledStreamCloseMs) });
        } catch (err) {
          mesh.abort(err instanceof Error ? err : new Error(String(err)));
        }
      }, {
        maxInboundStreams: options.maxInboundStreams ?? 32,
        maxOutboundStreams: options.maxOutboundStreams ?? 64,
      });
    },
    async unhandle(protocol) {
      await node.unhandle(protocol);
    },
    async openStream(peerId, protocol, options = {}) {
      const id = parsePeerId(peerId);
      // Not connected: dialled where the mesh knows the peer listens. libp2p's peer store forgets a peer's
      // addresses an hour after it first saw them (by Date.now()), and such a stream failed at once until the
      // reconnect loop had reconnected (hunt 124). A peer the mesh knows no address of: the peer store's.
      const signal = options.signal ?? AbortSignal.timeout(tuning.dialTimeoutMs ?? 5000);
      // With duplicates, on the connection the sweeper keeps: libp2p picks the newest open one (its sort of
      // direct connections reverses two), and a stream there (an election stream stays open for good) kept
      // the duplicate busy, or was cut when it closed.
      const agreed = agreedConnectionTo(node, id);
      if (agreed !== undefined && node.getConnections(id).filter((c) => c.status === 'open').length > 1) {
        return new MeshStream(await agreed.newStream(protocol, { signal }), peerId, streamInitFor(peerId));
      }
      const known = node.getConnections(id).some((c) => c.status === 'open') ? [] : reconnector.addressesOf(peerId);
      const stream = await node.dialProtocol(known.length > 0 ? known : id, protocol, { signal });
      return new MeshStream(stream, peerId, streamInitFor(peerId));
    },
    async addKnownPeer(peerId, addrs = []) {
      const id = parsePeerId(peerId);
      if (id.equals(node.peerId)) return;
      const parsed = addrs.map(parseMultiaddr);
      if (parsed.length > 0) await node.peerStore.merge(id, { multiaddrs: parsed });
      reconnector.addPeer(peerId, parsed);
    },
    async dial(address, options = {}) {
      const conn = await node.dial(parseMultiaddr(address), { signal: options.signal ?? AbortSignal.timeout(tuning.dialTimeoutMs ?? 5000) });
      return conn.remotePeer.toString();
    },
    forgetPeers(peerIds) {
      void knownPeers.forget(peerIds);
      for (const peerId of peerIds) reconnector.forget(peerId);
    },
    noteSiteOf(peerId, site) {
      knownPeers.noteSite(peerId, site);
    },
    forgetSites(sites) {
      for (const peerId of knownPeers.forgetSites(sites)) reconnector.forget(peerId);
    },
    dropPeer(peerId, reason) {
      let id: PeerId;
      try {
        id = parsePeerId(peerId);
      } catch {
        return;
      }
      for (const connection of node.getConnections(id)) connection.abort(new MeshNodeError('ERR_PEER_DROPPED', reason));
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (announceTimer !== undefined) clearInterval(announceTimer);
      if (silenceTimer !== undefined) clearInterval(silenceTimer);
      if (announceSoon !== undefined) clearTimeout(announceSoon);
      duplicates.stop();
      await reconnector.stop();
      await knownPeers.stop();
      await node.stop();
    },
  };
  libp2pNodes.set(facade, node);
  return facade;
}

const libp2pNodes = new WeakMap<MeshNode, Libp2p<Services>>();

/** The libp2p node behind a MeshNode: for tests that put its connections in a state no public call makes. */
export function libp2pOf(mesh: MeshNode): Libp2p<Services> {
  const node = libp2pNodes.get(mesh);
  if (node === undefined) throw new MeshNodeError('ERR_NODE_CONFIG', 'not a MeshNode made by createMeshNode');
  return node;
}
