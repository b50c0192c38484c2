/**
 * The election with learnt rosters (src/sim/election-simulation.ts) over many seeds: at most one leader per term.
 * ELECTION_SIM_SEEDS=n changes how many seeds run (default 300), ELECTION_SIM_FIRST_SEED where they start,
 * ELECTION_SIM_SEED=s reruns exactly one and prints its trace; ELECTION_SIM_LEARNT=1 runs either with the learnt roster
 * counting, as the actor still wires it (the sweep's one-leader-per-term check is then a todo); ELECTION_SIM_FORGET_MS
 * sets the roster's rosterForgetAfterMs for a single seed; ELECTION_SIM_FOUNDING=operator|upgrade|autoUpgrade founds a single seed's
 * voters as the operator does (ElectionSimFounding).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runElectionSimulation, type ElectionSimFounding, type ElectionSimResult } from '../../src/sim/election-simulation.ts';

function describeFailure(r: ElectionSimResult): string {
  return [
    `election simulation seed ${r.seed} failed:`,
    ...r.violations.map((v) => `  ${v}`),
    `rerun: ELECTION_SIM_SEED=${r.seed} node --import tsx --test test/sim/election-simulation.test.ts`,
    'peers at the end:',
    ...r.finalPeers.map((l) => `  ${l}`),
    'trace before the failure:',
    ...r.traceTail.map((l) => `  ${l}`),
  ].join('\n');
}

const single = process.env.ELECTION_SIM_SEED;
const votersThroughLeader = process.env.ELECTION_SIM_LEARNT !== '1';

if (single !== undefined) {
  test(`election simulation, seed ${single}`, () => {
    const forgetMs = process.env.ELECTION_SIM_FORGET_MS;
    const founding = process.env.ELECTION_SIM_FOUNDING as ElectionSimFounding | undefined;
    const r = runElectionSimulation({ seed: Number(single), votersThroughLeader, ...(founding === undefined ? {} : { founding }), ...(forgetMs === undefined ? {} : { rosterForgetAfterMs: Number(forgetMs) }) });
    if (r.learntModeBreaks.length > 0) console.log(r.learntModeBreaks.join('\n'));
    console.log(JSON.stringify(r.stats));
    console.log(r.finalPeers.join('\n'));
    assert.ok(r.ok, describeFailure(r));
  });
} else {
  test('one seed reproduces the whole run', () => {
    const a = runElectionSimulation({ seed: 4242 });
    const b = runElectionSimulation({ seed: 4242 });
    assert.deepEqual(a, b);
  });

  const count = Number(process.env.ELECTION_SIM_SEEDS ?? 300);
  const first = Number(process.env.ELECTION_SIM_FIRST_SEED ?? 1);
  // The checks of one mode read the same runs.
  let runs: ElectionSimResult[] | undefined;
  const sweep = (): ElectionSimResult[] => (runs ??= Array.from({ length: count }, (_, i) => runElectionSimulation({ seed: first + i, votersThroughLeader })));
  const mode = votersThroughLeader ? 'with voters admitted through the leader' : 'with the learnt roster counting';
  test(`at most one leader per term ${mode} (${count} seeds from ${first})`, votersThroughLeader ? {} : { todo: 'the learnt roster counting breaks it (58 of seeds 1-5000)' }, () => {
    const failures = sweep().filter((r) => !r.ok);
    assert.equal(failures.length, 0, `${failures.length} of ${count} seeds failed (${failures.map((r) => r.seed).join(', ')}); the first:\n${failures[0] === undefined ? '' : describeFailure(failures[0])}`);
  });

  test('seeds that once failed', () => {
    // 204: two joiners that learnt one old voter elected in its term (hunt 168's first target); 3410: a candidate
    // that adopted a newer list mid-candidacy counted its votes in it; 1328: a forgetting that reached one voter only
    // (leaderless); 4803: a joiner admitted by a leader it never heard (leaderless, it withheld its votes); 5241: a
    // candidate whose voters shrank to itself (forgotten) asked nobody again, for good. Since hunt 186 a leader admits
    // only peers that said they hold its list: in 4803 it admits peer-d, killed later, and {a, d} has no majority left.
    for (const seed of [204, 3410, 1328, 4803, 5241]) {
      const r = runElectionSimulation({ seed });
      assert.ok(r.ok, describeFailure(r));
      if (seed !== 4803 || r.stats.leaderExpected) assert.notEqual(r.stats.settledAfterHealMs, null, `seed ${seed}: no leader after the heal`);
    }
  });

  // As the operator founds (hunt 186): --found-mesh yes on the first site, --bootstrap everywhere; the upgrade of a
  // mesh on learnt rosters; and that upgrade on the command's defaults, nobody founding (autoUpgrade: a leader is
  // expected there only once some live peer holds a list naming a voter). The learnt rosters' own breaks before the
  // upgrade are counted apart (learntModeBreaks).
  for (const founding of ['operator', 'upgrade', 'autoUpgrade'] as const) {
    let foundingRuns: ElectionSimResult[] | undefined;
    const foundingSweep = (): ElectionSimResult[] => (foundingRuns ??= Array.from({ length: count }, (_, i) => runElectionSimulation({ seed: first + i, founding })));
    test(`founding '${founding}': at most one leader per term, and one after the final heal whenever one can be elected (${count} seeds from ${first})`, () => {
      const failures = foundingSweep().filter((r) => !r.ok);
      assert.equal(failures.length, 0, `${failures.length} of ${count} seeds failed (${failures.map((r) => r.seed).join(', ')}); rerun with ELECTION_SIM_FOUNDING=${founding}; the first:\n${failures[0] === undefined ? '' : describeFailure(failures[0])}`);
      const unsettled = foundingSweep().filter((r) => r.stats.leaderExpected && r.stats.settledAfterHealMs === null).map((r) => r.seed);
      assert.deepEqual(unsettled, [], `rerun one with ELECTION_SIM_FOUNDING=${founding} ELECTION_SIM_SEED`);
    });
  }

  test('founding \'upgrade\': seeds that once failed', () => {
    // 5 (and 21 of seeds 201-1000): the founder, cut off while a leader elected by learnt rosters took term 2, founded
    // and led term 2 alone as soon as it started (hunt 186). The joiners now say their terms to every peer they see,
    // and the founder leads once it has heard those of a majority of its roster: with the first alone, 517, 1110, 1231
    // and 1384 still broke (the founder ran before a joiner's term reached it).
    // 21245 and 100685: the founder's roster grew after it founded by a new site (on its first start, so it never
    // voted while the rosters were learnt), whose term made up its majority; a learnt-era leader had used the term. It
    // now needs a majority of its roster as it was when it founded too.
    for (const seed of [5, 234, 517, 1110, 1231, 1384, 21245, 100685]) {
      const r = runElectionSimulation({ seed, founding: 'upgrade' });
      assert.ok(r.ok, `rerun with ELECTION_SIM_FOUNDING=upgrade: ${describeFailure(r)}`);
      if (r.stats.leaderExpected) assert.notEqual(r.stats.settledAfterHealMs, null, `seed ${seed}: no leader after the heal`);
    }
  });

  test("founding 'autoUpgrade': a first site founding on the defaults hears the terms of the peers still on learnt rosters, and leads (seeds 11128, 20900, 21150)", () => {
    // Its record held no term or vote, so it founded as a first start does; the peers on learnt rosters had no list to
    // push and waited for it, their rule's winner, while it waited for their terms: no leader after the heal.
    for (const seed of [11128, 20900, 21150]) {
      const r = runElectionSimulation({ seed, founding: 'autoUpgrade' });
      assert.ok(r.ok, `rerun with ELECTION_SIM_FOUNDING=autoUpgrade: ${describeFailure(r)}`);
      assert.ok(r.stats.leaderExpected);
      assert.notEqual(r.stats.settledAfterHealMs, null, `seed ${seed}: no leader after the heal (rerun with ELECTION_SIM_FOUNDING=autoUpgrade ELECTION_SIM_SEED=${seed})`);
    }
  });

  test("founding 'autoUpgrade': a site joined on the defaults and best-ranked is passed over by the learnt peers, which elect and stamp a list (seed 17); no leader is voted in by a joiner's empty list (seed 172)", () => {
    const passedOver = runElectionSimulation({ seed: 17, founding: 'autoUpgrade' });
    assert.ok(passedOver.ok, describeFailure(passedOver));
    assert.notEqual(passedOver.stats.settledAfterHealMs, null, 'nobody ran before: the joiner was the rule\'s winner');
    assert.equal(passedOver.stats.peersHoldingVoters, passedOver.stats.livePeers);
    const r = runElectionSimulation({ seed: 172, founding: 'autoUpgrade' });
    assert.ok(r.ok, describeFailure(r));
  });

  test('the live peers elect one leader after the final heal whenever they can (connected, a majority of the voters alive)', () => {
    const unsettled = sweep().filter((r) => r.ok && r.stats.leaderExpected && r.stats.settledAfterHealMs === null).map((r) => r.seed);
    assert.deepEqual(unsettled, [], 'rerun one with ELECTION_SIM_SEED');
  });

  // The seeds of 1-5000 that elect two leaders in one term with the learnt roster counting (hunt 164's build).
  const learntSeeds = [
    204, 310, 389, 453, 490, 519, 535, 927, 934, 988, 1109, 1201, 1233, 1272, 1333, 1503, 1510, 1557, 1601, 1630, 1850, 1904, 1922, 2185, 2237, 2260, 2293, 2320, 2342,
    2454, 2535, 2591, 2700, 3004, 3038, 3214, 3434, 3514, 3601, 3615, 3690, 3814, 3951, 4073, 4109, 4112, 4449, 4451, 4519, 4648, 4653, 4710, 4712, 4749, 4809, 4863,
    4895, 4967,
  ];
  let learntRuns: ElectionSimResult[] | undefined;
  const learntSweep = (): ElectionSimResult[] => (learntRuns ??= learntSeeds.map((seed) => runElectionSimulation({ seed, votersThroughLeader: false })));
  test(`with the learnt roster counting (--election-voters learnt), at most one leader per term (the ${learntSeeds.length} seeds of 1-5000 that broke)`, { todo: 'learnt rosters can still elect two leaders in one term (--election-voters learnt, and a data directory of learnt rosters until a leader stamps a list); admitted voters, the command\'s default since 2026-12-04, close it: see docs/mesh-algorithms.md' }, () => {
    const failures = learntSweep().filter((r) => !r.ok);
    assert.equal(failures.length, 0, `${failures.length} of ${learntSeeds.length} seeds failed (${failures.map((r) => r.seed).join(', ')}); the first:\n${failures[0] === undefined ? '' : describeFailure(failures[0])}`);
  });

  test(`with the learnt roster counting, at most one leader per term among claims made with the same roster (the ${learntSeeds.length} seeds of 1-5000 that broke)`, () => {
    // Majorities of one list share a voter: what the todo sweep's breaks lack (rosters that grew apart, hunt 164).
    const failures = learntSweep().filter((r) => r.sameRosterViolations.length > 0);
    assert.equal(failures.length, 0, `${failures.map((r) => r.seed).join(', ')}; the first:\n${failures[0] === undefined ? '' : describeFailure(failures[0])}`);
  });

  // The seeds of 1-500 that hold with the roster forgetting after 24 h and broke with it after 2.5 s, absence counted
  // by the clock (hunt 175): partitions of 1-8 s outlasted it, each side forgot the other and elected alone (seed 30:
  // {a, e} and {c, d} led term 5). Absence now counts only while a peer sees a majority of its roster alive.
  const partitionSeeds = [
    10, 15, 30, 37, 43, 63, 67, 68, 87, 103, 124, 126, 133, 160, 174, 189, 210, 229, 230, 234, 235, 239, 266, 288, 292, 301, 324, 330, 339, 343, 357, 360, 365,
    372, 394, 405, 406, 407, 409, 413, 427, 428, 435, 436, 446, 469, 473, 479,
  ];
  test(`with the learnt roster counting and forgetting after 2.5 s, partitions forget nobody on a minority side (the ${partitionSeeds.length} seeds of 1-500 that broke)`, () => {
    const failures = partitionSeeds.map((seed) => runElectionSimulation({ seed, votersThroughLeader: false, rosterForgetAfterMs: 2500 })).filter((r) => !r.ok);
    assert.equal(failures.length, 0, `${failures.map((r) => r.seed).join(', ')}; the first:\n${failures[0] === undefined ? '' : describeFailure(failures[0])}`);
  });

  test(`with the learnt roster counting, each of the ${learntSeeds.length} seeds still breaks (the mode measures the actor's rule)`, () => {
    // One that holds means the simulation left the actor's wiring (hunt 176: a forget stepped as peersForgotten hid
    // four) or the rule changed: then measure seeds 1-5000 again and update this list and docs/mesh-algorithms.md.
    const held = learntSweep().filter((r) => r.ok).map((r) => r.seed);
    assert.deepEqual(held, []);
  });
}
