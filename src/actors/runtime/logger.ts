/** Structured one-line JSON logs on stderr; tests pass a silent logger. */
export interface Logger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

type Level = 'info' | 'warn' | 'error';

export function createLogger(base: Record<string, unknown> = {}, minimum: Level | 'silent' = 'info'): Logger {
  const order: Record<Level, number> = { info: 0, warn: 1, error: 2 };
  const emit = (level: Level, message: string, fields?: Record<string, unknown>) => {
    if (minimum === 'silent' || order[level] < order[minimum]) return;
    // The base fields (which process, which component) win: a call's own field of the same name would
    // otherwise relabel the line (a `site` naming the destination read as the site that logged it).
    process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, message, ...fields, ...base })}\n`);
  };
  return {
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => createLogger({ ...base, ...fields }, minimum),
  };
}

export const silentLogger: Logger = createLogger({}, 'silent');

/** What to log of something thrown: an Error's message, else the value itself as text. */
export function errorText(error: unknown): string {
  // Some libp2p streams reject with a DOM Event (an abort or close event) rather than an Error.
  if (typeof Event !== 'undefined' && error instanceof Event) {
    const inner = (error as Event & { error?: unknown }).error;
    return inner === undefined ? `${error.type} event` : errorText(inner);
  }
  return String((error as Error)?.message ?? error);
}

/**
 * Warnings that can repeat many times a second (a peer whose store refuses every stream): the first per
 * key in each `intervalMs` is logged, the others counted and reported on the next line logged for that
 * key (`repeatsNotLogged`). At most `keysMax` keys are tracked; the oldest is dropped beyond that.
 */
export function createRepeatLimiter(log: Logger, intervalMs: number, nowMs: () => number = () => performance.now(), keysMax = 1024) {
  const byKey = new Map<string, { lastLoggedMs: number; repeatsNotLogged: number }>();
  const emit = (level: 'info' | 'warn', key: string, message: string, fields: Record<string, unknown>): void => {
    const now = nowMs();
    const seen = byKey.get(key);
    if (seen !== undefined && now - seen.lastLoggedMs < intervalMs) {
      seen.repeatsNotLogged++;
      return;
    }
    const repeatsNotLogged = seen?.repeatsNotLogged ?? 0;
    byKey.delete(key);
    byKey.set(key, { lastLoggedMs: now, repeatsNotLogged: 0 });
    if (byKey.size > keysMax) byKey.delete(byKey.keys().next().value!);
    log[level](message, repeatsNotLogged > 0 ? { ...fields, repeatsNotLogged } : fields);
  };
  return {
    info: (key: string, message: string, fields: Record<string, unknown> = {}): void => emit('info', key, message, fields),
    warn: (key: string, message: string, fields: Record<string, unknown> = {}): void => emit('warn', key, message, fields),
  };
}
