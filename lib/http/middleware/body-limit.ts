// Refuses a declared Content-Length over the cap before authentication or any handler runs.
import { AppError } from '../../errors.ts';
import type { Context, Middleware, Next } from '../types.ts';

/** 413 for a declared length over `maxBytes`; chunked bodies are cut by the counting reader in body.ts. */
export function bodyLimit(maxBytes: number): Middleware {
  return function bodyLimitMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    const declared = ctx.req.headers['content-length'];
    if (declared !== undefined && Number(declared) > maxBytes) {
      throw new AppError('BODY_TOO_LARGE', {
        detail: `Body exceeds ${maxBytes} bytes`,
        headers: { connection: 'close' },
      });
    }
    return next();
  };
}
