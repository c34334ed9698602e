// Token-bucket rate limit per identity, with RateLimit headers; a failing store fails closed.
import { AppError } from '../../errors.ts';
import type { Context, Middleware, Next } from '../types.ts';

/** The decision shape of lib/limits/token-bucket.ts (repeated structurally: lib/http imports no other layer). */
export interface RateDecision {
  allowed: boolean;
  remaining: number;
  resetSeconds: number;
  retryAfterSeconds: number;
}

export interface RateLimitOptions {
  prefix: string;
  /** Synchronous where the store allows it (memory), so the hot path makes no promise. */
  take: (key: string) => RateDecision | Promise<RateDecision>;
  /** The header fields for a decision: [name, value, name, value]. */
  headers: (decision: RateDecision) => readonly string[];
  onRejected?: (ctx: Context) => void;
  onStoreError?: (ctx: Context, err: unknown) => void;
}

/** One bucket per identity on protected paths; 429 with Retry-After when it is empty. */
export function rateLimit(options: RateLimitOptions): Middleware {
  const { prefix, take, headers } = options;
  return async function rateLimitMiddleware(ctx: Context, next: Next): Promise<void> {
    if (ctx.identity === undefined || !ctx.path.startsWith(prefix)) {
      await next();
      return;
    }
    let decision: RateDecision;
    try {
      const result = take(ctx.identity.id);
      decision = result instanceof Promise ? await result : result;
    } catch (err) {
      // Fail closed: without the store we cannot tell a flood from normal traffic.
      options.onStoreError?.(ctx, err);
      throw new AppError('RATE_LIMIT_UNAVAILABLE', { cause: err, headers: { 'Retry-After': '1' } });
    }
    ctx.headers.push(...headers(decision));
    if (!decision.allowed) {
      options.onRejected?.(ctx);
      throw new AppError('RATE_LIMITED', {
        detail: 'Rate limit exceeded; retry later',
        // RFC 9110 §10.2.3 delay-seconds: whole seconds.
        headers: { 'Retry-After': String(decision.retryAfterSeconds) },
      });
    }
    await next();
  };
}
