#!/usr/bin/env node
/**
 * Rebuilds classic-level's native addon from the LevelDB sources it ships, with LevelDB's SSE4.2 CRC32C
 * path switched on. The prebuilt addon computes CRC32C in software: LevelDB checksums every byte twice
 * (log record, then table block), and for 0.5 MB instances that was the largest single item of the
 * peer's CPU profile during an ingest (6 % of all samples, half of it on the C-STORE's critical path).
 * With the instruction, interleaved runs: the ingest benchmark's store path 194-208 images/s against
 * 166-189 without; the whole ingest +4 % and the mesh ingest +6 %, both within this machine's noise.
 *
 * Runs from npm's `prepare` (after `npm install`). Only where it can help and build: Linux x64 with
 * sse4_2 in /proc/cpuinfo, a C++ compiler, make, python3, Node's headers next to the node binary and
 * npm's node-gyp. Otherwise, or when the build or its check fails, the prebuilt addon stays in use and
 * this says why in one line; npm install never fails because of it. The build is kept across installs
 * while classic-level's version and the patches and flags below are unchanged. PACS_MESH_LEVELDB=prebuilt skips it.
 *
 * The build also syncs a full log file before LevelDB starts the next one (SOURCE_PATCHES below): LevelDB 1.20
 * closes it unsynced (google/leveldb#193), so a synced write after a switch left the records at the end of
 * the old log, the chunks of an instance acknowledged since, to a power cut (hunt 95). And it writes table
 * files back a MiB at a time as they are written (sync_file_range, as RocksDB's bytes_per_sync): a 32 MiB
 * memtable flush left to its closing fdatasync went to the disk at once, and the log syncs that acknowledge
 * stores waited behind it (hunt 135, store path of 600 instances under strace: log fdatasync p99 31 -> 16 ms,
 * over 10 ms 61 -> 29 times). And a compaction of the catalog database checks its input blocks' checksums:
 * unchecked, a damaged block was rewritten under fresh checksums, or aborted the process on keys that decoded
 * out of order (hunt 172); the catalog is rebuilt from the commit records, the blobs are checked by SHA-256.
 * Two more for the synced write that acknowledges a C-STORE (2026-12-04, per-instance times from packet
 * captures): the log is written back as it is written (its pages handed to the disk 256 KiB at a time from
 * a thread of their own), so the commit's fdatasync finds less left to write (the synced batch 0.78-0.88 against
 * 1.03-1.17 ms, medians of interleaved runs);
 * and obsolete files are deleted outside LevelDB's lock, as upstream LevelDB does since 1.22: the unlink of
 * a flushed 32 MiB log took ~10 ms here, and every write waited for it. A manual flush (CompactRange: the
 * store's flush once an ingest pauses) gives the freed memtable back to the system (malloc_trim): a peer
 * with a 256 MiB ingest buffer kept 271 MiB of RSS after a 157 MB burst, and 100-130 MiB with it.
 *
 * The whole addon is compiled with -msse4.2, so the result only runs on CPUs with SSE4.2: it is built on
 * the machine that runs it (node_modules is not copied between machines; the check above is on this CPU).
 *
 *   node scripts/build-leveldb.js          build (or keep) the accelerated addon
 *   node scripts/build-leveldb.js --status print which addon is in use
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const packageDir = join(root, 'node_modules', 'classic-level');
const releaseDir = join(packageDir, 'build', 'Release');
const markerPath = join(packageDir, 'build', 'pacs-mesh-leveldb.json');
const say = (line) => process.stderr.write(`pacs-mesh: ${line}\n`);

/** classic-level's db_put as it ships: the patch below puts a path for Buffer and Uint8Array values before it. */
const putCall =
  '  leveldb::Slice key = ToSlice(env, argv[1]);\n' +
  '  leveldb::Slice value = ToSlice(env, argv[2]);\n' +
  '  bool sync = BooleanProperty(env, argv[3], "sync", false);\n' +
  '\n' +
  '  PutWorker* worker = new PutWorker(env, database, deferred, key, value, sync);\n' +
  '  worker->Queue(env);\n';

/**
 * Changes to LevelDB's sources, each a unique anchor and what it becomes. A build without every one of them
 * (an earlier pacs-mesh's) is rebuilt.
 */
const SOURCE_PATCHES = [
  {
    name: 'sync-log-at-switch',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'db_impl.cc'),
    anchor: '      uint64_t new_log_number = versions_->NewFileNumber();\n',
    replacement:
      '      // pacs-mesh: the full log synced before the next one takes the writes: closed unsynced, its last\n' +
      '      // records were lost in a power cut after a later synced write had been acknowledged (leveldb#193).\n' +
      '      s = logfile_->Sync();\n' +
      '      if (!s.ok()) break;\n' +
      '      uint64_t new_log_number = versions_->NewFileNumber();\n',
  },
  {
    name: 'table-writeback-per-mib-errors-kept',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'util', 'env_posix.cc'),
    anchor:
      ' public:\n' +
      '  PosixWritableFile(const std::string& fname, FILE* f)\n' +
      '      : filename_(fname), file_(f) { }\n',
    replacement:
      '  // pacs-mesh: a table file (a memtable flush, 32 MiB) is written back a MiB at a time as it is written:\n' +
      '  // left to its closing fdatasync, the whole file went to the disk at once and the log syncs that\n' +
      '  // acknowledge stores waited behind it (p99 34 ms against a 1.3 ms median, hunt 135).\n' +
      '  bool write_back_early_;\n' +
      '  uint64_t appended_ = 0;\n' +
      '  uint64_t written_back_ = 0;\n' +
      '\n' +
      ' public:\n' +
      '  PosixWritableFile(const std::string& fname, FILE* f)\n' +
      '      : filename_(fname), file_(f),\n' +
      '        write_back_early_(fname.size() > 4 && fname.compare(fname.size() - 4, 4, ".ldb") == 0) { }\n' +
      '\n' +
      ' private:\n' +
      '  // Fails as the write-back failed: waiting on the range takes its error from the file (errseq), so the\n' +
      '  // closing fdatasync would answer OK for a table the disk did not take.\n' +
      '  Status WriteBackIfDue() {\n' +
      '#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)\n' +
      '    static const uint64_t kWriteBackBytes = 1 << 20;\n' +
      '    if (!write_back_early_ || appended_ - written_back_ < kWriteBackBytes) return Status::OK();\n' +
      '    if (fflush_unlocked(file_) != 0) return IOError(filename_, errno);\n' +
      '    // Waits for this MiB to be on the disk, so that at most one MiB of the table is queued ahead of a log sync.\n' +
      '    if (sync_file_range(fileno(file_), written_back_, appended_ - written_back_,\n' +
      '                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0) {\n' +
      '      // Not supported by this file system or kernel: the closing fdatasync writes it all, as without the patch.\n' +
      '      if (errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP && errno != ESPIPE) return IOError(filename_, errno);\n' +
      '      write_back_early_ = false;\n' +
      '    }\n' +
      '    written_back_ = appended_;\n' +
      '#endif\n' +
      '    return Status::OK();\n' +
      '  }\n' +
      '\n' +
      ' public:\n',
  },
  {
    name: 'table-writeback-per-mib-append',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'util', 'env_posix.cc'),
    anchor:
      '    size_t r = fwrite_unlocked(data.data(), 1, data.size(), file_);\n' +
      '    if (r != data.size()) {\n' +
      '      return IOError(filename_, errno);\n' +
      '    }\n' +
      '    return Status::OK();\n',
    replacement:
      '    size_t r = fwrite_unlocked(data.data(), 1, data.size(), file_);\n' +
      '    if (r != data.size()) {\n' +
      '      return IOError(filename_, errno);\n' +
      '    }\n' +
      '    appended_ += r;\n' +
      '    return WriteBackIfDue();\n',
  },
  {
    name: 'log-write-back-thread',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'util', 'env_posix.cc'),
    anchor: 'class PosixWritableFile : public WritableFile {\n',
    replacement:
      '// pacs-mesh: write-back of log pages started on a thread of its own. sync_file_range blocks its caller while\n' +
      '// it hands the pages to the disk (~0.1-0.2 ms here): on LevelDB\'s writer thread that delayed every write\n' +
      '// queued behind it. Each request holds a duplicate of the log\'s descriptor (close-on-exec), so a log closed meanwhile is\n' +
      '// still the file written back. At most 8 wait: past that a request is dropped (the next sync writes it).\n' +
      'struct LogWriteBackRequest { int fd; uint64_t offset; uint64_t length; };\n' +
      'static port::Mutex* log_write_back_mu = new port::Mutex;\n' +
      'static port::CondVar* log_write_back_cv = new port::CondVar(log_write_back_mu);\n' +
      'static std::deque<LogWriteBackRequest>* log_write_back_queue = new std::deque<LogWriteBackRequest>;\n' +
      'static bool log_write_back_started = false;\n' +
      '\n' +
      'static void* LogWriteBackRun(void*) {\n' +
      '  for (;;) {\n' +
      '    log_write_back_mu->Lock();\n' +
      '    while (log_write_back_queue->empty()) log_write_back_cv->Wait();\n' +
      '    LogWriteBackRequest request = log_write_back_queue->front();\n' +
      '    log_write_back_queue->pop_front();\n' +
      '    log_write_back_mu->Unlock();\n' +
      '#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)\n' +
      '    // Starts the write-back only: errors stay on the file for the fdatasync that makes the records durable.\n' +
      '    sync_file_range(request.fd, request.offset, request.length, SYNC_FILE_RANGE_WRITE);\n' +
      '#endif\n' +
      '    close(request.fd);\n' +
      '  }\n' +
      '  return NULL;\n' +
      '}\n' +
      '\n' +
      'static void LogWriteBackSubmit(int fd, uint64_t offset, uint64_t length) {\n' +
      '  static const size_t kRequestsMax = 8;\n' +
      '  MutexLock l(log_write_back_mu);\n' +
      '  if (log_write_back_queue->size() >= kRequestsMax) return;\n' +
      '  if (!log_write_back_started) {\n' +
      '    pthread_t thread;\n' +
      '    if (pthread_create(&thread, NULL, LogWriteBackRun, NULL) != 0) return;\n' +
      '    pthread_detach(thread);\n' +
      '    log_write_back_started = true;\n' +
      '  }\n' +
      '  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);\n' +
      '  if (copy < 0) return;\n' +
      '  LogWriteBackRequest request = { copy, offset, length };\n' +
      '  log_write_back_queue->push_back(request);\n' +
      '  log_write_back_cv->Signal();\n' +
      '}\n' +
      '\n' +
      'class PosixWritableFile : public WritableFile {\n',
  },
  {
    name: 'log-write-back-as-written',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'util', 'env_posix.cc'),
    anchor:
      '  virtual Status Flush() {\n' +
      '    if (fflush_unlocked(file_) != 0) {\n' +
      '      return IOError(filename_, errno);\n' +
      '    }\n' +
      '    return Status::OK();\n' +
      '  }\n',
    replacement:
      '  virtual Status Flush() {\n' +
      '    if (fflush_unlocked(file_) != 0) {\n' +
      '      return IOError(filename_, errno);\n' +
      '    }\n' +
      '    // pacs-mesh: a log\'s records are handed to the disk 256 KiB at a time as they are written, so that the\n' +
      '    // synced write acknowledging a store finds little left to write (the disk is idle while an instance\n' +
      '    // arrives). Whole pages only: a page under write-back that the next record appends to made that\n' +
      '    // append wait (measured: no gain without the alignment).\n' +
      '    static const uint64_t kLogWriteBackBytes = 256 << 10;\n' +
      '    static const uint64_t kPageBytes = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));\n' +
      '    if (appended_ - written_back_ >= kLogWriteBackBytes && filename_.size() > 4 &&\n' +
      '        filename_.compare(filename_.size() - 4, 4, ".log") == 0) {\n' +
      '      uint64_t end = appended_ - appended_ % kPageBytes;\n' +
      '      LogWriteBackSubmit(fileno(file_), written_back_, end - written_back_);\n' +
      '      written_back_ = end;\n' +
      '    }\n' +
      '    return Status::OK();\n' +
      '  }\n',
  },
  {
    name: 'obsolete-files-listed',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'db_impl.cc'),
    anchor: '  std::vector<std::string> filenames;\n  env_->GetChildren(dbname_, &filenames); // Ignoring errors on purpose\n',
    replacement: '  std::vector<std::string> filenames;\n  std::vector<std::string> files_to_delete;\n  env_->GetChildren(dbname_, &filenames); // Ignoring errors on purpose\n',
  },
  {
    name: 'obsolete-files-deleted-unlocked',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'db_impl.cc'),
    anchor:
      '        env_->DeleteFile(dbname_ + "/" + filenames[i]);\n' +
      '      }\n' +
      '    }\n' +
      '  }\n' +
      '}\n',
    replacement:
      '        files_to_delete.push_back(filenames[i]);\n' +
      '      }\n' +
      '    }\n' +
      '  }\n' +
      '  // pacs-mesh, as upstream LevelDB since 1.22: the files are deleted with the lock released, since every write\n' +
      '  // waits for it (the unlink of a flushed 32 MiB log took ~10 ms here). Their names are unique and never\n' +
      '  // reused, so nothing created meanwhile is among them.\n' +
      '  mutex_.Unlock();\n' +
      '  for (size_t i = 0; i < files_to_delete.size(); i++) {\n' +
      '    env_->DeleteFile(dbname_ + "/" + files_to_delete[i]);\n' +
      '  }\n' +
      '  mutex_.Lock();\n' +
      '}\n',
  },
  {
    name: 'value-bytes-in-place',
    file: 'binding.cc',
    anchor: 'static void DisposeSliceBuffer (leveldb::Slice slice) {\n',
    replacement:
      '/**\n' +
      ' * pacs-mesh: the bytes of a Buffer or Uint8Array value where they are, for a WriteBatch to copy during this\n' +
      ' * call. ToSlice copied every value first and the batch copied that copy: each byte written was copied twice\n' +
      ' * on the JavaScript thread by a batch (the catch-up\'s largest item there), and once on each side by a put.\n' +
      ' */\n' +
      'static bool ValueBytesInPlace (napi_env env, napi_value from, leveldb::Slice* bytes) {\n' +
      '  char* data = NULL;\n' +
      '  size_t length = 0;\n' +
      '  if (IsString(env, from)) return false;\n' +
      '  if (IsBuffer(env, from)) {\n' +
      '    if (napi_get_buffer_info(env, from, (void**)&data, &length) != napi_ok) return false;\n' +
      '  } else {\n' +
      '    napi_typedarray_type type;\n' +
      '    if (napi_get_typedarray_info(env, from, &type, &length, (void**)&data, NULL, NULL) != napi_ok || type != napi_uint8_array) return false;\n' +
      '  }\n' +
      '  *bytes = leveldb::Slice(data, length);\n' +
      '  return true;\n' +
      '}\n' +
      '\n' +
      'static void DisposeSliceBuffer (leveldb::Slice slice) {\n',
  },
  {
    name: 'batch-value-copied-once',
    file: 'binding.cc',
    anchor:
      '      leveldb::Slice key = ToSlice(env, GetProperty(env, element, "key"));\n' +
      '      leveldb::Slice value = ToSlice(env, GetProperty(env, element, "value"));\n' +
      '\n' +
      '      batch->Put(key, value);\n' +
      '      if (!hasData) hasData = true;\n' +
      '\n' +
      '      DisposeSliceBuffer(key);\n' +
      '      DisposeSliceBuffer(value);\n',
    replacement:
      '      leveldb::Slice key = ToSlice(env, GetProperty(env, element, "key"));\n' +
      '      napi_value valueArg = GetProperty(env, element, "value");\n' +
      '      leveldb::Slice inPlace;\n' +
      '      if (ValueBytesInPlace(env, valueArg, &inPlace)) {\n' +
      '        batch->Put(key, inPlace);\n' +
      '      } else {\n' +
      '        leveldb::Slice value = ToSlice(env, valueArg);\n' +
      '        batch->Put(key, value);\n' +
      '        DisposeSliceBuffer(value);\n' +
      '      }\n' +
      '      if (!hasData) hasData = true;\n' +
      '\n' +
      '      DisposeSliceBuffer(key);\n',
  },
  {
    name: 'put-value-copied-once-worker',
    file: 'binding.cc',
    anchor:
      '  ~PutWorker () {\n' +
      '    DisposeSliceBuffer(key_);\n' +
      '    DisposeSliceBuffer(value_);\n' +
      '  }\n' +
      '\n' +
      '  void DoExecute () override {\n' +
      '    SetStatus(database_->Put(options_, key_, value_));\n' +
      '  }\n' +
      '\n' +
      '  leveldb::WriteOptions options_;\n',
    replacement:
      '  ~PutWorker () {\n' +
      '    delete batch_;\n' +
      '    DisposeSliceBuffer(key_);\n' +
      '    DisposeSliceBuffer(value_);\n' +
      '  }\n' +
      '\n' +
      '  // pacs-mesh: a put whose value was copied into batch_ on the JavaScript thread (what DB::Put does on this one).\n' +
      '  void DoExecute () override {\n' +
      '    SetStatus(batch_ != NULL ? database_->WriteBatch(options_, batch_) : database_->Put(options_, key_, value_));\n' +
      '  }\n' +
      '\n' +
      '  leveldb::WriteBatch* batch_ = NULL;\n' +
      '  leveldb::WriteOptions options_;\n',
  },
  {
    name: 'put-value-copied-once-call',
    file: 'binding.cc',
    anchor: putCall,
    replacement:
      '  leveldb::Slice inPlace;\n' +
      '  if (ValueBytesInPlace(env, argv[2], &inPlace)) {\n' +
      '    // pacs-mesh: the value copied once, into the batch the worker writes (see ValueBytesInPlace).\n' +
      '    leveldb::Slice key = ToSlice(env, argv[1]);\n' +
      '    bool sync = BooleanProperty(env, argv[3], "sync", false);\n' +
      '    leveldb::WriteBatch* batch = new leveldb::WriteBatch();\n' +
      '    batch->Put(key, inPlace);\n' +
      '    DisposeSliceBuffer(key);\n' +
      '    PutWorker* worker = new PutWorker(env, database, deferred, leveldb::Slice(), leveldb::Slice(), sync);\n' +
      '    worker->batch_ = batch;\n' +
      '    worker->Queue(env);\n' +
      '    return promise;\n' +
      '  }\n' +
      putCall,
  },
  {
    name: 'manual-flush-trims-malloc-include',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'db_impl.cc'),
    anchor: '#include "db/db_impl.h"\n',
    replacement: '#include "db/db_impl.h"\n\n#ifdef __GLIBC__\n#include <malloc.h>\n#endif\n',
  },
  {
    name: 'manual-flush-trims-malloc',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'db_impl.cc'),
    anchor: '  TEST_CompactMemTable(); // TODO(sanjay): Skip if memtable does not overlap\n',
    replacement:
      '  TEST_CompactMemTable(); // TODO(sanjay): Skip if memtable does not overlap\n' +
      '  // pacs-mesh: the store flushes its blob memtable this way once an ingest pauses (replica-store.ts,\n' +
      '  // flushBlobMemtableWhenIdle): the memtable it freed goes back to the system, not kept by malloc for the\n' +
      '  // next burst (glibc trims an arena only from its top; a peer held a 157 MB burst\'s RSS for good).\n' +
      '#ifdef __GLIBC__\n' +
      '  malloc_trim(0);\n' +
      '#endif\n',
  },
  {
    name: 'store-compactions-verify-checksums',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'version_set.cc'),
    anchor: '  options.verify_checksums = options_->paranoid_checks;\n  options.fill_cache = false;\n',
    replacement:
      '  // pacs-mesh: a compaction of the store\'s databases (store/catalog, store/blobs) reads its input tables with\n' +
      '  // their block checksums checked, as paranoid_checks would (without its stricter log recovery): a damaged\n' +
      '  // block fails the compaction with a Corruption, which the store marks for the catalog\'s rebuild or the\n' +
      '  // blob database\'s repair at the next start; unchecked, its bytes were rewritten under fresh checksums, or\n' +
      '  // keys that decoded out of order failed an assertion in TableBuilder::Add and aborted the process, at\n' +
      '  // every start (hunts 172 and 183).\n' +
      '  options.verify_checksums = options_->paranoid_checks ||\n' +
      '      (dbname_.size() >= 8 && dbname_.compare(dbname_.size() - 8, 8, "/catalog") == 0) ||\n' +
      '      (dbname_.size() >= 6 && dbname_.compare(dbname_.size() - 6, 6, "/blobs") == 0);\n' +
      '  options.fill_cache = false;\n',
  },
  {
    name: 'repair-verifies-checksums',
    file: join('deps', 'leveldb', 'leveldb-1.20', 'db', 'repair.cc'),
    anchor: '    ReadOptions r;\n    r.verify_checksums = options_.paranoid_checks;\n',
    replacement:
      '    // pacs-mesh: RepairDB (the blob database\'s repair at a start after damage) skips a block whose checksum\n' +
      '    // fails and copies the table\'s other blocks; unchecked, it kept the damaged block\'s decoded bytes, and\n' +
      '    // keys decoded out of order aborted the process in TableBuilder::Add (hunt 183).\n' +
      '    ReadOptions r;\n' +
      '    r.verify_checksums = true;\n',
  },
];

function patchSources(copy) {
  for (const patch of SOURCE_PATCHES) {
    const path = join(copy, patch.file);
    const source = readFileSync(path, 'utf8');
    if (source.split(patch.anchor).length !== 2) throw new Error(`LevelDB source patch ${patch.name}: its anchor is not found once in ${patch.file}`);
    writeFileSync(path, source.replace(patch.anchor, patch.replacement));
  }
}

/**
 * The classic-level version the addon in build/ was built here for from this script's patches and flags, or
 * undefined: an earlier build, or none (node-gyp-build loads the prebuilt one).
 */
function builtForVersion() {
  try {
    const marker = JSON.parse(readFileSync(markerPath, 'utf8'));
    // The names alone passed a build from an earlier version of a patch kept under its name as current.
    const patched = SOURCE_PATCHES.every((patch) => marker.patches?.includes(patch.name)) && marker.sourceHash === patchedSourceHash();
    return existsSync(join(releaseDir, 'classic_level.node')) && patched ? marker.classicLevelVersion : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What the addon is built from besides classic-level's own sources: a patch edited under the same name
 * changes it, so an install rebuilds and the write-back test does not take an addon built from older patches.
 */
export function patchedSourceHash() {
  return createHash('sha256').update(JSON.stringify({ flags, patches: SOURCE_PATCHES })).digest('hex');
}

/**
 * The installed classic-level package when its addon was built here from this script's patches and flags
 * for its version (the one peers load), or null: the write-back test uses it rather than building a copy.
 */
export function installedPatchedBuild() {
  try {
    return builtForVersion() === classicLevelVersion() ? packageDir : null;
  } catch {
    return null;
  }
}

/** The names of the source patches the addon in build/ was built with (none when unknown). */
function patchesBuilt() {
  try {
    const patches = JSON.parse(readFileSync(markerPath, 'utf8')).patches;
    return Array.isArray(patches) ? patches : [];
  } catch {
    return [];
  }
}

/** What the addon built from SOURCE_PATCHES does, as `--status` and the build's last line say it. */
const builtWith = 'SSE4.2 CRC32C, full logs synced, logs and tables written back as written, files deleted outside the lock, store compactions and repairs checking checksums and memory trimmed after a manual flush';

/** What `--status` prints and the benchmarks report: the addon node-gyp-build will load. */
function leveldbBuildStatus() {
  const version = builtForVersion();
  if (version !== undefined) return `built here with ${builtWith} (classic-level ${version})`;
  // An earlier build (without some of SOURCE_PATCHES) is still the one node-gyp-build loads until it is rebuilt.
  if (existsSync(join(releaseDir, 'classic_level.node'))) {
    const done = patchesBuilt();
    if (!done.includes('sync-log-at-switch')) return 'built here before the log sync (SSE4.2 CRC32C, logs closed unsynced): `node scripts/build-leveldb.js` rebuilds it';
    if (SOURCE_PATCHES.every((patch) => done.includes(patch.name))) return 'built here with SSE4.2 CRC32C from an earlier version of its patches or flags: `node scripts/build-leveldb.js` rebuilds it';
    return `built here with SSE4.2 CRC32C and full logs synced, without ${SOURCE_PATCHES.map((patch) => patch.name).filter((name) => !done.includes(name)).join(', ')}: \`node scripts/build-leveldb.js\` rebuilds it`;
  }
  return 'prebuilt (software CRC32C, logs closed unsynced)';
}

function classicLevelVersion() {
  return JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')).version;
}

/** Why this machine cannot build it, or null. */
function cannotBuild() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return `not Linux x64 (${process.platform} ${process.arch})`;
  let cpuinfo = '';
  try {
    cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '/proc/cpuinfo unreadable';
  }
  if (!/\bsse4_2\b/.test(cpuinfo)) return 'this CPU has no SSE4.2';
  if (!existsSync(join(packageDir, 'deps', 'leveldb'))) return 'classic-level ships no LevelDB sources';
  for (const [tool, args] of [['c++', ['--version']], ['make', ['--version']], ['python3', ['--version']]]) {
    if (spawnSync(tool, args, { stdio: 'ignore' }).status !== 0) return `no ${tool}`;
  }
  if (!existsSync(join(nodeDir(), 'include', 'node', 'node_api.h'))) return `no Node headers in ${join(nodeDir(), 'include', 'node')}`;
  if (nodeGyp() === null) return "npm's node-gyp not found";
  return null;
}

/** The prefix Node was installed under (its headers are in include/node there, for Debian's and nodejs.org's builds). */
function nodeDir() {
  return dirname(dirname(process.execPath));
}

function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(nodeDir(), 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/share/nodejs/npm/node_modules/node-gyp/bin/node-gyp.js',
  ];
  return candidates.find((path) => path && existsSync(path)) ?? null;
}

/**
 * In a child process with the addon of `packageDir`: `write` fills a database (log records and, with the
 * small write buffer, table files), `read` checks every value. LevelDB reads a checksum it cannot verify
 * as a lost record, so the built addon writing and the prebuilt one reading (and the other way round)
 * shows that stores stay readable whichever addon a peer loads.
 */
function checkStore(packageDir, dbDir, mode) {
  const script = `
    const { ClassicLevel } = require(${JSON.stringify(packageDir)});
    const value = (i) => new Uint8Array(64 * 1024).map((_, j) => (i * 31 + j) & 255);
    (async () => {
      const db = new ClassicLevel(${JSON.stringify(dbDir)}, { valueEncoding: 'view', writeBufferSize: 1 << 20 });
      if (${JSON.stringify(mode)} === 'write') {
        for (let i = 0; i < 64; i++) await db.put('k' + String(i).padStart(3, '0'), value(i), { sync: i % 8 === 7 });
      } else {
        let n = 0;
        for await (const [k, v] of db.iterator()) {
          const e = value(Number(k.slice(1)));
          if (v.length !== e.length || v.some((b, j) => b !== e[j])) throw new Error('value ' + k + ' differs');
          n++;
        }
        if (n !== 64) throw new Error(n + ' of 64 values read back');
      }
      await db.close();
    })().catch((e) => { console.error(e.message); process.exit(1); });`;
  execFileSync(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
}

/** The flags the addon is compiled with (recorded in the marker). */
const flags = '-msse4.2 -DLEVELDB_PLATFORM_POSIX_SSE=1';

/**
 * Builds the patched addon in `<scratch>/classic-level` (a copy of the installed package; the installed one
 * is not touched) and returns that package directory. Throws when a patch's anchor is missing or the build fails.
 */
export function buildPatchedCopy(scratch) {
  const copy = join(scratch, 'classic-level');
  cpSync(packageDir, copy, { recursive: true, filter: (src) => !src.startsWith(join(packageDir, 'build')) });
  // node-gyp-build, napi-macros and the rest resolve from the project's node_modules.
  symlinkSync(join(root, 'node_modules'), join(scratch, 'node_modules'));
  patchSources(copy);
  execFileSync(process.execPath, [nodeGyp(), 'rebuild', `--nodedir=${nodeDir()}`, '-j', '2'], {
    cwd: copy,
    env: { ...process.env, CFLAGS: flags, CXXFLAGS: flags },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 600_000,
  });
  return copy;
}

export { cannotBuild };

function build() {
  const version = classicLevelVersion();
  if (process.env.PACS_MESH_LEVELDB === 'prebuilt') {
    rmSync(join(packageDir, 'build'), { recursive: true, force: true });
    say('LevelDB uses its prebuilt addon (software CRC32C): PACS_MESH_LEVELDB=prebuilt');
    return;
  }
  if (installedPatchedBuild() !== null) return;
  // A build for another classic-level version must not stay in use, whatever happens below.
  rmSync(join(packageDir, 'build'), { recursive: true, force: true });
  const why = cannotBuild();
  if (why !== null) {
    say(`LevelDB stays on its prebuilt addon (software CRC32C): ${why}`);
    return;
  }
  // Built in a copy, so that a failed build leaves the installed package exactly as npm left it.
  const scratch = mkdtempSync(join(tmpdir(), 'pacs-mesh-leveldb-'));
  try {
    say('building LevelDB with SSE4.2 CRC32C (about 20 s; PACS_MESH_LEVELDB=prebuilt skips this)');
    const copy = buildPatchedCopy(scratch);
    checkStore(copy, join(scratch, 'built-writes'), 'write');
    checkStore(packageDir, join(scratch, 'built-writes'), 'read');
    checkStore(packageDir, join(scratch, 'prebuilt-writes'), 'write');
    checkStore(copy, join(scratch, 'prebuilt-writes'), 'read');
    mkdirSync(releaseDir, { recursive: true });
    // Copied beside it, then renamed over it: peers running from this node_modules keep the file they
    // mapped (overwritten in place, a mapped library can take a running process down with it).
    const addon = join(releaseDir, 'classic_level.node');
    copyFileSync(join(copy, 'build', 'Release', 'classic_level.node'), `${addon}.new`);
    renameSync(`${addon}.new`, addon);
    writeFileSync(markerPath, `${JSON.stringify({ classicLevelVersion: version, flags, patches: SOURCE_PATCHES.map((patch) => patch.name), sourceHash: patchedSourceHash() })}\n`);
    say(`LevelDB built with ${builtWith}`);
  } catch (error) {
    rmSync(join(packageDir, 'build'), { recursive: true, force: true });
    // The compiler's or make's own error line says more than node-gyp's closing "not ok".
    const lines = String(error?.stderr ?? error?.message ?? error).trim().split('\n');
    const detail = lines.find((line) => /error/i.test(line) && !line.startsWith('gyp ERR!')) ?? lines.at(-1);
    say(`LevelDB stays on its prebuilt addon (software CRC32C): the build failed (${detail})`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--status')) console.log(leveldbBuildStatus());
  else {
    try {
      build();
    } catch (error) {
      // npm install must not fail for want of a faster checksum.
      say(`LevelDB stays on its prebuilt addon (software CRC32C): ${String(error?.message ?? error).split('\n')[0]}`);
    }
  }
}
