// Composes middleware into one onion, Koa/Hono style, and owns the one sync-or-promise rule.
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

/**
 * Runs `step(ctx)` and hands its outcome on: `onValue` with what it returned, or `onError` with what
 * it threw or rejected with (without `onError` the error travels on). When the step returns no
 * promise, the handler runs at once and no promise is made; otherwise it runs when the promise settles.
 * Middleware and the final dispatch use this instead of testing for a promise themselves, so the
 * rule that a synchronous chain stays synchronous is decided here only.
 */
export function settle<T>(
  ctx: Context,
  step: (ctx: Context) => T | Promise<T>,
  onValue: (ctx: Context, value: T) => Promise<void> | undefined,
  onError?: (ctx: Context, err: unknown) => Promise<void> | undefined,
): Promise<void> | undefined {
  let result: T | Promise<T>;
  try {
    result = step(ctx);
  } catch (err) {
    if (onError === undefined) throw err;
    return onError(ctx, err);
  }
  if (!(result instanceof Promise)) return onValue(ctx, result);
  return result.then(
    (value) => onValue(ctx, value),
    onError === undefined ? undefined : (err: unknown) => onError(ctx, err),
  );
}
