import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { type RateDecision, rateLimit } from '../../../lib/http/middleware/rate-limit.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Middleware } from '../../../lib/http/types.ts';
import { TEST_DATABASE_URL } from '../../support/config.ts';
import { ok, route, type Served, serve } from '../../support/http.ts';
import { bearer, createTestKey, msUntil, type TestKey } from '../../support/keys.ts';
import { startTestServer, type TestServer } from '../../support/server.ts';
import { startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.ts';

function getAgents(server: TestServer, key: TestKey): Promise<Response> {
  return fetch(`${server.url}/v1/agents`, { headers: bearer(key.key) });
}

async function agentsStatus(server: TestServer, key: TestKey): Promise<number> {
  const res = await getAgents(server, key);
  await res.arrayBuffer();
  return res.status;
}

/** Sends `times` requests one after another, round robin over the servers; returns the statuses. */
async function burst(servers: readonly TestServer[], key: TestKey, times: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < times; i++) out.push(await agentsStatus(servers[i % servers.length] as TestServer, key));
  return out;
}

describe('rateLimit() with the memory store in the real app', () => {
  let server: TestServer;

  before(async () => {
    // 120 a minute is one token every 500 ms: slow enough that the test's own latency, even on a
    // busy machine, never refills a token by accident, fast enough to watch a refill.
    server = await startTestServer({ RATE_LIMIT_BURST: '5', RATE_LIMIT_PER_MINUTE: '120' });
  });
  after(() => server.close());

  it('logs a rejection as a rate_limited security event with the identity', async () => {
    const key = await createTestKey(server.db.pool, 'rl-log');
    await burst([server], key, 6);
    const events = server.lines().filter((line) => line['kind'] === 'rate_limited');
    assert.deepEqual(
      events.map((event) => event['identity']),
      [key.identity],
    );
  });

  it('lets a burst of 5 through with RateLimit-Policy and a RateLimit header counting down', async () => {
    const key = await createTestKey(server.db.pool, 'rl-burst');
    const seen: Array<[number, string | null, string | null]> = [];
    for (let i = 0; i < 5; i++) {
      const res = await getAgents(server, key);
      await res.arrayBuffer();
      seen.push([res.status, res.headers.get('ratelimit-policy'), res.headers.get('ratelimit')]);
    }
    // draft-ietf-httpapi-ratelimit-headers-10: quota 5 per 3 s window (5 tokens at 2 a second);
    // r tokens left, t whole seconds until the bucket is full again
    assert.deepEqual(seen, [
      [200, '"default";q=5;w=3', '"default";r=4;t=1'],
      [200, '"default";q=5;w=3', '"default";r=3;t=1'],
      [200, '"default";q=5;w=3', '"default";r=2;t=2'],
      [200, '"default";q=5;w=3', '"default";r=1;t=2'],
      [200, '"default";q=5;w=3', '"default";r=0;t=3'],
    ]);
  });

  it('answers the 6th request of a burst of 5 with 429 RATE_LIMITED, Retry-After and RateLimit headers', async () => {
    const key = await createTestKey(server.db.pool, 'rl-sixth');
    assert.deepEqual(await burst([server], key, 5), [200, 200, 200, 200, 200]);
    const res = await getAgents(server, key);
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 429);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(body['code'], 'RATE_LIMITED');
    assert.equal(res.headers.get('retry-after'), '1');
    assert.equal(res.headers.get('ratelimit-policy'), '"default";q=5;w=3');
    assert.equal(res.headers.get('ratelimit'), '"default";r=0;t=1');
  });

  it('refills the bucket at the configured rate', async () => {
    const key = await createTestKey(server.db.pool, 'rl-refill');
    assert.deepEqual(await burst([server], key, 6), [200, 200, 200, 200, 200, 429]);
    // About 1.2 tokens come back in 600 ms at 2 a second: one request, not two. The memory
    // store's clock is the process's own monotonic clock, so here the test has to wait.
    await sleep(600);
    assert.deepEqual(await burst([server], key, 2), [200, 429]);
  });

  it('keeps one bucket per identity', async () => {
    const spent = await createTestKey(server.db.pool, 'rl-spent');
    const fresh = await createTestKey(server.db.pool, 'rl-fresh');
    await burst([server], spent, 6);
    assert.deepEqual(await burst([server], fresh, 5), [200, 200, 200, 200, 200]);
  });

  it('does not limit GET /health', async () => {
    const seen = [];
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`${server.url}/health`);
      await res.arrayBuffer();
      seen.push([res.status, res.headers.get('ratelimit')]);
    }
    assert.deepEqual(
      seen,
      Array.from({ length: 8 }, () => [200, null]),
    );
  });
});

describe('rateLimit() with the postgres store shared by two instances', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  const servers: TestServer[] = [];

  before(async () => {
    // One token a second, so the test's own latency cannot refill a token by accident.
    const env = { RATE_LIMIT_STORE: 'postgres', RATE_LIMIT_BURST: '5', RATE_LIMIT_PER_MINUTE: '60' };
    servers.push(await startTestServer(env), await startTestServer(env));
  });
  after(() => Promise.all(servers.map((server) => server.close())));

  it('shares one burst of 5 exactly between two instances under concurrent requests', async () => {
    const key = await createTestKey(servers[0]!.db.pool, 'rl-shared');
    const answers = await Promise.all(
      Array.from({ length: 12 }, async (_, i) => {
        const res = await getAgents(servers[i % 2]!, key);
        await res.arrayBuffer();
        return res.status;
      }),
    );
    assert.equal(answers.filter((status) => status === 200).length, 5);
    assert.equal(answers.filter((status) => status === 429).length, 7);
  });

  it('answers the 6th request across both instances with 429 and Retry-After', async () => {
    const key = await createTestKey(servers[0]!.db.pool, 'rl-shared-6th');
    assert.deepEqual(await burst(servers, key, 5), [200, 200, 200, 200, 200]);
    const res = await getAgents(servers[1]!, key);
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 429);
    assert.equal(body['code'], 'RATE_LIMITED');
    assert.equal(res.headers.get('retry-after'), '1');
    assert.equal(res.headers.get('ratelimit'), '"default";r=0;t=1');
  });

  it('refills the shared bucket at the configured rate of one token a second', async () => {
    const key = await createTestKey(servers[0]!.db.pool, 'rl-shared-refill');
    assert.deepEqual(await burst(servers, key, 6), [200, 200, 200, 200, 200, 429]);
    // The database clock decides; move the bucket's last update 2.5 s into the past instead of sleeping.
    await servers[0]!.db.pool.query(
      `UPDATE rate_limit_buckets SET updated_at = updated_at - interval '2.5 seconds' WHERE key = $1`,
      [key.identity],
    );
    assert.deepEqual(await burst(servers, key, 3), [200, 200, 429]);
  });
});

describe('rateLimit() when the postgres store fails', () => {
  let server: TestServer;
  let key: TestKey;
  let admin: pg.Pool | undefined;
  let schema: string | undefined;

  before(async () => {
    let databaseUrl: string | undefined;
    if (TEST_DATABASE_URL !== undefined) {
      // A schema of its own: dropping the buckets table must not touch other tests' database.
      schema = `rl_fail_${randomBytes(6).toString('hex')}`;
      admin = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 1 });
      await admin.query(`CREATE SCHEMA ${schema}`);
      const url = new URL(TEST_DATABASE_URL);
      url.searchParams.set('options', `-c search_path=${schema}`);
      databaseUrl = url.toString();
    }
    server = await startTestServer({ RATE_LIMIT_STORE: 'postgres', DATABASE_URL: databaseUrl });
    key = await createTestKey(server.db.pool, 'rl-down');
    await server.db.pool.query('DROP TABLE rate_limit_buckets');
  });
  after(async () => {
    await server?.close();
    if (admin !== undefined) {
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.end();
    }
  });

  function chat(): Promise<Response> {
    return fetch(`${server.url}/v1/chat`, {
      method: 'POST',
      headers: { ...bearer(key.key), 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'hello', stream: false }),
    });
  }

  it('answers POST /v1/chat with 503 RATE_LIMIT_UNAVAILABLE and Retry-After', async () => {
    const res = await chat();
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 503);
    assert.equal(body['code'], 'RATE_LIMIT_UNAVAILABLE');
    assert.equal(res.headers.get('retry-after'), '1');
  });

  it('sends no database error text in the 503 body', async () => {
    const res = await chat();
    const text = await res.text();
    assert.equal(res.status, 503);
    assert.deepEqual(Object.keys(JSON.parse(text) as object).sort(), ['code', 'requestId', 'status', 'title', 'type']);
    assert.doesNotMatch(text, /rate_limit_buckets|relation|does not exist/i);
  });

  it('logs the store failure with the request id', async () => {
    const res = await chat();
    await res.arrayBuffer();
    const requestId = res.headers.get('x-request-id') ?? '';
    const failures = server
      .lines()
      .filter(
        (line) => line['msg'] === 'rate-limit store failed; refusing requests' && line['requestId'] === requestId,
      );
    assert.equal(failures.length, 1);
    assert.equal(failures[0]?.['level'], 'error');
    assert.match(JSON.stringify(failures[0]), /rate_limit_buckets/);
  });

  it('keeps the process serving after a store failure', async () => {
    await (await chat()).arrayBuffer();
    const res = await fetch(`${server.url}/health`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 'ok' });
  });
});

describe('rateLimit() when the postgres store loses its database connection', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let proxy: TcpProxy;
  let server: TestServer;

  before(async () => {
    const target = new URL(TEST_DATABASE_URL as string);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    target.host = `${proxy.host}:${proxy.port}`;
    server = await startTestServer({ RATE_LIMIT_STORE: 'postgres', DATABASE_URL: target.toString() });
  });
  after(async () => {
    proxy?.setMode('pass');
    await server?.close();
    await proxy?.close();
  });

  function chat(key: TestKey): Promise<Response> {
    return fetch(`${server.url}/v1/chat`, {
      method: 'POST',
      headers: { ...bearer(key.key), 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'hello', stream: false }),
    });
  }

  it('answers POST /v1/chat from a validated key with 503 RATE_LIMIT_UNAVAILABLE as connections reset', async (t) => {
    const key = await createTestKey(server.db.pool, 'rl-reset');
    assert.equal(await agentsStatus(server, key), 200); // the key is now cached for 2 s
    proxy.setMode('reset');
    t.after(() => proxy.setMode('pass'));
    const res = await chat(key);
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 503);
    assert.equal(body['code'], 'RATE_LIMIT_UNAVAILABLE');
    assert.equal(res.headers.get('retry-after'), '1');
  });

  it('serves /v1 again once the database is reachable', async (t) => {
    const key = await createTestKey(server.db.pool, 'rl-heal');
    assert.equal(await agentsStatus(server, key), 200);
    proxy.setMode('reset');
    t.after(() => proxy.setMode('pass'));
    const refused = await chat(key);
    await refused.arrayBuffer();
    assert.equal(refused.status, 503);
    proxy.setMode('pass');
    await msUntil(async () => (await agentsStatus(server, key)) === 200, 5_000);
  });
});

describe('rateLimit() on its own', () => {
  let served: Served;
  const taken: string[] = [];
  let decide: (key: string) => RateDecision | Promise<RateDecision> = () => ALLOW;
  const ALLOW: RateDecision = { allowed: true, remaining: 4, resetSeconds: 1, retryAfterSeconds: 0 };
  const DENY: RateDecision = { allowed: false, remaining: 0, resetSeconds: 3, retryAfterSeconds: 2 };
  // Stands in for auth: a request with x-test-identity is identified, any other is anonymous.
  const identify: Middleware = function identifyMiddleware(ctx, next) {
    const id = ctx.req.headers['x-test-identity'];
    if (typeof id === 'string') ctx.identity = { id, kind: 'key' };
    return next();
  };

  before(async () => {
    served = await serve(
      [route('GET', '/anywhere', ok()), route('GET', '/v1/things', ok())],
      [
        requestId(),
        errorHandler(),
        identify,
        rateLimit({
          take: ({ id }) => {
            taken.push(id);
            return decide(id);
          },
          headers: (decision) => ['ratelimit', `r=${decision.remaining}`],
        }),
      ],
    );
  });
  after(() => served.close());

  async function call(path: string, identity?: string): Promise<{ status: number; code: unknown; header: unknown }> {
    const headers: Record<string, string> = identity === undefined ? {} : { 'x-test-identity': identity };
    const res = await fetch(`${served.url}${path}`, { headers });
    const body = (await res.json()) as { code?: unknown };
    return { status: res.status, code: body.code, header: res.headers.get('ratelimit') };
  }

  it('rateLimit() takes no token for a request without an identity', async () => {
    decide = () => ALLOW;
    taken.length = 0;
    assert.equal((await call('/v1/things')).status, 200);
    assert.deepEqual(taken, []);
  });

  it('rateLimit() takes a token for an identified request on any route, not only under /v1/', async () => {
    decide = () => ALLOW;
    taken.length = 0;
    assert.deepEqual(await call('/anywhere', 'key:a'), { status: 200, code: undefined, header: 'r=4' });
    assert.deepEqual(taken, ['key:a']);
  });

  it('rateLimit() answers 429 RATE_LIMITED with Retry-After from a store that decides synchronously', async () => {
    decide = () => DENY;
    const res = await fetch(`${served.url}/anywhere`, { headers: { 'x-test-identity': 'key:b' } });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '2');
    assert.equal(((await res.json()) as { code: string }).code, 'RATE_LIMITED');
  });

  it('rateLimit() waits for a store that decides asynchronously', async () => {
    decide = async () => ALLOW;
    assert.deepEqual(await call('/anywhere', 'key:c'), { status: 200, code: undefined, header: 'r=4' });
    decide = async () => DENY;
    assert.equal((await call('/anywhere', 'key:c')).status, 429);
  });

  it('rateLimit() fails closed with 503 RATE_LIMIT_UNAVAILABLE when the store throws or rejects', async () => {
    decide = () => {
      throw new Error('store down');
    };
    assert.deepEqual(await call('/anywhere', 'key:d'), { status: 503, code: 'RATE_LIMIT_UNAVAILABLE', header: null });
    decide = async () => Promise.reject(new Error('store down'));
    assert.deepEqual(await call('/anywhere', 'key:d'), { status: 503, code: 'RATE_LIMIT_UNAVAILABLE', header: null });
  });
});
