// The RateLimit-Policy / RateLimit / Retry-After values, formatted in one place.
//
// Syntax follows draft-ietf-httpapi-ratelimit-headers-10: both fields are Structured Field
// Lists (RFC 8941 §3.1) whose items are a quoted String naming the policy, with Integer
// parameters: §3.1 q (quota) and w (window, seconds) on RateLimit-Policy; §4.1 r (remaining)
// and t (seconds until more quota is available) on RateLimit. Example (§3.2, §4.2):
//   RateLimit-Policy: "default";q=100;w=10
//   RateLimit: "default";r=50;t=30
import type { BucketPolicy, Decision } from './token-bucket.ts';

// RFC 8941 §3.3.3: an sf-string holds printable ASCII only; `"` and `\` are escaped.
const SF_STRING_SAFE = /^[\x20-\x7e]*$/;
// RFC 8941 §3.3.1: an sf-integer has at most 15 digits.
const SF_INTEGER_MAX = 999_999_999_999_999;

function sfString(value: string): string {
  if (!SF_STRING_SAFE.test(value))
    throw new RangeError(`Invalid rate limit policy name: ${JSON.stringify(value)} is not printable ASCII`);
  return `"${value.replace(/[\\"]/g, '\\$&')}"`;
}

function sfInteger(value: number): number {
  return Math.min(SF_INTEGER_MAX, Math.max(0, Math.floor(value)));
}

/** Seconds to refill the whole burst: the window over which the burst is the quota. */
export function windowSeconds(policy: BucketPolicy): number {
  // §3.1.3: w is a non-zero Integer, so a sub-second window rounds up to 1.
  return Math.max(1, Math.ceil(policy.capacity / policy.refillPerSecond));
}

/** Header name/value pairs for a decision: [ratelimit-policy, value, ratelimit, value]. */
export function rateLimitHeaders(
  policy: BucketPolicy & { name?: string },
  decision: Decision,
): [string, string, string, string] {
  return rateLimitFormatter(policy)(decision);
}

/** The same formatting with the per-policy part computed once (the per-request hot path uses this). */
export function rateLimitFormatter(
  policy: BucketPolicy & { name?: string },
): (decision: Decision) => [string, string, string, string] {
  const name = sfString(policy.name ?? 'default');
  // A token bucket allows `capacity` at once and refills it in `w` seconds: the quota per window.
  const quota = `${name};q=${sfInteger(policy.capacity)};w=${sfInteger(windowSeconds(policy))}`;
  return function format(decision) {
    // §4.1.2: t is the time until more quota is available. On a refusal that is exactly when one
    // token is back, and §6 says Retry-After SHOULD NOT point earlier than t, so t = Retry-After
    // then; when allowed, t is the time until the burst is whole again.
    const resetSeconds = decision.allowed ? sfInteger(decision.resetSeconds) : retryAfterWholeSeconds(decision);
    // Lowercase like every other field we send: the list goes to writeHead as is.
    return ['ratelimit-policy', quota, 'ratelimit', `${name};r=${sfInteger(decision.remaining)};t=${resetSeconds}`];
  };
}

function retryAfterWholeSeconds(decision: Decision): number {
  // A 0 would invite the client to retry immediately, in a loop.
  return Math.max(1, sfInteger(Math.ceil(decision.retryAfterSeconds)));
}

/** The Retry-After value for a refused decision: delay-seconds (RFC 9110 §10.2.3), never below 1. */
export function retryAfterSeconds(decision: Decision): string {
  return String(retryAfterWholeSeconds(decision));
}
