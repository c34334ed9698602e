import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { addressGroup, createProxyCheck } from '../../lib/http/client-ip.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { createFailureThrottle } from '../../lib/limits/failure-throttle.ts';
import { METRIC_NAMES } from '../../lib/metrics/app-metrics.ts';
import { metricsRoutes } from '../../lib/metrics/routes.ts';
import { type ChatHarness, readEvents, startChat } from '../support/chat.ts';
import { CANARY } from '../support/config.ts';
import { sampleValue as sample, validateExposition } from '../support/exposition-grammar.ts';
import { type Served, serve } from '../support/http.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

async function scrape(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`${url}/metrics`, { headers });
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

describe('GET /metrics with METRICS_TOKEN set', () => {
  let h: ChatHarness;
  let conversationId: string;
  const strangerId = randomUUID();
  const authorised = { authorization: `Bearer ${CANARY}` };

  before(async () => {
    h = await startChat();
    // Traffic for every family: a plain request, a 401, a streamed chat, a route with a parameter, a 404.
    const agents = await h.call('GET', '/v1/agents');
    assert.equal(agents.status, 200);
    await agents.arrayBuffer();
    const refused = await h.call('GET', '/v1/agents', 'sk-not-a-real-key');
    assert.equal(refused.status, 401);
    await refused.arrayBuffer();
    const events = await readEvents(await h.chat({ message: 'Count me' }));
    assert.equal(events.at(-1)?.event, 'done');
    conversationId = (events[0]?.data as { conversationId: string }).conversationId;
    const conversation = await h.call('GET', `/v1/conversations/${conversationId}`);
    assert.equal(conversation.status, 200);
    await conversation.arrayBuffer();
    const unknown = await h.call('GET', `/v1/no-such-thing/${strangerId}`);
    assert.equal(unknown.status, 404);
    await unknown.arrayBuffer();
  });
  after(() => h?.close());

  it('GET /metrics without a token answers 401 and no metric text', async () => {
    const { status, text } = await scrape(h.server.url);
    assert.equal(status, 401);
    assert.ok(!text.includes('# TYPE'), 'no exposition in the refusal');
    for (const name of METRIC_NAMES) assert.ok(!text.includes(name), `${name} is not in the refusal`);
  });

  it('GET /metrics with a wrong token, or the token without Bearer, answers 401', async () => {
    for (const authorization of [`Bearer ${CANARY}x`, `Bearer ${CANARY.slice(0, -1)}`, CANARY, `Basic ${CANARY}`]) {
      const { status, text } = await scrape(h.server.url, { authorization });
      assert.equal(status, 401, `refused: ${authorization.replace(CANARY, '<token>')}`);
      assert.ok(!text.includes('# TYPE'));
    }
  });

  it('GET /metrics with METRICS_TOKEN answers 200 grammar-valid text/plain version 0.0.4', async () => {
    const { status, type, text } = await scrape(h.server.url, authorised);
    assert.equal(status, 200);
    assert.match(type ?? '', /^text\/plain; version=0\.0\.4(;|$)/);
    assert.deepEqual(validateExposition(text), []);
  });

  it('GET /metrics takes the scheme in any case, as RFC 9110 says: bearer and BEARER open it too', async () => {
    for (const scheme of ['bearer', 'BEARER']) {
      const { status } = await scrape(h.server.url, { authorization: `${scheme} ${CANARY}` });
      assert.equal(status, 200, scheme);
    }
  });

  it('GET /metrics shows every metric in METRIC_NAMES with a sample after traffic', async () => {
    const { text } = await scrape(h.server.url, authorised);
    for (const name of METRIC_NAMES) {
      assert.match(text, new RegExp(`^# TYPE ${name} (counter|gauge|histogram)$`, 'm'), `${name} has a TYPE line`);
      assert.match(text, new RegExp(`^${name}(_bucket|_sum|_count)?[{ ]`, 'm'), `${name} has a sample`);
    }
  });

  it('GET /metrics counts the requests of the traffic by method, route pattern and status', async () => {
    const { text } = await scrape(h.server.url, authorised);
    assert.ok((sample(text, 'http_requests_total{method="GET",route="/v1/agents",status="200"}') ?? 0) >= 1);
    assert.ok((sample(text, 'http_requests_total{method="GET",route="/v1/agents",status="401"}') ?? 0) >= 1);
    assert.ok((sample(text, 'http_requests_total{method="POST",route="/v1/chat",status="200"}') ?? 0) >= 1);
    assert.ok((sample(text, 'upstream_requests_total{outcome="ok"}') ?? 0) >= 1);
    assert.ok((sample(text, 'upstream_time_to_first_token_seconds_count') ?? 0) >= 1);
    assert.ok((sample(text, 'auth_failures_total{reason="invalid_credentials"}') ?? 0) >= 1);
    assert.equal(sample(text, 'chat_active_streams'), 0, 'the finished stream is no longer active');
  });

  it('GET /metrics labels requests with route patterns, never raw paths or ids', async () => {
    const { text } = await scrape(h.server.url, authorised);
    assert.ok((sample(text, 'http_requests_total{method="GET",route="/v1/conversations/:id",status="200"}') ?? 0) >= 1);
    assert.ok((sample(text, 'http_requests_total{method="GET",route="unmatched",status="404"}') ?? 0) >= 1);
    assert.ok(!text.includes(conversationId), 'no conversation id in a label');
    assert.ok(!text.includes(strangerId), 'no raw path of an unmatched request in a label');
    assert.ok(!text.includes('/v1/no-such-thing'));
  });

  it('GET /metrics never shows the metrics token', async () => {
    const { text } = await scrape(h.server.url, authorised);
    assert.ok(text.length > 0);
    assert.ok(!text.includes(CANARY), 'the token is not in the body');
  });
});

describe('GET /metrics without METRICS_TOKEN', () => {
  let server: TestServer;

  before(async () => {
    server = await startTestServer({ METRICS_TOKEN: undefined });
  });
  after(() => server?.close());

  it('GET /metrics answers a loopback peer 200 with the exposition', async () => {
    const { status, text } = await scrape(server.url);
    assert.equal(status, 200);
    assert.deepEqual(validateExposition(text), []);
    assert.match(text, /^# TYPE http_requests_total counter$/m);
  });

  // What reverse proxies add: a local proxy relaying the internet must not make it loopback.
  const relayed = {
    'X-Forwarded-For': '203.0.113.7',
    Forwarded: 'for=203.0.113.7',
    'X-Real-IP': '203.0.113.7',
    Via: '1.1 proxy',
  };
  for (const [header, value] of Object.entries(relayed)) {
    it(`GET /metrics answers 401 to a loopback request relayed by a proxy (${header})`, async () => {
      const { status, text } = await scrape(server.url, { [header]: value });
      assert.equal(status, 401);
      assert.ok(!text.includes('# TYPE'));
    });
  }

  it('GET /health/upstream follows the same rule: a loopback peer reads it, a relayed request gets 401', async () => {
    const direct = await fetch(`${server.url}/health/upstream`);
    assert.equal(direct.status, 200);
    assert.deepEqual(Object.keys((await direct.json()) as object), ['upstreams']);
    const relayed = await fetch(`${server.url}/health/upstream`, { headers: { 'X-Forwarded-For': '203.0.113.7' } });
    assert.equal(relayed.status, 401);
    assert.ok(!(await relayed.text()).includes('upstreams'));
  });

  it('GET /metrics does not let a bearer token open it to a relayed request when no token is configured', async () => {
    const { status } = await scrape(server.url, { authorization: `Bearer ${CANARY}`, 'x-forwarded-for': '127.0.0.1' });
    assert.equal(status, 401);
  });
});

/** GET over a fresh connection from a chosen loopback source address (127.0.0.0/8 is all ours). */
function getFrom(
  url: string,
  localAddress: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; retryAfter: string | undefined; code: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, localAddress, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      res.on('end', () => {
        const code = res.statusCode === 200 ? undefined : (JSON.parse(text) as { code: unknown }).code;
        resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'], code });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('GET /metrics and the failed-authentication throttle', () => {
  let server: TestServer;
  let metrics: string;
  const wrong = { authorization: `Bearer ${CANARY}-wrong` };

  before(async () => {
    server = await startTestServer(); // AUTH_FAILURES_PER_MINUTE left at its default (10)
    metrics = `${server.url}/metrics`;
  });
  after(() => server?.close());

  it('GET /metrics counts wrong tokens like wrong API keys: the 11th from one address answers 429', async () => {
    const seen: number[] = [];
    for (let i = 0; i < 11; i++) seen.push((await getFrom(metrics, '127.0.4.1', wrong)).status);
    assert.deepEqual(seen, [...Array<number>(10).fill(401), 429]);
    const res = await getFrom(metrics, '127.0.4.1', wrong);
    assert.equal(res.code, 'AUTH_THROTTLED');
    assert.match(res.retryAfter ?? '', /^[1-9]\d*$/);
  });

  it('GET /metrics shares one allowance with the API: wrong tokens then bad API keys from one address', async () => {
    for (let i = 0; i < 5; i++) assert.equal((await getFrom(metrics, '127.0.4.2', wrong)).status, 401);
    const api = `${server.url}/v1/agents`;
    const bad = { authorization: 'Bearer not-a-credential' };
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) seen.push((await getFrom(api, '127.0.4.2', bad)).status);
    assert.deepEqual(seen, [401, 401, 401, 401, 401, 429]);
  });

  it('GET /metrics does not count a request without a token as a failed attempt', async () => {
    for (let i = 0; i < 12; i++) assert.equal((await getFrom(metrics, '127.0.4.3')).status, 401);
  });

  it('GET /metrics answers the right token from a throttled address once its probe is due', async () => {
    for (let i = 0; i < 10; i++) await getFrom(metrics, '127.0.4.4', wrong);
    const res = await getFrom(metrics, '127.0.4.4', { authorization: `Bearer ${CANARY}` });
    assert.equal(res.status, 200);
  });
});

describe('metricsRoutes() without a token', () => {
  let served: Served;
  before(async () => {
    const routes = metricsRoutes({
      render: () => '# EOF\n',
      token: undefined,
      throttle: createFailureThrottle(10),
      addressKey: addressGroup,
      isTrustedProxy: createProxyCheck(['127.0.5.1']),
    });
    served = await serve(routes, [errorHandler()]);
  });
  after(() => served.close());

  it('metricsRoutes() refuses a peer listed in TRUST_PROXY even when it adds no forwarding header', async () => {
    assert.equal((await getFrom(`${served.url}/metrics`, '127.0.5.1')).status, 401);
  });

  it('metricsRoutes() serves another loopback peer that adds no forwarding header', async () => {
    assert.equal((await getFrom(`${served.url}/metrics`, '127.0.5.2')).status, 200);
  });
});
