// Credentials for identity tests: API keys stored straight in a test database, JWTs minted with
// jose (the oracle), the `keys` subcommand run through the real entry point, and a dump of
// every table to prove a key was never stored.
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import type pg from 'pg';
import { generateApiKey } from '../../lib/auth/api-key.ts';
import { insertApiKey } from '../../lib/db/api-keys.ts';
import { CANARY, childProcessEnv, TEST_DATABASE_URL } from './config.ts';
import { seedEmbeddedDatabase } from './pglite-template.ts';
import { type CliResult, runNode } from './run-node.ts';

/** The JWT_SECRET startTestServer configures. */
export const TEST_JWT_SECRET = `${CANARY}-jwt`;
/** The JWT_AUDIENCE startTestServer configures. */
export const TEST_JWT_AUDIENCE = 'chat-server-test';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** A key name no other test (or test file sharing the CI database) will pick. */
export function uniqueKeyName(label: string): string {
  return `${label}-${randomBytes(6).toString('hex')}`;
}

export interface TestKey {
  key: string;
  name: string;
  /** The identity the server gives the key: `key:<id>`. */
  identity: string;
}

/** Stores a fresh key the way `keys create` does and returns it. */
export async function createTestKey(pool: pg.Pool, label = 'test'): Promise<TestKey> {
  const generated = generateApiKey();
  const name = uniqueKeyName(label);
  const id = await insertApiKey(pool, { name, prefix: generated.prefix, hash: generated.hash });
  return { key: generated.key, name, identity: `key:${id}` };
}

/** The Authorization header for a bearer token. */
export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

export interface MintOptions {
  secret?: string;
  /** Seconds from now; null leaves `exp` out. Default 300. */
  expiresInSeconds?: number | null;
  /** The `aud` claim; null leaves it out. Default TEST_JWT_AUDIENCE. */
  audience?: string | null;
}

/** An HS256 JWT signed by jose (independent of the verifier under test). */
export function mintJwt(
  claims: Record<string, unknown> = { sub: 'user-1' },
  options: MintOptions = {},
): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt();
  const expiresIn = options.expiresInSeconds === undefined ? 300 : options.expiresInSeconds;
  if (expiresIn !== null) jwt.setExpirationTime(Math.floor(Date.now() / 1000) + expiresIn);
  const audience = options.audience === undefined ? TEST_JWT_AUDIENCE : options.audience;
  if (audience !== null) jwt.setAudience(audience);
  return jwt.sign(new TextEncoder().encode(options.secret ?? TEST_JWT_SECRET));
}

/** An `alg: none` token: a header, claims, and an empty signature. */
export function unsignedJwt(
  claims: Record<string, unknown> = { sub: 'user-1', exp: Math.floor(Date.now() / 1000) + 300 },
): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

/**
 * Runs `node server.ts keys ...args` from the repository root with exactly `env` (inheriting only
 * childProcessEnv()). An embedded database not there yet in DATA_DIR is seeded first.
 */
export async function runKeysCli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  if (env['DATA_DIR'] !== undefined && env['DATABASE_URL'] === undefined) await seedEmbeddedDatabase(env['DATA_DIR']);
  return runNode(['server.ts', 'keys', ...args], REPO_ROOT, { ...childProcessEnv(), ...env });
}

/** The environment for `keys`: `databaseUrl` when set, else the embedded database in `dataDir`. */
export function keysCliEnv(dataDir: string, databaseUrl = TEST_DATABASE_URL): Record<string, string> {
  // debug: the most talkative level must still leave stdout to the result alone
  return databaseUrl === undefined
    ? { DATA_DIR: dataDir, LOG_LEVEL: 'debug' }
    : { DATABASE_URL: databaseUrl, LOG_LEVEL: 'debug' };
}

/** Polls `check` every `intervalMs` until true; resolves with the milliseconds that took, rejects after `timeoutMs`. */
export async function msUntil(check: () => Promise<boolean>, timeoutMs: number, intervalMs = 100): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await check()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) throw new Error(`Condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Every row of every table in the current schema, as JSON text (bytea shows as \x hex). */
export async function dumpTables(pool: pg.Pool): Promise<string> {
  const { rows: tables } = await pool.query<{ name: string }>(
    `SELECT table_name AS name FROM information_schema.tables
     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`,
  );
  let text = '';
  for (const { name } of tables) {
    const ident = `"${name.replaceAll('"', '""')}"`;
    const { rows } = await pool.query<{ dump: string | null }>(`SELECT json_agg(t)::text AS dump FROM ${ident} t`);
    text += `${name}: ${rows[0]?.dump ?? '[]'}\n`;
  }
  return text;
}

/** The spellings of a key that must never be found at rest: as text, and as its UTF-8 bytes in hex. */
export function keySpellings(key: string): string[] {
  return [key, key.slice(4), Buffer.from(key, 'utf8').toString('hex')];
}
