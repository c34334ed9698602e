// One error class with stable codes, and the catalogue of those codes.
//
// Codes are the contract with clients (they appear in problem+json bodies and SSE error
// frames); class names and messages are not. `expose` is true only for client errors: only
// then may `detail` reach the client.

/** Every code the server can answer with, its HTTP status and its fixed title. */
export const ERROR_CODES = {
  BAD_REQUEST: { status: 400, title: 'Bad request' },
  INVALID_JSON: { status: 400, title: 'Malformed JSON body' },
  VALIDATION_FAILED: { status: 400, title: 'Request failed validation' },
  BAD_FRAMING: { status: 400, title: 'Ambiguous request framing' },
  UNAUTHORIZED: { status: 401, title: 'Authentication required' },
  INVALID_TOKEN: { status: 401, title: 'Invalid credentials' },
  CORS_REJECTED: { status: 403, title: 'Origin not allowed' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed' },
  REQUEST_TIMEOUT: { status: 408, title: 'Request timeout' },
  BODY_TOO_LARGE: { status: 413, title: 'Request body too large' },
  EXPECTATION_FAILED: { status: 417, title: 'Expectation failed' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type' },
  RATE_LIMITED: { status: 429, title: 'Too many requests' },
  AUTH_THROTTLED: { status: 429, title: 'Too many failed authentication attempts' },
  TOO_MANY_STREAMS: { status: 429, title: 'Too many concurrent streams' },
  BUDGET_EXCEEDED: { status: 429, title: 'Daily token budget exceeded' },
  CANCELLED: { status: 409, title: 'The answer was cancelled' },
  HEADERS_TOO_LARGE: { status: 431, title: 'Request header fields too large' },
  INTERNAL: { status: 500, title: 'Internal server error' },
  UPSTREAM_ERROR: { status: 502, title: 'Upstream error' },
  UPSTREAM_UNAVAILABLE: { status: 503, title: 'Upstream unavailable' },
  SERVICE_UNAVAILABLE: { status: 503, title: 'Service unavailable' },
  RATE_LIMIT_UNAVAILABLE: { status: 503, title: 'Service unavailable' },
  SHUTTING_DOWN: { status: 503, title: 'Server is shutting down' },
  RESUME_INTERRUPTED: { status: 503, title: 'The live answer could not be followed; resume again' },
  // Exposed although a 5xx: it names configuration variables, and the operator reading it needs them.
  MODEL_NOT_CONFIGURED: { status: 503, title: 'No model configured', expose: true },
  UPSTREAM_TIMEOUT: { status: 504, title: 'Upstream timeout' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface AppErrorOptions {
  /** Human-readable explanation; sent to the client only when the error is exposed (4xx). */
  detail?: string;
  /** Override of the catalogue's status (rarely needed). */
  status?: number;
  cause?: unknown;
  /** Extra response headers, e.g. `Allow`, `Retry-After`, `WWW-Authenticate`. */
  headers?: Record<string, string>;
  /** Extra members of the problem+json body (client errors only), e.g. validation issues. */
  extra?: Record<string, unknown>;
}

/** The one error type the server throws on purpose; anything else is an unknown 500. */
export class AppError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly title: string;
  readonly expose: boolean;
  readonly detail: string | undefined;
  readonly headers: Record<string, string> | undefined;
  readonly extra: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, options: AppErrorOptions = {}) {
    const entry = ERROR_CODES[code];
    super(options.detail ?? entry.title, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.status = options.status ?? entry.status;
    this.title = entry.title;
    this.expose = 'expose' in entry ? entry.expose : this.status < 500;
    this.detail = options.detail;
    this.headers = options.headers;
    this.extra = options.extra;
  }
}

// '__proto__' as well: assigning it would replace the body's prototype.
const RESERVED_MEMBERS = new Set(['type', 'title', 'status', 'code', 'detail', 'requestId', '__proto__']);

/** The problem+json body (RFC 9457) for an error; 5xx bodies never carry a detail. */
export function problemBody(err: AppError, requestId: string): Record<string, unknown> {
  const body: Record<string, unknown> = {
    type: 'about:blank',
    title: err.title,
    status: err.status,
    code: err.code,
  };
  if (err.expose) {
    if (err.detail !== undefined) body['detail'] = err.detail;
    if (err.extra !== undefined) {
      // Extra members never replace the fixed ones: the code and status are the contract.
      for (const key of Object.keys(err.extra)) {
        if (!RESERVED_MEMBERS.has(key)) body[key] = err.extra[key];
      }
    }
  }
  body['requestId'] = requestId;
  return body;
}

/** Coerces anything thrown into an AppError; unknown errors become a generic 500 that keeps the cause. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  return new AppError('INTERNAL', { cause: err });
}

/** One link of a cause chain; `code` is what Node, undici and pg set (an errno name or a SQLSTATE). */
export type ErrorLink = Error & { code?: unknown };

/** `err` and its causes, as far as they are Errors, at most `maxDepth` links (a cycle cannot loop forever). */
export function causeChain(err: unknown, maxDepth = 4): ErrorLink[] {
  const links: ErrorLink[] = [];
  let current = err;
  while (links.length < maxDepth && current instanceof Error) {
    links.push(current);
    current = current.cause;
  }
  return links;
}
