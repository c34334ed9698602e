import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createPgConfig } from '@electric-sql/pglite/node-postgres';
import { SignJWT } from 'jose';
import pg from 'pg';
import { generateApiKey } from '../../lib/auth/api-key.ts';
import { createAuthenticator } from '../../lib/auth/authenticator.ts';
import { createJwtVerifier } from '../../lib/auth/jwt.ts';
import { insertApiKey, revokeApiKey } from '../../lib/db/api-keys.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { AppError } from '../../lib/errors.ts';
import { openEmbeddedEngine } from '../support/pglite-template.ts';

interface StoredKey {
  id: string;
  hash: Buffer;
  revoked: boolean;
  /** Milliseconds to expiry by the database clock (negative: expired); undefined never expires. */
  expiresInMs?: number;
  maxStreams?: number;
  agents?: string[];
}

/**
 * A stand-in for the pool that answers the api_keys lookup from a list and counts round trips.
 * It ignores the SQL: the PGlite test at the end runs the real query against the real schema.
 * `hold()` parks every query until `release()`, so tests can line up concurrent lookups.
 */
function fakeKeyTable() {
  const rows: StoredKey[] = [];
  let queries = 0;
  let failNext: Error | undefined;
  let gate: Promise<void> | undefined;
  let open: (() => void) | undefined;
  const pool = {
    async query(config: { values: [Buffer] }) {
      queries++;
      if (gate !== undefined) await gate;
      if (failNext !== undefined) {
        const err = failNext;
        failNext = undefined;
        throw err;
      }
      const row = rows.find((r) => r.hash.equals(config.values[0]));
      if (row === undefined) return { rows: [] };
      const expiry =
        row.expiresInMs === undefined ? {} : { expired: row.expiresInMs <= 0, expires_in_ms: row.expiresInMs };
      const policy = { max_streams: row.maxStreams ?? null, agents: row.agents ?? null };
      return { rows: [{ id: row.id, key_hash: row.hash, revoked: row.revoked, ...expiry, ...policy }] };
    },
  } as unknown as pg.Pool;
  return {
    pool,
    /** Stores a key under `id` (a fresh one unless given) and returns the key. */
    add(id: string, generated = generateApiKey(), extra: Partial<StoredKey> = {}): string {
      rows.push({ id, hash: generated.hash, revoked: false, ...extra });
      return generated.key;
    },
    revoke(id: string): void {
      for (const row of rows) if (row.id === id) row.revoked = true;
    },
    queries: () => queries,
    failNextQuery(err: Error): void {
      failNext = err;
    },
    hold(): void {
      gate = new Promise((resolve) => (open = resolve));
    },
    release(): void {
      gate = undefined;
      open?.();
    },
  };
}

function manualClock(startMs = 0): { now: () => number; advance: (ms: number) => void } {
  let nowMs = startMs;
  return { now: () => nowMs, advance: (ms) => void (nowMs += ms) };
}

function isInvalidToken(err: unknown): boolean {
  assert.ok(err instanceof AppError, `expected an AppError, got ${String(err)}`);
  assert.equal(err.code, 'INVALID_TOKEN');
  assert.equal(err.status, 401);
  return true;
}

const JWT_SECRET = 'authenticator-test-secret-0123456789abcdef';

test('authenticate() turns a stored API key into the identity key:<id>', async () => {
  const table = fakeKeyTable();
  const key = table.add('0b5c7e4e-1d0f-4a55-9a55-6f1f1a6b0001');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  assert.deepEqual(await authenticate(key), { id: 'key:0b5c7e4e-1d0f-4a55-9a55-6f1f1a6b0001', kind: 'key' });
});

test('authenticate() refuses an unknown API key with INVALID_TOKEN', async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  await assert.rejects(authenticate(generateApiKey().key), isInvalidToken);
});

test('authenticate() refuses a revoked API key with INVALID_TOKEN', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  table.revoke('k1');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  await assert.rejects(authenticate(key), isInvalidToken);
});

test('authenticate() answers a repeated key from its cache within the TTL', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  await authenticate(key);
  clock.advance(1_999);
  await authenticate(key);
  assert.equal(table.queries(), 1);
});

test('authenticate() refuses a key revoked while cached once the TTL has passed', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  await authenticate(key);
  table.revoke('k1');
  clock.advance(2_000);
  await assert.rejects(authenticate(key), isInvalidToken);
});

test('authenticate() starts the cache TTL as it asks the database: a slow lookup adds no revocation lag', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  table.hold();
  const first = authenticate(key);
  clock.advance(1_500); // the lookup is slow
  table.release();
  await first;
  table.revoke('k1');
  clock.advance(500);
  await assert.rejects(authenticate(key), isInvalidToken);
});

test('authenticate() never caches a miss: a key is accepted as soon as it is stored', async () => {
  const table = fakeKeyTable();
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, now: clock.now });
  const generated = generateApiKey();
  await assert.rejects(authenticate(generated.key), isInvalidToken);
  // Stored a moment later (the clock does not move): the earlier miss must not stick.
  table.add('k-late', generated);
  assert.deepEqual(await authenticate(generated.key), { id: 'key:k-late', kind: 'key' });
});

test('authenticate() asks the database again for every attempt with a revoked key', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  table.revoke('k1');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, now: () => 0 });
  await assert.rejects(authenticate(key), isInvalidToken);
  await assert.rejects(authenticate(key), isInvalidToken);
  assert.equal(table.queries(), 2);
});

test('authenticate() coalesces concurrent lookups of one key into one database query', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  table.hold();
  const lookups = Array.from({ length: 20 }, () => authenticate(key));
  table.release();
  const identities = await Promise.all(lookups);
  assert.equal(table.queries(), 1);
  assert.ok(identities.every((identity) => identity.id === 'key:k1'));
});

test('authenticate() coalesces concurrent lookups of an unknown key and refuses them all', async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  const { key } = generateApiKey();
  table.hold();
  const lookups = Array.from({ length: 5 }, () =>
    authenticate(key).then(
      () => 'accepted',
      (err: unknown) => isInvalidToken(err) && 'refused',
    ),
  );
  table.release();
  assert.deepEqual(await Promise.all(lookups), ['refused', 'refused', 'refused', 'refused', 'refused']);
  assert.equal(table.queries(), 1);
});

test('authenticate() passes a database failure through as is, not as a 401, and does not cache it', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  const down = new Error('connection terminated');
  table.failNextQuery(down);
  await assert.rejects(authenticate(key), (err) => err === down);
  assert.deepEqual(await authenticate(key), { id: 'key:k1', kind: 'key' });
});

test('authenticate() evicts the oldest cached key when the cache is full', async () => {
  const table = fakeKeyTable();
  const first = table.add('k1');
  const second = table.add('k2');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, maxCacheEntries: 1, now: () => 0 });
  await authenticate(first);
  await authenticate(second);
  await authenticate(first);
  assert.equal(table.queries(), 3);
});

test('authenticate() refuses a token shaped like neither a key nor a JWT without asking the database', async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({
    pool: table.pool,
    jwt: await createJwtVerifier({ secret: JWT_SECRET, audience: 'chat-api' }),
  });
  for (const token of ['garbage', 'csk_short', `${generateApiKey().key}x`]) {
    await assert.rejects(authenticate(token), isInvalidToken);
  }
  assert.equal(table.queries(), 0);
});

test('authenticate() turns a valid JWT into the identity jwt:<sub>', async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({
    pool: table.pool,
    jwt: await createJwtVerifier({ secret: JWT_SECRET, audience: 'chat-api' }),
  });
  const token = await new SignJWT({ sub: 'user-42', aud: 'chat-api' })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(JWT_SECRET));
  assert.deepEqual(await authenticate(token), { id: 'jwt:user-42', kind: 'jwt' });
});

test('authenticate() refuses an API key past its expiry with INVALID_TOKEN', async () => {
  const table = fakeKeyTable();
  const key = table.add('expired', generateApiKey(), { expiresInMs: -1 });
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  await assert.rejects(authenticate(key), isInvalidToken);
  assert.equal(authenticate.cached(key), undefined, 'an expired key is never cached');
});

test('authenticate() trusts a cached key no longer than until its expiry, however long the TTL', async () => {
  const table = fakeKeyTable();
  const key = table.add('soon', generateApiKey(), { expiresInMs: 500 });
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  await authenticate(key);
  clock.advance(499);
  assert.equal(authenticate.cached(key)?.id, 'key:soon');
  clock.advance(1);
  assert.equal(authenticate.cached(key), undefined, 'asked about again at its expiry');
});

test("authenticate() carries a key's limits on its identity, and none for a key without any", async () => {
  const table = fakeKeyTable();
  const limited = table.add('limited', generateApiKey(), { maxStreams: 2, agents: ['alpha'] });
  const plain = table.add('plain');
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  assert.deepEqual(await authenticate(limited), {
    id: 'key:limited',
    kind: 'key',
    policy: { maxStreams: 2, agents: ['alpha'] },
  });
  assert.ok(Object.isFrozen((await authenticate(limited)).policy), 'the cached policy cannot be changed by a caller');
  assert.equal('policy' in (await authenticate(plain)), false);
});

test("authenticate() sets a JWT identity's daily tokens from the configured claim; refuses a bad claim", async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({
    pool: table.pool,
    jwt: await createJwtVerifier({ secret: JWT_SECRET, audience: 'chat-api' }),
    jwtBudgetClaim: 'tpd',
  });
  const sign = (claims: Record<string, unknown>) =>
    new SignJWT({ sub: 'user-42', aud: 'chat-api', ...claims })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(JWT_SECRET));
  assert.deepEqual(await authenticate(await sign({ tpd: 5000 })), {
    id: 'jwt:user-42',
    kind: 'jwt',
    policy: { tokensPerDay: 5000 },
  });
  assert.deepEqual(await authenticate(await sign({})), { id: 'jwt:user-42', kind: 'jwt' });
  await assert.rejects(authenticate(await sign({ tpd: '5000' })), isInvalidToken);
  await assert.rejects(authenticate(await sign({ tpd: 0 })), isInvalidToken);
});

test('authenticate() refuses a JWT when no JWT key is configured', async () => {
  const table = fakeKeyTable();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined });
  const token = await new SignJWT({ sub: 'user-42', aud: 'chat-api' })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime('5m')
    .sign(new TextEncoder().encode(JWT_SECRET));
  await assert.rejects(authenticate(token), isInvalidToken);
});

test('cached() remembers the last key per connection, and still forgets it when the TTL passes', async () => {
  const table = fakeKeyTable();
  const key = table.add('k1');
  const other = table.add('k2');
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool: table.pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  const connection = {};
  assert.equal(authenticate.cached(key, connection), undefined, 'nothing is cached before the first lookup');
  await authenticate(key);
  assert.equal(authenticate.cached(key, connection)?.id, 'key:k1');
  assert.equal(authenticate.cached(key, connection)?.id, 'key:k1', 'the per-connection memo answers the same');
  // A different client's token on the same (proxied) connection gets its own answer, never the memo's.
  assert.equal(authenticate.cached(other, connection), undefined);
  await authenticate(other);
  assert.equal(authenticate.cached(other, connection)?.id, 'key:k2');
  assert.equal(authenticate.cached(key, connection)?.id, 'key:k1');
  assert.equal(
    authenticate.cached(`${key.slice(0, -1)}x`, connection),
    undefined,
    'a token one character off is not the memo',
  );
  clock.advance(2_000);
  assert.equal(authenticate.cached(key, connection), undefined, 'the memo expires with the cache entry');
});

test('authenticate() accepts a stored key and refuses it once revoked, through the real query on PGlite', async (t) => {
  // A copy of the initialised template: an in-memory initdb of its own costs seconds of CPU
  const embedded = await openEmbeddedEngine();
  const pool = new pg.Pool(createPgConfig(embedded.engine) as pg.PoolConfig);
  t.after(async () => {
    await pool.end();
    await embedded.close();
  });
  await migrate(pool);
  const generated = generateApiKey();
  const id = await insertApiKey(pool, { name: 'pglite-key', prefix: generated.prefix, hash: generated.hash });
  const clock = manualClock();
  const authenticate = createAuthenticator({ pool, jwt: undefined, cacheTtlMs: 2_000, now: clock.now });
  assert.deepEqual(await authenticate(generated.key), { id: `key:${id}`, kind: 'key' });
  await assert.rejects(authenticate(generateApiKey().key), isInvalidToken);
  assert.equal(await revokeApiKey(pool, 'pglite-key'), true);
  clock.advance(2_000);
  await assert.rejects(authenticate(generated.key), isInvalidToken);
});
