// storeAnswer() against PostgreSQL behind a switchable proxy: a deleted conversation, a blip, an outage.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import { after, afterEach, before, beforeEach, describe, it, type TestContext } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import pg from 'pg';
import { storeAnswer } from '../../lib/chat/answers.ts';
import { type AssistantMessage, startTurn } from '../../lib/db/conversations.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { TEST_DATABASE_URL } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { logLines } from '../support/log-lines.ts';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.ts';

const BACKOFF_MS = [250, 500, 1_000, 2_000, 4_000];

/** Counts the pool's queries as they start and settle, so a test knows where storeAnswer() is. */
function watchQueries(pool: pg.Pool): { readonly started: number; settled(n: number): Promise<void> } {
  const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
  let started = 0;
  let settled = 0;
  const waiters = new Set<{ n: number; wake: () => void }>();
  const settle = (): void => {
    settled++;
    for (const waiter of waiters) if (settled >= waiter.n) waiter.wake();
  };
  Object.assign(pool, {
    query: (...args: unknown[]) => {
      started++;
      const result = query(...args);
      result.then(settle, settle);
      return result;
    },
  });
  return {
    get started() {
      return started;
    },
    async settled(n) {
      if (settled < n) await new Promise<void>((wake) => waiters.add({ n, wake }));
      await turn(); // let the caller's own reaction (its catch and its backoff timer) run too
    },
  };
}

/** A promise's outcome so far, read without waiting on it. */
function watch(promise: Promise<unknown>): { readonly done: boolean } {
  const state = { done: false };
  promise.then(() => (state.done = true));
  return state;
}

/** Mocks setTimeout, including the `node:timers/promises` binding the module under test imported. */
function mockTimeouts(t: TestContext): void {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  // The mock replaces the CommonJS exports only; this carries it to ES module imports of the builtin.
  syncBuiltinESMExports();
  t.after(() => {
    t.mock.timers.reset();
    syncBuiltinESMExports();
  });
}

describe('storeAnswer() on PostgreSQL', { skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  let scratch: { url: string; drop(): Promise<void> };
  let direct: pg.Pool;
  let proxy: TcpProxy;
  let proxiedUrl: string;
  let proxied: pg.Pool;
  let queries: ReturnType<typeof watchQueries>;
  let lines: string[];
  let log: Logger;

  before(async () => {
    scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    direct = new pg.Pool({ connectionString: scratch.url, max: 2 });
    await migrate(direct);
    const target = new URL(scratch.url);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    target.host = `${proxy.host}:${proxy.port}`;
    proxiedUrl = target.toString();
  });
  after(async () => {
    await proxy?.close();
    await direct?.end();
    await scratch?.drop();
  });
  // A pool of its own per test: no client outlives the faults of the test before.
  beforeEach(() => {
    proxy.setMode('pass');
    proxied = new pg.Pool({ connectionString: proxiedUrl, max: 1 });
    proxied.on('error', () => {}); // the proxy resets clients on purpose
    queries = watchQueries(proxied);
    lines = [];
    log = createLogger({ level: 'debug', sink: (chunk) => lines.push(chunk) });
  });
  afterEach(() => proxied.end());

  /** A new turn's answer, ready to store. */
  async function answer(content = 'The answer'): Promise<AssistantMessage> {
    const started = await startTurn(direct, {
      owner: `key:${randomUUID()}`,
      agent: 'default',
      message: 'Q',
      historyMaxChars: 100,
    });
    assert.ok(started !== undefined);
    return { id: started.assistantMessageId, conversationId: started.conversationId, content, status: 'complete' };
  }

  async function row(id: string): Promise<{ content: string; status: string } | undefined> {
    const { rows } = await direct.query<{ content: string; status: string }>(
      'SELECT content, status FROM messages WHERE id = $1',
      [id],
    );
    return rows[0];
  }

  function logged(): Array<Record<string, unknown>> {
    log.flush();
    return logLines(lines.join(''));
  }

  it('storeAnswer() stores the answer into its row at the first attempt', async () => {
    const message = await answer();
    await storeAnswer(proxied, log, message, 'req-ok');
    assert.deepEqual(await row(message.id), { content: 'The answer', status: 'complete' });
    assert.equal(queries.started, 1);
    assert.deepEqual(logged(), []);
  });

  it('storeAnswer() of an answer whose conversation was deleted resolves at once, logging no error', async (t) => {
    const message = await answer();
    await direct.query('DELETE FROM conversations WHERE id = $1', [message.conversationId]);
    mockTimeouts(t);
    const storing = watch(storeAnswer(proxied, log, message, 'req-deleted'));
    await queries.settled(1);
    assert.equal(storing.done, true, 'no backoff');
    assert.equal(queries.started, 1, 'no retry');
    assert.equal(await row(message.id), undefined);
    assert.deepEqual(
      logged().filter((l) => l['level'] === 'error' || l['level'] === 'warn'),
      [],
    );
  });

  it('storeAnswer() stops at a foreign-key violation with one info line and no retry', async (t) => {
    // The database itself refuses the write as it would for a conversation deleted under it.
    await direct.query(`
      CREATE OR REPLACE FUNCTION refuse_answer() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE foreign_key_violation USING MESSAGE = 'conversation is gone'; END $$;
      CREATE OR REPLACE TRIGGER refuse_answer BEFORE UPDATE ON messages FOR EACH ROW
        WHEN (NEW.content = 'refused') EXECUTE FUNCTION refuse_answer();`);
    const message = await answer('refused');
    mockTimeouts(t);
    const storing = watch(storeAnswer(proxied, log, message, 'req-fk'));
    await queries.settled(1);
    assert.equal(storing.done, true, 'no backoff');
    assert.equal(queries.started, 1, 'no retry');
    const [line, ...others] = logged();
    assert.deepEqual(others, []);
    assert.equal(line?.['level'], 'info');
    assert.equal(line?.['msg'], 'conversation deleted before its answer was stored');
    assert.equal(line?.['requestId'], 'req-fk');
    assert.equal(line?.['conversationId'], message.conversationId);
  });

  it('storeAnswer() retries through a database blip and stores the answer after the first backoff', async (t) => {
    const message = await answer();
    mockTimeouts(t);
    proxy.setMode('reset');
    const storing = storeAnswer(proxied, log, message, 'req-blip');
    await queries.settled(1);
    proxy.setMode('pass');
    t.mock.timers.tick(BACKOFF_MS[0] as number);
    await turn();
    assert.equal(queries.started, 2, 'the second attempt starts after the first backoff');
    await storing;
    assert.deepEqual(await row(message.id), { content: 'The answer', status: 'complete' });
    assert.deepEqual(logged(), []);
  });

  it('storeAnswer() backs off 250 ms to 4 s over six attempts, then gives up with one error line', async (t) => {
    const message = await answer();
    mockTimeouts(t);
    proxy.setMode('reset');
    const storing = watch(storeAnswer(proxied, log, message, 'req-outage'));
    for (const [i, delayMs] of BACKOFF_MS.entries()) {
      await queries.settled(i + 1);
      t.mock.timers.tick(delayMs - 1);
      await turn();
      assert.equal(queries.started, i + 1, `no attempt ${i + 2} before ${delayMs} ms`);
      t.mock.timers.tick(1);
      await turn();
      assert.equal(queries.started, i + 2, `attempt ${i + 2} at ${delayMs} ms`);
    }
    await queries.settled(6);
    assert.equal(storing.done, true, 'it gives up after the sixth attempt');
    assert.deepEqual(await row(message.id), { content: '', status: 'incomplete' }, 'the row keeps its start');
    const errors = logged().filter((l) => l['level'] === 'error');
    assert.equal(errors.length, 1);
    assert.equal(errors[0]?.['msg'], 'could not store the assistant message');
    assert.deepEqual(
      [errors[0]?.['requestId'], errors[0]?.['messageId'], errors[0]?.['conversationId']],
      ['req-outage', message.id, message.conversationId],
    );
    assert.ok(errors[0]?.['err'] !== undefined, 'the cause is logged');
  });
});
