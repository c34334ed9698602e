// Health routes: /health checks the database with a deadline; /health/live touches nothing;
// /health/upstream reports the upstream circuit breakers to operators.
import type pg from 'pg';
import type { Route } from './http/router.ts';
import type { Context, Reply } from './http/types.ts';

export interface HealthOptions {
  pool: pg.Pool;
  timeoutMs: number;
  /** True once draining has begun: load balancers must stop sending traffic. */
  isDraining: () => boolean;
}

const OK: Reply = Object.freeze({ kind: 'json', status: 200, body: { status: 'ok' } });
const UNAVAILABLE: Reply = Object.freeze({ kind: 'json', status: 503, body: { status: 'unavailable' } });
const LIVE: Reply = Object.freeze({ kind: 'json', status: 200, body: { status: 'ok' } });

/** The health routes; bodies never say why a check failed. */
export function healthRoutes(options: HealthOptions): Route[] {
  const check = coalesced(() => pingDatabase(options.pool, options.timeoutMs));
  return [
    {
      method: 'GET',
      pattern: '/health',
      async handler() {
        if (options.isDraining()) return UNAVAILABLE;
        return (await check()) ? OK : UNAVAILABLE;
      },
    },
    { method: 'GET', pattern: '/health/live', handler: () => LIVE },
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
export async function pingDatabase(pool: pg.Pool, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const query = pool.query('SELECT 1').then(
    () => true,
    () => false,
  );
  try {
    return await Promise.race([query, deadline]);
  } finally {
    clearTimeout(timer);
  }
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
