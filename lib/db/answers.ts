// An answer while it streams: checkpoints of its text, and what a reconnecting client can resume.
import type pg from 'pg';

/**
 * Appends text to a streaming answer's row, only where the stored text ends at `offset` (a
 * checkpoint that lost a race with a later one, or with the final save, changes nothing).
 */
export async function checkpointAnswer(pool: pg.Pool, messageId: string, offset: number, text: string): Promise<void> {
  await pool.query(
    `UPDATE messages SET content = content || $3
     WHERE id = $1 AND role = 'assistant' AND completed_at IS NULL AND char_length(content) = $2`,
    [messageId, offset, text.includes('\u0000') ? text.replaceAll('\u0000', '\uFFFD') : text],
  );
}

/** The newest answer of a conversation, as stored: its text so far and whether it has ended. */
export interface StoredAnswer {
  conversationId: string;
  messageId: string;
  agent: string;
  content: string;
  status: 'complete' | 'incomplete' | 'error';
  /** False while the answer streams (or its instance died before storing its end). */
  ended: boolean;
  /** Seconds since the answer started, by the database clock. */
  ageSeconds: number;
}

/** The owner's conversation's newest answer, or undefined when the conversation is not theirs or has none. */
export async function latestAnswer(
  pool: pg.Pool,
  owner: string,
  conversationId: string,
): Promise<StoredAnswer | undefined> {
  const { rows } = await pool.query<{
    id: string;
    agent: string;
    content: string;
    status: StoredAnswer['status'];
    ended: boolean;
    age: number;
  }>(
    `SELECT m.id, c.agent, m.content, m.status, m.completed_at IS NOT NULL AS ended,
            EXTRACT(EPOCH FROM now() - m.created_at)::float8 AS age
     FROM conversations c JOIN messages m ON m.conversation_id = c.id
     WHERE c.id = $1 AND c.owner = $2 AND m.role = 'assistant'
     ORDER BY m.seq DESC LIMIT 1`,
    [conversationId, owner],
  );
  const row = rows[0];
  if (row === undefined) return undefined;
  return {
    conversationId,
    messageId: row.id,
    agent: row.agent,
    content: row.content,
    status: row.status,
    ended: row.ended,
    ageSeconds: row.age,
  };
}

/** The owner's conversation a client knows by its own id (the AI SDK's chat id), if any. */
export async function findConversationByClientId(
  pool: pg.Pool,
  owner: string,
  clientId: string,
): Promise<string | undefined> {
  const { rows } = await pool.query<{ id: string }>(
    'SELECT id FROM conversations WHERE owner = $1 AND client_id = $2',
    [owner, clientId],
  );
  return rows[0]?.id;
}

/** True when the conversation exists and is the owner's. */
export async function ownsConversation(pool: pg.Pool, owner: string, conversationId: string): Promise<boolean> {
  const { rowCount } = await pool.query('SELECT 1 FROM conversations WHERE id = $1 AND owner = $2', [
    conversationId,
    owner,
  ]);
  return (rowCount ?? 0) > 0;
}
