// Answers that outlive their connection: ids on deltas, resume on the same or another instance,
// cancel from anywhere, and a listener that loses its database session.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import {
  CHAT_ENV,
  type ChatHarness,
  mintKey,
  type OpenStream,
  openStream,
  type SseFrame,
  sseFrames,
  startChat,
  storedAnswer,
  waitFor,
} from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { type RoundRobinProxy, startRoundRobinProxy } from '../support/round-robin-proxy.ts';
import { startTestServer, type TestServer } from '../support/server.ts';

const WORDS = Array.from({ length: 30 }, (_, i) => `w${i} `);
const SLOW = { kind: 'slow', chunks: WORDS, chunkDelayMs: 40 } as const;
const FULL = WORDS.join('');

/** GET …/stream on its own socket: 204 or an SSE stream. */
function resumeStream(
  baseUrl: string,
  key: string,
  conversationId: string,
  headers: Record<string, string> = {},
  query = '',
) {
  return new Promise<{ status: number; stream: OpenStream }>((resolve, reject) => {
    const req = request(`${baseUrl}/v1/conversations/${conversationId}/stream${query}`, {
      agent: false,
      headers: { authorization: `Bearer ${key}`, ...headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      req.on('error', () => {});
      res.on('error', () => {});
      const frames = sseFrames(res);
      const next = async (): Promise<SseFrame | undefined> => {
        for (;;) {
          const step = await frames.next();
          if (step.done === true) return undefined;
          if (step.value.event !== undefined) return step.value;
        }
      };
      resolve({ status: res.statusCode ?? 0, stream: { res, next, abort: () => req.destroy() } });
    });
    req.end();
  });
}

/** Every frame left, until the stream ends. */
async function rest(stream: OpenStream): Promise<SseFrame[]> {
  const frames: SseFrame[] = [];
  for (let f = await stream.next(); f !== undefined; f = await stream.next()) frames.push(f);
  return frames;
}

const textOf = (frames: SseFrame[]): string =>
  frames.flatMap((f) => (f.event === 'delta' ? [(f.data as { text: string }).text] : [])).join('');

/** Reads a new answer up to and including its third delta, then leaves; returns what it saw. */
async function readThreeAndLeave(baseUrl: string, key: string) {
  const stream = await openStream(baseUrl, key, { message: 'Tell me thirty words' });
  const start = (await stream.next()) as SseFrame;
  const deltas = [await stream.next(), await stream.next(), await stream.next()] as SseFrame[];
  stream.abort();
  const conversationId = (start.data as { conversationId: string }).conversationId;
  return { conversationId, deltas, lastId: deltas.at(-1)?.id as string };
}

describe('resumable answers on one instance', () => {
  let h: ChatHarness;

  before(async () => {
    h = await startChat();
  });
  after(() => h.close());

  it('POST /v1/chat gives every delta the id <messageId>:<offset of its first character>', async () => {
    h.fake.queue({ kind: 'normal', chunks: ['Hel', 'lo', ' world'] });
    const stream = await openStream(h.server.url, h.key, { message: 'Hi' });
    const frames = [(await stream.next()) as SseFrame, ...(await rest(stream))];
    const messageId = (frames[0]?.data as { messageId: string }).messageId;
    assert.deepEqual(
      frames.filter((f) => f.event === 'delta').map((f) => f.id),
      [`${messageId}:0`, `${messageId}:3`, `${messageId}:5`],
    );
  });

  it('an answer whose client leaves runs to its end and is stored complete', async () => {
    h.fake.queue(SLOW);
    const index = h.fake.requests.length;
    const { conversationId } = await readThreeAndLeave(h.server.url, h.key);
    await h.fake.waitForClose(index, 5_000);
    assert.equal(h.fake.requests[index]?.finished, true, 'the upstream ran to its end');
    const stored = await storedAnswer(h.server.db.pool, conversationId, 5_000);
    await waitFor('the answer to be stored', 5_000, async () =>
      (await storedAnswer(h.server.db.pool, conversationId)).status === 'complete' ? true : undefined,
    );
    assert.ok(stored !== undefined);
    assert.equal((await storedAnswer(h.server.db.pool, conversationId)).content, FULL);
  });

  it('GET …/stream with Last-Event-ID sends exactly the rest: no gap, no duplicate', async () => {
    h.fake.queue(SLOW);
    const { conversationId, deltas, lastId } = await readThreeAndLeave(h.server.url, h.key);
    const { status, stream } = await resumeStream(h.server.url, h.key, conversationId, { 'last-event-id': lastId });
    assert.equal(status, 200);
    const frames = await rest(stream);
    assert.equal(frames[0]?.event, 'start');
    assert.equal(frames.at(-1)?.event, 'done');
    assert.equal(textOf(deltas) + textOf(frames), FULL);
    assert.equal((await storedAnswer(h.server.db.pool, conversationId)).content, FULL);
  });

  it('GET …/stream?after=<offset> resumes after that delta, and without either from the start', async () => {
    h.fake.queue(SLOW);
    const { conversationId, deltas, lastId } = await readThreeAndLeave(h.server.url, h.key);
    const offset = lastId.split(':')[1] as string;
    const fromAfter = await resumeStream(h.server.url, h.key, conversationId, {}, `?after=${offset}`);
    const fromStart = await resumeStream(h.server.url, h.key, conversationId);
    assert.equal(textOf(deltas) + textOf(await rest(fromAfter.stream)), FULL);
    assert.equal(textOf(await rest(fromStart.stream)), FULL);
  });

  it('GET …/stream answers 204 once the answer has ended, 404 to another owner and for a bad id', async () => {
    const res = await h.chat({ message: 'Short', stream: false });
    const { conversationId } = (await res.json()) as { conversationId: string };
    assert.equal((await resumeStream(h.server.url, h.key, conversationId)).status, 204);
    const stranger = await mintKey(h.server.db.pool);
    assert.equal((await resumeStream(h.server.url, stranger, conversationId)).status, 404);
    const bad = await resumeStream(h.server.url, h.key, conversationId, { 'last-event-id': 'nope' });
    assert.equal(bad.status, 400);
  });

  it('POST …/cancel stops the live answer within 1 s: the reader gets CANCELLED, the row is incomplete', async () => {
    h.fake.queue({ kind: 'slow', chunks: WORDS, chunkDelayMs: 200 });
    const index = h.fake.requests.length;
    const stream = await openStream(h.server.url, h.key, { message: 'Long one' });
    const start = (await stream.next()) as SseFrame;
    await stream.next();
    const conversationId = (start.data as { conversationId: string }).conversationId;
    const stranger = await mintKey(h.server.db.pool);
    assert.equal((await h.call('POST' as 'GET', `/v1/conversations/${conversationId}/cancel`, stranger)).status, 404);
    const cancelledAt = performance.now();
    assert.equal((await h.call('POST' as 'GET', `/v1/conversations/${conversationId}/cancel`)).status, 204);
    const frames = await rest(stream);
    assert.deepEqual((frames.at(-1)?.data as { code: string }).code, 'CANCELLED');
    assert.ok((await h.fake.waitForClose(index, 1_000)) < 1_000);
    assert.ok(performance.now() - cancelledAt < 1_000);
    const stored = await storedAnswer(h.server.db.pool, conversationId);
    assert.deepEqual([stored.status, stored.error_code], ['incomplete', 'CANCELLED']);
    assert.equal((await h.call('POST' as 'GET', `/v1/conversations/${conversationId}/cancel`)).status, 204);
  });
});

describe('a resumed stream and REQUEST_TIMEOUT_MS', () => {
  let h: ChatHarness;
  before(async () => {
    h = await startChat({
      REQUEST_TIMEOUT_MS: '1000',
      HEADERS_TIMEOUT_MS: '1000',
      UPSTREAM_TIMEOUT_MS: '5000',
      UPSTREAM_IDLE_TIMEOUT_MS: '5000',
    });
  });
  after(() => h.close());

  it('GET …/stream runs past the request deadline to its done frame, like the stream it resumes', async () => {
    h.fake.queue({ kind: 'slow', chunks: Array.from({ length: 20 }, (_, i) => `w${i} `), chunkDelayMs: 100 });
    const first = await openStream(h.server.url, h.key, { message: 'Long' });
    const start = (await first.next()) as SseFrame;
    const delta = (await first.next()) as SseFrame;
    first.abort();
    const { conversationId } = start.data as { conversationId: string };
    const resumed = await resumeStream(h.server.url, h.key, conversationId, { 'last-event-id': delta.id as string });
    assert.equal(resumed.status, 200);
    const events: Array<string | undefined> = [];
    for (let frame = await resumed.stream.next(); frame !== undefined; frame = await resumed.stream.next()) {
      events.push(frame.event);
    }
    assert.equal(events.at(-1), 'done', `${events.length} frames, the last ${events.at(-1)}`);
  });
});

describe('resumable answers across two instances', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let one: ChatHarness;
  let two: TestServer;
  let key: string;
  let drop: () => Promise<void>;
  let databaseUrl: string;
  // A load balancer in front of both: each new connection goes to the next instance.
  let balancer: RoundRobinProxy;
  let balancerUrl: string;

  before(async () => {
    const scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    drop = scratch.drop;
    databaseUrl = scratch.url;
    one = await startChat({ DATABASE_URL: scratch.url });
    two = await startTestServer({ ...CHAT_ENV, DATABASE_URL: scratch.url, OPENAI_BASE_URL: one.fake.url });
    key = one.key;
    const targets = [one.server.url, two.url].map((url) => ({ host: '127.0.0.1', port: Number(new URL(url).port) }));
    balancer = await startRoundRobinProxy(targets);
    balancerUrl = `http://${balancer.host}:${balancer.port}`;
  });
  after(async () => {
    await balancer?.close();
    await two?.close();
    await one?.close();
    await drop?.();
  });

  it('a client that left instance 1 resumes via the load balancer on instance 2 with exactly the rest', async () => {
    one.fake.queue(SLOW);
    const [toOne, toTwo] = balancer.connectionsPerTarget();
    const { conversationId, deltas, lastId } = await readThreeAndLeave(balancerUrl, key);
    const { status, stream } = await resumeStream(balancerUrl, key, conversationId, { 'last-event-id': lastId });
    assert.deepEqual(balancer.connectionsPerTarget(), [(toOne ?? 0) + 1, (toTwo ?? 0) + 1], 'one connection each');
    assert.equal(status, 200);
    const frames = await rest(stream);
    assert.equal(frames.at(-1)?.event, 'done');
    const stored = await storedAnswer(one.server.db.pool, conversationId);
    assert.equal(stored.content, FULL, 'the answer itself is whole');
    assert.equal(textOf(deltas) + textOf(frames), FULL);
    const ids = new Set([...deltas, ...frames].flatMap((f) => (f.id === undefined ? [] : [f.id])));
    assert.equal(ids.size, WORDS.length, 'every part has one id on both instances');
  });

  it('an answer that finished while nobody was connected: instance 2 answers 204 and the row is complete', async () => {
    one.fake.queue({ kind: 'slow', chunks: ['a', 'b', 'c', 'd', 'e'], chunkDelayMs: 30 });
    const { conversationId } = await readThreeAndLeave(one.server.url, key);
    await waitFor('the answer to be stored', 5_000, async () =>
      (await storedAnswer(one.server.db.pool, conversationId)).status === 'complete' ? true : undefined,
    );
    assert.equal((await resumeStream(two.url, key, conversationId)).status, 204);
  });

  it('POST …/cancel on instance 2 stops the answer running on instance 1 within 1 s', async () => {
    one.fake.queue({ kind: 'slow', chunks: WORDS, chunkDelayMs: 200 });
    const index = one.fake.requests.length;
    const { conversationId } = await readThreeAndLeave(one.server.url, key);
    const cancelledAt = performance.now();
    const res = await fetch(`${two.url}/v1/conversations/${conversationId}/cancel`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}` },
    });
    assert.equal(res.status, 204);
    assert.ok((await one.fake.waitForClose(index, 1_000)) < 1_000, 'the upstream request is closed');
    assert.ok(performance.now() - cancelledAt < 1_000);
    const stored = await storedAnswer(one.server.db.pool, conversationId, 2_000);
    await waitFor('the row to be stored', 2_000, async () =>
      (await storedAnswer(one.server.db.pool, conversationId)).status === 'incomplete' &&
      (await storedAnswer(one.server.db.pool, conversationId)).error_code === 'CANCELLED'
        ? true
        : undefined,
    );
    assert.ok(stored !== undefined);
  });

  it('a resume whose listening session is killed ends with an error frame; resuming again gets the rest', async () => {
    // Slow enough to still be live after the listeners come back, even on a loaded machine.
    one.fake.queue({ kind: 'slow', chunks: WORDS, chunkDelayMs: 200 });
    const { conversationId, deltas, lastId } = await readThreeAndLeave(one.server.url, key);
    const first = await resumeStream(two.url, key, conversationId, { 'last-event-id': lastId });
    const got: SseFrame[] = [];
    for (let f = await first.stream.next(); f?.event === 'start' || got.length < 2; f = await first.stream.next()) {
      if (f?.event === 'delta') got.push(f);
    }
    const admin = new pg.Client({ connectionString: databaseUrl });
    await admin.connect();
    try {
      const killed = await admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'chat-server-listener' AND datname = current_database() AND pid <> pg_backend_pid()`,
      );
      assert.ok((killed.rowCount ?? 0) >= 1);
    } finally {
      await admin.end();
    }
    const tail = await rest(first.stream);
    assert.equal((tail.at(-1)?.data as { code: string }).code, 'RESUME_INTERRUPTED');
    const seen = [...deltas, ...got, ...tail.filter((f) => f.event === 'delta')];
    const last = seen.at(-1)?.id as string;
    const again = await waitFor('a resume to be accepted again', 5_000, async () => {
      const attempt = await resumeStream(two.url, key, conversationId, { 'last-event-id': last });
      if (attempt.status === 200) return attempt;
      attempt.stream.abort();
      return undefined;
    });
    const frames = await rest(again.stream);
    assert.equal(frames.at(-1)?.event, 'done');
    assert.equal(textOf(seen) + textOf(frames), FULL);
  });
});
