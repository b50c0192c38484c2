import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CatalogEntry } from '../catalog-types.ts';
import { archiveBusy, defaultScrubConfig, initScrub, scrubStats, stepScrub, storedRecentlyMs, type ScrubState } from './logic.ts';
import type { ScrubConfig, ScrubEffect, ScrubInput } from './messages.ts';

function entry(index: number, byteLength = 1000): CatalogEntry {
  return {
    sopInstanceUid: `1.2.${String(index).padStart(5, '0')}`,
    sopClassUid: '1.2.840.10008.5.1.4.1.1.7',
    studyInstanceUid: '1.2',
    seriesInstanceUid: '1.2.0',
    patientId: 'P',
    transferSyntaxUid: '1.2.840.10008.1.2.1',
    byteLength,
    sha256: 'ab'.repeat(32),
    storedAtMs: 0,
    blobId: `blob-${index}`,
    attributes: [],
  };
}

/**
 * Runs the reducer against an in-memory catalog, answering every effect at once (reads are instant):
 * ticks every 250 ms until `untilMs`. `bad` copies fail verification; repairs end as `repairOutcome`.
 */
function simulate(options: {
  config?: Partial<ScrubConfig>;
  catalog: CatalogEntry[];
  untilMs: number;
  bad?: Set<string>;
  busy?: (nowMs: number) => boolean;
  failListAtCalls?: Set<number>;
  repairOutcome?: 'repaired' | 'unavailable' | 'hold';
  resumeAfterUid?: string;
}) {
  const config = { ...defaultScrubConfig, ...options.config };
  let state: ScrubState = initScrub(config, 0, options.resumeAfterUid);
  const saves: string[] = [];
  const lists: string[] = [];
  const verified: string[] = [];
  const repairs: string[] = [];
  const reports: Array<Extract<ScrubEffect, { type: 'report' }>> = [];
  const queue: ScrubInput[] = [];
  let nowMs = 0;
  const perform = (effects: ScrubEffect[]) => {
    for (const effect of effects) {
      switch (effect.type) {
        case 'list': {
          lists.push(effect.afterUid);
          if (options.failListAtCalls?.has(lists.length)) {
            queue.push({ type: 'listFailed', error: 'disk said no', nowMs });
            break;
          }
          const after = options.catalog.filter((e) => e.sopInstanceUid > effect.afterUid);
          const page = after.slice(0, effect.limit);
          queue.push({ type: 'listed', entries: page, lastUid: page.at(-1)?.sopInstanceUid, end: after.length <= effect.limit, nowMs });
          break;
        }
        case 'verify':
          verified.push(effect.entry.sopInstanceUid);
          queue.push({ type: 'verified', sopInstanceUid: effect.entry.sopInstanceUid, outcome: options.bad?.has(effect.entry.sopInstanceUid) ? 'bad' : 'ok', nowMs });
          break;
        case 'repair':
          repairs.push(effect.entry.sopInstanceUid);
          if (options.repairOutcome !== 'hold') queue.push({ type: 'repairEnded', sopInstanceUid: effect.entry.sopInstanceUid, outcome: options.repairOutcome ?? 'repaired', nowMs });
          break;
        case 'report':
          reports.push(effect);
          break;
        case 'saveCursor':
          saves.push(effect.afterUid);
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(String(unreachable));
        }
      }
    }
  };
  for (nowMs = 0; nowMs <= options.untilMs; nowMs += 250) {
    queue.push({ type: 'tick', nowMs, busy: options.busy?.(nowMs) ?? false });
    while (queue.length > 0) {
      const step = stepScrub(state, queue.shift()!);
      state = step.state;
      perform(step.effects);
    }
  }
  return { state, lists, verified, repairs, reports, saves, stats: scrubStats(state) };
}

const catalog = Array.from({ length: 200 }, (_, i) => entry(i));

test('nothing is read before the start delay; then a pass reads every copy once, in UID order, a page at a time', () => {
  const early = simulate({ catalog, untilMs: 59_750, config: { startDelayMs: 60_000 } });
  assert.deepEqual(early.lists, []);
  const run = simulate({ catalog, untilMs: 70_000, config: { startDelayMs: 60_000, bytesPerSecond: 1_000_000, pageEntriesMax: 64 } });
  assert.deepEqual(run.verified, catalog.map((e) => e.sopInstanceUid));
  assert.deepEqual(run.lists, ['', '1.2.00063', '1.2.00127', '1.2.00191']);
  assert.equal(run.stats.passesCompleted, 1);
  assert.equal(run.stats.instancesVerified, 200);
  assert.equal(run.stats.bytesVerified, 200_000);
  assert.equal(run.reports.filter((r) => r.message === 'scrub pass completed').length, 1);
});

test('an operator can start a pass before the start delay is over; a running pass is not restarted', () => {
  let state = initScrub({ ...defaultScrubConfig, startDelayMs: 60_000 }, 0);
  let step = stepScrub(state, { type: 'startNow', nowMs: 5_000 });
  assert.deepEqual(step.effects, [{ type: 'list', afterUid: '', limit: defaultScrubConfig.pageEntriesMax }]);
  state = step.state;
  step = stepScrub(state, { type: 'startNow', nowMs: 5_100 });
  assert.deepEqual(step.effects, [], 'the page read already out is not asked for twice');
});

test('a step leaves the state it was given as it was (a reducer: the caller may keep it, or step it again)', () => {
  const config = { ...defaultScrubConfig, startDelayMs: 0 };
  let state = initScrub(config, 0);
  state = stepScrub(state, { type: 'tick', nowMs: 1_000, busy: false }).state;
  state = stepScrub(state, { type: 'listed', entries: [entry(1), entry(2)], lastUid: entry(2).sopInstanceUid, end: true, nowMs: 1_000 }).state;
  const before = structuredClone(state);
  const first = stepScrub(state, { type: 'suspected', entry: entry(3), reason: 'a checked read failed', nowMs: 1_000 });
  stepScrub(state, { type: 'verified', sopInstanceUid: entry(1).sopInstanceUid, outcome: 'bad', reason: 'hash differs', nowMs: 1_100 });
  assert.deepEqual(state, before);
  assert.equal(first.state.suspects.size, 1);
});

test('reads are paced by the byte rate, and slowed to the busy share while associations are active', () => {
  const config = { startDelayMs: 0, bytesPerSecond: 10_000, busyRateShare: 1 / 4 };
  const idle = simulate({ catalog, untilMs: 10_000, config });
  // 10 s at 10,000 B/s of 1,000-byte copies: ~100, plus at most one second's budget of burst.
  assert.ok(idle.verified.length >= 95 && idle.verified.length <= 111, `idle: ${idle.verified.length}`);
  const busy = simulate({ catalog, untilMs: 10_000, config, busy: () => true });
  assert.ok(busy.verified.length >= 22 && busy.verified.length <= 28, `busy: ${busy.verified.length}`);
});

test('the next pass starts after the pause and from the beginning', () => {
  const small = catalog.slice(0, 10);
  const run = simulate({ catalog: small, untilMs: 5_000, config: { startDelayMs: 0, passPauseMs: 2_000, bytesPerSecond: 1_000_000 } });
  assert.equal(run.stats.passesCompleted, 3, 'passes at 0, ~2 and ~4 s');
  assert.deepEqual(run.lists, ['', '', '']);
  assert.equal(run.verified.length, 30);
});

test('a damaged copy is reported and repaired; repairs in flight are bounded; outcomes are counted', () => {
  const bad = new Set(['1.2.00003', '1.2.00004', '1.2.00005', '1.2.00006']);
  const repaired = simulate({ catalog: catalog.slice(0, 10), untilMs: 1_000, bad, config: { startDelayMs: 0, bytesPerSecond: 1_000_000 } });
  assert.deepEqual(repaired.repairs, [...bad]);
  assert.equal(repaired.stats.badCopiesFound, 4);
  assert.equal(repaired.stats.copiesRepaired, 4);
  assert.equal(repaired.reports.filter((r) => r.message === 'scrub: damaged copy found' && r.level === 'error').length, 4);

  const held = simulate({ catalog: catalog.slice(0, 10), untilMs: 1_000, bad, repairOutcome: 'hold', config: { startDelayMs: 0, bytesPerSecond: 1_000_000, repairsInFlightMax: 2 } });
  assert.deepEqual(held.repairs, ['1.2.00003', '1.2.00004'], 'two at once; the others are found again next pass');
  assert.equal(held.stats.badCopiesFound, 4);

  const unavailable = simulate({ catalog: catalog.slice(0, 10), untilMs: 1_000, bad, repairOutcome: 'unavailable', config: { startDelayMs: 0, bytesPerSecond: 1_000_000 } });
  assert.equal(unavailable.stats.copiesUnrepaired, 4);
  assert.ok(unavailable.reports.some((r) => r.level === 'error' && /no reachable site/.test(r.message)));
});

test('a failed catalog read is retried after the pause from the same place, not from the start', () => {
  const run = simulate({ catalog, untilMs: 3_000, failListAtCalls: new Set([2]), config: { startDelayMs: 0, passPauseMs: 1_000, bytesPerSecond: 10_000_000, pageEntriesMax: 64 } });
  assert.deepEqual(run.lists.slice(0, 3), ['', '1.2.00063', '1.2.00063']);
  assert.deepEqual(run.verified.slice(0, 200), catalog.map((e) => e.sopInstanceUid), 'each copy once in the first pass');
  assert.ok(run.reports.some((r) => r.level === 'error' && /reading the catalog failed/.test(r.message)));
});

test('the cursor is saved at each page boundary (and cleared at the end); a restart resumes the pass there', () => {
  const config = { startDelayMs: 0, passPauseMs: 60_000, bytesPerSecond: 1_000_000, pageEntriesMax: 64 };
  const run = simulate({ catalog, untilMs: 1_000, config });
  assert.deepEqual(run.saves, ['1.2.00063', '1.2.00127', '1.2.00191', ''], 'saved only once a page is read back whole');
  const resumed = simulate({ catalog, untilMs: 1_000, config: { ...config, passPauseMs: 100 }, resumeAfterUid: '1.2.00127' });
  assert.deepEqual(resumed.verified.slice(0, 72), catalog.slice(128).map((e) => e.sopInstanceUid), 'the rest of the pass first');
  assert.equal(resumed.stats.passesCompleted >= 1, true);
  assert.deepEqual(resumed.lists.slice(0, 3), ['1.2.00127', '1.2.00191', ''], 'then a whole new pass');
});

test('a suspect copy is read back first, even before the first pass; once however often reported; bounded', () => {
  let state = initScrub({ ...defaultScrubConfig, startDelayMs: 60_000, suspectsQueuedMax: 2, bytesPerSecond: 1_000_000 }, 0);
  state = stepScrub(state, { type: 'tick', nowMs: 1_000, busy: false }).state;
  let step = stepScrub(state, { type: 'suspected', entry: entry(7), reason: 'misses chunk 2', nowMs: 1_000 });
  assert.deepEqual(step.effects.map((e) => e.type), ['report', 'verify'], 'read back at once, start delay or not');
  for (const again of [entry(7), entry(8), entry(8), entry(9), entry(10)]) step = stepScrub(step.state, { type: 'suspected', entry: again, reason: 'x', nowMs: 1_000 });
  assert.deepEqual([...step.state.suspects.keys()], [entry(8).sopInstanceUid, entry(9).sopInstanceUid], 'the one being read is not queued again; at most two wait');
  step = stepScrub(step.state, { type: 'verified', sopInstanceUid: entry(7).sopInstanceUid, outcome: 'bad', reason: 'misses chunk 2', nowMs: 1_000 });
  assert.deepEqual(step.effects.map((e) => e.type), ['report', 'repair', 'verify'], 'repaired, and the next suspect read back');
  const next = step.effects.find((e) => e.type === 'verify');
  assert.equal(next?.type === 'verify' ? next.entry.sopInstanceUid : undefined, entry(8).sopInstanceUid);
  step = stepScrub(step.state, { type: 'suspected', entry: entry(7), reason: 'again', nowMs: 1_000 });
  assert.ok(!step.state.suspects.has(entry(7).sopInstanceUid), 'not while its repair runs');
  assert.equal(scrubStats(step.state).suspectsVerified, 1);
  assert.equal(scrubStats(step.state).passesCompleted, 0, 'no pass started');
});

test('a copy no site could repair is not taken as a suspect again for a while; a pass still checks it', () => {
  let state = initScrub({ ...defaultScrubConfig, startDelayMs: 60_000, unrepairableQuietMs: 10_000, bytesPerSecond: 1_000_000 }, 0);
  state = stepScrub(state, { type: 'tick', nowMs: 1_000, busy: false }).state;
  state = stepScrub(state, { type: 'suspected', entry: entry(3), reason: 'misses chunk 1', nowMs: 1_000 }).state;
  state = stepScrub(state, { type: 'verified', sopInstanceUid: entry(3).sopInstanceUid, outcome: 'bad', reason: 'misses chunk 1', nowMs: 1_000 }).state;
  let step = stepScrub(state, { type: 'repairEnded', sopInstanceUid: entry(3).sopInstanceUid, outcome: 'noPeers', nowMs: 1_100 });
  step = stepScrub(step.state, { type: 'suspected', entry: entry(3), reason: 'read again', nowMs: 5_000 });
  assert.deepEqual(step.effects, [], 'quiet: not re-read, not re-logged');
  step = stepScrub(step.state, { type: 'tick', nowMs: 11_200, busy: false });
  step = stepScrub(step.state, { type: 'suspected', entry: entry(3), reason: 'read again', nowMs: 11_200 });
  assert.deepEqual(step.effects.map((e) => e.type), ['report', 'verify'], 'after the quiet time, read back again');
  const pass = simulate({ catalog: [entry(3)], untilMs: 1_000, bad: new Set([entry(3).sopInstanceUid]), repairOutcome: 'unavailable', config: { startDelayMs: 0, passPauseMs: 200, bytesPerSecond: 1_000_000 } });
  assert.ok(pass.stats.badCopiesFound >= 2, 'every pass reads it back');
});

test('a copy replaced while it was read is not counted; a rate of 0 turns the scrub off', () => {
  let state = initScrub({ ...defaultScrubConfig, startDelayMs: 0 }, 0);
  let step = stepScrub(state, { type: 'tick', nowMs: 1000, busy: false });
  state = step.state;
  step = stepScrub(state, { type: 'listed', entries: [entry(1)], lastUid: entry(1).sopInstanceUid, end: true, nowMs: 1000 });
  assert.deepEqual(step.effects.map((e) => e.type), ['verify']);
  step = stepScrub(step.state, { type: 'verified', sopInstanceUid: entry(1).sopInstanceUid, outcome: 'gone', nowMs: 1000 });
  assert.equal(scrubStats(step.state).instancesVerified, 0);

  const off = simulate({ catalog, untilMs: 120_000, config: { bytesPerSecond: 0, startDelayMs: 0 } });
  assert.deepEqual([off.lists, off.verified], [[], []]);
});

test('archiveBusy: an active association, or an instance stored within storedRecentlyMs', () => {
  assert.equal(archiveBusy(0, undefined, 10_000), false, 'idle: nothing stored since start');
  assert.equal(archiveBusy(1, undefined, 10_000), true);
  assert.equal(archiveBusy(0, 10_000 - storedRecentlyMs + 1, 10_000), true, 'a copy stored just now');
  assert.equal(archiveBusy(0, 10_000 - storedRecentlyMs, 10_000), false, 'stores stopped long enough ago');
});
