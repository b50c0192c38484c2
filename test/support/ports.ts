/**
 * Ports for tests that must not meet a stranger: below Linux's ephemeral range (32768-60999), where listen(0)
 * and outgoing connections take theirs. A port freed and taken again there was redialled by another test file's
 * peer (the throttle proxy forwarded 72 bytes not its own: npm test, 2026-12-05), or became a connection's own
 * source port (a loopback self-connect: a tunnel to a closed port opened, 2026-12-04).
 */
import { createServer } from 'node:net';

/** A port free on 127.0.0.1 when asked, in 20000-31999: listen on it, or use it as one nothing listens on. */
export async function portBelowEphemeralRange(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const probe = createServer();
    const free = await new Promise<boolean>((resolve) => {
      probe.once('error', () => resolve(false));
      probe.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (!free) continue;
    await new Promise((r) => probe.close(r));
    return port;
  }
}
