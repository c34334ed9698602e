// What a client and the database see when the upstream fails, the client leaves, the identity
// opens too many streams, or the server drains: real sockets, the real SDK, the fake upstream.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  type ChatHarness,
  messagesAfterShutdown,
  openStream,
  readEvents,
  type SseFrame,
  startChat,
  storedAnswer,
  waitFor,
} from '../support/chat.ts';
import { UPSTREAM_SECRET_DETAIL } from '../support/fake-upstream.ts';

const TIMEOUT_MS = 1000;
const IDLE_TIMEOUT_MS = 800;
const SLOW = { kind: 'slow', chunks: Array.from({ length: 40 }, (_, i) => `w${i} `), chunkDelayMs: 50 } as const;

function conversationOf(frames: SseFrame[]): string {
  const start = frames.find((f) => f.event === 'start');
  assert.ok(start !== undefined, 'the stream started');
  return (start.data as { conversationId: string }).conversationId;
}

/** Resolves when the server holds no slot, no turn, no upstream request and no checked-out database client. */
async function settled(h: ChatHarness): Promise<void> {
  const { pool } = h.server.db;
  await waitFor('the server to settle', 3_000, () => {
    const up = h.server.upstream.stats();
    const quiet =
      h.server.slots.inUse() === 0 &&
      h.server.chat.active() === 0 &&
      up.running === 0 &&
      up.pending === 0 &&
      pool.waitingCount === 0 &&
      pool.totalCount - pool.idleCount === 0;
    return quiet ? true : undefined;
  });
}

describe('POST /v1/chat when the upstream fails', () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat({
      UPSTREAM_TIMEOUT_MS: String(TIMEOUT_MS),
      UPSTREAM_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS),
      MAX_CONCURRENT_STREAMS_PER_KEY: '1000',
      // The client leaving stops the answer here (the default lets it finish: test/chat/resume.test.ts).
      ANSWER_ON_DISCONNECT: 'abort',
    });
  });
  after(() => h.close());

  it('answers an upstream 500 with 502 UPSTREAM_ERROR and none of the upstream text', async () => {
    h.fake.queue({ kind: 'status', status: 500 });
    const res = await h.chat({ message: 'Break please' });
    assert.equal(res.status, 502);
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    const text = await res.text();
    assert.equal(text.includes(UPSTREAM_SECRET_DETAIL), false);
    assert.equal(text.includes('server_error'), false);
    const problem = JSON.parse(text) as Record<string, unknown>;
    assert.deepEqual(Object.keys(problem).sort(), ['code', 'requestId', 'status', 'title', 'type']);
    assert.equal(problem['code'], 'UPSTREAM_ERROR');
  });

  it('stores the user message and an error answer when the upstream fails before the stream', async () => {
    h.fake.queue({ kind: 'status', status: 500 });
    const owned = await h.mintKey();
    const res = await h.chat({ message: 'Kept anyway' }, { key: owned });
    assert.equal(res.status, 502);
    const list = (await (await h.call('GET', '/v1/conversations', owned)).json()) as {
      conversations: Array<{ id: string }>;
    };
    const id = list.conversations[0]?.id ?? '';
    const answer = await storedAnswer(h.server.db.pool, id);
    assert.deepEqual([answer.status, answer.error_code, answer.content], ['error', 'UPSTREAM_ERROR', '']);
  });

  it('answers an upstream 429 with 503 UPSTREAM_UNAVAILABLE and its Retry-After', async () => {
    h.fake.queue({
      kind: 'status',
      status: 429,
      retryAfter: '7',
      body: {
        error: { message: `Slow down ${UPSTREAM_SECRET_DETAIL}`, type: 'requests', code: 'rate_limit_exceeded' },
      },
    });
    const res = await h.chat({ message: 'Too fast' });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '7');
    const text = await res.text();
    assert.equal(text.includes(UPSTREAM_SECRET_DETAIL), false);
    assert.equal((JSON.parse(text) as { code: string }).code, 'UPSTREAM_UNAVAILABLE');
  });

  it('answers a hung upstream with 504 UPSTREAM_TIMEOUT within the timeout and closes the upstream call', async () => {
    h.fake.queue({ kind: 'hang' });
    const index = h.fake.requests.length;
    const started = Date.now();
    const res = await h.chat({ message: 'Hello?' });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 504);
    assert.equal(((await res.json()) as { code: string }).code, 'UPSTREAM_TIMEOUT');
    assert.ok(elapsed >= TIMEOUT_MS - 50 && elapsed < TIMEOUT_MS + 2_000, `answered after ${elapsed} ms`);
    await h.fake.waitForClose(index, 1_000);
  });

  it('a stall gets event: error UPSTREAM_TIMEOUT within the idle timeout; partial text stored as error', async () => {
    h.fake.queue({ kind: 'stall', afterChunks: 2 });
    const started = Date.now();
    const frames = await readEvents(await h.chat({ message: 'Stall' }));
    const elapsed = Date.now() - started;
    assert.deepEqual(
      frames.map((f) => f.event),
      ['start', 'delta', 'delta', 'error'],
    );
    assert.equal((frames[3]?.data as { code: string }).code, 'UPSTREAM_TIMEOUT');
    assert.ok(elapsed >= IDLE_TIMEOUT_MS - 50 && elapsed < IDLE_TIMEOUT_MS + 2_000, `ended after ${elapsed} ms`);
    const answer = await storedAnswer(h.server.db.pool, conversationOf(frames));
    assert.deepEqual([answer.status, answer.error_code, answer.content], ['error', 'UPSTREAM_TIMEOUT', 'Hello']);
  });

  it('an upstream socket reset gets event: error UPSTREAM_ERROR; partial text stored as error', async () => {
    h.fake.queue({ kind: 'reset', afterChunks: 1 });
    const frames = await readEvents(await h.chat({ message: 'Reset' }));
    assert.deepEqual(
      frames.map((f) => f.event),
      ['start', 'delta', 'error'],
    );
    assert.deepEqual(Object.keys(frames[2]?.data as object).sort(), ['code', 'requestId']);
    assert.equal((frames[2]?.data as { code: string }).code, 'UPSTREAM_ERROR');
    const answer = await storedAnswer(h.server.db.pool, conversationOf(frames));
    assert.deepEqual([answer.status, answer.content], ['error', 'Hel']);
  });

  it('ends a stream of invalid SSE with event: error UPSTREAM_ERROR and stores it as error', async () => {
    h.fake.queue({ kind: 'invalid-sse' });
    const frames = await readEvents(await h.chat({ message: 'Garbage' }));
    assert.equal(frames.at(-1)?.event, 'error');
    assert.equal((frames.at(-1)?.data as { code: string }).code, 'UPSTREAM_ERROR');
    assert.equal(
      frames.some((f) => f.event === 'done'),
      false,
    );
    const answer = await storedAnswer(h.server.db.pool, conversationOf(frames));
    assert.equal(answer.status, 'error');
  });

  it('leaves no upstream request, pool client, slot or turn behind after 200 aborts in a row', async () => {
    const first = h.fake.requests.length;
    const runs = 200;
    const tag = randomUUID().slice(0, 8);
    for (let i = 0; i < runs; i++) {
      // Alternate a flowing stream and a silent one, and the moment of leaving.
      h.fake.queue(
        i % 2 === 0
          ? { kind: 'slow', chunks: Array.from({ length: 100 }, () => 'x'), chunkDelayMs: 5 }
          : { kind: 'stall', afterChunks: 1 },
      );
      const stream = await openStream(h.server.url, h.key, { message: `Abort ${tag} ${i}` });
      assert.equal(stream.res.statusCode, 200);
      await stream.next();
      if (i % 4 < 2) await stream.next();
      stream.abort();
    }
    await settled(h);
    await waitFor('the fake upstream to see every request closed', 2_000, () =>
      h.fake.requests.slice(first).every((r) => r.closedAt !== undefined) ? true : undefined,
    );
    assert.equal(h.fake.requests.length - first, runs);
    assert.equal(h.fake.requests.slice(first).filter((r) => r.closedEarly).length, runs);
    const { rows } = await h.server.db.pool.query<{ status: string; n: number }>(
      `SELECT m.status, count(*)::int AS n FROM messages m JOIN conversations c ON c.id = m.conversation_id
       WHERE m.role = 'assistant' AND c.title LIKE $1 GROUP BY m.status`,
      [`Abort ${tag} %`],
    );
    assert.deepEqual(rows, [{ status: 'incomplete', n: runs }]);
  });
});

describe('POST /v1/chat when the client leaves', () => {
  // Upstream deadlines far beyond the test: only the client leaving (or a cancel) can end the upstream request.
  const DEADLINES = { UPSTREAM_TIMEOUT_MS: '30000', UPSTREAM_IDLE_TIMEOUT_MS: '30000' };
  let abort: ChatHarness;
  let finish: ChatHarness;
  before(async () => {
    abort = await startChat({ ...DEADLINES, ANSWER_ON_DISCONNECT: 'abort' });
    finish = await startChat({ ...DEADLINES, ANSWER_ON_DISCONNECT: 'finish' });
  });
  after(async () => {
    await abort?.close();
    await finish?.close();
  });

  /** Starts an answer whose upstream sends one chunk and then stays silent, reads that chunk and leaves. */
  async function leaveAfterOneChunk(h: ChatHarness): Promise<{ index: number; conversationId: string }> {
    // One chunk and then silence: no later chunk can make the relay notice the closed socket.
    h.fake.queue({ kind: 'stall', afterChunks: 1 });
    const index = h.fake.requests.length;
    const stream = await openStream(h.server.url, h.key, { message: 'Start and wait' });
    const start = await stream.next();
    const first = await stream.next();
    assert.deepEqual([first?.event, first?.data], ['delta', { text: 'Hel' }]);
    stream.abort();
    return { index, conversationId: (start?.data as { conversationId: string }).conversationId };
  }

  it('with ANSWER_ON_DISCONNECT=abort closes a silent upstream ≤ 1 s after the abort, stored incomplete', async () => {
    const { index, conversationId } = await leaveAfterOneChunk(abort);
    await abort.fake.waitForClose(index, 1_000);
    assert.equal(abort.fake.requests[index]?.closedEarly, true);
    const answer = await storedAnswer(abort.server.db.pool, conversationId, 2_000);
    assert.deepEqual([answer.status, answer.error_code, answer.content], ['incomplete', null, 'Hel']);
  });

  it('with ANSWER_ON_DISCONNECT=finish keeps a silent upstream open after the client left, till a cancel', async () => {
    const { index, conversationId } = await leaveAfterOneChunk(finish);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    assert.equal(finish.fake.requests[index]?.closedAt, undefined, 'the answer outlives its client');
    assert.equal(finish.server.chat.active(), 1);
    const res = await finish.call('POST' as 'GET', `/v1/conversations/${conversationId}/cancel`);
    assert.equal(res.status, 204);
    await finish.fake.waitForClose(index, 1_000);
    await waitFor('the answer to be stored', 2_000, async () => {
      const answer = await storedAnswer(finish.server.db.pool, conversationId);
      return answer.status === 'incomplete' && answer.error_code === 'CANCELLED' ? answer : undefined;
    });
  });
});

describe('POST /v1/chat with MAX_CONCURRENT_STREAMS_PER_KEY=2', () => {
  let h: ChatHarness;
  before(async () => {
    // Slots come back when a client leaves only when its leaving stops the answer.
    h = await startChat({ MAX_CONCURRENT_STREAMS_PER_KEY: '2', ANSWER_ON_DISCONNECT: 'abort' });
  });
  after(() => h.close());

  it('refuses one identity a third concurrent stream with 429 TOO_MANY_STREAMS, and not another identity', async () => {
    h.fake.queue(SLOW, SLOW, SLOW);
    const streams = [
      await openStream(h.server.url, h.key, { message: 'One' }),
      await openStream(h.server.url, h.key, { message: 'Two' }),
    ];
    try {
      const third = await h.chat({ message: 'Three' });
      assert.equal(third.status, 429);
      assert.equal(((await third.json()) as { code: string }).code, 'TOO_MANY_STREAMS');
      const other = await openStream(h.server.url, await h.mintKey(), { message: 'Someone else' });
      assert.equal(other.res.statusCode, 200);
      streams.push(other);
    } finally {
      for (const s of streams) s.abort();
    }
    await settled(h);
  });

  it('gives slots back after aborts, so the identity can stream again', async () => {
    h.fake.queue(SLOW, SLOW);
    for (const s of [
      await openStream(h.server.url, h.key, { message: 'One' }),
      await openStream(h.server.url, h.key, { message: 'Two' }),
    ]) {
      await s.next();
      s.abort();
    }
    await waitFor('the slots to come back', 2_000, () => (h.server.slots.inUse() === 0 ? true : undefined));
    const again = await h.chat({ message: 'Again' });
    assert.equal(again.status, 200);
    assert.equal((await readEvents(again)).at(-1)?.event, 'done');
  });
});

describe('POST /v1/chat during a drain', () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat();
  });
  after(() => h.close());

  it('streams on through the grace period, then ends with error SHUTTING_DOWN and stores it incomplete', async () => {
    const graceMs = 500;
    h.fake.queue(SLOW);
    const stream = await openStream(h.server.url, h.key, { message: 'Keep talking' });
    const start = await stream.next();
    assert.equal((await stream.next())?.event, 'delta');
    const started = performance.now();
    const shutdown = h.server.shutdown(graceMs);
    const frames: SseFrame[] = [];
    for (let f = await stream.next(); f !== undefined; f = await stream.next()) frames.push(f);
    const endedMs = performance.now() - started;
    await shutdown;
    const elapsed = performance.now() - started;
    // SLOW sends a delta every 50 ms for 2 s: a drain that honours the grace relays several before the cut.
    const deltas = frames.filter((f) => f.event === 'delta').length;
    assert.ok(deltas >= 3, `${deltas} deltas during the grace period`);
    assert.ok(endedMs >= graceMs - 20, `the stream ended ${Math.round(endedMs)} ms into a ${graceMs} ms grace`);
    assert.equal(frames.at(-1)?.event, 'error');
    assert.deepEqual(Object.keys(frames.at(-1)?.data as object).sort(), ['code', 'requestId']);
    assert.equal((frames.at(-1)?.data as { code: string }).code, 'SHUTTING_DOWN');
    assert.ok(elapsed < graceMs + 1_000, `drained after ${Math.round(elapsed)} ms`);
    const messages = await messagesAfterShutdown(h.server, (start?.data as { conversationId: string }).conversationId);
    const answer = messages.find((m) => m.role === 'assistant');
    assert.equal(answer?.status, 'incomplete');
    assert.equal(answer?.error_code, 'SHUTTING_DOWN');
    assert.ok((answer?.content.length ?? 0) > 0, 'the text streamed so far is kept');
  });
});
