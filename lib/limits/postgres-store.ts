// Bucket store in PostgreSQL, so every instance behind the load balancer shares one bucket per key.
//
// Each decision is ONE statement, timed by the database clock, never the caller's: instances
// whose clocks disagree still refill identically. The upsert takes the row lock, refills, and
// subtracts only when the refilled value covers the cost (the ON CONFLICT ... WHERE); concurrent
// takes on one key queue on that lock, so a burst of N is granted exactly N times however many
// instances ask. PostgreSQL 15 cannot return the pre-update row, so a refusal (no row from the
// upsert) reads the bucket in a second branch of the same statement with FOR UPDATE: under READ
// COMMITTED that follows the row to its latest version, the one the upsert judged and still holds
// locked, so the Retry-After we compute is exact (save one race, handled in take()). Errors
// propagate; the middleware fails closed.
import type pg from 'pg';
import { type BucketPolicy, type BucketStore, type Decision, describeDecision } from './token-bucket.ts';

export interface PostgresStoreOptions {
  /** How often to delete buckets that have surely refilled; default 60 000 ms; 0 disables the timer. */
  sweepIntervalMs?: number;
  /** Lower bound, in seconds, on how long a row must be idle before a sweep may delete it. */
  staleAfterSeconds?: number;
  /** Where sweep failures go (the sweeper has no caller to throw to); default: ignored. */
  onError?: (err: unknown) => void;
  /** Prepare the statement once per connection; false behind a transaction-mode pooler. Default true. */
  namedStatements?: boolean;
}

/** The Postgres store adds an explicit sweep (also run on a timer) and a close that stops the timer. */
export interface PostgresStore extends BucketStore {
  sweep(): Promise<number>;
  close(): Promise<void>;
}

// $1 key, $2 capacity, $3 refill per second, $4 cost. The time of the decision is the inserted
// row's clock_timestamp() (EXCLUDED.updated_at), one value used by both the check and the update.
// GREATEST(0, …) and GREATEST(updated_at, …) keep a clock read before a lock wait (and so older
// than the row) from refilling twice or moving the row back in time. The 1e-9 slack matches
// TOKEN_EPSILON in token-bucket.ts: binary rounding must not refuse a token that has refilled.
const REFILLED =
  'LEAST($2::float8, b.tokens + $3::float8 * ' +
  'GREATEST(0, EXTRACT(EPOCH FROM EXCLUDED.updated_at - b.updated_at)::float8))';
export const TAKE_SQL = `
WITH taken AS (
  INSERT INTO rate_limit_buckets AS b (key, tokens, updated_at)
  VALUES ($1::text, $2::float8 - $4::float8, clock_timestamp())
  ON CONFLICT (key) DO UPDATE
    SET tokens = GREATEST(0, ${REFILLED} - $4::float8),
        updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
    WHERE ${REFILLED} + 1e-9 >= $4::float8
  RETURNING tokens
)
SELECT true AS allowed, tokens FROM taken
UNION ALL
SELECT false AS allowed, tokens FROM (
  SELECT LEAST($2::float8,
      tokens + $3::float8 * GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at)::float8)) AS tokens
  FROM rate_limit_buckets
  WHERE key = $1::text AND NOT EXISTS (SELECT 1 FROM taken)
  FOR UPDATE
) AS refused`;

// Index-friendly (rate_limit_buckets_updated): a row idle for the time a bucket takes to refill
// from empty is full whatever it held, so deleting it changes no decision.
const SWEEP_SQL = `DELETE FROM rate_limit_buckets WHERE updated_at < now() - make_interval(secs => $1::float8)`;

/** Deletes buckets idle for `staleAfterSeconds`, which must be at least the time any of them takes to refill. */
export async function deleteStaleBuckets(pool: pg.Pool, staleAfterSeconds: number): Promise<number> {
  const result = await pool.query(SWEEP_SQL, [staleAfterSeconds]);
  return result.rowCount ?? 0;
}

/** Creates the shared Postgres store over a pool (pg, or PGlite through pg's interface). */
export function createPostgresStore(pool: pg.Pool, options: PostgresStoreOptions = {}): PostgresStore {
  const onError = options.onError ?? (() => {});
  // Parsing and planning this statement anew costs about as much as running it.
  const statementName = options.namedStatements === false ? undefined : 'rate_limit_take';
  // The sweeper cannot see each row's policy, so it waits at least as long as the slowest
  // policy this process has used needs to refill from empty.
  let refillSeconds = options.staleAfterSeconds ?? 0;
  let sweeping: Promise<number> | undefined;

  async function take(key: string, policy: BucketPolicy): Promise<Decision> {
    const cost = 1;
    const fullRefillSeconds = policy.capacity / policy.refillPerSecond;
    if (fullRefillSeconds > refillSeconds) refillSeconds = fullRefillSeconds;
    const result = await pool.query<{ allowed: boolean; tokens: number }>({
      name: statementName,
      text: TAKE_SQL,
      values: [key, policy.capacity, policy.refillPerSecond, cost],
    });
    const row = result.rows[0];
    // No row: the key was first inserted by a concurrent statement after ours began, so the
    // refusal branch could not see it. Refused, and the time one token takes is a safe upper bound.
    if (row === undefined) return describeDecision(false, 0, policy, cost);
    return describeDecision(row.allowed, row.tokens, policy, cost);
  }

  async function runSweep(): Promise<number> {
    if (refillSeconds <= 0) return 0;
    return deleteStaleBuckets(pool, refillSeconds);
  }

  function sweep(): Promise<number> {
    // One sweep at a time: a slow DELETE must not pile up behind the timer.
    sweeping ??= runSweep().finally(() => {
      sweeping = undefined;
    });
    return sweeping;
  }

  const intervalMs = options.sweepIntervalMs ?? 60_000;
  const timer = intervalMs > 0 ? setInterval(() => sweep().catch(onError), intervalMs) : undefined;
  // The sweeper is housekeeping; it must never keep the process alive on its own.
  timer?.unref();

  async function close(): Promise<void> {
    if (timer !== undefined) clearInterval(timer);
    await sweeping?.catch(() => 0);
  }

  return { take, sweep, close };
}
