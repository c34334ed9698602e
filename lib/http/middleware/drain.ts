// While the server drains, new requests get 503 SHUTTING_DOWN and their connection is closed.
import { AppError } from '../../errors.ts';
import type { Context, Middleware, Next } from '../types.ts';

export interface DrainOptions {
  isDraining: () => boolean;
  /** Routes that answer for themselves during a drain (readiness says 503, liveness stays 200). */
  exempt: ReadonlySet<string>;
}

// Retry-After: another instance behind the load balancer can take the request at once.
const REFUSAL_HEADERS = Object.freeze({ connection: 'close', 'Retry-After': '1' });

/** Refuses new work once draining has begun; requests already in flight are not affected. */
export function refuseWhileDraining(options: DrainOptions): Middleware {
  const { isDraining, exempt } = options;
  return function drainMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    if (isDraining() && !exempt.has(ctx.route)) {
      throw new AppError('SHUTTING_DOWN', { headers: { ...REFUSAL_HEADERS } });
    }
    return next();
  };
}
