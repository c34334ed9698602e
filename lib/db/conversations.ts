// Conversations and messages: every query is scoped by owner in SQL (OWASP API1: not yours → not found).
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { withTransaction } from './transaction.ts';

export type MessageStatus = 'complete' | 'incomplete' | 'error';

export interface HistoryMessage {
  role: 'user' | 'assistant';
  content: string;
}

export interface StartedTurn {
  conversationId: string;
  userMessageId: string;
  /** The answer's row, inserted as `incomplete` in the same transaction and updated when the answer ends. */
  assistantMessageId: string;
  agent: string;
  /** Earlier messages, oldest first, within the character budget (the new message excluded). */
  history: HistoryMessage[];
}

/**
 * Stores the user's message, creating the conversation in the same transaction when no id is
 * given. Returns undefined when `conversationId` does not exist for this owner.
 */
export async function startTurn(
  pool: pg.Pool,
  input: { owner: string; agent: string; conversationId?: string; message: string; historyMaxChars: number },
): Promise<StartedTurn | undefined> {
  const userMessageId = randomUUID();
  // The answer's row exists from the start, as `incomplete`: if the database is unreachable when
  // the answer ends, the question still has its answer row instead of standing alone.
  const assistantMessageId = randomUUID();
  if (input.conversationId === undefined) {
    const conversationId = randomUUID();
    // Cut at 80 UTF-16 units without splitting a surrogate pair (a lone half is stored as U+FFFD).
    const title = input.message.slice(0, 80).replace(/[\uD800-\uDBFF]$/, '');
    // One statement is atomic on its own: no BEGIN/COMMIT round trips on the first turn, the common
    // one. Foreign keys are checked at the end of the statement, when the conversation row exists.
    await pool.query(
      `WITH c AS (INSERT INTO conversations (id, owner, agent, title) VALUES ($1, $2, $3, $4) RETURNING id)
       INSERT INTO messages (id, conversation_id, role, content, status, completed_at)
       SELECT $5::uuid, c.id, 'user', $6::text, 'complete', now() FROM c
       UNION ALL SELECT $7::uuid, c.id, 'assistant', '', 'incomplete', NULL FROM c`,
      [conversationId, input.owner, input.agent, title, userMessageId, input.message, assistantMessageId],
    );
    return { conversationId, userMessageId, assistantMessageId, agent: input.agent, history: [] };
  }
  const conversationId = input.conversationId;
  return withTransaction(pool, async (client) => {
    const found = await client.query<{ agent: string }>(
      'UPDATE conversations SET updated_at = now() WHERE id = $1 AND owner = $2 RETURNING agent',
      [conversationId, input.owner],
    );
    if (found.rowCount === 0) return undefined;
    // A follow-up that names no agent continues with the conversation's own.
    const agent = found.rows[0]?.agent ?? input.agent;
    const history = await loadHistory(client, conversationId, input.historyMaxChars);
    await client.query(
      `INSERT INTO messages (id, conversation_id, role, content, status, completed_at)
       VALUES ($1, $3, 'user', $4, 'complete', now()), ($2, $3, 'assistant', '', 'incomplete', NULL)`,
      [userMessageId, assistantMessageId, conversationId, input.message],
    );
    return { conversationId, userMessageId, assistantMessageId, agent, history };
  });
}

async function loadHistory(client: pg.PoolClient, conversationId: string, maxChars: number): Promise<HistoryMessage[]> {
  if (maxChars <= 0) return [];
  // Newest first until the budget is spent; only content that was actually shown (non-empty).
  const { rows } = await client.query<{ role: 'user' | 'assistant'; content: string }>(
    "SELECT role, content FROM messages WHERE conversation_id = $1 AND content <> '' ORDER BY seq DESC LIMIT 200",
    [conversationId],
  );
  const picked: HistoryMessage[] = [];
  let used = 0;
  for (const row of rows) {
    used += row.content.length;
    if (used > maxChars) break;
    picked.push({ role: row.role, content: row.content });
  }
  return picked.reverse();
}

export interface AssistantMessage {
  id: string;
  conversationId: string;
  content: string;
  status: MessageStatus;
  finishReason?: string | null | undefined;
  promptTokens?: number | undefined;
  completionTokens?: number | undefined;
  errorCode?: string | undefined;
  /** The model that answered (unset when no upstream answered). */
  model?: string | undefined;
}

/** Stores the assistant's answer (whatever state it reached) into the row startTurn made; safe to repeat. */
export async function saveAssistantMessage(pool: pg.Pool, m: AssistantMessage): Promise<void> {
  // PostgreSQL text cannot hold NUL (22021); one from the upstream must not cost the whole answer.
  const content = m.content.includes('\u0000') ? m.content.replaceAll('\u0000', '\uFFFD') : m.content;
  await pool.query(
    `UPDATE messages SET content = $3, status = $4, finish_reason = $5, prompt_tokens = $6, completion_tokens = $7,
       error_code = $8, model = $9, completed_at = now()
     WHERE id = $1 AND conversation_id = $2 AND role = 'assistant'`,
    [
      m.id,
      m.conversationId,
      content,
      m.status,
      m.finishReason ?? null,
      m.promptTokens ?? null,
      m.completionTokens ?? null,
      m.errorCode ?? null,
      m.model ?? null,
    ],
  );
}

export interface ConversationSummary {
  id: string;
  agent: string;
  title: string;
  createdAt: string;
  updatedAt: string;
}

interface ConversationRow {
  id: string;
  agent: string;
  title: string;
  created_at: Date;
  updated_at: Date;
}

function summary(row: ConversationRow): ConversationSummary {
  return {
    id: row.id,
    agent: row.agent,
    title: row.title,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

/** The owner's conversations, newest first, keyset-paginated by (updated_at, id). */
export async function listConversations(
  pool: pg.Pool,
  owner: string,
  limit: number,
  after?: { updatedAt: string; id: string },
): Promise<{ items: ConversationSummary[]; next?: { updatedAt: string; id: string } }> {
  // The cursor keeps PostgreSQL's microseconds: a millisecond-rounded Date would skip rows.
  const columns = `id, agent, title, created_at, updated_at, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at`;
  const { rows } =
    after === undefined
      ? await pool.query<ConversationRow & { cursor_at: string }>(
          `SELECT ${columns} FROM conversations WHERE owner = $1 ORDER BY updated_at DESC, id DESC LIMIT $2`,
          [owner, limit + 1],
        )
      : await pool.query<ConversationRow & { cursor_at: string }>(
          `SELECT ${columns} FROM conversations
         WHERE owner = $1 AND (updated_at, id) < ($2::timestamptz, $3::uuid) ORDER BY updated_at DESC, id DESC LIMIT $4`,
          [owner, after.updatedAt, after.id, limit + 1],
        );
  const page = rows.slice(0, limit);
  const items = page.map(summary);
  const last = page[page.length - 1];
  return rows.length > limit && last !== undefined
    ? { items, next: { updatedAt: last.cursor_at, id: last.id } }
    : { items };
}

export interface StoredMessage {
  id: string;
  role: 'user' | 'assistant';
  content: string;
  status: MessageStatus;
  finishReason: string | null;
  usage: { promptTokens: number; completionTokens: number } | null;
  createdAt: string;
  completedAt: string | null;
}

interface MessageRow {
  id: string;
  role: 'user' | 'assistant';
  content: string;
  status: MessageStatus;
  finish_reason: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  created_at: Date;
  completed_at: Date | null;
}

/** One conversation with its messages, or undefined when it is not the owner's. */
export async function getConversation(
  pool: pg.Pool,
  owner: string,
  id: string,
): Promise<(ConversationSummary & { messages: StoredMessage[] }) | undefined> {
  const conv = await pool.query<ConversationRow>(
    'SELECT id, agent, title, created_at, updated_at FROM conversations WHERE id = $1 AND owner = $2',
    [id, owner],
  );
  const row = conv.rows[0];
  if (row === undefined) return undefined;
  const { rows } = await pool.query<MessageRow>(
    `SELECT id, role, content, status, finish_reason, prompt_tokens, completion_tokens, created_at, completed_at
     FROM messages WHERE conversation_id = $1 ORDER BY seq LIMIT 1000`,
    [id],
  );
  return {
    ...summary(row),
    messages: rows.map((m) => ({
      id: m.id,
      role: m.role,
      content: m.content,
      status: m.status,
      finishReason: m.finish_reason,
      usage:
        m.prompt_tokens === null && m.completion_tokens === null
          ? null
          : { promptTokens: m.prompt_tokens ?? 0, completionTokens: m.completion_tokens ?? 0 },
      createdAt: m.created_at.toISOString(),
      completedAt: m.completed_at?.toISOString() ?? null,
    })),
  };
}

/** Deletes the owner's conversation (messages cascade); false when it is not theirs. */
export async function deleteConversation(pool: pg.Pool, owner: string, id: string): Promise<boolean> {
  const result = await pool.query('DELETE FROM conversations WHERE id = $1 AND owner = $2', [id, owner]);
  return (result.rowCount ?? 0) > 0;
}
