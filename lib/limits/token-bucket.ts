// Token-bucket arithmetic, free of I/O and clocks, shared by the memory and Postgres stores.
//
// A bucket holds up to `capacity` tokens (the burst) and gains `refillPerSecond` tokens every
// second; a request takes `cost` tokens or is refused. Stores keep `{ tokens, updatedMs }` and
// refill lazily when a key is touched, so an idle key costs nothing.

/** The shape of one limit: the burst and the sustained rate. */
export interface BucketPolicy {
  /** Most tokens a bucket holds: the burst a client may spend at once. */
  capacity: number;
  /** Tokens added per second: the sustained rate (per-minute limit / 60). */
  refillPerSecond: number;
}

/** What a store answers for one request; every number is a whole value ready for headers. */
export interface Decision {
  allowed: boolean;
  /** Whole tokens left after this request (floor). */
  remaining: number;
  /** Whole seconds until the bucket is full again (ceil); 0 when it is full. */
  resetSeconds: number;
  /** 0 when allowed; else whole seconds (ceil, at least 1) until the request could succeed. */
  retryAfterSeconds: number;
}

/** The persisted state of one bucket. */
export interface BucketState {
  tokens: number;
  /** Clock reading (ms) at which `tokens` was true. */
  updatedMs: number;
}

/** Where buckets live: in this process or in PostgreSQL shared by every instance. */
export interface BucketStore {
  take(key: string, policy: BucketPolicy): Promise<Decision>;
  close?(): Promise<void>;
}

// Refills accumulate binary rounding error (60 s × 1/60 token/s can land a hair under 1);
// a billionth of a token is far below anything a client could exploit.
export const TOKEN_EPSILON = 1e-9;

/** Builds a policy from the configured per-minute rate and burst; rejects values that would never refill. */
export function bucketPolicy(perMinute: number, burst: number): BucketPolicy {
  if (!(Number.isFinite(perMinute) && perMinute > 0))
    throw new RangeError(`Invalid rate limit: perMinute must be a positive number, got ${perMinute}`);
  if (!(Number.isFinite(burst) && burst >= 1))
    throw new RangeError(`Invalid rate limit: burst must be at least 1, got ${burst}`);
  return { capacity: burst, refillPerSecond: perMinute / 60 };
}

/** The tokens a bucket holds at `nowMs`; a missing bucket is full, and a clock that went back refills nothing. */
export function refilledTokens(state: BucketState | undefined, policy: BucketPolicy, nowMs: number): number {
  if (state === undefined) return policy.capacity;
  const elapsedSeconds = Math.max(0, nowMs - state.updatedMs) / 1000;
  return Math.min(policy.capacity, state.tokens + elapsedSeconds * policy.refillPerSecond);
}

/** Turns the tokens left after a decision into the whole numbers clients see. */
export function describeDecision(allowed: boolean, tokensLeft: number, policy: BucketPolicy, cost = 1): Decision {
  const tokens = Math.max(0, Math.min(policy.capacity, tokensLeft));
  const rate = policy.refillPerSecond;
  const missing = policy.capacity - tokens;
  return {
    allowed,
    remaining: Math.floor(tokens + TOKEN_EPSILON),
    resetSeconds: missing <= TOKEN_EPSILON ? 0 : Math.ceil(missing / rate - TOKEN_EPSILON),
    // RFC 9110 §10.2.3: delay-seconds is a whole number; never 0 on a refusal, which would invite a hot retry loop.
    retryAfterSeconds: allowed ? 0 : Math.max(1, Math.ceil((cost - tokens) / rate - TOKEN_EPSILON)),
  };
}

/** Refills the bucket to `nowMs` and takes `cost` tokens if it holds that many; a refusal takes nothing. */
export function takeToken(
  state: BucketState | undefined,
  policy: BucketPolicy,
  nowMs: number,
  cost = 1,
): { state: BucketState; decision: Decision } {
  // A cost above the burst could never succeed and would refuse forever; that is a caller bug.
  if (cost > policy.capacity)
    throw new RangeError(`Invalid token cost: ${cost} exceeds the bucket capacity ${policy.capacity}`);
  const refilled = refilledTokens(state, policy, nowMs);
  const allowed = refilled + TOKEN_EPSILON >= cost;
  const tokens = allowed ? Math.max(0, refilled - cost) : refilled;
  // Never move updatedMs backwards: re-counting an interval already refilled would mint tokens.
  const updatedMs = state === undefined ? nowMs : Math.max(state.updatedMs, nowMs);
  return { state: { tokens, updatedMs }, decision: describeDecision(allowed, tokens, policy, cost) };
}

/** Milliseconds from `state.updatedMs` until the bucket is full again. */
export function msUntilFull(state: BucketState, policy: BucketPolicy): number {
  return (Math.max(0, policy.capacity - state.tokens) / policy.refillPerSecond) * 1000;
}
