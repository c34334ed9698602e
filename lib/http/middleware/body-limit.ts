// Refuses a declared Content-Length over the cap before authentication or any handler runs.
import { checkDeclaredLength } from '../body.ts';
import type { Context, Middleware, Next } from '../types.ts';

/** 413 for a declared length over `maxBytes`; chunked bodies are cut by the counting reader in body.ts. */
export function bodyLimit(maxBytes: number): Middleware {
  return function bodyLimitMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    checkDeclaredLength(ctx.req, maxBytes);
    return next();
  };
}
