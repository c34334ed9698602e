// GET /metrics: Prometheus text, behind METRICS_TOKEN or, without one, for loopback peers only.
import { createHash, timingSafeEqual } from 'node:crypto';
import { AppError } from '../errors.ts';
import { normaliseAddress } from '../http/client-ip.ts';
import type { Route } from '../http/router.ts';
import type { Context } from '../http/types.ts';
import { CONTENT_TYPE } from './registry.ts';

/** The failed-authentication throttle the API's credentials count against. */
export interface MetricsThrottle {
  blockedFor(address: string): number;
  fail(address: string, credential?: string): void;
  admit(address: string, credential: string): number;
}

export interface MetricsRouteOptions {
  render: () => string;
  /** The bearer token scrapers must send; undefined allows loopback peers only. */
  token: string | undefined;
  /** Wrong tokens count here like wrong API keys; a blocked address has its token compared at the probe rate. */
  throttle: MetricsThrottle;
  /** Maps the client address to the throttle's key (IPv6 /64 grouping). */
  addressKey: (address: string) => string;
  /** True for a socket peer listed in TRUST_PROXY: without a token, a proxy's request is never local. */
  isTrustedProxy: (address: string) => boolean;
  onDenied?: (ctx: Context) => void;
  onThrottled?: (ctx: Context) => void;
}

/** Headers a reverse proxy adds to what it relays (RFC 7239 Forwarded, RFC 9110 §7.6.3 Via, and the de facto ones). */
const RELAY_HEADERS = ['x-forwarded-for', 'forwarded', 'x-real-ip', 'via'] as const;
const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1)$/;
const UNAUTHORIZED = { detail: 'Metrics need the metrics token', headers: { 'WWW-Authenticate': 'Bearer' } };

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** The operators' gate of /metrics and /health/upstream: throws 401 unless the request may read them. */
export function metricsGuard(options: Omit<MetricsRouteOptions, 'render'>): (ctx: Context) => void {
  const { throttle, addressKey } = options;
  // Compare digests: equal length always, so timingSafeEqual reveals nothing about the token's length either.
  const expected = options.token === undefined ? undefined : digest(`Bearer ${options.token}`);

  function denied(ctx: Context): AppError {
    options.onDenied?.(ctx);
    return new AppError('UNAUTHORIZED', UNAUTHORIZED);
  }
  function throttled(ctx: Context, seconds: number): AppError {
    options.onThrottled?.(ctx);
    return new AppError('AUTH_THROTTLED', {
      detail: 'Too many failed authentication attempts',
      headers: { 'Retry-After': String(Math.max(1, seconds)) },
    });
  }
  /** Throws unless the request carries the token; a wrong one is a failed attempt of its address. */
  function checkToken(ctx: Context, wanted: Buffer): void {
    const header = ctx.req.headers.authorization;
    if (header === undefined || header === '') throw denied(ctx);
    const address = addressKey(ctx.clientIp);
    const blocked = throttle.blockedFor(address) > 0;
    const wait = blocked ? throttle.admit(address, header) : 0;
    if (wait > 0) throw throttled(ctx, wait);
    // RFC 9110 §11.1: the scheme is case-insensitive ("bearer" is Bearer).
    const presented = /^bearer /i.test(header) ? `Bearer ${header.slice(7)}` : header;
    if (timingSafeEqual(digest(presented), wanted)) return;
    throttle.fail(address, header);
    if (blocked) throw throttled(ctx, throttle.blockedFor(address));
    throw denied(ctx);
  }
  function isLocal(ctx: Context): boolean {
    // The socket peer, never X-Forwarded-For. A configured proxy relays the internet whatever it adds,
    // and a request relayed by another local proxy is not local either (nginx's usual
    // `proxy_set_header X-Real-IP` sends no X-Forwarded-For).
    const peer = normaliseAddress(ctx.req.socket.remoteAddress);
    if (options.isTrustedProxy(peer)) return false;
    const forwarded = RELAY_HEADERS.some((name) => ctx.req.headers[name] !== undefined);
    return !forwarded && LOOPBACK.test(peer);
  }
  return function guard(ctx) {
    if (expected !== undefined) checkToken(ctx, expected);
    else if (!isLocal(ctx)) throw denied(ctx);
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
