// `server.ts keys create|update|show|list|revoke`: API keys and their own limits, through the single entry point.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { sendAdminCommand } from '../admin-socket.ts';
import { loadAgents } from '../chat/agents.ts';
import type { Config } from '../config.ts';
import {
  countApiKeys,
  getApiKey,
  insertApiKey,
  listApiKeys,
  revokeApiKey,
  updateApiKeyPolicy,
} from '../db/api-keys.ts';
import { createDatabase, type Database, DatabaseLockedError } from '../db/database.ts';
import { isDatabaseUnavailable } from '../db/errors.ts';
import { migrate } from '../db/migrate.ts';
import type { Logger } from '../log.ts';
import { generateApiKey } from './api-key.ts';
import {
  describePolicy,
  type KeyPolicy,
  POLICY_FLAGS_USAGE,
  type PolicyChange,
  parsePolicyFlags,
} from './key-policy.ts';

const NAME = /^[A-Za-z0-9._-]{1,100}$/;
// A PostgreSQL error code (SQLSTATE): five digits or capital letters, at least one a digit (EPERM is no SQLSTATE).
const SQLSTATE = /^(?=.*[0-9])[0-9A-Z]{5}$/;
const USAGE = [
  'Usage: keys create NAME [OPTIONS] | keys update NAME OPTIONS | keys show NAME | keys list | keys revoke NAME',
  `OPTIONS: ${POLICY_FLAGS_USAGE}`,
  '  N may be default (the server setting); --expires never and --agents all lift the limit',
  'NAME: 1-100 characters of A-Z a-z 0-9 . _ -',
].join('\n');

/** Where a keys subcommand writes: stdout for its result alone (a new key, the list), stderr for the rest. */
export interface KeysOutput {
  out(text: string): void;
  err(text: string): void;
}

/** One parsed subcommand. */
export interface KeysCommand {
  action: 'create' | 'update' | 'show' | 'list' | 'revoke';
  name?: string;
  /** create and update: the limits to set. */
  change?: PolicyChange;
}

const PROCESS_OUTPUT: KeysOutput = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

const ACTIONS = new Set(['create', 'update', 'show', 'list', 'revoke']);
const TAKES_OPTIONS = new Set(['create', 'update']);

/** A valid subcommand, or undefined (the problem and the usage have been written). */
export function parseKeysArgs(args: readonly string[], io: KeysOutput, nowMs = Date.now()): KeysCommand | undefined {
  const [action, name, ...rest] = args;
  const usage = (problem?: string): undefined => {
    io.err(`${problem === undefined ? '' : `keys: ${problem}\n`}${USAGE}\n`);
    return undefined;
  };
  if (action === undefined || !ACTIONS.has(action)) return usage();
  const command = action as KeysCommand['action'];
  if (command === 'list') return name === undefined ? { action: command } : usage();
  if (name === undefined || !NAME.test(name)) return usage();
  if (!TAKES_OPTIONS.has(command)) return rest.length === 0 ? { action: command, name } : usage();
  const change = parsePolicyFlags(rest, nowMs);
  if (!change.ok) return usage(change.problem);
  if (command === 'update' && Object.keys(change.value).length === 0) return usage('update needs at least one option');
  return { action: command, name, change: change.value };
}

/** Runs a parsed subcommand on a migrated database; `knownAgent` checks --agents ids. Returns the exit code. */
export async function runKeys(
  pool: pg.Pool,
  command: KeysCommand,
  io: KeysOutput,
  knownAgent?: (id: string) => boolean,
): Promise<number> {
  const { name = '', change = {} } = command;
  const unknown = change.agents?.filter((id) => knownAgent !== undefined && !knownAgent(id)) ?? [];
  if (unknown.length > 0) {
    io.err(`keys: no agent named ${unknown.join(', ')} (the agents are those of AGENTS_FILE, and default)\n`);
    return 2;
  }
  switch (command.action) {
    case 'create':
      return create(pool, name, change, io);
    case 'update':
      return update(pool, name, change, io);
    case 'show':
      return show(pool, name, io);
    case 'revoke':
      return revoke(pool, name, io);
    default:
      return list(pool, io);
  }
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
    return await runKeys(db.pool, command, PROCESS_OUTPUT, await agentCheck(config, command));
  } catch (err) {
    return databaseFailed(err, log);
  } finally {
    await db.close();
  }
}

/** The agent ids an --agents option may name: those this configuration serves. */
async function agentCheck(config: Config, command: KeysCommand): Promise<((id: string) => boolean) | undefined> {
  if (command.change?.agents == null) return undefined;
  const agents = await loadAgents(config);
  return (id) => agents.get(id) !== undefined;
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

async function create(pool: pg.Pool, name: string, policy: PolicyChange, io: KeysOutput): Promise<number> {
  const key = generateApiKey();
  try {
    await insertApiKey(pool, { name, prefix: key.prefix, hash: key.hash, policy });
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

async function update(pool: pg.Pool, name: string, change: PolicyChange, io: KeysOutput): Promise<number> {
  if (!(await updateApiKeyPolicy(pool, name, change))) {
    io.err(`No active key named ${name}\n`);
    return 1;
  }
  const row = await getApiKey(pool, name);
  const limits = row === undefined ? '' : ` (${describePolicy(row.policy).join(', ')})`;
  io.err(`Updated key ${name}${limits}; every instance applies it within a few seconds.\n`);
  return 0;
}

async function show(pool: pg.Pool, name: string, io: KeysOutput): Promise<number> {
  const row = await getApiKey(pool, name);
  if (row === undefined) {
    io.err(`No key named ${name}\n`);
    return 1;
  }
  const lines = [
    `name: ${row.name}`,
    `prefix: ${row.prefix}`,
    `created: ${row.createdAt}`,
    `revoked: ${row.revokedAt ?? 'no'}`,
    ...describePolicy(row.policy),
  ];
  io.out(`${lines.join('\n')}\n`);
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
    'NAME\tPREFIX\tCREATED\tREVOKED\tEXPIRES\tLIMITS',
    ...rows.map((r) => {
      const expires = r.policy.expiresAt?.toISOString() ?? '-';
      return `${r.name}\t${r.prefix}\t${r.createdAt}\t${r.revokedAt ?? '-'}\t${expires}\t${limitsOf(r.policy)}`;
    }),
  ];
  io.out(`${lines.join('\n')}\n`);
  return 0;
}

/** A key's own limits in one column, e.g. `rpm=30,streams=2,agents=a+b`; `-` when it has none. */
function limitsOf(policy: KeyPolicy): string {
  const parts = describePolicy(policy)
    .map((line) => line.split(': ') as [string, string])
    .filter(([flag, value]) => flag !== 'expires' && value !== 'default' && value !== 'all')
    .map(([flag, value]) => `${flag}=${value.replaceAll(',', '+')}`);
  return parts.length === 0 ? '-' : parts.join(',');
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
