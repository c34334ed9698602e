import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { loadMigrations, type Migration, migrate } from '../../lib/db/migrate.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { PGBOUNCER_UNAVAILABLE, startPgBouncer } from '../support/pgbouncer.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';

const log = createLogger({ level: 'silent' });

/** An empty database of either engine, opened the way the server opens it. */
interface Fresh {
  /** DATABASE_URL of the scratch database; undefined for PGlite. */
  url: string | undefined;
  /** Opens the database as the server would, with `env` on top of the test configuration. */
  open(env?: Record<string, string>): Promise<Database>;
  close(): Promise<void>;
}

async function freshPglite(): Promise<Fresh> {
  const dir = await mkdtemp(join(tmpdir(), 'migrate-test-'));
  await seedEmbeddedDatabase(dir);
  return {
    url: undefined,
    open: () => createDatabase(testConfig({ DATABASE_URL: undefined }, dir), log),
    close: () => rm(dir, { recursive: true, force: true }),
  };
}

async function freshPostgres(): Promise<Fresh> {
  const scratch = await scratchDatabase(TEST_DATABASE_URL as string);
  return {
    url: scratch.url,
    open: (env = {}) => createDatabase(testConfig({ DATABASE_URL: scratch.url, ...env }), log),
    close: () => scratch.drop(),
  };
}

/** A fresh database reached through PgBouncer in transaction mode, as DB_POOLER=transaction expects. */
async function freshThroughPgBouncer(): Promise<Fresh> {
  const scratch = await scratchDatabase(TEST_DATABASE_URL as string);
  const bouncer = await startPgBouncer(TEST_DATABASE_URL as string);
  const url = bouncer.url(scratch.url);
  return {
    url,
    open: (env = {}) =>
      createDatabase(
        testConfig({ DATABASE_URL: url, DB_POOLER: 'transaction', DATABASE_SESSION_URL: scratch.url, ...env }),
        log,
      ),
    async close() {
      await bouncer.stop();
      await scratch.drop();
    },
  };
}

async function recordedVersions(pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ version: string }>('SELECT version FROM schema_migrations ORDER BY version');
  return rows.map((r) => r.version);
}

async function tableExists(pool: pg.Pool, name: string): Promise<boolean> {
  const { rows } = await pool.query<{ found: string | null }>('SELECT to_regclass($1)::text AS found', [name]);
  return rows[0]?.found !== null;
}

const NEEDS_POSTGRES = !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL';
const engines = [
  { label: 'embedded PGlite', skip: false as const, fresh: freshPglite },
  { label: 'PostgreSQL', skip: NEEDS_POSTGRES, fresh: freshPostgres },
  {
    label: 'PostgreSQL through PgBouncer',
    skip: NEEDS_POSTGRES || PGBOUNCER_UNAVAILABLE,
    fresh: freshThroughPgBouncer,
  },
];

for (const engine of engines) {
  describe(`migrate() on ${engine.label}`, { skip: engine.skip }, () => {
    let fresh: Fresh;
    let db: Database;
    let versions: string[];

    before(async () => {
      versions = (await loadMigrations()).map((m) => m.version);
      fresh = await engine.fresh();
      db = await fresh.open();
    });
    after(async () => {
      await db?.close();
      await fresh?.close();
    });

    it('migrate() on an empty database applies every migration in order and records each', async () => {
      assert.ok(versions.length > 0);
      assert.deepEqual(await migrate(db.pool), versions);
      assert.deepEqual(await recordedVersions(db.pool), versions);
      for (const table of ['api_keys', 'conversations', 'messages', 'rate_limit_buckets']) {
        assert.equal(await tableExists(db.pool, table), true, table);
      }
    });

    it('migrate() run a second time applies nothing', async () => {
      assert.deepEqual(await migrate(db.pool), []);
      assert.deepEqual(await recordedVersions(db.pool), versions);
    });

    it('migrate() rolls back a failing migration whole and names it in the error', async () => {
      const broken: Migration[] = [
        { version: '900_probe_a', sql: 'CREATE TABLE probe_a (id int)' },
        { version: '901_probe_b', sql: 'CREATE TABLE probe_b (id int); SELECT 1 / 0' },
      ];
      await assert.rejects(migrate(db.pool, broken), (err: Error) => {
        assert.equal(err.message, 'Migration 901_probe_b failed');
        assert.equal((err.cause as { code?: string }).code, '22012');
        return true;
      });
      assert.equal(await tableExists(db.pool, 'probe_a'), true);
      assert.equal(await tableExists(db.pool, 'probe_b'), false);
      assert.deepEqual(await recordedVersions(db.pool), [...versions, '900_probe_a']);
    });

    it('migrate() after a failed run applies the fixed migration', async () => {
      const fixed: Migration[] = [
        { version: '900_probe_a', sql: 'CREATE TABLE probe_a (id int)' },
        { version: '901_probe_b', sql: 'CREATE TABLE probe_b (id int)' },
      ];
      assert.deepEqual(await migrate(db.pool, fixed), ['901_probe_b']);
      assert.equal(await tableExists(db.pool, 'probe_b'), true);
    });
  });
}

for (const engine of engines.slice(1)) {
  describe(`migrate() from several instances at once on ${engine.label}`, { skip: engine.skip }, () => {
    let fresh: Fresh;
    const dbs: Database[] = [];
    let impatient: Database;

    before(async () => {
      fresh = await engine.fresh();
      for (let i = 0; i < 3; i++) dbs.push(await fresh.open());
      // lock_timeout and statement_timeout of 100 ms: far shorter than another instance's migration.
      impatient = await fresh.open({ DB_STATEMENT_TIMEOUT_MS: '100' });
    });
    after(async () => {
      for (const db of dbs) await db.close();
      await impatient?.close();
      await fresh?.close();
    });

    it('migrate() from three pools at once applies and records each version exactly once', async () => {
      const versions = (await loadMigrations()).map((m) => m.version);
      const results = await Promise.all(dbs.map((db) => migrate(db.pool)));
      assert.deepEqual(results.flat().sort(), versions);
      const { rows } = await (dbs[0] as Database).pool.query<{ version: string; n: number }>(
        'SELECT version, count(*)::int AS n FROM schema_migrations GROUP BY version ORDER BY version',
      );
      assert.deepEqual(
        rows,
        versions.map((version) => ({ version, n: 1 })),
      );
    });

    it("migrate() waits for another instance's migration that outlasts its own lock_timeout", async () => {
      const slow: Migration[] = [{ version: '950_probe_slow', sql: 'SELECT pg_sleep(0.5)' }];
      const pool = (dbs[0] as Database).pool;
      const first = migrate(pool, slow);
      await waitUntil(async () => {
        const { rows } = await impatient.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
           WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()`,
        );
        return rows[0]?.n === 1;
      });
      const second = migrate(impatient.pool, slow);
      assert.deepEqual(await Promise.all([first, second]), [['950_probe_slow'], []]);
    });

    it('migrate() leaves no advisory lock behind once it has finished', async () => {
      await migrate((dbs[1] as Database).pool);
      const { rows } = await impatient.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_locks
         WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      );
      assert.equal(rows[0]?.n, 0);
    });
  });
}

/** Polls `check` every 10 ms until it holds; fails after two seconds. */
async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 2_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('Timed out waiting for the condition');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
