import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../../lib/errors.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Middleware } from '../../../lib/http/types.ts';
import { route, type Served, serve } from '../../support/http.ts';

const SECRET_MESSAGE = 'relation "api_keys" does not exist at SELECT hash FROM api_keys';

describe('errorHandler()', () => {
  let served: Served;

  // Writes a head and part of a body, then fails: the error arrives after the headers are gone.
  const halfWritten: Middleware = async function halfWrittenMiddleware(ctx, next) {
    if (ctx.path !== '/half') return next();
    ctx.res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' });
    ctx.res.write('partial');
    await new Promise((resolve) => setImmediate(resolve));
    throw new Error('failed mid-body');
  };

  before(async () => {
    served = await serve(
      [
        route('GET', '/unknown', async () => {
          throw new Error(SECRET_MESSAGE, { cause: new Error('connection terminated unexpectedly') });
        }),
        route('GET', '/string', async () => {
          throw 'a thrown string';
        }),
        route('GET', '/client', async () => {
          throw new AppError('RATE_LIMITED', { detail: 'Slow down', headers: { 'Retry-After': '7' } });
        }),
        route('GET', '/server', async () => {
          throw new AppError('UPSTREAM_ERROR', {
            detail: `upstream said ${SECRET_MESSAGE}`,
            cause: new Error('upstream 500: quota exceeded'),
          });
        }),
        route('GET', '/ok', async () => ({ kind: 'json', status: 200, body: { ok: true } })),
      ],
      [requestId(), errorHandler(), halfWritten],
    );
  });
  after(() => served.close());

  it('errorHandler() answers an unknown Error with a generic 500 problem+json and the request id', async () => {
    const res = await fetch(`${served.url}/unknown`);
    assert.equal(res.status, 500);
    assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
    assert.deepEqual(await res.json(), {
      type: 'about:blank',
      title: 'Internal server error',
      status: 500,
      code: 'INTERNAL',
      requestId: res.headers.get('x-request-id'),
    });
  });

  it('errorHandler() never sends the message or stack of an unknown Error', async () => {
    const text = await (await fetch(`${served.url}/unknown`)).text();
    assert.ok(!text.includes('api_keys'));
    assert.ok(!text.includes('terminated'));
    assert.ok(!text.includes('.ts:'));
  });

  it('errorHandler() logs the cause chain of an unknown Error with the request id', async () => {
    const res = await fetch(`${served.url}/unknown`);
    const id = res.headers.get('x-request-id');
    await res.arrayBuffer();
    const line = served.lines().find((l) => l['requestId'] === id && l['level'] === 'error');
    assert.ok(line, 'no error line for the request');
    const err = line['err'] as { message: string; stack: string; cause: { message: string } };
    assert.equal(err.message, SECRET_MESSAGE);
    assert.match(err.stack, /errors\.test\.ts/);
    assert.equal(err.cause.message, 'connection terminated unexpectedly');
    assert.equal(line['route'], '/unknown');
  });

  it('errorHandler() answers a thrown non-Error with a generic 500 and logs it', async () => {
    const res = await fetch(`${served.url}/string`);
    assert.equal(res.status, 500);
    assert.equal(((await res.json()) as { code: string }).code, 'INTERNAL');
    assert.ok(served.lines().some((l) => l['err'] === 'a thrown string'));
  });

  it('errorHandler() answers a client AppError with its status, code, detail and headers', async () => {
    const res = await fetch(`${served.url}/client`);
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '7');
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(body['code'], 'RATE_LIMITED');
    assert.equal(body['detail'], 'Slow down');
    assert.equal(body['title'], 'Too many requests');
  });

  it('errorHandler() answers a 5xx AppError without its detail', async () => {
    const res = await fetch(`${served.url}/server`);
    assert.equal(res.status, 502);
    const text = await res.text();
    assert.deepEqual(JSON.parse(text), {
      type: 'about:blank',
      title: 'Upstream error',
      status: 502,
      code: 'UPSTREAM_ERROR',
      requestId: res.headers.get('x-request-id'),
    });
  });

  it('errorHandler() logs the cause of a 5xx AppError', async () => {
    const res = await fetch(`${served.url}/server`);
    const id = res.headers.get('x-request-id');
    await res.arrayBuffer();
    const line = served.lines().find((l) => l['requestId'] === id && l['level'] === 'error');
    assert.ok(line);
    assert.equal(line['code'], 'UPSTREAM_ERROR');
    assert.equal((line['err'] as { message: string }).message, 'upstream 500: quota exceeded');
  });

  it('errorHandler() answers 404 problem+json for an unknown path', async () => {
    const res = await fetch(`${served.url}/nowhere?x=1`);
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { code: string }).code, 'NOT_FOUND');
  });

  it('errorHandler() answers 405 problem+json with Allow for a known path', async () => {
    const res = await fetch(`${served.url}/ok`, { method: 'DELETE' });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'GET, HEAD, OPTIONS');
    assert.equal(((await res.json()) as { code: string }).code, 'METHOD_NOT_ALLOWED');
  });

  it('errorHandler() cuts the connection when the error comes after the headers were sent', async () => {
    const res = await fetch(`${served.url}/half`);
    assert.equal(res.status, 200);
    await assert.rejects(res.text()); // truncated: never a 200 that looks complete
  });
});
