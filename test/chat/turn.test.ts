import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Agent, withDefaults } from '../../lib/chat/agents.ts';
import type { TurnEvent, TurnRequest } from '../../lib/chat/turn.ts';
import { AppError } from '../../lib/errors.ts';
import type { Identity } from '../../lib/http/types.ts';
import { type ChatHarness, startChat, storedAnswer, waitFor } from '../support/chat.ts';
import { startTestServer } from '../support/server.ts';

interface UpstreamBody {
  messages: Array<{ role: string; content: string }>;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  stop?: string[];
}

let next = 0;
/** A fresh identity per test, so stream slots never carry over. */
function identity(): Identity {
  return { id: `key:turn-test-${process.pid}-${next++}`, kind: 'key' };
}

async function all(events: AsyncIterable<TurnEvent>): Promise<TurnEvent[]> {
  const out: TurnEvent[] = [];
  for await (const event of events) out.push(event);
  return out;
}

describe('createTurnEngine()', () => {
  let h: ChatHarness;
  let agent: Agent;

  before(async () => {
    h = await startChat({ MAX_ANSWER_CHARS: '10', MAX_CONCURRENT_STREAMS_PER_KEY: '1' });
    agent = withDefaults(
      { id: 'tester', description: 'Test', systemPrompt: 'You are a test.', maxOutputTokens: 100, topP: 0.5 },
      h.server.config,
    );
  });
  after(() => h.close());

  function request(input: TurnRequest['input'], extra: Partial<TurnRequest> = {}): TurnRequest {
    return { identity: identity(), requestId: `req-${next++}`, agent, input, ...extra };
  }

  it('a stored turn yields started, deltas with their offsets and finished, and stores the answer', async () => {
    h.fake.queue({ kind: 'normal', chunks: ['Hel', 'lo'] });
    const turn = await h.server.chat.start(request({ kind: 'stored', message: 'Hi', agentNamed: true }));
    const events = await all(turn.events);
    assert.deepEqual(events.slice(1), [
      { type: 'delta', text: 'Hel', offset: 0 },
      { type: 'delta', text: 'lo', offset: 3 },
      { type: 'finished', finishReason: 'stop', usage: { promptTokens: 12, completionTokens: 2 } },
    ]);
    assert.deepEqual(events[0], { type: 'started', head: turn.head });
    const stored = await storedAnswer(h.server.db.pool, turn.head.conversationId as string);
    assert.equal(stored.status, 'complete');
    assert.equal(stored.content, 'Hello');
    assert.equal(stored.completion_tokens, 2);
  });

  it('a stateless turn sends the agent prompt first, then the client messages, and stores nothing', async () => {
    const sent = h.fake.requests.length;
    const messages = [
      { role: 'system' as const, content: 'Client system' },
      { role: 'user' as const, content: 'Question' },
    ];
    const who = identity();
    const turn = await h.server.chat.start(request({ kind: 'stateless', messages }, { identity: who }));
    assert.equal(turn.head.conversationId, undefined);
    await all(turn.events);
    const stored = await h.server.db.pool.query('SELECT 1 FROM conversations WHERE owner = $1', [who.id]);
    assert.equal(stored.rowCount, 0);
    const body = h.fake.requests[sent]?.body as UpstreamBody;
    assert.deepEqual(body.messages, [{ role: 'system', content: 'You are a test.' }, ...messages]);
  });

  it('clamps sampling to the agent: the output cap, the pinned top_p and the temperature range', async () => {
    const sent = h.fake.requests.length;
    const sampling = { maxOutputTokens: 5000, temperature: 9, topP: 0.9, stop: ['END'] };
    const turn = await h.server.chat.start(request({ kind: 'stateless', messages: [] }, { sampling }));
    await all(turn.events);
    const body = h.fake.requests[sent]?.body as UpstreamBody;
    assert.equal(body.max_completion_tokens, 100, 'never above the agent cap');
    assert.equal(body.temperature, 2, 'clamped to the range');
    assert.equal(body.top_p, 0.5, 'pinned by the agent');
    assert.deepEqual(body.stop, ['END']);
  });

  it('ends an answer at MAX_ANSWER_CHARS with finish reason length, stored complete, upstream closed', async () => {
    h.fake.queue({ kind: 'slow', chunks: ['abcdef', 'ghijkl', 'mnopqr', 'stuvwx'], chunkDelayMs: 20 });
    const index = h.fake.requests.length;
    const turn = await h.server.chat.start(request({ kind: 'stored', message: 'Long', agentNamed: true }));
    const events = await all(turn.events);
    const text = events.flatMap((e) => (e.type === 'delta' ? [e.text] : [])).join('');
    assert.equal(text, 'abcdefghij');
    assert.deepEqual(events.at(-1), { type: 'finished', finishReason: 'length', usage: undefined });
    assert.ok((await h.fake.waitForClose(index, 1_000)) < 1_000, 'the upstream request is closed');
    assert.equal(h.fake.requests[index]?.closedEarly, true);
    const stored = await storedAnswer(h.server.db.pool, turn.head.conversationId as string);
    assert.deepEqual([stored.status, stored.finish_reason, stored.content], ['complete', 'length', 'abcdefghij']);
  });

  it('ends once if the consumer leaves before any event: slot free, answer incomplete, upstream closed', async () => {
    h.fake.queue({ kind: 'slow', chunks: ['a', 'b', 'c'], chunkDelayMs: 200 });
    const index = h.fake.requests.length;
    const who = identity();
    const turn = await h.server.chat.start(
      request({ kind: 'stored', message: 'Bye', agentNamed: true }, { identity: who }),
    );
    await turn.events[Symbol.asyncIterator]().return?.();
    assert.ok((await h.fake.waitForClose(index, 1_000)) < 1_000);
    const stored = await storedAnswer(h.server.db.pool, turn.head.conversationId as string);
    assert.equal(stored.status, 'incomplete');
    await waitFor('the slot to be free', 1_000, () => (h.server.slots.inUse(who.id) === 0 ? true : undefined));
    assert.equal(h.server.chat.active(), 0);
  });

  it('refuses a second turn of an identity at its stream cap with TOO_MANY_STREAMS', async () => {
    h.fake.queue({ kind: 'slow', chunks: ['a', 'b'], chunkDelayMs: 100 });
    const who = identity();
    const first = await h.server.chat.start(request({ kind: 'stateless', messages: [] }, { identity: who }));
    await assert.rejects(h.server.chat.start(request({ kind: 'stateless', messages: [] }, { identity: who })), {
      code: 'TOO_MANY_STREAMS',
    });
    await all(first.events);
  });
});

describe('createTurnEngine() with no model configured', () => {
  it('start() refuses with MODEL_NOT_CONFIGURED naming the variables; the server warns once at start', async () => {
    const server = await startTestServer({ OPENAI_API_KEY: '', OPENAI_BASE_URL: '' });
    try {
      const agent = withDefaults({ id: 'a', description: '', systemPrompt: 'p' }, server.config);
      const err = await server.chat
        .start({ identity: identity(), requestId: 'r', agent, input: { kind: 'stateless', messages: [] } })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      assert.ok(err instanceof AppError);
      assert.equal(err.code, 'MODEL_NOT_CONFIGURED');
      assert.equal(err.status, 503);
      assert.match(err.detail ?? '', /OPENAI_API_KEY.*OPENAI_BASE_URL/);
      const warnings = server
        .logs()
        .split('\n')
        .filter((l) => l.includes('no model configured'));
      assert.equal(warnings.length, 1);
    } finally {
      await server.close();
    }
  });
});
