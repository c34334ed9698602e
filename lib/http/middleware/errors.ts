// Turns every error into RFC 9457 problem+json; unknown errors become a generic 500 and are logged in full.
import { AppError, toAppError } from '../../errors.ts';
import { settle } from '../compose.ts';
import { sendProblem } from '../respond.ts';
import type { Context, Middleware, Next } from '../types.ts';

export interface ErrorHandlerOptions {
  /** Maps known infrastructure failures (a database that is down) to an AppError, e.g. 503. */
  classify?: (err: unknown) => AppError | undefined;
  /** A writer for routes whose clients expect another error shape (OpenAI's); problem+json otherwise. */
  writerFor?: (ctx: Context) => ((ctx: Context, err: AppError) => void) | undefined;
}

/** Catches what the rest of the chain throws and answers it (or cuts the connection if headers are gone). */
export function errorHandler(options: ErrorHandlerOptions = {}): Middleware {
  const { classify } = options;
  function handle(ctx: Context, thrown: unknown): undefined {
    const err = thrown instanceof AppError ? thrown : (classify?.(thrown) ?? thrown);
    const appErr = toAppError(err);
    if (!(err instanceof AppError)) {
      // The cause chain goes to the log with the request id; the client gets a generic 500.
      ctx.log.error('unhandled error', { err, requestId: ctx.requestId, route: ctx.route });
    } else if (appErr.status >= 500 && appErr.cause !== undefined) {
      ctx.log.error('request failed', {
        code: appErr.code,
        err: appErr.cause,
        requestId: ctx.requestId,
        route: ctx.route,
      });
    }
    if (!ctx.res.headersSent) {
      const write = options.writerFor?.(ctx) ?? sendProblem;
      write(ctx, appErr);
    } else if (!ctx.res.writableEnded) {
      // A body is half-written; appending an error would corrupt it. Cut the connection.
      ctx.res.destroy();
    }
  }
  // Not async: a chain that finished synchronously costs no promise here.
  return function errorMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    return settle(ctx, next, answered, handle);
  };
}

function answered(): undefined {
  return undefined;
}
