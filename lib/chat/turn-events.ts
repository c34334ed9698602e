// Helpers adapters use to read a turn: map its events to their wire frames, or collect a whole answer.
import { AppError } from '../errors.ts';
import type { Turn, TurnEvent, TurnHead } from './turn.ts';
import type { UpstreamUsage } from './upstream.ts';

/**
 * Maps each event to none, one or several of another type; return() reaches the source even
 * before the first next(), so an abandoned turn still finishes.
 */
export function mapEvents<T, U>(
  source: AsyncIterable<T>,
  map: (event: T) => U | readonly U[] | undefined,
): AsyncIterable<U> {
  const inner = source[Symbol.asyncIterator]();
  let queued: readonly U[] = [];
  let index = 0;
  const iterator: AsyncIterator<U> = {
    async next() {
      while (index >= queued.length) {
        const step = await inner.next();
        if (step.done === true) return { done: true, value: undefined };
        const mapped = map(step.value);
        if (mapped === undefined) continue;
        if (!Array.isArray(mapped)) return { done: false, value: mapped as U };
        queued = mapped as readonly U[];
        index = 0;
      }
      return { done: false, value: queued[index++] as U };
    },
    async return() {
      await inner.return?.();
      return { done: true, value: undefined };
    },
  };
  return { [Symbol.asyncIterator]: () => iterator };
}

/** A whole answer, for clients that asked for one JSON object instead of a stream. */
export interface CollectedAnswer {
  head: TurnHead;
  text: string;
  finishReason: string | null;
  usage: UpstreamUsage | undefined;
}

/**
 * Reads a turn to its end; a failed turn rejects with its AppError. The events run out only once
 * a stored answer is saved, so whoever gets the JSON reads the same answer from the database.
 */
export async function collect(turn: Turn): Promise<CollectedAnswer> {
  const parts: string[] = [];
  let finished: Extract<TurnEvent, { type: 'finished' }> | undefined;
  for await (const event of turn.events) {
    if (event.type === 'delta' && finished === undefined) parts.push(event.text);
    else if (event.type === 'failed') throw event.error;
    else if (event.type === 'finished') finished = event;
  }
  if (finished === undefined) throw new AppError('UPSTREAM_ERROR', { detail: 'The answer ended without a finish' });
  return { head: turn.head, text: parts.join(''), finishReason: finished.finishReason, usage: finished.usage };
}
