/**
 * How a peer runs as its own process: the installed command and the V8 flags it needs. Scripts and tests
 * that start peers use these, so they run exactly what an operator runs.
 */
import { fileURLToPath } from 'node:url';

/**
 * V8 flags of every peer process. Left alone, V8 sizes the old generation from the small heap of a fresh
 * peer, and with the 16 MiB young generation in front of it starts a full mark-compact every ~150 ms
 * while instances stream through (measured: site A of a three-site mesh spent 31-38 ms of CPU per 0.5 MB
 * instance, 19-20 ms with this flag; 64 and 256 did as well as 128). bin/pacs-mesh.js carries the same
 * flags in its #! line (and the malloc settings below), which test/unit/launcher.test.ts keeps in step.
 */
export const peerNodeFlags: readonly string[] = ['--initial-old-space-size=128'];

/**
 * glibc malloc settings of every peer process (GLIBC_TUNABLES; other C libraries ignore the variable).
 * By default glibc gives every buffer of 128 KiB or more its own mapping and trims the heap whenever
 * 128 KiB are free at its top, so the buffers that ciphers, sockets and LevelDB reads hand to JavaScript
 * came back as fresh pages, each a page fault (costly under this virtualisation). Measured here:
 * Node's ChaCha20 on 1 MiB buffers 0.4 -> 3.6 GB/s; 1 GiB between two peers 197-221 -> 253-259 MiB/s;
 * catch-up of 1,000 instances from ready 1.62-1.83 s (mean 1.72, 4 runs) -> 1.46-1.79 s (mean 1.59,
 * 4 runs); the ingests within noise. Peak RSS ~10 MiB higher; the heap keeps up to 64 MiB of freed memory.
 * arena_max=2: otherwise each thread that allocates gets an arena of its own (11 in a peer here), each
 * keeping for good the memtable memory its LevelDB writes freed (glibc trims a thread arena only when more
 * than trim_threshold is free at its top, and its heap is at most 64 MiB); in a 76-minute soak
 * (docs/performance.md, "Memory at scale") malloc memory levelled off at ~125 MB with it, and was still
 * creeping at 158-160 MB (towards the 240 MB it had mapped) without; no cost in CPU or ingest seen.
 * hugetlb=1 (glibc 2.35 and later; ignored before, and where transparent huge pages are "never"): the heap
 * is asked for 2 MiB pages (MADV_HUGEPAGE), so LevelDB's memtables, its copy of every value and the buffers
 * JavaScript gets no longer fault in 4 KiB at a time. Measured here (THP "madvise"): 800 puts of 64 KiB,
 * 2.2-2.8k page faults against 12.1-12.7k; the ingest benchmark's store path 1.20-1.38 s against 1.36-1.53 s
 * for the 300 (5 interleaved pairs), the whole ingest 199 against 177 img/s (3 runs each, Orthanc at
 * 159 and 157), the catch-up from ready 1.06-1.09 s against 1.28-1.30 s; peak RSS the same.
 */
export const peerMallocTunables = 'glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=67108864:glibc.malloc.top_pad=16777216:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1';

/** The environment of a peer process: `base` with the malloc settings (an operator's own come after, and win). */
export function peerProcessEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...base, GLIBC_TUNABLES: base.GLIBC_TUNABLES ? `${peerMallocTunables}:${base.GLIBC_TUNABLES}` : peerMallocTunables };
}

/** The installed command (dist/ when built and current, else src/ through tsx). */
export const pacsMeshBin = fileURLToPath(new URL('../bin/pacs-mesh.js', import.meta.url));

/** Arguments for `process.execPath` that run `pacs-mesh <args>` with the peer's flags (spawn it with peerProcessEnv). */
export function peerProcessArgs(args: readonly string[]): string[] {
  return [...peerNodeFlags, pacsMeshBin, ...args];
}
