// Bearer authentication for every route not marked public, with a failed-attempt throttle per address group.
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
    fail(address: string, credential?: string): void;
    /** When given and false, a blocked address is not even looked up (the usual case). */
    anyBlocked?(): boolean;
    /** 0 when a credential from a blocked address may be checked now, else seconds to wait. */
    admit(address: string, credential: string): number;
    /** Called with a credential that proved valid after a lookup (not for those checked locally). */
    succeed(credential: string): void;
  };
  /** True for a credential checked without the database (a JWT): it is checked even from a blocked address. */
  checkedLocally?: (token: string) => boolean;
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
  const { authenticate, throttle, addressKey, cached, checkedLocally } = options;
  function throttled(ctx: Context, seconds: number): AppError {
    options.onThrottled?.(ctx);
    return new AppError('AUTH_THROTTLED', {
      detail: 'Too many failed authentication attempts',
      headers: { 'Retry-After': String(Math.max(1, seconds)) },
    });
  }
  async function slowPath(ctx: Context, next: Next, header: string): Promise<void> {
    const address = addressKey(ctx.clientIp);
    const blocked = throttle.anyBlocked?.() !== false && throttle.blockedFor(address) > 0;
    let token = '';
    let local = false;
    try {
      token = bearerToken(header);
      local = checkedLocally?.(token) === true;
      // A blocked address gets no lookup for garbage; a credential known valid, one checked
      // without the database, or the address's once-a-second probe still gets its answer.
      const wait = blocked && !local ? throttle.admit(address, token) : 0;
      if (wait > 0) throw throttled(ctx, wait);
      ctx.identity = await authenticate(token);
    } catch (err) {
      if (!(err instanceof AppError) || err.status !== 401) throw err; // a 429, or a database failure
      throttle.fail(address, token);
      if (blocked) throw throttled(ctx, throttle.blockedFor(address));
      options.onFailure?.(ctx, err.detail ?? err.code);
      throw new AppError('INVALID_TOKEN', { detail: 'Invalid credentials', headers: INVALID_CHALLENGE });
    }
    if (!local) throttle.succeed(token);
    return next();
  }
  return function authMiddleware(ctx: Context, next: Next): Promise<void> | undefined {
    if (!ctx.requiresIdentity) return next();
    const header = ctx.req.headers.authorization;
    if (header === undefined || header === '') {
      throw new AppError('UNAUTHORIZED', { detail: 'Send Authorization: Bearer <API key or JWT>', headers: CHALLENGE });
    }
    // A key verified moments ago: no promise, no await, and no throttle (it is no guess).
    const known =
      cached !== undefined && /^bearer /i.test(header) ? cached(header.slice(7).trim(), ctx.req.socket) : undefined;
    if (known !== undefined) {
      ctx.identity = known;
      return next();
    }
    return slowPath(ctx, next, header);
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
