import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createLogger, type LoggerOptions, MAX_FIELD_CHARS } from '../lib/log.ts';

/** A value no line may contain. */
const CANARY = 'canary-5e2f8a1c9d3b7e6f40a2c4e6a8b0d2f4';
// Shaped like our API keys and like a JWT; the logger cannot know these values in advance.
const API_KEY = 'csk_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5';
const JWT = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVlLWhlcmU';

function capture(options: LoggerOptions = {}) {
  const chunks: string[] = [];
  const log = createLogger({ level: 'debug', secrets: [CANARY], ...options, sink: (chunk) => chunks.push(chunk) });
  return {
    log,
    chunks,
    text(): string {
      log.flush();
      return chunks.join('');
    },
    lines(): Array<Record<string, unknown>> {
      log.flush();
      return chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    },
  };
}

describe('createLogger() lines', () => {
  it('logger.info() writes one JSON object per line with time, level and msg', () => {
    const out = capture();
    out.log.info('first', { n: 1 });
    out.log.warn('second');
    const text = out.text();
    assert.ok(text.endsWith('\n'));
    const lines = text.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 2);
    const first = JSON.parse(lines[0] as string) as Record<string, unknown>;
    assert.equal(first['level'], 'info');
    assert.equal(first['msg'], 'first');
    assert.equal(first['n'], 1);
    assert.ok(!Number.isNaN(Date.parse(first['time'] as string)));
  });

  it('logger keeps one line per event when the message contains line breaks', () => {
    const out = capture();
    out.log.info('line one\nline two\r\n{"level":"error"}');
    const lines = out.lines();
    assert.equal(lines.length, 1);
    assert.equal(lines[0]?.['msg'], 'line one\nline two\r\n{"level":"error"}');
  });

  it('logger drops lines below its level', () => {
    const out = capture({ level: 'warn' });
    out.log.debug('d');
    out.log.info('i');
    out.log.warn('w');
    out.log.error('e');
    out.log.line('info', 'request', ',"status":200');
    assert.deepEqual(
      out.lines().map((l) => l['level']),
      ['warn', 'error'],
    );
  });

  it('logger at level silent writes nothing', () => {
    const out = capture({ level: 'silent' });
    out.log.error('e');
    assert.equal(out.text(), '');
  });

  it('logger.isEnabled() answers by level', () => {
    const { log } = capture({ level: 'info' });
    assert.equal(log.isEnabled('debug'), false);
    assert.equal(log.isEnabled('info'), true);
    assert.equal(log.isEnabled('error'), true);
  });

  it('logger.child() adds its bindings to every line, and a child of a child adds more', () => {
    const out = capture();
    const child = out.log.child({ requestId: 'req-12345678' });
    child.info('a');
    child.child({ route: '/v1/chat' }).info('b', { status: 200 });
    const [a, b] = out.lines();
    assert.equal(a?.['requestId'], 'req-12345678');
    assert.equal(b?.['requestId'], 'req-12345678');
    assert.equal(b?.['route'], '/v1/chat');
    assert.equal(b?.['status'], 200);
  });

  it('logger.line() writes the pre-serialised fields with the bindings', () => {
    const out = capture();
    out.log.child({ service: 'chat' }).line('info', 'request', ',"status":204,"ms":1.5');
    const { time, ...rest } = out.lines()[0] as Record<string, unknown>;
    assert.equal(typeof time, 'string');
    assert.deepEqual(rest, { level: 'info', msg: 'request', service: 'chat', status: 204, ms: 1.5 });
  });

  it('logger serialises an error with its message, stack and whole cause chain', () => {
    const out = capture();
    const root = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
    out.log.error('failed', { err: new Error('query failed', { cause: new Error('pool broken', { cause: root }) }) });
    const err = out.lines()[0]?.['err'] as Record<string, any>;
    assert.equal(err['message'], 'query failed');
    assert.match(err['stack'], /query failed/);
    assert.equal(err['cause']['message'], 'pool broken');
    assert.equal(err['cause']['cause']['message'], 'socket hang up');
    assert.equal(err['cause']['cause']['code'], 'ECONNRESET');
  });

  it('logger serialises the errors of an AggregateError', () => {
    const out = capture();
    out.log.error('all failed', { err: new AggregateError([new Error('first'), new Error('second')], 'both') });
    const err = out.lines()[0]?.['err'] as Record<string, any>;
    assert.deepEqual(
      err['errors'].map((e: { message: string }) => e.message),
      ['first', 'second'],
    );
  });

  it('logger writes a placeholder for a circular field instead of throwing', () => {
    const out = capture();
    const loop: Record<string, unknown> = {};
    loop['self'] = loop;
    out.log.info('odd', { loop, big: 10n });
    const [line] = out.lines();
    assert.equal(line?.['loop'], '[unserialisable]');
    assert.equal(line?.['big'], '10');
  });
});

describe('createLogger() redaction', () => {
  function assertClean(text: string): void {
    assert.ok(text.length > 0, 'nothing was logged');
    for (const secret of [CANARY, API_KEY, JWT])
      assert.ok(!text.includes(secret), `leaked ${secret.slice(0, 8)}… in ${text}`);
    assert.ok(text.includes('[REDACTED]'));
  }

  it('logger redacts a known secret in the message text', () => {
    const out = capture();
    out.log.info(`connecting with ${CANARY}`);
    assertClean(out.text());
  });

  it('logger redacts a known secret in a field value', () => {
    const out = capture();
    out.log.info('x', { upstreamKey: CANARY });
    assertClean(out.text());
  });

  it('logger redacts a known secret in child bindings', () => {
    const out = capture();
    out.log.child({ dsn: `postgres://u:${CANARY}@db/chat` }).info('x');
    assertClean(out.text());
  });

  it('logger redacts a known secret in deeply nested fields', () => {
    const out = capture();
    out.log.info('x', { a: { b: [{ c: { d: `prefix ${CANARY} suffix` } }] } });
    assertClean(out.text());
  });

  it('logger redacts a known secret in an error message and in its causes', () => {
    const out = capture();
    const err = new Error(`bad key ${CANARY}`, {
      cause: new Error(`upstream said ${CANARY}`, { cause: { body: CANARY } }),
    });
    out.log.error('failed', { err });
    assertClean(out.text());
  });

  it('logger redacts a known secret in a thrown non-Error value', () => {
    const out = capture();
    out.log.error('failed', { err: `string thrown with ${CANARY}` });
    assertClean(out.text());
  });

  it('logger redacts a known secret that JSON escapes (quote, backslash, control character)', () => {
    const secret = 'se"cret\\with\tescapes-0123456789';
    const out = capture({ secrets: [secret] });
    out.log.info(`msg ${secret}`, { field: secret, nested: { json: JSON.stringify({ password2: secret }) } });
    const text = out.text();
    assert.ok(!text.includes(JSON.stringify(secret).slice(1, -1)), text);
    assert.ok(!text.includes('cret\\\\\\\\with'), text); // twice escaped, inside a JSON string
    assert.equal(text.split('[REDACTED]').length - 1, 3);
  });

  for (const header of [
    'authorization',
    'Authorization',
    'cookie',
    'set-cookie',
    'x-api-key',
    'X-Api-Key',
    'proxy-authorization',
  ]) {
    it(`logger redacts the ${header} header in a headers object`, () => {
      const out = capture();
      out.log.info('incoming', { headers: { [header]: 'Basic dXNlcjpwYXNzd29yZA==', host: 'example.com' } });
      const line = out.lines()[0] as { headers: Record<string, string> };
      assert.equal(line.headers[header], '[REDACTED]');
      assert.equal(line.headers['host'], 'example.com');
      assert.ok(!out.text().includes('dXNlcjpwYXNzd29yZA'));
    });
  }

  it('logger redacts a credential key at the top level of the fields and of the bindings', () => {
    const out = capture();
    out.log.child({ authorization: 'Bearer opaque-token-value' }).info('x', { cookie: 'sid=opaque-session-value' });
    const text = out.text();
    assert.ok(!text.includes('opaque-token-value'));
    assert.ok(!text.includes('opaque-session-value'));
  });

  it('logger redacts an unknown API key shaped like ours (csk_…)', () => {
    const out = capture();
    out.log.info(`auth failed for ${API_KEY}`, { key: API_KEY });
    assertClean(out.text());
  });

  it('logger redacts an unknown JWT-shaped string', () => {
    const out = capture();
    out.log.info('token', { bearer: `Bearer ${JWT}`, list: [JWT] });
    assertClean(out.text());
  });

  it('logger.scrub() redacts secrets from text that leaves by another path', () => {
    const { log } = capture();
    assert.equal(log.scrub(`a ${CANARY} b ${API_KEY}`), 'a [REDACTED] b [REDACTED]');
  });

  it('logger.addSecrets() redacts a secret learnt after start, in its parent and its children alike', () => {
    const out = capture({ secrets: [] });
    const child = out.log.child({ component: 'x' });
    const later = 'later-secret-0b7d2e9f41c6';
    child.addSecrets([later]);
    out.log.info(`parent ${later}`);
    child.info('child', { key: `"${later}"` });
    const text = out.text();
    assert.ok(!text.includes(later), text);
    assert.equal(text.match(/\[REDACTED\]/g)?.length, 2);
  });

  it('logger redacts a secret that contains another secret as a whole', () => {
    const out = capture({ secrets: ['short-secret', `short-secret-${CANARY}`] });
    out.log.info(`x short-secret-${CANARY} y`);
    const text = out.text();
    assert.match(text, /x \[REDACTED\] y/);
    assert.ok(!text.includes(CANARY));
  });
});

describe('createLogger() partial secrets and credential shapes', () => {
  it('logger redacts a 14-character prefix of a configured secret echoed in an error message', () => {
    const out = capture();
    out.log.warn('upstream error', { err: new Error(`Incorrect API key provided: ${CANARY.slice(0, 14)}****`) });
    const text = out.text();
    assert.ok(!text.includes(CANARY.slice(0, 12)), text);
    assert.match(text, /Incorrect API key provided: \[REDACTED\]\*\*\*\*/);
  });

  it('logger redacts provider keys and bearer credentials it was not told about', () => {
    const out = capture({ secrets: [] });
    const providerKey = 'sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z';
    out.log.error('upstream said', { body: `key ${providerKey}`, header: 'Bearer some-opaque-credential' });
    const text = out.text();
    assert.ok(!text.includes('Ab3dEf6hIj9k'), text);
    assert.ok(!text.includes('some-opaque-credential'), text);
    assert.equal(out.lines()[0]?.['header'], 'Bearer [REDACTED]');
  });

  it('logger.line() scrubs its message and the child bindings it carries', () => {
    const out = capture();
    out.log.child({ dsn: `postgres://u:${CANARY}@db/chat` }).line('info', `request ${CANARY.slice(3, 17)}`, ',"n":1');
    const text = out.text();
    assert.ok(!text.includes(CANARY.slice(3, 15)), text);
    assert.equal(out.lines()[0]?.['n'], 1);
  });
});

describe('createLogger() bounds', () => {
  const FIVE_MB = 5 * 1024 * 1024;

  it('logger cuts a 5 MB error message, its stack and its cause to about 2 KB each and marks each cut', () => {
    const out = capture();
    const body = 'e'.repeat(FIVE_MB);
    const err = new Error(`upstream answered ${body}`, { cause: new Error(body, { cause: { text: body } }) });
    out.log.error('upstream error', { err });
    const text = out.text();
    assert.ok(text.length < 20_000, `the line is ${text.length} characters`);
    const logged = out.lines()[0]?.['err'] as Record<string, any>;
    for (const field of [
      logged['message'],
      logged['stack'],
      logged['cause']['message'],
      logged['cause']['cause']['text'],
    ]) {
      assert.ok(field.length < MAX_FIELD_CHARS + 100, `a field of ${field.length} characters`);
      assert.match(field, /…\[cut \d+ characters\]$/);
    }
  });

  it('logger cuts a long message and a long string field and marks each cut', () => {
    const out = capture();
    out.log.info('m'.repeat(FIVE_MB), { field: 'f'.repeat(FIVE_MB), nested: { list: ['n'.repeat(FIVE_MB)] } });
    const line = out.lines()[0] as Record<string, any>;
    for (const field of [line['msg'], line['field'], line['nested']['list'][0]]) {
      assert.equal(field.length, MAX_FIELD_CHARS + `…[cut ${FIVE_MB - MAX_FIELD_CHARS} characters]`.length);
    }
  });

  it('logger leaves a field of exactly 2 KB whole', () => {
    const out = capture();
    out.log.info('x', { field: 'f'.repeat(MAX_FIELD_CHARS) });
    assert.equal(out.lines()[0]?.['field'], 'f'.repeat(MAX_FIELD_CHARS));
  });

  it('logger redacts a configured secret that straddles the cut of a long field', () => {
    const out = capture();
    out.log.info('x', { body: `${'a'.repeat(MAX_FIELD_CHARS - 20)}${CANARY}${'b'.repeat(10_000)}` });
    const text = out.text();
    assert.ok(!text.includes(CANARY.slice(0, 12)), 'the first 20 characters of the canary are in the line');
    assert.match(text, /a\[REDACTED\]b*…\[cut \d+ characters\]"/);
  });

  it('logger bounds a deep tree of AggregateErrors', () => {
    const out = capture();
    let err: Error = new Error('leaf');
    for (let depth = 0; depth < 6; depth++)
      err = new AggregateError(
        Array.from({ length: 10 }, () => err),
        'level',
      );
    out.log.error('all failed', { err });
    const text = out.text();
    assert.ok(text.length < 200_000, `the line is ${text.length} characters`);
    assert.match(text, /\[more errors cut\]/);
  });
});

describe('createLogger() buffering', () => {
  it('logger writes nothing synchronously per call and flushes on setImmediate', (t) => {
    t.mock.timers.enable({ apis: ['setImmediate'] });
    const chunks: string[] = [];
    const log = createLogger({ sink: (chunk) => chunks.push(chunk) });
    log.info('one');
    log.info('two');
    assert.equal(chunks.length, 0);
    t.mock.timers.tick(0);
    assert.equal(chunks.length, 1); // one write for the whole turn
    assert.match(chunks[0] as string, /"msg":"one".*\n.*"msg":"two".*\n$/);
  });

  it('logger.flush() writes everything buffered at once', () => {
    const chunks: string[] = [];
    const log = createLogger({ sink: (chunk) => chunks.push(chunk) });
    log.info('one');
    log.flush();
    assert.equal(chunks.length, 1);
    assert.match(chunks[0] as string, /"msg":"one"/);
  });

  it('logger writes each line exactly once across flush() and the scheduled flush', (t) => {
    t.mock.timers.enable({ apis: ['setImmediate'] });
    const chunks: string[] = [];
    const log = createLogger({ sink: (chunk) => chunks.push(chunk) });
    log.info('one');
    log.flush();
    log.info('two');
    t.mock.timers.tick(0);
    log.flush();
    assert.deepEqual(
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l).msg),
      ['one', 'two'],
    );
  });

  it('logger flushes synchronously once maxBufferBytes is reached', (t) => {
    t.mock.timers.enable({ apis: ['setImmediate'] });
    const chunks: string[] = [];
    const log = createLogger({ maxBufferBytes: 200, sink: (chunk) => chunks.push(chunk) });
    log.info('x'.repeat(50));
    assert.equal(chunks.length, 0);
    log.info('y'.repeat(200));
    assert.equal(chunks.length, 1);
    assert.equal(chunks[0]?.split('\n').length, 3);
  });

  describe('to a file descriptor', () => {
    const dir = mkdtempSync(join(tmpdir(), 'log-test-'));
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('logger writes whole lines to a file descriptor sink', () => {
      const path = join(dir, 'out.log');
      const fd = openSync(path, 'w');
      try {
        const log = createLogger({ sink: fd, secrets: [CANARY] });
        for (let i = 0; i < 1000; i++) log.info('line', { i, key: CANARY });
        log.flush();
      } finally {
        closeSync(fd);
      }
      const lines = readFileSync(path, 'utf8')
        .split('\n')
        .filter((l) => l !== '');
      assert.equal(lines.length, 1000);
      assert.deepEqual(
        lines.map((l) => (JSON.parse(l) as { i: number }).i),
        Array.from({ length: 1000 }, (_, i) => i),
      );
      assert.ok(!lines.join('').includes(CANARY));
    });

    it('logger loses nothing on a non-blocking pipe that accepts only part of a write', async () => {
      const fifo = join(dir, 'pipe');
      const out = join(dir, 'pipe.out');
      execFileSync('mkfifo', [fifo]);
      // Our own idle reader keeps the FIFO open so the writer can open it non-blocking; `cat` drains it.
      const idleReader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
      const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      const cat = spawn('sh', ['-c', `cat "${fifo}" > "${out}"`], { stdio: 'ignore' });
      const exited = new Promise((resolve) => cat.once('exit', resolve));
      try {
        // 2 MB in one flush, far over the 64 KiB a pipe takes at once; multi-byte text so a partial
        // write can end inside a character.
        const log = createLogger({ sink: writer, maxBufferBytes: 4 * 1024 * 1024 });
        for (let i = 0; i < 8000; i++) log.info('línea ✓ 日本', { i, pad: 'é'.repeat(100) });
        log.flush();
      } finally {
        closeSync(writer);
      }
      await exited;
      closeSync(idleReader);
      const lines = readFileSync(out, 'utf8')
        .split('\n')
        .filter((l) => l !== '');
      assert.equal(lines.length, 8000);
      assert.deepEqual(
        lines.map((l) => (JSON.parse(l) as { i: number }).i),
        Array.from({ length: 8000 }, (_, i) => i),
      );
    });
  });
});
