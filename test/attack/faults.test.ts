// Faults under chat traffic: the database behind a switchable TCP proxy (blackhole, reset, back),
// a misbehaving upstream, and 1,000 clients that leave mid-stream. After each one the server must
// still answer, hold no pool client, stream slot, turn or upstream request, and have stored an
// assistant message, in some status, for every user message it accepted.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { type ChatHarness, openStream, readEvents, startChat, waitFor } from '../support/chat.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import type { Behaviour } from '../support/fake-upstream.ts';
import { runLock } from '../support/run-lock.ts';
import { type ProxyMode, startTcpProxy, type TcpProxy } from '../support/tcp-proxy.ts';
import { assertSettled, assistantStatuses, type Identity, messageCounts, mintIdentity, sleep } from './support.ts';

// pg's client-side query timeout is DB_STATEMENT_TIMEOUT_MS + 1 s (lib/db/database.ts): 2 s here.
const STATEMENT_TIMEOUT_MS = 1_000;
const HEALTH_DB_TIMEOUT_MS = 1_000;
const SLOW: Behaviour = { kind: 'slow', chunks: Array.from({ length: 10 }, (_, i) => `w${i} `), chunkDelayMs: 50 };

/** How one chat request of the traffic ended, as the client saw it. */
interface Outcome {
  status: number;
  /** The last SSE event of a 200 stream ('done' or 'error'), or undefined. */
  last: string | undefined;
  ms: number;
}

describe('faults during chat traffic, database behind a TCP proxy', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let proxy: TcpProxy;
  let h: ChatHarness;
  let direct: pg.Pool;

  // The other load suite, run concurrently, would starve this one past its deadlines.
  let releaseLoadLock: (() => void) | undefined;

  before(async () => {
    releaseLoadLock = await runLock('load-test');
    const target = new URL(TEST_DATABASE_URL as string);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const viaProxy = new URL(target.href);
    viaProxy.hostname = proxy.host;
    viaProxy.port = String(proxy.port);
    h = await startChat({
      DATABASE_URL: viaProxy.href,
      DB_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      HEALTH_DB_TIMEOUT_MS: String(HEALTH_DB_TIMEOUT_MS),
      MAX_CONCURRENT_STREAMS_PER_KEY: '1000',
      LOG_LEVEL: 'info',
    });
    // Counts are read around the proxy, so a fault never hides a row.
    direct = new pg.Pool({ connectionString: TEST_DATABASE_URL, max: 2 });
  });

  after(async () => {
    proxy?.setMode('pass'); // a stalled pool cannot end
    await h?.close();
    await proxy?.close();
    await direct?.end();
    releaseLoadLock?.();
  });

  async function chatOnce(key: string, message: string): Promise<Outcome> {
    const started = Date.now();
    const res = await h.chat({ message }, { key, headers: {} });
    if (res.status !== 200) {
      await res.arrayBuffer();
      return { status: res.status, last: undefined, ms: Date.now() - started };
    }
    const frames = await readEvents(res);
    return { status: 200, last: frames.at(-1)?.event, ms: Date.now() - started };
  }

  /** 30 chats 50 ms apart; the proxy switches to `mode` after the tenth and back to `pass` after `holdMs`. */
  async function trafficThrough(mode: ProxyMode, holdMs: number, who: Identity): Promise<Outcome[]> {
    h.fake.setBehaviour(SLOW);
    const outcomes: Array<Promise<Outcome>> = [];
    let heal: NodeJS.Timeout | undefined;
    try {
      for (let i = 0; i < 30; i++) {
        outcomes.push(chatOnce(who.key, `traffic ${mode} ${i}`));
        if (i === 9) {
          proxy.setMode(mode);
          heal = setTimeout(() => proxy.setMode('pass'), holdMs);
        }
        await sleep(50);
      }
      return await Promise.all(outcomes);
    } finally {
      clearTimeout(heal);
      proxy.setMode('pass');
      h.fake.setBehaviour({ kind: 'normal' });
    }
  }

  /** The server answers, holds nothing, and stored one assistant message per user message of `who`. */
  async function assertRecovered(who: Identity): Promise<void> {
    const live = await fetch(`${h.server.url}/health/live`);
    assert.equal(live.status, 200);
    await assertSettled(h.server, 8_000);
    const counts = await messageCounts(direct, who.owner);
    assert.ok(counts.user > 0, 'some user messages were accepted');
    assert.equal(
      counts.assistant,
      counts.user,
      `every accepted user message has its assistant message: ${JSON.stringify(counts)}`,
    );
  }

  it('a database blackhole past the query timeout fails or delays chats; then recovery loses nothing', async () => {
    const who = await mintIdentity(h.server.db.pool);
    const traffic = trafficThrough('blackhole', 3_000, who);
    await sleep(700); // inside the blackhole
    const started = Date.now();
    const live = await fetch(`${h.server.url}/health/live`);
    assert.equal(live.status, 200, 'liveness does not touch the database');
    assert.ok(Date.now() - started < 500);
    const ready = await fetch(`${h.server.url}/health`);
    assert.equal(ready.status, 503, 'readiness reports the unreachable database');
    assert.deepEqual(await ready.json(), { status: 'unavailable' });

    const outcomes = await traffic;
    for (const o of outcomes) {
      assert.ok(o.status === 200 || o.status >= 500, `status ${o.status}`);
      if (o.status === 200)
        assert.ok(o.last === 'done' || o.last === 'error', `a 200 stream ends with done or error, not ${o.last}`);
      assert.ok(o.ms < 15_000, `a chat took ${o.ms} ms`);
    }
    assert.equal((await fetch(`${h.server.url}/health`)).status, 200, 'readiness is back after the network heals');
    assert.deepEqual(await chatOnce(who.key, 'after the blackhole').then((o) => [o.status, o.last]), [200, 'done']);
    await assertRecovered(who);
  });

  it('database connections reset for 1.5 s fail chats fast, then the server recovers with nothing lost', async () => {
    const who = await mintIdentity(h.server.db.pool);
    const outcomes = await trafficThrough('reset', 1_500, who);
    for (const o of outcomes) {
      assert.ok(o.status === 200 || o.status >= 500, `status ${o.status}`);
      assert.ok(o.ms < 15_000, `a chat took ${o.ms} ms`);
    }
    assert.ok(
      outcomes.some((o) => o.status >= 500),
      'chats that needed the database during the reset failed',
    );
    assert.deepEqual(await chatOnce(who.key, 'after the reset').then((o) => [o.status, o.last]), [200, 'done']);
    await assertRecovered(who);
  });

  const upstreamFaults: Array<[string, Behaviour, (o: Outcome) => void]> = [
    ['a hanging upstream', { kind: 'hang' }, (o) => assert.equal(o.status, 504)],
    [
      'an upstream that stalls mid-stream',
      { kind: 'stall', afterChunks: 2 },
      (o) => assert.deepEqual([o.status, o.last], [200, 'error']),
    ],
    [
      'an upstream that resets mid-stream',
      { kind: 'reset', afterChunks: 2 },
      (o) => assert.deepEqual([o.status, o.last], [200, 'error']),
    ],
    [
      'an upstream that sends invalid SSE',
      { kind: 'invalid-sse' },
      (o) => assert.deepEqual([o.status, o.last], [200, 'error']),
    ],
  ];
  for (const [what, behaviour, expectOutcome] of upstreamFaults) {
    it(`${what} amid normal traffic ends its own chat with an error and leaves nothing behind`, async () => {
      const victim = await mintIdentity(h.server.db.pool);
      const bystander = await mintIdentity(h.server.db.pool);
      const faultyIndex = h.fake.requests.length;
      h.fake.queue(behaviour);
      const faulty = chatOnce(victim.key, `meets ${what}`);
      // The fake takes behaviours in arrival order: start the bystanders once the faulty call is in.
      await waitFor('the faulty upstream call', 3_000, () => (h.fake.requests.length > faultyIndex ? true : undefined));
      h.fake.setBehaviour(SLOW);
      const normal = await Promise.all(Array.from({ length: 5 }, (_, i) => chatOnce(bystander.key, `bystander ${i}`)));
      h.fake.setBehaviour({ kind: 'normal' });
      expectOutcome(await faulty);
      assert.deepEqual(
        normal.map((o) => [o.status, o.last]),
        Array.from({ length: 5 }, () => [200, 'done']),
      );
      await h.fake.waitForClose(faultyIndex, 3_000);
      await assertRecovered(victim);
      await assertRecovered(bystander);
      assert.deepEqual(await assistantStatuses(direct, victim.owner), ['error']);
    });
  }

  it('1,000 clients leaving mid-answer leave every answer stored complete and no slot, turn or socket', async () => {
    const who = await mintIdentity(h.server.db.pool);
    h.fake.setBehaviour({ kind: 'slow', chunks: Array.from({ length: 10 }, () => 'x'), chunkDelayMs: 50 });
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    const firstRequest = h.fake.requests.length;
    try {
      for (let batch = 0; batch < 20; batch++) {
        await Promise.all(
          Array.from({ length: 50 }, async (_, i) => {
            const stream = await openStream(h.server.url, who.key, { message: `abort ${batch}-${i}` });
            const start = await stream.next();
            assert.equal(start?.event, 'start');
            const second = await stream.next();
            assert.equal(second?.event, 'delta', JSON.stringify(second));
            stream.abort();
          }),
        );
      }
    } finally {
      process.off('warning', onWarning);
      h.fake.setBehaviour({ kind: 'normal' });
    }
    // The answers belong to the server: each runs to its end after its client left.
    await waitFor('every answer to end', 20_000, () => (h.server.chat.active() === 0 ? true : undefined));
    await assertRecovered(who);
    const statuses = await assistantStatuses(direct, who.owner);
    assert.equal(statuses.length, 1_000);
    assert.deepEqual([...new Set(statuses)], ['complete']);
    const upstreamCalls = h.fake.requests.slice(firstRequest);
    assert.equal(upstreamCalls.length, 1_000);
    assert.equal(upstreamCalls.filter((r) => r.finished).length, 1_000, 'every upstream call ran to its end');
    assert.deepEqual(
      warnings.filter((w) => w.startsWith('MaxListenersExceededWarning')),
      [],
    );
  });
});
