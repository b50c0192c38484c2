import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DimseAssembler } from './dimse-assembler.ts';

test('empty command fragments are not kept: a command of endless empty PDVs holds no memory (hunt 79)', () => {
  const assembler = new DimseAssembler(() => true);
  const empty = new Uint8Array(0);
  const before = process.memoryUsage().heapUsed;
  // Kept, each was a new empty array in a list that the 64 KiB command bound never cut: ~100 bytes each.
  for (let i = 0; i < 3_000_000; i++) assembler.push({ presentationContextId: 1, isCommand: true, isLast: false, data: empty });
  const grownBytes = process.memoryUsage().heapUsed - before;
  assert.ok(grownBytes < 100 * 1024 * 1024, `the heap grew by ${grownBytes} bytes for 3,000,000 empty fragments`);
});
