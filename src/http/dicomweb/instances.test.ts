import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DicomWebContext } from './context.ts';
import { preparedAhead, responseInstances } from './instances.ts';

describe('preparedAhead', () => {
  it('gives each item prepared, in order, with the next one started while the current one is used', async () => {
    const started: number[] = [];
    const taken: Array<[number, number[]]> = [];
    for await (const value of preparedAhead([1, 2, 3], async (item) => {
      started.push(item);
      return item * 10;
    })) {
      taken.push([value, [...started]]);
    }
    assert.deepEqual(taken, [[10, [1, 2]], [20, [1, 2, 3]], [30, [1, 2, 3]]]);
  });

  it('drops the item prepared ahead when the caller stops, its failure unhandled by nobody', async () => {
    let unhandled = 0;
    const onUnhandled = () => unhandled++;
    process.on('unhandledRejection', onUnhandled);
    try {
      for await (const value of preparedAhead([1, 2], async (item) => {
        if (item === 2) throw new Error('the second cannot be read');
        return item;
      })) {
        assert.equal(value, 1);
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(unhandled, 0);
      await assert.rejects(async () => {
        for await (const _ of preparedAhead([1, 2], async (item) => (item === 2 ? Promise.reject(new Error('no')) : item))) void _;
      }, /no/);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('responseInstances', () => {
  it('discards the item prepared ahead when the caller stops at the first item (helper 94)', async () => {
    const discarded: number[] = [];
    const entries = [{ n: 1 }, { n: 2 }] as never;
    const parts = await responseInstances({} as DicomWebContext, entries, async (entry) => (entry as unknown as { n: number }).n, (n) => discarded.push(n));
    for await (const part of parts) {
      assert.equal(part, 1);
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(discarded, [2]);
  });
});
