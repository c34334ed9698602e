// Per-key policies through the real app: a key's own rate, burst, stream cap, daily tokens, expiry
// and agents, as stored by `keys create|update`, honoured on every route; other keys keep the defaults.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { generateApiKey } from '../../lib/auth/api-key.ts';
import type { PolicyChange } from '../../lib/auth/key-policy.ts';
import { insertApiKey, updateApiKeyPolicy } from '../../lib/db/api-keys.ts';
import { type ChatHarness, openStream, readEvents, startChat, waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { bearer, mintJwt, msUntil, TEST_JWT_SECRET, uniqueKeyName } from '../support/keys.ts';

const SLOW = { kind: 'slow', chunks: Array.from({ length: 40 }, (_, i) => `w${i} `), chunkDelayMs: 50 } as const;

interface PolicyKey {
  key: string;
  name: string;
}

async function keyWith(h: ChatHarness, policy: PolicyChange): Promise<PolicyKey> {
  const generated = generateApiKey();
  const name = uniqueKeyName('policy');
  await insertApiKey(h.server.db.pool, { name, prefix: generated.prefix, hash: generated.hash, policy });
  return { key: generated.key, name };
}

async function agentsFile(): Promise<string> {
  const file = join(tmpdir(), `policy-agents-${process.pid}-${randomUUID()}.json`);
  const agent = (id: string) => ({ id, description: `The ${id} agent`, systemPrompt: `You are ${id}.` });
  await writeFile(file, JSON.stringify([agent('alpha'), agent('beta')]));
  return file;
}

async function get(h: ChatHarness, path: string, key: string): Promise<Response> {
  return fetch(`${h.server.url}${path}`, { headers: bearer(key) });
}

function post(h: ChatHarness, path: string, key: string, body: unknown): Promise<Response> {
  return fetch(`${h.server.url}${path}`, {
    method: 'POST',
    headers: { ...bearer(key), 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

// The rate limit and the stream cap, with each store that keeps them.
const stores = [
  { store: 'memory', skip: false },
  { store: 'postgres-leased', skip: TEST_DATABASE_URL === undefined ? 'needs TEST_DATABASE_URL' : false },
  { store: 'postgres', skip: TEST_DATABASE_URL === undefined ? 'needs TEST_DATABASE_URL' : false },
] as const;

for (const { store, skip } of stores) {
  describe(`a key's own rate limit and stream cap (RATE_LIMIT_STORE=${store})`, { skip }, () => {
    let h: ChatHarness;
    before(async () => {
      h = await startChat({
        RATE_LIMIT_STORE: store,
        RATE_LIMIT_PER_MINUTE: '600',
        RATE_LIMIT_BURST: '50',
        MAX_CONCURRENT_STREAMS_PER_KEY: '3',
        ANSWER_ON_DISCONNECT: 'abort',
      });
    });
    after(() => h.close());

    it('a key with --burst 2 --rpm 1 gets 429 on its third request, with its own RateLimit-Policy', async () => {
      const { key } = await keyWith(h, { rateLimitPerMinute: 1, rateLimitBurst: 2 });
      const statuses: number[] = [];
      let refused: Response | undefined;
      for (let i = 0; i < 3; i++) {
        const res = await get(h, '/v1/agents', key);
        statuses.push(res.status);
        if (res.status === 429) refused = res;
        else await res.arrayBuffer();
      }
      assert.deepEqual(statuses, [200, 200, 429]);
      assert.equal(refused?.headers.get('ratelimit-policy'), '"key";q=2;w=120');
      assert.equal(((await refused?.json()) as { code: string }).code, 'RATE_LIMITED');
      assert.ok(Number(refused?.headers.get('retry-after')) >= 1);
    });

    it('a key without a policy keeps the server burst meanwhile', async () => {
      for (let i = 0; i < 5; i++) {
        const res = await get(h, '/v1/agents', h.key);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('ratelimit-policy'), '"default";q=50;w=5');
        await res.arrayBuffer();
      }
    });

    it('a --streams 1 key gets 429 TOO_MANY_STREAMS on its second open answer; the default allows three', async () => {
      const { key } = await keyWith(h, { maxStreams: 1 });
      h.fake.queue(SLOW, SLOW, SLOW, SLOW);
      const open = [await openStream(h.server.url, key, { message: 'One' })];
      try {
        const second = await h.chat({ message: 'Two' }, { key });
        assert.equal(second.status, 429);
        assert.equal(((await second.json()) as { code: string }).code, 'TOO_MANY_STREAMS');
        for (const message of ['A', 'B', 'C']) {
          const stream = await openStream(h.server.url, h.key, { message });
          open.push(stream);
          assert.equal(stream.res.statusCode, 200);
        }
      } finally {
        for (const stream of open) stream.abort();
      }
      await waitFor('the slots to come back', 5_000, () => (h.server.slots.inUse() === 0 ? true : undefined));
    });
  });
}

describe("a key's agents (--agents alpha)", () => {
  let h: ChatHarness;
  let limited: PolicyKey;
  before(async () => {
    h = await startChat({ AGENTS_FILE: await agentsFile() });
    limited = await keyWith(h, { agents: ['alpha'] });
  });
  after(() => h.close());

  it('GET /v1/agents and GET /v1/models list only alpha to the key, and every agent to others', async () => {
    const agents = async (key: string) =>
      ((await (await get(h, '/v1/agents', key)).json()) as { agents: Array<{ id: string }> }).agents.map((a) => a.id);
    const models = async (key: string) =>
      ((await (await get(h, '/v1/models', key)).json()) as { data: Array<{ id: string }> }).data.map((m) => m.id);
    assert.deepEqual(await agents(limited.key), ['alpha']);
    assert.deepEqual(await models(limited.key), ['alpha']);
    assert.deepEqual((await agents(h.key)).sort(), ['alpha', 'beta', 'default']);
    assert.deepEqual((await models(h.key)).sort(), ['alpha', 'beta', 'default']);
  });

  it('POST /v1/chat answers 404 for beta and for an agent nobody has alike, and calls no model', async () => {
    const sent = h.fake.requests.length;
    const bodies: unknown[] = [];
    for (const agent of ['beta', 'default', 'no-such-agent']) {
      const res = await h.chat({ message: 'hi', agent }, { key: limited.key });
      assert.equal(res.status, 404, agent);
      const {
        instance: _perRequest,
        requestId: _alsoPerRequest,
        ...rest
      } = (await res.json()) as Record<string, unknown>;
      bodies.push(rest);
    }
    assert.deepEqual(bodies[1], bodies[0]);
    assert.deepEqual(bodies[2], bodies[0]);
    assert.equal((bodies[0] as { code: string }).code, 'NOT_FOUND');
    assert.equal(h.fake.requests.length, sent);
  });

  it('POST /v1/chat with no agent named answers as alpha, the first agent the key may use', async () => {
    const events = await readEvents(await h.chat({ message: 'hi' }, { key: limited.key }));
    assert.equal((events[0]?.data as { agent: string }).agent, 'alpha');
    assert.equal(events.at(-1)?.event, 'done');
    assert.equal(
      (h.fake.requests.at(-1)?.body as { messages: Array<{ content: string }> }).messages[0]?.content,
      'You are alpha.',
    );
  });

  it('POST /v1/chat/completions answers 404 model_not_found for beta, like OpenAI for a forbidden model', async () => {
    const res = await post(h, '/v1/chat/completions', limited.key, {
      model: 'beta',
      messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(res.status, 404);
    const body = (await res.json()) as { error: { code: string; param: string } };
    assert.equal(body.error.code, 'model_not_found');
    assert.equal(body.error.param, 'model');
  });

  it('POST /v1/ai-sdk/chat answers 404 for beta', async () => {
    const res = await post(h, '/v1/ai-sdk/chat', limited.key, {
      id: randomUUID(),
      trigger: 'submit-message',
      agent: 'beta',
      messages: [{ id: 'm1', role: 'user', parts: [{ type: 'text', text: 'hi' }] }],
    });
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { code: string }).code, 'NOT_FOUND');
  });

  it('a key no longer allowed its conversation agent cannot continue it (404), and others still can', async () => {
    const key = await keyWith(h, { agents: ['alpha', 'beta'] });
    const first = (await (await h.chat({ message: 'hi', agent: 'beta', stream: false }, { key: key.key })).json()) as {
      conversationId: string;
    };
    assert.equal(await updateApiKeyPolicy(h.server.db.pool, key.name, { agents: ['alpha'] }), true);
    // The authenticator trusts a checked key for 2 s; the new list applies once it asks again.
    await msUntil(async () => {
      const res = await h.chat({ message: 'again', conversationId: first.conversationId }, { key: key.key });
      await res.arrayBuffer();
      return res.status === 404;
    }, 5_000);
  });
});

describe("a key's expiry", () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat();
  });
  after(() => h.close());

  it('a key past its expiry gets 401 invalid_token, like a revoked one', async () => {
    const { key, name } = await keyWith(h, {});
    await h.server.db.pool.query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = $1", [
      name,
    ]);
    const res = await get(h, '/v1/agents', key);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
    assert.equal(((await res.json()) as { code: string }).code, 'INVALID_TOKEN');
  });

  it('a key that expires while cached is refused from its expiry on, within the cache lifetime (2 s)', async () => {
    const { key, name } = await keyWith(h, {});
    const { rows } = await h.server.db.pool.query<{ at: Date }>(
      `UPDATE api_keys SET expires_at = now() + interval '1500 milliseconds'
       WHERE name = $1 RETURNING expires_at AS at`,
      [name],
    );
    const res = await get(h, '/v1/agents', key);
    assert.equal(res.status, 200, 'valid before its expiry');
    await res.arrayBuffer();
    const expiresAtMs = (rows[0] as { at: Date }).at.getTime();
    await msUntil(
      async () => {
        const after = await get(h, '/v1/agents', key);
        await after.arrayBuffer();
        return after.status === 401;
      },
      5_000,
      20,
    );
    const lateMs = Date.now() - expiresAtMs;
    assert.ok(lateMs < 2_000, `refused ${Math.round(lateMs)} ms after its expiry`);
  });
});

describe("a key's own daily tokens (--tokens-per-day)", () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat({ TOKEN_BUDGET_PER_DAY: '1000000' });
  });
  after(() => h.close());

  it('a key with a budget smaller than a turn is refused 429 BUDGET_EXCEEDED; the default key is not', async () => {
    const { key } = await keyWith(h, { tokensPerDay: 10 });
    const refused = await h.chat({ message: 'hi' }, { key });
    assert.equal(refused.status, 429);
    assert.equal(((await refused.json()) as { code: string }).code, 'BUDGET_EXCEEDED');
    const usage = (await (await get(h, '/v1/usage', key)).json()) as { budget: { tokensPerDay: number } };
    assert.equal(usage.budget.tokensPerDay, 10);
    const allowed = await h.chat({ message: 'hi' }, { key: h.key });
    assert.equal(allowed.status, 200);
    await allowed.arrayBuffer();
  });
});

describe('JWT_BUDGET_CLAIM', () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat({
      JWT_SECRET: TEST_JWT_SECRET,
      JWT_AUDIENCE: 'chat-server-test',
      JWT_BUDGET_CLAIM: 'chat_tokens_per_day',
    });
  });
  after(() => h.close());

  async function budgetOf(token: string): Promise<{ status: number; budget?: unknown }> {
    const res = await get(h, '/v1/usage', token);
    if (res.status !== 200) {
      await res.arrayBuffer();
      return { status: res.status };
    }
    return { status: 200, budget: ((await res.json()) as { budget: unknown }).budget };
  }

  it("sets a JWT's tokens per day from the claim, and refuses a turn over it", async () => {
    const token = await mintJwt({ sub: `budgeted-${randomUUID()}`, chat_tokens_per_day: 10 });
    const { status, budget } = await budgetOf(token);
    assert.equal(status, 200);
    assert.deepEqual({ ...(budget as object), day: undefined }, { tokensPerDay: 10, usedToday: 0, day: undefined });
    const res = await h.chat({ message: 'hi' }, { key: token });
    assert.equal(res.status, 429);
    assert.equal(((await res.json()) as { code: string }).code, 'BUDGET_EXCEEDED');
  });

  it('leaves a JWT without the claim at the default (here: unlimited)', async () => {
    const token = await mintJwt({ sub: `plain-${randomUUID()}` });
    assert.deepEqual(await budgetOf(token), { status: 200, budget: null });
  });

  for (const [what, value] of [
    ['a string', '1000'],
    ['zero', 0],
    ['a fraction', 2.5],
    ['a negative number', -1],
  ] as const) {
    it(`refuses a JWT whose claim is ${what} with 401 invalid_token`, async () => {
      const token = await mintJwt({ sub: `bad-${randomUUID()}`, chat_tokens_per_day: value });
      assert.deepEqual(await budgetOf(token), { status: 401 });
    });
  }
});
