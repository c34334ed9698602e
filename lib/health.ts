// Health routes: /health checks the database with a deadline; /health/live touches nothing;
// /health/upstream reports the upstream circuit breakers to operators.
import type pg from 'pg';
import { waitAtMost } from './deadline.ts';
import { constantJson } from './http/respond.ts';
import type { Route } from './http/router.ts';
import type { Context } from './http/types.ts';

export interface HealthOptions {
  pool: pg.Pool;
  timeoutMs: number;
  /** True once draining has begun: load balancers must stop sending traffic. */
  isDraining: () => boolean;
}

const OK = constantJson(200, { status: 'ok' });
const UNAVAILABLE = constantJson(503, { status: 'unavailable' });

/** The health routes, public for load balancers and probes; bodies never say why a check failed. */
export function healthRoutes(options: HealthOptions): Route[] {
  const check = coalesced(() => pingDatabase(options.pool, options.timeoutMs));
  return [
    {
      method: 'GET',
      pattern: '/health',
      public: true,
      async handler() {
        if (options.isDraining()) return UNAVAILABLE;
        return (await check()) ? OK : UNAVAILABLE;
      },
    },
    { method: 'GET', pattern: '/health/live', public: true, handler: () => OK },
  ];
}

export interface UpstreamHealthOptions {
  /** Each breaker's label (origin and model) and state. */
  breakers: () => ReadonlyArray<{ readonly upstream: string; readonly state: string }>;
  /** The metrics gate: throws 401 unless the caller may read operational state. */
  guard: (ctx: Context) => void;
}

/** GET /health/upstream: each breaker's upstream and state, nothing else (no URL path, key or error text). */
export function upstreamHealthRoute(options: UpstreamHealthOptions): Route {
  return {
    method: 'GET',
    pattern: '/health/upstream',
    public: true, // no API identity: the metrics token or a loopback peer, checked by the guard
    async handler(ctx) {
      options.guard(ctx);
      const upstreams = options.breakers().map(({ upstream, state }) => ({ upstream, state }));
      return { kind: 'json', status: 200, body: { upstreams } };
    },
  };
}

/**
 * `select 1` answered within the deadline. pg cannot cancel a query stuck on a blackholed
 * socket, so the deadline bounds our wait; the query itself is bounded by the pool's
 * connectionTimeoutMillis and query_timeout, and only one check runs at a time (see coalesced).
 */
export function pingDatabase(pool: pg.Pool, timeoutMs: number): Promise<boolean> {
  const query = pool.query('SELECT 1').then(
    () => true,
    () => false,
  );
  return waitAtMost(query, timeoutMs, false);
}

/** Shares one in-flight run among concurrent callers, so a flood of probes makes one query. */
function coalesced<T>(fn: () => Promise<T>): () => Promise<T> {
  let inFlight: Promise<T> | undefined;
  return () => {
    inFlight ??= fn().finally(() => {
      inFlight = undefined;
    });
    return inFlight;
  };
}
