// The adapters' helpers on plain iterables: mapEvents() and collect().
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Turn, TurnEvent, TurnHead } from '../../lib/chat/turn.ts';
import { collect, mapEvents } from '../../lib/chat/turn-events.ts';
import { AppError } from '../../lib/errors.ts';

const HEAD: TurnHead = { conversationId: undefined, messageId: 'm-1', agent: 'default', createdSeconds: 1 };

/** A source over `values` that records how far it was read and whether return() reached it. */
function source<T>(values: readonly T[]): AsyncIterable<T> & { pulled: number; returned: number } {
  let index = 0;
  const state = {
    pulled: 0,
    returned: 0,
    [Symbol.asyncIterator]: () => ({
      async next(): Promise<IteratorResult<T>> {
        state.pulled++;
        return index < values.length ? { done: false, value: values[index++] as T } : { done: true, value: undefined };
      },
      async return(): Promise<IteratorResult<T>> {
        state.returned++;
        return { done: true, value: undefined };
      },
    }),
  };
  return state;
}

async function all<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const value of iterable) out.push(value);
  return out;
}

function turnOf(events: TurnEvent[]): Turn {
  return { head: HEAD, events: source(events) };
}

describe('mapEvents()', () => {
  it('mapEvents() maps each event to one value, in order', async () => {
    assert.deepEqual(await all(mapEvents(source([1, 2, 3]), (n) => n * 10)), [10, 20, 30]);
  });

  it('mapEvents() flattens arrays, skips undefined and empty arrays', async () => {
    const mapped = mapEvents(source([1, 2, 3, 4]), (n) => {
      if (n === 1) return ['a', 'b'];
      if (n === 2) return undefined;
      if (n === 3) return [];
      return 'c';
    });
    assert.deepEqual(await all(mapped), ['a', 'b', 'c']);
  });

  it('mapEvents() yields arrays of one value at a time, pulling the source only when they are used up', async () => {
    const events = source([1, 2]);
    const iterator = mapEvents(events, (n) => [n, n])[Symbol.asyncIterator]();
    assert.deepEqual((await iterator.next()).value, 1);
    assert.deepEqual((await iterator.next()).value, 1);
    assert.equal(events.pulled, 1);
    assert.deepEqual((await iterator.next()).value, 2);
    assert.equal(events.pulled, 2);
  });

  it('mapEvents() return() reaches the source even before the first next()', async () => {
    const events = source([1, 2]);
    const iterator = mapEvents(events, (n) => n)[Symbol.asyncIterator]();
    assert.deepEqual(await iterator.return?.(), { done: true, value: undefined });
    assert.equal(events.returned, 1);
    assert.equal(events.pulled, 0);
  });

  it('mapEvents() reaches the source when a for-await loop breaks', async () => {
    const events = source([1, 2, 3]);
    for await (const value of mapEvents(events, (n) => n)) if (value === 1) break;
    assert.equal(events.returned, 1);
  });
});

describe('collect()', () => {
  it('collect() joins the deltas and returns the head, finish reason and usage', async () => {
    const usage = { promptTokens: 3, completionTokens: 2 };
    const answer = await collect(
      turnOf([
        { type: 'started', head: HEAD },
        { type: 'delta', text: 'Hel', offset: 0 },
        { type: 'delta', text: 'lo', offset: 3 },
        { type: 'finished', finishReason: 'stop', usage },
      ]),
    );
    assert.deepEqual(answer, { head: HEAD, text: 'Hello', finishReason: 'stop', usage });
  });

  it('collect() rejects with the AppError of a failed turn', async () => {
    const error = new AppError('UPSTREAM_TIMEOUT');
    const turn = turnOf([
      { type: 'delta', text: 'Hel', offset: 0 },
      { type: 'failed', error },
    ]);
    await assert.rejects(collect(turn), (err) => err === error);
  });

  it('collect() rejects with UPSTREAM_ERROR when the events end without a finish', async () => {
    await assert.rejects(collect(turnOf([{ type: 'delta', text: 'Hel', offset: 0 }])), { code: 'UPSTREAM_ERROR' });
  });

  it('collect() reads events to their end (a stored answer is saved by then) and keeps nothing after', async () => {
    const turn = turnOf([
      { type: 'finished', finishReason: null, usage: undefined },
      { type: 'delta', text: 'late', offset: 0 },
    ]);
    const answer = await collect(turn);
    assert.equal(answer.text, '');
    assert.equal(answer.finishReason, null);
    const events = turn.events as ReturnType<typeof source>;
    assert.equal(events.pulled, 3, 'read until the source said done');
  });
});
