/**
 * `npm start`'s options (scripts/local-mesh-options.ts): what it does not understand is refused, never
 * taken as absent (`--base-port=N` started the mesh on the default ports, hunt 162).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LocalMeshOptionError, parseLocalMeshOptions } from '../../scripts/local-mesh-options.ts';

test('npm start: the defaults, and each option in both --name value and --name=value forms', () => {
  assert.deepEqual(parseLocalMeshOptions([]), { siteCount: 3 });
  assert.deepEqual(parseLocalMeshOptions(['--sites', '1', '--data', '/tmp/m', '--base-port', '27700']), { siteCount: 1, dataRoot: '/tmp/m', basePort: 27700 });
  assert.deepEqual(parseLocalMeshOptions(['--sites=5', '--data=/tmp/m', '--base-port=1024']), { siteCount: 5, dataRoot: '/tmp/m', basePort: 1024 });
});

test('npm start: an unknown option, a missing value, a repeat or a value out of range is refused with its reason', () => {
  const cases: Array<[string[], RegExp]> = [
    [['--base-prot', '5000'], /unknown option "--base-prot"/],
    [['5000'], /unknown option "5000"/],
    [['--base-port'], /option --base-port needs a value/],
    [['--base-port', '--sites', '2'], /option --base-port needs a value/],
    [['--base-port='], /option --base-port needs a value/],
    [['--sites', '2', '--sites=3'], /option --sites given twice/],
    [['--sites', '6'], /--sites must be 1-5, not "6"/],
    [['--sites', 'three'], /--sites must be 1-5, not "three"/],
    [['--base-port', '80'], /--base-port must be 1024-65000, not "80"/],
    [['--base-port=5000x'], /--base-port must be 1024-65000, not "5000x"/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseLocalMeshOptions(args), (error: unknown) => error instanceof LocalMeshOptionError && message.test(error.message), args.join(' '));
  }
});
