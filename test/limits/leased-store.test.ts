import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { maxLeaseTokens } from '../../lib/limits/lease.ts';
import { createLeasedStore, type LeasedStore } from '../../lib/limits/leased-store.ts';
import { type BucketPolicy, bucketPolicy, type Decision } from '../../lib/limits/token-bucket.ts';
import { BACKENDS, type Backend } from '../support/db-backends.ts';

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance(ms: number): void } {
  let ms = 1_000_000;
  return { now: () => ms, advance: (by) => (ms += by) };
}

interface Outcome {
  decisions: Decision[];
  /** How many of the takes had to wait for the database (returned a promise). */
  asked: number;
}

/** Takes `times` tokens one after another, noting which takes went to the database. */
async function takeInTurn(store: LeasedStore, key: string, policy: BucketPolicy, times: number): Promise<Outcome> {
  const decisions: Decision[] = [];
  let asked = 0;
  for (let i = 0; i < times; i++) {
    const result = store.take(key, policy);
    if (result instanceof Promise) asked++;
    decisions.push(await result);
  }
  return { decisions, asked };
}

function allowed(decisions: readonly Decision[]): number {
  return decisions.filter((d) => d.allowed).length;
}

/** Moves a bucket's last update back in time: the database clock cannot be mocked, the row can. */
async function ageBucket(pool: pg.Pool, key: string, seconds: number): Promise<void> {
  await pool.query('UPDATE rate_limit_buckets SET updated_at = updated_at - make_interval(secs => $2) WHERE key = $1', [
    key,
    seconds,
  ]);
}

async function storedTokens(pool: pg.Pool, key: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ tokens: number }>('SELECT tokens FROM rate_limit_buckets WHERE key = $1', [key]);
  return rows[0]?.tokens;
}

for (const kind of BACKENDS) {
  describe(`createLeasedStore() on ${kind.label}`, { skip: kind.skip }, () => {
    let backend: Backend;
    const stores: LeasedStore[] = [];
    let n = 0;
    const freshKey = (): string => `leased-${++n}`;
    // Slow refill: the real database clock moves during a test, by well under a token here.
    const hundred = bucketPolicy(6, 100);

    function open(index: 0 | 1, clock = manualClock(), leaseFraction = 0.5): LeasedStore {
      const store = createLeasedStore(backend.pools[index], {
        leaseFraction,
        now: clock.now,
        sweepIntervalMs: 0,
        namedStatements: backend.namedStatements,
      });
      stores.push(store);
      return store;
    }

    before(async () => {
      backend = await kind.open();
    });
    after(async () => {
      for (const store of stores) await store.close();
      await backend?.close();
    });

    it('leasedStore.take() answers a new key from the database like the exact store', async () => {
      const store = open(0);
      const first = store.take(freshKey(), bucketPolicy(5, 5));
      assert.ok(first instanceof Promise, 'a key without a lease asks the database');
      assert.deepEqual(await first, { allowed: true, remaining: 4, resetSeconds: 12, retryAfterSeconds: 0 });
    });

    it('leasedStore.take() grants the whole burst and no more, asking the database once per lease', async () => {
      const store = open(0);
      const key = freshKey();
      const { decisions, asked } = await takeInTurn(store, key, hundred, 130);
      assert.equal(allowed(decisions), 100);
      assert.deepEqual(
        decisions.slice(100).map((d) => d.allowed),
        Array(30).fill(false),
      );
      // Leases of 1, 2, 4, 8, 16, 32 and the 37 left (at most 50), then one refusal remembered.
      assert.equal(asked, 8);
      assert.equal(decisions[129]?.retryAfterSeconds, 10);
    });

    it('leasedStore.take() answers synchronously while it holds tokens for the key', async () => {
      const store = open(0);
      const key = freshKey();
      await takeInTurn(store, key, hundred, 4); // leases of 1 and 2, then 4: three tokens left
      const held = [store.take(key, hundred), store.take(key, hundred), store.take(key, hundred)];
      for (const decision of held) assert.ok(!(decision instanceof Promise), 'spent from memory');
      assert.deepEqual(
        held.map((d) => (d as Decision).remaining),
        [95, 94, 93],
      );
    });

    it('leasedStore coalesces concurrent requests for a cold key into two lease requests', async (t) => {
      const store = open(0);
      const key = freshKey();
      const query = t.mock.method(backend.pools[0], 'query');
      const decisions = await Promise.all(Array.from({ length: 10 }, () => store.take(key, hundred)));
      assert.equal(allowed(decisions), 10);
      // The first lease is one token; the nine requests that waited for it ask for nine together.
      assert.equal(query.mock.callCount(), 2);
    });

    it('two stores on one bucket grant the burst exactly when it does not refill meanwhile', async () => {
      const [a, b] = [open(0, manualClock(), 0.25), open(1, manualClock(), 0.25)];
      const key = freshKey();
      const policy = bucketPolicy(1, 20);
      const takes = Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? a : b).take(key, policy));
      assert.equal(allowed(await Promise.all(takes)), 20);
    });

    it('a lease held while the bucket refills is the only overshoot: at most one lease per instance', async () => {
      const clockA = manualClock();
      const [a, b] = [open(0, clockA, 0.25), open(1, manualClock(), 0.25)];
      const key = freshKey();
      const policy = bucketPolicy(1, 20); // leases of at most 5 tokens
      // A ramps up to a lease of 4 (1, 2, then 4) and spends one of it: 3 held, 13 in the bucket.
      assert.equal(allowed((await takeInTurn(a, key, policy, 4)).decisions), 4);
      await ageBucket(backend.direct, key, 3600); // the bucket refills to 20 while A holds its lease
      const fromB = await takeInTurn(b, key, policy, 30);
      const fromA = await takeInTurn(a, key, policy, 10);
      assert.equal(allowed(fromB.decisions), 20);
      assert.equal(allowed(fromA.decisions), 3, "A spends the rest of its lease, and nothing else: the bucket is B's");
      const granted = allowed(fromB.decisions) + allowed(fromA.decisions);
      assert.ok(granted <= policy.capacity + maxLeaseTokens(policy, 0.25), `granted ${granted} after the refill`);
    });

    it('leasedStore refills by the database clock, and a remembered refusal lasts until a token is due', async () => {
      const clock = manualClock();
      const store = open(0, clock);
      const key = freshKey();
      const policy = bucketPolicy(6, 5); // a token every 10 s
      assert.equal(allowed((await takeInTurn(store, key, policy, 5)).decisions), 5);
      const refused = await store.take(key, policy);
      assert.equal(refused.allowed, false);
      assert.equal(refused.remaining, 0);
      assert.ok(refused.retryAfterSeconds >= 9 && refused.retryAfterSeconds <= 10, `${refused.retryAfterSeconds}`);
      clock.advance(5_000);
      const remembered = store.take(key, policy);
      assert.ok(!(remembered instanceof Promise), 'a known refusal asks nothing');
      assert.equal((remembered as Decision).allowed, false);
      assert.ok((remembered as Decision).retryAfterSeconds <= 5);
      await ageBucket(backend.direct, key, 25); // 2.5 tokens by the database's clock
      clock.advance(6_000); // the remembered refusal has run out
      const { decisions } = await takeInTurn(store, key, policy, 3);
      assert.deepEqual(
        decisions.map((d) => d.allowed),
        [true, true, false],
      );
    });

    it('leasedStore.sweep() gives the unspent tokens of an expired lease back to the bucket', async () => {
      const clock = manualClock();
      const store = open(0, clock);
      const key = freshKey();
      await takeInTurn(store, key, hundred, 8); // leases 1, 2, 4, 8: 7 tokens held unspent
      const before = (await storedTokens(backend.direct, key)) as number;
      assert.equal(await store.sweep(), 0, 'nothing has expired yet');
      clock.advance(1000);
      assert.equal(await store.sweep(), 1);
      const back = ((await storedTokens(backend.direct, key)) as number) - before;
      assert.ok(back >= 7 && back < 7.1, `gave back ${back}`);
      assert.equal(store.size(), 1, 'the key is kept for a lease period with its rate');
      clock.advance(1000);
      await store.sweep();
      assert.equal(store.size(), 0);
    });

    it('leasedStore.close() gives back every unspent token', async () => {
      const store = open(1);
      const key = freshKey();
      await takeInTurn(store, key, hundred, 8);
      await store.close();
      const tokens = (await storedTokens(backend.direct, key)) as number;
      assert.ok(tokens >= 92 && tokens < 92.1, `bucket holds ${tokens}`);
    });

    it('leasedStore with a full map decides a new key by the database alone and keeps nothing', async () => {
      const store = createLeasedStore(backend.pools[0], {
        leaseFraction: 0.5,
        maxKeys: 1,
        sweepIntervalMs: 0,
        namedStatements: backend.namedStatements,
      });
      stores.push(store);
      await takeInTurn(store, freshKey(), hundred, 1);
      const other = freshKey();
      const { decisions, asked } = await takeInTurn(store, other, bucketPolicy(6, 2), 3);
      assert.deepEqual(
        decisions.map((d) => d.allowed),
        [true, true, false],
      );
      assert.equal(asked, 3);
      assert.equal(store.size(), 1);
    });
  });
}

describe('createLeasedStore() failures', () => {
  let refused: pg.Pool;
  before(() => {
    // Nothing listens on port 1: every connection fails with ECONNREFUSED.
    refused = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/none', connectionTimeoutMillis: 1000 });
    refused.on('error', () => {});
  });
  after(() => refused.end());

  it('leasedStore.take() rejects when the database fails, and the next request asks again', async () => {
    const store = createLeasedStore(refused, { leaseFraction: 0.1, sweepIntervalMs: 0 });
    const policy = bucketPolicy(60, 20);
    await assert.rejects(Promise.resolve(store.take('k', policy)), { code: 'ECONNREFUSED' });
    const again = store.take('k', policy);
    assert.ok(again instanceof Promise, 'a failure is not remembered as a refusal');
    await assert.rejects(again, { code: 'ECONNREFUSED' });
    await store.close();
  });

  it('createLeasedStore() refuses a lease fraction outside (0, 1]', () => {
    for (const leaseFraction of [0, -0.1, 1.5, Number.NaN]) {
      assert.throws(() => createLeasedStore(refused, { leaseFraction }), RangeError);
    }
  });
});
