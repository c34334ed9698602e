// Refuses a declared Content-Length over the cap before authentication or any handler runs.
import { AppError } from '../../errors.ts';
import type { Context, Middleware, Next } from '../types.ts';

/**
 * 413 for a declared length over `maxBytes`, or over the route's own cap in `perRoute` (keyed by
 * route pattern); chunked bodies are cut by the counting reader in body.ts with the same caps.
 */
export function bodyLimit(maxBytes: number, perRoute: ReadonlyMap<string, number> = new Map()): Middleware {
  return function bodyLimitMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    const declared = ctx.req.headers['content-length'];
    if (declared !== undefined) {
      const cap = perRoute.get(ctx.route) ?? maxBytes;
      if (Number(declared) > cap) {
        throw new AppError('BODY_TOO_LARGE', { detail: `Body exceeds ${cap} bytes`, headers: { connection: 'close' } });
      }
    }
    return next();
  };
}
