// One access-log line per request: method, route pattern, status, bytes, duration, client, ids.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../log.ts';
import type { Context, Middleware, Next } from '../types.ts';

export interface AccessLogOptions {
  log: Logger;
  /** Called once per request after it ended (metrics). */
  observe?: (ctx: Context, durationMs: number) => void;
}

/** Logs after the response; the route pattern, never the raw URL with its query string. */
export function accessLog(options: AccessLogOptions): Middleware {
  const { log, observe } = options;
  const enabled = log.isEnabled('info');
  function finish(ctx: Context): void {
    const durationMs = performance.now() - ctx.startMs;
    observe?.(ctx, durationMs);
    if (enabled) {
      // Built by hand: every field is a known-safe scalar (request id and route are from fixed alphabets).
      const identity = ctx.identity === undefined ? '' : `,"identity":${JSON.stringify(ctx.identity.id)}`;
      log.line(
        'info',
        'request',
        `,"requestId":"${ctx.requestId}","method":${JSON.stringify(ctx.method)},"route":"${ctx.route}","status":${ctx.status || (ctx.res.headersSent ? ctx.res.statusCode : 0)},"bytes":${ctx.bytes},"ms":${Math.round(durationMs * 100) / 100},"ip":${JSON.stringify(ctx.clientIp)}${identity}`,
      );
    }
  }
  // Not async: a request answered synchronously is logged without a promise.
  return function accessLogMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    let pending: Promise<void> | undefined;
    try {
      pending = next();
    } catch (err) {
      finish(ctx);
      throw err;
    }
    if (pending === undefined) {
      finish(ctx);
      return undefined;
    }
    return pending.finally(() => finish(ctx));
  };
}
