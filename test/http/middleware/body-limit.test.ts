import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bodyLimit } from '../../../lib/http/middleware/body-limit.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Middleware } from '../../../lib/http/types.ts';
import { rawRequest, rawStatus, route, type Served, serve } from '../../support/http.ts';

const MAX_BYTES = 100;

describe('bodyLimit()', () => {
  let served: Served;
  let handled = 0;
  let laterMiddleware = 0;
  const later: Middleware = async function laterMiddleware_(_ctx, next) {
    laterMiddleware++;
    await next();
  };

  before(async () => {
    served = await serve(
      [
        route('POST', '/upload', async (ctx) => {
          handled++;
          ctx.req.resume();
          return { kind: 'json', status: 200, body: { ok: true } };
        }),
      ],
      [requestId(), errorHandler(), bodyLimit(MAX_BYTES), later],
    );
  });
  after(() => served.close());

  it('bodyLimit() answers 413 problem+json for an over-cap declared length before anything after it runs', async () => {
    const before = { handled, laterMiddleware };
    const res = await fetch(`${served.url}/upload`, { method: 'POST', body: 'x'.repeat(MAX_BYTES + 1) });
    assert.equal(res.status, 413);
    assert.equal(res.headers.get('content-type'), 'application/problem+json; charset=utf-8');
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(body['code'], 'BODY_TOO_LARGE');
    assert.equal(body['status'], 413);
    assert.equal(body['requestId'], res.headers.get('x-request-id'));
    assert.deepEqual({ handled, laterMiddleware }, before);
  });

  it('bodyLimit() closes the connection after a 413, since the body is never read', async () => {
    const res = await fetch(`${served.url}/upload`, { method: 'POST', body: 'x'.repeat(MAX_BYTES + 1) });
    assert.equal(res.headers.get('connection'), 'close');
  });

  it('bodyLimit() answers before the body is sent', async () => {
    const response = await rawRequest(
      served.port,
      `POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\n\r\nx`,
    );
    assert.equal(rawStatus(response), 413);
  });

  it('bodyLimit() lets a declared length equal to the cap through', async () => {
    const res = await fetch(`${served.url}/upload`, { method: 'POST', body: 'x'.repeat(MAX_BYTES) });
    assert.equal(res.status, 200);
  });

  it('bodyLimit() lets a body without Content-Length through to the counting reader', async () => {
    const response = await rawRequest(
      served.port,
      'POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n',
      `${(MAX_BYTES * 2).toString(16)}\r\n${'x'.repeat(MAX_BYTES * 2)}\r\n0\r\n\r\n`,
    );
    assert.equal(rawStatus(response), 200);
  });

  it('bodyLimit() lets a request without a body through', async () => {
    const res = await fetch(`${served.url}/upload`, { method: 'POST' });
    assert.equal(res.status, 200);
  });
});
