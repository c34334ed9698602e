// `server.ts keys create|list|revoke`: API key administration through the single entry point.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { sendAdminCommand } from '../admin-socket.ts';
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

/** Where a keys subcommand writes: stdout for its result alone (a new key, the list), stderr for the rest. */
export interface KeysOutput {
  out(text: string): void;
  err(text: string): void;
}

const PROCESS_OUTPUT: KeysOutput = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/** A valid subcommand, or undefined (the usage has been written). */
export function parseKeysArgs(args: readonly string[], io: KeysOutput): { action: string; name?: string } | undefined {
  const [action, name, ...rest] = args;
  const needsName = action === 'create' || action === 'revoke';
  if (
    action === undefined ||
    rest.length > 0 ||
    (needsName && (name === undefined || !NAME.test(name))) ||
    (!needsName && action !== 'list') ||
    (action === 'list' && name !== undefined)
  ) {
    io.err(`${USAGE}\nNAME: 1-100 characters of A-Z a-z 0-9 . _ -\n`);
    return undefined;
  }
  return name === undefined ? { action } : { action, name };
}

/** Runs a parsed subcommand on a migrated database; returns the exit code. */
export async function runKeys(
  pool: pg.Pool,
  command: { action: string; name?: string },
  io: KeysOutput,
): Promise<number> {
  if (command.action === 'create') return create(pool, command.name as string, io);
  if (command.action === 'revoke') return revoke(pool, command.name as string, io);
  return list(pool, io);
}

/**
 * Runs one keys subcommand; stdout carries only the result (the new key alone, or the list). While a
 * server holds the embedded database, the command runs inside that server over its admin socket.
 * Returns the exit code.
 */
export async function runKeysCommand(config: Config, log: Logger, args: readonly string[]): Promise<number> {
  const command = parseKeysArgs(args, PROCESS_OUTPUT);
  if (command === undefined) return 2;
  let db: Database;
  try {
    db = await createDatabase(config, log);
  } catch (err) {
    if (!(err instanceof DatabaseLockedError)) return databaseFailed(err, log);
    const answer = await sendAdminCommand(config.dataDir, args);
    if (answer === undefined) {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    process.stdout.write(answer.stdout);
    process.stderr.write(answer.stderr);
    return answer.code;
  }
  try {
    await migrate(db.pool);
    return await runKeys(db.pool, command, PROCESS_OUTPUT);
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

async function create(pool: pg.Pool, name: string, io: KeysOutput): Promise<number> {
  const key = generateApiKey();
  try {
    await insertApiKey(pool, { name, prefix: key.prefix, hash: key.hash });
  } catch (err) {
    if ((err as { code?: string }).code === '23505') {
      io.err(`A key named ${name} already exists\n`);
      return 1;
    }
    throw err;
  }
  io.out(`${key.key}\n`);
  io.err(`Created key ${name} (${key.prefix}…). It is shown once; only its hash is stored.\n`);
  return 0;
}

async function revoke(pool: pg.Pool, name: string, io: KeysOutput): Promise<number> {
  if (!(await revokeApiKey(pool, name))) {
    io.err(`No active key named ${name}\n`);
    return 1;
  }
  io.err(`Revoked key ${name}; every instance refuses it within a few seconds.\n`);
  return 0;
}

async function list(pool: pg.Pool, io: KeysOutput): Promise<number> {
  const rows = await listApiKeys(pool);
  const lines = [
    'NAME\tPREFIX\tCREATED\tREVOKED',
    ...rows.map((r) => `${r.name}\t${r.prefix}\t${r.createdAt}\t${r.revokedAt ?? '-'}`),
  ];
  io.out(`${lines.join('\n')}\n`);
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
