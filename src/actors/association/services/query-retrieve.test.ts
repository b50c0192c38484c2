/** C-GET/C-MOVE decisions taken before any sub-operation, from what the retrieve source resolved. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { encodeDataset, type WritableElement } from '../../../codec/dataset/writer.ts';
import { Tags } from '../../../codec/dictionary.ts';
import { TransferSyntax, type DicomElement } from '../../../codec/dicom-types.ts';
import { CommandField, Status, type DimseCommand } from '../../../codec/dimse.ts';
import { createReplicaStore, type ReplicaStore } from '../../storage/replica-store.ts';
import type { Transcoder } from '../../../codec/transcode-pool.ts';
import { TranscodeError } from '../../../codec/transcode-error.ts';
import { failedUidIdentifier, moveAssociationGroups, parseQueryIdentifier, pickContextFor, proposalsForMove, runFind, runRetrieve, type RetrieveSource } from './query-retrieve.ts';
import { parseDataset } from '../../../codec/dataset/reader.ts';
import type { CatalogEntry } from '../../storage/catalog-types.ts';
import { CatalogRecordError, catalogWriteOps } from '../../storage/catalog.ts';
import { oneInstanceStudies } from '../../storage/fixtures/test-entry.ts';

/** Runs `use` with a fresh, empty store, removed afterwards. */
async function withEmptyStore<T>(use: (store: ReplicaStore) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-qr-'));
  const store = createReplicaStore({ path: dir });
  await store.open();
  try {
    return await use(store);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A Study Root request at STUDY level with `keys` (implicit VR LE), its responses collected in `sent`. */
function studyRootRequest(command: DimseCommand, keys: DicomElement[], sent: DimseCommand[]) {
  return {
    root: 'STUDY' as const,
    transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian,
    command,
    identifier: encodeDataset([{ tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' }, ...keys], TransferSyntax.ImplicitVrLittleEndian),
    send: async (rsp: DimseCommand) => void sent.push(rsp),
    isCancelled: () => false,
    retrieveAeTitle: 'PACSMESH',
  };
}

/** A Study Root C-GET of one study from a viewer (the fields every C-GET test here shares). */
function studyGetRequest(studyInstanceUid: string, sent: DimseCommand[]) {
  return {
    ...studyRootRequest(
      { commandField: CommandField.CGetRq, messageId: 7, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.3', hasDataSet: true },
      [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: studyInstanceUid }],
      sent,
    ),
    kind: 'get' as const,
    callingAeTitle: 'VIEWER',
  };
}

/** These retrieves never reach a sub-operation, so nothing is transcoded. */
const noTranscoder: Transcoder = { transcode: () => Promise.reject(new Error('no transcode expected')) };

function retrieveWith(source: RetrieveSource): Promise<DimseCommand[]> {
  return withEmptyStore(async (store) => {
    const sent: DimseCommand[] = [];
    await runRetrieve(
      {
        ...studyGetRequest('1.2.826.0.1.3680043.10.1453.5', sent),
        openTarget: () => Promise.reject(new Error('no sub-operation expected')),
        transcoder: noTranscoder,
      },
      store,
      source,
    );
    return sent;
  });
}

test('a peer that may hold matches not here did not answer: 0xA701 before any sub-operation, never a partial Success', async () => {
  const sent = await retrieveWith({
    resolve: async () => ({ entries: [], truncated: false, peersMissed: ['peer-x'] }),
    ensureLocal: async (entry) => entry,
  });
  assert.equal(sent.length, 1);
  assert.equal(sent[0]!.status, Status.OutOfResourcesMatches);
  assert.match(sent[0]!.errorComment ?? '', /did not answer: retry/);
});

test('every peer answered (or those silent hold nothing more): the retrieve goes on', async () => {
  const sent = await retrieveWith({ resolve: async () => ({ entries: [], truncated: false, peersMissed: [] }), ensureLocal: async (entry) => entry });
  assert.deepEqual(sent.map((r) => r.status), [Status.Success]);
});

test('a sub-operation that takes long gets Pending responses meanwhile; the final comment says why sub-operations failed', async () => {
  await withEmptyStore(async (store) => {
    const timers = new Map<number, () => void>();
    let nextTimerId = 1;
    const clock = {
      nowMs: () => 0,
      dateMs: () => 0,
      setTimeout: (callback: () => void) => {
        timers.set(nextTimerId, callback);
        return { id: nextTimerId++ };
      },
      clearTimeout: (handle: { id: unknown } | undefined) => void (handle && timers.delete(handle.id as number)),
    };
    const fireTimers = () => [...timers].forEach(([id, callback]) => (timers.delete(id), callback()));
    const sent: DimseCommand[] = [];
    let pullArrives!: () => void;
    const pulled = new Promise<void>((resolve) => (pullArrives = resolve));
    const uids = ['1.2.826.0.1.3680043.10.1453.6.1', '1.2.826.0.1.3680043.10.1453.6.2'];
    const done = runRetrieve(
      {
        ...studyGetRequest('1.2.826.0.1.3680043.10.1453.6', sent),
        openTarget: async () => ({ pickContext: () => undefined, store: async () => Status.Success, close: async () => undefined }),
        transcoder: noTranscoder,
        pendingKeepAlive: { clock, intervalMs: 10_000 },
      },
      store,
      {
        resolve: async () => ({ entries: uids.map((sopInstanceUid) => ({ sopInstanceUid }) as CatalogEntry), truncated: false }),
        // The first instance is pulled from another site, slowly; then neither is to be had.
        ensureLocal: async (entry) => (entry.sopInstanceUid === uids[0] ? pulled.then(() => undefined) : undefined),
      },
    );
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    for (let interval = 0; interval < 2; interval++) {
      while (timers.size === 0) await turn();
      fireTimers();
    }
    while (sent.length < 2) await turn();
    assert.deepEqual(sent.map((rsp) => [rsp.status, rsp.remainingSubOperations]), [[Status.Pending, 2], [Status.Pending, 2]], 'a Pending response each interval, the counts unchanged');
    pullArrives();
    await done;
    assert.equal(timers.size, 0, 'no keep-alive once the sub-operations are over');
    const final = sent.at(-1)!;
    assert.equal(final.status, Status.OutOfResourcesSubOps);
    assert.equal(final.errorComment, 'all 2 failed: not here, and no peer could send it (or it holds other bytes here: a UID conflict)');
  });
});

test('Pending keep-alives run while a C-MOVE destination stores, not while a C-GET requestor answers (writes to a hung one would pass for progress)', async () => {
  await withEmptyStore(async (store) => {
    for (const kind of ['get', 'move'] as const) {
      const timers = new Set<number>();
      let nextTimerId = 1;
      const clock = {
        nowMs: () => 0,
        dateMs: () => 0,
        setTimeout: () => (timers.add(nextTimerId), { id: nextTimerId++ }),
        clearTimeout: (handle: { id: unknown } | undefined) => void (handle && timers.delete(handle.id as number)),
      };
      let answer!: (status: number) => void;
      let storing = false;
      let released = 0;
      const entry = { sopInstanceUid: '1.2.826.0.1.3680043.10.1453.8.1', sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 } as CatalogEntry;
      const done = runRetrieve(
        {
          ...studyRootRequest(
            { commandField: kind === 'get' ? CommandField.CGetRq : CommandField.CMoveRq, messageId: 7, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.3', moveDestination: 'DEST', hasDataSet: true },
            [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.8' }],
            [],
          ),
          kind,
          callingAeTitle: 'VIEWER',
          openTarget: async () => ({
            // Accepted only in implicit VR LE: the instance goes through the transcoder (here at once).
            pickContext: () => ({ presentationContextId: 3, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }),
            store: () => ((storing = true), new Promise<number>((resolve) => (answer = resolve))),
            close: async () => undefined,
          }),
          transcoder: { transcode: async () => ({ bytes: new Uint8Array([1]), transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian, release: () => released++ }) },
          pendingKeepAlive: { clock, intervalMs: 10_000 },
        },
        store,
        { resolve: async () => ({ entries: [entry], truncated: false }), ensureLocal: async (e) => e },
      );
      while (!storing) await new Promise((resolve) => setImmediate(resolve));
      assert.equal(timers.size, kind === 'move' ? 1 : 0, kind);
      assert.equal(released, 0, 'the converted output stays counted in the transcoder until the receiver has answered');
      answer(Status.Success);
      await done;
      assert.equal(timers.size, 0);
      assert.equal(released, 1);
    }
  });
});

test('C-STORE sub-operations answered 0001, 0107, 0116 or Bxxx count as warnings, not failures (PS3.7 Annex C; helper 66)', async () => {
  await withEmptyStore(async (store) => {
    for (const [answers, expected] of [
      [[Status.Success, 0x0001, 0x0107, 0x0116, 0xb007, 0xa700], { status: Status.SubOpsCompleteWithFailures, completed: 1, warning: 4, failed: 1 }],
      [[0x0001, 0x0001], { status: Status.SubOpsCompleteWithFailures, completed: 0, warning: 2, failed: 0 }],
    ] as const) {
      const sent: DimseCommand[] = [];
      const entries = answers.map((_, i) => ({ sopInstanceUid: `1.2.826.0.1.3680043.10.1453.9.${i + 1}`, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 }) as CatalogEntry);
      let next = 0;
      await runRetrieve(
        {
          ...studyGetRequest('1.2.826.0.1.3680043.10.1453.9', sent),
          openTarget: async () => ({
            pickContext: () => ({ presentationContextId: 3, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }),
            store: async () => answers[next++]!,
            close: async () => undefined,
          }),
          transcoder: { transcode: async () => ({ bytes: new Uint8Array([1]), transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }) },
        },
        store,
        { resolve: async () => ({ entries, truncated: false }), ensureLocal: async (e) => e },
      );
      const final = sent.at(-1)!;
      assert.deepEqual(
        { status: final.status, completed: final.completedSubOperations, warning: final.warningSubOperations, failed: final.failedSubOperations },
        expected,
        answers.map((a) => a.toString(16)).join(','),
      );
    }
  });
});

test('a store that fails to look an instance up is named as the failure, not a missing instance no peer could send', async () => {
  await withEmptyStore(async (store) => {
    const damage: string[] = [];
    store.onCatalogDamage((reason) => damage.push(reason));
    const entry = { sopInstanceUid: '1.2.826.0.1.3680043.10.1453.10.1', sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 } as CatalogEntry;
    // As the catalog read fails: LevelDB's error while the store reopens after a fault, then a damaged record.
    const closed = Object.assign(new Error('Database is not open'), { code: 'LEVEL_DATABASE_NOT_OPEN' });
    for (const [failure, damaged] of [[closed, false], [new CatalogRecordError('catalog record of 1.2.826.0.1.3680043.10.1453.10.1 fails its check'), true]] as const) {
      const sent: DimseCommand[] = [];
      const logged: Array<Record<string, number>> = [];
      await runRetrieve(
        {
          ...studyGetRequest('1.2.826.0.1.3680043.10.1453.10', sent),
          openTarget: async () => ({ pickContext: () => ({ presentationContextId: 3, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }), store: async () => Status.Success, close: async () => undefined }),
          transcoder: noTranscoder,
          onSubOperationFailures: (reasons) => logged.push(reasons),
        },
        store,
        { resolve: async () => ({ entries: [entry], truncated: false }), ensureLocal: () => Promise.reject(failure) },
      );
      const final = sent.at(-1)!;
      assert.equal(final.status, Status.OutOfResourcesSubOps);
      assert.equal(final.errorComment, 'all 1 failed: the store here failed (see the log)');
      assert.deepEqual(Object.keys(logged[0] ?? {}), [`cannot look the instance up in the store here: ${failure.message}`]);
      assert.equal(damage.length, damaged ? 1 : 0, 'a damaged catalog is reported, so that the next start rebuilds it');
    }
  });
});

test('a C-CANCEL while a sub-operation waits at the transcoder ends in Cancel with it remaining, not a failure', async () => {
  await withEmptyStore(async (store) => {
    const sent: DimseCommand[] = [];
    let cancelled = false;
    let cancel!: () => void;
    const entries = ['1.2.826.0.1.3680043.10.1453.9.1', '1.2.826.0.1.3680043.10.1453.9.2'].map(
      (sopInstanceUid) => ({ sopInstanceUid, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 }) as CatalogEntry,
    );
    const done = runRetrieve(
      {
        ...studyGetRequest('1.2.826.0.1.3680043.10.1453.9', sent),
        isCancelled: () => cancelled,
        openTarget: async () => ({ pickContext: () => ({ presentationContextId: 3, transferSyntaxUid: '1.2.840.10008.1.2.4.80' }), store: async () => Status.Success, close: async () => undefined }),
        // The transcode stops once the requestor cancels, as the pool does with the task's signal.
        transcoder: { transcode: () => new Promise((_, reject) => (cancel = () => reject(new TranscodeError('ERR_TRANSCODE_CANCELLED', 'transcoding cancelled: its requestor is gone')))) },
      },
      store,
      { resolve: async () => ({ entries, truncated: false }), ensureLocal: async (e) => e },
    );
    while (cancel === undefined) await new Promise((resolve) => setImmediate(resolve));
    cancelled = true;
    cancel();
    await done;
    assert.deepEqual(
      sent.map((rsp) => [rsp.status, rsp.remainingSubOperations, rsp.completedSubOperations, rsp.failedSubOperations]),
      [[Status.Cancel, 2, 0, 0]],
    );
  });
});


test('a C-CANCEL while a sub-operation pulls its instance from another site ends in Cancel at once, not when the pull ends (hunt 136)', async () => {
  await withEmptyStore(async (store) => {
    const sent: DimseCommand[] = [];
    const cancel = new AbortController();
    let pullStarted = false;
    const entries = ['1.2.826.0.1.3680043.10.1453.10.1', '1.2.826.0.1.3680043.10.1453.10.2'].map(
      (sopInstanceUid) => ({ sopInstanceUid, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 }) as CatalogEntry,
    );
    const done = runRetrieve(
      {
        ...studyGetRequest('1.2.826.0.1.3680043.10.1453.10', sent),
        isCancelled: () => cancel.signal.aborted,
        signal: cancel.signal,
        openTarget: async () => ({ pickContext: () => ({ presentationContextId: 3, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }), store: async () => Status.Success, close: async () => undefined }),
        transcoder: noTranscoder,
      },
      store,
      {
        resolve: async () => ({ entries, truncated: false }),
        // A pull from a site that has hung, or sends a large instance slowly: it ends only when the caller stops waiting.
        ensureLocal: (_entry, signal) => {
          pullStarted = true;
          return new Promise((resolve) => signal?.addEventListener('abort', () => resolve(undefined), { once: true }));
        },
      },
    );
    while (!pullStarted) await new Promise((resolve) => setImmediate(resolve));
    cancel.abort();
    await done;
    assert.deepEqual(
      sent.map((rsp) => [rsp.status, rsp.remainingSubOperations, rsp.completedSubOperations, rsp.failedSubOperations]),
      [[Status.Cancel, 2, 0, 0]],
      'the instance being pulled was not sent: it remains, as the ones after it',
    );
  });
});
test('a search the mesh says the catalog cannot answer yet (a site just restored) gets 0xA700 and the reason, not Success with part of the matches', async () => {
  await withEmptyStore(async (store) => {
    const find = async (refusal: string | undefined): Promise<DimseCommand[]> => {
      const sent: DimseCommand[] = [];
      const command: DimseCommand = { commandField: CommandField.CFindRq, messageId: 3, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.1', hasDataSet: true };
      await runFind(studyRootRequest(command, [{ tag: Tags.PatientName, vr: 'PN', value: 'DOE*' }], sent), store, { searchRefusal: () => refusal });
      return sent;
    };
    const refused = await find('refilling: 0 of 12 instances here: retry');
    assert.deepEqual(refused.map((rsp) => [rsp.status, rsp.errorComment]), [[Status.OutOfResources, 'refilling: 0 of 12 instances here: retry']]);
    assert.deepEqual((await find(undefined)).map((rsp) => rsp.status), [Status.Success]);
  });
});

test('a refused C-FIND or C-GET names the key at fault in Offending Element (0000,0901), beside its Error Comment (PS3.7 C.4.1.1.4, C.4.3.1.4)', async () => {
  await withEmptyStore(async (store) => {
    const findWith = async (keys: DicomElement[]): Promise<DimseCommand> => {
      const sent: DimseCommand[] = [];
      const command: DimseCommand = { commandField: CommandField.CFindRq, messageId: 4, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.1', hasDataSet: true };
      await runFind(studyRootRequest(command, keys, sent), store);
      assert.equal(sent.length, 1);
      return sent[0]!;
    };
    const badDate = await findWith([{ tag: Tags.StudyDate, vr: 'DA', value: '20210229' }]);
    assert.deepEqual([badDate.status, badDate.offendingElements], [0xc001, [Tags.StudyDate]]);
    const lowerLevel = await findWith([{ tag: Tags.SOPInstanceUID, vr: 'UI', value: '1.2.3' }]);
    assert.deepEqual([lowerLevel.status, lowerLevel.offendingElements], [Status.IdentifierDoesNotMatchSopClass, [Tags.SOPInstanceUID]]);
    const matched = await findWith([{ tag: Tags.PatientName, vr: 'PN', value: 'DOE*' }]);
    assert.deepEqual([matched.status, matched.offendingElements], [Status.Success, undefined], 'nothing named when nothing is at fault');

    const retrieveWithKeys = async (keys: DicomElement[]): Promise<DimseCommand> => {
      const sent: DimseCommand[] = [];
      const command: DimseCommand = { commandField: CommandField.CGetRq, messageId: 5, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.3', hasDataSet: true };
      await runRetrieve(
        { ...studyRootRequest(command, keys, sent), kind: 'get', callingAeTitle: 'VIEWER', openTarget: () => Promise.reject(new Error('no sub-operation expected')), transcoder: noTranscoder },
        store,
        { resolve: () => Promise.reject(new Error('not resolved: refused before')) } as unknown as RetrieveSource,
      );
      assert.equal(sent.length, 1);
      return sent[0]!;
    };
    const noUniqueKey = await retrieveWithKeys([]);
    assert.deepEqual([noUniqueKey.status, noUniqueKey.offendingElements], [Status.IdentifierDoesNotMatchSopClass, [Tags.StudyInstanceUID]]);
    const wildcard = await retrieveWithKeys([{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.*' }]);
    assert.deepEqual([wildcard.status, wildcard.offendingElements], [0xc002, [Tags.StudyInstanceUID]]);
  });
});

test('a key longer than 64 KiB (2,000 UIDs) is matched as sent, not as universal', () => {
  const uids = Array.from({ length: 2000 }, (_, i) => `1.2.826.0.1.3680043.9.7777.1.${100_000 + i}`);
  const value = uids.join('\\');
  assert.ok(value.length > 64 * 1024);
  // Implicit VR: an explicit UI value's length field holds 64 KiB at most (DCMTK sends such keys as UN or implicit).
  const identifier = encodeDataset(
    [
      { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
      { tag: Tags.StudyInstanceUID, vr: 'UI', value },
    ],
    TransferSyntax.ImplicitVrLittleEndian,
  );
  const parsed = parseQueryIdentifier('STUDY', identifier, TransferSyntax.ImplicitVrLittleEndian, () => ({ ok: true }));
  assert.ok(parsed.ok);
  assert.equal(parsed.request.keys.find((key) => key.tag === Tags.StudyInstanceUID)?.value, value);
});

test('1,200 failed sub-operations: the final response carries as many failed UIDs as explicit VR holds, and all counts', async () => {
  const failedUids = Array.from({ length: 1200 }, (_, i) => `1.2.826.0.1.3680043.10.1453.99.${String(i).padStart(20, '0')}.${i}`);
  for (const transferSyntaxUid of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian]) {
    const sent: Array<{ rsp: DimseCommand; dataSet: Uint8Array | undefined }> = [];
    await withEmptyStore((store) =>
      runRetrieve(
        {
          ...studyRootRequest(
            { commandField: CommandField.CMoveRq, messageId: 7, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.2', moveDestination: 'DOWN', hasDataSet: true },
            [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.99' }],
            [],
          ),
          transferSyntaxUid,
          identifier: encodeDataset(
            [
              { tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' },
              { tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.99' },
            ],
            transferSyntaxUid,
          ),
          send: async (rsp: DimseCommand, dataSet?: Uint8Array) => void sent.push({ rsp, dataSet }),
          kind: 'move',
          callingAeTitle: 'VIEWER',
          openTarget: () => Promise.reject(new Error('connection refused')),
          transcoder: noTranscoder,
        },
        store,
        { resolve: async () => ({ entries: failedUids.map((sopInstanceUid) => ({ sopInstanceUid }) as CatalogEntry), truncated: false }), ensureLocal: async (entry) => entry },
      ),
    );
    assert.equal(sent.length, 1, transferSyntaxUid);
    const { rsp, dataSet } = sent[0]!;
    assert.equal(rsp.status, Status.OutOfResourcesSubOps);
    assert.equal(rsp.failedSubOperations, 1200);
    const list = parseDataset(dataSet!, transferSyntaxUid, { maxValueBytes: 1 << 20 }).elements.find((e) => e.tag === 0x00080058)!.value!.split('\\');
    if (transferSyntaxUid === TransferSyntax.ImplicitVrLittleEndian) assert.deepEqual(list, failedUids);
    else {
      assert.ok(list.length > 1100 && list.length < 1200, `${list.length} UIDs listed`);
      assert.deepEqual(list, failedUids.slice(0, list.length));
    }
  }
  assert.equal(failedUidIdentifier({ failedUids: [] }, TransferSyntax.ExplicitVrLittleEndian), undefined);
});

test('a C-MOVE offers each class as stored, uncompressed, and losslessly compressed; the copy goes decoded when it can, compressed only when it must', () => {
  const ct = '1.2.840.10008.5.1.4.1.1.2';
  const j2k = '1.2.840.10008.1.2.4.90';
  const jpegLossless = '1.2.840.10008.1.2.4.70';
  const entry = (transferSyntaxUid: string, samplesPerPixel = 1) => ({ sopClassUid: ct, transferSyntaxUid, attributes: [{ tag: Tags.SamplesPerPixel, vr: 'US', value: String(samplesPerPixel) }] }) as CatalogEntry;
  const proposals = proposalsForMove([entry(TransferSyntax.ExplicitVrLittleEndian), entry(j2k)]);
  assert.deepEqual(proposals.map((p) => p.transferSyntaxUids[0]), [TransferSyntax.ExplicitVrLittleEndian, j2k, TransferSyntax.ExplicitVrLittleEndian, jpegLossless]);
  // A destination that took explicit VR LE and JPEG Lossless: the J2K copy is decoded, not re-compressed.
  const both = [{ id: 5, abstractSyntaxUid: ct, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }, { id: 7, abstractSyntaxUid: ct, transferSyntaxUid: jpegLossless }];
  assert.equal(pickContextFor(entry(j2k), [...both].reverse())?.presentationContextId, 5);
  // One that took JPEG Lossless only (helper 49: every instance not stored so failed): compressed for it.
  assert.equal(pickContextFor(entry(TransferSyntax.ExplicitVrLittleEndian), [both[1]!])?.presentationContextId, 7);
  // A colour instance is not encoded in JPEG 2000 (monochrome only): another accepted compressed context, or none.
  const rle = { id: 9, abstractSyntaxUid: ct, transferSyntaxUid: '1.2.840.10008.1.2.5' };
  const j2kContext = { id: 11, abstractSyntaxUid: ct, transferSyntaxUid: j2k };
  assert.equal(pickContextFor(entry(TransferSyntax.ExplicitVrLittleEndian, 3), [j2kContext, rle])?.presentationContextId, 9);
  assert.equal(pickContextFor(entry(TransferSyntax.ExplicitVrLittleEndian, 3), [j2kContext]), undefined);
  assert.equal(pickContextFor(entry(TransferSyntax.ExplicitVrLittleEndian, 1), [j2kContext])?.presentationContextId, 11);
  // 128 contexts at most: with 43 classes there is no room for the compressed ones.
  const many = Array.from({ length: 43 }, (_, i) => ({ sopClassUid: `${ct}.${i}`, transferSyntaxUid: j2k }) as CatalogEntry);
  assert.equal(proposalsForMove(many).length, 86);
});

test('a C-MOVE whose classes and syntaxes need more than 128 contexts proposes every class in one association, a fallback each, the compressed and the frequent syntaxes as stored; over 128 classes, several associations (hunt 160: the contexts past 128 were dropped)', () => {
  const ct = '1.2.840.10008.5.1.4.1.1.2';
  const j2k = '1.2.840.10008.1.2.4.90';
  const fallback = [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian];
  const syntaxes = [TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian];
  // 42 classes in 3 syntaxes each (168 contexts), the last class's big endian instances the most frequent, one class also in JPEG 2000.
  const entries = Array.from({ length: 42 * 3 }, (_, i) => ({ sopClassUid: `${ct}.${Math.floor(i / 3)}`, transferSyntaxUid: syntaxes[i % 3], sopInstanceUid: `1.2.3.${i}` }) as CatalogEntry);
  entries.push({ ...entries.at(-1)!, sopInstanceUid: '1.2.3.1000' }, { ...entries[40]!, transferSyntaxUid: j2k, sopInstanceUid: '1.2.3.1001' });
  assert.deepEqual(moveAssociationGroups(entries), [entries], 'one association');
  const proposals = proposalsForMove(entries);
  assert.equal(proposals.length, 128);
  const byClass = new Map<string, string[][]>();
  for (const p of proposals) byClass.set(p.abstractSyntaxUid, [...(byClass.get(p.abstractSyntaxUid) ?? []), p.transferSyntaxUids]);
  assert.equal(byClass.size, 42);
  // Every class ends with its fallback (a GDCM receiver reads the syntax of the last context it accepted).
  for (const own of byClass.values()) assert.deepEqual(own.at(-1), fallback);
  // The J2K syntax and the most frequent one kept; then the first classes' syntaxes, in order, as room allows (128 - 42 = 86).
  assert.ok(byClass.get(`${ct}.13`)!.some((ts) => ts[0] === j2k));
  assert.deepEqual(byClass.get(`${ct}.41`)!.map((ts) => ts[0]), [TransferSyntax.ExplicitVrBigEndian, TransferSyntax.ExplicitVrLittleEndian]);
  assert.deepEqual(byClass.get(`${ct}.0`)!.length, 4);
  assert.deepEqual(byClass.get(`${ct}.40`)!.length, 1);
  // What fits is proposed whole, with the compressed fallbacks when they fit too.
  assert.equal(proposalsForMove(entries.slice(0, 32 * 3)).length, 32 * 4);
  assert.equal(proposalsForMove(entries.slice(0, 10 * 3)).length, 10 * 5);
  // Over 128 classes: associations of 128 classes, each class in one, every instance once in its order.
  const manyClasses = Array.from({ length: 130 }, (_, i) => ({ sopClassUid: `${ct}.${i % 129}`, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, sopInstanceUid: `1.2.4.${i}` }) as CatalogEntry);
  const groups = moveAssociationGroups(manyClasses);
  assert.deepEqual(groups.map((g) => g.length), [129, 1]);
  assert.deepEqual(groups[1]!.map((e) => e.sopClassUid), [`${ct}.128`]);
  assert.equal(new Set(groups[0]!.map((e) => e.sopClassUid)).size, 128);
  assert.equal(proposalsForMove(groups[0]!).length, 128);
  assert.deepEqual(moveAssociationGroups([]), []);
});

test('a C-MOVE over 128 contexts keeps the stored syntaxes we cannot decode before those we can: an instance in one left out could go in no other context (hunt 165: a single MPEG-2 clip among 100 classes in two decodable syntaxes failed as not convertible)', () => {
  const mpeg2 = '1.2.840.10008.1.2.4.100';
  const j2k = '1.2.840.10008.1.2.4.90';
  const jpegLs = '1.2.840.10008.1.2.4.80';
  const entries: CatalogEntry[] = [];
  // 100 classes, each stored in JPEG 2000 and JPEG-LS (two instances each): 200 compressed contexts, room for 27.
  for (let i = 0; i < 100; i++) for (const ts of [j2k, jpegLs, j2k, jpegLs]) entries.push({ sopClassUid: `1.2.840.10008.5.1.4.1.1.2.${i}`, transferSyntaxUid: ts, sopInstanceUid: `1.2.5.${entries.length}` } as CatalogEntry);
  const videoClass = '1.2.840.10008.5.1.4.1.1.77.1.4.1';
  entries.push({ sopClassUid: videoClass, transferSyntaxUid: mpeg2, sopInstanceUid: '1.2.5.9999' } as CatalogEntry);
  const proposals = proposalsForMove(entries);
  assert.equal(proposals.length, 128);
  assert.deepEqual(
    proposals.filter((p) => p.abstractSyntaxUid === videoClass).map((p) => p.transferSyntaxUids[0]),
    [mpeg2, TransferSyntax.ExplicitVrLittleEndian],
    'the MPEG-2 clip proposed as stored, before its fallback',
  );
  // A destination accepting every context: the clip goes as stored, not refused as not convertible.
  const contexts = proposals.map((p, i) => ({ id: 2 * i + 1, abstractSyntaxUid: p.abstractSyntaxUid, transferSyntaxUid: p.transferSyntaxUids[0]! }));
  assert.equal(pickContextFor({ ...entries.at(-1)!, attributes: [] }, contexts)?.transferSyntaxUid, mpeg2);
});

test('a C-FIND cancelled (C-CANCEL-RQ, or its association aborted) stops its scan though nothing matches yet, answering Cancel (helper 98: it read the whole level first)', async () => {
  await withEmptyStore(async (store) => {
    const instances = 2000;
    const studies = oneInstanceStudies(instances, '1.2.826.0.1.3680043.10.1453.298', { attributes: () => [{ tag: Tags.StudyDescription, vr: 'LO', value: 'HEAD' }] });
    await store.db.batch(studies.flatMap((entry) => catalogWriteOps(entry)));
    let entriesRead = 0;
    const getMany = store.db.getMany.bind(store.db);
    store.db.getMany = ((keys: string[], ...rest: unknown[]) => {
      entriesRead += keys.length;
      return (getMany as (...args: unknown[]) => unknown)(keys, ...rest);
    }) as typeof store.db.getMany;
    const sent: DimseCommand[] = [];
    // Nothing matches this at IMAGE level: every instance is read; the cancel comes while the scan runs.
    let cancelled = false;
    const request = studyRootRequest({ commandField: CommandField.CFindRq, messageId: 3, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.1', hasDataSet: true }, [{ tag: Tags.StudyDescription, vr: 'LO', value: '*CHEST*' }], sent);
    setImmediate(() => (cancelled = true));
    await runFind({ ...request, isCancelled: () => cancelled }, store);
    assert.deepEqual(sent.map((rsp) => rsp.status), [Status.Cancel]);
    assert.ok(entriesRead < instances / 2, `${entriesRead} of ${instances} entries read after the cancel`);
  });
});

test('C-FIND matches go out as Pending 0xFF01 when a key is not supported as asked (a sequence, a private or binary key with a value), else 0xFF00 (PS3.4 C.4.1.1.4)', async () => {
  await withEmptyStore(async (store) => {
    const studies = oneInstanceStudies(2, '1.2.826.0.1.3680043.10.1453.301', { attributes: () => [{ tag: Tags.StudyDescription, vr: 'LO', value: 'HEAD' }] });
    await store.db.batch(studies.flatMap((entry) => catalogWriteOps(entry)));
    const pendingStatuses = async (keys: WritableElement[], appended = new Uint8Array(0)): Promise<Array<number | undefined>> => {
      const sent: DimseCommand[] = [];
      const command: DimseCommand = { commandField: CommandField.CFindRq, messageId: 5, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.1', hasDataSet: true };
      const request = studyRootRequest(command, [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '' }], sent);
      const identifier = Buffer.concat([encodeDataset([{ tag: Tags.QueryRetrieveLevel, vr: 'CS', value: 'STUDY' }, { tag: Tags.StudyInstanceUID, vr: 'UI', value: '' }, ...keys], TransferSyntax.ExplicitVrLittleEndian), appended]);
      await runFind({ ...request, identifier, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }, store);
      assert.equal(sent.at(-1)?.status, Status.Success);
      return [...new Set(sent.slice(0, -1).map((rsp) => rsp.status))];
    };
    const procedureCodeSequence = 0x00081032;
    const codeValue = 0x00080100;
    assert.deepEqual(await pendingStatuses([{ tag: Tags.StudyDescription, vr: 'LO', value: 'HEAD' }]), [Status.Pending]);
    // Sequence matching asked (a code in ProcedureCodeSequence): not done, and every study is listed.
    assert.deepEqual(await pendingStatuses([{ tag: procedureCodeSequence, vr: 'SQ', value: undefined, items: [[{ tag: codeValue, vr: 'SH', value: 'NO-SUCH-CODE' }]] }]), [Status.PendingWarning]);
    // A sequence as a return key comes back empty whatever the study holds: not supported for existence either.
    assert.deepEqual(await pendingStatuses([{ tag: procedureCodeSequence, vr: 'SQ', value: undefined, items: [] }]), [Status.PendingWarning]);
    // A private key with a value to match (never matched); its creator alone, or an empty private key, is no such key.
    const creator: WritableElement = { tag: 0x00090010, vr: 'LO', value: 'ACME 1.0' };
    assert.deepEqual(await pendingStatuses([creator, { tag: 0x00091001, vr: 'LO', value: 'NOSUCH' }]), [Status.PendingWarning]);
    assert.deepEqual(await pendingStatuses([creator, { tag: 0x00091001, vr: 'LO', value: '' }]), [Status.Pending]);
    // A binary key with a value (Red Palette Color Lookup Table Data, OW, 4 bytes; the writer takes no OW value): never matched either.
    const redPaletteKey = Uint8Array.of(0x28, 0x00, 0x01, 0x12, 0x4f, 0x57, 0, 0, 4, 0, 0, 0, 1, 0, 2, 0);
    assert.deepEqual(await pendingStatuses([], redPaletteKey), [Status.PendingWarning]);
    // A standard key sent as UN is matched by its dictionary VR (StudyID, SH, "*"): supported (hunt 192: 0xFF01 before);
    // a standard sequence sent as UN (Issuer of Admission ID Sequence, one empty item) is still a sequence key.
    const studyIdAsUn = Uint8Array.of(0x20, 0x00, 0x10, 0x00, 0x55, 0x4e, 0, 0, 2, 0, 0, 0, 0x2a, 0x20);
    assert.deepEqual(await pendingStatuses([], studyIdAsUn), [Status.Pending]);
    const issuerSequenceAsUn = Uint8Array.of(0x38, 0x00, 0x14, 0x00, 0x55, 0x4e, 0, 0, 8, 0, 0, 0, 0xfe, 0xff, 0x00, 0xe0, 0, 0, 0, 0);
    assert.deepEqual(await pendingStatuses([], issuerSequenceAsUn), [Status.PendingWarning]);
  });
});

test('a C-MOVE sends a Pending response after its last sub-operation too, before it releases the destination (GDCM reads the destination association only after one: hunt 155)', async () => {
  await withEmptyStore(async (store) => {
    const sent: DimseCommand[] = [];
    let responsesBeforeClose = -1;
    const uids = ['1.2.826.0.1.3680043.10.1453.155.3', '1.2.826.0.1.3680043.10.1453.155.4'];
    await runRetrieve(
      {
        ...studyRootRequest(
          { commandField: CommandField.CMoveRq, messageId: 7, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.2', moveDestination: 'GDCMSCP', hasDataSet: true },
          [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.155' }],
          sent,
        ),
        kind: 'move' as const,
        callingAeTitle: 'VIEWER',
        openTarget: async () => ({
          pickContext: () => ({ presentationContextId: 1, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }),
          store: async () => Status.Success,
          close: async () => void (responsesBeforeClose = sent.length),
        }),
        transcoder: noTranscoder,
      },
      store,
      // Instances no site holds: each sub-operation fails before its C-STORE, which is all this test needs.
      { resolve: async () => ({ entries: uids.map((sopInstanceUid) => ({ sopInstanceUid, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian, byteLength: 10 }) as CatalogEntry), truncated: false }), ensureLocal: async () => undefined },
    );
    assert.deepEqual(sent.map((rsp) => [rsp.status, rsp.remainingSubOperations]), [[Status.Pending, 1], [Status.Pending, 0], [Status.OutOfResourcesSubOps, undefined]]);
    assert.equal(responsesBeforeClose, 2, 'both Pending responses before the destination is released');
  });
});

/** Where a C-MOVE of 129 classes (two associations) is between them: `close` and `open` run as the session's would. */
interface BetweenAssociations {
  isCancelled?(): boolean;
  isStopping?(): boolean;
  /** Runs as the `index`th association (1-based) is opened; may throw, as an opening that fails. */
  onOpen?(index: number): void;
  onClose?(index: number): void;
}

/** A C-MOVE of 129 classes, an instance each, to a destination storing each at once: its responses, associations opened and closed, C-STOREs sent. */
async function moveOf129Classes(store: ReplicaStore, hooks: BetweenAssociations) {
  const ct = '1.2.840.10008.5.1.4.1.1.2';
  const entries = Array.from({ length: 129 }, (_, i) => ({ sopInstanceUid: `1.2.826.0.1.3680043.10.1453.170.${i + 1}`, sopClassUid: `${ct}.${i}`, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: 1 }) as CatalogEntry);
  const sent: DimseCommand[] = [];
  let opened = 0;
  let closed = 0;
  let stored = 0;
  let finalDataSet: Uint8Array | undefined;
  await runRetrieve(
    {
      ...studyRootRequest(
        { commandField: CommandField.CMoveRq, messageId: 7, affectedSopClassUid: '1.2.840.10008.5.1.4.1.2.2.2', moveDestination: 'DEST', hasDataSet: true },
        [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.170' }],
        sent,
      ),
      send: async (rsp: DimseCommand, dataSet?: Uint8Array) => void (sent.push(rsp), (finalDataSet = dataSet)),
      ...(hooks.isCancelled ? { isCancelled: hooks.isCancelled } : {}),
      isStopping: hooks.isStopping,
      kind: 'move',
      callingAeTitle: 'VIEWER',
      openTarget: async () => {
        const index = ++opened;
        hooks.onOpen?.(index);
        return {
          // Accepted in implicit VR LE only: each instance goes through the transcoder (here at once).
          pickContext: () => ({ presentationContextId: 1, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }),
          store: async () => (stored++, Status.Success),
          close: async () => hooks.onClose?.(++closed),
        };
      },
      transcoder: { transcode: async () => ({ bytes: new Uint8Array([1]), transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }) },
    },
    store,
    { resolve: async () => ({ entries, truncated: false }), ensureLocal: async (e) => e },
  );
  return { final: sent.at(-1)!, finalDataSet, opened, closed, stored, entries };
}

test('a C-MOVE of 129 classes cancelled between its two associations (during the first one\'s release, the second one\'s opening, or with its A-ASSOCIATE-AC): Cancel with the last class remaining, no C-STORE after the cancel, no other association (PS3.4 C.4.2.3.1)', async () => {
  await withEmptyStore(async (store) => {
    for (const moment of ['release', 'opening', 'opened'] as const) {
      let cancelled = false;
      const { final, opened, closed, stored } = await moveOf129Classes(store, {
        isCancelled: () => cancelled,
        onClose: () => void (cancelled ||= moment === 'release'),
        onOpen: (index) => {
          if (index !== 2 || moment === 'release') return;
          cancelled = true;
          // The session's opening, stopped by the cancel, rejects; one answered as the cancel came resolves.
          if (moment === 'opening') throw new Error('aborted by its owner');
        },
      });
      assert.deepEqual([final.status, final.remainingSubOperations, final.completedSubOperations, final.failedSubOperations, final.warningSubOperations], [Status.Cancel, 1, 128, 0, 0], moment);
      assert.equal(stored, 128, moment);
      assert.deepEqual([opened, closed], moment === 'release' ? [1, 1] : moment === 'opening' ? [2, 1] : [2, 2], `${moment}: associations opened, closed`);
    }
  });
});

test('a peer stopping between the two associations of a C-MOVE of 129 classes opens no other: the last class failed and listed, "the archive is stopping" (0xB000)', async () => {
  await withEmptyStore(async (store) => {
    let stopping = false;
    const { final, finalDataSet, opened, stored, entries } = await moveOf129Classes(store, { isStopping: () => stopping, onClose: () => void (stopping = true) });
    assert.equal(opened, 1, 'no association opened to send nothing');
    assert.equal(stored, 128);
    assert.deepEqual([final.status, final.completedSubOperations, final.failedSubOperations, final.errorComment], [Status.SubOpsCompleteWithFailures, 128, 1, '1 failed: the archive is stopping, retry']);
    assert.equal(parseDataset(finalDataSet!, TransferSyntax.ImplicitVrLittleEndian).elements.find((e) => e.tag === 0x00080058)?.value, entries.at(-1)!.sopInstanceUid);
  });
});

test('a C-CANCEL arriving while a sub-operation\'s copy is read (sent as stored) or converted, in a C-GET or a C-MOVE: that C-STORE is not sent, the instance remains (PS3.4 C.4.2.3.1, C.4.3.3.1)', async () => {
  await withEmptyStore(async (store) => {
    const copy = new Uint8Array([1]);
    const entries = ['1.2.826.0.1.3680043.10.1453.170.201', '1.2.826.0.1.3680043.10.1453.170.202'].map(
      (sopInstanceUid) => ({ sopInstanceUid, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian, byteLength: copy.length, sha256: createHash('sha256').update(copy).digest('hex') }) as CatalogEntry,
    );
    for (const kind of ['get', 'move'] as const) {
      for (const moment of ['read', 'converted'] as const) {
        const sent: DimseCommand[] = [];
        let cancelled = false;
        let stored = 0;
        // The cancel is read while the copy's last bytes are read, or while its conversion finishes: either has nothing left to stop.
        const reading = Object.assign(Object.create(store) as ReplicaStore, {
          readInstance: async function* () {
            cancelled ||= moment === 'read';
            yield copy;
          },
        });
        await runRetrieve(
          {
            ...studyRootRequest(
              { commandField: kind === 'get' ? CommandField.CGetRq : CommandField.CMoveRq, messageId: 7, affectedSopClassUid: kind === 'get' ? '1.2.840.10008.5.1.4.1.2.2.3' : '1.2.840.10008.5.1.4.1.2.2.2', moveDestination: 'DEST', hasDataSet: true },
              [{ tag: Tags.StudyInstanceUID, vr: 'UI', value: '1.2.826.0.1.3680043.10.1453.170' }],
              sent,
            ),
            isCancelled: () => cancelled,
            kind,
            callingAeTitle: 'VIEWER',
            openTarget: async () => ({
              // Accepted as stored (its copy is read and sent), or in implicit VR LE only (it goes through the transcoder).
              pickContext: () => ({ presentationContextId: 1, transferSyntaxUid: moment === 'read' ? TransferSyntax.ExplicitVrLittleEndian : TransferSyntax.ImplicitVrLittleEndian }),
              store: async () => (stored++, Status.Success),
              close: async () => undefined,
            }),
            transcoder: { transcode: async () => ((cancelled = true), { bytes: copy, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }) },
          },
          reading,
          { resolve: async () => ({ entries, truncated: false }), ensureLocal: async (e) => e },
        );
        assert.equal(stored, 0, `${kind}, ${moment}: no C-STORE-RQ initiated after the C-CANCEL-RQ was read`);
        assert.deepEqual(sent.map((rsp) => [rsp.status, rsp.remainingSubOperations, rsp.completedSubOperations, rsp.failedSubOperations]), [[Status.Cancel, 2, 0, 0]], `${kind}, ${moment}`);
      }
    }
  });
});

test('a copy that must be converted goes into little endian where big endian was accepted too (retired, read by fewer receivers), explicit VR first; one whose syntax was accepted goes as stored', () => {
  const ct = '1.2.840.10008.5.1.4.1.1.2';
  const j2k = '1.2.840.10008.1.2.4.90';
  const entry = (transferSyntaxUid: string) => ({ sopClassUid: ct, transferSyntaxUid, attributes: [] as DicomElement[] }) as CatalogEntry;
  const bigEndian = entry(TransferSyntax.ExplicitVrBigEndian);
  const proposals = proposalsForMove([bigEndian, entry(TransferSyntax.ImplicitVrLittleEndian)]);
  assert.deepEqual(proposals.map((p) => p.transferSyntaxUids), [[TransferSyntax.ExplicitVrBigEndian], [TransferSyntax.ImplicitVrLittleEndian], [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian], ['1.2.840.10008.1.2.4.70', '1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.5']]);
  // A destination that took big endian (its own context) and explicit VR LE (the fallback), refusing implicit VR.
  const accepted = [{ id: 1, abstractSyntaxUid: ct, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian }, { id: 5, abstractSyntaxUid: ct, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }];
  assert.deepEqual(pickContextFor(bigEndian, accepted), { presentationContextId: 1, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian }, 'as stored');
  assert.deepEqual(pickContextFor(entry(TransferSyntax.ImplicitVrLittleEndian), accepted), { presentationContextId: 5, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
  assert.deepEqual(pickContextFor(entry(j2k), accepted), { presentationContextId: 5, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian }, 'decoded into little endian');
  // One that took little endian only (the implicit VR context too): the big endian instance goes converted, into explicit VR (its VRs kept).
  const littleOnly = [{ id: 3, abstractSyntaxUid: ct, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian }, accepted[1]!];
  assert.deepEqual(pickContextFor(bigEndian, littleOnly), { presentationContextId: 5, transferSyntaxUid: TransferSyntax.ExplicitVrLittleEndian });
  // Big endian still, when it is all a receiver took.
  assert.deepEqual(pickContextFor(entry(TransferSyntax.ImplicitVrLittleEndian), accepted.slice(0, 1)), { presentationContextId: 1, transferSyntaxUid: TransferSyntax.ExplicitVrBigEndian });
});
