/**
 * Which custody messages go out next, on one /custody/1 stream. A message to a peer with copies in flight
 * waits behind them (sendCustodyMessages: up to stallTimeoutMs on a slow link), so a peer with
 * `perPeerMax` streams open already is passed over: one slow link must not hold every stream while
 * messages to the other sites wait.
 */

/**
 * Takes from `queue` (in place) the messages of the first destination with fewer than `perPeerMax`
 * streams in flight (`inFlightTo`), in order, at most `perStreamMax` of them; undefined when no
 * destination may have another stream now.
 */
export function takeNextSend<M>(
  queue: Array<{ to: string; message: M }>,
  inFlightTo: ReadonlyMap<string, number>,
  perPeerMax: number,
  perStreamMax: number,
): { to: string; messages: M[] } | undefined {
  const first = queue.find((queued) => (inFlightTo.get(queued.to) ?? 0) < perPeerMax);
  if (first === undefined) return undefined;
  const messages: M[] = [];
  for (let i = 0; i < queue.length && messages.length < perStreamMax; ) {
    if (queue[i]!.to === first.to) messages.push(queue.splice(i, 1)[0]!.message);
    else i++;
  }
  return { to: first.to, messages };
}
