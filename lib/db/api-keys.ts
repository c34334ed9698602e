// API key rows: only the hash and a display prefix are ever stored, with the key's own limits.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { KeyPolicy, PolicyChange } from '../auth/key-policy.ts';

export interface ApiKeyRow {
  id: string;
  name: string;
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
  policy: KeyPolicy;
}

/** A key as the authenticator sees it: whether it may be used now, and its limits. */
export interface ApiKeyLookup {
  id: string;
  hash: Buffer;
  revoked: boolean;
  /** Past its expiry by the database's clock. */
  expired: boolean;
  /** Milliseconds until it expires, by the database's clock; undefined when it never does. */
  expiresInMs: number | undefined;
  policy: KeyPolicy;
}

// The policy columns, in the order of PolicyChange's fields.
const COLUMNS = {
  rateLimitPerMinute: 'rate_limit_per_minute',
  rateLimitBurst: 'rate_limit_burst',
  maxStreams: 'max_streams',
  tokensPerDay: 'tokens_per_day',
  expiresAt: 'expires_at',
  agents: 'agents',
} as const satisfies Record<keyof KeyPolicy, string>;
const POLICY_SELECT = Object.values(COLUMNS).join(', ');

interface PolicyColumns {
  rate_limit_per_minute: number | null;
  rate_limit_burst: number | null;
  max_streams: number | null;
  // bigint: pg returns it as a string to keep its precision; budgets stay far below 2^53.
  tokens_per_day: string | null;
  expires_at: Date | null;
  agents: string[] | null;
}

function policyOf(row: PolicyColumns): KeyPolicy {
  const policy: KeyPolicy = {};
  if (row.rate_limit_per_minute != null) policy.rateLimitPerMinute = row.rate_limit_per_minute;
  if (row.rate_limit_burst != null) policy.rateLimitBurst = row.rate_limit_burst;
  if (row.max_streams != null) policy.maxStreams = row.max_streams;
  if (row.tokens_per_day != null) policy.tokensPerDay = Number(row.tokens_per_day);
  if (row.expires_at != null) policy.expiresAt = row.expires_at;
  if (row.agents != null) policy.agents = Object.freeze([...row.agents]);
  return policy;
}

/** Stores a new key's hash and limits; throws a 23505 error when the name is taken. */
export async function insertApiKey(
  pool: pg.Pool,
  input: { name: string; prefix: string; hash: Buffer; policy?: PolicyChange },
): Promise<string> {
  const id = randomUUID();
  const policy = input.policy ?? {};
  const fields = (Object.keys(COLUMNS) as Array<keyof KeyPolicy>).filter((f) => policy[f] != null);
  const columns = ['id', 'name', 'prefix', 'key_hash', ...fields.map((f) => COLUMNS[f])];
  const values = [id, input.name, input.prefix, input.hash, ...fields.map((f) => policy[f])];
  const placeholders = values.map((_, i) => `$${i + 1}`).join(', ');
  await pool.query(`INSERT INTO api_keys (${columns.join(', ')}) VALUES (${placeholders})`, values);
  return id;
}

/** Changes an active key's limits (null: back to the server's default); false when no active key has that name. */
export async function updateApiKeyPolicy(pool: pg.Pool, name: string, change: PolicyChange): Promise<boolean> {
  const fields = (Object.keys(COLUMNS) as Array<keyof KeyPolicy>).filter((f) => change[f] !== undefined);
  if (fields.length === 0) throw new RangeError('updateApiKeyPolicy() needs at least one change');
  const sets = fields.map((f, i) => `${COLUMNS[f]} = $${i + 2}`).join(', ');
  const result = await pool.query(`UPDATE api_keys SET ${sets} WHERE name = $1 AND revoked_at IS NULL`, [
    name,
    ...fields.map((f) => change[f]),
  ]);
  return (result.rowCount ?? 0) > 0;
}

/** The key with this hash, with whether it may be used now and its limits, or undefined. */
export async function findApiKeyByHash(pool: pg.Pool, hash: Buffer): Promise<ApiKeyLookup | undefined> {
  // Unnamed: a named prepared statement breaks behind a transaction-mode pooler, and the lookup is
  // cached by the authenticator, so preparing it once would save little. Expiry by the database's
  // clock, the same for every instance.
  const { rows } = await pool.query<
    PolicyColumns & { id: string; key_hash: Buffer; revoked: boolean; expired: boolean; expires_in_ms: number | null }
  >({
    text: `SELECT id, key_hash, revoked_at IS NOT NULL AS revoked, ${POLICY_SELECT},
        coalesce(expires_at <= now(), false) AS expired,
        (extract(epoch FROM expires_at - now()) * 1000)::float8 AS expires_in_ms
      FROM api_keys WHERE key_hash = $1`,
    values: [hash],
  });
  const row = rows[0];
  if (row === undefined) return undefined;
  const { id, key_hash, revoked, expired, expires_in_ms } = row;
  return { id, hash: key_hash, revoked, expired, expiresInMs: expires_in_ms ?? undefined, policy: policyOf(row) };
}

/** One key's metadata and limits by name, never the key. */
export async function getApiKey(pool: pg.Pool, name: string): Promise<ApiKeyRow | undefined> {
  const { rows } = await pool.query<PolicyColumns & KeyColumns>(
    `SELECT id, name, prefix, created_at, revoked_at, ${POLICY_SELECT} FROM api_keys WHERE name = $1`,
    [name],
  );
  return rows[0] === undefined ? undefined : keyRow(rows[0]);
}

interface KeyColumns {
  id: string;
  name: string;
  prefix: string;
  created_at: Date;
  revoked_at: Date | null;
}

function keyRow(r: KeyColumns & PolicyColumns): ApiKeyRow {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.created_at.toISOString(),
    revokedAt: r.revoked_at?.toISOString() ?? null,
    policy: policyOf(r),
  };
}

/** Every key's metadata and limits, never the key. */
export async function listApiKeys(pool: pg.Pool): Promise<ApiKeyRow[]> {
  const { rows } = await pool.query<KeyColumns & PolicyColumns>(
    `SELECT id, name, prefix, created_at, revoked_at, ${POLICY_SELECT} FROM api_keys ORDER BY created_at, name`,
  );
  return rows.map(keyRow);
}

/** Revokes a key by name; false when no active key has that name. */
export async function revokeApiKey(pool: pg.Pool, name: string): Promise<boolean> {
  const result = await pool.query('UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL', [
    name,
  ]);
  return (result.rowCount ?? 0) > 0;
}

/** How many keys exist (revoked included). */
export async function countApiKeys(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM api_keys');
  return rows[0]?.n ?? 0;
}
