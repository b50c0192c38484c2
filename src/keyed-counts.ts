/**
 * Counts per key of things open at once (tunnels to a peer, sends in flight to a voter, connections from a
 * client): a key leaves the map when its count is back to zero, so the map is bounded by what is open.
 */

/** One more under `key`; returns the new count. */
export function countUp<K>(counts: Map<K, number>, key: K): number {
  const count = (counts.get(key) ?? 0) + 1;
  counts.set(key, count);
  return count;
}

/** One fewer under `key` (gone at zero). */
export function countDown<K>(counts: Map<K, number>, key: K): void {
  const count = (counts.get(key) ?? 1) - 1;
  if (count > 0) counts.set(key, count);
  else counts.delete(key);
}
