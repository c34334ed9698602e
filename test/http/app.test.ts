// createApp() on a real node:http server: the context it builds, the final dispatch, and its last-resort answer.
import assert from 'node:assert/strict';
import { createServer, IncomingMessage, request, ServerResponse } from 'node:http';
import { type AddressInfo, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../lib/errors.ts';
import { API_PREFIX, createApp, queryParams, RequestContext, UNMATCHED_ROUTE } from '../../lib/http/app.ts';
import { createClientIp } from '../../lib/http/client-ip.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import { securityHeaders } from '../../lib/http/middleware/security-headers.ts';
import { constantJson } from '../../lib/http/respond.ts';
import { createRouter, type Route } from '../../lib/http/router.ts';
import type { Middleware } from '../../lib/http/types.ts';
import { createLogger } from '../../lib/log.ts';
import { ok, route, type Served, serve } from '../support/http.ts';

/** What a middleware saw of the context, as JSON the test can compare. */
interface Seen {
  route: string;
  kind: string;
  requiresIdentity: boolean;
  params: Record<string, string>;
}

const PUBLIC_ROUTE: Route = { method: 'GET', pattern: '/open', handler: () => constantJson(200, {}), public: true };

describe('createApp()', () => {
  let served: Served;
  const seen = new Map<string, Seen>();
  // Records the context every later middleware and the handler see.
  const record: Middleware = function recordMiddleware(ctx, next) {
    const { match } = ctx;
    seen.set(ctx.requestId, {
      route: ctx.route,
      kind: match.kind,
      requiresIdentity: ctx.requiresIdentity,
      params: ctx.params,
    });
    return next();
  };

  before(async () => {
    served = await serve(
      [
        PUBLIC_ROUTE,
        route('GET', '/v1/items/:id', ok()),
        route('GET', '/private', ok()),
        route('GET', '/query', (ctx) => ({ kind: 'json', status: 200, body: Object.fromEntries(queryParams(ctx)) })),
      ],
      [requestId(), errorHandler(), record],
    );
  });
  after(() => served.close());

  async function visit(method: string, path: string): Promise<{ res: Response; ctx: Seen | undefined }> {
    const res = await fetch(`${served.url}${path}`, { method });
    await res.arrayBuffer();
    return { res, ctx: seen.get(res.headers.get('x-request-id') ?? '') };
  }

  it('createApp() gives a matched route its pattern and params, and requires an identity by default', async () => {
    const { res, ctx } = await visit('GET', '/v1/items/a%20b');
    assert.equal(res.status, 200);
    assert.deepEqual(ctx, { route: '/v1/items/:id', kind: 'found', requiresIdentity: true, params: { id: 'a b' } });
  });

  it('createApp() requires an identity on a route outside the API prefix that is not marked public', async () => {
    const { ctx } = await visit('GET', '/private');
    assert.equal(ctx?.requiresIdentity, true);
  });

  it('createApp() requires no identity on a route marked public', async () => {
    const { res, ctx } = await visit('GET', '/open');
    assert.equal(res.status, 200);
    assert.deepEqual(ctx, { route: '/open', kind: 'found', requiresIdentity: false, params: {} });
  });

  it(`createApp() requires an identity on an unmatched path under ${API_PREFIX} and none elsewhere`, async () => {
    const inside = await visit('GET', '/v1/nothing/here');
    assert.deepEqual(inside.ctx, { route: UNMATCHED_ROUTE, kind: 'not-found', requiresIdentity: true, params: {} });
    const outside = await visit('GET', '/nothing/here');
    assert.deepEqual(outside.ctx, { route: UNMATCHED_ROUTE, kind: 'not-found', requiresIdentity: false, params: {} });
  });

  it('createApp() answers an unmatched path 404 NOT_FOUND problem+json', async () => {
    const res = await fetch(`${served.url}/nothing/here`);
    assert.equal(res.status, 404);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(((await res.json()) as { code: string }).code, 'NOT_FOUND');
  });

  it('createApp() answers a known path with another method 405 with Allow, public only if the path is', async () => {
    const open = await visit('POST', '/open');
    assert.equal(open.res.status, 405);
    assert.equal(open.res.headers.get('allow'), 'GET, HEAD, OPTIONS');
    assert.equal(open.ctx?.requiresIdentity, false);
    const items = await visit('DELETE', '/v1/items/1');
    assert.equal(items.res.status, 405);
    assert.equal(items.ctx?.requiresIdentity, true);
  });

  it('createApp() serves HEAD with the GET handler and no body', async () => {
    const res = await fetch(`${served.url}/open`, { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), '2');
    assert.equal(await res.text(), '');
  });

  it('queryParams() parses the raw query string of the request', async () => {
    const res = await fetch(`${served.url}/query?limit=5&cursor=a%2Bb&limit=6`);
    assert.deepEqual(await res.json(), { limit: '6', cursor: 'a+b' });
  });
});

describe('createApp() without an error handler', () => {
  let served: Served;
  before(async () => {
    served = await serve(
      [
        route('GET', '/throws', () => {
          throw new Error('no error middleware to answer this');
        }),
      ],
      [securityHeaders({ hsts: false })],
    );
  });
  after(() => served.close());

  it('createApp() answers a chain that fails outside any error handler with a 500 problem and logs it', async () => {
    const res = await fetch(`${served.url}/throws`);
    assert.equal(res.status, 500);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff', 'the security headers the chain had set');
    assert.equal(res.headers.get('connection'), 'close');
    const body = (await res.json()) as Record<string, unknown>;
    assert.deepEqual([body['status'], body['code'], body['title']], [500, 'INTERNAL', 'Internal server error']);
    assert.doesNotMatch(JSON.stringify(body), /no error middleware/, 'the cause stays in the log');
    const logged = served.lines().filter((line) => line['msg'] === 'request failed outside the error handler');
    assert.equal(logged.length, 1);
  });
});

describe('createApp() with synchronous steps', () => {
  let url: string;
  let close: () => Promise<void>;
  const endedInListener: boolean[] = [];

  before(async () => {
    const listener = createApp({
      routes: [PUBLIC_ROUTE, route('GET', '/async', async () => constantJson(200, {}))],
      middleware: [requestId(), errorHandler()],
      log: createLogger({ level: 'silent' }),
      deadlineMs: 30_000,
      clientIp: createClientIp([]),
    });
    const server = createServer((req: IncomingMessage, res: ServerResponse) => {
      listener(req, res);
      // Still inside node's 'request' event: only a chain that made no promise has ended the response.
      endedInListener.push(res.writableEnded);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
  });
  after(() => close());

  function get(path: string): Promise<number> {
    return new Promise((resolve, reject) => {
      request(`${url}${path}`, { agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      })
        .on('error', reject)
        .end();
    });
  }

  it('createApp() answers a synchronous handler before the request listener returns', async () => {
    assert.equal(await get('/open'), 200);
    assert.equal(endedInListener.at(-1), true);
  });

  it('createApp() answers an asynchronous handler after the listener returned', async () => {
    assert.equal(await get('/async'), 200);
    assert.equal(endedInListener.at(-1), false);
  });
});

describe('RequestContext', () => {
  const log = createLogger({ level: 'silent' });
  const router = createRouter([PUBLIC_ROUTE]);

  /** A context over node's own request and response objects, without a network. */
  function context(deadlineMs = 1_000, url = '/open'): { ctx: RequestContext; res: ServerResponse } {
    const req = new IncomingMessage(new Socket());
    req.method = 'GET';
    req.url = url;
    const res = new ServerResponse(req);
    return { ctx: new RequestContext(req, res, log, deadlineMs, '127.0.0.1', router), res };
  }

  it('RequestContext splits the target into path and raw query', () => {
    const { ctx } = context(1_000, '/open?a=1&b=%20');
    assert.equal(ctx.path, '/open');
    assert.equal(ctx.rawQuery, 'a=1&b=%20');
    assert.equal(ctx.route, '/open');
  });

  it('RequestContext aborts its signal with REQUEST_TIMEOUT when the deadline passes', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { ctx } = context(1_000);
    const { signal } = ctx;
    t.mock.timers.tick(999);
    assert.equal(signal.aborted, false);
    t.mock.timers.tick(1);
    assert.ok(signal.reason instanceof AppError);
    assert.equal(signal.reason.code, 'REQUEST_TIMEOUT');
  });

  it('RequestContext keeps its signal alive past the deadline once clearDeadline() ran', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { ctx } = context(1_000);
    const { signal } = ctx;
    ctx.clearDeadline();
    t.mock.timers.tick(5_000);
    assert.equal(signal.aborted, false);
  });

  it('RequestContext keeps the deadline off when clearDeadline() ran before the signal was first read', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { ctx } = context(1_000);
    ctx.clearDeadline();
    const { signal } = ctx;
    t.mock.timers.tick(5_000);
    assert.equal(signal.aborted, false);
  });

  it('RequestContext aborts its signal with BAD_REQUEST when the response closes before it finished', () => {
    const { ctx, res } = context();
    const { signal } = ctx;
    res.emit('close');
    assert.ok(signal.reason instanceof AppError);
    assert.equal(signal.reason.code, 'BAD_REQUEST');
  });

  it('RequestContext creates its state map once, on first use', () => {
    const { ctx } = context();
    ctx.state.set('k', 1);
    assert.equal(ctx.state.get('k'), 1);
  });
});
