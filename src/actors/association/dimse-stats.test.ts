/** The classes the operators' DIMSE counts use (PS3.7 Annex C), and what is left out. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CommandField } from '../../codec/dimse.ts';
import { countDimseResponse, createDimseStats, dimseOutcome } from './dimse-stats.ts';

test('a final status falls in one class; a pending one in none', () => {
  assert.equal(dimseOutcome(0x0000), 'success');
  assert.equal(dimseOutcome(0xfe00), 'cancel');
  for (const warning of [0x0001, 0x0107, 0x0116, 0xb000, 0xb007]) assert.equal(dimseOutcome(warning), 'warning', warning.toString(16));
  for (const failure of [0xa700, 0xa801, 0xa900, 0xc000, 0x0122, 0x0211]) assert.equal(dimseOutcome(failure), 'failure', failure.toString(16));
  for (const pending of [0xff00, 0xff01]) assert.equal(dimseOutcome(pending), undefined);
});

test('responses of the six services are counted; requests, pending responses and other commands are not', () => {
  const stats = createDimseStats();
  countDimseResponse(stats, CommandField.CStoreRsp, 0xa700);
  countDimseResponse(stats, CommandField.CMoveRsp, 0xff00);
  countDimseResponse(stats, CommandField.CMoveRsp, 0xb000);
  countDimseResponse(stats, CommandField.CStoreRq, undefined);
  countDimseResponse(stats, CommandField.NEventReportRsp, 0x0000);
  assert.deepEqual(stats['C-STORE'], { success: 0, warning: 0, failure: 1, cancel: 0 });
  assert.deepEqual(stats['C-MOVE'], { success: 0, warning: 1, failure: 0, cancel: 0 });
  assert.equal(Object.values(stats).reduce((sum, outcomes) => sum + Object.values(outcomes).reduce((a, b) => a + b, 0), 0), 2);
});
