/**
 * Runs the deterministic mesh simulation over many seeds and checks its invariants (see src/sim/simulation.ts).
 * SIM_SEEDS=n changes how many seeds run (default 300), SIM_FIRST_SEED where they start,
 * SIM_SEED=s reruns exactly one seed and prints its trace (SIM_SITES=n with it: that many sites).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultFaultRates, runSimulation, type SimResult } from '../../src/sim/simulation.ts';

function describeFailure(r: SimResult, rerunEnv = ''): string {
  return [
    `simulation seed ${r.seed} failed:`,
    ...r.violations.map((v) => `  ${v}`),
    `rerun: ${rerunEnv}SIM_SEED=${r.seed} node --import tsx --test test/sim/simulation.test.ts`,
    'peers at the end:',
    ...r.finalPeers.map((l) => `  ${l}`),
    'trace before the failure:',
    ...r.traceTail.map((l) => `  ${l}`),
  ].join('\n');
}

const single = process.env.SIM_SEED;
const sites = process.env.SIM_SITES;

if (single !== undefined) {
  test(`simulation, seed ${single}`, () => {
    const r = runSimulation({ seed: Number(single), ...(sites !== undefined ? { siteCount: Number(sites) } : {}) });
    console.log(JSON.stringify(r.stats));
    console.log(r.finalPeers.join('\n'));
    assert.ok(r.ok, describeFailure(r, sites !== undefined ? `SIM_SITES=${sites} ` : ''));
  });
} else {
  test('one seed reproduces the whole run', () => {
    const a = runSimulation({ seed: 4242 });
    const b = runSimulation({ seed: 4242 });
    assert.deepEqual(a.stats, b.stats);
    assert.deepEqual(a.finalPeers, b.finalPeers);
    assert.deepEqual(a.traceTail, b.traceTail);
  });

  // Seeds that found a bug in a wider sweep (SIM_FIRST_SEED, SIM_SEEDS), kept since the default range missed it.
  // 2689: an operator's forgetting reached the heartbeats only with the next instance stored at that peer
  // (the simulation took custody's figures from the digest's changes, not after every step as the actor).
  // 6854 (fault rates three times the default): a peer resumed from a stall learnt a site from a heartbeat
  // read late and refused the older forgetting of it for good. 40251 (six sites): after a stall, custody's
  // first tick read its last view as if it were current, with the same result. 8391 (harsh): a site heard
  // for 2.1 s before a stall in which it died counted as alive for 2.1 s on resuming.
  test('seeds that once failed', () => {
    const harsh = Object.fromEntries(Object.entries(defaultFaultRates).map(([k, v]) => [k, k === 'storePerTick' ? v : Math.min(0.5, v * 3)]));
    for (const { seed, faults, siteCount } of [{ seed: 2689 }, { seed: 6854, faults: harsh }, { seed: 40251, siteCount: 6 }, { seed: 8391, faults: harsh }]) {
      const r = runSimulation({ seed, ...(faults !== undefined ? { faults } : {}), ...(siteCount !== undefined ? { siteCount } : {}) });
      assert.ok(r.ok, describeFailure(r));
    }
  });

  // Two hospitals is a real deployment, and the default draws 3-5 sites: with two, every quorum-2 store
  // needs both, and a single survivor leads no one (it is no majority of the roster).
  test('invariants hold with two sites', () => {
    const count = Number(process.env.SIM_SEEDS ?? 300) / 3;
    let acked = 0;
    for (let seed = 20_000; seed < 20_000 + count; seed += 1) {
      const r = runSimulation({ seed, siteCount: 2 });
      assert.ok(r.ok, describeFailure(r, 'SIM_SITES=2 '));
      acked += r.stats.storesAcked;
    }
    assert.ok(acked > 0);
  });

  test('invariants hold over many seeds (a: one leader per term per component, b: acked copies, f: owed copies, c-e and g after heal, h: no site name claimed at two places, i: each Success at once)', () => {
    const count = Number(process.env.SIM_SEEDS ?? 300);
    const first = Number(process.env.SIM_FIRST_SEED ?? 1);
    let acked = 0;
    let crashes = 0;
    let decommissions = 0;
    let partitions = 0;
    let electionDiskFaults = 0;
    let electionWritesRefused = 0;
    let crashesDuringWrites = 0;
    let stalls = 0;
    let localWritesFailed = 0;
    let lateRelays = 0;
    let transfersFailed = 0;
    for (let seed = first; seed < first + count; seed += 1) {
      const r = runSimulation({ seed });
      assert.ok(r.ok, describeFailure(r));
      acked += r.stats.storesAcked;
      crashes += r.stats.crashes;
      decommissions += r.stats.decommissions;
      partitions += r.stats.partitions;
      electionDiskFaults += r.stats.electionDiskFaults;
      electionWritesRefused += r.stats.electionWritesRefused;
      crashesDuringWrites += r.stats.crashesDuringWrites;
      stalls += r.stats.stalls;
      localWritesFailed += r.stats.localWritesFailed;
      lateRelays += r.stats.lateRelays;
      transfersFailed += r.stats.transfersFailed;
    }
    console.log(`${count} seeds from ${first}: ${acked} stores acknowledged, ${crashes} crashes, ${decommissions} sites decommissioned and forgotten, ${partitions} partitions, ${electionDiskFaults} disks refusing election writes (${electionWritesRefused} writes refused), ${crashesDuringWrites} crashes during durable writes, ${stalls} stalls, ${localWritesFailed} local writes refused, ${lateRelays} gossip messages relayed late, ${transfersFailed} transfer failures reported`);
    // The faults must really happen, or the invariants above prove little.
    assert.ok(crashes > 0 && decommissions > 0 && partitions > 0 && electionWritesRefused > 0 && acked > 0);
    assert.ok(crashesDuringWrites > 0 && stalls > 0 && localWritesFailed > 0 && lateRelays > 0 && transfersFailed > 0);
  });
}
