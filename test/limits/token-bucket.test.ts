import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type BucketState, bucketPolicy, describeDecision, takeToken } from '../../lib/limits/token-bucket.ts';

const fivePerSecond = { capacity: 5, refillPerSecond: 5 };
const onePerMinute = bucketPolicy(1, 1);

/** Spends the whole bucket at `nowMs` and returns the empty state. */
function drain(policy: { capacity: number; refillPerSecond: number }, nowMs: number): BucketState {
  let state: BucketState | undefined;
  for (let i = 0; i < policy.capacity; i++) state = takeToken(state, policy, nowMs).state;
  assert.ok(state);
  return state;
}

describe('takeToken()', () => {
  it('takeToken() starts a new bucket full and takes one token', () => {
    const { state, decision } = takeToken(undefined, fivePerSecond, 1000);
    assert.deepEqual(decision, { allowed: true, remaining: 4, resetSeconds: 1, retryAfterSeconds: 0 });
    assert.deepEqual(state, { tokens: 4, updatedMs: 1000 });
  });

  it('takeToken() refuses after the burst and takes nothing on a refusal', () => {
    const empty = drain(fivePerSecond, 0);
    const { state, decision } = takeToken(empty, fivePerSecond, 0);
    assert.equal(decision.allowed, false);
    assert.equal(decision.remaining, 0);
    assert.equal(state.tokens, 0);
    assert.equal(decision.retryAfterSeconds, 1);
  });

  it('takeToken() refills at the policy rate and never above capacity', () => {
    const empty = drain(fivePerSecond, 0);
    assert.equal(takeToken(empty, fivePerSecond, 600).decision.remaining, 2); // 3 refilled, 1 taken
    assert.equal(takeToken(empty, fivePerSecond, 60_000).decision.remaining, 4); // capped at 5, 1 taken
  });

  it('takeToken() reports Retry-After 60 for one token per minute, and the rest of the minute later on', () => {
    const empty = drain(onePerMinute, 0);
    assert.equal(takeToken(empty, onePerMinute, 0).decision.retryAfterSeconds, 60);
    assert.equal(takeToken(empty, onePerMinute, 15_000).decision.retryAfterSeconds, 45);
    assert.equal(takeToken(empty, onePerMinute, 59_500).decision.retryAfterSeconds, 1);
    assert.equal(takeToken(empty, onePerMinute, 60_000).decision.allowed, true);
  });

  it('takeToken() rounds resetSeconds up to whole seconds until the bucket is full', () => {
    const policy = bucketPolicy(60, 10); // 1 token/s
    const { decision } = takeToken({ tokens: 6.5, updatedMs: 0 }, policy, 0);
    assert.equal(decision.remaining, 5);
    assert.equal(decision.resetSeconds, 5); // 4.5 tokens missing → 4.5 s → 5
  });

  it('takeToken() does not refill or move time back when the clock goes backwards', () => {
    const empty = drain(fivePerSecond, 10_000);
    const { state, decision } = takeToken(empty, fivePerSecond, 5_000);
    assert.equal(decision.allowed, false);
    assert.equal(state.updatedMs, 10_000);
  });

  it('takeToken() grants tokens that refilled exactly despite binary rounding', () => {
    // 288 ms at 625/min is exactly 3 tokens, but 0.288 * (625 / 60) is 2.9999999999999996 in binary.
    const policy = bucketPolicy(625, 3);
    assert.equal(takeToken({ tokens: 0, updatedMs: 0 }, policy, 288, 3).decision.allowed, true);
    // 300 s at 11/min is exactly 55 tokens (54.99999999999999 in binary): 54 remain after one.
    assert.equal(takeToken({ tokens: 0, updatedMs: 0 }, bucketPolicy(11, 60), 300_000).decision.remaining, 54);
  });

  it('takeToken() rejects a cost above the capacity', () => {
    assert.throws(() => takeToken(undefined, fivePerSecond, 0, 6), RangeError);
  });

  it('takeToken() never allows more than the burst plus what refilled, whatever the timing', () => {
    const arrivals = fc.array(fc.integer({ min: 0, max: 5_000 }), { minLength: 1, maxLength: 200 });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 1, max: 600 }),
        arrivals,
        (burst, perMinute, gaps) => {
          const policy = bucketPolicy(perMinute, burst);
          let state: BucketState | undefined;
          let nowMs = 0;
          let allowed = 0;
          for (const gap of gaps) {
            nowMs += gap;
            const step = takeToken(state, policy, nowMs);
            state = step.state;
            if (step.decision.allowed) allowed++;
          }
          return allowed <= burst + Math.floor((nowMs / 1000) * policy.refillPerSecond + 1e-6);
        },
      ),
    );
  });
});

describe('bucketPolicy()', () => {
  it('bucketPolicy() turns a per-minute rate into tokens per second', () => {
    assert.deepEqual(bucketPolicy(600, 5), { capacity: 5, refillPerSecond: 10 });
  });

  it('bucketPolicy() rejects a rate or burst that would never refill or never allow', () => {
    assert.throws(() => bucketPolicy(0, 5), RangeError);
    assert.throws(() => bucketPolicy(60, 0), RangeError);
    assert.throws(() => bucketPolicy(Number.NaN, 5), RangeError);
  });
});

describe('describeDecision()', () => {
  it('describeDecision() reports a full bucket as reset 0', () => {
    assert.deepEqual(describeDecision(true, 5, fivePerSecond), {
      allowed: true,
      remaining: 5,
      resetSeconds: 0,
      retryAfterSeconds: 0,
    });
  });
});
