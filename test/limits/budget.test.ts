// Token accounting and daily budgets through the real app: recorded from the upstream's usage or
// estimated, shared by two instances, refused before anything starts, expiring when unsettled.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { UsageRow } from '../../lib/db/usage.ts';
import { estimateTokens, secondsToMidnight, utcDay } from '../../lib/limits/budget.ts';
import { CHAT_ENV, type ChatHarness, mintKey, openStream, startChat, waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

const PROMPT = 'You count.';
const OUTPUT_CAP = 50;
const QUESTION = 'Count to three';
// What one OpenAI-dialect turn of QUESTION holds against the budget before the model answers.
const WORST_CASE = estimateTokens(PROMPT.length + QUESTION.length) + OUTPUT_CAP;

interface UsageBody {
  usage: UsageRow[];
  budget: { tokensPerDay: number; usedToday: number } | null;
}

async function agentsFile(): Promise<string> {
  const file = join(tmpdir(), `budget-agents-${process.pid}-${randomUUID()}.json`);
  await writeFile(
    file,
    JSON.stringify([{ id: 'counter', description: 'Counts', systemPrompt: PROMPT, maxOutputTokens: OUTPUT_CAP }]),
  );
  return file;
}

function complete(url: string, key: string, stream = false): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'counter', stream, messages: [{ role: 'user', content: QUESTION }] }),
  });
}

async function usage(url: string, key: string): Promise<UsageBody> {
  const res = await fetch(`${url}/v1/usage`, { headers: { authorization: `Bearer ${key}` } });
  assert.equal(res.status, 200);
  return (await res.json()) as UsageBody;
}

describe('token accounting', () => {
  let h: ChatHarness;

  before(async () => {
    h = await startChat({ AGENTS_FILE: await agentsFile(), ANSWER_ON_DISCONNECT: 'abort' });
  });
  after(() => h.close());

  it('records each turn with the upstream usage, per day and agent, and shows each identity only its own', async () => {
    const key = await h.mintKey();
    await (await complete(h.server.url, key)).arrayBuffer();
    await (await complete(h.server.url, key, true)).arrayBuffer();
    const mine = await usage(h.server.url, key);
    assert.deepEqual(mine.usage, [
      { day: utcDay(Date.now()), agent: 'counter', tokensIn: 24, tokensOut: 6, requests: 2, estimatedRequests: 0 },
    ]);
    assert.equal(mine.budget, null, 'no budget configured');
    assert.deepEqual((await usage(h.server.url, await h.mintKey())).usage, []);
  });

  it('charges a stream cut by its client by estimate from the text, marked estimated', async () => {
    const key = await h.mintKey();
    h.fake.queue({ kind: 'slow', chunks: ['one ', 'two ', 'three ', 'four'], chunkDelayMs: 100 });
    const stream = await openStream(h.server.url, key, { message: QUESTION, agent: 'counter' });
    await stream.next();
    await stream.next();
    stream.abort();
    const row = await waitFor(
      'the estimate to be recorded',
      3_000,
      async () => (await usage(h.server.url, key)).usage[0],
    );
    assert.equal(row.estimatedRequests, 1);
    assert.ok(row.tokensIn > 0 && row.tokensOut >= 1, JSON.stringify(row));
  });

  it('refuses a bad range with 400', async () => {
    const res = await fetch(`${h.server.url}/v1/usage?from=2026-02-01&to=2026-01-01`, {
      headers: { authorization: `Bearer ${h.key}` },
    });
    assert.equal(res.status, 400);
  });
});

describe('daily token budgets', () => {
  let h: ChatHarness;
  const budget = 3 * WORST_CASE;

  before(async () => {
    h = await startChat({ AGENTS_FILE: await agentsFile(), TOKEN_BUDGET_PER_DAY: String(budget) });
  });
  after(() => h.close());

  it('settles each turn by its real usage, then refuses the turn whose worst case would pass the budget', async () => {
    const key = await h.mintKey();
    // Each answered turn costs 15 real tokens: the budget admits until 15 × n + WORST_CASE passes it.
    let admitted = 0;
    for (;;) {
      const sent = Date.now();
      const res = await complete(h.server.url, key);
      if (res.status !== 200) {
        assert.equal(res.status, 429);
        // The server's clock read falls between these two, so its whole seconds do too.
        const retryAfter = Number(res.headers.get('retry-after'));
        assert.ok(
          retryAfter <= secondsToMidnight(sent) && retryAfter >= secondsToMidnight(Date.now()),
          `${retryAfter}`,
        );
        const { error } = (await res.json()) as { error: { code: string; type: string } };
        assert.deepEqual([error.code, error.type], ['insufficient_quota', 'insufficient_quota']);
        break;
      }
      await res.arrayBuffer();
      admitted++;
    }
    assert.equal(admitted, Math.floor((budget - WORST_CASE) / 15) + 1);
    const mine = await usage(h.server.url, key);
    assert.equal(mine.budget?.usedToday, admitted * 15, 'reservations were replaced by what was used');
  });

  it('answers 429 BUDGET_EXCEEDED problem+json on the native route before anything is stored or streamed', async () => {
    const key = await h.mintKey();
    // A stored turn's worst case counts its history at HISTORY_MAX_CHARS: far past this budget.
    const res = await h.chat({ message: QUESTION, agent: 'counter' }, { key });
    assert.equal(res.status, 429);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(((await res.json()) as { code: string }).code, 'BUDGET_EXCEEDED');
    const stored = await h.call('GET', '/v1/conversations', key);
    assert.deepEqual(((await stored.json()) as { conversations: unknown[] }).conversations, [], 'nothing stored');
  });

  it('lets an unsettled reservation expire: a crashed turn does not hold the budget forever', async () => {
    const key = await h.mintKey();
    const { rows } = await h.server.db.pool.query<{ id: string }>(
      `SELECT id FROM api_keys WHERE key_hash = sha256($1::bytea)`,
      [Buffer.from(key)],
    );
    const identity = `key:${rows[0]?.id}`;
    const insert =
      'INSERT INTO budget_reservations (id, identity, day, tokens, expires_at) VALUES ($1, $2, $3, $4, $5)';
    const day = utcDay(Date.now());
    await h.server.db.pool.query(insert, [randomUUID(), identity, day, budget, new Date(Date.now() + 60_000)]);
    assert.equal((await complete(h.server.url, key)).status, 429, 'a live reservation counts');
    await h.server.db.pool.query(
      "UPDATE budget_reservations SET expires_at = now() - interval '1 second' WHERE identity = $1",
      [identity],
    );
    const res = await complete(h.server.url, key);
    assert.equal(res.status, 200, 'an expired one does not');
    await res.arrayBuffer();
  });
});

describe('a daily budget shared by two instances', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let one: ChatHarness;
  let two: TestServer;
  let drop: () => Promise<void>;
  const budget = 20 * WORST_CASE + WORST_CASE / 2;

  before(async () => {
    const scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    drop = scratch.drop;
    const env = {
      AGENTS_FILE: await agentsFile(),
      TOKEN_BUDGET_PER_DAY: String(budget),
      MAX_CONCURRENT_STREAMS_PER_KEY: '1000',
      DB_POOL_MAX: '20',
      UPSTREAM_TIMEOUT_MS: '30000',
    };
    one = await startChat({ ...env, DATABASE_URL: scratch.url });
    two = await startTestServer({ ...CHAT_ENV, ...env, DATABASE_URL: scratch.url, OPENAI_BASE_URL: one.fake.url });
  });
  after(async () => {
    await two?.close();
    await one?.close();
    await drop?.();
  });

  it('admits no more worst cases than the budget holds across 200 concurrent turns on both', async () => {
    const key = await mintKey(one.server.db.pool);
    // Every admitted turn waits on the model, so nothing settles while the burst is judged.
    one.fake.setBehaviour({ kind: 'hang' });
    const controller = new AbortController();
    let refused = 0;
    for (let i = 0; i < 200; i++) {
      void fetch(`${i % 2 === 0 ? one.server.url : two.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'counter', stream: true, messages: [{ role: 'user', content: QUESTION }] }),
        signal: controller.signal,
      }).then(
        (res) => {
          if (res.status === 429) refused++;
          return res.body?.cancel();
        },
        () => {},
      );
    }
    try {
      const held = await waitFor('every turn to be admitted or refused', 15_000, async () => {
        const { rows } = await one.server.db.pool.query<{ n: number; tokens: string }>(
          `SELECT count(*)::int AS n, coalesce(sum(tokens), 0)::text AS tokens
           FROM budget_reservations WHERE expires_at > now()`,
        );
        const row = rows[0] as { n: number; tokens: string };
        return row.n + refused === 200 ? row : undefined;
      });
      assert.ok(Number(held.tokens) <= budget, `${held.tokens} tokens held of ${budget}`);
      assert.equal(held.n, 20, 'the budget is used, not refused early');
    } finally {
      controller.abort();
      one.fake.setBehaviour({ kind: 'normal' });
    }
  });
});
