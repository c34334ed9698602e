import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { endLease, fromMemory, maxLeaseTokens, newLeaseState, nextLeaseSize } from '../../lib/limits/lease.ts';
import { bucketPolicy } from '../../lib/limits/token-bucket.ts';

const policy = bucketPolicy(60, 100); // a token a second, burst 100

/** A state holding a lease of `size` tokens taken at `startedMs`, with 1000 ms to live. */
function holding(size: number, startedMs = 0) {
  const state = newLeaseState(policy);
  Object.assign(state, { size, left: size, startedMs, expiresMs: startedMs + 1000, sharedTokens: 50 });
  return state;
}

describe('maxLeaseTokens()', () => {
  it('maxLeaseTokens() is the fraction of the burst, rounded down, and at least one token', () => {
    assert.equal(maxLeaseTokens(bucketPolicy(60, 20), 0.1), 2);
    assert.equal(maxLeaseTokens(bucketPolicy(60, 20), 0.25), 5);
    assert.equal(maxLeaseTokens(bucketPolicy(60, 5), 0.1), 1);
    assert.equal(maxLeaseTokens(bucketPolicy(60, 30), 0.1), 3); // 30 × 0.1 lands a hair off 3 in binary
    assert.equal(maxLeaseTokens(bucketPolicy(60, 20), 1), 20);
  });
});

describe('nextLeaseSize()', () => {
  it('nextLeaseSize() starts a key with one token', () => {
    assert.equal(nextLeaseSize(newLeaseState(policy), 1000, 0.5), 1);
  });

  it('nextLeaseSize() follows the rate seen over a lease period, at most doubling the last lease', () => {
    const state = holding(8);
    state.left = 0;
    endLease(state, 100); // 8 tokens in 100 ms: 80 a second
    assert.equal(state.rate, 80);
    assert.equal(nextLeaseSize(state, 1000, 0.5), 16, 'doubled, not 80');
    assert.equal(nextLeaseSize(state, 100, 0.5), 8, 'the rate over a 100 ms lease');
  });

  it('nextLeaseSize() asks for every request waiting, but never past the fraction of the burst', () => {
    const state = newLeaseState(policy);
    state.waiting = 30;
    assert.equal(nextLeaseSize(state, 1000, 0.5), 30);
    state.waiting = 80;
    assert.equal(nextLeaseSize(state, 1000, 0.5), 50);
  });
});

describe('fromMemory() and endLease()', () => {
  it('fromMemory() spends the lease until it is empty or expired, then leaves the decision to the database', () => {
    const state = holding(2);
    assert.deepEqual(fromMemory(state, 0), { allowed: true, remaining: 51, resetSeconds: 49, retryAfterSeconds: 0 });
    assert.equal(fromMemory(state, 10)?.allowed, true);
    assert.equal(fromMemory(state, 20), undefined, 'empty');
    const expired = holding(5);
    assert.equal(fromMemory(expired, 1000), undefined, 'expired');
  });

  it('fromMemory() repeats a known refusal until a token is due, counting down Retry-After', () => {
    const state = newLeaseState(policy);
    Object.assign(state, { sharedTokens: 0.25, startedMs: 0, refusedUntilMs: 750 });
    assert.deepEqual(fromMemory(state, 0), { allowed: false, remaining: 0, resetSeconds: 100, retryAfterSeconds: 1 });
    assert.equal(fromMemory(state, 500)?.allowed, false);
    assert.equal(fromMemory(state, 750), undefined);
  });

  it('endLease() returns the unspent tokens once and learns the rate from what was spent', () => {
    const state = holding(10);
    for (let i = 0; i < 4; i++) fromMemory(state, 0);
    assert.equal(endLease(state, 1000), 6);
    assert.equal(state.rate, 4);
    assert.equal(state.lastSize, 10);
    assert.equal(endLease(state, 2000), 0, 'nothing is held any more');
  });
});
