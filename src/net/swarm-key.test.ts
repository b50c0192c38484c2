import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKey } from '@libp2p/pnet';
import { generateSwarmKey, parseSwarmKey, readSwarmKeyFile, writeSwarmKeyFile } from './swarm-key.ts';
import { SwarmKeyError } from './errors.ts';

const HEX = 'dffb7e3135399a8b1612b2aaca1c36a3a8ac2cd0cca51ceeb2ced87d308cac6d';

function assertCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => err instanceof SwarmKeyError && err.name === 'SwarmKeyError' && err.code === code);
}

describe('swarm key', () => {
  it('generates keys in the standard format, distinct each time', () => {
    const a = generateSwarmKey();
    const b = generateSwarmKey();
    assert.match(a.text, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/);
    assert.equal(a.psk.byteLength, 32);
    assert.notEqual(a.text, b.text);
    assert.deepEqual(parseSwarmKey(a.text).psk, a.psk);
    assert.match(a.fingerprint, /^[0-9a-f]{16}$/);
  });

  it('parses keys written by @libp2p/pnet, with CRLF, trailing newline, upper-case hex, base64', () => {
    const buf = new Uint8Array(95);
    generateKey(buf);
    assert.equal(parseSwarmKey(buf).psk.byteLength, 32);
    const k = parseSwarmKey(`/key/swarm/psk/1.0.0/\r\n/base16/\r\n${HEX.toUpperCase()}\r\n`);
    assert.equal(Buffer.from(k.psk).toString('hex'), HEX);
    const b64 = Buffer.from(HEX, 'hex').toString('base64');
    assert.deepEqual(parseSwarmKey(`/key/swarm/psk/1.0.0/\n/base64/\n${b64}\n`).psk, k.psk);
    // Blank lines before and after, as an editor or a copy-paste leaves them.
    assert.deepEqual(parseSwarmKey(`\n \n/key/swarm/psk/1.0.0/\n/base16/\n${HEX}\n\n`).psk, k.psk);
  });

  it('rejects malformed keys with clear codes', () => {
    assertCode(() => parseSwarmKey(''), 'ERR_SWARM_KEY_FORMAT');
    assertCode(() => parseSwarmKey(HEX), 'ERR_SWARM_KEY_FORMAT');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/2.0.0/\n/base16/\n${HEX}`), 'ERR_SWARM_KEY_FORMAT');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/1.0.0/\n/base16/\n${HEX}\nextra`), 'ERR_SWARM_KEY_FORMAT');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/1.0.0/\n/bin/\n${HEX}`), 'ERR_SWARM_KEY_ENCODING');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/1.0.0/\n/base16/\n${HEX.slice(0, 63)}z`), 'ERR_SWARM_KEY_ENCODING');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/1.0.0/\n/base16/\n${HEX.slice(0, 62)}`), 'ERR_SWARM_KEY_LENGTH');
    assertCode(() => parseSwarmKey(`/key/swarm/psk/1.0.0/\n/base16/\n${HEX}00`), 'ERR_SWARM_KEY_LENGTH');
  });

  it('writes 0600 files, never overwrites, reads them back, names the path in errors', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pacs-mesh-swarm-'));
    try {
      const path = join(dir, 'swarm.key');
      const key = await writeSwarmKeyFile(path);
      assert.equal((await stat(path)).mode & 0o777, 0o600);
      const back = await readSwarmKeyFile(path);
      assert.deepEqual(back.psk, key.psk);
      assert.equal(back.permissionsTooOpen, false);
      await assert.rejects(writeSwarmKeyFile(path), /EEXIST/);
      await assert.rejects(readSwarmKeyFile(join(dir, 'missing')), (err: unknown) => err instanceof SwarmKeyError && err.code === 'ERR_SWARM_KEY_READ' && err.message.includes('missing'));
      const bad = join(dir, 'bad.key');
      await writeFile(bad, 'hello', { mode: 0o644 });
      await assert.rejects(readSwarmKeyFile(bad), (err: unknown) => err instanceof SwarmKeyError && err.code === 'ERR_SWARM_KEY_FORMAT' && err.message.includes('bad.key'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
