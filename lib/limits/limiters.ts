// The server's per-identity limits built from configuration: the request rate (a token bucket in
// memory or PostgreSQL) and the open-answer cap, each honouring a key's own policy over the defaults.
import type { Config } from '../config.ts';
import type { Database } from '../db/database.ts';
import type { Identity, IdentityPolicy } from '../http/types.ts';
import type { Logger } from '../log.ts';
import { createConcurrencyLimiter } from './concurrency.ts';
import { createLeasedStore } from './leased-store.ts';
import { createMemoryStore } from './memory-store.ts';
import { createPostgresStore } from './postgres-store.ts';
import { rateLimitFormatter } from './ratelimit-headers.ts';
import { createStreamLeases, type StreamSlots } from './stream-leases.ts';
import { type BucketPolicy, bucketPolicy, type Decision } from './token-bucket.ts';

export interface RateLimiter {
  take(identity: Identity): Decision | Promise<Decision>;
  /** The RateLimit header fields of a decision, for the identity's own policy. */
  headers(decision: Decision, identity: Identity): readonly string[];
  close(): Promise<void>;
}

interface Limit {
  bucket: BucketPolicy;
  headers: (decision: Decision) => readonly string[];
}

// Keys share a handful of distinct policies; bounded anyway, and rebuilding one is cheap.
const MAX_POLICIES = 1000;

/**
 * The per-identity bucket: synchronous in memory; shared in PostgreSQL either exactly (one
 * statement per decision) or by leases (synchronous while this instance holds tokens for the key).
 */
export function createRateLimiter(config: Config, db: Database, log: Logger): RateLimiter {
  const defaults = limit(bucketPolicy(config.rateLimit.perMinute, config.rateLimit.burst), 'default');
  const own = new Map<string, Limit>();
  function limitOf(policy: IdentityPolicy | undefined): Limit {
    const perMinute = policy?.rateLimitPerMinute;
    const burst = policy?.rateLimitBurst;
    if (perMinute === undefined && burst === undefined) return defaults;
    const name = `${perMinute}/${burst}`;
    let found = own.get(name);
    if (found === undefined) {
      const bucket = bucketPolicy(perMinute ?? config.rateLimit.perMinute, burst ?? config.rateLimit.burst);
      found = limit(bucket, 'key');
      if (own.size >= MAX_POLICIES) own.clear();
      own.set(name, found);
    }
    return found;
  }
  const headers = (decision: Decision, identity: Identity) => limitOf(identity.policy).headers(decision);
  const { namedStatements } = db;
  if (config.rateLimit.store === 'postgres') {
    const onError = (err: unknown) => log.warn('rate-limit sweep failed', { err });
    const store = createPostgresStore(db.pool, { onError, namedStatements });
    return { take: (id) => store.take(id.id, limitOf(id.policy).bucket), headers, close: () => store.close() };
  }
  if (config.rateLimit.store === 'postgres-leased') {
    const onError = (err: unknown) => log.warn('rate-limit lease housekeeping failed', { err });
    const store = createLeasedStore(db.pool, {
      leaseFraction: config.rateLimit.leaseFraction,
      onError,
      namedStatements,
    });
    return { take: (id) => store.take(id.id, limitOf(id.policy).bucket), headers, close: () => store.close() };
  }
  const store = createMemoryStore();
  return { take: (id) => store.takeSync(id.id, limitOf(id.policy).bucket), headers, close: async () => {} };
}

function limit(bucket: BucketPolicy, name: string): Limit {
  return { bucket, headers: rateLimitFormatter({ ...bucket, name }) };
}

/**
 * Stream caps across instances whenever the rate limits are shared too; in this process otherwise,
 * and on the embedded database, which only one process can open. `close` is set for the shared one.
 */
export function createStreamSlots(
  config: Config,
  db: Database,
  log: Logger,
): StreamSlots & { close?: () => Promise<void> } {
  if (config.rateLimit.store === 'memory' || db.kind === 'pglite') {
    return createConcurrencyLimiter(config.maxConcurrentStreamsPerKey);
  }
  return createStreamLeases(db.pool, {
    maxPerKey: config.maxConcurrentStreamsPerKey,
    ttlMs: config.streamLeaseTtlMs,
    onError: (err) => log.warn('stream lease housekeeping failed', { err }),
  });
}
