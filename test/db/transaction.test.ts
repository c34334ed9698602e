import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { withTransaction } from '../../lib/db/transaction.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { ENGINES } from '../support/engines.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';

const log = createLogger({ level: 'silent' });

async function backendPid(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return (rows[0] as { pid: number }).pid;
}

for (const engine of ENGINES) {
  describe(`withTransaction() on ${engine.label}`, { skip: engine.skip }, () => {
    // A table of its own, so a shared PostgreSQL database is left as it was found.
    const table = `tx_probe_${randomBytes(6).toString('hex')}`;
    let dir: string;
    let db: Database;

    async function rowIds(): Promise<number[]> {
      const { rows } = await db.pool.query<{ id: number }>(`SELECT id FROM ${table} ORDER BY id`);
      return rows.map((r) => r.id);
    }

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tx-test-'));
      if (!engine.external) await seedEmbeddedDatabase(dir);
      // One client: whatever withTransaction hands back is exactly what the next caller gets.
      const env = engine.external ? { DB_POOL_MAX: '1' } : { DATABASE_URL: undefined };
      db = await createDatabase(testConfig(env, dir), log);
      await db.pool.query(
        `CREATE TABLE ${table} (id int PRIMARY KEY, parent int REFERENCES ${table} (id) DEFERRABLE INITIALLY DEFERRED)`,
      );
    });
    after(async () => {
      if (engine.external) await db?.pool.query(`DROP TABLE IF EXISTS ${table}`);
      await db?.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('withTransaction() commits and returns what fn returned', async () => {
      const result = await withTransaction(db.pool, async (client) => {
        await client.query(`INSERT INTO ${table} (id) VALUES (1), (2)`);
        return 'done';
      });
      assert.equal(result, 'done');
      assert.deepEqual(await rowIds(), [1, 2]);
    });

    it('withTransaction() leaves no rows behind when fn throws, and rethrows the same error', async () => {
      const failure = new Error('fn failed');
      await assert.rejects(
        withTransaction(db.pool, async (client) => {
          await client.query(`INSERT INTO ${table} (id) VALUES (10), (11)`);
          throw failure;
        }),
        (err) => err === failure,
      );
      assert.deepEqual(await rowIds(), [1, 2]);
    });

    it('withTransaction() hands the client back healthy after a failed statement', async () => {
      const pidBefore = await backendPid(db.pool);
      await assert.rejects(
        withTransaction(db.pool, async (client) => {
          await client.query(`INSERT INTO ${table} (id) VALUES (20)`);
          await client.query(`INSERT INTO ${table} (id) VALUES (1)`); // 23505: the transaction is now aborted
        }),
        { code: '23505' },
      );
      // Left in the aborted transaction, the next query would fail with 25P02; a new connection would have a new pid.
      assert.deepEqual(await rowIds(), [1, 2]);
      assert.equal(await backendPid(db.pool), pidBefore);
    });

    it('withTransaction() rolls back when COMMIT itself fails', async () => {
      await assert.rejects(
        withTransaction(db.pool, async (client) => {
          await client.query(`INSERT INTO ${table} (id, parent) VALUES (30, 999)`); // checked at COMMIT
        }),
        { code: '23503' },
      );
      assert.deepEqual(await rowIds(), [1, 2]);
    });
  });
}

describe('withTransaction() on PostgreSQL when the backend dies mid-transaction', {
  skip: !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL',
}, () => {
  let db: Database;
  let admin: pg.Client;

  before(async () => {
    db = await createDatabase(testConfig({ DB_POOL_MAX: '1' }), log);
    admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
  });
  after(async () => {
    await db?.close();
    await admin?.end();
  });

  it('withTransaction() destroys the broken client and the pool connects afresh', async () => {
    const pidBefore = await backendPid(db.pool);
    await assert.rejects(
      withTransaction(db.pool, async (client) => {
        await admin.query('SELECT pg_terminate_backend($1)', [pidBefore]);
        await client.query('SELECT 1');
      }),
    );
    const pidAfter = await backendPid(db.pool);
    assert.notEqual(pidAfter, pidBefore);
  });
});
