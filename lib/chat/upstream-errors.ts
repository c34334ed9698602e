// Upstream failures: one error type with a kind per client-facing code, and the classifier that
// maps whatever the SDK or undici threw onto it. Upstream text never leaves through these.
import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from 'openai';
import { AppError, causeChain } from '../errors.ts';

/** How an upstream call failed; each kind maps to one client-facing code. */
export type UpstreamErrorKind = 'aborted' | 'timeout' | 'unavailable' | 'status' | 'connection' | 'broken';
/** Why our controller aborted a call: the caller, the first-token deadline, the idle timer or the total deadline. */
export type AbortReason = 'client' | 'deadline' | 'idle' | 'duration';

const RETRY_AFTER_CAP_SECONDS = 3600;

/** A classified upstream failure; its message is ours, never the upstream's text. */
export class UpstreamError extends Error {
  readonly kind: UpstreamErrorKind;
  readonly upstreamStatus: number | undefined;
  readonly upstreamRequestId: string | undefined;
  /** The provider's error code (`rate_limit_exceeded`, …) when it is a plain token; never its message. */
  readonly upstreamCode: string | undefined;
  /** The first code found in the cause chain (UND_ERR_SOCKET, ECONNREFUSED, UPSTREAM_TOO_LARGE, …). */
  readonly causeCode: string | undefined;
  readonly retryAfterSeconds: number | undefined;
  /** The caller signal's reason when kind is 'aborted' (e.g. an AppError for a drain). */
  readonly abortReason: unknown;

  constructor(
    kind: UpstreamErrorKind,
    message: string,
    options: {
      upstreamStatus?: number;
      upstreamRequestId?: string;
      upstreamCode?: string;
      retryAfterSeconds?: number;
      abortReason?: unknown;
      cause?: unknown;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UpstreamError';
    this.kind = kind;
    this.upstreamStatus = options.upstreamStatus;
    this.upstreamRequestId = options.upstreamRequestId;
    this.upstreamCode = options.upstreamCode;
    this.causeCode = causeCode(options.cause);
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.abortReason = options.abortReason;
  }

  /** The error a client may see: a code and a generic detail, plus Retry-After when the upstream gave one. */
  toAppError(): AppError {
    switch (this.kind) {
      case 'timeout':
        return new AppError('UPSTREAM_TIMEOUT', { detail: 'The model did not answer in time', cause: this });
      case 'unavailable': {
        const headers =
          this.retryAfterSeconds === undefined ? undefined : { 'Retry-After': String(this.retryAfterSeconds) };
        return new AppError('UPSTREAM_UNAVAILABLE', {
          detail: 'The model is overloaded; try again later',
          headers,
          cause: this,
        });
      }
      case 'aborted':
        // A drain or deadline aborts with an AppError that says what happened; a client that left sees nothing.
        if (this.abortReason instanceof AppError) return this.abortReason;
        return new AppError('REQUEST_TIMEOUT', { detail: 'The request was cancelled', cause: this });
      default:
        return new AppError('UPSTREAM_ERROR', { detail: 'The model provider returned an error', cause: this });
    }
  }
}

/** Maps anything an SDK call or stream throws to an UpstreamError; our own abort reason wins. */
export function classifyUpstreamError(err: unknown, reason?: AbortReason, callerReason?: unknown): UpstreamError {
  if (err instanceof UpstreamError) return err;
  const opts = { cause: err, upstreamRequestId: requestIdOf(err), upstreamCode: providerCode(err) };
  if (reason === 'client')
    return new UpstreamError('aborted', 'Upstream call cancelled by the caller', {
      ...opts,
      abortReason: callerReason,
    });
  if (reason === 'deadline') return new UpstreamError('timeout', 'Upstream sent no token before the deadline', opts);
  if (reason === 'idle') return new UpstreamError('timeout', 'Upstream sent no content for the idle limit', opts);
  if (reason === 'duration') return new UpstreamError('timeout', 'Upstream answer exceeded the total deadline', opts);
  if (err instanceof APIUserAbortError) return new UpstreamError('aborted', 'Upstream call cancelled', opts);
  if (err instanceof APIConnectionTimeoutError)
    return new UpstreamError('timeout', 'Upstream did not answer in time', opts);
  if (err instanceof APIConnectionError) return new UpstreamError('connection', 'Cannot connect to the upstream', opts);
  if (err instanceof APIError && err.status !== undefined) {
    const withStatus = { ...opts, upstreamStatus: err.status };
    if (err.status === 429 || err.status === 503 || err.status === 529) {
      const retryAfterSeconds = parseRetryAfter(err.headers?.get('retry-after'));
      return new UpstreamError('unavailable', `Upstream is unavailable (status ${err.status})`, {
        ...withStatus,
        retryAfterSeconds,
      });
    }
    return new UpstreamError('status', `Upstream answered with status ${err.status}`, withStatus);
  }
  // An `error` event inside a 200 stream: the SDK raises an APIError without a status.
  if (err instanceof APIError) return new UpstreamError('status', 'Upstream reported an error mid-stream', opts);
  const code = causeCode(err);
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new UpstreamError('timeout', 'Upstream went silent', opts);
  }
  // Mid-stream socket failures are TypeError('terminated'); bad SSE JSON is a SyntaxError.
  return new UpstreamError('broken', 'Upstream stream broke off', opts);
}

/** Parses Retry-After (delay-seconds or HTTP-date, RFC 9110 §10.2.3) into whole seconds, capped at an hour. */
export function parseRetryAfter(value: string | null | undefined, nowMs = Date.now()): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  let seconds: number;
  if (/^\d+(\.\d+)?$/.test(text)) {
    seconds = Math.ceil(Number(text));
  } else {
    const at = Date.parse(text);
    if (Number.isNaN(at)) return undefined;
    seconds = Math.ceil((at - nowMs) / 1000);
  }
  return Math.min(Math.max(seconds, 0), RETRY_AFTER_CAP_SECONDS);
}

function requestIdOf(err: unknown): string | undefined {
  return err instanceof APIError ? (err.requestID ?? undefined) : undefined;
}

// A provider error code worth logging is a short token; anything else may be echoed input.
const PROVIDER_CODE = /^[A-Za-z0-9_.-]{1,64}$/;

function providerCode(err: unknown): string | undefined {
  const code = err instanceof APIError ? err.code : undefined;
  return typeof code === 'string' && PROVIDER_CODE.test(code) ? code : undefined;
}

/** The first string code in the first few links of the cause chain (undici's, the OS's or ours). */
function causeCode(err: unknown): string | undefined {
  for (const link of causeChain(err)) {
    const { code } = link;
    if (typeof code === 'string' && PROVIDER_CODE.test(code) && !(link instanceof APIError)) return code;
  }
  return undefined;
}
