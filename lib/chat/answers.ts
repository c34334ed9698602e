// Storing an answer whatever happened to it: a few retries through a database blip, and a
// conversation deleted mid-answer is not an error.
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { type AssistantMessage, saveAssistantMessage } from '../db/conversations.ts';
import type { Logger } from '../log.ts';

// Backoff 250 ms, 0.5 s, 1 s, 2 s, 4 s: rides out a database blip of several seconds. The row
// already exists as `incomplete`, so even a failure past this leaves the question paired.
const SAVE_ATTEMPTS = 6;
const FOREIGN_KEY_VIOLATION = '23503';

/** Stores the answer into the row the turn started with; logs and gives up after the last attempt. */
export async function storeAnswer(
  pool: pg.Pool,
  log: Logger,
  answer: AssistantMessage,
  requestId: string,
): Promise<void> {
  for (let attempt = 1; attempt <= SAVE_ATTEMPTS; attempt++) {
    try {
      await saveAssistantMessage(pool, answer);
      return;
    } catch (err) {
      const { id: messageId, conversationId } = answer;
      if ((err as { code?: unknown }).code === FOREIGN_KEY_VIOLATION) {
        // The owner deleted the conversation mid-answer: there is nothing left to store it in.
        log.info('conversation deleted before its answer was stored', { requestId, conversationId });
        return;
      }
      if (attempt === SAVE_ATTEMPTS) {
        log.error('could not store the assistant message', { err, requestId, messageId, conversationId });
        return;
      }
      await sleep(250 * 2 ** (attempt - 1));
    }
  }
}
