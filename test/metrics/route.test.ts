import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { METRIC_NAMES } from '../../lib/metrics/app-metrics.ts';
import { type ChatHarness, readEvents, startChat } from '../support/chat.ts';
import { sampleValue as sample, validateExposition } from '../support/exposition-grammar.ts';
import { CANARY, startTestServer, type TestServer } from '../support/server.ts';

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

  it('GET /metrics with the bearer token answers 200 with text/plain version 0.0.4 that passes the exposition grammar', async () => {
    const { status, type, text } = await scrape(h.server.url, authorised);
    assert.equal(status, 200);
    assert.match(type ?? '', /^text\/plain; version=0\.0\.4(;|$)/);
    assert.deepEqual(validateExposition(text), []);
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
