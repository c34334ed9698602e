// Ordered SQL migrations, applied under an advisory lock so several instances can start at once.
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';

const MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));
// An arbitrary constant shared by every instance of this server: the key of the migration lock.
const LOCK_KEY = 7_242_015_001;
const LOCK_POLL_MS = 100;

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
  const client = await pool.connect();
  const onError = (): void => {};
  client.on('error', onError);
  const applied: string[] = [];
  let broken = false;
  try {
    // Session-level lock: a second instance waits here until the first has finished. It polls:
    // a blocking pg_advisory_lock would be cancelled by the pool's lock_timeout, statement_timeout
    // and query_timeout while the other instance is still migrating.
    while (
      !(await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [LOCK_KEY])).rows[0]
        ?.locked
    ) {
      await sleep(LOCK_POLL_MS);
    }
    try {
      await client.query(
        'CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())',
      );
      const done = new Set(
        (await client.query<{ version: string }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version),
      );
      for (const m of all) {
        if (done.has(m.version)) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [m.version]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw new Error(`Migration ${m.version} failed`, { cause: err });
        }
        applied.push(m.version);
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]);
    }
  } catch (err) {
    broken = true;
    throw err;
  } finally {
    client.off('error', onError);
    client.release(broken ? true : undefined);
  }
  return applied;
}
