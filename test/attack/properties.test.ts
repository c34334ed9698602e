// Property-based attacks on the pure parts of the HTTP core: no input makes them throw
// anything unexpected, and no output carries a line break where it would forge a field.

import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { AppError, ERROR_CODES, type ErrorCode, problemBody } from '../../lib/errors.ts';
import { isJsonContentType, parseJson } from '../../lib/http/body.ts';
import { addressGroup, createClientIp } from '../../lib/http/client-ip.ts';
import { createRouter, type Route } from '../../lib/http/router.ts';
import { formatSse } from '../../lib/http/sse.ts';
import type { Handler } from '../../lib/http/types.ts';

const handler: Handler = async () => ({ kind: 'empty', status: 204 });
const ROUTES: Route[] = [
  { method: 'GET', pattern: '/health', handler },
  { method: 'GET', pattern: '/health/live', handler },
  { method: 'POST', pattern: '/v1/chat', handler },
  { method: 'GET', pattern: '/v1/agents', handler },
  { method: 'GET', pattern: '/v1/conversations', handler },
  { method: 'GET', pattern: '/v1/conversations/:id', handler },
  { method: 'DELETE', pattern: '/v1/conversations/:id', handler },
  { method: 'GET', pattern: '/v1/conversations/:id/messages/:messageId', handler },
];
const PATTERNS = new Set(ROUTES.map((r) => r.pattern));

/** Any string, including lone surrogates, NUL and every line break. */
const anyString = fc.string({ unit: 'binary', maxLength: 200 });
/** Paths built from route words, percent signs, broken escapes, dots and empty segments. */
const pathish = fc
  .array(
    fc.oneof(
      fc.constantFrom(
        'v1',
        'conversations',
        'messages',
        'health',
        'live',
        'chat',
        '',
        '.',
        '..',
        '%',
        '%2',
        '%zz',
        '%E0%A4%A',
        '%C3%A9',
        '%2F',
        '%00',
        '?q=1',
        '#x',
      ),
      fc.string({ unit: 'binary-ascii', maxLength: 20 }),
      fc.string({ unit: 'binary', maxLength: 20 }),
    ),
    { maxLength: 8 },
  )
  .chain((segments) => fc.constantFrom(`/${segments.join('/')}`, segments.join('/'), `//${segments.join('/')}/`));

describe('router properties', () => {
  const match = createRouter(ROUTES);

  it('createRouter() never throws for arbitrary methods and paths, and answers one of its three kinds', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.constantFrom('GET', 'HEAD', 'POST', 'DELETE', 'OPTIONS', 'PUT'), anyString),
        fc.oneof(pathish, anyString, fc.webPath()),
        (method, path) => {
          const m = match(method, path);
          if (m.kind === 'not-found') return;
          assert.ok(PATTERNS.has(m.pattern));
          if (m.kind === 'method-not-allowed') {
            assert.match(m.allow, /^[A-Z]+(, [A-Z]+)*$/);
            return;
          }
          assert.equal(m.kind, 'found');
          for (const value of Object.values(m.params)) assert.equal(typeof value, 'string');
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('createRouter() captures exactly the decoded segment for any param value', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'binary', minLength: 1, maxLength: 50 }).filter((s) => s.isWellFormed()),
        (id) => {
          const m = match('GET', `/v1/conversations/${encodeURIComponent(id)}`);
          assert.equal(m.kind, 'found');
          assert.deepEqual(m.kind === 'found' && m.params, { id });
        },
      ),
    );
  });
});

describe('body properties', () => {
  function assertOnlyClientErrors(fn: () => unknown): void {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof AppError, `threw ${String(err)}`);
      assert.ok(err.status >= 400 && err.status < 500, `answered ${err.status}`);
    }
  }

  it('parseJson() never throws anything but a 4xx AppError for an arbitrary string', () => {
    fc.assert(
      fc.property(anyString, (text) => assertOnlyClientErrors(() => parseJson(text))),
      { numRuns: 2000 },
    );
  });

  it('parseJson() throws only a 4xx AppError for arbitrary JSON, and returns what JSON.parse reads', () => {
    fc.assert(
      fc.property(fc.json({ maxDepth: 40 }), (text) => {
        let value: unknown;
        try {
          value = parseJson(text, { maxDepth: 8, maxKeys: 50 });
        } catch (err) {
          assert.ok(err instanceof AppError && err.status === 400, `threw ${String(err)}`);
          return;
        }
        assert.deepEqual(value, JSON.parse(text));
      }),
      { numRuns: 1000 },
    );
  });

  it('parseJson() refuses every document with a __proto__, constructor or prototype key', () => {
    const forbidden = fc.constantFrom('__proto__', 'constructor', 'prototype');
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 3 }), forbidden, fc.integer({ min: 0, max: 3 }), (value, key, depth) => {
        let doc = `{${JSON.stringify(key)}:${JSON.stringify(value) ?? 'null'}}`;
        for (let i = 0; i < depth; i++) doc = i % 2 === 0 ? `[1,${doc}]` : `{"k${i}":${doc}}`;
        assert.throws(
          () => parseJson(doc),
          (err: unknown) => err instanceof AppError && err.code === 'INVALID_JSON',
        );
        assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
      }),
    );
  });

  it('isJsonContentType() never throws for an arbitrary header', () => {
    fc.assert(fc.property(anyString, (header) => assert.equal(typeof isJsonContentType(header), 'boolean')));
  });
});

describe('SSE properties', () => {
  const LINE_BREAK = /[\r\n]/;
  const FIELD_LINE = /^(data|event|id): |^: /;

  /** The data of one event as an EventSource reads it (WHATWG HTML §9.2.6). */
  function readData(frame: string): string {
    return frame
      .slice(0, -2)
      .split('\n')
      .filter((line) => line.startsWith('data: '))
      .map((line) => line.slice('data: '.length))
      .join('\n');
  }

  function assertFieldLines(frame: string): void {
    assert.ok(frame.endsWith('\n\n'));
    assert.ok(!frame.includes('\r'), 'a CR would start a new line for the reader');
    const lines = frame.slice(0, -2).split('\n');
    for (const line of lines) assert.match(line, FIELD_LINE);
  }

  it('formatSse() never lets string data break out of its data field lines', () => {
    fc.assert(
      fc.property(anyString, (data) => {
        const frame = formatSse({ event: 'delta', data });
        assertFieldLines(frame);
        assert.equal(readData(frame), data.replace(/\r\n|\r/g, '\n'));
        assert.equal(frame.split('\n').filter((l) => l.startsWith('event: ')).length, 1);
      }),
      { numRuns: 2000 },
    );
  });

  it('formatSse() keeps non-string JSON data on one line that reads back to the same value', () => {
    // Strings are sent as text (previous property); everything else as JSON.
    fc.assert(
      fc.property(
        fc.jsonValue().filter((v) => typeof v !== 'string'),
        (data) => {
          const frame = formatSse({ event: 'delta', data });
          assertFieldLines(frame);
          assert.equal(frame.split('\n').filter((l) => l.startsWith('data: ')).length, 1);
          assert.equal(readData(frame), JSON.stringify(data));
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('formatSse() throws TypeError, and nothing else, for an event name or id with CR or LF', () => {
    const withBreak = fc
      .tuple(anyString, fc.constantFrom('\n', '\r', '\r\n'), anyString)
      .map(([a, br, b]) => `${a}${br}${b}`);
    fc.assert(
      fc.property(withBreak, fc.constantFrom('event', 'id', 'comment'), anyString, (value, field, data) => {
        assert.throws(() => formatSse({ [field]: value, data }), TypeError);
      }),
      { numRuns: 1000 },
    );
  });

  it('formatSse() accepts any event name or id without CR, LF or NUL as one field line', () => {
    const clean = anyString.filter((s) => !LINE_BREAK.test(s) && !s.includes('\0'));
    fc.assert(
      fc.property(clean, clean, (event, id) => {
        const frame = formatSse({ event, id, data: 'x' });
        assertFieldLines(frame);
        assert.deepEqual(frame.split('\n').slice(0, 2), [`event: ${event}`, `id: ${id}`]);
      }),
    );
  });
});

describe('problem+json properties', () => {
  const codes = Object.keys(ERROR_CODES) as ErrorCode[];
  const MARK = 'mark-6c1f0e';

  const appError = (status: fc.Arbitrary<number | undefined>) =>
    fc
      .record({
        code: fc.constantFrom(...codes),
        status,
        detail: anyString.map((s) => `${MARK}${s}`),
        extra: fc.option(
          fc.dictionary(
            fc.string({ maxLength: 12 }),
            fc.jsonValue({ maxDepth: 2 }).map((v) => [MARK, v]),
          ),
          { nil: undefined },
        ),
        cause: fc.option(
          anyString.map((s) => new Error(`${MARK}${s}`)),
          { nil: undefined },
        ),
      })
      .map(
        ({ code, status, detail, extra, cause }) =>
          new AppError(code, {
            detail,
            cause,
            ...(status === undefined ? {} : { status }),
            ...(extra === undefined ? {} : { extra }),
          }),
      );

  it('problemBody() of any AppError >= 500, bar the configuration codes, shows no detail, extra or cause', () => {
    const serverError = fc.oneof(
      fc.integer({ min: 500, max: 599 }),
      fc.constant(undefined), // the catalogue's status, filtered below
    );
    fc.assert(
      fc.property(
        // MODEL_NOT_CONFIGURED is the one 5xx whose detail is meant for the reader: it names two variables.
        appError(serverError).filter((e) => e.status >= 500 && e.code !== 'MODEL_NOT_CONFIGURED'),
        fc.uuid(),
        (err, requestId) => {
          const body = problemBody(err, requestId);
          assert.ok(!JSON.stringify(body).includes(MARK));
          assert.deepEqual(Object.keys(body).sort(), ['code', 'requestId', 'status', 'title', 'type']);
          assert.equal(body['title'], ERROR_CODES[err.code].title);
          assert.equal(body['status'], err.status);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('problemBody() of any AppError keeps its type, status, code and request id whatever extra says', () => {
    fc.assert(
      fc.property(
        appError(fc.option(fc.integer({ min: 400, max: 599 }), { nil: undefined })),
        fc.uuid(),
        (err, requestId) => {
          const body = problemBody(err, requestId);
          assert.equal(body['type'], 'about:blank');
          assert.equal(body['status'], err.status);
          assert.equal(body['code'], err.code);
          assert.equal(body['requestId'], requestId);
          assert.equal(Object.getPrototypeOf(body), Object.prototype);
          if (err.status < 500) assert.equal(body['detail'], err.detail);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('client address properties', () => {
  const clientIp = createClientIp(['10.0.0.0/8', 'fd00::/8']);

  it('createClientIp() never throws and answers the peer or an address from the header', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.ipV4(), fc.ipV6(), fc.constant('10.1.2.3')),
        fc.oneof(
          anyString,
          fc.array(fc.oneof(fc.ipV4(), fc.ipV6(), anyString)).map((a) => a.join(', ')),
        ),
        (peer, xff) => {
          const req = {
            socket: { remoteAddress: peer },
            headers: { 'x-forwarded-for': xff },
          } as unknown as IncomingMessage;
          const ip = clientIp(req);
          assert.ok(
            ip === peer || xff.includes(ip) || `::ffff:${ip}` === peer || xff.includes(`::ffff:${ip}`),
            `answered ${ip}`,
          );
          // The access log writes the address into JSON unescaped: it must be an address, never free text.
          assert.ok(isIP(ip) !== 0, `not an address: ${JSON.stringify(ip)}`);
          assert.match(ip, /^[0-9A-Za-z.:%_-]+$/);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('addressGroup() never throws for an arbitrary string', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV6(), anyString), (address) => assert.equal(typeof addressGroup(address), 'string')),
    );
  });
});
