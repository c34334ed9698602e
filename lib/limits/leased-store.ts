// Bucket store shared through PostgreSQL at the memory store's cost: leases of tokens.
//
// The bucket of a key lives in rate_limit_buckets, as for the exact Postgres store, and refills
// by the database clock. An instance does not ask it per request: it takes a lease of several
// tokens in one statement, spends them from memory (synchronously, no promise on the hot path),
// and takes the next lease when they run out or the lease expires; that same statement gives the
// unspent tokens back. Concurrent requests for a key with no tokens share one lease request.
//
// The bound: every lease is taken from the shared bucket, but the bucket refills while leases are
// out, so at any moment the cluster may spend the tokens in the bucket plus those still held in
// leases. Each instance holds at most one lease per key, of at most maxLeaseTokens() (a fraction
// of the burst), so over any interval a key is granted at most
//   burst + rate × interval + instances × maxLeaseTokens(policy, fraction)
// which is the exact store's bound plus one lease per instance. A lease is sized from the rate
// this instance saw for the key during its previous lease, at most doubling, so a quiet key takes
// one token at a time (as the exact store does) and a busy one asks about once per lease period.
// An instance that dies loses its leases: their tokens come back only by refilling. When the
// bucket is empty the refusal is remembered until the database says a token is back, so a flood
// of refused requests makes no queries either. Database errors reject; the middleware fails closed.
import type pg from 'pg';
import { endLease, fromMemory, type LeaseState, msUntilOneToken, newLeaseState, nextLeaseSize } from './lease.ts';
import { deleteStaleBuckets } from './postgres-store.ts';
import { type BucketPolicy, type Decision, describeDecision, TOKEN_EPSILON } from './token-bucket.ts';

export interface LeasedStoreOptions {
  /** The largest lease as a fraction of the burst (RATE_LIMIT_LEASE_FRACTION), in (0, 1]. */
  leaseFraction: number;
  /** How long a lease lives before its unspent tokens go back; default 1000 ms. */
  leaseMs?: number;
  /** Most keys held at once; a new key beyond it is decided by one exact statement. Default 100 000. */
  maxKeys?: number;
  /** How often expired leases are given back; default leaseMs; 0 disables the timer. */
  sweepIntervalMs?: number;
  /** Prepare the statement once per connection; false behind a transaction-mode pooler. Default true. */
  namedStatements?: boolean;
  /** Where failures without a caller go (giving back tokens); default: ignored. */
  onError?: (err: unknown) => void;
  /** Monotonic clock in milliseconds; tests inject one. */
  now?: () => number;
}

/** A store whose take() answers synchronously while this instance holds tokens for the key. */
export interface LeasedStore {
  take(key: string, policy: BucketPolicy): Decision | Promise<Decision>;
  /**
   * Gives back the unspent tokens of expired leases, forgets idle keys, and at most once a minute
   * deletes rows that have surely refilled; resolves with the number of leases it ended.
   */
  sweep(): Promise<number>;
  /** Keys held in memory. */
  size(): number;
  /** Stops the timer and gives every unspent token back. */
  close(): Promise<void>;
}

interface Lease {
  tokens: number;
  granted: number;
}

// Deleting refilled rows needs an index scan; once a minute keeps the table small enough.
const ROW_SWEEP_INTERVAL_MS = 60_000;

// $1 key, $2 capacity, $3 refill per second, $4 tokens wanted, $5 unspent tokens given back. Like
// the exact store, one statement timed by the database clock under the row lock; the refill and
// the tokens given back are capped at the burst, and the lease takes what is there, up to $4.
const ELAPSED = 'GREATEST(0, EXTRACT(EPOCH FROM EXCLUDED.updated_at - b.updated_at)::float8)';
const AVAILABLE = `LEAST($2::float8, b.tokens + $5::float8 + $3::float8 * ${ELAPSED})`;
const GRANT = `LEAST($4::float8, floor(${AVAILABLE} + 1e-9))`;
export const LEASE_SQL = `
INSERT INTO rate_limit_buckets AS b (key, tokens, updated_at, granted)
VALUES ($1::text, $2::float8 - LEAST($4::float8, floor($2::float8)), clock_timestamp(),
        LEAST($4::float8, floor($2::float8)))
ON CONFLICT (key) DO UPDATE
  SET tokens = GREATEST(0, ${AVAILABLE} - ${GRANT}),
      granted = ${GRANT},
      updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
RETURNING tokens, granted`;

// Gives back unspent tokens of many keys at once, refilled to now first and capped at the burst.
// Keys are sent sorted so that two instances lock shared rows in the same order.
const GIVE_BACK_SQL = `
UPDATE rate_limit_buckets AS b
SET tokens = LEAST(r.capacity,
      b.tokens + r.amount + r.rate * GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)::float8)),
    updated_at = GREATEST(b.updated_at, clock_timestamp())
FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[]) AS r(key, capacity, rate, amount)
WHERE b.key = r.key`;

/** Creates the leased store over a pool (pg, or PGlite through pg's interface). */
export function createLeasedStore(pool: pg.Pool, options: LeasedStoreOptions): LeasedStore {
  const leaseMs = options.leaseMs ?? 1000;
  const maxKeys = options.maxKeys ?? 100_000;
  const now = options.now ?? (() => performance.now());
  const onError = options.onError ?? (() => {});
  const statementName = options.namedStatements === false ? undefined : 'rate_limit_lease';
  if (!(options.leaseFraction > 0 && options.leaseFraction <= 1))
    throw new RangeError(`Invalid lease fraction: expected (0, 1], got ${options.leaseFraction}`);
  const entries = new Map<string, LeaseState>();
  // The longest time any policy seen here takes to refill from empty: rows idle longer are full.
  let refillSeconds = 0;
  let lastRowSweepMs = now();

  const lease = (key: string, policy: BucketPolicy, want: number, back: number): Promise<Lease> =>
    leaseTokens(pool, statementName, key, policy, want, back);

  function take(key: string, policy: BucketPolicy): Decision | Promise<Decision> {
    const entry = entries.get(key);
    if (entry !== undefined && entry.renewing === undefined) {
      const decision = fromMemory(entry, now());
      if (decision !== undefined) return decision;
    }
    return fromDatabase(key, policy, entry);
  }

  async function fromDatabase(key: string, policy: BucketPolicy, found: LeaseState | undefined): Promise<Decision> {
    if (found === undefined && entries.size >= maxKeys) return takeExactly(pool, statementName, key, policy);
    const entry = found ?? newLeaseState(policy);
    if (found === undefined) entries.set(key, entry);
    entry.policy = policy;
    refillSeconds = Math.max(refillSeconds, policy.capacity / policy.refillPerSecond);
    entry.waiting += 1;
    try {
      // Each round either grants a token to the first waiter or refuses everyone in it, so this ends.
      for (;;) {
        entry.renewing ??= renew(key, entry);
        const refusal = await entry.renewing;
        if (refusal !== undefined) return refusal;
        const decision = fromMemory(entry, now());
        if (decision !== undefined) return decision;
      }
    } finally {
      entry.waiting -= 1;
    }
  }

  /** Ends the current lease, takes the next one in the same statement, and settles the entry. */
  async function renew(key: string, entry: LeaseState): Promise<Decision | undefined> {
    try {
      const giveBack = endLease(entry, now());
      const got = await lease(key, entry.policy, nextLeaseSize(entry, leaseMs, options.leaseFraction), giveBack);
      return startLease(entry, got, now(), leaseMs);
    } finally {
      entry.renewing = undefined;
    }
  }

  async function sweep(): Promise<number> {
    const nowMs = now();
    const back: Array<{ key: string; entry: LeaseState; amount: number }> = [];
    for (const [key, entry] of entries) {
      if (entry.renewing !== undefined || entry.waiting > 0) continue;
      if (entry.size > 0 && nowMs >= entry.expiresMs) {
        const amount = endLease(entry, nowMs);
        if (amount > TOKEN_EPSILON) back.push({ key, entry, amount });
      } else if (entry.size === 0 && nowMs >= entry.expiresMs + leaseMs && nowMs >= entry.refusedUntilMs) {
        // Idle for a whole lease period after its last lease ended: its rate is no longer news.
        entries.delete(key);
      }
    }
    await giveBackTokens(pool, back);
    if (refillSeconds > 0 && nowMs - lastRowSweepMs >= ROW_SWEEP_INTERVAL_MS) {
      lastRowSweepMs = nowMs;
      await deleteStaleBuckets(pool, refillSeconds + leaseMs / 1000);
    }
    return back.length;
  }

  const sweeper = startSweeper(options.sweepIntervalMs ?? leaseMs, sweep, onError);

  async function close(): Promise<void> {
    await sweeper.stop();
    await Promise.allSettled([...entries.values()].map((e) => e.renewing));
    const nowMs = now();
    const back = [...entries].map(([key, entry]) => ({ key, entry, amount: endLease(entry, nowMs) }));
    entries.clear();
    await giveBackTokens(
      pool,
      back.filter((b) => b.amount > TOKEN_EPSILON),
    ).catch(onError);
  }

  return { take, sweep, size: () => entries.size, close };
}

/** Makes `got` the entry's lease from `atMs`; the refusal when it granted no token. */
function startLease(entry: LeaseState, got: Lease, atMs: number, leaseMs: number): Decision | undefined {
  entry.size = got.granted;
  entry.left = got.granted;
  entry.startedMs = atMs;
  entry.expiresMs = atMs + leaseMs;
  entry.sharedTokens = got.tokens;
  entry.refusedUntilMs = Number.NEGATIVE_INFINITY;
  if (got.granted >= 1) return undefined;
  entry.refusedUntilMs = atMs + msUntilOneToken(got.tokens, entry.policy);
  return describeDecision(false, got.tokens, entry.policy);
}

/** A key the map has no room for: one token, decided by the database alone, as the exact store does. */
async function takeExactly(
  pool: pg.Pool,
  statementName: string | undefined,
  key: string,
  policy: BucketPolicy,
): Promise<Decision> {
  const got = await leaseTokens(pool, statementName, key, policy, 1, 0);
  return describeDecision(got.granted >= 1, got.tokens, policy);
}

/** One lease statement: gives back `back` tokens of the previous lease and takes up to `want`. */
async function leaseTokens(
  pool: pg.Pool,
  statementName: string | undefined,
  key: string,
  policy: BucketPolicy,
  want: number,
  back: number,
): Promise<Lease> {
  const { rows } = await pool.query<Lease>({
    name: statementName,
    text: LEASE_SQL,
    values: [key, policy.capacity, policy.refillPerSecond, want, back],
  });
  const row = rows[0] as Lease;
  return { tokens: Number(row.tokens), granted: Number(row.granted) };
}

/** Gives back the unspent tokens of many keys in one statement. */
async function giveBackTokens(
  pool: pg.Pool,
  back: Array<{ key: string; entry: LeaseState; amount: number }>,
): Promise<void> {
  if (back.length === 0) return;
  back.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  await pool.query(GIVE_BACK_SQL, [
    back.map((b) => b.key),
    back.map((b) => b.entry.policy.capacity),
    back.map((b) => b.entry.policy.refillPerSecond),
    back.map((b) => b.amount),
  ]);
}

/** Runs `sweep` every `intervalMs` (0: never), one at a time; stop() waits for the one running. */
function startSweeper(
  intervalMs: number,
  sweep: () => Promise<unknown>,
  onError: (err: unknown) => void,
): { stop(): Promise<void> } {
  let sweeping: Promise<unknown> | undefined;
  const timer =
    intervalMs > 0
      ? setInterval(() => {
          // One sweep at a time: a slow database must not pile them up behind the timer.
          sweeping ??= sweep()
            .catch(onError)
            .finally(() => {
              sweeping = undefined;
            });
        }, intervalMs)
      : undefined;
  // Housekeeping must never keep the process alive on its own.
  timer?.unref();
  return {
    async stop() {
      if (timer !== undefined) clearInterval(timer);
      await sweeping;
    },
  };
}
