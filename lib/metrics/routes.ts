// GET /metrics: Prometheus text, behind METRICS_TOKEN or, without one, for loopback peers only.
import { createHash, timingSafeEqual } from 'node:crypto';
import { AppError } from '../errors.ts';
import type { Route } from '../http/router.ts';
import type { Context } from '../http/types.ts';
import { CONTENT_TYPE } from './registry.ts';

export interface MetricsRouteOptions {
  render: () => string;
  /** The bearer token scrapers must send; undefined allows loopback peers only. */
  token: string | undefined;
  onDenied?: (ctx: Context) => void;
}

/** Headers a reverse proxy adds to what it relays (RFC 7239 Forwarded, RFC 9110 §7.6.3 Via, and the de facto ones). */
const RELAY_HEADERS = ['x-forwarded-for', 'forwarded', 'x-real-ip', 'via'] as const;
const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1|::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3})$/;

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** The operators' gate of /metrics and /health/upstream: throws 401 unless the request may read them. */
export function metricsGuard(options: Omit<MetricsRouteOptions, 'render'>): (ctx: Context) => void {
  // Compare digests: equal length always, so timingSafeEqual reveals nothing about the token's length either.
  const expected = options.token === undefined ? undefined : digest(`Bearer ${options.token}`);
  function allowed(ctx: Context): boolean {
    if (expected !== undefined) {
      const header = ctx.req.headers.authorization;
      return header !== undefined && timingSafeEqual(digest(header), expected);
    }
    // The socket peer, never X-Forwarded-For; and a request relayed by a local proxy is not local
    // (nginx's usual `proxy_set_header X-Real-IP` sends no X-Forwarded-For).
    const forwarded = RELAY_HEADERS.some((name) => ctx.req.headers[name] !== undefined);
    return !forwarded && LOOPBACK.test(ctx.req.socket.remoteAddress ?? '');
  }
  return function guard(ctx) {
    if (allowed(ctx)) return;
    options.onDenied?.(ctx);
    throw new AppError('UNAUTHORIZED', {
      detail: 'Metrics need the metrics token',
      headers: { 'WWW-Authenticate': 'Bearer' },
    });
  };
}

/** The /metrics route. */
export function metricsRoutes(options: MetricsRouteOptions): Route[] {
  const guard = metricsGuard(options);
  return [
    {
      method: 'GET',
      pattern: '/metrics',
      public: true, // no API identity: the metrics token or a loopback peer, checked below
      async handler(ctx) {
        guard(ctx);
        return { kind: 'text', status: 200, body: options.render(), contentType: CONTENT_TYPE };
      },
    },
  ];
}
