import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { APIConnectionError, InternalServerError } from 'openai';
import type { Upstream, UpstreamEvent, UpstreamRequest, UpstreamStream } from '../../lib/chat/upstream.ts';
import { classifyUpstreamError, createUpstream, parseRetryAfter, UpstreamError } from '../../lib/chat/upstream.ts';
import type { Config } from '../../lib/config.ts';
import { parseConfig } from '../../lib/config.ts';
import { AppError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import { createLogger } from '../../lib/log.ts';
import type { FakeUpstream } from '../support/fake-upstream.ts';
import { startFakeUpstream, UPSTREAM_SECRET_DETAIL } from '../support/fake-upstream.ts';

const CANARY_KEY = 'sk-canary-upstream-key-7f3a9c2e1b';
const REQUEST: UpstreamRequest = {
  model: 'fake-model-1',
  messages: [
    { role: 'system', content: 'You are a test agent.' },
    { role: 'user', content: 'Say hello' },
  ],
  temperature: 0.3,
  maxOutputTokens: 50,
};

let fake: FakeUpstream;
const opened: Upstream[] = [];

before(async () => {
  fake = await startFakeUpstream();
});
after(async () => {
  await Promise.all(opened.map((u) => u.close()));
  await fake.close();
});

interface Harness {
  upstream: Upstream;
  config: Config;
  log: Logger;
  lines: string[];
}

/** An upstream client against the fake, with captured logs; `withSecrets: false` disables the logger's redaction. */
function harness(env: Record<string, string> = {}, withSecrets = true, baseUrl = fake.url): Harness {
  const parsed = parseConfig({
    OPENAI_BASE_URL: baseUrl,
    OPENAI_API_KEY: CANARY_KEY,
    UPSTREAM_MAX_RETRIES: '0',
    ...env,
  });
  if (!parsed.ok) throw new Error(parsed.problems.join('; '));
  const lines: string[] = [];
  const secrets = withSecrets ? parsed.config.secrets.values : [];
  const log = createLogger({ level: 'debug', sink: (chunk) => lines.push(chunk), secrets });
  const upstream = createUpstream(parsed.config, log);
  opened.push(upstream);
  return { upstream, config: parsed.config, log, lines };
}

async function collect(stream: UpstreamStream): Promise<UpstreamEvent[]> {
  const events: UpstreamEvent[] = [];
  for await (const e of stream) events.push(e);
  return events;
}

/** Runs `fn` and returns the UpstreamError it must throw, plus how long that took. */
async function failure(fn: () => Promise<unknown>): Promise<{ err: UpstreamError; ms: number }> {
  const started = performance.now();
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof UpstreamError, `expected an UpstreamError, got ${String(err)}`);
    return { err, ms: performance.now() - started };
  }
  assert.fail('expected the call to fail');
}

async function eventually(check: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) assert.fail('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('stream()', () => {
  it('yields the deltas then done with the finish reason and usage', async () => {
    fake.setBehaviour({ kind: 'normal' });
    const { upstream } = harness();
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    assert.match(stream.upstreamRequestId ?? '', /^req_/);
    assert.deepEqual(await collect(stream), [
      { type: 'delta', text: 'Hel' },
      { type: 'delta', text: 'lo' },
      { type: 'delta', text: ' world' },
      { type: 'done', finishReason: 'stop', usage: { promptTokens: 12, completionTokens: 3 } },
    ]);
  });

  it('sends the model, messages, sampling caps, include_usage and the configured key upstream', async () => {
    fake.setBehaviour({ kind: 'normal' });
    const { upstream } = harness();
    await collect(await upstream.stream(REQUEST, new AbortController().signal));
    const seen = fake.requests.at(-1)!;
    assert.equal(seen.headers.authorization, `Bearer ${CANARY_KEY}`);
    assert.deepEqual(seen.body, {
      model: 'fake-model-1',
      messages: REQUEST.messages,
      temperature: 0.3,
      max_completion_tokens: 50,
      stream: true,
      stream_options: { include_usage: true },
    });
  });

  it('reports finish reason length when the upstream cut the answer', async () => {
    fake.setBehaviour({ kind: 'normal', finishReason: 'length' });
    const events = await collect(await harness().upstream.stream(REQUEST, new AbortController().signal));
    assert.deepEqual(events.at(-1), {
      type: 'done',
      finishReason: 'length',
      usage: { promptTokens: 12, completionTokens: 3 },
    });
  });

  it('rejects a 500 as a 502 AppError without upstream text; logs its status and ids but not its text', async () => {
    fake.setBehaviour({ kind: 'status', status: 500 });
    const { upstream, log, lines } = harness();
    const { err } = await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    const app = err.toAppError();
    assert.equal(err.kind, 'status');
    assert.equal(err.upstreamStatus, 500);
    assert.equal(app.status, 502);
    assert.equal(app.code, 'UPSTREAM_ERROR');
    for (const text of [err.message, app.message, app.detail ?? '']) assert.ok(!text.includes(UPSTREAM_SECRET_DETAIL));
    log.flush();
    const line = JSON.parse(lines.join('').trim().split('\n').at(-1)!) as Record<string, unknown>;
    assert.equal(line['msg'], 'upstream error');
    assert.equal(line['upstreamStatus'], 500);
    assert.equal(line['upstreamCode'], 'server_error');
    assert.match(String(line['upstreamRequestId']), /^req_/);
    assert.ok(!lines.join('').includes(UPSTREAM_SECRET_DETAIL), 'the error body is never logged');
  });

  it('maps a 429 with retry-after to a 503 with Retry-After in whole seconds', async () => {
    fake.setBehaviour({ kind: 'status', status: 429, retryAfter: '7' });
    const { err } = await failure(() => harness().upstream.stream(REQUEST, new AbortController().signal));
    const app = err.toAppError();
    assert.equal(err.kind, 'unavailable');
    assert.equal(app.status, 503);
    assert.equal(app.code, 'UPSTREAM_UNAVAILABLE');
    assert.deepEqual(app.headers, { 'Retry-After': '7' });
  });

  it('retries a 500 before the first byte when retries are allowed', async () => {
    fake.setBehaviour({ kind: 'normal' });
    fake.queue({ kind: 'status', status: 500, retryAfter: '0' }, { kind: 'normal' });
    const before = fake.requests.length;
    const { upstream } = harness({ UPSTREAM_MAX_RETRIES: '1' });
    const events = await collect(await upstream.stream(REQUEST, new AbortController().signal));
    assert.equal(fake.requests.length - before, 2);
    assert.equal(events.filter((e) => e.type === 'delta').length, 3);
  });

  it('ends with a 504 timeout within the deadline when the upstream never answers, retries included', async () => {
    fake.setBehaviour({ kind: 'hang' });
    const { upstream } = harness({ UPSTREAM_TIMEOUT_MS: '300', UPSTREAM_MAX_RETRIES: '2' });
    const index = fake.requests.length;
    const { err, ms } = await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    assert.equal(err.kind, 'timeout');
    assert.equal(err.toAppError().status, 504);
    assert.ok(ms >= 250 && ms < 1000, `took ${ms} ms`);
    await fake.waitForClose(index, 1000);
  });

  it('ends with a timeout within the idle limit if the upstream stalls mid-stream, and closes the socket', async () => {
    fake.setBehaviour({ kind: 'stall', afterChunks: 1 });
    const { upstream } = harness({ UPSTREAM_TIMEOUT_MS: '5000', UPSTREAM_IDLE_TIMEOUT_MS: '300' });
    const index = fake.requests.length;
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const texts: string[] = [];
    const { err, ms } = await failure(async () => {
      for await (const e of stream) if (e.type === 'delta') texts.push(e.text);
    });
    assert.deepEqual(texts, ['Hel']);
    assert.equal(err.kind, 'timeout');
    assert.equal(err.toAppError().code, 'UPSTREAM_TIMEOUT');
    assert.ok(ms >= 250 && ms < 1500, `took ${ms} ms`);
    await fake.waitForClose(index, 1000);
    assert.equal(fake.requests[index]!.closedEarly, true);
  });

  it('ends with a timeout at the first-token deadline when headers come but no token does', async () => {
    fake.setBehaviour({ kind: 'stall', afterChunks: 0 });
    const { upstream } = harness({ UPSTREAM_TIMEOUT_MS: '400', UPSTREAM_IDLE_TIMEOUT_MS: '5000' });
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const { err, ms } = await failure(() => collect(stream));
    assert.equal(err.kind, 'timeout');
    assert.ok(ms < 1500, `took ${ms} ms`);
  });

  it('throws broken when the upstream resets the connection mid-stream', async () => {
    fake.setBehaviour({ kind: 'reset', afterChunks: 2 });
    const stream = await harness().upstream.stream(REQUEST, new AbortController().signal);
    const texts: string[] = [];
    const { err } = await failure(async () => {
      for await (const e of stream) if (e.type === 'delta') texts.push(e.text);
    });
    assert.deepEqual(texts, ['Hel', 'lo']);
    assert.equal(err.kind, 'broken');
    assert.equal(err.toAppError().status, 502);
  });

  it('throws broken when the upstream sends invalid SSE JSON', async () => {
    fake.setBehaviour({ kind: 'invalid-sse' });
    const stream = await harness().upstream.stream(REQUEST, new AbortController().signal);
    const { err } = await failure(() => collect(stream));
    assert.equal(err.kind, 'broken');
  });

  it('throws aborted when the caller aborts mid-stream, and the upstream sees its connection close', async () => {
    fake.setBehaviour({ kind: 'slow', chunks: ['a', 'b', 'c', 'd', 'e', 'f'], chunkDelayMs: 100 });
    const { upstream } = harness();
    const index = fake.requests.length;
    const ac = new AbortController();
    const stream = await upstream.stream(REQUEST, ac.signal);
    const { err } = await failure(async () => {
      for await (const e of stream) if (e.type === 'delta') ac.abort();
    });
    assert.equal(err.kind, 'aborted');
    await fake.waitForClose(index, 1000);
    assert.equal(fake.requests[index]!.closedEarly, true);
  });

  it('hands back the AppError the caller aborted with (a drain), and aborts before headers quickly', async () => {
    fake.setBehaviour({ kind: 'hang' });
    const ac = new AbortController();
    const pending = harness({ UPSTREAM_TIMEOUT_MS: '5000' }).upstream.stream(REQUEST, ac.signal);
    setTimeout(() => ac.abort(new AppError('SHUTTING_DOWN')), 50);
    const { err, ms } = await failure(() => pending);
    assert.equal(err.kind, 'aborted');
    assert.equal(err.toAppError().code, 'SHUTTING_DOWN');
    assert.ok(ms < 1000, `took ${ms} ms`);
  });

  it('closes the upstream request when the consumer stops iterating early', async () => {
    fake.setBehaviour({ kind: 'slow', chunks: ['a', 'b', 'c', 'd'], chunkDelayMs: 100 });
    const index = fake.requests.length;
    const stream = await harness().upstream.stream(REQUEST, new AbortController().signal);
    for await (const e of stream) if (e.type === 'delta') break;
    await fake.waitForClose(index, 1000);
    assert.equal(fake.requests[index]!.closedEarly, true);
  });

  it('leaves no running or pending upstream requests and no open sockets after 50 aborted streams', async (t) => {
    // Its own fake, so idle keep-alive sockets of the other tests' clients do not count.
    const own = await startFakeUpstream();
    t.after(() => own.close());
    own.setBehaviour({ kind: 'slow', chunks: ['a', 'b', 'c'], chunkDelayMs: 200 });
    const { upstream } = harness({}, true, own.url);
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        const ac = new AbortController();
        const stream = await upstream.stream(REQUEST, ac.signal);
        await failure(async () => {
          for await (const e of stream) if (e.type === 'delta') ac.abort();
        });
      }),
    );
    await eventually(() => upstream.stats().running === 0 && upstream.stats().pending === 0, 2000);
    assert.equal(own.requests.length, 50);
    await eventually(() => own.openSockets() === 0, 2000);
  });

  it('delivers every chunk of a large burst in order', async () => {
    fake.setBehaviour({ kind: 'burst', count: 2000, text: 'xy' });
    const events = await collect(await harness().upstream.stream(REQUEST, new AbortController().signal));
    assert.equal(events.filter((e) => e.type === 'delta').length, 2000);
    assert.equal(events.at(-1)?.type, 'done');
  });

  it('throws connection when nothing listens at the base URL', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const { port } = probe.address() as { port: number };
    await new Promise<void>((r) => probe.close(() => r()));
    const { upstream } = harness({}, true, `http://127.0.0.1:${port}/v1`);
    const { err } = await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    assert.equal(err.kind, 'connection');
    assert.equal(err.toAppError().status, 502);
  });

  it('never writes the API key to the log, even without the redaction list', async () => {
    const { upstream, log, lines } = harness({}, false);
    fake.setBehaviour({ kind: 'status', status: 401 });
    await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    fake.setBehaviour({ kind: 'reset', afterChunks: 1 });
    await failure(async () => collect(await upstream.stream(REQUEST, new AbortController().signal)));
    log.flush();
    const text = lines.join('');
    assert.equal((text.match(/upstream error/g) ?? []).length, 2);
    assert.ok(!text.includes(CANARY_KEY));
  });
});

describe('stream() bounds', () => {
  it('fails a stream whose line grows past 1 MiB with UPSTREAM_TOO_LARGE and closes the socket', async () => {
    fake.queue({ kind: 'huge-line', bytes: 200 * 1024 * 1024 });
    const index = fake.requests.length;
    const { upstream } = harness();
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const { err } = await failure(() => collect(stream));
    assert.equal(err.kind, 'broken');
    assert.equal(err.causeCode, 'UPSTREAM_TOO_LARGE');
    assert.ok((await fake.waitForClose(index, 2000)) < 2000);
    assert.equal(fake.requests[index]?.closedEarly, true, 'the 200 MB line was never read to its end');
  });

  it('fails a response larger than UPSTREAM_MAX_RESPONSE_BYTES', async () => {
    fake.queue({ kind: 'burst', count: 2000, text: 'xy' });
    const { upstream } = harness({ UPSTREAM_MAX_RESPONSE_BYTES: '65536' });
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const { err } = await failure(() => collect(stream));
    assert.equal(err.kind, 'broken');
    assert.equal(err.causeCode, 'UND_ERR_RES_EXCEEDED_MAX_SIZE');
  });

  it('reads only the head of a 5 MB error body and logs none of it', async () => {
    fake.queue({ kind: 'huge-error', status: 500, bytes: 5 * 1024 * 1024 });
    const { upstream, log, lines } = harness();
    const { err } = await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    assert.equal(err.upstreamStatus, 500);
    log.flush();
    const text = lines.join('');
    assert.ok(text.length < 2048, `logged ${text.length} bytes`);
    assert.ok(!text.includes(UPSTREAM_SECRET_DETAIL));
  });

  it('logs the endpoint called and the variable to check when the upstream answers 404', async () => {
    fake.queue({ kind: 'status', status: 404 });
    const { upstream, log, lines } = harness();
    await failure(() => upstream.stream(REQUEST, new AbortController().signal));
    log.flush();
    const line = JSON.parse(lines.join('').trim().split('\n').at(-1)!) as Record<string, unknown>;
    assert.match(String(line['msg']), /OPENAI_BASE_URL/);
    assert.equal(line['url'], `${fake.url}/chat/completions`);
    assert.equal(line['upstreamStatus'], 404);
  });

  it('ends a stream of keep-alive chunks at the idle limit after the last content', async () => {
    fake.queue({ kind: 'keepalive', afterChunks: 1, intervalMs: 50 });
    const { upstream } = harness({ UPSTREAM_TIMEOUT_MS: '5000', UPSTREAM_IDLE_TIMEOUT_MS: '400' });
    const index = fake.requests.length;
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const { err, ms } = await failure(() => collect(stream));
    assert.equal(err.kind, 'timeout');
    assert.ok(ms >= 350 && ms < 1500, `took ${ms} ms`);
    assert.ok((await fake.waitForClose(index, 1000)) < 1000);
  });

  it('ends an endless answer at UPSTREAM_MAX_DURATION_MS and closes the socket', async () => {
    fake.queue({ kind: 'endless', text: 'more ', intervalMs: 50 });
    const { upstream } = harness({ UPSTREAM_MAX_DURATION_MS: '1000', UPSTREAM_IDLE_TIMEOUT_MS: '400' });
    const index = fake.requests.length;
    const started = performance.now();
    const stream = await upstream.stream(REQUEST, new AbortController().signal);
    const { err } = await failure(() => collect(stream));
    const ms = performance.now() - started;
    assert.equal(err.kind, 'timeout');
    assert.match(err.message, /total deadline/);
    assert.ok(ms >= 950 && ms < 2000, `took ${ms} ms`);
    assert.ok((await fake.waitForClose(index, 1000)) < 1000);
  });
});

describe('classifyUpstreamError()', () => {
  it('treats 503 and 529 as unavailable and other statuses as status errors', () => {
    const headers = new Headers({ 'retry-after': '3', 'x-request-id': 'req_x' });
    const overloaded = classifyUpstreamError(
      new InternalServerError(529, { message: 'overloaded' }, undefined, headers),
    );
    assert.equal(overloaded.kind, 'unavailable');
    assert.equal(overloaded.retryAfterSeconds, 3);
    assert.equal(overloaded.upstreamRequestId, 'req_x');
    assert.equal(classifyUpstreamError(new InternalServerError(503, {}, undefined, headers)).kind, 'unavailable');
    assert.equal(classifyUpstreamError(new InternalServerError(502, {}, undefined, headers)).kind, 'status');
  });

  it('treats a body timeout as timeout and other transport failures as broken or connection', () => {
    const bodyTimeout = new TypeError('terminated', {
      cause: Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' }),
    });
    const reset = new TypeError('terminated', {
      cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }),
    });
    assert.equal(classifyUpstreamError(bodyTimeout).kind, 'timeout');
    assert.equal(classifyUpstreamError(reset).kind, 'broken');
    assert.equal(classifyUpstreamError(new SyntaxError('bad json')).kind, 'broken');
    assert.equal(classifyUpstreamError(new APIConnectionError({ message: 'refused' })).kind, 'connection');
  });

  it('lets our own abort reason win over whatever the SDK threw', () => {
    assert.equal(classifyUpstreamError(new SyntaxError('x'), 'idle').kind, 'timeout');
    assert.equal(classifyUpstreamError(new SyntaxError('x'), 'client').kind, 'aborted');
  });
});

describe('parseRetryAfter()', () => {
  it('parses seconds and HTTP dates into whole seconds capped at an hour', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('7', now), 7);
    assert.equal(parseRetryAfter('1.2', now), 2);
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30);
    assert.equal(parseRetryAfter('99999', now), 3600);
    assert.equal(parseRetryAfter('Wed, 31 Dec 2025 00:00:00 GMT', now), 0);
    assert.equal(parseRetryAfter('soon', now), undefined);
    assert.equal(parseRetryAfter(null, now), undefined);
  });
});
