// Refuses a declared Content-Length over the cap before authentication or any handler runs.
import { checkDeclaredLength } from '../body.ts';
import type { Context, Middleware, Next } from '../types.ts';

/**
 * 413 for a declared length over `maxBytes`, or over the route's own cap in `perRoute` (keyed by
 * route pattern); chunked bodies are cut by the counting reader in body.ts with the same caps.
 */
export function bodyLimit(maxBytes: number, perRoute: ReadonlyMap<string, number> = new Map()): Middleware {
  return function bodyLimitMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    checkDeclaredLength(ctx.req, perRoute.get(ctx.route) ?? maxBytes);
    return next();
  };
}
