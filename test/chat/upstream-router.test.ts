import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, it, type TestContext } from 'node:test';
import { type AgentFallback, withDefaults } from '../../lib/chat/agents.ts';
import type { BreakerState } from '../../lib/chat/breaker.ts';
import type { UpstreamEvent, UpstreamRequest, UpstreamStream } from '../../lib/chat/upstream.ts';
import { UpstreamError } from '../../lib/chat/upstream.ts';
import { createUpstreamRouter, labelOf, type UpstreamRouter } from '../../lib/chat/upstream-router.ts';
import { parseConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream.ts';

const PRIMARY_KEY = 'sk-primary-canary-4d1c7e90b2a3';
const BACKUP_KEY = 'sk-backup-canary-8f2e6a1d3c5b';

let a: FakeUpstream; // the agent's own provider
let b: FakeUpstream; // another provider that only accepts BACKUP_KEY
let refusedUrl: string; // a port nothing listens on

before(async () => {
  a = await startFakeUpstream();
  b = await startFakeUpstream({ apiKey: BACKUP_KEY });
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  refusedUrl = `http://127.0.0.1:${(probe.address() as { port: number }).port}/v1`;
  await new Promise<void>((r) => probe.close(() => r()));
});
after(async () => {
  await Promise.all([a.close(), b.close()]);
});

interface Harness {
  router: UpstreamRouter;
  request: UpstreamRequest;
  /** Every log line so far; the logger has no redaction list, so a key found here was written. */
  logs(): string;
  changes: Array<[string, BreakerState, BreakerState]>;
  fallbacks: Array<[string, string]>;
  advance(ms: number): void;
  /** Runs when a turn leaves an upstream, before the next is called. */
  onFallback: () => void;
}

interface HarnessOptions {
  env?: Record<string, string>;
  fallbacks?: AgentFallback[];
  primaryUrl?: string;
}

/** A router for one agent on `a` (model-a) whose fallback is model-b on `b`, on an injected clock. */
function harness(t: TestContext, options: HarnessOptions = {}): Harness {
  const parsed = parseConfig({
    OPENAI_BASE_URL: options.primaryUrl ?? a.url,
    OPENAI_API_KEY: PRIMARY_KEY,
    BACKUP_PROVIDER_KEY: BACKUP_KEY,
    UPSTREAM_MAX_RETRIES: '0',
    UPSTREAM_BREAKER_FAILURES: '3',
    UPSTREAM_BREAKER_COOLDOWN_MS: '30000',
    ...options.env,
  });
  if (!parsed.ok) throw new Error(parsed.problems.join('; '));
  const fallbacks = options.fallbacks ?? [{ model: 'model-b', baseURL: b.url, apiKeyEnv: 'BACKUP_PROVIDER_KEY' }];
  const agent = withDefaults(
    { id: 't', description: '', systemPrompt: 'p', model: 'model-a', fallbacks },
    parsed.config,
  );
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', sink: (chunk) => lines.push(chunk), secrets: [] });
  let nowMs = 0;
  const changes: Harness['changes'] = [];
  const moved: Harness['fallbacks'] = [];
  let h: Harness | undefined;
  const router = createUpstreamRouter({
    config: parsed.config,
    log,
    agents: [agent],
    now: () => nowMs,
    hooks: {
      breakerChanged: (upstream, from, to) => changes.push([upstream, from, to]),
      fallback: (upstream, reason) => {
        moved.push([upstream, reason]);
        h?.onFallback();
      },
    },
  });
  t.after(() => router.close());
  const request: UpstreamRequest = {
    model: agent.model,
    messages: [{ role: 'user', content: 'Hi' }],
    fallbacks: agent.fallbacks,
    requestId: 'req-router-test',
  };
  h = {
    router,
    request,
    onFallback: () => {},
    logs: () => {
      log.flush();
      return lines.join('');
    },
    changes,
    fallbacks: moved,
    advance: (ms) => {
      nowMs += ms;
    },
  };
  return h;
}

async function collect(stream: UpstreamStream): Promise<UpstreamEvent[]> {
  const events: UpstreamEvent[] = [];
  for await (const e of stream) events.push(e);
  return events;
}

async function failure(promise: Promise<unknown>): Promise<UpstreamError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof UpstreamError, `expected an UpstreamError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a failure');
}

const text = (events: UpstreamEvent[]): string => events.flatMap((e) => (e.type === 'delta' ? [e.text] : [])).join('');
const signal = (): AbortSignal => new AbortController().signal;

describe('createUpstreamRouter() failover', () => {
  const cases = [
    { name: 'a 500', primary: { kind: 'status', status: 500 } as const, kind: 'status' },
    {
      name: 'a 429 with retry-after',
      primary: { kind: 'status', status: 429, retryAfter: '20' } as const,
      kind: 'unavailable',
    },
  ];
  for (const c of cases) {
    it(`stream() answers from the fallback after ${c.name} from the agent's model, named model-b`, async (t) => {
      const h = harness(t);
      a.queue(c.primary);
      b.queue({ kind: 'normal', chunks: ['from', ' b'] });
      const [sentA, sentB] = [a.requests.length, b.requests.length];
      const stream = await h.router.stream(h.request, signal());
      assert.equal(stream.model, 'model-b');
      assert.equal(text(await collect(stream)), 'from b');
      assert.equal(a.requests.length - sentA, 1);
      assert.equal(b.requests.length - sentB, 1);
      assert.equal((b.requests.at(-1)?.body as { model: string }).model, 'model-b');
      assert.equal(b.requests.at(-1)?.headers.authorization, `Bearer ${BACKUP_KEY}`);
      assert.deepEqual(h.fallbacks, [[labelOf(a.url, 'model-a'), c.kind]]);
    });
  }

  it('stream() answers from the fallback when nothing listens at the agent base URL', async (t) => {
    const h = harness(t, { primaryUrl: refusedUrl });
    b.queue({ kind: 'normal', chunks: ['up'] });
    const stream = await h.router.stream(h.request, signal());
    assert.equal(stream.model, 'model-b');
    assert.equal(text(await collect(stream)), 'up');
    assert.deepEqual(h.fallbacks, [[labelOf(refusedUrl, 'model-a'), 'connection']]);
  });

  it('stream() answers from the fallback when the agent model sends headers but no token in time', async (t) => {
    const h = harness(t, { env: { UPSTREAM_TIMEOUT_MS: '300' } });
    a.queue({ kind: 'stall', afterChunks: 0 });
    b.queue({ kind: 'normal', chunks: ['late', ' but here'] });
    const index = a.requests.length;
    const stream = await h.router.stream(h.request, signal());
    assert.equal(stream.model, 'model-b');
    assert.equal(text(await collect(stream)), 'late but here');
    assert.equal(a.requests[index]?.closedEarly, true, 'the silent request was closed');
    assert.deepEqual(h.fallbacks, [[labelOf(a.url, 'model-a'), 'timeout']]);
  });

  it('stream() spends no SDK retries on a target that has a fallback after it', async (t) => {
    const h = harness(t, { env: { UPSTREAM_MAX_RETRIES: '2' } });
    // A retry would get the fake's default, a normal answer from model-a.
    a.queue({ kind: 'status', status: 500, retryAfter: '0' });
    const sent = a.requests.length;
    const stream = await h.router.stream(h.request, signal());
    await collect(stream);
    assert.equal(a.requests.length - sent, 1);
    assert.equal(stream.model, 'model-b');
  });

  it('stream() gives the fallback only what is left of UPSTREAM_MAX_DURATION_MS', async (t) => {
    const h = harness(t, { env: { UPSTREAM_MAX_DURATION_MS: '5000' } });
    h.onFallback = () => h.advance(4800); // the agent's model took 4.8 s of the 5 s to fail
    a.queue({ kind: 'status', status: 500 });
    b.queue({ kind: 'endless', text: 'more ', intervalMs: 20 });
    const started = performance.now();
    const stream = await h.router.stream(h.request, signal());
    const err = await failure(collect(stream));
    const ms = performance.now() - started;
    assert.equal(err.kind, 'timeout');
    assert.match(err.message, /total deadline/);
    assert.ok(ms < 2000, `the fallback ran ${ms} ms, not the 200 ms left`);
  });

  it('stream() does not fall back on a 400: the request itself is at fault', async (t) => {
    const h = harness(t);
    a.queue({ kind: 'status', status: 400 });
    const sentB = b.requests.length;
    const err = await failure(h.router.stream(h.request, signal()));
    assert.equal(err.kind, 'status');
    assert.equal(err.upstreamStatus, 400);
    assert.equal(b.requests.length, sentB);
    assert.deepEqual(h.fallbacks, []);
  });

  it('stream() never switches after a delta: a reset mid-answer ends it, the fallback is not called', async (t) => {
    const h = harness(t);
    a.queue({ kind: 'reset', afterChunks: 1 });
    const sentB = b.requests.length;
    const stream = await h.router.stream(h.request, signal());
    assert.equal(stream.model, 'model-a');
    const seen: string[] = [];
    const err = await failure(
      (async () => {
        for await (const e of stream) if (e.type === 'delta') seen.push(e.text);
      })(),
    );
    assert.deepEqual(seen, ['Hel']);
    assert.equal(err.kind, 'broken');
    assert.equal(b.requests.length, sentB);
  });

  it('stream() does not fall back when the caller aborts, and tells no breaker', async (t) => {
    const h = harness(t);
    a.queue({ kind: 'hang' });
    const sentB = b.requests.length;
    const ac = new AbortController();
    const pending = h.router.stream(h.request, ac.signal);
    setTimeout(() => ac.abort(), 50);
    assert.equal((await failure(pending)).kind, 'aborted');
    assert.equal(b.requests.length, sentB);
    assert.deepEqual(h.changes, []);
  });

  it('stream() sends a fallback on another server without apiKeyEnv no key at all, never OPENAI_API_KEY', async (t) => {
    const keyless = await startFakeUpstream();
    t.after(() => keyless.close());
    const h = harness(t, { fallbacks: [{ model: 'local', baseURL: keyless.url }] });
    a.queue({ kind: 'status', status: 503 });
    await collect(await h.router.stream(h.request, signal()));
    const sent = keyless.requests.at(-1)?.headers.authorization ?? '';
    assert.ok(!sent.includes(PRIMARY_KEY), 'the primary key went to another server');
  });

  it('stream() closes the fallback request when the consumer stops after the first delta', async (t) => {
    const h = harness(t);
    a.queue({ kind: 'status', status: 500 });
    b.queue({ kind: 'slow', chunks: ['a', 'b', 'c', 'd'], chunkDelayMs: 100 });
    const index = b.requests.length;
    const stream = await h.router.stream(h.request, signal());
    for await (const e of stream) if (e.type === 'delta') break;
    assert.ok((await b.waitForClose(index, 1000)) < 1000);
    assert.equal(b.requests[index]?.closedEarly, true);
  });

  it('stream() writes no provider key to the log while failing over, even without a redaction list', async (t) => {
    const h = harness(t);
    a.queue({ kind: 'status', status: 401 }, { kind: 'status', status: 500 }, { kind: 'status', status: 500 });
    b.queue({ kind: 'status', status: 500 }, { kind: 'reset', afterChunks: 1 });
    await failure(h.router.stream(h.request, signal()));
    await failure(h.router.stream(h.request, signal()));
    await failure(
      (async () => {
        await collect(await h.router.stream(h.request, signal()));
      })(),
    );
    const logs = h.logs();
    assert.match(logs, /upstream fallback/);
    assert.ok((logs.match(/upstream error/g) ?? []).length >= 4);
    for (const key of [PRIMARY_KEY, BACKUP_KEY]) assert.ok(!logs.includes(key), 'a provider key was logged');
  });
});

describe('createUpstreamRouter() circuit breaker', () => {
  /** Opens the breaker of model-a on `a` with three 500s (no fallback, so each is a failed request). */
  async function open(h: Harness): Promise<void> {
    a.queue(...Array.from({ length: 3 }, () => ({ kind: 'status', status: 500 }) as const));
    for (let i = 0; i < 3; i++) await failure(h.router.stream(h.request, signal()));
  }

  it('the breaker opens after UPSTREAM_BREAKER_FAILURES failures, as breakers() and the hook report', async (t) => {
    const h = harness(t, { fallbacks: [] });
    const label = labelOf(a.url, 'model-a');
    assert.deepEqual(h.router.breakers(), [{ upstream: label, state: 'closed' }]);
    await open(h);
    assert.deepEqual(h.router.breakers(), [{ upstream: label, state: 'open' }]);
    assert.deepEqual(h.changes, [[label, 'closed', 'open']]);
  });

  it('an open breaker fails fast with 503 and Retry-After, calling nobody (p99 under 5 ms)', async (t) => {
    const h = harness(t, { fallbacks: [] });
    await open(h);
    h.advance(12_500);
    const sent = a.requests.length;
    const times: number[] = [];
    // The first calls compile the path; what is measured is the steady state while the provider is down.
    for (let i = 0; i < 50; i++) await failure(h.router.stream(h.request, signal()));
    for (let i = 0; i < 500; i++) {
      const started = performance.now();
      const err = await failure(h.router.stream(h.request, signal()));
      times.push(performance.now() - started);
      const app = err.toAppError();
      assert.equal(app.status, 503);
      assert.equal(app.code, 'UPSTREAM_UNAVAILABLE');
      assert.deepEqual(app.headers, { 'Retry-After': '18' });
    }
    assert.equal(a.requests.length, sent, 'no request reached the upstream');
    times.sort((x, y) => x - y);
    const p99 = times[Math.ceil(times.length * 0.99) - 1] ?? Number.POSITIVE_INFINITY;
    const max = times.at(-1)?.toFixed(3);
    t.diagnostic(
      `fast failure over 500 calls: median ${times[250]?.toFixed(3)} ms, p99 ${p99.toFixed(3)} ms, max ${max} ms`,
    );
    assert.ok(p99 < 5, `p99 ${p99} ms`);
  });

  it('the breaker half-opens after the cool-down, sends one trial, and closes when it succeeds', async (t) => {
    const h = harness(t, { fallbacks: [] });
    const label = labelOf(a.url, 'model-a');
    await open(h);
    h.advance(30_000);
    a.queue({ kind: 'slow', chunks: ['tri', 'al'], chunkDelayMs: 50 });
    const sent = a.requests.length;
    const trial = await h.router.stream(h.request, signal());
    assert.deepEqual(h.router.breakers(), [{ upstream: label, state: 'half_open' }]);
    const meanwhile = await failure(h.router.stream(h.request, signal()));
    assert.equal(meanwhile.toAppError().code, 'UPSTREAM_UNAVAILABLE', 'only one trial at a time');
    assert.equal(text(await collect(trial)), 'trial');
    assert.equal(a.requests.length - sent, 1);
    assert.deepEqual(h.router.breakers(), [{ upstream: label, state: 'closed' }]);
    assert.deepEqual(
      h.changes.map(([, , to]) => to),
      ['open', 'half_open', 'closed'],
    );
  });

  it('a trial whose consumer leaves before the first token goes to the next caller', async (t) => {
    const h = harness(t, { fallbacks: [] });
    await open(h);
    h.advance(30_000);
    a.queue({ kind: 'slow', chunks: ['x'], chunkDelayMs: 200 });
    const trial = await h.router.stream(h.request, signal());
    await trial[Symbol.asyncIterator]().return?.();
    assert.equal(h.router.breakers()[0]?.state, 'half_open');
    const sent = a.requests.length;
    await collect(await h.router.stream(h.request, signal()));
    assert.equal(a.requests.length - sent, 1, 'the next caller was the trial');
    assert.equal(h.router.breakers()[0]?.state, 'closed');
  });

  it('a failed trial opens the breaker for another cool-down', async (t) => {
    const h = harness(t, { fallbacks: [] });
    await open(h);
    h.advance(30_000);
    a.queue({ kind: 'status', status: 502 });
    await failure(h.router.stream(h.request, signal()));
    assert.equal(h.router.breakers()[0]?.state, 'open');
    h.advance(29_000);
    const sent = a.requests.length;
    await failure(h.router.stream(h.request, signal()));
    assert.equal(a.requests.length, sent);
  });

  it('refusal() gives the fast failure only when every breaker of the agent is open', async (t) => {
    const h = harness(t);
    a.queue(...Array.from({ length: 3 }, () => ({ kind: 'status', status: 500 }) as const));
    for (let i = 0; i < 3; i++) await collect(await h.router.stream(h.request, signal()));
    assert.equal(h.router.refusal?.(h.request), undefined, 'the fallback is still closed');
    b.queue(...Array.from({ length: 3 }, () => ({ kind: 'status', status: 500 }) as const));
    for (let i = 0; i < 3; i++) await failure(h.router.stream(h.request, signal()));
    const refused = h.router.refusal?.(h.request);
    assert.equal(refused?.toAppError().code, 'UPSTREAM_UNAVAILABLE');
    assert.deepEqual(refused?.toAppError().headers, { 'Retry-After': '30' });
  });

  it('a first-token timeout on a lone target counts as a failure of its breaker', async (t) => {
    const h = harness(t, { fallbacks: [], env: { UPSTREAM_TIMEOUT_MS: '200', UPSTREAM_BREAKER_FAILURES: '1' } });
    a.queue({ kind: 'stall', afterChunks: 0 });
    const stream = await h.router.stream(h.request, signal());
    assert.equal((await failure(collect(stream))).kind, 'timeout');
    assert.equal(h.router.breakers()[0]?.state, 'open');
  });

  it('while the agent model breaker is open, turns go straight to the fallback', async (t) => {
    const h = harness(t);
    a.queue(...Array.from({ length: 3 }, () => ({ kind: 'status', status: 500 }) as const));
    for (let i = 0; i < 3; i++) await collect(await h.router.stream(h.request, signal()));
    const label = labelOf(a.url, 'model-a');
    assert.equal(h.router.breakers().find((r) => r.upstream === label)?.state, 'open');
    const sentA = a.requests.length;
    const stream = await h.router.stream(h.request, signal());
    assert.equal(stream.model, 'model-b');
    await collect(stream);
    assert.equal(a.requests.length, sentA);
    assert.deepEqual(h.fallbacks.at(-1), [label, 'breaker_open']);
  });
});
