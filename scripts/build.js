#!/usr/bin/env node
/**
 * Bundles src/ with its pure-JS dependencies into dist/pacs-mesh.js, and the transcoder's worker thread
 * into dist/transcode-worker.js (esbuild). A peer started from the bundle is ready in ~0.7 s instead of
 * ~1.9 s through tsx's loader (or ~1.1 s from per-file tsc output: most of the rest was resolving and
 * loading ~600 modules), which matters when a killed site restarts and catches up. bin/pacs-mesh.js uses
 * the bundle only while no source file is newer than this build, and runs src/ through tsx otherwise, so
 * a stale or missing build never runs old code. Type checking stays with tsc (`npm run typecheck`, part
 * of `npm test`).
 *
 *   node scripts/build.js               exit 1 when the build fails
 *   node scripts/build.js --if-possible always 0 (npm's `prepare`): a failed build only means tsx start-up
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const ifPossible = process.argv.includes('--if-possible');

// Taken before esbuild reads anything: a source saved during the build counts as newer than it.
const startedAtMs = Date.now();
rmSync(dist, { recursive: true, force: true });
try {
  const { build } = await import('esbuild');
  await build({
    // The transcoder's worker thread is its own bundle, found beside the command's (src/codec/transcode-pool.ts).
    entryPoints: [
      { in: join(root, 'src', 'cli.ts'), out: 'pacs-mesh' },
      { in: join(root, 'src', 'codec', 'transcode-worker.ts'), out: 'transcode-worker' },
    ],
    outdir: dist,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Error classes and libp2p components are told apart by name in places: keep every name.
    keepNames: true,
    // Loaded from node_modules as usual: a native addon (classic-level), an optional native accelerator
    // (msgpackr), and the DICOM codecs and registry, whose wasm files and internals are found relative to the
    // package (dcmjs is required on first need only).
    external: ['classic-level', 'msgpackr', 'dcmjs-dimse', 'dcmjs-codecs', 'dcmjs'],
    // Bundled CommonJS code calls require(); ESM output has none unless we provide it.
    banner: { js: "import { createRequire as pacsMeshCreateRequire } from 'node:module'; const require = pacsMeshCreateRequire(import.meta.url);" },
    logLevel: 'warning',
  });
  mkdirSync(dist, { recursive: true });
  writeFileSync(join(dist, 'build-info.json'), `${JSON.stringify({ startedAtMs })}\n`);
} catch (error) {
  rmSync(dist, { recursive: true, force: true });
  process.stderr.write(`pacs-mesh: the build failed (${String(error?.message ?? error).split('\n')[0]}); pacs-mesh runs src/ through tsx instead (slower start-up)\n`);
  process.exit(ifPossible ? 0 : 1);
}
