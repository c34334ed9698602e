// The types of the framework we do not import: context, handlers, middleware, replies.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.ts';
import type { Match } from './router.ts';

/** Limits an API key (or a trusted JWT's claims) sets for itself; an absent field takes the server's default. */
export interface IdentityPolicy {
  readonly rateLimitPerMinute?: number;
  readonly rateLimitBurst?: number;
  readonly maxStreams?: number;
  readonly tokensPerDay?: number;
  /** The agents this identity may use; absent: every agent. */
  readonly agents?: readonly string[];
}

/** Who made the request, once authentication has run: `key:<id>` or `jwt:<sub>`. */
export interface Identity {
  id: string;
  kind: 'key' | 'jwt';
  policy?: IdentityPolicy;
}

/** One server-sent event; `data` is serialised as JSON unless it is a string. */
export interface SseEvent {
  event?: string;
  id?: string;
  data?: unknown;
  /** A comment line (`: text`), used for heartbeats. */
  comment?: string;
}

/** What a handler returns; `respond` is the only code that turns it into bytes. */
export type Reply =
  | {
      kind: 'json';
      status: number;
      body: unknown;
      headers?: Record<string, string>;
      /** The body already serialised, set only by constantJson() for replies sent many times. */
      serialised?: string;
    }
  | { kind: 'text'; status: number; body: string; contentType: string; headers?: Record<string, string> }
  | { kind: 'empty'; status: number; headers?: Record<string, string> }
  | {
      kind: 'sse';
      events: AsyncIterable<SseEvent>;
      /** Heartbeat comment interval; 15 s by default. */
      heartbeatMs?: number;
      headers?: Record<string, string>;
    };

/** The per-request context every middleware and handler sees. */
export interface Context {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly method: string;
  /** The path without its query string, as received (not decoded). */
  readonly path: string;
  /** The raw query string without `?`, or ''. */
  readonly rawQuery: string;
  /** The matched route pattern (e.g. `/v1/conversations/:id`), or a fixed label when none matched. */
  route: string;
  params: Record<string, string>;
  /** What the router found for this method and path: a route, a path without this method (405), or nothing. */
  readonly match: Match;
  /**
   * True when the auth middleware must establish an identity: every route not marked public, and a
   * path that matched nothing under the API prefix (so an anonymous caller cannot probe which exist).
   */
  readonly requiresIdentity: boolean;
  requestId: string;
  /** The client address: the socket peer, or the right-most untrusted X-Forwarded-For entry. */
  clientIp: string;
  identity: Identity | undefined;
  log: Logger;
  /** Aborts when the client goes away or the request deadline passes. */
  readonly signal: AbortSignal;
  /** Monotonic start time, from `performance.now()`. */
  readonly startMs: number;
  /** Precomputed headers every response carries (security headers), as a flat [name, value, …] list. */
  baseHeaders: string[];
  /** Response headers added by middleware for this request, as a flat [name, value, …] list for writeHead. */
  readonly headers: string[];
  /** Stops the request deadline (a started stream is bounded by its own timeouts instead). */
  clearDeadline(): void;
  /** Tokens a model call used for this request, for the access log; unset when none ran or none was reported. */
  usage: { promptTokens: number; completionTokens: number } | undefined;
  /** Status and byte count written, for the access log and metrics. */
  status: number;
  bytes: number;
  /** Free-form per-request state for middleware that must talk to each other. */
  readonly state: Map<string, unknown>;
}

// A request whose whole chain is synchronous (a cached key, the memory rate-limit store, a constant
// reply) is answered without one promise; compose() and settle() keep it that way.

/**
 * Runs the rest of the chain: undefined when all of it finished synchronously, else its promise.
 * A failure further in always arrives as a rejection (compose() turns a synchronous throw into one).
 */
export type Next = () => Promise<void> | undefined;
/**
 * A middleware may return synchronously (undefined) or a promise, and may throw synchronously.
 * One that acts after next() or on any other maybe-promise step does so through settle(), which
 * handles both shapes and both kinds of failure; the others simply `return next()`.
 */
export type Middleware = (ctx: Context, next: Next) => Promise<void> | undefined;
/** A handler may return its reply synchronously or as a promise; a synchronous reply costs no promise. */
export type Handler = (ctx: Context) => Reply | Promise<Reply>;
