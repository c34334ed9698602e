import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { AppError, causeChain, ERROR_CODES, type ErrorCode, problemBody, toAppError } from '../lib/errors.ts';

const REQUEST_ID = 'req-0123456789';

describe('AppError', () => {
  it('new AppError() takes status and title from the catalogue', () => {
    const err = new AppError('BODY_TOO_LARGE', { detail: 'Body exceeds 10240 bytes' });
    assert.equal(err.status, 413);
    assert.equal(err.title, 'Request body too large');
    assert.equal(err.code, 'BODY_TOO_LARGE');
    assert.equal(err.detail, 'Body exceeds 10240 bytes');
    assert.equal(err.expose, true);
  });

  it('new AppError() exposes client errors, and of server errors only those the catalogue marks', () => {
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
      const err = new AppError(code);
      assert.equal(err.expose, err.status < 500 || code === 'MODEL_NOT_CONFIGURED', code);
    }
  });

  it('new AppError() with a 5xx status override is not exposed', () => {
    assert.equal(new AppError('BAD_REQUEST', { status: 503 }).expose, false);
  });

  it('new AppError() keeps its cause', () => {
    const cause = new Error('pool exhausted');
    assert.equal(new AppError('SERVICE_UNAVAILABLE', { cause }).cause, cause);
  });

  it('ERROR_CODES uses SCREAMING_SNAKE codes and error statuses only', () => {
    for (const [code, { status }] of Object.entries(ERROR_CODES)) {
      assert.match(code, /^[A-Z][A-Z0-9_]*$/);
      assert.ok(status >= 400 && status <= 599, code);
    }
  });

  it('ERROR_CODES lists only codes that some module in lib/ raises', async () => {
    const lib = new URL('../lib/', import.meta.url);
    const files = (await readdir(lib, { recursive: true })).filter((f) => f.endsWith('.ts'));
    const sources = await Promise.all(files.map((f) => readFile(new URL(f, lib), 'utf8')));
    const text = sources.join('\n');
    const unused = Object.keys(ERROR_CODES).filter((code) => !text.includes(`'${code}'`));
    assert.deepEqual(unused, []);
  });
});

describe('causeChain()', () => {
  it('causeChain() lists the error and its causes, innermost last', () => {
    const root = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const outer = new Error('query failed', { cause: new Error('pool', { cause: root }) });
    const chain = causeChain(outer);
    assert.deepEqual(
      chain.map((link) => link.message),
      ['query failed', 'pool', 'connect ECONNREFUSED'],
    );
    assert.equal(chain[2]?.code, 'ECONNREFUSED');
  });

  it('causeChain() stops at the first cause that is not an Error', () => {
    const chain = causeChain(new Error('outer', { cause: { code: 'ECONNRESET' } }));
    assert.deepEqual(
      chain.map((link) => link.message),
      ['outer'],
    );
    assert.deepEqual(causeChain('a thrown string'), []);
  });

  it('causeChain() stops after maxDepth links, so a cyclic chain ends', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    a.cause = b;
    assert.equal(causeChain(a).length, 4);
    assert.equal(causeChain(a, 2).length, 2);
  });
});

describe('problemBody()', () => {
  it('problemBody() builds an RFC 9457 body with the detail for a client error', () => {
    const body = problemBody(new AppError('BODY_TOO_LARGE', { detail: 'Body exceeds 10240 bytes' }), REQUEST_ID);
    assert.deepEqual(body, {
      type: 'about:blank',
      title: 'Request body too large',
      status: 413,
      code: 'BODY_TOO_LARGE',
      detail: 'Body exceeds 10240 bytes',
      requestId: REQUEST_ID,
    });
  });

  it('problemBody() adds the extra members of a client error', () => {
    const body = problemBody(
      new AppError('VALIDATION_FAILED', { detail: 'bad', extra: { issues: [{ path: 'message' }] } }),
      REQUEST_ID,
    );
    assert.deepEqual(body['issues'], [{ path: 'message' }]);
  });

  it('problemBody() gives a 5xx only a generic title, the code and the request id', () => {
    const err = new AppError('UPSTREAM_ERROR', {
      detail: 'upstream said: invalid api key sk-live-123',
      extra: { upstreamBody: 'secret text' },
      cause: new Error('SELECT * FROM api_keys'),
    });
    assert.deepEqual(problemBody(err, REQUEST_ID), {
      type: 'about:blank',
      title: 'Upstream error',
      status: 502,
      code: 'UPSTREAM_ERROR',
      requestId: REQUEST_ID,
    });
  });

  it('problemBody() keeps the fixed members when extra names them', () => {
    const err = new AppError('VALIDATION_FAILED', {
      extra: { status: 200, code: 'OK', type: 'https://evil.example', requestId: 'forged' },
    });
    const body = problemBody(err, REQUEST_ID);
    assert.equal(body['status'], 400);
    assert.equal(body['code'], 'VALIDATION_FAILED');
    assert.equal(body['type'], 'about:blank');
    assert.equal(body['requestId'], REQUEST_ID);
  });
});

describe('toAppError()', () => {
  it('toAppError() returns an AppError unchanged', () => {
    const err = new AppError('NOT_FOUND');
    assert.equal(toAppError(err), err);
  });

  it('toAppError() turns an unknown error into a generic 500 that keeps the cause', () => {
    const cause = new TypeError("Cannot read properties of undefined (reading 'rows')");
    const err = toAppError(cause);
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.status, 500);
    assert.equal(err.expose, false);
    assert.equal(err.cause, cause);
    assert.deepEqual(problemBody(err, REQUEST_ID), {
      type: 'about:blank',
      title: 'Internal server error',
      status: 500,
      code: 'INTERNAL',
      requestId: REQUEST_ID,
    });
  });

  it('toAppError() turns a thrown non-Error value into a generic 500', () => {
    const err = toAppError('boom');
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.cause, 'boom');
  });
});
