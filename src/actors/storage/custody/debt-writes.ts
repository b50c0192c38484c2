/**
 * Replication debt goes to the store in step order, and the steps that come while a write runs go out
 * together as one batch (BatchCombiner): during a mesh ingest every stored instance owes copies (one step)
 * and each copy's ack pays one (one step each), so one batch per step meant ~3 LevelDB calls per instance
 * at the entry site, and a catch-up one per pulled instance at its source.
 */
import { BatchCombiner } from '../batch-combiner.ts';
import type { DebtEntry } from './messages.ts';

export interface DebtStep {
  puts: readonly DebtEntry[];
  dels: ReadonlyArray<{ sopInstanceUid: string; siteName: string }>;
}

/** Steps combined into one batch at most. */
const stepsPerBatchMax = 256;

/**
 * The net effect of steps applied in order: the last op of each (instance, site) wins, so no key is both
 * put and deleted and the order inside the batch no longer matters. Pure.
 */
export function netDebtOps(steps: readonly DebtStep[]): DebtStep {
  const last = new Map<string, { put: DebtEntry } | { del: { sopInstanceUid: string; siteName: string } }>();
  for (const step of steps) {
    // Within a step, puts come before deletes (as ReplicaStore.updateDebt applies one step).
    for (const put of step.puts) last.set(`${put.sopInstanceUid}!${put.siteName}`, { put });
    for (const del of step.dels) last.set(`${del.sopInstanceUid}!${del.siteName}`, { del });
  }
  const puts: DebtEntry[] = [];
  const dels: Array<{ sopInstanceUid: string; siteName: string }> = [];
  for (const op of last.values()) {
    if ('put' in op) puts.push(op.put);
    else dels.push(op.del);
  }
  return { puts, dels };
}

/** Combines the debt steps submitted while a write runs into one `write` call of their net ops. */
export function createDebtWrites(write: (puts: readonly DebtEntry[], dels: DebtStep['dels']) => Promise<void>): BatchCombiner<DebtStep, void> {
  return new BatchCombiner<DebtStep, void>(async (steps) => {
    const { puts, dels } = netDebtOps(steps);
    await write(puts, dels);
    return steps.map(() => undefined);
  }, stepsPerBatchMax);
}
