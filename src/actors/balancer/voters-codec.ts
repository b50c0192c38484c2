/**
 * Validation of admitted voters (hunt 168/184) read from the network or the election record: bounded, and null for
 * anything malformed, so that one bad field drops the message (or marks the record damaged) instead of counting.
 */
import { votersMax, type Voters, type VotersVersion } from './messages.ts';

/** A PeerId in a list: what a peer of any build sends is far shorter (52 characters for Ed25519). */
const peerIdMaxChars = 256;

/** Also how parseBalancerMessage checks every PeerId it reads. */
export const isPeerId = (x: unknown): x is string => typeof x === 'string' && x.length > 0 && x.length <= peerIdMaxChars;
const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

export function parseVotersVersion(value: unknown): VotersVersion | null {
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  return isCount(v.term) && isCount(v.seq) ? { term: v.term, seq: v.seq } : null;
}

/** At most votersMax distinct PeerIds, returned sorted as the reducer keeps them. */
export function parseVoters(value: unknown): Voters | null {
  const version = parseVotersVersion(value);
  const peers = (value as { peers?: unknown } | null)?.peers;
  if (version === null || !Array.isArray(peers) || peers.length > votersMax || !peers.every(isPeerId)) return null;
  if (new Set(peers).size !== peers.length) return null;
  return { peers: [...peers].sort(), ...version };
}
