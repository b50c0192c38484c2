/**
 * scripts/build-leveldb.js's patches on the path of a write (the patched addon is built as the other LevelDB
 * tests build it), two of them seen from outside through an LD_PRELOAD shim that records the calls the addon
 * makes: the log written back as it is written, from a thread of its own; obsolete files deleted with
 * LevelDB's lock released, so that writes go on while a flushed log is unlinked; and values copied once, at
 * the call, so that what a caller does with its bytes afterwards changes nothing stored.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { cannotBuildPatchedLevelDb as why, runPatchedLevelDb, withScratch } from '../support/patched-leveldb.ts';

/** C for the shims: `record(what, fd or -1, a, b, path)` appends a line to $SHIM_RECORD under a lock. */
const shimPrelude = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static pthread_mutex_t record_mu = PTHREAD_MUTEX_INITIALIZER;
static void record(const char* what, int fd, long long a, long long b, const char* known_path) {
  char link[64], path[4096];
  if (known_path == NULL) {
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n < 0 ? 0 : n] = 0;
    known_path = path;
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const char* record_path = getenv("SHIM_RECORD");
  if (record_path == NULL) return;
  pthread_mutex_lock(&record_mu);
  FILE* f = fopen(record_path, "a");
  if (f) { fprintf(f, "%s %ld %.3f %lld %lld %s\\n", what, (long)syscall(SYS_gettid), now.tv_sec * 1e3 + now.tv_nsec / 1e6, a, b, known_path); fclose(f); }
  pthread_mutex_unlock(&record_mu);
}
`;

interface Call {
  what: string;
  thread: number;
  atMs: number;
  a: number;
  b: number;
  path: string;
}

function calls(recordPath: string): Call[] {
  return readFileSync(recordPath, 'utf8').trim().split('\n').map((line) => {
    const [what, thread, atMs, a, b, ...path] = line.split(' ');
    return { what: what!, thread: Number(thread), atMs: Number(atMs), a: Number(a), b: Number(b), path: path.join(' ') };
  });
}

test('the log is written back in whole pages as it is written, by a thread that never syncs, so a synced write finds little left', { skip: why ?? false, timeout: 600_000 }, () => {
  withScratch('log-write-back', (scratch) => {
    const recordPath = join(scratch, 'calls');
    const shim = `${shimPrelude}
int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
  static int (*real)(int, off64_t, off64_t, unsigned int);
  if (!real) real = dlsym(RTLD_NEXT, "sync_file_range");
  record(flags == SYNC_FILE_RANGE_WRITE ? "write-back" : "write-back-waiting", fd, offset, nbytes, NULL);
  return real(fd, offset, nbytes, flags);
}
int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
  record("fdatasync", fd, 0, 0, NULL);
  return real(fd);
}`;
    const { logBytes } = runPatchedLevelDb<{ logBytes: number }>(scratch, `
      const dir = ${JSON.stringify(join(scratch, 'db'))};
      // A memtable larger than what is written: one log, no table.
      const db = new ClassicLevel(dir, { valueEncoding: 'view', writeBufferSize: 64 << 20 });
      const value = require('node:crypto').randomBytes(100000);
      for (let i = 0; i < 40; i++) await db.put('k' + String(i).padStart(3, '0'), value, { sync: i % 10 === 9 });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const fs = require('node:fs');
      const log = fs.readdirSync(dir).filter((name) => name.endsWith('.log')).sort().at(-1);
      console.log(JSON.stringify({ logBytes: fs.statSync(dir + '/' + log).size }));
      await db.close();`, { shim, env: { SHIM_RECORD: recordPath } });
    const all = calls(recordPath).filter((call) => call.path.endsWith('.log'));
    const writeBacks = all.filter((call) => call.what === 'write-back');
    assert.equal(all.filter((call) => call.what === 'write-back-waiting').length, 0, 'a log write-back waited');
    assert.ok(writeBacks.length >= 8, `${writeBacks.length} write-backs of a ${logBytes}-byte log`);
    let end = 0;
    for (const call of writeBacks) {
      assert.equal(call.a % 4096, 0, `a write-back from byte ${call.a}: not a page boundary`);
      assert.equal((call.a + call.b) % 4096, 0, `a write-back to byte ${call.a + call.b}: not a page boundary`);
      assert.ok(call.a >= end, `write-backs overlap or go back: ${call.a} after ${end}`);
      end = call.a + call.b;
    }
    const covered = writeBacks.reduce((sum, call) => sum + call.b, 0);
    assert.ok(covered >= logBytes * 0.75, `${covered} of the log's ${logBytes} bytes written back ahead of its syncs`);
    const writeBackThreads = new Set(writeBacks.map((call) => call.thread));
    assert.equal(writeBackThreads.size, 1, 'one thread writes the log back');
    const syncThreads = new Set(all.filter((call) => call.what === 'fdatasync').map((call) => call.thread));
    assert.ok(syncThreads.size > 0, 'the synced writes synced the log');
    assert.ok(![...writeBackThreads].some((thread) => syncThreads.has(thread)), 'a thread that writes to the log also started its write-back');
  });
});

test('a flushed log is deleted with the lock released: writes complete while its unlink is still running', { skip: why ?? false, timeout: 600_000 }, () => {
  withScratch('unlocked-delete', (scratch) => {
    const recordPath = join(scratch, 'calls');
    // Each log's unlink takes 1.5 s: with the lock held through it, no write could complete meanwhile.
    const shim = `${shimPrelude}
int unlink(const char* path) {
  static int (*real)(const char*);
  if (!real) real = dlsym(RTLD_NEXT, "unlink");
  size_t n = strlen(path);
  if (n > 4 && strcmp(path + n - 4, ".log") == 0) {
    record("unlink-start", -1, 0, 0, path);
    usleep(1500000);
    record("unlink-end", -1, 0, 0, path);
  }
  return real(path);
}`;
    const { puts } = runPatchedLevelDb<{ puts: Array<[number, number]> }>(scratch, `
      const db = new ClassicLevel(${JSON.stringify(join(scratch, 'db'))}, { valueEncoding: 'view', writeBufferSize: 1 << 20 });
      const value = require('node:crypto').randomBytes(64 * 1024);
      // 1.25 MiB: the first memtable is flushed and its log deleted.
      for (let i = 0; i < 20; i++) await db.put('big' + String(i).padStart(3, '0'), value);
      const puts = [];
      const now = () => performance.timeOrigin + performance.now();
      for (let i = 0; i < 100; i++) {
        const startedAtMs = now();
        await db.put('small' + String(i).padStart(3, '0'), Buffer.from('x'));
        puts.push([startedAtMs, now()]);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      console.log(JSON.stringify({ puts }));
      await db.close();`, { shim, env: { SHIM_RECORD: recordPath } });
    const recorded = calls(recordPath);
    const start = recorded.find((call) => call.what === 'unlink-start');
    const end = recorded.find((call) => call.what === 'unlink-end' && call.path === start?.path);
    assert.ok(start !== undefined && end !== undefined, 'no log was deleted');
    const during = puts.filter(([startedAtMs, doneAtMs]) => startedAtMs > start.atMs && doneAtMs < end.atMs);
    assert.ok(during.length > 0, `no write began and completed during the log's unlink (${puts.length} writes, unlink ${start.atMs}-${end.atMs})`);
  });
});

test('a put or a batch stores its values as they were at the call, whatever the caller does with its bytes afterwards', { skip: why ?? false, timeout: 600_000 }, () => {
  withScratch('values-copied', (scratch) => {
    const { stored } = runPatchedLevelDb<{ stored: Record<string, number[]> }>(scratch, `
      const db = new ClassicLevel(${JSON.stringify(join(scratch, 'db'))}, { valueEncoding: 'view' });
      // Open first: writes to a database still opening wait in JavaScript (abstract-level), bytes and all.
      await db.open();
      const bytes = Buffer.alloc(200000, 7);
      const view = new Uint8Array(bytes.buffer, bytes.byteOffset + 1000, 100000);
      // Each write's bytes overwritten before it completes (the writes run on another thread).
      const writes = [
        db.put('put-buffer', bytes, { sync: true }),
        db.put('put-view', view),
        db.batch([{ type: 'put', key: 'batch-buffer', value: bytes }, { type: 'put', key: 'batch-view', value: view }, { type: 'put', key: 'batch-string', value: 'text' }]),
      ];
      bytes.fill(9);
      await Promise.all(writes);
      const stored = {};
      for (const key of ['put-buffer', 'put-view', 'batch-buffer', 'batch-view']) {
        const value = await db.get(key);
        stored[key] = [value.length, ...new Set(value)];
      }
      const text = await db.get('batch-string', { valueEncoding: 'utf8' });
      stored['batch-string'] = [text.length, text === 'text' ? 1 : 0];
      console.log(JSON.stringify({ stored }));
      await db.close();`);
    assert.deepEqual(stored, {
      'put-buffer': [200000, 7],
      'put-view': [100000, 7],
      'batch-buffer': [200000, 7],
      'batch-view': [100000, 7],
      'batch-string': [4, 1],
    });
  });
});
