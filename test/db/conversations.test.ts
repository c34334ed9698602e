// The conversations repository against a real database: turns, the history budget, and message pages.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import {
  type ConversationPage,
  deleteConversation,
  getConversation,
  HISTORY_MAX_MESSAGES,
  listConversations,
  type MessagePageQuery,
  saveAssistantMessage,
  startTurn,
} from '../../lib/db/conversations.ts';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { ENGINES, engineDatabase } from '../support/engines.ts';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.ts';

const log = createLogger({ level: 'silent' });

/** Appends `count` complete messages to a conversation in one statement: `prefix` + their number, or `content`. */
async function addMessages(
  pool: pg.Pool,
  conversationId: string,
  count: number,
  text: { prefix: string } | { repeat: string; times: number },
): Promise<void> {
  const content = 'prefix' in text ? `$2 || i` : `repeat($2, ${Number(text.times)})`;
  await pool.query(
    `INSERT INTO messages (id, conversation_id, role, content, status, completed_at)
     SELECT gen_random_uuid(), $1, CASE WHEN i % 2 = 1 THEN 'user' ELSE 'assistant' END, ${content}, 'complete', now()
     FROM generate_series(1, $3::int) AS i ORDER BY i`,
    [conversationId, 'prefix' in text ? text.prefix : text.repeat, count],
  );
}

/** A conversation of its own owner, started with one turn (a question and an empty answer row). */
async function newConversation(pool: pg.Pool): Promise<{ owner: string; id: string }> {
  const owner = `key:${randomUUID()}`;
  const turn = await startTurn(pool, { owner, agent: 'default', message: 'first', historyMaxChars: 24_000 });
  assert.ok(turn !== undefined);
  return { owner, id: turn.conversationId };
}

async function page(pool: pg.Pool, owner: string, id: string, query: MessagePageQuery): Promise<ConversationPage> {
  const read = await getConversation(pool, owner, id, query);
  assert.equal(read.kind, 'found');
  return (read as { conversation: ConversationPage }).conversation;
}

for (const engine of ENGINES) {
  describe(`conversations repository on ${engine.label}`, { skip: engine.skip }, () => {
    const db = engineDatabase(engine, 'conversations-test-');

    before(() => migrate(db.pool));

    it('startTurn() opens a conversation with the question and an incomplete answer row', async () => {
      const { owner, id } = await newConversation(db.pool);
      const read = await page(db.pool, owner, id, { limit: 10 });
      assert.deepEqual(
        read.messages.map((m) => [m.role, m.content, m.status]),
        [
          ['user', 'first', 'complete'],
          ['assistant', '', 'incomplete'],
        ],
      );
      assert.equal(read.title, 'first');
    });

    it("startTurn() answers undefined for another owner's conversation and stores nothing", async () => {
      const { owner, id } = await newConversation(db.pool);
      const turn = await startTurn(db.pool, {
        owner: `key:${randomUUID()}`,
        agent: 'default',
        conversationId: id,
        message: 'let me in',
        historyMaxChars: 24_000,
      });
      assert.equal(turn, undefined);
      assert.equal((await page(db.pool, owner, id, { limit: 10 })).messages.length, 2);
    });

    it('startTurn() sends the newest messages that fit the budget, oldest first, without empty ones', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 6, { repeat: 'ab', times: 5 }); // 10 characters each
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'x',
        conversationId: id,
        message: 'q',
        historyMaxChars: 30,
      });
      assert.deepEqual(
        turn?.history.map((m) => [m.role, m.content.length]),
        [
          ['assistant', 10],
          ['user', 10],
          ['assistant', 10],
        ],
      );
      assert.equal(turn?.agent, 'default', 'a follow-up keeps the conversation agent');
    });

    it('startTurn() counts characters, not bytes, and keeps a message that fills the budget exactly', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 1, { repeat: 'é', times: 12 });
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'x',
        conversationId: id,
        message: 'q',
        historyMaxChars: 12,
      });
      assert.deepEqual(
        turn?.history.map((m) => m.content),
        ['é'.repeat(12)],
      );
    });

    it('startTurn() sends no history when the newest message alone is over the budget', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 1, { prefix: 'short' });
      await addMessages(db.pool, id, 1, { repeat: 'z', times: 100 });
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'x',
        conversationId: id,
        message: 'q',
        historyMaxChars: 99,
      });
      assert.deepEqual(turn?.history, []);
    });

    it(`startTurn() sends at most ${HISTORY_MAX_MESSAGES} messages however large the budget`, async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, HISTORY_MAX_MESSAGES + 50, { prefix: 'm' });
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'x',
        conversationId: id,
        message: 'q',
        historyMaxChars: 10_000_000,
      });
      assert.equal(turn?.history.length, HISTORY_MAX_MESSAGES);
      assert.equal(turn?.history.at(-1)?.content, `m${HISTORY_MAX_MESSAGES + 50}`);
    });

    it('startTurn() with a budget of 0 sends no history', async () => {
      const { owner, id } = await newConversation(db.pool);
      const turn = await startTurn(db.pool, {
        owner,
        agent: 'x',
        conversationId: id,
        message: 'q',
        historyMaxChars: 0,
      });
      assert.deepEqual(turn?.history, []);
    });

    it('saveAssistantMessage() stores the answer in its row, NUL characters replaced', async () => {
      const { owner, id } = await newConversation(db.pool);
      const answerId = (await page(db.pool, owner, id, { limit: 10 })).messages[1]?.id as string;
      await saveAssistantMessage(db.pool, {
        id: answerId,
        conversationId: id,
        content: 'a\u0000b',
        status: 'complete',
        finishReason: 'stop',
        promptTokens: 3,
        completionTokens: 2,
      });
      const [, answer] = (await page(db.pool, owner, id, { limit: 10 })).messages;
      assert.equal(answer?.content, 'a\uFFFDb');
      assert.equal(answer?.status, 'complete');
      assert.deepEqual(answer?.usage, { promptTokens: 3, completionTokens: 2 });
    });

    it('getConversation() reads the newest page by default, oldest first within it', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 10, { prefix: 'm' });
      const newest = await page(db.pool, owner, id, { limit: 3 });
      assert.deepEqual(
        newest.messages.map((m) => m.content),
        ['m8', 'm9', 'm10'],
      );
      assert.equal(newest.hasOlder, true);
      assert.equal(newest.hasNewer, false);
    });

    it('getConversation() walks 1,200 messages back from the newest page, each message once', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 1_198, { prefix: 'm' });
      const seen: string[] = [];
      let query: MessagePageQuery = { limit: 500 };
      for (let pages = 1; ; pages++) {
        const read = await page(db.pool, owner, id, query);
        seen.unshift(...read.messages.map((m) => m.content));
        if (!read.hasOlder) break;
        assert.ok(pages < 5, 'the walk ends');
        query = { limit: 500, before: read.messages[0]?.id as string };
      }
      assert.equal(seen.length, 1_200);
      assert.deepEqual(seen, ['first', '', ...Array.from({ length: 1_198 }, (_, i) => `m${i + 1}`)]);
    });

    it('getConversation() walks forward with after from the oldest page, each message once', async () => {
      const { owner, id } = await newConversation(db.pool);
      await addMessages(db.pool, id, 98, { prefix: 'm' });
      let read = await page(db.pool, owner, id, { limit: 30 });
      let pages = 1;
      while (read.hasOlder) {
        assert.ok(pages++ < 10, 'the walk back ends');
        read = await page(db.pool, owner, id, { limit: 30, before: read.messages[0]?.id as string });
      }
      const seen = read.messages.map((m) => m.content);
      while (read.hasNewer) {
        assert.ok(pages++ < 20, 'the walk forward ends');
        read = await page(db.pool, owner, id, { limit: 30, after: read.messages.at(-1)?.id as string });
        seen.push(...read.messages.map((m) => m.content));
      }
      assert.deepEqual(seen, ['first', '', ...Array.from({ length: 98 }, (_, i) => `m${i + 1}`)]);
    });

    it("getConversation() answers not-found for another owner's conversation, whatever the cursor", async () => {
      const { owner, id } = await newConversation(db.pool);
      const anchor = (await page(db.pool, owner, id, { limit: 1 })).messages[0]?.id as string;
      const stranger = `key:${randomUUID()}`;
      assert.deepEqual(await getConversation(db.pool, stranger, id, { limit: 10 }), { kind: 'not-found' });
      assert.deepEqual(await getConversation(db.pool, stranger, id, { limit: 10, before: anchor }), {
        kind: 'not-found',
      });
    });

    it('getConversation() answers unknown-anchor for a message of another conversation', async () => {
      const mine = await newConversation(db.pool);
      const theirs = await newConversation(db.pool);
      const foreign = (await page(db.pool, theirs.owner, theirs.id, { limit: 1 })).messages[0]?.id as string;
      assert.deepEqual(await getConversation(db.pool, mine.owner, mine.id, { limit: 10, after: foreign }), {
        kind: 'unknown-anchor',
      });
    });

    it('listConversations() and deleteConversation() see only the owner', async () => {
      const { owner, id } = await newConversation(db.pool);
      assert.deepEqual(
        (await listConversations(db.pool, owner, 10)).items.map((c) => c.id),
        [id],
      );
      assert.equal(await deleteConversation(db.pool, `key:${randomUUID()}`, id), false);
      assert.equal(await deleteConversation(db.pool, owner, id), true);
      assert.deepEqual(await getConversation(db.pool, owner, id, { limit: 10 }), { kind: 'not-found' });
    });
  });
}

describe('startTurn() history reads on PostgreSQL, measured on the wire', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  const BUDGET = 24_000;
  const MB = 1_000_000;
  let dir: string;
  let scratch: { url: string; drop(): Promise<void> };
  let proxy: TcpProxy;
  let db: Database;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'history-test-'));
    scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    const target = new URL(scratch.url);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    target.host = `${proxy.host}:${proxy.port}`;
    db = await createDatabase(testConfig({ DATABASE_URL: target.toString() }, dir), log);
    await migrate(db.pool);
  });
  after(async () => {
    await db?.close();
    await proxy?.close();
    await scratch?.drop();
    await rm(dir, { recursive: true, force: true });
  });

  async function followUp(owner: string, id: string): Promise<{ history: string[]; bytes: number }> {
    const before = proxy.bytesFromTarget();
    const turn = await startTurn(db.pool, {
      owner,
      agent: 'x',
      conversationId: id,
      message: 'follow-up',
      historyMaxChars: BUDGET,
    });
    return { history: turn?.history.map((m) => m.content) ?? [], bytes: proxy.bytesFromTarget() - before };
  }

  it('startTurn() receives no more than the budget from the database, however large the older messages', async () => {
    const { owner, id } = await newConversation(db.pool);
    await addMessages(db.pool, id, 30, { repeat: 'x', times: MB });
    await addMessages(db.pool, id, 10, { repeat: 'y', times: 1_000 });
    const { history, bytes } = await followUp(owner, id);
    assert.deepEqual(
      history,
      Array.from({ length: 10 }, () => 'y'.repeat(1_000)),
    );
    // The budget in bytes (ASCII here) plus the turn's other statements and the protocol's framing.
    assert.ok(bytes < BUDGET + 16_384, `${bytes} bytes received`);
  });

  it('startTurn() keeps the resident set flat on a follow-up to 200 messages of 1 MB', async () => {
    const { owner, id } = await newConversation(db.pool);
    await addMessages(db.pool, id, 200, { repeat: 'x', times: MB });
    const rssBefore = process.memoryUsage.rss();
    const { history } = await followUp(owner, id);
    const grownMb = (process.memoryUsage.rss() - rssBefore) / 1e6;
    assert.deepEqual(history, []);
    assert.ok(grownMb < 32, `the resident set grew by ${grownMb.toFixed(1)} MB`);
  });
});
