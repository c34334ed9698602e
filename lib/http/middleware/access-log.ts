// One access-log line per request: method, route pattern, status, bytes, duration, client, ids.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../log.ts';
import type { Context, Identity, Middleware, Next } from '../types.ts';
import { clientRequestId } from './request-id.ts';

export interface AccessLogOptions {
  log: Logger;
  /** Called once per request after it ended (metrics). */
  observe?: (ctx: Context, durationMs: number) => void;
}

// A cached key's identity is one frozen object reused across requests: escape its id once.
const identityFields = new WeakMap<Identity, string>();

function identityField(identity: Identity): string {
  let field = identityFields.get(identity);
  if (field === undefined) {
    field = `,"identity":${JSON.stringify(identity.id)}`;
    if (Object.isFrozen(identity)) identityFields.set(identity, field);
  }
  return field;
}

/** Logs after the response; the route pattern, never the raw URL with its query string. */
export function accessLog(options: AccessLogOptions): Middleware {
  const { log, observe } = options;
  const enabled = log.isEnabled('info');
  function finish(ctx: Context): void {
    const durationMs = performance.now() - ctx.startMs;
    observe?.(ctx, durationMs);
    if (enabled) {
      // Built by hand: every field is a known-safe scalar (request id and route are from fixed
      // alphabets, node's parser accepts only known method names, the client address is a socket
      // address or an X-Forwarded-For hop that passed net.isIP); the identity is JSON-escaped; the
      // client's own request id, from a fixed alphabet too, is scrubbed because the client chose it.
      const identity = ctx.identity === undefined ? '' : identityField(ctx.identity);
      const clientId = clientRequestId(ctx.req);
      const client = clientId === undefined ? '' : `,"clientRequestId":"${log.scrub(clientId)}"`;
      const status = ctx.status || (ctx.res.headersSent ? ctx.res.statusCode : 0);
      log.line(
        'info',
        'request',
        `,"requestId":"${ctx.requestId}","method":"${ctx.method}","route":"${ctx.route}","status":${status},` +
          `"bytes":${ctx.bytes},"ms":${Math.round(durationMs * 100) / 100},"ip":"${ctx.clientIp}"${identity}${client}`,
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
