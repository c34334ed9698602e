// Token-bucket rate limit per identity, with RateLimit headers; a failing store fails closed.
import { AppError } from '../../errors.ts';
import { settle } from '../compose.ts';
import type { Context, Identity, Middleware, Next } from '../types.ts';

/** The decision shape of lib/limits/token-bucket.ts (repeated structurally: lib/http imports no other layer). */
export interface RateDecision {
  allowed: boolean;
  remaining: number;
  resetSeconds: number;
  retryAfterSeconds: number;
}

export interface RateLimitOptions {
  /** Synchronous where the store allows it (memory), so the hot path makes no promise. */
  take: (identity: Identity) => RateDecision | Promise<RateDecision>;
  /** The header fields for a decision under the identity's policy: [name, value, name, value]. */
  headers: (decision: RateDecision, identity: Identity) => readonly string[];
  onRejected?: (ctx: Context) => void;
  onStoreError?: (ctx: Context, err: unknown) => void;
}

/**
 * One bucket per identity, sized by its own policy or the defaults: requests the auth middleware
 * identified (public routes have none); 429 when empty.
 */
export function rateLimit(options: RateLimitOptions): Middleware {
  const { take, headers } = options;
  function decide(ctx: Context, decision: RateDecision, next: Next): Promise<void> | undefined {
    const fields = headers(decision, ctx.identity as Identity);
    for (let i = 0; i < fields.length; i++) ctx.headers.push(fields[i] as string);
    if (!decision.allowed) {
      options.onRejected?.(ctx);
      throw new AppError('RATE_LIMITED', {
        detail: 'Rate limit exceeded; retry later',
        // RFC 9110 §10.2.3 delay-seconds: whole seconds.
        headers: { 'Retry-After': String(decision.retryAfterSeconds) },
      });
    }
    return next();
  }
  function storeFailed(ctx: Context, err: unknown): never {
    // Fail closed: without the store we cannot tell a flood from normal traffic.
    options.onStoreError?.(ctx, err);
    throw new AppError('RATE_LIMIT_UNAVAILABLE', { cause: err, headers: { 'Retry-After': '1' } });
  }
  // Not async: with the memory store the whole decision is synchronous and adds no promise hop.
  return function rateLimitMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    const { identity } = ctx;
    if (identity === undefined) return next();
    return settle(
      ctx,
      () => take(identity),
      (c, decision) => decide(c, decision, next),
      storeFailed,
    );
  };
}
