// metricsRoutes() on its own: the token check, the loopback rule and the reply, on a real server and directly.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../lib/errors.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import type { Route } from '../../lib/http/router.ts';
import type { Context, Reply } from '../../lib/http/types.ts';
import { createFailureThrottle } from '../../lib/limits/failure-throttle.ts';
import { CONTENT_TYPE } from '../../lib/metrics/registry.ts';
import { metricsRoutes } from '../../lib/metrics/routes.ts';
import { type Served, serve } from '../support/http.ts';

const TOKEN = 'metrics-token-for-tests';
const EXPOSITION = '# TYPE up gauge\nup 1\n';
/** The gate's parts that these tests do not vary: a real throttle, no trusted proxy. */
const gate = () => ({
  throttle: createFailureThrottle(10),
  addressKey: (address: string) => address,
  isTrustedProxy: () => false,
});

/** The /metrics route with counters of renders and denials. */
function metricsRoute(token: string | undefined): { route: Route; renders: number; denied: Context[] } {
  const state = { renders: 0, denied: [] as Context[] };
  const [route] = metricsRoutes({
    ...gate(),
    token,
    render: () => {
      state.renders++;
      return EXPOSITION;
    },
    onDenied: (ctx) => state.denied.push(ctx),
  });
  assert.ok(route !== undefined);
  return Object.assign(state, { route });
}

/** The fields the handler reads: the request's headers and its socket peer. */
function contextFrom(remoteAddress: string | undefined, headers: Record<string, string> = {}): Context {
  return { req: { headers, socket: { remoteAddress } }, clientIp: remoteAddress ?? '' } as unknown as Context;
}

async function call(route: Route, ctx: Context): Promise<Reply | AppError> {
  try {
    return await route.handler(ctx);
  } catch (err) {
    assert.ok(err instanceof AppError);
    return err;
  }
}

describe('metricsRoutes()', () => {
  it('metricsRoutes() declares one public GET /metrics route', () => {
    const routes = metricsRoutes({ ...gate(), token: undefined, render: () => '' });
    assert.deepEqual(
      routes.map((r) => [r.method, r.pattern, r.public]),
      [['GET', '/metrics', true]],
    );
  });
});

describe('GET /metrics with a token, on a server', () => {
  let served: Served;
  const metrics = metricsRoute(TOKEN);

  before(async () => {
    served = await serve([metrics.route], [requestId(), errorHandler()]);
  });
  after(() => served?.close());

  it('GET /metrics answers the bearer token with the rendered text and the exposition content type', async () => {
    const before = metrics.renders;
    const res = await fetch(`${served.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), CONTENT_TYPE);
    assert.equal(await res.text(), EXPOSITION);
    assert.equal(metrics.renders - before, 1, 'rendered per scrape');
  });

  it('GET /metrics answers 401 and WWW-Authenticate: Bearer, rendering nothing, to a peer with no token', async () => {
    const before = { renders: metrics.renders, denied: metrics.denied.length };
    const res = await fetch(`${served.url}/metrics`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(body['code'], 'UNAUTHORIZED');
    assert.equal(metrics.renders, before.renders);
    assert.equal(metrics.denied.length - before.denied, 1, 'onDenied hears of it');
  });

  it('GET /metrics refuses a longer token, a shorter one, the token without Bearer, and an empty header', async () => {
    for (const authorization of [`Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, TOKEN, '']) {
      const res = await fetch(`${served.url}/metrics`, { headers: { authorization } });
      assert.equal(res.status, 401, JSON.stringify(authorization.replace(TOKEN, '<token>')));
      await res.arrayBuffer();
    }
  });
});

describe('GET /metrics without a token, called directly', () => {
  const metrics = metricsRoute(undefined);

  it('GET /metrics answers loopback peers, IPv4, IPv6 and IPv4-mapped', async () => {
    for (const peer of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) {
      const reply = await call(metrics.route, contextFrom(peer));
      assert.deepEqual(reply, { kind: 'text', status: 200, body: EXPOSITION, contentType: CONTENT_TYPE }, peer);
    }
  });

  it('GET /metrics refuses a peer that is not loopback, or a socket that has no peer any more', async () => {
    for (const peer of [
      '10.0.0.1',
      '203.0.113.7',
      '::ffff:10.0.0.1',
      '::2',
      '1127.0.0.1',
      '127.0.0.1.nip.io',
      undefined,
    ]) {
      const reply = await call(metrics.route, contextFrom(peer));
      assert.ok(reply instanceof AppError && reply.code === 'UNAUTHORIZED', String(peer));
    }
  });

  it('GET /metrics refuses a loopback peer that relays a request, whichever relay header it sends', async () => {
    const before = metrics.denied.length;
    for (const header of ['x-forwarded-for', 'forwarded', 'x-real-ip', 'via']) {
      const reply = await call(metrics.route, contextFrom('127.0.0.1', { [header]: '203.0.113.7' }));
      assert.ok(reply instanceof AppError && reply.code === 'UNAUTHORIZED', header);
    }
    assert.equal(metrics.denied.length - before, 4);
  });

  it('GET /metrics with no token configured ignores a bearer token: a relayed request stays refused', async () => {
    const ctx = contextFrom('127.0.0.1', { authorization: `Bearer ${TOKEN}`, 'x-forwarded-for': '127.0.0.1' });
    const reply = await call(metrics.route, ctx);
    assert.ok(reply instanceof AppError && reply.code === 'UNAUTHORIZED');
  });
});

describe('GET /metrics with a token, called directly', () => {
  const metrics = metricsRoute(TOKEN);

  it('GET /metrics with the token answers whatever the peer and relay headers', async () => {
    const ctx = contextFrom('203.0.113.7', { authorization: `Bearer ${TOKEN}`, 'x-forwarded-for': '198.51.100.1' });
    const reply = await call(metrics.route, ctx);
    assert.deepEqual(reply, { kind: 'text', status: 200, body: EXPOSITION, contentType: CONTENT_TYPE });
  });

  it('GET /metrics with a token configured refuses a loopback peer that sends none', async () => {
    const reply = await call(metrics.route, contextFrom('127.0.0.1'));
    assert.ok(reply instanceof AppError && reply.code === 'UNAUTHORIZED');
    assert.deepEqual(reply.headers, { 'WWW-Authenticate': 'Bearer' });
  });
});
