// Two fan-outs on one PostgreSQL: one serves live answers, the other follows them over LISTEN/NOTIFY.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import pg from 'pg';
import { channelOf, createPgFanout, type Fanout, type RemoteEvent } from '../../lib/chat/fanout.ts';
import { type FinalEvent, LiveAnswer } from '../../lib/chat/live-answer.ts';
import type { TurnHead } from '../../lib/chat/turn.ts';
import { AppError } from '../../lib/errors.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { logLines } from '../support/log-lines.ts';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.ts';

const WAIT_MS = 5_000;
const FINISHED: FinalEvent = {
  type: 'finished',
  finishReason: 'stop',
  usage: { promptTokens: 4, completionTokens: 3 },
};

/** Everything one follower hears, with a way to wait (on the events themselves, not on a timer) for more. */
function listener(): {
  events: RemoteEvent[];
  on: (event: RemoteEvent) => void;
  until(done: number | ((events: RemoteEvent[]) => boolean)): Promise<void>;
} {
  const events: RemoteEvent[] = [];
  const waiters = new Set<{ done: (events: RemoteEvent[]) => boolean; wake: () => void }>();
  return {
    events,
    on(event) {
      events.push(event);
      for (const waiter of waiters) {
        if (waiter.done(events)) {
          waiters.delete(waiter);
          waiter.wake();
        }
      }
    },
    until(done) {
      const check = typeof done === 'number' ? (e: RemoteEvent[]) => e.length >= done : done;
      if (check(events)) return Promise.resolve();
      return new Promise((wake) => waiters.add({ done: check, wake }));
    },
  };
}

/** The text and offsets carried by `parts` events, in arrival order. */
function partsOf(events: RemoteEvent[]): Array<[number, string]> {
  return events.flatMap((e) => (e.type === 'parts' ? e.parts : []));
}

describe('createPgFanout() on PostgreSQL', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let scratch: { url: string; drop(): Promise<void> };
  let proxy: TcpProxy;
  // One connection: notifications leave in the order they are sent, which the ordering tests rely on.
  let servingPool: pg.Pool;
  let followingPool: pg.Pool;
  let serving: Fanout;
  let following: Fanout;
  let lines: string[];
  let log: Logger;
  const live = new Map<string, LiveAnswer>();
  const cancelled: string[] = [];
  // The follower's listening sessions, each with when it ended.
  const sessions: Array<{ client: pg.Client; ended: Promise<void> }> = [];

  before(async () => {
    scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    const target = new URL(scratch.url);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    target.host = `${proxy.host}:${proxy.port}`;
    const proxiedUrl = target.toString();
    lines = [];
    log = createLogger({ level: 'debug', sink: (chunk) => lines.push(chunk) });
    servingPool = new pg.Pool({ connectionString: scratch.url, max: 1 });
    followingPool = new pg.Pool({ connectionString: scratch.url, max: 2 });
    serving = createPgFanout({ connect: () => new pg.Client(scratch.url), pool: servingPool, log });
    // Serving starts once its own session listens on the control channel; follow() waits for that session.
    await serving.follow(randomUUID(), () => {}).then((f) => f.close());
    serving.serve({
      liveById: (messageId) => live.get(messageId),
      cancel(conversationId) {
        cancelled.push(conversationId);
        return 1;
      },
    });
    // The follower's listening session goes through the proxy, so a test can cut it.
    following = createPgFanout({
      connect() {
        const client = new pg.Client(proxiedUrl);
        sessions.push({ client, ended: new Promise((resolve) => client.once('end', () => resolve())) });
        return client;
      },
      pool: followingPool,
      log,
    });
  });
  after(async () => {
    await following?.close();
    await serving?.close();
    await followingPool?.end();
    await servingPool?.end();
    await proxy?.close();
    await scratch?.drop();
  });
  beforeEach(() => proxy.setMode('pass'));

  /** A live answer the serving side runs, holding `parts`. */
  function running(...parts: string[]): LiveAnswer {
    const head: TurnHead = { conversationId: randomUUID(), messageId: randomUUID(), agent: 'a', createdSeconds: 1 };
    const answer = new LiveAnswer(head);
    for (const part of parts) answer.append(part);
    live.set(head.messageId, answer);
    return answer;
  }

  function logged(): Array<Record<string, unknown>> {
    log.flush();
    return logLines(lines.join(''));
  }

  function conversationOf(answer: LiveAnswer): string {
    return answer.head.conversationId as string;
  }

  // What a request from the start of running('Hel', 'lo') hears after its ack.
  const HEL_LO: RemoteEvent = {
    type: 'parts',
    parts: [
      [0, 'Hel'],
      [3, 'lo'],
    ],
  };

  it('channelOf() names a conversation by the hex digits of its uuid, lower case', () => {
    assert.equal(channelOf('0A1B2C3D-0000-4000-8000-00000000ABCD'), 'answer_0a1b2c3d00004000800000000000abcd');
  });

  it('request() gets the ack with its nonce, the parts with offsets, new parts, then the end', async () => {
    const answer = running('Hel', 'lo');
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, undefined, 'nonce-1');
    await heard.until(2);
    answer.append(' world');
    await heard.until(3);
    answer.end(FINISHED);
    await heard.until(4);
    follower.close();
    assert.deepEqual(heard.events, [
      { type: 'ack', nonce: 'nonce-1', from: 0 },
      HEL_LO,
      { type: 'parts', parts: [[5, ' world']] },
      { type: 'end', event: FINISHED, length: 11 },
    ]);
  });

  it('requests for one answer share one publisher: a later one is caught up; each new part goes out once', async () => {
    const answer = running('Hel', 'lo');
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, undefined, 'first');
    await heard.until(2);
    await follower.request(answer.head.messageId, undefined, 'second');
    await heard.until(4);
    answer.append(' world');
    await heard.until(5);
    answer.end(FINISHED);
    await heard.until(6);
    await turn(); // anything a second publisher would send has arrived by now
    follower.close();
    assert.deepEqual(heard.events, [
      { type: 'ack', nonce: 'first', from: 0 },
      HEL_LO,
      { type: 'ack', nonce: 'second', from: 0 },
      HEL_LO,
      { type: 'parts', parts: [[5, ' world']] },
      { type: 'end', event: FINISHED, length: 11 },
    ]);
  });

  it('request() from an offset gets the parts after the part that starts there', async () => {
    const answer = running('Hel', 'lo', ' world');
    answer.end(FINISHED);
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, 3, 'nonce-2');
    await heard.until(3);
    follower.close();
    assert.deepEqual(heard.events[0], { type: 'ack', nonce: 'nonce-2', from: 5 });
    assert.deepEqual(partsOf(heard.events), [[5, ' world']]);
  });

  it('the serving side sends the end only once it is stored', async () => {
    const answer = running('a');
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, undefined, 'nonce-3');
    await heard.until(2);
    const stored = Promise.withResolvers<void>();
    answer.end(FINISHED, stored.promise);
    await turn(); // the serving side has seen the end
    // A marker through the serving pool's one connection: an end sent at once would arrive before it.
    await servingPool.query('SELECT pg_notify($1, $2)', [channelOf(conversationOf(answer)), '{"a":"marker","o":0}']);
    await heard.until(3);
    assert.deepEqual(heard.events[2], { type: 'ack', nonce: 'marker', from: 0 });
    stored.resolve();
    await heard.until(4);
    follower.close();
    assert.deepEqual(heard.events[3], { type: 'end', event: FINISHED, length: 1 });
  });

  it('a failed end reaches the follower as its error code', async () => {
    const answer = running('partial');
    answer.end({ type: 'failed', error: new AppError('UPSTREAM_TIMEOUT') });
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, undefined, 'nonce-4');
    await heard.until(3);
    follower.close();
    const end = heard.events[2];
    assert.equal(end?.type, 'end');
    assert.equal(end.length, 7);
    assert.equal(end.event.type, 'failed');
    assert.equal(end.event.type === 'failed' && end.event.error.code, 'UPSTREAM_TIMEOUT');
  });

  it('parts over the 8000-byte payload limit arrive split over several notifications, whole and in order', async () => {
    // Two bytes a character: a limit counted in characters would send payloads PostgreSQL refuses.
    const parts = Array.from({ length: 12 }, (_, i) => String.fromCharCode(0xe0 + i).repeat(1_000));
    const answer = running(...parts);
    answer.end(FINISHED);
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(answer.head.messageId, undefined, 'nonce-5');
    await heard.until((events) => events.at(-1)?.type === 'end');
    follower.close();
    const notifications = heard.events.filter((e) => e.type === 'parts');
    assert.ok(notifications.length >= 3, `${notifications.length} notifications`);
    assert.deepEqual(
      partsOf(heard.events),
      parts.map((text, i) => [i * 1_000, text]),
    );
    assert.equal(logged().filter((l) => l['msg'] === 'answer publish failed').length, 0);
  });

  it('a request for a message not served here, or under another conversation, gets no answer', async () => {
    const answer = running('x');
    answer.end(FINISHED);
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    await follower.request(randomUUID(), undefined, 'unknown');
    // The right message id under another conversation is refused too: it names no answer there.
    const otherConversation = randomUUID();
    const stranger = listener();
    const elsewhere = await following.follow(otherConversation, stranger.on);
    await servingPool.query('SELECT pg_notify($1, $2)', [
      'chat_control',
      JSON.stringify({ op: 'f', c: otherConversation, m: answer.head.messageId, o: null, n: 'wrong-conversation' }),
    ]);
    // Requests are served in order: by the time the known one is answered, the others would have been.
    await follower.request(answer.head.messageId, undefined, 'known');
    await heard.until(3);
    follower.close();
    elsewhere.close();
    assert.deepEqual(heard.events[0], { type: 'ack', nonce: 'known', from: 0 });
    assert.deepEqual(stranger.events, []);
  });

  it('a follower hears only well-formed events on its channel', async () => {
    const answer = running('ok');
    answer.end(FINISHED);
    const heard = listener();
    const follower = await following.follow(conversationOf(answer), heard.on);
    const channel = channelOf(conversationOf(answer));
    for (const payload of ['not json', 'null', '{"z":1}', '[1,2]']) {
      await servingPool.query('SELECT pg_notify($1, $2)', [channel, payload]);
    }
    await follower.request(answer.head.messageId, undefined, 'after-garbage');
    await heard.until(3);
    follower.close();
    assert.deepEqual(heard.events[0], { type: 'ack', nonce: 'after-garbage', from: 0 });
  });

  it('close() of one follower leaves the others on the same conversation listening', async () => {
    const answer = running('shared');
    answer.end(FINISHED);
    const first = listener();
    const second = listener();
    const one = await following.follow(conversationOf(answer), first.on);
    const two = await following.follow(conversationOf(answer), second.on);
    one.close();
    await two.request(answer.head.messageId, undefined, 'n');
    await second.until(3);
    two.close();
    assert.deepEqual(first.events, []);
  });

  it('cancel() reaches the serving side with the conversation id', async () => {
    const conversationId = randomUUID();
    await following.cancel(conversationId);
    await waitFor('the cancel', WAIT_MS, () => (cancelled.includes(conversationId) ? true : undefined));
    assert.deepEqual(
      cancelled.filter((id) => id === conversationId),
      [conversationId],
    );
  });

  it('a lost listening session is reported as lost to every follower and re-opened after the backoff', async (t) => {
    const answer = running('again');
    answer.end(FINISHED);
    const heard = listener();
    await following.follow(conversationOf(answer), heard.on);
    t.mock.timers.enable({ apis: ['setTimeout'] });
    proxy.setMode('reset');
    await heard.until(1);
    assert.deepEqual(heard.events, [{ type: 'lost' }]);
    const warned = logged().filter((l) => l['level'] === 'warn');
    assert.equal(warned.at(-1)?.['msg'], 'answer listener lost its database session; reconnecting');
    proxy.setMode('pass');
    // The old session reports its end before the backoff passes, as it does unless the loop stalls.
    await sessions.at(-1)?.ended;
    t.mock.timers.tick(100); // the first backoff
    const again = listener();
    const follower = await following.follow(conversationOf(answer), again.on);
    await follower.request(answer.head.messageId, undefined, 'reopened');
    await again.until(3);
    follower.close();
    t.mock.timers.reset();
    assert.deepEqual(again.events[0], { type: 'ack', nonce: 'reopened', from: 0 });
    assert.equal(heard.events.length, 1, 'a lost follower hears nothing more');
  });

  it('a session end reported after the backoff fails no waiting follow() and opens no second session', async (t) => {
    const heard = listener();
    await following.follow(randomUUID(), heard.on);
    t.mock.timers.enable({ apis: ['setTimeout'] });
    t.after(() => t.mock.timers.reset());
    proxy.setMode('reset');
    await heard.until(1);
    proxy.setMode('pass');
    const lost = sessions.at(-1);
    const before = sessions.length;
    t.mock.timers.tick(100); // the backoff passes before the lost session has reported its end
    let failed: unknown;
    const waiting = following.follow(randomUUID(), () => {}).catch((err: unknown) => (failed = err));
    await lost?.ended;
    // A follow() started now sees the re-opened session: once it resolves, the reconnect is done.
    await following.follow(randomUUID(), () => {});
    await turn();
    t.mock.timers.tick(2_000);
    await waiting;
    assert.equal(failed, undefined, 'follow() waiting through the reconnect succeeds');
    t.mock.timers.tick(5_000);
    await turn();
    assert.equal(sessions.length - before, 1, 'one new listening session, not two');
  });

  it('follow() rejects with RESUME_INTERRUPTED when no session is open within 2 s', async (t) => {
    const refusing = await startTcpProxy({ host: proxy.host, port: proxy.port }, 'reset');
    t.after(() => refusing.close());
    t.mock.timers.enable({ apis: ['setTimeout'] });
    t.after(() => t.mock.timers.reset());
    const url = new URL(scratch.url);
    url.host = `${refusing.host}:${refusing.port}`;
    const lonely = createPgFanout({ connect: () => new pg.Client(url.toString()), pool: followingPool, log });
    t.after(() => lonely.close());
    let settled = false;
    const refused = lonely.follow(randomUUID(), () => {});
    refused.catch(() => (settled = true));
    t.mock.timers.tick(1_999);
    await turn();
    assert.equal(settled, false, 'still waiting at 1999 ms');
    t.mock.timers.tick(1);
    await assert.rejects(refused, { code: 'RESUME_INTERRUPTED' });
  });
});
