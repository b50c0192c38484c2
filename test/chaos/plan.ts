/**
 * The chaos test's plan: from one seed, the whole list of steps a run takes, made up front by a pure model
 * of which sites are up, paused, down or not started yet. The choices never depend on how long a step took,
 * so one seed always drives the same steps whatever the machine's load (only their timing differs).
 */
import { Prng } from '../../src/sim/prng.ts';

export type SiteName = string;

export type ChaosStep =
  /** A site's first start, bootstrapping from one running site (none for the very first). */
  | { type: 'start'; site: SiteName; bootstrapFrom: SiteName | null }
  | { type: 'kill9'; site: SiteName }
  /** SIGSTOP now; the matching `resume` comes `forSteps` steps later, and no sooner than `minMs` after it. */
  | { type: 'pause'; site: SiteName; forSteps: number; minMs: number }
  | { type: 'resume'; site: SiteName }
  /** SIGTERM, and the peer must exit 0. */
  | { type: 'stop'; site: SiteName }
  /** A start on the same data directory and ports, with the command line of its first start. */
  | { type: 'restart'; site: SiteName }
  /** storescu of corpus files (by index) and of `newInstances` fresh synthetic ones, running on while the next steps go. */
  | { type: 'store'; site: SiteName; corpusFiles: number[]; newInstances: number }
  | { type: 'sleep'; ms: number };

type SiteState = 'unborn' | 'up' | 'paused' | 'down';

export interface ChaosPlan {
  seed: number;
  sites: SiteName[];
  /** The random steps. */
  steps: ChaosStep[];
  /** After them: every site up again (resumes, restarts, first starts of sites never started). */
  heal: ChaosStep[];
}

export interface ChaosPlanOptions {
  seed: number;
  steps: number;
  /** How many corpus files a store step may pick from. */
  corpusSize: number;
  /** Default: 3 to 5 sites, drawn from the seed. */
  siteCount?: number;
}

const siteNames = ['site-a', 'site-b', 'site-c', 'site-d', 'site-e'];

export function planChaos(options: ChaosPlanOptions): ChaosPlan {
  const rng = new Prng(options.seed);
  const siteCount = options.siteCount ?? rng.between(3, 5);
  if (siteCount < 1 || siteCount > siteNames.length) throw new Error(`siteCount ${siteCount}: 1 to ${siteNames.length}`);
  const sites = siteNames.slice(0, siteCount);
  const state = new Map<SiteName, SiteState>(sites.map((s) => [s, 'unborn']));
  /** Pauses still open: the step index at which each resumes, and its minimum length. */
  const pausedUntilStep = new Map<SiteName, number>();
  const inState = (wanted: SiteState) => sites.filter((s) => state.get(s) === wanted);
  const steps: ChaosStep[] = [{ type: 'start', site: sites[0]!, bootstrapFrom: null }];
  state.set(sites[0]!, 'up');

  const resumeDue = (index: number, into: ChaosStep[]) => {
    for (const [site, at] of [...pausedUntilStep]) {
      if (at > index) continue;
      pausedUntilStep.delete(site);
      state.set(site, 'up');
      into.push({ type: 'resume', site });
    }
  };

  for (let i = 0; i < options.steps; i++) {
    resumeDue(i, steps);
    const up = inState('up');
    const unborn = inState('unborn');
    const down = inState('down');
    const paused = inState('paused');
    // Weighted choices among the steps possible in this state.
    const choices: Array<[number, () => ChaosStep]> = [];
    if (unborn.length > 0 && up.length > 0) choices.push([3, () => ({ type: 'start', site: unborn[0]!, bootstrapFrom: rng.pick(up) })]);
    if (up.length > 0) {
      choices.push([5, () => ({ type: 'store', site: rng.pick(up), corpusFiles: pickCorpus(rng, options.corpusSize), newInstances: rng.between(0, 3) })]);
      choices.push([2, () => ({ type: 'kill9', site: rng.pick([...up, ...paused]) })]);
      choices.push([1, () => ({ type: 'stop', site: rng.pick(up) })]);
      if (up.length > 1) choices.push([2, () => ({ type: 'pause', site: rng.pick(up), forSteps: rng.between(0, 2), minMs: rng.between(1000, 8000) })]);
    }
    if (down.length > 0) choices.push([up.length === 0 ? 6 : 3, () => ({ type: 'restart', site: rng.pick(down) })]);
    choices.push([2, () => ({ type: 'sleep', ms: rng.between(200, 5000) })]);
    const step = weightedPick(rng, choices)();
    steps.push(step);
    switch (step.type) {
      case 'start':
      case 'restart':
        state.set(step.site, 'up');
        break;
      case 'kill9':
      case 'stop':
        state.set(step.site, 'down');
        pausedUntilStep.delete(step.site);
        break;
      case 'pause':
        state.set(step.site, 'paused');
        pausedUntilStep.set(step.site, i + 1 + step.forSteps);
        break;
      case 'resume':
      case 'store':
      case 'sleep':
        break;
      default:
        step satisfies never;
    }
  }
  const heal: ChaosStep[] = [];
  resumeDue(Number.POSITIVE_INFINITY, heal);
  for (const site of inState('down')) heal.push({ type: 'restart', site });
  for (const site of inState('unborn')) heal.push({ type: 'start', site, bootstrapFrom: rng.pick(sites.filter((s) => state.get(s) !== 'unborn')) });
  return { seed: options.seed, sites, steps, heal };
}

function pickCorpus(rng: Prng, corpusSize: number): number[] {
  if (corpusSize === 0) return [];
  const count = rng.between(1, Math.min(3, corpusSize));
  const picked = new Set<number>();
  while (picked.size < count) picked.add(rng.nextInt(corpusSize));
  return [...picked].sort((x, y) => x - y);
}

function weightedPick<T>(rng: Prng, choices: ReadonlyArray<[number, T]>): T {
  const total = choices.reduce((sum, [weight]) => sum + weight, 0);
  let draw = rng.nextUnit() * total;
  for (const [weight, value] of choices) {
    if (draw < weight) return value;
    draw -= weight;
  }
  return choices[choices.length - 1]![1];
}

/** One line per step, for the test's log and a failure message. */
export function describeStep(step: ChaosStep): string {
  switch (step.type) {
    case 'start':
      return `start ${step.site}${step.bootstrapFrom === null ? '' : ` (bootstrap ${step.bootstrapFrom})`}`;
    case 'kill9':
      return `kill -9 ${step.site}`;
    case 'pause':
      return `SIGSTOP ${step.site} (>= ${step.minMs} ms, ${step.forSteps} step(s))`;
    case 'resume':
      return `SIGCONT ${step.site}`;
    case 'stop':
      return `stop ${step.site}`;
    case 'restart':
      return `restart ${step.site}`;
    case 'store':
      return `store at ${step.site}: corpus [${step.corpusFiles.join(',')}] + ${step.newInstances} new`;
    case 'sleep':
      return `sleep ${step.ms} ms`;
    default:
      return step satisfies never;
  }
}
