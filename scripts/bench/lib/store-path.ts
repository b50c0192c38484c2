/**
 * Child program of the ingest benchmark: pacs-mesh's C-STORE path without the network. Every file of a
 * directory goes through the same IncomingStore a C-STORE uses (header reading for the catalog, chunked
 * writes, one synced commit, the catalog write) into a fresh replica store, in pieces the size of the
 * P-DATA values storescu sends us, one instance after another as storescu does. What this takes is the
 * ceiling of the peer's ingest with this store on this disk: no DICOM client can be served faster.
 *
 *   node --import tsx scripts/bench/lib/store-path.ts <data dir> <input dir>
 *
 * Prints one JSON line: { wallMs, stored, failed, peakRssBytes }. wallMs runs from the first file read to
 * the last commit, the store's opening left out (as a server's start-up is). lib/replica-floor.ts imports
 * storeFilesThroughCStore to fill a source store.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CommandField, type DimseCommand } from '../../../src/codec/dimse.ts';
import { splitPart10 } from '../../../src/codec/dataset/part10.ts';
import { Tags } from '../../../src/codec/dictionary.ts';
import { defaultConfig } from '../../../src/config.ts';
import { IncomingStore } from '../../../src/actors/association/services/store.ts';
import { localIngest } from '../../../src/actors/association/services/deps.ts';
import type { NegotiatedContext } from '../../../src/actors/association/negotiation.ts';
import { createReplicaStore, type ReplicaStore } from '../../../src/actors/storage/replica-store.ts';

/**
 * The data set pieces storescu sends us (seen at the replica store's writer): it caps its P-DATA-TF PDUs at
 * 128 KiB (our maximum is larger), less the PDU header (6) and the PDV item header (6).
 */
const pieceBytes = Math.min(128 * 1024, defaultConfig.maxPduLength) - 12;

/**
 * Feeds every `.dcm` file of `inputDir`, in name order, through the C-STORE code into `store`, one after
 * another as storescu does. wallMs runs from the first file read to the last commit.
 */
export async function storeFilesThroughCStore(store: ReplicaStore, inputDir: string): Promise<{ wallMs: number; stored: number; failed: number }> {
  const files = (await readdir(inputDir)).filter((name) => name.endsWith('.dcm')).sort();
  let stored = 0;
  let failed = 0;
  const started = performance.now();
  for (const name of files) {
    const bytes = await readFile(join(inputDir, name));
    const split = splitPart10(bytes);
    const metaValue = (tag: number) => String(split.metaElements.find((e) => e.tag === tag)?.value ?? '');
    const sopClassUid = metaValue(Tags.MediaStorageSOPClassUID);
    const command: DimseCommand = {
      commandField: CommandField.CStoreRq,
      messageId: stored + failed + 1,
      affectedSopClassUid: sopClassUid,
      affectedSopInstanceUid: metaValue(Tags.MediaStorageSOPInstanceUID),
      priority: 0,
      hasDataSet: true,
    };
    const context: NegotiatedContext = { id: 1, abstractSyntaxUid: sopClassUid, transferSyntaxUid: split.transferSyntaxUid, service: 'storage', requestorIsScp: false };
    const incoming = new IncomingStore(command, context, localIngest(store), Date.now);
    // Each piece is a copy, as the PDU framer hands every received value over in a buffer of its own.
    for (let at = split.datasetOffset; at < bytes.length; at += pieceBytes) await incoming.push(bytes.slice(at, Math.min(bytes.length, at + pieceBytes)));
    const result = await incoming.finish();
    if (result.status === 0) stored++;
    else {
      failed++;
      console.error(`${name}: status 0x${result.status.toString(16)} ${result.errorComment ?? ''}`);
    }
  }
  return { wallMs: performance.now() - started, stored, failed };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [dataDir, inputDir, ingestBufferMiB] = process.argv.slice(2);
  if (dataDir === undefined || inputDir === undefined) {
    console.error('usage: store-path.ts <data dir> <input dir> [<ingest buffer MiB>]');
    process.exit(2);
  }
  const store = createReplicaStore({ path: dataDir, ...(ingestBufferMiB !== undefined ? { blobWriteBufferBytes: Number(ingestBufferMiB) * 1024 * 1024 } : {}) });
  await store.open();
  const { wallMs, stored, failed } = await storeFilesThroughCStore(store, inputDir);
  await store.close();
  console.log(JSON.stringify({ wallMs, stored, failed, peakRssBytes: process.resourceUsage().maxRSS * 1024 }));
}
