/**
 * Peer configuration: command-line parsing and validation with messages an operator can act on.
 * Every problem is reported at once as a ConfigError (code ERR_CONFIG) before anything starts.
 */
import { isIP } from 'node:net';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { blobWriteBufferBytesDefault } from './actors/storage/replica-store.ts';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'ERR_CONFIG';
}

export interface AeAddress {
  host: string;
  port: number;
}

export interface PeerConfig {
  site: string;
  dataDir: string;
  aeTitle: string;
  host: string;
  dicomPort: number;
  httpPort: number;
  /** C-MOVE destinations given on the command line; merged into the persisted AE directory. */
  moveDestinations: Record<string, AeAddress>;
  /** Empty: any calling AE title may associate. */
  allowedCallingAeTitles: string[];
  /** The P-DATA-TF maximum length we announce (and so accept). */
  maxPduLength: number;
  /**
   * `--ingest-buffer-mib`: the memory that holds a burst of instances (written once, to the synced log) until the
   * ingest pauses; up to twice this while a full one is written out (replica-store.ts, blobWriteBufferBytesDefault).
   */
  ingestBufferBytes: number;
  /** Associations served at once; more are rejected as transient congestion. */
  maxAssociations: number;
  /** Associations at which the balancer counts this peer as full and routes new ones elsewhere. */
  associationsPerPeer: number;
  /** An established association silent this long (no operation running) is aborted. */
  idleTimeoutMs: number;
  /** HTTP connections one address may hold at once (0: no cap of its own); undefined: a quarter of the port's. */
  httpConnectionsPerClient?: number;
  // The mesh (issue 3).
  swarmKeyFile?: string;
  p2pPort: number;
  bootstrap: string[];
  /** Copies on distinct sites before a C-STORE is acknowledged; undefined: 2 when two or more sites are alive, else 1. */
  writeQuorum?: number;
  /** Lower wins the balancer election (issue 4). */
  priority: number;
  /**
   * Pinned election roster (PeerIds, self included or not): exactly these peers vote, which keeps one
   * leader per term even across partitions. Empty: the roster is learnt (every peer seen alive).
   */
  roster: string[];
  /**
   * Whether the operator runs several peers under this site name on purpose (`--site-peers several`).
   * 'one': another live peer claiming the site at another DICOM address is a copied --site, and the peer
   * that started later stops.
   */
  sitePeers: 'one' | 'several';
  /**
   * Whose votes count in the balancer election (`--election-voters`): 'admitted' (the default since 2026-12-04),
   * voters admitted one at a time through the leader (hunt 184; docs/mesh-algorithms.md, "Admitted voters"); 'learnt',
   * the learnt roster (the default before: it can elect two leaders in one term). Once on, the election record keeps
   * the list and the peer keeps the mode at later starts. A pinned --roster runs neither (its own fixed voters).
   */
  electionVoters: 'learnt' | 'admitted';
  /**
   * `--found-mesh`: with admitted voters, whether a first start founds the voters of a new mesh as their only member.
   * 'auto' (the default): a first start founds them when --bootstrap names no other peer, joins otherwise, and a data
   * directory of learnt rosters keeps them until a leader stamps its roster as the list; 'yes' founds (also on such a
   * directory, the upgrade of docs/mesh-algorithms.md, and over a joiner's empty list); 'no' joins.
   */
  foundMesh: 'auto' | 'yes' | 'no';
  logLevel: 'info' | 'warn' | 'error' | 'silent';
  /**
   * `--standalone yes`: run without --swarm-key on a data directory that was a mesh site (it knows other
   * sites), on purpose; without it such a start is refused (see mesh-state.ts).
   */
  standalone: boolean;
  /** Scrub: MB (10^6 bytes) of stored copies read back and checked per second while idle; 0 turns it off. */
  scrubMbPerS: number;
  /**
   * A peer without --bootstrap checks whether it serves alone this long after its start and again at this
   * interval; undefined: 15 s, then every 10 minutes (see startMesh). No option: tests set it through
   * PACS_MESH_ISOLATION_CHECK_MS (testTimingsFromEnv), so as not to wait 15 s for a warning or its absence.
   */
  isolationCheckMs?: number;
  /**
   * How long searches wait for a first other site after the start (CustodyTuning.joinWaitAfterStartMs);
   * undefined: 15 s. No option: tests set it through PACS_MESH_JOIN_WAIT_MS (testTimingsFromEnv).
   */
  joinWaitAfterStartMs?: number;
  /**
   * Keys one repair exchange lists at most (CustodyTuning.repairKeysMax); undefined: 2,000. No option: tests
   * set it through PACS_MESH_REPAIR_KEYS_MAX (testTimingsFromEnv) to make a small archive's refill last.
   */
  repairKeysMax?: number;
  /**
   * How often a peer sends again the forget-peers it holds (the balancer's forgetRepublishIntervalMs); undefined:
   * 60 s. No option: tests set it through PACS_MESH_FORGET_REPUBLISH_MS (testTimingsFromEnv), so as not to wait a minute.
   */
  forgetRepublishIntervalMs?: number;
  /**
   * How long a peer started with --bootstrap and a roster of itself alone waits before it may elect itself (the
   * balancer's aloneJoinWaitMs); undefined: 15 s. No option: tests set it through PACS_MESH_ALONE_JOIN_WAIT_MS.
   */
  aloneJoinWaitMs?: number;
}

export const defaultConfig: PeerConfig = {
  site: 'site-a',
  dataDir: '.data/site-a',
  aeTitle: 'PACSMESH',
  host: '0.0.0.0',
  dicomPort: 11112,
  httpPort: 8042,
  moveDestinations: {},
  allowedCallingAeTitles: [],
  maxPduLength: 256 * 1024,
  ingestBufferBytes: blobWriteBufferBytesDefault,
  maxAssociations: 64,
  associationsPerPeer: 32,
  idleTimeoutMs: 120_000,
  p2pPort: 4001,
  bootstrap: [],
  priority: 100,
  roster: [],
  sitePeers: 'one',
  electionVoters: 'admitted',
  foundMesh: 'auto',
  logLevel: 'info',
  standalone: false,
  scrubMbPerS: 16,
};

/** AE titles: 1-16 characters of the default repertoire, no backslash or control characters (PS3.5 6.2). */
export function checkAeTitle(value: string, what: string): string {
  const trimmed = value.trim();
  if (trimmed.length === 0 || trimmed.length > 16 || !/^[\x20-\x5b\x5d-\x7e]+$/.test(trimmed)) {
    throw new ConfigError(`${what} "${value}" is not a valid AE title (1-16 printable characters, no backslash)`);
  }
  return trimmed;
}

/** A whole number written in decimal digits; NaN for anything else ('', ' ', '0x10', '1e3', '-1'). */
function wholeNumber(value: string): number {
  return /^\d{1,10}$/.test(value) ? Number(value) : Number.NaN;
}

/** A number written in decimal digits, with an optional fraction; NaN for anything else. */
function decimalNumber(value: string): number {
  return /^\d{1,10}(\.\d{1,6})?$/.test(value) ? Number(value) : Number.NaN;
}

/** A whole number in [min, max], or a ConfigError saying so. */
function wholeNumberIn(value: string, what: string, min: number, max: number): number {
  const n = wholeNumber(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${what} "${value}" must be ${min}-${max}`);
  return n;
}

function checkPort(value: string, what: string, allowZero = true): number {
  const port = wholeNumber(value);
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new ConfigError(`${what} "${value}" is not a port number (${allowZero ? 0 : 1}-65535)`);
  }
  return port;
}

/** The address the ports bind to: an IP address, so that it means the same to DICOM, HTTP and libp2p. */
function checkBindAddress(value: string): string {
  if (isIP(value) === 0) throw new ConfigError(`--host "${value}" is not an IP address (e.g. 0.0.0.0 for every interface, 127.0.0.1 for this machine only)`);
  return value;
}

/** A --bootstrap address: a multiaddr libp2p can dial; a /p2p/ part, if any, must be a PeerId. */
function checkBootstrap(value: string): string {
  const example = '/ip4/<address>/tcp/<p2p port>/p2p/<peerId> (a site\'s /api/mesh self.multiaddrs)';
  let address: Multiaddr;
  try {
    address = multiaddr(value);
  } catch (error) {
    throw new ConfigError(`--bootstrap "${value.slice(0, 200)}" is not a multiaddr (${(error as Error).message}); use ${example}`);
  }
  const components = address.getComponents();
  // The mesh's transport is plain TCP on IPv4 (see --host): an IPv4 address or DNS name, a TCP port, and
  // optionally the PeerId.
  const names = components.map((c) => c.name);
  const plainTcp = names.length >= 2 && ['ip4', 'dns', 'dns4'].includes(names[0]!) && names[1] === 'tcp' && (names.length === 2 || (names.length === 3 && names[2] === 'p2p'));
  if (!plainTcp) throw new ConfigError(`--bootstrap "${value.slice(0, 200)}" is not an address of a peer's TCP port; use ${example}`);
  if (components[1]!.value === '0') throw new ConfigError(`--bootstrap "${value.slice(0, 200)}" names TCP port 0; use ${example}`);
  for (const c of components) {
    if (c.name !== 'p2p') continue;
    try {
      peerIdFromString(c.value ?? '');
    } catch {
      throw new ConfigError(`--bootstrap "${value.slice(0, 200)}": "${c.value ?? ''}" is not a PeerId; use ${example}`);
    }
  }
  return value;
}

function checkHost(value: string, what: string): string {
  if (isIP(value) === 0 && !/^[A-Za-z0-9.-]{1,253}$/.test(value)) throw new ConfigError(`${what} "${value}" is not an IP address or host name`);
  return value;
}

export function parseAeAddress(value: string, what: string): { aeTitle: string; address: AeAddress } {
  const match = /^([^=]+)=(.+):(\d+)$/.exec(value);
  if (!match) throw new ConfigError(`${what} "${value}" must look like AET=host:port`);
  // An IPv6 address is written in brackets before its port ([::1]:104), as in URLs.
  const bracketed = /^\[(.+)\]$/.exec(match[2]!);
  if (bracketed && isIP(bracketed[1]!) !== 6) throw new ConfigError(`${what} host "${match[2]}" is not an IPv6 address`);
  // Without brackets the last ':' could belong to the address: say how to write it instead of guessing.
  if (!bracketed && match[2]!.includes(':')) throw new ConfigError(`${what} "${value}": an IPv6 address goes in brackets, e.g. ${match[1]}=[::1]:104`);
  const host = bracketed ? bracketed[1]! : checkHost(match[2]!, `${what} host`);
  return { aeTitle: checkAeTitle(match[1]!, `${what} AE title`), address: { host, port: checkPort(match[3]!, `${what} port`, false) } };
}

/** What --site takes, and so the one site name POST /api/forget-site can name. */
export const siteNamePattern = /^[A-Za-z0-9_-]{1,64}$/;

/** Options that may be given more than once (each adds to a list); the others once at most. */
const repeatable = new Set(['--move-dest', '--allow-calling', '--bootstrap', '--roster']);

const flags: Record<string, { takesValue: boolean; apply: (config: PeerConfig, value: string) => void }> = {
  '--site': {
    takesValue: true,
    apply: (c, v) => {
      if (!siteNamePattern.test(v)) throw new ConfigError(`--site "${v}" must be 1-64 letters, digits, '-' or '_'`);
      c.site = v;
    },
  },
  '--data': { takesValue: true, apply: (c, v) => (c.dataDir = v) },
  '--ae-title': { takesValue: true, apply: (c, v) => (c.aeTitle = checkAeTitle(v, '--ae-title')) },
  '--host': { takesValue: true, apply: (c, v) => (c.host = checkBindAddress(v)) },
  '--dicom-port': { takesValue: true, apply: (c, v) => (c.dicomPort = checkPort(v, '--dicom-port')) },
  '--http-port': { takesValue: true, apply: (c, v) => (c.httpPort = checkPort(v, '--http-port')) },
  '--move-dest': {
    takesValue: true,
    apply: (c, v) => {
      const { aeTitle, address } = parseAeAddress(v, '--move-dest');
      // Own keys, defined rather than assigned: "constructor" was taken as given twice and "__proto__" was lost.
      if (Object.hasOwn(c.moveDestinations, aeTitle)) throw new ConfigError(`--move-dest ${aeTitle} given twice: give each destination once`);
      c.moveDestinations = { ...c.moveDestinations, ...Object.fromEntries([[aeTitle, address]]) };
    },
  },
  '--allow-calling': {
    takesValue: true,
    apply: (c, v) => {
      const titles = v.split(',');
      // An empty list would quietly let every calling AE title in: access control must be said, not implied.
      if (titles.every((s) => s.trim().length === 0)) throw new ConfigError(`--allow-calling "${v}" lists no AE title`);
      if (titles.some((s) => s.trim().length === 0)) throw new ConfigError(`--allow-calling "${v}" has an empty item (a stray comma?): list AE titles separated by single commas`);
      c.allowedCallingAeTitles.push(...titles.map((s) => checkAeTitle(s, '--allow-calling')));
    },
  },
  '--max-pdu': { takesValue: true, apply: (c, v) => (c.maxPduLength = wholeNumberIn(v, '--max-pdu', 4096, 4 * 1024 * 1024)) },
  '--ingest-buffer-mib': { takesValue: true, apply: (c, v) => (c.ingestBufferBytes = wholeNumberIn(v, '--ingest-buffer-mib', 4, 4096) * 1024 * 1024) },
  '--max-associations': { takesValue: true, apply: (c, v) => (c.maxAssociations = wholeNumberIn(v, '--max-associations', 1, 10_000)) },
  '--associations-per-peer': { takesValue: true, apply: (c, v) => (c.associationsPerPeer = wholeNumberIn(v, '--associations-per-peer', 1, 10_000)) },
  '--http-connections-per-client': { takesValue: true, apply: (c, v) => (c.httpConnectionsPerClient = wholeNumberIn(v, '--http-connections-per-client', 0, 1024)) },
  '--idle-timeout': {
    takesValue: true,
    apply: (c, v) => {
      const seconds = decimalNumber(v);
      if (!Number.isFinite(seconds) || seconds < 1 || seconds > 86_400) throw new ConfigError(`--idle-timeout "${v}" must be 1-86400 seconds`);
      c.idleTimeoutMs = seconds * 1000;
    },
  },
  '--swarm-key': { takesValue: true, apply: (c, v) => (c.swarmKeyFile = v) },
  '--p2p-port': { takesValue: true, apply: (c, v) => (c.p2pPort = checkPort(v, '--p2p-port')) },
  '--bootstrap': {
    takesValue: true,
    apply: (c, v) => {
      c.bootstrap.push(checkBootstrap(v));
    },
  },
  '--write-quorum': { takesValue: true, apply: (c, v) => (c.writeQuorum = wholeNumberIn(v, '--write-quorum', 1, 16)) },
  '--priority': { takesValue: true, apply: (c, v) => (c.priority = wholeNumberIn(v, '--priority', 0, 1_000_000)) },
  '--roster': {
    takesValue: true,
    apply: (c, v) => {
      const ids = v.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
      // PeerIds are base58 multihashes (12D3KooW... for Ed25519): letters and digits only.
      const bad = ids.find((id) => !/^[1-9A-HJ-NP-Za-km-z]{40,100}$/.test(id));
      if (ids.length === 0 || bad !== undefined) throw new ConfigError(`--roster "${v}" must be a comma-separated list of PeerIds${bad ? ` ("${bad}" is not one)` : ''}`);
      c.roster.push(...ids);
    },
  },
  '--site-peers': {
    takesValue: true,
    apply: (c, v) => {
      if (v !== 'one' && v !== 'several') throw new ConfigError(`--site-peers "${v}" must be one or several`);
      c.sitePeers = v;
    },
  },
  '--election-voters': {
    takesValue: true,
    apply: (c, v) => {
      if (v !== 'learnt' && v !== 'admitted') throw new ConfigError(`--election-voters "${v}" must be learnt or admitted`);
      c.electionVoters = v;
    },
  },
  '--found-mesh': {
    takesValue: true,
    apply: (c, v) => {
      if (v !== 'yes' && v !== 'no' && v !== 'auto') throw new ConfigError(`--found-mesh "${v}" must be yes, no or auto`);
      c.foundMesh = v;
    },
  },
  '--scrub-mb-per-s': {
    takesValue: true,
    apply: (c, v) => {
      const n = decimalNumber(v);
      if (!Number.isFinite(n) || n < 0 || n > 10_000) throw new ConfigError(`--scrub-mb-per-s "${v}" must be 0-10000 (0 turns the scrub off)`);
      c.scrubMbPerS = n;
    },
  },
  '--standalone': {
    takesValue: true,
    apply: (c, v) => {
      if (v !== 'yes' && v !== 'no') throw new ConfigError(`--standalone "${v}" must be yes or no`);
      c.standalone = v === 'yes';
    },
  },
  '--log-level': {
    takesValue: true,
    apply: (c, v) => {
      if (v !== 'info' && v !== 'warn' && v !== 'error' && v !== 'silent') throw new ConfigError(`--log-level "${v}" must be info, warn, error or silent`);
      c.logLevel = v;
    },
  },
};

/** Every option `pacs-mesh start` takes (the README's synopsis and --help list each: test/unit/config.test.ts). */
export const startOptionNames: readonly string[] = Object.keys(flags);

/** Options that mean something only in a mesh: refused without --swarm-key. */
export const meshOnlyOptions: readonly string[] = ['--p2p-port', '--bootstrap', '--write-quorum', '--priority', '--roster', '--associations-per-peer', '--site-peers', '--election-voters', '--found-mesh'];

export function parseStartArgs(args: readonly string[]): PeerConfig {
  const config: PeerConfig = { ...defaultConfig, moveDestinations: {}, allowedCallingAeTitles: [], bootstrap: [], roster: [] };
  const given = new Set<string>();
  let dataGiven = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const [name, inlineValue] = arg.includes('=') && arg.startsWith('--') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const flag = flags[name];
    if (!flag) throw new ConfigError(`unknown option "${arg}" (see pacs-mesh --help)`);
    const value = inlineValue ?? args[++i];
    // An empty value would quietly mean something else (port 0 = any port, '' = the current directory);
    // one that is the next option means the value was left out.
    if (value === undefined || value.trim() === '' || (inlineValue === undefined && value.startsWith('--'))) throw new ConfigError(`option ${name} needs a value`);
    if (given.has(name) && !repeatable.has(name)) throw new ConfigError(`option ${name} given twice: give it once`);
    given.add(name);
    flag.apply(config, value);
    if (name === '--data') dataGiven = true;
  }
  if (!dataGiven) config.dataDir = `.data/${config.site}`;
  if (config.bootstrap.length > 0 && !config.swarmKeyFile) {
    throw new ConfigError('--bootstrap requires --swarm-key FILE: a mesh is private, create a key with pacs-mesh keygen');
  }
  const meshOnly = meshOnlyOptions.filter((name) => given.has(name));
  if (!config.swarmKeyFile && meshOnly.length > 0) {
    throw new ConfigError(`${meshOnly.join(', ')} ${meshOnly.length === 1 ? 'means' : 'mean'} something only in a mesh: add --swarm-key FILE (a key from pacs-mesh keygen)`);
  }
  if (given.has('--found-mesh') && config.electionVoters !== 'admitted') {
    throw new ConfigError('--found-mesh founds (or not) the admitted voters of a new mesh: it contradicts --election-voters learnt');
  }
  if (config.roster.length > 0) {
    // A pinned roster is a fixed list of voters of its own: the default admitted voters give way to it.
    const admittedAsked = given.has('--election-voters') && config.electionVoters === 'admitted';
    if (admittedAsked || given.has('--found-mesh')) {
      throw new ConfigError(`${admittedAsked ? '--election-voters admitted' : '--found-mesh'} and --roster contradict each other: a pinned roster is a fixed list of voters of its own`);
    }
    config.electionVoters = 'learnt';
  }
  if (config.swarmKeyFile && config.standalone) {
    throw new ConfigError('--standalone yes and --swarm-key contradict each other: give --swarm-key to run in the mesh, --standalone yes to run alone');
  }
  if (config.swarmKeyFile && isIP(config.host) !== 4) {
    throw new ConfigError(`--host "${config.host}" must be an IPv4 address in a mesh (the libp2p transport listens on IPv4)`);
  }
  const ports: Array<[string, number]> = [['--dicom-port', config.dicomPort], ['--http-port', config.httpPort]];
  if (config.swarmKeyFile) ports.push(['--p2p-port', config.p2pPort]);
  for (const [i, [name, port]] of ports.entries()) {
    const clash = ports.slice(i + 1).find(([, other]) => other === port && port !== 0);
    if (clash) throw new ConfigError(`${name} and ${clash[0]} are both ${port}: each needs its own port`);
  }
  return config;
}

/**
 * The environment variables that shorten a peer's waits for tests, read here alone (no operator needs them:
 * they are not options). PACS_MESH_ISOLATION_CHECK_MS: PeerConfig.isolationCheckMs (1 ms or more);
 * PACS_MESH_JOIN_WAIT_MS: PeerConfig.joinWaitAfterStartMs (0 or more); PACS_MESH_REPAIR_KEYS_MAX:
 * PeerConfig.repairKeysMax (1 or more: a slow refill); PACS_MESH_FORGET_REPUBLISH_MS: PeerConfig.forgetRepublishIntervalMs
 * (1 ms or more); PACS_MESH_ALONE_JOIN_WAIT_MS: PeerConfig.aloneJoinWaitMs (0 or more). Unset or empty: the defaults.
 */
type TestTimings = Pick<PeerConfig, 'isolationCheckMs' | 'joinWaitAfterStartMs' | 'repairKeysMax' | 'forgetRepublishIntervalMs' | 'aloneJoinWaitMs'>;

export function testTimingsFromEnv(env: NodeJS.ProcessEnv): TestTimings {
  const timings: TestTimings = {};
  const read = (name: string, leastMs: number): number | undefined => {
    const value = env[name];
    if (value === undefined || value === '') return undefined;
    const ms = wholeNumber(value);
    if (!(ms >= leastMs)) throw new ConfigError(`${name} "${value}" is not a whole number of milliseconds (${leastMs} or more)`);
    return ms;
  };
  const isolationCheckMs = read('PACS_MESH_ISOLATION_CHECK_MS', 1);
  if (isolationCheckMs !== undefined) timings.isolationCheckMs = isolationCheckMs;
  const joinWaitAfterStartMs = read('PACS_MESH_JOIN_WAIT_MS', 0);
  if (joinWaitAfterStartMs !== undefined) timings.joinWaitAfterStartMs = joinWaitAfterStartMs;
  const repairKeysMax = read('PACS_MESH_REPAIR_KEYS_MAX', 1);
  if (repairKeysMax !== undefined) timings.repairKeysMax = repairKeysMax;
  const forgetRepublishIntervalMs = read('PACS_MESH_FORGET_REPUBLISH_MS', 1);
  if (forgetRepublishIntervalMs !== undefined) timings.forgetRepublishIntervalMs = forgetRepublishIntervalMs;
  const aloneJoinWaitMs = read('PACS_MESH_ALONE_JOIN_WAIT_MS', 0);
  if (aloneJoinWaitMs !== undefined) timings.aloneJoinWaitMs = aloneJoinWaitMs;
  return timings;
}

export const usage = `pacs-mesh: a fault-tolerant multi-site DICOM archive

Usage:
  pacs-mesh start [options]
  pacs-mesh keygen --out FILE
  pacs-mesh --version

start options (defaults in brackets):
  --site NAME                 site name [site-a]
  --data DIR                  data directory [.data/<site>]
  --ae-title AET              called AE title to answer [PACSMESH]
  --host IP                   address the DICOM, HTTP and libp2p ports bind to (IPv4 in a mesh) [0.0.0.0]
  --dicom-port N              DICOM port [11112]
  --http-port N               HTTP port: status page, /healthz, /api, DICOMweb [8042]
  --http-connections-per-client N  HTTP connections one address may hold, of 1024 (0: no cap; a reverse proxy) [256]
  --move-dest AET=host:port   C-MOVE destination, repeatable ([IPv6]:port in brackets); persisted in DIR/ae-directory.json
  --allow-calling AET,...     only these calling AE titles may associate [any]
  --max-pdu N                 maximum PDU length we receive [262144]
  --ingest-buffer-mib N       memory holding a burst of incoming instances until the ingest pauses (a
                              burst that fits is stored faster); up to twice this while one is written out [32]
  --max-associations N        associations served at once [64]
  --idle-timeout SECONDS      abort an association that sends nothing for this long [120]
  --associations-per-peer N   balancer: associations at which a peer is full and new ones go elsewhere [32]
  --swarm-key FILE            private mesh key (pacs-mesh keygen)
  --p2p-port N                libp2p TCP port [4001]
  --bootstrap MULTIADDR       a peer to join through, repeatable
  --write-quorum N            copies on distinct sites before Success [2 when 2+ sites are alive]
  --priority N                balancer election priority, lower wins [100]
  --roster PEERID,...         pin the election roster (strict one leader per term) [none]
  --site-peers one|several    peers run under this --site; with one, a peer that finds its site name held
                              by a live peer started before it at another DICOM address stops [one]
  --election-voters admitted|learnt  whose votes elect the balancer leader: voters admitted one at a time
                              through the leader (kept once on), or the learnt roster [admitted]
  --found-mesh auto|yes|no    with admitted voters, whether this first start founds a new mesh's voters:
                              auto founds when --bootstrap names no other peer, else waits to be
                              admitted; yes on exactly one site, never twice [auto]
  --scrub-mb-per-s N          read back and check stored copies at N MB/s when idle (1/8 of it while
                              associations are active or instances are being stored);
                              damaged ones are replaced from another site; 0 = off [16]
  --standalone yes|no         run alone on a data directory that was a mesh site (without --swarm-key
                              such a directory is refused, exit 2) [no]
  --log-level LEVEL           info | warn | error | silent [info]
`;
