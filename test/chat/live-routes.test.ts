// The live-answer routes on a small app over a real turn engine: resume points, resuming, cancelling.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createPgFanout, type Fanout } from '../../lib/chat/fanout.ts';
import { liveRoutes, resumePoint } from '../../lib/chat/live-routes.ts';
import { createResumer, type ResumePoint } from '../../lib/chat/resume.ts';
import { createTurnEngine, type Turn, type TurnEngine, type TurnEvent } from '../../lib/chat/turn.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import type { Context, Middleware } from '../../lib/http/types.ts';
import { type SseFrame, sseFrames, storedAnswer } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { type Served, serve } from '../support/http.ts';
import { type EngineParts, startEngineParts } from '../support/turn-engine.ts';

const OWNER_HEADER = 'x-test-owner';

/** Names the caller from a header: what auth establishes, without credentials. */
const identify: Middleware = function identifyMiddleware(ctx, next) {
  const owner = ctx.req.headers[OWNER_HEADER];
  if (typeof owner === 'string') ctx.identity = { id: owner, kind: 'key' };
  return next();
};

/** The fields resumePoint() reads: the Last-Event-ID header and the query string. */
function contextWith(lastEventId: string | undefined, rawQuery = ''): Context {
  const headers = lastEventId === undefined ? {} : { 'last-event-id': lastEventId };
  return { req: { headers }, rawQuery } as unknown as Context;
}

async function framesOf(res: Response): Promise<SseFrame[]> {
  assert.equal(res.headers.get('content-type')?.startsWith('text/event-stream'), true);
  const frames: SseFrame[] = [];
  for await (const frame of sseFrames(res.body as ReadableStream<Uint8Array>)) {
    if (frame.event !== undefined) frames.push(frame);
  }
  return frames;
}

/** A stored turn of a new owner on `turns`, its answer streaming from the fake upstream in `chunks`. */
async function startLiveTurn(
  parts: EngineParts,
  turns: TurnEngine,
  chunks: string[],
  chunkDelayMs: number,
): Promise<{ owner: string; turn: Turn }> {
  parts.fake.queue({ kind: 'slow', chunks, chunkDelayMs });
  const owner = `key:${randomUUID()}`;
  const turn = await turns.start({
    identity: { id: owner, kind: 'key' },
    requestId: `req-${randomUUID()}`,
    agent: parts.agent,
    input: { kind: 'stored', message: 'Q', agentNamed: false },
  });
  return { owner, turn };
}

/** Reads a turn's own events up to its first delta, leaving the rest to be read. */
async function firstDelta(events: AsyncIterator<TurnEvent>): Promise<void> {
  for (let step = await events.next(); step.done !== true; step = await events.next()) {
    if (step.value.type === 'delta') return;
  }
  assert.fail('the turn had no delta');
}

/** The rest of a turn's events. */
async function rest(events: AsyncIterator<TurnEvent>): Promise<TurnEvent[]> {
  const out: TurnEvent[] = [];
  for (let step = await events.next(); step.done !== true; step = await events.next()) out.push(step.value);
  return out;
}

describe('resumePoint()', () => {
  it('resumePoint() reads Last-Event-ID as a message id, lower-cased, and an offset', () => {
    const id = randomUUID();
    assert.deepEqual(resumePoint(contextWith(` ${id.toUpperCase()}:42 `, 'after=7')), { messageId: id, offset: 42 });
  });

  it('resumePoint() falls back to ?after without Last-Event-ID, and to the start without either', () => {
    assert.deepEqual(resumePoint(contextWith(undefined, 'after=7')), { offset: 7 });
    assert.deepEqual(resumePoint(contextWith('', 'after=0')), { offset: 0 });
    assert.deepEqual(resumePoint(contextWith(undefined)), {});
  });

  it('resumePoint() refuses a malformed Last-Event-ID or after with 400', () => {
    const id = randomUUID();
    const bad = [
      contextWith(`${id}`),
      contextWith(`${id}:-1`),
      contextWith(`${id}:1234567890123`),
      contextWith(`not-a-uuid:1`),
      contextWith(undefined, 'after=-1'),
      contextWith(undefined, 'after=1.5'),
      contextWith(undefined, 'after=1234567890123'),
    ];
    for (const ctx of bad) {
      assert.throws(() => resumePoint(ctx), { code: 'BAD_REQUEST', status: 400 });
    }
  });
});

describe('liveRoutes()', () => {
  let parts: EngineParts;
  let turns: TurnEngine;
  let served: Served;
  const resumed: Array<{ owner: string; conversationId: string; point: ResumePoint }> = [];

  before(async () => {
    parts = await startEngineParts();
    turns = createTurnEngine(parts.options());
    const { pool } = parts.db;
    const resumer = createResumer({ turns, pool, fanout: undefined, maxAnswerAgeSeconds: 60 });
    const routes = liveRoutes({
      pool,
      turns,
      fanout: undefined,
      resume(owner, conversationId, point) {
        resumed.push({ owner, conversationId, point });
        return resumer(owner, conversationId, point);
      },
    });
    served = await serve(routes, [requestId(), errorHandler(), identify]);
  });
  after(async () => {
    await served?.close();
    parts?.shutdown.abort();
    await turns?.idle();
    await parts?.close();
  });

  /** A stored turn of a new owner, its answer streaming from the fake upstream in `chunks`. */
  function liveTurn(chunks: string[], chunkDelayMs = 40): Promise<{ owner: string; turn: Turn }> {
    return startLiveTurn(parts, turns, chunks, chunkDelayMs);
  }

  function call(method: string, path: string, owner: string, headers: Record<string, string> = {}) {
    return fetch(`${served.url}${path}`, { method, headers: { [OWNER_HEADER]: owner, ...headers } });
  }

  it('GET …/stream resumes a live answer after Last-Event-ID with ids <messageId>:<offset>', async () => {
    const { owner, turn } = await liveTurn(['a', 'b', 'c', 'd', 'e']);
    const { messageId, conversationId } = turn.head;
    await firstDelta(turn.events[Symbol.asyncIterator]());
    const res = await call('GET', `/v1/conversations/${conversationId?.toUpperCase()}/stream`, owner, {
      'last-event-id': `${messageId}:0`,
    });
    const frames = await framesOf(res);
    assert.deepEqual(
      frames.map((f) => f.event),
      ['start', 'delta', 'delta', 'delta', 'delta', 'done'],
    );
    assert.deepEqual(frames[0]?.data, { conversationId, messageId, agent: 'default' });
    assert.deepEqual(
      frames.filter((f) => f.event === 'delta').map((f) => [f.id, (f.data as { text: string }).text]),
      [
        [`${messageId}:1`, 'b'],
        [`${messageId}:2`, 'c'],
        [`${messageId}:3`, 'd'],
        [`${messageId}:4`, 'e'],
      ],
    );
    assert.deepEqual(resumed.at(-1), { owner, conversationId, point: { messageId, offset: 0 } });
  });

  it('GET …/stream answers 204 once the answer has ended: the stored conversation holds it', async () => {
    const { owner, turn } = await liveTurn(['done'], 1);
    for await (const _ of turn.events); // to its end, stored
    const conversationId = turn.head.conversationId as string;
    await storedAnswer(parts.db.pool, conversationId);
    const res = await call('GET', `/v1/conversations/${conversationId}/stream`, owner);
    assert.equal(res.status, 204);
    assert.equal(await res.text(), '');
  });

  it("GET …/stream answers 404 for another owner's conversation, before reading a Last-Event-ID", async () => {
    const { turn } = await liveTurn(['x'], 1);
    const res = await call('GET', `/v1/conversations/${turn.head.conversationId}/stream`, `key:${randomUUID()}`);
    assert.equal(res.status, 404);
    await res.arrayBuffer();
    for await (const _ of turn.events);
  });

  it('GET …/stream answers 404 to a path that is no uuid, 400 to a bad Last-Event-ID, resuming nothing', async () => {
    const before = resumed.length;
    const notUuid = await call('GET', '/v1/conversations/not-a-uuid/stream', 'key:a');
    assert.equal(notUuid.status, 404);
    await notUuid.arrayBuffer();
    const malformed = await call('GET', `/v1/conversations/${randomUUID()}/stream`, 'key:a', { 'last-event-id': 'x' });
    assert.equal(malformed.status, 400);
    await malformed.arrayBuffer();
    assert.equal(resumed.length, before);
  });

  it('POST …/cancel stops the live answer: its reader gets CANCELLED and the row is incomplete', async () => {
    const { owner, turn } = await liveTurn(['a', 'b', 'c', 'd', 'e', 'f'], 100);
    const conversationId = turn.head.conversationId as string;
    const events = turn.events[Symbol.asyncIterator]();
    await firstDelta(events);
    const res = await call('POST', `/v1/conversations/${conversationId}/cancel`, owner);
    assert.equal(res.status, 204);
    const end = (await rest(events)).at(-1);
    assert.equal(end?.type, 'failed');
    assert.equal(end?.type === 'failed' && end.error.code, 'CANCELLED');
    const row = await storedAnswer(parts.db.pool, conversationId);
    assert.deepEqual([row.status, row.error_code], ['incomplete', 'CANCELLED']);
  });

  it('POST …/cancel answers 404 to another owner and leaves the answer running', async () => {
    const { turn } = await liveTurn(['a', 'b', 'c'], 40);
    const conversationId = turn.head.conversationId as string;
    const res = await call('POST', `/v1/conversations/${conversationId}/cancel`, `key:${randomUUID()}`);
    assert.equal(res.status, 404);
    await res.arrayBuffer();
    const events = await rest(turn.events[Symbol.asyncIterator]());
    assert.equal(events.at(-1)?.type, 'finished');
  });

  it('POST …/cancel answers 204 when nothing is live, and 404 for a path that is no uuid', async () => {
    const { owner, turn } = await liveTurn(['x'], 1);
    for await (const _ of turn.events);
    const conversationId = turn.head.conversationId as string;
    await storedAnswer(parts.db.pool, conversationId);
    assert.equal((await call('POST', `/v1/conversations/${conversationId}/cancel`, owner)).status, 204);
    const notUuid = await call('POST', '/v1/conversations/nope/cancel', owner);
    assert.equal(notUuid.status, 404);
    await notUuid.arrayBuffer();
  });
});

describe('liveRoutes() with a fan-out, on PostgreSQL', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let parts: EngineParts;
  let here: TurnEngine;
  let there: TurnEngine;
  const fanouts: Fanout[] = [];
  let served: Served;

  before(async () => {
    parts = await startEngineParts();
    const { pool } = parts.db;
    here = createTurnEngine(parts.options());
    there = createTurnEngine(parts.options());
    const fanoutOf = (): Fanout => {
      const fanout = createPgFanout({ connect: () => new pg.Client(TEST_DATABASE_URL), pool, log: parts.log });
      fanouts.push(fanout);
      return fanout;
    };
    const [local, remote] = [fanoutOf(), fanoutOf()];
    remote.serve(there);
    // Both sessions listen once follow() has resolved on each: nothing sent before then is lost.
    for (const fanout of fanouts) await fanout.follow(randomUUID(), () => {}).then((f) => f.close());
    const resume = createResumer({ turns: here, pool, fanout: local, maxAnswerAgeSeconds: 60 });
    served = await serve(liveRoutes({ pool, turns: here, fanout: local, resume }), [
      requestId(),
      errorHandler(),
      identify,
    ]);
  });
  after(async () => {
    await served?.close();
    for (const fanout of fanouts) await fanout.close();
    parts?.shutdown.abort();
    await here?.idle();
    await there?.idle();
    await parts?.close();
  });

  it('POST …/cancel stops an answer that another instance runs', async () => {
    const { owner, turn } = await startLiveTurn(parts, there, ['a', 'b', 'c', 'd', 'e', 'f'], 100);
    const events = turn.events[Symbol.asyncIterator]();
    await firstDelta(events);
    const res = await fetch(`${served.url}/v1/conversations/${turn.head.conversationId}/cancel`, {
      method: 'POST',
      headers: { [OWNER_HEADER]: owner },
    });
    assert.equal(res.status, 204);
    const end = (await rest(events)).at(-1);
    assert.equal(end?.type === 'failed' && end.error.code, 'CANCELLED');
  });
});
