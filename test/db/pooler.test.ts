// The server's database use through PgBouncer in transaction mode: DB_POOLER=transaction, the
// statement timeout from the server side, sessions on DATABASE_SESSION_URL, and whole servers.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createDatabase, createSessionClient, type Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { type Cluster, startCluster } from '../support/cluster.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { scratchDatabase } from '../support/database.ts';
import { bearer, createTestKey } from '../support/keys.ts';
import { capturingLog } from '../support/log-lines.ts';
import { PGBOUNCER_UNAVAILABLE, type PgBouncer, startPgBouncer } from '../support/pgbouncer.ts';

const SKIP = (!TEST_DATABASE_URL && 'needs TEST_DATABASE_URL') || PGBOUNCER_UNAVAILABLE;

describe('the database through PgBouncer in transaction mode', { skip: SKIP }, () => {
  let bouncer: PgBouncer;
  let scratch: { url: string; drop(): Promise<void> };
  let pooledUrl: string;
  const opened: Database[] = [];

  async function open(env: Record<string, string>, log: Logger = createLogger({ level: 'silent' })): Promise<Database> {
    const db = await createDatabase(
      testConfig({ DATABASE_URL: pooledUrl, DATABASE_SESSION_URL: scratch.url, ...env }),
      log,
    );
    opened.push(db);
    return db;
  }

  before(async () => {
    scratch = await scratchDatabase(TEST_DATABASE_URL as string);
    // One server connection: every client's next transaction may meet another client's backend.
    bouncer = await startPgBouncer(TEST_DATABASE_URL as string, { poolSize: 1 });
    pooledUrl = bouncer.url(scratch.url);
  });
  after(async () => {
    for (const db of opened) await db.close();
    await bouncer?.stop();
    await scratch?.drop();
  });

  it('PgBouncer refuses the session startup parameters that DB_POOLER=none sends', async () => {
    const db = await open({ DB_POOLER: 'none' });
    await assert.rejects(db.pool.query('SELECT 1'), /unsupported startup parameter/);
  });

  it('createDatabase() with DB_POOLER=transaction connects and migrates through PgBouncer', async () => {
    const db = await open({ DB_POOLER: 'transaction' });
    assert.equal(db.namedStatements, false);
    await migrate(db.pool);
    const { rows } = await db.pool.query<{ name: string }>("SELECT current_setting('application_name') AS name");
    assert.deepEqual(rows, [{ name: 'chat-server' }]);
  });

  it('createDatabase() with DB_POOLER=transaction warns when the database sets no statement_timeout', async () => {
    const capture = capturingLog();
    await open({ DB_POOLER: 'transaction' }, capture.log);
    assert.match(capture.text(), /sets no statement_timeout: set one on the role/);
  });

  it('behind the pooler the statement timeout comes from the database settings, with no warning', async (t) => {
    const direct = new pg.Client({ connectionString: scratch.url });
    await direct.connect();
    const name = new URL(scratch.url).pathname.slice(1);
    await direct.query(`ALTER DATABASE ${name} SET statement_timeout = '300ms'`);
    t.after(async () => {
      await direct.query(`ALTER DATABASE ${name} RESET statement_timeout`);
      await direct.end();
    });
    // A fresh pooler, so its one server connection starts after the setting.
    const fresh = await startPgBouncer(TEST_DATABASE_URL as string, { poolSize: 1 });
    t.after(() => fresh.stop());
    const capture = capturingLog();
    const db = await createDatabase(
      testConfig({ DATABASE_URL: fresh.url(scratch.url), DB_POOLER: 'transaction', DATABASE_SESSION_URL: scratch.url }),
      capture.log,
    );
    t.after(() => db.close());
    await assert.rejects(db.pool.query('SELECT pg_sleep(2)'), { code: '57014' });
    assert.doesNotMatch(capture.text(), /statement_timeout/);
  });

  it('API key lookups from many clients on one server connection never meet a stale prepared statement', async () => {
    const [one, two] = [await open({ DB_POOLER: 'transaction' }), await open({ DB_POOLER: 'transaction' })];
    await migrate(one.pool);
    const key = await createTestKey(one.pool, 'pooled');
    const { findApiKeyByHash } = await import('../../lib/db/api-keys.ts');
    const { hashApiKey } = await import('../../lib/auth/api-key.ts');
    const lookups = Array.from({ length: 40 }, (_, i) =>
      findApiKeyByHash(i % 2 ? one.pool : two.pool, hashApiKey(key.key)),
    );
    for (const row of await Promise.all(lookups)) assert.equal(row?.id, key.identity.slice('key:'.length));
  });

  it('createSessionClient() without DATABASE_SESSION_URL connects to DATABASE_URL with its own name', async (t) => {
    const session = createSessionClient(testConfig({ DATABASE_URL: scratch.url }), 'probe-direct');
    session.on('error', () => {});
    await session.connect();
    t.after(() => session.end());
    const { rows } = await session.query(
      "SELECT current_database() AS db, current_setting('application_name') AS name",
    );
    assert.deepEqual(rows, [{ db: new URL(scratch.url).pathname.slice(1), name: 'probe-direct' }]);
  });

  it('createSessionClient() listens on DATABASE_SESSION_URL and hears a NOTIFY sent through the pooler', async (t) => {
    const config = testConfig({ DATABASE_URL: pooledUrl, DB_POOLER: 'transaction', DATABASE_SESSION_URL: scratch.url });
    const session = createSessionClient(config, 'probe-listener');
    session.on('error', () => {});
    await session.connect();
    t.after(() => session.end());
    await session.query('LISTEN scale_probe');
    const heard = new Promise<string | undefined>((resolve) => session.once('notification', (n) => resolve(n.payload)));
    const db = await open({ DB_POOLER: 'transaction' });
    await db.pool.query("SELECT pg_notify('scale_probe', 'hello')");
    assert.equal(await heard, 'hello');
  });
});

describe('two servers started at once through PgBouncer', { skip: SKIP }, () => {
  let bouncer: PgBouncer;
  let cluster: Cluster;

  before(async () => {
    bouncer = await startPgBouncer(TEST_DATABASE_URL as string, { poolSize: 2 });
    cluster = await startCluster({
      instances: 2,
      databaseUrl: (url) => bouncer.url(url),
      env: { DB_POOLER: 'transaction', RATE_LIMIT_STORE: 'postgres-leased', RATE_LIMIT_BURST: '100' },
    });
  });
  after(async () => {
    await cluster?.close();
    await bouncer?.stop();
  });

  it('both servers migrate one fresh database at once, each version recorded once', async () => {
    const { rows } = await cluster.pool.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM schema_migrations GROUP BY version HAVING count(*) > 1',
    );
    assert.deepEqual(rows, []);
    const applied = await cluster.pool.query('SELECT version FROM schema_migrations');
    assert.ok((applied.rowCount ?? 0) >= 2);
  });

  it('both servers authenticate and rate-limit through the pooler', async () => {
    const key = await createTestKey(cluster.pool, 'cluster-pooled');
    const statuses = await Promise.all(
      Array.from({ length: 20 }, () => cluster.request('/v1/agents', { headers: bearer(key.key) })),
    );
    assert.deepEqual(new Set(statuses.map((r) => r.status)), new Set([200]));
    assert.ok(cluster.connectionsPerInstance().every((n) => n > 0));
  });
});

describe('SQL in lib/ keeps no session state a transaction-mode pooler would lose', () => {
  const root = fileURLToPath(new URL('../../lib/', import.meta.url));
  const files = readdirSync(root, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') || f.endsWith('.sql'))
    .map((f) => ({ name: f, text: readFileSync(join(root, f), 'utf8') }));

  for (const [what, pattern] of [
    ['a session advisory lock', /pg_(try_)?advisory_lock(_shared)?\s*\(/i],
    ['a session-wide SET', /['"`]\s*SET\s+(?!LOCAL\b)(SESSION\s+)?[a-z_]+\s*(=|TO\b)/i],
    ['a fixed prepared-statement name', /\bname:\s*['"`][^'"`\n]*['"`],\s*text:/],
  ] as const) {
    it(`no file in lib/ uses ${what}`, () => {
      const offenders = files.filter((f) => pattern.test(f.text)).map((f) => f.name);
      assert.deepEqual(offenders, []);
    });
  }
});
