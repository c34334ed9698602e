// The native /v1 routes on a small app: a stand-in for auth that names the caller, the real repository.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createRegistry, withDefaults } from '../../lib/chat/agents.ts';
import { chatRoutes } from '../../lib/chat/routes.ts';
import { saveAssistantMessage, startTurn } from '../../lib/db/conversations.ts';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import type { Context, Middleware } from '../../lib/http/types.ts';
import { createLogger } from '../../lib/log.ts';
import { testConfig } from '../support/config.ts';
import { type Served, serve } from '../support/http.ts';

const MAX_BODY_BYTES = 200;
const PROMPT = 'The prompt stays on the server';
const OWNER_HEADER = 'x-test-owner';

/** Names the caller from a header: what auth establishes, without credentials. */
const identify: Middleware = function identifyMiddleware(ctx, next) {
  const owner = ctx.req.headers[OWNER_HEADER];
  if (typeof owner === 'string') ctx.identity = { id: owner, kind: 'key' };
  return next();
};

interface Page {
  conversations: Array<{ id: string; title: string }>;
  nextCursor: string | null;
}

interface ConversationBody {
  id: string;
  messages: Array<{ id: string; role: string; content: string }>;
  before: string | null;
  after: string | null;
}

function cursorOf(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

describe('chatRoutes()', () => {
  let dir: string;
  let db: Database;
  let served: Served;
  const chats: Array<{ owner: string | undefined; body: unknown }> = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'chat-routes-test-'));
    const config = testConfig({}, dir);
    db = await createDatabase(config, createLogger({ level: 'silent' }));
    await migrate(db.pool);
    const agents = createRegistry([
      withDefaults({ id: 'default', description: 'General help', systemPrompt: PROMPT }, config),
      withDefaults({ id: 'coder', description: 'Code help', systemPrompt: PROMPT }, config),
    ]);
    const routes = chatRoutes({
      pool: db.pool,
      agents,
      maxBodyBytes: MAX_BODY_BYTES,
      async chat(ctx: Context, body: unknown) {
        chats.push({ owner: ctx.identity?.id, body });
        return { kind: 'json', status: 200, body: { answered: body } };
      },
    });
    served = await serve(routes, [requestId(), errorHandler(), identify]);
  });
  after(async () => {
    await served?.close();
    await db?.close();
    await rm(dir, { recursive: true, force: true });
  });

  function call(method: string, path: string, owner?: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (owner !== undefined) headers.set(OWNER_HEADER, owner);
    return fetch(`${served.url}${path}`, { ...init, method, headers });
  }

  async function problem(res: Response): Promise<{ status: number; code: unknown; detail: unknown }> {
    const body = (await res.json()) as Record<string, unknown>;
    return { status: res.status, code: body['code'], detail: body['detail'] };
  }

  /** A conversation of `owner` with `answers` question-and-answer pairs. */
  async function conversation(owner: string, answers = 1): Promise<string> {
    let id: string | undefined;
    for (let i = 1; i <= answers; i++) {
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'default',
        message: `q${i}`,
        historyMaxChars: 0,
        ...(id === undefined ? {} : { conversationId: id }),
      });
      assert.ok(turn !== undefined);
      id = turn.conversationId;
      const answer = { id: turn.assistantMessageId, conversationId: id, content: `a${i}`, status: 'complete' as const };
      await saveAssistantMessage(db.pool, answer);
    }
    return id as string;
  }

  it('POST /v1/chat hands the parsed body and the caller to the chat handler and sends its reply', async () => {
    const owner = `key:${randomUUID()}`;
    const res = await call('POST', '/v1/chat', owner, {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'Hi' }),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { answered: { message: 'Hi' } });
    assert.deepEqual(chats.at(-1), { owner, body: { message: 'Hi' } });
  });

  it('POST /v1/chat refuses an oversized body, broken JSON and a wrong media type, unheard', async () => {
    const before = chats.length;
    const json = { 'content-type': 'application/json' };
    const big = await call('POST', '/v1/chat', 'key:a', {
      headers: json,
      body: JSON.stringify({ m: 'x'.repeat(200) }),
    });
    assert.deepEqual(await problem(big), { status: 413, code: 'BODY_TOO_LARGE', detail: 'Body exceeds 200 bytes' });
    const broken = await call('POST', '/v1/chat', 'key:a', { headers: json, body: '{"message":' });
    assert.equal((await problem(broken)).code, 'INVALID_JSON');
    const text = await call('POST', '/v1/chat', 'key:a', { headers: { 'content-type': 'text/plain' }, body: 'Hi' });
    assert.equal((await problem(text)).status, 415);
    assert.equal(chats.length, before);
  });

  it('POST /v1/chat without a caller answers 401 with WWW-Authenticate: Bearer', async () => {
    const res = await call('POST', '/v1/chat', undefined, {
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    await res.arrayBuffer();
  });

  it('GET /v1/agents lists each agent by id and description, never its prompt', async () => {
    const res = await call('GET', '/v1/agents', 'key:a');
    const text = await res.text();
    assert.deepEqual(JSON.parse(text), {
      agents: [
        { id: 'default', description: 'General help' },
        { id: 'coder', description: 'Code help' },
      ],
    });
    assert.ok(!text.includes(PROMPT));
  });

  it("GET /v1/conversations pages the caller's conversations newest first, and shows no one else's", async () => {
    const owner = `key:${randomUUID()}`;
    const ids = [await conversation(owner), await conversation(owner), await conversation(owner)];
    await conversation(`key:${randomUUID()}`);
    const first = (await (await call('GET', '/v1/conversations?limit=2', owner)).json()) as Page;
    assert.deepEqual(
      first.conversations.map((c) => c.id),
      [ids[2], ids[1]],
    );
    assert.ok(first.nextCursor !== null);
    const path = `/v1/conversations?limit=2&cursor=${first.nextCursor}`;
    const second = (await (await call('GET', path, owner)).json()) as Page;
    assert.deepEqual(
      second.conversations.map((c) => c.id),
      [ids[0]],
    );
    assert.equal(second.nextCursor, null);
  });

  it('GET /v1/conversations refuses a limit out of range or an unknown parameter as a validation failure', async () => {
    for (const query of ['limit=0', 'limit=101', 'limit=ten', 'page=2']) {
      const { status, code } = await problem(await call('GET', `/v1/conversations?${query}`, 'key:a'));
      assert.deepEqual([status, code], [400, 'VALIDATION_FAILED'], query);
    }
  });

  it('GET /v1/conversations refuses a cursor that is not one of its own, including a year before 1970', async () => {
    const cursors = [
      'not-a-cursor',
      cursorOf({ u: '2026-01-01T00:00:00Z' }),
      cursorOf({ m: randomUUID() }),
      cursorOf({ u: '0000-01-01T00:00:00Z', i: randomUUID() }),
      cursorOf({ u: '2026-01-01T00:00:00Z', i: randomUUID(), x: 1 }),
    ];
    for (const cursor of cursors) {
      const got = await problem(await call('GET', `/v1/conversations?cursor=${cursor}`, 'key:a'));
      assert.deepEqual(got, { status: 400, code: 'BAD_REQUEST', detail: 'Invalid cursor' }, cursor);
    }
  });

  it('GET /v1/conversations/:id reads the whole conversation, whatever the case of the id', async () => {
    const owner = `key:${randomUUID()}`;
    const id = await conversation(owner, 2);
    const res = await call('GET', `/v1/conversations/${id.toUpperCase()}?_=cache-buster`, owner);
    const body = (await res.json()) as ConversationBody;
    assert.equal(body.id, id);
    assert.deepEqual(
      body.messages.map((m) => m.content),
      ['q1', 'a1', 'q2', 'a2'],
    );
    assert.deepEqual([body.before, body.after], [null, null]);
  });

  it('GET /v1/conversations/:id answers 404 to another caller, an unknown id and a path that is no uuid', async () => {
    const id = await conversation(`key:${randomUUID()}`);
    for (const path of [id, randomUUID(), 'not-a-uuid']) {
      const got = await problem(await call('GET', `/v1/conversations/${path}`, `key:${randomUUID()}`));
      assert.deepEqual(got, { status: 404, code: 'NOT_FOUND', detail: 'No such conversation' }, path);
    }
  });

  it('GET /v1/conversations/:id walks back with before and forward with after', async () => {
    const owner = `key:${randomUUID()}`;
    const id = await conversation(owner, 3);
    const newest = (await (await call('GET', `/v1/conversations/${id}?limit=4`, owner)).json()) as ConversationBody;
    assert.deepEqual(
      newest.messages.map((m) => m.content),
      ['q2', 'a2', 'q3', 'a3'],
    );
    assert.equal(newest.after, null);
    const older = (await (
      await call('GET', `/v1/conversations/${id}?limit=4&before=${newest.before}`, owner)
    ).json()) as ConversationBody;
    assert.deepEqual(
      older.messages.map((m) => m.content),
      ['q1', 'a1'],
    );
    assert.equal(older.before, null);
    const again = (await (
      await call('GET', `/v1/conversations/${id}?limit=1&after=${older.after}`, owner)
    ).json()) as ConversationBody;
    assert.deepEqual(
      again.messages.map((m) => m.content),
      ['q2'],
    );
  });

  it('GET /v1/conversations/:id refuses both cursors at once, a foreign cursor and a foreign message', async () => {
    const owner = `key:${randomUUID()}`;
    const id = await conversation(owner);
    const otherOwner = `key:${randomUUID()}`;
    const other = (await (
      await call('GET', `/v1/conversations/${await conversation(otherOwner)}`, otherOwner)
    ).json()) as ConversationBody;
    const anchor = cursorOf({ m: other.messages[0]?.id });
    const cases: Array<[string, string]> = [
      [`before=${anchor}&after=${anchor}`, 'Give before or after, not both'],
      [`before=${cursorOf({ u: '2026-01-01T00:00:00Z', i: randomUUID() })}`, 'Invalid cursor'],
      [`after=${anchor}`, 'Invalid cursor'],
    ];
    for (const [query, detail] of cases) {
      const got = await problem(await call('GET', `/v1/conversations/${id}?${query}`, owner));
      assert.deepEqual(got, { status: 400, code: 'BAD_REQUEST', detail }, query);
    }
    const limit = await problem(await call('GET', `/v1/conversations/${id}?limit=1001`, owner));
    assert.equal(limit.code, 'VALIDATION_FAILED');
  });

  it('DELETE /v1/conversations/:id deletes it for its owner only', async () => {
    const owner = `key:${randomUUID()}`;
    const id = await conversation(owner);
    const refused = await call('DELETE', `/v1/conversations/${id}`, `key:${randomUUID()}`);
    assert.equal(refused.status, 404);
    await refused.arrayBuffer();
    const deleted = await call('DELETE', `/v1/conversations/${id}`, owner);
    assert.equal(deleted.status, 204);
    assert.equal((await call('GET', `/v1/conversations/${id}`, owner)).status, 404);
    assert.equal((await call('DELETE', `/v1/conversations/${id}`, owner)).status, 404);
  });
});
