// Turns a bearer token into an identity: API keys (hashed, looked up, briefly cached) or JWTs.
import { hash } from 'node:crypto';
import type pg from 'pg';
import { findApiKeyByHash } from '../db/api-keys.ts';
import { AppError } from '../errors.ts';
import type { Identity, IdentityPolicy } from '../http/types.ts';
import { hashApiKey, keysEqual, looksLikeApiKey } from './api-key.ts';
import { type JwtClaims, type JwtVerifier, looksLikeJwt } from './jwt.ts';
import type { KeyPolicy } from './key-policy.ts';

export interface AuthenticatorOptions {
  pool: pg.Pool;
  jwt: JwtVerifier | undefined;
  /** How long a validated key is trusted without asking the database; revocation lag is at most this. */
  cacheTtlMs?: number;
  /** A claim that sets a JWT identity's tokens per day (the issuer is trusted to set it); unset: the default. */
  jwtBudgetClaim?: string | undefined;
  maxCacheEntries?: number;
  now?: () => number;
}

interface CacheEntry {
  identity: Identity;
  expiresAtMs: number;
}

const DEFAULT_CACHE_TTL_MS = 2_000;

/**
 * Resolves a bearer token to an identity, or rejects with AppError INVALID_TOKEN (never saying which
 * part of a credential was wrong beyond its kind); `cached` answers synchronously when the key is cached.
 */
export type Authenticate = ((token: string) => Promise<Identity>) & {
  cached(token: string, connection?: object): Identity | undefined;
};

export function createAuthenticator(options: AuthenticatorOptions): Authenticate {
  const ttl = options.cacheTtlMs ?? DEFAULT_CACHE_TTL_MS;
  const maxEntries = options.maxCacheEntries ?? 10_000;
  // Monotonic: a wall clock stepped back would stretch every cached entry, and with it revocation lag.
  const now = options.now ?? (() => performance.now());
  // Keyed by the hash, never the key. Only hits are cached: a miss (unknown or revoked key) always asks again.
  const cache = new Map<string, CacheEntry>();
  const pending = new Map<string, Promise<Identity>>();

  async function lookUp(hash: Buffer, cacheKey: string): Promise<Identity> {
    // The row is at least as fresh as now: count the TTL from here, so a slow query adds no revocation lag.
    const askedAtMs = now();
    const row = await findApiKeyByHash(options.pool, hash);
    // The index found the row by hash; compare again in constant time as a second line.
    if (row === undefined || row.revoked || !keysEqual(row.hash, hash)) {
      throw new AppError('INVALID_TOKEN', { detail: 'Unknown or revoked API key' });
    }
    // Refused like a revoked key: the client learns only that the credential is no longer good.
    if (row.expired) throw new AppError('INVALID_TOKEN', { detail: 'Expired API key' });
    const policy = identityPolicy(row.policy);
    const identity: Identity = Object.freeze(
      policy === undefined ? { id: `key:${row.id}`, kind: 'key' } : { id: `key:${row.id}`, kind: 'key', policy },
    );
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value as string);
    // Never trusted past its expiry: a key that expires within the TTL is asked about again then.
    cache.set(cacheKey, { identity, expiresAtMs: askedAtMs + Math.min(ttl, row.expiresInMs ?? ttl) });
    return identity;
  }

  function apiKey(token: string): Promise<Identity> {
    // One-shot crypto.hash: about a third of the cost of createHash() on this per-request path.
    const cacheKey = hash('sha256', token, 'base64');
    const hit = cache.get(cacheKey);
    if (hit !== undefined) {
      if (hit.expiresAtMs > now()) return Promise.resolve(hit.identity);
      cache.delete(cacheKey);
    }
    // Concurrent requests with one key share one database round trip.
    let inFlight = pending.get(cacheKey);
    if (inFlight === undefined) {
      inFlight = lookUp(hashApiKey(token), cacheKey).finally(() => pending.delete(cacheKey));
      pending.set(cacheKey, inFlight);
    }
    return inFlight;
  }

  async function authenticate(token: string): Promise<Identity> {
    if (looksLikeApiKey(token)) return apiKey(token);
    if (options.jwt !== undefined && looksLikeJwt(token)) {
      const claims = await options.jwt.verify(token);
      const tokensPerDay = budgetClaim(claims, options.jwtBudgetClaim);
      if (tokensPerDay === undefined) return { id: `jwt:${claims.sub}`, kind: 'jwt' };
      return { id: `jwt:${claims.sub}`, kind: 'jwt', policy: { tokensPerDay } };
    }
    throw new AppError('INVALID_TOKEN', { detail: 'Unrecognised credential' });
  }
  // The last key each keep-alive connection authenticated with, and its cache entry: the next
  // request on that connection with the same token skips the hash. Per connection, so a lookup only
  // ever compares a client's token with what that same connection sent before; the entry's expiry
  // still bounds revocation lag. Gone with the socket (WeakMap).
  const byConnection = new WeakMap<object, { token: string; entry: CacheEntry }>();

  /** A still-valid cached API key identity, without a promise (the per-request fast path). */
  function cached(token: string, connection?: object): Identity | undefined {
    if (connection !== undefined) {
      const last = byConnection.get(connection);
      if (last !== undefined && sameText(last.token, token) && last.entry.expiresAtMs > now())
        return last.entry.identity;
    }
    if (!looksLikeApiKey(token)) return undefined;
    const hit = cache.get(hash('sha256', token, 'base64'));
    if (hit === undefined || hit.expiresAtMs <= now()) return undefined;
    if (connection !== undefined) byConnection.set(connection, { token, entry: hit });
    return hit.identity;
  }
  return Object.assign(authenticate, { cached });
}

/** The limits an identity carries: every stored limit but the expiry (checked here); undefined when none is set. */
function identityPolicy(policy: KeyPolicy): IdentityPolicy | undefined {
  const { expiresAt: _checkedHere, ...limits } = policy;
  return Object.keys(limits).length === 0 ? undefined : Object.freeze(limits);
}

// The same bound as TOKEN_BUDGET_PER_DAY.
const MAX_TOKENS_PER_DAY = 1_000_000_000_000;

/**
 * The JWT's daily token budget from the configured claim: undefined when none is configured or the
 * token has none. A claim that is there but not a positive whole number refuses the token: the
 * issuer meant a limit, and the server's default may be no limit at all.
 */
function budgetClaim(claims: JwtClaims, claim: string | undefined): number | undefined {
  if (claim === undefined) return undefined;
  const value = claims[claim];
  if (value === undefined) return undefined;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= MAX_TOKENS_PER_DAY) return value;
  throw new AppError('INVALID_TOKEN', { detail: `Token claim ${claim} is not a positive whole number of tokens` });
}

/**
 * String equality without an early exit: behind a proxy one connection carries many clients'
 * tokens, and `===` would stop at the first differing character. Lengths are public (fixed by format).
 */
function sameText(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
