// One pg.Pool interface for both engines: PostgreSQL (DATABASE_URL) or embedded PGlite (DATA_DIR).
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import pg from 'pg';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';

export interface Database {
  pool: pg.Pool;
  /** 'postgres' for a server, 'pglite' for the embedded development engine. */
  kind: 'postgres' | 'pglite';
  /**
   * Whether named prepared statements are safe: false behind a transaction-mode pooler, where the
   * next statement of a client may run on a server connection that never prepared the name.
   */
  namedStatements: boolean;
  close(): Promise<void>;
}

/** Thrown when another process holds the embedded database. */
export class DatabaseLockedError extends Error {
  constructor(dir: string) {
    super(
      `The embedded database in ${dir} is in use by another process (a running server?). Stop it, or set DATABASE_URL`,
    );
    this.name = 'DatabaseLockedError';
  }
}

/** Opens the configured database. */
export async function createDatabase(config: Config, log: Logger): Promise<Database> {
  return config.database.external ? createPostgres(config, log) : createPglite(config, log);
}

/** The pg.Pool options for DATABASE_URL, with TLS and password-file handling (exported for tests). */
export function postgresPoolConfig(config: Config): pg.PoolConfig {
  const db = config.database;
  return {
    ...connectionConfig(config, config.secrets.databaseUrl as string, db.pooler === 'none'),
    max: db.poolMax,
    idleTimeoutMillis: 10_000,
    maxLifetimeSeconds: db.maxLifetimeSeconds,
  };
}

/**
 * Options for one connection to `urlText`. With `sessionParameters` the timeouts go in the
 * startup packet; a transaction-mode pooler refuses them (PgBouncer: "unsupported startup
 * parameter"), so behind one they come from the role or database settings instead.
 */
export function connectionConfig(config: Config, urlText: string, sessionParameters: boolean): pg.PoolConfig {
  const db = config.database;
  const url = new URL(urlText);
  const options: pg.PoolConfig = {
    connectionTimeoutMillis: 5_000,
    // Client-side backstop slightly above the server's own limit: pg's query_timeout only rejects the promise.
    query_timeout: db.statementTimeoutMs + 1_000,
    application_name: 'chat-server',
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  };
  if (sessionParameters) {
    options.statement_timeout = db.statementTimeoutMs;
    options.idle_in_transaction_session_timeout = Math.max(db.statementTimeoutMs * 2, 10_000);
    options.lock_timeout = Math.min(db.statementTimeoutMs, 5_000);
  }
  if (db.caFile !== undefined) {
    // sslmode/sslrootcert in the URL override the ssl object in pg 8, and so does `ssl`
    // (`ssl=0` turns TLS off, `ssl=no-verify` skips verification): strip them so the verified CA
    // below always applies and nothing in the URL can weaken it.
    for (const key of ['ssl', 'sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'uselibpqcompat'])
      url.searchParams.delete(key);
    options.ssl = { ca: readFileSync(db.caFile, 'utf8'), rejectUnauthorized: true };
  }
  if (db.passwordFile !== undefined) {
    const file = db.passwordFile;
    url.password = '';
    // Read for every new connection, so rotating the password needs no restart.
    options.Client = clientWithPassword(async () => (await readFile(file, 'utf8')).trim());
  }
  options.connectionString = url.toString();
  return options;
}

/**
 * A client of its own (not from the pool) for a session that must stay open, such as LISTEN: to
 * DATABASE_SESSION_URL, or to DATABASE_URL when that reaches PostgreSQL directly (the configuration
 * requires a session URL with DB_POOLER=transaction: a pooler drops notifications). The caller
 * connects and ends it.
 */
export function createSessionClient(config: Config, applicationName: string): pg.Client {
  const { databaseSessionUrl, databaseUrl } = config.secrets;
  if (databaseUrl === undefined) throw new Error('A database session needs DATABASE_URL (not the embedded database)');
  const { Client, ...options } = connectionConfig(config, databaseSessionUrl ?? databaseUrl, false);
  const SessionClient = (Client ?? pg.Client) as new (config: pg.ClientConfig) => pg.Client;
  // A listening session waits for notifications, not for query results: no statement or idle limits.
  delete options.query_timeout;
  return new SessionClient({ ...options, application_name: applicationName });
}

/**
 * A pg.Client that asks `password` on every connect. A `password` pool option is not enough:
 * pg lets every field parsed from connectionString, the URL's empty password included,
 * override the options object, so the function would be dropped.
 */
function clientWithPassword(password: () => Promise<string>): new () => pg.Client {
  return class PasswordFileClient extends pg.Client {
    constructor(config?: string | pg.ClientConfig) {
      super(config);
      // Non-enumerable like pg's own, so the client never prints it.
      Object.defineProperty(this, 'password', {
        value: password,
        writable: true,
        configurable: true,
        enumerable: false,
      });
    }
  };
}

async function createPostgres(config: Config, log: Logger): Promise<Database> {
  const pool = new pg.Pool(postgresPoolConfig(config));
  // Mandatory: without it an idle client's error (a terminated backend) crashes the process.
  pool.on('error', (err) => log.warn('idle database client failed', { err }));
  const pooled = config.database.pooler === 'transaction';
  if (pooled) await warnWithoutStatementTimeout(pool, log);
  return {
    pool,
    kind: 'postgres',
    namedStatements: !pooled,
    async close() {
      await pool.end();
    },
  };
}

async function createPglite(config: Config, log: Logger): Promise<Database> {
  const dir = resolve(config.dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const releaseLock = acquireLock(join(dir, 'server.lock'));
  try {
    const { PGlite } = await import('@electric-sql/pglite');
    const { createPgConfig } = await import('@electric-sql/pglite/node-postgres');
    const engine = await PGlite.create(join(dir, 'pglite'));
    // The adapter exposes one shared connection; do not raise max.
    const pool = new pg.Pool(createPgConfig(engine) as pg.PoolConfig);
    keepClientAfterQueryErrors(pool);
    pool.on('error', (err) => log.warn('embedded database client failed', { err }));
    log.info('using the embedded PGlite database: for development only; set DATABASE_URL in production', {
      dataDir: dir,
    });
    return {
      pool,
      kind: 'pglite',
      namedStatements: true,
      async close() {
        try {
          await pool.end();
          await engine.close();
        } finally {
          releaseLock();
        }
      },
    };
  } catch (err) {
    releaseLock();
    throw err;
  }
}

/**
 * pg.Pool.query() destroys its client after any error; on the embedded engine that ends the one
 * connection every client shares, and the next query fails with it. A query the database refused
 * (a DatabaseError: a constraint, a syntax error) leaves the connection sound, so keep the client.
 */
function keepClientAfterQueryErrors(pool: pg.Pool): void {
  const query = async (config: string | pg.QueryConfig, values?: unknown[]): Promise<pg.QueryResult> => {
    const client = await pool.connect();
    try {
      const result = await client.query(config, values);
      client.release();
      return result;
    } catch (err) {
      client.release(refusedByDatabase(err) ? undefined : (err as Error));
      throw err;
    }
  };
  Object.defineProperty(pool, 'query', { value: query });
}

/** An error the database answered with (a SQLSTATE and a severity): pg's class, or the embedded adapter's own. */
function refusedByDatabase(err: unknown): boolean {
  if (err instanceof pg.DatabaseError) return true;
  const { code, severity } = (err ?? {}) as { code?: unknown; severity?: unknown };
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && typeof severity === 'string';
}

/**
 * Behind a transaction-mode pooler the statement timeout can only come from the server side
 * (ALTER ROLE … SET statement_timeout, or the pooler's own settings): say so when none is set.
 */
async function warnWithoutStatementTimeout(pool: pg.Pool, log: Logger): Promise<void> {
  try {
    const { rows } = await pool.query<{ timeout: string }>("SELECT current_setting('statement_timeout') AS timeout");
    if (rows[0]?.timeout === '0') {
      log.warn(
        'DB_POOLER=transaction and the database sets no statement_timeout: ' +
          'set one on the role (ALTER ROLE … SET statement_timeout)',
      );
    }
  } catch {
    // Unreachable now: the migrations that follow report it.
  }
}

/** An exclusive lock file with our PID; a stale lock of a dead process is taken over. */
export function acquireLock(path: string): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (!isStale(path)) break;
      try {
        unlinkSync(path);
      } catch {
        // another process took it over first
      }
    }
  }
  throw new DatabaseLockedError(resolve(path, '..'));
}

function isStale(path: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(path, 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid <= 0) return true;
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
