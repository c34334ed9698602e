import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../../lib/errors.ts';
import { auth } from '../../../lib/http/middleware/auth.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Identity } from '../../../lib/http/types.ts';
import { createFailureThrottle } from '../../../lib/limits/failure-throttle.ts';
import { TEST_DATABASE_URL } from '../../support/config.ts';
import { ok, route, type Served, serve } from '../../support/http.ts';
import { bearer, createTestKey, mintJwt, msUntil, type TestKey, unsignedJwt } from '../../support/keys.ts';
import { startTestServer, type TestServer } from '../../support/server.ts';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.ts';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

/** GET over a fresh connection, optionally from another loopback source address (127.0.0.0/8 is all ours). */
function get(url: string, options: { headers?: Record<string, string>; localAddress?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: options.headers, localAddress: options.localAddress, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

const BAD_KEY = { authorization: 'Bearer not-a-credential' };

async function statuses(
  url: string,
  times: number,
  options: Parameters<typeof get>[1] | ((i: number) => Parameters<typeof get>[1]),
): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < times; i++)
    out.push((await get(url, typeof options === 'function' ? options(i) : options)).status);
  return out;
}

describe('auth() in the real app', () => {
  let server: TestServer;
  let agents: string;
  let apiKey: TestKey;
  let lastOctet = 0;
  /** A loopback source address no other test has used, so no test spends another's failure allowance. */
  const fresh = (headers?: Record<string, string>) => ({ headers, localAddress: `127.0.1.${++lastOctet}` });

  before(async () => {
    // AUTH_FAILURES_PER_MINUTE left at its default (10). Only 127.0.0.1 is a trusted proxy, so
    // requests from other loopback addresses are clients whose X-Forwarded-For must be ignored.
    server = await startTestServer({ TRUST_PROXY: '127.0.0.1' });
    agents = `${server.url}/v1/agents`;
    apiKey = await createTestKey(server.db.pool, 'auth');
  });
  after(() => server.close());

  // These two come first: security events are limited to 20 lines a second per server, and the
  // tests after them write far more; 1 + 11 events fit in any one second.
  it('logs a failed attempt as a security event with the address and request id but not the token', async () => {
    const token = `csk_${'B'.repeat(43)}`;
    const from = fresh(bearer(token));
    const res = await get(agents, from);
    const events = server
      .lines()
      .filter((line) => line['requestId'] === res.headers['x-request-id'] && line['event'] === 'security');
    assert.equal(events.length, 1);
    assert.equal(events[0]?.['kind'], 'auth_failure');
    assert.equal(events[0]?.['ip'], from.localAddress);
    assert.ok(!server.logs().includes('B'.repeat(43)));
  });

  it('logs failed and throttled attempts as auth_failure and auth_throttled security events', async () => {
    await statuses(agents, 11, { headers: BAD_KEY, localAddress: '127.0.0.7' });
    const kinds = server
      .lines()
      .filter((line) => line['event'] === 'security' && line['ip'] === '127.0.0.7')
      .map((line) => line['kind']);
    assert.deepEqual(kinds, [...Array<string>(10).fill('auth_failure'), 'auth_throttled']);
  });

  it('answers a request without credentials with 401 problem+json and WWW-Authenticate: Bearer', async () => {
    const res = await get(agents, fresh());
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer');
    assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
    assert.equal(res.body['code'], 'UNAUTHORIZED');
    assert.equal(res.body['status'], 401);
    assert.equal(res.body['requestId'], res.headers['x-request-id']);
  });

  it('answers a garbage bearer token with 401 and error="invalid_token"', async () => {
    const res = await get(agents, fresh(BAD_KEY));
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"');
    assert.equal(res.body['code'], 'INVALID_TOKEN');
  });

  it('answers another authorization scheme with 401 and error="invalid_token"', async () => {
    const res = await get(agents, fresh({ authorization: `Basic ${Buffer.from('user:pass').toString('base64')}` }));
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"');
  });

  it('answers an unknown API key with 401 and error="invalid_token"', async () => {
    const res = await get(agents, fresh(bearer(`csk_${'A'.repeat(43)}`)));
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"');
  });

  it('accepts a stored API key on GET /v1/agents', async () => {
    const res = await get(agents, fresh(bearer(apiKey.key)));
    assert.equal(res.status, 200);
    assert.ok(Array.isArray(res.body['agents']));
  });

  it('accepts a valid HS256 JWT signed with JWT_SECRET on GET /v1/agents', async () => {
    const res = await get(agents, fresh(bearer(await mintJwt({ sub: 'user-200' }))));
    assert.equal(res.status, 200);
    assert.ok(Array.isArray(res.body['agents']));
  });

  it('accepts the Bearer scheme in any letter case', async () => {
    const res = await get(agents, fresh({ authorization: `bEaReR ${apiKey.key}` }));
    assert.equal(res.status, 200);
  });

  it('refuses an alg "none" JWT with 401', async () => {
    const res = await get(agents, fresh(bearer(unsignedJwt())));
    assert.equal(res.status, 401);
    assert.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"');
  });

  it('refuses an expired JWT with 401', async () => {
    // Two minutes past exp: beyond the 60 s leeway.
    const res = await get(agents, fresh(bearer(await mintJwt({ sub: 'user-1' }, { expiresInSeconds: -120 }))));
    assert.equal(res.status, 401);
  });

  it('refuses a JWT without exp with 401', async () => {
    const res = await get(agents, fresh(bearer(await mintJwt({ sub: 'user-1' }, { expiresInSeconds: null }))));
    assert.equal(res.status, 401);
  });

  it('refuses a JWT minted for another service with the same secret, or without aud, with 401', async () => {
    for (const audience of ['billing-service', null]) {
      const res = await get(agents, fresh(bearer(await mintJwt({ sub: 'user-1' }, { audience }))));
      assert.equal(res.status, 401, `aud ${String(audience)}`);
      assert.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"');
    }
  });

  it('refuses a JWT signed with another secret with 401', async () => {
    const res = await get(
      agents,
      fresh(bearer(await mintJwt({ sub: 'user-1' }, { secret: 'another-secret-of-at-least-32-bytes!!' }))),
    );
    assert.equal(res.status, 401);
  });

  it('gives the same answer for every kind of bad credential, so a guess learns nothing', async () => {
    const tokens = [
      'not-a-credential',
      `csk_${'A'.repeat(43)}`,
      unsignedJwt(),
      await mintJwt({ sub: 'user-1' }, { expiresInSeconds: -120 }),
      await mintJwt({ sub: 'user-1' }, { secret: 'another-secret-of-at-least-32-bytes!!' }),
    ];
    const bodies = new Set<string>();
    for (const token of tokens) {
      const { requestId: _, ...body } = (await get(agents, fresh(bearer(token)))).body;
      bodies.add(JSON.stringify(body));
    }
    assert.deepEqual(
      [...bodies],
      [
        JSON.stringify({
          type: 'about:blank',
          title: 'Invalid credentials',
          status: 401,
          code: 'INVALID_TOKEN',
          detail: 'Invalid credentials',
        }),
      ],
    );
  });

  it('serves GET /health without credentials', async () => {
    const res = await get(`${server.url}/health`, fresh());
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { status: 'ok' });
  });

  describe('failed-attempt throttle', () => {
    it('turns 40 bad credentials from one address into 10 401s and then 429s', async () => {
      const seen = await statuses(agents, 40, { headers: BAD_KEY, localAddress: '127.0.0.2' });
      assert.deepEqual(seen, [...Array<number>(10).fill(401), ...Array<number>(30).fill(429)]);
    });

    it('answers a throttled address with 429 AUTH_THROTTLED problem+json, Retry-After in whole seconds', async () => {
      await statuses(agents, 10, { headers: BAD_KEY, localAddress: '127.0.0.3' });
      const res = await get(agents, { headers: BAD_KEY, localAddress: '127.0.0.3' });
      assert.equal(res.status, 429);
      assert.equal(res.body['code'], 'AUTH_THROTTLED');
      assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
      assert.match(String(res.headers['retry-after']), /^[1-9]\d*$/);
      assert.ok(
        Number(res.headers['retry-after']) <= 6,
        `Retry-After ${String(res.headers['retry-after'])} exceeds one refill (6 s)`,
      );
    });

    it('lets a cached valid key through a throttled address: a valid key is no guess', async () => {
      const from = { localAddress: '127.0.3.1' };
      assert.equal((await get(agents, { ...from, headers: bearer(apiKey.key) })).status, 200);
      await statuses(agents, 10, { ...from, headers: BAD_KEY });
      assert.equal((await get(agents, { ...from, headers: BAD_KEY })).status, 429, 'the address is throttled');
      assert.equal((await get(agents, { ...from, headers: bearer(apiKey.key) })).status, 200);
    });

    it('lets a valid JWT through a throttled address: it is checked without the database', async () => {
      const from = { localAddress: '127.0.3.2' };
      await statuses(agents, 11, { ...from, headers: BAD_KEY });
      const res = await get(agents, { ...from, headers: bearer(await mintJwt({ sub: 'user-throttled' })) });
      assert.equal(res.status, 200);
    });

    it('looks up an uncached valid key from a throttled address when its probe is due', async () => {
      const from = { localAddress: '127.0.3.3' };
      await statuses(agents, 10, { ...from, headers: BAD_KEY });
      const key = await createTestKey(server.db.pool, 'throttled-new');
      assert.equal((await get(agents, { ...from, headers: bearer(key.key) })).status, 200);
    });

    it('gives a throttled address one lookup a second: a new valid key behind a guesser waits a second', async () => {
      const from = { localAddress: '127.0.3.4' };
      await statuses(agents, 10, { ...from, headers: BAD_KEY });
      // The guesser takes this second's lookup; the valid key is refused unchecked until the next one.
      assert.equal((await get(agents, { ...from, headers: bearer(`csk_${'G'.repeat(43)}`) })).status, 429);
      const key = await createTestKey(server.db.pool, 'throttled-behind');
      const refused = await get(agents, { ...from, headers: bearer(key.key) });
      assert.equal(refused.status, 429);
      assert.equal(refused.headers['retry-after'], '1');
      const ms = await msUntil(
        async () => (await get(agents, { ...from, headers: bearer(key.key) })).status === 200,
        3_000,
      );
      assert.ok(ms < 3_000);
    });

    it('throttles one address without affecting another', async () => {
      await statuses(agents, 10, { headers: BAD_KEY, localAddress: '127.0.0.5' });
      assert.equal((await get(agents, { headers: bearer(apiKey.key), localAddress: '127.0.0.6' })).status, 200);
    });

    it('ignores X-Forwarded-For from a peer that is not a trusted proxy', async () => {
      const seen = await statuses(agents, 11, (i) => ({
        headers: { ...BAD_KEY, 'x-forwarded-for': `203.0.113.${i + 1}` },
        localAddress: '127.0.0.8',
      }));
      assert.equal(seen[10], 429);
    });

    it('keys failures behind a trusted proxy to the right-most untrusted XFF entry, not a spoofed one', async () => {
      // The client rotates a forged left-most entry; the proxy appended the address it really saw.
      const seen = await statuses(agents, 11, (i) => ({
        headers: { ...BAD_KEY, 'x-forwarded-for': `198.18.0.${i + 1}, 198.51.100.7` },
      }));
      assert.deepEqual(seen, [...Array<number>(10).fill(401), 429]);
    });

    it('throttles one forwarded client without affecting another behind the same proxy', async () => {
      await statuses(agents, 10, { headers: { ...BAD_KEY, 'x-forwarded-for': '198.51.100.20' } });
      const res = await get(agents, { headers: { ...bearer(apiKey.key), 'x-forwarded-for': '198.51.100.21' } });
      assert.equal(res.status, 200);
    });
  });
});

describe('auth() when the key store is unreachable', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let proxy: TcpProxy;
  let server: TestServer;
  let agents: string;

  before(async () => {
    const target = new URL(TEST_DATABASE_URL as string);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    target.host = `${proxy.host}:${proxy.port}`;
    server = await startTestServer({ DATABASE_URL: target.toString() });
    agents = `${server.url}/v1/agents`;
  });
  after(async () => {
    proxy?.setMode('pass');
    await server?.close();
    await proxy?.close();
  });

  it('answers a key it has not cached with a 5xx, never a 401, while the database resets connections', async (t) => {
    const key = await createTestKey(server.db.pool, 'auth-outage');
    proxy.setMode('reset');
    t.after(() => proxy.setMode('pass'));
    const res = await get(agents, { headers: bearer(key.key), localAddress: '127.0.2.1' });
    // An outage must not tell a client its credential is invalid.
    assert.ok(res.status >= 500, `status ${res.status}`);
    assert.equal(res.headers['www-authenticate'], undefined);
    assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
  });

  it('does not count lookups the database could not answer as failed attempts', async (t) => {
    const key = await createTestKey(server.db.pool, 'auth-outage-throttle');
    proxy.setMode('reset');
    t.after(() => proxy.setMode('pass'));
    const during = await statuses(agents, 12, { headers: bearer(key.key), localAddress: '127.0.2.2' });
    assert.ok(
      during.every((status) => status >= 500),
      `statuses ${during.join(',')}`,
    );
    proxy.setMode('pass');
    // The pool reconnects on the next query; the address must not have been throttled meanwhile.
    await msUntil(
      async () => (await get(agents, { headers: bearer(key.key), localAddress: '127.0.2.2' })).status === 200,
      5_000,
    );
  });
});

describe('auth() decides protection by route, not by path', () => {
  let served: Served;
  const IDENTITY: Identity = { id: 'key:route-test', kind: 'key' };

  before(async () => {
    served = await serve(
      [
        route('GET', '/open', ok(), { public: true }),
        route('GET', '/closed', (ctx) => ({ kind: 'json', status: 200, body: { identity: ctx.identity?.id } })),
        route('GET', '/v1/things', ok()),
      ],
      [
        requestId(),
        errorHandler(),
        auth({
          authenticate: async (token) => {
            if (token === 'good') return IDENTITY;
            throw new AppError('INVALID_TOKEN');
          },
          throttle: createFailureThrottle(1_000),
          addressKey: (address) => address,
        }),
      ],
    );
  });
  after(() => served.close());

  async function call(method: string, path: string, token?: string): Promise<{ status: number; code: unknown }> {
    const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
    const res = await fetch(`${served.url}${path}`, { method, headers });
    const text = await res.text();
    return { status: res.status, code: text === '' ? undefined : (JSON.parse(text) as { code?: unknown }).code };
  }

  it('auth() lets a route marked public through without credentials', async () => {
    assert.deepEqual(await call('GET', '/open'), { status: 200, code: undefined });
  });

  it('auth() refuses a route without the public flag outside /v1/ with 401', async () => {
    assert.deepEqual(await call('GET', '/closed'), { status: 401, code: 'UNAUTHORIZED' });
  });

  it('auth() sets the identity on a protected route for a valid credential', async () => {
    const res = await fetch(`${served.url}/closed`, { headers: { authorization: 'Bearer good' } });
    assert.deepEqual(await res.json(), { identity: IDENTITY.id });
  });

  it('auth() answers an unknown path under /v1/ with the same 401 as a known one', async () => {
    assert.deepEqual(await call('GET', '/v1/nothing'), await call('GET', '/v1/things'));
    assert.deepEqual(await call('GET', '/v1/nothing'), { status: 401, code: 'UNAUTHORIZED' });
  });

  it('auth() leaves an unknown path outside /v1/ to its 404', async () => {
    assert.deepEqual(await call('GET', '/nothing'), { status: 404, code: 'NOT_FOUND' });
  });

  it('auth() answers a wrong method on a protected path 401 before its 405', async () => {
    assert.deepEqual(await call('DELETE', '/v1/things'), { status: 401, code: 'UNAUTHORIZED' });
    assert.deepEqual(await call('DELETE', '/v1/things', 'good'), { status: 405, code: 'METHOD_NOT_ALLOWED' });
  });

  it('auth() answers a wrong method on a public path 405 without credentials', async () => {
    assert.deepEqual(await call('DELETE', '/open'), { status: 405, code: 'METHOD_NOT_ALLOWED' });
  });
});
