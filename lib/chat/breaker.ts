// A circuit breaker for one upstream: closed (calls pass), open (calls fail fast), half-open (one
// trial call decides). It opens after N consecutive failures, or when the failed share of the calls
// in a sliding window passes a threshold; after the cool-down the next caller gets the one trial.
// No timers: time is read when a caller asks, from an injectable clock.
import { performance } from 'node:perf_hooks';
import type { BreakerConfig } from '../config.ts';

/** A breaker's state; the gauge exports them as 0, 1 and 2. */
export type BreakerState = 'closed' | 'half_open' | 'open';

/** The outcome of one admitted call, reported exactly once (later reports are ignored). */
export interface Permit {
  /** The upstream answered (a 4xx included: it is reachable). */
  success(): void;
  /** Connection error, 5xx, 429 or a timeout before the first token. */
  failure(): void;
  /** No verdict (the caller left): a half-open trial goes back for the next caller. */
  release(): void;
}

/** One upstream's breaker. */
export interface Breaker {
  state(): BreakerState;
  /** A permit to call, or undefined while open and while the half-open trial is out. */
  admit(): Permit | undefined;
  /** Milliseconds until a trial call may pass; 0 when one may now. */
  retryAfterMs(): number;
  /** Whether admit() would give a permit now; changes nothing. */
  admits(): boolean;
}

export interface BreakerOptions extends BreakerConfig {
  /** A half-open trial that has not reported after this long is given up, and the next caller gets a new one. */
  trialTimeoutMs: number;
  /** Milliseconds on a monotonic clock. */
  now?: () => number;
  onChange?: (from: BreakerState, to: BreakerState) => void;
}

// The window is this many buckets: old failures leave it a tenth of a window at a time.
const BUCKETS = 10;

/** Builds a closed breaker. */
export function createBreaker(options: BreakerOptions): Breaker {
  const now = options.now ?? (() => performance.now());
  const window = createWindow(options.windowMs, now);
  let state: BreakerState = 'closed';
  let consecutive = 0;
  let openedAt = 0;
  // The trial out in half-open: its number (older trials' verdicts are ignored) and when it started.
  let trial = 0;
  let trialOut = false;
  let trialAt = 0;

  function move(to: BreakerState): void {
    const from = state;
    state = to;
    if (to === 'open') openedAt = now();
    if (to === 'closed') {
      consecutive = 0;
      window.clear();
    }
    options.onChange?.(from, to);
  }

  function tripped(): boolean {
    if (consecutive >= options.failures) return true;
    if (options.failurePercent === 0) return false;
    const { calls, failures } = window.totals();
    return calls >= options.minCalls && failures * 100 >= options.failurePercent * calls;
  }

  function settle(trialId: number, verdict: 'success' | 'failure' | 'release'): void {
    if (trialId !== 0) {
      if (trialId !== trial || !trialOut) return;
      trialOut = false;
      if (verdict === 'success') move('closed');
      else if (verdict === 'failure') move('open');
      return;
    }
    // A call admitted before the breaker opened says nothing about the upstream now.
    if (state !== 'closed' || verdict === 'release') return;
    window.record(verdict === 'failure');
    consecutive = verdict === 'failure' ? consecutive + 1 : 0;
    if (verdict === 'failure' && tripped()) move('open');
  }

  // trialId 0: an ordinary call while closed.
  function permit(trialId: number): Permit {
    let settled = false;
    const once = (verdict: 'success' | 'failure' | 'release') => () => {
      if (settled) return;
      settled = true;
      settle(trialId, verdict);
    };
    return { success: once('success'), failure: once('failure'), release: once('release') };
  }

  return {
    state: () => state,
    admit() {
      if (state === 'closed') return permit(0);
      const at = now();
      if (state === 'open' && at - openedAt < options.cooldownMs) return undefined;
      if (trialOut && at - trialAt < options.trialTimeoutMs) return undefined;
      if (state === 'open') move('half_open');
      trial++;
      trialOut = true;
      trialAt = at;
      return permit(trial);
    },
    admits() {
      if (state === 'closed') return true;
      const at = now();
      if (state === 'open') return at - openedAt >= options.cooldownMs;
      return !trialOut || at - trialAt >= options.trialTimeoutMs;
    },
    retryAfterMs() {
      if (state !== 'open') return 0;
      return Math.max(0, openedAt + options.cooldownMs - now());
    },
  };
}

/** Calls and failures in the last `windowMs`, in buckets that expire a tenth of the window at a time. */
function createWindow(windowMs: number, now: () => number) {
  const bucketMs = windowMs / BUCKETS;
  const calls = new Array<number>(BUCKETS).fill(0);
  const failures = new Array<number>(BUCKETS).fill(0);
  let current = Math.floor(now() / bucketMs);

  // Empties the buckets that fell out of the window since the last call.
  function advance(): number {
    const index = Math.floor(now() / bucketMs);
    for (let i = Math.max(current + 1, index - BUCKETS + 1); i <= index; i++) {
      calls[i % BUCKETS] = 0;
      failures[i % BUCKETS] = 0;
    }
    current = Math.max(current, index);
    return current % BUCKETS;
  }

  return {
    record(failed: boolean): void {
      const slot = advance();
      calls[slot] = (calls[slot] ?? 0) + 1;
      if (failed) failures[slot] = (failures[slot] ?? 0) + 1;
    },
    totals(): { calls: number; failures: number } {
      advance();
      let c = 0;
      let f = 0;
      for (let i = 0; i < BUCKETS; i++) {
        c += calls[i] ?? 0;
        f += failures[i] ?? 0;
      }
      return { calls: c, failures: f };
    },
    clear(): void {
      calls.fill(0);
      failures.fill(0);
    },
  };
}
