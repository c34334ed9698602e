import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AppError } from '../../../lib/errors.ts';
import { bodyLimit } from '../../../lib/http/middleware/body-limit.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import { securityHeaderList, securityHeaders } from '../../../lib/http/middleware/security-headers.ts';
import { ok, rawRequest, route, serve, type Served } from '../../support/http.ts';

// DESIGN.md, "The HTTP contract": the API profile every response carries.
const EXPECTED: Record<string, string> = {
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cache-control': 'no-store',
  'x-xss-protection': '0',
};

function assertProfile(headers: Headers, hsts: boolean): void {
  for (const [name, value] of Object.entries(EXPECTED)) assert.equal(headers.get(name), value, name);
  const permissions = headers.get('permissions-policy') ?? '';
  assert.match(permissions, /camera=\(\)/);
  assert.match(permissions, /geolocation=\(\)/);
  assert.match(permissions, /microphone=\(\)/);
  assert.equal(headers.get('x-powered-by'), null);
  assert.equal(headers.get('server'), null);
  if (hsts) assert.equal(headers.get('strict-transport-security'), 'max-age=31536000; includeSubDomains');
  else assert.equal(headers.get('strict-transport-security'), null);
}

describe('securityHeaders()', () => {
  let served: Served;
  before(async () => {
    served = await serve(
      [
        route('GET', '/ok', ok()),
        route('POST', '/upload', ok()),
        route('GET', '/boom', async () => {
          throw new Error('boom');
        }),
        route('GET', '/teapot', async () => {
          throw new AppError('RATE_LIMITED', { headers: { 'Retry-After': '3' } });
        }),
      ],
      [requestId(), securityHeaders({ hsts: true }), errorHandler(), bodyLimit(64)],
    );
  });
  after(() => served.close());

  it('securityHeaders() sets the API profile on a 200', async () => {
    const res = await fetch(`${served.url}/ok`);
    assert.equal(res.status, 200);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 404', async () => {
    const res = await fetch(`${served.url}/missing`);
    assert.equal(res.status, 404);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 405', async () => {
    const res = await fetch(`${served.url}/ok`, { method: 'DELETE' });
    assert.equal(res.status, 405);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 413', async () => {
    const res = await fetch(`${served.url}/upload`, { method: 'POST', body: 'x'.repeat(65) });
    assert.equal(res.status, 413);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 429', async () => {
    const res = await fetch(`${served.url}/teapot`);
    assert.equal(res.status, 429);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 500', async () => {
    const res = await fetch(`${served.url}/boom`);
    assert.equal(res.status, 500);
    assertProfile(res.headers, true);
  });

  it('securityHeaders() sends each header once', async () => {
    const response = await rawRequest(served.port, 'GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
    const names = response
      .split('\r\n\r\n')[0]!
      .split('\r\n')
      .slice(1)
      .map((line) => line.slice(0, line.indexOf(':')).toLowerCase());
    assert.equal(names.length, new Set(names).size, names.join(', '));
  });

  describe('with HSTS off', () => {
    let plain: Served;
    before(async () => {
      plain = await serve([route('GET', '/ok', ok())], [securityHeaders({ hsts: false }), errorHandler()]);
    });
    after(() => plain.close());

    it('securityHeaders({hsts: false}) sends no strict-transport-security', async () => {
      const res = await fetch(`${plain.url}/ok`);
      assertProfile(res.headers, false);
    });
  });
});

describe('securityHeaderList()', () => {
  it('securityHeaderList() returns flat name/value pairs with lower-case names', () => {
    const list = securityHeaderList({ hsts: true });
    assert.equal(list.length % 2, 0);
    for (let i = 0; i < list.length; i += 2) assert.equal(list[i], list[i]?.toLowerCase());
    assert.ok(list.includes('strict-transport-security'));
    assert.ok(!securityHeaderList({ hsts: false }).includes('strict-transport-security'));
  });
});
