// API key rows: only the hash and a display prefix are ever stored.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';

export interface ApiKeyRow {
  id: string;
  name: string;
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
}

/** Stores a new key's hash; throws a 23505 error when the name is taken. */
export async function insertApiKey(
  pool: pg.Pool,
  input: { name: string; prefix: string; hash: Buffer },
): Promise<string> {
  const id = randomUUID();
  await pool.query('INSERT INTO api_keys (id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)', [
    id,
    input.name,
    input.prefix,
    input.hash,
  ]);
  return id;
}

/** The key with this hash, with whether it is revoked, or undefined. */
export async function findApiKeyByHash(
  pool: pg.Pool,
  hash: Buffer,
): Promise<{ id: string; hash: Buffer; revoked: boolean } | undefined> {
  // Unnamed: a named prepared statement breaks behind a transaction-mode pooler, and the lookup is
  // cached by the authenticator, so preparing it once would save little.
  const { rows } = await pool.query<{ id: string; key_hash: Buffer; revoked: boolean }>({
    text: 'SELECT id, key_hash, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_hash = $1',
    values: [hash],
  });
  const row = rows[0];
  return row === undefined ? undefined : { id: row.id, hash: row.key_hash, revoked: row.revoked };
}

/** Every key's metadata, never the key. */
export async function listApiKeys(pool: pg.Pool): Promise<ApiKeyRow[]> {
  const { rows } = await pool.query<{
    id: string;
    name: string;
    prefix: string;
    created_at: Date;
    revoked_at: Date | null;
  }>('SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, name');
  return rows.map((r) => ({
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.created_at.toISOString(),
    revokedAt: r.revoked_at?.toISOString() ?? null,
  }));
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
