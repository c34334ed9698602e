// Bearer authentication for every route not marked public, with a failed-attempt throttle per client address.
import { AppError } from '../../errors.ts';
import type { Context, Identity, Middleware, Next } from '../types.ts';

export interface AuthOptions {
  authenticate: (token: string) => Promise<Identity>;
  /**
   * Optional synchronous lookup of an already verified token (skips a promise per request);
   * `connection` lets it remember the last token seen on a keep-alive connection.
   */
  cached?: (token: string, connection: object) => Identity | undefined;
  throttle: {
    blockedFor(address: string): number;
    fail(address: string): void;
    /** When given and false, the address key is not even computed (the usual case). */
    anyBlocked?(): boolean;
  };
  /** Maps the client address to the throttle's key (IPv6 /64 grouping). */
  addressKey: (address: string) => string;
  onFailure?: (ctx: Context, reason: string) => void;
  onThrottled?: (ctx: Context) => void;
}

const MAX_TOKEN_LENGTH = 8192;
// RFC 6750 §3: a request without credentials gets a bare challenge; a bad token says invalid_token.
const CHALLENGE = { 'WWW-Authenticate': 'Bearer' };
const INVALID_CHALLENGE = { 'WWW-Authenticate': 'Bearer error="invalid_token"' };

/**
 * Sets `ctx.identity` wherever `ctx.requiresIdentity` (every route not marked public) or answers 401
 * (or 429 for an address that failed too often). Public routes pass without a look at the header.
 */
export function auth(options: AuthOptions): Middleware {
  const { authenticate, throttle, addressKey } = options;
  const { cached } = options;
  async function slowPath(ctx: Context, next: Next, address: string, header: string): Promise<void> {
    try {
      ctx.identity = await authenticate(bearerToken(header));
    } catch (err) {
      if (!(err instanceof AppError) || err.status !== 401) throw err; // a database failure is not the client's fault
      throttle.fail(address);
      options.onFailure?.(ctx, err.detail ?? err.code);
      throw new AppError('INVALID_TOKEN', { detail: 'Invalid credentials', headers: INVALID_CHALLENGE });
    }
    return next();
  }
  return function authMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    if (!ctx.requiresIdentity) return next();
    const address = throttle.anyBlocked?.() === false ? undefined : addressKey(ctx.clientIp);
    const wait = address === undefined ? 0 : throttle.blockedFor(address);
    if (wait > 0) {
      // Refused before the credentials are even looked at: guessing costs the attacker, not us.
      options.onThrottled?.(ctx);
      throw new AppError('AUTH_THROTTLED', {
        detail: 'Too many failed authentication attempts',
        headers: { 'Retry-After': String(wait) },
      });
    }
    const header = ctx.req.headers.authorization;
    if (header === undefined || header === '') {
      throw new AppError('UNAUTHORIZED', { detail: 'Send Authorization: Bearer <API key or JWT>', headers: CHALLENGE });
    }
    // A key verified moments ago: no promise, no await.
    const known =
      cached !== undefined && /^bearer /i.test(header) ? cached(header.slice(7).trim(), ctx.req.socket) : undefined;
    if (known !== undefined) {
      ctx.identity = known;
      return next();
    }
    return slowPath(ctx, next, address ?? addressKey(ctx.clientIp), header);
  };
}

function bearerToken(header: string): string {
  // RFC 9110 §11.1: the scheme is case-insensitive.
  if (header.length > MAX_TOKEN_LENGTH + 7 || !/^bearer /i.test(header)) {
    throw new AppError('INVALID_TOKEN', { detail: 'Expected a Bearer token' });
  }
  const token = header.slice(7).trim();
  if (token === '' || token.length > MAX_TOKEN_LENGTH)
    throw new AppError('INVALID_TOKEN', { detail: 'Expected a Bearer token' });
  return token;
}
