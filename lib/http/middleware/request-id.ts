// Request id: keep a well-formed incoming X-Request-Id, else make one; echo it and bind it to the logger.
import { randomUUID } from 'node:crypto';
import type { Context, Middleware, Next } from '../types.ts';

const WELL_FORMED = /^[A-Za-z0-9._-]{8,128}$/;

/** Assigns `ctx.requestId` and a child logger carrying it. */
export function requestId(): Middleware {
  return function requestIdMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    const incoming = ctx.req.headers['x-request-id'];
    // Only a conservative alphabet is echoed: anything else could inject into logs or headers.
    ctx.requestId = typeof incoming === 'string' && WELL_FORMED.test(incoming) ? incoming : randomUUID();
    ctx.headers.push('x-request-id', ctx.requestId);
    return next();
  };
}
