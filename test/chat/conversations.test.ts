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

  it('GET /v1/conversations walks every page with limit and nextCursor, newest first, without duplicates or gaps', async () => {
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

  it('GET /v1/conversations titles a conversation with its first 80 characters without splitting an emoji', async () => {
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
});
