// Turns routes and middleware into a node:http request listener with a per-request context.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { AppError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { compose, settle } from './compose.ts';
import { sendProblem, sendReply } from './respond.ts';
import { createRouter, type Match, type Route } from './router.ts';
import type { Context, Identity, Middleware } from './types.ts';

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
/** The native API's path prefix: a path under it that matches no route still needs credentials first. */
export const API_PREFIX = '/v1/';

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
  readonly match: Match;
  readonly requiresIdentity: boolean;
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
  readonly #deadlineMs: number;
  #deadlineCleared = false;
  #controller: AbortController | undefined;
  #timer: NodeJS.Timeout | undefined;
  #state: Map<string, unknown> | undefined;

  constructor(
    req: IncomingMessage,
    res: ServerResponse,
    log: Logger,
    deadlineMs: number,
    clientIp: string,
    match: (method: string, path: string) => Match,
  ) {
    this.req = req;
    this.res = res;
    this.method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    this.path = q === -1 ? url : url.slice(0, q);
    this.rawQuery = q === -1 ? '' : url.slice(q + 1);
    const found = match(this.method, this.path);
    this.match = found;
    if (found.kind === 'not-found') {
      this.route = UNMATCHED_ROUTE;
      // Under the API prefix an unknown path answers 401 like a known one, so route names cannot be probed.
      this.requiresIdentity = this.path.startsWith(API_PREFIX);
    } else {
      this.route = found.pattern;
      this.requiresIdentity = !found.public;
      if (found.kind === 'found') this.params = found.params;
    }
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
    // Remembered: a signal first read after this (a stream's) must not start the deadline then.
    this.#deadlineCleared = true;
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
    if (this.#deadlineCleared) return controller;
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
    const ctx = new RequestContext(req, res, log, deadlineMs, clientIp(req), match);
    run(ctx)?.catch((err: unknown) => {
      // The errors middleware answers every error; reaching here means the chain itself broke.
      ctx.log.error('request failed outside the error handler', { err, requestId: ctx.requestId });
      if (!res.headersSent) {
        answerInternal(ctx);
      } else {
        res.destroy();
      }
    });
  };
}

/** The last step of the chain: run the matched handler, or answer 404/405. Synchronous when the handler is. */
function dispatch(ctx: Context): Promise<void> | undefined {
  const { match } = ctx;
  if (match.kind === 'found') return settle(ctx, match.handler, sendReply);
  if (match.kind === 'method-not-allowed') {
    // RFC 9110 §15.5.6: 405 responses carry Allow
    throw new AppError('METHOD_NOT_ALLOWED', {
      detail: `Method ${ctx.method} is not allowed here`,
      headers: { allow: match.allow },
    });
  }
  throw new AppError('NOT_FOUND', { detail: 'No such resource' });
}

/** Parses the query string (only routes that need it pay for it). */
export function queryParams(ctx: Context): URLSearchParams {
  return new URLSearchParams(ctx.rawQuery);
}

/** A 500 problem with whatever headers the chain set (the security profile first); plain text if even that fails. */
function answerInternal(ctx: RequestContext): void {
  try {
    sendProblem(ctx, new AppError('INTERNAL', { headers: { connection: 'close' } }));
  } catch {
    if (!ctx.res.headersSent) {
      ctx.res.writeHead(500, { 'content-type': 'text/plain', connection: 'close' }).end('Internal server error');
    }
  }
}
