import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ChatObserver } from '../../lib/chat/turn.ts';
import type { AppMetrics } from '../../lib/metrics/app-metrics.ts';
import {
  createAppMetrics,
  METRIC_NAMES,
  RATE_LIMIT_REASONS,
  UPSTREAM_OUTCOMES,
} from '../../lib/metrics/app-metrics.ts';
import { validateExposition, sampleValue as value } from '../support/exposition-grammar.ts';

function metrics(t: { after(fn: () => void): void }): AppMetrics {
  const m = createAppMetrics();
  t.after(() => m.close());
  return m;
}

// Real event-loop delay needs a real blocked loop; mocked timers would not move libuv's clock.
function blockLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}
const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function observeEverything(m: AppMetrics): void {
  m.observeRequest('GET', '/health', 200, 0.002);
  m.rateLimitRejected('rate_limit');
  m.authFailed('invalid');
  m.upstreamOutcome('ok');
  m.firstToken(0.4);
  m.streamOpened();
  m.setStreamSlotsSource(() => 1);
  m.setPoolSource(() => ({ total: 4, idle: 3, waiting: 0 }));
  m.securityEvent('auth_failure');
  m.tokensUsed('default', 12, 3);
  m.budgetRejected();
  m.setBreakerSource(() => [{ upstream: 'https://api.example.com gpt-x', state: 'closed' }]);
}

describe('createAppMetrics()', () => {
  it('render() shows each METRIC_NAME and only those, with HELP, TYPE and a sample after one observation each', (t) => {
    const m = metrics(t);
    observeEverything(m);
    const text = m.render();
    const typed = [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]);
    assert.deepEqual(typed, [...METRIC_NAMES], 'METRIC_NAMES lists exactly the exported metrics, in order');
    for (const name of METRIC_NAMES) {
      assert.match(text, new RegExp(`^# HELP ${name} \\S`, 'm'), name);
      assert.match(text, new RegExp(`^# TYPE ${name} (counter|gauge|histogram)$`, 'm'), name);
      assert.match(text, new RegExp(`^${name}(_bucket|_count)?[{ ]`, 'm'), name);
    }
  });

  it('render() output passes the exposition grammar check', (t) => {
    const m = metrics(t);
    observeEverything(m);
    m.observeRequest('POST', '/v1/chat', 429, 12);
    assert.deepEqual(validateExposition(m.render()), []);
  });

  it('observeRequest() counts by method, route and status and times by route', (t) => {
    const m = metrics(t);
    m.observeRequest('GET', '/v1/conversations/:id', 200, 0.003);
    m.observeRequest('GET', '/v1/conversations/:id', 200, 0.2);
    m.observeRequest('DELETE', '/v1/conversations/:id', 404, 0.001);
    const text = m.render();
    assert.equal(value(text, 'http_requests_total{method="GET",route="/v1/conversations/:id",status="200"}'), 2);
    assert.equal(value(text, 'http_requests_total{method="DELETE",route="/v1/conversations/:id",status="404"}'), 1);
    assert.equal(value(text, 'http_request_duration_seconds_bucket{route="/v1/conversations/:id",le="0.001"}'), 1);
    assert.equal(value(text, 'http_request_duration_seconds_bucket{route="/v1/conversations/:id",le="0.005"}'), 2);
    assert.equal(value(text, 'http_request_duration_seconds_count{route="/v1/conversations/:id"}'), 3);
    assert.equal(value(text, 'http_request_duration_seconds_bucket{route="/v1/conversations/:id",le="10"}'), 3);
  });

  it('observeRequest() folds raw paths beyond the series cap into route="other"', (t) => {
    const m = metrics(t);
    for (let i = 0; i < 2500; i++) m.observeRequest('GET', `/raw/${i}`, 404, 0.001);
    const text = m.render();
    assert.equal(text.split('\n').filter((l) => l.startsWith('http_requests_total{')).length, 1001);
    assert.equal(value(text, 'http_requests_total{method="other",route="other",status="other"}'), 1500);
    assert.equal(value(text, 'http_request_duration_seconds_count{route="other"}'), 1500);
  });

  it('rate-limit reasons and upstream outcomes are exported as 0 before the first event', (t) => {
    const text = metrics(t).render();
    for (const reason of RATE_LIMIT_REASONS)
      assert.equal(value(text, `rate_limit_rejections_total{reason="${reason}"}`), 0);
    for (const outcome of UPSTREAM_OUTCOMES)
      assert.equal(value(text, `upstream_requests_total{outcome="${outcome}"}`), 0);
  });

  it('counting methods increment their series', (t) => {
    const m = metrics(t);
    m.rateLimitRejected('streams');
    m.rateLimitRejected('streams');
    m.authFailed('revoked');
    m.upstreamOutcome('timeout');
    m.securityEvent('cors_rejected');
    m.firstToken(0.07);
    const text = m.render();
    assert.equal(value(text, 'rate_limit_rejections_total{reason="streams"}'), 2);
    assert.equal(value(text, 'auth_failures_total{reason="revoked"}'), 1);
    assert.equal(value(text, 'upstream_requests_total{outcome="timeout"}'), 1);
    assert.equal(value(text, 'security_events_total{kind="cors_rejected"}'), 1);
    assert.equal(value(text, 'upstream_time_to_first_token_seconds_bucket{le="0.05"}'), 0);
    assert.equal(value(text, 'upstream_time_to_first_token_seconds_bucket{le="0.1"}'), 1);
  });

  it('streamOpened() and streamClosed() move chat_active_streams', (t) => {
    const m = metrics(t);
    const observer: ChatObserver = m;
    observer.streamOpened();
    observer.streamOpened();
    observer.streamClosed();
    assert.equal(value(m.render(), 'chat_active_streams'), 1);
  });

  it('setPoolSource() and setStreamSlotsSource() are read at every scrape', (t) => {
    const m = metrics(t);
    let waiting = 0;
    let slots = 2;
    m.setPoolSource(() => ({ total: 10, idle: 0, waiting }));
    m.setStreamSlotsSource(() => slots);
    const first = m.render();
    assert.equal(value(first, 'db_pool_connections{state="total"}'), 10);
    assert.equal(value(first, 'db_pool_connections{state="idle"}'), 0);
    assert.equal(value(first, 'db_pool_connections{state="waiting"}'), 0);
    assert.equal(value(first, 'stream_slots_in_use'), 2);
    waiting = 7;
    slots = 5;
    const second = m.render();
    assert.equal(value(second, 'db_pool_connections{state="waiting"}'), 7);
    assert.equal(value(second, 'stream_slots_in_use'), 5);
  });

  it('setBreakerSource() exports each breaker state as 0, 1 or 2 at every scrape', (t) => {
    const m = metrics(t);
    let state: 'closed' | 'half_open' | 'open' = 'closed';
    m.setBreakerSource(() => [
      { upstream: 'https://a.example gpt-x', state },
      { upstream: 'http://127.0.0.1:8001 llama', state: 'open' },
    ]);
    const series = 'upstream_breaker_state{upstream="https://a.example gpt-x"}';
    assert.equal(value(m.render(), series), 0);
    assert.equal(value(m.render(), 'upstream_breaker_state{upstream="http://127.0.0.1:8001 llama"}'), 2);
    state = 'half_open';
    assert.equal(value(m.render(), series), 1);
    state = 'open';
    assert.equal(value(m.render(), series), 2);
  });

  it('upstreamFallback() counts by the upstream left, each known upstream exported as 0 from the start', (t) => {
    const m = metrics(t);
    m.setBreakerSource(() => [
      { upstream: 'https://a.example gpt-x', state: 'closed' },
      { upstream: 'https://b.example gpt-y', state: 'closed' },
    ]);
    m.upstreamFallback('https://a.example gpt-x');
    m.upstreamFallback('https://a.example gpt-x');
    const text = m.render();
    assert.equal(value(text, 'upstream_fallbacks_total{upstream="https://a.example gpt-x"}'), 2);
    assert.equal(value(text, 'upstream_fallbacks_total{upstream="https://b.example gpt-y"}'), 0);
  });

  it('process_resident_memory_bytes reports the resident set size', (t) => {
    const rss = value(metrics(t).render(), 'process_resident_memory_bytes') ?? 0;
    assert.ok(rss > 1_000_000 && rss < 1e12, `rss ${rss}`);
  });

  it('nodejs_eventloop_delay_p99_seconds reports a blocked loop, then resets after the scrape', async (t) => {
    const m = metrics(t);
    await tick(60);
    blockLoop(150);
    await tick(60);
    const blocked = value(m.render(), 'nodejs_eventloop_delay_p99_seconds') ?? 0;
    assert.ok(blocked >= 0.1 && blocked < 5, `p99 after a 150 ms block: ${blocked}`);
    await tick(120);
    const idle = value(m.render(), 'nodejs_eventloop_delay_p99_seconds') ?? Infinity;
    assert.ok(idle < blocked / 2, `p99 after an idle interval: ${idle}`);
  });

  it('close() stops the event-loop monitor', async (t) => {
    const m = metrics(t);
    m.render();
    m.close();
    await tick(30);
    blockLoop(150);
    await tick(60);
    assert.equal(value(m.render(), 'nodejs_eventloop_delay_p99_seconds'), 0);
  });
});
