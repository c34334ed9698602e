// Request id: always our own, made here, echoed and bound to the logger; a client's id is only logged beside it.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Context, Middleware, Next } from '../types.ts';

// A conservative alphabet: such an id can be written into a log line without escaping.
const WELL_FORMED = /^[A-Za-z0-9._-]{8,128}$/;

/** Assigns `ctx.requestId` (a fresh UUID) and sends it as X-Request-Id. */
export function requestId(): Middleware {
  return function requestIdMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    // Never the client's: two requests could then share one id in the logs and the problem bodies.
    ctx.requestId = randomUUID();
    ctx.headers.push('x-request-id', ctx.requestId);
    return next();
  };
}

/** The client's own X-Request-Id when it is well formed (8-128 of A-Z a-z 0-9 . _ -), for the access log. */
export function clientRequestId(req: IncomingMessage): string | undefined {
  const incoming = req.headers['x-request-id'];
  return typeof incoming === 'string' && WELL_FORMED.test(incoming) ? incoming : undefined;
}
