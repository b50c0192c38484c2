import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDebtWrites, netDebtOps } from './debt-writes.ts';
import type { DebtEntry } from './messages.ts';

const owed = (sopInstanceUid: string, siteName: string): DebtEntry => ({ sopInstanceUid, siteName, sinceMs: 1 });
const paid = (sopInstanceUid: string, siteName: string) => ({ sopInstanceUid, siteName });

test('the net ops of several steps: the last op of each (instance, site) wins', () => {
  const net = netDebtOps([
    { puts: [owed('1.1', 'b'), owed('1.1', 'c')], dels: [] },
    { puts: [], dels: [paid('1.1', 'b')] },
    { puts: [owed('1.2', 'b')], dels: [paid('1.2', 'b')] },
    { puts: [owed('1.1', 'b')], dels: [paid('0.9', 'c')] },
  ]);
  assert.deepEqual(net.puts.map((p) => `${p.sopInstanceUid}/${p.siteName}`).sort(), ['1.1/b', '1.1/c']);
  assert.deepEqual(net.dels.map((d) => `${d.sopInstanceUid}/${d.siteName}`).sort(), ['0.9/c', '1.2/b']);
});

test('steps that come while a write runs share the next write, in order', async () => {
  const writes: string[][] = [];
  let release: (() => void) | undefined;
  const debtWrites = createDebtWrites(async (puts, dels) => {
    writes.push([...puts.map((p) => `+${p.sopInstanceUid}`), ...dels.map((d) => `-${d.sopInstanceUid}`)]);
    if (writes.length === 1) await new Promise<void>((resolve) => (release = resolve));
  });
  const first = debtWrites.submit({ puts: [owed('1.1', 'b')], dels: [] });
  const second = debtWrites.submit({ puts: [owed('1.2', 'b')], dels: [] });
  const third = debtWrites.submit({ puts: [], dels: [paid('1.1', 'b')] });
  const order: string[] = [];
  void first.then(() => order.push('first'));
  void third.then(() => order.push('third'));
  release!();
  await Promise.all([first, second, third]);
  assert.deepEqual(writes, [['+1.1'], ['+1.2', '-1.1']]);
  assert.deepEqual(order, ['first', 'third']);
});
