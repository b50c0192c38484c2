/**
 * scripts/deploy/: the systemd unit and the two example sites docs/deploy.md installs. Their options must be ones the
 * command takes, and the unit one systemd reads without a complaint (where `systemd-analyze` is installed).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseStartArgs } from '../../src/config.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const deployDir = join(root, 'scripts', 'deploy');
const unitText = readFileSync(join(deployDir, 'pacs-mesh@.service'), 'utf8');

/** The words of PACS_MESH_ARGS in an example site file, as systemd splits `$PACS_MESH_ARGS`. */
function siteArgs(file: string): string[] {
  const line = readFileSync(join(deployDir, file), 'utf8').split('\n').find((l) => l.startsWith('PACS_MESH_ARGS='));
  assert.ok(line, `${file} sets PACS_MESH_ARGS`);
  return line.slice('PACS_MESH_ARGS='.length).trim().split(/\s+/);
}

test('the example sites are command lines the command takes: the first founds, the other joins through it; each data directory is the unit\'s state directory', () => {
  const first = parseStartArgs(siteArgs('site-a.env'));
  const joining = parseStartArgs(siteArgs('site-b.env'));
  for (const [file, config] of [['site-a.env', first], ['site-b.env', joining]] as const) {
    assert.equal(config.dataDir, `/var/lib/pacs-mesh/${config.site}`, `${file}: --data is StateDirectory=pacs-mesh/%i for pacs-mesh@${config.site}`);
    assert.equal(config.swarmKeyFile, '/etc/pacs-mesh/swarm.key', `${file}: one swarm key file at every site`);
    assert.equal(`${file}`, `${config.site}.env`, 'the file is named after its site, as EnvironmentFile=/etc/pacs-mesh/%i.env reads it');
  }
  assert.deepEqual(first.bootstrap, [], 'the first site names no other');
  assert.deepEqual(joining.bootstrap, [`/ip4/${first.host}/tcp/${first.p2pPort}`], "the joining site bootstraps from the first's libp2p port");
  assert.match(unitText, /^ExecStart=\/opt\/pacs-mesh\/bin\/pacs-mesh\.js start \$PACS_MESH_ARGS$/m);
  assert.match(unitText, /^RestartPreventExitStatus=2$/m, 'a configuration error (exit 2) is not restarted');
});

test('systemd reads the unit without a complaint', (t) => {
  if (spawnSync('systemd-analyze', ['--version']).status !== 0) {
    t.skip('systemd-analyze is not installed');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'pacs-deploy-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // The paths of an installed site, moved to this checkout and a temporary environment file.
  writeFileSync(join(dir, 'site-a.env'), readFileSync(join(deployDir, 'site-a.env')));
  const unit = join(dir, 'pacs-mesh@site-a.service');
  writeFileSync(unit, unitText.replaceAll('/opt/pacs-mesh', root.replace(/\/$/, '')).replace('/etc/pacs-mesh/%i.env', join(dir, '%i.env')));
  const verified = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', cwd: dir });
  assert.equal(verified.status, 0, verified.stderr);
  assert.equal(verified.stderr.trim(), '', 'no warning (an unknown key, say, is only a warning)');
});
