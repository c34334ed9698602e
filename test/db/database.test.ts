import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { createDatabase, type Database, DatabaseLockedError, postgresPoolConfig } from '../../lib/db/database.ts';
import { createLogger } from '../../lib/log.ts';
import { TEST_DATABASE_URL, testConfig } from '../support/config.ts';
import { capturingLog } from '../support/log-lines.ts';
import { seedEmbeddedDatabase } from '../support/pglite-template.ts';

const NEEDS_POSTGRES = !TEST_DATABASE_URL && 'needs TEST_DATABASE_URL';

/** The PID of a process that has certainly exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await once(child, 'exit');
  return child.pid as number;
}

async function backendPid(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return (rows[0] as { pid: number }).pid;
}

/** The TLS settings pg will really use for a pool config (the URL's sslmode overrides the ssl object). */
function effectiveSsl(options: pg.PoolConfig): unknown {
  return (new pg.Client(options) as pg.Client & { connectionParameters: { ssl: unknown } }).connectionParameters.ssl;
}

/** The password a client built by the pool would send (pg-pool does `new Client(options)`). */
function passwordAsked(options: pg.PoolConfig): () => Promise<string> {
  const Client = (options.Client ?? pg.Client) as new (config: pg.PoolConfig) => pg.Client;
  const password: unknown = new Client(options).password;
  assert.equal(typeof password, 'function', 'the client reads the password when it connects');
  return password as () => Promise<string>;
}

describe('createDatabase() with the embedded PGlite', () => {
  let dir: string;
  let capture: ReturnType<typeof capturingLog>;
  let db: Database | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'database-test-'));
    await seedEmbeddedDatabase(dir);
    capture = capturingLog();
    db = await createDatabase(testConfig({ DATABASE_URL: undefined }, dir), capture.log);
  });
  after(async () => {
    await db?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('createDatabase() without DATABASE_URL answers queries and logs that it is for development only', async () => {
    assert.equal(db?.kind, 'pglite');
    const { rows } = await (db as Database).pool.query<{ answer: number }>('SELECT 41 + 1 AS answer');
    assert.deepEqual(rows, [{ answer: 42 }]);
    const line = capture.lines().find((l) => String(l['msg']).includes('embedded PGlite'));
    assert.match(String(line?.['msg']), /for development only/);
  });

  it('the embedded pool answers the next queries correctly after the database refused one', async () => {
    const pool = (db as Database).pool;
    // Sent as soon as the failure is known, as a request's own follow-up query would be.
    const next = pool.query('SELECT 1/0').then(
      () => assert.fail('division by zero succeeded'),
      (err: { code?: string }) => {
        assert.equal(err.code, '22012');
        return pool.query<{ x: number }>({ text: 'SELECT $1::int AS x', values: [2] });
      },
    );
    assert.deepEqual((await next).rows, [{ x: 2 }]);
    assert.deepEqual((await pool.query<{ x: number }>('SELECT 3 AS x')).rows, [{ x: 3 }]);
  });

  it('the embedded pool keeps answering after refused queries with parameters, one after another', async () => {
    const pool = (db as Database).pool;
    for (const x of [4, 5]) {
      await assert.rejects(pool.query('SELECT 1/$1::int', [0]), { code: '22012' });
      assert.deepEqual((await pool.query<{ x: number }>('SELECT $1::int AS x', [x])).rows, [{ x }]);
    }
  });

  it('a second createDatabase() on one DATA_DIR fails with DatabaseLockedError while the first is open', async () => {
    await assert.rejects(createDatabase(testConfig({ DATABASE_URL: undefined }, dir), capture.log), (err: Error) => {
      assert.ok(err instanceof DatabaseLockedError);
      assert.match(err.message, /in use by another process/);
      assert.ok(err.message.includes(dir), 'the message names the directory');
      return true;
    });
  });

  it('db.close() releases the lock on DATA_DIR', async () => {
    await (db as Database).close();
    db = undefined;
    assert.equal(existsSync(join(dir, 'server.lock')), false);
  });

  it('createDatabase() takes over a lock left by a process that died', async () => {
    const lock = join(dir, 'server.lock');
    await writeFile(lock, String(await deadPid()));
    db = await createDatabase(testConfig({ DATABASE_URL: undefined }, dir), capture.log);
    assert.equal(await readFile(lock, 'utf8'), String(process.pid));
    const { rows } = await db.pool.query<{ n: number }>('SELECT 1 AS n');
    assert.deepEqual(rows, [{ n: 1 }]);
  });
});

describe('postgresPoolConfig()', () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pool-config-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('postgresPoolConfig() strips sslmode from the URL if DATABASE_CA_FILE is set, so the CA is verified', async () => {
    const ca = join(dir, 'ca.pem');
    await writeFile(ca, '-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n');
    const options = postgresPoolConfig(
      testConfig({
        DATABASE_URL: 'postgres://app:pw@db.example:5432/app?sslmode=no-verify&application_name=probe',
        DATABASE_CA_FILE: ca,
      }),
    );
    assert.deepEqual(effectiveSsl(options), { ca: await readFile(ca, 'utf8'), rejectUnauthorized: true });
    const url = new URL(options.connectionString as string);
    assert.equal(url.searchParams.get('sslmode'), null);
    assert.equal(url.searchParams.get('application_name'), 'probe');
  });

  it('postgresPoolConfig() reads DATABASE_PASSWORD_FILE again for every connection', async () => {
    const file = join(dir, 'password');
    await writeFile(file, 'first\n');
    const options = postgresPoolConfig(
      testConfig({ DATABASE_URL: 'postgres://app@db.example:5432/app', DATABASE_PASSWORD_FILE: file }),
    );
    // What pg will ask when it connects: the client the pool builds from these options.
    const password = passwordAsked(options);
    assert.equal(await password(), 'first');
    await writeFile(file, 'second\n');
    assert.equal(await password(), 'second');
  });
});

describe('createDatabase() with DATABASE_URL on PostgreSQL', { skip: NEEDS_POSTGRES }, () => {
  let capture: ReturnType<typeof capturingLog>;
  let db: Database;
  let admin: pg.Client;

  before(async () => {
    capture = capturingLog();
    db = await createDatabase(testConfig({ DB_STATEMENT_TIMEOUT_MS: '4000' }), capture.log);
    admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
  });
  after(async () => {
    await db?.close();
    await admin?.end();
  });

  it('createDatabase() opens connections with the configured statement_timeout and application_name', async () => {
    assert.equal(db.kind, 'postgres');
    const { rows } = await db.pool.query<{ timeout: string; name: string }>(
      "SELECT current_setting('statement_timeout') AS timeout, current_setting('application_name') AS name",
    );
    assert.deepEqual(rows, [{ timeout: '4s', name: 'chat-server' }]);
  });

  it('the pool survives pg_terminate_backend of an idle client, logs it, and the next query works', async () => {
    const pid = await backendPid(db.pool);
    const failed = new Promise((resolve) => db.pool.once('error', resolve));
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await failed;
    const line = capture.lines().find((l) => l['msg'] === 'idle database client failed');
    assert.match(JSON.stringify(line ?? {}), /57P01/);
    assert.notEqual(await backendPid(db.pool), pid);
  });
});

describe('DATABASE_PASSWORD_FILE on PostgreSQL', { skip: NEEDS_POSTGRES }, () => {
  const role = `t_role_${randomBytes(6).toString('hex')}`;
  let dir: string;
  let admin: pg.Client;
  let db: Database;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'password-file-test-'));
    admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'first-password'`);
    await writeFile(join(dir, 'password'), 'first-password\n', { mode: 0o600 });
    const url = new URL(TEST_DATABASE_URL as string);
    url.username = role;
    url.password = '';
    db = await createDatabase(
      testConfig({ DATABASE_URL: url.toString(), DATABASE_PASSWORD_FILE: join(dir, 'password') }),
      createLogger({ level: 'silent' }),
    );
  });
  after(async () => {
    await db?.close();
    await admin?.query(`DROP ROLE IF EXISTS ${role}`);
    await admin?.end();
    await rm(dir, { recursive: true, force: true });
  });

  it('a new connection after a password rotation logs in with the new password from the file', async () => {
    const first = await db.pool.connect();
    try {
      await admin.query(`ALTER ROLE ${role} PASSWORD 'second-password'`);
      await writeFile(join(dir, 'password'), 'second-password\n');
      // The first client is held, so the pool must open a second connection.
      const second = await db.pool.connect();
      try {
        const { rows } = await second.query<{ user: string }>('SELECT current_user AS user');
        assert.deepEqual(rows, [{ user: role }]);
      } finally {
        second.release();
      }
    } finally {
      first.release();
    }
  });
});
