// The OpenAI dialect as real clients use it: the openai SDK, the AI SDK's openai-compatible
// provider and LangChain's ChatOpenAI, against the real app on port 0 and the fake upstream.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { ChatOpenAI } from '@langchain/openai';
import { generateText, streamText } from 'ai';
import OpenAI, { APIError, AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from 'openai';
import { type ChatHarness, startChat } from '../support/chat.ts';

interface UpstreamBody {
  model: string;
  messages: Array<{ role: string; content: string }>;
}

const DEFAULT_PROMPT_START = 'You are a helpful assistant.';

describe('OpenAI clients against /v1', () => {
  let h: ChatHarness;
  let baseURL: string;
  let client: OpenAI;

  before(async () => {
    h = await startChat();
    baseURL = `${h.server.url}/v1`;
    client = new OpenAI({ baseURL, apiKey: h.key, maxRetries: 0 });
  });
  after(() => h.close());

  /** The upstream request a client call made: the call's messages as the model saw them. */
  async function upstreamOf(call: () => Promise<unknown>): Promise<UpstreamBody> {
    const index = h.fake.requests.length;
    await call();
    const body = h.fake.requests[index]?.body as UpstreamBody | undefined;
    assert.ok(body !== undefined, 'the call reached the upstream');
    return body;
  }

  it('openai SDK: chat.completions.create streams the text, then the usage chunk with include_usage set', async () => {
    h.fake.queue({ kind: 'normal', chunks: ['Hel', 'lo', ' world'] });
    const stream = await client.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Hi' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
      assert.equal(chunk.model, 'default', 'the model is the agent id, never the provider model');
    }
    assert.equal(text, 'Hello world');
    assert.equal(finish, 'stop');
    assert.deepEqual(usage, { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 });
  });

  it('openai SDK: a buffered create gets a chat.completion with usage; stream() helper takes our chunks', async () => {
    const completion = await client.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Hi' }],
    });
    assert.equal(completion.object, 'chat.completion');
    assert.equal(completion.choices[0]?.message.content, 'Hello world');
    assert.equal(completion.choices[0]?.finish_reason, 'stop');
    assert.deepEqual(completion.usage, { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 });
    const helper = client.chat.completions.stream({ model: 'default', messages: [{ role: 'user', content: 'Hi' }] });
    const final = await helper.finalChatCompletion();
    assert.equal(final.choices[0]?.message.content, 'Hello world');
  });

  it('openai SDK: models.list() lists the agents as models', async () => {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    assert.ok(ids.includes('default'));
    for (const model of page.data) {
      assert.equal(model.object, 'model');
      assert.equal(model.owned_by, 'chat-server');
      assert.equal(typeof model.created, 'number');
    }
  });

  it('openai SDK: an upstream failure after the first chunk raises APIError from the stream', async () => {
    h.fake.queue({ kind: 'reset', afterChunks: 1 });
    const stream = await client.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Hi' }],
      stream: true,
    });
    const texts: string[] = [];
    await assert.rejects(
      async () => {
        for await (const chunk of stream) texts.push(chunk.choices[0]?.delta.content ?? '');
      },
      (err: unknown) => {
        assert.ok(err instanceof APIError, `got ${String(err)}`);
        assert.equal(err.type, 'server_error');
        assert.equal(err.code, 'upstream_error');
        return true;
      },
    );
    assert.ok(texts.includes('Hel'));
  });

  it('openai SDK: a wrong key raises AuthenticationError', async () => {
    const stranger = new OpenAI({ baseURL, apiKey: `csk_${'A'.repeat(43)}`, maxRetries: 0 });
    await assert.rejects(stranger.models.list(), (err: unknown) => {
      assert.ok(err instanceof AuthenticationError);
      assert.equal(err.code, 'invalid_api_key');
      return true;
    });
  });

  it('openai SDK: a parameter we do not serve raises BadRequestError naming it', async () => {
    const call = client.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Hi' }],
      tools: [{ type: 'function', function: { name: 'f', parameters: {} } }],
    });
    await assert.rejects(call, (err: unknown) => {
      assert.ok(err instanceof BadRequestError);
      assert.equal(err.param, 'tools');
      assert.equal(err.code, 'unsupported_parameter');
      return true;
    });
  });

  it('openai SDK: an unknown model raises NotFoundError with code model_not_found', async () => {
    const call = client.chat.completions.create({ model: 'gpt-5', messages: [{ role: 'user', content: 'Hi' }] });
    await assert.rejects(call, (err: unknown) => {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, 'model');
      return true;
    });
  });

  it('AI SDK: streamText over createOpenAICompatible yields the text and the usage; generateText too', async () => {
    const provider = createOpenAICompatible({ name: 'chat-server', baseURL, apiKey: h.key, includeUsage: true });
    h.fake.queue({ kind: 'normal', chunks: ['Hel', 'lo'] });
    const streamed = streamText({ model: provider.chatModel('default'), prompt: 'Hi', maxRetries: 0 });
    let text = '';
    for await (const part of streamed.textStream) text += part;
    assert.equal(text, 'Hello');
    const usage = await streamed.usage;
    assert.equal(usage.inputTokens, 12);
    assert.equal(usage.outputTokens, 2);
    assert.equal(await streamed.finishReason, 'stop');
    const generated = await generateText({ model: provider.chatModel('default'), prompt: 'Hi', maxRetries: 0 });
    assert.equal(generated.text, 'Hello world');
  });

  it('LangChain: ChatOpenAI.stream yields the text', async () => {
    const model = new ChatOpenAI({ model: 'default', apiKey: h.key, configuration: { baseURL }, maxRetries: 0 });
    let text = '';
    for await (const chunk of await model.stream('Hi')) text += String(chunk.content);
    assert.equal(text, 'Hello world');
  });

  it('every client: the agent prompt reaches the upstream first; a client system message comes after it', async () => {
    const provider = createOpenAICompatible({ name: 'chat-server', baseURL, apiKey: h.key });
    const langchain = new ChatOpenAI({ model: 'default', apiKey: h.key, configuration: { baseURL }, maxRetries: 0 });
    const calls: Array<() => Promise<unknown>> = [
      () =>
        client.chat.completions.create({ model: 'default', messages: [{ role: 'system', content: 'Be a pirate' }] }),
      () => generateText({ model: provider.chatModel('default'), system: 'Be a pirate', prompt: 'Hi', maxRetries: 0 }),
      async () => {
        for await (const _ of await langchain.stream([
          ['system', 'Be a pirate'],
          ['user', 'Hi'],
        ])) {
          // drained
        }
      },
    ];
    for (const call of calls) {
      const { messages } = await upstreamOf(call);
      assert.equal(messages[0]?.role, 'system');
      assert.ok(messages[0]?.content.startsWith(DEFAULT_PROMPT_START), 'the agent prompt is first');
      assert.deepEqual(messages[1], { role: 'system', content: 'Be a pirate' });
    }
  });

  it('openai SDK: aborting the stream closes the upstream request within 1 s', async () => {
    h.fake.queue({ kind: 'stall', afterChunks: 1 });
    const index = h.fake.requests.length;
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: 'default', messages: [{ role: 'user', content: 'Hi' }], stream: true },
      { signal: controller.signal },
    );
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content) controller.abort();
    await h.fake.waitForClose(index, 1_000); // rejects after 1 s
    assert.equal(h.fake.requests[index]?.closedEarly, true);
  });
});

describe('OpenAI clients and the rate limit', () => {
  let h: ChatHarness;

  before(async () => {
    // One token a second and a burst of one: the second call waits for Retry-After: 1.
    h = await startChat({ RATE_LIMIT_PER_MINUTE: '60', RATE_LIMIT_BURST: '1' });
  });
  after(() => h.close());

  it('openai SDK: 429 raises RateLimitError, and with a retry the SDK waits for Retry-After and succeeds', async () => {
    const noRetry = new OpenAI({ baseURL: `${h.server.url}/v1`, apiKey: h.key, maxRetries: 0 });
    await noRetry.models.list();
    await assert.rejects(noRetry.models.list(), (err: unknown) => {
      assert.ok(err instanceof RateLimitError);
      assert.equal(err.code, 'rate_limit_exceeded');
      assert.equal(err.headers?.get('retry-after'), '1');
      return true;
    });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const retrying = new OpenAI({ baseURL: `${h.server.url}/v1`, apiKey: h.key, maxRetries: 1 });
    await retrying.models.list();
    const started = performance.now();
    const page = await retrying.models.list();
    assert.ok(page.data.length > 0);
    assert.ok(performance.now() - started >= 900, 'the retry waited for Retry-After');
  });
});
