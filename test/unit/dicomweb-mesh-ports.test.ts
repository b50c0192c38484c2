/**
 * DICOMweb's answers when the mesh behind it cannot serve: a search at a refilling site goes to a whole
 * site (307) or is refused (503), never answered with part of the matches; a retrieve whose first instance
 * no peer can send is a 503 before anything was sent; a flood of lookups waits its turn. The peer's real
 * store and HTTP server, with the mesh's ports (searchElsewhere, retrieveSource) played by the test.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Status } from '../../src/codec/dimse.ts';
import { startHttpServer, type RunningHttpServer } from '../../src/http/server.ts';
import { createDicomWebStats, type DicomWebContext } from '../../src/http/dicomweb/context.ts';
import { SearchCursors } from '../../src/http/dicomweb/search-cursors.ts';
import { ConcurrencyLimitError, createConcurrencyLimit } from '../../src/actors/runtime/concurrency-limit.ts';
import { localRetrieveSource } from '../../src/actors/association/services/query-retrieve.ts';
import { localIngest } from '../../src/actors/association/services/deps.ts';
import { systemClock } from '../../src/actors/runtime/clock.ts';
import { silentLogger } from '../../src/actors/runtime/logger.ts';
import { recordingLogger, type RecordedLine } from '../support/recording-logger.ts';
import { openStoreClient, startTestPeer, type TestPeer } from '../support/peer-fixture.ts';

const study = '1.2.826.0.1.3680043.10.1453.205.1';
const series = `${study}.1`;

let peer: TestPeer;
const servers: RunningHttpServer[] = [];

before(async () => {
  peer = await startTestPeer([], 'dicomweb-ports');
  const store = await openStoreClient(peer.dicomPort, 'MODALITY', '1.2.840.10008.5.1.4.1.1.7');
  for (const n of [1, 2]) assert.equal((await store.storeInstance({ study: { uid: study }, series: { uid: series }, sopInstanceUid: `${series}.${n}`, instanceNumber: n, rows: 8, columns: 8 })).command.status, Status.Success);
  await store.client.release();
});

after(async () => {
  for (const server of servers) await server.stop();
  await peer.dispose();
});

/** An HTTP server on the peer's store whose mesh ports are `ports`. */
async function serverWith(ports: Partial<DicomWebContext>): Promise<string> {
  const server = await startHttpServer({
    host: '127.0.0.1',
    port: 0,
    meshStatus: async () => ({}),
    isHealthy: () => true,
    log: silentLogger,
    dicomWeb: {
      store: peer.store,
      retrieveSource: localRetrieveSource(peer.store),
      ingest: localIngest(peer.store),
      transcoder: undefined as never,
      clock: systemClock,
      log: silentLogger,
      stats: createDicomWebStats(),
      meshLookups: createConcurrencyLimit(4, 64),
      heldInstanceBytes: createConcurrencyLimit(64 * 1024 * 1024, 16),
      searchCursors: new SearchCursors(),
      ...ports,
    },
  });
  servers.push(server);
  return `http://127.0.0.1:${server.port}/dicom-web`;
}

describe('DICOMweb in front of a mesh that cannot serve', () => {
  it('sends a search at a refilling site to a whole site, or refuses it when none is alive', async () => {
    const whole = await serverWith({});
    const wholeAddress = new URL(whole).host;
    const refilling = await serverWith({ searchElsewhere: () => ({ reason: 'this site is refilling: 3 of 2910 instances here', httpAddress: wholeAddress }) });
    const redirected = await fetch(`${refilling}/studies?PatientID=*`, { redirect: 'manual' });
    assert.equal(redirected.status, 307);
    assert.equal(redirected.headers.get('location'), `${whole}/studies?PatientID=*`);
    assert.match(((await redirected.json()) as { error: string }).error, /refilling: 3 of 2910 .*whole site/);
    // A client that follows redirects gets every match from the whole site.
    const followed = (await (await fetch(`${refilling}/studies/${study}/series/${series}/instances`)).json()) as unknown[];
    assert.equal(followed.length, 2);

    const alone = await serverWith({ searchElsewhere: () => ({ reason: 'this site is refilling: 3 of 2910 instances here' }) });
    const refused = await fetch(`${alone}/studies`);
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('retry-after'), '5');
    assert.match(((await refused.json()) as { error: string }).error, /no whole site is alive: retry/);
  });

  it('answers 503 before sending anything when no peer can send a retrieve\'s first instance', async () => {
    let asked = 0;
    const base = await serverWith({
      retrieveSource: {
        ...localRetrieveSource(peer.store),
        ensureLocal: async () => {
          asked++;
          return undefined;
        },
      },
    });
    for (const [path, accept] of [[`/studies/${study}`, '*/*'], [`/studies/${study}/metadata`, 'application/dicom+json']] as const) {
      asked = 0;
      const response = await fetch(`${base}${path}`, { headers: { accept } });
      assert.equal(response.status, 503, path);
      assert.equal(response.headers.get('retry-after'), '5');
      assert.match(((await response.json()) as { error: string }).error, /no peer could send it: retry/);
      assert.equal(asked, 3, `${path}: asked the peers three times (two pauses) before giving up`);
    }
  });

  it('answers 500 naming the store when the lookup here fails, without asking the peers again', async () => {
    let asked = 0;
    const lines: RecordedLine[] = [];
    const base = await serverWith({
      log: recordingLogger([], {}, lines),
      retrieveSource: {
        ...localRetrieveSource(peer.store),
        // As the catalog read fails while the store reopens after a fault (LevelDB's error).
        ensureLocal: () => {
          asked++;
          return Promise.reject(Object.assign(new Error('Database is not open'), { code: 'LEVEL_DATABASE_NOT_OPEN' }));
        },
      },
    });
    const response = await fetch(`${base}/studies/${study}`, { headers: { accept: '*/*' } });
    assert.equal(response.status, 500);
    const body = (await response.json()) as { error: string; code: string };
    assert.equal(body.code, 'ERR_DICOMWEB_LOOKUP');
    assert.match(body.error, /cannot be looked up in the store here: Database is not open/);
    assert.equal(asked, 1, 'a fault of this store is not mended by asking the peers again');
    // Counted in /api/mesh, and said in the log: what failed, where.
    const logged = lines.filter((line) => line.message === 'DICOMweb request failed');
    assert.equal(logged.length, 1, JSON.stringify(lines));
    assert.equal(logged[0]!.fields?.code, 'ERR_DICOMWEB_LOOKUP');
    assert.match(String(logged[0]!.fields?.error), /Database is not open/);
  });

  it('lets lookups at other sites wait their turn beyond the limit, and refuses beyond the queue', async () => {
    let running = 0;
    let runningMax = 0;
    const slowSource = {
      ...localRetrieveSource(peer.store),
      resolve: async (...args: Parameters<ReturnType<typeof localRetrieveSource>['resolve']>) => {
        running++;
        runningMax = Math.max(runningMax, running);
        await new Promise((resolve) => setTimeout(resolve, 20));
        running--;
        return localRetrieveSource(peer.store).resolve(...args);
      },
    };
    const base = await serverWith({ retrieveSource: slowSource, meshLookups: createConcurrencyLimit(4, 40) });
    const answers = await Promise.all(Array.from({ length: 60 }, () => fetch(`${base}/studies/${study}/metadata`).then(async (response) => ({ status: response.status, body: await response.text() }))));
    const statuses = answers.map((answer) => answer.status);
    assert.equal(runningMax, 4, 'never more than the limit at once');
    assert.ok(statuses.filter((status) => status === 200).length >= 44, JSON.stringify(statuses));
    for (const answer of answers.filter((a) => a.status !== 200)) {
      assert.equal(answer.status, 503);
      assert.match(answer.body, /too many DICOMweb requests wait for other sites/);
    }
  });

  it('a lookup queue that fills while a response is under way makes its later instances wait, not cut it', async () => {
    // Every lookup not yet admitted is refused once the queue is "full", which it becomes during the first
    // request's first instance: a 60-request flood had cut responses this way (fetch failed, 1 run in 8).
    let full = false;
    const admittedFlags: boolean[] = [];
    const fillingQueue: DicomWebContext['meshLookups'] = {
      run: async (work, _weight, _signal, admitted = false) => {
        admittedFlags.push(admitted);
        if (full && !admitted) throw new ConcurrencyLimitError(0);
        return await work();
      },
      stats: () => ({ running: 0, queued: full ? 1 : 0 }),
    };
    const source = localRetrieveSource(peer.store);
    const base = await serverWith({
      meshLookups: fillingQueue,
      retrieveSource: {
        ...source,
        ensureLocal: async (...args: Parameters<typeof source.ensureLocal>) => {
          full = true;
          return await source.ensureLocal(...args);
        },
      },
    });
    for (const path of [`/studies/${study}/metadata`, `/studies/${study}`]) {
      full = false;
      const response = await fetch(`${base}${path}`, { headers: { accept: path.endsWith('metadata') ? 'application/dicom+json' : 'multipart/related; type="application/dicom"' } });
      assert.equal(response.status, 200, path);
      const body = Buffer.from(await response.arrayBuffer());
      if (path.endsWith('metadata')) assert.equal((JSON.parse(body.toString()) as unknown[]).length, 2);
      else assert.equal(body.toString('latin1').match(/content-type: application\/dicom/gi)?.length, 2, 'two parts');
      // A request that comes while the queue is full is refused before anything is sent.
      const refused = await fetch(`${base}${path}`);
      assert.equal(refused.status, 503, path);
    }
    assert.ok(admittedFlags.includes(true), 'later instances were looked up as admitted');
  });

  it('holds at most its byte budget of instances for frame requests at once, the others waiting their turn', async () => {
    const entry = (await peer.store.getEntry(`${series}.1`))!;
    const limit = createConcurrencyLimit(entry.byteLength * 3, 64);
    let active = 0;
    let activeMax = 0;
    const base = await serverWith({
      heldInstanceBytes: {
        run: (work, weight) =>
          limit.run(async () => {
            active++;
            activeMax = Math.max(activeMax, active);
            try {
              return await work();
            } finally {
              active--;
            }
          }, weight),
        stats: () => limit.stats(),
      },
    });
    const statuses = await Promise.all(
      Array.from({ length: 12 }, (_, index) => fetch(`${base}/studies/${study}/series/${series}/instances/${series}.${(index % 2) + 1}/frames/1`).then(async (response) => {
        await response.arrayBuffer();
        return response.status;
      })),
    );
    assert.deepEqual(statuses, Array.from({ length: 12 }, () => 200));
    assert.equal(activeMax, 1, 'one instance held at a time under a budget of one');
  });

  it('names the known sites that are down in a 404: an instance found nowhere may be there', async () => {
    const base = await serverWith({ sitesDown: () => ['site-a'] });
    const response = await fetch(`${base}/studies/1.2.3.4.5`);
    assert.equal(response.status, 404);
    assert.match(((await response.json()) as { error: string }).error, /no instance of study 1\.2\.3\.4\.5 is stored at the sites up; 1 known site\(s\) are down and may hold it \(site-a\)/);
  });
});
