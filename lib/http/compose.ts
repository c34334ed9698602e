// Composes middleware into one onion, Koa/Hono style, in a few lines.
import type { Context, Middleware } from './types.ts';

/**
 * Runs middleware in order; each may call `next()` once to run the rest. A second call rejects.
 * Returns undefined when every step finished synchronously, else a promise; a step that throws
 * synchronously becomes a rejection, so callers handle errors in one place.
 */
export function compose(middleware: readonly Middleware[]): (ctx: Context) => Promise<void> | undefined {
  const chain = [...middleware];
  return function composed(ctx: Context): Promise<void> | undefined {
    let index = -1;
    function dispatch(i: number): Promise<void> | undefined {
      // A middleware that calls next() twice would run the rest of the chain (and the handler) twice.
      if (i <= index) return Promise.reject(new Error('next() called multiple times'));
      index = i;
      const fn = chain[i];
      if (fn === undefined) return undefined;
      try {
        return fn(ctx, () => dispatch(i + 1));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return dispatch(0);
  };
}
