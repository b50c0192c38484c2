/**
 * What keeps a test file's process alive after its last test: a timer raced against an event and never
 * cleared held site-name.test.ts 20 s, client.test.ts 8 s, server.test.ts 2.7 s past their tests (hunt 150).
 * Load it before a file: `node --import tsx --import ./test/support/linger-report.ts --test FILE`; it prints
 * the timers of 300 ms or more still pending when the tests are done (where each was set), and how long the
 * process lived on. Not loaded by any suite: a tool to find such waits.
 */
import { after } from 'node:test';

interface PendingTimer {
  delayMs: number;
  setAtMs: number;
  where: string;
}

const lingerReportedMinMs = 300;
const pending = new Map<NodeJS.Timeout, PendingTimer>();
const originalSetTimeout = globalThis.setTimeout;
const originalClearTimeout = globalThis.clearTimeout;

globalThis.setTimeout = ((callback: (...args: unknown[]) => void, delayMs?: number, ...args: unknown[]) => {
  const timer: NodeJS.Timeout = originalSetTimeout((...callbackArgs: unknown[]) => {
    pending.delete(timer);
    callback(...callbackArgs);
  }, delayMs, ...args);
  if ((delayMs ?? 0) >= lingerReportedMinMs) {
    pending.set(timer, { delayMs: delayMs ?? 0, setAtMs: performance.now(), where: (new Error().stack ?? '').split('\n').slice(2, 5).join('\n') });
  }
  return timer;
}) as typeof globalThis.setTimeout;

globalThis.clearTimeout = ((timer?: NodeJS.Timeout | string | number) => {
  if (typeof timer === 'object') pending.delete(timer);
  originalClearTimeout(timer);
}) as typeof globalThis.clearTimeout;

after(() => {
  const doneAtMs = performance.now();
  for (const [timer, { delayMs, setAtMs, where }] of pending) {
    const leftMs = setAtMs + delayMs - doneAtMs;
    if (timer.hasRef() && leftMs > 0) process.stderr.write(`linger: a ${delayMs} ms timer has ${Math.round(leftMs)} ms left after the last test, set\n${where}\n`);
  }
  process.on('exit', () => process.stderr.write(`linger: the process exited ${Math.round(performance.now() - doneAtMs)} ms after the last test\n`));
});
