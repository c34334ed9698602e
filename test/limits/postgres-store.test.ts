import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createPostgresStore } from '../../lib/limits/postgres-store.ts';
import { type BucketPolicy, bucketPolicy } from '../../lib/limits/token-bucket.ts';
import { BACKENDS, type Backend } from '../support/db-backends.ts';

const DATABASE_URL = process.env.TEST_DATABASE_URL;

/** Moves a bucket's last update back in time: the database clock cannot be mocked, the row can. */
async function ageBucket(pool: pg.Pool, key: string, seconds: number): Promise<void> {
  await pool.query(`UPDATE rate_limit_buckets SET updated_at = updated_at - make_interval(secs => $2) WHERE key = $1`, [
    key,
    seconds,
  ]);
}

async function storedTokens(pool: pg.Pool, key: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ tokens: number }>('SELECT tokens FROM rate_limit_buckets WHERE key = $1', [key]);
  return rows[0]?.tokens;
}

async function takeTimes(
  store: ReturnType<typeof createPostgresStore>,
  key: string,
  policy: BucketPolicy,
  times: number,
) {
  const decisions = [];
  for (let i = 0; i < times; i++) decisions.push(await store.take(key, policy));
  return decisions;
}

for (const kind of BACKENDS) {
  describe(`createPostgresStore() on ${kind.label}`, { skip: kind.skip }, () => {
    let backend: Backend;
    let store: ReturnType<typeof createPostgresStore>;
    let other: ReturnType<typeof createPostgresStore>;
    const fivePerMinute = bucketPolicy(5, 5); // burst 5, a token every 12 s: no refill during a test
    let n = 0;
    const freshKey = (): string => `key-${++n}`;

    before(async () => {
      backend = await kind.open();
      const { namedStatements } = backend;
      store = createPostgresStore(backend.pools[0], { sweepIntervalMs: 0, namedStatements });
      other = createPostgresStore(backend.pools[1], { sweepIntervalMs: 0, namedStatements });
    });
    after(async () => {
      await store?.close();
      await other?.close();
      await backend?.close();
    });

    it('postgresStore.take() starts a new key full and takes one token', async () => {
      assert.deepEqual(await store.take(freshKey(), fivePerMinute), {
        allowed: true,
        remaining: 4,
        resetSeconds: 12,
        retryAfterSeconds: 0,
      });
    });

    it('postgresStore.take() refuses after the burst and takes nothing on a refusal', async () => {
      const key = freshKey();
      const decisions = await takeTimes(store, key, fivePerMinute, 7);
      assert.deepEqual(
        decisions.map((d) => d.allowed),
        [true, true, true, true, true, false, false],
      );
      assert.equal(decisions[6]?.remaining, 0);
      assert.equal(decisions[6]?.retryAfterSeconds, 12);
      const tokens = await storedTokens(backend.direct, key);
      assert.ok(tokens !== undefined && tokens >= 0 && tokens < 0.01, `stored tokens ${tokens}`);
    });

    it('postgresStore.take() refills at the configured rate by the database clock', async () => {
      const key = freshKey();
      const policy = bucketPolicy(60, 5); // 1 token per second
      await takeTimes(store, key, policy, 5);
      await ageBucket(backend.direct, key, 2.5);
      const [first, second, third] = await takeTimes(store, key, policy, 3);
      assert.deepEqual(first, { allowed: true, remaining: 1, resetSeconds: 4, retryAfterSeconds: 0 }); // 2.5 − 1 = 1.5
      assert.equal(second?.allowed, true); // 0.5 left
      assert.deepEqual(third, { allowed: false, remaining: 0, resetSeconds: 5, retryAfterSeconds: 1 });
    });

    it('postgresStore.take() reports Retry-After 60 for 1 token/minute, and 45 a quarter-minute later', async () => {
      const key = freshKey();
      const policy = bucketPolicy(1, 1);
      assert.equal((await store.take(key, policy)).allowed, true);
      assert.equal((await store.take(key, policy)).retryAfterSeconds, 60);
      await ageBucket(backend.direct, key, 15);
      assert.equal((await store.take(key, policy)).retryAfterSeconds, 45);
    });

    it('two store instances on separate pools share one burst exactly', async () => {
      for (let round = 0; round < 5; round++) {
        const key = freshKey();
        if (round % 2 === 1) {
          // Odd rounds race on an existing row (refilled to full); even rounds race to create it.
          await store.take(key, fivePerMinute);
          await ageBucket(backend.direct, key, 60);
        }
        const takes = Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? store : other).take(key, fivePerMinute));
        const decisions = await Promise.all(takes);
        assert.equal(decisions.filter((d) => d.allowed).length, 5, `round ${round}`);
        // Every refusal saw the row as the winners left it (empty), not an older snapshot of it.
        assert.deepEqual(new Set(decisions.filter((d) => !d.allowed).map((d) => d.retryAfterSeconds)), new Set([12]));
        assert.equal((await other.take(key, fivePerMinute)).allowed, false);
      }
    });

    it('postgresStore.sweep() deletes only buckets that have surely refilled', async () => {
      const idle = freshKey();
      const spent = freshKey();
      await store.take(idle, fivePerMinute);
      await takeTimes(store, spent, fivePerMinute, 5);
      await ageBucket(backend.direct, idle, 61); // 5 tokens at 5/min refill in 60 s
      await ageBucket(backend.direct, spent, 30); // 2.5 of 5 back: not full
      const before = Number((await backend.direct.query('SELECT count(*) AS n FROM rate_limit_buckets')).rows[0].n);
      assert.equal(await store.sweep(), 1);
      assert.equal(await storedTokens(backend.direct, idle), undefined);
      assert.notEqual(await storedTokens(backend.direct, spent), undefined);
      const afterSweep = Number((await backend.direct.query('SELECT count(*) AS n FROM rate_limit_buckets')).rows[0].n);
      assert.equal(afterSweep, before - 1);
      assert.equal((await store.take(spent, fivePerMinute)).remaining, 1); // 2.5 − 1, its state kept
    });
  });
}

describe('createPostgresStore() failures', { skip: !DATABASE_URL && 'needs TEST_DATABASE_URL' }, () => {
  // A search_path naming a schema that does not exist: every statement fails with 42P01.
  let broken: pg.Pool;
  before(() => {
    broken = new pg.Pool({
      connectionString: DATABASE_URL,
      max: 2,
      options: `-c search_path=lim_missing_${randomBytes(6).toString('hex')}`,
    });
    broken.on('error', () => {});
  });
  after(() => broken.end());

  it('postgresStore.take() propagates database errors so the caller can fail closed', async (t) => {
    const store = createPostgresStore(broken, { sweepIntervalMs: 0 });
    t.after(() => store.close());
    await assert.rejects(store.take('k', bucketPolicy(60, 5)), { code: '42P01' });
  });

  it('postgresStore sweeper reports failures to onError and stops on close()', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const errors: unknown[] = [];
    let reported: () => void = () => {};
    const store = createPostgresStore(broken, {
      sweepIntervalMs: 1000,
      staleAfterSeconds: 60,
      onError: (err) => {
        errors.push(err);
        reported();
      },
    });
    await new Promise<void>((resolve) => {
      reported = resolve;
      t.mock.timers.tick(1000);
    });
    assert.equal((errors[0] as { code?: string }).code, '42P01');
    await store.close();
    t.mock.timers.tick(5000);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(errors.length, 1);
  });
});
