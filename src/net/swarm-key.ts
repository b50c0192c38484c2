/**
 * Swarm keys (pre-shared keys) of the private network, in the standard libp2p / IPFS format:
 *
 * ```
 * /key/swarm/psk/1.0.0/
 * /base16/
 * <64 hex digits>
 * ```
 *
 * `/base64/` is accepted on read as well (go-libp2p writes it sometimes); we always write base16.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, stat } from 'node:fs/promises';
import { SwarmKeyError } from './errors.ts';

export const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/';
export const SWARM_KEY_LENGTH = 32;
/** A swarm key file is ~95 bytes; refuse to read anything much larger. */
const MAX_SWARM_KEY_FILE_BYTES = 4096;

export interface SwarmKey {
  /** The 32 key bytes. */
  readonly psk: Uint8Array;
  /** Canonical text form (base16, `\n` line ends, no trailing newline). */
  readonly text: string;
  /** First 16 hex digits of SHA-256(psk): safe to log, lets operators compare keys across sites. */
  readonly fingerprint: string;
}

function fingerprintOf(psk: Uint8Array): string {
  return createHash('sha256').update(psk).digest('hex').slice(0, 16);
}

function fromPsk(psk: Uint8Array): SwarmKey {
  const hex = Buffer.from(psk).toString('hex');
  return { psk, text: `${SWARM_KEY_HEADER}\n/base16/\n${hex}`, fingerprint: fingerprintOf(psk) };
}

/** Generate a new random swarm key. */
export function generateSwarmKey(): SwarmKey {
  return fromPsk(new Uint8Array(randomBytes(SWARM_KEY_LENGTH)));
}

/** Parse a swarm key from its text (or the bytes of its file). Throws {@link SwarmKeyError}. */
export function parseSwarmKey(input: string | Uint8Array): SwarmKey {
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  const lines = text.split(/\r\n|\r|\n/).map((l) => l.trim());
  // Blank lines around the key (an editor's, a copy-paste's) are no part of it: "found 4 lines" misled (helper 91).
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  while (lines.length > 0 && lines[0] === '') lines.shift();
  if (lines.length !== 3) {
    throw new SwarmKeyError('ERR_SWARM_KEY_FORMAT', `swarm key must have 3 lines (${SWARM_KEY_HEADER}, /base16/, key), found ${lines.length}`);
  }
  const [header, codec, body] = lines as [string, string, string];
  if (header !== SWARM_KEY_HEADER) {
    throw new SwarmKeyError('ERR_SWARM_KEY_FORMAT', `swarm key must start with ${SWARM_KEY_HEADER}, found "${header.slice(0, 40)}"`);
  }
  let psk: Uint8Array;
  if (codec === '/base16/') {
    if (!/^[0-9a-fA-F]*$/.test(body) || body.length % 2 !== 0) {
      throw new SwarmKeyError('ERR_SWARM_KEY_ENCODING', 'swarm key body is not valid base16 (hex)');
    }
    psk = new Uint8Array(Buffer.from(body, 'hex'));
  } else if (codec === '/base64/') {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body)) {
      throw new SwarmKeyError('ERR_SWARM_KEY_ENCODING', 'swarm key body is not valid base64');
    }
    psk = new Uint8Array(Buffer.from(body, 'base64'));
  } else {
    throw new SwarmKeyError('ERR_SWARM_KEY_ENCODING', `unsupported swarm key encoding "${codec.slice(0, 20)}" (expected /base16/)`);
  }
  if (psk.byteLength !== SWARM_KEY_LENGTH) {
    throw new SwarmKeyError('ERR_SWARM_KEY_LENGTH', `swarm key must be ${SWARM_KEY_LENGTH} bytes, found ${psk.byteLength}`);
  }
  return fromPsk(psk);
}

export interface SwarmKeyFile extends SwarmKey {
  /** True when group or others may read the file (it should be 0600). */
  readonly permissionsTooOpen: boolean;
}

/** A file system error's reason without the path Node appends ("ENOENT: no such file or directory, stat '/x'"), which the caller names once. */
function readFailureReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const system = /^(E[A-Z]+): (.*?), \w+ '.*'$/s.exec(message);
  return system ? `${system[2]} (${system[1]})` : message;
}

/** Read and parse a swarm key file. Errors name the path (once) but never the key. */
export async function readSwarmKeyFile(path: string): Promise<SwarmKeyFile> {
  let bytes: Buffer;
  let mode: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > MAX_SWARM_KEY_FILE_BYTES) throw new Error(`file is ${st.size} bytes, a swarm key is ~95`);
    mode = st.mode;
    bytes = await readFile(path);
  } catch (err) {
    throw new SwarmKeyError('ERR_SWARM_KEY_READ', `${path}: ${readFailureReason(err)}`, { cause: err });
  }
  try {
    return { ...parseSwarmKey(bytes), permissionsTooOpen: (mode & 0o077) !== 0 };
  } catch (err) {
    if (err instanceof SwarmKeyError) {
      throw new SwarmKeyError(err.code, `${path}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/**
 * Write a swarm key file with mode 0600, refusing to overwrite an existing file (for `pacs-mesh keygen`).
 * Returns the key written.
 */
export async function writeSwarmKeyFile(path: string, key: SwarmKey = generateSwarmKey()): Promise<SwarmKey> {
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.writeFile(`${key.text}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return key;
}
