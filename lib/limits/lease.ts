// Lease arithmetic of the leased store, free of I/O and clocks: what one instance knows about a key.
//
// An instance holds at most one lease per key: the tokens it took from the shared bucket and has
// not spent yet. It also remembers what the bucket held after the lease (for the headers), until
// when the bucket is known to be empty, and the rate it saw, which sizes the next lease.
import { type BucketPolicy, type Decision, describeDecision, TOKEN_EPSILON } from './token-bucket.ts';

/** One key's lease and what this instance learnt about the key. */
export interface LeaseState {
  policy: BucketPolicy;
  /** Unspent tokens of the current lease. */
  left: number;
  /** Tokens the current lease took; 0 when none is held. */
  size: number;
  /** Tokens the previous lease took, which the next may at most double. */
  lastSize: number;
  /** Requests per second this instance saw for the key during its previous lease. */
  rate: number;
  startedMs: number;
  expiresMs: number;
  /** The shared bucket right after the lease was taken (for the headers). */
  sharedTokens: number;
  /** Until then the shared bucket is known to hold less than a token. */
  refusedUntilMs: number;
  /** Requests waiting for the database. */
  waiting: number;
  /** The lease request in flight: undefined when it granted tokens, else the refusal for its waiters. */
  renewing: Promise<Decision | undefined> | undefined;
}

/** The most tokens one lease may take: the fraction of the burst, at least one token. */
export function maxLeaseTokens(policy: BucketPolicy, leaseFraction: number): number {
  return Math.max(1, Math.floor(policy.capacity * leaseFraction + TOKEN_EPSILON));
}

/** The next lease to ask for: the rate seen over a lease period, at most doubling, at least the requests waiting. */
export function nextLeaseSize(state: LeaseState, leaseMs: number, leaseFraction: number): number {
  const byRate = Math.ceil((state.rate * leaseMs) / 1000);
  const grown = Math.min(byRate, 2 * Math.max(1, state.lastSize));
  // Requests already waiting are demand too: one round trip for a burst on a cold key.
  return Math.min(maxLeaseTokens(state.policy, leaseFraction), Math.max(1, grown, state.waiting));
}

/** The state of a key this instance has not asked about yet. */
export function newLeaseState(policy: BucketPolicy): LeaseState {
  return {
    policy,
    left: 0,
    size: 0,
    lastSize: 0,
    rate: 0,
    startedMs: 0,
    expiresMs: Number.NEGATIVE_INFINITY,
    sharedTokens: 0,
    refusedUntilMs: Number.NEGATIVE_INFINITY,
    waiting: 0,
    renewing: undefined,
  };
}

/** Spends a token of the lease, or repeats a known refusal; undefined when only the database can tell. */
export function fromMemory(entry: LeaseState, nowMs: number): Decision | undefined {
  if (entry.left >= 1 && nowMs < entry.expiresMs) {
    entry.left -= 1;
    return describeDecision(true, entry.left + sharedEstimate(entry, nowMs), entry.policy);
  }
  if (nowMs < entry.refusedUntilMs) return describeDecision(false, sharedEstimate(entry, nowMs), entry.policy);
  return undefined;
}

/** The shared bucket as of the last lease, refilled by this clock since: what the headers report. */
function sharedEstimate(entry: LeaseState, nowMs: number): number {
  const refilled = entry.sharedTokens + (Math.max(0, nowMs - entry.startedMs) / 1000) * entry.policy.refillPerSecond;
  return Math.min(entry.policy.capacity, refilled);
}

/** Ends the lease held (if any), learning the key's rate from it; returns the unspent tokens. */
export function endLease(entry: LeaseState, nowMs: number): number {
  if (entry.size === 0) return 0;
  const spent = entry.size - entry.left;
  entry.rate = (spent * 1000) / Math.max(1, nowMs - entry.startedMs);
  entry.lastSize = entry.size;
  const unspent = entry.left;
  entry.left = 0;
  entry.size = 0;
  return unspent;
}

/** Milliseconds until a bucket holding `tokens` holds a whole token. */
export function msUntilOneToken(tokens: number, policy: BucketPolicy): number {
  return (Math.max(0, 1 - tokens) / policy.refillPerSecond) * 1000;
}
