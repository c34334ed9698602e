// One TurnRun on its own: the sampling sent upstream, finish() once, and the shared checkpoint budget.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { type Agent, withDefaults } from '../../lib/chat/agents.ts';
import type { Link, TurnEvent, TurnRequest } from '../../lib/chat/turn.ts';
import { type CheckpointBudget, TurnRun } from '../../lib/chat/turn-run.ts';
import type { Sampling } from '../../lib/chat/upstream.ts';
import { storedAnswer, waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { type EngineParts, startEngineParts } from '../support/turn-engine.ts';

/** What one run was given and gave back: its slot, its signal and its registration, counted. */
interface Harness {
  run: TurnRun;
  released: number;
  disposed: number;
  unregistered: number;
}

async function all(events: AsyncIterable<TurnEvent>): Promise<TurnEvent[]> {
  const out: TurnEvent[] = [];
  for await (const event of events) out.push(event);
  return out;
}

describe('TurnRun', () => {
  let parts: EngineParts;

  before(async () => {
    parts = await startEngineParts();
  });
  after(() => parts?.close());

  function harness(
    input: TurnRequest['input'],
    extra: { agent?: Agent; sampling?: Sampling; budget?: CheckpointBudget; checkpointChars?: number } = {},
  ): Harness {
    const controller = new AbortController();
    const state = { released: 0, disposed: 0, unregistered: 0 };
    const link: Link = {
      signal: controller.signal,
      abort: (reason) => controller.abort(reason),
      dispose: () => state.disposed++,
    };
    const request: TurnRequest = {
      identity: { id: `key:${randomUUID()}`, kind: 'key' },
      requestId: `req-${randomUUID()}`,
      agent: extra.agent ?? parts.agent,
      input,
      ...(extra.sampling === undefined ? {} : { sampling: extra.sampling }),
    };
    const checkpoint = { intervalMs: 0, chars: extra.checkpointChars ?? 4096 };
    const run = new TurnRun(
      parts.options({ checkpoint }),
      request,
      { release: () => state.released++ },
      link,
      () => () => state.unregistered++,
      extra.budget ?? { inFlight: 0, max: 2 },
    );
    return Object.assign(state, { run });
  }

  /** The body the fake upstream received for a stateless run asked with `sampling`. */
  async function sentFor(agent: Agent, sampling: Sampling | undefined): Promise<Record<string, unknown>> {
    const index = parts.fake.requests.length;
    const h = harness({ kind: 'stateless', messages: [{ role: 'user', content: 'Hi' }] }, { agent, sampling });
    await all((await h.run.begin()).events);
    return parts.fake.requests[index]?.body as Record<string, unknown>;
  }

  function agentWith(fields: Partial<Parameters<typeof withDefaults>[0]>): Agent {
    return withDefaults({ id: 'tuned', description: '', systemPrompt: 'p', ...fields }, parts.config);
  }

  it('TurnRun clamps temperature and top_p into the agent ranges, from below and from above', async () => {
    const agent = agentWith({ temperatureRange: [0.5, 1], topPRange: [0.2, 0.8] });
    const low = await sentFor(agent, { temperature: 0.1, topP: 0.1 });
    assert.deepEqual([low['temperature'], low['top_p']], [0.5, 0.2]);
    const high = await sentFor(agent, { temperature: 1.9, topP: 0.95 });
    assert.deepEqual([high['temperature'], high['top_p']], [1, 0.8]);
    const within = await sentFor(agent, { temperature: 0.7, topP: 0.5 });
    assert.deepEqual([within['temperature'], within['top_p']], [0.7, 0.5]);
  });

  it('TurnRun sends the temperature an agent pins whatever was asked, and none when nobody set one', async () => {
    const pinned = await sentFor(agentWith({ temperature: 0.3 }), { temperature: 1.5 });
    assert.equal(pinned['temperature'], 0.3);
    const open = await sentFor(agentWith({}), undefined);
    assert.equal('temperature' in open, false);
    assert.equal('top_p' in open, false);
  });

  it("TurnRun sends the agent's output cap unless the client asked for less", async () => {
    const agent = agentWith({ maxOutputTokens: 300 });
    assert.equal((await sentFor(agent, undefined))['max_completion_tokens'], 300);
    assert.equal((await sentFor(agent, { maxOutputTokens: 50 }))['max_completion_tokens'], 50);
    assert.equal((await sentFor(agent, { maxOutputTokens: 5000 }))['max_completion_tokens'], 300);
  });

  it('TurnRun forwards stop, seed and the penalties as asked, and the model and prompt of the agent', async () => {
    const agent = agentWith({ model: 'model-of-the-agent', systemPrompt: 'Agent prompt' });
    const sampling = { stop: ['END'], seed: 7, presencePenalty: -0.5, frequencyPenalty: 1.25 };
    const body = await sentFor(agent, sampling);
    assert.deepEqual(
      [body['model'], body['stop'], body['seed'], body['presence_penalty'], body['frequency_penalty']],
      ['model-of-the-agent', ['END'], 7, -0.5, 1.25],
    );
    assert.deepEqual((body['messages'] as unknown[])[0], { role: 'system', content: 'Agent prompt' });
  });

  it('finish() runs once however many callers ask: one store, one release, one dispose, one unregister', async () => {
    parts.fake.queue({ kind: 'normal', chunks: ['Hel', 'lo'] });
    const h = harness({ kind: 'stored', message: 'Hi', agentNamed: true });
    const turn = await h.run.begin();
    const first = h.run.finish();
    assert.equal(h.run.finish(), first, 'the same promise');
    await all(turn.events);
    await first;
    await h.run.finish();
    assert.deepEqual([h.released, h.disposed, h.unregistered], [1, 1, 1]);
    const row = await storedAnswer(parts.db.pool, turn.head.conversationId as string);
    assert.equal(row.status, 'incomplete', 'stored by the first finish(), before the answer came');
  });

  it('finish() after a failed begin() stores the answer as an error with its code and releases once', async () => {
    parts.fake.queue({ kind: 'status', status: 500 });
    const h = harness({ kind: 'stored', message: 'Hi', agentNamed: true });
    await assert.rejects(h.run.begin(), { code: 'UPSTREAM_ERROR' });
    await Promise.all([h.run.finish(), h.run.finish()]);
    assert.deepEqual([h.released, h.disposed, h.unregistered], [1, 1, 0]);
    const { rows } = await parts.db.pool.query<{ status: string; error_code: string }>(
      `SELECT status, error_code FROM messages WHERE role = 'assistant' AND conversation_id IN
         (SELECT id FROM conversations WHERE owner = $1)`,
      [h.run.owner],
    );
    assert.deepEqual(rows, [{ status: 'error', error_code: 'UPSTREAM_ERROR' }]);
  });

  it('a stateless turn left before its first event finishes once and closes the upstream request', async () => {
    parts.fake.queue({ kind: 'slow', chunks: ['a', 'b', 'c'], chunkDelayMs: 200 });
    const index = parts.fake.requests.length;
    const h = harness({ kind: 'stateless', messages: [{ role: 'user', content: 'Hi' }] });
    const turn = await h.run.begin();
    await turn.events[Symbol.asyncIterator]().return?.();
    assert.deepEqual([h.released, h.disposed], [1, 1]);
    assert.ok((await parts.fake.waitForClose(index, 2_000)) < 2_000, 'the upstream request is closed');
    assert.equal(parts.fake.requests[index]?.closedEarly, true);
  });

  it('abort() ends a stored turn as failed and stores it incomplete, not as an error', async () => {
    parts.fake.queue({ kind: 'slow', chunks: ['a', 'b', 'c', 'd'], chunkDelayMs: 100 });
    const h = harness({ kind: 'stored', message: 'Hi', agentNamed: true });
    const turn = await h.run.begin();
    const events = turn.events[Symbol.asyncIterator]();
    await events.next(); // started
    h.run.abort(new Error('gone'));
    const rest: TurnEvent[] = [];
    for (let step = await events.next(); step.done !== true; step = await events.next()) rest.push(step.value);
    assert.equal(rest.at(-1)?.type, 'failed');
    const row = await storedAnswer(parts.db.pool, turn.head.conversationId as string);
    assert.equal(row.status, 'incomplete', 'a caller that left is not an error');
  });
});

describe('TurnRun checkpoints on PostgreSQL', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let parts: EngineParts;
  let locker: pg.Client;

  before(async () => {
    parts = await startEngineParts();
    locker = new pg.Client(TEST_DATABASE_URL);
    await locker.connect();
  });
  after(async () => {
    await locker?.end();
    await parts?.close();
  });

  it('TurnRun keeps at most two checkpoints in flight across runs, and each answer is stored whole', async () => {
    let inFlight = 0;
    let peak = 0;
    const budget: CheckpointBudget = {
      max: 2,
      get inFlight() {
        return inFlight;
      },
      set inFlight(value) {
        inFlight = value;
        peak = Math.max(peak, value);
      },
    };
    const chunks = Array.from({ length: 8 }, (_, i) => `w${i} `);
    const runs: Array<{ run: TurnRun; events: Promise<TurnEvent[]>; conversationId: string }> = [];
    await locker.query('BEGIN');
    for (let i = 0; i < 3; i++) {
      parts.fake.queue({ kind: 'slow', chunks, chunkDelayMs: 30 });
      const request: TurnRequest = {
        identity: { id: `key:${randomUUID()}`, kind: 'key' },
        requestId: `req-${i}`,
        agent: parts.agent,
        input: { kind: 'stored', message: 'Hi', agentNamed: true },
      };
      const controller = new AbortController();
      const link: Link = { signal: controller.signal, abort: (r) => controller.abort(r), dispose: () => {} };
      const options = parts.options({ checkpoint: { intervalMs: 0, chars: 1 } });
      const run = new TurnRun(options, request, { release() {} }, link, () => () => {}, budget);
      const turn = await run.begin();
      const conversationId = turn.head.conversationId as string;
      // Hold the answer's row: its checkpoints wait on the lock while the model keeps streaming.
      await locker.query(`SELECT 1 FROM messages WHERE conversation_id = $1 FOR UPDATE`, [conversationId]);
      runs.push({ run, events: all(turn.events), conversationId });
    }
    await waitFor('two checkpoints waiting on the lock', 10_000, async () => {
      // Not on the locker: inside its transaction the activity view is a snapshot.
      const { rows } = await parts.db.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE messages SET content = content ||%'`,
      );
      return rows[0]?.n === 2 ? true : undefined;
    });
    assert.equal(inFlight, 2);
    await locker.query('COMMIT');
    const ends = await Promise.all(runs.map((r) => r.events.then((events) => events.at(-1)?.type)));
    assert.deepEqual(ends, ['finished', 'finished', 'finished']);
    assert.equal(peak, 2, 'never more than two in flight');
    await waitFor('the budget to be returned', 5_000, () => (inFlight === 0 ? true : undefined));
    for (const { conversationId } of runs) {
      const row = await storedAnswer(parts.db.pool, conversationId, 5_000);
      assert.deepEqual([row.status, row.content], ['complete', chunks.join('')]);
    }
  });
});
