// Parses captured JSON-lines log output, so tests never split and parse it by hand.
import { createLogger, type Logger, type LogLevel } from '../../lib/log.ts';

/** Every non-empty line of `text`, parsed as JSON. */
export function logLines(text: string): Array<Record<string, unknown>> {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** A logger whose output the test reads back: as text, or each line parsed. */
export function capturingLog(level: LogLevel = 'debug'): {
  log: Logger;
  text(): string;
  lines(): Array<Record<string, unknown>>;
} {
  const chunks: string[] = [];
  const log = createLogger({ level, sink: (chunk) => chunks.push(chunk) });
  const text = (): string => {
    log.flush();
    return chunks.join('');
  };
  return { log, text, lines: () => logLines(text()) };
}
