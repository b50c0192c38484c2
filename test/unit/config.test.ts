import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accessDigestOf, loadAeDirectory } from '../../src/ae-directory.ts';
import { runKeygen } from '../../src/keygen.ts';
import { ConfigError, defaultConfig, meshOnlyOptions, parseStartArgs, startOptionNames, testTimingsFromEnv, usage } from '../../src/config.ts';

test('defaults: the contract operators rely on (AE PACSMESH, DICOM 11112, HTTP 8042)', () => {
  const config = parseStartArgs([]);
  assert.equal(config.aeTitle, 'PACSMESH');
  assert.equal(config.dicomPort, 11112);
  assert.equal(config.httpPort, 8042);
  assert.equal(config.dataDir, '.data/site-a');
  assert.deepEqual(config.roster, []);
  assert.equal(config.scrubMbPerS, 16);
  assert.equal(config.sitePeers, 'one', 'a site name is claimed by one peer unless the operator says otherwise');
  assert.equal(defaultConfig.site, 'site-a');
});

test('every option parses, in both --name value and --name=value forms', () => {
  const peerId = '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs';
  const config = parseStartArgs([
    '--site', 'cardio', '--data=/tmp/x', '--ae-title', 'ARCHIVE', '--host', '127.0.0.1', '--dicom-port', '0',
    '--http-port', '8080', '--move-dest', 'VIEWER=10.0.0.5:104', '--allow-calling', 'CT1,MR1', '--max-pdu', '65536',
    '--ingest-buffer-mib', '64', '--max-associations', '8', '--idle-timeout', '30', '--swarm-key', 'k', '--p2p-port', '4101',
    '--bootstrap', `/ip4/127.0.0.1/tcp/4001/p2p/${peerId}`, '--write-quorum', '2', '--priority', '5',
    '--roster', `${peerId},${peerId}`, '--associations-per-peer', '4', '--log-level', 'warn',
    '--scrub-mb-per-s', '2.5', '--site-peers', 'several', '--http-connections-per-client', '0',
  ]);
  assert.equal(config.site, 'cardio');
  assert.equal(config.dataDir, '/tmp/x');
  assert.deepEqual(config.moveDestinations, { VIEWER: { host: '10.0.0.5', port: 104 } });
  assert.deepEqual(config.allowedCallingAeTitles, ['CT1', 'MR1']);
  assert.equal(config.idleTimeoutMs, 30_000);
  assert.equal(config.writeQuorum, 2);
  assert.deepEqual(config.roster, [peerId, peerId]);
  assert.equal(config.associationsPerPeer, 4);
  assert.equal(config.scrubMbPerS, 2.5);
  assert.equal(config.sitePeers, 'several');
  assert.equal(config.ingestBufferBytes, 64 * 1024 * 1024);
  assert.equal(parseStartArgs([]).ingestBufferBytes, 32 * 1024 * 1024, 'memory flat whatever the instance size by default');
  const admitted = parseStartArgs(['--swarm-key', 'k', '--election-voters', 'admitted', '--found-mesh=yes']);
  assert.deepEqual([admitted.electionVoters, admitted.foundMesh], ['admitted', 'yes']);
  assert.deepEqual([parseStartArgs([]).electionVoters, parseStartArgs([]).foundMesh], ['admitted', 'auto'], 'admitted voters by default, founded by a first start without --bootstrap');
  assert.equal(parseStartArgs(['--swarm-key', 'k', '--election-voters', 'learnt']).electionVoters, 'learnt');
  const pinned = parseStartArgs(['--swarm-key', 'k', '--roster', '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs']);
  assert.equal(pinned.electionVoters, 'learnt', 'a pinned roster: its own fixed voters, not the default admitted ones');
  assert.equal(parseStartArgs(['--swarm-key', 'k', '--election-voters', 'learnt', '--roster', '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs']).roster.length, 1, 'learnt and pinned, as before');
  assert.equal(config.httpConnectionsPerClient, 0, 'no cap per address (behind a reverse proxy)');
  assert.equal(parseStartArgs([]).httpConnectionsPerClient, undefined, 'a quarter of the port by default');
  assert.throws(() => parseStartArgs(['--http-connections-per-client', '2000']), /--http-connections-per-client/);
  assert.equal(parseStartArgs(['--scrub-mb-per-s=0']).scrubMbPerS, 0, '0 turns the scrub off');
  assert.deepEqual(parseStartArgs(['--move-dest', 'V6=[::1]:11112']).moveDestinations, { V6: { host: '::1', port: 11112 } }, 'an IPv6 host in brackets');
});

test('bad options are refused with a message naming the option', () => {
  const cases: Array<[string[], RegExp]> = [
    [['--dicom-port', '70000'], /--dicom-port/],
    [['--ingest-buffer-mib', '2'], /--ingest-buffer-mib/],
    [['--ingest-buffer-mib', '5000'], /--ingest-buffer-mib/],
    [['--ae-title', 'THIS-AE-TITLE-IS-TOO-LONG'], /AE title/],
    [['--ae-title', 'A\\B'], /AE title/],
    [['--move-dest', 'VIEWER'], /AET=host:port/],
    [['--move-dest', 'VIEWER=[10.0.0.5]:104'], /is not an IPv6 address/],
    [['--site', 'a b'], /--site/],
    [['--write-quorum', '0'], /--write-quorum/],
    [['--roster', 'not-a-peer-id'], /--roster/],
    [['--swarm-key', 'k', '--site-peers', '2'], /--site-peers "2" must be one or several/],
    [['--site-peers', 'several'], /--site-peers means something only in a mesh/],
    [['--swarm-key', 'k', '--election-voters', 'admited'], /--election-voters "admited" must be learnt or admitted/],
    [['--swarm-key', 'k', '--found-mesh', 'maybe'], /--found-mesh "maybe" must be yes, no or auto/],
    [['--swarm-key', 'k', '--election-voters', 'learnt', '--found-mesh', 'yes'], /--found-mesh .* contradicts --election-voters learnt/],
    [['--swarm-key', 'k', '--election-voters', 'admitted', '--roster', '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs'], /--election-voters admitted and --roster contradict/],
    [['--swarm-key', 'k', '--found-mesh', 'yes', '--roster', '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs'], /--found-mesh and --roster contradict/],
    [['--election-voters', 'admitted'], /--election-voters means something only in a mesh/],
    [['--scrub-mb-per-s', '-1'], /--scrub-mb-per-s/],
    [['--scrub-mb-per-s', 'fast'], /--scrub-mb-per-s/],
    [['--scrub-mb-per-s', ''], /--scrub-mb-per-s needs a value/],
    [['--bootstrap', '/ip4/1.2.3.4/tcp/1'], /requires --swarm-key/],
    // Values that would quietly mean something else.
    [['--dicom-port', ''], /--dicom-port needs a value/],
    [['--dicom-port', ' '], /--dicom-port needs a value/],
    [['--dicom-port', '0x2f4d'], /--dicom-port "0x2f4d" is not a port number/],
    [['--priority', '1e3'], /--priority/],
    [['--data', ''], /--data needs a value/],
    [['--swarm-key', ''], /--swarm-key needs a value/],
    [['--allow-calling', ','], /--allow-calling "," lists no AE title/],
    [['--allow-calling', 'MOD1,'], /--allow-calling "MOD1," has an empty item \(a stray comma\?\)/],
    [['--dicom-port', '11112', '--dicom-port', '11113'], /--dicom-port given twice/],
    [['--dicom-port', '9000', '--http-port', '9000'], /--dicom-port and --http-port are both 9000/],
    // Addresses a mesh cannot use, refused before anything starts (exit 2, one line).
    [['--host', 'localhost'], /--host "localhost" is not an IP address/],
    [['--host', '999.1.1.1'], /is not an IP address/],
    [['--host', '::1', '--swarm-key', 'k'], /must be an IPv4 address in a mesh/],
    [['--swarm-key', 'k', '--bootstrap', '/garbage'], /--bootstrap "\/garbage" is not a multiaddr/],
    [['--swarm-key', 'k', '--bootstrap', '/ip4/999.0.0.1/tcp/1'], /is not a multiaddr/],
    [['--swarm-key', 'k', '--bootstrap', '/ip4/127.0.0.1'], /is not an address of a peer's TCP port/],
    [['--swarm-key', 'k', '--bootstrap', '/ip4/127.0.0.1/tcp/4001/ws'], /is not an address of a peer's TCP port/],
    [['--swarm-key', 'k', '--bootstrap', '/ip4/127.0.0.1/tcp/0'], /names TCP port 0/],
    [['--allow-calling', 'A,,B'], /--allow-calling "A,,B" has an empty item/],
    [['--move-dest', 'X=127.0.0.1:104', '--move-dest', 'X=127.0.0.1:105'], /--move-dest X given twice/],
    [['--host', '--http-port', '8501'], /--host needs a value/],
    [['--p2p-port', '4001'], /--p2p-port means something only in a mesh: add --swarm-key/],
    [['--write-quorum', '2', '--priority', '3'], /--write-quorum, --priority mean something only in a mesh/],
    [['--move-dest', 'V6=::1:104'], /an IPv6 address goes in brackets, e.g. V6=\[::1\]:104/],
    [['--swarm-key', 'k', '--bootstrap', '/ip6/::1/tcp/4001'], /is not an address of a peer's TCP port/],
    [['--swarm-key', 'k', '--bootstrap', '/ip4/127.0.0.1/tcp/4001/p2p/notapeerid'], /is not a multiaddr|is not a PeerId/],
    [['--frobnicate'], /unknown option/],
    [['--site'], /needs a value/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseStartArgs(args), (e: unknown) => e instanceof ConfigError && e.code === 'ERR_CONFIG' && message.test(e.message), args.join(' '));
  }
});

test('the AE directory persists --move-dest destinations; a damaged file is a clear error, not a reset', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-ae-directory-'));
  try {
    const first = await loadAeDirectory(dir, { VIEWER: { host: '10.0.0.5', port: 104 } });
    assert.deepEqual(first.resolve('VIEWER'), { host: '10.0.0.5', port: 104 });
    assert.deepEqual((await loadAeDirectory(dir, {})).entries(), {}, 'nothing is written before persist (a start can still fail)');
    await first.persist();
    // A restart without --move-dest keeps it; a new one is added beside it.
    const second = await loadAeDirectory(dir, { WORKSTATION: { host: '127.0.0.1', port: 11120 }, V6: { host: '::1', port: 11121 } });
    await second.persist();
    assert.deepEqual(Object.keys(second.entries()).sort(), ['V6', 'VIEWER', 'WORKSTATION']);
    assert.deepEqual((await loadAeDirectory(dir, {})).resolve('V6'), { host: '::1', port: 11121 }, 'an IPv6 destination read back');
    assert.equal(second.resolve('UNKNOWN'), undefined);
    const file = join(dir, 'ae-directory.json');
    const cases: Array<[string, RegExp]> = [
      ['{garbage', /ae-directory\.json is not a valid AE directory: .*JSON/],
      ['[]', /not an object/],
      ['{"VIEWER": "10.0.0.5:104"}', /entry "VIEWER" must be \{"host": "<host>", "port": <number>\}/],
      ['{"VIEWER": {"host": "10.0.0.5", "port": 70000}}', /entry port/],
      ['{"TOO-LONG-FOR-AN-AE-TITLE": {"host": "10.0.0.5", "port": 104}}', /entry AE title/],
    ];
    for (const [content, message] of cases) {
      await writeFile(file, content);
      await assert.rejects(loadAeDirectory(dir, {}), (error: unknown) => error instanceof ConfigError && message.test(error.message), content);
    }
    // One it cannot read is named as such, not as "not a valid AE directory: EISDIR: ..." (hunt 162).
    await rm(file);
    await mkdir(file);
    await assert.rejects(loadAeDirectory(dir, {}), (error: unknown) => error instanceof ConfigError && error.message === `cannot read ${file}: illegal operation on a directory (EISDIR): give the peer's user access to it, or move it away (C-MOVE destinations come from --move-dest alone then)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('keygen: a key file where none can be written is one line, the usage when the file is missing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-keygen-'));
  try {
    await runKeygen(['--out', join(dir, 'key')]);
    await assert.rejects(runKeygen(['--out', join(dir, 'key')]), (e: unknown) => e instanceof ConfigError && /already exists/.test(e.message));
    await assert.rejects(runKeygen(['--out', join(dir, 'no-such-folder', 'key')]), (e: unknown) => e instanceof ConfigError && /cannot write the swarm key to .*: ENOENT/.test(e.message));
    await assert.rejects(runKeygen(['--out', '']), (e: unknown) => e instanceof ConfigError && /usage: pacs-mesh keygen --out FILE/.test(e.message));
    // A folder is not a key to remove (hunt 162: "remove it first" was the answer), and --out=FILE is taken as start takes its options.
    await assert.rejects(runKeygen(['--out', dir]), (e: unknown) => e instanceof ConfigError && e.message === `${dir} is a directory: give the path of the key file to create in it, e.g. --out ${dir}/swarm.key`);
    await assert.rejects(runKeygen(['--out', `${dir}/`]), (e: unknown) => e instanceof ConfigError && e.message === `${dir}/ is a directory: give the path of the key file to create in it, e.g. --out ${dir}/swarm.key`);
    assert.equal(await runKeygen([`--out=${join(dir, 'key2')}`]), 0);
    assert.match(readFileSync(join(dir, 'key2'), 'utf8'), /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/);
    await assert.rejects(runKeygen(['--out=']), (e: unknown) => e instanceof ConfigError && /usage: pacs-mesh keygen --out FILE/.test(e.message));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('accessDigestOf: the same destinations and allow-list in any order give one digest; any difference another', () => {
  const viewer = { host: '10.0.0.5', port: 104 };
  const ws = { host: '10.0.0.6', port: 11112 };
  const base = accessDigestOf({ VIEWER: viewer, WS: ws }, ['CT1', 'MR1']);
  assert.match(base, /^[0-9a-f]{16}$/);
  assert.equal(accessDigestOf({ WS: ws, VIEWER: viewer }, ['MR1', 'CT1', 'CT1']), base);
  for (const other of [
    accessDigestOf({ VIEWER: viewer }, ['CT1', 'MR1']),
    accessDigestOf({ VIEWER: { ...viewer, port: 105 }, WS: ws }, ['CT1', 'MR1']),
    accessDigestOf({ VIEWER: viewer, WS: { ...ws, host: '10.0.0.7' } }, ['CT1', 'MR1']),
    accessDigestOf({ VIEWER: viewer, WS: ws }, ['CT1']),
    accessDigestOf({ VIEWER: viewer, WS: ws }, []),
  ]) assert.notEqual(other, base);
});

test('--help and the README list every option, and the README names every option refused without --swarm-key', () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const synopsis = /## The command\n+```\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
  // The sentence that says which options need a mesh (hunt 109: --site-peers was refused but not named there).
  const meshSentence = /the mesh's options \(([^)]*)\) need `--swarm-key`/.exec(readme.replace(/\s+/g, ' '))?.[1] ?? '';
  for (const name of startOptionNames) {
    assert.match(usage, new RegExp(`^  ${name} `, 'm'), `--help lists ${name}`);
    assert.ok(synopsis.includes(`[${name} `) || synopsis.includes(` ${name} `), `README's synopsis lists ${name}`);
  }
  for (const name of meshOnlyOptions) {
    assert.ok(meshSentence.includes(`\`${name}\``), `README names ${name} among the options that need --swarm-key`);
    const valid: Record<string, string> = { '--bootstrap': '/ip4/127.0.0.1/tcp/4001', '--site-peers': 'several', '--roster': '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs', '--election-voters': 'admitted', '--found-mesh': 'no' };
    const value = valid[name] ?? '2';
    assert.throws(() => parseStartArgs([name, value]), ConfigError, `${name} without --swarm-key is refused`);
  }
});

test('--move-dest takes any AE title, those that name members of every JavaScript object too (hunt 136)', () => {
  // "constructor" was refused as "given twice", and "__proto__" set the prototype of the list: no destination.
  const { moveDestinations } = parseStartArgs(['--move-dest', 'constructor=127.0.0.1:104', '--move-dest', '__proto__=127.0.0.1:105']);
  assert.deepEqual(Object.keys(moveDestinations).sort(), ['__proto__', 'constructor']);
  assert.deepEqual(Object.getOwnPropertyDescriptor(moveDestinations, '__proto__')?.value, { host: '127.0.0.1', port: 105 });
  assert.throws(() => parseStartArgs(['--move-dest', 'toString=127.0.0.1:104', '--move-dest', 'toString=127.0.0.1:105']), /--move-dest toString given twice/);
});

test('PACS_MESH_ISOLATION_CHECK_MS and PACS_MESH_JOIN_WAIT_MS (tests only): unset keep the defaults; a bad value is a configuration error', () => {
  const config = parseStartArgs([]);
  assert.equal(config.isolationCheckMs, undefined, 'no option sets it');
  assert.equal(config.joinWaitAfterStartMs, undefined, 'no option sets it');
  assert.deepEqual(testTimingsFromEnv({}), {});
  assert.deepEqual(testTimingsFromEnv({ PACS_MESH_ISOLATION_CHECK_MS: '', PACS_MESH_JOIN_WAIT_MS: '' }), {});
  assert.deepEqual(testTimingsFromEnv({ PACS_MESH_ISOLATION_CHECK_MS: '1000', PACS_MESH_JOIN_WAIT_MS: '0' }), { isolationCheckMs: 1000, joinWaitAfterStartMs: 0 });
  for (const value of ['0', '-1', '1e3', '2s', ' ']) assert.throws(() => testTimingsFromEnv({ PACS_MESH_ISOLATION_CHECK_MS: value }), ConfigError, value);
  for (const value of ['-1', '1.5', 'never']) assert.throws(() => testTimingsFromEnv({ PACS_MESH_JOIN_WAIT_MS: value }), ConfigError, value);
  // A slow refill (hunt 187): keys per repair exchange, 1 or more.
  assert.deepEqual(testTimingsFromEnv({ PACS_MESH_REPAIR_KEYS_MAX: '4' }), { repairKeysMax: 4 });
  for (const value of ['0', '-1', 'all']) assert.throws(() => testTimingsFromEnv({ PACS_MESH_REPAIR_KEYS_MAX: value }), ConfigError, value);
  assert.deepEqual(testTimingsFromEnv({ PACS_MESH_FORGET_REPUBLISH_MS: '2000' }), { forgetRepublishIntervalMs: 2000 });
  for (const value of ['0', '-5', 'hourly']) assert.throws(() => testTimingsFromEnv({ PACS_MESH_FORGET_REPUBLISH_MS: value }), ConfigError, value);
  assert.deepEqual(testTimingsFromEnv({ PACS_MESH_ALONE_JOIN_WAIT_MS: '3000' }), { aloneJoinWaitMs: 3000 });
  for (const value of ['-1', 'soon']) assert.throws(() => testTimingsFromEnv({ PACS_MESH_ALONE_JOIN_WAIT_MS: value }), ConfigError, value);
});

test('--standalone yes|no (hunt 163): no by default; yes runs a mesh site\'s data directory alone, so it contradicts --swarm-key', () => {
  assert.equal(parseStartArgs([]).standalone, false, 'a mesh site\'s data directory started without its key is refused unless said');
  assert.equal(parseStartArgs(['--standalone', 'yes']).standalone, true);
  assert.equal(parseStartArgs(['--standalone=no']).standalone, false);
  assert.equal(parseStartArgs(['--swarm-key', 'k', '--standalone', 'no']).standalone, false, 'no changes nothing in a mesh');
  assert.throws(() => parseStartArgs(['--standalone', 'true']), /--standalone "true" must be yes or no/);
  assert.throws(() => parseStartArgs(['--swarm-key', 'k', '--standalone', 'yes']), /--standalone yes and --swarm-key contradict each other/);
});

test('--found-mesh auto: --bootstrap names another peer unless every address is this peer\'s own (by PeerId, or its --p2p-port at its --host)', async () => {
  const { bootstrapsElsewhere } = await import('../../src/mesh.ts');
  const self = '12D3KooWQHsS787L8AzjVn2dVqmy7hZ1cNRjoiFSyTPauZywEUAs';
  const other = '12D3KooWJWEKvSFbben74C2aUjLq2AuVE2UPEd2xMPd3hxw7R8k9';
  const config = (...bootstrap: string[]) => ({ bootstrap, host: '10.0.0.1', p2pPort: 4001 });
  assert.equal(bootstrapsElsewhere(config(), self), false, 'no --bootstrap: the first site founds');
  assert.equal(bootstrapsElsewhere(config(`/ip4/10.0.0.1/tcp/4001/p2p/${self}`), self), false);
  assert.equal(bootstrapsElsewhere(config(`/ip4/10.0.0.1/tcp/4001/p2p/${self}`, `/ip4/10.0.0.2/tcp/4001/p2p/${other}`), self), true);
  assert.equal(bootstrapsElsewhere(config('/ip4/10.0.0.1/tcp/4001'), self), false, 'its own address without a PeerId');
  assert.equal(bootstrapsElsewhere(config('/ip4/10.0.0.1/tcp/4002'), self), true, 'another port');
  assert.equal(bootstrapsElsewhere(config('/dns4/pacs-b.example/tcp/4001'), self), true);
  assert.equal(bootstrapsElsewhere({ bootstrap: ['/ip4/127.0.0.1/tcp/4001'], host: '0.0.0.0', p2pPort: 4001 }, self), false, 'listening on every address: its port at loopback');
  assert.equal(bootstrapsElsewhere({ bootstrap: ['/ip4/10.0.0.9/tcp/4001'], host: '0.0.0.0', p2pPort: 4001 }, self), true, 'another site on the usual port');
});
