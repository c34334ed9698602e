// One access-log line per request: method, route pattern, status, bytes, duration, client, ids.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../log.ts';
import { settle } from '../compose.ts';
import type { Context, Middleware, Next } from '../types.ts';
import { clientRequestId } from './request-id.ts';

export interface AccessLogOptions {
  log: Logger;
  /** Called once per request after it ended (metrics). */
  observe?: (ctx: Context, durationMs: number) => void;
}

// Identity ids repeat across requests (one API key, many calls): escape each once. Bounded, so a
// flood of distinct JWT subjects cannot grow it; starting over when full costs one escape per id.
const MAX_IDENTITY_FIELDS = 1024;
const identityFields = new Map<string, string>();

function identityField(id: string): string {
  let field = identityFields.get(id);
  if (field === undefined) {
    field = `,"identity":${JSON.stringify(id)}`;
    if (identityFields.size >= MAX_IDENTITY_FIELDS) identityFields.clear();
    identityFields.set(id, field);
  }
  return field;
}

/** The tokens a model call used, when one ran: two integers. */
function tokens(ctx: Context): string {
  const usage = ctx.usage;
  return usage === undefined ? '' : `,"tokensIn":${usage.promptTokens},"tokensOut":${usage.completionTokens}`;
}

/** Logs after the response; the route pattern, never the raw URL with its query string. */
export function accessLog(options: AccessLogOptions): Middleware {
  const { log, observe } = options;
  const enabled = log.isEnabled('info');
  function finish(ctx: Context): undefined {
    const durationMs = performance.now() - ctx.startMs;
    observe?.(ctx, durationMs);
    if (enabled) {
      // Built by hand: every field is a known-safe scalar (request id and route are from fixed
      // alphabets, node's parser accepts only known method names, the client address is a socket
      // address or an X-Forwarded-For hop that passed net.isIP); the identity is JSON-escaped; the
      // client's own request id, from a fixed alphabet too, is scrubbed because the client chose it.
      const identity = ctx.identity === undefined ? '' : identityField(ctx.identity.id);
      const clientId = clientRequestId(ctx.req);
      const client = clientId === undefined ? '' : `,"clientRequestId":"${log.scrub(clientId)}"`;
      const status = ctx.status || (ctx.res.headersSent ? ctx.res.statusCode : 0);
      log.line(
        'info',
        'request',
        `,"requestId":"${ctx.requestId}","method":"${ctx.method}","route":"${ctx.route}","status":${status},` +
          `"bytes":${ctx.bytes},"ms":${Math.round(durationMs * 100) / 100},"ip":"${ctx.clientIp}"${identity}${client}` +
          tokens(ctx),
      );
    }
  }
  function finishFailed(ctx: Context, err: unknown): never {
    finish(ctx);
    throw err;
  }
  // Not async: a request answered synchronously is logged without a promise.
  return function accessLogMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    return settle(ctx, next, finish, finishFailed);
  };
}
