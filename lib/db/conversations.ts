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

/** A new turn: the owner's message in a conversation, or in a new one (named by `clientId` when given). */
export interface TurnStart {
  owner: string;
  agent: string;
  conversationId?: string;
  /** A client's own id for a new conversation (unique per owner): a race to create it joins the winner's. */
  clientId?: string;
  message: string;
  historyMaxChars: number;
}

/**
 * Stores the user's message, creating the conversation in the same transaction when no id is
 * given. Returns undefined when `conversationId` does not exist for this owner.
 */
export async function startTurn(pool: pg.Pool, input: TurnStart): Promise<StartedTurn | undefined> {
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
    const created = await pool.query(
      `WITH c AS (
         INSERT INTO conversations (id, owner, agent, title, client_id) VALUES ($1, $2, $3, $4, $8)
         ON CONFLICT (owner, client_id) WHERE client_id IS NOT NULL DO NOTHING RETURNING id)
       INSERT INTO messages (id, conversation_id, role, content, status, completed_at)
       SELECT $5::uuid, c.id, 'user', $6::text, 'complete', now() FROM c
       UNION ALL SELECT $7::uuid, c.id, 'assistant', '', 'incomplete', NULL FROM c`,
      [
        conversationId,
        input.owner,
        input.agent,
        title,
        userMessageId,
        input.message,
        assistantMessageId,
        input.clientId ?? null,
      ],
    );
    if ((created.rowCount ?? 0) > 0) {
      return { conversationId, userMessageId, assistantMessageId, agent: input.agent, history: [] };
    }
    // Another request created this client id's conversation first: continue in it.
    const existing = await pool.query<{ id: string }>(
      'SELECT id FROM conversations WHERE owner = $1 AND client_id = $2',
      [input.owner, input.clientId],
    );
    const id = existing.rows[0]?.id;
    return id === undefined ? undefined : startTurn(pool, { ...input, clientId: undefined, conversationId: id });
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

/** Most earlier messages a turn ever sends, whatever the character budget allows. */
export const HISTORY_MAX_MESSAGES = 200;

/**
 * The newest messages that fit in `maxChars` characters together, oldest first; only content that
 * was actually shown (non-empty). The cut happens in SQL: the walk goes back one message at a time
 * keeping a running sum of lengths and stops at the first message that does not fit, so the only
 * content that leaves the database is content that is sent.
 */
async function loadHistory(
  client: pg.PoolClient,
  conversationId: string,
  maxChars: number,
  beforeSeq = Number.MAX_SAFE_INTEGER,
): Promise<HistoryMessage[]> {
  if (maxChars <= 0) return [];
  const { rows } = await client.query<{ role: 'user' | 'assistant'; content: string }>(
    `WITH RECURSIVE walk (seq, used, n) AS (
       (SELECT seq, char_length(content)::bigint, 1 FROM messages
        WHERE conversation_id = $1 AND content <> '' AND seq < $4 ORDER BY seq DESC LIMIT 1)
       UNION ALL
       SELECT older.seq, walk.used + older.len, walk.n + 1
       FROM walk CROSS JOIN LATERAL (
         SELECT seq, char_length(content) AS len FROM messages
         WHERE conversation_id = $1 AND content <> '' AND seq < walk.seq ORDER BY seq DESC LIMIT 1
       ) older
       WHERE walk.used <= $2 AND walk.n < $3
     )
     SELECT m.role, m.content FROM walk JOIN messages m ON m.conversation_id = $1 AND m.seq = walk.seq
     WHERE walk.used <= $2 ORDER BY m.seq`,
    [conversationId, maxChars, HISTORY_MAX_MESSAGES, beforeSeq],
  );
  return rows.map((row) => ({ role: row.role, content: row.content }));
}

/** A regenerated turn: the last question of a conversation, asked again for a new answer. */
export interface RegeneratedTurn extends StartedTurn {
  message: string;
}

/**
 * Replaces the conversation's last answer: deletes every message after its last user message and
 * stores a new `incomplete` answer row; undefined when the conversation is not the owner's or has
 * no question yet.
 */
export async function regenerateTurn(
  pool: pg.Pool,
  input: { owner: string; conversationId: string; historyMaxChars: number },
): Promise<RegeneratedTurn | undefined> {
  const { conversationId } = input;
  return withTransaction(pool, async (client) => {
    const found = await client.query<{ agent: string }>(
      'UPDATE conversations SET updated_at = now() WHERE id = $1 AND owner = $2 RETURNING agent',
      [conversationId, input.owner],
    );
    const agent = found.rows[0]?.agent;
    if (agent === undefined) return undefined;
    const question = await client.query<{ id: string; seq: string; content: string }>(
      `SELECT id, seq, content FROM messages WHERE conversation_id = $1 AND role = 'user' ORDER BY seq DESC LIMIT 1`,
      [conversationId],
    );
    const asked = question.rows[0];
    if (asked === undefined) return undefined;
    await client.query('DELETE FROM messages WHERE conversation_id = $1 AND seq > $2', [conversationId, asked.seq]);
    const history = await loadHistory(client, conversationId, input.historyMaxChars, Number(asked.seq));
    const assistantMessageId = randomUUID();
    await client.query(
      `INSERT INTO messages (id, conversation_id, role, content, status)
       VALUES ($1, $2, 'assistant', '', 'incomplete')`,
      [assistantMessageId, conversationId],
    );
    return { conversationId, userMessageId: asked.id, assistantMessageId, agent, history, message: asked.content };
  });
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
  const columns = `id, agent, title, created_at, updated_at,
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at`;
  const { rows } =
    after === undefined
      ? await pool.query<ConversationRow & { cursor_at: string }>(
          `SELECT ${columns} FROM conversations WHERE owner = $1 ORDER BY updated_at DESC, id DESC LIMIT $2`,
          [owner, limit + 1],
        )
      : await pool.query<ConversationRow & { cursor_at: string }>(
          `SELECT ${columns} FROM conversations
         WHERE owner = $1 AND (updated_at, id) < ($2::timestamptz, $3::uuid)
         ORDER BY updated_at DESC, id DESC LIMIT $4`,
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

/** Which page of a conversation's messages to read; `before` and `after` are message ids of that conversation. */
export interface MessagePageQuery {
  limit: number;
  /** The `limit` messages just older than this one; without before or after, the newest `limit`. */
  before?: string;
  /** The `limit` messages just newer than this one. */
  after?: string;
}

/** One conversation with a page of its messages, oldest first. */
export interface ConversationPage extends ConversationSummary {
  messages: StoredMessage[];
  /** Messages older than the first one of the page exist. */
  hasOlder: boolean;
  /** Messages newer than the last one of the page existed when it was read. */
  hasNewer: boolean;
}

export type ConversationRead =
  | { kind: 'found'; conversation: ConversationPage }
  | { kind: 'not-found' }
  /** The page's anchor message is not in this conversation. */
  | { kind: 'unknown-anchor' };

const MESSAGE_COLUMNS =
  'id, role, content, status, finish_reason, prompt_tokens, completion_tokens, created_at, completed_at';

/** One conversation with a page of its messages, keyset-paginated by seq; `not-found` when it is not the owner's. */
export async function getConversation(
  pool: pg.Pool,
  owner: string,
  id: string,
  page: MessagePageQuery,
): Promise<ConversationRead> {
  const anchorId = page.before ?? page.after ?? null;
  // The anchor is looked up inside the owner's conversation only: a message id from elsewhere names nothing.
  const conv = await pool.query<ConversationRow & { anchor_seq: string | null }>(
    `SELECT c.id, c.agent, c.title, c.created_at, c.updated_at,
       (SELECT m.seq FROM messages m WHERE m.id = $3 AND m.conversation_id = c.id) AS anchor_seq
     FROM conversations c WHERE c.id = $1 AND c.owner = $2`,
    [id, owner, anchorId],
  );
  const row = conv.rows[0];
  if (row === undefined) return { kind: 'not-found' };
  if (anchorId !== null && row.anchor_seq === null) return { kind: 'unknown-anchor' };
  const forward = page.after !== undefined;
  const bound = row.anchor_seq === null ? '' : forward ? 'AND seq > $3' : 'AND seq < $3';
  const { rows } = await pool.query<MessageRow>(
    `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ${bound}
     ORDER BY seq ${forward ? 'ASC' : 'DESC'} LIMIT $2`,
    row.anchor_seq === null ? [id, page.limit + 1] : [id, page.limit + 1, row.anchor_seq],
  );
  const more = rows.length > page.limit;
  const messages = rows.slice(0, page.limit).map(storedMessage);
  if (!forward) messages.reverse();
  const anchored = anchorId !== null;
  const conversation: ConversationPage = {
    ...summary(row),
    messages,
    hasOlder: forward ? anchored : more,
    hasNewer: forward ? more : anchored,
  };
  return { kind: 'found', conversation };
}

function storedMessage(m: MessageRow): StoredMessage {
  return {
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
  };
}

/** Deletes the owner's conversation (messages cascade); false when it is not theirs. */
export async function deleteConversation(pool: pg.Pool, owner: string, id: string): Promise<boolean> {
  const result = await pool.query('DELETE FROM conversations WHERE id = $1 AND owner = $2', [id, owner]);
  return (result.rowCount ?? 0) > 0;
}
