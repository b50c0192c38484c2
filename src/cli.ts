/**
 * The `pacs-mesh` command. Operators' scripts depend on its options and exit codes:
 * 0 clean stop, 1 runtime failure, 2 bad command line or configuration.
 */
import './polyfill.ts';
import { ConfigError, parseStartArgs, testTimingsFromEnv, usage } from './config.ts';
import { StoreError } from './actors/storage/replica-store.ts';
import { failureText, startPeer } from './peer.ts';
import { versionText } from './version.ts';

/** Errors whose message says all (a data directory in use, a store that cannot open, a damaged file, a child that kept failing at start). */
const oneLineErrorCodes = new Set(['ERR_STORE_LOCKED', 'ERR_STORE_OPEN', 'ERR_STORE_CATALOG_DAMAGED', 'ERR_PEER_KEY', 'ERR_BALANCER_STATE_FILE', 'ERR_CHILD_FAILED']);

/**
 * Whether --help or -h stands where an option name does. Every option takes a value, after it or after
 * `=` (as parseStartArgs reads them), so a value that reads "--help" asks for nothing.
 */
function asksForHelp(args: readonly string[]): boolean {
  for (let i = 0; i < args.length; i += args[i]!.startsWith('--') && args[i]!.includes('=') ? 1 : 2) {
    if (args[i] === '--help' || args[i] === '-h') return true;
  }
  return false;
}

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `pacs-mesh start --help` (or keygen's): the usage, as `pacs-mesh --help` gives it.
  if ((command === 'start' || command === 'keygen') && asksForHelp(rest)) {
    process.stdout.write(usage);
    return 0;
  }
  switch (command) {
    case 'start': {
      const config = { ...parseStartArgs(rest), ...testTimingsFromEnv(process.env) };
      portOptions.set(config.dicomPort, '--dicom-port').set(config.httpPort, '--http-port');
      // Logs are best effort: a log pipe that closes (a log shipper restarting, `| head`) must not stop
      // the site; without a listener the first write after it (EPIPE) ended the process with nothing said.
      for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
      // A promise rejected with no handler is a bug in one operation, not a reason to drop every
      // association and mesh link of the site (acknowledged data is durable before its ack either way):
      // report it, with its stack for the bug report, and serve on. Tests fail on this line.
      process.on('unhandledRejection', (reason) => {
        const detail = reason instanceof Error ? (reason.stack ?? reason.message) : String(reason);
        process.stderr.write(`pacs-mesh: ERR_UNHANDLED_REJECTION (a bug; the peer serves on): ${detail}\n`);
      });
      // Signals count from the first moment: one during the start stops the peer as soon as it has
      // started (a default SIGTERM would kill it half-started); SIGHUP (the terminal went away) stops it
      // the same way; more while it stops are only acknowledged, the drain goes on.
      let started = false;
      const signalled = new Promise<null>((resolve) => {
        let stopping = false;
        for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
          process.on(signal, () => {
            if (stopping) {
              const when = started ? 'while stopping: the peer stops as soon as its associations and HTTP requests have drained' : 'while starting: the peer stops as soon as it has started';
              process.stderr.write(`pacs-mesh: ${signal} ${when}\n`);
            }
            stopping = true;
            resolve(null);
          });
        }
        // Those that came while bin/pacs-mesh.js was loading this command.
        const early = (globalThis as Record<symbol, { signals: string[]; release(): void } | undefined>)[Symbol.for('pacs-mesh.early-signals')];
        early?.release();
        if (early !== undefined && early.signals.length > 0) {
          stopping = true;
          resolve(null);
        }
      });
      const peer = await startPeer(config);
      started = true;
      const failure = await Promise.race([signalled, peer.failed]);
      if (failure !== null) {
        // A copied --site is a configuration error (exit 2): restarting the peer as it is would not cure it.
        const outcome = failure.kind === 'siteNameTaken' ? 'stopping the peer (exit 2)' : 'stopping the peer (exit 1) for its service manager to restart it';
        process.stderr.write(`pacs-mesh: ${failureText(failure)}: ${outcome}\n`);
      }
      await peer.stop();
      return failure === null ? 0 : failure.kind === 'siteNameTaken' ? 2 : 1;
    }
    case 'keygen': {
      const { runKeygen } = await import('./keygen.ts');
      return runKeygen(rest);
    }
    case '--version':
    case '-V':
    case 'version':
      process.stdout.write(`${versionText()}\n`);
      return 0;
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(usage);
      return command === undefined ? 2 : 0;
    default:
      throw new ConfigError(`unknown command "${command}": the commands are start, keygen and version (see pacs-mesh --help)`);
  }
}

/** The option each port of this start came from, so that a port in use is named as the operator set it. */
const portOptions = new Map<number, string>();

/** The system's refusals to listen that have one cause and one way out each. */
const listenFailureCodes = new Set(['EADDRINUSE', 'EADDRNOTAVAIL', 'EACCES']);

/**
 * The line for a port that cannot be listened on, the same for the DICOM, HTTP and libp2p ports: each code
 * has one cause and one way out, so say that one, not a guess between them (a privileged --p2p-port was
 * told "is another process using it?").
 */
function listenFailureText(code: string, address: string | undefined, port: number | undefined, option: string | undefined): string {
  const why =
    code === 'EADDRINUSE'
      ? `another process is listening there: stop it, or choose another ${option ?? 'port'}`
      : code === 'EADDRNOTAVAIL'
        ? `${address ?? 'the address'} is not an address of this machine: give --host one of its addresses (0.0.0.0 for every interface)`
        : port !== undefined && port < 1024
          ? `ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port from 1024 up, or grant the capability`
          : `the system refused it (a security policy: SELinux, AppArmor or a container's): allow the port there, or choose another`;
  // The option names the listener that failed, beside its address; the way out is in `why` (once).
  return `cannot listen on ${address ?? '?'}:${port ?? '?'} (${option ? `${option}, ` : ''}${code}): ${why}`;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof ConfigError) {
      process.stderr.write(`pacs-mesh: ${error.message}\n`);
      process.exit(2);
    }
    // A data directory of another layout or a newer store format is a configuration problem; one in use, on a full disk, or with a
    // damaged file, a runtime one. Their messages name the file and the way out: no stack trace.
    if (error instanceof StoreError && (error.code === 'ERR_STORE_LAYOUT' || error.code === 'ERR_STORE_FORMAT')) {
      process.stderr.write(`pacs-mesh: ${error.message}\n`);
      process.exit(2);
    }
    const errorCode = (error as { code?: unknown } | undefined)?.code;
    if (error instanceof Error && typeof errorCode === 'string' && oneLineErrorCodes.has(errorCode)) {
      process.stderr.write(`pacs-mesh: ${error.message}\n`);
      process.exit(1);
    }
    // libp2p wraps its listen failure in one error whose message holds the system's ("listen EACCES: ... 127.0.0.1:999").
    if (error instanceof Error && error.name === 'UnsupportedListenAddressesError') {
      const detail = /listen (\w+)[^\n]*?(\d+\.\d+\.\d+\.\d+):(\d+)/.exec(error.message);
      if (detail && listenFailureCodes.has(detail[1]!)) {
        process.stderr.write(`pacs-mesh: ${listenFailureText(detail[1]!, detail[2]!, Number(detail[3]), '--p2p-port')}\n`);
      } else {
        // Another refusal: quote the system's reason (its line, without the stack) rather than guess one.
        const reason = /\/tcp\/\d+: ([^\n]*)/.exec(error.message)?.[1] ?? error.message.split('\n')[0];
        process.stderr.write(`pacs-mesh: cannot listen on the libp2p port: ${reason} (--p2p-port)\n`);
      }
      process.exit(1);
    }
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code !== undefined && listenFailureCodes.has(code)) {
      const { address, port } = error as NodeJS.ErrnoException & { address?: string; port?: number };
      process.stderr.write(`pacs-mesh: ${listenFailureText(code, address, port, port === undefined ? undefined : portOptions.get(port))}\n`);
      process.exit(1);
    }
    process.stderr.write(`pacs-mesh: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
