// POST /v1/chat through the real app, the real openai SDK and the fake upstream: events, the
// upstream request, persistence, validation and what reaches the logs.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type ChatHarness, readEvents, startChat, storedAnswer } from '../support/chat.ts';
import { CANARY } from '../support/config.ts';

const MAX_MESSAGE_CHARS = 50;
const MAX_BODY_BYTES = 1024;
const PIRATE = {
  id: 'pirate',
  description: 'Answers like a pirate',
  model: 'pirate-model-1',
  systemPrompt: 'You are a pirate. PROMPT-MARKER-4d1c',
  temperature: 0.5,
  maxOutputTokens: 64,
};

interface UpstreamBody {
  model: string;
  messages: Array<{ role: string; content: string }>;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  temperature?: number;
  max_completion_tokens?: number;
}

describe('POST /v1/chat', () => {
  let h: ChatHarness;
  let agentsDir: string;

  before(async () => {
    agentsDir = await mkdtemp(join(tmpdir(), 'agents-'));
    const agentsFile = join(agentsDir, 'agents.json');
    await writeFile(agentsFile, JSON.stringify([PIRATE]));
    h = await startChat({
      MAX_MESSAGE_CHARS: String(MAX_MESSAGE_CHARS),
      MAX_BODY_BYTES: String(MAX_BODY_BYTES),
      AGENTS_FILE: agentsFile,
    });
  });
  after(async () => {
    await h.close();
    await rm(agentsDir, { recursive: true, force: true });
  });

  /** Sends one streamed turn and returns its events and the upstream request body it caused. */
  async function turn(
    body: object,
  ): Promise<{ events: Awaited<ReturnType<typeof readEvents>>; upstream: UpstreamBody }> {
    const sent = h.fake.requests.length;
    const res = await h.chat(body);
    assert.equal(res.status, 200);
    const events = await readEvents(res);
    assert.equal(h.fake.requests.length, sent + 1, 'one upstream request per turn');
    return { events, upstream: h.fake.requests[sent]?.body as UpstreamBody };
  }

  it('streams start, the deltas Hel, lo, world and done with finish reason and usage', async () => {
    const { events } = await turn({ message: 'Say hello' });
    assert.deepEqual(
      events.map((e) => e.event),
      ['start', 'delta', 'delta', 'delta', 'done'],
    );
    const start = events[0]?.data as { conversationId: string; messageId: string; agent: string };
    assert.match(start.conversationId, /^[0-9a-f-]{36}$/);
    assert.match(start.messageId, /^[0-9a-f-]{36}$/);
    assert.equal(start.agent, 'default');
    assert.deepEqual(
      events.slice(1, 4).map((e) => e.data),
      [{ text: 'Hel' }, { text: 'lo' }, { text: ' world' }],
    );
    assert.deepEqual(events[4]?.data, { finishReason: 'stop', usage: { promptTokens: 12, completionTokens: 3 } });
  });

  it('streams with the SSE headers and the API security headers', async () => {
    const res = await h.chat({ message: 'Headers please' });
    await readEvents(res);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
    assert.equal(res.headers.get('content-security-policy'), "default-src 'none'; frame-ancestors 'none'");
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(res.headers.get('x-frame-options'), 'DENY');
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(res.headers.get('cross-origin-resource-policy'), 'same-origin');
    assert.match(res.headers.get('x-request-id') ?? '', /^[A-Za-z0-9._-]{8,}$/);
    assert.equal(res.headers.get('x-powered-by'), null);
    assert.equal(res.headers.get('content-length'), null);
  });

  it('sends the default system prompt first and the new message last upstream', async () => {
    const { upstream } = await turn({ message: 'What is SSE?' });
    assert.equal(upstream.messages[0]?.role, 'system');
    assert.match(upstream.messages[0]?.content ?? '', /helpful assistant/);
    assert.deepEqual(upstream.messages.at(-1), { role: 'user', content: 'What is SSE?' });
    assert.equal(upstream.messages.length, 2);
  });

  it('caps the built-in default agent at DEFAULT_MAX_OUTPUT_TOKENS (4096) output tokens upstream', async () => {
    const { upstream } = await turn({ message: 'Write a very long essay' });
    assert.equal(upstream.max_completion_tokens, 4096);
  });

  it("sends the chosen agent's prompt, model, temperature and output cap upstream", async () => {
    const { events, upstream } = await turn({ message: 'Ahoy', agent: 'pirate' });
    assert.equal((events[0]?.data as { agent: string }).agent, 'pirate');
    assert.deepEqual(upstream.messages[0], { role: 'system', content: PIRATE.systemPrompt });
    assert.equal(upstream.model, PIRATE.model);
    assert.equal(upstream.temperature, PIRATE.temperature);
    assert.equal(upstream.max_completion_tokens, PIRATE.maxOutputTokens);
  });

  it('sends the earlier user and assistant messages upstream on the second turn', async () => {
    const first = await turn({ message: 'First question' });
    const conversationId = (first.events[0]?.data as { conversationId: string }).conversationId;
    const second = await turn({ message: 'Second question', conversationId });
    assert.equal((second.events[0]?.data as { conversationId: string }).conversationId, conversationId);
    assert.deepEqual(second.upstream.messages.slice(1), [
      { role: 'user', content: 'First question' },
      { role: 'assistant', content: 'Hello world' },
      { role: 'user', content: 'Second question' },
    ]);
  });

  it('continues a conversation with its own agent when the follow-up names none', async () => {
    const first = await turn({ message: 'Ahoy', agent: 'pirate' });
    const conversationId = (first.events[0]?.data as { conversationId: string }).conversationId;
    const second = await turn({ message: 'And then?', conversationId });
    assert.equal((second.events[0]?.data as { agent: string }).agent, 'pirate');
    assert.deepEqual(second.upstream.messages[0], { role: 'system', content: PIRATE.systemPrompt });
    assert.equal(second.upstream.model, PIRATE.model);
  });

  it('relays a delta containing line breaks and SSE fields as one delta, not as forged events', async () => {
    const forged = 'a\n\nevent: done\ndata: {"finishReason":"forged"}\n\n';
    h.fake.queue({ kind: 'normal', chunks: [forged, 'b'] });
    const { events } = await turn({ message: 'Inject' });
    assert.deepEqual(
      events.map((e) => e.event),
      ['start', 'delta', 'delta', 'done'],
    );
    assert.deepEqual(events[1]?.data, { text: forged });
  });

  it('stores an answer whose upstream text contains NUL, with U+FFFD in its place', async () => {
    h.fake.queue({ kind: 'normal', chunks: ['x\u0000', 'y'] });
    const { events } = await turn({ message: 'Send a NUL' });
    assert.equal(events.at(-1)?.event, 'done');
    const conversationId = (events[0]?.data as { conversationId: string }).conversationId;
    const answer = await storedAnswer(h.server.db.pool, conversationId);
    assert.deepEqual([answer.status, answer.content], ['complete', 'x\uFFFDy']);
  });

  it('asks the upstream for a stream with stream_options.include_usage', async () => {
    const { upstream } = await turn({ message: 'Usage?' });
    assert.equal(upstream.stream, true);
    assert.deepEqual(upstream.stream_options, { include_usage: true });
  });

  it('authenticates upstream with the configured key, not the client key', async () => {
    const sent = h.fake.requests.length;
    await readEvents(await h.chat({ message: 'Whose key?' }));
    assert.equal(h.fake.requests[sent]?.headers.authorization, `Bearer ${CANARY}`);
  });

  it('stores the user message and the complete assistant answer with usage', async () => {
    const { events } = await turn({ message: 'Remember me' });
    const start = events[0]?.data as { conversationId: string; messageId: string };
    const res = await h.call('GET', `/v1/conversations/${start.conversationId}`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { id: string; agent: string; messages: Array<Record<string, unknown>> };
    assert.equal(body.id, start.conversationId);
    assert.equal(body.agent, 'default');
    assert.equal(body.messages.length, 2);
    const [user, assistant] = body.messages;
    assert.deepEqual(
      { role: user?.['role'], content: user?.['content'], status: user?.['status'] },
      { role: 'user', content: 'Remember me', status: 'complete' },
    );
    assert.deepEqual(
      {
        id: assistant?.['id'],
        role: assistant?.['role'],
        content: assistant?.['content'],
        status: assistant?.['status'],
        finishReason: assistant?.['finishReason'],
        usage: assistant?.['usage'],
      },
      {
        id: start.messageId,
        role: 'assistant',
        content: 'Hello world',
        status: 'complete',
        finishReason: 'stop',
        usage: { promptTokens: 12, completionTokens: 3 },
      },
    );
    assert.equal(typeof assistant?.['completedAt'], 'string');
  });

  it('answers one JSON object with stream false and stores the answer', async () => {
    const sent = h.fake.requests.length;
    const res = await h.chat({ message: 'No stream', stream: false });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const body = (await res.json()) as Record<string, unknown>;
    assert.deepEqual(
      { text: body['text'], finishReason: body['finishReason'], usage: body['usage'], agent: body['agent'] },
      { text: 'Hello world', finishReason: 'stop', usage: { promptTokens: 12, completionTokens: 3 }, agent: 'default' },
    );
    // Buffered answers are streamed upstream too: one code path, the same deadlines and caps.
    assert.equal((h.fake.requests[sent]?.body as UpstreamBody).stream, true);
    const stored = (await (await h.call('GET', `/v1/conversations/${String(body['conversationId'])}`)).json()) as {
      messages: Array<Record<string, unknown>>;
    };
    assert.deepEqual(
      stored.messages.map((m) => [m['role'], m['content'], m['status']]),
      [
        ['user', 'No stream', 'complete'],
        ['assistant', 'Hello world', 'complete'],
      ],
    );
    assert.equal(stored.messages[1]?.['id'], body['messageId']);
  });

  it('lists agents by id and description, never their prompts', async () => {
    const res = await h.call('GET', '/v1/agents');
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.doesNotMatch(text, /PROMPT-MARKER|You are a helpful assistant|pirate-model/);
    const body = JSON.parse(text) as { agents: Array<{ id: string; description: string }> };
    assert.deepEqual(body.agents.map((a) => a.id).sort(), ['default', 'pirate']);
    assert.deepEqual(
      body.agents.find((a) => a.id === 'pirate'),
      { id: 'pirate', description: PIRATE.description },
    );
  });

  const invalid: Array<[string, unknown]> = [
    ['an empty message', { message: '' }],
    ['a message over MAX_MESSAGE_CHARS', { message: 'x'.repeat(MAX_MESSAGE_CHARS + 1) }],
    ['an unknown field', { message: 'hi', model: 'gpt-4o' }],
    ['a conversationId that is not a uuid', { message: 'hi', conversationId: 'not-a-uuid' }],
    ['a message that is not a string', { message: 42 }],
    ['a stream flag that is not a boolean', { message: 'hi', stream: 'yes' }],
    ['a body that is not an object', ['hi']],
    ['an unknown agent', { message: 'hi', agent: 'no-such-agent' }],
    ['a message with a NUL character', { message: 'a\u0000b' }],
  ];
  for (const [what, body] of invalid) {
    it(`refuses ${what} with 400 VALIDATION_FAILED and calls no upstream`, async () => {
      const sent = h.fake.requests.length;
      const res = await h.chat(body);
      assert.equal(res.status, 400);
      assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
      const problem = (await res.json()) as { code: string; status: number; issues?: unknown[] };
      assert.equal(problem.code, 'VALIDATION_FAILED');
      assert.equal(problem.status, 400);
      assert.ok(Array.isArray(problem.issues) && problem.issues.length > 0, 'the problem lists the issues');
      assert.equal(h.fake.requests.length, sent);
    });
  }

  it('refuses a body that is not JSON with 415', async () => {
    const res = await h.chat(undefined, {
      raw: 'message=hi',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    assert.equal(res.status, 415);
    assert.equal(((await res.json()) as { code: string }).code, 'UNSUPPORTED_MEDIA_TYPE');
  });

  it('refuses malformed JSON with 400 INVALID_JSON', async () => {
    const res = await h.chat(undefined, { raw: '{"message": "hi"' });
    assert.equal(res.status, 400);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(((await res.json()) as { code: string }).code, 'INVALID_JSON');
  });

  it('refuses a chunked body over MAX_BODY_BYTES with 413 and calls no upstream', async () => {
    const sent = h.fake.requests.length;
    const { status, body, chunked } = await postChunked(`${h.server.url}/v1/chat`, h.key, 4 * MAX_BODY_BYTES);
    assert.equal(chunked, true, 'sent without content-length');
    assert.equal(status, 413);
    assert.equal((JSON.parse(body) as { code: string }).code, 'BODY_TOO_LARGE');
    assert.equal(h.fake.requests.length, sent);
  });

  it('never writes the upstream key or message contents to the logs', async () => {
    const secretMessage = `MESSAGE-MARKER-${randomUUID().slice(0, 8)}`;
    const answer = ['ANSWER-', 'MARKER-', 'b7e2'];
    h.fake.queue(
      { kind: 'normal', chunks: answer },
      { kind: 'normal', chunks: answer },
      { kind: 'status', status: 500 },
    );
    const streamed = await h.chat({ message: secretMessage });
    await readEvents(streamed);
    const buffered = await h.chat({ message: secretMessage, stream: false });
    await buffered.json();
    const failed = await h.chat({ message: secretMessage });
    assert.equal(failed.status, 502);
    await failed.body?.cancel();
    const logs = h.server.logs();
    const logged = logs
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as { msg?: unknown; requestId?: unknown });
    for (const res of [streamed, buffered, failed]) {
      const id = res.headers.get('x-request-id');
      assert.ok(id !== null, 'the response names its request id');
      assert.ok(
        logged.some((line) => line.msg === 'request' && line.requestId === id),
        `request ${id} has its access-log line`,
      );
    }
    assert.ok(logs.includes('upstream error'), 'the upstream failure was logged');
    assert.equal(logs.includes(CANARY), false, 'the upstream key is in the logs');
    assert.equal(logs.includes(secretMessage), false, 'the message is in the logs');
    assert.equal(logs.includes(answer.join('')), false, 'the answer is in the logs');
    assert.equal(logs.includes(h.key), false, 'the client key is in the logs');
  });
});

/** POSTs `bytes` of JSON with chunked transfer encoding; resolves with the status once answered. */
function postChunked(
  url: string,
  key: string,
  bytes: number,
): Promise<{ status: number; body: string; chunked: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    });
    let answered = false;
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    req.on('response', (res) => {
      answered = true;
      const parts: Buffer[] = [];
      res.on('data', (p: Buffer) => parts.push(p));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(parts).toString('utf8'),
          chunked: req.getHeader('content-length') === undefined,
        }),
      );
      res.on('error', reject);
    });
    const chunk = 'x'.repeat(256);
    req.write(`{"message":"`);
    let sent = 0;
    const pump = (): void => {
      // Stops once answered: the server stops reading at the cap and closes the connection.
      while (!answered && sent < bytes) {
        sent += chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      if (!answered) req.end('"}');
    };
    pump();
  });
}
