import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../../lib/errors.ts';
import { bodyLimit } from '../../../lib/http/middleware/body-limit.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import { securityHeaderList, securityHeaders } from '../../../lib/http/middleware/security-headers.ts';
import { ok, rawRequest, route, type Served, serve } from '../../support/http.ts';
import { assertSecurityProfile } from '../../support/security-profile.ts';

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
    assertSecurityProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 404', async () => {
    const res = await fetch(`${served.url}/missing`);
    assert.equal(res.status, 404);
    assertSecurityProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 405', async () => {
    const res = await fetch(`${served.url}/ok`, { method: 'DELETE' });
    assert.equal(res.status, 405);
    assertSecurityProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 413', async () => {
    const res = await fetch(`${served.url}/upload`, { method: 'POST', body: 'x'.repeat(65) });
    assert.equal(res.status, 413);
    assertSecurityProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 429', async () => {
    const res = await fetch(`${served.url}/teapot`);
    assert.equal(res.status, 429);
    assertSecurityProfile(res.headers, true);
  });

  it('securityHeaders() sets the API profile on a 500', async () => {
    const res = await fetch(`${served.url}/boom`);
    assert.equal(res.status, 500);
    assertSecurityProfile(res.headers, true);
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
      assertSecurityProfile(res.headers, false);
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
