// The conversations API through the real app: ownership (not yours → 404) and keyset pagination.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { type ChatHarness, openStream, readEvents, type SseFrame, startChat, storedMessages } from '../support/chat.ts';

interface Summary {
  id: string;
  agent: string;
  title: string;
  createdAt: string;
  updatedAt: string;
}
interface Page {
  conversations: Summary[];
  nextCursor: string | null;
}
interface MessagesPage extends Summary {
  messages: Array<{ id: string; role: string; content: string }>;
  before: string | null;
  after: string | null;
}

describe('conversations API', () => {
  let h: ChatHarness;
  let owner: string;
  let stranger: string;
  let conversationId: string;

  /** One buffered turn for `key`; returns the new conversation's id. */
  async function converse(key: string, message: string): Promise<string> {
    const res = await h.chat({ message, stream: false }, { key });
    assert.equal(res.status, 200);
    return ((await res.json()) as { conversationId: string }).conversationId;
  }

  async function list(key: string, query = ''): Promise<Page> {
    const res = await h.call('GET', `/v1/conversations${query}`, key);
    assert.equal(res.status, 200);
    return (await res.json()) as Page;
  }

  /** Follows nextCursor from the first page to the last. */
  async function walk(key: string, limit: number): Promise<{ ids: string[]; pages: number }> {
    const ids: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: Page = await list(
        key,
        `?limit=${limit}${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`,
      );
      assert.ok(page.conversations.length <= limit);
      ids.push(...page.conversations.map((c) => c.id));
      cursor = page.nextCursor;
      pages++;
      assert.ok(pages <= 20, 'pagination terminates');
    } while (cursor !== null);
    return { ids, pages };
  }

  async function read(key: string, id: string, query = ''): Promise<MessagesPage> {
    const res = await h.call('GET', `/v1/conversations/${id}${query}`, key);
    assert.equal(res.status, 200);
    return (await res.json()) as MessagesPage;
  }

  /** A conversation of `key` with `extra` more messages (m1, m2, …) stored after its first turn. */
  async function longConversation(key: string, extra: number): Promise<string> {
    const id = await converse(key, 'Start');
    await h.server.db.pool.query(
      `INSERT INTO messages (id, conversation_id, role, content, status, completed_at)
       SELECT gen_random_uuid(), $1, CASE WHEN i % 2 = 1 THEN 'user' ELSE 'assistant' END, 'm' || i, 'complete', now()
       FROM generate_series(1, $2::int) AS i ORDER BY i`,
      [id, extra],
    );
    return id;
  }

  async function expectBadRequest(res: Response, code = 'BAD_REQUEST'): Promise<void> {
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, code);
  }

  async function expectNotFound(res: Response): Promise<void> {
    assert.equal(res.status, 404);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(((await res.json()) as { code: string }).code, 'NOT_FOUND');
  }

  before(async () => {
    h = await startChat();
    owner = h.key;
    stranger = await h.mintKey();
    conversationId = await converse(owner, 'Private question');
  });
  after(() => h.close());

  it('GET /v1/conversations/:id answers 404 to another identity', async () => {
    await expectNotFound(await h.call('GET', `/v1/conversations/${conversationId}`, stranger));
    assert.equal((await h.call('GET', `/v1/conversations/${conversationId}`, owner)).status, 200);
  });

  it('DELETE /v1/conversations/:id answers 404 to another identity and deletes nothing', async () => {
    await expectNotFound(await h.call('DELETE', `/v1/conversations/${conversationId}`, stranger));
    assert.equal((await storedMessages(h.server.db.pool, conversationId)).length, 2);
  });

  it("POST /v1/chat into another identity's conversation answers 404 and stores and calls nothing", async () => {
    const upstreamBefore = h.fake.requests.length;
    await expectNotFound(await h.chat({ message: 'Let me in', conversationId }, { key: stranger }));
    await expectNotFound(await h.chat({ message: 'Let me in', conversationId, stream: false }, { key: stranger }));
    assert.equal(h.fake.requests.length, upstreamBefore);
    assert.deepEqual(
      (await storedMessages(h.server.db.pool, conversationId)).map((m) => m.content),
      ['Private question', 'Hello world'],
    );
  });

  it('POST /v1/chat into a conversation that does not exist answers 404', async () => {
    await expectNotFound(await h.chat({ message: 'Anyone?', conversationId: randomUUID() }));
  });

  it('GET /v1/conversations/:id answers 404 for an id that is not a uuid', async () => {
    await expectNotFound(await h.call('GET', '/v1/conversations/not-a-uuid', owner));
  });

  it("GET /v1/conversations lists only the caller's conversations", async () => {
    const theirs = await converse(stranger, 'Stranger question');
    const mine = await list(owner, '?limit=100');
    const strangers = await list(stranger, '?limit=100');
    assert.ok(mine.conversations.some((c) => c.id === conversationId));
    assert.ok(!mine.conversations.some((c) => c.id === theirs));
    assert.deepEqual(
      strangers.conversations.map((c) => c.id),
      [theirs],
    );
    assert.equal(strangers.conversations[0]?.title, 'Stranger question');
  });

  it('DELETE /v1/conversations/:id by its owner answers 204, then the conversation is gone', async () => {
    const id = await converse(owner, 'Forget this');
    const res = await h.call('DELETE', `/v1/conversations/${id}`, owner);
    assert.equal(res.status, 204);
    await expectNotFound(await h.call('GET', `/v1/conversations/${id}`, owner));
    assert.deepEqual(await storedMessages(h.server.db.pool, id), []);
  });

  it('GET /v1/conversations pages with limit and nextCursor, newest first, without duplicates or gaps', async () => {
    const key = await h.mintKey();
    const created: string[] = [];
    for (let i = 0; i < 5; i++) created.push(await converse(key, `Question ${i}`));
    const { ids, pages } = await walk(key, 2);
    assert.equal(pages, 3);
    assert.deepEqual(ids, [...created].reverse());
  });

  it('GET /v1/conversations pages through conversations with equal timestamps by id', async () => {
    const key = await h.mintKey();
    const created: string[] = [];
    for (let i = 0; i < 5; i++) created.push(await converse(key, `Same time ${i}`));
    // The tie-breaker: rows that share updated_at must still be neither skipped nor repeated.
    await h.server.db.pool.query(
      "UPDATE conversations SET updated_at = '2030-01-01T00:00:00.123456Z' WHERE id = ANY($1::uuid[])",
      [created],
    );
    const { ids } = await walk(key, 2);
    assert.deepEqual(ids, [...created].sort().reverse());
  });

  it('GET /v1/conversations moves a conversation to the front when it gets a new message', async () => {
    const key = await h.mintKey();
    const older = await converse(key, 'Older');
    const newer = await converse(key, 'Newer');
    await readEvents(await h.chat({ message: 'Back to the older one', conversationId: older }, { key }));
    assert.deepEqual(
      (await list(key)).conversations.map((c) => c.id),
      [older, newer],
    );
  });

  it('GET /v1/conversations titles a conversation by its first 80 characters without splitting an emoji', async () => {
    const key = await h.mintKey();
    await converse(key, `${'a'.repeat(79)}\u{1F600} and more`);
    const [summary] = (await list(key)).conversations;
    assert.equal(summary?.title, 'a'.repeat(79));
  });

  it('POST /v1/chat ends a stream whose conversation is deleted mid-answer without a storage error', async () => {
    h.fake.queue({ kind: 'slow', chunks: Array.from({ length: 10 }, () => 'z'), chunkDelayMs: 20 });
    const stream = await openStream(h.server.url, owner, { message: 'Delete me while you talk' });
    const requestId = String(stream.res.headers['x-request-id']);
    const id = ((await stream.next())?.data as { conversationId: string }).conversationId;
    assert.equal((await h.call('DELETE', `/v1/conversations/${id}`, owner)).status, 204);
    let last: SseFrame | undefined;
    for (let f = await stream.next(); f !== undefined; f = await stream.next()) last = f;
    assert.equal(last?.event, 'done');
    const errors = h.server.lines().filter((l) => l['requestId'] === requestId && l['level'] === 'error');
    assert.deepEqual(errors, []);
    assert.equal(h.server.slots.inUse(), 0);
  });

  it('GET /v1/conversations refuses a limit over 100 with 400 VALIDATION_FAILED', async () => {
    const res = await h.call('GET', '/v1/conversations?limit=101', owner);
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, 'VALIDATION_FAILED');
  });

  it('GET /v1/conversations refuses a forged cursor with 400 BAD_REQUEST', async () => {
    const res = await h.call(
      'GET',
      `/v1/conversations?cursor=${Buffer.from('{"u":"x"}').toString('base64url')}`,
      owner,
    );
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, 'BAD_REQUEST');
  });

  it('GET /v1/conversations/:id answers the newest page, oldest first, with a before cursor and no after', async () => {
    const id = await longConversation(owner, 8);
    const page = await read(owner, id, '?limit=3');
    assert.deepEqual(
      page.messages.map((m) => m.content),
      ['m6', 'm7', 'm8'],
    );
    assert.equal(typeof page.before, 'string');
    assert.equal(page.after, null);
    assert.equal(page.id, id);
    assert.equal(page.title, 'Start');
  });

  it('GET /v1/conversations/:id without a limit answers a short conversation whole, no cursors', async () => {
    const page = await read(owner, conversationId);
    assert.deepEqual(
      page.messages.map((m) => m.content),
      ['Private question', 'Hello world'],
    );
    assert.deepEqual([page.before, page.after], [null, null]);
  });

  it('GET /v1/conversations/:id walks all pages of 1,200 messages with before, each message once', async () => {
    const key = await h.mintKey();
    const id = await longConversation(key, 1_198);
    const seen: string[] = [];
    let query = '';
    let pages = 0;
    for (;;) {
      const page = await read(key, id, query);
      seen.unshift(...page.messages.map((m) => m.content));
      pages++;
      if (page.before === null) break;
      assert.ok(pages < 5, 'the walk ends');
      query = `?before=${encodeURIComponent(page.before)}`;
    }
    assert.equal(pages, 2, 'pages of 1,000 by default');
    assert.equal(new Set(seen).size, 1_200);
    assert.deepEqual(seen, ['Start', 'Hello world', ...Array.from({ length: 1_198 }, (_, i) => `m${i + 1}`)]);
  });

  it('GET /v1/conversations/:id walks forward with after, each message once', async () => {
    const id = await longConversation(owner, 23);
    let page = await read(owner, id, '?limit=5');
    let pages = 1;
    while (page.before !== null) {
      assert.ok(pages++ < 10 && typeof page.before === 'string', 'the walk back ends');
      page = await read(owner, id, `?limit=5&before=${page.before}`);
    }
    const seen = page.messages.map((m) => m.content);
    while (page.after !== null) {
      assert.ok(pages++ < 20 && typeof page.after === 'string', 'the walk forward ends');
      page = await read(owner, id, `?limit=5&after=${page.after}`);
      seen.push(...page.messages.map((m) => m.content));
    }
    assert.deepEqual(seen, ['Start', 'Hello world', ...Array.from({ length: 23 }, (_, i) => `m${i + 1}`)]);
  });

  it('GET /v1/conversations/:id refuses a malformed or forged cursor with 400 BAD_REQUEST', async () => {
    const id = await longConversation(owner, 4);
    const listCursor = (await list(owner, '?limit=1')).nextCursor ?? '';
    const otherMessage = (await read(owner, conversationId)).messages[0]?.id;
    const forged = Buffer.from(JSON.stringify({ m: otherMessage })).toString('base64url');
    for (const cursor of ['x', '%FF', Buffer.from('{"m":"not-a-uuid"}').toString('base64url'), listCursor, forged]) {
      await expectBadRequest(await h.call('GET', `/v1/conversations/${id}?before=${cursor}`, owner));
    }
  });

  it('GET /v1/conversations/:id refuses before and after together, and a limit outside 1..1000', async () => {
    const page = await read(owner, conversationId, '?limit=1');
    const cursor = page.before ?? '';
    await expectBadRequest(
      await h.call('GET', `/v1/conversations/${conversationId}?before=${cursor}&after=${cursor}`, owner),
    );
    for (const limit of ['0', '1001', 'ten']) {
      await expectBadRequest(
        await h.call('GET', `/v1/conversations/${conversationId}?limit=${limit}`, owner),
        'VALIDATION_FAILED',
      );
    }
  });

  it('GET /v1/conversations/:id answers 404 to another identity, even with a valid cursor', async () => {
    const cursor = (await read(owner, conversationId, '?limit=1')).before ?? '';
    await expectNotFound(await h.call('GET', `/v1/conversations/${conversationId}?before=${cursor}`, stranger));
  });
});
