#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864:glibc.malloc.top_pad=16777216:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1 node --initial-old-space-size=128
// Runs the bundle in dist/ when it is newer than every source file (`npm install` builds it), otherwise the
// TypeScript sources through tsx: the command always runs the current code, and needs no build step.
import { fileURLToPath } from 'node:url';
import { buildIsCurrent } from './build-current.js';

const root = fileURLToPath(new URL('..', import.meta.url));

// Loading the command takes a moment (~0.4 s from the bundle); a stop signal meanwhile must still end in
// a clean stop, not the default kill: it is kept here for the command, which stops the peer once started.
const earlySignals = [];
const keepSignal = (signal) => earlySignals.push(signal);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, keepSignal);
globalThis[Symbol.for('pacs-mesh.early-signals')] = {
  signals: earlySignals,
  release: () => {
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.off(signal, keepSignal);
  },
};

if (buildIsCurrent(root)) {
  await import('../dist/pacs-mesh.js');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli.ts');
}
