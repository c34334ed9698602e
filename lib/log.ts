// JSON-lines logger with levels, child bindings and redaction; writes are batched.
//
// One line per event on stdout, which journald captures. Lines are buffered and written once
// per event-loop turn (or when the buffer grows large), never synchronously per request, and
// flushed synchronously when the process exits. Every line is scrubbed before it is buffered
// (lib/redact.ts), whatever the caller passed in; only the access log's fast path, whose fields
// are known safe, skips that. No string field, message or stack in a line is longer than 2 KB.
import { writeSync } from 'node:fs';
import { createRedactor, REDACTED, type Redactor } from './redact.ts';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
const LEVEL_VALUE: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export type Fields = Record<string, unknown>;

/** Where finished lines go: a file descriptor, or a function (tests capture lines this way). */
export type LogSink = number | ((chunk: string) => void);

export interface LoggerOptions {
  level?: LogLevel;
  /** Secret values that must never be written; redacted wherever they appear. */
  secrets?: readonly string[];
  sink?: LogSink;
  /** Flush when this many bytes are buffered, even inside one event-loop turn. */
  maxBufferBytes?: number;
}

// Header and field names whose values are credentials, whatever object they sit in.
const SECRET_KEYS = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'password',
  'apikey',
  'api_key',
  'secret',
  'token',
]);
/** The longest string a line carries in one field (message, stack, any value); the rest is cut and marked. */
export const MAX_FIELD_CHARS = 2048;
// A cause chain is bounded in depth and an AggregateError in breadth; this bounds their product.
const MAX_ERRORS_PER_FIELD = 20;

class Output {
  readonly level: number;
  redactor: Redactor;
  #secrets: readonly string[];
  /** The JSON.stringify replacer of every field: credential keys redacted, errors expanded, long strings cut. */
  readonly replacer: (this: unknown, key: string, value: unknown) => unknown;
  readonly #sink: LogSink;
  readonly #maxBufferBytes: number;
  #buffer: string[] = [];
  #bufferBytes = 0;
  #scheduled = false;

  constructor(options: LoggerOptions) {
    this.level = LEVEL_VALUE[options.level ?? 'info'];
    this.#secrets = options.secrets ?? [];
    this.redactor = createRedactor(this.#secrets);
    const out = this;
    this.replacer = function replacer(key, value) {
      if (key !== '' && SECRET_KEYS.has(key.toLowerCase())) return REDACTED;
      if (typeof value === 'string') return cut(value, out.redactor);
      if (value instanceof Error) return serialiseError(value, 0, { left: MAX_ERRORS_PER_FIELD });
      if (typeof value === 'bigint') return value.toString();
      return value;
    };
    this.#sink = options.sink ?? 1;
    this.#maxBufferBytes = options.maxBufferBytes ?? 64 * 1024;
  }

  addSecrets(values: readonly string[]): void {
    this.#secrets = [...this.#secrets, ...values];
    this.redactor = createRedactor(this.#secrets);
  }

  push(line: string): void {
    this.#buffer.push(line);
    this.#bufferBytes += line.length;
    if (this.#bufferBytes >= this.#maxBufferBytes) {
      this.flush();
    } else if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.#scheduled = false;
    if (this.#buffer.length === 0) return;
    const chunk = this.#buffer.join('');
    this.#buffer = [];
    this.#bufferBytes = 0;
    const sink = this.#sink;
    if (typeof sink === 'function') {
      sink(chunk);
      return;
    }
    writeAll(sink, chunk);
  }
}

/** At most MAX_FIELD_CHARS of text, marked when cut; the kept part is scrubbed across the cut. */
function cut(text: string, redactor: Redactor): string {
  if (text.length <= MAX_FIELD_CHARS) return text;
  return `${redactor.head(text, MAX_FIELD_CHARS)}…[cut ${text.length - MAX_FIELD_CHARS} characters]`;
}

function writeAll(fd: number, chunk: string): void {
  // The string goes straight to write(2) without a Buffer copy; only a partial write needs the bytes.
  let written: number;
  try {
    written = writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return; // stdout is gone (EPIPE): nothing left to tell
    written = 0;
  }
  if (written >= Buffer.byteLength(chunk)) return;
  let buf = Buffer.from(chunk).subarray(written);
  while (buf.length > 0) {
    try {
      const n = writeSync(fd, buf);
      buf = buf.subarray(n);
    } catch (err) {
      // A non-blocking stdout (pipe) can refuse a write; retrying is the only way not to lose lines.
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      return; // stdout is gone (EPIPE): nothing left to tell
    }
  }
}

let isoMs = 0;
let isoText = '';
/** The current time as ISO 8601, formatted at most once per millisecond (many lines share one). */
function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}

/** A structured logger; `child` adds bindings such as the request id. */
export class Logger {
  readonly #out: Output;
  readonly #bindings: string; // pre-serialised `,"k":v` pairs
  // The fast path's line head (time, level, message, bindings), reused while the millisecond,
  // level and message stay the same: under load many access-log lines share one.
  #headTime = '';
  #headLevel = '';
  #headMsg = '';
  #head = '';

  constructor(options: LoggerOptions = {}, out?: Output, bindings = '') {
    this.#out = out ?? new Output(options);
    this.#bindings = bindings;
  }

  /** A logger whose lines all carry these fields. */
  child(fields: Fields): Logger {
    // Scrubbed once here: the fast path's lines carry the bindings unscrubbed.
    const out = this.#out;
    return new Logger({}, out, this.#bindings + out.redactor.scrub(serialiseFields(fields, out.replacer)));
  }

  isEnabled(level: Exclude<LogLevel, 'silent'>): boolean {
    return LEVEL_VALUE[level] >= this.#out.level;
  }

  debug(msg: string, fields?: Fields): void {
    if (LEVEL_VALUE.debug >= this.#out.level) this.#write('debug', msg, fields);
  }
  info(msg: string, fields?: Fields): void {
    if (LEVEL_VALUE.info >= this.#out.level) this.#write('info', msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    if (LEVEL_VALUE.warn >= this.#out.level) this.#write('warn', msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    if (LEVEL_VALUE.error >= this.#out.level) this.#write('error', msg, fields);
  }

  /**
   * Writes a line whose fields are already known to be flat and safe (the access log's fast path).
   * They are not scrubbed: a value a client chose must go through `scrub()` first.
   */
  line(level: Exclude<LogLevel, 'silent'>, msg: string, flatFields: string): void {
    if (LEVEL_VALUE[level] < this.#out.level) return;
    const time = isoNow();
    if (time !== this.#headTime || level !== this.#headLevel || msg !== this.#headMsg) {
      const redactor = this.#out.redactor;
      const text = redactor.scrub(JSON.stringify(cut(msg, redactor)));
      this.#head = `{"time":"${time}","level":"${level}","msg":${text}${this.#bindings}`;
      this.#headTime = time;
      this.#headLevel = level;
      this.#headMsg = msg;
    }
    this.#out.push(`${this.#head}${flatFields}}\n`);
  }

  /** Writes everything buffered now, synchronously (on exit, before a crash). */
  flush(): void {
    this.#out.flush();
  }

  /** Adds secrets learnt after start (keys the agents file names); shared with parent and children. */
  addSecrets(values: readonly string[]): void {
    this.#out.addSecrets(values);
  }

  /** Redacts known secrets and credential shapes from a string (for text that must leave by another path). */
  scrub(text: string): string {
    return this.#out.redactor.scrub(text);
  }

  #write(level: LogLevel, msg: string, fields: Fields | undefined): void {
    const out = this.#out;
    const extra = fields === undefined ? '' : serialiseFields(fields, out.replacer);
    const text = JSON.stringify(cut(msg, out.redactor));
    out.push(out.redactor.scrub(`{"time":"${isoNow()}","level":"${level}","msg":${text}${this.#bindings}${extra}}\n`));
  }
}

/** Serialises fields as `,"k":v` pairs through the output's replacer. */
function serialiseFields(fields: Fields, replacer: Output['replacer']): string {
  let out = '';
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (value === undefined) continue;
    out += `,${JSON.stringify(key)}:${safeStringify(SECRET_KEYS.has(key.toLowerCase()) ? REDACTED : value, replacer)}`;
  }
  return out;
}

function safeStringify(value: unknown, replacer: Output['replacer']): string {
  try {
    return JSON.stringify(value, replacer) ?? 'null';
  } catch {
    return '"[unserialisable]"';
  }
}

/** An error with its stack, code and cause chain, bounded in depth and, through `budget`, in count. */
function serialiseError(err: Error, depth: number, budget: { left: number }): Record<string, unknown> {
  budget.left--;
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) out['code'] = code;
  if (err.stack !== undefined) out['stack'] = err.stack;
  const nested = (e: unknown): unknown =>
    !(e instanceof Error) ? e : budget.left > 0 ? serialiseError(e, depth + 1, budget) : '[more errors cut]';
  if (err.cause !== undefined && depth < 8) out['cause'] = nested(err.cause);
  if (err instanceof AggregateError && depth < 8) out['errors'] = err.errors.slice(0, 10).map(nested);
  return out;
}

/** Builds the root logger. */
export function createLogger(options: LoggerOptions = {}): Logger {
  return new Logger(options);
}
