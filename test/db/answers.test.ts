// The streaming-answer repository against a real database: checkpoints, the newest answer, client ids.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { before, describe, it } from 'node:test';
import type pg from 'pg';
import { checkpointAnswer, findConversationByClientId, latestAnswer, ownsConversation } from '../../lib/db/answers.ts';
import { type StartedTurn, saveAssistantMessage, startTurn } from '../../lib/db/conversations.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { ENGINES, engineDatabase } from '../support/engines.ts';

/** A new conversation of a new owner, with its question and an empty answer row. */
async function newTurn(pool: pg.Pool, extra: { clientId?: string } = {}): Promise<StartedTurn & { owner: string }> {
  const owner = `key:${randomUUID()}`;
  const turn = await startTurn(pool, { owner, agent: 'helper', message: 'Q', historyMaxChars: 1_000, ...extra });
  assert.ok(turn !== undefined);
  return { ...turn, owner };
}

async function contentOf(pool: pg.Pool, messageId: string): Promise<string | undefined> {
  const { rows } = await pool.query<{ content: string }>('SELECT content FROM messages WHERE id = $1', [messageId]);
  return rows[0]?.content;
}

for (const engine of ENGINES) {
  describe(`answers repository on ${engine.label}`, { skip: engine.skip }, () => {
    const db = engineDatabase(engine, 'answers-test-');

    before(() => migrate(db.pool));

    it('checkpointAnswer() appends text where the stored text ends', async () => {
      const turn = await newTurn(db.pool);
      await checkpointAnswer(db.pool, turn.assistantMessageId, 0, 'Hél');
      await checkpointAnswer(db.pool, turn.assistantMessageId, 3, 'lo');
      assert.equal(await contentOf(db.pool, turn.assistantMessageId), 'Héllo');
    });

    it('checkpointAnswer() changes nothing when the offset is not the stored end', async () => {
      const turn = await newTurn(db.pool);
      await checkpointAnswer(db.pool, turn.assistantMessageId, 0, 'Hello');
      await checkpointAnswer(db.pool, turn.assistantMessageId, 3, 'lo, late');
      await checkpointAnswer(db.pool, turn.assistantMessageId, 9, 'ahead');
      await checkpointAnswer(db.pool, turn.assistantMessageId, 0, 'Hello');
      assert.equal(await contentOf(db.pool, turn.assistantMessageId), 'Hello');
    });

    it('checkpointAnswer() changes nothing once the answer has its end stored', async () => {
      const turn = await newTurn(db.pool);
      const { assistantMessageId: id, conversationId } = turn;
      await saveAssistantMessage(db.pool, { id, conversationId, content: 'Final', status: 'complete' });
      await checkpointAnswer(db.pool, id, 5, ' and more');
      assert.equal(await contentOf(db.pool, id), 'Final');
    });

    it("checkpointAnswer() never writes to the user's message", async () => {
      const turn = await newTurn(db.pool);
      await checkpointAnswer(db.pool, turn.userMessageId, 1, '!');
      assert.equal(await contentOf(db.pool, turn.userMessageId), 'Q');
    });

    it('checkpointAnswer() stores NUL as U+FFFD instead of failing', async () => {
      const turn = await newTurn(db.pool);
      await checkpointAnswer(db.pool, turn.assistantMessageId, 0, 'a\u0000b');
      assert.equal(await contentOf(db.pool, turn.assistantMessageId), 'a\uFFFDb');
    });

    it('latestAnswer() reads a streaming answer as not ended, with its text, agent and age', async () => {
      const turn = await newTurn(db.pool);
      await checkpointAnswer(db.pool, turn.assistantMessageId, 0, 'so far');
      await db.pool.query("UPDATE messages SET created_at = now() - interval '90 seconds' WHERE id = $1", [
        turn.assistantMessageId,
      ]);
      const answer = await latestAnswer(db.pool, turn.owner, turn.conversationId);
      assert.ok(answer !== undefined);
      const { ageSeconds, ...rest } = answer;
      assert.deepEqual(rest, {
        conversationId: turn.conversationId,
        messageId: turn.assistantMessageId,
        agent: 'helper',
        content: 'so far',
        status: 'incomplete',
        ended: false,
      });
      assert.ok(ageSeconds >= 90 && ageSeconds < 120, `age ${ageSeconds} s`);
    });

    it('latestAnswer() reads a stored answer as ended with its status', async () => {
      const turn = await newTurn(db.pool);
      const { assistantMessageId: id, conversationId } = turn;
      await saveAssistantMessage(db.pool, { id, conversationId, content: 'Done', status: 'error', errorCode: 'X' });
      const answer = await latestAnswer(db.pool, turn.owner, conversationId);
      assert.deepEqual([answer?.ended, answer?.status, answer?.content], [true, 'error', 'Done']);
    });

    it("latestAnswer() reads the conversation's newest answer", async () => {
      const first = await newTurn(db.pool);
      const { assistantMessageId: id, conversationId } = first;
      await saveAssistantMessage(db.pool, { id, conversationId, content: 'one', status: 'complete' });
      const second = await startTurn(db.pool, {
        owner: first.owner,
        agent: 'helper',
        conversationId,
        message: 'Q2',
        historyMaxChars: 1_000,
      });
      const answer = await latestAnswer(db.pool, first.owner, conversationId);
      assert.equal(answer?.messageId, second?.assistantMessageId);
      assert.equal(answer?.ended, false);
    });

    it("latestAnswer() answers undefined for another owner's conversation and for an unknown one", async () => {
      const turn = await newTurn(db.pool);
      assert.equal(await latestAnswer(db.pool, `key:${randomUUID()}`, turn.conversationId), undefined);
      assert.equal(await latestAnswer(db.pool, turn.owner, randomUUID()), undefined);
    });

    it("findConversationByClientId() finds the owner's conversation by client id, and no one else's", async () => {
      const clientId = `chat-${randomUUID()}`;
      const turn = await newTurn(db.pool, { clientId });
      assert.equal(await findConversationByClientId(db.pool, turn.owner, clientId), turn.conversationId);
      assert.equal(await findConversationByClientId(db.pool, `key:${randomUUID()}`, clientId), undefined);
      assert.equal(await findConversationByClientId(db.pool, turn.owner, 'chat-unknown'), undefined);
    });

    it('ownsConversation() is true for the owner only', async () => {
      const turn = await newTurn(db.pool);
      assert.equal(await ownsConversation(db.pool, turn.owner, turn.conversationId), true);
      assert.equal(await ownsConversation(db.pool, `key:${randomUUID()}`, turn.conversationId), false);
      assert.equal(await ownsConversation(db.pool, turn.owner, randomUUID()), false);
    });
  });
}
