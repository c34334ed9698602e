import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cors } from '../../../lib/http/middleware/cors.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Context } from '../../../lib/http/types.ts';
import { ok, route, type Served, serve } from '../../support/http.ts';

const ALLOWED = 'https://app.example.com';
const FOREIGN = 'https://evil.example.net';

function corsHeaders(headers: Headers): string[] {
  return [...headers.keys()].filter((name) => name.startsWith('access-control-'));
}

describe('cors()', () => {
  let served: Served;
  const rejected: string[] = [];

  before(async () => {
    served = await serve(
      [route('GET', '/v1/agents', ok({ agents: [] })), route('POST', '/v1/chat', ok())],
      [
        requestId(),
        errorHandler(),
        cors({
          origins: [ALLOWED, 'http://localhost:5173'],
          maxAgeSeconds: 600,
          onReject: (_ctx: Context, origin: string) => rejected.push(origin),
        }),
      ],
    );
  });
  after(() => served.close());

  function preflight(origin: string, path = '/v1/chat', method = 'POST'): Promise<Response> {
    return fetch(`${served.url}${path}`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': method,
        'access-control-request-headers': 'authorization, content-type',
      },
    });
  }

  it('cors() marks a simple request from an allowed origin with allow-origin and vary: origin', async () => {
    const res = await fetch(`${served.url}/v1/agents`, { headers: { origin: ALLOWED } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED);
    assert.equal(res.headers.get('vary'), 'origin');
    assert.match(res.headers.get('access-control-expose-headers') ?? '', /x-request-id/);
  });

  it('cors() never answers allow-origin "*" or allows credentials', async () => {
    const res = await fetch(`${served.url}/v1/agents`, { headers: { origin: ALLOWED } });
    assert.notEqual(res.headers.get('access-control-allow-origin'), '*');
    assert.equal(res.headers.get('access-control-allow-credentials'), null);
  });

  it('cors() gives a simple request from a foreign origin no CORS headers', async () => {
    const res = await fetch(`${served.url}/v1/agents`, { headers: { origin: FOREIGN } });
    assert.equal(res.status, 200);
    assert.deepEqual(corsHeaders(res.headers), []);
    assert.equal(res.headers.get('vary'), 'origin');
  });

  it('cors() gives a request without Origin no CORS headers but still varies on origin', async () => {
    const res = await fetch(`${served.url}/v1/agents`);
    assert.deepEqual(corsHeaders(res.headers), []);
    assert.equal(res.headers.get('vary'), 'origin');
  });

  for (const near of [
    'https://app.example.com.evil.example.net',
    'http://app.example.com',
    'https://app.example.com:8443',
    'https://xapp.example.com',
    'null',
  ]) {
    it(`cors() matches origins exactly and refuses ${near}`, async () => {
      const res = await fetch(`${served.url}/v1/agents`, { headers: { origin: near } });
      assert.deepEqual(corsHeaders(res.headers), []);
    });
  }

  it('cors() answers an allowed preflight 204: allow-origin, methods, headers, max-age and vary: origin', async () => {
    const res = await preflight(ALLOWED);
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('access-control-allow-origin'), ALLOWED);
    assert.match(res.headers.get('access-control-allow-methods') ?? '', /\bPOST\b/);
    assert.match(res.headers.get('access-control-allow-headers') ?? '', /\bauthorization\b/);
    assert.match(res.headers.get('access-control-allow-headers') ?? '', /\bcontent-type\b/);
    assert.equal(res.headers.get('access-control-max-age'), '600');
    assert.equal(res.headers.get('vary'), 'origin');
    assert.equal(await res.text(), '');
  });

  it('cors() answers a foreign preflight 403 with no CORS headers and reports it', async () => {
    const res = await preflight(FOREIGN);
    assert.equal(res.status, 403);
    assert.deepEqual(corsHeaders(res.headers), []);
    assert.equal(((await res.json()) as { code: string }).code, 'CORS_REJECTED');
    assert.ok(rejected.includes(FOREIGN));
  });

  it('cors() answers an allowed preflight for an unknown path 404', async () => {
    const res = await preflight(ALLOWED, '/v1/nothing');
    assert.equal(res.status, 404);
    assert.deepEqual(corsHeaders(res.headers), []);
  });

  it('cors() answers a plain OPTIONS on a known path 204 with Allow', async () => {
    const res = await fetch(`${served.url}/v1/chat`, { method: 'OPTIONS' });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('allow'), 'OPTIONS, POST');
    assert.deepEqual(corsHeaders(res.headers), []);
  });

  it('cors() answers a plain OPTIONS on an unknown path 404', async () => {
    const res = await fetch(`${served.url}/v1/nothing`, { method: 'OPTIONS' });
    assert.equal(res.status, 404);
  });
});
