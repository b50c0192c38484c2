/**
 * A small seeded PRNG (mulberry32, seeded through splitmix32) so that one seed reproduces a whole run.
 * Nothing in the mesh reducers or the simulation may use Math.random: randomness is passed in.
 */

/** The whole generator state is one 32-bit word, so it can live inside a reducer's state. */
export interface PrngState {
  readonly word: number;
}

/** Spreads a small seed (0, 1, 2 ...) over all 32 bits so that nearby seeds give unrelated streams. */
function splitmix32(seed: number): number {
  let z = (seed + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export function prngSeed(seed: number): PrngState {
  return { word: splitmix32(seed >>> 0) };
}

/** Pure step: the next uint32 and the state after it. */
export function prngNextUint32(state: PrngState): { value: number; state: PrngState } {
  const word = (state.word + 0x6d2b79f5) | 0;
  let t = Math.imul(word ^ (word >>> 15), 1 | word);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return { value: (t ^ (t >>> 14)) >>> 0, state: { word: word >>> 0 } };
}

/** A mutable wrapper for the simulation driver, where threading the state by hand would only add noise. */
export class Prng {
  private state: PrngState;

  constructor(seed: number) {
    this.state = prngSeed(seed);
  }

  nextUint32(): number {
    const next = prngNextUint32(this.state);
    this.state = next.state;
    return next.value;
  }

  /** Uniform in [0, 1). */
  nextUnit(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, maxExclusive). */
  nextInt(maxExclusive: number): number {
    return Math.floor(this.nextUnit() * maxExclusive);
  }

  /** Uniform integer in [min, max]. */
  between(min: number, max: number): number {
    return min + this.nextInt(max - min + 1);
  }

  chance(probability: number): boolean {
    return this.nextUnit() < probability;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[this.nextInt(items.length)] as T;
  }

  /** An independent stream, so that adding draws in one part of the run does not shift another part. */
  fork(): Prng {
    return new Prng(this.nextUint32());
  }
}
