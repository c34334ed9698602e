// JSON-lines logger with levels, child bindings and redaction; writes are batched.
//
// One line per event on stdout, which journald captures. Lines are buffered and written once
// per event-loop turn (or when the buffer grows large), never synchronously per request, and
// flushed synchronously when the process exits. Before any byte leaves, the buffer is scrubbed
// of known secret values and of anything shaped like our API keys or a JWT, whatever the
// caller passed in.
import { writeSync } from 'node:fs';

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

const REDACTED = '[REDACTED]';
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
// Credentials whose values the logger cannot know in advance: our API keys and JWT-shaped strings.
const CREDENTIAL_PATTERN = /csk_[A-Za-z0-9_-]{16,}|eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*/g;

class Output {
  readonly level: number;
  #secrets: string[];
  readonly #sink: LogSink;
  readonly #maxBufferBytes: number;
  #buffer: string[] = [];
  #bufferBytes = 0;
  #scheduled = false;

  constructor(options: LoggerOptions) {
    this.level = LEVEL_VALUE[options.level ?? 'info'];
    this.#secrets = secretForms([], options.secrets ?? []);
    this.#sink = options.sink ?? 1;
    this.#maxBufferBytes = options.maxBufferBytes ?? 64 * 1024;
  }

  addSecrets(values: readonly string[]): void {
    this.#secrets = secretForms(this.#secrets, values);
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
    let chunk = this.#buffer.join('');
    this.#buffer = [];
    this.#bufferBytes = 0;
    chunk = this.scrub(chunk);
    const sink = this.#sink;
    if (typeof sink === 'function') {
      sink(chunk);
      return;
    }
    writeAll(sink, chunk);
  }

  scrub(text: string): string {
    for (const secret of this.#secrets) {
      if (text.includes(secret)) text = text.replaceAll(secret, REDACTED);
    }
    CREDENTIAL_PATTERN.lastIndex = 0;
    if (CREDENTIAL_PATTERN.test(text)) {
      CREDENTIAL_PATTERN.lastIndex = 0;
      text = text.replace(CREDENTIAL_PATTERN, REDACTED);
    }
    return text;
  }
}

/** The redaction list: `known` plus every form of `values`, longest first. */
function secretForms(known: readonly string[], values: readonly string[]): string[] {
  // Lines are scrubbed after serialisation, so a secret with a quote, backslash or control
  // character is searched for as JSON spells it too (once and twice escaped: JSON inside a string).
  const forms = values.filter((s) => s.length >= 4).flatMap((s) => [s, jsonEscaped(s), jsonEscaped(jsonEscaped(s))]);
  // Longest first so a secret that contains another is redacted whole.
  return [...new Set([...known, ...forms])].sort((a, b) => b.length - a.length);
}

function jsonEscaped(text: string): string {
  return JSON.stringify(text).slice(1, -1);
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
    return new Logger({}, this.#out, this.#bindings + serialiseFields(fields));
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

  /** Writes a line whose fields are already known to be flat and safe (the access log's fast path). */
  line(level: Exclude<LogLevel, 'silent'>, msg: string, flatFields: string): void {
    if (LEVEL_VALUE[level] < this.#out.level) return;
    const time = isoNow();
    if (time !== this.#headTime || level !== this.#headLevel || msg !== this.#headMsg) {
      this.#head = `{"time":"${time}","level":"${level}","msg":${JSON.stringify(msg)}${this.#bindings}`;
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

  /** Redacts known secrets from a string (for text that must leave by another path). */
  scrub(text: string): string {
    return this.#out.scrub(text);
  }

  #write(level: LogLevel, msg: string, fields: Fields | undefined): void {
    const extra = fields === undefined ? '' : serialiseFields(fields);
    this.#out.push(`{"time":"${isoNow()}","level":"${level}","msg":${JSON.stringify(msg)}${this.#bindings}${extra}}\n`);
  }
}

/** Serialises fields as `,"k":v` pairs, redacting credential keys and expanding errors. */
function serialiseFields(fields: Fields): string {
  let out = '';
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (value === undefined) continue;
    out += `,${JSON.stringify(key)}:${safeStringify(SECRET_KEYS.has(key.toLowerCase()) ? REDACTED : value)}`;
  }
  return out;
}

function safeStringify(value: unknown): string {
  try {
    return JSON.stringify(value, replacer) ?? 'null';
  } catch {
    return '"[unserialisable]"';
  }
}

function replacer(this: unknown, key: string, value: unknown): unknown {
  if (key !== '' && SECRET_KEYS.has(key.toLowerCase())) return REDACTED;
  if (value instanceof Error) return serialiseError(value, 0);
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** An error with its stack, code and whole cause chain, bounded in depth. */
export function serialiseError(err: Error, depth: number): Record<string, unknown> {
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) out['code'] = code;
  if (err.stack !== undefined) out['stack'] = err.stack;
  if (err.cause !== undefined && depth < 8) {
    out['cause'] = err.cause instanceof Error ? serialiseError(err.cause, depth + 1) : err.cause;
  }
  if (err instanceof AggregateError && depth < 8) {
    out['errors'] = err.errors
      .slice(0, 10)
      .map((e: unknown) => (e instanceof Error ? serialiseError(e, depth + 1) : e));
  }
  return out;
}

/** Builds the root logger. */
export function createLogger(options: LoggerOptions = {}): Logger {
  return new Logger(options);
}
