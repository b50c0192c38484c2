/** A logger for tests that keeps each line's message (and passes it on when PACS_MESH_TEST_LOG is set). */
import { createLogger, type Logger } from '../../src/actors/runtime/logger.ts';

/** A logged line with its own fields (not the child loggers' base fields). */
export interface RecordedLine {
  message: string;
  fields?: Record<string, unknown>;
}

/** `messages` gets each message; `lines`, when given, each message with its fields. */
export function recordingLogger(messages: string[], base: Record<string, unknown> = {}, lines?: RecordedLine[]): Logger {
  const out = createLogger(base, process.env.PACS_MESH_TEST_LOG ? 'info' : 'silent');
  const at = (emit: (m: string, f?: Record<string, unknown>) => void) => (m: string, f?: Record<string, unknown>) => {
    messages.push(m);
    lines?.push({ message: m, fields: f });
    emit(m, f);
  };
  return { info: at(out.info), warn: at(out.warn), error: at(out.error), child: (fields) => recordingLogger(messages, { ...base, ...fields }, lines) };
}
