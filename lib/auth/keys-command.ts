// `server.ts keys create|list|revoke`: API key administration through the single entry point.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import type { Config } from '../config.ts';
import { countApiKeys, insertApiKey, listApiKeys, revokeApiKey } from '../db/api-keys.ts';
import { createDatabase, type Database, DatabaseLockedError } from '../db/database.ts';
import { isDatabaseUnavailable } from '../db/errors.ts';
import { migrate } from '../db/migrate.ts';
import type { Logger } from '../log.ts';
import { generateApiKey } from './api-key.ts';

const NAME = /^[A-Za-z0-9._-]{1,100}$/;
// A PostgreSQL error code (SQLSTATE): five digits or capital letters, at least one a digit (EPERM is no SQLSTATE).
const SQLSTATE = /^(?=.*[0-9])[0-9A-Z]{5}$/;
const USAGE = 'Usage: keys create NAME | keys list | keys revoke NAME';

/** Runs one keys subcommand; stdout carries only the result (the new key alone, or the list). Returns the exit code. */
export async function runKeysCommand(config: Config, log: Logger, args: readonly string[]): Promise<number> {
  const [action, name, ...rest] = args;
  const needsName = action === 'create' || action === 'revoke';
  if (
    rest.length > 0 ||
    (needsName && (name === undefined || !NAME.test(name))) ||
    (!needsName && action !== 'list') ||
    (action === 'list' && name !== undefined)
  ) {
    process.stderr.write(`${USAGE}\nNAME: 1-100 characters of A-Z a-z 0-9 . _ -\n`);
    return 2;
  }
  let db: Database;
  try {
    db = await createDatabase(config, log);
  } catch (err) {
    return databaseFailed(err, log);
  }
  try {
    await migrate(db.pool);
    if (action === 'create') return await create(db.pool, name as string);
    if (action === 'revoke') return await revoke(db.pool, name as string);
    return await list(db.pool);
  } catch (err) {
    return databaseFailed(err, log);
  } finally {
    await db.close();
  }
}

/** Prints one line for a database that cannot serve the command and returns exit code 1; rethrows anything else. */
function databaseFailed(err: unknown, log: Logger): number {
  const line = databaseProblem(err, log);
  if (line === undefined) throw err; // a bug: its stack trace is what a report needs
  process.stderr.write(`${line}\n`);
  return 1;
}

// An operator at a terminal wants one line, not a stack trace; never the URL (it holds the password).
function databaseProblem(err: unknown, log: Logger): string | undefined {
  if (err instanceof DatabaseLockedError) return err.message;
  const code = (err as { code?: unknown }).code;
  if (isDatabaseUnavailable(err)) {
    const reason = typeof code === 'string' ? code : (err as Error).message;
    return `Cannot reach the database (${reason}); check DATABASE_URL`;
  }
  if (typeof code !== 'string' || !SQLSTATE.test(code)) return undefined;
  if (code === '3D000') return 'The database named in DATABASE_URL does not exist (3D000); create it or fix the URL';
  // PostgreSQL's own message names objects, never values; scrubbed anyway, and kept to one line.
  const message = log
    .scrub((err as Error).message)
    .replace(/\s+/g, ' ')
    .slice(0, 200);
  return `The database refused the command (${code}: ${message})`;
}

async function create(pool: pg.Pool, name: string): Promise<number> {
  const key = generateApiKey();
  try {
    await insertApiKey(pool, { name, prefix: key.prefix, hash: key.hash });
  } catch (err) {
    if ((err as { code?: string }).code === '23505') {
      process.stderr.write(`A key named ${name} already exists\n`);
      return 1;
    }
    throw err;
  }
  process.stdout.write(`${key.key}\n`);
  process.stderr.write(`Created key ${name} (${key.prefix}…). It is shown once; only its hash is stored.\n`);
  return 0;
}

async function revoke(pool: pg.Pool, name: string): Promise<number> {
  if (!(await revokeApiKey(pool, name))) {
    process.stderr.write(`No active key named ${name}\n`);
    return 1;
  }
  process.stderr.write(`Revoked key ${name}; every instance refuses it within a few seconds.\n`);
  return 0;
}

async function list(pool: pg.Pool): Promise<number> {
  const rows = await listApiKeys(pool);
  const lines = [
    'NAME\tPREFIX\tCREATED\tREVOKED',
    ...rows.map((r) => `${r.name}\t${r.prefix}\t${r.createdAt}\t${r.revokedAt ?? '-'}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

/** First run on the embedded database: creates a key when none exists and writes it to DATA_DIR/dev-api-key (0600). */
export async function ensureDevKey(pool: pg.Pool, dataDir: string, log: Logger): Promise<void> {
  if ((await countApiKeys(pool)) > 0) return;
  const key = generateApiKey();
  await insertApiKey(pool, { name: 'dev', prefix: key.prefix, hash: key.hash });
  const path = join(dataDir, 'dev-api-key');
  await writeFile(path, `${key.key}\n`, { mode: 0o600 });
  log.info('created a development API key; its file is readable only by this user', { path });
}
