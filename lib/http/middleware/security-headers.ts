// The API security header profile (OWASP's REST headers, helmet's set tightened for an API that
// serves no HTML), precomputed once and sent on every response.
import type { Context, Middleware, Next } from '../types.ts';

export interface SecurityHeaderOptions {
  hsts: boolean;
}

/** The headers as a flat [name, value, …] list, exported for tests and for responses written outside the chain. */
export function securityHeaderList(options: SecurityHeaderOptions): string[] {
  const list = [
    'content-security-policy',
    "default-src 'none'; frame-ancestors 'none'",
    'x-content-type-options',
    'nosniff',
    'x-frame-options',
    'DENY',
    'referrer-policy',
    'no-referrer',
    'cross-origin-resource-policy',
    'same-origin',
    'cross-origin-opener-policy',
    'same-origin',
    'permissions-policy',
    'accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), ' +
      'payment=(), usb=(), interest-cohort=()',
    'cache-control',
    'no-store',
    // Modern browsers' XSS auditors were removed; `0` stops old ones from creating XS-leaks.
    'x-xss-protection',
    '0',
  ];
  if (options.hsts) list.push('strict-transport-security', 'max-age=31536000; includeSubDomains');
  return list;
}

/**
 * Sets the precomputed headers as the base of every response, errors and 404s included; pass the
 * list securityHeaderList() built when the same list also serves responses written outside the chain.
 */
export function securityHeaders(profile: SecurityHeaderOptions | readonly string[]): Middleware {
  const list = isList(profile) ? (profile as string[]) : securityHeaderList(profile);
  return function securityHeadersMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    ctx.baseHeaders = list; // shared, never mutated: respond copies it into each response's headers
    return next();
  };
}

function isList(profile: SecurityHeaderOptions | readonly string[]): profile is readonly string[] {
  return Array.isArray(profile);
}
