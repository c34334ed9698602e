// CORS with an exact-match origin allowlist (never `*`), preflights, and Vary: Origin.
import { AppError } from '../../errors.ts';
import { sendEmpty } from '../respond.ts';
import type { Context, Middleware, Next } from '../types.ts';

export interface CorsOptions {
  origins: readonly string[];
  /** Called when a preflight from a foreign origin is refused (security event). */
  onReject?: (ctx: Context, origin: string) => void;
  maxAgeSeconds?: number;
}

// Last-Event-ID: a page resuming a stream sends it (EventSource-style resumption over fetch).
const ALLOW_HEADERS = 'authorization, content-type, x-request-id, last-event-id';
const EXPOSE_HEADERS = 'x-request-id, ratelimit, ratelimit-policy, retry-after';

/** Answers preflights and OPTIONS, and marks allowed origins on actual requests. */
export function cors(options: CorsOptions): Middleware {
  const allowed = new Set(options.origins);
  const maxAge = String(options.maxAgeSeconds ?? 600);
  return function corsMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    const origin = ctx.req.headers.origin;
    if (ctx.method === 'OPTIONS') {
      answerOptions(ctx, origin, allowed.has(origin ?? ''), maxAge, options.onReject);
      return undefined;
    }
    // Responses differ by Origin, so caches must key on it (Fetch standard, CORS protocol and HTTP caches).
    ctx.headers.push('vary', 'origin');
    if (origin !== undefined && allowed.has(origin)) {
      ctx.headers.push('access-control-allow-origin', origin, 'access-control-expose-headers', EXPOSE_HEADERS);
    }
    return next();
  };
}

function answerOptions(
  ctx: Context,
  origin: string | undefined,
  originAllowed: boolean,
  maxAge: string,
  onReject: CorsOptions['onReject'],
): void {
  const { match } = ctx;
  const routeExists = match.kind !== 'not-found';
  // The path's own methods, from the router (no route answers OPTIONS itself, so it reports them all).
  const methods = match.kind === 'method-not-allowed' ? match.allow : ctx.method;
  const preflight = origin !== undefined && ctx.req.headers['access-control-request-method'] !== undefined;
  if (preflight) {
    if (!originAllowed) {
      onReject?.(ctx, origin);
      // A failed preflight gets no CORS headers at all.
      throw new AppError('CORS_REJECTED', { detail: 'Origin is not allowed' });
    }
    if (!routeExists) throw new AppError('NOT_FOUND', { detail: 'No such resource' });
    ctx.headers.push(
      'access-control-allow-origin',
      origin,
      'access-control-allow-methods',
      methods,
      'access-control-allow-headers',
      ALLOW_HEADERS,
      'access-control-max-age',
      maxAge,
      'vary',
      'origin',
    );
  } else if (!routeExists) {
    throw new AppError('NOT_FOUND', { detail: 'No such resource' });
  }
  sendEmpty(ctx, 204, { allow: methods });
}
