/**
 * The command's answer to a data directory it cannot use (another layout, a newer format, in use, a full disk, damaged
 * state files): one line naming the problem, no stack trace,
 * and the exit code operators' scripts rely on (2 configuration, 1 runtime).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Level } from 'level';
import { implementationVersionName } from '../../src/actors/association/implementation.ts';
import { createReplicaStore, STORE_FORMAT } from '../../src/actors/storage/replica-store.ts';
import { peerProcessArgs, peerProcessEnv } from '../../src/peer-process.ts';
import { buildVersion } from '../../src/version.ts';
import { testCatalogEntry } from '../../src/actors/storage/fixtures/test-entry.ts';
import { getFreePort, runTool } from '../support/dicom-tools.ts';
import { tmpfsOrSkip } from '../support/tmpfs.ts';
import { writeSwarmKeyFile } from '../../src/net/swarm-key.ts';

async function start(dataDir: string, extraArgs: readonly string[] = []): Promise<{ status: number | null; stderr: string }> {
  const args = peerProcessArgs(['start', '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort()), ...extraArgs]);
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 30_000, env: peerProcessEnv() });
  return { status: r.status, stderr: r.stderr };
}

/** `pacs-mesh start ARGS` run to its end (as another user when `options` say so): its exit status and stderr. */
function startToEnd(args: readonly string[], options: { uid?: number; gid?: number } = {}): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, peerProcessArgs(['start', ...args]), { env: peerProcessEnv(), ...options });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('exit', (status) => resolve({ status, stderr }));
  });
}

/** A port this process listens on until the test ends: one "another process" holds, for the peer started. */
async function heldPort(t: TestContext): Promise<number> {
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.after(() => holder.close());
  return (holder.address() as AddressInfo).port;
}

test('a data directory in the old single-database layout: exit 2 and one line saying what to do', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const old = new Level(join(dir, 'store'));
  await old.open();
  await old.close();
  const r = await start(dir);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /old single-database layout; start with an empty data directory/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('a data directory a newer pacs-mesh wrote (a newer store format: a downgrade): exit 2 and one line saying what to do', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: join(dir, 'store') });
  await store.open();
  await store.blobDb.put('m!store-format', Buffer.from('99', 'utf8'));
  await store.close();
  const r = await start(dir);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /holds a store of format "99", written by a newer pacs-mesh; this build reads format 1 and earlier: run the newer build on it/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('a --data path that is a file, or under one: exit 2 and one line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'a-file'), '');
  for (const dataDir of [join(dir, 'a-file'), join(dir, 'a-file', 'site')]) {
    const r = await start(dataDir);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `pacs-mesh: --data ${dataDir} cannot be used as the data directory: a file is in the way of that directory\n`);
  }
});

test('a --data path that cannot be created (under /proc, through a dangling link): exit 2 and one line, at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  symlinkSync(join(dir, 'gone'), join(dir, 'dangling'));
  // Node's own recursive mkdir spun at full CPU on the first one, for as long as it was left running.
  for (const dataDir of ['/proc/self/pacs-mesh-nope', join(dir, 'dangling', 'site')]) {
    const r = await start(dataDir);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /cannot be used as the data directory: a directory on its path cannot be created there/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});

test('a data directory another process is using: exit 1 and one line saying so', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const held = createReplicaStore({ path: join(dir, 'store') });
  await held.open();
  t.after(() => held.close());
  const r = await start(dir, ['--move-dest', 'INTRUDER=127.0.0.1:104']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /in use by another process: one pacs-mesh peer per data directory/);
  assert.equal(existsSync(join(dir, 'ae-directory.json')), false, 'a refused start leaves the AE directory of the running peer alone');
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  // The same store twice in one process is refused the same way. (Last: LevelDB's failed attempt closes
  // its descriptor of the LOCK file, which drops this process's POSIX lock on it.)
  await assert.rejects(createReplicaStore({ path: join(dir, 'store') }).open(), { name: 'StoreError', code: 'ERR_STORE_LOCKED' });
});

/** A data directory whose store holds one instance (removed after the test). */
async function dataDirHoldingOneInstance(t: TestContext): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = createReplicaStore({ path: join(dir, 'store') });
  await store.open();
  const writer = store.beginWrite();
  await writer.write(new Uint8Array(1000));
  await writer.commit('1.2.3.4', testCatalogEntry('1.2.3.4'));
  await store.close();
  return dir;
}

test('a blob database that lost its CURRENT file, or is gone: exit 1 and one line, not a start with every instance gone', async (t) => {
  const dir = await dataDirHoldingOneInstance(t);
  rmSync(join(dir, 'store', 'blobs', 'CURRENT'));
  const r = await start(dir);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /blobs: it holds database files \(.*\) but no CURRENT file, so the instance bytes cannot be found; move the data directory away/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  // The whole blob database gone: the catalog still lists the instance.
  rmSync(join(dir, 'store', 'blobs'), { recursive: true });
  const gone = await start(dir);
  assert.equal(gone.status, 1, gone.stderr);
  assert.match(gone.stderr, /the catalog lists instances but the blob database holds no bytes/);
});

/** Opens the store of `dir` as a start does: it must repair the blob database and find its one instance whole (hunt 183: the start failed). */
async function assertBlobsRepairedAtOpen(t: TestContext, dir: string): Promise<void> {
  const notices: string[] = [];
  const store = createReplicaStore({ path: join(dir, 'store'), onOpenNotice: (message) => notices.push(message) });
  await store.open();
  t.after(() => store.close());
  assert.match(notices.join('\n'), /the instance database \(blobs\/\) is damaged: LevelDB repairs it now[\s\S]*the instance database was repaired: all 1 instances are whole/);
  assert.equal(await store.countInstances(), 1);
}

test('a blob database whose MANIFEST is damaged is repaired at the open, its instances kept (it was exit 1, saying to start on an empty directory)', async (t) => {
  const dir = await dataDirHoldingOneInstance(t);
  const blobs = join(dir, 'store', 'blobs');
  const manifest = readdirSync(blobs).find((name) => name.startsWith('MANIFEST-'))!;
  truncateSync(join(blobs, manifest), 10);
  await assertBlobsRepairedAtOpen(t, dir);
});

test('a blob database whose MANIFEST file is gone, or whose CURRENT names another file, is repaired at the open too (helpers 48, 50)', async (t) => {
  const dir = await dataDirHoldingOneInstance(t);
  const blobs = join(dir, 'store', 'blobs');
  writeFileSync(join(blobs, 'CURRENT'), 'garbage\n');
  await assertBlobsRepairedAtOpen(t, dir);

  const again = await dataDirHoldingOneInstance(t);
  const againBlobs = join(again, 'store', 'blobs');
  rmSync(join(againBlobs, readdirSync(againBlobs).find((name) => name.startsWith('MANIFEST-'))!));
  await assertBlobsRepairedAtOpen(t, again);
});

test('a data directory on a full disk that the store cannot open: exit 1 and one line saying why', async (t) => {
  const tmpfs = tmpfsOrSkip(t, 16 * 1024 * 1024);
  if (tmpfs === undefined) return;
  t.after(() => tmpfs.unmount());
  // A store holding a few MB in its log, then a full disk: opening must turn that log into a table.
  const store = createReplicaStore({ path: join(tmpfs.mountPoint, 'store') });
  await store.open();
  const writer = store.beginWrite();
  for (let i = 0; i < 32; i++) await writer.write(new Uint8Array(128 * 1024).fill(i));
  await writer.commit('1.2.3.4', testCatalogEntry('1.2.3.4'));
  await store.close();
  const fill = spawnSync('dd', ['if=/dev/zero', `of=${join(tmpfs.mountPoint, 'ballast')}`, 'bs=1M', 'count=64'], { encoding: 'utf8' });
  assert.notEqual(fill.status, 0, 'dd should stop at the full disk');
  const r = await start(tmpfs.mountPoint);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^pacs-mesh: cannot open the store in .*: IO error: .*No space left on device; free space on that disk .*, or move the data directory to a larger one\n$/);
});

test("a store whose files this user may not write (a data directory copied as root): exit 1 and one line saying what to do", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const dataDir = join(dir, 'site');
  const store = createReplicaStore({ path: join(dataDir, 'store') });
  await store.open();
  await store.close();
  chmodSync(dataDir, 0o777);
  // As root every file may be written: the command runs as nobody, whose the store's files are not.
  const asRoot = process.getuid?.() === 0;
  if (!asRoot) chmodSync(join(dataDir, 'store', 'blobs', 'LOCK'), 0o400);
  const args = peerProcessArgs(['start', '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort())]);
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 30_000, env: peerProcessEnv(), ...(asRoot ? { uid: 65534, gid: 65534 } : {}) });
  assert.equal(r.status, 1, r.stderr);
  // It said LevelDB's reason alone before (hunt 162).
  assert.match(r.stderr, /^pacs-mesh: cannot open the store in .*: IO error: .*LOCK: Permission denied; this user may not read or write the store's files: run the peer as the user that owns the data directory, or give it to this one \(chown -R\)\n$/, r.stderr);
});

/** A data directory for a mesh peer (a swarm key beside it), and the command's start of it at `logLevel`. */
async function meshSite(t: TestContext): Promise<{ dataDir: string; startMesh(logLevel: string): ReturnType<typeof start> }> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const swarmKeyPath = join(dir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyPath);
  const dataDir = join(dir, 'site');
  mkdirSync(dataDir);
  return { dataDir, startMesh: async (logLevel) => start(dataDir, ['--swarm-key', swarmKeyPath, '--p2p-port', String(await getFreePort()), '--log-level', logLevel]) };
}

test('a damaged election record, roster or peer key stops a mesh peer at start: exit 1 and one line naming the file and the way out', async (t) => {
  const { dataDir, startMesh } = await meshSite(t);
  const cases: Array<[string, string, RegExp]> = [
    ['balancer-election.json', '{"currentTerm":', /balancer-election\.json is damaged \(.*JSON.*\): restore it, or move it away to start with no vote record/],
    ['balancer-election.json', '{"currentTerm":"seven","votedFor":null}', /balancer-election\.json is damaged \(not an election record\)/],
    ['balancer-election.json', '{"currentTerm":-5,"votedFor":null}', /balancer-election\.json is damaged \(not an election record\)/],
    ['balancer-election.json', '{"movedTo":"balancer-election.rec"}', /balancer-election\.rec is damaged \(missing, though balancer-election\.json says the record moved there\): restore it, or move it and balancer-election\.json away/],
    ['balancer-election.rec', 'a file that is not two slots', /balancer-election\.rec is damaged \(neither of its two slots is whole\): restore it, or move it and balancer-election\.json away to start with no vote record/],
    ['balancer-roster.json', '{"version":2,"peers":[]}', /balancer-roster\.json is damaged \(not a roster\)/],
    ['balancer-roster.json', '', /balancer-roster\.json is damaged \(.*JSON.*\): restore it, or move it away: the peer learns the roster again/],
    ['balancer-roster.json', '{"version":1,"peers":{"12D3KooW":null}}', /balancer-roster\.json is damaged \(peer 12D3KooW has no last-seen time\)/],
    ['peer-key', 'garbage', /peer-key is not a valid libp2p private key .*; move it away to create a new identity/],
  ];
  for (const [file, content, message] of cases) {
    for (const name of ['balancer-election.json', 'balancer-election.rec', 'balancer-roster.json', 'peer-key']) rmSync(join(dataDir, name), { force: true });
    writeFileSync(join(dataDir, file), content);
    const r = await startMesh('warn');
    assert.equal(r.status, 1, `${file}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.split('\n').filter((line) => line !== '').length, 1, `${file}: one line, no stack trace: ${r.stderr}`);
  }
});

test('a mesh child that keeps failing at start (the balancer cannot read its roster) stops the start: exit 1 and one line, not a hung peer', async (t) => {
  const { dataDir } = await meshSite(t);
  // A disk that answers the first read of the learnt roster (the check before the actors start), then
  // fails every read: the balancer actor crashes at each restart until its budget is spent.
  const faultyDisk = [
    "import fsp from 'node:fs/promises'; import { syncBuiltinESMExports } from 'node:module';",
    'const readFile = fsp.readFile; let reads = 0;',
    "fsp.readFile = async (path, ...rest) => { if (String(path).endsWith('balancer-roster.json') && ++reads > 1) throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' }); return readFile(path, ...rest); };",
    'syncBuiltinESMExports();',
  ].join('\n');
  const swarmKeyPath = join(dataDir, '..', 'swarm.key');
  const args = peerProcessArgs(['start', '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort()), '--swarm-key', swarmKeyPath, '--p2p-port', String(await getFreePort()), '--log-level', 'silent']);
  const r = spawnSync(process.execPath, ['--import', `data:text/javascript,${encodeURIComponent(faultyDisk)}`, ...args], { encoding: 'utf8', timeout: 60_000, env: peerProcessEnv() });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /^pacs-mesh: the mesh could not start: the balancer actor kept failing \(cannot read .*balancer-roster\.json: EIO: i\/o error, read\)\n$/);
});

test('an unhandled rejection inside a running peer is reported on stderr and the peer serves on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const httpPort = await getFreePort();
  // A promise rejected with no handler once the command is running (it has installed its handler), as a
  // bug in some operation would.
  const probe =
    'data:text/javascript,const t = setInterval(() => { if (process.listenerCount("unhandledRejection") > 0) { clearInterval(t); Promise.reject(new Error("probe rejection")); } }, 50)';
  const args = peerProcessArgs(['start', '--data', dir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(httpPort), '--log-level', 'warn']);
  const child = spawn(process.execPath, ['--import', probe, ...args], { env: peerProcessEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!stderr.includes('ERR_UNHANDLED_REJECTION')) {
    assert.ok(Date.now() < deadline, `no report in 30 s: ${stderr}`);
    assert.equal(child.exitCode, null, `the peer exited: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(stderr, /ERR_UNHANDLED_REJECTION \(a bug; the peer serves on\): Error: probe rejection/);
  // The rejection may come before the HTTP port listens (the handler is installed first): the peer
  // serving means it starts and answers, so /healthz is polled until it does.
  let healthStatus = 0;
  while (healthStatus !== 200) {
    assert.ok(Date.now() < deadline, `/healthz never answered 200 after the rejection: ${stderr}`);
    assert.equal(child.exitCode, null, `the peer exited: ${stderr}`);
    healthStatus = await fetch(`http://127.0.0.1:${httpPort}/healthz`, { signal: AbortSignal.timeout(3000) }).then((r) => r.status, () => 0);
    if (healthStatus !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
});

test('a SIGTERM during the start, then SIGHUP and another SIGTERM while stopping: a clean stop, exit 0', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const args = peerProcessArgs(['start', '--data', dir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort()), '--log-level', 'info']);
  const child = spawn(process.execPath, args, { env: peerProcessEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // As soon as the command runs, long before the peer has started.
  while (!stderr.includes('"message"') && child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
  child.kill('SIGTERM');
  while (!stderr.includes('peer started') && child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
  child.kill('SIGHUP');
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
  assert.match(stderr, /peer started/);
  // The operator sees the stop begin (the drain may take its grace period), then end.
  assert.match(stderr, /peer stopping: new associations and HTTP connections refused, open ones drain[\s\S]*peer stopped/);
});

test('a DICOM or HTTP port another process holds: exit 1 and one line naming the option', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const taken = await heldPort(t);
  for (const [option, other] of [['--dicom-port', '--http-port'], ['--http-port', '--dicom-port']] as const) {
    const r = await startToEnd(['--data', join(dir, option), '--host', '127.0.0.1', option, String(taken), other, String(await getFreePort())]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${taken} \\(${option}, EADDRINUSE\\): .*choose another ${option}\n$`));
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});

test('a port it cannot listen on says the one cause and way out: taken, an address not on this machine, a privileged port', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const taken = await heldPort(t);

  const inUse = await startToEnd(['--data', join(dir, 'in-use'), '--host', '127.0.0.1', '--dicom-port', String(taken), '--http-port', String(await getFreePort())]);
  assert.equal(inUse.status, 1, `a port in use is a runtime failure: ${inUse.stderr}`);
  assert.match(inUse.stderr, /\(--dicom-port, EADDRINUSE\): another process is listening there: stop it, or choose another --dicom-port\n$/, `the line names the way out: ${inUse.stderr}`);
  assert.doesNotMatch(inUse.stderr, /not on this machine/, `no guess at another cause: ${inUse.stderr}`);

  // 192.0.2.1 (TEST-NET-1, RFC 5737) is on no machine.
  const notHere = await startToEnd(['--data', join(dir, 'not-here'), '--host', '192.0.2.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort())]);
  assert.equal(notHere.status, 1, `an address not on this machine is a runtime failure: ${notHere.stderr}`);
  assert.match(notHere.stderr, /\(--dicom-port, EADDRNOTAVAIL\): 192\.0\.2\.1 is not an address of this machine: give --host one of its addresses/, `the line names --host: ${notHere.stderr}`);
  assert.doesNotMatch(notHere.stderr, /another process/, `no guess at another cause: ${notHere.stderr}`);
  assert.doesNotMatch(notHere.stderr, /\n\s+at /, 'no stack trace');

  // A port below 1024 needs privileges: as root, the command is run as nobody to see it refused.
  const asRoot = process.getuid?.() === 0;
  const unprivileged = join(dir, 'unprivileged');
  mkdirSync(unprivileged);
  chmodSync(dir, 0o755);
  chmodSync(unprivileged, 0o777);
  const low = await startToEnd(['--data', unprivileged, '--host', '127.0.0.1', '--dicom-port', '104', '--http-port', String(await getFreePort())], asRoot ? { uid: 65534, gid: 65534 } : {});
  if (!low.stderr.includes('EACCES)') && (asRoot || low.status === 0)) {
    t.diagnostic(`privileged port not checked here (status ${low.status}): ${low.stderr.slice(0, 200)}`);
    return;
  }
  assert.equal(low.status, 1, `a privileged port is a runtime failure: ${low.stderr}`);
  assert.match(low.stderr, /\(--dicom-port, EACCES\): ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up, or grant the capability\n/, `the line says why and what to do: ${low.stderr}`);
});

test('the libp2p port in use or privileged: the one cause and way out, as for the DICOM and HTTP ports (--p2p-port)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const keyFile = join(dir, 'swarm.key');
  await writeSwarmKeyFile(keyFile);
  const run = async (dataDir: string, p2pPort: number, options: { uid?: number; gid?: number } = {}) => {
    mkdirSync(dataDir);
    chmodSync(dataDir, 0o777);
    return startToEnd(['--data', dataDir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(await getFreePort()), '--swarm-key', keyFile, '--p2p-port', String(p2pPort)], options);
  };
  const taken = await heldPort(t);
  const inUse = await run(join(dir, 'in-use'), taken);
  assert.equal(inUse.status, 1, inUse.stderr);
  assert.match(inUse.stderr, new RegExp(`^pacs-mesh: cannot listen on 127\\.0\\.0\\.1:${taken} \\(--p2p-port, EADDRINUSE\\): another process is listening there: stop it, or choose another --p2p-port\n$`, 'm'), inUse.stderr);

  // A port below 1024 as a user without the privilege: as root, the command runs as nobody (who may read the key).
  const asRoot = process.getuid?.() === 0;
  if (asRoot) chownSync(keyFile, 65534, 65534);
  const low = await run(join(dir, 'privileged'), 999, asRoot ? { uid: 65534, gid: 65534 } : {});
  if (!low.stderr.includes('EACCES)') && (asRoot || low.status === 0)) {
    t.diagnostic(`privileged --p2p-port not checked here (status ${low.status}): ${low.stderr.slice(0, 200)}`);
    return;
  }
  assert.equal(low.status, 1, low.stderr);
  // It said "is another process using it?" before (hunt 162).
  assert.match(low.stderr, /^pacs-mesh: cannot listen on 127\.0\.0\.1:999 \(--p2p-port, EACCES\): ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up, or grant the capability\n$/m, low.stderr);
  assert.doesNotMatch(low.stderr, /another process/, low.stderr);
});

test('a --swarm-key file that does not exist: exit 2 and one line saying how a mesh gets its key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'no-such.key');
  const r = await start(join(dir, 'data'), ['--swarm-key', keyFile, '--p2p-port', String(await getFreePort())]);
  assert.equal(r.status, 2, `a missing key is a configuration error: ${r.stderr}`);
  assert.match(r.stderr, new RegExp(`cannot use --swarm-key ${keyFile}: no such file or directory \\(ENOENT\\)`), `the line names the file and why: ${r.stderr}`);
  assert.equal(r.stderr.split(keyFile).length - 1, 1, `the file named once: ${r.stderr}`);
  assert.match(r.stderr, /make one with pacs-mesh keygen --out FILE at the first site and copy that file to every other site\n$/, `the line says what to do: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('start --help and keygen --help print the usage and exit 0, as pacs-mesh --help does', async () => {
  // The six commands run at once: each is a second of loading the command, one after the other 6-16 s.
  const help = (args: readonly string[]) => runTool(process.execPath, peerProcessArgs(args), { timeoutMs: 30_000, env: peerProcessEnv() });
  const helpArgs = [['start', '--help'], ['start', '--site', 'a', '-h'], ['start', '--data=/tmp/x', '--help'], ['keygen', '--help']];
  // A value that happens to read --help is a value: the usual refusal of a bad one, not the usage.
  const [top, value, ...results] = await Promise.all([help(['--help']), help(['start', '--ae-title', '--help']), ...helpArgs.map(help)]);
  assert.equal(top!.code, 0, `pacs-mesh --help: ${top!.stderr}`);
  for (const [i, args] of helpArgs.entries()) {
    const r = results[i]!;
    assert.equal(r.code, 0, `${args.join(' ')} exits 0: ${r.stderr}`);
    assert.equal(r.stdout, top!.stdout, `${args.join(' ')} prints the usage`);
    assert.equal(r.stderr, '', `${args.join(' ')} says nothing else`);
  }
  assert.notEqual(value!.code, 0, 'a value is not a request for help');
  assert.equal(value!.stdout, '', 'no usage for a value');
  // A misspelt command names the commands and the help (hunt 162).
  const misspelt = await help(['strat', '--site', 'a']);
  assert.equal(misspelt.code, 2, misspelt.stderr);
  assert.equal(misspelt.stderr, 'pacs-mesh: unknown command "strat": the commands are start, keygen and version (see pacs-mesh --help)\n');
  // The version, for an operator upgrading one site at a time: the package's, with the store format it reads.
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  for (const args of [['--version'], ['version'], ['-V']]) {
    const r = await help(args);
    assert.equal(r.code, 0, `${args[0]}: ${r.stderr}`);
    assert.equal(r.stdout, `pacs-mesh ${version} (store format ${STORE_FORMAT}, implementation version name ${implementationVersionName}, node ${process.version})\n`);
  }
});

test('a data directory on a read-only file system: exit 2 and one line saying so', async (t) => {
  const tmpfs = tmpfsOrSkip(t, 1024 * 1024);
  if (tmpfs === undefined) return;
  t.after(() => tmpfs.unmount());
  spawnSync('mount', ['-o', 'remount,ro', tmpfs.mountPoint]);
  t.after(() => spawnSync('mount', ['-o', 'remount,rw', tmpfs.mountPoint]));
  const r = await start(tmpfs.mountPoint);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /cannot be used as the data directory: it is on a read-only file system/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

/**
 * `pacs-mesh start --data DIR ARGS` until it serves (/healthz 200): its /api/mesh and stderr then; stopped
 * with SIGTERM, which must end it with exit 0.
 */
async function serveOnce(t: TestContext, dataDir: string, args: readonly string[]): Promise<{ mesh: Record<string, unknown>; stderr: string }> {
  const httpPort = await getFreePort();
  const child = spawn(process.execPath, peerProcessArgs(['start', '--data', dataDir, '--host', '127.0.0.1', '--dicom-port', String(await getFreePort()), '--http-port', String(httpPort), ...args]), {
    env: peerProcessEnv(),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  let healthStatus = 0;
  while (healthStatus !== 200) {
    assert.ok(Date.now() < deadline, `/healthz never answered 200: ${stderr}`);
    assert.equal(child.exitCode, null, `the peer exited: ${stderr}`);
    healthStatus = await fetch(`http://127.0.0.1:${httpPort}/healthz`, { signal: AbortSignal.timeout(3000) }).then((r) => r.status, () => 0);
    if (healthStatus !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  const mesh = (await (await fetch(`http://127.0.0.1:${httpPort}/api/mesh`)).json()) as Record<string, unknown>;
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
  return { mesh, stderr };
}

/** A data directory whose store knows site-b and owes it two copies: what a mesh site's custody leaves. */
async function formerMeshSite(t: TestContext): Promise<{ dir: string; dataDir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'site');
  const store = createReplicaStore({ path: join(dataDir, 'store') });
  await store.open();
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: Date.now() }], []);
  await store.updateDebt([{ sopInstanceUid: '1.2.3.4', siteName: 'site-b', sinceMs: Date.now() }, { sopInstanceUid: '1.2.3.5', siteName: 'site-b', sinceMs: Date.now() }], []);
  await store.close();
  return { dir, dataDir };
}

test("a mesh site's data directory started without --swarm-key: exit 2 and one line naming the sites it knows and both ways out (hunt 163)", async (t) => {
  const { dataDir } = await formerMeshSite(t);
  const r = await start(dataDir);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(
    r.stderr,
    `pacs-mesh: --data ${dataDir} was a mesh site (its store knows site site-b and owes it 2 copies), and without --swarm-key it would run alone: C-STOREs acknowledged on its one copy, nothing owed sent: add --swarm-key FILE to rejoin the mesh, --standalone yes to run it alone on purpose\n`,
  );
});

test("a mesh site's data directory whose store knows no site (its catalog rebuilt at the open) but whose saved peers name one: refused without --swarm-key too (hunt 181)", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'site');
  const store = createReplicaStore({ path: join(dataDir, 'store') });
  await store.open();
  await store.close();
  const peerId = '12D3KooWBmAwcd4PJNJvfV89HwE48nwkRmAgo8Vy3uQEyNNHBox2';
  const nowMs = Date.now();
  writeFileSync(join(dataDir, 'known-peers.json'), JSON.stringify({ version: 1, writtenAtMs: nowMs, peers: [{ peerId, addrs: [`/ip4/127.0.0.1/tcp/9/p2p/${peerId}`], site: 'site-b', seenAtMs: nowMs }] }));
  const r = await start(dataDir);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`^pacs-mesh: --data ${dataDir} was a mesh site \\(its store and known-peers\\.json know site site-b\\), and without --swarm-key it would run alone`));
});

test("the ways out for a mesh site's data directory: --standalone yes runs it alone and says so in the log and /api/mesh; --swarm-key runs it in the mesh (hunt 163)", async (t) => {
  const { dir, dataDir } = await formerMeshSite(t);
  const alone = await serveOnce(t, dataDir, ['--standalone', 'yes', '--log-level', 'warn']);
  assert.deepEqual(alone.mesh.standalone, { otherSites: ['site-b'], debtEntries: 2 }, JSON.stringify(alone.mesh));
  assert.match(alone.stderr, /standalone on purpose \(--standalone yes\) on a data directory that was a mesh site: its store knows site site-b and owes it 2 copies/);
  const swarmKeyPath = join(dir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyPath);
  const inMesh = await serveOnce(t, dataDir, ['--swarm-key', swarmKeyPath, '--p2p-port', String(await getFreePort()), '--log-level', 'warn']);
  assert.equal(inMesh.mesh.standalone, undefined);
  assert.equal(typeof (inMesh.mesh.self as { peerId?: unknown }).peerId, 'string', 'a mesh peer');
  // The build, as `pacs-mesh --version` names it: what an operator upgrading one site at a time compares.
  assert.deepEqual((inMesh.mesh.self as { version?: unknown }).version, buildVersion());
  assert.deepEqual((alone.mesh.self as { version?: unknown }).version, buildVersion());
});

test('a lone site started with a swarm key that never met another site starts without the key: nothing to refuse (hunt 163)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'site');
  const swarmKeyPath = join(dir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyPath);
  await serveOnce(t, dataDir, ['--swarm-key', swarmKeyPath, '--p2p-port', String(await getFreePort()), '--log-level', 'warn']);
  assert.ok(existsSync(join(dataDir, 'peer-key')), 'it holds a peer identity');
  const alone = await serveOnce(t, dataDir, ['--log-level', 'warn']);
  assert.equal(alone.mesh.standalone, undefined);
  assert.doesNotMatch(alone.stderr, /mesh site/, alone.stderr);
});

/**
 * A data directory whose store knows site-b and owes it 40,000 copies, the table holding them damaged as a
 * disk would (bytes flipped in its first half, past what an open reads: footer, index): LevelDB's open
 * succeeds and the first read of the debt fails with "Corruption: ...".
 */
async function dataDirWithDamagedDebtTable(t: TestContext): Promise<{ dir: string; dataDir: string; storePath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'pacs-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'site');
  const storePath = join(dataDir, 'store');
  let store = createReplicaStore({ path: storePath });
  await store.open();
  await store.updateKnownSites([{ siteName: 'site-b', lastHeardMs: 1 }], []);
  for (let first = 1; first <= 40_000; first += 5_000) {
    await store.updateDebt(Array.from({ length: 5_000 }, (_, i) => ({ sopInstanceUid: `1.2.3.${first + i}`, siteName: 'site-b', sinceMs: 1 })), []);
  }
  await store.close();
  // Reopened once so the log becomes a table; its first half damaged, past the open's reads (footer, index).
  store = createReplicaStore({ path: storePath });
  await store.open();
  await store.close();
  const catalogDir = join(storePath, 'catalog');
  const table = readdirSync(catalogDir).filter((name) => name.endsWith('.ldb')).map((name) => join(catalogDir, name)).sort((a, b) => statSync(b).size - statSync(a).size)[0];
  assert.ok(table !== undefined, 'the debt is in a table');
  const bytes = readFileSync(table);
  for (let i = 1000; i < bytes.length / 2; i += 97) bytes[i]! ^= 0xff;
  writeFileSync(table, bytes);
  return { dir, dataDir, storePath };
}

test("a mesh site's data directory whose debt LevelDB cannot read (a damaged table), started without --swarm-key: exit 1 and one line naming the store and the way out, not LevelDB's bare error (hunt 167)", async (t) => {
  const { dataDir, storePath } = await dataDirWithDamagedDebtTable(t);
  const r = await start(dataDir);
  assert.equal(r.status, 1, r.stderr);
  // Hunt 169: the way out was 'move the data directory away and start on an empty one', which drops every
  // instance with the damaged catalog, those this site alone holds too (the copies it owes).
  assert.match(r.stderr, new RegExp(`^pacs-mesh: cannot read custody's records \\(known sites, copies owed\\) that a start without --swarm-key checks in ${storePath}: Corruption: [^\\n]+; its catalog is damaged, not the instances: if it was a mesh site, start it with --swarm-key FILE \\(that start marks the catalog, the next rebuilds it from the instances' commit records\\); or else move ${storePath}/catalog away to have it rebuilt \\(it then knows no site\\)\\n$`));
  // Not marked: rebuilt, it would know no site, and the same start restarted would run alone.
  assert.equal(existsSync(join(storePath, 'catalog-damaged')), false);
});

test("a mesh site whose debt LevelDB cannot read (a damaged table), started with its key: exit 1 and one line naming the store and saying to start again, and the next start rebuilds the catalog and serves (hunt 169)", async (t) => {
  const { dir, dataDir, storePath } = await dataDirWithDamagedDebtTable(t);
  const swarmKeyPath = join(dir, 'swarm.key');
  await writeSwarmKeyFile(swarmKeyPath);
  const meshArgs = async (): Promise<string[]> => ['--swarm-key', swarmKeyPath, '--p2p-port', String(await getFreePort()), '--log-level', 'warn'];
  // It was custody's actor failing 6 times in 3.5 s on 'Corruption: corrupted compressed block contents',
  // then 'the custody actor kept failing (Corruption: ...)', at every start: the catalog was never marked.
  const r = await start(dataDir, await meshArgs());
  assert.equal(r.status, 1, r.stderr);
  const lines = r.stderr.split('\n').filter((line) => line !== '');
  assert.match(
    lines.at(-1)!,
    new RegExp(`^pacs-mesh: cannot read custody's records \\(instances held, copies owed, known sites\\) in ${storePath}: Corruption: [^\\n]+; its catalog is marked damaged: start the peer again to rebuild it from the instances' commit records \\(nothing stored is lost; the sites it knew and the copies it owes them are learnt again in the mesh, from heartbeats and repair\\)$`),
  );
  assert.deepEqual(lines.filter((line) => !line.startsWith('{')), [lines.at(-1)], `one line beside the log's: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /restarting child|kept failing/, 'not restarted: the damage reads the same every time');
  assert.ok(existsSync(join(storePath, 'catalog-damaged')), 'marked for the next start');
  const again = await serveOnce(t, dataDir, await meshArgs());
  assert.match(again.stderr, /the catalog was found damaged: set aside, rebuilt from the instances' commit records/);
  assert.equal((again.mesh.custody as { debtEntries?: unknown }).debtEntries, 0, 'the debt went with the damaged catalog: repair finds what it owed');
});
