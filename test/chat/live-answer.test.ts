// The live answer on its own: parts, offsets, readers from any offset, a mirror's parts, and the end.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { cutAt, type FinalEvent, LiveAnswer, MAX_PART_CHARS } from '../../lib/chat/live-answer.ts';
import type { TurnEvent, TurnHead } from '../../lib/chat/turn.ts';
import { AppError } from '../../lib/errors.ts';

const HEAD: TurnHead = {
  conversationId: 'c0ffee00-0000-4000-8000-000000000001',
  messageId: 'm',
  agent: 'a',
  createdSeconds: 1,
};
const FINISHED: FinalEvent = {
  type: 'finished',
  finishReason: 'stop',
  usage: { promptTokens: 1, completionTokens: 2 },
};
const GRIN = '\u{1F600}'; // two UTF-16 units: a surrogate pair

/** An answer holding `parts`, each appended on its own (one part each while under MAX_PART_CHARS). */
function answerOf(...parts: string[]): LiveAnswer {
  const answer = new LiveAnswer(HEAD);
  for (const part of parts) answer.append(part);
  return answer;
}

/** Every event a reader gets from `from` to the end. */
async function readAll(answer: LiveAnswer, from: number): Promise<TurnEvent[]> {
  const events: TurnEvent[] = [];
  for await (const event of answer.read(from)) events.push(event);
  return events;
}

/** Whether `promise` has settled once pending callbacks have run. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await tick();
  return done;
}

describe('cutAt()', () => {
  it('cutAt() keeps text within the length whole and cuts longer text at the length', () => {
    assert.equal(cutAt('abc', 3), 'abc');
    assert.equal(cutAt('abcdef', 4), 'abcd');
    assert.equal(cutAt('abc', 0), '');
    assert.equal(cutAt('abc', -1), '');
  });

  it('cutAt() ends one unit early rather than inside a surrogate pair', () => {
    assert.equal(cutAt(`ab${GRIN}c`, 3), 'ab');
    assert.equal(cutAt(`ab${GRIN}c`, 4), `ab${GRIN}`);
  });
});

describe('LiveAnswer.append()', () => {
  it(`append() splits text into parts of at most ${MAX_PART_CHARS} characters with their start offsets`, () => {
    const answer = answerOf('x'.repeat(2 * MAX_PART_CHARS + 5));
    assert.deepEqual(
      answer.partsFrom(0).map(([start, text]) => [start, text.length]),
      [
        [0, MAX_PART_CHARS],
        [MAX_PART_CHARS, MAX_PART_CHARS],
        [2 * MAX_PART_CHARS, 5],
      ],
    );
    assert.equal(answer.length, 2 * MAX_PART_CHARS + 5);
  });

  it('append() never ends a part inside a surrogate pair', () => {
    const text = `${'x'.repeat(MAX_PART_CHARS - 1)}${GRIN}${'y'.repeat(MAX_PART_CHARS)}`;
    const answer = answerOf(text);
    const parts = answer.partsFrom(0);
    assert.equal(parts[0]?.[1], 'x'.repeat(MAX_PART_CHARS - 1));
    assert.equal(parts[1]?.[1].startsWith(GRIN), true);
    for (const [, part] of parts) assert.ok(part.length <= MAX_PART_CHARS, `a part of ${part.length}`);
    assert.equal(answer.text(), text);
  });

  it('append() of small deltas keeps one part per delta', () => {
    const answer = answerOf('Hel', 'lo', ' world');
    assert.deepEqual(answer.partsFrom(0), [
      [0, 'Hel'],
      [3, 'lo'],
      [5, ' world'],
    ]);
    assert.equal(answer.text(), 'Hello world');
  });
});

describe('LiveAnswer offsets', () => {
  const answer = answerOf('Hel', 'lo', ' world');

  it('textFrom() returns the text from a part start, from inside a part, and nothing at or past the end', () => {
    assert.equal(answer.textFrom(0), 'Hello world');
    assert.equal(answer.textFrom(3), 'lo world');
    assert.equal(answer.textFrom(4), 'o world');
    assert.equal(answer.textFrom(10), 'd');
    assert.equal(answer.textFrom(11), '');
    assert.equal(answer.textFrom(99), '');
  });

  it('partsFrom() cuts the first part at the offset and keeps the later parts whole', () => {
    assert.deepEqual(answer.partsFrom(4), [
      [4, 'o'],
      [5, ' world'],
    ]);
    assert.deepEqual(answer.partsFrom(5), [[5, ' world']]);
    assert.deepEqual(answer.partsFrom(11), []);
  });

  it('resumeOffset() continues after the part that starts at the offset, else at the offset itself', () => {
    assert.equal(answer.resumeOffset(0), 3, 'after the part at 0');
    assert.equal(answer.resumeOffset(3), 5, 'after the part at 3');
    assert.equal(answer.resumeOffset(5), 11, 'after the last part');
    assert.equal(answer.resumeOffset(4), 4, 'inside a part: at the offset');
    assert.equal(answer.resumeOffset(40), 11, 'past the end: at the end');
  });
});

describe('LiveAnswer.read()', () => {
  it('read(0) yields started, one delta per part with its offset, then the end', async () => {
    const answer = answerOf('Hel', 'lo');
    answer.end(FINISHED);
    assert.deepEqual(await readAll(answer, 0), [
      { type: 'started', head: HEAD },
      { type: 'delta', text: 'Hel', offset: 0 },
      { type: 'delta', text: 'lo', offset: 3 },
      FINISHED,
    ]);
  });

  it('read() from inside a part starts with the rest of that part', async () => {
    const answer = answerOf('Hel', 'lo');
    answer.end(FINISHED);
    const events = await readAll(answer, 1);
    assert.deepEqual(events.slice(1, -1), [
      { type: 'delta', text: 'el', offset: 1 },
      { type: 'delta', text: 'lo', offset: 3 },
    ]);
  });

  it('read() from the end yields started and the end only', async () => {
    const answer = answerOf('Hel', 'lo');
    answer.end(FINISHED);
    assert.deepEqual(await readAll(answer, 5), [{ type: 'started', head: HEAD }, FINISHED]);
  });

  it('read() waits for parts appended later and gets the end after the last of them', async () => {
    const answer = answerOf('a');
    const reader = answer.read(0)[Symbol.asyncIterator]();
    assert.equal((await reader.next()).value?.type, 'started');
    assert.deepEqual((await reader.next()).value, { type: 'delta', text: 'a', offset: 0 });
    const waiting = reader.next();
    assert.equal(await settled(waiting), false, 'nothing new yet');
    answer.append('b');
    answer.append('c');
    answer.end(FINISHED);
    assert.deepEqual((await waiting).value, { type: 'delta', text: 'b', offset: 1 });
    assert.deepEqual((await reader.next()).value, { type: 'delta', text: 'c', offset: 2 });
    assert.deepEqual((await reader.next()).value, FINISHED);
    assert.equal((await reader.next()).done, true);
  });

  it("read() closes only once the end's `stored` promise settles", async () => {
    const answer = answerOf('a');
    const stored = Promise.withResolvers<void>();
    answer.end(FINISHED, stored.promise);
    const reader = answer.read(0)[Symbol.asyncIterator]();
    for (let i = 0; i < 3; i++) await reader.next(); // started, the delta, the end
    const closing = reader.next();
    assert.equal(await settled(closing), false, 'still open while the end is being stored');
    stored.resolve();
    assert.equal((await closing).done, true);
  });

  it('read() closes after a failed store too, and stored() resolves either way', async () => {
    const answer = answerOf('a');
    answer.end({ type: 'failed', error: new AppError('UPSTREAM_ERROR') }, Promise.reject(new Error('db down')));
    const events = await readAll(answer, 0);
    assert.equal(events.at(-1)?.type, 'failed');
    await answer.stored();
  });

  it('read() ends at once after return(), even before the end is known', async () => {
    const answer = answerOf('a');
    const reader = answer.read(0)[Symbol.asyncIterator]();
    await reader.next();
    assert.equal((await reader.return?.())?.done, true);
    assert.equal((await reader.next()).done, true);
  });

  it('end() keeps the first end it is given', async () => {
    const answer = answerOf('a');
    answer.end(FINISHED);
    answer.end({ type: 'failed', error: new AppError('CANCELLED') });
    assert.deepEqual(answer.final, FINISHED);
    assert.deepEqual((await readAll(answer, 0)).at(-1), FINISHED);
  });

  it('changed() resolves at the next append', async () => {
    const answer = answerOf('a');
    const changed = answer.changed();
    assert.equal(await settled(changed), false);
    answer.append('b');
    assert.equal(await settled(changed), true);
  });
});

describe('LiveAnswer as a mirror', () => {
  it("read() from before a mirror's base starts at the base with the part received there", async () => {
    const mirror = new LiveAnswer(HEAD, 500);
    assert.equal(mirror.appendPart(500, 'xyz'), true);
    mirror.end(FINISHED);
    assert.deepEqual(await readAll(mirror, 0), [
      { type: 'started', head: HEAD },
      { type: 'delta', text: 'xyz', offset: 500 },
      FINISHED,
    ]);
    assert.equal(mirror.length, 503);
    assert.equal(mirror.text(), 'xyz', 'a mirror holds the text from its base on');
  });

  it("textFrom() and partsFrom() below a mirror's base give nothing; resumeOffset() answers the base", () => {
    const mirror = new LiveAnswer(HEAD, 500);
    mirror.appendPart(500, 'xyz');
    assert.equal(mirror.textFrom(499), '');
    assert.deepEqual(mirror.partsFrom(10), []);
    assert.equal(mirror.resumeOffset(10), 500);
    assert.equal(mirror.resumeOffset(500), 503);
  });

  it('appendPart() accepts the next part, ignores a duplicate and refuses a gap or an overlap', () => {
    const mirror = new LiveAnswer(HEAD, 10);
    assert.equal(mirror.appendPart(10, 'abc'), true);
    assert.equal(mirror.appendPart(10, 'abc'), true, 'a duplicate is already held');
    assert.equal(mirror.appendPart(11, 'bc'), true, 'so is any piece within it');
    assert.equal(mirror.appendPart(15, 'zz'), false, 'a gap');
    assert.equal(mirror.appendPart(12, 'cde'), false, 'an overlap past the end');
    assert.equal(mirror.appendPart(13, 'de'), true);
    assert.deepEqual(mirror.partsFrom(10), [
      [10, 'abc'],
      [13, 'de'],
    ]);
    assert.equal(mirror.length, 15);
  });

  it('appendPart() wakes a waiting reader', async () => {
    const mirror = new LiveAnswer(HEAD, 0);
    const reader = mirror.read(0)[Symbol.asyncIterator]();
    await reader.next();
    const waiting = reader.next();
    mirror.appendPart(0, 'hi');
    assert.deepEqual((await waiting).value, { type: 'delta', text: 'hi', offset: 0 });
  });
});
