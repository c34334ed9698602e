import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { accessLog } from '../../../lib/http/middleware/access-log.ts';
import { bodyLimit } from '../../../lib/http/middleware/body-limit.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import { securityHeaders } from '../../../lib/http/middleware/security-headers.ts';
import type { Context, Middleware } from '../../../lib/http/types.ts';
import { createLogger } from '../../../lib/log.ts';
import { ok, rawRequest, rawStatus, route, type Served, serve } from '../../support/http.ts';

describe('accessLog()', () => {
  let served: Served;
  const observed: Array<{ route: string; durationMs: number }> = [];
  const identify: Middleware = async function identifyMiddleware(ctx, next) {
    const id = ctx.req.headers['x-test-identity'];
    if (id === 'yes') ctx.identity = { id: 'key:42', kind: 'key' };
    else if (typeof id === 'string') ctx.identity = { id: decodeURIComponent(id), kind: 'jwt' };
    await next();
  };

  before(async () => {
    const routes = [
      route('GET', '/v1/conversations/:id', ok({ id: 'c1' })),
      route('POST', '/v1/chat', ok()),
      route('GET', '/boom', async () => {
        throw new Error('boom');
      }),
    ];
    // The chain order of lib/main.ts.
    served = await serve(routes, (log) => [
      requestId(),
      securityHeaders({ hsts: false }),
      accessLog({
        log,
        observe: (ctx: Context, durationMs: number) => observed.push({ route: ctx.route, durationMs }),
      }),
      errorHandler(),
      bodyLimit(1024),
      identify,
    ]);
  });
  after(() => served.close());

  function requestLines(): Array<Record<string, unknown>> {
    return served.lines().filter((l) => l['msg'] === 'request');
  }

  async function get(path: string, init: RequestInit = {}): Promise<{ res: Response; line: Record<string, unknown> }> {
    const res = await fetch(`${served.url}${path}`, init);
    await res.arrayBuffer();
    const id = res.headers.get('x-request-id');
    const lines = requestLines().filter((l) => l['requestId'] === id);
    assert.equal(lines.length, 1, `expected one access-log line for ${id}, got ${lines.length}`);
    return { res, line: lines[0] as Record<string, unknown> };
  }

  it('accessLog() writes one line with method, route, status, bytes, ms, ip and requestId', async () => {
    const { res, line } = await get('/v1/conversations/c1');
    assert.equal(line['level'], 'info');
    assert.equal(line['method'], 'GET');
    assert.equal(line['route'], '/v1/conversations/:id');
    assert.equal(line['status'], 200);
    assert.equal(line['bytes'], Number(res.headers.get('content-length')));
    assert.equal(typeof line['ms'], 'number');
    assert.ok((line['ms'] as number) >= 0);
    assert.equal(line['ip'], '127.0.0.1');
    assert.equal(line['requestId'], res.headers.get('x-request-id'));
  });

  it('accessLog() logs the route pattern, never the raw path or its query string', async () => {
    const { line } = await get('/v1/conversations/secret-conversation-id?token=query-secret');
    assert.equal(line['route'], '/v1/conversations/:id');
    const text = served.logs();
    assert.ok(!text.includes('secret-conversation-id'));
    assert.ok(!text.includes('query-secret'));
  });

  it('accessLog() labels a request that matched no route "unmatched"', async () => {
    const { line } = await get('/no/such/path');
    assert.equal(line['route'], 'unmatched');
    assert.equal(line['status'], 404);
    assert.ok(!served.logs().includes('/no/such/path'));
  });

  it('accessLog() logs the status of an error answered by the errors middleware', async () => {
    const { line } = await get('/boom');
    assert.equal(line['status'], 500);
    assert.equal(line['route'], '/boom');
  });

  it('accessLog() adds the identity when one is known', async () => {
    const { line } = await get('/v1/conversations/c1', { headers: { 'x-test-identity': 'yes' } });
    assert.equal(line['identity'], 'key:42');
  });

  it('accessLog() escapes an identity id in the line, the same way on every request', async () => {
    const id = 'jwt:a"b\\c\u2028d';
    const headers = { 'x-test-identity': encodeURIComponent(id) };
    const first = await get('/v1/conversations/c1', { headers });
    const second = await get('/v1/conversations/c1', { headers });
    assert.equal(first.line['identity'], id);
    assert.equal(second.line['identity'], id);
  });

  it('accessLog() writes no identity field for an anonymous request', async () => {
    const { line } = await get('/v1/conversations/c1');
    assert.equal('identity' in line, false);
  });

  it('accessLog() logs a well-formed client X-Request-Id as clientRequestId beside our own requestId', async () => {
    const { res, line } = await get('/v1/conversations/c1', { headers: { 'x-request-id': 'client-req.0001_A' } });
    assert.equal(line['clientRequestId'], 'client-req.0001_A');
    assert.equal(line['requestId'], res.headers.get('x-request-id'));
    assert.notEqual(line['requestId'], 'client-req.0001_A');
  });

  for (const [label, headers] of [
    ['no', {}],
    ['a malformed', { 'x-request-id': 'bad id"}' }],
  ] as const) {
    it(`accessLog() writes no clientRequestId for ${label} client id`, async () => {
      const { line } = await get('/v1/conversations/c1', { headers });
      assert.equal('clientRequestId' in line, false);
    });
  }

  it('accessLog() calls observe once per request with the route and duration', async () => {
    const before = observed.length;
    await get('/v1/conversations/c9');
    assert.equal(observed.length, before + 1);
    assert.equal(observed.at(-1)?.route, '/v1/conversations/:id');
    assert.ok((observed.at(-1)?.durationMs ?? -1) >= 0);
  });

  it('accessLog() writes one line for a 413 refused by declared length while the body is still coming', async () => {
    const before = requestLines().length;
    const response = await rawRequest(
      served.port,
      'POST /v1/chat HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\n\r\nx',
    );
    assert.equal(rawStatus(response), 413);
    const lines = requestLines().slice(before);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0]?.['status'], 413);
    assert.equal(lines[0]?.['bytes'], Number(/content-length: (\d+)/i.exec(response)?.[1]));
  });

  it('accessLog() writes one line per request on a keep-alive connection', async () => {
    const before = requestLines().length;
    const response = await rawRequest(
      served.port,
      'GET /v1/conversations/a HTTP/1.1\r\nhost: x\r\n\r\n' +
        'GET /v1/conversations/b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n',
    );
    assert.equal(response.match(/HTTP\/1\.1 200/g)?.length, 2);
    assert.equal(requestLines().length - before, 2);
  });

  it('accessLog() writes nothing when the logger is above info', async (t) => {
    const chunks: string[] = [];
    const quiet = createLogger({ level: 'warn', sink: (c) => chunks.push(c) });
    const s = await serve([route('GET', '/x', ok())], [requestId(), accessLog({ log: quiet })]);
    t.after(() => s.close());
    await (await fetch(`${s.url}/x`)).arrayBuffer();
    quiet.flush();
    assert.equal(chunks.join(''), '');
  });
});

describe('accessLog() with configured secrets', () => {
  const SECRET = 'access-log-secret-4f9a2c7e1b3d';
  let served: Served;
  before(async () => {
    served = await serve([route('GET', '/ok', ok())], (log) => [requestId(), accessLog({ log })], {
      secrets: [SECRET],
    });
  });
  after(() => served.close());

  it('accessLog() redacts a piece of a configured secret sent as the client request id', async () => {
    const res = await fetch(`${served.url}/ok`, { headers: { 'x-request-id': SECRET.slice(2, 16) } });
    await res.arrayBuffer();
    const line = served.lines().find((l) => l['requestId'] === res.headers.get('x-request-id'));
    assert.equal(line?.['clientRequestId'], '[REDACTED]');
    assert.ok(!served.logs().includes(SECRET.slice(2, 14)));
  });
});
