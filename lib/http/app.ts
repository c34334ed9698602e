// Turns routes and middleware into a node:http request listener with a per-request context.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { AppError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { compose } from './compose.ts';
import { sendReply } from './respond.ts';
import { createRouter, type Route } from './router.ts';
import type { Context, Handler, Identity, Middleware } from './types.ts';

export interface AppOptions {
  routes: readonly Route[];
  /** Runs in order before the matched handler. */
  middleware: readonly Middleware[];
  log: Logger;
  /** Deadline for a request's handler work; streams clear it once they start. */
  deadlineMs: number;
  clientIp: (req: IncomingMessage) => string;
}

/** Route label for requests that matched no route (bounded label sets in logs and metrics). */
export const UNMATCHED_ROUTE = 'unmatched';

const NO_HEADERS: string[] = [];
const NO_PARAMS: Record<string, string> = Object.freeze({});

/** The per-request context; the abort signal and state map are created only when asked for. */
export class RequestContext implements Context {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  readonly path: string;
  readonly rawQuery: string;
  route: string;
  params: Record<string, string> = NO_PARAMS; // the router's own object when a route matched
  requestId = '';
  clientIp: string;
  identity: Identity | undefined = undefined;
  log: Logger;
  readonly startMs: number;
  baseHeaders: string[] = NO_HEADERS; // replaced by the security-headers middleware, never mutated
  readonly headers: string[] = [];
  status = 0;
  bytes = 0;
  usage: { promptTokens: number; completionTokens: number } | undefined = undefined;
  /** Set by the listener from the router; read by the final dispatch step. */
  handler: Handler | undefined = undefined;
  allow: string | undefined = undefined;
  readonly #deadlineMs: number;
  #controller: AbortController | undefined;
  #timer: NodeJS.Timeout | undefined;
  #state: Map<string, unknown> | undefined;

  constructor(req: IncomingMessage, res: ServerResponse, log: Logger, deadlineMs: number, clientIp: string) {
    this.req = req;
    this.res = res;
    this.method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    this.path = q === -1 ? url : url.slice(0, q);
    this.rawQuery = q === -1 ? '' : url.slice(q + 1);
    this.route = UNMATCHED_ROUTE;
    this.log = log;
    this.startMs = performance.now();
    this.#deadlineMs = deadlineMs;
    this.clientIp = clientIp;
  }

  get state(): Map<string, unknown> {
    this.#state ??= new Map();
    return this.#state;
  }

  get signal(): AbortSignal {
    this.#controller ??= this.#arm();
    return this.#controller.signal;
  }

  clearDeadline(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(): AbortController {
    const controller = new AbortController();
    const { res } = this;
    const onClose = (): void => {
      this.clearDeadline();
      // 'close' after 'finish' is the normal end; before it, the client went away.
      if (!res.writableFinished)
        controller.abort(new AppError('BAD_REQUEST', { detail: 'Client closed the connection' }));
    };
    if (res.destroyed) {
      onClose();
      return controller;
    }
    res.once('close', onClose);
    this.#timer = setTimeout(
      () => controller.abort(new AppError('REQUEST_TIMEOUT', { detail: 'Request deadline passed' })),
      this.#deadlineMs,
    );
    this.#timer.unref();
    return controller;
  }
}

/** Builds the request listener: match the route, then run the middleware chain and the handler. */
export function createApp(options: AppOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const match = createRouter(options.routes);
  const run = compose([...options.middleware, dispatch]);
  const { log, deadlineMs, clientIp } = options;
  return function onRequest(req: IncomingMessage, res: ServerResponse): void {
    const ctx = new RequestContext(req, res, log, deadlineMs, clientIp(req));
    const found = match(ctx.method, ctx.path);
    if (found.kind === 'found') {
      ctx.route = found.pattern;
      ctx.params = found.params;
      ctx.handler = found.handler;
    } else if (found.kind === 'method-not-allowed') {
      ctx.route = found.pattern;
      ctx.allow = found.allow;
    }
    run(ctx)?.catch((err: unknown) => {
      // The errors middleware answers every error; reaching here means the chain itself broke.
      ctx.log.error('request failed outside the error handler', { err, requestId: ctx.requestId });
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain', connection: 'close' }).end('Internal server error');
      } else {
        res.destroy();
      }
    });
  };
}

/** The last step of the chain: run the matched handler, or answer 404/405. Synchronous when the handler is. */
function dispatch(context: Context): Promise<void> | undefined {
  const ctx = context as RequestContext;
  if (ctx.handler === undefined) {
    if (ctx.allow !== undefined) {
      // RFC 9110 §15.5.6: 405 responses carry Allow
      throw new AppError('METHOD_NOT_ALLOWED', {
        detail: `Method ${ctx.method} is not allowed here`,
        headers: { allow: ctx.allow },
      });
    }
    throw new AppError('NOT_FOUND', { detail: 'No such resource' });
  }
  const reply = ctx.handler(ctx);
  if (reply instanceof Promise) return reply.then((r) => sendReply(ctx, r));
  return sendReply(ctx, reply);
}

/** Parses the query string (only routes that need it pay for it). */
export function queryParams(ctx: Context): URLSearchParams {
  return new URLSearchParams(ctx.rawQuery);
}
