import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import OpenAI, { APIConnectionError, RateLimitError } from 'openai';
import { Agent } from 'undici';
import { classifyUpstreamError } from '../../lib/chat/upstream-errors.ts';
import { createUpstreamFetch } from '../../lib/chat/upstream-fetch.ts';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream.ts';

let fake: FakeUpstream;
let agent: Agent;
let upstreamFetch: typeof fetch;

const HEADERS = { 'content-type': 'application/json', authorization: 'Bearer test-key' };
const BODY = JSON.stringify({ model: 'fake-model-1', stream: true, messages: [{ role: 'user', content: 'hi' }] });

before(async () => {
  fake = await startFakeUpstream();
  agent = new Agent({ connections: 16, allowH2: false });
  upstreamFetch = createUpstreamFetch(agent);
});
after(async () => {
  await agent.close();
  await fake.close();
});

function chatUrl(): string {
  return `${fake.url}/chat/completions`;
}

function post(signal?: AbortSignal): Promise<Response> {
  return upstreamFetch(chatUrl(), {
    method: 'POST',
    headers: new Headers(HEADERS),
    body: BODY,
    ...(signal ? { signal } : {}),
  });
}

async function readAll(body: Response['body']): Promise<string> {
  let text = '';
  for await (const chunk of body as unknown as AsyncIterable<Buffer>) text += chunk.toString('utf8');
  return text;
}

/** A port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function waitForIdlePool(): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const busy = Object.values(agent.stats).some((s) => s.running > 0 || s.pending > 0);
    if (!busy) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`pool still busy: ${JSON.stringify(agent.stats)}`);
}

describe('createUpstreamFetch()', () => {
  it('sends method, headers and body, and answers with status, headers and an iterable streaming body', async () => {
    fake.setBehaviour({ kind: 'normal' });
    const before = fake.requests.length;
    const res = await post();
    assert.equal(res.status, 200);
    assert.equal(res.ok, true);
    assert.equal(res.url, chatUrl());
    assert.match(res.headers.get('Content-Type') ?? '', /^text\/event-stream/);
    assert.match(res.headers.get('x-request-id') ?? '', /^req_[0-9a-f]+$/);
    assert.ok([...res.headers.entries()].some(([name]) => name === 'x-request-id'));
    const text = await readAll(res.body);
    assert.match(text, /"content":"Hel"/);
    assert.match(text, /data: \[DONE\]\n\n$/);
    const seen = fake.requests[before];
    assert.equal(seen?.headers.authorization, 'Bearer test-key');
    assert.equal(seen?.headers['accept-encoding'], 'identity');
    assert.deepEqual(seen?.body, JSON.parse(BODY));
  });

  it('hands back an error status with its body and headers (retry-after, request id)', async () => {
    fake.queue({ kind: 'status', status: 429, retryAfter: '7' });
    const res = await post();
    assert.equal(res.status, 429);
    assert.equal(res.ok, false);
    assert.equal(res.headers.get('retry-after'), '7');
    assert.notEqual(res.headers.get('x-request-id'), null);
    const body = (await res.json()) as { error: { code: string } };
    assert.equal(body.error.code, 'server_error');
  });

  it('rejects with the signal reason (an AbortError) when aborted before headers, and closes the socket', async () => {
    fake.queue({ kind: 'hang' });
    const index = fake.requests.length;
    const controller = new AbortController();
    const pending = post(controller.signal);
    await waitForRequest(index);
    controller.abort();
    await assert.rejects(pending, (err: Error) => err.name === 'AbortError');
    await fake.waitForClose(index, 1000);
    await waitForIdlePool();
  });

  it('ends the body and closes the upstream socket when aborted mid-stream', async () => {
    fake.queue({ kind: 'stall', afterChunks: 1 });
    const index = fake.requests.length;
    const controller = new AbortController();
    const res = await post(controller.signal);
    const it = (res.body as unknown as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    controller.abort();
    await assert.rejects(
      async () => {
        for (;;) if ((await it.next()).done === true) return;
      },
      (err: Error) => err.name === 'AbortError',
    );
    await fake.waitForClose(index, 1000);
    await waitForIdlePool();
  });

  it('rejects a refused connection with TypeError("fetch failed") carrying the cause code', async () => {
    const port = await closedPort();
    await assert.rejects(
      upstreamFetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', body: BODY }),
      (err: Error) => {
        assert.equal(err.name, 'TypeError');
        assert.equal(err.message, 'fetch failed');
        assert.equal((err.cause as { code?: string }).code, 'ECONNREFUSED');
        return true;
      },
    );
  });

  it('refuses a compressed body it did not ask for', async () => {
    const server: Server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end('not really gzip');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      await assert.rejects(upstreamFetch(`http://127.0.0.1:${port}/`, { method: 'GET' }), (err: Error) => {
        assert.equal(err.message, 'fetch failed');
        assert.match((err.cause as Error).message, /content-encoding: gzip/);
        return true;
      });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('createUpstreamFetch() requests', () => {
  it('asks for an uncompressed body even when the caller asks for gzip, and does not follow a redirect', async () => {
    const seen: Array<{ url: string | undefined; encoding: string | undefined }> = [];
    const server: Server = createServer((req, res) => {
      seen.push({ url: req.url, encoding: req.headers['accept-encoding'] });
      if (req.url === '/moved') {
        res.writeHead(302, { location: '/elsewhere', 'content-type': 'text/plain' }).end('moved');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' }).end('here');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const res = await upstreamFetch(`http://127.0.0.1:${port}/moved`, {
        method: 'POST',
        headers: { 'accept-encoding': 'gzip, br' },
        body: '{}',
      });
      assert.equal(res.status, 302, 'the redirect is handed back, not followed');
      assert.equal(res.ok, false);
      assert.equal(res.headers.get('location'), '/elsewhere');
      assert.equal(await res.text(), 'moved');
      assert.deepEqual(seen, [{ url: '/moved', encoding: 'identity' }]);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('the openai SDK over createUpstreamFetch()', () => {
  function client(baseURL = fake.url): OpenAI {
    return new OpenAI({
      apiKey: 'test-key',
      baseURL,
      maxRetries: 0,
      timeout: 2000,
      logLevel: 'off',
      fetch: upstreamFetch,
    });
  }

  it('streams chat chunks and reports the upstream request id', async () => {
    fake.setBehaviour({ kind: 'normal' });
    const { data, request_id } = await client()
      .chat.completions.create({ model: 'fake-model-1', stream: true, messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    let text = '';
    for await (const chunk of data) text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'Hello world');
    assert.match(request_id ?? '', /^req_/);
  });

  it('retries after a 500 (the SDK discards that body) and streams the next answer', async () => {
    fake.queue({ kind: 'status', status: 500 }, { kind: 'normal' });
    const index = fake.requests.length;
    const sdk = new OpenAI({
      apiKey: 'test-key',
      baseURL: fake.url,
      maxRetries: 1,
      timeout: 2000,
      logLevel: 'off',
      fetch: upstreamFetch,
    });
    const stream = await sdk.chat.completions.create({
      model: 'fake-model-1',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'Hello world');
    assert.equal(fake.requests.length, index + 2);
    await waitForIdlePool();
  });

  it('turns a 429 into RateLimitError with its headers, which we class as unavailable with Retry-After', async () => {
    fake.queue({ kind: 'status', status: 429, retryAfter: '7' });
    const err = await client()
      .chat.completions.create({ model: 'fake-model-1', stream: true, messages: [{ role: 'user', content: 'hi' }] })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof RateLimitError);
    const classified = classifyUpstreamError(err);
    assert.equal(classified.kind, 'unavailable');
    assert.equal(classified.retryAfterSeconds, 7);
    assert.match(classified.upstreamRequestId ?? '', /^req_/);
  });

  it('turns a refused connection into APIConnectionError, which we classify as connection (502)', async () => {
    const port = await closedPort();
    const err = await client(`http://127.0.0.1:${port}/v1`)
      .chat.completions.create({ model: 'fake-model-1', messages: [{ role: 'user', content: 'hi' }] })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof APIConnectionError);
    assert.equal(classifyUpstreamError(err).kind, 'connection');
  });

  it('times out a hanging upstream as a timeout (504), not a connection error', async () => {
    fake.queue({ kind: 'hang' });
    const err = await new OpenAI({
      apiKey: 'test-key',
      baseURL: fake.url,
      maxRetries: 0,
      timeout: 200,
      logLevel: 'off',
      fetch: upstreamFetch,
    }).chat.completions
      .create({ model: 'fake-model-1', messages: [{ role: 'user', content: 'hi' }] })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.equal(classifyUpstreamError(err).kind, 'timeout');
    await waitForIdlePool();
  });
});

async function waitForRequest(index: number): Promise<void> {
  for (let i = 0; i < 100 && fake.requests.length <= index; i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(fake.requests.length > index, 'the fake never saw the request');
}
