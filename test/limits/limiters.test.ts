// The limits the server builds from configuration, driven without a server: which bucket and
// RateLimit-Policy each identity gets in each store, what the shared stores share between instances,
// where stream slots are counted, and that housekeeping failures reach the log.
import assert from 'node:assert/strict';
import { before, describe, it, type TestContext } from 'node:test';
import type { Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import type { Identity, IdentityPolicy } from '../../lib/http/types.ts';
import { createRateLimiter, createStreamSlots, type RateLimiter } from '../../lib/limits/limiters.ts';
import type { Decision } from '../../lib/limits/token-bucket.ts';
import { createLogger } from '../../lib/log.ts';
import { testConfig } from '../support/config.ts';
import { ENGINES, engineDatabase } from '../support/engines.ts';
import { capturingLog } from '../support/log-lines.ts';

const silent = createLogger({ level: 'silent' });
// Six a minute is a tenth of a token a second: no test runs long enough to refill a whole one.
const LIMITS = { RATE_LIMIT_PER_MINUTE: '6', RATE_LIMIT_BURST: '3', MAX_CONCURRENT_STREAMS_PER_KEY: '2' };
const STORES = ['memory', 'postgres', 'postgres-leased'] as const;
type Store = (typeof STORES)[number];

let n = 0;
/** An identity no other test has used, so no bucket or lease row is shared by accident. */
function identity(policy?: IdentityPolicy): Identity {
  return { id: `key:limiters-${process.pid}-${++n}`, kind: 'key', policy };
}

/** The `msg` of each line a capturing log holds. */
function messagesOf(capture: ReturnType<typeof capturingLog>): unknown[] {
  return capture.lines().map((line) => line['msg']);
}

async function takeTimes(limiter: RateLimiter, who: Identity, times: number): Promise<Decision[]> {
  const decisions: Decision[] = [];
  for (let i = 0; i < times; i++) decisions.push(await limiter.take(who));
  return decisions;
}

function allowedOf(decisions: readonly Decision[]): boolean[] {
  return decisions.map((d) => d.allowed);
}

/** Polls every 10 ms until `check` holds; fails after five seconds. */
async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = performance.now() + 5_000;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Runs `fn` while `table` is renamed away, so every statement on it fails; renames it back after. */
async function withoutTable(db: Database, table: string, fn: () => Promise<void>): Promise<void> {
  await db.pool.query(`ALTER TABLE ${table} RENAME TO ${table}_away`);
  try {
    await fn();
  } finally {
    await db.pool.query(`ALTER TABLE ${table}_away RENAME TO ${table}`);
  }
}

for (const engine of ENGINES) {
  describe(`per-identity limits on ${engine.label}`, { skip: engine.skip }, () => {
    const db = engineDatabase(engine, 'limiters-test-');

    /** A rate limiter over this engine's database, closed when the test ends. */
    function limiter(t: TestContext, store: Store, env: Record<string, string> = {}, log = silent): RateLimiter {
      const created = createRateLimiter(testConfig({ ...LIMITS, RATE_LIMIT_STORE: store, ...env }), db, log);
      t.after(() => created.close());
      return created;
    }

    function slots(t: TestContext, store: Store, env: Record<string, string> = {}, log = silent) {
      const created = createStreamSlots(testConfig({ ...LIMITS, RATE_LIMIT_STORE: store, ...env }), db, log);
      t.after(() => created.close?.());
      return created;
    }

    before(() => migrate(db.pool));

    // The memory store never touches the database: once, on the embedded engine, is enough.
    for (const store of STORES.filter((s) => s !== 'memory' || !engine.external)) {
      describe(`createRateLimiter() with RATE_LIMIT_STORE=${store}`, () => {
        it('take() grants an identity without a policy the server burst, under the "default" policy', async (t) => {
          const rate = limiter(t, store);
          const who = identity();
          const decisions = await takeTimes(rate, who, 4);
          assert.deepEqual(allowedOf(decisions), [true, true, true, false]);
          assert.deepEqual(rate.headers(decisions[0] as Decision, who), [
            'ratelimit-policy',
            '"default";q=3;w=30',
            'ratelimit',
            '"default";r=2;t=10',
          ]);
        });

        it('take() gives an identity with its own rate and burst its own bucket, named "key"', async (t) => {
          const rate = limiter(t, store);
          const limited = identity({ rateLimitPerMinute: 3, rateLimitBurst: 2 });
          const decisions = await takeTimes(rate, limited, 3);
          assert.deepEqual(allowedOf(decisions), [true, true, false]);
          assert.deepEqual(rate.headers(decisions[0] as Decision, limited), [
            'ratelimit-policy',
            '"key";q=2;w=40',
            'ratelimit',
            '"key";r=1;t=20',
          ]);
          const refused = decisions[2] as Decision;
          // A refusal's t is its Retry-After: when one token (a twentieth of a minute) is back.
          assert.ok(refused.retryAfterSeconds >= 19 && refused.retryAfterSeconds <= 20, `${refused.retryAfterSeconds}`);
          assert.equal(rate.headers(refused, limited)[3], `"key";r=0;t=${refused.retryAfterSeconds}`);
          assert.deepEqual(allowedOf(await takeTimes(rate, identity(), 3)), [true, true, true], 'others keep 3');
        });

        it("take() fills a policy's missing rate or burst from the server's", async (t) => {
          const rate = limiter(t, store);
          const burstOnly = identity({ rateLimitBurst: 5 });
          const rateOnly = identity({ rateLimitPerMinute: 12 });
          const ofBurstOnly = await takeTimes(rate, burstOnly, 6);
          const ofRateOnly = await takeTimes(rate, rateOnly, 4);
          assert.deepEqual(allowedOf(ofBurstOnly), [true, true, true, true, true, false]);
          assert.deepEqual(allowedOf(ofRateOnly), [true, true, true, false]);
          assert.equal(rate.headers(ofBurstOnly[0] as Decision, burstOnly)[1], '"key";q=5;w=50');
          assert.equal(rate.headers(ofRateOnly[0] as Decision, rateOnly)[1], '"key";q=3;w=15');
        });

        it('take() keeps the defaults for a policy that sets neither rate nor burst', async (t) => {
          const rate = limiter(t, store);
          const streamsOnly = identity({ maxStreams: 1, tokensPerDay: 100, agents: ['default'] });
          const decisions = await takeTimes(rate, streamsOnly, 4);
          assert.deepEqual(allowedOf(decisions), [true, true, true, false]);
          assert.equal(rate.headers(decisions[0] as Decision, streamsOnly)[1], '"default";q=3;w=30');
        });

        it('take() keeps one bucket per identity, also for identities with the same policy', async (t) => {
          const rate = limiter(t, store);
          const policy = { rateLimitPerMinute: 1, rateLimitBurst: 1 };
          const [first, second] = [identity(policy), identity(policy)];
          assert.deepEqual(allowedOf(await takeTimes(rate, first, 2)), [true, false]);
          assert.deepEqual(allowedOf(await takeTimes(rate, second, 2)), [true, false]);
          // Same rate, another burst: another policy, not the cached one.
          const wider = identity({ rateLimitPerMinute: 1, rateLimitBurst: 2 });
          assert.deepEqual(allowedOf(await takeTimes(rate, wider, 3)), [true, true, false]);
        });
      });
    }

    describe('createRateLimiter() stores compared', () => {
      // Registered once (not skipped) on the embedded engine, like the memory store's tests above.
      if (!engine.external)
        it('the memory store answers at once, without a promise, and each instance counts apart', (t) => {
          const [one, two] = [limiter(t, 'memory'), limiter(t, 'memory')];
          const who = identity({ rateLimitBurst: 1 });
          const decision = one.take(who);
          assert.equal(decision instanceof Promise, false);
          assert.deepEqual([(decision as Decision).allowed, (two.take(who) as Decision).allowed], [true, true]);
        });

      for (const store of ['postgres', 'postgres-leased'] as const) {
        it(`the ${store} store shares each identity's bucket between instances on one database`, async (t) => {
          const [one, two] = [limiter(t, store), limiter(t, store)];
          const who = identity();
          assert.deepEqual(allowedOf(await takeTimes(one, who, 3)), [true, true, true]);
          assert.deepEqual(allowedOf(await takeTimes(two, who, 2)), [false, false]);
          assert.deepEqual(allowedOf(await takeTimes(two, identity(), 1)), [true], 'another identity is not held back');
          const { rows } = await db.pool.query('SELECT 1 FROM rate_limit_buckets WHERE key = $1', [who.id]);
          assert.equal(rows.length, 1, 'the bucket is the identity id');
        });
      }

      it('the postgres store answers with a promise: every decision is a statement', async (t) => {
        const result = limiter(t, 'postgres').take(identity());
        assert.ok(result instanceof Promise);
        assert.equal((await result).allowed, true);
      });

      it('the postgres store logs a failed sweep as a warning and keeps running', async (t) => {
        t.mock.timers.enable({ apis: ['setInterval'] });
        const capture = capturingLog('warn');
        const rate = limiter(t, 'postgres', {}, capture.log);
        // A first take teaches the sweeper a refill time: with none it has nothing to delete.
        assert.equal((await rate.take(identity())).allowed, true);
        await withoutTable(db, 'rate_limit_buckets', async () => {
          t.mock.timers.tick(60_000);
          await until('the warning', () => capture.lines().length > 0);
        });
        assert.deepEqual(messagesOf(capture), ['rate-limit sweep failed']);
        assert.equal((await rate.take(identity())).allowed, true);
      });

      it('the postgres-leased store logs tokens it cannot give back at close as a warning', async (t) => {
        // No sweep timer: the unspent token must still be held when close() gives it back.
        t.mock.timers.enable({ apis: ['setInterval'] });
        const capture = capturingLog('warn');
        const rate = limiter(t, 'postgres-leased', { RATE_LIMIT_LEASE_FRACTION: '1' }, capture.log);
        const who = identity();
        // The second take comes at once, so its lease is sized for a busy key: two tokens, one left over.
        assert.deepEqual(allowedOf(await takeTimes(rate, who, 2)), [true, true]);
        const { rows } = await db.pool.query<{ tokens: number }>(
          'SELECT tokens FROM rate_limit_buckets WHERE key = $1',
          [who.id],
        );
        assert.ok((rows[0]?.tokens ?? 3) < 1, 'this instance holds the last token');
        await withoutTable(db, 'rate_limit_buckets', () => rate.close());
        assert.deepEqual(messagesOf(capture), ['rate-limit lease housekeeping failed']);
      });
    });

    describe('createStreamSlots()', () => {
      it('counts in this process with the memory store: leases at once, up to the server cap, no close', (t) => {
        const streams = slots(t, 'memory');
        assert.equal(streams.close, undefined);
        const who = identity().id;
        const first = streams.acquire(who);
        assert.ok(first !== undefined && !(first instanceof Promise));
        assert.ok(streams.acquire(who) !== undefined);
        assert.equal(streams.acquire(who), undefined);
        assert.equal(streams.inUse(who), 2);
        first.release();
        assert.ok(streams.acquire(who) !== undefined);
      });

      it("honours an identity's own cap, below and above the server's", async (t) => {
        const streams = slots(t, 'memory');
        const [one, four] = [identity().id, identity().id];
        assert.ok((await streams.acquire(one, 1)) !== undefined);
        assert.equal(await streams.acquire(one, 1), undefined);
        for (let i = 0; i < 4; i++) assert.ok((await streams.acquire(four, 4)) !== undefined, `lease ${i + 1}`);
        assert.equal(await streams.acquire(four, 4), undefined);
      });

      if (!engine.external) {
        it('counts in this process on the embedded database whatever the store, which one process opens', (t) => {
          for (const store of ['postgres', 'postgres-leased'] as const) {
            const streams = slots(t, store);
            assert.equal(streams.close, undefined, store);
            const lease = streams.acquire(identity().id);
            assert.ok(lease !== undefined && !(lease instanceof Promise), store);
          }
        });
        return;
      }

      for (const store of ['postgres', 'postgres-leased'] as const) {
        it(`counts through the database with the ${store} store: one cap per identity, all instances`, async (t) => {
          const [one, two] = [slots(t, store), slots(t, store)];
          const who = identity().id;
          const held = one.acquire(who);
          assert.ok(held instanceof Promise, 'the database decides');
          assert.ok((await held) !== undefined);
          assert.ok((await two.acquire(who)) !== undefined);
          assert.equal(await one.acquire(who), undefined);
          assert.equal(await two.acquire(who), undefined);
          assert.deepEqual([one.inUse(who), two.inUse(who)], [1, 1]);
          assert.ok((await two.acquire(identity().id)) !== undefined, 'another identity has slots of its own');
        });
      }

      it("honours an identity's own cap across instances, below and above the server's", async (t) => {
        const [one, two] = [slots(t, 'postgres'), slots(t, 'postgres')];
        const [single, three] = [identity().id, identity().id];
        assert.ok((await one.acquire(single, 1)) !== undefined);
        assert.equal(await two.acquire(single, 1), undefined);
        assert.ok((await one.acquire(three, 3)) !== undefined);
        assert.ok((await one.acquire(three, 3)) !== undefined);
        assert.ok((await two.acquire(three, 3)) !== undefined);
        assert.equal(await two.acquire(three, 3), undefined);
      });

      it('holds a shared slot for STREAM_LEASE_TTL_MS and gives it back at close', async (t) => {
        const streams = slots(t, 'postgres', { STREAM_LEASE_TTL_MS: '120000' });
        const who = identity().id;
        assert.ok((await streams.acquire(who)) !== undefined);
        const { rows } = await db.pool.query<{ seconds: number }>(
          `SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 AS seconds
           FROM stream_leases WHERE key = $1`,
          [who],
        );
        const seconds = rows[0]?.seconds ?? Number.NaN;
        assert.ok(seconds > 100 && seconds <= 120, `expires in ${seconds} s`);
        await streams.close?.();
        const left = await db.pool.query('SELECT 1 FROM stream_leases WHERE key = $1', [who]);
        assert.equal(left.rows.length, 0);
      });

      it('logs a slot it cannot give back as a warning', async (t) => {
        const capture = capturingLog('warn');
        const streams = slots(t, 'postgres', {}, capture.log);
        const lease = await streams.acquire(identity().id);
        await withoutTable(db, 'stream_leases', async () => {
          lease?.release();
          await until('the warning', () => capture.lines().length > 0);
        });
        assert.deepEqual(messagesOf(capture), ['stream lease housekeeping failed']);
        assert.equal(streams.inUse(), 0);
      });
    });
  });
}
