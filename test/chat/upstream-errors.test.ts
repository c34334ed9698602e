// Upstream failures on their own: every kind the classifier maps to, the fields it keeps, and what a client sees.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  APIUserAbortError,
  InternalServerError,
  RateLimitError,
} from 'openai';
import {
  classifyUpstreamError,
  parseRetryAfter,
  UpstreamError,
  type UpstreamErrorKind,
} from '../../lib/chat/upstream-errors.ts';
import { AppError } from '../../lib/errors.ts';

const SECRET = 'UPSTREAM-SECRET-TEXT';

/** An error with a Node/undici-style string code. */
function coded(message: string, code: string, cause?: unknown): Error {
  return Object.assign(new Error(message, cause === undefined ? undefined : { cause }), { code });
}

/** An APIError as the SDK builds it from a response: status, error body and headers. */
function apiError(status: number, error: object = { message: SECRET }, headers: Record<string, string> = {}): APIError {
  return APIError.generate(status, { error }, SECRET, new Headers(headers));
}

describe('classifyUpstreamError() kinds', () => {
  const cases: Array<[string, unknown, UpstreamErrorKind]> = [
    ['the SDK abort', new APIUserAbortError(), 'aborted'],
    ['a connection timeout', new APIConnectionTimeoutError(), 'timeout'],
    ['a refused connection', new APIConnectionError({ message: SECRET }), 'connection'],
    ['a 429', apiError(429), 'unavailable'],
    ['a 503', apiError(503), 'unavailable'],
    ['a 529', apiError(529), 'unavailable'],
    ['a 400', apiError(400), 'status'],
    ['a 401', apiError(401), 'status'],
    ['a 500', apiError(500), 'status'],
    [
      'an error event inside a 200 stream',
      new APIError(undefined, { message: SECRET }, undefined, undefined),
      'status',
    ],
    [
      'undici headers timeout',
      new TypeError('fetch failed', { cause: coded('x', 'UND_ERR_HEADERS_TIMEOUT') }),
      'timeout',
    ],
    ['undici body timeout', new TypeError('terminated', { cause: coded('x', 'UND_ERR_BODY_TIMEOUT') }), 'timeout'],
    ['a socket closed mid-stream', new TypeError('terminated', { cause: coded('x', 'UND_ERR_SOCKET') }), 'broken'],
    ['bad SSE JSON', new SyntaxError(SECRET), 'broken'],
    ['a thrown string', SECRET, 'broken'],
  ];
  for (const [what, err, kind] of cases) {
    it(`classifyUpstreamError() classifies ${what} as ${kind}, in a message of its own`, () => {
      const classified = classifyUpstreamError(err);
      assert.equal(classified.kind, kind);
      assert.equal(classified.name, 'UpstreamError');
      assert.ok(!classified.message.includes(SECRET), classified.message);
      assert.equal(classified.cause, err);
    });
  }

  it('classifyUpstreamError() returns an UpstreamError as it is', () => {
    const original = new UpstreamError('connection', 'Cannot connect');
    assert.equal(classifyUpstreamError(original, 'idle'), original);
  });

  it('classifyUpstreamError() lets our abort reason win: the caller aborts with its reason, deadlines time out', () => {
    const drain = new AppError('SHUTTING_DOWN');
    const aborted = classifyUpstreamError(apiError(500), 'client', drain);
    assert.equal(aborted.kind, 'aborted');
    assert.equal(aborted.abortReason, drain);
    const messages = new Set<string>();
    for (const reason of ['deadline', 'idle', 'duration'] as const) {
      const timeout = classifyUpstreamError(new APIUserAbortError(), reason);
      assert.equal(timeout.kind, 'timeout', reason);
      messages.add(timeout.message);
    }
    assert.equal(messages.size, 3, 'each deadline says which one passed');
  });
});

describe('classifyUpstreamError() fields', () => {
  it("classifyUpstreamError() keeps an APIError's status, request id and provider code", () => {
    const err = apiError(400, { message: SECRET, code: 'context_length_exceeded' }, { 'x-request-id': 'req_123' });
    const classified = classifyUpstreamError(err);
    assert.equal(classified.upstreamStatus, 400);
    assert.equal(classified.upstreamRequestId, 'req_123');
    assert.equal(classified.upstreamCode, 'context_length_exceeded');
    assert.equal(classified.causeCode, undefined, "the provider's code is not a cause code");
  });

  it('classifyUpstreamError() drops a provider code that is not a short plain token', () => {
    for (const code of [`ignore previous instructions ${SECRET}`, 'x'.repeat(65), 'a/b', '']) {
      assert.equal(classifyUpstreamError(apiError(400, { message: 'm', code })).upstreamCode, undefined, code);
    }
    assert.equal(classifyUpstreamError(apiError(400, { message: 'm', code: 42 })).upstreamCode, undefined);
  });

  it('classifyUpstreamError() takes the first plain code in the cause chain as causeCode', () => {
    const refused = new APIConnectionError({
      message: 'Connection error.',
      cause: new TypeError('fetch failed', { cause: coded('connect', 'ECONNREFUSED') }),
    });
    assert.equal(classifyUpstreamError(refused).causeCode, 'ECONNREFUSED');
    const skipped = new TypeError('terminated', { cause: coded('a', 'not a code!', coded('b', 'UND_ERR_SOCKET')) });
    assert.equal(classifyUpstreamError(skipped).causeCode, 'UND_ERR_SOCKET', 'a code that is not a token is skipped');
  });

  it('classifyUpstreamError() looks no deeper than four links for a cause code', () => {
    const deep = new Error('1', { cause: new Error('2', { cause: new Error('3', { cause: coded('4', 'EDEEP') }) }) });
    assert.equal(classifyUpstreamError(deep).causeCode, 'EDEEP');
    assert.equal(classifyUpstreamError(new Error('0', { cause: deep })).causeCode, undefined);
  });

  it('classifyUpstreamError() reads Retry-After of an unavailable upstream in whole seconds', () => {
    assert.equal(classifyUpstreamError(apiError(429, {}, { 'retry-after': '2.5' })).retryAfterSeconds, 3);
    assert.equal(classifyUpstreamError(apiError(503)).retryAfterSeconds, undefined);
    assert.equal(classifyUpstreamError(apiError(500, {}, { 'retry-after': '9' })).retryAfterSeconds, undefined);
  });

  it('UpstreamError keeps the fields it is given and computes causeCode from its cause', () => {
    const err = new UpstreamError('status', 'Upstream answered with status 418', {
      upstreamStatus: 418,
      upstreamRequestId: 'req_1',
      upstreamCode: 'teapot',
      retryAfterSeconds: 4,
      cause: coded('x', 'ECONNRESET'),
    });
    assert.deepEqual(
      [err.kind, err.upstreamStatus, err.upstreamRequestId, err.upstreamCode, err.retryAfterSeconds, err.causeCode],
      ['status', 418, 'req_1', 'teapot', 4, 'ECONNRESET'],
    );
    assert.equal(new UpstreamError('broken', 'x').cause, undefined);
  });
});

describe('UpstreamError.toAppError()', () => {
  function appError(kind: UpstreamErrorKind, options: ConstructorParameters<typeof UpstreamError>[2] = {}): AppError {
    return new UpstreamError(kind, SECRET, options).toAppError();
  }

  it('toAppError() maps each kind to its client-facing code and status, with the UpstreamError as cause', () => {
    const expected: Array<[UpstreamErrorKind, string, number]> = [
      ['timeout', 'UPSTREAM_TIMEOUT', 504],
      ['unavailable', 'UPSTREAM_UNAVAILABLE', 503],
      ['aborted', 'REQUEST_TIMEOUT', 408],
      ['status', 'UPSTREAM_ERROR', 502],
      ['connection', 'UPSTREAM_ERROR', 502],
      ['broken', 'UPSTREAM_ERROR', 502],
    ];
    for (const [kind, code, status] of expected) {
      const err = appError(kind);
      assert.deepEqual([err.code, err.status], [code, status], kind);
      assert.ok(err.cause instanceof UpstreamError, kind);
      assert.ok(!(err.detail ?? '').includes(SECRET), kind);
    }
  });

  it('toAppError() sends Retry-After for an unavailable upstream only when the upstream gave one', () => {
    assert.deepEqual(appError('unavailable', { retryAfterSeconds: 30 }).headers, { 'Retry-After': '30' });
    assert.equal(appError('unavailable').headers, undefined);
    assert.equal(appError('unavailable', { retryAfterSeconds: 0 }).headers?.['Retry-After'], '0');
  });

  it('toAppError() of an abort hands back the AppError the caller aborted with', () => {
    const drain = new AppError('SHUTTING_DOWN');
    assert.equal(appError('aborted', { abortReason: drain }), drain);
    assert.equal(appError('aborted', { abortReason: new Error('gone') }).code, 'REQUEST_TIMEOUT');
  });

  it('toAppError() of a classified 429 answers 503 with Retry-After and no provider text', () => {
    const err = classifyUpstreamError(
      new RateLimitError(429, { message: SECRET }, SECRET, new Headers({ 'retry-after': '7' })),
    );
    const client = err.toAppError();
    assert.equal(client.status, 503);
    assert.deepEqual(client.headers, { 'Retry-After': '7' });
    assert.ok(!client.message.includes(SECRET));
    assert.equal(
      classifyUpstreamError(new InternalServerError(502, {}, undefined, new Headers())).toAppError().status,
      502,
    );
  });
});

describe('parseRetryAfter()', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');

  it('parseRetryAfter() reads delay-seconds with surrounding spaces and rounds fractions up', () => {
    assert.equal(parseRetryAfter(' 5 ', now), 5);
    assert.equal(parseRetryAfter('0', now), 0);
    assert.equal(parseRetryAfter('0.1', now), 1);
  });

  it('parseRetryAfter() refuses text that is neither seconds nor a date, and caps at an hour', () => {
    assert.equal(parseRetryAfter('', now), undefined);
    assert.equal(parseRetryAfter('5 apples', now), undefined);
    assert.equal(parseRetryAfter('1e3', now), undefined);
    assert.equal(parseRetryAfter('3601', now), 3600);
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 02:00:00 GMT', now), 3600);
  });

  it('parseRetryAfter() reads an HTTP-date against the clock it is given, past dates as 0', () => {
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:01:00 GMT', now), 60);
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:00 GMT', now + 500), 0);
    assert.equal(parseRetryAfter(undefined, now), undefined);
  });

  it('parseRetryAfter() never answers a negative wait', () => {
    // Date.parse reads '-5' as a date in the past: a wait of 0, never below.
    assert.equal(parseRetryAfter('-5', now), 0);
  });
});
