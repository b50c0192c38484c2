// Node 20 lacks Promise.withResolvers and libp2p v3 calls it at start (STACK.md trap 1): load this first.
const promiseConstructor = Promise as unknown as { withResolvers?: unknown };
if (typeof promiseConstructor.withResolvers !== 'function') {
  promiseConstructor.withResolvers = function withResolvers<T>() {
    let resolve!: (value: T | PromiseLike<T>) => void;
    let reject!: (reason?: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
// Node 20's AbortSignal.any adds a WeakRef to the new signal to each source's set of dependants and never
// takes it out (Node 22 does, when the signal is collected): with a source living as long as the peer (its
// stop signal, under every push, pull and retrieve) the set grew by one entry per call, ~16,000 an hour in
// helper 75's soak, without end (and a Set cannot pass 2^24 entries). Each call now first drops the
// dependants already collected, once the set has doubled since the last time.
const dependantsPruned = new WeakMap<object, number>();
const originalAny = AbortSignal.any?.bind(AbortSignal);
function dependantsOf(signal: AbortSignal): Set<WeakRef<object>> | undefined {
  const key = Object.getOwnPropertySymbols(signal).find((symbol) => symbol.description === 'kDependantSignals');
  const set = key === undefined ? undefined : (signal as unknown as Record<symbol, unknown>)[key];
  // Node's own SafeSet, which is not an instanceof Set.
  const isSet = typeof (set as Set<unknown> | undefined)?.delete === 'function' && typeof (set as Set<unknown>).size === 'number';
  return isSet ? (set as Set<WeakRef<object>>) : undefined;
}
export function pruneAbortDependants(signal: AbortSignal): void {
  const dependants = dependantsOf(signal);
  if (dependants === undefined || dependants.size < Math.max(64, 2 * (dependantsPruned.get(signal) ?? 0))) return;
  for (const ref of dependants) if (ref.deref() === undefined) dependants.delete(ref);
  dependantsPruned.set(signal, dependants.size);
}
if (originalAny !== undefined && Number(process.versions.node.split('.')[0]) < 22) {
  AbortSignal.any = function any(signals: AbortSignal[]): AbortSignal {
    for (const signal of signals) if (signal instanceof AbortSignal) pruneAbortDependants(signal);
    return originalAny(signals);
  };
}

