// Ordered SQL migrations, applied under an advisory lock so several instances can start at once.
//
// The lock is transaction-scoped (pg_try_advisory_xact_lock), never a session lock: behind a
// transaction-mode pooler (PgBouncer) the statements of one session may run on different server
// connections, so a session lock could be taken on one backend, "released" on another, and stay
// orphaned. Each migration runs in its own transaction, which takes the lock, reads what is
// applied, applies the next pending migration and records it; a failing one rolls back whole.
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { withTransaction } from './transaction.ts';

const MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));
// An arbitrary constant shared by every instance of this server: the key of the migration lock.
const LOCK_KEY = 7_242_015_001;
const LOCK_POLL_MS = 100;
// What a step reports when another instance holds the lock.
const BUSY = Symbol('busy');

export interface Migration {
  version: string;
  sql: string;
}

/** Reads `NNN_name.sql` files in order. */
export async function loadMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (f) => ({ version: f.replace(/\.sql$/, ''), sql: await readFile(dir + f, 'utf8') })),
  );
}

/** Applies pending migrations; returns the versions it applied. */
export async function migrate(pool: pg.Pool, migrations?: Migration[]): Promise<string[]> {
  const all = migrations ?? (await loadMigrations());
  const applied: string[] = [];
  for (;;) {
    const step = await withTransaction(pool, (client) => applyNext(client, all));
    if (step === undefined) return applied;
    // Polls rather than blocking in pg_advisory_xact_lock: the pool's lock_timeout, statement_timeout
    // and query_timeout would cancel a wait that lasts as long as another instance's migration.
    if (step === BUSY) await sleep(LOCK_POLL_MS);
    else applied.push(step);
  }
}

/** Inside one transaction: the next pending migration's version once applied, undefined when none is left. */
async function applyNext(client: pg.PoolClient, all: Migration[]): Promise<string | undefined | typeof BUSY> {
  const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS locked', [
    LOCK_KEY,
  ]);
  if (rows[0]?.locked !== true) return BUSY;
  await client.query(
    `CREATE TABLE IF NOT EXISTS schema_migrations (
       version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
  );
  const done = new Set(
    (await client.query<{ version: string }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version),
  );
  const next = all.find((m) => !done.has(m.version));
  if (next === undefined) return undefined;
  try {
    await client.query(next.sql);
  } catch (err) {
    throw new Error(`Migration ${next.version} failed`, { cause: err });
  }
  await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [next.version]);
  return next.version;
}
