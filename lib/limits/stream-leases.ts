// Per-identity stream cap counted across every instance on one database: a lease row per live answer.
//
// acquire() inserts a row only while the key has fewer than `maxPerKey` live rows. Two instances
// asking at once are serialised by a transaction-scoped advisory lock on the key (safe behind a
// transaction-mode pooler, unlike a session lock), taken before the count, so the count's snapshot
// sees every row committed by whoever held the lock before. A row is live while its expires_at is
// ahead of the database clock: one heartbeat per instance pushes all of its rows forward, and the
// rows of an instance that died stop counting within the TTL. release() deletes the row; a delete
// that fails is retried by the next heartbeat, and the TTL bounds it if the instance dies first.
// inUse() counts this instance's answers only (what the metric and the drain care about).
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { withTransaction } from '../db/transaction.ts';
import { createConcurrencyLimiter, type Lease } from './concurrency.ts';

/** Stream slots as the server holds them: in this process, or shared through PostgreSQL. */
export interface StreamSlots {
  /** A lease, or undefined at the key's cap (`max`, its own, or the default); a shared store may ask the database. */
  acquire(key: string, max?: number): Lease | undefined | Promise<Lease | undefined>;
  /** Slots held on this instance by one key, or by all keys. */
  inUse(key?: string): number;
}

export interface StreamLeasesOptions {
  maxPerKey: number;
  /** How long a row counts after its instance last renewed it. */
  ttlMs: number;
  /** How often this instance renews its rows; default a third of the TTL. */
  heartbeatMs?: number;
  /** Where failures without a caller go (heartbeats, deletes); default: ignored. */
  onError?: (err: unknown) => void;
}

/** The shared store adds the heartbeat (also run on a timer) and a close that removes this instance's rows. */
export interface StreamLeases extends StreamSlots {
  acquire(key: string, max?: number): Promise<Lease | undefined>;
  /** The id of this instance's rows. */
  readonly instance: string;
  heartbeat(): Promise<void>;
  close(): Promise<void>;
}

// A class id for the two-key form of the advisory lock, so these never meet the migration lock's key space.
const LOCK_CLASS = 72_420_152;
// $1 id, $2 key, $3 instance, $4 TTL in seconds, $5 cap. clock_timestamp(): the database's clock, shared by all.
const INSERT_SQL = `
INSERT INTO stream_leases (id, key, instance, expires_at)
SELECT $1::uuid, $2::text, $3::uuid, clock_timestamp() + make_interval(secs => $4::float8)
WHERE (SELECT count(*) FROM stream_leases WHERE key = $2::text AND expires_at > clock_timestamp()) < $5::int
RETURNING id`;
const RENEW_SQL = `
UPDATE stream_leases SET expires_at = clock_timestamp() + make_interval(secs => $2::float8)
WHERE instance = $1::uuid`;
// Rows of dead instances no longer count; deleting them keeps the key index small.
const DELETE_EXPIRED_SQL = 'DELETE FROM stream_leases WHERE expires_at < clock_timestamp()';

/** Creates the shared stream cap over a pool (pg, or PGlite through pg's interface). */
export function createStreamLeases(pool: pg.Pool, options: StreamLeasesOptions): StreamLeases {
  const { maxPerKey, ttlMs } = options;
  if (!(Number.isInteger(maxPerKey) && maxPerKey >= 1))
    throw new RangeError(`Invalid concurrency cap: expected a positive integer, got ${maxPerKey}`);
  const onError = options.onError ?? (() => {});
  const instance = randomUUID();
  const ttlSeconds = ttlMs / 1000;
  // This instance's own answers, for inUse(): the same count an in-process cap keeps, without its cap.
  const local = createConcurrencyLimiter(Number.MAX_SAFE_INTEGER);
  // Rows whose delete failed: the heartbeat tries again.
  const undeleted = new Set<string>();
  const deleting = new Set<Promise<void>>();

  async function acquire(key: string, max = maxPerKey): Promise<Lease | undefined> {
    const id = randomUUID();
    const taken = await withTransaction(pool, async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_CLASS, key]);
      const { rows } = await client.query(INSERT_SQL, [id, key, instance, ttlSeconds, max]);
      return rows.length > 0;
    });
    if (!taken) return undefined;
    const held = local.acquire(key) as Lease;
    let released = false;
    function release(): void {
      if (released) return;
      released = true;
      held.release();
      const done = deleteRows([id]).finally(() => deleting.delete(done));
      deleting.add(done);
    }
    return { release, [Symbol.dispose]: release };
  }

  /** Deletes rows, remembering those it could not; never rejects. */
  async function deleteRows(ids: string[]): Promise<void> {
    try {
      await pool.query('DELETE FROM stream_leases WHERE id = ANY($1::uuid[])', [ids]);
      for (const id of ids) undeleted.delete(id);
    } catch (err) {
      for (const id of ids) undeleted.add(id);
      onError(err);
    }
  }

  async function heartbeat(): Promise<void> {
    if (local.inUse() > 0) await pool.query(RENEW_SQL, [instance, ttlSeconds]);
    if (undeleted.size > 0) await deleteRows([...undeleted]);
    await pool.query(DELETE_EXPIRED_SQL);
  }

  let beating: Promise<void> | undefined;
  const timer = setInterval(
    () => {
      // One heartbeat at a time: a slow database must not pile them up behind the timer.
      beating ??= heartbeat()
        .catch(onError)
        .finally(() => {
          beating = undefined;
        });
    },
    options.heartbeatMs ?? ttlMs / 3,
  );
  // Housekeeping must never keep the process alive on its own.
  timer.unref();

  async function close(): Promise<void> {
    clearInterval(timer);
    await beating;
    await Promise.all(deleting);
    // Whatever is left belongs to answers that can no longer run here.
    await pool.query('DELETE FROM stream_leases WHERE instance = $1::uuid', [instance]).catch(onError);
  }

  function inUse(key?: string): number {
    return local.inUse(key);
  }

  return { acquire, inUse, instance, heartbeat, close };
}
